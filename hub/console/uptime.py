"""The uptime report: every station and every group over a chosen range of days,
with availability, down time, outages and MTTR, as a page and as CSV.

The numbers are the ledger's (``hub.ledger.uptime``), the same as the API's
``/stations/<sid>/uptime``; a group's are its stations' added up, so a group's
availability weighs each station by the time it was seen, not one to one.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

from hub.alerting.texts import CST
from hub.console.audit import groups_seen
from hub.console.auth import requires
from hub.console.refusals import RANGE_WORDS, refusal

bp = Blueprint("console_uptime", __name__, url_prefix="/console")

DAY_MS = 86_400_000
DEFAULT_DAYS = 30
#: The longest range a report covers: a year and a day (one leap year).
MAX_DAYS = 366
#: Headers of the CSV, in the order of its columns; Excel and LibreOffice read
#: the byte order mark as "this is UTF-8", so station names in Chinese stay readable.
CSV_COLUMNS = ("kind", "group", "sid", "name", "from", "to", "availability", "up_s",
               "down_s", "unknown_s", "maintenance_s", "outages", "mttr_s")
BOM = "\ufeff"


class BadRange(ValueError):
    """A from/to the report cannot use; the message says what a good one is (in
    English), ``code`` which word the page shows (hub/console/refusals.py)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Row:
    """One line of the report: a station, a group, or the whole fleet."""

    kind: str  # station, group, fleet
    group: str | None
    sid: str | None
    name: str | None
    up_ms: int = 0
    down_ms: int = 0
    unknown_ms: int = 0
    maintenance_ms: int = 0
    outages: int = 0
    repaired: int = 0  # outages that ended inside the range
    repair_s: float = 0.0  # their full durations, for MTTR

    @property
    def availability(self) -> float | None:
        seen = self.up_ms + self.down_ms
        return self.up_ms / seen if seen else None

    @property
    def mttr_s(self) -> float | None:
        return self.repair_s / self.repaired if self.repaired else None

    def add(self, other: Row) -> None:
        self.up_ms += other.up_ms
        self.down_ms += other.down_ms
        self.unknown_ms += other.unknown_ms
        self.maintenance_ms += other.maintenance_ms
        self.outages += other.outages
        self.repaired += other.repaired
        self.repair_s += other.repair_s


@dataclass
class Report:
    from_ms: int
    to_ms: int
    first_day: dt.date
    last_day: dt.date  # inclusive
    stations: list[Row]
    groups: list[Row]
    fleet: Row


def timezone_of(hub: Any) -> dt.tzinfo:
    """The hub's ``timezone:`` (routing), China Standard Time without: days of the
    report begin at midnight where the stations are."""
    name = getattr(getattr(hub.config, "routing", None), "timezone", None)
    return zoneinfo.ZoneInfo(name) if name else CST


def parse_date(raw: str | None, what: str) -> dt.date | None:
    if raw is None or raw == "":
        return None
    # fromisoformat takes other forms too (20261207, week dates) and, in Python,
    # non-ASCII digits: only YYYY-MM-DD in ASCII is a date here.
    if len(raw) != 10 or not raw.isascii() or raw[4] != "-" or raw[7] != "-" \
            or not (raw[:4] + raw[5:7] + raw[8:]).isdigit():
        raise BadRange("bad_date", f"{what} must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise BadRange("bad_date", f"{what} must be a date YYYY-MM-DD") from None


def day_range(args: Mapping[str, str], now_ms: int, tz: dt.tzinfo) -> tuple[dt.date, dt.date]:
    """The first and last day (both included) the query asks for: ``from`` and
    ``to`` as YYYY-MM-DD, by default the last ``DEFAULT_DAYS`` days up to today."""
    today = dt.datetime.fromtimestamp(now_ms / 1000, tz).date()
    last = parse_date(args.get("to"), "to") or today
    first = parse_date(args.get("from"), "from") or last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadRange("backwards", "from must not be after to")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadRange("too_long", f"a report covers at most {MAX_DAYS} days")
    return first, last


def _midnight_ms(day: dt.date, tz: dt.tzinfo) -> int:
    return int(dt.datetime.combine(day, dt.time(), tz).timestamp() * 1000)


def station_row(view: Any, u: Any, to_ms: int) -> Row:
    """A station's line from its ``Uptime`` (hub/fleet/ledger.py)."""
    ended = [o for o in u.outages if o.end_ms is not None and o.end_ms <= to_ms]
    return Row("station", view.group, view.sid, view.name, u.up_ms, u.down_ms,
               u.unknown_ms, u.maintenance_ms, len(u.outages), len(ended),
               # MTTR over the outages that ended inside, at their full length (the
               # ledger's own mttr_s): an outage begun before the range still took
               # all of its time to repair.
               (u.mttr_s or 0.0) * len(ended) if u.mttr_s is not None else 0.0)


def report(hub: Any, first: dt.date, last: dt.date, group: str | None = None,
           groups: Iterable[str] | None = None, views: list[Any] | None = None) -> Report:
    """The report over [first 00:00, last+1 00:00) in the hub's time zone, capped at
    now (the future is neither up nor down). ``group`` keeps one group;
    ``groups`` (a maintenance user's) keeps only those."""
    tz = timezone_of(hub)
    from_ms = _midnight_ms(first, tz)
    to_ms = min(_midnight_ms(last + dt.timedelta(days=1), tz), hub.clock.ms())
    allowed = None if groups is None else set(groups)
    stations: list[Row] = []
    by_group: dict[str, Row] = {}
    fleet = Row("fleet", None, None, None)
    if to_ms > from_ms:
        views = [v for v in (hub.fleet.stations() if views is None else views)
                 if (group is None or v.group == group)
                 and (allowed is None or v.group in allowed)]
        # One read of the ledger for them all: five queries a station took 3 s
        # for 5 000 stations (docs/benchmarks.md).
        uptimes = hub.ledger.uptimes([v.sid for v in views], from_ms, to_ms)
        for view in views:
            row = station_row(view, uptimes[view.sid], to_ms)
            stations.append(row)
            key = view.group or ""
            if key not in by_group:
                by_group[key] = Row("group", view.group, None, None)
            by_group[key].add(row)
            fleet.add(row)
    return Report(from_ms, max(from_ms, to_ms), first, last, stations,
                  [by_group[k] for k in sorted(by_group)], fleet)


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def to_csv(rep: Report) -> str:
    """The report as CSV text with a byte order mark; groups and the fleet after the
    stations, each line saying which it is in ``kind``."""
    out = io.StringIO()
    out.write(BOM)
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for row in [*rep.stations, *rep.groups, rep.fleet]:
        w.writerow([row.kind, row.group or "", row.sid or "", _cell(row.name or ""),
                     rep.first_day.isoformat(), rep.last_day.isoformat(),
                     _num(row.availability, 6), _num(row.up_ms / 1000, 3),
                     _num(row.down_ms / 1000, 3), _num(row.unknown_ms / 1000, 3),
                     _num(row.maintenance_ms / 1000, 3), row.outages,
                     _num(row.mttr_s, 3)])
    return out.getvalue()


def _cell(text: str) -> str:
    """A name as a spreadsheet cell: one starting with = + - @ (or a tab or CR) would
    be read as a formula by Excel (CSV injection), so it gets a leading quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# -- views -------------------------------------------------------------------------------


def _hub() -> Any:
    return current_app.extensions["yizhan_console"].hub


def _query(hub: Any, views: list[Any] | None = None
           ) -> tuple[Report | None, str | None, str | None]:
    """(report, the group asked for, what is wrong with the query in the reader's
    words)."""
    group = request.args.get("group") or None
    if group is not None and len(group) > 64:
        return None, None, refusal(BadRange("bad_group", ""), RANGE_WORDS)
    try:
        first, last = day_range(request.args, hub.clock.ms(), timezone_of(hub))
    except BadRange as err:
        return None, group, refusal(err, RANGE_WORDS, MAX_DAYS)
    return report(hub, first, last, group, groups_seen(), views), group, None


@bp.get("/uptime")
@requires("ops")
def uptime():
    hub = _hub()
    views = hub.fleet.stations()  # a copy of each (by sid): taken once for the page
    rep, group, problem = _query(hub, views)
    groups = sorted({v.group for v in views if v.group})
    return render_template("console/uptime.html", rep=rep, group=group, problem=problem,
                           groups=groups, args=request.args), 400 if problem else 200


@bp.get("/uptime.csv")
@requires("ops")
def uptime_csv():
    hub = _hub()
    rep, _group, problem = _query(hub)
    if rep is None:
        return Response(problem or "bad query", 400, mimetype="text/plain")
    name = f"yizhan-uptime-{rep.first_day.isoformat()}-{rep.last_day.isoformat()}.csv"
    return Response(to_csv(rep).encode("utf-8"), 200, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
