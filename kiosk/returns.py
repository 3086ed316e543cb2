"""Returning a bank: instructions, then a thank-you with the loan time once the
agent has seen the bank come back (``GET /v1/returns?since=``).

    GET /return                     instructions; remembers the station clock now
    GET /return/status.json?since=  what the instructions page polls
    GET /return/thanks?since=       the thank-you (back to /return if nothing came)

No phone number is needed: the agent matches the bank to its loan by bank id.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for

from kiosk.context import kiosk

bp = Blueprint("returns", __name__, url_prefix="/return")


def _since() -> int:
    raw = request.args.get("since", "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        abort(400)
    return int(raw)


def _latest(since: int) -> dict[str, Any] | None:
    returns = kiosk().agent.returns(since)
    return max(returns, key=lambda r: r.get("returned_ts") or 0) if returns else None


@bp.get("")
def instructions():
    station = kiosk().agent.station()
    return render_template("return.html", since=int(station.get("ts") or 0),
                           empty=(station.get("slots") or {}).get("empty", 0))


@bp.get("/status.json")
def status():
    since = _since()
    latest = _latest(since)
    return {"returned": latest is not None,
            "thanks": url_for(".thanks", since=since) if latest else None}


@bp.get("/thanks")
def thanks():
    latest = _latest(_since())
    if latest is None:
        return redirect(url_for(".instructions"))
    return render_template("thanks.html", r=latest, idle=kiosk().config.done_idle)
