"""Lending through the real parts: the board simulator on a pty, the real
LockerBoard and Locker (with its own thread), a real Journal and DirectoryStore
in tmp_path, all on one ManualClock.

The test pulls and pushes banks at the board simulator (``board.take``,
``board.insert``) and reads the events back from the journal's SQLite file,
where the outbox finds them. The station helpers here are reused by
test_localapi.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from firmware.directory import DirectoryStore, hash_pin
from firmware.hardware.board import BoardOffline, LockerBoard
from firmware.journal import Journal
from firmware.lending import BorrowAttempt, Lending, PinRefused, SessionEnded
from firmware.locker import Locker
from firmware.parts import RecordingReporter
from firmware.sim import BoardSimulator
from firmware.sim.riders import SimRiders
from protocol.frames import Cmd
from protocol.ids import rider_id
from protocol.messages import Directory, Policy, RiderEntry, StaffEntry
from yizhan.clock import ManualClock

FLEET_KEY = b"test-fleet-key"
RIDER = rider_id(FLEET_KEY, "13800138000")
RIDER_2 = rider_id(FLEET_KEY, "13900139000")
# Few rounds: the tests are about the rules, not PBKDF2's cost.
ROUNDS = 1000


def wait_until(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def directory(rev: int = 1, *, lending: str = "open", max_per_rider: int = 1,
              min_charge: int = 80, riders: Iterable[tuple[str, str]] = (),
              staff: Iterable[tuple[str, str, str]] = (("li", "李师傅", "2468"),),
              denied: Iterable[str] = ()) -> Directory:
    """A Directory with PINs hashed as the hub would (fewer rounds)."""
    return Directory(
        rev=rev, ts=1_764_196_700_000,
        policy=Policy(lending, min_charge, max_per_rider, 24),
        riders=tuple(RiderEntry(r, hash_pin(p, iterations=ROUNDS)) for r, p in riders),
        staff=tuple(StaffEntry(s, n, hash_pin(p, iterations=ROUNDS)) for s, n, p in staff),
        denied=tuple(denied),
    )


@dataclass
class Station:
    board: BoardSimulator
    clock: ManualClock
    journal: Journal
    reporter: RecordingReporter
    locker: Locker
    directory: DirectoryStore
    lending: Lending
    doors: Any = None
    _closed: bool = field(default=False)

    def sync(self) -> None:
        """An immediate STATUS: the locker's listeners see the board as it is now."""
        self.locker.refresh()

    def events(self, type_: str | None = None) -> list[tuple[str, dict]]:
        """Events in the journal file, oldest first (only ``type_`` when given)."""
        with sqlite3.connect(self.journal.path) as db:
            rows = db.execute("SELECT type, data FROM events ORDER BY seq").fetchall()
        return [(t, json.loads(d)) for t, d in rows if type_ in (None, t)]

    def data(self, type_: str) -> list[dict]:
        return [d for _, d in self.events(type_)]

    def wait(self, attempt_id: str, *states: str, timeout: float = 3.0) -> BorrowAttempt:
        def reached():
            a = self.lending.attempt(attempt_id)
            return a if a is not None and a.state in states else None

        return wait_until(reached, timeout, f"attempt {attempt_id} to be {states}: "
                                            f"{self.lending.attempt(attempt_id)}")

    def borrow_and_take(self, rider: str = RIDER) -> BorrowAttempt:
        a = self.lending.borrow(rider)
        a = self.wait(a.id, "open")
        self.board.take(a.slot)
        self.sync()
        return self.wait(a.id, "taken")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.lending.close()
        self.locker.close()
        self.journal.close()


class StationFactory:
    """``make(banks=..., doors=..., **lending options) -> Station``; ``restart(station)``."""

    def __init__(self, clock: ManualClock, tmp_path: Path) -> None:
        self.clock = clock
        self.tmp_path = tmp_path
        self.made: list[Station] = []
        self.boards: list[BoardSimulator] = []

    def board(self, banks: dict | None = None, **options: Any) -> BoardSimulator:
        sim = BoardSimulator(clock=self.clock, banks=banks,
                             link_path=self.tmp_path / f"tty{len(self.boards)}", **options)
        self.boards.append(sim.start())
        return sim

    def make(self, board: BoardSimulator | None = None, *, banks: dict | None = None,
             doors: Any = None, data_dir: Path | None = None, start: bool = True,
             **options: Any) -> Station:
        board = board or self.board(banks)
        data_dir = data_dir or self.tmp_path / "data"
        reporter = RecordingReporter()
        journal = Journal(data_dir)
        locker = Locker(LockerBoard(board.port, timeout=0.05), reporter, self.clock)
        store = DirectoryStore(data_dir / "directory.json", self.clock)
        lending = Lending(locker, journal, reporter, self.clock, store, doors, **options)
        station = Station(board, self.clock, journal, reporter, locker, store, lending, doors)
        self.made.append(station)
        if start:
            locker.start()
            station.sync()
        return station

    def restart(self, station: Station, **options: Any) -> Station:
        """The agent stops and starts again on the same board and data directory."""
        station.close()
        return self.make(station.board, doors=station.doors,
                         data_dir=station.journal.path.parent, **options)

    def close(self) -> None:
        for s in reversed(self.made):
            s.close()
        for b in self.boards:
            b.stop()


@pytest.fixture
def stations(clock: ManualClock, tmp_path: Path) -> Iterator[StationFactory]:
    factory = StationFactory(clock, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def station(stations: StationFactory) -> Station:
    """A 12-slot cabinet of the simulator's default banks; ready (>= 80 %):
    slot 7 (98 %), 3 (91 %), 10 (88 %), 6 (81 %)."""
    return stations.make()


# -- borrowing -----------------------------------------------------------------------------


def test_borrow_happy_path(station: Station) -> None:
    before = len(station.board.frames_received)
    attempt = station.lending.borrow(RIDER)
    assert attempt.state in ("releasing", "open") and attempt.slot == 7

    unlock = station.board.wait_for_frame(Cmd.UNLOCK, after=before)
    assert unlock.payload[0] == 7  # the fullest bank
    opened = station.wait(attempt.id, "open")
    assert opened.bank == "PB0012A7" and opened.open_until == station.clock.ms() + 30_000
    assert station.data("bank_borrowed") == []  # open is not taken (design principle 4)

    station.board.take(7)
    station.sync()
    taken = station.wait(attempt.id, "taken")

    assert taken.bank == "PB0012A7" and taken.charge == 98
    assert station.data("bank_borrowed") == [
        {"slot": 7, "bank": "PB0012A7", "charge": 98, "rider": RIDER}]
    [loan] = station.lending.open_loans()
    assert (loan.rider, loan.bank, loan.slot, loan.charge) == (RIDER, "PB0012A7", 7, 98)
    assert loan.due_ts == loan.borrowed_ts + 24 * 3_600_000
    assert station.journal.counters()["borrows"] == 1
    assert station.reporter.changes > 0


def test_a_second_tap_gets_the_attempt_under_way(station: Station) -> None:
    first = station.lending.borrow(RIDER)
    again = station.lending.borrow(RIDER)
    assert again.id == first.id
    station.wait(first.id, "open")
    assert [f.payload[0] for f in station.board.frames_received if f.cmd == Cmd.UNLOCK] == [7]


def test_two_riders_get_two_slots(station: Station) -> None:
    a = station.lending.borrow(RIDER)
    b = station.lending.borrow(RIDER_2)
    assert {a.slot, b.slot} == {7, 3}


def test_not_taken_when_the_lock_reengages(station: Station) -> None:
    attempt = station.lending.borrow(RIDER)
    station.wait(attempt.id, "open")
    station.sync()  # the locker sees the slot unlocked
    station.clock.advance(11)  # the board's 10 s release window ends, the bank still in
    station.sync()
    failed = station.wait(attempt.id, "failed")
    assert failed.reason == "not_taken"
    assert station.data("unlock_failed") == [{"slot": 7, "reason": "not_taken"}]
    assert station.lending.open_loans() == [] and station.data("bank_borrowed") == []
    # The next rider is offered another slot while 7 is held back.
    assert station.lending.borrow(RIDER_2).slot == 3


def test_not_taken_after_the_take_timeout(station: Station) -> None:
    attempt = station.lending.borrow(RIDER)
    station.wait(attempt.id, "open")
    station.board.silent()  # the board stops answering: no relock will be seen
    station.clock.advance(29)
    station.lending.poll()
    assert station.lending.attempt(attempt.id).state == "open"
    station.clock.advance(1)
    station.lending.poll()
    assert station.lending.attempt(attempt.id).reason == "not_taken"
    assert station.data("unlock_failed") == [{"slot": 7, "reason": "not_taken"}]


def test_jammed_lock(station: Station) -> None:
    station.board.jam(7)  # after the locker's last look: it still thinks 7 is fine
    attempt = station.lending.borrow(RIDER)
    assert attempt.slot == 7
    failed = station.wait(attempt.id, "failed")
    assert failed.reason == "jammed"
    assert station.data("unlock_failed") == [{"slot": 7, "reason": "jammed"}]
    assert station.lending.borrow(RIDER).slot == 3  # 7 is passed over


def test_board_unplugged(station: Station) -> None:
    station.board.unplug()  # the locker has not noticed yet: the release finds out
    attempt = station.lending.borrow(RIDER)
    failed = station.wait(attempt.id, "failed")
    assert failed.reason == "board_offline"
    assert station.data("unlock_failed") == [{"slot": 7, "reason": "board_offline"}]

    for _ in range(3):  # the locker's polls fail too, and it calls the board offline
        station.clock.advance(30)
        with contextlib.suppress(BoardOffline):
            station.sync()
    assert not station.locker.online
    refused = station.lending.borrow(RIDER)
    assert (refused.state, refused.reason) == ("failed", "board_offline")
    assert len(station.data("unlock_failed")) == 1  # nothing was tried, nothing to report


def test_no_ready_bank_says_when_one_will_be(stations: StationFactory) -> None:
    station = stations.make(banks={1: ("PB01", 70), 2: ("PB02", 50), 3: ("PB03", 95)})
    station.board.set_fault(3, "overheat")  # a full bank in a faulty slot is no bank
    station.sync()
    attempt = station.lending.borrow(RIDER)
    assert (attempt.state, attempt.reason) == ("failed", "no_ready")
    # 70 % -> 80 % at about 1 % a minute.
    assert attempt.ready_at == station.clock.ms() + 10 * 60_000
    assert station.lending.readiness().next_ready_at == attempt.ready_at
    assert station.events() == []  # a refusal is no hardware failure

    station.clock.advance(10 * 60)
    station.sync()
    assert station.lending.borrow(RIDER).slot == 1


def test_registered_lending_checks_the_pin_and_locks_out(station: Station,
                                                        stations: StationFactory) -> None:
    station.directory.apply(directory(lending="registered", riders=[(RIDER, "4821")]))
    lending = station.lending

    assert lending.borrow(RIDER_2, "4821").reason == "not_registered"
    assert lending.borrow(RIDER).reason == "pin_required"
    tries = [lending.borrow(RIDER, "0000") for _ in range(5)]
    assert [a.reason for a in tries] == ["bad_pin"] * 4 + ["locked_out"]
    assert [a.tries_left for a in tries] == [4, 3, 2, 1, 0]
    assert tries[-1].locked_until == station.clock.ms() + 15 * 60_000
    assert lending.borrow(RIDER, "4821").reason == "locked_out"  # even the right PIN

    station = stations.restart(station)  # a restart does not lift it
    assert station.lending.borrow(RIDER, "4821").reason == "locked_out"
    station.clock.advance(15 * 60)
    ok = station.lending.borrow(RIDER, "4821")
    assert ok.state in ("releasing", "open") and ok.slot == 7
    station.wait(ok.id, "open")
    unlocks = [f for f in station.board.frames_received if f.cmd == Cmd.UNLOCK]
    assert len(unlocks) == 1  # no refused try opened anything


def test_open_lending_needs_no_pin(station: Station) -> None:
    assert station.lending.borrow(RIDER).state in ("releasing", "open")


def test_denied_rider(station: Station) -> None:
    station.directory.apply(directory(denied=[RIDER]))
    assert station.lending.borrow(RIDER).reason == "denied"
    assert station.lending.borrow(RIDER_2).state != "failed"


def test_max_per_rider(station: Station) -> None:
    station.borrow_and_take(RIDER)
    refused = station.lending.borrow(RIDER)
    assert (refused.state, refused.reason) == ("failed", "limit")
    station.directory.apply(directory(rev=2, max_per_rider=2))
    second = station.borrow_and_take(RIDER)
    assert second.slot == 3 and len(station.lending.open_loans(RIDER)) == 2


def test_malformed_rider_or_pin_changes_nothing(station: Station) -> None:
    for bad in ("13800138000", "r:XYZ", "", None):
        with pytest.raises(ValueError):
            station.lending.borrow(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        station.lending.borrow(RIDER, "12")
    assert not [f for f in station.board.frames_received if f.cmd == Cmd.UNLOCK]
    assert station.events() == []


# -- returns -------------------------------------------------------------------------------


def test_return_is_matched_to_the_loan(station: Station) -> None:
    taken = station.borrow_and_take(RIDER)
    since = station.clock.ms()
    station.clock.advance(3600)
    station.board.insert(taken.slot, "PB0012A7", 35)
    station.sync()
    returned = wait_until(lambda: station.data("bank_returned"), what="bank_returned")
    assert returned == [{"slot": 7, "bank": "PB0012A7", "charge": 35, "rider": RIDER,
                         "borrowed_ts": since, "duration_s": 3600}]
    assert station.lending.open_loans() == []
    [back] = station.lending.recent_returns(since)
    assert (back.rider, back.duration_s, back.slot) == (RIDER, 3600, 7)
    assert station.lending.recent_returns(station.clock.ms() + 1) == []
    assert station.journal.counters()["returns"] == 1


def test_return_into_another_slot(stations: StationFactory) -> None:
    station = stations.make(banks={1: ("PB01", 95)})
    station.borrow_and_take(RIDER)
    station.board.insert(5, "PB01", 60)
    station.sync()
    [data] = wait_until(lambda: station.data("bank_returned"))
    assert (data["slot"], data["rider"]) == (5, RIDER)


def test_unknown_bank_returned(stations: StationFactory) -> None:
    station = stations.make(banks={1: ("PB01", 95)})
    station.board.insert(2, "PBX9", 20)
    station.sync()
    assert wait_until(lambda: station.data("bank_returned")) == [
        {"slot": 2, "bank": "PBX9", "charge": 20, "rider": None}]
    [back] = station.lending.recent_returns(0)
    assert back.rider is None and back.duration_s is None


def test_loans_survive_a_restart(station: Station, stations: StationFactory) -> None:
    station.borrow_and_take(RIDER)
    station = stations.restart(station)
    [loan] = station.lending.open_loans()
    assert loan.rider == RIDER
    station.board.insert(7, "PB0012A7", 50)
    station.sync()
    [data] = wait_until(lambda: station.data("bank_returned"))
    assert data["rider"] == RIDER


def test_a_bank_returned_while_the_agent_was_down(station: Station,
                                                  stations: StationFactory) -> None:
    station.borrow_and_take(RIDER)
    station.close()
    station.board.insert(7, "PB0012A7", 50)  # nobody is watching
    station = stations.restart(station)
    [data] = wait_until(lambda: station.data("bank_returned"))
    assert (data["rider"], data["slot"]) == (RIDER, 7)
    assert station.lending.open_loans() == []


def test_a_bank_taken_without_a_borrow_is_no_loan(station: Station) -> None:
    # A hub "unlock" command by staff: the locker opens, nobody here knows the rider.
    station.locker.release(1)
    station.board.take(1)
    station.sync()
    assert station.data("bank_borrowed") == [] and station.lending.open_loans() == []


# -- maintenance ---------------------------------------------------------------------------


@pytest.fixture
def staffed(stations: StationFactory, pin_factory: Any) -> Station:
    """Slots 1-2 empty; a locker panel door on GPIO 27; staff li (PIN 2468)."""
    from firmware.doors import Doors, DoorSpec

    banks = {n: (f"PB{n:02d}", 90) for n in range(3, 7)}
    reporter = RecordingReporter()
    doors = Doors({"locker_panel": DoorSpec(27, panel=True, bounce=0.0)}, reporter,
                  stations.clock, pin_factory=pin_factory)
    pin_factory.pin(27).drive_low()  # the panel is shut
    doors.poll()
    reporter.events.clear()
    station = stations.make(banks=banks, doors=doors)
    station.directory.apply(directory())
    station.door_reporter = reporter  # type: ignore[attr-defined]
    yield station
    doors.close()


def test_maintenance_restock(staffed: Station, pin_factory: Any) -> None:
    s, lending = staffed, staffed.lending
    with pytest.raises(PinRefused) as refused:
        lending.start_maintenance("li", "1111")
    assert refused.value.reason == "bad_pin" and refused.value.tries_left == 4
    assert s.data("maintenance_started") == []

    session = lending.start_maintenance("li", "2468")
    assert s.data("maintenance_started") == [{"staff": "li"}]
    assert s.doors.maintenance is True

    # The panel opens: no tamper while staff work.
    pin_factory.pin(27).drive_high()
    s.doors.poll()
    assert s.door_reporter.types() == ["door_opened"]

    before = len(s.board.frames_received)
    outcomes = session.release_empty()
    assert [o.to_dict() for o in outcomes] == [
        {"slot": n, "result": "released"} for n in (1, 2, *range(7, 13))]
    assert [f.payload[0] for f in s.board.frames_received[before:] if f.cmd == Cmd.UNLOCK] \
        == [1, 2, *range(7, 13)]

    s.board.insert(1, "PBNEW1", 100)
    s.board.insert(2, "PBNEW2", 100)
    s.sync()
    wait_until(lambda: lending.maintenance.banks_in == 2, what="two restocked banks")
    assert s.data("bank_returned") == []  # restocks are no returns

    session.confirm_refill("water")
    assert s.data("refilled") == [{"what": "water", "staff": "li"}]
    session.end()
    assert s.data("refilled")[-1] == {"what": "banks", "staff": "li", "count": 2}
    assert s.data("maintenance_ended") == [{"staff": "li", "reason": "ended"}]
    assert s.doors.maintenance is False
    assert s.journal.counters()["returns"] == 0

    # The panel opening now is tamper.
    pin_factory.pin(27).drive_low()
    s.doors.poll()
    pin_factory.pin(27).drive_high()
    s.doors.poll()
    assert s.door_reporter.types()[-1] == "tamper"


def test_confirmed_bank_refill_is_reported_once(staffed: Station) -> None:
    session = staffed.lending.start_maintenance("li", "2468")
    session.release_slot(1)
    staffed.board.insert(1, "PBNEW1", 100)
    staffed.sync()
    wait_until(lambda: session.banks_in == 1)
    session.confirm_refill("banks")
    session.end()
    assert staffed.data("refilled") == [{"what": "banks", "staff": "li", "count": 1}]


def test_banks_taken_out_in_maintenance_are_no_borrows(staffed: Station) -> None:
    session = staffed.lending.start_maintenance("li", "2468")
    assert session.release_slot(3).result == "released"
    staffed.board.take(3)
    staffed.sync()
    wait_until(lambda: session.banks_out == 1)
    assert staffed.data("bank_borrowed") == [] and staffed.lending.open_loans() == []
    session.end()
    assert staffed.data("refilled") == []  # nothing went in


def test_a_loaned_bank_handed_to_staff_is_still_returned(staffed: Station) -> None:
    staffed.borrow_and_take(RIDER)
    session = staffed.lending.start_maintenance("li", "2468")
    staffed.board.insert(1, staffed.data("bank_borrowed")[0]["bank"], 40)
    staffed.sync()
    [data] = wait_until(lambda: staffed.data("bank_returned"))
    assert data["rider"] == RIDER and session.banks_in == 0


def test_no_borrowing_during_maintenance(staffed: Station) -> None:
    staffed.lending.start_maintenance("li", "2468")
    assert staffed.lending.borrow(RIDER).reason == "maintenance"


def test_staff_release_of_a_jammed_slot(staffed: Station) -> None:
    session = staffed.lending.start_maintenance("li", "2468")
    staffed.board.jam(4)
    assert session.release_slot(4).result == "jammed"
    assert staffed.data("unlock_failed") == [{"slot": 4, "reason": "jammed"}]
    with pytest.raises(ValueError):
        session.release_slot(99)


def test_maintenance_ends_after_inactivity(staffed: Station) -> None:
    session = staffed.lending.start_maintenance("li", "2468")
    staffed.clock.advance(9 * 60)
    session.confirm_refill("cups")  # activity keeps it open
    staffed.clock.advance(9 * 60)
    staffed.sync()  # banks charging meanwhile are no staff activity
    staffed.lending.poll()
    assert session.active
    staffed.clock.advance(60)
    staffed.sync()
    staffed.lending.poll()
    assert not session.active
    assert staffed.data("maintenance_ended") == [{"staff": "li", "reason": "idle"}]
    assert staffed.doors.maintenance is False
    with pytest.raises(SessionEnded):
        session.release_empty()


def test_another_staff_takes_over(staffed: Station) -> None:
    staffed.directory.apply(directory(rev=2, staff=[("li", "李师傅", "2468"),
                                                    ("wang", "王师傅", "1357")]))
    first = staffed.lending.start_maintenance("li", "2468")
    assert staffed.lending.start_maintenance("li", "2468").id == first.id
    second = staffed.lending.start_maintenance("wang", "1357")
    assert not first.active and second.active and staffed.doors.maintenance is True
    assert staffed.data("maintenance_ended") == [{"staff": "li", "reason": "replaced"}]


def test_staff_lockout_persists(staffed: Station, stations: StationFactory) -> None:
    for _ in range(5):
        with pytest.raises(PinRefused):
            staffed.lending.start_maintenance("li", "0000")
    staffed = stations.restart(staffed)
    with pytest.raises(PinRefused) as refused:
        staffed.lending.start_maintenance("li", "2468")
    assert refused.value.reason == "locked_out"


def test_a_session_open_at_restart_is_ended(staffed: Station, stations: StationFactory) -> None:
    staffed.lending.start_maintenance("li", "2468")
    staffed = stations.restart(staffed)
    assert staffed.lending.maintenance is None
    assert staffed.data("maintenance_ended") == [{"staff": "li", "reason": "restart"}]


# -- simulated riders ----------------------------------------------------------------------


def test_simulated_riders_borrow_and_return(station: Station) -> None:
    riders = SimRiders(station.lending, station.board, station.clock, fleet_key=FLEET_KEY,
                       rng=random.Random(3), mean_interval=60, mean_loan=600, walk_off=0.0)
    end = station.clock.monotonic() + 2 * 3600
    while station.clock.monotonic() < end:  # two hours: 30 s steps, 1 s at the kiosk
        station.clock.advance(1 if riders.waiting else 30)
        station.sync()
        riders.tick()
        station.lending.poll()
    station.sync()  # the last take, if any, reaches the loans
    riders.tick()
    assert riders.borrowed >= 3 and riders.returned >= 2
    borrowed = station.data("bank_borrowed")
    returned = station.data("bank_returned")
    assert len(borrowed) == riders.borrowed
    assert {d["rider"] for d in borrowed} <= set(riders.riders)
    assert all(d["rider"] is not None for d in returned)
    assert len(station.lending.open_loans()) == riders.out
