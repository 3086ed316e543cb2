"""The report as CSV: one line a station, then each town, then the total, with
the period before next to each figure that compares."""

from __future__ import annotations

import csv
import datetime as dt
import io

from hub.reports.figures import Figures, Report

#: Excel and LibreOffice read the byte order mark as "this is UTF-8", so station
#: names in Chinese stay readable.
BOM = "\ufeff"
COLUMNS = ("kind", "group", "sid", "name", "period", "from", "to", "visits", "visits_before",
           "lent", "lent_before", "returned", "returned_before", "cups", "cups_before",
           "litres", "litres_before", "availability",
           "availability_before", "up_s", "down_s", "unknown_s", "maintenance_s", "outages",
           "mttr_s", "water_low", "refill_mean_s", "refill_max_s", "waiting_for_water",
           "chargers_low", "charger_refill_mean_s", "charger_refill_max_s",
           "waiting_for_chargers")


def to_csv(rep: Report, tz: dt.tzinfo) -> str:
    out = io.StringIO()
    out.write(BOM)
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS)
    first = rep.period.first.isoformat()
    # The last day the figures cover: the period's, or today's while it runs.
    last = dt.datetime.fromtimestamp((rep.to_ms - 1) / 1000, tz).date().isoformat() \
        if rep.to_ms > rep.from_ms else first
    for row in [*rep.stations, *rep.groups, rep.fleet]:
        prev = rep.previous_of(row) or Figures(row.kind, row.group, row.sid, row.name)
        w.writerow([row.kind, _cell(row.group or ""), row.sid or "", _cell(row.name or ""),
                    rep.period.key, first, last, row.visits, prev.visits, row.lent, prev.lent,
                    row.returned, prev.returned, _int(row.cups), _int(prev.cups),
                    _num(row.litres, 3), _num(prev.litres, 3),
                    _num(row.availability, 6), _num(prev.availability, 6),
                    _num(row.up_ms / 1000, 3), _num(row.down_ms / 1000, 3),
                    _num(row.unknown_ms / 1000, 3), _num(row.maintenance_ms / 1000, 3),
                    row.outages, _num(row.mttr_s, 3), row.low_runs,
                    _num(row.refill_mean_s, 3), _num(row.refill_max_s, 3), row.waiting,
                    row.charger_low_runs, _num(row.charger_refill_mean_s, 3),
                    _num(row.charger_refill_max_s, 3), row.charger_waiting])
    return out.getvalue()


def _int(value: int | None) -> str:
    """Empty where not measured (no flow meter), which is not 0."""
    return "" if value is None else str(value)


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    """A name as a spreadsheet cell: one starting with = + - @ (or a tab or CR) would
    be read as a formula by Excel (CSV injection), so it gets a leading quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
