"""The whole agent on a cabinet of lock-control boards (``hardware: sim`` with
``lockers.driver``): the boards' byte-level simulators on pseudo-terminals, the
real drivers, Cabinet, Locker and Lending, a real Mosquitto, the local API over
HTTP. What the hub would see is read off the broker and decoded by the contract.

A simulated bank fills in ``charge_time: 3s`` (the simulator accepts seconds, a
Pi's file at least a minute), so the wait for the first lendable bank is a few
real seconds, bounded.
"""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber
from tests.harness.procs import wait_until
from tests.test_agent import FLEET_KEY, SID, running  # noqa: F401 - the fixture

CABINETS = {
    "lock8a": {"driver": "lock8a", "slots": 4, "poll_interval": "250ms",
               "charging": {"driver": "modbus-io", "charge_time": "3s", "occupancy": "inputs"}},
    "kerong-cu16": {"driver": "kerong-cu16", "slots": 4, "poll_interval": "250ms",
                    "charging": {"driver": "modbus-io", "charge_time": "3s"}},
}


@pytest.mark.parametrize("driver", sorted(CABINETS))
def test_a_lock_board_cabinet_lends_on_estimated_charge(running, driver):  # noqa: F811
    with Subscriber(running.broker, [topic(SID, Kind.EVENT), topic(SID, Kind.STATE)]) as sub:
        r = running(lockers=CABINETS[driver])
        cabinet = r.hardware.simulation.cabinet
        assert r.hardware.board.info() == (4, f"{driver} x1 + modbus-io")

        def state_with(pred):
            msg = sub.wait_for(lambda x: x.topic.endswith("/state") and pred(
                m.decode(Kind.STATE, x.payload, topic_sid=SID)), timeout=15)
            return m.decode(Kind.STATE, msg.payload, topic_sid=SID)

        # Four banks found, none known charged: estimated, no ids, counting up.
        first = state_with(lambda s: s.lockers is not None and len(s.lockers.slots) == 4)
        assert all(s.estimated and s.bank is None and s.temp_c is None
                   for s in first.lockers.slots)
        ready = state_with(lambda s: all(x.charge == 100 for x in s.lockers.slots))
        assert all(not x.charging for x in ready.lockers.slots)
        assert all(cabinet.coil(n) for n in range(1, 5))  # power on the banks

        rider = rider_id(FLEET_KEY, "13812345678")
        status, body = r.post("/v1/borrow", {"rider": rider})
        assert status == 202, body
        attempt = body["attempt"]
        assert attempt["bank"] is None

        def opened():
            a = r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]
            return a if a["state"] == "open" else None

        slot = wait_until(opened, 5, "the slot open")["slot"]
        assert not cabinet.lock(slot).locked  # the board pulsed that lock
        cabinet.take(slot)
        msg = sub.wait_for(lambda x: x.topic.endswith("/event")
                           and x.json()["type"] == "bank_borrowed", timeout=10)
        borrowed = m.decode(Kind.EVENT, msg.payload, topic_sid=SID)
        assert borrowed.data == {"slot": slot, "bank": None, "charge": 100, "rider": rider}
        cabinet.shut(slot)
        empty = state_with(lambda s: s.lockers.slots[slot - 1].charge is None
                           and s.lockers.slots[slot - 1].locked)
        assert empty.lockers.slots[slot - 1].estimated
        wait_until(lambda: not cabinet.coil(slot), 5, "the empty slot's charger off")
        r.stop()
