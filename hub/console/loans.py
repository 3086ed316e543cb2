"""The loans page: banks out with riders, the overdue first.

Overdue follows the lending policy the station was sent (contract §8: the
hub's ``policy:``, a group's override, a station's override), so a town given
``loan_hours: 4`` sees its loans late after 4 hours even though the hub's
default is 24. A return claimed at another station that no State confirmed in
time makes the loan late from then, as ``hub.loans.overdue`` counts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, render_template

from hub.console.audit import groups_seen
from hub.console.auth import requires
from hub.storage.schema import loans as loans_table
from hub.storage.schema import riders as riders_table

#: The most loans the page shows (overdue first): the count above says the rest.
PAGE_LIMIT = 1000
HOUR_MS = 3_600_000

bp = Blueprint("console_loans", __name__, url_prefix="/console")


def loan_hours_by_station(hub: Any, views: Iterable[Any]) -> dict[str, float]:
    """Each station's ``loan_hours`` as its Directory gives it."""
    pol = hub.directory.policies()
    fleet = pol["fleet"]["loan_hours"]
    groups = {g["group"]: g["loan_hours"] for g in pol["groups"] if "loan_hours" in g}
    stations = {s["sid"]: s["loan_hours"] for s in pol["stations"] if "loan_hours" in s}
    return {v.sid: stations.get(v.sid, groups.get(v.group, fleet)) for v in views}


def open_loans(hub: Any, groups: Iterable[str] | None = None) -> tuple[list[dict], int, int]:
    """(loans to show, open count, overdue count): each loan with ``due_at`` by its
    station's policy, ``overdue`` and ``overdue_s`` (0 when not), the station's name and the
    rider's masked number when the rider is registered."""
    now = hub.clock.ms()
    views = {v.sid: v for v in hub.fleet.stations()}
    hours = loan_hours_by_station(hub, views.values())
    fleet_hours = hub.directory.policies()["fleet"]["loan_hours"]
    allowed = None if groups is None else set(groups)
    t, r = loans_table, riders_table
    q = (sa.select(t.c.sid, t.c.bank, t.c.rider, t.c.slot, t.c.borrowed_ms,
                   t.c.claim_sid, t.c.confirm_by_ms, r.c.masked)
         .select_from(t.outerjoin(r, r.c.id == t.c.rider))
         .where(t.c.returned_ms.is_(None)))
    with hub.store.engine.connect() as conn:
        rows = list(conn.execute(q))
    out = []
    for row in rows:
        view = views.get(row.sid)
        if allowed is not None and (view is None or view.group not in allowed):
            continue
        due = row.borrowed_ms + int(hours.get(row.sid, fleet_hours) * HOUR_MS)
        if row.confirm_by_ms is not None:
            due = min(due, row.confirm_by_ms)
        out.append({"sid": row.sid, "station_name": view.name if view else None,
                    "group": view.group if view else None, "bank": row.bank,
                    "rider": row.rider, "masked": row.masked, "slot": row.slot,
                    "borrowed_at": row.borrowed_ms, "due_at": due,
                    "claim_sid": row.claim_sid,
                    "overdue": due < now, "overdue_s": max(0, now - due) / 1000})
    # The earliest due first: the longest overdue at the top, then the soonest due.
    out.sort(key=lambda loan: (loan["due_at"], loan["bank"] or ""))
    late = sum(1 for loan in out if loan["overdue"])
    return out[:PAGE_LIMIT], len(out), late


@bp.get("/loans")
@requires("ops")
def loans():
    hub = current_app.extensions["yizhan_console"].hub
    shown, total, late = open_loans(hub, groups_seen())
    return render_template("console/loans.html", loans=shown, total=total, late=late,
                           limit=PAGE_LIMIT)
