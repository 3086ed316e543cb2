"""A return elsewhere still waiting for its State outlives a hub restart (issue 14,
finding 6).

The claim (who says the bank came back, when, and by when a State of theirs must
show it) is stored with the loan, in the transaction of the event that made it,
and loaded at start. The hub here is the real ``yizhan hub`` program on a real
Mosquitto of the test's own and a SQLite file, killed with SIGKILL once the
claim is committed; after it, either a second ``yizhan hub`` takes the
corroborating State, or the hub in process on a clock the test moves raises
``bank_overdue`` ten minutes after the claim was heard, as it would have
without the restart. The stations are MQTT clients publishing what a station
publishes (tests/harness/senders.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.fleet.loans import RETURN_CONFIRM_MS
from hub.service import Hub
from hub.storage.schema import loans
from protocol import examples
from tests.harness.mosquitto import Broker
from tests.harness.procs import Proc, Procs, free_port, http_json, wait_until, write_yaml
from tests.harness.senders import BANK, LENDER, OTHER, Sender, hub_config, sender_pair
from yizhan.clock import ManualClock

TOKEN = "loan-claims-token-0123456789"
#: The stations' clock runs this far behind the hub's, so that a claim's own
#: time (the event's ts) and the hub's receipt of a State are told apart.
BEHIND_S = 60


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker of this test's own: the session's holds other tests' retained
    Statuses and States of the same station ids, which the hub would take in."""
    return broker_factory()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture
def clock() -> ManualClock:
    """The stations' clock, a minute behind the real one the hub program keeps."""
    return ManualClock(time.time() - BEHIND_S)


@pytest.fixture
def senders(broker: Broker, clock: ManualClock) -> Iterator[tuple[Sender, Sender]]:
    with sender_pair(broker, clock) as pair:
        yield pair


class Setup:
    def __init__(self, tmp_path: Path, broker: Broker) -> None:
        self.url = f"sqlite:///{tmp_path / 'hub.db'}"
        self.port = free_port()
        self.data: dict[str, Any] = {
            **hub_config(broker, self.url, http_port=self.port), "api_tokens": [TOKEN]}
        self.config = write_yaml(tmp_path / "hub.yaml", self.data)

    def start(self, procs: Procs, name: str) -> Proc:
        hub = procs.start(name, "hub", "--config", str(self.config))
        wait_until(lambda: http_json(f"http://127.0.0.1:{self.port}/healthz")[0] == 200,
                   20, f"{name} healthy", on_fail=hub.tail)
        return hub

    def loan(self) -> dict | None:
        """The bank's loan row as committed (None before there is one)."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = list(conn.execute(sa.select(loans).where(loans.c.bank == BANK))
                            .mappings())
        finally:
            engine.dispose()
        assert len(rows) <= 1, rows
        return dict(rows[0]) if rows else None


@pytest.fixture
def setup(tmp_path: Path, broker: Broker) -> Setup:
    return Setup(tmp_path, broker)


def claimed_then_killed(setup: Setup, procs: Procs, senders: tuple[Sender, Sender],
                        clock: ManualClock, kind: str) -> dict:
    """Lent at LENDER; OTHER says the bank came back there (``kind``: a return, or
    a borrow of it); the hub killed once that claim is committed. The row."""
    lender, other = senders
    hub = setup.start(procs, "hub-1")
    lender.state({1: BANK, 2: None})
    lender.event("bank_borrowed", slot=1, bank=BANK, charge=96, rider=examples.RIDER)
    wait_until(setup.loan, 10, "the loan stored", on_fail=hub.tail)
    other.state({1: None})  # no bank of LENDER's in its slots
    clock.advance(30)
    if kind == "bank_returned":
        other.event("bank_returned", slot=1, bank=BANK, charge=40, rider=None)
    else:
        other.event("bank_borrowed", slot=1, bank=BANK, charge=40, rider=examples.RIDER)
    row = wait_until(lambda: (r := setup.loan()) and r["claim_sid"] == OTHER and r, 10,
                     "the claim stored", on_fail=hub.tail)
    assert row["returned_ms"] is None and row["sid"] == LENDER
    assert row["claim_ms"] == clock.ms()  # the event's own time
    hub.kill()  # SIGKILL: nothing but what was committed survives
    return row


def test_a_claim_outlives_a_hub_restart_and_the_state_then_closes_the_loan(
        setup: Setup, procs: Procs, senders: tuple[Sender, Sender],
        clock: ManualClock) -> None:
    _, other = senders
    claim = claimed_then_killed(setup, procs, senders, clock, "bank_returned")
    hub = setup.start(procs, "hub-2")
    time.sleep(0.5)  # whatever the hub would do at start with the open loan, done
    assert setup.loan()["returned_ms"] is None  # the restart closed nothing
    other.state({1: BANK})  # OTHER's next State: the bank is in a slot
    row = wait_until(lambda: (r := setup.loan())["returned_ms"] is not None and r, 10,
                     "the loan closed by the State", on_fail=hub.tail)
    # Closed as the claim said, at its time: not as a bank merely seen there now
    # (a minute later, on the hub's clock), which is all a forgotten claim leaves.
    assert row["returned_sid"] == OTHER and row["returned_ms"] == claim["claim_ms"]


@pytest.mark.parametrize("kind", ["bank_returned", "bank_borrowed"])
def test_a_claim_no_state_confirms_raises_bank_overdue_after_a_restart(
        setup: Setup, procs: Procs, senders: tuple[Sender, Sender], clock: ManualClock,
        kind: str) -> None:
    claim = claimed_then_killed(setup, procs, senders, clock, kind)
    assert claim["confirm_by_ms"] >= claim["claim_ms"] + RETURN_CONFIRM_MS
    # Started again in process, on a clock the test moves from now on.
    hub_clock = ManualClock(time.time())
    hub = Hub(parse_hub_config(setup.data), clock=hub_clock, registry=CollectorRegistry())
    hub.start()
    try:
        kept = hub.fleet.loans.claimed(BANK)
        assert kept is not None and kept.sid == OTHER
        assert kept.confirm_by_ms == claim["confirm_by_ms"]
        assert hub.fleet.loans.open_count(LENDER) == 1

        def overdue() -> list[dict]:
            return [a for a in hub.alerts.list(sid=LENDER, state="firing")
                    if a["rule"] == "bank_overdue" and a["value"]["bank"] == BANK]

        hub_clock.advance((claim["confirm_by_ms"] - hub_clock.ms()) / 1000 - 1)
        hub.evaluate_alerts()
        assert overdue() == []
        hub_clock.advance(2)
        hub.evaluate_alerts()
        (alert,) = wait_until(overdue, 10, "bank_overdue at the lending station")
        # A day before the loan's own due time: the claim's deadline did it.
        assert alert["value"]["due_at"] == claim["confirm_by_ms"] < claim["due_ms"]
    finally:
        hub.close()
