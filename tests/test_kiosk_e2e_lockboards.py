"""The kiosk end to end at a cabinet of lock-control boards (issue 18), once per
driver: a rider borrows and returns on the touchscreen.

As tests/test_kiosk_e2e.py (its fixtures and a rider's hands are reused): real
headless Chromium taps the real ``yizhan kiosk`` process, which talks to a real
agent on ``hardware: sim``; the agent drives the 8A/80 or KR-CU16 board
simulator and the Modbus relay module on pseudo-terminals and reports to a real
Mosquitto. These boards cannot read a bank's id or charge, so the station
lends on its **estimated** charge (a bank counts full after ``charge_time`` on
charging power read back on, 2 s here) and a return starts with the rider's
number, which opens a slot for them (docs/kiosk.md, "Return").

- ``lock8a``: no occupancy sensor at all, presence derived from the door
  (opened and shut again, the slot's content flipped). The cabinet starts with
  nothing the station knows of, so the rider first returns a bank lent
  elsewhere, it charges, and then the rider borrows it.
- ``kerong-cu16``: infrared occupancy sensors; the cabinet starts full, the
  banks charge, the rider borrows one and returns it, closing the loan.

The test is the rider's hands at the cabinet (``take``, ``shut``, ``insert`` on
the simulators) and watches the far edges: unlock frames on the serial line,
events and States on the broker.
"""

from __future__ import annotations

import pytest

from protocol.topics import Kind, topic
from tests import test_kiosk_e2e as e2e
from tests.harness.browser import SID, http_get
from tests.harness.mqtt import Subscriber
from tests.harness.procs import wait_until
from tests.test_kiosk_e2e import (
    PHONE,
    WAIT_MS,
    digits_in,
    go_home,
    tap,
    type_digits,
    wait_digits,
    wait_state,
)

# The browser and station fixtures of the YZ-LB1 kiosk tests.
chromium, open_page, page = e2e.chromium, e2e.open_page, e2e.page
make_station, shots_dir, shot = e2e.make_station, e2e.shots_dir, e2e.shot

pytestmark = pytest.mark.slow

SLOTS = 4
#: How long a simulated bank takes to count full (the simulator's minimum is 1 s).
CHARGE_TIME = "2s"


def lockers(driver: str) -> dict:
    return {"driver": driver, "slots": SLOTS, "poll_interval": "250ms",
            "charging": {"driver": "modbus-io", "port": "sim", "charge_time": CHARGE_TIME}}


def unlocked(cabinet) -> list[int]:
    """Station slots the agent sent an unlock for, in order (from what the
    simulators heard on the line)."""
    out = []
    for line in cabinet.lines:
        for heard in line.heard:
            r = heard.request
            lock = None
            if getattr(r, "header", None) == 0x8A:  # 8A/80: 8A board lock 11 BCC
                lock = (r.board, r.channel)
            elif getattr(r, "cmd", None) == 0x31:  # KR-CU16: 02 (board<<4|lock) 31 03 SUM
                lock = (r.board, r.lock + 1)
            if lock is not None:
                out.append((heard.at, next(n for n in range(1, cabinet.n_slots + 1)
                                           if cabinet.where(n)[0] is line
                                           and cabinet.where(n)[1:] == lock)))
    return [slot for _, slot in sorted(out)]


def ready_slots(station) -> list[int]:
    return [c["slot"] for c in station.api("/v1/station")["chargers"]["ready"]]


def slot_for_phone(station, page, button: str) -> tuple[int, list[int]]:
    """From home, ``button`` then the rider's number: the slot the page says is
    open, and the slots the board unlocked meanwhile."""
    cabinet = station.hardware.simulation.cabinet
    go_home(page, station)
    tap(page, button)
    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
    type_digits(page, PHONE)
    wait_digits(page, "#phone", PHONE)
    before = len(unlocked(cabinet))
    tap(page, "#next")
    wait_state(page, "open")
    return int(digits_in(page, "#slot")), unlocked(cabinet)[before:]


def borrow_on_screen(station, page) -> int:
    cabinet = station.hardware.simulation.cabinet
    ready = wait_until(lambda: ready_slots(station), 10, "a bank counted charged")
    slot, opened = slot_for_phone(station, page, "#borrow")
    assert slot in ready and opened == [slot]
    cabinet.take(slot)  # the rider takes the bank
    cabinet.shut(slot)  # and shuts the door
    wait_state(page, "taken")
    event = station.wait_event("bank_borrowed", slot=slot)
    assert event["data"]["bank"] is None  # the board cannot name it
    assert event["data"]["rider"] == station.rider(PHONE)
    assert event["data"]["charge"] == 100  # the estimate: full after charge_time
    return slot


def return_on_screen(station, page, shot=None) -> tuple[int, dict]:
    cabinet = station.hardware.simulation.cabinet
    # No bank id to match: the rider says who they are, as for a borrow.
    slot, opened = slot_for_phone(station, page, "#return")
    assert opened == [slot], "one empty slot opened for the return"
    if shot is not None:
        shot(page, "return-rider")  # docs/kiosk.md
    cabinet.insert(slot)  # the bank goes in, the door shuts behind it
    page.wait_for_selector("#thanks", state="visible", timeout=WAIT_MS)
    event = station.wait_event("bank_returned", slot=slot)
    assert event["data"]["bank"] is None
    assert event["data"]["rider"] == station.rider(PHONE)
    return slot, event


@pytest.fixture
def states(make_station):
    made = []

    def make(station):
        made.append(Subscriber(station.broker, [topic(SID, Kind.STATE)]))
        return made[-1]

    yield make
    for s in made:
        s.close()


def estimated_slots(states) -> list[dict]:
    """The slots of the newest State, which must say the charge is estimated."""
    slots = states.messages[-1].json()["lockers"]["slots"]
    assert all(s.get("estimated") is True for s in slots), slots
    return slots


def test_lock8a_a_rider_returns_then_borrows_on_estimated_charge(make_station, page, shot,
                                                                 states):
    station = make_station(lockers=lockers("lock8a"))
    st = states(station)
    cabinet = station.hardware.simulation.cabinet
    for n in range(1, SLOTS + 1):
        cabinet.fill(n, occupied=False)  # an empty cabinet (no sensor tells the station)
    assert station.api("/v1/station")["return_by"] == "rider"
    # Nothing the station has seen charged: nothing to lend.
    assert ready_slots(station) == []

    slot, event = return_on_screen(station, page, shot)
    assert "duration_s" not in event["data"]  # lent elsewhere: no loan here to close
    assert page.locator("#loan-time").inner_text().strip() == "—"

    # The bank charges on the relay the agent switched on, and is lent on that.
    assert borrow_on_screen(station, page) == slot
    wait_until(lambda: st.messages and next(
        s for s in estimated_slots(st) if s["slot"] == slot)["charge"] is None, 10,
        "a State with the slot empty again")

    # Hostile claim ids in the kiosk's URLs never reach the agent as a path.
    for path in ("/return/claim/" + "x" * 5000, "/return/claim/t-0000000000000000",
                 "/return/claim/t-0000000000000000/status.json", "/return/claim/..%2f..%2fv1"):
        status, body = http_get(station.kiosk_url + path)
        assert status == 404 and b"x" * 100 not in body, path


def test_kerong_cu16_a_rider_borrows_and_returns_on_estimated_charge(make_station, page,
                                                                     states):
    station = make_station(lockers=lockers("kerong-cu16"))
    st = states(station)
    slot = borrow_on_screen(station, page)
    wait_until(lambda: st.messages and any(s["charge"] == 100 for s in estimated_slots(st)),
               10, "a State with the estimated charges")

    back, event = return_on_screen(station, page)
    assert back == slot  # the only empty slot
    assert event["data"]["duration_s"] >= 0  # the rider's loan closed here
    assert page.locator("#loan-time").get_attribute("data-seconds") != ""
    assert station.api("/v1/station")["slots"]["empty"] == 0
