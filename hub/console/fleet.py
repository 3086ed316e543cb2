"""The fleet page: every station with its condition, chargers ready, water and open
alerts, worst first; ``?group=`` shows one group."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request, url_for

from hub.console import gettext, when
from hub.console.auth import requires
from hub.console.health import CONDITIONS, LABELS, WATER, condition
from hub.fleet.banks import bank_states
from yizhan.untrusted import decimal

bp = Blueprint("console_fleet", __name__, url_prefix="/console")

#: A ?group= longer than any group name is no group.
MAX_GROUP = 64
#: Rows per page: the worst 200 are what a person acts on, and a phone loads
#: 80 KiB, not the 2 MB of 5 000 rows; the counts above the table are the whole
#: fleet's (docs/benchmarks.md, "Console").
PAGE = 200


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
    pages = max(1, -(-len(rows) // PAGE))
    page = decimal(request.args.get("page", "1")[:6]) or 1
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * PAGE:page * PAGE]
    since: dict[int | None, str] = {}  # many stations share a minute: format each once
    for row in shown:
        ms = row["since"]
        minute = ms // 60_000 if ms is not None else None
        if minute not in since:
            since[minute] = when(ms)
        row["since_text"] = since[minute]
    # Words translated once per page, not once per row (5 000 rows: docs/benchmarks.md).
    words = {word: gettext(label) for word, label in LABELS.items()}
    water = {level: gettext(label) for level, label in WATER.items()}
    # Station ids are [a-z0-9-] (protocol.ids.check_sid): joined to the path as they are.
    station_url = url_for("console_station.station", sid="x")[:-1]
    return render_template("console/fleet.html", rows=shown, total=len(rows), groups=groups,
                           group=group, counts=counts, words=words, water=water,
                           conditions=CONDITIONS, station_url=station_url, page=page,
                           pages=pages, first=(page - 1) * PAGE + 1)
