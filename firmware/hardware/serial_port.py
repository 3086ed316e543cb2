"""The serial port a lock board hangs on: opened exclusively, its failures in the
station's words, and a vanished port dropped at once and reopened by the next request.

Both masters use it: the YZ-LB1 client (:mod:`firmware.hardware.board`) and the
shared RS-485 line of the other boards (:mod:`firmware.hardware.lockboards.bus`).
They take turns on the line their own way; what the port does when a USB adapter
is pulled, held by another program or not permitted is the same for both.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import serial

try:  # a tty that vanished fails tcflush/tcsetattr with termios.error, not OSError
    from termios import error as _TermiosError
except ImportError:  # pragma: no cover - not a POSIX system
    _TermiosError = OSError

log = logging.getLogger(__name__)

__all__ = ["PORT_GONE", "READ_SLICE", "BoardOffline", "LockerError", "OpenPort", "PortInUse",
           "SerialPort"]

# What a vanished port raises on a read, a write or a flush.
PORT_GONE = (serial.SerialException, OSError, _TermiosError)

# pyserial waits at most this long in one read, so a request overshoots its
# deadline by no more than this (the port's own timeout is not changed per
# read: on a tty that is a tcsetattr each time).
READ_SLICE = 0.02

OpenPort = Callable[..., Any]
T = TypeVar("T")


class LockerError(Exception):
    """Root of every error the locker raises (board and :mod:`firmware.locker`)."""


class BoardOffline(LockerError, ConnectionError):
    """The board did not answer (after the retries), or its serial port is gone.

    The station's word for "the locker cannot be reached right now"; a request
    may succeed again later, the port is reopened by the next one.
    """


class PortInUse(BoardOffline):
    """Another process holds the serial port (our open is exclusive)."""


class SerialPort:
    """The port at ``path`` (a device path or a pyserial URL), opened on demand.

    ``open_port`` opens it (default :func:`serial.serial_for_url`, called with
    ``baudrate``, ``timeout=read_slice`` and ``exclusive=True``). ``closed`` is
    the owner's word (after :meth:`close` requests must refuse); a port lost
    under a request is only dropped, and the next :meth:`ensure_open` reopens it.
    Not thread-safe: its owner holds the line while calling it.
    """

    def __init__(
        self, path: str, baudrate: int, *, read_slice: float = READ_SLICE,
        open_port: OpenPort | None = None,
    ) -> None:
        self.path = str(path)
        self.baudrate = baudrate
        self.read_slice = read_slice
        self._open_port: OpenPort = open_port or serial.serial_for_url
        self.ser: Any = None
        self.closed = False
        self.reopen_count = 0
        self._ever_opened = False

    @property
    def is_open(self) -> bool:
        return self.ser is not None

    def open(self) -> bool:
        """Open (again after :meth:`close`); True when this call opened the port."""
        self.closed = False
        return self.ensure_open()

    def close(self) -> None:
        self.closed = True
        self.drop()

    def ensure_open(self) -> bool:
        """Open the port unless it is; True when this call opened it. Raises
        :class:`PortInUse` or :class:`BoardOffline` (missing device, no permission)."""
        if self.ser is not None:
            return False
        try:
            ser = self._open_port(
                self.path, baudrate=self.baudrate, timeout=self.read_slice, exclusive=True
            )
        except (*PORT_GONE, ValueError) as err:
            raise open_error(self.path, err) from err
        self.ser = ser
        if self._ever_opened:
            self.reopen_count += 1
        self._ever_opened = True
        return True

    def guard(self, step: Callable[[], T]) -> T:
        """Run ``step`` on the open port; a port that fails under it is dropped and
        the failure raised as :class:`BoardOffline`."""
        try:
            return step()
        except PORT_GONE as err:
            # The adapter is gone (EIO, ENXIO...): forget the fd so the next
            # request reopens the path once udev has it back.
            self.drop()
            raise BoardOffline(f"serial port {self.path} failed: {err}") from err

    def drop(self) -> None:
        ser, self.ser = self.ser, None
        if ser is None:
            return
        try:
            ser.close()
        except PORT_GONE as err:
            # Closing a vanished device can fail too; the fd is released either way.
            log.debug("closing %s: %s", self.path, err)


def open_error(port: str, err: BaseException) -> BoardOffline:
    """Why ``port`` did not open, said so the person at the station can act on it."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return PortInUse(
            f"serial port {port} is in use by another process (exclusive lock); "
            f"stop the other program (a second agent, minicom, screen) first"
        )
    if code == errno.EACCES:
        return BoardOffline(
            f"no permission to open serial port {port}: add the agent's user to the "
            f"dialout group ({text})"
        )
    if code == errno.ENOENT:
        return BoardOffline(f"serial port {port} does not exist (adapter unplugged?)")
    return BoardOffline(f"cannot open serial port {port}: {text}")
