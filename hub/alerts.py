"""The alerts of contract §11/§13 as rows: list, acknowledge, resolve, count.

>>> alert = alerts.raise_alert("water_low", "yh-chumen-01", "warning", "水位低 18%", value=0.18)
>>> alerts.ack(alert["id"], by="token:abc123")["state"]
'acked'

The rule engine that decides when to raise and clear (issue 6) builds on
``raise_alert`` and ``clear``. Writes go through the ``Writer`` (one writer
thread serialises them, so an ack racing a resolve cannot both win) and are
flushed before the call returns, so the API reads what it just wrote.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from hub.schema import alerts as table
from yizhan.clock import Clock

FIRING, ACKED, RESOLVED = "firing", "acked", "resolved"
STATES = (FIRING, ACKED, RESOLVED)
OPEN = (FIRING, ACKED)
SEVERITIES = ("info", "warning", "critical")
#: Contract §13.
RULES = (
    "station_offline", "water_low", "water_empty", "water_predicted_empty", "chargers_low",
    "chargers_predicted_empty", "door_open_too_long", "tamper", "dispenser_fault",
    "heater_lockout", "locker_offline", "slot_fault", "unlock_failed", "bank_overdue",
    "pi_overheat", "undervoltage", "disk_low",
)
DEFAULT_LIMIT = 1000


class AlertError(Exception):
    """Root of the errors of :mod:`hub.alerts`."""


class AlertNotFound(AlertError, KeyError):
    def __str__(self) -> str:
        return f"no alert {self.args[0]}"


class AlertConflict(AlertError, ValueError):
    """The change does not apply to the alert's state (acknowledging a resolved one)."""


class StoreUnavailable(AlertError, RuntimeError):
    """The writer did not commit in time; nothing is known to have changed."""


def new_id() -> str:
    return "a-" + secrets.token_hex(8)


def to_alert(row: Any) -> dict[str, Any]:
    """A row as the Alert object of contract §11 (times in integer ms)."""
    return {
        "id": row.id, "rule": row.rule, "sid": row.sid, "severity": row.severity,
        "state": row.state, "summary": row.summary,
        "value": json.loads(row.value) if row.value is not None else None,
        "started_at": row.started_ms, "acked_at": row.acked_ms,
        "resolved_at": row.resolved_ms,
    }


class AlertStore:
    """Alert rows of one hub; ``writer`` serialises the writes, reads go to the store."""

    def __init__(self, store: Any, writer: Any, clock: Clock, flush_timeout: float = 5.0) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self.flush_timeout = flush_timeout

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
            return "ok"

        outcome = self._write(op)
        if outcome == "missing":
            raise AlertNotFound(alert_id)
        if outcome == "conflict":
            raise AlertConflict(f"alert {alert_id} is resolved; there is nothing to acknowledge")
        return self._must_get(alert_id)

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
            return "ok"

        if self._write(op) == "missing":
            raise AlertNotFound(alert_id)
        return self._must_get(alert_id)

    def raise_alert(self, rule: str, sid: str, severity: str, summary: str,
                    value: Any = None, subject: str = "",
                    at_ms: int | None = None) -> dict[str, Any]:
        """Fire ``rule`` for (sid, subject), or return the one already open: at most
        one alert is open per (rule, sid, subject) (contract §13)."""
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        values = {
            "id": new_id(), "rule": rule, "sid": sid, "subject": subject,
            "severity": severity, "state": FIRING, "summary": summary,
            "value": json.dumps(value, ensure_ascii=False) if value is not None else None,
            "started_ms": self.clock.ms() if at_ms is None else at_ms, "escalation": 0,
        }

        def op(conn: sa.Connection) -> str:
            row = conn.execute(_open_query(rule, sid, subject)).first()
            if row is not None:
                return row.id
            conn.execute(table.insert().values(**values))
            return values["id"]

        return self._must_get(self._write(op))

    def clear(self, rule: str, sid: str, subject: str = "",
              by: str | None = "auto") -> dict[str, Any] | None:
        """Resolve the open alert of (rule, sid, subject), if any; it, resolved."""
        now = self.clock.ms()

        def op(conn: sa.Connection) -> str | None:
            row = conn.execute(_open_query(rule, sid, subject)).first()
            if row is None:
                return None
            conn.execute(table.update().where(table.c.id == row.id)
                         .values(state=RESOLVED, resolved_ms=now, resolved_by=by))
            return row.id

        alert_id = self._write(op)
        return self._must_get(alert_id) if alert_id is not None else None

    # -- plumbing ----------------------------------------------------------------------

    def _write(self, op: Callable[[sa.Connection], Any]) -> Any:
        """Run ``op`` in the writer's transaction and return what it returned."""
        box: list[Any] = []
        self.writer.submit(lambda conn: box.append(op(conn)))
        if not self.writer.flush(self.flush_timeout) or not box:
            # Not committed in time, or the op failed and the writer dropped it.
            raise StoreUnavailable("the alert change was not committed; try again")
        # A batch that failed is retried op by op: the last answer is the committed one.
        return box[-1]

    def _must_get(self, alert_id: str) -> dict[str, Any]:
        alert = self.get(alert_id)
        if alert is None:  # pragma: no cover - written and flushed just before
            raise StoreUnavailable(f"alert {alert_id} vanished")
        return alert


def _row(conn: sa.Connection, alert_id: str) -> Any:
    return conn.execute(sa.select(table).where(table.c.id == alert_id)).first()


def _open_query(rule: str, sid: str, subject: str) -> sa.Select:
    return (sa.select(table.c.id)
            .where(table.c.rule == rule, table.c.sid == sid, table.c.subject == subject,
                   table.c.state.in_(OPEN))
            .limit(1))
