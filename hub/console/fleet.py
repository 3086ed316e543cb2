"""The fleet page: every station with its condition, chargers ready, water and open
alerts, worst first; ``?group=`` shows one group."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request

from hub.console.auth import requires
from hub.console.health import CONDITIONS, LABELS, WATER, condition
from hub.fleet.banks import bank_states

bp = Blueprint("console_fleet", __name__, url_prefix="/console")

#: A ?group= longer than any group name is no group.
MAX_GROUP = 64


def severities_by_station(hub: Any) -> dict[str, dict[str, int]]:
    """``{sid: {severity: open alerts}}`` in one query."""
    out: dict[str, dict[str, int]] = {}
    for (sid, _rule, severity), n in hub.alerts.firing_counts().items():
        per = out.setdefault(sid, {})
        per[severity] = per.get(severity, 0) + n
    return out


def fleet_rows(hub: Any, group: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows worst first, every group's name) of the fleet, or of ``group``."""
    threshold = int(hub.config.min_charge)
    severities = severities_by_station(hub)
    rows, groups = [], set()
    for view in hub.fleet.stations():
        if view.group:
            groups.add(view.group)
        if group is not None and view.group != group:
            continue
        banks = bank_states(view.state, threshold)
        open_alerts = severities.get(view.sid, {})
        word = condition(view, banks, open_alerts)
        css, rank = CONDITIONS[word]
        rows.append({"sid": view.sid, "name": view.name, "group": view.group,
                     "condition": word, "label": LABELS[word], "css": css, "rank": rank,
                     "online": view.online, "since": view.since_ms,
                     "ready": banks["ready"] if banks is not None else None,
                     "banks": sum(banks.values()) if banks is not None else None,
                     "water": view.water(), "alerts": sum(open_alerts.values())})
    rows.sort(key=lambda r: (r["rank"], -r["alerts"], r["sid"]))
    return rows, sorted(groups)


@bp.get("/")
@requires("maintenance")
def fleet():
    hub = current_app.extensions["yizhan_console"].hub
    group = request.args.get("group") or None
    if group is not None and len(group) > MAX_GROUP:
        group = None
    rows, groups = fleet_rows(hub, group)
    counts = {word: 0 for word in CONDITIONS}
    for row in rows:
        counts[row["condition"]] += 1
    return render_template("console/fleet.html", rows=rows, groups=groups, group=group,
                           counts=counts, labels=LABELS, conditions=CONDITIONS,
                           water_words=WATER)
