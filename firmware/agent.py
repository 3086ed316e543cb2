"""The station agent: reads the hardware, keeps it safe, reports to the hub.

Build one with ``Agent(config, clock, hardware)`` and either drive it a step at
a time (tests move a ManualClock and call ``step()``) or call ``run()``, which
loops until ``stop()``.

State is published after every birth, within ``coalesce`` seconds (2 s) of a
change, changes inside that window folded into one, and at least every
``heartbeat`` seconds (60 s) — contract §5.
"""

from __future__ import annotations

import logging
import threading

from firmware.config import StationConfig
from firmware.hardware import StationHardware
from firmware.journal import Journal
from firmware.link import StationLink
from protocol import messages as m
from protocol.topics import Kind
from yizhan import __version__
from yizhan.clock import Clock

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: StationConfig, clock: Clock, hardware: StationHardware) -> None:
        self.config = config
        self.clock = clock
        self.hardware = hardware
        self.journal = Journal(config.data_dir)
        self.link = StationLink(
            config.sid, config.mqtt, self.journal.epoch,
            next_rev=self.journal.next_rev,
            birth_info=self._birth_info,
            on_birth=self.state_changed,
            on_inbound=self._inbound,
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._state_due: float | None = None  # monotonic time a State must go out
        self._last_state_at: float | None = None
        self._closed = False

    @property
    def sid(self) -> str:
        return self.config.sid

    # -- what the station says ----------------------------------------------------

    def _synced(self) -> bool:
        # Issue 3 reads timedatectl/adjtimex; the simulation's clock is the host's.
        return True

    def _birth_info(self) -> tuple:
        return (self.clock.ms(), self._synced(), self.journal.last_seq, __version__,
                self.hardware.describe())

    def snapshot(self) -> m.State:
        return m.State(
            sid=self.sid, epoch=self.journal.epoch, ts=self.clock.ms(), synced=self._synced(),
            rev=self.journal.next_rev(), last_seq=self.journal.last_seq,
            health=self.hardware.read_health(),
        )

    # -- scheduling ---------------------------------------------------------------

    def state_changed(self) -> None:
        """Ask for a State within the coalescing window; safe from any thread."""
        with self._lock:
            due = self.clock.monotonic() + self.config.coalesce
            if self._state_due is None or due < self._state_due:
                self._state_due = due
        self._wake.set()

    def step(self) -> float:
        """Do what is due now; return seconds until something else is due."""
        now = self.clock.monotonic()
        with self._lock:
            heartbeat_due = (self._last_state_at is None
                             or now - self._last_state_at >= self.config.heartbeat)
            due = heartbeat_due or (self._state_due is not None and now >= self._state_due)
        if due and self.link.connected.is_set():
            self.publish_state()
        with self._lock:
            waits = [self.config.heartbeat - (now - (self._last_state_at or now))]
            if self._state_due is not None:
                waits.append(self._state_due - now)
        return max(0.05, min(waits))

    def publish_state(self) -> None:
        state = self.snapshot()
        self.link.publish(Kind.STATE, state)
        with self._lock:
            self._state_due = None
            self._last_state_at = self.clock.monotonic()

    # -- inbound --------------------------------------------------------------------

    def _inbound(self, message: object) -> None:
        if isinstance(message, m.HubStatus) and message.state == "online":
            log.info("hub is online")
        # Commands and the directory are handled by the full agent (issue 3).

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.hardware.safe()  # no lock opens and no heater runs at power-up
        self.link.start()

    def run(self) -> None:
        """Run until ``stop()``; outputs go safe on the way out, whatever happens."""
        self.start()
        try:
            while not self._stopping.is_set():
                wait = self.step()
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.hardware.close()
        finally:
            shutdown = None
            if self.link.birth is not None:
                shutdown = m.Status.shutdown(
                    self.sid, self.journal.epoch, ts=self.clock.ms(), synced=self._synced(),
                    rev=self.journal.next_rev(), birth=self.link.birth)
            self.link.stop(shutdown)
            self.journal.close()
