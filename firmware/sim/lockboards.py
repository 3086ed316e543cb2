"""Lock-control boards a city can buy, byte for byte on a pseudo-terminal.

Three lines a station's RS-485 adapter may face: an 8A/80 bus (several boards
by DIP address), a Kerong KR-CU16 chain (boards 0..9), a Modbus RTU relay/IO
module. The host opens ``sim.port`` with pyserial as it opens the adapter on a
Pi; the frames are built and read by the same pure codecs the drivers use
(:mod:`firmware.hardware.lockboards`), so the simulator cannot drift from them.

Behind each board sits a model of its slots — the latch (locked?) and what is
in the slot (occupied?) — that tests move like a rider does::

    sim = Lock8ABusSim(addresses=(1, 2), locks=24, link_path=tmp / "tty8a").start()
    # the agent unlocks board 1 lock 3 over the line ...
    sim.take(1, 3)          # the rider takes the bank: occupied -> False
    sim.shut(1, 3)          # the door shuts, the latch catches: locked -> True
    sim.insert(1, 3)        # a bank pushed in (occupied, latch caught)
    sim.jam(1, 4)           # an unlock of lock 4 leaves it locked
    sim.silent(2)           # board 2 acts on what it hears; its answers are lost
    sim.remove(2)           # board 2 is unpowered: it does nothing at all
    sim.inject_garbage(b"\\x8a\\x01")  # noise on the line
    sim.stop()

Faults: a jammed lock, a silent (answers lost) or removed (unpowered) board,
garbage on the line or in the next answers, a lock the board does not have
(no answer), the feedback polarity (``locked_when``), unsolicited 0x82 change
frames (``events=True``), an answer delayed like a real pulse
(``pulse_delay``), an unplugged adapter.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from firmware.hardware.lockboards import kerong, lock8a, modbus_io
from firmware.hardware.lockboards.base import LOCKED_WHEN, Found
from firmware.sim.board import BoardSimulator
from firmware.sim.model import SimulatorError, SlotError
from firmware.sim.pty import Line, PtyDevice
from yizhan.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "KerongChainSim",
    "Lock8ABusSim",
    "ModbusIOSim",
    "SimLock",
    "SimulatorError",
    "SlotError",
    "YZLB1LineSim",
    "line_sim",
]


# Requests kept for tests to look at; the oldest half goes beyond this.
_MAX_HEARD = 100_000


@dataclass
class SimLock:
    """One lock and its slot: the latch, what is in the slot, what is wrong."""

    locked: bool = True
    occupied: bool = False
    jammed: bool = False  # the pulse does not move the latch


@dataclass(frozen=True)
class Heard:
    """A request the line carried (to any address), dated by the clock."""

    at: float
    request: Any  # the protocol's Request


class _PtySim(PtyDevice):
    """A lock board line on a pseudo-terminal: noise, what it heard.

    Subclasses answer in :meth:`_answer` (a request decoded by ``_scan``).
    """

    _what = "lock board simulator"

    def __init__(
        self, link_path: str | os.PathLike[str] | None, clock: Clock | None,
        scan: Callable[[bytes], Found[Any] | None], window: int,
    ) -> None:
        super().__init__(link_path)
        self.clock = clock or SYSTEM_CLOCK
        self._scan = scan
        self._window = window  # longest request: what may stay unparsed
        self._lock = threading.RLock()
        self._seen = threading.Condition(self._lock)
        self._heard: list[Heard] = []
        self._pending = b""
        self._garble = 0

    def _plugged_in(self) -> None:
        self._pending = b""

    # -- the line --------------------------------------------------------------------

    def inject_garbage(self, data: bytes) -> None:
        """Put raw bytes on the line now (noise, half a frame, another talker)."""
        self._write(bytes(data))

    def garble_next(self, n: int = 1) -> None:
        """Corrupt the last byte (the checksum) of the next ``n`` answers."""
        with self._lock:
            self._garble += n

    @property
    def heard(self) -> list[Heard]:
        """Every request the line carried, oldest first."""
        with self._lock:
            return list(self._heard)

    def wait_heard(
        self, match: Callable[[Any], bool], timeout: float = 2.0, *, after: int = 0
    ) -> Heard:
        """The first request among ``heard[after:]`` that ``match`` accepts,
        waiting up to ``timeout`` real seconds."""
        with self._seen:
            found = self._seen.wait_for(
                lambda: next((h for h in self._heard[after:] if match(h.request)), None), timeout
            )
        if found is None:
            raise TimeoutError(f"no such request within {timeout} s; heard {self.heard}")
        return found

    def _receive(self, data: bytes, line: Line) -> None:
        buf = self._pending + data
        while True:
            found = self._scan(buf)
            if found is None:
                break
            buf = buf[found.end :]
            with self._seen:
                self._heard.append(Heard(self.clock.now(), found.value))
                if len(self._heard) > _MAX_HEARD:  # a demo polls for days
                    del self._heard[: _MAX_HEARD // 2]
                self._seen.notify_all()
            for reply, delay in self._answer(found.value):
                if delay > 0 and line.stopping.wait(delay):
                    return
                with self._lock:
                    if self._garble > 0:
                        self._garble -= 1
                        reply = reply[:-1] + bytes((reply[-1] ^ 0xFF,))
                self._write(reply, line)
        self._pending = buf[-(self._window - 1) :] if self._window > 1 else b""

    def _answer(self, request: Any) -> list[tuple[bytes, float]]:
        raise NotImplementedError


class _LockLineSim(_PtySim):
    """Boards with locks on one line, by address."""

    def __init__(
        self, addresses: Iterable[int], locks: int, locked_when: str,
        link_path: str | os.PathLike[str] | None, clock: Clock | None,
        scan: Callable[[bytes], Found[Any] | None], window: int, pulse_delay: float,
    ) -> None:
        super().__init__(link_path, clock, scan, window)
        if locked_when not in LOCKED_WHEN:
            raise ValueError(f"locked_when must be 'closed' or 'open', got {locked_when!r}")
        self.locked_when = locked_when
        self.pulse_delay = pulse_delay
        self.boards: dict[int, list[SimLock]] = {
            a: [SimLock() for _ in range(locks)] for a in addresses
        }
        if not self.boards:
            raise ValueError("a line needs at least one board")
        self._silent: set[int] = set()
        self._removed: set[int] = set()

    # -- the cabinet, as a rider and an installer move it ------------------------------

    def lock(self, board: int, n: int) -> SimLock:
        """A snapshot of lock ``n`` (from 1) of ``board``."""
        with self._lock:
            s = self._lock_of(board, n)
            return SimLock(s.locked, s.occupied, s.jammed)

    def take(self, board: int, n: int) -> None:
        """A rider takes what is in an unlatched slot."""
        with self._lock:
            s = self._lock_of(board, n)
            if s.locked:
                raise SlotError(f"board {board} lock {n} is locked")
            if not s.occupied:
                raise SlotError(f"board {board} lock {n} is empty")
            s.occupied = False

    def shut(self, board: int, n: int) -> None:
        """The door is pushed shut and the latch catches."""
        self._set_latch(board, n, True)

    def insert(self, board: int, n: int) -> None:
        """A bank is pushed into the slot; the door shuts behind it."""
        with self._lock:
            s = self._lock_of(board, n)
            if s.occupied:
                raise SlotError(f"board {board} lock {n} is occupied")
            s.occupied = True
        self._set_latch(board, n, True)

    def fill(self, board: int, n: int, occupied: bool = True) -> None:
        """Set what is in a slot, latch untouched (the installer's restock)."""
        with self._lock:
            self._lock_of(board, n).occupied = occupied

    def jam(self, board: int, n: int, jammed: bool = True) -> None:
        with self._lock:
            self._lock_of(board, n).jammed = jammed

    def silent(self, board: int, on: bool = True) -> None:
        """The board acts on what it hears but its answers never arrive (a cut
        or noisy return path): an unlock sent to it may have pulsed the lock."""
        with self._lock:
            self._board(board)
            (self._silent.add if on else self._silent.discard)(board)

    def remove(self, board: int, gone: bool = True) -> None:
        """The board is unpowered or taken off the line: it does nothing at all."""
        with self._lock:
            self._board(board)
            (self._removed.add if gone else self._removed.discard)(board)

    # -- for subclasses -------------------------------------------------------------------

    def _board(self, board: int) -> list[SimLock]:
        try:
            return self.boards[board]
        except KeyError:
            raise SlotError(f"no board {board} on this line") from None

    def _lock_of(self, board: int, n: int) -> SimLock:
        locks = self._board(board)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(locks):
            raise SlotError(f"board {board} has locks 1..{len(locks)}, got {n!r}")
        return locks[n - 1]

    def _contact(self, s: SimLock) -> bool:
        """The raw feedback bit the wiring gives for the latch."""
        return s.locked if self.locked_when == "closed" else not s.locked

    def _hears(self, board: int) -> bool:
        with self._lock:
            return board in self.boards and board not in self._removed

    def _answers(self, board: int) -> bool:
        with self._lock:
            return self._hears(board) and board not in self._silent

    def _answer(self, request: Any) -> list[tuple[bytes, float]]:
        board = request.board
        if not self._hears(board):
            return []
        replies = self._act(request)
        return replies if self._answers(board) else []

    def _act(self, request: Any) -> list[tuple[bytes, float]]:
        raise NotImplementedError

    def _pulse(self, board: int, n: int) -> None:
        with self._lock:
            s = self._lock_of(board, n)
            if not s.jammed:
                s.locked = False

    def _set_latch(self, board: int, n: int, locked: bool) -> None:
        with self._lock:
            self._lock_of(board, n).locked = locked


class Lock8ABusSim(_LockLineSim):
    """8A/80 boards at DIP ``addresses`` (1..32) on one line, ``locks`` each.

    ``groups`` status bytes in a query answer (3: the 24-lock firmware, also on
    boards with fewer locks wired). ``events`` makes a board send an 0x82 change
    frame whenever a contact changes. A lock beyond ``locks`` gets no answer.
    """

    def __init__(
        self, addresses: Iterable[int] = (1,), locks: int = 24, *, locked_when: str = "closed",
        groups: int = 3, events: bool = False, pulse_delay: float = 0.0,
        link_path: str | os.PathLike[str] | None = None, clock: Clock | None = None,
    ) -> None:
        if not 1 <= locks <= groups * 8:
            raise ValueError(f"locks must be 1..{groups * 8}, got {locks!r}")
        super().__init__(addresses, locks, locked_when, link_path, clock,
                         lock8a.find_request, 5, pulse_delay)
        self.groups = groups
        self.events = events

    def _act(self, request: lock8a.Request) -> list[tuple[bytes, float]]:
        a = request.board
        with self._lock:
            locks = self.boards[a]
            if request.header == lock8a.QUERY:
                contacts = [self._contact(s) for s in locks]
                return [(lock8a.query_answer(a, contacts, self.groups), 0.0)]
            n = request.channel
            if not 1 <= n <= len(locks):
                return []  # channel 0 (all) and missing channels: no answer known
            before = self._contact(locks[n - 1])
            self._pulse(a, n)
            after = self._contact(locks[n - 1])
        replies = [(lock8a.unlock_answer(a, n, after), self.pulse_delay)]
        if self.events and after != before:
            replies.append((lock8a.event_frame(a, n, after), 0.0))
        return replies

    def _set_latch(self, board: int, n: int, locked: bool) -> None:
        with self._lock:
            s = self._lock_of(board, n)
            before = self._contact(s)
            s.locked = locked
            after = self._contact(s)
        if self.events and after != before and self.plugged and self._answers(board):
            self._write(lock8a.event_frame(board, n, after))


class KerongChainSim(_LockLineSim):
    """KR-CU16 boards at chain ``addresses`` (0..9), ``locks`` (16) each.

    The IR bit is set for an occupied slot. A lock the board does not have
    cannot be addressed (4 bits), so there is no such fault here.
    """

    def __init__(
        self, addresses: Iterable[int] = (0,), locks: int = kerong.LOCKS, *,
        locked_when: str = "closed", pulse_delay: float = 0.0,
        link_path: str | os.PathLike[str] | None = None, clock: Clock | None = None,
    ) -> None:
        if not 1 <= locks <= kerong.LOCKS:
            raise ValueError(f"locks must be 1..{kerong.LOCKS}, got {locks!r}")
        super().__init__(addresses, locks, locked_when, link_path, clock,
                         kerong.find_request, 5, pulse_delay)

    def _act(self, request: kerong.Request) -> list[tuple[bytes, float]]:
        a = request.board
        delay = 0.0
        with self._lock:
            locks = self.boards[a]
            if request.cmd == kerong.CMD_UNLOCK:
                if request.lock >= len(locks):
                    return []
                self._pulse(a, request.lock + 1)
                delay = self.pulse_delay
            state = kerong.state_answer(
                a, [self._contact(s) for s in locks], [s.occupied for s in locks]
            )
        return [(state, delay)]


class ModbusIOSim(_PtySim):
    """A Modbus RTU relay/IO module at ``address`` with ``channels`` coils and
    inputs from 0x0000. Anything else is refused as a real module refuses it:
    exception 1 (function), 2 (address) or 3 (value)."""

    def __init__(
        self, address: int = 1, channels: int = 8, *,
        link_path: str | os.PathLike[str] | None = None, clock: Clock | None = None,
    ) -> None:
        super().__init__(link_path, clock, modbus_io.find_request, 8)
        self.address = address
        self.channels = channels
        self.coils = [False] * channels
        self.inputs = [False] * channels
        self._mute = False

    def silent(self, on: bool = True) -> None:
        with self._lock:
            self._mute = on

    def set_input(self, channel: int, on: bool) -> None:
        with self._lock:
            self.inputs[channel - 1] = on

    def coil(self, channel: int) -> bool:
        with self._lock:
            return self.coils[channel - 1]

    def _answer(self, r: modbus_io.Request) -> list[tuple[bytes, float]]:
        with self._lock:
            if r.unit != self.address or self._mute:
                return []
            fn = r.function
            if fn in (modbus_io.READ_COILS, modbus_io.READ_INPUTS):
                if r.value < 1 or r.start + r.value > self.channels:
                    return [(modbus_io.exception_answer(r.unit, fn, 2), 0.0)]
                bits = self.coils if fn == modbus_io.READ_COILS else self.inputs
                return [(modbus_io.bits_answer(r.unit, fn, bits[r.start : r.start + r.value]), 0.0)]
            if fn == modbus_io.WRITE_COIL:
                if r.start >= self.channels:
                    return [(modbus_io.exception_answer(r.unit, fn, 2), 0.0)]
                if r.value not in (modbus_io.COIL_ON, modbus_io.COIL_OFF):
                    return [(modbus_io.exception_answer(r.unit, fn, 3), 0.0)]
                on = r.value == modbus_io.COIL_ON
                self.coils[r.start] = on
                return [(modbus_io.write_coil_answer(r.unit, r.start, on), 0.0)]
            return [(modbus_io.exception_answer(r.unit, fn, 1), 0.0)]


class YZLB1LineSim:
    """YZ-LB1 boards at ``addresses`` (1..15) on one line, ``locks`` slots each,
    with the verbs of the other line simulators (``take(board, n)``...).

    The bytes are :class:`~firmware.sim.board.BoardSimulator`'s, the reference
    board's own simulator, answering every address; behind each board sits its
    :class:`~firmware.sim.model.Cabinet`, empty at the start. Its latch re-locks
    when the door is shut or a bank pushed in, as on the other lines: the
    release window is an hour (``release_window``) so no test races it.
    """

    def __init__(
        self, addresses: Iterable[int] = (1,), locks: int = 15, *, locked_when: str = "closed",
        pulse_delay: float = 0.0, release_window: float = 3600.0,
        link_path: str | os.PathLike[str] | None = None, clock: Clock | None = None,
    ) -> None:
        every = list(addresses)
        if not every:
            raise ValueError("a line needs at least one board")
        self.sim = BoardSimulator(
            n_slots=locks, address=every[0], addresses=every, clock=clock,
            link_path=link_path, banks={}, locked_when=locked_when, pulse_delay=pulse_delay,
            release_window=release_window,
        )

    # -- lifecycle and the line: the board simulator's own ---------------------------

    @property
    def port(self) -> str:
        return self.sim.port

    @property
    def plugged(self) -> bool:
        return self.sim.plugged

    def start(self) -> YZLB1LineSim:
        self.sim.start()
        return self

    def stop(self) -> None:
        self.sim.stop()

    def __enter__(self) -> YZLB1LineSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        self.sim.unplug()

    def replug(self) -> None:
        self.sim.replug()

    def inject_garbage(self, data: bytes) -> None:
        self.sim.inject_garbage(data)

    def garble_next(self, n: int = 1) -> None:
        self.sim.garble_next(n)

    @property
    def heard(self) -> list[Heard]:
        """Every request the line carried (a :class:`~protocol.frames.Frame` each)."""
        return [Heard(f.at, f.frame) for f in self.sim.frames_received]

    def wait_heard(
        self, match: Callable[[Any], bool], timeout: float = 2.0, *, after: int = 0
    ) -> Heard:
        got = self.sim.wait_for_request(match, timeout, after=after)
        return Heard(got.at, got.frame)

    # -- the cabinet, as a rider and an installer move it ------------------------------

    def lock(self, board: int, n: int) -> SimLock:
        r = self.sim.board(board).slot(n)
        return SimLock(r.locked, r.present, r.fault == "lock_jammed")

    def take(self, board: int, n: int) -> None:
        self.sim.board(board).take(n)

    def shut(self, board: int, n: int) -> None:
        self.sim.board(board).shut(n)

    def insert(self, board: int, n: int) -> None:
        self.sim.board(board).insert(n, _bank_id(board, n), 50)

    def fill(self, board: int, n: int, occupied: bool = True) -> None:
        self.sim.board(board).place(n, _bank_id(board, n) if occupied else None)

    def jam(self, board: int, n: int, jammed: bool = True) -> None:
        self.sim.board(board).jam(n, jammed)

    def silent(self, board: int, on: bool = True) -> None:
        self.sim.silent(on, board=board)

    def remove(self, board: int, gone: bool = True) -> None:
        self.sim.remove(board, gone)


def _bank_id(board: int, n: int) -> str:
    return f"PB{board:02X}{n:04X}"  # unique on the line: the model refuses a bank twice


# What ``yizhan sim board --protocol`` runs, with the defaults a bought board has.
PROTOCOLS = {
    # name: (first address, addresses allowed, default locks, most locks)
    "lock8a": (1, range(1, 33), 24, 24),
    "kerong-cu16": (0, range(0, 10), 16, kerong.LOCKS),
    "modbus-io": (1, range(1, 248), 8, modbus_io.MAX_CHANNELS),
}


def line_sim(
    protocol: str, *, boards: int = 1, locks: int | None = None, address: int | None = None,
    locked_when: str = "closed", events: bool = False,
    link_path: str | os.PathLike[str] | None = None, clock: Clock | None = None,
) -> _PtySim:
    """A simulator of ``protocol`` with ``boards`` boards at consecutive
    addresses from ``address`` (a Modbus module is always one), not started.
    Raises ValueError naming the bad value."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    first, allowed, default_locks, most = PROTOCOLS[protocol]
    address = first if address is None else address
    locks = default_locks if locks is None else locks
    if not 1 <= locks <= most:
        raise ValueError(f"{protocol}: locks must be 1..{most}, got {locks}")
    if protocol == "modbus-io":
        if boards != 1:
            raise ValueError("modbus-io: one module a line here (--boards 1)")
        if address not in allowed:
            raise ValueError(f"modbus-io: address must be 1..247, got {address}")
        return ModbusIOSim(address, locks, link_path=link_path, clock=clock)
    addresses = range(address, address + boards)
    if boards < 1 or address not in allowed or addresses[-1] not in allowed:
        raise ValueError(
            f"{protocol}: addresses must lie in {allowed.start}..{allowed.stop - 1}, "
            f"got {boards} board(s) from {address}"
        )
    if protocol == "lock8a":
        return Lock8ABusSim(addresses, locks, locked_when=locked_when, events=events,
                            link_path=link_path, clock=clock)
    return KerongChainSim(addresses, locks, locked_when=locked_when, link_path=link_path,
                          clock=clock)
