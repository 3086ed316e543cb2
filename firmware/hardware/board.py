"""The locker board on its serial line: the YZ-LB1 bus master (contract §10).

Wiring: the board's RS-485 pair goes to a USB RS-485 adapter on the Pi, which
udev names ``/dev/serial/by-id/usb-...``; the agent's user must be in the
``dialout`` group. In tests and in ``hardware: sim`` the same code opens the
pseudo-terminal of :class:`firmware.sim.BoardSimulator` (see docs/locker.md).

    board = LockerBoard("/dev/serial/by-id/usb-FTDI_RS485-if00-port0")
    n_slots, firmware = board.info()        # (12, "YZ-LB1-2.3")
    board.unlock(3)                         # UnlockResult.RELEASED
    board.close()

One request is on the line at a time. Each waits ``timeout`` (200 ms) for its
answer, skipping garbage and corrupt frames, and is sent ``retries`` more times
when none comes; then :class:`BoardOffline`. A port that vanishes (the USB
adapter pulled) is closed and reopened by the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from firmware.hardware.serial_port import (
    READ_SLICE,
    BoardOffline,
    LockerError,
    OpenPort,
    PortInUse,
    SerialPort,
)
from protocol.errors import BoardError, FrameError
from protocol.frames import (
    RESPONSE_BIT,
    ChargeResult,
    Cmd,
    ErrorCode,
    Frame,
    FrameDecoder,
    SlotRecord,
    UnlockResult,
    charge_request,
    info_request,
    parse_charge,
    parse_info,
    parse_status,
    parse_unlock,
    status_request,
    unlock_request,
)

log = logging.getLogger(__name__)

__all__ = [
    "BoardOffline",
    "BoardRefused",
    "LockerBoard",
    "LockerError",
    "PortInUse",
]


class BoardRefused(LockerError, BoardError):
    """The board answered with an error frame; ``code`` is an
    :class:`~protocol.frames.ErrorCode` (or the raw int), ``request_cmd`` the refused
    command. Also a :class:`protocol.errors.BoardError`."""


T = TypeVar("T")
R = TypeVar("R")


class LockerBoard:
    """The YZ-LB1 client for one board at ``address`` on ``port``.

    ``port`` is a device path or a pyserial URL (``loop://``, ``socket://...``).
    ``open_port`` opens it (default :func:`serial.serial_for_url`, called with
    ``baudrate``, ``timeout`` and ``exclusive=True``). Nothing is opened until
    :meth:`open` or the first request.

    Counters: ``requests`` sent (each attempt counts), ``timeouts`` (attempts
    that got no answer), ``bad_frames`` (corrupt or malformed frames skipped),
    ``reopen_count`` (successful opens after the port was lost).

    Thread-safe; the :class:`~firmware.locker.Locker` is nevertheless the only
    thread that calls it in the agent, so a release never waits behind a poll
    on another thread's lock.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        address: int = 1,
        timeout: float = 0.2,
        retries: int = 2,
        open_port: OpenPort | None = None,
    ) -> None:
        if not 1 <= address <= 15:
            raise ValueError(f"board address must be 1..15, got {address!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.port = str(port)
        self.baudrate = baudrate
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self._port = SerialPort(
            self.port, baudrate, read_slice=min(timeout, READ_SLICE), open_port=open_port
        )
        self._lock = threading.RLock()
        self._decoder = FrameDecoder()
        self.requests = 0
        self.timeouts = 0
        self._malformed = 0

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<LockerBoard {self.port} addr={self.address} {state}>"

    # -- lifecycle ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._port.is_open

    @property
    def reopen_count(self) -> int:
        """Successful opens after the port was lost."""
        return self._port.reopen_count

    @property
    def bad_frames(self) -> int:
        """Frames skipped: bad CRC, or a valid CRC around a payload we cannot parse."""
        return self._decoder.bad_crc + self._malformed

    @property
    def garbage_bytes(self) -> int:
        """Bytes on the line that were in no valid frame (noise, corrupt frames)."""
        return self._decoder.garbage_bytes

    def open(self) -> None:
        """Open the serial port (exclusively); a no-op when it is open.

        Raises :class:`PortInUse` when another process has it, :class:`BoardOffline`
        when it cannot be opened (missing device, no permission).
        """
        with self._lock:
            if self._port.open():
                self._decoder.reset()

    def close(self) -> None:
        """Close the port; idempotent. Requests after this raise until :meth:`open`."""
        with self._lock:
            self._port.close()

    def __enter__(self) -> LockerBoard:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------

    def info(self) -> tuple[int, str]:
        """``(n_slots, firmware)`` as the board reports them."""
        return self._request(Cmd.INFO, info_request(self.address), parse_info)

    def status(self) -> list[SlotRecord]:
        """Every slot's record, slot 1 first."""
        return self._request(Cmd.STATUS, status_request(self.address), _slots_of)

    def unlock(self, slot: int, pulse_ms: int = 500) -> UnlockResult:
        """Pulse ``slot``'s lock for ``pulse_ms``; the board's verdict
        (RELEASED, BAD_SLOT, JAMMED, BUSY).

        A lost answer makes the request go out again: the lock may then be
        pulsed twice, which only restarts its release window.
        """
        frame = unlock_request(self.address, slot, pulse_ms)  # bad values: FrameError now
        return self._request(Cmd.UNLOCK, frame, _result_for(slot, parse_unlock))

    def charge(self, slot: int, on: bool) -> ChargeResult:
        """Switch ``slot``'s charger on or off."""
        frame = charge_request(self.address, slot, on)
        return self._request(Cmd.CHARGE, frame, _result_for(slot, parse_charge))

    # -- the line --------------------------------------------------------------------

    def _request(self, cmd: Cmd, request: bytes, parse: Callable[[Frame], T]) -> T:
        """Send ``request`` until an answer for it that ``parse`` accepts comes back;
        return what ``parse`` made of it."""
        with self._lock:
            if self._port.closed:
                raise LockerError(f"locker board on {self.port} is closed")
            self.open()
            last = "no answer"
            for attempt in range(1 + self.retries):
                got = self._port.guard(lambda: self._exchange(cmd, request, parse))
                if got is None:
                    self.timeouts += 1
                    continue
                if isinstance(got, _Malformed):
                    last = got.reason
                    continue
                if isinstance(got, Frame):  # an error frame
                    if got.error_code == ErrorCode.BAD_CRC and attempt < self.retries:
                        last = "the board heard a corrupt request"
                        continue  # our request was hit by noise on the way: send it again
                    raise BoardRefused(got.request_cmd, got.error_code)
                return got
            attempts = 1 + self.retries
            raise BoardOffline(
                f"locker board {self.address} on {self.port} did not answer {cmd.name} "
                f"({attempts} attempt{'s' if attempts > 1 else ''}, "
                f"{self.timeout * 1000:.0f} ms each; {last})"
            )

    def _exchange(
        self, cmd: Cmd, request: bytes, parse: Callable[[Frame], T]
    ) -> T | Frame | _Malformed | None:
        """One attempt: the parsed answer, the error frame, a malformed answer, or
        None on timeout."""
        ser = self._port.ser
        ser.reset_input_buffer()  # an answer to an earlier, timed-out attempt is stale
        self._decoder.reset()
        self.requests += 1
        ser.write(request)
        deadline = time.monotonic() + self.timeout  # the wire's time, not the station's
        while time.monotonic() < deadline:
            data = ser.read(ser.in_waiting or 1)
            if not data:
                continue
            for frame in self._decoder.feed(data):
                if not self._is_answer(frame, cmd):
                    continue  # another board's answer, our own echo, an old frame
                if frame.cmd == Cmd.ERROR:
                    return frame
                try:
                    return parse(frame)
                except FrameError as err:
                    # A valid CRC around a payload we cannot read: a firmware
                    # fault, not noise. The board will not answer again by itself.
                    self._malformed += 1
                    log.debug("malformed %s answer: %s", cmd.name, err)
                    return _Malformed(f"malformed answer: {err}")
        return None

    def _is_answer(self, frame: Frame, cmd: Cmd) -> bool:
        if frame.addr != self.address:
            return False
        if frame.cmd == cmd | RESPONSE_BIT:
            return True
        return frame.cmd == Cmd.ERROR and len(frame.payload) == 2 and frame.payload[0] == cmd


class _Malformed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _slots_of(frame: Frame) -> list[SlotRecord]:
    """A STATUS answer's records, each slot numbered 1..255 and named once.

    The codec reads any u8; a record of slot 0 or a slot named twice is a
    firmware fault, and taken as it is it would put a slot 0 into the State,
    which the contract refuses (every State after it unpublishable) or let one
    record silently overwrite another.
    """
    records = parse_status(frame)
    seen: set[int] = set()
    for r in records:
        if r.slot == 0 or r.slot in seen:
            raise FrameError(f"STATUS answer names slot {r.slot} "
                             f"{'twice' if r.slot in seen else '(slots are 1..255)'}")
        seen.add(r.slot)
    return records


def _result_for(slot: int, parse: Callable[[Frame], tuple[int, R]]) -> Callable[[Frame], R]:
    """A parser of an UNLOCK/CHARGE answer that also insists it is about ``slot``."""

    def parse_result(frame: Frame) -> R:
        got, result = parse(frame)
        if got != slot:
            raise FrameError(f"answer is about slot {got}, not {slot}")
        return result

    return parse_result
