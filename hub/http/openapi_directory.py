"""The Directory's part of the OpenAPI document (hub/http/openapi.py merges it in).

Every bound here is what hub/fleet/directory_fields.py checks, so a request the
document calls valid is taken and one it calls invalid is refused with a 4xx
(tests/test_hub_openapi_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from hub.fleet import directory_fields as f
from hub.fleet.directory import AUDIT_MAX, MAX_DIRECTORY
from hub.http.directory_api import RIDERS_MAX
from hub.http.openapi import (
    AUTH_ERRORS,
    BODY_MS,
    MS,
    MS_OR_NULL,
    P_SID,
    SID,
    _err,
    _json,
    _obj,
    _param,
    _ref,
)

TEXT = {"type": "string", "pattern": f"^{f.TEXT_PATTERN}+$", "minLength": 1}
NAME = {**TEXT, "maxLength": f.NAME_MAX, "example": "李师傅"}
GROUP = {**TEXT, "maxLength": f.GROUP_MAX, "example": "chumen"}
FEISHU_OPEN_ID = {"type": "string", "pattern": f"^{f.FEISHU_OPEN_ID_PATTERN}$",
                  "example": "ou_7d8a6e6df7621556ce0d21922b676706",
                  "description": "the person's Feishu open id, for @-mentions in Feishu "
                                 "alerts; kept by the hub, never sent to stations"}
STAFF_ID = {"type": "string", "pattern": f"^{f.STAFF_ID_PATTERN}$", "example": "li"}
PIN = {"type": "string", "pattern": f"^{f.PIN_PATTERN}$", "example": "2468",
       "description": "4 to 8 digits; only its pbkdf2_sha256 hash is kept and published"}
PHONE = {"type": "string", "pattern": f"^{f.PHONE_PATTERN}$", "example": "13812345678",
         "description": "a mainland mobile number, its 11 digits (no +86, no spaces)"}
MASKED = {"type": "string", "example": "138****5678"}
RIDER = {"type": "string", "pattern": "^r:[0-9a-f]{24}$", "example": "r:5e8f0c1d2a3b4c5d6e7f8a9b"}
GROUPS = {"type": "array", "items": GROUP, "maxItems": f.GROUPS_MAX,
          "description": "the groups whose stations get this staff member; [] every station"}
BY = {"type": ["string", "null"], "description": "the API token's name"}

POLICY_FIELDS = {
    "lending": {"type": "string", "enum": list(f.LENDING),
                "description": "open: any valid number; registered: listed riders with PIN"},
    "min_charge": {"type": "integer", "minimum": 0, "maximum": 100},
    "max_per_rider": {"type": "integer", "minimum": 0, "maximum": f.MAX_PER_RIDER_MAX},
    "loan_hours": {"type": "integer", "minimum": 1, "maximum": f.LOAN_HOURS_MAX},
}
AT_LEAST_ONE = [{"required": [name]} for name in POLICY_FIELDS]
TOO_LARGE = ("409 directory_too_large when the change would make a station's Directory "
             f"exceed {MAX_DIRECTORY} bytes (one MQTT message, contract §2); nothing changes")

SCHEMAS: dict[str, Any] = {
    "Staff": _obj({
        "id": STAFF_ID,
        "name": {"type": "string"},
        "phone": {**MASKED, "type": ["string", "null"], "description": "masked; for alerts"},
        "feishu_open_id": {**FEISHU_OPEN_ID, "type": ["string", "null"]},
        "groups": {"type": "array", "items": {"type": "string"}},
        "created_at": MS,
        "updated_at": MS,
    }),
    "StaffList": _obj({"staff": {"type": "array", "items": _ref("Staff")}}),
    "StaffRequest": _obj({
        "id": STAFF_ID, "name": NAME, "phone": {**PHONE, "type": ["string", "null"]},
        "pin": PIN, "groups": GROUPS, "feishu_open_id": {**FEISHU_OPEN_ID,
                                                         "type": ["string", "null"]},
    }, required=["id", "name", "pin"], additionalProperties=False),
    "StaffChange": _obj({
        "name": NAME, "phone": {**PHONE, "type": ["string", "null"],
                                "description": "null removes it"},
        "pin": {**PIN, "description": "a new PIN (reset)"}, "groups": GROUPS,
        "feishu_open_id": {**FEISHU_OPEN_ID, "type": ["string", "null"],
                           "description": "null removes it"},
    }, required=[], additionalProperties=False, minProperties=1),
    "Rider": _obj({
        "id": RIDER, "masked": MASKED, "registered_at": MS, "registered_by": BY,
    }),
    "RiderList": _obj({"riders": {"type": "array", "items": _ref("Rider")}}),
    "RiderRequest": _obj({"phone": PHONE, "pin": PIN}, additionalProperties=False),
    "Denied": _obj({
        "rider": RIDER,
        "reason": {"type": "string"},
        "expires_at": {**MS_OR_NULL, "description": "null: until removed"},
        "created_at": MS,
        "created_by": BY,
    }),
    "DeniedList": _obj({"denied": {"type": "array", "items": _ref("Denied")}}),
    "DenyRequest": _obj({
        "rider": RIDER,
        "phone": PHONE,
        "reason": {**TEXT, "maxLength": f.REASON_MAX, "example": "多次逾期未还"},
        "expires_at": {**BODY_MS, "type": ["integer", "null"],
                       "description": "when the denial ends (in the future, else 400 "
                                      "bad_time); null or absent: until removed"},
    }, required=["reason"], additionalProperties=False,
        oneOf=[{"required": ["rider"]}, {"required": ["phone"]}],
        description="the rider by id or by phone number, one of the two"),
    "Policy": _obj(POLICY_FIELDS),
    "PolicyOverride": _obj(POLICY_FIELDS, required=[], additionalProperties=False,
                           anyOf=AT_LEAST_ONE,
                           description="the fields to override (at least one); the "
                                       "others keep the group's or the fleet's. A PUT "
                                       "replaces the override whole; null is refused"),
    "GroupPolicyRequest": _obj({"group": GROUP, **POLICY_FIELDS}, required=["group"],
                               additionalProperties=False, anyOf=AT_LEAST_ONE),
    "GroupPolicy": _obj({"group": {"type": "string"}, **POLICY_FIELDS, "updated_at": MS,
                         "updated_by": BY}, required=["group", "updated_at", "updated_by"]),
    "StationPolicy": _obj({"sid": SID, **POLICY_FIELDS, "updated_at": MS, "updated_by": BY},
                          required=["sid", "updated_at", "updated_by"]),
    "Policies": _obj({
        "fleet": _ref("Policy"),
        "groups": {"type": "array", "items": _ref("GroupPolicy")},
        "stations": {"type": "array", "items": _ref("StationPolicy")},
    }),
    "StationDirectory": _obj({
        "sid": SID,
        "rev": {"type": ["integer", "null"], "description": "the rev last published; null: "
                "not yet"},
        "ts": MS_OR_NULL,
        "size": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_DIRECTORY},
        "current": {"type": "boolean", "description": "what was published is what the "
                    "station should have now"},
        "policy": _ref("Policy"),
        "riders": {"type": "integer", "minimum": 0},
        "staff": {"type": "integer", "minimum": 0},
        "denied": {"type": "integer", "minimum": 0},
    }),
    "AuditEntry": _obj({
        "id": {"type": "integer"},
        "at": MS,
        "by": {"type": ["string", "null"], "description": "the API token's name, or hub"},
        "action": {"type": "string", "enum": [
            "staff.add", "staff.change", "staff.pin_reset", "staff.remove", "rider.register",
            "rider.remove", "denied.add", "denied.remove", "denied.expire", "policy.set",
            "policy.clear"]},
        "entity": {"type": "string", "enum": ["staff", "rider", "group", "station"]},
        "entity_id": {"type": "string"},
        "detail": {"type": ["object", "null"], "description": "what changed; never a PIN "
                   "nor a phone number"},
    }),
    "AuditList": _obj({"audit": {"type": "array", "items": _ref("AuditEntry")}}),
}


def _body(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {
        "schema": _ref(schema), "example": example}}}


def _answers(status: str, schema: str, text: str, *extra: str) -> dict[str, Any]:
    out = {status: _json(_ref(schema), text), **AUTH_ERRORS}
    for code in extra:
        out[code] = _err({"400": "BadRequest", "404": "NotFound", "409": "Conflict",
                          "413": "TooLarge"}[code])
    return out


P_STAFF = _param("staff_id", "path", STAFF_ID, "staff id")
P_RIDER = _param("rider_id", "path", RIDER, "rider id")


def _limit(most: int, default: int) -> dict[str, Any]:
    return _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": most,
                                     "default": default}, "at most this many, newest first")


PATHS: dict[str, Any] = {
    "/api/v1/staff": {
        "get": {"operationId": "listStaff", "summary": "Staff, by id (phones masked).",
                "responses": _answers("200", "StaffList", "The staff.")},
        "post": {"operationId": "addStaff",
                 "summary": "Add a staff member with a PIN; published to their stations.",
                 "description": "409 exists when the id is taken. " + TOO_LARGE,
                 "requestBody": _body("StaffRequest", {"id": "li", "name": "李师傅",
                                                       "phone": "13900001111", "pin": "2468",
                                                       "groups": ["chumen"]}),
                 "responses": _answers("201", "Staff", "Added.", "400", "409", "413")},
    },
    "/api/v1/staff/{staff_id}": {
        "get": {"operationId": "getStaff", "summary": "One staff member.",
                "parameters": [P_STAFF],
                "responses": _answers("200", "Staff", "The staff member.", "404")},
        "patch": {"operationId": "changeStaff",
                  "summary": "Change name, phone, groups, or reset the PIN.",
                  "description": TOO_LARGE, "parameters": [P_STAFF],
                  "requestBody": _body("StaffChange", {"pin": "1357"}),
                  "responses": _answers("200", "Staff", "Changed.", "400", "404", "409",
                                        "413")},
        "delete": {"operationId": "removeStaff",
                   "summary": "Remove a staff member; their PIN stops working.",
                   "parameters": [P_STAFF],
                   "responses": _answers("200", "Staff", "Removed (as they were).", "404")},
    },
    "/api/v1/riders": {
        "get": {"operationId": "listRiders", "summary": "Registered riders, newest first.",
                "parameters": [_limit(RIDERS_MAX, 1000)],
                "responses": _answers("200", "RiderList", "The riders.", "400")},
        "post": {"operationId": "registerRider",
                 "summary": "Register a rider by phone and PIN (again: a new PIN).",
                 "description": "The hub keeps the rider id (contract §1) and the masked "
                                "number, never the number. 409 no_fleet_key without "
                                "fleet_key_file. " + TOO_LARGE,
                 "requestBody": _body("RiderRequest", {"phone": "13812345678",
                                                       "pin": "4821"}),
                 "responses": {**_answers("201", "Rider", "Registered.", "400", "409", "413"),
                               "200": _json(_ref("Rider"), "Registered before: new PIN.")}},
    },
    "/api/v1/riders/{rider_id}": {"delete": {
        "operationId": "removeRider", "summary": "Unregister a rider.",
        "parameters": [P_RIDER],
        "responses": _answers("200", "Rider", "Removed.", "400", "404")}},
    "/api/v1/denied": {
        "get": {"operationId": "listDenied", "summary": "Riders denied now, newest first.",
                "responses": _answers("200", "DeniedList", "The denied riders.")},
        "post": {"operationId": "denyRider",
                 "summary": "Deny a rider (by id or phone) with a reason, until an expiry.",
                 "description": "Again for the same rider replaces the reason and expiry. "
                                "An expired denial drops out of the Directory by itself. "
                                + TOO_LARGE,
                 "requestBody": _body("DenyRequest", {"phone": "13812345678",
                                                      "reason": "多次逾期未还",
                                                      "expires_at": 1767225600000}),
                 "responses": _answers("201", "Denied", "Denied.", "400", "409", "413")},
    },
    "/api/v1/denied/{rider_id}": {"delete": {
        "operationId": "undenyRider", "summary": "Lift a denial now.",
        "parameters": [P_RIDER],
        "responses": _answers("200", "Denied", "Lifted (as it was).", "400", "404")}},
    "/api/v1/policies": {"get": {
        "operationId": "getPolicies",
        "summary": "The fleet's lending policy and the group and station overrides.",
        "responses": _answers("200", "Policies", "The policies.")}},
    "/api/v1/policies/groups": {
        "put": {"operationId": "setGroupPolicy",
                "summary": "Override the lending policy of a group's stations.",
                "description": "A station's own override wins over its group's. " + TOO_LARGE,
                "requestBody": _body("GroupPolicyRequest", {"group": "chumen",
                                                            "lending": "registered"}),
                "responses": _answers("200", "GroupPolicy", "The override.", "400", "409",
                                      "413")},
        "delete": {"operationId": "clearGroupPolicy",
                   "summary": "Remove a group's override.",
                   "parameters": [_param("group", "query", GROUP, "the group",
                                         required=True)],
                   "responses": _answers("200", "GroupPolicy", "Removed (as it was).", "400",
                                         "404")},
    },
    "/api/v1/policies/stations/{sid}": {
        "put": {"operationId": "setStationPolicy",
                "summary": "Override the lending policy of one station.",
                "description": TOO_LARGE, "parameters": [P_SID],
                "requestBody": _body("PolicyOverride", {"loan_hours": 12}),
                "responses": _answers("200", "StationPolicy", "The override.", "400", "409",
                                      "413")},
        "delete": {"operationId": "clearStationPolicy",
                   "summary": "Remove a station's override.", "parameters": [P_SID],
                   "responses": _answers("200", "StationPolicy", "Removed (as it was).",
                                         "400", "404")},
    },
    "/api/v1/stations/{sid}/directory": {"get": {
        "operationId": "getStationDirectory",
        "summary": "The Directory a station was last sent: rev, size, policy, counts.",
        "parameters": [P_SID],
        "responses": _answers("200", "StationDirectory", "What it was sent.", "404")}},
    "/api/v1/directory/audit": {"get": {
        "operationId": "listDirectoryAudit",
        "summary": "Who changed the Directory, when and what, newest first.",
        "parameters": [_limit(AUDIT_MAX, 100)],
        "responses": _answers("200", "AuditList", "The changes.", "400")}},
}

#: Every write needs ``directory`` (contract §11); every read ``read``.
WRITE_SCOPES = {op["operationId"]: "directory" for item in PATHS.values()
                for method, op in item.items() if method != "get"}
