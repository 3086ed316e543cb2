"""The refill round: stations in the order they will run out, and what to bring.

Time to empty is the forecaster's (hub/alerting/forecast.py, the same one the
``*_soon`` alerts use) for water and for charged banks; a station already
empty counts as 0, one without enough history to forecast goes after those
that have one. What to bring follows the last State (contract §5):

- charged banks: one for each slot with no bank and no fault (a slot that is
  free and works is one a charged bank fills), plus one for each faulty bank
  (it goes back to the depot and a good one takes its place);
- water: how much of the tank is empty (``1 - level``), or "fill" where the
  dispenser has only float switches (level null) and says ``low`` or ``empty``;
- cups: the State carries no cup count (§5 has none), so the round cannot say;
  a ``refilled`` event with ``what: cups`` is the only trace of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, current_app, render_template, request

from hub.console.audit import groups_seen
from hub.console.auth import requires
from hub.fleet.banks import bank_states

WHATS = ("water", "chargers")

bp = Blueprint("console_refill", __name__, url_prefix="/console")


def _bring(view: Any, threshold: int) -> dict[str, Any]:
    state = view.state or {}
    slots = (state.get("lockers") or {}).get("slots") or ()
    free = sum(1 for s in slots if not s.get("bank") and not s.get("fault"))
    banks = bank_states(state, threshold)
    faulty = banks["faulty"] if banks else 0
    dispenser = state.get("dispenser")
    water_fraction = None
    fill = False
    if dispenser:
        level = dispenser.get("level")
        if isinstance(level, (int, float)) and 0 <= level <= 1:
            water_fraction = round(1.0 - float(level), 2)
            fill = dispenser.get("level_state") in ("low", "empty")
        else:
            fill = dispenser.get("level_state") in ("low", "empty")
    return {"banks": free + faulty if slots else None, "faulty_banks": faulty,
            "ready": banks["ready"] if banks else None,
            "water_fraction": water_fraction, "water_fill": fill,
            "water_state": dispenser.get("level_state") if dispenser else None}


def _tte(hub: Any, view: Any, what: str, bring: dict[str, Any]) -> float | None:
    if what == "water" and bring["water_state"] == "empty":
        return 0.0
    if what == "chargers" and bring["ready"] == 0:
        return 0.0
    return hub.forecaster.time_to_empty(view.sid, what)


def round_of(hub: Any, group: str | None = None, groups: Iterable[str] | None = None,
             views: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every station (of ``group``; of ``groups`` for a maintenance user) with its
    ``water_s`` and ``chargers_s`` to empty, ``first_s`` the sooner of the two, and
    what to bring; the soonest first, unforecast ones last (by sid)."""
    threshold = int(hub.config.min_charge)
    allowed = None if groups is None else set(groups)
    out = []
    for view in hub.fleet.stations() if views is None else views:
        if group is not None and view.group != group:
            continue
        if allowed is not None and view.group not in allowed:
            continue
        bring = _bring(view, threshold)
        times = {what: _tte(hub, view, what, bring) for what in WHATS}
        known = [t for t in times.values() if t is not None]
        out.append({"sid": view.sid, "name": view.name, "group": view.group,
                    "online": view.online, "water_s": times["water"],
                    "chargers_s": times["chargers"],
                    "first_s": min(known) if known else None, **bring})
    out.sort(key=lambda s: (s["first_s"] is None, s["first_s"] or 0.0, s["sid"]))
    return out


@bp.get("/refill")
@requires("maintenance")
def refill():
    hub = current_app.extensions["yizhan_console"].hub
    group = (request.args.get("group") or None)
    if group is not None:
        group = group[:64]
    seen = groups_seen()
    views = hub.fleet.stations()  # a copy of each: taken once for the page
    stations = round_of(hub, group, seen, views)
    groups = sorted({v.group for v in views if v.group and (seen is None or v.group in seen)})
    totals = {"banks": sum(s["banks"] or 0 for s in stations),
              "water": sum(1 for s in stations if s["water_fill"])}
    return render_template("console/refill.html", stations=stations, group=group,
                           groups=groups, totals=totals, now=hub.clock.ms())
