"""The alert engine: what the stations say, turned into alerts (contract §13).

The fleet tells the engine which station changed (``Fleet.add_listener``, on the
ingest thread: only noted); the engine's own thread then evaluates every rule of
that station from its :class:`~hub.fleet.StationView` (the last State, online or
not, since when), the events the State does not show yet, and the forecaster's
time to empty — and raises or clears alerts in the :class:`~hub.alerts.AlertStore`.
The scheduler calls ``tick(now_ms)`` every second for what time alone
changes: ``for`` durations, a station offline long enough, overdue loans,
predictions, the end of a silence or of a maintenance session.

Under load the engine must not cost the ingest its pace (bench/hub_ingest.py):

* events no rule reads (visits, returns, refills…) are not noted at all;
* the thread evaluates what was noted in passes, and after a pass that took
  *d* seconds it rests ``rest`` × *d* before the next (at most ``MAX_REST_S``):
  the engine takes at most 1 / (1 + ``rest``) of the hub's time, and a station
  that changed ten times meanwhile is evaluated once. Idle, a pass is a
  fraction of a millisecond and so is its rest: the pacing adds latency only
  under load. The events a person must hear of at once (``URGENT_EVENTS``:
  tamper, a failed unlock, staff arriving or leaving) do not wait for a rest;
* ``tick`` evaluates only the stations whose alerts time alone can change by
  now — a pending ``for`` that has passed (a door open ten minutes), an event
  alert's quiet time, a flapping alert quiet long enough, a silence or a
  maintenance window that may have ended, staff on site too long, a prediction
  near its band — plus each other station once every ``SWEEP_MS`` (predictions
  count down with the clock; anything else missed is found then), at most a
  ``SWEEP_SHARE``-th of the fleet a tick;
  ``evaluate_all`` is the full pass the engine starts with.

>>> engine = AlertEngine(config, fleet, alerts, clock, forecaster=forecaster)
>>> engine.add_listener(router.on_transition)   # told of every transition
>>> engine.start()            # evaluates the whole fleet once, then its thread runs
>>> engine.tick(clock.ms())   # the scheduler, every few seconds
>>> engine.muted(alert)       # the router: is this alert held back now?
>>> engine.close()

For each (rule, station, subject) there is at most one open alert. Its life:

* the condition starts (a threshold rule at its ``level``; it stops only past
  ``clear``: hysteresis) — *pending*; after ``for`` it *fires*
  (its listeners hear ``("firing", alert, station)``);
* a person may acknowledge it (API, ack link): it stays open, acked;
* the sensors prove it fixed: it resolves itself (``resolved``), acked or not;
  a person may resolve it by hand, and then it does not fire again until its
  condition has cleared and come back;
* flapping: an alert that fired again more than ``flap_max`` times within
  ``flap_window`` stays firing until its condition has been gone ``flap_window``.

An open alert may be *held back* — raised, counted, listed, but not notified,
escalated nor reminded (``muted(alert)``, which the router asks): ``inhibited``
while its station is offline (every rule but ``station_offline`` and
``bank_overdue``: one page for a dead link, not one per part), ``maintenance``
while staff are on site (``maintenance_started`` … ``maintenance_ended``, at most
``maintenance_max``) or a maintenance window is open (refill rules, and
``door_open_too_long``), ``silenced`` by a matching silence. When the hold ends
and the alert is still firing, it is told then (``firing``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hub.alerting import summaries
from hub.alerting.alerts import ACKED, FIRING, RESOLVED, AlertStore, StoreUnavailable, new_id
from hub.alerting.values import alert_value
from hub.config.rules import Rules, RuleSpec
from hub.fleet.banks import bank_states
from hub.fleet.view import StationView, event_time
from protocol import messages as m
from yizhan.clock import Clock

log = logging.getLogger(__name__)

INHIBITED, MAINTENANCE, SILENCED = "inhibited", "maintenance", "silenced"
#: Rules a station being offline does not hold back: the outage itself, and
#: loans (the hub's own records, not the station's parts).
NOT_INHIBITED = frozenset({"station_offline", "bank_overdue"})
#: Rules whose alerts come from events, not from a condition the State shows.
EVENT_RULES = frozenset({"tamper", "unlock_failed"})
#: A rule does not newly fire while one of these is active at the station: the
#: worse news already went out (an empty tank is not also "low").
SUPERSEDED_BY: dict[str, tuple[str, ...]] = {
    "water_low": ("water_empty",),
    "water_predicted_empty": ("water_empty", "water_low"),
    "chargers_predicted_empty": ("chargers_low",),
}
#: Evaluated in this order, so a rule's superseders are settled before it.
STATE_RULES = (
    "station_offline", "water_empty", "water_low", "water_predicted_empty", "chargers_low",
    "chargers_predicted_empty", "door_open_too_long", "dispenser_fault", "heater_lockout",
    "locker_offline", "slot_fault", "pi_overheat", "undervoltage", "disk_low",
)
#: Events older than this are history when they arrive (a replay), not alerts.
EVENT_MAX_AGE_MS = 24 * 3600_000
#: After a pass the engine thread rests this many times the pass's duration ...
REST = 3.0
MAX_REST_S = 2.0
#: ... except for these events, evaluated at once.
URGENT_EVENTS = frozenset({"tamper", "unlock_failed", "maintenance_started",
                           "maintenance_ended"})
#: Every station is evaluated by ``tick`` at least this often, noted or not ...
SWEEP_MS = 60_000
#: ... but one tick sweeps at most a thirtieth of the fleet (at least 50): after
#: a storm every station was evaluated in the same few seconds, and a minute
#: later one tick would sweep them all (50 000, seconds of the GIL) — capped,
#: the sweep spreads itself out, each station's coming a little later.
SWEEP_SHARE = 30
SWEEP_AT_LEAST = 50
#: A station whose alert row was not committed in time is evaluated again after this.
STORE_RETRY_MS = 5_000
#: A prediction this close (seconds) to its band is evaluated at every tick: a
#: forecast can jump when its hourly profile does, not only count down.
PREDICTION_WATCH_S = 3600
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_REFILL_WHAT = {"water_low": "water", "water_empty": "water", "water_predicted_empty": "water",
                "chargers_low": "chargers", "chargers_predicted_empty": "chargers"}

Transition = Callable[[str, dict[str, Any], StationView], None]


@dataclass(slots=True)
class Obs:
    """What one rule sees at a station now, for one subject: ``active`` True (the
    condition holds), False (it is proven gone), None (cannot tell, or inside the
    hysteresis band: keep what was). ``value``: as ``hub.alerting.values`` declares
    for the rule; the alert's summary is said from it."""

    subject: str
    active: bool | None
    value: Any = None
    since_ms: int | None = None  # when the condition began, if known
    severity: str | None = None  # instead of the rule's


@dataclass(slots=True)
class _Track:
    """The engine's memory of one (rule, sid, subject)."""

    rule: str
    sid: str
    subject: str
    active: bool = False  # the condition, latched between level and clear
    since_ms: int | None = None  # when it began: pending until since + for
    alert: dict[str, Any] | None = None  # the open alert, as the store returned it
    handled: bool = False  # resolved by a person while the condition held
    hold: str | None = None  # why it is held back, as last decided
    told: bool = False  # "firing" was passed to the listeners
    starts: deque[int] = field(default_factory=deque)  # when it fired, for flapping
    flapping: bool = False
    quiet_since: int | None = None  # flapping: the condition gone since
    last_event_ms: int | None = None  # event rules: the latest such event
    fault_seen: bool = False  # unlock_failed: the slot reported a fault since
    value: Any = None
    severity: str | None = None
    firing_id: str | None = None  # the id a fire that timed out asked for, kept for its retry


@dataclass(slots=True)
class _Site:
    """The engine's memory of one station."""

    overlay: list[m.Event] = field(default_factory=list)  # events newer than the State
    doors_since: dict[str, int] = field(default_factory=dict)  # open door -> hub ms
    maintenance_since: int | None = None  # staff on site since
    maintenance_mark: tuple[str, int] | None = None  # (epoch, seq) of the last such event
    watch: bool = False  # a prediction near its band at the last evaluation


class AlertEngine:
    """Evaluates the rules of ``hub.config.rules`` for every station; see the module doc.

    Each transition of an alert goes to the listeners, ``fn(kind, alert, station)``
    (kind ``firing``, ``resolved``, ``acked``; ``station`` a :class:`StationView`),
    on the engine's thread, the scheduler's, or an API thread (acks and resolves
    by hand): ``on_transition`` is one from the start, ``add_listener`` adds
    more (the router). The engine knows nothing of who listens.
    """

    def __init__(self, config: Any, fleet: Any, alerts: AlertStore, clock: Clock, *,
                 forecaster: Any = None, on_transition: Transition | None = None,
                 rest: float = REST) -> None:
        self.config = config
        self.rest = rest
        self.rules = Rules.from_config(config)
        self.fleet = fleet
        self.alerts = alerts
        self.clock = clock
        self.forecaster = forecaster
        self._listeners: list[Transition] = [] if on_transition is None else [on_transition]
        self.min_charge = int(getattr(config, "min_charge", 80))
        self.flap_window_ms = int(getattr(config, "flap_window", 3600.0) * 1000)
        self.flap_max = int(getattr(config, "flap_max", 2))
        self.maintenance_max_ms = int(getattr(config, "maintenance_max", 4 * 3600.0) * 1000)
        self._lock = threading.RLock()  # evaluation: tracks and sites
        self._queue = threading.Condition()  # the fleet's notes, for the thread
        self._dirty: dict[str, int] = {}  # sid -> the latest now_ms noted
        self._urgent: set[str] = set()  # noted sids not to wait for the pace
        self._next_pass = 0.0  # time.monotonic() of the next pass, after a rest
        self._events: dict[str, list[tuple[m.Event, int]]] = {}
        # sid -> hub ms of its last evaluation, oldest first (re-inserted on each):
        # what tick's sweep takes from the front.
        self._evaluated: dict[str, int] = {}
        # sid -> hub ms from which time alone can change one of its alerts (a
        # ``for`` ending, a quiet time, a hold): what tick evaluates; see _due_ms.
        self._due: dict[str, int] = {}
        self._tracks: dict[str, dict[tuple[str, str], _Track]] = {}  # sid -> tracks
        self._by_id: dict[str, _Track] = {}  # open alert id -> its track
        self._sites: dict[str, _Site] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        # Several hub workers: only the leader's engine evaluates (pause/resume).
        self._paused = False
        self.evaluations = 0  # stations evaluated, for tests and benchmarks
        self._load()
        fleet.add_listener(self.note)
        alerts.add_listener(self._by_hand)
        alerts.mutes.add_listener(self._mutes_changed)

    # -- life ------------------------------------------------------------------------------

    def add_listener(self, fn: Transition) -> None:
        """``fn(kind, alert, station)`` after each transition of an alert."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Transition) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _load(self) -> None:
        """Open alerts and staff on site, as the database has them."""
        for alert, subject in self.alerts.open_alerts():
            t = self._track(alert["rule"], alert["sid"], subject)
            t.alert, t.active, t.told = alert, True, True
            t.since_ms = t.last_event_ms = alert["started_at"]
            self._by_id[alert["id"]] = t
        self._load_maintenance()

    def _load_maintenance(self) -> None:
        since = self.clock.ms() - self.maintenance_max_ms
        rows = self.fleet.stored_events(("maintenance_started", "maintenance_ended"), since)
        for sid, epoch, seq, kind, at_ms in rows:
            view = self.fleet.get(sid)
            if view is None or view.epoch != epoch:
                continue
            site = self._site(sid)
            site.maintenance_mark = (epoch, seq)
            site.maintenance_since = at_ms if kind == "maintenance_started" else None

    def start(self) -> AlertEngine:
        """Evaluate every station once (so holds and clears are current before the
        router asks), then start the engine's thread. Returns the engine."""
        if self._thread is not None:
            return self
        self.evaluate_all(self.clock.ms())
        self._thread = threading.Thread(target=self._run, name="hub-alert-engine", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Another hub worker leads (hub/storage/leader.py): open and close no
        alert, and keep nothing noted, until ``resume()``. The thread stays."""
        with self._lock, self._queue:
            self._paused = True
            self._dirty.clear()
            self._urgent.clear()
            self._events.clear()

    def resume(self, now_ms: int | None = None) -> None:
        """This worker leads (again): what it knew is forgotten — the leader
        before it opened, closed and handled alerts meanwhile — the open alerts
        are read again from the database and every station is evaluated. A
        condition pending its ``for`` starts over from now (docs/alerting-internals.md)."""
        with self._lock:
            for memory in (self._tracks, self._by_id, self._sites, self._due, self._evaluated):
                memory.clear()
            with self._queue:
                self._dirty.clear()
                self._urgent.clear()
                self._events.clear()
            self._load()
            self._paused = False
        self.evaluate_all(now_ms)

    @property
    def paused(self) -> bool:
        return self._paused

    def close(self) -> None:
        """Stop the thread and stop listening. Idempotent."""
        with self._queue:
            self._closing = True
            self._queue.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self.fleet.remove_listener(self.note)
        self.alerts.remove_listener(self._by_hand)
        self.alerts.mutes.remove_listener(self._mutes_changed)

    # -- what the fleet says (ingest thread: note and go) -----------------------------------

    def note(self, sid: str, kind: str, payload: Any, now_ms: int) -> None:
        """The fleet listener: ``sid`` changed; evaluated soon on the engine's thread."""
        if self._paused:
            return  # the leader's engine evaluates it
        urgent = False
        if kind == "event" and payload is not None:
            if payload.type not in ENGINE_EVENTS:
                return  # no rule reads it: not worth an evaluation
            urgent = payload.type in URGENT_EVENTS
        with self._queue:
            if kind == "event" and payload is not None:
                self._events.setdefault(sid, []).append((payload, now_ms))
            wake = not self._dirty
            self._dirty[sid] = max(self._dirty.get(sid, now_ms), now_ms)
            if urgent:
                self._urgent.add(sid)
                wake = True
            if wake:  # not at every note: the thread would only go back to waiting
                self._queue.notify()

    def _next_noted(self) -> dict[str, int] | None:
        """What the thread evaluates next: urgent stations at once, the others
        after the rest that followed the last pass; None when closing."""
        with self._queue:
            while not self._closing:
                if self._urgent:
                    batch = {sid: self._dirty.pop(sid) for sid in self._urgent
                             if sid in self._dirty}
                    self._urgent.clear()
                    if batch:
                        return batch
                elif self._dirty:
                    wait = self._next_pass - time.monotonic()
                    if wait <= 0:
                        batch, self._dirty = self._dirty, {}
                        return batch
                    self._queue.wait(wait)
                else:
                    self._queue.wait()
            return None

    def _run(self) -> None:
        while True:
            dirty = self._next_noted()
            if dirty is None:
                return
            started = time.monotonic()
            for sid, now_ms in dirty.items():
                self._evaluate_each((sid,), now_ms)
            done = time.monotonic()
            self._next_pass = done + min(MAX_REST_S, self.rest * (done - started))

    def run_pending(self) -> int:
        """Evaluate every station noted so far, here and now (tests; the thread
        does the same). Returns how many."""
        with self._queue:
            dirty, self._dirty = self._dirty, {}
            self._urgent.clear()
        for sid, now_ms in dirty.items():
            self.evaluate(sid, now_ms)
        return len(dirty)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, sid: str, now_ms: int) -> None:
        """Evaluate every rule of station ``sid`` at ``now_ms``, with the events
        noted for it, raising and clearing its alerts."""
        with self._lock:
            if self._paused:
                return
            with self._queue:
                self._dirty.pop(sid, None)
                self._urgent.discard(sid)
                noted = self._events.pop(sid, [])
            view = self.fleet.get(sid)
            if view is None:
                return
            self._evaluated.pop(sid, None)
            self._evaluated[sid] = now_ms
            self.evaluations += 1
            site = self._site(sid)
            for event, at in noted:
                self._on_event(view, site, event, at, now_ms)
            doc = self._current_state(view, site)
            site.watch = False
            ctx = _Context(self, view, doc, site, now_ms)
            try:
                for name in STATE_RULES:
                    spec = self.rules.rule_for(view.group, name)
                    obs = EVALUATORS[name](ctx, spec) if spec.enabled else []
                    self._apply(view, spec, obs, now_ms)
                for name in EVENT_RULES:
                    self._settle_event_rule(view, ctx, self.rules.rule_for(view.group, name),
                                            now_ms)
                self._update_holds(view, now_ms)
            except StoreUnavailable:
                # An alert row not committed in time: evaluated again soon.
                self._due[sid] = now_ms + STORE_RETRY_MS
                raise
            due = self._due_ms(view, site, now_ms)
            if due is None:
                self._due.pop(sid, None)
            else:
                self._due[sid] = due

    def _due_ms(self, view: StationView, site: _Site, now_ms: int) -> int | None:
        """When time alone, with no new message, can next change an alert of this
        station (``tick`` evaluates it from then on), or None. What this misses
        the sweep still finds within ``SWEEP_MS``."""
        times = []
        if site.watch:
            times.append(now_ms)  # a prediction near its band: every tick
        if site.maintenance_since is not None:
            times.append(site.maintenance_since + self.maintenance_max_ms)
        for t in self._tracks.get(view.sid, {}).values():
            if t.rule == "bank_overdue":
                continue  # _overdue's business, every tick
            spec = self.rules.rule_for(view.group, t.rule)
            if t.alert is None:
                if t.active and not t.handled:  # pending: fires once its ``for`` passed
                    for_ms = 0 if t.rule in EVENT_RULES else spec.for_s * 1000
                    times.append(int((t.since_ms or now_ms) + for_ms))
                continue
            if t.hold is not None and t.hold != INHIBITED:
                times.append(now_ms)  # a silence or a maintenance window may end
            if t.flapping and t.quiet_since is not None:
                times.append(t.quiet_since + self.flap_window_ms)
            elif not t.active:
                times.append(now_ms)
            if t.active and t.rule in EVENT_RULES and spec.quiet_s is not None:
                times.append(int((t.last_event_ms or now_ms) + spec.quiet_s * 1000))
        return max(now_ms, min(times)) if times else None

    def tick(self, now_ms: int | None = None) -> None:
        """The scheduler's job, every second: the stations time can change
        evaluated at ``now_ms`` (``for`` durations, outages, quiet times, holds that
        ended), every other station once per ``SWEEP_MS`` (predictions), overdue
        loans, silences and windows re-read."""
        self._pass(self._due_now, now_ms)

    def evaluate_all(self, now_ms: int | None = None) -> None:
        """Every station of the fleet evaluated at ``now_ms``, and overdue loans:
        the engine's first pass."""
        self._pass(lambda now: self.fleet.sids(), now_ms)

    def _pass(self, choose: Callable[[int], Iterable[str]], now_ms: int | None) -> None:
        """Silences and windows re-read, the stations ``choose(now)`` names
        evaluated, overdue loans."""
        if self._paused:
            return
        now = self.clock.ms() if now_ms is None else now_ms
        try:
            self.alerts.mutes.refresh(now)
        except Exception:
            log.exception("reading silences and maintenance windows failed; using the last")
        self._evaluate_each(choose(now), now)
        try:
            self._overdue(now)
        except Exception:
            log.exception("evaluating overdue loans failed")

    def _due_now(self, now: int) -> list[str]:
        """The stations due at ``now``, and the oldest-evaluated share of the sweep."""
        with self._lock:
            due = {sid for sid, at in self._due.items() if at <= now}
            room = max(SWEEP_AT_LEAST, len(self._evaluated) // SWEEP_SHARE)
            for sid, at in self._evaluated.items():
                if now - at < SWEEP_MS or room == 0:
                    break  # oldest first: the rest were evaluated later
                due.add(sid)
                room -= 1
        return sorted(due)

    def _evaluate_each(self, sids: Iterable[str], now_ms: int) -> None:
        for sid in sids:
            try:
                self.evaluate(sid, now_ms)
            except StoreUnavailable as err:
                # The writer is behind (a storm) or the database away: not a bug.
                log.warning("alert rules of %s: %s (again in %d s)", sid, err,
                            STORE_RETRY_MS // 1000)
            except Exception:
                log.exception("evaluating the alert rules of %s failed", sid)

    # -- events ------------------------------------------------------------------------------

    def _on_event(self, view: StationView, site: _Site, event: m.Event, at_ms: int,
                  now_ms: int) -> None:
        """One new event of the station: patches what the State shows until a
        newer State does, starts or ends a maintenance session, fires an event rule."""
        kind, data = event.type, event.data
        dated = event_time(event, at_ms)  # as the fleet dates it: never a station's future
        if kind in _PATCHES:
            site.overlay.append(event)
        if kind in ("maintenance_started", "maintenance_ended"):
            mark = (event.epoch, event.seq)
            last = site.maintenance_mark
            if last is None or last[0] != mark[0] or last[1] < mark[1]:
                site.maintenance_mark = mark
                site.maintenance_since = dated if kind == "maintenance_started" else None
            return
        if kind == "tamper":
            self._event_fired(view, "tamper", str(data.get("door")), dated, now_ms,
                              value=alert_value("tamper", door=data.get("door")))
        elif kind == "unlock_failed":
            spec = self.rules.rule_for(view.group, "unlock_failed")
            reason = data.get("reason")
            severity = (spec.jammed_severity or spec.severity) if reason == "jammed" \
                else spec.severity
            self._event_fired(view, "unlock_failed", str(data.get("slot")), dated, now_ms,
                              value=alert_value("unlock_failed", slot=data.get("slot"),
                                                reason=reason), severity=severity)
        elif kind in ("slot_fault_cleared", "bank_borrowed"):
            # The slot's fault cleared, or its lock just released a bank: it works.
            t = self._find("unlock_failed", view.sid, str(data.get("slot")))
            if t is not None and t.active and dated >= (t.last_event_ms or 0):
                t.active = False

    def _event_fired(self, view: StationView, rule: str, subject: str, dated: int,
                     now_ms: int, *, value: Any, severity: str | None = None) -> None:
        spec = self.rules.rule_for(view.group, rule)
        age = now_ms - dated
        if not spec.enabled or age > EVENT_MAX_AGE_MS or (
                spec.quiet_s is not None and age >= spec.quiet_s * 1000):
            return  # history by now: it would resolve as soon as raised
        t = self._track(rule, view.sid, subject)
        t.active, t.handled, t.fault_seen = True, False, False
        t.since_ms = dated if t.alert is None else t.since_ms
        t.last_event_ms = max(t.last_event_ms or dated, dated)
        t.value, t.severity = value, severity
        self._settle(view, spec, t, now_ms, for_s=0.0)

    def _settle_event_rule(self, view: StationView, ctx: _Context, spec: RuleSpec,
                           now_ms: int) -> None:
        """An event rule's alerts resolve after their quiet time, or (unlock_failed)
        when the slot proves it works again."""
        for t in list(self._tracks.get(view.sid, {}).values()):
            if t.rule != spec.name:
                continue
            if t.active and spec.name == "unlock_failed":
                fault = ctx.slot_fault(t.subject)
                if fault:
                    t.fault_seen = True
                elif fault is None and t.fault_seen:
                    t.active = False  # the lock's fault was seen and is gone
            quiet = (t.active and spec.quiet_s is not None and t.last_event_ms is not None
                     and now_ms - t.last_event_ms >= spec.quiet_s * 1000)
            if quiet and (spec.name != "tamper" or not ctx.door_open(t.subject)):
                t.active = False
            if not spec.enabled:
                t.active = False
            self._settle(view, spec, t, now_ms, for_s=0.0)

    # -- conditions to alerts ------------------------------------------------------------------

    def _apply(self, view: StationView, spec: RuleSpec, obs: list[Obs] | None,
               now_ms: int) -> None:
        """Latch what rule ``spec`` sees (None: cannot tell; a list covers every
        subject — one not in it is gone), then fire, wait or resolve."""
        mine = [t for t in self._tracks.get(view.sid, {}).values() if t.rule == spec.name]
        if obs is not None:
            seen = set()
            for o in obs:
                seen.add(o.subject)
                t = self._find(spec.name, view.sid, o.subject)
                if o.active is True:
                    if t is None:
                        t = self._track(spec.name, view.sid, o.subject)
                        mine.append(t)
                    if not t.active:
                        t.active, t.since_ms = True, o.since_ms if o.since_ms else now_ms
                    elif o.since_ms is not None and t.alert is None:
                        t.since_ms = o.since_ms
                    t.value, t.severity = o.value, o.severity
                elif o.active is False and t is not None:
                    t.active = False
            for t in mine:
                if t.subject not in seen:
                    t.active = False
        for t in mine:
            self._settle(view, spec, t, now_ms)

    def _settle(self, view: StationView, spec: RuleSpec, t: _Track, now_ms: int,
                for_s: float | None = None) -> None:
        """Fire, keep or resolve ``t``'s alert as its latched condition says."""
        if t.active:
            t.quiet_since = None
            wait_ms = (spec.for_s if for_s is None else for_s) * 1000
            if t.alert is None:
                if not t.handled and not self._superseded(t) \
                        and now_ms - (t.since_ms or now_ms) >= wait_ms:
                    self._fire(view, spec, t, now_ms)
            elif t.severity is not None and \
                    SEVERITY_RANK[t.severity] > SEVERITY_RANK[t.alert["severity"]]:
                updated = self.alerts.update(t.alert["id"], severity=t.severity,
                                             summary=summaries.summary(t.rule, t.value))
                if updated is not None:
                    t.alert = updated
            return
        t.handled = False
        if t.alert is None and t.firing_id is not None:
            # Its fire timed out and may have committed after all: that alert,
            # never told, is resolved as quietly.
            self.alerts.clear(t.rule, t.sid, t.subject, by="auto")
            t.firing_id = None
        if t.alert is not None:
            if t.flapping:
                if t.quiet_since is None:
                    t.quiet_since = now_ms
                if now_ms - t.quiet_since < self.flap_window_ms:
                    return  # flapping: resolves once quiet for flap_window
            self._resolve(view, t)
        self._forget_if_idle(t, now_ms)

    def _superseded(self, t: _Track) -> bool:
        for other in SUPERSEDED_BY.get(t.rule, ()):
            o = self._find(other, t.sid, "")
            if o is not None and (o.active or o.alert is not None):
                return True
        return False

    def _fire(self, view: StationView, spec: RuleSpec, t: _Track, now_ms: int) -> None:
        severity = t.severity or spec.severity
        summary = summaries.summary(spec.name, t.value) or spec.name
        if t.firing_id is None:
            t.firing_id = new_id()
        # On StoreUnavailable (the writer behind, as in a reconnect storm) the
        # insert may still commit later; the retry asks for the same id, so that
        # the alert is known as this track's own and still told (not "open before").
        fired = self.alerts.fire(spec.name, t.sid, severity, summary, t.value, t.subject,
                                 at_ms=t.since_ms if t.since_ms is not None else now_ms,
                                 alert_id=t.firing_id)
        t.firing_id = None
        t.alert = fired.alert
        self._by_id[t.alert["id"]] = t
        if not fired.created:
            t.told = True  # open before (another worker, or before a restart)
            return
        while t.starts and now_ms - t.starts[0] > self.flap_window_ms:
            t.starts.popleft()
        t.starts.append(now_ms)
        t.flapping = len(t.starts) - 1 > self.flap_max
        if t.flapping:
            log.info("alert %s (%s at %s %s) is flapping: it stays firing until quiet for %ds",
                     t.alert["id"], t.rule, t.sid, t.subject, self.flap_window_ms // 1000)
        what = _REFILL_WHAT.get(t.rule)
        if what is not None and not self._refill_open(t, what):
            # The first alert asking for this refill: its time to refill counts from here.
            self._forecaster_call("alert_started", t.sid, what, t.alert["started_at"])
        t.hold = self._hold_of(t.rule, view, now_ms)
        t.told = t.hold is None
        if t.told:
            self._emit("firing", t.alert, view)

    def _resolve(self, view: StationView, t: _Track) -> None:
        alert = self.alerts.clear(t.rule, t.sid, t.subject, by="auto")
        if t.alert is not None:
            self._by_id.pop(t.alert["id"], None)
        t.alert, t.flapping, t.quiet_since = None, False, None
        if alert is not None and t.told:
            self._emit("resolved", alert, view)
        t.told = False

    def _refill_open(self, t: _Track, what: str) -> bool:
        """Another open alert at ``t``'s station asks for the same refill."""
        return any(o is not t and o.alert is not None and _REFILL_WHAT.get(o.rule) == what
                   for o in self._tracks.get(t.sid, {}).values())

    def _forget_if_idle(self, t: _Track, now_ms: int) -> None:
        if t.alert is not None or t.active or t.handled:
            return
        if t.starts and now_ms - t.starts[-1] <= self.flap_window_ms:
            return  # still needed to tell flapping
        tracks = self._tracks.get(t.sid)
        if tracks is not None:
            tracks.pop((t.rule, t.subject), None)

    # -- holding back ---------------------------------------------------------------------------

    def hold(self, alert: dict[str, Any], now_ms: int | None = None) -> str | None:
        """Why ``alert`` is held back now — ``inhibited``, ``maintenance``,
        ``silenced`` — or None when it is to be told."""
        rule, sid = alert.get("rule"), alert.get("sid")
        if rule not in self.rules.fleet or not isinstance(sid, str):
            return None
        view = self.fleet.get(sid)
        return self._hold_of(rule, view or StationView(sid=sid, name=sid),
                             self.clock.ms() if now_ms is None else now_ms)

    def muted(self, alert: dict[str, Any]) -> bool:
        """The router's question: is ``alert`` held back (not to be notified,
        escalated nor reminded) now?"""
        return self.hold(alert) is not None

    def in_maintenance(self, sid: str, group: str | None, now_ms: int) -> bool:
        """Staff on site (a session not older than ``maintenance_max``) or a
        maintenance window open at ``sid``."""
        site = self._sites.get(sid)
        since = site.maintenance_since if site is not None else None
        if since is not None and now_ms - since < self.maintenance_max_ms:
            return True
        return self.alerts.mutes.window_for(sid, group, now_ms) is not None

    def _hold_of(self, rule: str, view: StationView, now_ms: int) -> str | None:
        if rule not in NOT_INHIBITED and not view.online and (
                view.since_ms is not None or view.last_seen_ms is not None):
            return INHIBITED
        spec = self.rules.rule_for(view.group, rule)
        if spec.mute_in_maintenance and self.in_maintenance(view.sid, view.group, now_ms):
            return MAINTENANCE
        if self.alerts.mutes.silenced(view.sid, view.group, rule, now_ms):
            return SILENCED
        return None

    def _update_holds(self, view: StationView, now_ms: int) -> None:
        """Decide each open alert's hold again; one released while firing and never
        told is told now."""
        for t in list(self._tracks.get(view.sid, {}).values()):
            if t.alert is None:
                continue
            hold = self._hold_of(t.rule, view, now_ms)
            if hold == t.hold:
                continue
            if t.hold is None:
                log.info("alert %s (%s at %s) held back: %s", t.alert["id"], t.rule, t.sid,
                         hold)
            t.hold = hold
            if hold is None and not t.told and t.alert["state"] == FIRING:
                t.told = True
                self._emit("firing", t.alert, view)

    def _mutes_changed(self) -> None:
        """A silence or window was added or ended through the API: look again now."""
        if self._paused:
            return
        now = self.clock.ms()
        with self._lock:
            sids = [sid for sid, tracks in self._tracks.items()
                    if any(t.alert is not None for t in tracks.values())]
        for sid in sids:
            with self._lock:
                view = self.fleet.get(sid) or StationView(sid=sid, name=sid)
                self._update_holds(view, now)

    # -- people ----------------------------------------------------------------------------------

    def _by_hand(self, kind: str, alert: dict[str, Any]) -> None:
        """AlertStore listener: a person acknowledged or resolved ``alert``."""
        with self._lock:
            t = self._by_id.get(alert["id"])
            view = self.fleet.get(alert["sid"]) or StationView(sid=alert["sid"],
                                                               name=alert["sid"])
            if t is not None:
                if kind == RESOLVED:
                    self._by_id.pop(alert["id"], None)
                    t.alert, t.flapping, t.quiet_since = None, False, None
                    # Not again until the condition clears and comes back; an
                    # event rule fires again at its next event.
                    t.handled = t.active and t.rule not in EVENT_RULES
                    t.active = t.active and t.rule not in EVENT_RULES
                    what = _REFILL_WHAT.get(t.rule)
                    if what is not None and not self._refill_open(t, what):
                        self._forecaster_call("alert_ended", t.sid, what)
                elif kind == ACKED:
                    t.alert = alert
                told = t.told
                if kind == RESOLVED:
                    t.told = False
            else:
                told = True
            if told or kind == RESOLVED:
                self._emit(kind, alert, view)

    # -- overdue loans ---------------------------------------------------------------------------

    def _overdue(self, now_ms: int) -> None:
        loans = getattr(self.fleet, "loans", None)
        if loans is None:
            return
        by_sid: dict[str, list[Any]] = {}
        for loan in loans.overdue(now_ms):
            by_sid.setdefault(loan.sid, []).append(loan)
        with self._lock:
            sids = set(by_sid) | {sid for sid, tracks in self._tracks.items()
                                  if any(r == "bank_overdue" for r, _ in tracks)}
        for sid in sorted(sids):
            with self._lock:
                view = self.fleet.get(sid) or StationView(sid=sid, name=sid)
                spec = self.rules.rule_for(view.group, "bank_overdue")
                obs = []
                if spec.enabled:
                    for loan in by_sid.get(sid, ()):
                        late_s = (now_ms - loan.due_ms) / 1000
                        warn = spec.warning_after_s is not None and late_s >= spec.warning_after_s
                        # A loan without a bank id (a cabinet that cannot read
                        # them) is named by its borrow, sid/epoch/seq (< 64 chars).
                        obs.append(Obs(loan.bank or loan.key, True, since_ms=loan.due_ms,
                                       value=alert_value("bank_overdue", bank=loan.bank,
                                                         due_at=loan.due_ms,
                                                         overdue_s=int(late_s)),
                                       severity="warning" if warn else None))
                self._apply(view, spec, obs, now_ms)
                self._update_holds(view, now_ms)

    # -- plumbing --------------------------------------------------------------------------------

    def _site(self, sid: str) -> _Site:
        site = self._sites.get(sid)
        if site is None:
            site = self._sites[sid] = _Site()
        return site

    def _track(self, rule: str, sid: str, subject: str) -> _Track:
        tracks = self._tracks.setdefault(sid, {})
        t = tracks.get((rule, subject))
        if t is None:
            t = tracks[(rule, subject)] = _Track(rule, sid, subject)
        return t

    def _find(self, rule: str, sid: str, subject: str) -> _Track | None:
        return self._tracks.get(sid, {}).get((rule, subject))

    def open_tracks(self, sid: str) -> list[tuple[str, str, str | None]]:
        """(rule, subject, hold) of each open alert the engine keeps for ``sid``."""
        with self._lock:
            return sorted((t.rule, t.subject, t.hold)
                          for t in self._tracks.get(sid, {}).values() if t.alert is not None)

    def _current_state(self, view: StationView, site: _Site) -> dict[str, Any] | None:
        """The last State with the events it does not show yet applied on top."""
        doc = view.state
        last_seq = (doc or {}).get("last_seq") or 0
        site.overlay = [e for e in site.overlay if e.epoch == view.epoch and e.seq > last_seq]
        if doc is None or not site.overlay:
            return doc
        doc = dict(doc)
        for event in sorted(site.overlay, key=lambda e: e.seq):
            _PATCHES[event.type](doc, event.data)
        return doc

    def _emit(self, kind: str, alert: dict[str, Any], view: StationView) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind, alert, view)
            except Exception:  # a listener's bug must not stop the engine
                log.exception("transition listener failed on %s of alert %s", kind,
                              alert.get("id"))

    def _forecaster_call(self, name: str, *args: Any) -> None:
        fn = getattr(self.forecaster, name, None)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("forecaster.%s failed", name)


# -- reading a station --------------------------------------------------------------------------


class _Context:
    """One evaluation of one station: its view, its State as patched, the time."""

    __slots__ = ("doc", "engine", "now", "site", "view")

    def __init__(self, engine: AlertEngine, view: StationView, doc: dict[str, Any] | None,
                 site: _Site, now: int) -> None:
        self.engine, self.view, self.doc, self.site, self.now = engine, view, doc, site, now

    def section(self, name: str) -> dict[str, Any] | None:
        value = (self.doc or {}).get(name)
        return value if isinstance(value, dict) else None

    def dispenser(self) -> dict[str, Any] | None:
        """The dispenser section while the dispenser answers (else its data is stale)."""
        d = self.section("dispenser")
        return d if d is not None and d.get("online") else None

    def lockers(self) -> dict[str, Any] | None:
        lockers = self.section("lockers")
        return lockers if lockers is not None and lockers.get("online") else None

    def slot_fault(self, slot: str) -> str | bool | None:
        """The slot's fault, None when it has none, False when it cannot be told."""
        lockers = self.lockers()
        if lockers is None:
            return False
        for s in lockers.get("slots") or ():
            if str(s.get("slot")) == slot:
                return s.get("fault")
        return False

    def door_open(self, door: str) -> bool:
        doors = self.section("doors") or {}
        return bool(doors.get(door))


def _seen(rule: str, active: bool | None, subject: str = "", *, since_ms: int | None = None,
          **value: Any) -> Obs:
    """What ``rule`` sees of ``subject``; the alert's value (``hub.alerting.values``) is
    built only while the condition holds: nothing reads it otherwise."""
    return Obs(subject, active, alert_value(rule, **value) if active else None,
               since_ms=since_ms)


def _level_obs(spec: RuleSpec, level: float | None, level_state: str | None,
               fire_states: Iterable[str], clear_states: Iterable[str]) -> bool | None:
    """Hysteresis on a level and a level_state: True at the level (or a firing
    state), False past clear (and not a firing state), None between."""
    fire_states, clear_states = tuple(fire_states), tuple(clear_states)
    if level is not None:
        if spec.fires_at(level) or level_state in fire_states:
            return True
        if spec.clears_at(level) and level_state not in fire_states:
            return False
        return None
    if level_state in fire_states:
        return True
    if level_state in clear_states:
        return False
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _station_offline(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    v = c.view
    if v.online:
        return [Obs("", False)]
    if v.since_ms is None and v.last_seen_ms is None:
        return None  # never heard: unknown, not down
    return [_seen("station_offline", True, reason=v.offline_reason, since_ms=v.since_ms)]


def _water_low(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    d = c.dispenser()
    if d is None:
        return None
    level, ls = _number(d.get("level")), d.get("level_state")
    active = _level_obs(spec, level, ls, ("low", "empty"), ("ok",))
    return [_seen("water_low", active, level=level, level_state=ls)]


def _water_empty(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    d = c.dispenser()
    if d is None:
        return None
    level, ls = _number(d.get("level")), d.get("level_state")
    active = _level_obs(spec, level, ls, ("empty",), ("ok", "low"))
    return [_seen("water_empty", active, level=level, level_state=ls)]


def _predicted(what: str, rule: str) -> Callable[[_Context, RuleSpec], list[Obs] | None]:
    def evaluate(c: _Context, spec: RuleSpec) -> list[Obs] | None:
        fc = c.engine.forecaster
        section = "dispenser" if what == "water" else "lockers"
        if fc is None or not c.view.online or c.section(section) is None:
            return None
        try:
            left = fc.time_to_empty(c.view.sid, what)
        except Exception:
            log.exception("forecaster.time_to_empty(%s, %s) failed", c.view.sid, what)
            return None
        below, clear = c.engine.rules.prediction_band(c.view.group, rule)
        if left is None:
            return [Obs("", False)]
        if left < clear + PREDICTION_WATCH_S:
            c.site.watch = True
        active = True if left < below else False if left >= clear else None
        return [_seen(rule, active, seconds=round(left))]

    return evaluate


def _chargers_low(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    lockers = c.lockers()
    if lockers is None:
        return None
    banks = bank_states({"lockers": lockers}, c.engine.min_charge)
    ready = banks["ready"] if banks is not None else 0
    active = True if spec.fires_at(ready) else False if spec.clears_at(ready) else None
    return [_seen("chargers_low", active, ready=ready)]


def _door_open_too_long(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    doors = c.section("doors")
    if doors is None:
        return None
    out, since = [], c.site.doors_since
    for door, is_open in doors.items():
        if not is_open:
            since.pop(door, None)
            out.append(Obs(door, False))
            continue
        opened = since.setdefault(door, c.now)
        if spec.doors is not None and door not in spec.doors:
            continue
        out.append(_seen("door_open_too_long", True, door, door=door,
                         open_s=(c.now - opened) // 1000, since_ms=opened))
    for door in list(since):
        if door not in doors:
            del since[door]
    return out


def _dispenser_fault(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    d = c.section("dispenser")
    if d is None:
        return None
    fault = d.get("fault") or (None if d.get("online") else "offline")
    return [_seen("dispenser_fault", fault is not None, fault=fault)]


def _heater_lockout(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    d = c.dispenser()
    if d is None or not isinstance(d.get("heater_lockout"), bool):
        return None
    return [_seen("heater_lockout", d["heater_lockout"], fault=d.get("fault"))]


def _locker_offline(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    lockers = c.section("lockers")
    if lockers is None or not isinstance(lockers.get("online"), bool):
        return None
    return [_seen("locker_offline", not lockers["online"])]


def _slot_fault(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    lockers = c.lockers()
    if lockers is None:
        return None
    out = []
    for s in lockers.get("slots") or ():
        fault, slot = s.get("fault"), str(s.get("slot"))
        out.append(_seen("slot_fault", fault is not None, slot, slot=s.get("slot"), fault=fault))
    return out


def _health_number(rule: str, key: str, value_key: str
                   ) -> Callable[[_Context, RuleSpec], list[Obs] | None]:
    """A threshold rule on the State's ``health.<key>``, its value's ``value_key``."""
    def evaluate(c: _Context, spec: RuleSpec) -> list[Obs] | None:
        value = _number((c.section("health") or {}).get(key))
        if value is None:
            return None
        active = True if spec.fires_at(value) else False if spec.clears_at(value) else None
        return [_seen(rule, active, **{value_key: value})]

    return evaluate


def _undervoltage(c: _Context, spec: RuleSpec) -> list[Obs] | None:
    value = (c.section("health") or {}).get("undervoltage")
    if not isinstance(value, bool):
        return None
    return [_seen("undervoltage", value)]


EVALUATORS: dict[str, Callable[[_Context, RuleSpec], list[Obs] | None]] = {
    "station_offline": _station_offline,
    "water_low": _water_low,
    "water_empty": _water_empty,
    "water_predicted_empty": _predicted("water", "water_predicted_empty"),
    "chargers_low": _chargers_low,
    "chargers_predicted_empty": _predicted("chargers", "chargers_predicted_empty"),
    "door_open_too_long": _door_open_too_long,
    "dispenser_fault": _dispenser_fault,
    "heater_lockout": _heater_lockout,
    "locker_offline": _locker_offline,
    "slot_fault": _slot_fault,
    "pi_overheat": _health_number("pi_overheat", "cpu_temp_c", "temp_c"),
    "undervoltage": _undervoltage,
    "disk_low": _health_number("disk_low", "disk_free_mb", "disk_free_mb"),
}
assert set(EVALUATORS) == set(STATE_RULES)


# -- events the State does not show yet ------------------------------------------------------------


def _patch_section(name: str, change: Callable[[dict[str, Any], dict[str, Any]], None]
                   ) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def patch(doc: dict[str, Any], data: dict[str, Any]) -> None:
        section = doc.get(name)
        if isinstance(section, dict):  # only hardware the station has
            doc[name] = section = dict(section)
            change(section, data)
    return patch


def _door_patch(open_: bool) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def patch(doc: dict[str, Any], data: dict[str, Any]) -> None:
        doors = doc.get("doors")
        if isinstance(doors, dict):
            doc["doors"] = {**doors, data["door"]: open_}
    return patch


def _slot_patch(fault: bool) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(lockers: dict[str, Any], data: dict[str, Any]) -> None:
        lockers["slots"] = [
            {**s, "fault": data["fault"] if fault else None} if s.get("slot") == data["slot"]
            else s for s in lockers.get("slots") or ()]
    return _patch_section("lockers", change)


def _set(key: str, value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda section, data: section.__setitem__(key, value)


def _water_level(section: dict[str, Any], data: dict[str, Any]) -> None:
    section["level_state"], section["level"] = data.get("level_state"), data.get("level")


_PATCHES: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "door_opened": _door_patch(True),
    "door_closed": _door_patch(False),
    "slot_fault": _slot_patch(True),
    "slot_fault_cleared": _slot_patch(False),
    "locker_offline": _patch_section("lockers", _set("online", False)),
    "locker_online": _patch_section("lockers", _set("online", True)),
    "water_level": _patch_section("dispenser", _water_level),
    "dispenser_fault": _patch_section(
        "dispenser", lambda s, d: s.__setitem__("fault", d.get("fault"))),
    "dispenser_fault_cleared": _patch_section("dispenser", _set("fault", None)),
    "heater_lockout": _patch_section("dispenser", _set("heater_lockout", True)),
    "heater_lockout_cleared": _patch_section("dispenser", _set("heater_lockout", False)),
}
#: Events a rule reads: the State's overlay, staff sessions, the event rules, a
#: slot that proves it works. Others (visits, returns, refills) are not noted.
ENGINE_EVENTS = frozenset(_PATCHES) | URGENT_EVENTS | {"slot_fault_cleared", "bank_borrowed"}

