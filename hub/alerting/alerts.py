"""The alerts of contract §11/§13 as rows: list, acknowledge, resolve, count.

>>> alert = alerts.raise_alert("water_low", "yh-chumen-01", "warning", "水位低 18%", value=0.18)
>>> alerts.ack(alert["id"], by="token:abc123")["state"]
'acked'

This module is the only writer of alert rows. The rule engine that decides when
to raise and clear (issue 6, ``hub/alerting/engine.py``) builds on ``fire`` and
``clear`` and hears of acks and resolves made by people through
``add_listener``; the router (``hub/alerting/routing.py``) reads the rows with
news (``rows_with_news``), records what it told (``record_told``) and raises the
hub's own ``notify_failing`` through ``fire``. Silences and maintenance windows
(``Mutes``, on ``alerts.mutes``) say which alerts are held back. Writes go
through ``Writer.call`` (one writer thread serialises them, so an ack racing a
resolve cannot both win): committed before the call returns, so the API reads
what it just wrote.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa

from hub.config.rules import HUB_RULES, HUB_SID, RULES, SEVERITIES
from hub.storage.schema import alerts as table
from hub.storage.schema import maintenance_windows, silences
from hub.storage.writer import NotCommitted, Writer
from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid
from yizhan.clock import Clock
from yizhan.config import ConfigError, parse_duration

log = logging.getLogger(__name__)

FIRING, ACKED, RESOLVED = "firing", "acked", "resolved"
STATES = (FIRING, ACKED, RESOLVED)
OPEN = (FIRING, ACKED)
DEFAULT_LIMIT = 1000


class AlertError(Exception):
    """Root of the errors of :mod:`hub.alerting.alerts`."""


class AlertNotFound(AlertError, KeyError):
    def __str__(self) -> str:
        return f"no alert {self.args[0]}"


class AlertConflict(AlertError, ValueError):
    """The change does not apply to the alert's state (acknowledging a resolved one)."""


class StoreUnavailable(AlertError, RuntimeError):
    """The writer did not commit in time; nothing is known to have changed."""


class BadMute(AlertError, ValueError):
    """A silence or maintenance window that cannot be; ``code`` for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Fired(NamedTuple):
    """What ``AlertStore.fire`` did: the open alert, and whether it is new."""

    alert: dict[str, Any]
    created: bool


def new_id() -> str:
    return "a-" + secrets.token_hex(8)


def to_alert(row: Any) -> dict[str, Any]:
    """A row as the Alert object of contract §11 (times in integer ms)."""
    alert = {
        "id": row.id, "rule": row.rule, "sid": row.sid, "severity": row.severity,
        "state": row.state, "summary": row.summary,
        "value": json.loads(row.value) if row.value is not None else None,
        "started_at": row.started_ms, "acked_at": row.acked_ms,
        "resolved_at": row.resolved_ms,
    }
    # Who is to see to it (a staff id, given from the console); left out while
    # nobody is, so an Alert reads as it did before there was assigning.
    if row.assignee is not None:
        alert["assigned_to"] = row.assignee
    return alert


class AlertStore:
    """Alert rows of one hub; ``writer`` serialises the writes, reads go to the store."""

    def __init__(self, store: Any, writer: Any, clock: Clock, flush_timeout: float = 5.0) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self.flush_timeout = flush_timeout
        self.mutes = Mutes(store, writer, clock, flush_timeout)
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        #: ``fn(alert)`` after any alert was resolved, by a person or by the
        #: engine (``yizhan_alert_duration_seconds``, hub/alerting/durations.py).
        self.on_resolved: list[Callable[[dict[str, Any]], None]] = []

    def add_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """``fn(kind, alert)`` after a person acknowledged (``acked``) or resolved
        (``resolved``) an alert that was open: the engine stops treating it as
        open, the router tells whoever was told it fired."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _tell(self, kind: str, alert: dict[str, Any]) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind, alert)
            except Exception:  # a listener's bug must not fail the API call
                log.exception("alert listener failed on %s of %s", kind, alert["id"])

    # -- reading -----------------------------------------------------------------------

    def list(self, state: str | None = None, sid: str | None = None,
             limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """Alerts newest first, optionally of one state and/or one station."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        q = sa.select(table)
        if state is not None:
            q = q.where(table.c.state == state)
        if sid is not None:
            q = q.where(table.c.sid == sid)
        q = q.order_by(table.c.started_ms.desc(), table.c.id).limit(limit)
        with self.store.engine.connect() as conn:
            return [to_alert(r) for r in conn.execute(q)]

    def get(self, alert_id: str) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == alert_id)).first()
        return to_alert(row) if row is not None else None

    def firing_counts(self) -> dict[tuple[str, str, str], int]:
        """``{(sid, rule, severity): n}`` of the alerts not resolved.

        Acknowledged alerts count: an ack means someone is on it, not that the
        water came back, so ``yizhan_alerts_firing`` and a station's
        ``alerts_firing`` stay up until the alert is resolved.
        """
        q = (sa.select(table.c.sid, table.c.rule, table.c.severity, sa.func.count())
             .where(table.c.state.in_(OPEN))
             .group_by(table.c.sid, table.c.rule, table.c.severity))
        with self.store.engine.connect() as conn:
            return {(sid, rule, sev): n for sid, rule, sev, n in conn.execute(q)}

    def open_alerts(self) -> list[tuple[dict[str, Any], str]]:
        """Every open alert of a contract rule with its subject, for the engine's start."""
        q = (sa.select(table).where(table.c.state.in_(OPEN), table.c.rule.in_(RULES))
             .order_by(table.c.started_ms))
        with self.store.engine.connect() as conn:
            return [(to_alert(r), r.subject) for r in conn.execute(q)]

    # -- changing ----------------------------------------------------------------------

    def ack(self, alert_id: str, by: str | None) -> dict[str, Any]:
        """firing → acked; acked stays acked; resolved → :class:`AlertConflict`."""
        now = self.clock.ms()

        def op(conn: sa.Connection) -> str:
            row = _row(conn, alert_id)
            if row is None:
                return "missing"
            if row.state == RESOLVED:
                return "conflict"
            if row.state == FIRING:
                conn.execute(table.update().where(table.c.id == alert_id)
                             .values(state=ACKED, acked_ms=now, acked_by=by))
                return "changed"
            return "ok"

        outcome = self._write(op)
        if outcome == "missing":
            raise AlertNotFound(alert_id)
        if outcome == "conflict":
            raise AlertConflict(f"alert {alert_id} is resolved; there is nothing to acknowledge")
        alert = self._must_get(alert_id)
        if outcome == "changed":
            self._tell(ACKED, alert)
        return alert

    def resolve(self, alert_id: str, by: str | None) -> dict[str, Any]:
        """firing or acked → resolved; resolved stays as it was (same time, same by)."""
        now = self.clock.ms()

        def op(conn: sa.Connection) -> str:
            row = _row(conn, alert_id)
            if row is None:
                return "missing"
            if row.state != RESOLVED:
                conn.execute(table.update().where(table.c.id == alert_id)
                             .values(state=RESOLVED, resolved_ms=now, resolved_by=by))
                return "changed"
            return "ok"

        outcome = self._write(op)
        if outcome == "missing":
            raise AlertNotFound(alert_id)
        alert = self._must_get(alert_id)
        if outcome == "changed":
            self._resolved(alert)
            self._tell(RESOLVED, alert)
        return alert

    def assign(self, alert_id: str, staff_id: str | None, by: str | None) -> dict[str, Any]:
        """Give an open alert to a staff member to see to (``None``: to nobody);
        a resolved one → :class:`AlertConflict`. Nobody is notified: the console
        shows it, the assignee is told by whoever assigned."""

        def op(conn: sa.Connection) -> str:
            row = _row(conn, alert_id)
            if row is None:
                return "missing"
            if row.state == RESOLVED:
                return "conflict"
            conn.execute(table.update().where(table.c.id == alert_id)
                         .values(assignee=staff_id))
            return "changed"

        outcome = self._write(op)
        if outcome == "missing":
            raise AlertNotFound(alert_id)
        if outcome == "conflict":
            raise AlertConflict(f"alert {alert_id} is resolved; there is nothing to assign")
        log.info("alert %s assigned to %s by %s", alert_id, staff_id, by)
        return self._must_get(alert_id)

    def raise_alert(self, rule: str, sid: str, severity: str, summary: str,
                    value: Any = None, subject: str = "",
                    at_ms: int | None = None) -> dict[str, Any]:
        """Fire ``rule`` for (sid, subject), or return the one already open: at most
        one alert is open per (rule, sid, subject) (contract §13)."""
        return self.fire(rule, sid, severity, summary, value, subject, at_ms).alert

    def fire(self, rule: str, sid: str, severity: str, summary: str, value: Any = None,
             subject: str = "", at_ms: int | None = None, alert_id: str | None = None
             ) -> Fired:
        """``raise_alert`` that also says whether the alert is new.

        ``rule`` is one of contract §13, or of the hub's own (``HUB_RULES``) for
        ``sid`` ``hub`` (the router's ``notify_failing``). ``alert_id`` is the id a
        new alert gets. A caller that retries after
        StoreUnavailable passes the same one: its first try may have been
        committed after the wait gave up, and the open alert with that id is
        then still the retry's own, reported as new."""
        if rule not in RULES and not (sid == HUB_SID and rule in HUB_RULES):
            raise ValueError(f"unknown rule {rule!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        values = {
            "id": alert_id or new_id(), "rule": rule, "sid": sid, "subject": subject,
            "severity": severity, "state": FIRING, "summary": summary,
            "value": json.dumps(value, ensure_ascii=False) if value is not None else None,
            "started_ms": self.clock.ms() if at_ms is None else at_ms, "escalation": 0,
        }

        where = {"o_rule": rule, "o_sid": sid, "o_subject": subject}

        def op(conn: sa.Connection) -> tuple[str, bool]:
            row = conn.execute(_OPEN, where).first()
            if row is not None:
                return row.id, row.id == values["id"]
            conn.execute(_INSERT, values)
            return values["id"], True

        alert_id, created = self._write(op)
        return Fired(self._must_get(alert_id), created)

    def update(self, alert_id: str, *, severity: str | None = None,
               summary: str | None = None) -> dict[str, Any] | None:
        """Change an open alert's severity or summary (an unlock failure that turns
        out to be a jammed lock is critical); None if it is no longer open."""
        values: dict[str, Any] = {}
        if severity is not None:
            if severity not in SEVERITIES:
                raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
            values["severity"] = severity
        if summary is not None:
            values["summary"] = summary

        def op(conn: sa.Connection) -> bool:
            return conn.execute(table.update()
                                .where(table.c.id == alert_id, table.c.state.in_(OPEN))
                                .values(**values)).rowcount == 1

        if not values or not self._write(op):
            return None
        return self._must_get(alert_id)

    def clear(self, rule: str, sid: str, subject: str = "", by: str | None = "auto",
              at_ms: int | None = None) -> dict[str, Any] | None:
        """Resolve the open alert of (rule, sid, subject), if any, at ``at_ms``
        (default now); it, resolved."""
        now = self.clock.ms() if at_ms is None else at_ms

        where = {"o_rule": rule, "o_sid": sid, "o_subject": subject}

        def op(conn: sa.Connection) -> str | None:
            row = conn.execute(_OPEN, where).first()
            if row is None:
                return None
            conn.execute(_RESOLVE, {"r_id": row.id, "r_now": now, "r_by": by})
            return row.id

        alert_id = self._write(op)
        if alert_id is None:
            return None
        alert = self._must_get(alert_id)
        self._resolved(alert)
        return alert

    def _resolved(self, alert: dict[str, Any]) -> None:
        for fn in list(self.on_resolved):
            try:
                fn(alert)
            except Exception:  # a metric's bug must not fail a resolution
                log.exception("resolution hook failed on %s", alert["id"])

    # -- what the router told (hub/alerting/routing.py) ------------------------------------

    def row(self, alert_id: str) -> Any:
        """The alert's row as stored, or None: beside the Alert object's fields its
        ``subject`` and what the router told of it (``notified``, ``route``,
        ``escalation``, ``tier_ms``, ``last_notified_ms``)."""
        with self.store.engine.connect() as conn:
            return _row(conn, alert_id)

    def rows_with_news(self) -> list[Any]:
        """The rows of alerts that may have something to tell, oldest first: the open
        ones, and the resolved ones whose resolution was not yet told to those told
        they fired."""
        q = sa.select(table).where(sa.or_(
            table.c.state.in_(OPEN),
            sa.and_(table.c.state == RESOLVED, table.c.notified.in_((FIRING, ACKED))),
        )).order_by(table.c.started_ms)
        with self.store.engine.connect() as conn:
            return list(conn.execute(q))

    def open_rows(self, rule: str, sid: str) -> list[Any]:
        """The rows of the open alerts of ``rule`` at ``sid``, one per subject."""
        q = sa.select(table).where(table.c.sid == sid, table.c.rule == rule,
                                   table.c.state.in_(OPEN))
        with self.store.engine.connect() as conn:
            return list(conn.execute(q))

    def record_told(self, row: Any, told: Mapping[str, Any]) -> bool:
        """Write the router's columns ``told`` into the alert of ``row`` if its state
        and those columns are still as ``row`` has them; whether they were (not:
        someone else moved the alert meanwhile, and the router looks again)."""
        unknown = set(told) - _TOLD
        if unknown:
            raise ValueError(f"not a column of what the router told: {', '.join(unknown)}")

        def same(col: sa.Column, value: Any) -> Any:
            return col.is_(None) if value is None else col == value

        def op(conn: sa.Connection) -> bool:
            res = conn.execute(table.update().where(
                table.c.id == row.id, table.c.state == row.state,
                same(table.c.notified, row.notified), table.c.escalation == row.escalation,
                same(table.c.last_notified_ms, row.last_notified_ms),
            ).values(**told))
            return res.rowcount == 1

        return bool(self._write(op))

    # -- plumbing ----------------------------------------------------------------------

    def _write(self, op: Callable[[sa.Connection], Any]) -> Any:
        return _commit(self.writer, self.flush_timeout, op)

    def _must_get(self, alert_id: str) -> dict[str, Any]:
        alert = self.get(alert_id)
        if alert is None:  # pragma: no cover - written and flushed just before
            raise StoreUnavailable(f"alert {alert_id} vanished")
        return alert


def _commit(writer: Writer, timeout: float, op: Callable[[sa.Connection], Any]) -> Any:
    """``writer.call(op)``: committed now, what it returned; in this package's words."""
    try:
        return writer.call(op, timeout)
    except NotCommitted as err:
        raise StoreUnavailable(str(err)) from err


def _row(conn: sa.Connection, alert_id: str) -> Any:
    return conn.execute(sa.select(table).where(table.c.id == alert_id)).first()


#: The columns that say what the router told of an alert (``record_told``).
_TOLD = frozenset({"notified", "route", "escalation", "tier_ms", "last_notified_ms"})

# Built once with bound parameters: the engine fires and clears alerts from its
# thread, and a statement built per call costs SQLAlchemy a new cache key.
_INSERT = table.insert()
_OPEN = (sa.select(table.c.id)
         .where(table.c.rule == sa.bindparam("o_rule"), table.c.sid == sa.bindparam("o_sid"),
                table.c.subject == sa.bindparam("o_subject"),
                # Not IN (…): an expanding parameter is rendered again at every execute.
                sa.or_(table.c.state == FIRING, table.c.state == ACKED))
         .limit(1))
_RESOLVE = (table.update().where(table.c.id == sa.bindparam("r_id"))
            .values(state=RESOLVED, resolved_ms=sa.bindparam("r_now"),
                    resolved_by=sa.bindparam("r_by")))


# -- silences and maintenance windows --------------------------------------------------

SILENCE, WINDOW = "silence", "window"
#: The longest a silence or a maintenance window may run: past that it is
#: forgotten rather than meant.
MAX_MUTE_MS = 30 * 24 * 3600_000
MAX_COMMENT = 500
GROUP_MAX = 64
#: The largest time a silence or window may name: what a 64-bit column holds.
MAX_MS = 2**63 - 1
#: A duration as the API takes it: ASCII digits only (``\d`` would take ``٣``),
#: at most 9 a unit (more digits than any 30-day duration needs).
DURATION_PATTERN = ("^(?=.)(?:[0-9]{1,9}d)?(?:[0-9]{1,9}h)?(?:[0-9]{1,9}m)?"
                    "(?:[0-9]{1,9}s)?(?:[0-9]{1,9}ms)?$")
_DURATION = re.compile(DURATION_PATTERN)


def _mute_id(kind: str) -> str:
    return ("s-" if kind == SILENCE else "mw-") + secrets.token_hex(8)


def to_mute(kind: str, row: Any) -> dict[str, Any]:
    """A silence or maintenance window as the API shows it (times in integer ms)."""
    out = {"id": row.id, "sid": row.sid, "group": row.grp}
    if kind == SILENCE:
        out["rule"] = row.rule
    out.update({"starts_at": row.starts_ms, "ends_at": row.ends_ms, "comment": row.comment,
                "created_by": row.created_by, "created_at": row.created_ms})
    return out


def _is_ms(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and 0 <= value <= MAX_MS)


def _not_over(t: sa.Table, now: int) -> tuple[Any, ...]:
    """Running or still to come (one cancelled before it started ends as it starts)."""
    return (t.c.ends_ms > now, t.c.ends_ms > t.c.starts_ms)


class Mutes:
    """Silences (an alert matching sid, group and rule is not notified until
    ``ends_at``) and maintenance windows (a station's, or a group's, refill alerts
    are held back between ``starts_at`` and ``ends_at``), as rows.

    The ones not yet over are also kept in memory, so the engine's question
    "is this alert muted now?" costs no query; ``refresh()`` re-reads them (other
    hub workers may have added some). ``add_listener(fn)``: ``fn()`` after a change.

    >>> s = alerts.mutes.add(SILENCE, {"sid": "yh-chumen-01", "duration": "2h"}, by="token:abc")
    >>> alerts.mutes.silenced("yh-chumen-01", "chumen", "water_low", clock.ms())
    True
    """

    def __init__(self, store: Any, writer: Any, clock: Clock, flush_timeout: float = 5.0) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self.flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._live: dict[str, list[dict[str, Any]]] = {SILENCE: [], WINDOW: []}
        self._listeners: list[Callable[[], None]] = []
        self.refresh()

    @staticmethod
    def _table(kind: str) -> sa.Table:
        if kind not in (SILENCE, WINDOW):
            raise ValueError(f"kind must be {SILENCE} or {WINDOW}")
        return silences if kind == SILENCE else maintenance_windows

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    # -- reading ---------------------------------------------------------------------

    def refresh(self, now_ms: int | None = None) -> None:
        """Re-read the silences and windows not yet over."""
        now = self.clock.ms() if now_ms is None else now_ms
        live = {}
        with self.store.engine.connect() as conn:
            for kind in (SILENCE, WINDOW):
                t = self._table(kind)
                q = sa.select(t).where(*_not_over(t, now)).order_by(t.c.starts_ms, t.c.id)
                live[kind] = [to_mute(kind, r) for r in conn.execute(q)]
        with self._lock:
            self._live = live

    def list(self, kind: str, include_ended: bool = False,
             limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """The silences (or windows) not yet over, soonest first; with
        ``include_ended`` the past ones too, the newest first."""
        t = self._table(kind)
        q = sa.select(t)
        if include_ended:
            q = q.order_by(t.c.ends_ms.desc(), t.c.id)
        else:
            q = q.where(*_not_over(t, self.clock.ms())).order_by(t.c.starts_ms, t.c.id)
        with self.store.engine.connect() as conn:
            return [to_mute(kind, r) for r in conn.execute(q.limit(limit))]

    def get(self, kind: str, mute_id: str) -> dict[str, Any] | None:
        t = self._table(kind)
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == mute_id)).first()
        return to_mute(kind, row) if row is not None else None

    def silence_for(self, sid: str, group: str | None, rule: str,
                    now_ms: int) -> dict[str, Any] | None:
        """The silence that mutes ``rule`` at ``sid`` (of ``group``) now, if any."""
        with self._lock:
            live = self._live[SILENCE]
        for s in live:
            if (s["starts_at"] <= now_ms < s["ends_at"]
                    and s["sid"] in (None, sid) and s["group"] in (None, group)
                    and s["rule"] in (None, rule)):
                return s
        return None

    def silenced(self, sid: str, group: str | None, rule: str, now_ms: int) -> bool:
        return self.silence_for(sid, group, rule, now_ms) is not None

    def window_for(self, sid: str, group: str | None, now_ms: int) -> dict[str, Any] | None:
        """The maintenance window open at ``sid`` (of ``group``) now, if any."""
        with self._lock:
            live = self._live[WINDOW]
        for w in live:
            if (w["starts_at"] <= now_ms < w["ends_at"]
                    and w["sid"] in (None, sid) and w["group"] in (None, group)):
                return w
        return None

    # -- changing --------------------------------------------------------------------

    def add(self, kind: str, body: Any, by: str | None) -> dict[str, Any]:
        """A new silence or window from an API body: ``sid``, ``group``, (silences:
        ``rule``), ``starts_at`` (default now), ``ends_at`` or ``duration``
        (``"2h"``), ``comment``. Raises :class:`BadMute` saying what is wrong."""
        t = self._table(kind)
        now = self.clock.ms()
        values = self._check(kind, body, now)
        values.update(id=_mute_id(kind), created_by=by, created_ms=now)
        self._write(lambda conn: conn.execute(t.insert().values(**values)))
        self._changed()
        return self.get(kind, values["id"]) or {}

    def end(self, kind: str, mute_id: str) -> dict[str, Any]:
        """End a silence or window now (one not started yet never starts);
        ending an ended one changes nothing. Raises :class:`KeyError` if unknown."""
        t = self._table(kind)
        now = self.clock.ms()

        def op(conn: sa.Connection) -> bool:
            row = conn.execute(sa.select(t).where(t.c.id == mute_id)).first()
            if row is None:
                return False
            if row.ends_ms > now:
                conn.execute(t.update().where(t.c.id == mute_id)
                             .values(ends_ms=max(now, row.starts_ms)))
            return True

        if not self._write(op):
            raise AlertNotFound(mute_id)
        self._changed()
        return self.get(kind, mute_id) or {}

    def _check(self, kind: str, body: Any, now: int) -> dict[str, Any]:
        what = "silence" if kind == SILENCE else "maintenance window"
        if not isinstance(body, dict):
            raise BadMute("bad_body", f"the body must be a JSON object describing the {what}")
        known = {"sid", "group", "starts_at", "ends_at", "duration", "comment"}
        if kind == SILENCE:
            known.add("rule")
        for key in body:
            if key not in known:
                raise BadMute("bad_body", f"unknown field {key!r}; a {what} has "
                              f"{', '.join(sorted(known))}")
        sid, group, rule = body.get("sid"), body.get("group"), body.get("rule")
        if sid is not None:
            try:
                check_sid(sid if isinstance(sid, str) else "")
            except InvalidIdentifier as err:
                raise BadMute("bad_sid", f"sid: {err}") from err
        if group is not None and (not isinstance(group, str) or not 0 < len(group) <= GROUP_MAX):
            raise BadMute("bad_group", f"group must be a group name of at most {GROUP_MAX} "
                          "characters")
        if rule is not None and rule not in RULES:
            raise BadMute("bad_rule", f"rule must be one of {', '.join(RULES)}")
        if sid is None and group is None and rule is None:
            needs = "sid, group or rule" if kind == SILENCE else "sid or group"
            raise BadMute("bad_match", f"a {what} needs at least one of {needs}: one that "
                          "matched everything would hide the whole fleet")
        starts = body.get("starts_at", now)
        if starts is None:
            starts = now
        if not _is_ms(starts):
            raise BadMute("bad_time", f"starts_at must be a time in integer milliseconds, "
                          f"0 to {MAX_MS}")
        if ("ends_at" in body) == ("duration" in body):
            raise BadMute("bad_time", "give ends_at (ms) or duration (like \"2h\"), one of them")
        if "duration" in body:
            duration = body["duration"]
            # Text only, as documented: a bare number would be seconds here and
            # milliseconds in ends_at; 1e308 or 5 000 digits must not reach int().
            if not isinstance(duration, str) or not _DURATION.match(duration):
                raise BadMute("bad_time", "duration must be text like 30m, 2h or 1d12h "
                              "(ASCII digits, d h m s ms)")
            try:
                seconds = parse_duration(duration, "duration")
            except ConfigError as err:
                raise BadMute("bad_time", str(err)) from err
            ends = starts + int(seconds * 1000)
        else:
            ends = body["ends_at"]
            if not _is_ms(ends):
                raise BadMute("bad_time", f"ends_at must be a time in integer milliseconds, "
                              f"0 to {MAX_MS}")
        if ends > MAX_MS:
            raise BadMute("bad_time", f"the end must be at most {MAX_MS} ms")
        if ends <= max(starts, now):
            raise BadMute("bad_time", "the end must be after the start and in the future")
        if ends - max(starts, now) > MAX_MUTE_MS:
            raise BadMute("bad_time", "at most 30 days: a longer one is forgotten, not meant")
        comment = body.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
            raise BadMute("bad_comment", f"comment must be text of at most {MAX_COMMENT} "
                          "characters")
        values = {"sid": sid, "grp": group, "starts_ms": starts, "ends_ms": ends,
                  "comment": comment}
        if kind == SILENCE:
            values["rule"] = rule
        return values

    def _changed(self) -> None:
        self.refresh()
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("mute listener failed")

    def _write(self, op: Callable[[sa.Connection], Any]) -> Any:
        return _commit(self.writer, self.flush_timeout, op)
