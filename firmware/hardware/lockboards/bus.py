"""One RS-485 line shared by several lock-control boards.

The Pi holds the master end: a USB-RS485 adapter or an RS485 HAT with automatic
direction control (no RTS toggling here), addressed by its
``/dev/serial/by-id/...`` path. Every board on the line hears every frame and
answers only its own address, so one request is on the line at a time::

    bus = Bus("/dev/serial/by-id/usb-FTDI_RS485-if00-port0", baudrate=9600)
    board = Lock8A(bus, address=1, locks=24)
    board.unlock(3)
    bus.close()

Drivers speak through :meth:`Bus.transact`: the request bytes and a pure scanner
that finds the answer in what comes back, skipping garbage and other boards'
frames. An idempotent request (a status read) may go out ``attempts`` times; an
unlock goes out once and is ``urgent``: it takes the line before the next
attempt of any poll that is waiting, so a rider never waits behind a silent
board's retries. Bytes no transaction wanted (a board's unsolicited change
frame) go to the scanners drivers registered with :meth:`listen`.

Open, close, reopen and the error texts are those of the YZ-LB1 board, from the
one :mod:`firmware.hardware.serial_port`: an exclusive open, :class:`PortInUse`,
and a vanished port closed at once and reopened by the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from firmware.hardware.lockboards.base import Found
from firmware.hardware.serial_port import (
    BoardOffline,
    LockerError,
    OpenPort,
    PortInUse,
    SerialPort,
)

log = logging.getLogger(__name__)

__all__ = ["BoardOffline", "Bus", "PortInUse", "Scanner"]

T = TypeVar("T")
# Finds the frame a request waits for in the bytes received so far: None while
# it is not (yet) there.
Scanner = Callable[[bytes], "Found[Any] | None"]
# Finds every frame a listener cares about in bytes nobody waited for.
Listener = Callable[[bytes], None]

# Longest run of received bytes kept for listeners between requests; a line
# that babbles cannot grow the agent's memory.
_MAX_IDLE_BYTES = 4096


class Bus:
    """The serial line at ``port`` (a device path or a pyserial URL).

    ``timeout`` is how long an attempt waits for its answer unless the request
    says otherwise. ``echo`` is for an adapter that hears its own transmission
    (some USB dongles): the request's own bytes at the head of what comes back
    are dropped. It cannot be left to the scanners, since an 8A board's answer
    "contact made" is byte for byte the unlock request.

    Counters: ``requests`` (each attempt), ``timeouts``, ``garbage_bytes``
    (bytes in no wanted frame), ``reopen_count``.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        timeout: float = 0.3,
        echo: bool = False,
        open_port: OpenPort | None = None,
    ) -> None:
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or not (
            300 <= baudrate <= 4_000_000
        ):
            raise ValueError(f"baudrate must be 300..4000000, got {baudrate!r}")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ValueError(f"timeout must be > 0 and <= 60 s, got {timeout!r}")
        self.port = str(port)
        self.baudrate = baudrate
        self.timeout = float(timeout)
        self.echo = bool(echo)
        self._port = SerialPort(self.port, baudrate, open_port=open_port)
        self._mutex = threading.Lock()
        self._turn = threading.Condition(self._mutex)
        self._busy = False
        self._urgent_waiting = 0
        self._listeners: list[Listener] = []
        self.requests = 0
        self.timeouts = 0
        self.garbage_bytes = 0

    def __repr__(self) -> str:
        return f"<Bus {self.port} {self.baudrate} {'open' if self.is_open else 'closed'}>"

    # -- lifecycle ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._port.is_open

    @property
    def reopen_count(self) -> int:
        return self._port.reopen_count

    def open(self) -> None:
        """Open the port exclusively; a no-op when open. Raises :class:`PortInUse`
        or :class:`BoardOffline` (missing device, no permission)."""
        with self._line():
            self._port.open()

    def close(self) -> None:
        """Close the port; idempotent. Requests after this raise until :meth:`open`."""
        with self._line():
            self._port.close()

    def __enter__(self) -> Bus:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what drivers use ----------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with received bytes no request waited for (before each
        request and around each answer); it keeps what it finds."""
        self._listeners.append(listener)

    def drain(self) -> None:
        """Hand whatever the line holds now to the listeners (no request sent)."""
        with self._line():
            if self._port.closed:
                return
            self._port.ensure_open()
            self._port.guard(self._take_idle)

    def transact(
        self,
        request: bytes,
        scan: Scanner,
        *,
        what: str,
        timeout: float | None = None,
        attempts: int = 1,
        urgent: bool = False,
    ) -> Any:
        """Send ``request`` and return the value ``scan`` found in the answer.

        ``what`` names the request in errors ("lock8a board 3: read").
        ``attempts`` > 1 only for idempotent requests: each attempt is a separate
        turn on the line, so an ``urgent`` request waiting meanwhile goes first.
        Raises :class:`BoardOffline` when no attempt found its answer or the port
        failed.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        wait = self.timeout if timeout is None else timeout
        seen = 0
        for _ in range(attempts):
            with self._line(urgent=urgent):
                if self._port.closed:
                    raise LockerError(f"serial bus {self.port} is closed")
                self._port.ensure_open()
                found, got = self._port.guard(lambda: self._exchange(request, scan, wait))
            if found is not None:
                return found.value
            self.timeouts += 1
            seen += got
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}, {wait * 1000:.0f} ms each"
        heard = f"{seen} bytes of garbage" if seen else "no answer"
        raise BoardOffline(f"{what} on {self.port}: no valid answer ({tries}; {heard})")

    # -- the line ------------------------------------------------------------------

    def _exchange(
        self, request: bytes, scan: Scanner, wait: float
    ) -> tuple[Found[Any] | None, int]:
        """One attempt: (what ``scan`` found or None, bytes received)."""
        ser = self._port.ser
        self._take_idle()  # an unsolicited frame is not lost, a late answer not misread
        self.requests += 1
        ser.write(request)
        buf = bytearray()
        head = len(request) if self.echo else 0  # bytes that may be our echo
        deadline = time.monotonic() + wait  # the wire's time, not the station's
        while time.monotonic() < deadline:
            data = ser.read(ser.in_waiting or 1)
            if not data:
                continue
            buf += data
            if head and len(buf) < head:
                continue
            if head:
                echoed, head = buf[:head] == request, 0
                if echoed:
                    del buf[: len(request)]
            found = scan(bytes(buf))
            if found is not None:
                # Around the answer: noise, or a change frame a board sent
                # just then; the listeners pick the frames out.
                self._idle(bytes(buf[: found.start]) + bytes(buf[found.end :]))
                return found, len(buf)
        self._idle(bytes(buf))
        return None, len(buf)

    def _take_idle(self) -> None:
        ser = self._port.ser
        pending = ser.in_waiting
        if pending:
            self._idle(ser.read(min(pending, _MAX_IDLE_BYTES)))

    def _idle(self, data: bytes) -> None:
        if not data:
            return
        self.garbage_bytes += len(data)
        for listener in self._listeners:
            try:
                listener(data)
            except Exception:  # a listener's bug must not take the line down
                log.exception("bus listener failed on %s", data.hex(" "))

    def _line(self, *, urgent: bool = False) -> _Turn:
        return _Turn(self, urgent)


class _Turn:
    """Holding the line for one exchange; urgent turns go before waiting ones."""

    def __init__(self, bus: Bus, urgent: bool) -> None:
        self.bus, self.urgent = bus, urgent

    def __enter__(self) -> None:
        bus = self.bus
        with bus._turn:
            if self.urgent:
                bus._urgent_waiting += 1
                try:
                    bus._turn.wait_for(lambda: not bus._busy)
                finally:
                    bus._urgent_waiting -= 1
            else:
                bus._turn.wait_for(lambda: not bus._busy and bus._urgent_waiting == 0)
            bus._busy = True

    def __exit__(self, *exc: object) -> None:
        bus = self.bus
        with bus._turn:
            bus._busy = False
            bus._turn.notify_all()
