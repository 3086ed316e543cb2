"""Loans of a cabinet that cannot read bank ids (issue 18): ``bank: null``, closed
by the rider's return.

The hub here is the real one in process, on a real Mosquitto and a real SQLite
file or PostgreSQL database, on a clock the test moves; the stations are MQTT
clients publishing what a station publishes (tests/harness/senders.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.console.loans import open_loans
from hub.service import Hub
from hub.storage.schema import alerts, loans
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind
from tests.harness.mosquitto import Broker
from tests.harness.procs import wait_until
from tests.harness.senders import LENDER, OTHER, Sender, hub_config, listening, sender_pair
from yizhan.clock import ManualClock

RIDER = examples.RIDER
SOMEONE_ELSE = "r:" + "ab" * 12


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker of this test's own (the session's holds other tests' retained States)."""
    return broker_factory()


def make_hub(database_url: str, broker: Broker, clock: ManualClock) -> Hub:
    config = parse_hub_config(hub_config(broker, database_url))
    h = Hub(config, clock=clock, registry=CollectorRegistry())
    h.start()
    return h


@pytest.fixture
def hub(database_url: str, broker: Broker, clock: ManualClock) -> Iterator[Hub]:
    h = make_hub(database_url, broker, clock)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def senders(broker: Broker, clock: ManualClock) -> Iterator[tuple[Sender, Sender]]:
    with sender_pair(broker, clock) as pair:
        yield pair


def rows(hub: Hub) -> list[dict]:
    assert hub.writer.flush(5)
    with hub.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(loans).order_by(loans.c.id)).mappings()]


def heard(hub: Hub, sender: Sender) -> None:
    wait_until(lambda: (v := hub.fleet.get(sender.sid)) is not None
               and v.events_through >= sender.seq, 10, f"{sender.sid}'s events heard")
    assert hub.writer.flush(5)


def lent_without_bank(hub: Hub, lender: Sender, rider: str = RIDER) -> None:
    listening(hub, lender)
    lender.state({1: None})
    lender.event("bank_borrowed", slot=1, bank=None, charge=100, rider=rider)
    heard(hub, lender)


def test_the_riders_return_elsewhere_closes_the_bankless_loan(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    lender, other = senders
    listening(hub, other)
    lent_without_bank(hub, lender)
    (row,) = rows(hub)
    assert row["bank"] is None and row["rider"] == RIDER and row["returned_ms"] is None
    assert hub.fleet.loans.open_count(LENDER) == 1
    shown, total, late = open_loans(hub)  # the console's list of loans out
    assert (total, late) == (1, 0) and shown[0]["bank"] is None and shown[0]["slot"] == 1
    clock.advance(3600)
    # Another rider's bank-less return, and one nobody named, close nothing.
    other.event("bank_returned", slot=2, bank=None, charge=None, rider=SOMEONE_ELSE)
    other.event("bank_returned", slot=3, bank=None, charge=None, rider=None)
    heard(hub, other)
    assert rows(hub)[0]["returned_ms"] is None and hub.fleet.loans.open_count() == 1
    returned_ms = clock.ms()
    other.event("bank_returned", slot=4, bank=None, charge=None, rider=RIDER)
    wait_until(lambda: hub.fleet.loans.open_count() == 0, 10, "the loan closed")
    (row,) = rows(hub)
    assert row["returned_ms"] == returned_ms and row["returned_sid"] == OTHER


def test_a_bankless_loan_not_returned_is_overdue_and_outlives_a_restart(
        database_url: str, broker: Broker, senders: tuple[Sender, Sender],
        clock: ManualClock) -> None:
    lender, _ = senders
    hub = make_hub(database_url, broker, clock)
    try:
        lent_without_bank(hub, lender)
        (row,) = rows(hub)
    finally:
        hub.close()
    hub = make_hub(database_url, broker, clock)  # the open loan is loaded from the table
    try:
        assert hub.fleet.loans.open_count(LENDER) == 1
        clock.advance(25 * 3600)  # past the fleet's 24 h
        hub.evaluate_alerts()
        late = wait_until(lambda: [a for a in hub.alerts.list(sid=LENDER, state="firing")
                                   if a["rule"] == "bank_overdue"], 10, "bank_overdue")
        # Named by its borrow (sid/epoch/seq): there is no bank id to name it by.
        assert len(late) == 1 and late[0]["value"]["bank"] is None
        with hub.store.engine.connect() as conn:
            subjects = [r.subject for r in conn.execute(
                sa.select(alerts).where(alerts.c.rule == "bank_overdue"))]
        assert subjects == [row["borrow_event"]]
        lender.event("bank_returned", slot=1, bank=None, charge=None, rider=RIDER)
        wait_until(lambda: hub.fleet.loans.open_count() == 0, 10, "the loan closed")
        hub.evaluate_alerts()
        wait_until(lambda: not [a for a in hub.alerts.list(sid=LENDER, state="firing")
                                if a["rule"] == "bank_overdue"], 10, "bank_overdue resolved")
    finally:
        hub.close()


def test_a_return_heard_before_its_borrow_records_the_loan_returned(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    # The lending station was offline: its borrow arrives after the return elsewhere.
    lender, other = senders
    listening(hub, lender, other)
    borrowed_ms = clock.ms()
    lender.seq += 1
    late_borrow = m.Event(LENDER, "9f2c01ab", borrowed_ms, True, lender.seq, "bank_borrowed",
                          {"slot": 1, "bank": None, "charge": 100, "rider": RIDER})
    clock.advance(600)
    other.event("bank_returned", slot=2, bank=None, charge=None, rider=RIDER)
    heard(hub, other)
    time.sleep(0.2)
    lender._publish(Kind.EVENT, late_borrow.to_dict())
    heard(hub, lender)
    (row,) = rows(hub)
    assert row["returned_sid"] == OTHER and row["returned_ms"] == clock.ms()
    assert hub.fleet.loans.open_count() == 0
