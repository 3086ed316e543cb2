"""A locker board that speaks YZ-LB1 (contract §10) on a pseudo-terminal.

The host opens ``sim.port`` with pyserial exactly as it opens a USB adapter on
a Pi; everything above the byte stream is the real code. Behind the wire sits a
:class:`~firmware.sim.model.Cabinet`, and the faults a field board shows can be
scripted: a jammed lock, a silent or garbling board, an unplugged adapter.

    sim = BoardSimulator(n_slots=2, link_path=tmp / "board")
    sim.start()
    with serial.Serial(sim.port, 115200, timeout=0.2) as line:
        line.write(info_request(1))
        answer = line.read(18)       # INFO: 2 slots, firmware "YZ-SIM-1.0"
    sim.jam(2)                       # UNLOCK of slot 2 now answers JAMMED
    sim.unplug(); sim.replug()       # the host sees EIO, then reopens the same path
    sim.stop()

Several boards on one line (RS-485: each answers its own address) are one
simulator with ``addresses=(1, 2)``: a cabinet model each, ``board(a)`` to
reach one, ``silent(board=a)``/``remove(a)`` to fault one. The methods without
a board argument act on the first, as before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from firmware.sim.model import Cabinet, SimulatorError, SlotError, default_banks
from firmware.sim.pty import Line, PtyDevice
from protocol.frames import (
    HEADER_LEN,
    RESPONSE_BIT,
    SYNC,
    Cmd,
    ErrorCode,
    Frame,
    FrameDecoder,
    SlotRecord,
    charge_response,
    crc16_modbus,
    error_response,
    info_response,
    status_response,
    unlock_response,
)
from yizhan.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

__all__ = ["BoardSimulator", "ReceivedFrame", "SimulatorError", "SlotError"]

# Payload length each request must have; anything else is error 3 (bad length).
_REQUEST_LEN = {Cmd.INFO: 0, Cmd.STATUS: 0, Cmd.UNLOCK: 3, Cmd.CHARGE: 2}


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """A request the board saw on the line (any address), dated by the clock."""

    at: float  # clock.now()
    frame: Frame

    @property
    def addr(self) -> int:
        return self.frame.addr

    @property
    def cmd(self) -> int:
        return self.frame.cmd

    @property
    def payload(self) -> bytes:
        return self.frame.payload


class BoardSimulator(PtyDevice):
    """A YZ-LB1 locker board at ``address`` on a pseudo-terminal.

    ``port`` is what the host opens: ``link_path`` when given (a stable symlink
    to the current pty, like ``/dev/serial/by-id/...``, re-pointed by
    :meth:`replug`), else the pty's own device. Extra keyword arguments go to
    the :class:`~firmware.sim.model.Cabinet` (``banks``, ``charge_rate``,
    ``release_window``, ``auto_take``, ``time_scale``...). ``realtime`` runs a
    background ticker so the cabinet moves with the clock even when nobody
    polls (the demo); tests leave it off and move time themselves.

    ``addresses`` puts more boards on the line (``address`` first), each with
    a cabinet of ``n_slots`` (the first gets ``banks``, the others default
    banks of their own ids unless ``banks`` is ``{}``). ``locked_when="open"``
    is a board whose firmware passes a reversed feedback contact straight into
    the STATUS lock flag. ``pulse_delay`` holds every UNLOCK answer back that
    long (real seconds), as a board answering after its pulse would.
    """

    _what = "board simulator"

    def __init__(
        self,
        n_slots: int = 12,
        address: int = 1,
        firmware: str = "YZ-SIM-1.0",
        clock: Clock | None = None,
        link_path: str | os.PathLike[str] | None = None,
        *,
        banks: Mapping[int, tuple[str, int]] | None = None,
        realtime: bool = False,
        tick_interval: float = 0.5,
        addresses: Iterable[int] | None = None,
        locked_when: str = "closed",
        pulse_delay: float = 0.0,
        **cabinet_options: object,
    ) -> None:
        super().__init__(link_path)
        every = [address] if addresses is None else list(addresses)
        if address not in every:
            every.insert(0, address)
        for a in every:
            if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= 15:
                raise ValueError(f"board address must be 1..15, got {a!r}")
        if len(set(every)) != len(every):
            raise ValueError(f"two boards cannot share an address: {every}")
        if locked_when not in ("closed", "open"):
            raise ValueError(f"locked_when must be 'closed' or 'open', got {locked_when!r}")
        if not isinstance(pulse_delay, int | float) or not 0 <= pulse_delay <= 10:
            raise ValueError(f"pulse_delay must be 0..10 s, got {pulse_delay!r}")
        self.address = address
        self.firmware = firmware
        self.clock = clock or SYSTEM_CLOCK
        self.locked_when = locked_when
        self.pulse_delay = float(pulse_delay)
        self.cabinets: dict[int, Cabinet] = {}
        for a in every:
            # Other boards get banks of their own ids: two slots holding one
            # bank would confuse the hub's loans.
            own = banks if a == address or banks == {} else default_banks(
                n_slots, station=f"board-{a}")
            self.cabinets[a] = Cabinet(n_slots, banks=own, clock=self.clock, **cabinet_options)
        self.cabinet = self.cabinets[address]
        self.realtime = realtime
        self.tick_interval = tick_interval
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._frames: list[ReceivedFrame] = []
        self._silent = False
        self._silent_boards: set[int] = set()
        self._removed: set[int] = set()
        self._garble = 0
        self._delay = 0.0
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._decoder = FrameDecoder()
        self._unparsed = b""

    # -- lifecycle ---------------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return self.cabinet.n_slots

    def start(self) -> BoardSimulator:
        if self._started:
            return self
        super().start()
        if self.realtime:
            self._ticker_stop.clear()
            self._ticker = threading.Thread(target=self._tick_loop, name="board-sim-ticker",
                                            daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        """Close everything and join the threads; safe to call twice."""
        self._started = False
        self._ticker_stop.set()
        if self._ticker is not None:
            self._ticker.join(5.0)
            self._ticker = None
        super().stop()

    def _plugged_in(self) -> None:
        self._decoder = FrameDecoder()  # a new adapter has heard nothing yet
        self._unparsed = b""

    # -- scripted faults of the board itself ---------------------------------------

    def silent(self, on: bool = True, *, board: int | None = None) -> None:
        """Keep listening (frames are still recorded, an UNLOCK still pulses)
        but never answer; ``board``: only that board, else every one."""
        with self._lock:
            if board is None:
                self._silent = on
                return
            self.board(board)
            (self._silent_boards.add if on else self._silent_boards.discard)(board)

    def remove(self, board: int, gone: bool = True) -> None:
        """Board ``board`` is unpowered: it hears nothing, does nothing, says nothing."""
        with self._lock:
            self.board(board)
            (self._removed.add if gone else self._removed.discard)(board)

    def garble_next(self, n: int = 1) -> None:
        """Corrupt the CRC of the next ``n`` answers."""
        with self._lock:
            self._garble += n

    def delay_next(self, seconds: float) -> None:
        """Hold the next answer back for ``seconds`` of real time.

        Real time, not the clock's: what it tests is the host's serial timeout,
        and pyserial times out by the wall.
        """
        with self._lock:
            self._delay = seconds

    def inject_garbage(self, data: bytes) -> None:
        """Put raw bytes on the line now (noise, a half frame, another talker)."""
        self._write(bytes(data))

    # -- the cabinet, for tests and the demo ------------------------------------------

    def board(self, address: int) -> Cabinet:
        """The cabinet behind the board at ``address``."""
        try:
            return self.cabinets[address]
        except (KeyError, TypeError):
            raise SimulatorError(f"no board {address!r} on this line; "
                                 f"boards {sorted(self.cabinets)}") from None

    def tick(self, seconds: float) -> None:
        for cabinet in self.cabinets.values():
            cabinet.tick(seconds)

    def slot(self, n: int) -> SlotRecord:
        """A snapshot of slot ``n``, as a :class:`~protocol.frames.SlotRecord`."""
        return self.cabinet.slot(n)

    def take(self, n: int) -> str:
        return self.cabinet.take(n)

    def insert(self, n: int, bank_id: str, charge: int, cycles: int | None = None) -> None:
        self.cabinet.insert(n, bank_id, charge, cycles)

    def jam(self, n: int) -> None:
        self.cabinet.jam(n)

    def unjam(self, n: int) -> None:
        self.cabinet.unjam(n)

    def set_fault(self, n: int, fault: str | None) -> None:
        self.cabinet.set_fault(n, fault)

    def busy(self, n: int, busy: bool = True) -> None:
        self.cabinet.busy(n, busy)

    # -- what the line carried ----------------------------------------------------------

    @property
    def frames_received(self) -> list[ReceivedFrame]:
        """Every request seen on the line, whatever its address, oldest first."""
        with self._lock:
            return list(self._frames)

    @property
    def bad_frames(self) -> int:
        """Frames that arrived with a bad CRC."""
        return self._decoder.bad_crc

    def wait_for_frame(
        self, cmd: int, timeout: float = 2.0, *, addr: int | None = None, after: int = 0
    ) -> ReceivedFrame:
        """The first request with ``cmd`` to ``addr`` (default: this board) among
        ``frames_received[after:]``, waiting up to ``timeout`` real seconds."""
        addr = self.address if addr is None else addr
        with self._seen:
            found = self._seen.wait_for(
                lambda: next(
                    (f for f in self._frames[after:] if f.cmd == cmd and f.addr == addr), None
                ),
                timeout,
            )
            if found is None:
                got = [(f.addr, hex(f.cmd)) for f in self._frames]
                raise TimeoutError(
                    f"no frame cmd=0x{cmd:02X} addr={addr} within {timeout} s; got {got}"
                )
            return found

    def wait_for_request(
        self, match: Callable[[Frame], bool], timeout: float = 2.0, *, after: int = 0
    ) -> ReceivedFrame:
        """The first request among ``frames_received[after:]`` that ``match``
        accepts, waiting up to ``timeout`` real seconds."""
        with self._seen:
            found = self._seen.wait_for(
                lambda: next((f for f in self._frames[after:] if match(f.frame)), None), timeout
            )
        if found is None:
            raise TimeoutError(f"no such request within {timeout} s; got {self.frames_received}")
        return found

    # -- serving ---------------------------------------------------------------------------

    def _receive(self, data: bytes, line: Line) -> None:
        for reply in self._handle(data):
            if line.stopping.is_set():
                return
            self._send(line, reply)

    def _handle(self, data: bytes) -> list[bytes]:
        """Answers for what ``data`` completes, in order."""
        # The decoder drops a corrupt frame silently, yet the board must answer
        # error 1 when the corrupt frame was for it; so keep our own copy of
        # the bytes the decoder still holds, to look at the corrupt frame.
        pending = self._unparsed + data
        bad_before = self._decoder.bad_crc
        frames = self._decoder.feed(data)
        self._unparsed = pending[len(pending) - self._decoder.pending :]
        replies: list[bytes] = []
        if self._decoder.bad_crc > bad_before:
            for a in self._powered():
                corrupt_cmd = _first_corrupt_cmd(pending, a)
                if corrupt_cmd is not None:
                    replies.append(error_response(a, corrupt_cmd, ErrorCode.BAD_CRC))
        now = self.clock.now()
        with self._seen:
            for frame in frames:
                if not frame.cmd & RESPONSE_BIT:  # answers of other boards are not requests
                    self._frames.append(ReceivedFrame(now, frame))
            self._seen.notify_all()
        powered = self._powered()
        for frame in frames:
            if frame.addr in powered and not frame.cmd & RESPONSE_BIT:
                replies.append(self._answer(frame))
        return replies

    def _powered(self) -> list[int]:
        with self._lock:
            return [a for a in self.cabinets if a not in self._removed]

    def _answer(self, frame: Frame) -> bytes:
        a, p = frame.addr, frame.payload
        cabinet = self.cabinets[a]
        try:
            cmd = Cmd(frame.cmd)
        except ValueError:
            return error_response(a, frame.cmd, ErrorCode.UNKNOWN_COMMAND)
        if cmd not in _REQUEST_LEN:
            return error_response(a, frame.cmd, ErrorCode.UNKNOWN_COMMAND)
        if len(p) != _REQUEST_LEN[cmd]:
            return error_response(a, frame.cmd, ErrorCode.BAD_LENGTH)
        if cmd is Cmd.INFO:
            return info_response(a, cabinet.n_slots, self.firmware)
        if cmd is Cmd.STATUS:
            records = cabinet.records()
            if self.locked_when == "open":
                records = [dataclasses.replace(r, locked=not r.locked) for r in records]
            return status_response(a, records)
        if cmd is Cmd.UNLOCK:
            slot, _pulse_ms = struct.unpack("<BH", p)
            return unlock_response(a, slot, cabinet.unlock(slot))
        slot, on = p
        return charge_response(a, slot, cabinet.set_charging(slot, on != 0))

    def _send(self, line: Line, reply: bytes) -> None:
        with self._lock:
            silent = self._silent or reply[2] in self._silent_boards  # reply[2]: its address
            delay = self._delay
            self._delay = 0.0
            if reply[3] == Cmd.UNLOCK | RESPONSE_BIT:
                delay += self.pulse_delay
            if not silent and self._garble > 0:
                self._garble -= 1
                reply = reply[:-1] + bytes((reply[-1] ^ 0xFF,))
        if silent:
            return
        if delay > 0 and line.stopping.wait(delay):
            return
        self._write(reply, line)

    def _tick_loop(self) -> None:
        while not self._ticker_stop.wait(self.tick_interval):
            for cabinet in self.cabinets.values():
                cabinet.sync()


def _first_corrupt_cmd(buf: bytes, address: int) -> int | None:
    """The cmd of the first complete frame to ``address`` in ``buf`` whose CRC is wrong."""
    pos = buf.find(SYNC)
    while pos >= 0 and pos + HEADER_LEN <= len(buf):
        addr, cmd, length = buf[pos + 2], buf[pos + 3], buf[pos + 4]
        end = pos + HEADER_LEN + length + 2
        if end <= len(buf) and addr == address and not cmd & RESPONSE_BIT:
            body = buf[pos + 2 : end - 2]
            if crc16_modbus(body) != int.from_bytes(buf[end - 2 : end], "little"):
                return cmd
        pos = buf.find(SYNC, pos + 1)
    return None
