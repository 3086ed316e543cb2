"""A return at another station is a claim until that station's State shows the bank
(issue 14, finding 6).

A stolen station identity must not close other stations' loans by publishing
``bank_returned`` for their banks: the hub here is the real one in process, on a
real Mosquitto and a SQLite file, on a clock the test moves; the two stations
are MQTT clients publishing what a station publishes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import loans
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mosquitto import Broker
from tests.harness.mqtt import close, connect
from tests.harness.procs import wait_until
from yizhan.clock import ManualClock

LENDER = "yh-chumen-01"
OTHER = "yh-kanmen-01"
EPOCH = "9f2c01ab"
BANK = "PB0012AF"
#: How long a return elsewhere may stay unconfirmed (docs/alerts.md, bank_overdue).
CONFIRM_S = 10 * 60


class Sender:
    """One station as the broker sees it: its Status, States and events."""

    def __init__(self, broker: Broker, sid: str, clock: ManualClock) -> None:
        self.sid, self.clock = sid, clock
        self.client = connect(broker, client_id=f"test-{sid}")
        self.rev, self.seq = 100, 0
        self.rev += 1
        status = m.Status.online(sid, EPOCH, clock.ms(), True, self.rev, 0, "1.0.0", {})
        self._publish(Kind.STATUS, status.to_dict(), retain=True)

    def _publish(self, kind: Kind, doc: dict, retain: bool = False) -> None:
        info = self.client.publish(topic(self.sid, kind), json.dumps(doc), qos=1,
                                   retain=retain)
        info.wait_for_publish(5)

    def state(self, banks: dict[int, str | None]) -> None:
        doc = examples.example("state")
        doc["lockers"]["slots"] = [
            {"slot": n, "bank": bank, "charge": 96 if bank else None, "charging": False,
             "locked": True, "fault": None, "temp_c": None, "cycles": None}
            for n, bank in sorted(banks.items())]
        self.rev += 1
        doc.update(sid=self.sid, epoch=EPOCH, ts=self.clock.ms(), rev=self.rev,
                   last_seq=self.seq)
        self._publish(Kind.STATE, doc)

    def event(self, type_: str, **data: Any) -> None:
        self.seq += 1
        ev = m.Event(self.sid, EPOCH, self.clock.ms(), True, self.seq, type_, data)
        self._publish(Kind.EVENT, ev.to_dict())

    def close(self) -> None:
        close(self.client)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker of this test's own: the session's holds other tests' retained
    Statuses and States of the same station ids, which the hub would take in."""
    return broker_factory()


@pytest.fixture
def hub(tmp_path: Path, broker: Broker, clock: ManualClock) -> Iterator[Hub]:
    config = parse_hub_config({
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": 0},
        "stations": [{"sid": LENDER, "name": "楚门镇先锋驿站", "group": "chumen"},
                     {"sid": OTHER, "name": "坎门驿站", "group": "kanmen"}],
        # States an hour apart are promised, so moving the clock keeps both online.
        "timing": {"heartbeat": "1h"},
    })
    h = Hub(config, clock=clock, registry=CollectorRegistry())
    h.start()
    try:
        yield h
    finally:
        h.close()


def listening(hub: Hub, *senders: Sender) -> None:
    """The hub has the senders' retained online Status: its subscription is in place,
    so what they publish next reaches it. ``Hub.start()`` connects in the background,
    and an event published before the hub subscribes is lost for good (the broker
    keeps no session for it yet, and a Sender answers no replay)."""
    for sender in senders:
        wait_until(lambda s=sender: (v := hub.fleet.get(s.sid)) is not None
                   and v.online and v.epoch == EPOCH, 10,
                   f"the hub listening to {sender.sid}")


@pytest.fixture
def senders(hub: Hub, broker: Broker, clock: ManualClock) -> Iterator[tuple[Sender, Sender]]:
    lender, other = Sender(broker, LENDER, clock), Sender(broker, OTHER, clock)
    listening(hub, lender, other)
    yield lender, other
    lender.close()
    other.close()


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
