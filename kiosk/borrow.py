"""Borrowing: the phone number on a keypad, the PIN where lending is ``registered``,
then the slot that opens and the board's word that the bank was taken.

    GET  /borrow                    phone keypad
    POST /borrow                    phone -> rider id -> agent borrow
    GET  /borrow/pin, POST          PIN keypad (registered lending)
    POST /borrow/retry              the same rider again (after jammed, busy, ...)
    GET  /borrow/<attempt>          progress: releasing | open | taken | failed
    GET  /borrow/<attempt>/status.json   what the progress page polls

The phone number exists only inside :func:`submit_phone`: it is checked, turned
into the rider id with the fleet key and dropped. Between steps the kiosk keeps
the rider id and the masked number (``138****1234``) for the PIN screen in its
own memory (``kiosk.riders``), the session cookie only a random ticket to them,
and forgets both once the bank is taken, the attempt cannot be retried, or the
screen goes home.
"""

from __future__ import annotations

import math
import re
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from kiosk.agent import ATTEMPT_RE, AgentError
from kiosk.context import kiosk
from kiosk.steps import RiderTicket, slot_progress
from protocol.ids import PHONE_RE, mask_phone, rider_id

bp = Blueprint("borrow", __name__, url_prefix="/borrow")

PIN_RE = re.compile(r"^[0-9]{4,8}\Z")  # docs/agent-api.md: 4 to 8 digits
_PENDING = "borrow"
#: Failures after which "try again" makes sense for the same rider.
RETRYABLE = frozenset({"jammed", "busy", "not_taken", "bad_slot", "board_offline",
                       "no_ready", "maintenance", "bad_pin"})


def phone_problem(raw: str) -> str | None:
    """Why ``raw`` is not a number the keypad could have typed, or None.

    The keypad types ASCII digits only, so anything else is refused as
    ``not_digits``; the rest follows contract §1 (``^1[3-9]\\d{9}$``).
    """
    if raw == "":
        return "empty"
    if not (raw.isascii() and raw.isdigit()):
        return "not_digits"
    if len(raw) < 11:
        return "too_short"
    if len(raw) > 11:
        return "too_long"
    if not PHONE_RE.match(raw):
        return "bad_prefix"
    return None


# -- the rider between steps: a ticket in the cookie, the rider id in the kiosk ------


_rider = RiderTicket(_PENDING)
_pending, _keep = _rider.get, _rider.keep


def forget() -> None:
    _rider.forget()


def _station_notice() -> dict[str, Any]:
    """Say up front what the agent would refuse anyway (the agent still decides)."""
    st = kiosk().agent.station()
    chargers = st.get("chargers") or {}
    notice = None
    if st.get("maintenance"):
        notice = "maintenance"
    elif st.get("paused"):
        notice = "paused"
    elif not (st.get("online") or {}).get("locker", True):
        notice = "board_offline"
    elif not chargers.get("ready"):
        notice = "no_ready"
    return {"notice": notice, "ready_at": chargers.get("next_ready_at")}


# -- phone ---------------------------------------------------------------------------


@bp.get("")
def phone():
    forget()
    return render_template("borrow_phone.html", **_station_notice())


@bp.post("")
def submit_phone():
    raw = request.form.get("phone", "").strip()
    problem = phone_problem(raw)
    if problem is not None:
        # The page never echoes what was typed: the number would be in the response.
        count = len(raw) if problem in ("too_short", "too_long") else None
        return render_template("borrow_phone.html", error=problem, count=count,
                               notice=None, ready_at=None), 400
    k = kiosk()
    # With ``rider_ids: scrypt`` this costs ~0.1-0.5 s: once per borrow, by design.
    rider, mask = rider_id(k.config.fleet_key, raw, k.config.rider_ids), mask_phone(raw)
    del raw
    _keep(rider, mask)
    return _start(rider, None)


def _start(rider: str, pin: str | None):
    k = kiosk()
    wait = k.limiter.acquire()
    if wait > 0:
        return render_template("wait.html", seconds=math.ceil(wait)), 429
    attempt = k.agent.borrow(rider, pin)
    p = _pending()
    if attempt["state"] == "failed" and attempt.get("reason") == "pin_required":
        k.limiter.refund()  # a step of the registered flow, not an attempt
        return redirect(url_for(".pin"))
    if p is not None:
        _keep(p.rider, p.mask, attempt["id"])
    return redirect(url_for(".progress", attempt_id=attempt["id"]))


# -- PIN -------------------------------------------------------------------------------


@bp.get("/pin")
def pin():
    p = _pending()
    if p is None:
        return redirect(url_for(".phone"))
    return render_template("borrow_pin.html", mask=p.mask)


@bp.post("/pin")
def submit_pin():
    p = _pending()
    if p is None:
        return redirect(url_for(".phone"))
    value = request.form.get("pin", "")
    if not PIN_RE.match(value):
        return render_template("borrow_pin.html", mask=p.mask, error="pin_format"), 400
    return _start(p.rider, value)


@bp.post("/retry")
def retry():
    p = _pending()
    if p is None:
        return redirect(url_for(".phone"))
    return _start(p.rider, None)


# -- progress --------------------------------------------------------------------------


def _attempt(attempt_id: str) -> dict[str, Any]:
    if not ATTEMPT_RE.match(attempt_id):
        raise AgentError(404, "not_found", "no such attempt", {})
    return kiosk().agent.attempt(attempt_id)


@bp.get("/<attempt_id>")
def progress(attempt_id: str):
    k = kiosk()
    a = _attempt(attempt_id)
    p = _pending()
    mine = p is not None and p.attempt == attempt_id
    state, reason = a["state"], a.get("reason")
    if state == "taken" or (state == "failed" and reason not in RETRYABLE):
        forget()  # nothing more to do for this rider: drop the rider id
    max_per_rider = None
    if reason == "limit":
        max_per_rider = (k.agent.station().get("lending") or {}).get("max_per_rider")
    if state in ("releasing", "open"):
        idle = 0  # the page keeps itself alive while the slot is open
    elif state == "taken":
        idle = k.config.done_idle
    else:
        idle = k.config.idle
    return render_template(
        "borrow_progress.html", a=a, view=slot_progress(a), idle=idle,
        mask=p.mask if mine else None,
        can_retry=mine and state == "failed" and reason in RETRYABLE and reason != "bad_pin",
        can_pin=mine and reason == "bad_pin", max_per_rider=max_per_rider)


@bp.get("/<attempt_id>/status.json")
def status(attempt_id: str):
    # No session writes here: a late poll must not overwrite the cookie of a newer page.
    return slot_progress(_attempt(attempt_id))
