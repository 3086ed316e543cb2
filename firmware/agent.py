"""The station agent: reads the hardware, keeps it safe, reports to the hub.

Build one with ``Agent(config, clock, hardware)`` and either drive it a step at
a time (tests move a ManualClock and call ``step()``) or call ``run()``, which
loops until ``stop()``. docs/agent-internals.md shows how the parts fit.

State is published after every birth, within ``coalesce`` seconds (2 s) of a
change, changes inside that window folded into one, and at least every
``heartbeat`` seconds (60 s) — contract §5. Events are journalled before they
are published and delivered by the outbox (contract §3).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from waitress.server import create_server

from firmware.commands import CommandHandler
from firmware.config import StationConfig, load_station_config
from firmware.directory import DirectoryStore
from firmware.dispenser import Dispenser
from firmware.doors import Doors
from firmware.hardware.station import StationHardware
from firmware.journal import Journal
from firmware.lending import Lending
from firmware.link import StationLink
from firmware.localapi import create_local_api
from firmware.locker import Locker
from firmware.occupancy import Occupancy
from firmware.outbox import Outbox
from protocol import messages as m
from protocol.topics import Kind
from yizhan import __version__
from yizhan.clock import Clock
from yizhan.watchdog import Notifier, Watchdog

log = logging.getLogger(__name__)

#: How often the dispensed volume is saved (it is also saved at shutdown).
SAVE_EVERY = 60.0
#: The kiosk polls the local API every few seconds; silence this long is "stale".
KIOSK_STALE_AFTER = 120.0


class _Reporter:
    """Parts report here: the journal first, then a State is due."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def event(self, type_: str, data: dict) -> int:
        a = self._agent
        seq = a.journal.append_event(a.clock.ms(), a.synced(), type_, data)
        a.state_changed()
        return seq

    def changed(self) -> None:
        self._agent.state_changed()


class Agent:
    def __init__(self, config: StationConfig, clock: Clock, hardware: StationHardware,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.clock = clock
        self.hardware = hardware
        # A card that fails or recovers changes the State (health.disk_free_mb).
        self.journal = Journal(config.data_dir, on_fault=lambda _fault: self.state_changed())
        self.reporter = _Reporter(self)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._state_due: float | None = None  # monotonic time a State must go out
        self._last_state_at: float | None = None
        self._next_save = clock.monotonic() + SAVE_EVERY
        self._kiosk_seen: float | None = None
        self._closed = False
        self._server = None
        self._server_thread: threading.Thread | None = None
        self.restart_requested = False
        try:
            self._build_parts()
        except BaseException:
            self._close_parts()
            self.journal.close()
            raise
        self.link = StationLink(
            config.sid, config.mqtt, self.journal.epoch,
            next_rev=self.journal.next_rev, birth_info=self._birth_info,
            on_birth=self.state_changed, on_inbound=self._inbound, clock=clock)
        self.outbox = Outbox(self.journal, self.link, clock, on_wake=self._wake.set,
                             synced=self.synced)
        self.commands = CommandHandler(config.sid, self.journal, self.link, clock, self.synced,
                                       locker=self.locker, outbox=self.outbox,
                                       on_reload=self.reload)
        self.notifier = notifier or Notifier.from_env()
        self.watchdog = Watchdog(self.notifier, clock, checks={"mqtt": self.link.healthy})

    # -- building ---------------------------------------------------------------------

    def _build_parts(self) -> None:
        c, hw, clock = self.config, self.hardware, self.clock
        self.doors = self.dispenser = self.occupancy = self.locker = None
        if hw.doors:
            self.doors = Doors(hw.doors, self.reporter, clock, pin_factory=hw.pin_factory)
        if hw.dispenser is not None:
            saved = self.journal.get_meta("dispensed_ml")
            self.dispenser = Dispenser(hw.dispenser, self.reporter, clock,
                                       pin_factory=hw.pin_factory,
                                       dispensed_ml=int(saved) if saved else 0)
        if hw.occupancy is not None:
            self.occupancy = Occupancy(hw.occupancy, self.reporter, clock,
                                       pin_factory=hw.pin_factory)
        self.directory = DirectoryStore(c.data_dir / "directory.json", clock)
        self.lending = None
        if hw.board is not None:
            self.locker = Locker(hw.board, self.reporter, clock,
                                 poll_interval=c.lockers.poll_interval)
            lc = c.lending
            self.lending = Lending(self.locker, self.journal, self.reporter, clock,
                                   self.directory, doors=self.doors, synced=self.synced,
                                   take_timeout=lc.take_timeout,
                                   maintenance_idle=lc.maintenance_idle,
                                   charge_rate=_charge_rate(c), slot_hold=lc.slot_hold)
            if hw.simulation is not None:
                hw.simulation.attach(self.lending)

    @property
    def sid(self) -> str:
        return self.config.sid

    def synced(self) -> bool:
        return self.hardware.synced()

    # -- what the station says -----------------------------------------------------------

    def _birth_info(self) -> tuple:
        return (self.clock.ms(), self.synced(), self.journal.last_seq, __version__,
                self.describe())

    def describe(self) -> dict:
        """The ``hw`` object of the birth (contract §4)."""
        hw: dict[str, Any] = {}
        for part in (self.locker, self.doors, self.dispenser, self.occupancy):
            if part is not None:
                hw.update(part.describe())
        hw.setdefault("dispenser", self.dispenser is not None)
        return hw

    def kiosk_status(self) -> str | None:
        if self._kiosk_seen is None:
            return None
        idle = self.clock.monotonic() - self._kiosk_seen
        return "ok" if idle <= KIOSK_STALE_AFTER else "stale"

    def snapshot(self) -> m.State:
        return m.State(
            sid=self.sid, epoch=self.journal.epoch, ts=self.clock.ms(), synced=self.synced(),
            rev=self.journal.next_rev(), last_seq=self.journal.last_seq,
            lockers=self.locker.section() if self.locker else None,
            dispenser=self.dispenser.section() if self.dispenser else None,
            doors=self.doors.section() if self.doors else None,
            health=self.hardware.health.read(outbox=self.outbox.size(),
                                             kiosk=self.kiosk_status(),
                                             storage=self.journal.fault),
            counters=m.Counters(**self.journal.counters()),
        )

    def local_view(self) -> dict:
        """What the kiosk's API shows of the station besides lending."""
        return {"sid": self.sid, "name": self.config.name,
                "hub_online": self.link.connected.is_set(),
                "dispenser": self.dispenser.section() if self.dispenser else None}

    # -- scheduling ------------------------------------------------------------------------

    def state_changed(self) -> None:
        """Ask for a State within the coalescing window; safe from any thread."""
        with self._lock:
            due = self.clock.monotonic() + self.config.coalesce
            if self._state_due is None:
                self._state_due = due
        self._wake.set()

    def step(self) -> float:
        """Do what is due now; return seconds until the loop should look again."""
        for part in (self.dispenser, self.doors, self.occupancy):
            if part is None:
                continue
            try:
                part.poll()
            except Exception:
                log.exception("polling %s failed", type(part).__name__)
                if part is self.dispenser:
                    self.dispenser.safe()  # whatever went wrong, not with the heater on
        if self.lending is not None:
            self.lending.poll()
        self.link.poll()
        now = self.clock.monotonic()
        with self._lock:
            heartbeat_due = (self._last_state_at is None
                             or now - self._last_state_at >= self.config.heartbeat)
            due = heartbeat_due or (self._state_due is not None and now >= self._state_due)
        if due and self.link.connected.is_set():
            self.publish_state()
        self.outbox.pump()
        if now >= self._next_save:
            self._next_save = now + SAVE_EVERY
            self._save()
        self.watchdog.tick()
        with self._lock:
            wait = self.config.tick
            if self._state_due is not None:
                wait = min(wait, max(0.0, self._state_due - now))
        return max(0.01, wait)

    def publish_state(self) -> None:
        state = self.snapshot()
        self.link.publish(Kind.STATE, state)
        with self._lock:
            self._state_due = None
            self._last_state_at = self.clock.monotonic()

    def _save(self) -> None:
        if self.dispenser is not None and self.dispenser.dispensed_ml is not None:
            self.journal.set_meta("dispensed_ml", self.dispenser.dispensed_ml)

    # -- inbound -----------------------------------------------------------------------------

    def _inbound(self, message: object) -> None:
        if isinstance(message, m.Directory) and self.directory.apply(message):
            log.info("directory rev %s applied", message.rev)
            self.state_changed()

    def reload(self) -> dict:
        """The ``reload`` command: re-read the station file.

        A bad file raises ConfigError and the running configuration stays.
        Timing applies at once; a change to anything else (hardware, broker)
        needs the parts rebuilt, so the agent stops cleanly and systemd starts
        it again with the new file.
        """
        if not self.config.source:
            return {"reloaded": False, "reason": "no configuration file"}
        new = load_station_config(self.config.source)
        live = ("heartbeat", "coalesce", "tick", "lending")
        same = all(getattr(new, f) == getattr(self.config, f)
                   for f in new.__dataclass_fields__ if f not in live)
        self.config = new
        if not same:
            self.restart_requested = True
            self.stop()
        return {"reloaded": True, "restart": not same}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for part in (self.dispenser,):
            if part is not None:
                part.safe()  # no heater runs at power-up; locks stay as the board holds them
        if self.locker is not None:
            self.locker.start()
            try:
                self.locker.refresh(timeout=1.0)  # the birth's hw.slots needs the board's count
            except Exception as err:
                log.warning("locker board not answering at start: %s", err)
        if self.hardware.simulation is not None:
            self.hardware.simulation.start()
        self._serve_local_api()
        self.commands.start()
        self.link.start()

    def _serve_local_api(self) -> None:
        if self.lending is None:
            return
        api = self.config.local_api
        # The Host check (DNS rebinding) knows the port too, when one is set.
        app = create_local_api(self.lending, self.local_view, self.directory,
                               unix_socket=api.unix_socket is not None,
                               port=api.port or None)
        self.local_api_app = app  # its refusal counts: app.extensions (localapi/context.py)

        @app.before_request
        def _kiosk_alive():
            self._kiosk_seen = self.clock.monotonic()

        if api.unix_socket:
            self._server = create_server(app, unix_socket=api.unix_socket,
                                         unix_socket_perms="660", threads=4)
        else:
            self._server = create_server(app, host=api.host, port=api.port, threads=4)
        self._server_thread = threading.Thread(target=self._serve, name="local-api",
                                               daemon=True)
        self._server_thread.start()
        log.info("local API for the kiosk on %s", api.unix_socket or
                 f"http://{api.host}:{self.local_api_port}")

    def _serve(self) -> None:
        try:
            self._server.run()
        except OSError:
            # waitress has no thread-safe stop: closing its sockets from close()
            # ends select() with EBADF, which is the way out we want.
            if not self._closed:
                raise

    @property
    def local_api_port(self) -> int | None:
        if self._server is None or self.config.local_api.unix_socket:
            return None
        return self._server.effective_port

    def run(self) -> None:
        """Run until ``stop()``; outputs go safe on the way out, whatever happens."""
        try:
            self.start()
            self.notifier.ready()
            while not self._stopping.is_set():
                wait = self.step()
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _close_parts(self) -> None:
        # Safety first: heater off before anything else can fail.
        if getattr(self, "dispenser", None) is not None:
            self.dispenser.safe()
        for name in ("lending", "occupancy", "doors", "dispenser", "locker"):
            part = getattr(self, name, None)
            if part is None:
                continue
            try:
                part.close()
            except Exception:
                log.exception("closing %s failed", name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping()
        try:
            if self._server is not None:
                self._server.close()
                self._server_thread.join(5)
            self.commands.close()
            self._close_parts()
            self._save()
        finally:
            try:
                self.hardware.close()
            finally:
                shutdown = None
                if self.link.birth is not None:
                    shutdown = m.Status.shutdown(
                        self.sid, self.journal.epoch, ts=self.clock.ms(), synced=self.synced(),
                        rev=self.journal.next_rev(), birth=self.link.birth,
                        last_seq=self.journal.last_seq)
                self.outbox.pump()  # what the parts said while closing (visits, maintenance)
                self.link.stop(shutdown)
                self.journal.close()


def _charge_rate(c: StationConfig) -> float:
    """% a minute, for "next bank ready at": a cabinet that estimates charge fills
    a bank in exactly ``lockers.charging.charge_time`` by its own count."""
    charging = c.lockers.charging if c.lockers is not None else None
    if charging is not None:
        return 100.0 / (charging.charge_time / 60.0)
    return c.lending.charge_rate
