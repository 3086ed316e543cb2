"""A return at another station is a claim until that station's State shows the bank
(issue 14, finding 6).

A stolen station identity must not close other stations' loans by publishing
``bank_returned`` for their banks: the hub here is the real one in process, on a
real Mosquitto and a SQLite file, on a clock the test moves; the two stations
are MQTT clients publishing what a station publishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import loans
from protocol import examples
from tests.harness.mosquitto import Broker
from tests.harness.procs import wait_until
from tests.harness.senders import (
    BANK,
    LENDER,
    OTHER,
    Sender,
    hub_config,
    listening,
    sender_pair,
)
from yizhan.clock import ManualClock

#: How long a return elsewhere may stay unconfirmed (docs/alerts.md, bank_overdue).
CONFIRM_S = 10 * 60


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker of this test's own: the session's holds other tests' retained
    Statuses and States of the same station ids, which the hub would take in."""
    return broker_factory()


@pytest.fixture
def hub(tmp_path: Path, broker: Broker, clock: ManualClock) -> Iterator[Hub]:
    config = parse_hub_config(hub_config(broker, f"sqlite:///{tmp_path / 'hub.db'}"))
    h = Hub(config, clock=clock, registry=CollectorRegistry())
    h.start()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def senders(hub: Hub, broker: Broker, clock: ManualClock) -> Iterator[tuple[Sender, Sender]]:
    with sender_pair(broker, clock) as (lender, other):
        listening(hub, lender, other)
        yield lender, other


def lent(hub: Hub, lender: Sender) -> None:
    lender.state({1: BANK, 2: None})
    lender.event("bank_borrowed", slot=1, bank=BANK, charge=96, rider=examples.RIDER)
    wait_until(lambda: hub.fleet.loans.open_loan(BANK), 10, "the loan open at the hub")


def overdue_alerts(hub: Hub) -> list[dict]:
    return [a for a in hub.alerts.list(sid=LENDER, state="firing")
            if a["rule"] == "bank_overdue" and a["value"]["bank"] == BANK]


def seen(hub: Hub, sender: Sender) -> bool:
    view = hub.fleet.get(sender.sid)
    return view is not None and view.events_through >= sender.seq


def test_a_return_elsewhere_stays_open_until_that_station_shows_the_bank(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    lender, other = senders
    lent(hub, lender)
    other.state({1: None})
    clock.advance(600)
    returned_ms = clock.ms()
    other.event("bank_returned", slot=1, bank=BANK, charge=40, rider=None)
    wait_until(lambda: seen(hub, other), 10, "the return heard")
    time.sleep(0.3)  # whatever the hub would do with it, done by now
    assert hub.fleet.loans.open_loan(BANK) is not None
    assert hub.fleet.loans.open_count(LENDER) == 1 and hub.fleet.loans.claimed(BANK)
    other.state({1: BANK})  # its next State: the bank is in a slot
    wait_until(lambda: hub.fleet.loans.open_loan(BANK) is None, 10, "the loan closed")
    assert hub.writer.flush(5)
    with hub.store.engine.connect() as conn:
        (row,) = conn.execute(sa.select(loans)).mappings()
    assert row["returned_sid"] == OTHER and row["returned_ms"] == returned_ms
    clock.advance(CONFIRM_S + 60)
    hub.evaluate_alerts()
    assert overdue_alerts(hub) == []


def test_a_return_no_state_confirms_raises_bank_overdue(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    lender, other = senders
    lent(hub, lender)
    other.state({1: None})
    clock.advance(600)
    other.event("bank_returned", slot=1, bank=BANK, charge=40, rider=None)
    wait_until(lambda: seen(hub, other), 10, "the return heard")
    other.state({1: None})  # its next State does not show the bank
    clock.advance(CONFIRM_S - 1)
    hub.evaluate_alerts()
    assert overdue_alerts(hub) == [] and hub.fleet.loans.open_loan(BANK) is not None
    clock.advance(2)
    hub.evaluate_alerts()
    wait_until(lambda: overdue_alerts(hub), 10, "bank_overdue at the lending station")
    assert hub.fleet.loans.open_count(LENDER) == 1  # a day before its own due time


def test_a_return_at_the_lending_station_closes_at_once(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    lender, _ = senders
    lent(hub, lender)
    clock.advance(600)
    lender.event("bank_returned", slot=2, bank=BANK, charge=40, rider=None)
    wait_until(lambda: hub.fleet.loans.open_loan(BANK) is None, 10, "the loan closed")
    assert hub.fleet.loans.claimed(BANK) is None


def test_a_borrow_elsewhere_no_state_of_that_station_showed_does_not_close_the_loan(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    # A stolen identity of OTHER says it lent LENDER's bank: only its word.
    lender, other = senders
    lent(hub, lender)
    loan = hub.fleet.loans.open_loan(BANK)
    other.state({1: None})
    clock.advance(600)
    other.event("bank_borrowed", slot=1, bank=BANK, charge=40, rider=examples.RIDER)
    wait_until(lambda: seen(hub, other), 10, "the borrow heard")
    time.sleep(0.3)  # whatever the hub would do with it, done by now
    assert hub.fleet.loans.open_loan(BANK) == loan
    assert hub.fleet.loans.claimed(BANK).sid == OTHER
    assert hub.writer.flush(5)
    with hub.store.engine.connect() as conn:
        (row,) = conn.execute(sa.select(loans)).mappings()
    assert row["sid"] == LENDER and row["returned_ms"] is None
    # No State of OTHER shows it within ten minutes: overdue at the lender.
    clock.advance(CONFIRM_S + 1)
    hub.evaluate_alerts()
    wait_until(lambda: overdue_alerts(hub), 10, "bank_overdue at the lending station")


def test_a_bank_back_unheard_and_borrowed_again_there_closes_the_loan_where_it_was_seen(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    # The rider brought it to OTHER and that return's event was lost (a wiped
    # station); OTHER's State shows the bank, then someone borrows it there.
    lender, other = senders
    lent(hub, lender)
    clock.advance(600)
    seen_ms = clock.ms()
    other.state({1: BANK})
    wait_until(lambda: hub.fleet.loans.open_loan(BANK) is None, 10, "the loan closed")
    clock.advance(60)
    other.event("bank_borrowed", slot=1, bank=BANK, charge=96, rider=examples.RIDER)
    wait_until(lambda: (new := hub.fleet.loans.open_loan(BANK)) and new.sid == OTHER, 10,
               "the new loan open at the other station")
    assert hub.fleet.loans.claimed(BANK) is None
    assert hub.writer.flush(5)
    with hub.store.engine.connect() as conn:
        first, second = conn.execute(sa.select(loans).order_by(loans.c.id)).mappings()
    assert first["sid"] == LENDER and first["returned_sid"] == OTHER
    assert first["returned_ms"] == seen_ms  # the hub's receipt of that State
    assert second["sid"] == OTHER and second["returned_ms"] is None


def test_claiming_again_does_not_put_the_alert_off(
        hub: Hub, senders: tuple[Sender, Sender], clock: ManualClock) -> None:
    lender, other = senders
    lent(hub, lender)
    other.state({1: None})
    other.event("bank_returned", slot=1, bank=BANK, charge=40, rider=None)
    wait_until(lambda: hub.fleet.loans.claimed(BANK), 10, "the claim")
    clock.advance(CONFIRM_S - 60)
    other.event("bank_returned", slot=1, bank=BANK, charge=40, rider=None)
    wait_until(lambda: seen(hub, other), 10, "the second return heard")
    clock.advance(61)
    hub.evaluate_alerts()
    wait_until(lambda: overdue_alerts(hub), 10, "bank_overdue at the first deadline")
