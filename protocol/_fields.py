"""Field readers for message decoding: one check a call, the dotted path in every error.

Plain dict lookups and isinstance checks only: the hub decodes thousands of
payloads a second, so no schema engine runs here. Each reader takes the object,
the key and the path prefix of that object (``""`` or ``"lockers.slots[1]."``),
and a mode: REQ (present, not null), NULLABLE (present, may be null) or OPT
(may be absent or null; both read as None).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.errors import InvalidMessage
from protocol.ids import EPOCH_RE, RESERVED_SIDS, SID_RE

REQ, NULLABLE, OPT = 0, 1, 2
VERSION = 1

# The same rules as types, for msgspec's reading of a payload (``from_json`` of
# each message): what these readers check, those types check in C. A JSON number
# too large for a float is "out of range" to msgspec, so ``float`` is finite here.
Version = Literal[1]
#: The largest integer any field may hold: every number the hub stores must fit
#: its 64-bit columns (an event whose ``ts`` did not was counted as held, then
#: dropped by the writer, and never replayed: lost).
MAX_INT = 2**63 - 1
#: The highest slot number: YZ-LB1 carries a slot in one byte (contract §9), so
#: a State, an event or an ``unlock`` naming slot 256 names no slot at all.
MAX_SLOT = 255
Count = Annotated[int, Meta(ge=0, le=MAX_INT)]
SlotNo = Annotated[int, Meta(ge=1, le=MAX_SLOT)]
Percent = Annotated[int, Meta(ge=0, le=100)]
Num = int | float
Fraction = Annotated[int, Meta(ge=0, le=1)] | Annotated[float, Meta(ge=0.0, le=1.0)]
NonEmpty = Annotated[str, Meta(min_length=1)]
Sid = Annotated[str, Meta(pattern=SID_RE.pattern)]
Epoch = Annotated[str, Meta(pattern=EPOCH_RE.pattern)]

SID_FORM = "a station id (a-z, 0-9, '-', 1-32 chars)"
EPOCH_FORM = "8 to 32 lowercase hex chars"
RIDER_FORM = "a rider id ('r:' + 24 lowercase hex)"


def type_name(v: Any) -> str:
    """The JSON name of a value's type, for error reasons."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _absent(d: dict, key: str, p: str, mode: int, what: str) -> None:
    """Handle a None read: return None when allowed, else raise with the right reason."""
    if mode == OPT:
        return None
    if key not in d:
        raise InvalidMessage(p + key, "missing")
    if mode == NULLABLE:
        return None
    raise InvalidMessage(p + key, f"must be {what}, got null")


def read_int(
    d: dict, key: str, p: str, mode: int = REQ, lo: int | None = None, hi: int | None = None
) -> int | None:
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "an int")
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidMessage(p + key, f"must be an int, got {type_name(v)}")
    if not -MAX_INT - 1 <= v <= MAX_INT:
        raise InvalidMessage(p + key, "must fit in 64 bits")
    if lo is not None and v < lo:
        raise InvalidMessage(p + key, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise InvalidMessage(p + key, f"must be <= {hi}, got {v}")
    return v


def read_num(
    d: dict, key: str, p: str, mode: int = REQ, lo: float | None = None, hi: float | None = None
) -> int | float | None:
    """An int or a float (never a bool); range bounds are inclusive."""
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "a number")
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise InvalidMessage(p + key, f"must be a number, got {type_name(v)}")
    if v != v or v in (float("inf"), float("-inf")):
        raise InvalidMessage(p + key, "must be a finite number")
    if lo is not None and v < lo:
        raise InvalidMessage(p + key, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise InvalidMessage(p + key, f"must be <= {hi}, got {v}")
    return v


def read_bool(d: dict, key: str, p: str, mode: int = REQ) -> bool | None:
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "a bool")
    if not isinstance(v, bool):
        raise InvalidMessage(p + key, f"must be a bool, got {type_name(v)}")
    return v


def read_str(
    d: dict,
    key: str,
    p: str,
    mode: int = REQ,
    choices: Collection[str] | None = None,
    pattern: re.Pattern[str] | None = None,
    form: str = "",
) -> str | None:
    """A non-empty string, optionally one of ``choices`` or matching ``pattern``
    (``form`` then describes the pattern in the error)."""
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "a string")
    if not isinstance(v, str):
        raise InvalidMessage(p + key, f"must be a string, got {type_name(v)}")
    if choices is not None:
        if v not in choices:
            allowed = ", ".join(sorted(c for c in choices if c is not None))
            raise InvalidMessage(p + key, f"must be one of {allowed}; got {v!r}")
    elif pattern is not None:
        if not pattern.match(v):
            raise InvalidMessage(p + key, f"must be {form or pattern.pattern}; got {v!r}")
    elif not v:
        raise InvalidMessage(p + key, "must not be empty")
    return v


def read_obj(d: dict, key: str, p: str, mode: int = REQ) -> dict | None:
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "an object")
    if not isinstance(v, dict):
        raise InvalidMessage(p + key, f"must be an object, got {type_name(v)}")
    return v


def read_list(d: dict, key: str, p: str, mode: int = REQ) -> list | None:
    v = d.get(key)
    if v is None:
        return _absent(d, key, p, mode, "an array")
    if not isinstance(v, (list, tuple)):
        raise InvalidMessage(p + key, f"must be an array, got {type_name(v)}")
    return v


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- the envelope every payload shares -------------------------------------------


def check_v(d: dict) -> int:
    v = read_int(d, "v", "")
    if v != VERSION:
        raise InvalidMessage("v", f"unsupported contract version {v}, this reader speaks 1")
    return v


def check_sid(d: dict, topic_sid: str | None) -> str:
    sid = read_str(d, "sid", "", pattern=SID_RE, form=SID_FORM)
    if sid in RESERVED_SIDS:
        raise InvalidMessage("sid", f"{sid!r} is reserved")
    if topic_sid is not None and sid != topic_sid:
        raise InvalidMessage("sid", f"{sid!r} does not match the topic's station {topic_sid!r}")
    return sid


def envelope(d: dict, topic_sid: str | None) -> tuple[str, str, int, bool]:
    """``sid, epoch, ts, synced`` of a station -> hub payload (``v`` checked too)."""
    check_v(d)
    sid = check_sid(d, topic_sid)
    epoch = read_str(d, "epoch", "", pattern=EPOCH_RE, form=EPOCH_FORM)
    ts = read_int(d, "ts", "", lo=0)
    synced = read_bool(d, "synced", "")
    return sid, epoch, ts, synced


def sid_ok(sid: str, topic_sid: str | None) -> bool:
    """The rules of :func:`check_sid` that no type says: reserved, the topic's own."""
    return sid not in RESERVED_SIDS and (topic_sid is None or sid == topic_sid)


class Header(msgspec.Struct):
    """What every station -> hub payload carries, as msgspec reads it."""

    v: Version
    sid: Sid
    epoch: Epoch


class Envelope(Header):
    """The header and the clock of every station -> hub payload but a Status
    (a last will has no clock)."""

    ts: Count
    synced: bool


def read_wire(decoder: msgspec.json.Decoder, text: str, topic_sid: str | None) -> Any:
    """msgspec's reading of ``text``, or None when it refuses it or the sid's rules do."""
    try:
        wire = decoder.decode(text)
    except (msgspec.MsgspecError, RecursionError):
        return None
    return wire if sid_ok(wire.sid, topic_sid) else None


def env_dict(m: Any) -> dict[str, Any]:
    return {"v": m.v, "sid": m.sid, "epoch": m.epoch, "ts": m.ts, "synced": m.synced}
