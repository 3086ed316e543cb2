"""One hub process: ingest, scheduler and web, built from a configuration.

>>> hub = Hub(load_hub_config("hub.yaml"))
>>> hub.run()          # until SIGTERM / Ctrl-C

What it builds, in order (docs/hub-internals.md): the store (migrated to head),
the writer, the uptime ledger, the loans, the commands (published through the
ingest's MQTT client), the fleet, the alert store, the alerting
(docs/alerting-internals.md: the forecaster listening to the fleet, the
notification outbox with its notifiers and ack links, the alert engine listening
to the fleet, the router listening to the engine), the ingest,
the web app and the ``/metrics`` collectors (hub/http/metrics.py,
hub/http/uptime_metrics.py); ``start()`` starts the outbox's
senders, the engine, the ingest and the one scheduler of the process, and
``close()`` stops them in the reverse order.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from waitress.server import create_server

from hub.alerting.acklink import AckLinks
from hub.alerting.alerts import AlertStore
from hub.alerting.durations import AlertDurations
from hub.alerting.engine import AlertEngine
from hub.alerting.forecast import Forecaster
from hub.alerting.notify import NEVER, Outbox, build_notifiers
from hub.alerting.notify.shared_pace import SharedPacer
from hub.alerting.routing import Router
from hub.config import HubConfig
from hub.config.rules import HUB_RULES, RULES
from hub.console import register as register_console
from hub.fleet.commands import CommandError, Commands
from hub.fleet.directory import Directory
from hub.fleet.ledger import Ledger
from hub.fleet.loans import Loans
from hub.fleet.sync import SYNC_EVERY, Sync
from hub.fleet.view import Fleet
from hub.http.metrics import FleetCollector
from hub.http.uptime_metrics import UptimeCollector
from hub.http.web import create_app
from hub.mqtt.ingest import TIME_EVERY, Ingest
from hub.storage.leader import LEADER_EVERY, Leadership
from hub.storage.schema import notifications
from hub.storage.store import Store
from hub.storage.writer import Writer
from yizhan import heap
from yizhan.clock import SYSTEM_CLOCK, Clock
from yizhan.watchdog import Notifier, Watchdog

log = logging.getLogger(__name__)

#: Scheduler jobs: (name, seconds between runs).
SWEEP_EVERY = 5
GAPS_EVERY = 2
EXPIRE_EVERY = 5
ALIVE_EVERY = 10
REFRESH_EVERY = 10  # a sixth of the stations each time: each once a minute
REFRESH_SHARE = 6
ENGINE_EVERY = 1  # for durations, outages, predictions, holds that ended
ROUTER_EVERY = 5  # escalations, reminders, notices not yet sent, route tests
PRUNE_EVERY = 3600
DIRECTORY_EVERY = 5  # expired denials, new stations, Directories not yet sent
PACK_EVERY = 2  # the last States held as text packed (Fleet.pack_states)
WATCHDOG_EVERY = 5  # the systemd watchdog's heartbeat (systemd/yizhan-hub.service)
#: Garbage collection (``start(tune_gc=True)``, what ``run()`` does): every
#: GC_YOUNG_EVERY seconds the young generations are collected and whatever
#: survived is frozen (a pause of milliseconds); every GC_FULL_EVERY every
#: generation but the frozen objects (the fleet: walking it stopped the hub
#: 1.3 s at 50 000 stations; docs/hub-internals.md).
GC_YOUNG_EVERY = 60
GC_FULL_EVERY = 6 * 3600
#: Automatic full collections only this rarely (in gen-1 collections): the
#: scheduler's take their place.
GC_GEN2_THRESHOLD = 100_000
#: Delivered (or given up) notifications are kept this long, for the API.
KEEP_DELIVERIES_MS = 30 * 86400_000
#: A notifier's oldest due delivery not attempted for this long: its sender is stuck.
STUCK_AFTER_MS = 5 * 60_000


class Hub:
    """Everything one hub process runs; tests build several side by side."""

    def __init__(self, config: HubConfig, clock: Clock = SYSTEM_CLOCK,
                 registry: CollectorRegistry | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.clock = clock
        # systemd's watchdog (Type=notify): pinged only while nothing is wrong that
        # a restart would mend. Outside systemd every call is a no-op.
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.watchdog = Watchdog(self.notifier, clock, checks={
            "mqtt": lambda: not self.ingest.stuck(), "writer": self._writer_mendable})
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store = Store(config.database)
        # Which worker does the once-for-the-fleet work (hub/storage/leader.py):
        # with one worker (no shared_group), always this one.
        self.leader = Leadership(self.store, clock=clock,
                                 shared=config.shared_group is not None)
        self.writer: Writer | None = None
        try:
            self.writer = Writer(self.store).start()
            self.ledger = Ledger(self.store, self.writer, clock)
            self.loans = Loans(self.store, config.loan_hours)
            # The ingest's client publishes the commands; it is built below.
            self.commands = Commands(self.store, self.writer, self._publish, clock)
            self.fleet = Fleet(config, self.store, self.writer, self.ledger, clock,
                               loans=self.loans, commands=self.commands)
            # Several workers: each merges what the others stored (hub/fleet/sync.py),
            # and the ledger points derived from the fleet are the leader's to write.
            self.peers = Sync(self.store, self.fleet, shared=config.shared_group is not None)
            self.ledger.leads = lambda: self.leader.is_leader
            self.commands.shared = self.peers.shared
            self.alerts = AlertStore(self.store, self.writer, clock)
            self.directory = Directory(
                self.store, clock, self._publish, self._directory_stations,
                fleet_key=config.fleet_key, rider_ids=config.rider_ids,
                min_charge=config.min_charge, loan_hours=config.loan_hours,
                fresh_sessions=lambda: self.ingest.fresh_sessions)
            self._build_alerting()
            self.ingest = Ingest(config, self.fleet, clock, self.registry)
            # The hub's status (contract §9) is the leader's: with several
            # workers one "online" per leadership, not one per worker's connect.
            self.ingest.speaks = lambda: self.leader.is_leader
            self.app = create_app(self)
            if config.console.enabled:
                register_console(self.app, self)
            self.registry.register(FleetCollector(self))
            self.registry.register(UptimeCollector(self))
        except BaseException:
            self._close_store()  # a half-built hub leaves no thread nor connection
            raise
        self.scheduler: BackgroundScheduler | None = None
        self._server = None
        self._started = False
        self._closed = False
        self._stopped = threading.Event()

    def _build_alerting(self) -> None:
        """Forecaster, outbox, engine, router (docs/alerting-internals.md).

        The forecaster listens to the fleet before the engine does, so a State
        has been learned from when the engine evaluates it. Nothing runs yet.
        """
        config, clock = self.config, self.clock
        self.forecaster = Forecaster(clock, store=self.store, min_charge=config.min_charge)
        self.forecaster.attach(self.fleet)
        self.alert_durations = AlertDurations(self.registry, rules=RULES + HUB_RULES)
        self.alerts.on_resolved.append(self.alert_durations.observe)
        self.acklinks = AckLinks.from_config(config, clock)
        # Several workers send: a robot's pace is then one row they share.
        pacer = SharedPacer(self.store, clock) if config.shared_group else None
        self.outbox = Outbox(self.store, self.writer, clock,
                             build_notifiers(config.notifier_specs, config.routing.timezone),
                             acklinks=self.acklinks, registry=self.registry, pacer=pacer,
                             shared=config.shared_group is not None,
                             last_of_group_down=self.fleet.last_of_group_down)
        self.engine = AlertEngine(config, self.fleet, self.alerts, clock,
                                  forecaster=self.forecaster)
        # One way: the engine tells its listeners of each transition and knows
        # nothing of them; the router listens, and asks the engine what it holds back.
        self.router = Router(config, self.outbox, clock, self.alerts,
                             stations=self.fleet.get, muted=self.engine.muted)
        self.engine.add_listener(self.router.on_transition)

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> object:
        return self.ingest.publish(topic, payload, retain=retain)

    def _directory_stations(self) -> list[tuple[str, str | None]]:
        """(sid, group) of every station the hub knows, configured or heard from.
        Asked every 5 s: no copy of the views (at 100 000 stations, copying them
        took a third of the hub's scheduled work)."""
        known = {s.sid: s.group for s in self.config.stations}
        for sid, group in self.fleet.groups():
            known[sid] = group if group is not None else known.get(sid)
        return list(known.items())

    def pack_states(self) -> None:
        """Every worker's: its fleet's new last States packed small."""
        self.fleet.pack_states()

    # -- health --------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What keeps the hub from doing its job now (empty when healthy), for /healthz."""
        out = []
        mqtt_problem = self.ingest.problem()
        if mqtt_problem:
            out.append(mqtt_problem)
        writing = "the database writer is not running" if self.writer is None \
            else self.writer.problem()
        if writing:
            out.append(writing)
        if not self.store.ping():
            out.append(f"database unreachable: {self.store.ping_error}")
        elif self._started:
            stuck = self.stuck_notifiers(self.clock.ms())
            if stuck:
                # Receivers that fail are the notify_failing alert's business; a
                # due delivery nobody even tried means the hub's sender is stuck.
                out.append(f"notification sender stuck: {', '.join(stuck)}")
        return out

    def _writer_mendable(self) -> bool:
        """False when the writer is dead, or stuck while the database answers a
        fresh connection: its own connection is wedged, which a restart mends. A
        database that is down is an outage: restarting would not bring it back."""
        if self.writer is None:
            return False
        problem = self.writer.problem()
        if problem is None:
            return True
        if "not running" in problem:
            return False
        return not self.store.ping()

    def stuck_notifiers(self, now_ms: int) -> list[str]:
        """Notifiers whose next delivery has been due for ``STUCK_AFTER_MS``
        without an attempt (each sends its rows in order: only the head counts)."""
        t = notifications
        stuck = []
        with self.store.engine.connect() as conn:
            for name in self.outbox.notifiers:
                head = conn.execute(
                    sa.select(t.c.next_attempt_ms)
                    .where(t.c.notifier == name, t.c.delivered_ms.is_(None),
                           t.c.next_attempt_ms < NEVER)
                    .order_by(t.c.created_ms, t.c.id).limit(1)).first()
                if head is not None and now_ms - head.next_attempt_ms > STUCK_AFTER_MS:
                    stuck.append(name)
        return stuck

    # -- scheduled jobs ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Stations silent for too long go down (their outage from when last heard).
        The leader's: its view holds what every worker heard (``sync``)."""
        if not self.leader.is_leader:
            return
        for sid in self.fleet.sweep_silent(self.clock.ms()):
            log.warning("station %s is silent past %d heartbeats: down", sid,
                        self.config.missed_heartbeats)

    def heal_gaps(self) -> None:
        """Ask stations to replay the events the hub is missing (contract §3). The
        leader's: with several workers a hole is first looked for in the events
        table, where another worker may have stored what this one has not merged."""
        if not self.leader.is_leader:
            return
        for sid, lo, hi in self.fleet.gaps_due(self.clock.ms()):
            view = self.fleet.get(sid) if self.peers.shared else None
            if view is not None and view.epoch is not None:
                span = self.peers.missing(sid, view.epoch, lo, hi, self.clock.ms())
                if span is None:
                    continue  # all stored: merged now
                lo, hi = span
            try:
                cid = self.commands.send(sid, "replay", {"from_seq": lo, "to_seq": hi},
                                         by="hub")
            except CommandError as err:
                # Asked again after replay_every; the gap stays known meanwhile.
                log.warning("replay %d..%d for %s not sent: %s", lo, hi, sid, err)
                continue
            self.fleet.replay_sent(sid, cid, lo, hi)
            log.info("asked %s to replay events %d..%d (%s)", sid, lo, hi, cid)

    def sync(self) -> None:
        """Merge what the other workers stored (several workers; hub/fleet/sync.py)."""
        self.peers.pull(self.clock.ms())

    def lead(self) -> None:
        """Take or keep the leadership (hub/storage/leader.py)."""
        if self.leader.poll() and self.engine.paused:
            # Taking over failed half-way (the database away while the open
            # alerts were read): the engine stays paused until a poll mends it.
            log.warning("leading with the alert engine paused: resuming it")
            self.engine.resume(self.clock.ms())

    def _leading(self, leading: bool) -> None:
        """Leadership changed: the engine takes over the alerts, or stops."""
        if leading and self.peers.shared:
            self._take_over_marks()
        if leading:
            self.engine.resume(self.clock.ms())
        else:
            self.engine.pause()

    def _speak_for_hub(self, leading: bool) -> None:
        """A worker that starts leading says the hub is online (a new ``ts``: the
        stations republish once, resending what a dead leader took and lost)."""
        if leading:
            self.ingest.announce()

    def _take_over_marks(self) -> None:
        """A worker that starts leading writes the ledger from here on: from what
        the database holds (the last leader may have died before writing what it
        decided), each station's liveness as merged, dated when it changed, and
        its parts at their next State."""
        self.ledger.resume()
        self.fleet.forget_parts()  # each part marked again at its next State
        self.peers.pull(self.clock.ms())
        for view in self.fleet.stations():
            if view.epoch is not None and view.since_ms is not None:
                self.ledger.mark(view.sid, "station", "up" if view.online else "down",
                                 view.since_ms)

    # Leader-only jobs: with several workers (mqtt.shared_group) the others skip
    # them quietly; with one worker it always leads (hub/storage/leader.py).

    def expire_commands(self) -> None:
        # Every worker's: each holds the commands it sent, and expires them
        # unless another worker took the station's answer (Commands.shared).
        self.commands.expire(self.clock.ms())

    def alive(self) -> None:
        # The leader's run is the one that vouches: it makes the derived marks.
        if self.leader.is_leader:
            self.ledger.hub_alive(self.clock.ms())

    def beacon(self) -> None:
        self.ingest.publish_time()

    def refresh(self) -> None:
        self.ledger.refresh(self.clock.ms(), share=REFRESH_SHARE)

    def evaluate_alerts(self) -> None:
        if self.leader.is_leader:
            self.engine.tick(self.clock.ms())

    def route_alerts(self) -> None:
        if self.leader.is_leader:
            self.router.tick(self.clock.ms())

    def publish_directory(self) -> None:
        """Send the Directories no longer right on the broker (hub/fleet/directory.py)."""
        if self.leader.is_leader:
            self.directory.tick()

    def prune_deliveries(self) -> None:
        if not self.leader.is_leader:
            return
        gone = self.outbox.prune(self.clock.ms() - KEEP_DELIVERIES_MS)
        if gone:
            log.info("pruned %d finished notifications older than 30 days", gone)

    # -- life ----------------------------------------------------------------------------

    def start(self, tune_gc: bool = False) -> None:
        """Start vouching (ledger), ingest and the scheduler; the web is ``serve()``.

        ``tune_gc`` (``run()`` sets it; tests that start many hubs in one process
        do not): the fleet as loaded is frozen out of the garbage collector's
        way, and full collections happen on the scheduler's time instead of
        Python's. Why: a hub of 50 000 stations holds over a million objects
        the collector would walk in a full collection, stopping every thread
        for a second, every 10–15 s under load (docs/benchmarks.md)."""
        if self._started:
            return
        self._started = True
        if not self.leader.poll():
            self.engine.pause()  # another worker's engine opens and closes alerts
        self.leader.listen(self._leading)
        self.leader.listen(self._speak_for_hub)
        self.ingest.broker_stats.exported = lambda: self.leader.is_leader
        self.ledger.hub_started(self.clock.ms())
        # Senders first: what the engine finds at its start is delivered at once.
        self.outbox.start()
        self.engine.start()  # evaluates the fleet as loaded (if leading), then listens
        if tune_gc:
            gc.set_threshold(*gc.get_threshold()[:2], GC_GEN2_THRESHOLD)
            # The one collection that walks the fleet as loaded (a second at
            # 100 000 stations), before any station is heard: then frozen.
            self._collect(full=True, frozen=True)
        self.ingest.start()
        # A "Running job" line a second would drown the log; a job's exception is
        # still logged (ERROR), with its traceback.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        self.scheduler = BackgroundScheduler(daemon=True)
        jobs = ((self.sweep, SWEEP_EVERY), (self.heal_gaps, GAPS_EVERY),
                (self.expire_commands, EXPIRE_EVERY), (self.alive, ALIVE_EVERY),
                (self.beacon, TIME_EVERY),
                (self.refresh, REFRESH_EVERY), (self.evaluate_alerts, ENGINE_EVERY),
                (self.route_alerts, ROUTER_EVERY), (self.prune_deliveries, PRUNE_EVERY),
                (self.publish_directory, DIRECTORY_EVERY),
                (self.watchdog.tick, WATCHDOG_EVERY), (self.lead, LEADER_EVERY),
                (self.sync, SYNC_EVERY), (self.pack_states, PACK_EVERY))
        if tune_gc:
            jobs += ((self.collect_young_garbage, GC_YOUNG_EVERY),
                     (self.collect_all_garbage, GC_FULL_EVERY))
        for job, seconds in jobs:
            # APScheduler logs a job's exception with its traceback and runs it again.
            self.scheduler.add_job(job, "interval", seconds=seconds, id=job.__name__,
                                   max_instances=1, coalesce=True)
        self.scheduler.start()

    def collect_young_garbage(self) -> None:
        """Collect the two young generations (what died young, cycles included)
        and freeze every survivor, so no automatic collection walks it again.
        Walking what came since the last freeze instead would cost a second after
        a storm (every station new)."""
        self._collect(full=False)

    def collect_all_garbage(self) -> int:
        """Collect every generation — what was not frozen yet, the old objects
        an automatic collection left included — then freeze the survivors.
        Returns how many unreachable objects it found.

        The frozen objects (the fleet, over a million at 100 000 stations) are
        not walked: that stopped every thread for 1–1.5 s. A cycle that forms
        among them is never freed; the hub makes few (its records, States and
        events hold no cycles, and what dies young dies before it is frozen):
        bench/hub_ingest.py counts what a walk of everything finds after its
        run (docs/benchmarks.md)."""
        return self._collect(full=True)

    def collect_frozen_garbage(self) -> int:
        """Walk every object, the frozen ones too (a pause of a second or two at
        100 000 stations), then freeze the survivors: what ``start`` does once,
        before it listens. Returns how many unreachable objects it found."""
        return self._collect(full=True, frozen=True)

    def _collect(self, full: bool, frozen: bool = False) -> int:
        started = time.monotonic()
        if frozen:
            gc.unfreeze()
        found = gc.collect() if full else gc.collect(1)
        gc.freeze()
        collected = time.monotonic()
        # What a burst (a storm, the writer's queue deep) freed, back to the
        # system: otherwise the hub's RSS stays at the burst's peak.
        heap.give_back()
        log.log(logging.INFO if full else logging.DEBUG,
                "garbage collection (%s): %d unreachable, %d objects frozen, %.0f ms; "
                "free memory given back in %.0f ms",
                "everything" if frozen else "full" if full else "young", found,
                gc.get_freeze_count(), (collected - started) * 1000,
                (time.monotonic() - collected) * 1000)
        return found

    def serve(self) -> None:
        """Serve the web with waitress until ``stop()`` (or SystemExit from a signal)."""
        self._server = create_server(self.app, host=self.config.http_host,
                                     port=self.config.http_port, threads=8,
                                     ident="yizhan-hub")
        log.info("hub web on http://%s:%s", self.config.http_host, self.http_port)
        try:
            self._server.run()
        except OSError:
            if not self._stopped.is_set():
                raise

    @property
    def http_port(self) -> int:
        if self._server is not None:
            return self._server.effective_port
        return self.config.http_port

    def run(self) -> None:
        self.start(tune_gc=True)
        self.notifier.ready()
        try:
            self.serve()
        finally:
            self.notifier.stopping()
            self.close()

    def stop(self) -> None:
        """Ask ``run()`` to return; safe from a signal handler."""
        self._stopped.set()
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        """A clean stop: scheduler, ingest (its retained offline), the engine, the
        outbox's senders (what they hold stays queued for the next start), the
        ledger's stop mark, everything written, connections closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.ingest.stop()
        self.engine.close()
        self.outbox.close()
        if self._started:
            self.ledger.hub_stopped(self.clock.ms())
        if self._server is not None:
            self._server.close()
        self._close_store()

    def _close_store(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes
        self.leader.close()  # another worker leads at its next poll
        self.store.close()
