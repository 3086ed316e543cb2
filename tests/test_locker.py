"""Locker: the cabinet as the station knows it, on the board simulator.

Most tests drive ``poll_once()`` with the shared ManualClock (the simulator's
cabinet moves with the same clock), so due times and backoff are exact and
nothing sleeps; a few run the real locker thread on the real clock.
The board's serial timeout is shortened to 50 ms here: these tests are about
the locker's logic, the 200 ms wire timing is tested in test_locker_board.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from firmware.hardware.board import BoardOffline, LockerBoard
from firmware.locker import Locker
from firmware.parts import RecordingReporter
from firmware.sim import BoardSimulator
from protocol.frames import Cmd, SlotRecord, UnlockResult
from protocol.messages import Lockers
from yizhan.clock import Clock, ManualClock

Change = tuple[int, SlotRecord | None, SlotRecord]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def lb(board: BoardSimulator) -> Iterator[LockerBoard]:
    b = LockerBoard(board.port, timeout=0.05)
    yield b
    b.close()


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def locker(lb: LockerBoard, reporter: RecordingReporter, clock: ManualClock) -> Iterator[Locker]:
    lk = Locker(lb, reporter, clock, rng=random.Random(7))
    yield lk
    lk.close()


def changes_of(locker: Locker) -> list[Change]:
    seen: list[Change] = []
    locker.add_listener(lambda n, before, after: seen.append((n, before, after)))
    return seen


def fail_polls(locker: Locker, clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(locker.poll_interval)
        assert locker.poll_once()


# -- the picture of the cabinet ----------------------------------------------------------


def test_first_poll_learns_the_cabinet(
    board: BoardSimulator, locker: Locker, reporter: RecordingReporter
) -> None:
    seen = changes_of(locker)
    assert not locker.online and locker.slots() == [] and locker.describe() == {"slots": 0}
    assert locker.poll_once()
    assert locker.online
    assert locker.n_slots == 12 and locker.firmware == "YZ-SIM-1.0"
    assert locker.describe() == {"slots": 12}
    assert locker.slots() == [board.slot(n) for n in range(1, 13)]
    assert [(n, before) for n, before, _ in seen] == [(n, None) for n in range(1, 13)]
    # First contact is not an outage ending: no locker_online, but the State changed.
    assert reporter.types() == [] and reporter.changes >= 1
    cmds = [f.cmd for f in board.frames_received]
    assert cmds == [Cmd.INFO, Cmd.STATUS]


def test_polls_follow_the_clock(board: BoardSimulator, locker: Locker, clock: ManualClock) -> None:
    assert locker.poll_once()
    assert not locker.poll_once()
    clock.advance(1.9)
    assert not locker.poll_once()
    clock.advance(0.1)
    assert locker.poll_once()
    assert [f.cmd for f in board.frames_received] == [Cmd.INFO, Cmd.STATUS, Cmd.STATUS]


def test_section_is_contract_lockers(board: BoardSimulator, locker: Locker) -> None:
    locker.poll_once()
    board.cabinet.unlock(3)
    board.take(3)
    locker.refresh()
    section = locker.section()
    assert isinstance(section, Lockers) and section.online
    assert Lockers.from_dict(section.to_dict(), "lockers.") == section
    one, three = section.slots[0], section.slots[2]
    assert one.bank == "PB0012A1" and one.locked and one.fault is None
    assert (one.charge, one.cycles, one.temp_c) == (57, 10, 31)
    assert three.bank is None and three.charge is None and three.cycles is None
    assert three.locked is False


# -- releases and what follows them ----------------------------------------------------------


def test_release_then_take_then_insert(
    board: BoardSimulator, locker: Locker, clock: ManualClock
) -> None:
    locker.poll_once()
    seen = changes_of(locker)
    assert locker.release(3) is UnlockResult.RELEASED
    assert locker.poll_once()  # a STATUS follows a release at once
    assert seen[-1][0] == 3 and seen[-1][2].locked is False

    assert board.take(3) == "PB0012A3"
    clock.advance(0.5)  # watched closely after a release
    assert locker.poll_once()
    n, before, after = seen[-1]
    assert n == 3 and before is not None and before.present and not after.present

    board.insert(3, "PB0099ZZ", 40)
    clock.advance(0.5)
    locker.poll_once()
    n, before, after = seen[-1]
    assert n == 3 and before is not None and not before.present
    assert after.present and after.bank_id == "PB0099ZZ" and after.locked


def test_jammed_slot(
    board: BoardSimulator, locker: Locker, reporter: RecordingReporter, clock: ManualClock
) -> None:
    locker.poll_once()
    board.jam(2)
    assert locker.release(2) is UnlockResult.JAMMED
    fail_polls(locker, clock, 1)
    assert reporter.of("slot_fault") == [{"slot": 2, "fault": "lock_jammed"}]
    assert locker.section().slots[1].fault == "lock_jammed"
    fail_polls(locker, clock, 1)  # still jammed: no second event
    assert len(reporter.of("slot_fault")) == 1
    board.unjam(2)
    fail_polls(locker, clock, 1)
    assert reporter.of("slot_fault_cleared") == [{"slot": 2, "fault": "lock_jammed"}]


def test_a_fault_that_changes_is_cleared_then_raised(
    board: BoardSimulator, locker: Locker, reporter: RecordingReporter, clock: ManualClock
) -> None:
    board.set_fault(5, "charger_fault")
    locker.poll_once()  # a fault already there at first sight is reported
    board.set_fault(5, "overheat")
    fail_polls(locker, clock, 1)
    assert reporter.events == [
        ("slot_fault", {"slot": 5, "fault": "charger_fault"}),
        ("slot_fault_cleared", {"slot": 5, "fault": "charger_fault"}),
        ("slot_fault", {"slot": 5, "fault": "overheat"}),
    ]


def test_bad_slot(locker: Locker) -> None:
    locker.poll_once()
    assert locker.release(13) is UnlockResult.BAD_SLOT
    with pytest.raises(ValueError):
        locker.release(256)


# -- a silent board ------------------------------------------------------------------------------


def test_silent_board_goes_offline_and_comes_back(
    board: BoardSimulator, locker: Locker, reporter: RecordingReporter, clock: ManualClock
) -> None:
    locker.poll_once()
    before = locker.slots()
    board.silent()
    fail_polls(locker, clock, 2)
    assert locker.online and reporter.types() == []
    fail_polls(locker, clock, 1)
    assert not locker.online
    assert reporter.types() == ["locker_offline"]
    assert reporter.of("locker_offline") == [{}]
    fail_polls(locker, clock, 1)
    assert reporter.types() == ["locker_offline"]  # once, not per poll
    # The last known picture stays, marked offline; faults stay as last known.
    assert locker.slots() == before
    section = locker.section()
    assert not section.online and len(section.slots) == 12
    with pytest.raises(BoardOffline):
        locker.release(1)
    with pytest.raises(BoardOffline):
        locker.refresh()
    assert locker.failed_polls == 6

    board.silent(False)
    fail_polls(locker, clock, 1)
    assert locker.online
    assert reporter.types() == ["locker_offline", "locker_online"]
    # The board is greeted again before its STATUS after an outage.
    assert [f.cmd for f in board.frames_received][-2:] == [Cmd.INFO, Cmd.STATUS]


# -- a pulled adapter ----------------------------------------------------------------------------


def test_unplug_backs_off_then_replug_reconnects(
    board: BoardSimulator, locker: Locker, reporter: RecordingReporter, clock: ManualClock
) -> None:
    locker.poll_once()
    before = locker.slots()
    board.unplug()
    fail_polls(locker, clock, 1)  # the read fails: port closed, reopen in ~1 s
    assert not locker.board.is_open
    with pytest.raises(BoardOffline, match="gone"):  # fast: no wire to try
        locker.release(1)
    # Reopen attempts back off: 1 s, 2 s, 4 s... each jittered down by at most 25 %.
    for step in (1.0, 2.0, 4.0, 8.0):
        clock.advance(0.7 * step)
        assert not locker.poll_once(), f"polled before the {step} s backoff ran out"
        clock.advance(0.3 * step)
        assert locker.poll_once()
    assert reporter.types() == ["locker_offline"]
    assert locker.slots() == before

    heard = len(board.frames_received)
    board.replug()
    clock.advance(30.0)  # the cap
    assert locker.poll_once()
    assert locker.online
    assert reporter.types() == ["locker_offline", "locker_online"]
    assert locker.slots() == before
    assert locker.reconnects == 1 and locker.board.reopen_count == 1
    assert [f.cmd for f in board.frames_received[heard:]] == [Cmd.INFO, Cmd.STATUS]
    clock.advance(2.0)
    assert locker.poll_once()  # back to the normal cadence


def test_backoff_is_capped(board: BoardSimulator, locker: Locker, clock: ManualClock) -> None:
    locker.poll_once()
    board.unplug()
    fail_polls(locker, clock, 1)
    for _ in range(8):
        clock.advance(30.0)
        assert locker.poll_once()


# -- the locker thread -------------------------------------------------------------------------


@pytest.fixture
def live(board: BoardSimulator, reporter: RecordingReporter) -> Iterator[Locker]:
    """A started locker on the real clock, polling fast and reopening fast."""
    lk = Locker(LockerBoard(board.port, timeout=0.05), reporter, Clock(), poll_interval=0.1,
                reconnect_min=0.05, reconnect_max=0.2)
    lk.start()
    yield lk
    lk.close()


def test_thread_serves_releases_and_reconnects_by_itself(
    board: BoardSimulator, live: Locker, reporter: RecordingReporter
) -> None:
    threads: set[str] = set()
    live.add_listener(lambda n, b, a: threads.add(threading.current_thread().name))
    wait_until(lambda: live.online, 2, "the first poll")
    before = live.slots()
    assert live.release(4) is UnlockResult.RELEASED
    wait_until(lambda: not live.slots()[3].locked, 2, "slot 4 seen unlocked")
    assert threads == {"locker"}

    board.unplug()
    wait_until(lambda: not live.online, 3, "locker_offline")
    assert reporter.types() == ["locker_offline"]
    board.replug()
    wait_until(lambda: live.online, 3, "locker_online")
    assert reporter.types() == ["locker_offline", "locker_online"]
    assert [r.bank_id for r in live.slots()] == [r.bank_id for r in before]
    assert len(live.refresh()) == 12


def test_a_release_the_thread_cannot_get_to_is_never_sent(
    board: BoardSimulator, live: Locker
) -> None:
    wait_until(lambda: live.online, 2, "the first poll")
    stuck, inside = threading.Event(), threading.Event()

    def hold(n: int, before: SlotRecord | None, after: SlotRecord) -> None:
        inside.set()
        stuck.wait(5)

    live.add_listener(hold)
    board.cabinet.unlock(7)  # a change, so the next poll calls the listener
    assert inside.wait(2)
    with pytest.raises(BoardOffline, match="not sent"):
        live.release(7, timeout=0.05)
    stuck.set()
    live.remove_listener(hold)
    assert live.refresh()
    assert not [f for f in board.frames_received if f.cmd == Cmd.UNLOCK]


def test_listener_errors_do_not_stop_the_polls(
    board: BoardSimulator, reporter: RecordingReporter
) -> None:
    def broken(n: int, before: SlotRecord | None, after: SlotRecord) -> None:
        raise RuntimeError("lending bug")

    # The listener goes in before the thread starts: added to a started locker,
    # it missed the first poll's calls whenever that poll came first (a loaded
    # machine), and no later poll changes all 12 slots again.
    lk = Locker(LockerBoard(board.port, timeout=0.05), reporter, Clock(), poll_interval=0.1,
                reconnect_min=0.05, reconnect_max=0.2)
    lk.add_listener(broken)
    lk.start()
    try:
        # Online is set before the poll's listeners run: wait for what they did.
        wait_until(lambda: lk.listener_errors == 12, 10, "the first poll's 12 listener calls")
        assert lk.online
        board.cabinet.unlock(1)
        wait_until(lambda: lk.listener_errors == 13, 10, "the next change")
        assert lk.online
    finally:
        lk.close()


def test_close_is_idempotent_and_fails_later_requests(live: Locker) -> None:
    wait_until(lambda: live.online, 2, "the first poll")
    live.close()
    live.close()
    assert not live.board.is_open
    with pytest.raises(BoardOffline, match="closed"):
        live.release(1)
    assert not [t for t in threading.enumerate() if t.name == "locker"]


def test_a_missing_port_at_start(
    tmp_path: object, reporter: RecordingReporter, clock: ManualClock
) -> None:
    lk = Locker(LockerBoard(f"{tmp_path}/ttyNONE"), reporter, clock, rng=random.Random(1))
    for _ in range(3):
        assert lk.poll_once()
        clock.advance(30)
    assert not lk.online and reporter.types() == ["locker_offline"]
    assert "does not exist" in (lk.last_error or "")
    assert lk.section() == Lockers(online=False, slots=())
    lk.close()
