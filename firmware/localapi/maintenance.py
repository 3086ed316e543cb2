"""``/v1/maintenance``: a staff member logs in with a PIN, sees the cabinet, releases
slots to restock or clear a fault, confirms refills, and logs out."""

from __future__ import annotations

from flask import Blueprint, jsonify

from firmware.hardware.board import BoardOffline
from firmware.lending import MaintenanceSession, PinRefused, SessionEnded, UnknownSession
from firmware.localapi import fields
from firmware.localapi.context import local_api
from firmware.localapi.errors import ApiError
from protocol.messages import REFILL_WHAT

bp = Blueprint("maintenance", __name__)


def _session(session_id: str) -> MaintenanceSession:
    try:
        return local_api().lending.session(session_id)
    except UnknownSession:
        raise ApiError(404, "unknown_session", f"no maintenance session {session_id}") \
            from None


@bp.post("/v1/maintenance")
def start():
    data = fields.body()
    staff = data.get("staff")
    if not isinstance(staff, str) or not 1 <= len(staff) <= 64:
        raise ApiError(400, "missing_field" if staff in (None, "") else "bad_staff",
                       "staff must be a staff id of 1 to 64 chars")
    pin = fields.pin(data, required=True)
    try:
        session = local_api().lending.start_maintenance(staff, pin)
    except PinRefused as err:
        if err.reason == "locked_out":
            raise ApiError(429, "locked_out", "too many wrong PINs; wait",
                           locked_until=err.locked_until) from None
        raise ApiError(403, "bad_pin", "wrong staff id or PIN",
                       tries_left=err.tries_left) from None
    return jsonify({"session": session.to_dict()}), 201


@bp.get("/v1/maintenance/<session_id>")
def view(session_id: str):
    session = _session(session_id)
    section = local_api().lending.locker.section()
    slots = [s.to_dict() for s in section.slots]
    return jsonify({
        "session": session.to_dict(),
        "online": section.online,
        "slots": slots,
        "faults": [{"slot": s["slot"], "fault": s["fault"]} for s in slots if s["fault"]],
    })


@bp.delete("/v1/maintenance/<session_id>")
def end(session_id: str):
    _session(session_id)
    session = local_api().lending.end_maintenance(session_id)
    return jsonify({"session": session.to_dict()})


@bp.post("/v1/maintenance/<session_id>/release")
def release(session_id: str):
    session = _session(session_id)
    data = fields.body()
    slot = data.get("slot")
    if slot == "empty":
        run = session.release_empty
    elif isinstance(slot, int) and not isinstance(slot, bool) and slot >= 1:
        known = {r.slot for r in local_api().lending.locker.slots()}
        if known and slot not in known:
            raise ApiError(400, "bad_slot", f"no slot {slot} in this cabinet")

        def run():
            return [session.release_slot(slot)]
    else:
        raise ApiError(400, "bad_slot", 'slot must be a slot number or "empty"')
    try:
        outcomes = run()
    except SessionEnded as err:
        raise ApiError(409, "session_ended", str(err)) from None
    except BoardOffline as err:
        raise ApiError(503, "board_offline", str(err)) from None
    except ValueError as err:
        raise ApiError(400, "bad_slot", str(err)) from None
    return jsonify({"released": [o.to_dict() for o in outcomes]})


@bp.post("/v1/maintenance/<session_id>/refill")
def refill(session_id: str):
    session = _session(session_id)
    what = fields.body().get("what")
    if what not in REFILL_WHAT:
        raise ApiError(400, "bad_what",
                       f"what must be one of {', '.join(sorted(REFILL_WHAT))}")
    try:
        session.confirm_refill(what)
    except SessionEnded as err:
        raise ApiError(409, "session_ended", str(err)) from None
    return jsonify({"refilled": what, "session": session.to_dict()})
