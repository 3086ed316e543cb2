"""The console's form posts described in OpenAPI 3.1 (docs/console.md, "Forms").

The console is pages for people, not an API: this document exists so a machine
can send each form every value a browser could and many it could not
(tests/test_console_forms_fuzz.py runs schemathesis from it). It says what each
form takes, as precisely as JSON Schema can say it, and how the console answers:

- 303 to the page the form was on: taken (and written to the audit log);
- 400 with that page shown again and why, naming the box: refused, nothing stored;
- 403 a role or group that may not, 404 no such alert, station, staff member ...

Every form also carries the session's CSRF token in a field ``csrf`` (a form
without it: 400, nothing done), which is not listed in the schemas below: the
test adds it to every request, as the page's form does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hub.alerting.alerts import MAX_COMMENT
from hub.config.station_meta import MAX_TEXT
from hub.config.tokens import NAME_PATTERN as TOKEN_NAME_PATTERN
from hub.config.tokens import SCOPES
from hub.console.auth import MAX_NAME, MAX_PASSWORD, MIN_PASSWORD, ROLES
from hub.fleet.directory_fields import PHONE_PATTERN, PIN_PATTERN, STAFF_ID_PATTERN
from protocol.ids import SID_PATTERN

__all__ = ["SILENCE_DURATIONS", "document"]

#: What the alerts page offers to silence a rule for.
SILENCE_DURATIONS = ("1h", "4h", "12h", "1d", "7d")

# Control characters (C0, DEL, C1) no text box takes; a station's place takes
# neither the line and paragraph separators.
_CTRL = r"\x00-\x1f\x7f-\x9f"
_PLACE_CTRL = _CTRL + r"\u2028\u2029"
# What Python's str.strip() takes off (str.isspace), written out: JSON Schema's
# \s is ECMAScript's, which differs (it leaves \x1c-\x1f and \x85, for one).
_WS = (r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f"
       r"\u205f\u3000")
# The console trims the boxes: blanks around a value are not part of it.
_B = f"[{_WS}]*"


def _text(most: int, description: str, empty: bool = False, ctrl: str = _CTRL
          ) -> dict[str, Any]:
    """1 to ``most`` characters once trimmed, none of them a control character."""
    core = rf"[^{_WS}{ctrl}](?:[^{ctrl}]{{0,{most - 2}}}[^{_WS}{ctrl}])?"
    pattern = rf"^{_B}{core}{_B}$"
    return {"type": "string", "pattern": f"^$|{pattern}" if empty else pattern,
            "description": description}


def _trimmed(pattern: str, description: str, empty: bool = False) -> dict[str, Any]:
    body = f"({pattern})?" if empty else f"({pattern})"
    return {"type": "string", "pattern": f"^{_B}{body}{_B}$", "description": description}


def _groups_box(description: str) -> dict[str, Any]:
    """Up to 32 group names split at commas (also the full-width ，), each up to 64
    characters once trimmed; blank ones are dropped."""
    seg = rf"{_B}(?:[^{_WS},，{_CTRL}](?:[^,，{_CTRL}]{{0,62}}[^{_WS},，{_CTRL}])?)?{_B}"
    return {"type": "string", "pattern": rf"^{seg}(?:[,，]{seg}){{0,31}}$",
            "description": description}


#: A PIN box is not trimmed: blanks typed into it are refused, not dropped.
PIN = {"type": "string", "pattern": f"^{PIN_PATTERN}$", "description": "4 to 8 digits"}
PHONE_OR_EMPTY = _trimmed(PHONE_PATTERN, "a mainland mobile number, or empty", empty=True)
RIDER = {"type": "string", "pattern": "^r:[0-9a-f]{24}$",
         "description": "a rider id (r: and 24 hex digits)"}
DATE_OR_EMPTY = _trimmed(r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
                         "a day YYYY-MM-DD, or empty (until removed)", empty=True)


def _form(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": required}
    return {"required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


_PAGE = {"content": {"text/html": {"schema": {"type": "string"}}}}


def _answers(*extra: str) -> dict[str, Any]:
    out = {
        "303": {"description": "taken: back to the page, which says so"},
        "400": {"description": "refused: the page again, saying which box is wrong; "
                               "nothing stored", **_PAGE},
    }
    words = {"403": "this user's role or groups may not", "404": "no such thing",
             "200": "taken: the page (the new token's secret, shown once)",
             "401": "wrong name or password", "429": "too many wrong passwords: locked",
             "409": "refused: it clashes with what is stored (a name taken, an alert "
                    "resolved already); the page again, saying so"}
    for status in extra:
        out[status] = {"description": words[status], **_PAGE}
    return out


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


ALERT_ID = _path("alert_id", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
STAFF_ID = _path("staff_id", {"type": "string", "pattern": f"^{STAFF_ID_PATTERN}$"})
RIDER_ID = _path("rider", RIDER)
STATION = _path("sid", {"type": "string", "pattern": f"^{SID_PATTERN}$"})
USER_NAME = _path("name", {"type": "string", "pattern": f"^[a-z0-9._-]{{1,{MAX_NAME}}}$"})
TOKEN_NAME = _path("name", {"type": "string", "pattern": f"^{TOKEN_NAME_PATTERN}$"})


def _op(op_id: str, summary: str, body: dict[str, Any] | None,
        params: list[dict[str, Any]] | None = None, answers: tuple[str, ...] = ("403", "409")
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary,
                           "responses": _answers(*answers)}
    if body is not None:
        out["requestBody"] = body
    if params:
        out["parameters"] = params
    return {"post": out}


STAFF_FIELDS = {
    "name": _text(64, "the name shown at the kiosk and in alerts"),
    "groups": _groups_box("groups, comma separated; empty: every station"),
    "phone": PHONE_OR_EMPTY,
}


@cache
def _paths() -> dict[str, Any]:
    return {
        "/console/people/staff": _op(
            "addStaff", "Add a staff member who signs in at the kiosks with a PIN",
            _form({"id": _trimmed(STAFF_ID_PATTERN, "a-z 0-9 . _ -"), **STAFF_FIELDS,
                   "pin": PIN}, ["id", "name", "pin"])),
        "/console/people/staff/{staff_id}": _op(
            "changeStaff", "Change a staff member (an empty PIN or phone box keeps it)",
            _form({**STAFF_FIELDS, "clear_phone": {"type": "string", "enum": ["1"]},
                   "pin": {"type": "string", "pattern": f"^({PIN_PATTERN})?$",
                           "description": "a new PIN, or empty (keeps it)"}},
                  ["name"]), [STAFF_ID], ("403", "404", "409")),
        "/console/people/staff/{staff_id}/remove": _op(
            "removeStaff", "Remove a staff member", None, [STAFF_ID], ("403", "404", "409")),
        "/console/people/riders": _op(
            "registerRider", "Register a rider by phone and PIN (neither is kept)",
            _form({"phone": _trimmed(PHONE_PATTERN, "the rider's mobile number"),
                   "pin": PIN}, ["phone", "pin"])),
        "/console/people/riders/{rider}/remove": _op(
            "removeRider", "Remove a registered rider", None, [RIDER_ID], ("403", "404", "409")),
        "/console/people/denied": _op(
            "denyRider", "Deny a rider (by phone or rider id) until a day or until removed",
            _form({"phone": _trimmed(PHONE_PATTERN, "the rider's mobile number"),
                   "reason": _text(200, "why"), "expires": DATE_OR_EMPTY},
                  ["phone", "reason"])),
        "/console/people/denied/{rider}/remove": _op(
            "allowRider", "Allow a denied rider again", None, [RIDER_ID], ("403", "404", "409")),
        "/console/tokens": _op(
            "makeToken", "Make an API token (admin); its secret is shown once",
            _form({"name": _trimmed(TOKEN_NAME_PATTERN, "A-Z a-z 0-9 . _ -"),
                   "scopes": {"type": "array", "items": {"enum": list(SCOPES)},
                              "minItems": 1}},
                  ["name", "scopes"]), None, ("200", "403", "409")),
        "/console/tokens/{name}/revoke": _op(
            "revokeToken", "Revoke an API token made here (admin)", None, [TOKEN_NAME],
            ("403", "404", "409")),
        "/console/users": _op(
            "addUser", "Add a console user (admin); maintenance needs groups",
            _form({"name": _trimmed(f"[a-z0-9._-]{{1,{MAX_NAME}}}", "a-z 0-9 . _ -"),
                   "role": {"type": "string", "enum": list(ROLES)},
                   "password": {"type": "string", "minLength": MIN_PASSWORD,
                                "maxLength": MAX_PASSWORD},
                   "groups": _groups_box("for maintenance: their groups")},
                  ["name", "role", "password"])),
        "/console/users/{name}": _op(
            "changeUser", "A console user's new password (admin)",
            _form({"action": {"type": "string", "enum": ["password"]},
                   "password": {"type": "string", "minLength": MIN_PASSWORD,
                                "maxLength": MAX_PASSWORD}},
                  ["action", "password"]), [USER_NAME], ("403", "404", "409")),
        "/console/alerts/{alert_id}/ack": _op(
            "ackAlert", "Acknowledge an alert", None, [ALERT_ID], ("403", "404", "409")),
        "/console/alerts/{alert_id}/resolve": _op(
            "resolveAlert", "Resolve an alert", None, [ALERT_ID], ("403", "404", "409")),
        "/console/alerts/{alert_id}/assign": _op(
            "assignAlert", "Give an alert to a staff member (empty: to nobody)",
            _form({"staff": _trimmed(STAFF_ID_PATTERN, "a staff id, or empty", empty=True)},
                  []), [ALERT_ID], ("403", "404", "409")),
        "/console/silences": _op(
            "silenceAlert", "Silence an alert's rule at its station for a while",
            _form({"alert": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                   "duration": {"type": "string", "enum": list(SILENCE_DURATIONS)},
                   # Any text, as the API's silences take (shown escaped).
                   "comment": {"type": "string", "maxLength": MAX_COMMENT}},
                  ["alert", "duration"]), None, ("403", "404", "409")),
        "/console/stations/{sid}/place": _op(
            "placeStation", "Where riders find the station (ops, admin)",
            _form({"action": {"type": "string", "enum": ["save"]},
                   # Both given or both empty (not known).
                   "lat": _trimmed(r"-?([0-9]|[1-8][0-9])(\.[0-9]{1,13})?",
                                   "latitude, WGS-84 degrees; empty with lon: not known",
                                   empty=True),
                   "lon": _trimmed(r"-?([0-9]|[1-9][0-9]|1[0-7][0-9])(\.[0-9]{1,13})?",
                                   "longitude, WGS-84 degrees; empty with lat: not known",
                                   empty=True),
                   "address": _text(MAX_TEXT, "the address; empty: not known", empty=True,
                                    ctrl=_PLACE_CTRL),
                   "host": _text(MAX_TEXT, "who hosts it; empty: not known", empty=True,
                                 ctrl=_PLACE_CTRL),
                   "hours": {"type": "string",
                             "pattern": rf"^$|^{_B}(24h|([01][0-9]|2[0-3]):[0-5][0-9]-"
                                        rf"([01][0-9]|2[0-3]):[0-5][0-9]){_B}$",
                             "description": "opening hours; empty: not known"}},
                  ["action", "lat", "lon", "address", "host", "hours"]),
            [STATION], ("403", "404", "409")),
        "/console/stations/{sid}/unlock": _op(
            "unlockSlot", "Open a slot's lock remotely, with a reason for the audit log",
            _form({"slot": {"type": "string", "pattern": "^[0-9]{1,3}$"},
                   "reason": _text(200, "why (kept in the audit log)")},
                  ["slot", "reason"]), [STATION], ("403", "404", "409")),
        "/console/signin": _op(
            "signIn", "Sign in (public)",
            _form({"name": {"type": "string", "maxLength": MAX_NAME},
                   "password": {"type": "string", "maxLength": MAX_PASSWORD},
                   "next": {"type": "string"}}, ["name", "password"]),
            None, ("401", "429")),
    }


@cache
def document() -> dict[str, Any]:
    """The document (a fresh copy is not needed: nothing changes it)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Yizhan hub console forms", "version": "1",
                 "description": __doc__},
        "paths": _paths(),
    }

