"""Where a station is and when it is open: the rider-facing facts of ``stations:``.

A station's place (``lat``/``lon``, WGS-84 degrees as a phone's GPS gives them),
its ``address``, its ``host`` (the village service centre, bank or shop that gives
it a roof) and its opening ``hours`` — ``24h`` or ``HH:MM-HH:MM``, which may
cross midnight (``20:00-08:00``). The configuration gives them; the console's
station page may override them (hub/public/meta.py). Both check them here, so a
value the finder shows was checked the same way wherever it came from.
"""

from __future__ import annotations

import math
import re
from datetime import time
from typing import Any

#: The longest address or host name taken: a full Chinese postal address fits.
MAX_TEXT = 120
ALWAYS = "24h"
_HOURS = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")
# Printable text only: no control characters, no line breaks in an address line.
_TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class BadMeta(ValueError):
    """A metadata value that cannot be taken; the message says what it must be,
    ``field`` which value it was (lat, lon, address, host, hours)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field or message.split()[0]


def coordinate(value: Any, name: str) -> float | None:
    """``lat`` (-90..90) or ``lon`` (-180..180) in degrees, or None."""
    if value is None:
        return None
    bound = 90.0 if name == "lat" else 180.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadMeta(f"{name} must be a number of degrees from {-bound:g} to {bound:g}")
    if isinstance(value, str):
        # Digits typed into a form: at most a sign, a point and 16 digits, never
        # "1e400" or "nan" (float() would take both).
        if not re.fullmatch(r"-?\d{1,3}(\.\d{1,13})?", value.strip()):
            raise BadMeta(f"{name} must be a number of degrees from {-bound:g} to {bound:g}")
        value = value.strip()
    try:
        number = float(value)
    except OverflowError:  # an int like 10**400
        number = math.inf
    if not math.isfinite(number) or not -bound <= number <= bound:
        raise BadMeta(f"{name} must be a number of degrees from {-bound:g} to {bound:g}")
    return round(number, 7)  # 1 cm: more is noise, and the feed stays short


def text(value: Any, name: str) -> str | None:
    """An address or a host: 1 to MAX_TEXT printable characters, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_TEXT \
            or not _TEXT.fullmatch(value.strip()):
        raise BadMeta(f"{name} must be text of 1 to {MAX_TEXT} characters on one line")
    return value.strip()


def hours(value: Any) -> str | None:
    """``24h``, ``HH:MM-HH:MM`` (may cross midnight; ``24:00`` only as an end), or None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == ALWAYS:
        return ALWAYS
    found = _HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or (found.group(3) == "24" and found.group(4) != "00") \
            or found.group(1, 2) == found.group(3, 4):
        raise BadMeta("hours must be 24h or HH:MM-HH:MM, like 07:00-22:00 or 20:00-08:00")
    return found.group(0)


def open_at(hours_: str | None, at: time) -> bool | None:
    """Whether a station with these hours is open at the local time ``at``; None
    when its hours are not known."""
    if hours_ is None:
        return None
    if hours_ == ALWAYS:
        return True
    start, end = (h.split(":") for h in hours_.split("-"))
    begin = int(start[0]) * 60 + int(start[1])
    finish = int(end[0]) * 60 + int(end[1])
    minute = at.hour * 60 + at.minute
    if begin < finish:
        return begin <= minute < finish
    return minute >= begin or minute < finish  # across midnight
