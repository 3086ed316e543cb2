"""The home screen: chargers ready, hot water, the station's name and clock, the
language switch; and the way back to it (``/reset``) that every other screen's
idle timer takes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from kiosk import borrow, returns, staff
from kiosk.agent import AgentUnavailable
from kiosk.context import kiosk
from kiosk.i18n import LANGUAGES

bp = Blueprint("home", __name__)

#: How many charge levels the home screen lists (the rest are "+N").
SHOW_CHARGES = 6


def home_view(station: dict[str, Any]) -> dict[str, Any]:
    """What the home screen shows, from the agent's ``GET /v1/station``."""
    chargers = station.get("chargers") or {}
    ready = [c.get("charge") for c in chargers.get("ready") or []]
    water = station.get("water")
    temp = water.get("temp_c") if water else None
    return {
        "name": (station.get("station") or {}).get("name"),
        "ready": len(ready),
        "charges": ready[:SHOW_CHARGES],
        "more": max(0, len(ready) - SHOW_CHARGES),
        "next_ready_at": chargers.get("next_ready_at"),
        "empty_slots": (station.get("slots") or {}).get("empty", 0),
        "locker_online": (station.get("online") or {}).get("locker", True),
        "maintenance": bool(station.get("maintenance")),
        # The agent cannot record a loan (its SD card is full or read-only).
        "paused": station.get("paused"),
        "water": None if water is None else {
            "state": "fault" if water.get("fault") else water.get("level_state") or "unknown",
            "temp": None if temp is None else round(temp),
        },
    }


@bp.get("/")
def index():
    k = kiosk()
    view = home_view(k.agent.station())
    # Another language than the default goes back to it after the idle time.
    lang_reset = k.config.idle if session.get("lang") not in (None, k.config.language) else 0
    return render_template("home.html", home=view,
                           station_name=view["name"] or k.config.station_name,
                           idle=0, lang_reset=lang_reset)


@bp.get("/reset")
def reset():
    """Back to a clean home screen: forget the rider's pending borrow, end a staff
    session. ``?idle=1`` (the idle timer) also goes back to the default language,
    for the next person at the screen."""
    k = kiosk()
    staff.end_session()
    # The rider ids kept in the kiosk's memory, not only the tickets in the cookie:
    # a pending borrow's, and a pending return's at a cabinet without bank ids.
    borrow.forget()
    returns.forget()
    lang = session.get("lang")
    session.clear()
    if request.args.get("idle") != "1" and lang in LANGUAGES and lang != k.config.language:
        session["lang"] = lang
    return redirect(url_for(".index"))


@bp.get("/lang/<code>")
def language(code: str):
    """The language switch (a display preference, so a plain link)."""
    if code not in LANGUAGES:
        abort(404)
    session["lang"] = code
    return redirect(url_for(".index"))


@bp.get("/healthz")
def healthz():
    """For the browser launcher and systemd: the kiosk answers; is the agent there?"""
    try:
        kiosk().agent.station()
        agent_ok = True
    except AgentUnavailable:
        agent_ok = False
    return {"ok": True, "agent": agent_ok}
