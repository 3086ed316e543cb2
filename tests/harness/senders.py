"""Two stations as the broker sees them, for the hub's loan tests: MQTT clients
publishing a station's retained Status, its States and its events, on a clock
the test moves. ``LENDER`` lends, ``OTHER`` is where a bank may come back.

    with sender_pair(broker, clock) as (lender, other):
        listening(hub, lender, other)
        lender.state({1: BANK})
        lender.event("bank_borrowed", slot=1, bank=BANK, charge=96, rider=RIDER)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from hub.service import Hub
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


@contextlib.contextmanager
def sender_pair(broker: Broker, clock: ManualClock) -> Iterator[tuple[Sender, Sender]]:
    """``(lender, other)``, closed afterwards."""
    lender, other = Sender(broker, LENDER, clock), Sender(broker, OTHER, clock)
    try:
        yield lender, other
    finally:
        lender.close()
        other.close()


def hub_config(broker: Broker, database: str, *, http_port: int = 0) -> dict[str, Any]:
    """A hub that knows both stations, on ``broker`` and ``database``."""
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": database,
        "http": {"host": "127.0.0.1", "port": http_port},
        "stations": [{"sid": LENDER, "name": "楚门镇先锋驿站", "group": "chumen"},
                     {"sid": OTHER, "name": "坎门驿站", "group": "kanmen"}],
        # States an hour apart are promised, so moving the clock keeps both online.
        "timing": {"heartbeat": "1h"},
    }


def listening(hub: Hub, *senders: Sender) -> None:
    """The hub has the senders' retained online Status: its subscription is in place,
    so what they publish next reaches it. ``Hub.start()`` connects in the background,
    and an event published before the hub subscribes is lost for good (the broker
    keeps no session for it yet, and a Sender answers no replay)."""
    for sender in senders:
        wait_until(lambda s=sender: (v := hub.fleet.get(s.sid)) is not None
                   and v.online and v.epoch == EPOCH, 10,
                   f"the hub listening to {sender.sid}")
