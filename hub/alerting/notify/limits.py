"""Rate limits of one notifier: what is sent now, what waits for the digest.

A flood — ten thousand made-up station ids, or one stolen id crying wolf — must
not bury the one real alert in a group chat (docs/security.md, "Rate limits").
So each notifier (its ``limits:``, :class:`hub.config.notifiers.NotifyLimits`)
sends at most ``per_station`` notifications of one station in
``station_window`` and ``per_minute`` of all stations in any 60 s. What is over
a limit is *held*: stored as usual in ``notifications`` with ``held_ms`` set,
never sent alone, and summed up in one digest message per notifier every
``digest_every`` (``Outbox``'s sender makes it when the oldest held row is that
old). Nothing is lost and a restart forgets nothing: the counts are the rows.

* A critical alert (``severity: critical``: tamper, water empty, station
  offline, …) is not held by the per-station limit, and lesser alerts never hold
  it back: it is held only when ``per_minute`` *critical* notifications went
  out in the last 60 s (a flood of critical ones is cut too). It counts toward
  both limits of the others, as the chat platform counts it.
* A notification that goes first (``goes_first``: a tamper, a heater lockout,
  the station offline that was its group's last one online; first.py) is
  treated alike, counted only against others that go first: twenty critical
  station_offline notices of a town's power cut do not hold back its tamper.
* A notice about an alert whose firing is held (resolved, acked, …) is held
  too, and the digest says what became of the alert instead of sending it alone.
* A route test is never held: it tests the path, and is rare.

The counts are read in the same writer operation that stores the row, so one
hub process never lets more through; two workers on one PostgreSQL database may
each let the last one through at the same moment (approximate by one).

Each chat robot is also paced at send time by its platform's documented rate
(hub/alerting/notify/pacing.py); a backlog it cannot take in time is folded
into a digest at once by the same machinery (``Outbox._fold``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from hub.alerting.notify.text import MAX_FIELD, Message, what_text
from hub.alerting.notify.text import _md as inert
from hub.alerting.texts import N_, texts
from hub.config.notifiers import NotifyLimits
from hub.config.rules import NOTIFY_TEST
from hub.storage.schema import notifications as table

DIGEST = "digest"
MINUTE_MS = 60_000
#: Held rows one digest sums up at most; the rest go in the next, due at once.
MAX_PER_DIGEST = 500
#: Station names listed per line of a digest, then "(+N more)".
NAMES_PER_LINE = 10
#: Entries listed in the generic webhook's digest body.
WEBHOOK_ENTRIES = 100


def held_reason(conn: sa.Connection, limits: NotifyLimits, notifier: str, kind: str,
                alert: Mapping[str, Any], sid: str | None, now_ms: int, *,
                first: bool = False) -> str | None:
    """Why this delivery must be held back ("station", "minute", "alert held"),
    or None when it goes out now; ``first``: it goes first (see the module)."""
    if alert.get("rule") == NOTIFY_TEST:
        return None
    sent = sa.and_(table.c.notifier == notifier, table.c.held_ms.is_(None))
    if first:
        ahead = conn.execute(
            sa.select(sa.func.count()).select_from(table)
            .where(sent, table.c.goes_first.is_(True),
                   table.c.created_ms > now_ms - MINUTE_MS)).scalar()
        return "minute (first)" if ahead >= limits.per_minute else None
    if alert.get("severity") == "critical":
        # Only critical ones count against a critical one: a flood of lesser
        # alerts never holds it back, a flood of critical ones is still cut.
        critical = conn.execute(
            sa.select(sa.func.count()).select_from(table)
            .where(sent, table.c.severity == "critical",
                   table.c.created_ms > now_ms - MINUTE_MS)).scalar()
        return "minute (critical)" if critical >= limits.per_minute else None
    if kind != "firing" and alert.get("id"):
        # Its firing (or an earlier notice) waits for the digest: so does this.
        waiting = conn.execute(
            sa.select(sa.func.count()).select_from(table)
            .where(table.c.notifier == notifier, table.c.alert_id == alert["id"],
                   table.c.held_ms.is_not(None), table.c.digest_id.is_(None))).scalar()
        if waiting:
            return "alert held"
    if sid:
        window_ms = int(limits.station_window * 1000)
        of_station = conn.execute(
            sa.select(sa.func.count()).select_from(table)
            .where(sent, table.c.sid == sid, table.c.kind != DIGEST,
                   table.c.created_ms > now_ms - window_ms)).scalar()
        if of_station >= limits.per_station:
            return "station"
    this_minute = conn.execute(
        sa.select(sa.func.count()).select_from(table)
        .where(sent, table.c.created_ms > now_ms - MINUTE_MS)).scalar()
    if this_minute >= limits.per_minute:
        return "minute"
    return None


def about(kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
          language: str) -> str:
    """What a digest will say of one held delivery (stored with it, as JSON)."""
    sid = str(station.get("sid") or alert.get("sid") or "")
    return json.dumps({
        "kind": kind, "alert_id": alert.get("id"), "rule": alert.get("rule"),
        "severity": alert.get("severity"), "summary": alert.get("summary"), "sid": sid,
        "name": str(station.get("name") or sid)[:64],
        "what": what_text(alert, station, language)[:MAX_FIELD],
    }, ensure_ascii=False)


def read_about(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def digest_entries(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One entry per alert held (its latest notice wins: a firing then resolved
    alert is "resolved"), oldest first."""
    by_alert: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = read_about(row.about)
        entry["delivery"] = row.id
        key = str(entry.get("alert_id") or row.id)
        earlier = by_alert.get(key)
        if earlier is not None and entry.get("kind") != "firing":
            earlier["kind"] = entry.get("kind")
        elif earlier is None:
            by_alert[key] = entry
    return list(by_alert.values())


_STATUS = {"resolved": N_("resolved since"), "acked": N_("acknowledged since")}


def digest_message(entries: Sequence[Mapping[str, Any]], held: int, limits: NotifyLimits,
                   language: str, digest_id: str, *, paced: Any = None) -> Message:
    """The digest as a :class:`Message`, shaped by each platform like any other:
    one line per (what is wrong, what became of it), the stations named, cut
    with a count when long. ``paced`` (a ``pacing.Rate``) when it folds a
    backlog the robot could not take in time (hub/alerting/notify/pacing.py)."""
    t = texts(language)
    groups: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        status = _STATUS.get(str(e.get("kind")), "")
        what = str(e.get("what") or e.get("summary") or e.get("rule") or "?")
        names = groups.setdefault((what[:80], status), [])
        name = str(e.get("name") or e.get("sid") or "?")
        if name not in names:
            names.append(name)
    fields: list[tuple[str, str]] = []
    for (what, status), names in groups.items():
        # The label is a field name elsewhere, which templates trust: make it inert.
        label = inert(what if not status else f"{what} · {t.gettext(status)}")
        listed = "、".join(names[:NAMES_PER_LINE]) if language == "zh" \
            else ", ".join(names[:NAMES_PER_LINE])
        if len(names) > NAMES_PER_LINE:
            listed += t.gettext(" (+%(more)s more)", more=len(names) - NAMES_PER_LINE)
        fields.append((label, t.ngettext("%(num)d station: %(names)s",
                                         "%(num)d stations: %(names)s", len(names),
                                         names=listed)))
    if paced is not None:
        why = t.gettext("more at once than the chat robot takes (%(count)s in %(window)s); "
                        "each one is listed in the hub's API",
                        count=paced.count, window=t.duration(paced.window))
    else:
        why = t.gettext(
            "over the notification limits (%(station)s per station in %(window)s, "
            "%(minute)s a minute); each one is listed in the hub's API",
            station=limits.per_station, window=t.duration(limits.station_window),
            minute=limits.per_minute)
    fields.append((t.pgettext("message field", "Why"), why))
    title = t.ngettext("[DIGEST] %(num)d notification held back",
                       "[DIGEST] %(num)d notifications held back", held)
    return Message(kind=DIGEST, severity="warning", language=t.lang, title=title,
                   fields=tuple(fields), ack_url=None, alert_id=digest_id)


def webhook_digest(entries: Sequence[Mapping[str, Any]], held: int) -> dict[str, Any]:
    """The generic webhook's digest body (docs/protocol.md §13): the first
    ``WEBHOOK_ENTRIES`` alerts, with how many more there were."""
    listed = [{"delivery": e.get("delivery"), "kind": e.get("kind"),
               "alert": {"id": e.get("alert_id"), "rule": e.get("rule"), "sid": e.get("sid"),
                         "severity": e.get("severity"), "summary": e.get("summary")},
               "station": {"sid": e.get("sid"), "name": e.get("name")}}
              for e in entries[:WEBHOOK_ENTRIES]]
    return {"version": 1, "kind": DIGEST, "held": held, "alerts": listed,
            "more": max(0, len(entries) - WEBHOOK_ENTRIES)}
