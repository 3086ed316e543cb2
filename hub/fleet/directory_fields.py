"""What the Directory's API takes, checked field by field (hub/fleet/directory.py).

Every value comes from a request body and may be hostile: wrong types, huge
integers, unicode digits, control characters, lone surrogates. A check returns
the clean value or raises :class:`BadField` naming the field and the fix.
"""

from __future__ import annotations

import re
from typing import Any

from protocol.errors import InvalidIdentifier
from protocol.ids import RIDER_RE, check_sid

#: Staff ids as the kiosk's on-screen keyboard types them (kiosk/staff.py).
STAFF_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
#: A PIN as the kiosk's keypad takes it (kiosk/staff.py, kiosk/riders.py).
PIN_PATTERN = r"[0-9]{4,8}"
#: A mainland mobile number, exactly its 11 ASCII digits (contract §1).
PHONE_PATTERN = r"1[3-9][0-9]{9}"
#: A Feishu open id (``ou_`` and letters/digits): how a Feishu bot @-mentions a person,
#: who cannot be reached there by phone number.
FEISHU_OPEN_ID_PATTERN = r"ou_[A-Za-z0-9]{1,64}"
#: Printable text: no control characters (what the OpenAPI document states)...
TEXT_PATTERN = r"[^\u0000-\u001f\u007f-\u009f]"
NAME_MAX = 64
REASON_MAX = 200
GROUP_MAX = 64
GROUPS_MAX = 32
MAX_PER_RIDER_MAX = 10
LOAN_HOURS_MAX = 720  # 30 days
POLICY_FIELDS = ("lending", "min_charge", "max_per_rider", "loan_hours")
LENDING = ("open", "registered")

_STAFF_ID = re.compile(STAFF_ID_PATTERN + r"\Z")
_PIN = re.compile(PIN_PATTERN + r"\Z")
_PHONE = re.compile(PHONE_PATTERN + r"\Z")
_FEISHU_OPEN_ID = re.compile(FEISHU_OPEN_ID_PATTERN + r"\Z")
#: ...and no lone surrogates, which a JSON body can carry (\ud800) but UTF-8 cannot.
_TEXT = re.compile(r"[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+\Z")


class BadField(ValueError):
    """A field of a request that cannot be taken; ``code`` for the API's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def text(value: Any, field: str, most: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= most or not _TEXT.match(value):
        raise BadField(f"bad_{field}", f"{field} must be text of 1 to {most} characters "
                       "without control characters")
    return value


def staff_id(value: Any) -> str:
    if not isinstance(value, str) or not _STAFF_ID.match(value):
        raise BadField("bad_id", "id must be 1 to 64 of a-z, 0-9, '.', '_', '-', starting "
                       "with a letter or digit (what the kiosk's keyboard types)")
    return value


def pin(value: Any) -> str:
    # Never echoed: the message says what a PIN is, not what was sent.
    if not isinstance(value, str) or not _PIN.match(value):
        raise BadField("bad_pin", "pin must be 4 to 8 digits 0-9, as text")
    return value


def phone(value: Any) -> str:
    if not isinstance(value, str) or not _PHONE.match(value):
        raise BadField("bad_phone", "phone must be a mainland mobile number: 11 digits 0-9 "
                       "starting 13 to 19, without +86 or spaces")
    return value


def feishu_open_id(value: Any) -> str:
    if not isinstance(value, str) or not _FEISHU_OPEN_ID.match(value):
        raise BadField("bad_feishu_open_id", "feishu_open_id must be the person's Feishu "
                       "open id: ou_ and 1 to 64 letters or digits")
    return value


def rider(value: Any) -> str:
    if not isinstance(value, str) or not RIDER_RE.match(value):
        raise BadField("bad_rider", "rider must be a rider id: r: and 24 hex digits 0-9a-f")
    return value


def sid(value: Any) -> str:
    if not isinstance(value, str):
        raise BadField("bad_sid", "sid must be a station id")
    try:
        check_sid(value)
    except InvalidIdentifier as err:
        raise BadField("bad_sid", str(err)) from None
    return value


def groups(value: Any) -> list[str]:
    # null is refused, not read as []: [] gives the staff member every station, and a
    # client's null (a field it failed to fill) must not do that silently.
    if not isinstance(value, list) or len(value) > GROUPS_MAX:
        raise BadField("bad_groups", f"groups must be a list of at most {GROUPS_MAX} group "
                       "names ([] or absent: every station)")
    return sorted({text(g, "groups", GROUP_MAX) for g in value})


def whole(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadField(f"bad_{field}", f"{field} must be an integer from {lo} to {hi}")
    return value


def policy(body: Any) -> dict[str, Any]:
    """An override: the fields given (at least one), each bounded."""
    if not isinstance(body, dict):
        raise BadField("bad_body", "the body must be a JSON object of policy fields")
    unknown = sorted(set(body) - set(POLICY_FIELDS))
    if unknown:
        raise BadField("bad_body", f"unknown field {unknown[0][:40]!r}; a policy takes "
                       + ", ".join(POLICY_FIELDS))
    # A field given is checked, null included: an override is replaced whole, so a
    # field left out already falls back to the group's or the fleet's, and a null
    # taken as "left out" would let a client's unfilled field pass unnoticed.
    out: dict[str, Any] = {}
    if "lending" in body:
        if body["lending"] not in LENDING:
            raise BadField("bad_lending", "lending must be open or registered (leave it "
                           "out to keep the group's or the fleet's)")
        out["lending"] = body["lending"]
    bounds = {"min_charge": (0, 100), "max_per_rider": (0, MAX_PER_RIDER_MAX),
              "loan_hours": (1, LOAN_HOURS_MAX)}
    for field, (lo, hi) in bounds.items():
        if field in body:
            out[field] = whole(body[field], field, lo, hi)
    if not out:
        raise BadField("bad_body", "give at least one of " + ", ".join(POLICY_FIELDS)
                       + " (DELETE removes the override)")
    return out


def known_only(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadField("bad_body", f"unknown field {unknown[0][:40]!r}; this takes "
                       + ", ".join(fields))
