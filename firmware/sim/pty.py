"""A serial device on a pseudo-terminal: what every board simulator plugs in with.

The host opens ``port`` with pyserial as it opens a USB adapter on a Pi. Pulling
the adapter (:meth:`PtyDevice.unplug`) makes the host's reads and writes fail;
plugging it back (:meth:`PtyDevice.replug`) is a fresh pty, and a ``link_path``
symlink is re-pointed at it the way udev re-points ``/dev/serial/by-id/...``.
A subclass answers in :meth:`PtyDevice._receive`, on the line's own thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import tty
from pathlib import Path
from typing import Self

from firmware.sim.model import SimulatorError

log = logging.getLogger(__name__)

__all__ = ["Line", "PtyDevice"]


class Line:
    """One plugged-in life of the adapter: a pty pair and the thread serving it."""

    def __init__(self, device: PtyDevice) -> None:
        self.master, self.slave = os.openpty()
        # Raw: no echo, no line discipline turning 0x0D into 0x0A or eating 0x03.
        tty.setraw(self.slave)
        # A UART never waits for a listener: answers nobody reads are dropped
        # instead of blocking the board once the pty buffer fills.
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self.slave)
        self._wake_r, self._wake_w = os.pipe()
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=device._serve, args=(self,), name=f"board-sim-{self.slave_name}", daemon=True
        )

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5.0)
        # The slave we hold open keeps the pty alive while no host has it open
        # (else reading the master fails with EIO); closing both pulls the plug.
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wait_readable(self) -> bool:
        ready, _, _ = select.select([self.master, self._wake_r], [], [])
        return self.master in ready and not self.stopping.is_set()


class PtyDevice:
    """Plug, unplug and the byte stream of a simulated device on a pty.

    ``port`` is ``link_path`` when given (a stable symlink to the current pty),
    else the pty's own device. Subclasses set ``_what`` (named in the log when
    their :meth:`_receive` fails), may reset what they parse in
    :meth:`_plugged_in`, and answer with :meth:`_write`.
    """

    _what = "simulator"

    def __init__(self, link_path: str | os.PathLike[str] | None) -> None:
        self.link_path = Path(link_path) if link_path is not None else None
        self._line: Line | None = None
        self._started = False

    @property
    def port(self) -> str:
        if self.link_path is not None:
            return str(self.link_path)
        if self._line is None:
            raise SimulatorError("the simulator is not plugged in")
        return self._line.slave_name

    @property
    def plugged(self) -> bool:
        return self._line is not None

    def start(self) -> Self:
        if not self._started:
            self._started = True
            self.replug()
        return self

    def stop(self) -> None:
        self._started = False
        self.unplug()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """The USB adapter is pulled: the host's reads and writes now fail, the
        symlink is gone."""
        line, self._line = self._line, None
        if self.link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
        if line is not None:
            line.close()

    def replug(self) -> None:
        """A fresh adapter appears (a new pty) and the symlink points at it again."""
        if self._line is not None:
            return
        line = Line(self)
        self._plugged_in()
        if self.link_path is not None:
            # Re-point atomically, as udev does, so a host never sees a dangling link.
            tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(line.slave_name)
            os.replace(tmp, self.link_path)
        self._line = line
        line.thread.start()

    def _plugged_in(self) -> None:
        """A new adapter has heard nothing yet: forget half-read requests."""

    def _receive(self, data: bytes, line: Line) -> None:
        raise NotImplementedError

    def _serve(self, line: Line) -> None:
        while not line.stopping.is_set():
            if not line.wait_readable():
                continue
            try:
                data = os.read(line.master, 4096)
            except BlockingIOError:
                continue
            except OSError as err:
                # EIO: no host has the slave open (yet, or ours is closing).
                if err.errno == errno.EIO and not line.stopping.is_set():
                    line.stopping.wait(0.01)
                    continue
                return
            if not data:
                continue
            try:
                self._receive(data, line)
            except Exception:
                # A bug here must show, yet must not turn the board mute for
                # the rest of the run: log it and serve the next request.
                log.exception("%s failed on %s", self._what, data.hex(" "))

    def _write(self, data: bytes, line: Line | None = None) -> None:
        line = line or self._line
        if line is None:
            raise SimulatorError("the simulator is unplugged")
        with contextlib.suppress(BlockingIOError):  # buffer full: the bytes fall on the floor
            os.write(line.master, data)
