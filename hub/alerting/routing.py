"""Who hears of an alert, and when: routes, tiers, escalation, reminders, tests.

>>> router = Router(config, outbox, clock, alerts, stations=fleet.get, muted=engine.muted)
>>> engine.add_listener(router.on_transition)       # the engine tells, the router listens
>>> router.tick()                                    # the scheduler, every few seconds

A route (``routes:`` in the hub configuration, docs/routing.md, read by
``hub/config/routes.py``) matches alerts by
the station's ``group``, its ``sid``, the ``rule`` and the ``severity``; the first
route that matches takes the alert. Its ``notify:`` list is tier 0; each entry of
``escalate:`` is a further tier, told when the tier before it has not acknowledged
the alert within that entry's ``after``.

The router is a reconciler. The alert row is the truth (its ``state``), and three
columns say what the router has told about it: ``notified`` (the last state it
announced: firing, acked or resolved; NULL while nobody was told), ``escalation``
(the highest tier told; tiers 0..escalation were told) and ``tier_ms`` (when that
tier was told), with ``last_notified_ms`` (the last message of any kind, for
reminders). ``on_transition`` and ``tick`` both bring one alert's notices up to
date with its state, so an ack made through the API, a notice lost to a crash
between the engine's write and the router's, or an alert muted when it fired and
unmuted later, are all told on the next tick.

Each step is enqueued in the durable outbox under delivery ids derived from the
alert and the step (``firing``, ``escalated2``, ``reminder@<time>``, ...) and the
notifier, then recorded by the alert store, the only writer of alert rows
(``AlertStore.record_told``: a conditional update of those columns). Enqueueing the
same id again stores nothing, so a crash between the two, or two hub workers
taking the same step, sends nothing twice and forgets nothing; the outbox then
delivers each id until the receiver takes it.

A message that asks for an acknowledgement (firing, escalated, reminder) also
@-mentions a person: the staff member the alert is given to (``assigned_to``),
else whoever the tier's on-call rota (``oncall:``, hub/config/oncall.py) has on
call for the station's group at that hour in the hub's time zone; an escalation
mentions the tier's person on call besides the assignee. The Directory's staff
records say how to reach them (``staff(ids)``, by default
``hub.fleet.directory.contacts``); they travel to the notifiers under the alert's
``mention`` key (hub/alerting/notify/mentions.py), which the contract's webhook
body leaves out. An acknowledgement or a resolution mentions nobody.

Two messages are the hub's own (not contract §13 rules, an extension documented
in docs/routing.md), both with ``sid: "hub"`` (reserved: no station can have it):

* ``notify_failing`` — a notifier the outbox reports as failing raises an alert
  (critical, subject: the notifier) that goes to every *other* route, escalates
  and reminds like any alert, and resolves when the notifier delivers again;
* ``notify_test`` — a scheduled test per route (``test_every``, at ``test_at``):
  a ``firing`` and then a ``resolved`` message of a synthetic ``info`` alert to
  every notifier of every tier of the route, the station named as a test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.alerting.alerts import ACKED, FIRING, RESOLVED, to_alert
from hub.alerting.notify.mentions import MAX_MENTIONS
from hub.alerting.notify.text import ASKS_FOR_ACK
from hub.alerting.notify.text import station_info as notify_station_info
from hub.alerting.summaries import route_test_name, summary
from hub.alerting.values import alert_value
from hub.config.routes import Route, RoutingConfig, Tier
from hub.config.rules import HUB_RULES, HUB_SID, NOTIFY_FAILING, NOTIFY_TEST
from hub.fleet.directory import contacts
from yizhan.clock import Clock

log = logging.getLogger(__name__)

DEFAULT_ESCALATE_AFTER = 15 * 60.0
#: How often an unacknowledged alert is repeated to its current tier, by severity.
DEFAULT_REMIND_EVERY: dict[str, float | None] = {
    "critical": 3600.0, "warning": 4 * 3600.0, "info": None}
#: ``test_at`` is in ``timezone:``, else China Standard Time, as the messages' times.
CST = dt.timezone(dt.timedelta(hours=8), "CST")


# -- the router ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing to tell: ``kind`` to ``notifiers``, then the row's new columns.
    ``key`` names the step among the alert's steps (for its delivery ids)."""

    kind: str | None  # None: nothing to send, only the columns change
    notifiers: tuple[str, ...]
    values: Mapping[str, Any]
    key: str = ""
    tier: int | None = None  # the tier told, whose on-call rota is @-mentioned


#: The order of an alert's news. The outbox sends a notifier's rows by
#: (created_ms, id): within one millisecond the id keeps "resolved" behind "firing".
_PHASE = {"firing": 0, "escalated": 1, "reminder": 2, "acked": 3, "resolved": 4}


def delivery_id(alert_id: str, step: str, notifier: str, kind: str) -> str:
    """The delivery id of one step of one alert to one notifier: the same on
    every try, so the outbox stores it once."""
    digest = hashlib.blake2s(f"{alert_id}/{step}/{notifier}".encode(), digest_size=12)
    return f"r{_PHASE[kind]}-{digest.hexdigest()}"


class Router:
    """Routes alerts to tiers of notifiers through ``outbox``; see the module doc.

    ``stations(sid)`` gives what the hub knows of a station (a StationView, or
    None), for its name and group; ``muted(alert) -> bool`` says whether the
    engine holds an alert back (maintenance, silence, inhibition): a muted alert
    is not notified, escalated nor reminded, but its resolution is still told to
    whoever was told it fired.
    """

    def __init__(self, config: Any, outbox: Any, clock: Clock, alerts: Any, *,
                 stations: Callable[[str], Any] | None = None,
                 muted: Callable[[dict[str, Any]], bool] | None = None,
                 staff: Callable[[list[str]], Mapping[str, Mapping[str, Any]]] | None = None,
                 ) -> None:
        self.config = config
        self.routing: RoutingConfig = getattr(config, "routing", None) or RoutingConfig()
        self.outbox = outbox
        self.clock = clock
        self.alerts = alerts
        self.stations = stations
        self.muted = muted
        self.staff = staff
        self._lock = threading.RLock()
        self._tz: dt.tzinfo = (zoneinfo.ZoneInfo(self.routing.timezone)
                               if self.routing.timezone else CST)
        self._tested: dict[str, int] = {}  # route -> the last test slot known sent
        self._unrouted: set[str] = set()  # alerts already logged as told to nobody
        self.sent = 0  # messages enqueued, for tests and logs

    # -- what goes where ---------------------------------------------------------------

    def station_info(self, sid: str, station: Any = None) -> tuple[dict[str, Any], str | None]:
        """(the ``station`` of a message, the station's group), from what the hub
        knows of it (``stations(sid)``), then the configuration."""
        if station is None and self.stations is not None and sid != HUB_SID:
            station = self.stations(sid)
        if station is not None and not isinstance(station, Mapping) and hasattr(station, "sid"):
            info = notify_station_info(station, getattr(self.config, "min_charge", 80))
        else:
            info = {"sid": sid, "name": _field(station, "name"), "group": _field(station, "group")}
        meta = self.config.station_meta(sid) if hasattr(self.config, "station_meta") else None
        if meta is not None:
            info["name"] = info.get("name") or meta.name
            info["group"] = meta.group or info.get("group")
        info["name"] = info.get("name") or sid
        return info, info.get("group")

    def route_for(self, alert: Mapping[str, Any], group: str | None) -> Route | None:
        """The first route matching the alert; for ``notify_failing``, the routes
        the failing notifier is not on, tier by tier."""
        if alert["rule"] == NOTIFY_FAILING and alert["sid"] == HUB_SID:
            return self._failing_route(alert.get("subject") or "")
        for route in self.routing.routes:
            if route.matches(group=group, sid=alert["sid"], rule=alert["rule"],
                             severity=alert["severity"]):
                return route
        return None

    def _failing_route(self, notifier: str) -> Route | None:
        others = [r for r in self.routing.routes if notifier not in r.notifiers]
        if not others:
            return None
        depth = max(len(r.tiers) for r in others)
        tiers: list[Tier] = []
        told: set[str] = set()
        for k in range(depth):
            # Each notifier once, at the first tier that has it.
            names = tuple(dict.fromkeys(n for r in others if k < len(r.tiers)
                                        for n in r.tiers[k].notify if n not in told))
            if not names:
                continue
            told.update(names)
            afters = [r.tiers[k].after for r in others
                      if k < len(r.tiers) and r.tiers[k].after is not None]
            tiers.append(Tier(names, min(afters) if afters else None))
        return Route(name=f"{NOTIFY_FAILING}:{notifier}", match={}, tiers=tuple(tiers))

    def escalate_after(self, route: Route, tier: int, group: str | None) -> float:
        """How long tier ``tier - 1`` has to acknowledge before ``tier`` is told."""
        after = route.tiers[tier].after
        if after is not None:
            return after
        grp = self.routing.groups.get(group or "")
        if grp is not None and grp.escalate_after is not None:
            return grp.escalate_after
        return DEFAULT_ESCALATE_AFTER

    def remind_every(self, route: Route, severity: str, group: str | None) -> float | None:
        """Route, then group, then the default for the severity (None: never)."""
        if severity in route.remind_every:
            return route.remind_every[severity]
        grp = self.routing.groups.get(group or "")
        if grp is not None and severity in grp.remind_every:
            return grp.remind_every[severity]
        return DEFAULT_REMIND_EVERY.get(severity)

    # -- the decision ------------------------------------------------------------------

    def next_step(self, row: Any, route: Route | None, group: str | None, now_ms: int,
                  muted: bool) -> Step | None:
        """What to tell next about the alert in ``row`` (None: nothing now)."""
        state, notified = row.state, row.notified
        told = row.last_notified_ms is not None
        if route is None:
            # Nobody to tell (no route matches, or the one it was told on is gone):
            # only note that this news is dealt with, so it is not looked at again.
            if state != FIRING and notified != state:
                return Step(None, (), {"notified": state})
            return None
        top = min(row.escalation, len(route.tiers) - 1)
        told_names = tuple(dict.fromkeys(n for t in route.tiers[:top + 1] for n in t.notify))
        if not told:
            if state == FIRING:
                if muted:
                    return None
                return Step("firing", route.tiers[0].notify, {
                    "notified": FIRING, "route": route.name[:64], "escalation": 0,
                    "tier_ms": now_ms, "last_notified_ms": now_ms}, "firing", 0)
            if notified != state:  # acked or resolved before anyone was told
                return Step(None, (), {"notified": state})
            return None
        if state == RESOLVED and notified in (FIRING, ACKED):
            return Step("resolved", told_names, {"notified": RESOLVED,
                                                 "last_notified_ms": now_ms}, "resolved")
        if state == ACKED and notified == FIRING:
            return Step("acked", told_names, {"notified": ACKED, "last_notified_ms": now_ms},
                        "acked")
        if state != FIRING or notified != FIRING or muted:
            return None
        nxt = top + 1
        since = row.tier_ms if row.tier_ms is not None else row.last_notified_ms
        if nxt < len(route.tiers) and now_ms - since >= self.escalate_after(
                route, nxt, group) * 1000:
            return Step("escalated", route.tiers[nxt].notify, {
                "escalation": nxt, "tier_ms": now_ms, "last_notified_ms": now_ms},
                f"escalated{nxt}", nxt)
        every = self.remind_every(route, row.severity, group)
        if every is not None and now_ms - row.last_notified_ms >= every * 1000:
            return Step("reminder", route.tiers[top].notify, {"last_notified_ms": now_ms},
                        f"reminder@{row.last_notified_ms}", top)
        return None

    # -- what the engine tells, and the scheduler ------------------------------------------

    def on_transition(self, kind: str, alert: Mapping[str, Any], station: Any = None) -> None:
        """An engine listener (``engine.add_listener``): bring this alert's notices up to date.

        ``kind`` is informative only: the alert's row says what happened, so a
        late or repeated call sends nothing twice.
        """
        try:
            self.reconcile(alert["id"], station=station)
        except Exception:
            # The next tick tries again; the engine's thread must not die of it.
            log.exception("routing %s of alert %s failed", kind, alert.get("id"))

    def reconcile(self, alert_id: str, now_ms: int | None = None, station: Any = None) -> int:
        """Send what is due for one alert; the number of messages enqueued."""
        now = self.clock.ms() if now_ms is None else now_ms
        with self._lock:
            row = self.alerts.row(alert_id)
            return self._advance(row, now, station) if row is not None else 0

    def tick(self, now_ms: int | None = None) -> int:
        """The scheduler's job: the hub's own alerts, every alert with something
        due (escalation, reminder, a notice not yet sent), the route tests."""
        now = self.clock.ms() if now_ms is None else now_ms
        sent = 0
        with self._lock:
            self._watch_outbox(now)
            for row in self.alerts.rows_with_news():
                try:
                    sent += self._advance(row, now)
                except Exception:
                    log.exception("routing alert %s failed; trying again next tick", row.id)
            try:
                sent += self._send_tests(now)
            except Exception:
                log.exception("route tests failed; trying again next tick")
        return sent

    def _advance(self, row: Any, now: int, station: Any = None) -> int:
        """Apply the steps due for ``row``, each enqueued under its own delivery ids,
        then recorded. Late (an ack and a resolve between two ticks), only the
        latest news is told: the resolution, which shows the ack."""
        sent = 0
        info, group = self.station_info(row.sid, station)
        route = self._route_of(row, group)
        for _ in range(3):  # at most: firing, then acked or resolved
            alert = to_alert(row)
            step = self.next_step(row, route, group, now, self._is_muted(alert))
            if step is None:
                break
            if step.kind is not None:
                sent += self._send(step, self._with_mentions(step, alert, route, group, now),
                                   info)
            # Not recorded: someone else moved the row meanwhile. Look again; what
            # this call enqueued has ids of its own step, so nothing doubles.
            self._claim(row, step.values)
            row = self.alerts.row(row.id)
            if row is None:
                break
        if route is None and row is not None and row.state == FIRING \
                and row.id not in self._unrouted:
            self._unrouted.add(row.id)  # said once per alert, not every tick
            if row.sid == HUB_SID:
                log.error("alert %s (%s %s): every route uses that notifier; nobody else "
                          "to tell", row.id, row.rule, row.subject)
            elif self.routing.routes:
                log.warning("no route matches alert %s (%s at %s, group %s): nobody is told",
                            row.id, row.rule, row.sid, group)
        return sent

    def _claim(self, row: Any, told: Mapping[str, Any]) -> bool:
        """Record a step in the alert's row, unless someone moved it since ``row``."""
        return self.alerts.record_told(row, told)

    def _route_of(self, row: Any, group: str | None) -> Route | None:
        # Once told, an alert stays on the route it was told on (its tiers are
        # what ``escalation`` counts), while that route still exists.
        if row.route and not (row.rule == NOTIFY_FAILING and row.sid == HUB_SID):
            for route in self.routing.routes:
                if route.name == row.route:
                    return route
        return self.route_for({"rule": row.rule, "sid": row.sid, "severity": row.severity,
                               "subject": row.subject}, group)

    def _is_muted(self, alert: dict[str, Any]) -> bool:
        if self.muted is None or alert["sid"] == HUB_SID:
            return False
        try:
            return bool(self.muted(alert))
        except Exception:
            log.exception("asking whether alert %s is muted failed; not muting", alert["id"])
            return False

    def _send(self, step: Step, alert: dict[str, Any], station: dict[str, Any]) -> int:
        assert step.kind is not None
        for notifier in step.notifiers:
            delivery = self.outbox.enqueue(notifier, step.kind, alert, station,
                                           delivery_id=delivery_id(alert["id"], step.key,
                                                                   notifier, step.kind))
            log.info("alert %s %s (%s at %s) -> %s, delivery %s", alert["id"], step.kind,
                     alert["rule"], alert["sid"], notifier, delivery)
        self.sent += len(step.notifiers)
        return len(step.notifiers)

    # -- whom a message @-mentions ----------------------------------------------------------

    def on_call(self, route: Route, tier: int, group: str | None, now_ms: int) -> tuple[str, ...]:
        """The staff ids the tier's rota has on call at ``now_ms`` (hub's time
        zone) for a station of ``group``; () without a rota."""
        rota = self.routing.rotas.get(route.tiers[tier].oncall or "")
        if rota is None:
            return ()
        local = dt.datetime.fromtimestamp(now_ms / 1000, self._tz)
        return rota.on_call(group=group, weekday=local.weekday(),
                            minute=local.hour * 60 + local.minute)

    def mention_ids(self, step: Step, alert: Mapping[str, Any], route: Route | None,
                    group: str | None, now_ms: int) -> tuple[str, ...]:
        """Whom ``step`` @-mentions: the assignee, else (and on an escalation, also)
        the tier's person on call."""
        if (route is None or not route.mention or step.kind not in ASKS_FOR_ACK
                or step.tier is None or step.tier >= len(route.tiers)):
            return ()
        who: list[str] = []
        assignee = alert.get("assigned_to")
        if isinstance(assignee, str) and assignee:
            who.append(assignee)
        if not who or step.kind == "escalated":
            who += self.on_call(route, step.tier, group, now_ms)
        return tuple(dict.fromkeys(who))[:MAX_MENTIONS]

    def _with_mentions(self, step: Step, alert: dict[str, Any], route: Route | None,
                       group: str | None, now_ms: int) -> dict[str, Any]:
        ids = self.mention_ids(step, alert, route, group, now_ms)
        if not ids:
            return alert
        try:
            found = (self.staff(list(ids)) if self.staff is not None
                     else contacts(self.alerts.store, ids))
        except Exception:
            # A message without its @ is better than no message.
            log.exception("looking up staff %s to mention failed; not mentioning",
                          ", ".join(ids))
            return alert
        missing = [i for i in ids if i not in found]
        if missing:
            log.warning("alert %s: no staff member %s in the Directory to @-mention",
                        alert["id"], ", ".join(missing))
        people = [dict(found[i]) for i in ids if i in found]
        return {**alert, "mention": people} if people else alert

    # -- the hub's own alert: a notifier that cannot deliver ------------------------------

    def _watch_outbox(self, now: int) -> None:
        failing_fn = getattr(self.outbox, "failing", None)
        if failing_fn is None:
            return
        failing = failing_fn()
        reasons = dict(failing) if isinstance(failing, Mapping) else dict.fromkeys(failing, None)
        open_rows = {r.subject: r for r in self.alerts.open_rows(NOTIFY_FAILING, HUB_SID)}
        for notifier, reason in reasons.items():
            if notifier not in open_rows:
                why = f": {reason}" if reason else ""
                value = alert_value(NOTIFY_FAILING, notifier=notifier, reason=reason)
                self.raise_hub_alert(NOTIFY_FAILING, notifier, "critical",
                                     summary(NOTIFY_FAILING, value) or notifier, value=value,
                                     at_ms=now)
                log.error("notifier %s is failing%s; telling the other routes", notifier, why)
        for notifier, row in open_rows.items():
            if notifier not in reasons:
                self.alerts.clear(NOTIFY_FAILING, HUB_SID, row.subject, by="auto", at_ms=now)
                log.info("notifier %s delivers again", notifier)

    def raise_hub_alert(self, rule: str, subject: str, severity: str, summary: str,
                        value: Any = None, at_ms: int | None = None) -> str:
        """Open the hub's own alert (sid ``hub``), or find the one open: one at most
        per (rule, subject) as for stations. The alert store writes it; its id."""
        if rule not in HUB_RULES:
            raise ValueError(f"not a hub rule: {rule!r}")
        return self.alerts.fire(rule, HUB_SID, severity, summary, value, subject[:64],
                                at_ms=at_ms).alert["id"]

    # -- scheduled tests -------------------------------------------------------------------

    def test_slot(self, route: Route, now_ms: int) -> int | None:
        """The start (ms) of the test period ``now_ms`` is in: periods of
        ``test_every`` anchored at ``test_at`` (in ``timezone``) on Monday 5 January
        1970, so ``24h`` is daily at ``test_at`` and ``7d`` weekly on Mondays.
        Periods are fixed lengths: where clocks change for summer, a daily test
        keeps winter time."""
        if route.test_every is None:
            return None
        anchor = dt.datetime(1970, 1, 5, *route.test_at, tzinfo=self._tz).timestamp() * 1000
        every = route.test_every * 1000
        return int(anchor + ((now_ms - anchor) // every) * every)

    def test_id(self, route: Route, slot_ms: int) -> str:
        digest = hashlib.blake2s(route.name.encode(), digest_size=4).hexdigest()
        return f"t-{digest}-{slot_ms}"

    def _send_tests(self, now: int) -> int:
        sent = 0
        for route in self.routing.routes:
            slot = self.test_slot(route, now)
            if slot is None or self._tested.get(route.name) == slot:
                continue
            alert_id = self.test_id(route, slot)
            if self._delivered_before(alert_id):
                self._tested[route.name] = slot
                continue
            sent += self.send_test(route, alert_id, slot, now)
            self._tested[route.name] = slot
        return sent

    def _delivered_before(self, alert_id: str) -> bool:
        deliveries = getattr(self.outbox, "deliveries", None)
        return bool(deliveries(alert_id)) if deliveries is not None else False

    def send_test(self, route: Route, alert_id: str | None = None, slot_ms: int | None = None,
                  now_ms: int | None = None) -> int:
        """A test of ``route``: a synthetic info alert, ``firing`` then
        ``resolved``, to every notifier of every tier."""
        now = self.clock.ms() if now_ms is None else now_ms
        slot = now if slot_ms is None else slot_ms
        value = alert_value(NOTIFY_TEST, route=route.name, test=True)
        alert = {
            "id": alert_id or self.test_id(route, slot), "rule": NOTIFY_TEST, "sid": HUB_SID,
            "severity": "info", "state": FIRING, "summary": summary(NOTIFY_TEST, value),
            "value": value, "started_at": now, "acked_at": None, "resolved_at": None,
        }
        done = {**alert, "state": RESOLVED, "resolved_at": now}
        station = {"sid": HUB_SID, "name": route_test_name(route.name)}
        n = 0
        for notifier in route.notifiers:
            for kind, body in (("firing", alert), ("resolved", done)):
                self.outbox.enqueue(notifier, kind, body, station,
                                    delivery_id=delivery_id(alert["id"], kind, notifier,
                                                            kind))
                n += 1
        log.info("route %s tested: %d messages to %s", route.name, n, ", ".join(route.notifiers))
        self.sent += n
        return n


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
