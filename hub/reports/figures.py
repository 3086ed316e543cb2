"""The report's figures, from the stored events and the uptime ledger.

Per station over [from, to) on the hub's clock (``events.at_ms``: the station's
time when its clock was synced, else when the hub heard it):

- **visits**: the ``count`` of its ``visit`` events (people counted at the door);
- **lent** / **returned**: its ``bank_borrowed`` / ``bank_returned`` events: the
  chargers that left and came back *at this station* (a bank lent here may come
  back elsewhere);
- **cups** and **litres**: the ``draws`` and ``ml`` of its ``water_drawn``
  events (docs/protocol.md §6: sent only where a flow meter is fitted, never a
  running total). A station that has never sent one up to the period's end is
  *not measured* (``None``), not 0; a town's and the total's are their measured
  stations' sum, ``None`` when none is measured;
- **availability, down time, outages, MTTR**: the ledger's (docs/uptime.md);
- **time to refill**: a station's water *runs low* at a ``water_level`` event
  saying ``low`` or ``empty`` after it was ``ok`` (or never said) and is refilled
  at the next ``water_level`` saying ``ok``: the time between is its time to
  refill. Runs that began in the period count, with their whole time even when
  the refill came after the period; a run not refilled by now is ``waiting``.
  The ``refilled`` event staff press on the kiosk is not used: it may come
  before or after the water is back, or be forgotten.
- **time to refill chargers**: from the ``chargers_low`` alert's start (the
  State in which the ready chargers fell to its ``level``) to its resolution by
  the engine (``resolved_by`` ``auto``: the first State with ``clear`` ready).
  States are kept only as the latest, so the alert store is the stored history
  of ready chargers. As for water, alerts that began in the period count; one
  still open is ``waiting``; one a person resolved by hand counts as a run
  with no time (the State that ended it was never seen).

A town's figures (``group``) are its stations' added up, and so is the total;
availability is then up over up+down of them all, MTTR over all their repaired
outages.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from hub.reports.period import Period
from hub.storage.schema import alerts, events

#: The event types read for counts, and the figure each adds to.
COUNTED = {"visit": "visits", "bank_borrowed": "lent", "bank_returned": "returned"}
LOW = ("low", "empty")
#: The most people one ``visit`` event may count (it is flushed every 15 minutes).
MOST_VISITS = 100_000
#: The most one ``water_drawn`` may carry (the hub's decoder refuses more; a row
#: written otherwise is left out rather than trusted).
MOST_DRAWS, MOST_DRAWN_ML = 100_000, 10_000_000


@dataclass
class Figures:
    """One line of the report: a station, a town (group) or the whole fleet."""

    kind: str  # station, group, fleet
    group: str | None
    sid: str | None
    name: str | None
    visits: int = 0
    lent: int = 0
    returned: int = 0
    cups: int | None = None  # None: not measured (no flow meter reported)
    drawn_ml: int | None = None
    up_ms: int = 0
    down_ms: int = 0
    unknown_ms: int = 0
    maintenance_ms: int = 0
    outages: int = 0
    repaired: int = 0  # outages that ended inside the period
    repair_s: float = 0.0  # their full durations, for MTTR
    low_runs: int = 0  # times the water ran low (began in the period)
    refills: list[float] = field(default_factory=list)  # their times to refill, s
    waiting: int = 0  # runs not refilled by now
    charger_low_runs: int = 0  # chargers_low alerts that began in the period
    charger_refills: list[float] = field(default_factory=list)  # s, resolved by the engine
    charger_waiting: int = 0  # still open

    @property
    def litres(self) -> float | None:
        return None if self.drawn_ml is None else self.drawn_ml / 1000

    @property
    def charger_refill_mean_s(self) -> float | None:
        r = self.charger_refills
        return sum(r) / len(r) if r else None

    @property
    def charger_refill_max_s(self) -> float | None:
        return max(self.charger_refills) if self.charger_refills else None

    @property
    def availability(self) -> float | None:
        seen = self.up_ms + self.down_ms
        return self.up_ms / seen if seen else None

    @property
    def mttr_s(self) -> float | None:
        return self.repair_s / self.repaired if self.repaired else None

    @property
    def refill_mean_s(self) -> float | None:
        return sum(self.refills) / len(self.refills) if self.refills else None

    @property
    def refill_max_s(self) -> float | None:
        return max(self.refills) if self.refills else None

    def add(self, other: Figures) -> None:
        for name in ("visits", "lent", "returned", "up_ms", "down_ms", "unknown_ms",
                     "maintenance_ms", "outages", "repaired", "repair_s", "low_runs",
                     "waiting", "charger_low_runs", "charger_waiting"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refills.extend(other.refills)
        self.charger_refills.extend(other.charger_refills)
        for name in ("cups", "drawn_ml"):  # only the measured add up
            theirs = getattr(other, name)
            if theirs is not None:
                setattr(self, name, (getattr(self, name) or 0) + theirs)


@dataclass
class Report:
    period: Period
    from_ms: int
    to_ms: int  # capped at now
    stations: list[Figures]
    groups: list[Figures]
    fleet: Figures
    previous: Report | None = None
    _before: dict | None = field(default=None, repr=False, compare=False)

    def previous_of(self, row: Figures) -> Figures | None:
        """The same line in the period before (None where it had no such line)."""
        if self.previous is None:
            return None
        if self._before is None:  # an index, not a search a line: 5 000 stations
            prev = self.previous
            self._before = {(r.kind, r.sid, r.group): r
                            for r in [*prev.stations, *prev.groups, prev.fleet]}
        return self._before.get((row.kind, row.sid, row.group))


def compute(hub: Any, period: Period, tz: dt.tzinfo, *, groups: Iterable[str] | None = None,
            views: list[Any] | None = None, with_previous: bool = True) -> Report:
    """The report for ``period``: per station, per group and in total, capped at now
    (the future is neither up nor down); ``groups`` keeps only those groups (a
    maintenance user's). With ``with_previous`` the period before it too."""
    now = hub.clock.ms()
    from_ms, to_ms = period.bounds_ms(tz)
    to_ms = max(from_ms, min(to_ms, now))
    allowed = None if groups is None else set(groups)
    views = [v for v in (hub.fleet.stations() if views is None else views)
             if allowed is None or v.group in allowed]
    rows = {v.sid: Figures("station", v.group, v.sid, v.name) for v in views}
    if to_ms > from_ms and rows:
        with hub.store.engine.connect() as conn:
            _counts(conn, rows, from_ms, to_ms)
            _drawn(conn, rows, from_ms, to_ms)
            _refills(conn, rows, from_ms, to_ms, now)
            _charger_refills(conn, rows, from_ms, to_ms)
        for sid, u in hub.ledger.uptimes(list(rows), from_ms, to_ms).items():
            _uptime(rows[sid], u, to_ms)
    by_group: dict[str, Figures] = {}
    fleet = Figures("fleet", None, None, None)
    for row in rows.values():
        key = row.group or ""
        if key not in by_group:
            by_group[key] = Figures("group", row.group, None, None)
        by_group[key].add(row)
        fleet.add(row)
    ordered = sorted(rows.values(), key=lambda r: (r.group or "", r.sid or ""))
    rep = Report(period, from_ms, to_ms, ordered, [by_group[k] for k in sorted(by_group)], fleet)
    if with_previous:
        rep.previous = compute(hub, period.previous(), tz, groups=groups, views=views,
                               with_previous=False)
    return rep


def _in(sids: list[str]) -> Iterable[list[str]]:
    # A few hundred sids a statement: SQLite allows 32 766 parameters, but a fleet
    # of thousands in one IN list is slow to plan on either database.
    for i in range(0, len(sids), 500):
        yield sids[i:i + 500]


def _counts(conn: sa.Connection, rows: dict[str, Figures], from_ms: int, to_ms: int) -> None:
    e = events.c
    for chunk in _in(list(rows)):
        q = (sa.select(e.sid, e.type, sa.func.count())
             .where(e.type.in_(("bank_borrowed", "bank_returned")), e.sid.in_(chunk),
                    e.at_ms >= from_ms, e.at_ms < to_ms)
             .group_by(e.sid, e.type))
        for sid, type_, n in conn.execute(q):
            row = rows[sid]
            setattr(row, COUNTED[type_], getattr(row, COUNTED[type_]) + int(n))
        # Summed by the database: reading each row's JSON here took 2.3 s for a
        # month of 300 stations (a visit event every 15 minutes each).
        q = (sa.select(e.sid, sa.func.sum(_visit_count(conn.dialect.name)))
             .where(e.type == "visit", e.sid.in_(chunk), e.at_ms >= from_ms, e.at_ms < to_ms)
             .group_by(e.sid))
        for sid, n in conn.execute(q):
            rows[sid].visits += int(n or 0)


def _drawn(conn: sa.Connection, rows: dict[str, Figures], from_ms: int, to_ms: int) -> None:
    """Cups (draws) and millilitres from ``water_drawn``, summed by the database."""
    e = events.c
    dialect = conn.dialect.name
    for chunk in _in(list(rows)):
        q = (sa.select(e.sid).where(e.type == "water_drawn", e.sid.in_(chunk), e.at_ms < to_ms)
             .group_by(e.sid))
        for (sid,) in conn.execute(q):  # a flow meter has spoken: measured, even if 0
            rows[sid].cups = rows[sid].drawn_ml = 0
        draws, ml = _json_int(dialect, "draws", MOST_DRAWS), _json_int(dialect, "ml", MOST_DRAWN_ML)
        # A row is taken whole or not at all: draws without their water would
        # make cups and litres disagree.
        both = sa.and_(draws > 0, ml >= 0)
        q = (sa.select(e.sid, sa.func.sum(sa.case((both, draws), else_=0)),
                       sa.func.sum(sa.case((both, ml), else_=0)))
             .where(e.type == "water_drawn", e.sid.in_(chunk), e.at_ms >= from_ms,
                    e.at_ms < to_ms)
             .group_by(e.sid))
        for sid, n, total in conn.execute(q):
            row = rows[sid]
            row.cups = (row.cups or 0) + int(n or 0)
            row.drawn_ml = (row.drawn_ml or 0) + int(total or 0)


def _json_int(dialect: str, key: str, most: int) -> sa.ColumnElement:
    """A stored event's whole-number ``key`` from 0 to ``most`` as SQL, else -1
    (absent, not a number, too big, not JSON): the caller leaves such a row out."""
    e = events.c
    if dialect == "postgresql":
        value = sa.cast(e.data, JSONB)[key]
        return sa.case(
            (sa.and_(sa.func.jsonb_typeof(value) == "number",
                     value.astext.regexp_match(r"^[0-9]{1,9}$")),
             sa.case((sa.cast(value.astext, sa.BigInteger) <= most,
                      sa.cast(value.astext, sa.BigInteger)), else_=-1)),
            else_=-1)
    value = sa.func.json_extract(e.data, f"$.{key}")
    return sa.case(
        (sa.and_(sa.func.json_valid(e.data) == 1,
                 sa.func.json_type(e.data, f"$.{key}") == "integer",
                 value >= 0, value <= most), value),
        else_=-1)


def _charger_refills(conn: sa.Connection, rows: dict[str, Figures], from_ms: int,
                     to_ms: int) -> None:
    a = alerts.c
    for chunk in _in(list(rows)):
        q = (sa.select(a.sid, a.started_ms, a.resolved_ms, a.resolved_by)
             .where(a.rule == "chargers_low", a.sid.in_(chunk), a.started_ms >= from_ms,
                    a.started_ms < to_ms)
             .order_by(a.sid, a.started_ms))
        for sid, started, resolved, by in conn.execute(q):
            row = rows[sid]
            row.charger_low_runs += 1
            if resolved is None:
                row.charger_waiting += 1
            elif by == "auto" and resolved >= started:
                row.charger_refills.append((resolved - started) / 1000)


def _visit_count(dialect: str) -> sa.ColumnElement:
    """A stored visit's ``count`` as SQL. The ingest lets any whole number up to
    2**63-1 in; a count over ``MOST_VISITS`` (one door's people between two
    flushes) is a broken sensor or a hostile station, and is left out, as is a
    row written by hand or by an older hub that is not a count: neither may
    overflow the sum or fail the whole report."""
    e = events.c
    if dialect == "postgresql":
        # The cast would refuse a row whose text is not JSON at all; the hub writes
        # only JSON there (``_data_json``), and PostgreSQL 15 has no IS JSON.
        count = sa.cast(e.data, JSONB)["count"]
        return sa.case(
            (sa.and_(sa.func.jsonb_typeof(count) == "number",
                     count.astext.regexp_match(r"^[0-9]{1,9}$")),
             sa.case((sa.cast(count.astext, sa.BigInteger) <= MOST_VISITS,
                      sa.cast(count.astext, sa.BigInteger)), else_=0)),
            else_=0)
    count = sa.func.json_extract(e.data, "$.count")
    return sa.case(
        (sa.and_(sa.func.json_valid(e.data) == 1,
                 sa.func.json_type(e.data, "$.count") == "integer",
                 count >= 0, count <= MOST_VISITS), count),
        else_=0)


def _refills(conn: sa.Connection, rows: dict[str, Figures], from_ms: int, to_ms: int,
             now_ms: int) -> None:
    e = events.c
    for chunk in _in(list(rows)):
        # A run that began in the period may have begun after a water_level long
        # before it, and end after it: read from the start, up to now.
        q = (sa.select(e.sid, e.at_ms, e.data)
             .where(e.type == "water_level", e.sid.in_(chunk), e.at_ms < now_ms)
             .order_by(e.sid, e.at_ms, e.epoch, e.seq))
        low_since: dict[str, int | None] = {}
        for sid, at, data in conn.execute(q):
            state = _level_state(data)
            since = low_since.get(sid)
            if state in LOW:
                if since is None:
                    low_since[sid] = at
            elif state == "ok":
                low_since[sid] = None
                if since is not None and from_ms <= since < to_ms:
                    rows[sid].low_runs += 1
                    rows[sid].refills.append((at - since) / 1000)
        for sid, since in low_since.items():
            if since is not None and from_ms <= since < to_ms:
                rows[sid].low_runs += 1
                rows[sid].waiting += 1


def _level_state(data: str) -> str | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc.get("level_state") if isinstance(doc, dict) else None


def _uptime(row: Figures, u: Any, to_ms: int) -> None:
    ended = [o for o in u.outages if o.end_ms is not None and o.end_ms <= to_ms]
    row.up_ms, row.down_ms = u.up_ms, u.down_ms
    row.unknown_ms, row.maintenance_ms = u.unknown_ms, u.maintenance_ms
    row.outages, row.repaired = len(u.outages), len(ended)
    # The ledger's MTTR is over the outages that ended inside, at full length.
    row.repair_s = (u.mttr_s or 0.0) * len(ended)
