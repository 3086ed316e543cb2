"""One suite every lock-board driver passes against its simulator on a pty:
lock8a, kerong-cu16, and the reference board yz-lb1 against
firmware/sim/board.py's BoardSimulator (several addresses on one pty).

The driver opens the pseudo-terminal with pyserial exactly as it opens an
RS-485 adapter; the simulator answers byte for byte. What a new driver must
show: an unlock confirmed, a jammed lock, a lock the board does not have, a
silent board (BoardOffline, and an unlock never sent twice), garbage on the
line, two boards on one bus, the feedback polarity, an unplugged adapter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware.hardware.board import BoardRefused
from firmware.hardware.lockboards import (
    DRIVERS,
    BoardDriver,
    BoardOffline,
    Bus,
    ChargeSwitch,
    KerongCU16,
    Latch,
    Lock8A,
    LockReading,
    ModuleRefused,
    kerong,
    lock8a,
)
from firmware.hardware.lockboards.base import BadLock
from firmware.hardware.lockboards.yzlb1 import YZLB1
from firmware.sim.lockboards import (
    KerongChainSim,
    Lock8ABusSim,
    ModbusIOSim,
    YZLB1LineSim,
    line_sim,
)
from protocol.frames import Cmd, UnlockResult, error_response, unlock_response


@dataclass(frozen=True)
class Kit:
    """A driver, its simulator, and how to tell its requests apart on the line."""

    driver: type[BoardDriver]
    sim: Callable[..., Any]  # (addresses, locks, **options) -> a line simulator
    addresses: tuple[int, int]  # two boards for the shared-bus cases
    is_unlock: Callable[[Any, int], bool]
    is_read: Callable[[Any, int], bool]
    # What a board does with an unlock of a lock it does not carry: "silent"
    # (no answer: BoardOffline) or "refused" (it knows its count: BAD_LOCK).
    missing_lock: str = "silent"


KITS = {
    "lock8a": Kit(
        Lock8A,
        lambda addresses, locks, **kw: Lock8ABusSim(addresses, locks, **kw),
        (1, 7),
        lambda r, a: r.header == lock8a.UNLOCK and r.board == a,
        lambda r, a: r.header == lock8a.QUERY and r.board == a,
    ),
    "kerong-cu16": Kit(
        KerongCU16,
        lambda addresses, locks, **kw: KerongChainSim(addresses, locks, **kw),
        (0, 9),
        lambda r, a: r.cmd == kerong.CMD_UNLOCK and r.board == a,
        lambda r, a: r.cmd == kerong.CMD_READ and r.board == a,
    ),
    "yz-lb1": Kit(
        YZLB1,
        lambda addresses, locks, **kw: YZLB1LineSim(addresses, locks, **kw),
        (1, 15),
        lambda r, a: r.cmd == Cmd.UNLOCK and r.addr == a,
        lambda r, a: r.cmd == Cmd.STATUS and r.addr == a,
        missing_lock="refused",
    ),
}


def test_every_registered_driver_has_a_kit():
    assert set(DRIVERS) == set(KITS)


@pytest.fixture(params=sorted(KITS))
def kit(request) -> Kit:
    return KITS[request.param]


class Line:
    """A simulator on a pty and the bus the driver opens on it."""

    def __init__(self, kit: Kit, tmp: Path, locks: int, **options: Any) -> None:
        self.kit = kit
        self.sim = kit.sim(kit.addresses, locks, link_path=tmp / "ttyRS485", **options).start()
        self.bus = Bus(self.sim.port, kit.driver.baudrate)

    def board(self, which: int = 0, locks: int | None = None, **kw: Any) -> BoardDriver:
        address = self.kit.addresses[which]
        n = locks if locks is not None else self.kit.driver.max_locks
        return self.kit.driver(self.bus, address, n, **kw)

    def count(self, pred: Callable[[Any, int], bool], which: int = 0) -> int:
        a = self.kit.addresses[which]
        return sum(1 for h in self.sim.heard if pred(h.request, a))

    def close(self) -> None:
        self.bus.close()
        self.sim.stop()


@pytest.fixture
def make_line(kit, tmp_path) -> Iterator[Callable[..., Line]]:
    made: list[Line] = []

    def make(locks: int | None = None, **options: Any) -> Line:
        line = Line(kit, tmp_path, locks or kit.driver.max_locks, **options)
        made.append(line)
        return line

    yield make
    for line in made:
        line.close()


def locked(readings: list[LockReading]) -> list[bool | None]:
    return [r.locked for r in readings]


# -- the cases ------------------------------------------------------------------------------


def test_unlock_is_confirmed_by_the_feedback(make_line):
    line = make_line()
    board = line.board()
    assert locked(board.read()) == [True] * board.locks
    assert board.unlock(3) is Latch.RELEASED
    readings = board.read()
    assert readings[2] == LockReading(3, False, readings[2].occupied)
    assert [r.lock for r in readings] == list(range(1, board.locks + 1))
    assert all(r.locked for r in readings if r.lock != 3)
    assert line.count(line.kit.is_unlock) == 1


def test_the_latch_catches_again_when_the_door_shuts(make_line):
    line = make_line()
    board, a = line.board(), line.kit.addresses[0]
    line.sim.fill(a, 2)
    board.unlock(2)
    line.sim.take(a, 2)
    line.sim.shut(a, 2)
    got = board.read()[1]
    assert got.locked is True
    if board.caps.occupancy:
        assert got.occupied is False
        line.sim.insert(a, 2)
        assert board.read()[1].occupied is True
    else:
        assert got.occupied is None  # the board cannot tell, and says so


def test_a_jammed_lock_stays_locked(make_line):
    line = make_line()
    board = line.board()
    line.sim.jam(line.kit.addresses[0], 5)
    assert board.unlock(5) is Latch.STILL_LOCKED
    assert board.read()[4].locked is True
    assert line.count(line.kit.is_unlock) == 1  # not tried again


def test_a_lock_outside_the_board_is_never_sent(make_line):
    line = make_line()
    board = line.board(locks=4)
    for lock in (0, 5, -1, 10**30):
        assert board.unlock(lock) is Latch.BAD_LOCK
    with pytest.raises(BadLock):
        board.unlock("3")  # type: ignore[arg-type]
    assert line.sim.heard == []


def test_a_lock_the_board_does_not_have_is_sent_once(make_line):
    # Configured with more locks than the board carries: an 8A/CU16 ignores
    # the channel, YZ-LB1 knows its count and refuses; either way the unlock
    # is reported and not sent again.
    line = make_line(locks=8)
    board = line.board(locks=12)
    if line.kit.missing_lock == "refused":
        assert board.unlock(10) is Latch.BAD_LOCK
        assert board.read()[9] == LockReading(10, None, None)  # no such slot: cannot tell
    else:
        with pytest.raises(BoardOffline, match="unlock of lock 10"):
            board.unlock(10)
    assert line.count(line.kit.is_unlock) == 1


def test_a_silent_board_is_offline_and_an_unlock_is_never_resent(make_line):
    line = make_line()
    board = line.board()
    line.sim.silent(line.kit.addresses[0])
    with pytest.raises(BoardOffline, match=r"read on .*: no valid answer \(3 attempts"):
        board.read()
    assert line.count(line.kit.is_read) == 3  # a read is idempotent: retried
    with pytest.raises(BoardOffline, match="no answer"):
        board.unlock(1)
    assert line.count(line.kit.is_unlock) == 1  # an unlock is not
    line.sim.silent(line.kit.addresses[0], False)
    assert board.read()[0].locked is False  # it had pulsed: the lock is open now


def test_garbage_on_the_line_is_skipped(make_line):
    line = make_line()
    board = line.board()
    board.read()  # the port is open: what comes now waits in its buffer
    line.sim.inject_garbage(bytes(range(256)) + lock8a.unlock_request(1, 1)[:3])
    assert locked(board.read()) == [True] * board.locks
    line.sim.garble_next(1)  # the next answer's checksum is hit: the read goes again
    assert locked(board.read()) == [True] * board.locks
    assert line.count(line.kit.is_read) == 4
    assert line.bus.garbage_bytes >= 256


def test_a_garbled_unlock_answer_is_offline_not_a_second_pulse(make_line):
    line = make_line()
    board = line.board()
    line.sim.garble_next(1)
    with pytest.raises(BoardOffline, match=r"garbage"):
        board.unlock(2)
    assert line.count(line.kit.is_unlock) == 1
    assert board.read()[1].locked is False  # it did open: the caller must find out by reading


def test_two_boards_on_one_bus(make_line):
    line = make_line()
    first, second = line.board(0), line.board(1, locks=8)
    assert second.unlock(8) is Latch.RELEASED
    assert locked(first.read()) == [True] * first.locks
    assert locked(second.read()) == [True] * 7 + [False]
    line.sim.silent(line.kit.addresses[0])
    with pytest.raises(BoardOffline):
        first.read()
    assert second.unlock(1) is Latch.RELEASED  # the other board keeps working
    assert locked(second.read())[0] is False


def test_an_unlock_goes_before_the_retries_of_a_poll(make_line):
    line = make_line()
    silent, other = line.board(0), line.board(1)
    line.sim.silent(line.kit.addresses[0])
    failed: list[BaseException] = []

    def poll() -> None:
        try:
            silent.read()
        except BoardOffline as err:
            failed.append(err)

    poller = threading.Thread(target=poll)
    poller.start()
    line.sim.wait_heard(lambda r: line.kit.is_read(r, line.kit.addresses[0]))
    assert other.unlock(4) is Latch.RELEASED
    poller.join(10)
    assert failed, "the silent board's poll should end in BoardOffline"
    order = [
        "unlock" if line.kit.is_unlock(h.request, line.kit.addresses[1]) else "read"
        for h in line.sim.heard
    ]
    # The unlock took the line at the poll's first pause, not after its retries.
    assert order == ["read", "unlock", "read", "read"]


@pytest.mark.parametrize("wiring", ["closed", "open"])
def test_polarity_is_configuration(make_line, wiring):
    line = make_line(locked_when=wiring)
    right = line.board(locked_when=wiring)
    wrong = line.board(locked_when="open" if wiring == "closed" else "closed")
    assert locked(right.read()) == [True] * right.locks
    assert locked(wrong.read()) == [False] * wrong.locks  # always inverted: the wrong word
    assert right.unlock(6) is Latch.RELEASED
    assert right.read()[5].locked is False
    line.sim.jam(line.kit.addresses[0], 7)
    assert right.unlock(7) is Latch.STILL_LOCKED


def test_an_answer_after_a_real_pulse_length_still_counts(make_line):
    line = make_line(pulse_delay=0.5)  # the 8A answers about 500 ms after the pulse
    assert line.board().unlock(1) is Latch.RELEASED


def test_an_unplugged_adapter_is_offline_and_comes_back(make_line):
    line = make_line()
    board = line.board()
    board.read()
    line.sim.unplug()
    with pytest.raises(BoardOffline):
        board.read()
    assert not line.bus.is_open
    line.sim.replug()
    assert len(board.read()) == board.locks
    assert line.bus.reopen_count == 1


def test_a_second_process_cannot_share_the_port(make_line):
    line = make_line()
    line.board().read()
    other = Bus(line.sim.port, line.kit.driver.baudrate)
    with pytest.raises(BoardOffline, match="in use by another process"):
        other.open()


@pytest.mark.parametrize("bad", [
    {"address": 10**30}, {"address": -1}, {"address": True}, {"locks": 0},
    {"locks": 10**30}, {"locks": 25}, {"locked_when": "sometimes"},
])
def test_bad_board_settings_are_refused_with_reasons(make_line, kit, bad):
    line = make_line()
    args = {"address": kit.addresses[0], "locks": 4} | bad
    with pytest.raises(ValueError, match=r"must be|has 1\.\."):
        kit.driver(line.bus, **args)


# -- what only some boards do -------------------------------------------------------------------


def test_8a_change_frames_arrive_as_events(tmp_path):
    sim = Lock8ABusSim((3,), 24, events=True, link_path=tmp_path / "tty").start()
    bus = Bus(sim.port, 9600)
    try:
        board, quiet = Lock8A(bus, 3, 24), Lock8A(bus, 4, 24)
        assert board.caps.unsolicited
        assert board.unlock(2) is Latch.RELEASED
        sim.fill(3, 2)
        sim.shut(3, 2)
        heard: list[LockReading] = []
        deadline = time.monotonic() + 2.0  # the pty hands bytes over asynchronously
        while len(heard) < 2 and time.monotonic() < deadline:
            heard += board.events()
            time.sleep(0.01)
        assert heard == [LockReading(2, False, None), LockReading(2, True, None)]
        assert quiet.events() == []  # another board's frames are not its events
        assert len(board.read()) == 24  # a change frame never confuses a request
    finally:
        bus.close()
        sim.stop()


def test_kerong_reads_occupancy_from_the_infrared_bits(tmp_path):
    sim = KerongChainSim((2,), 16, link_path=tmp_path / "tty").start()
    bus = Bus(sim.port, 19200)
    try:
        board = KerongCU16(bus, 2, 16)
        sim.fill(2, 16)
        readings = board.read()
        assert [r.occupied for r in readings] == [False] * 15 + [True]
        board.unlock(16)
        sim.take(2, 16)
        assert board.read()[15] == LockReading(16, False, False)
    finally:
        bus.close()
        sim.stop()


def test_a_board_behind_an_echoing_adapter(tmp_path):
    # The dongle hears its own request first: "8A 01 01 11 9B" is then also what
    # the board answers for a made contact, so the echo is dropped by position.
    sim = Lock8ABusSim((1,), 24, link_path=tmp_path / "tty").start()

    def echoing_open(*args: Any, **kwargs: Any) -> Any:
        import serial

        port = serial.serial_for_url(*args, **kwargs)
        real_write = port.write

        def write(data: bytes) -> int:
            n = real_write(data)
            sim.inject_garbage(data)  # what the adapter hears of its own transmission
            return n

        port.write = write
        return port

    bus = Bus(sim.port, 9600, echo=True, open_port=echoing_open)
    try:
        board = Lock8A(bus, 1, 24)
        sim.jam(1, 1)
        assert board.unlock(1) is Latch.STILL_LOCKED
        sim.jam(1, 1, False)
        assert board.unlock(1) is Latch.RELEASED  # not misread from its own echo
    finally:
        bus.close()
        sim.stop()


def test_yz_lb1_reads_bank_telemetry_through_the_same_driver(tmp_path):
    sim = YZLB1LineSim((3,), 4, link_path=tmp_path / "tty").start()
    bus = Bus(sim.port, 115200)
    try:
        board = YZLB1(bus, 3, 4)
        assert board.caps.bank_telemetry and board.caps.occupancy and not board.caps.unsolicited
        sim.insert(3, 2)
        assert board.read()[1] == LockReading(2, True, True)
        record = board.records()[1]
        assert (record.bank_id, record.charge, record.fault) == ("PB030002", 50, None)
        sim.sim.board(3).busy(4)
        assert board.unlock(4) is Latch.STILL_LOCKED  # busy: no pulse, the latch as it was
        assert board.read()[3].locked is True
    finally:
        bus.close()
        sim.stop()


def test_yz_lb1_error_frames_mean_no_pulse(tmp_path):
    # A board that heard our unlock corrupt answers error 1 and did not pulse:
    # that is a refusal, never a reason to pulse again.
    sim = YZLB1LineSim((1,), 4, link_path=tmp_path / "tty").start()
    bus = Bus(sim.port, 115200)

    def answer_with(frame: bytes) -> threading.Thread:
        # The board is silent; this is what comes back once the unlock is heard.
        after = len(sim.heard)

        def answer() -> None:
            sim.wait_heard(lambda r: r.cmd == Cmd.UNLOCK, after=after)
            sim.inject_garbage(frame)

        thread = threading.Thread(target=answer)
        thread.start()
        return thread

    try:
        board = YZLB1(bus, 1, 4)
        sim.silent(1)
        for frame, expect in [
            (error_response(1, Cmd.UNLOCK, 1), BoardRefused),
            (error_response(1, Cmd.UNLOCK, 4), Latch.BAD_LOCK),
            # An answer about another slot is not the answer: nothing else came.
            (unlock_response(1, 3, UnlockResult.RELEASED), BoardOffline),
        ]:
            thread = answer_with(frame)
            if isinstance(expect, Latch):
                assert board.unlock(2) is expect
            else:
                with pytest.raises(expect):
                    board.unlock(2)
            thread.join(5)
        assert len([h for h in sim.heard if h.request.cmd == Cmd.UNLOCK]) == 3
    finally:
        bus.close()
        sim.stop()


# -- the Modbus relay/IO module -------------------------------------------------------------------


@pytest.fixture
def module(tmp_path) -> Iterator[tuple[ModbusIOSim, ChargeSwitch]]:
    sim = ModbusIOSim(address=5, channels=8, link_path=tmp_path / "ttyIO").start()
    bus = Bus(sim.port, ChargeSwitch.baudrate)
    yield sim, ChargeSwitch(bus, address=5, channels=8)
    bus.close()
    sim.stop()


def test_modbus_switches_a_chargers_power(module):
    sim, switch = module
    switch.set(3, True)
    assert sim.coil(3) and switch.coils() == [False, False, True] + [False] * 5
    switch.set(3, False)
    assert not sim.coil(3)
    sim.set_input(8, True)
    assert switch.inputs() == [False] * 7 + [True]


def test_modbus_write_is_retried_through_noise(module):
    sim, switch = module
    sim.garble_next(1)
    switch.set(1, True)  # idempotent: a second write is harmless
    assert sim.coil(1)
    assert len([h for h in sim.heard if h.request.function == 5]) == 2


def test_modbus_refusals_and_silence(module, tmp_path):
    sim, switch = module
    wide = ChargeSwitch(switch.bus, address=5, channels=12)
    with pytest.raises(ModuleRefused, match="illegal data address"):
        wide.coils()
    with pytest.raises(ValueError, match=r"channels 1\.\.8"):
        switch.set(9, True)
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ChargeSwitch(switch.bus, address=10**30)
    sim.silent()
    with pytest.raises(BoardOffline, match="modbus-io module 5"):
        switch.coils()


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "check"), [
    ("lock8a", lambda bus: Lock8A(bus, 2, 24).unlock(3) is Latch.RELEASED),
    ("kerong-cu16", lambda bus: KerongCU16(bus, 1, 16).read()[0].locked is True),
    ("modbus-io", lambda bus: ChargeSwitch(bus, 2, 4).set(4, True) is None),
    ("yz-lb1", lambda bus: YZLB1(bus, 2, 12).unlock(3) is Latch.RELEASED),
])
def test_yizhan_sim_board_serves_each_protocol(tmp_path, protocol, check):
    link = tmp_path / "tty"
    rates = {"lock8a": 9600, "kerong-cu16": 19200, "modbus-io": 9600, "yz-lb1": 115200}
    args = ["--boards", "2"] if protocol != "modbus-io" else ["--address", "2", "--locks", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "yizhan", "sim", "board", "--protocol", protocol,
         "--link", str(link), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline()
        name = "YZ-LB1 x2" if protocol == "yz-lb1" else protocol
        assert f"board simulator: {name}" in first and str(link) in first
        bus = Bus(str(link), rates[protocol])
        try:
            assert check(bus)
        finally:
            bus.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not os.path.lexists(link)


def test_yizhan_sim_board_refuses_bad_values():
    out = subprocess.run(
        [sys.executable, "-m", "yizhan", "sim", "board", "--protocol", "lock8a",
         "--address", "32", "--boards", "2", "--link", "/nonexistent/tty"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "addresses must lie in 1..32" in out.stderr


def test_line_sim_refuses_bad_values():
    with pytest.raises(ValueError, match=r"locks must be 1\.\.16"):
        line_sim("kerong-cu16", locks=10**30)
    with pytest.raises(ValueError, match="unknown protocol"):
        line_sim("rs232")


def test_an_unpowered_board_does_nothing_at_all(make_line):
    line = make_line()
    board = line.board()
    line.sim.remove(line.kit.addresses[0])
    with pytest.raises(BoardOffline):
        board.unlock(2)
    line.sim.remove(line.kit.addresses[0], False)
    assert board.read()[1].locked is True  # unlike a silent one, it never pulsed


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"baudrate": 10**30}, "baudrate must be"),
    ({"baudrate": True}, "baudrate must be"),
    ({"timeout": 10**30}, "timeout must be"),
    ({"timeout": 0}, "timeout must be"),
])
def test_bad_bus_settings_are_refused_with_reasons(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        Bus("/dev/null", **kwargs)


def test_a_missing_port_is_offline_with_the_reason(tmp_path):
    board = Lock8A(Bus(str(tmp_path / "ttyUSB9"), 9600), 1, 24)
    with pytest.raises(BoardOffline, match="does not exist"):
        board.read()
