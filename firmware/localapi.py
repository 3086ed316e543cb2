"""The kiosk's HTTP API on the station itself (docs/agent-api.md).

The touchscreen kiosk talks only to this API, never to the hub, so a rider can
borrow while the station is offline. It listens on loopback (the agent serves
it with waitress on ``127.0.0.1:8701``) or on a Unix socket, and refuses any
caller that is not on this machine.

    app = create_local_api(lending, state_provider, directory)
    waitress.serve(app, host="127.0.0.1", port=8701)            # or unix_socket=...

    POST /v1/borrow {"rider": "r:5e8f0c1d2e3f4a5b6c7d8e9f"}  -> 202 {"attempt": {...}}
    GET  /v1/borrow/b-1f2e3d4c5b6a7988                       -> 200 {"attempt": {...}}

Riders are named by rider id only (contract §1): the kiosk hashes the phone
number before it calls, and a phone number sent here is refused. Every bad
request gets a 4xx with ``{"error": {"code", "message"}}`` and changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from firmware.directory import DirectoryStore
from firmware.hardware.board import BoardOffline
from firmware.lending import (
    PIN_RE,
    Lending,
    PinRefused,
    SessionEnded,
    UnknownSession,
)
from protocol.ids import RIDER_RE
from protocol.messages import REFILL_WHAT

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PORT", "ApiError", "create_local_api"]

DEFAULT_PORT = 8701
_MAX_BODY = 16 * 1024

#: ``state_provider()`` returns what the API cannot know from Lending: a mapping
#: with ``sid`` and ``name`` (the station), ``hub_online`` (the MQTT link is up)
#: and ``dispenser`` (a protocol.messages.Dispenser, its dict, or None).
StateProvider = Callable[[], Mapping[str, Any]]


class ApiError(Exception):
    """A refusal with its HTTP status, error code and message (and extra fields)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(status: int, code: str, message: str, **extra: Any):
    body = {"error": {"code": code, "message": message, **extra}}
    return jsonify(body), status


def _is_local(addr: str | None) -> bool:
    if not addr:
        return False
    if addr == "localhost":  # waitress names a Unix-socket peer so
        return True
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object "
                                        "(Content-Type: application/json)")
    return data


def _rider(data: Mapping[str, Any]) -> str:
    if "rider" not in data or data["rider"] in (None, ""):
        raise ApiError(400, "missing_field", "rider is required (a rider id, r: + 24 hex)")
    rider = data["rider"]
    if not isinstance(rider, str) or not RIDER_RE.match(rider):
        digits = isinstance(rider, (str, int)) and str(rider).lstrip("+").replace(" ", "")
        if digits and digits.isdigit():
            raise ApiError(400, "bad_rider", "send the rider id (r: + 24 hex), "
                                             "never the phone number")
        raise ApiError(400, "bad_rider", "rider must be a rider id: r: + 24 lowercase hex")
    return rider


def _pin(data: Mapping[str, Any], required: bool) -> str | None:
    pin = data.get("pin")
    if pin is None:
        if required:
            raise ApiError(400, "missing_field", "pin is required")
        return None
    if not isinstance(pin, str) or not PIN_RE.match(pin):
        raise ApiError(400, "bad_pin_format", "pin must be a string of 4 to 8 digits")
    return pin


def _section(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def create_local_api(lending: Lending, state_provider: StateProvider,
                     directory: DirectoryStore, *, unix_socket: bool = False) -> Flask:
    """The kiosk's API as a Flask app; serve it on loopback or a Unix socket.

    ``unix_socket=True`` accepts every caller: the socket file's permissions
    are then the gate. Otherwise a caller whose address is not loopback gets 403.
    """
    app = Flask("yizhan.localapi")
    app.config["MAX_CONTENT_LENGTH"] = _MAX_BODY
    app.json.ensure_ascii = False  # station names are Chinese
    app.json.sort_keys = False

    @app.before_request
    def only_this_machine():
        if not unix_socket and not _is_local(request.remote_addr):
            log.warning("local API refused a call from %s", request.remote_addr)
            return _error(403, "forbidden", "the local API answers this machine only")
        return None

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return _error(err.status, err.code, err.message, **err.extra)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(err.code or 0, "bad_request")
        return _error(err.code or 400, code, err.description or code)

    @app.errorhandler(Exception)
    def crash(err: Exception):
        log.exception("local API failed on %s %s", request.method, request.path)
        return _error(500, "internal", "the station could not answer; try again")

    # -- the station ---------------------------------------------------------------

    @app.get("/v1/station")
    def station():
        view = dict(state_provider() or {})
        policy = directory.policy
        readiness = lending.readiness()
        counts = {"total": 0, "ready": 0, "charging": 0, "faulty": 0, "empty": 0}
        for r in lending.locker.slots():
            counts["total"] += 1
            if not r.present:
                counts["empty"] += 1
            elif r.fault is not None:
                counts["faulty"] += 1
            elif r.charge is not None and r.charge >= policy.min_charge:
                counts["ready"] += 1
            else:
                counts["charging"] += 1
        dispenser = _section(view.get("dispenser"))
        water = None if dispenser is None else {
            "level_state": dispenser.get("level_state"), "level": dispenser.get("level"),
            "temp_c": dispenser.get("temp_c"), "fault": dispenser.get("fault"),
        }
        maintenance = lending.maintenance
        return jsonify({
            "station": {"sid": view.get("sid"), "name": view.get("name")},
            "ts": lending.clock.ms(),
            "online": {"hub": bool(view.get("hub_online", False)),
                       "locker": readiness.online},
            "lending": policy.to_dict(),
            "chargers": {
                "ready": [{"slot": s, "charge": c} for s, c in readiness.ready],
                "next_ready_at": readiness.next_ready_at,
            },
            "slots": counts,
            "water": water,
            "maintenance": maintenance is not None,
            # "storage": the journal cannot record a loan (SD card full or
            # read-only); borrowing is refused until it can, returns go on.
            "paused": lending.paused,
            "storage": lending.journal.fault,
        })

    # -- borrowing ------------------------------------------------------------------

    @app.post("/v1/borrow")
    def borrow():
        data = _body()
        rider = _rider(data)
        pin = _pin(data, required=False)
        attempt = lending.borrow(rider, pin)
        return jsonify({"attempt": attempt.to_dict()}), 202

    @app.get("/v1/borrow/<attempt_id>")
    def borrow_progress(attempt_id: str):
        attempt = lending.attempt(attempt_id)
        if attempt is None:
            raise ApiError(404, "unknown_attempt", f"no borrow attempt {attempt_id}")
        return jsonify({"attempt": attempt.to_dict()})

    @app.get("/v1/returns")
    def returns():
        raw = request.args.get("since", "0")
        try:
            since = int(raw)
        except ValueError:
            raise ApiError(400, "bad_since", "since must be integer milliseconds") from None
        if since < 0:
            raise ApiError(400, "bad_since", "since must be >= 0")
        return jsonify({"returns": [r.to_dict() for r in lending.recent_returns(since)]})

    # -- maintenance ------------------------------------------------------------------

    def _session(session_id: str):
        try:
            return lending.session(session_id)
        except UnknownSession:
            raise ApiError(404, "unknown_session", f"no maintenance session {session_id}") \
                from None

    @app.post("/v1/maintenance")
    def start_maintenance():
        data = _body()
        staff = data.get("staff")
        if not isinstance(staff, str) or not 1 <= len(staff) <= 64:
            raise ApiError(400, "missing_field" if staff in (None, "") else "bad_staff",
                           "staff must be a staff id of 1 to 64 chars")
        pin = _pin(data, required=True)
        try:
            session = lending.start_maintenance(staff, pin)
        except PinRefused as err:
            if err.reason == "locked_out":
                raise ApiError(429, "locked_out", "too many wrong PINs; wait",
                               locked_until=err.locked_until) from None
            raise ApiError(403, "bad_pin", "wrong staff id or PIN",
                           tries_left=err.tries_left) from None
        return jsonify({"session": session.to_dict()}), 201

    @app.get("/v1/maintenance/<session_id>")
    def maintenance_view(session_id: str):
        session = _session(session_id)
        section = lending.locker.section()
        slots = [s.to_dict() for s in section.slots]
        return jsonify({
            "session": session.to_dict(),
            "online": section.online,
            "slots": slots,
            "faults": [{"slot": s["slot"], "fault": s["fault"]} for s in slots if s["fault"]],
        })

    @app.delete("/v1/maintenance/<session_id>")
    def end_maintenance(session_id: str):
        _session(session_id)
        session = lending.end_maintenance(session_id)
        return jsonify({"session": session.to_dict()})

    @app.post("/v1/maintenance/<session_id>/release")
    def release(session_id: str):
        session = _session(session_id)
        data = _body()
        slot = data.get("slot")
        if slot == "empty":
            run = session.release_empty
        elif isinstance(slot, int) and not isinstance(slot, bool) and slot >= 1:
            known = {r.slot for r in lending.locker.slots()}
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

    @app.post("/v1/maintenance/<session_id>/refill")
    def refill(session_id: str):
        session = _session(session_id)
        data = _body()
        what = data.get("what")
        if what not in REFILL_WHAT:
            raise ApiError(400, "bad_what",
                           f"what must be one of {', '.join(sorted(REFILL_WHAT))}")
        try:
            session.confirm_refill(what)
        except SessionEnded as err:
            raise ApiError(409, "session_ended", str(err)) from None
        return jsonify({"refilled": what, "session": session.to_dict()})

    return app
