"""The station page: its slots, dispenser, doors, recent events and 90-day uptime,
and the remote unlock of a slot with a reason (audited)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template

from hub.console.auth import requires

bp = Blueprint("console_station", __name__, url_prefix="/console")


@bp.get("/stations/<sid>")
@requires("maintenance")
def station(sid: str):
    hub = current_app.extensions["yizhan_console"].hub
    view = hub.fleet.get(sid)
    if view is None:
        abort(404)
    return render_template("console/station.html", view=view)
