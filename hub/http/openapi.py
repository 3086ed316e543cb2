"""The OpenAPI 3.1 description of the hub's HTTP interface (contract §11).

Written as Python data rather than a JSON file so the schemas are shared by
reference and a test can check that every route of the app is described and
every answer matches its schema (``tests/test_hub_api.py``).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from hub.alerting.alerts import (
    DURATION_PATTERN,
    GROUP_MAX,
    MAX_COMMENT,
    MAX_MS,
    RULES,
    SEVERITIES,
)
from hub.alerting.alerts import STATES as ALERT_STATES
from hub.fleet.commands import STATES as COMMAND_STATES
from protocol.ids import SID_PATTERN
from protocol.messages import COMMAND_ERRORS, COMMANDS, MAX_INT, MAX_REPLAY_SPAN, MAX_SLOT
from yizhan.untrusted import MAX_DIGITS

MS = {"type": "integer", "description": "Unix time in milliseconds (hub clock)"}
MS_OR_NULL = {"type": ["integer", "null"], "description": MS["description"]}
SID = {"type": "string", "pattern": f"^{SID_PATTERN}$", "example": "yh-chumen-01"}
#: A number in the query string: 1 to 15 ASCII digits (yizhan/untrusted.py).
QUERY_MS = {"type": "integer", "minimum": 0, "maximum": 10**MAX_DIGITS - 1}
#: A time a silence or window may name: what a 64-bit column holds.
BODY_MS = {**MS, "minimum": 0, "maximum": MAX_MS}
SEQ = {"type": "integer", "minimum": 1, "maximum": MAX_INT}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def _html_responses(answers: list[tuple[str, str]]) -> dict[str, Any]:
    """Responses that are small HTML pages (the ack link's), by status."""
    return {status: {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}
            for status, text in answers}


def _err(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, **extra}


MUTE_RULES = ("The end must be after the start and in the future, and at most 30 days "
              "after the later of the start and now (otherwise 400 bad_time): JSON Schema "
              "cannot compare two fields, so this is said here and checked by the hub.")


def _mute_request(matches: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """A silence's or window's body: at least one of ``matches`` (null is absent), and
    exactly one of ends_at and duration."""
    return _obj({
        "sid": {**SID, "type": ["string", "null"]},
        "group": {"type": ["string", "null"], "minLength": 1, "maxLength": GROUP_MAX},
        **extra,
        "starts_at": {**BODY_MS, "type": ["integer", "null"], "description": "default (or "
                      "null): now"},
        "ends_at": BODY_MS,
        "duration": {"type": "string", "pattern": DURATION_PATTERN, "example": "2h",
                     "description": "instead of ends_at: 30m, 2h, 1d12h (at most 30 days)"},
        "comment": {"type": ["string", "null"], "maxLength": MAX_COMMENT},
    }, required=[], additionalProperties=False,
        allOf=[{"anyOf": [{"required": [name], "properties": {name: {"type": "string"}}}
                          for name in matches]},
               {"oneOf": [{"required": ["ends_at"]}, {"required": ["duration"]}]}],
        description=f"at least one of {', '.join(matches)} (not null); ends_at or duration. "
                    + MUTE_RULES)


SCHEMAS: dict[str, Any] = {
    "Error": _obj({
        "error": _obj({
            "code": {"type": "string", "description": "machine-readable, e.g. not_found, "
                     "unauthorized, bad_window, bad_range, unknown_cmd, bad_args, conflict, "
                     "unknown_param, exists, directory_too_large"},
            "message": {"type": "string", "description": "for people"},
        }),
    }),
    "Health": _obj({
        "ok": {"type": "boolean"},
        "problems": {"type": "array", "items": {"type": "string"}},
    }, required=["ok"]),
    "StationSummary": _obj({
        "sid": SID,
        "name": {"type": "string"},
        "online": {"type": "boolean"},
        "since": {**MS_OR_NULL, "description": "when the station last went online or offline"},
        "chargers_ready": {"type": ["integer", "null"], "minimum": 0,
                           "description": "present banks without a fault charged to at least "
                           "the lending threshold; null without a locker or State"},
        "water": {"type": ["string", "null"], "enum": ["ok", "low", "empty", "unknown", None],
                  "description": "the dispenser's level_state; null without a dispenser"},
        "alerts_firing": {"type": "integer", "minimum": 0,
                          "description": "alerts not resolved (firing or acked)"},
    }),
    "StationList": _obj({"stations": {"type": "array", "items": _ref("StationSummary")}}),
    "Station": {"allOf": [_ref("StationSummary"), _obj({
        "group": {"type": ["string", "null"]},
        "epoch": {"type": ["string", "null"]},
        "last_seen": MS_OR_NULL,
        "state": {"type": ["object", "null"], "description": "the last applied State "
                  "(contract §5) as the station sent it; null before the first"},
    })]},
    "Outage": _obj({
        "start": MS,
        "end": {**MS_OR_NULL, "description": "null while the outage goes on"},
        "duration_s": {"type": "number", "minimum": 0},
    }),
    "Uptime": _obj({
        "sid": SID,
        "component": {"type": "string", "enum": ["station", "lockers", "dispenser", "kiosk"]},
        "window": {"type": ["string", "null"], "enum": ["24h", "7d", "30d", None]},
        "from": MS,
        "to": MS,
        "availability": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                         "description": "up / (up + down); null when neither was seen"},
        "up_s": {"type": "number", "minimum": 0},
        "down_s": {"type": "number", "minimum": 0},
        "unknown_s": {"type": "number", "minimum": 0,
                      "description": "hub not running, or before the first message"},
        "maintenance_s": {"type": "number", "minimum": 0},
        "outages": {"type": "array", "items": _ref("Outage")},
        "mttr_s": {"type": ["number", "null"], "minimum": 0,
                   "description": "mean time to repair of the outages that ended inside"},
        "mtbf_s": {"type": ["number", "null"], "minimum": 0,
                   "description": "up time per outage that started inside"},
    }, required=["sid", "component", "window", "from", "to", "availability", "up_s",
                 "down_s", "unknown_s", "maintenance_s", "outages"]),
    "Alert": _obj({
        "id": {"type": "string"},
        "rule": {"type": "string", "enum": list(RULES)},
        "sid": SID,
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "state": {"type": "string", "enum": list(ALERT_STATES)},
        "summary": {"type": "string"},
        "value": {"description": "the measured value that fired the rule, if any"},
        "started_at": MS,
        "acked_at": MS_OR_NULL,
        "resolved_at": MS_OR_NULL,
        "assigned_to": {"type": ["string", "null"],
                        "description": "the staff id the alert is given to (from the "
                                       "console); absent or null: nobody"},
    }, required=["id", "rule", "sid", "severity", "state", "summary", "value", "started_at",
                 "acked_at", "resolved_at"]),
    "AlertList": _obj({"alerts": {"type": "array", "items": _ref("Alert")}}),
    # One schema per command, chosen by cmd (contract §7). Keys of args the command
    # does not take, and keys of the body besides cmd and args, are ignored.
    "CommandRequest": {
        "oneOf": [_ref(f"{name.capitalize()}Command") for name in COMMANDS],
        "discriminator": {"propertyName": "cmd", "mapping": {
            name: f"#/components/schemas/{name.capitalize()}Command" for name in COMMANDS}},
    },
    "UnlockCommand": _obj({
        "cmd": {"const": "unlock"},
        "args": _obj({"slot": {"type": "integer", "minimum": 1, "maximum": MAX_SLOT}}),
    }, description="open one locker slot"),
    "ReplayCommand": _obj({
        "cmd": {"const": "replay"},
        "args": _obj({"from_seq": SEQ, "to_seq": SEQ}, description=(
            f"from_seq <= to_seq, at most {MAX_REPLAY_SPAN} events (to_seq - from_seq + 1); "
            "otherwise 400 bad_args")),
    }, description="re-send the events from_seq..to_seq; at most 5 a minute a station "
                   "(then 429)"),
    **{f"{name.capitalize()}Command": _obj({
        "cmd": {"const": name},
        "args": {"type": ["object", "null"], "description": "takes none: {} or null"},
    }, required=["cmd"], description=text) for name, text in [
        ("rebirth", "re-send the station's birth and State"),
        ("reload", "re-read the station's configuration")]},
    "CommandAccepted": _obj({"id": {"type": "string", "pattern": "^c-[0-9a-f]+$"}}),
    "Command": _obj({
        "id": {"type": "string"},
        "sid": SID,
        "cmd": {"type": "string"},
        "args": {"type": "object"},
        "state": {"type": "string", "enum": list(COMMAND_STATES),
                  "description": "sent: waiting for the answer; expired: none came in time"},
        "error": {"type": ["string", "null"],
                  "description": "the station's error (" + ", ".join(sorted(COMMAND_ERRORS))
                  + "), or not_sent when the broker was unreachable"},
        "result": {"type": ["object", "null"], "description": "the answer's data"},
        "by": {"type": ["string", "null"], "description": "who sent it (the API token's name)"},
        "created": MS,
        "expires": MS,
        "answered": MS_OR_NULL,
    }),
    "Delivery": _obj({
        "id": {"type": "string", "description": "the delivery id, sent as X-Yizhan-Delivery "
               "(webhook) or in Message-ID (e-mail); the same on every retry"},
        "alert_id": {"type": ["string", "null"]},
        "notifier": {"type": "string"},
        "kind": {"type": "string",
                 "enum": ["firing", "resolved", "acked", "escalated", "reminder", "digest"]},
        "state": {"type": "string",
                  "enum": ["pending", "delivered", "failed", "held", "digested"],
                  "description": "failed: given up after an error the platform calls "
                  "permanent (a wrong robot key, say); last_error says which. held: over "
                  "the notifier's rate limits, waiting for its next digest; digested: "
                  "carried by the digest delivery `digest` (docs/alerts.md, Rate limits)"},
        "attempts": {"type": "integer", "minimum": 0},
        "created": MS,
        "next_attempt": {**MS_OR_NULL, "description": "when it is tried again (pending only)"},
        "delivered": MS_OR_NULL,
        "last_error": {"type": ["string", "null"]},
        "held": {**MS_OR_NULL, "description": "when it was held back over a rate limit"},
        "digest": {"type": ["string", "null"],
                   "description": "the id of the digest delivery that carried it"},
    }),
    "DeliveryList": _obj({
        "alert_id": {"type": "string"},
        "deliveries": {"type": "array", "items": _ref("Delivery")},
    }),
    # Silences and maintenance windows (docs/alerts.md).
    "Silence": _obj({
        "id": {"type": "string", "pattern": "^s-[0-9a-f]+$"},
        "sid": {**SID, "type": ["string", "null"], "description": "only this station"},
        "group": {"type": ["string", "null"], "description": "only this group's stations"},
        "rule": {"type": ["string", "null"], "enum": [*RULES, None],
                 "description": "only this rule"},
        "starts_at": MS,
        "ends_at": {**MS, "description": "set to the time it was ended, if ended early"},
        "comment": {"type": ["string", "null"]},
        "created_by": {"type": ["string", "null"], "description": "the API token's name"},
        "created_at": MS,
    }),
    "SilenceRequest": _mute_request(["sid", "group", "rule"], {
        "rule": {"type": ["string", "null"], "enum": [*RULES, None]}}),
    "SilenceList": _obj({"silences": {"type": "array", "items": _ref("Silence")}}),
    "MaintenanceWindow": _obj({
        "id": {"type": "string", "pattern": "^mw-[0-9a-f]+$"},
        "sid": {**SID, "type": ["string", "null"], "description": "this station"},
        "group": {"type": ["string", "null"], "description": "every station of this group"},
        "starts_at": MS,
        "ends_at": {**MS, "description": "set to the time it was ended, if ended early"},
        "comment": {"type": ["string", "null"]},
        "created_by": {"type": ["string", "null"], "description": "the API token's name"},
        "created_at": MS,
    }),
    "MaintenanceWindowRequest": _mute_request(["sid", "group"], {}),
    "MaintenanceWindowList": _obj({
        "maintenance_windows": {"type": "array", "items": _ref("MaintenanceWindow")}}),
}

_ERROR = _ref("Error")
RESPONSES = {
    name: _json(_ERROR, text, {"error": {"code": code, "message": text}})
    for name, code, text in [
        ("BadRequest", "bad_request", "The request is malformed; the code says how."),
        ("Unauthorized", "unauthorized", "Missing or unknown bearer token."),
        ("Forbidden", "forbidden", "The token lacks the operation's scope (x-yizhan-scope)."),
        ("NotFound", "not_found", "No such station, alert or command."),
        ("Conflict", "conflict", "The change does not apply to the alert's state, the id "
         "exists, or the Directory would grow too large; the code says which."),
        ("Unavailable", "database_unavailable", "The database or the broker does not answer."),
        ("TooLarge", "payload_too_large", "The body is over 64 KiB."),
    ]
}
RESPONSES["TooManyReplays"] = {
    **_json(_ERROR, "Too many replay commands to this station: at most 5 a minute "
            "(docs/hub-api.md#commands). Nothing was sent.",
            {"error": {"code": "too_many_replays", "message": "at most 5 replay commands "
                       "to yh-chumen-01 every 60 s; try again in 42 s"}}),
    "headers": {"Retry-After": {"description": "seconds until one more replay is taken",
                                "schema": {"type": "integer", "minimum": 1}}},
}


def _param(name: str, where: str, schema: dict, description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


P_SID = _param("sid", "path", SID, "station id")
AUTH_ERRORS = {"401": _err("Unauthorized")}

PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "operationId": "health", "summary": "Is the hub working (ingest and database)?",
        "security": [],
        "responses": {
            "200": _json(_ref("Health"), "Working.", {"ok": True}),
            "503": _json(_ref("Health"), "Not working; problems say why.",
                         {"ok": False, "problems": ["database unreachable"]}),
        },
    }},
    "/metrics": {"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (contract §12).",
        "security": [],
        "responses": {"200": {"description": "Prometheus text exposition format 0.0.4.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }},
    "/api/v1/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This document.", "security": [],
        "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
    }},
    "/api/v1/stations": {"get": {
        "operationId": "listStations", "summary": "Every station the hub knows.",
        "responses": {"200": _json(_ref("StationList"), "The stations, by sid."),
                      **AUTH_ERRORS},
    }},
    "/api/v1/stations/{sid}": {"get": {
        "operationId": "getStation", "summary": "One station with its last State.",
        "parameters": [P_SID],
        "responses": {"200": _json(_ref("Station"), "The station."), **AUTH_ERRORS,
                      "404": _err("NotFound")},
    }},
    "/api/v1/stations/{sid}/uptime": {"get": {
        "operationId": "getUptime",
        "summary": "Availability and outages over a window ending now, or from..to.",
        "parameters": [
            P_SID,
            _param("window", "query", {"type": "string", "enum": ["24h", "7d", "30d"]},
                   "a window ending now (default 24h); not with from/to (400 bad_range)"),
            _param("from", "query", QUERY_MS, "start, Unix ms, [0-9]{1,15}; with to, and "
                   "before it (otherwise 400 bad_range)"),
            _param("to", "query", QUERY_MS, "end, Unix ms, [0-9]{1,15}; with from, and "
                   "after it (otherwise 400 bad_range)"),
            _param("component", "query",
                   {"type": "string", "enum": ["station", "lockers", "dispenser", "kiosk"],
                    "default": "station"}, "which part's uptime"),
        ],
        "responses": {"200": _json(_ref("Uptime"), "The uptime."),
                      "400": _err("BadRequest"), **AUTH_ERRORS, "404": _err("NotFound")},
    }},
    "/api/v1/alerts": {"get": {
        "operationId": "listAlerts", "summary": "Alerts, newest first.",
        "parameters": [
            _param("state", "query", {"type": "string", "enum": list(ALERT_STATES)},
                   "only this state; empty is 400 bad_state"),
            _param("sid", "query", {**SID, "minLength": 1},
                   "only this station; empty is 400 bad_sid, not every station"),
            _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 10000,
                                      "default": 1000}, "at most this many"),
        ],
        "responses": {"200": _json(_ref("AlertList"), "The alerts."),
                      "400": _err("BadRequest"), **AUTH_ERRORS},
    }},
    "/api/v1/alerts/{alert_id}/ack": {"post": {
        "operationId": "ackAlert",
        "summary": "Acknowledge: firing becomes acked; acked stays acked.",
        "parameters": [_param("alert_id", "path", {"type": "string"}, "alert id")],
        "responses": {"200": _json(_ref("Alert"), "The alert, now acked."), **AUTH_ERRORS,
                      "404": _err("NotFound"), "409": _err("Conflict"),
                      "503": _err("Unavailable")},
    }},
    "/api/v1/alerts/{alert_id}/resolve": {"post": {
        "operationId": "resolveAlert",
        "summary": "Resolve by hand; resolving a resolved alert changes nothing.",
        "parameters": [_param("alert_id", "path", {"type": "string"}, "alert id")],
        "responses": {"200": _json(_ref("Alert"), "The alert, now resolved."), **AUTH_ERRORS,
                      "404": _err("NotFound"), "503": _err("Unavailable")},
    }},
    "/api/v1/alerts/{alert_id}/deliveries": {"get": {
        "operationId": "listDeliveries",
        "summary": "The notifications of an alert: to whom, delivered or not, and why not.",
        "parameters": [_param("alert_id", "path", {"type": "string"}, "alert id")],
        "responses": {"200": _json(_ref("DeliveryList"), "Its deliveries, oldest first."),
                      **AUTH_ERRORS, "404": _err("NotFound")},
    }},
    "/ack/{token}": {
        "get": {
            "operationId": "showAckLink",
            "summary": "What a signed, expiring link from a notification would acknowledge.",
            "description": "No bearer token: the token (hub/alerting/acklink.py) is the authority. "
                           "Answers a small HTML page for a phone: the station, the alert, "
                           "since when, its state and, while it fires, a button whose form "
                           "POSTs here. Changes nothing, so a mail scanner or a link "
                           "preview that opens the link acknowledges nothing.",
            "security": [],
            "parameters": [_param("token", "path", {"type": "string"}, "the link's token")],
            "responses": _html_responses([
                ("200", "The alert and, while it fires, the button."),
                ("403", "The link is expired, or was not signed by this hub."),
                ("404", "No such alert."),
                ("503", "The database did not answer, or ack links are not configured."),
            ]),
        },
        "post": {
            "operationId": "ackLink",
            "summary": "Acknowledge the alert of the link (the page's button).",
            "description": "Acknowledges as link:<notifier>; again changes nothing. The form "
                           "must repeat the page's hidden confirm value, and a browser's "
                           "Sec-Fetch-Site other than same-origin (or none) is refused.",
            "security": [],
            "parameters": [_param("token", "path", {"type": "string"}, "the link's token")],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["confirm"],
                    "properties": {"confirm": {
                        "type": "string",
                        "description": "The value of the page's hidden field."}}}}}},
            "responses": _html_responses([
                ("200", "Acknowledged (now, or already before)."),
                ("400", "The form lacks the page's confirm value: nothing acknowledged."),
                ("403", "The link is expired or not signed by this hub, or the form was "
                        "posted from another site."),
                ("404", "No such alert."),
                ("409", "The alert has resolved: nothing to acknowledge."),
                ("503", "The database did not answer, or ack links are not configured."),
            ]),
        },
    },
    "/api/v1/stations/{sid}/commands": {"post": {
        "operationId": "sendCommand",
        "summary": "Send a command (contract §7); it expires unanswered after 30 s.",
        "parameters": [P_SID],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("CommandRequest"),
            "example": {"cmd": "unlock", "args": {"slot": 3}}}}},
        "responses": {
            "202": _json(_ref("CommandAccepted"), "Sent; poll its state with the id.",
                         {"id": "c-7f3a9e01b2c4d5e6"}),
            "400": _err("BadRequest"), **AUTH_ERRORS, "404": _err("NotFound"),
            "413": _err("TooLarge"), "429": _err("TooManyReplays"), "503": _err("Unavailable"),
        },
    }},
    "/api/v1/stations/{sid}/commands/{command_id}": {"get": {
        "operationId": "getCommand", "summary": "What became of a command.",
        "parameters": [P_SID, _param("command_id", "path", {"type": "string"}, "command id")],
        "responses": {"200": _json(_ref("Command"), "The command."), **AUTH_ERRORS,
                      "404": _err("NotFound")},
    }},
    **{
        f"/api/v1/{path}": {
            "get": {
                "operationId": f"list{name}s",
                "summary": f"{text.capitalize()}s not over yet (include=all: past ones too).",
                "parameters": [_param("include", "query",
                                      {"type": "string", "enum": ["active", "all"],
                                       "default": "active"},
                                      "active: current and future, soonest first; all: "
                                      "every one, the latest ending first")],
                "responses": {"200": _json(_ref(f"{name}List"), f"The {text}s."),
                              "400": _err("BadRequest"), **AUTH_ERRORS},
            },
            "post": {
                "operationId": f"add{name}",
                "summary": f"Add a {text}: {effect}.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref(f"{name}Request"), "example": example}}},
                "responses": {"201": _json(_ref(name), f"The {text}."),
                              "400": _err("BadRequest"), **AUTH_ERRORS,
                              "413": _err("TooLarge"), "503": _err("Unavailable")},
            },
        } for path, name, text, effect, example in [
            ("silences", "Silence", "silence",
             "matching alerts are raised and listed but not notified, escalated nor "
             "reminded until it ends", {"sid": "yh-chumen-01", "rule": "water_low",
                                        "duration": "2h", "comment": "水泵维修中"}),
            ("maintenance-windows", "MaintenanceWindow", "maintenance window",
             "the refill alerts (water_*, chargers_*) and door_open_too_long of the "
             "station or group are held back while it is open",
             {"group": "chumen", "duration": "3h", "comment": "季度检修"}),
        ]
    },
    **{
        f"/api/v1/{path}/{{{param}}}": {"delete": {
            "operationId": f"end{name}",
            "summary": f"End a {text} now (one not started yet never starts).",
            "parameters": [_param(param, "path", {"type": "string"}, f"{text} id")],
            "responses": {"200": _json(_ref(name), f"The {text}, ended."), **AUTH_ERRORS,
                          "404": _err("NotFound"), "503": _err("Unavailable")},
        }} for path, param, name, text in [
            ("silences", "silence_id", "Silence", "silence"),
            ("maintenance-windows", "window_id", "MaintenanceWindow", "maintenance window"),
        ]
    },
}

#: The scope a token needs for each operation that changes something (contract §11);
#: every other operation with a bearer token needs ``read``. The app enforces what
#: the document says (hub/http/web.py reads ``scope`` below).
WRITE_SCOPES = {
    "ackAlert": "ack", "resolveAlert": "ack",
    "sendCommand": "command",
    "addSilence": "silence", "endSilence": "silence",
    "addMaintenanceWindow": "silence", "endMaintenanceWindow": "silence",
}

_ERROR_ON_EVERY_OPERATION = {
    "405": _json(_ERROR, "Method not allowed on this path."),
    "500": _json(_ERROR, "Internal error; the hub log has the details."),
}


@cache
def _document() -> dict[str, Any]:
    # The Directory's routes (staff, riders, denied, policies) are described beside
    # their code; imported here, since that module builds on this one's helpers.
    from hub.http import openapi_directory as directory
    from hub.http import openapi_public as public  # the finder and the feed (docs/finder.md)

    paths = copy.deepcopy({**PATHS, **directory.PATHS, **public.PATHS})
    write_scopes = {**WRITE_SCOPES, **directory.WRITE_SCOPES}
    for path, item in paths.items():
        for op in item.values():
            if path.startswith("/api/"):  # any query parameter not listed: 400
                op["responses"].setdefault("400", _err("BadRequest"))
            for status, response in _ERROR_ON_EVERY_OPERATION.items():
                op["responses"].setdefault(status, response)
            if op.get("security") != []:
                scope = write_scopes.get(op["operationId"], "read")
                op["x-yizhan-scope"] = scope
                op["security"] = [{"bearer": [scope]}]
                op["responses"].setdefault("403", _err("Forbidden"))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Yizhan hub API",
            "version": "1.0.0",
            "description": "The fleet hub's HTTP interface (Yizhan contract §11). Every "
                           "error is {\"error\": {\"code\", \"message\"}}; times are Unix "
                           "milliseconds; an integer is written as one (5, not 5.0 or "
                           "5e0). Under /api/v1 a query parameter the operation does not "
                           "list is refused (400 unknown_param); /healthz, "
                           "/metrics and /ack/{token} ignore their query. See "
                           "docs/hub-api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from api_tokens; "
                                           "an operation's scope is its x-yizhan-scope "
                                           "(read, ack, silence, command, directory; "
                                           "admin has every scope)"}},
            "schemas": {**SCHEMAS, **directory.SCHEMAS},
            "responses": RESPONSES,
        },
    }


def scope(path: str, method: str) -> str | None:
    """The scope a token needs for ``method`` on ``path`` (as the document writes it,
    ``/api/v1/stations/{sid}``); None when the operation takes no token, ``admin``
    when the document does not describe it (an undescribed route is for admins only)."""
    op = _document()["paths"].get(path, {}).get(method.lower())
    if op is None:
        return "admin"
    return op.get("x-yizhan-scope")


def query_names(path: str, method: str) -> frozenset[str]:
    """The query parameters the document lists for ``method`` on ``path``; the app
    refuses any other (hub/http/web.py). None listed for an undescribed operation."""
    op = _document()["paths"].get(path, {}).get(method.lower(), {})
    return frozenset(p["name"] for p in op.get("parameters", []) if p["in"] == "query")


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
