"""The OpenAPI 3.1 description of the station's local API (docs/agent-api.md).

Served at ``GET /v1/openapi.json`` and written as Python data, as the hub's is
(hub/http/openapi.py), so the limits it states are the very constants the
views check (a PIN's digits, a staff id's length, a slot's range, the refill
kinds) and ``tests/test_agent_localapi_fuzz.py`` can hold a running agent to
it with schemathesis: every answer listed and of its schema, a valid request
never refused, an invalid one never taken, never a 5xx.

Relations JSON Schema cannot state are said in words: a slot named in a
release must be one of this cabinet's (``400 bad_slot`` otherwise), and ids in
a path are the ones this station handed out (``404`` otherwise).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from firmware.lending import FAIL_REASONS as BORROW_FAILS
from firmware.returning import FAIL_REASONS as CLAIM_FAILS
from protocol import load_schema
from protocol.messages import MAX_SLOT, REFILL_WHAT
from yizhan.untrusted import MAX_DIGITS

__all__ = ["PATH", "document"]

#: Where the agent serves the document.
PATH = "/v1/openapi.json"
#: A staff id's length, as ``POST /v1/maintenance`` checks it.
STAFF_MAX = 64
#: A PIN as riders and staff type it (firmware.lending.PIN_RE).
PIN = {"type": "string", "pattern": "^[0-9]{4,8}$", "example": "4821"}
#: A rider id (contract §1; protocol.ids.RIDER_RE): never a phone number.
RIDER = {"type": "string", "pattern": "^r:[0-9a-f]{24}$",
         "example": "r:5e8f0c1d2e3f4a5b6c7d8e9f"}
MS = {"type": "integer", "description": "Unix time in milliseconds (station clock)"}
MS_OR_NULL = {"type": ["integer", "null"], "description": MS["description"]}
INT_OR_NULL = {"type": ["integer", "null"]}
SLOT_NO = {"type": "integer", "minimum": 1, "maximum": MAX_SLOT}
SLOT_OR_NULL = {**SLOT_NO, "type": ["integer", "null"]}
CHARGE_OR_NULL = {"type": ["integer", "null"], "minimum": 0, "maximum": 100}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": schema, "example": example}}}


def _id_param(name: str, prefix: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "description": f"{what} id as this station handed it out "
                           f"({prefix}- and 16 hex); any other: 404",
            "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                       "example": f"{prefix}-9f6e88d3c9bf6d8a"}}


def _slot() -> dict[str, Any]:
    """Contract §5's slot object, from the protocol's own State schema."""
    return copy.deepcopy(load_schema("state")["$defs"]["slot"])


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "description": "machine-readable: bad_json, "
                 "missing_field, bad_rider, bad_pin_format, bad_staff, bad_slot, bad_what, "
                 "bad_since, bad_pin, forbidden, bad_host, unknown_attempt, unknown_claim, "
                 "unknown_session, not_found, method_not_allowed, session_ended, too_large, "
                 "locked_out, internal, board_offline"},
        "message": {"type": "string", "description": "for people; never a phone number"},
        "tries_left": {"type": ["integer", "null"], "minimum": 0,
                       "description": "bad_pin: wrong PINs left before a lockout"},
        "locked_until": {**MS_OR_NULL, "description": "locked_out: when it ends"},
    }, required=["code", "message"])}),
    "Station": _obj({
        "station": _obj({"sid": {"type": ["string", "null"]},
                         "name": {"type": ["string", "null"]}}),
        "ts": MS,
        "online": _obj({"hub": {"type": "boolean"}, "locker": {"type": "boolean"}}),
        "lending": _obj({
            "lending": {"enum": ["open", "registered"]},
            "min_charge": {"type": "integer", "minimum": 0, "maximum": 100},
            "max_per_rider": {"type": "integer", "minimum": 0},
            "loan_hours": {"type": "integer", "minimum": 1},
        }),
        "chargers": _obj({
            "ready": {"type": "array", "description": "best first",
                      "items": _obj({"slot": SLOT_NO,
                                     "charge": {"type": "integer", "minimum": 0,
                                                "maximum": 100}})},
            "next_ready_at": MS_OR_NULL,
        }),
        "slots": _obj({k: {"type": "integer", "minimum": 0}
                       for k in ("total", "ready", "charging", "faulty", "empty")}),
        "water": {"oneOf": [{"type": "null"}, _obj({
            "level_state": {"type": ["string", "null"]},
            "level": {"type": ["number", "null"]},
            "temp_c": {"type": ["number", "null"]},
            "fault": {"type": ["string", "null"]},
        })], "description": "null at a station without a dispenser"},
        "maintenance": {"type": "boolean", "description": "staff are logged in"},
        "return_by": {"enum": ["bank", "rider"]},
        "paused": {"enum": ["storage", None]},
        "storage": {"enum": ["full", "read_only", "failing", None]},
    }),
    "Attempt": _obj({
        "id": {"type": "string"},
        "rider": RIDER,
        "state": {"enum": ["releasing", "open", "taken", "failed"]},
        "reason": {"enum": [*sorted(BORROW_FAILS), None]},
        "slot": SLOT_OR_NULL,
        "bank": {"type": ["string", "null"]},
        "charge": CHARGE_OR_NULL,
        "created": MS,
        "updated": MS,
        "open_until": MS_OR_NULL,
        "ready_at": MS_OR_NULL,
        "tries_left": INT_OR_NULL,
        "locked_until": MS_OR_NULL,
    }),
    "Claim": _obj({
        "id": {"type": "string"},
        "rider": RIDER,
        "state": {"enum": ["opening", "open", "returned", "failed"]},
        "reason": {"enum": [*sorted(CLAIM_FAILS), None]},
        "slot": SLOT_OR_NULL,
        "created": MS,
        "updated": MS,
        "open_until": MS_OR_NULL,
        "returned_ts": MS_OR_NULL,
        "borrowed_ts": MS_OR_NULL,
        "duration_s": INT_OR_NULL,
        "charge": CHARGE_OR_NULL,
        "loan_closed": {"type": "boolean"},
    }),
    "Return": _obj({
        "slot": SLOT_NO,
        "bank": {"type": ["string", "null"]},
        "charge": CHARGE_OR_NULL,
        "rider": {**RIDER, "type": ["string", "null"]},
        "returned_ts": MS,
        "borrowed_ts": MS_OR_NULL,
        "duration_s": INT_OR_NULL,
    }),
    "Session": _obj({
        "id": {"type": "string"},
        "staff": {"type": "string", "minLength": 1, "maxLength": STAFF_MAX},
        "active": {"type": "boolean"},
        "started": MS,
        "ended": MS_OR_NULL,
        "end_reason": {"enum": ["ended", "idle", "replaced", "restart", None]},
        "banks_in": {"type": "integer", "minimum": 0},
        "banks_out": {"type": "integer", "minimum": 0},
        "banks_confirmed": {"type": "boolean"},
    }),
    "Slot": _slot(),
}

_SESSION = {"session": _ref("Session")}
_UNKNOWN_SESSION = {"404": _error("unknown_session")}
_ENDED = {"409": _error("session_ended: the session was logged out, idle or replaced")}

PATHS: dict[str, Any] = {
    PATH: {"get": {
        "operationId": "getOpenApi",
        "summary": "This document.",
        "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
    }},
    "/v1/station": {"get": {
        "operationId": "getStation",
        "summary": "What the kiosk's home screen shows.",
        "responses": {"200": _json(_ref("Station"), "The station now.")},
    }},
    "/v1/borrow": {"post": {
        "operationId": "borrow",
        "summary": "A rider asks for a bank; follow the attempt it answers with.",
        "description": "Always 202 with an attempt, also one refused at once (it is then "
                       "failed, with its reason). pin is needed under registered lending "
                       "only. Unknown fields are ignored.",
        "requestBody": _body(_obj({"rider": RIDER, "pin": {**PIN, "type": ["string", "null"]}},
                                  required=["rider"]),
                             {"rider": RIDER["example"], "pin": "4821"}),
        "responses": {"202": _json(_obj({"attempt": _ref("Attempt")}), "The attempt."),
                      "400": _error("bad_json, missing_field, bad_rider (also a phone "
                                    "number), bad_pin_format")},
    }},
    "/v1/borrow/{attempt_id}": {"get": {
        "operationId": "getAttempt",
        "summary": "Follow a borrow attempt until it is taken or failed.",
        "parameters": [_id_param("attempt_id", "b", "the attempt's")],
        "responses": {"200": _json(_obj({"attempt": _ref("Attempt")}), "The attempt."),
                      "404": _error("unknown_attempt (or finished over 10 minutes ago)")},
    }},
    "/v1/returns": {"get": {
        "operationId": "getReturns",
        "summary": "Banks put back at or after since (the last 50 remembered).",
        "parameters": [{"name": "since", "in": "query", "required": False,
                        "description": f"ms; 1 to {MAX_DIGITS} digits 0-9 (default 0)",
                        "schema": {"type": "integer", "minimum": 0,
                                   "maximum": 10**MAX_DIGITS - 1}}],
        "responses": {"200": _json(_obj({"returns": {"type": "array",
                                                     "items": _ref("Return")}}),
                                   "The returns."),
                      "400": _error("bad_since")},
    }},
    "/v1/returns/claim": {"post": {
        "operationId": "claimReturn",
        "summary": "Where the cabinet cannot read bank ids: open a slot for this rider's "
                   "return.",
        "description": "Always 202 with a claim, also one refused at once (failed, e.g. "
                       "not_needed where the cabinet reads bank ids). Unknown fields are "
                       "ignored.",
        "requestBody": _body(_obj({"rider": RIDER}), {"rider": RIDER["example"]}),
        "responses": {"202": _json(_obj({"claim": _ref("Claim")}), "The claim."),
                      "400": _error("bad_json, missing_field, bad_rider")},
    }},
    "/v1/returns/claim/{claim_id}": {"get": {
        "operationId": "getClaim",
        "summary": "Follow a return claim until it is returned or failed.",
        "parameters": [_id_param("claim_id", "t", "the claim's")],
        "responses": {"200": _json(_obj({"claim": _ref("Claim")}), "The claim."),
                      "404": _error("unknown_claim (or finished over 10 minutes ago)")},
    }},
    "/v1/maintenance": {"post": {
        "operationId": "startMaintenance",
        "summary": "A staff member logs in with their PIN.",
        "description": "The same staff again gets their open session back; another "
                       "staff member takes over. An unknown staff id is answered as a "
                       "wrong PIN, and counts. Unknown fields are ignored.",
        "requestBody": _body(_obj({"staff": {"type": "string", "minLength": 1,
                                             "maxLength": STAFF_MAX},
                                   "pin": PIN}),
                             {"staff": "li", "pin": "2468"}),
        "responses": {"201": _json(_obj(_SESSION), "The session."),
                      "400": _error("bad_json, missing_field, bad_staff, bad_pin_format"),
                      "403": _error("bad_pin (with tries_left), or forbidden"),
                      "429": _error("locked_out (with locked_until): five wrong PINs")},
    }},
    "/v1/maintenance/{session_id}": {
        "get": {
            "operationId": "getMaintenance",
            "summary": "The staff screen: the session and every slot.",
            "parameters": [_id_param("session_id", "m", "the session's")],
            "responses": {"200": _json(_obj({
                "session": _ref("Session"),
                "online": {"type": "boolean", "description": "the locker board answers"},
                "slots": {"type": "array", "items": _ref("Slot")},
                "faults": {"type": "array", "items": _obj({
                    "slot": SLOT_NO, "fault": {"type": "string"}})},
            }), "The session and the cabinet."), **_UNKNOWN_SESSION},
        },
        "delete": {
            "operationId": "endMaintenance",
            "summary": "Log out; an ended session answers the same.",
            "parameters": [_id_param("session_id", "m", "the session's")],
            "responses": {"200": _json(_obj(_SESSION), "The ended session."),
                          **_UNKNOWN_SESSION},
        },
    },
    "/v1/maintenance/{session_id}/release": {"post": {
        "operationId": "releaseSlots",
        "summary": 'Open one slot, or every empty fault-free slot ("empty", to restock).',
        "description": "A slot number must be one of this cabinet's (400 bad_slot "
                       "otherwise; JSON Schema cannot know the cabinet).",
        "parameters": [_id_param("session_id", "m", "the session's")],
        "requestBody": _body(_obj({"slot": {"oneOf": [SLOT_NO, {"const": "empty"}]}}),
                             {"slot": 3}),
        "responses": {
            "200": _json(_obj({"released": {"type": "array", "items": _obj({
                "slot": SLOT_NO,
                "result": {"enum": ["released", "jammed", "busy", "bad_slot",
                                    "board_offline"]}})}}), "What the board did."),
            "400": _error("bad_json, bad_slot"), **_UNKNOWN_SESSION, **_ENDED,
            "503": _error('board_offline: "empty" while the locker is offline'),
        },
    }},
    "/v1/maintenance/{session_id}/refill": {"post": {
        "operationId": "confirmRefill",
        "summary": "Confirm a refill; records refilled {what, staff}.",
        "parameters": [_id_param("session_id", "m", "the session's")],
        "requestBody": _body(_obj({"what": {"enum": sorted(REFILL_WHAT)}}), {"what": "water"}),
        "responses": {"200": _json(_obj({"refilled": {"enum": sorted(REFILL_WHAT)},
                                         **_SESSION}), "The refill, recorded."),
                      "400": _error("bad_json, bad_what"), **_UNKNOWN_SESSION, **_ENDED},
    }},
}

#: Answers any operation may give: the gate (not loopback, a rebinding Host), a
#: method the path does not take, a body over 16 KiB, a crash.
_ON_EVERY_OPERATION = {
    "403": _error("forbidden: the caller is not on this machine"),
    "405": _error("method_not_allowed"),
    "421": _error("bad_host: the Host is not 127.0.0.1, localhost or [::1]"),
    "500": _error("internal: the station's log has the details"),
}
_ON_EVERY_BODY = {"413": _error("too_large: a body over 16 KiB")}


@cache
def _document() -> dict[str, Any]:
    paths = copy.deepcopy(PATHS)
    for item in paths.values():
        for op in item.values():
            extra = {**_ON_EVERY_OPERATION, **(_ON_EVERY_BODY if "requestBody" in op else {})}
            for status, response in extra.items():
                op["responses"].setdefault(status, copy.deepcopy(response))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Yizhan station local API",
            "version": "1.0.0",
            "description": "The station agent's API for its kiosk, on loopback only "
                           "(docs/agent-api.md). Every refusal is {\"error\": {\"code\", "
                           "\"message\"}}; bodies are JSON objects of at most 16 KiB; "
                           "times are Unix milliseconds on the station clock; riders are "
                           "named by rider id, never by phone number.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": copy.deepcopy(SCHEMAS)},
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
