"""What an alert's ``value`` carries, per rule: the keys and their types, declared once.

The engine builds every value through :func:`alert_value`, which refuses a key
the rule does not declare or a value of the wrong type; the texts (the engine's
summaries, the notifications, the ack page) read values only through
:func:`read_value`, by the keys declared here::

    >>> alert_value("slot_fault", slot=3, fault="lock_jammed")
    {'slot': 3, 'fault': 'lock_jammed'}
    >>> read_value("slot_fault", {"slot": 3, "fault": "lock_jammed"})
    {'slot': 3, 'fault': 'lock_jammed'}

A value that does not fit (written before the shapes, or by hand through
``AlertStore.raise_alert``) reads as its declared keys with None where it says
nothing; a bare number or word written before the shapes reads as the first of
the rule's ``bare`` keys it fits::

    >>> read_value("water_low", 0.18)
    {'level': 0.18, 'level_state': None}
    >>> read_value("water_low", {"level": "high"})
    {'level': None, 'level_state': None}

A rule without keys has the value None. docs/alerts.md lists the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hub.config.rules import NOTIFY_FAILING, NOTIFY_TEST, RULES

#: Key types: a number is an int or a float (never a bool, though Python counts it one).
NUMBER, INT, TEXT, FLAG = "number", "int", "text", "flag"


@dataclass(frozen=True)
class Key:
    """One key of a value: its ``type`` (``NUMBER``, ``INT``, ``TEXT``, ``FLAG``), and
    whether None is a value it may have (``optional``: the station did not say)."""

    type: str
    optional: bool = False

    def fits(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, bool):
            return self.type == FLAG
        if self.type == NUMBER:
            return isinstance(v, int | float)
        if self.type == INT:
            return isinstance(v, int)
        return isinstance(v, str) if self.type == TEXT else False


@dataclass(frozen=True)
class Shape:
    """The keys of one rule's value, and which of them a bare value stands for."""

    keys: Mapping[str, Key]
    bare: tuple[str, ...] = ()


def _shape(*bare: str, **keys: Key) -> Shape:
    return Shape(keys, bare)


_LEVEL = _shape("level", "level_state", level=Key(NUMBER, True),  # 0..1
                level_state=Key(TEXT, True))  # ok, low, empty, unknown
_LEFT = _shape("seconds", seconds=Key(INT))  # time left until empty

SHAPES: dict[str, Shape] = {
    "station_offline": _shape("reason", reason=Key(TEXT, True)),  # lost, shutdown, silent
    "water_low": _LEVEL,
    "water_empty": _LEVEL,
    "water_predicted_empty": _LEFT,
    "chargers_low": _shape("ready", ready=Key(INT)),  # banks ready to lend
    "chargers_predicted_empty": _LEFT,
    "door_open_too_long": _shape("door", door=Key(TEXT), open_s=Key(INT)),
    "tamper": _shape("door", door=Key(TEXT)),
    "dispenser_fault": _shape("fault", fault=Key(TEXT)),  # contract §5, or offline
    "heater_lockout": _shape(fault=Key(TEXT, True)),  # the dispenser's fault beside it
    "locker_offline": _shape(),
    "slot_fault": _shape("fault", slot=Key(INT), fault=Key(TEXT)),
    "unlock_failed": _shape("reason", slot=Key(INT), reason=Key(TEXT)),
    # bank None: a loan of a cabinet that cannot read bank ids (hub/fleet/loans.py)
    "bank_overdue": _shape(bank=Key(TEXT, True), due_at=Key(INT), overdue_s=Key(INT)),
    "pi_overheat": _shape("temp_c", temp_c=Key(NUMBER)),
    "undervoltage": _shape(),
    "disk_low": _shape("disk_free_mb", disk_free_mb=Key(NUMBER)),
    NOTIFY_FAILING: _shape(notifier=Key(TEXT), reason=Key(TEXT, True)),
    NOTIFY_TEST: _shape(route=Key(TEXT), test=Key(FLAG)),
}
assert set(SHAPES) == {*RULES, NOTIFY_FAILING, NOTIFY_TEST}, "a shape for every rule"


def alert_value(rule: str, **keys: Any) -> dict[str, Any] | None:
    """The value of an alert of ``rule``: exactly its declared keys, each of its type
    (None for a rule without keys). A mistake is the code's, so it raises TypeError."""
    shape = SHAPES[rule]
    if keys.keys() != shape.keys.keys():
        raise TypeError(f"a {rule} value has the keys {', '.join(shape.keys) or 'none'}, "
                        f"not {', '.join(keys) or 'none'}")
    for name, v in keys.items():
        if not shape.keys[name].fits(v):
            raise TypeError(f"{rule} value {name}={v!r} is not {shape.keys[name].type}")
    return keys or None


def read_value(rule: str, value: Any) -> dict[str, Any]:
    """``value`` read by ``rule``'s declared keys: each of its type, else None.
    An unknown rule has no keys."""
    shape = SHAPES.get(rule)
    if shape is None:
        return {}
    out = dict.fromkeys(shape.keys)
    if isinstance(value, Mapping):
        for name, key in shape.keys.items():
            v = value.get(name)
            out[name] = v if v is not None and key.fits(v) else None
    elif value is not None:
        for name in shape.bare:
            if shape.keys[name].fits(value):
                out[name] = value
                break
    return out
