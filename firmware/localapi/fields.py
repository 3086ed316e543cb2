"""Reading a request's JSON body and checking its fields; a bad one is an ApiError
naming the field, before anything changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import request

from firmware.lending import PIN_RE
from firmware.localapi.errors import ApiError
from protocol.ids import RIDER_RE
from yizhan.untrusted import BadJson, json_value

__all__ = ["body", "pin", "rider"]


def body() -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    data = None
    # Not request.get_json: it lets a RecursionError (deep nesting) through as a 500.
    if request.is_json:
        try:
            data = json_value(request.get_data(cache=True))
        except BadJson:
            data = None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object "
                                        "(Content-Type: application/json)")
    return data


def rider(data: Mapping[str, Any]) -> str:
    """The ``rider`` field: a rider id, never a phone number."""
    if "rider" not in data or data["rider"] in (None, ""):
        raise ApiError(400, "missing_field", "rider is required (a rider id, r: + 24 hex)")
    value = data["rider"]
    if not isinstance(value, str) or not RIDER_RE.match(value):
        digits = isinstance(value, (str, int)) and str(value).lstrip("+").replace(" ", "")
        if digits and digits.isdigit():
            raise ApiError(400, "bad_rider", "send the rider id (r: + 24 hex), "
                                             "never the phone number")
        raise ApiError(400, "bad_rider", "rider must be a rider id: r: + 24 lowercase hex")
    return value


def pin(data: Mapping[str, Any], required: bool) -> str | None:
    """The ``pin`` field: 4 to 8 digits, as a string."""
    value = data.get("pin")
    if value is None:
        if required:
            raise ApiError(400, "missing_field", "pin is required")
        return None
    if not isinstance(value, str) or not PIN_RE.match(value):
        raise ApiError(400, "bad_pin_format", "pin must be a string of 4 to 8 digits")
    return value
