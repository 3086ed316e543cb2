"""Returning a bank: instructions, then a thank-you with the loan time once the
agent has seen the bank come back (``GET /v1/returns?since=``).

    GET /return                     instructions; remembers the station clock now
    GET /return/status.json?since=  what the instructions page polls
    GET /return/thanks?since=       the thank-you (back to /return if nothing came)

No phone number is needed where the cabinet reads bank ids: the agent matches
the bank to its loan by its id. Where it cannot (``return_by: rider`` in
``GET /v1/station``: a lock-control cabinet, docs/hardware.md), the rider types
the number they borrowed with, as for a borrow, and a slot opens for them:

    GET  /return                    phone keypad (return_by: rider)
    POST /return                    phone -> rider id -> agent return claim
    POST /return/retry              the same rider again (after jammed, busy, ...)
    GET  /return/claim/<id>         progress: opening | open | returned | failed
    GET  /return/claim/<id>/status.json   what the progress page polls

The number is handled as :mod:`kiosk.borrow` handles it: checked, turned into
the rider id and dropped; between screens only a ticket is in the cookie.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for

from kiosk.agent import CLAIM_RE, AgentError
from kiosk.borrow import phone_problem
from kiosk.context import kiosk
from kiosk.steps import RiderTicket, slot_progress
from protocol.ids import mask_phone, rider_id

bp = Blueprint("returns", __name__, url_prefix="/return")

_PENDING = "return"
#: Failures after which "try again" makes sense for the same rider.
RETRYABLE = frozenset({"jammed", "busy", "bad_slot", "board_offline", "not_returned"})


def _since() -> int:
    raw = request.args.get("since", "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        abort(400)
    return int(raw)


def _latest(since: int) -> dict[str, Any] | None:
    returns = kiosk().agent.returns(since)
    return max(returns, key=lambda r: r.get("returned_ts") or 0) if returns else None


_rider = RiderTicket(_PENDING)
_pending, _keep = _rider.get, _rider.keep


def forget() -> None:
    _rider.forget()


@bp.get("")
def instructions():
    station = kiosk().agent.station()
    empty = (station.get("slots") or {}).get("empty", 0)
    if station.get("return_by") == "rider":
        forget()
        return render_template("return_phone.html", empty=empty, error=None, count=None)
    return render_template("return.html", since=int(station.get("ts") or 0), empty=empty)


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


# -- a cabinet that cannot read bank ids: the rider says who they are ------------------


@bp.post("")
def submit_phone():
    raw = request.form.get("phone", "").strip()
    problem = phone_problem(raw)
    if problem is not None:
        # Never echoed: the number would be in the response.
        count = len(raw) if problem in ("too_short", "too_long") else None
        return render_template("return_phone.html", error=problem, count=count,
                               empty=None), 400
    k = kiosk()
    rider, mask = rider_id(k.config.fleet_key, raw, k.config.rider_ids), mask_phone(raw)
    del raw
    _keep(rider, mask)
    return _start(rider)


def _start(rider: str):
    k = kiosk()
    # A claim opens a slot: as many a minute from one screen as borrows may.
    wait = k.limiter.acquire()
    if wait > 0:
        return render_template("wait.html", seconds=math.ceil(wait)), 429
    claim = k.agent.claim_return(rider)
    p = _pending()
    if p is not None:
        _keep(p.rider, p.mask, claim["id"])
    return redirect(url_for(".claim_progress", claim_id=claim["id"]))


@bp.post("/retry")
def retry():
    p = _pending()
    if p is None:
        return redirect(url_for(".instructions"))
    return _start(p.rider)


def _claim(claim_id: str) -> dict[str, Any]:
    if not CLAIM_RE.match(claim_id):
        raise AgentError(404, "not_found", "no such return", {})
    return kiosk().agent.return_claim(claim_id)


@bp.get("/claim/<claim_id>")
def claim_progress(claim_id: str):
    k = kiosk()
    c = _claim(claim_id)
    p = _pending()
    mine = p is not None and p.attempt == claim_id
    state, reason = c["state"], c.get("reason")
    if state == "returned" or (state == "failed" and reason not in RETRYABLE):
        forget()
    if state == "returned":
        r = {"slot": c.get("slot"), "charge": c.get("charge"), "duration_s": c.get("duration_s")}
        return render_template("thanks.html", r=r, idle=k.config.done_idle)
    idle = 0 if state in ("opening", "open") else k.config.idle
    return render_template("return_progress.html", c=c, view=slot_progress(c), idle=idle,
                           mask=p.mask if mine else None,
                           can_retry=mine and state == "failed" and reason in RETRYABLE)


@bp.get("/claim/<claim_id>/status.json")
def claim_status(claim_id: str):
    return slot_progress(_claim(claim_id))
