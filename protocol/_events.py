"""Event (contract §6) and the data each known type carries; import from
:mod:`protocol.messages`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import msgspec

from protocol._fields import (
    MAX_INT,
    MAX_SLOT,
    NULLABLE,
    OPT,
    RIDER_FORM,
    VERSION,
    Envelope,
    env_dict,
    envelope,
    read_int,
    read_num,
    read_obj,
    read_str,
    read_wire,
)
from protocol._state import DISPENSER_FAULTS, LEVEL_STATES, SLOT_FAULTS
from protocol.errors import InvalidMessage
from protocol.ids import RIDER_RE
from protocol.topics import Kind

UNLOCK_FAIL_REASONS = frozenset({"jammed", "timeout", "not_taken", "bad_slot", "board_offline"})
REFILL_WHAT = frozenset({"water", "banks", "cups"})
_EVENT_TYPE_RE = re.compile(r"^[a-z0-9_]{1,64}\Z")


# A data-key checker takes (data, key, path prefix), returns the value or raises
# InvalidMessage; a spec lists the keys a known event type must carry.
def _spec(**checks: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(checks.items())


def _slot_no(d, k, p):
    return read_int(d, k, p, lo=1, hi=MAX_SLOT)


def _text(d, k, p):
    return read_str(d, k, p)


def _bank_or_null(d, k, p):
    # null where the cabinet cannot read bank ids (docs/protocol.md §6)
    return read_str(d, k, p, NULLABLE)


def _charge(d, k, p):
    return read_int(d, k, p, NULLABLE, lo=0, hi=100)


def _rider(d, k, p):
    return read_str(d, k, p, pattern=RIDER_RE, form=RIDER_FORM)


def _rider_or_null(d, k, p):
    return read_str(d, k, p, NULLABLE, pattern=RIDER_RE, form=RIDER_FORM)


def _choice(choices: frozenset[str]):
    return lambda d, k, p: read_str(d, k, p, choices=choices)


def _level(d, k, p):
    return read_num(d, k, p, NULLABLE, lo=0, hi=1)


def _count(d, k, p):
    return read_int(d, k, p, lo=0)


#: The most one ``water_drawn`` event may carry: a dispenser's draws and their
#: water over one flush (15 minutes by default; more after a long outage of the
#: station loop) stay far below these, and a report summing months of them
#: stays far from any integer's limit (docs/protocol.md §6).
MOST_DRAWN_ML = 10_000_000
MOST_DRAWS = 100_000


def _drawn_ml(d, k, p):
    return read_int(d, k, p, lo=0, hi=MOST_DRAWN_ML)


def _draws(d, k, p):
    return read_int(d, k, p, lo=1, hi=MOST_DRAWS)


_EVENT_SPECS: dict[str, tuple[tuple[str, Any], ...]] = {
    "door_opened": _spec(door=_text),
    "door_closed": _spec(door=_text),
    "bank_borrowed": _spec(slot=_slot_no, bank=_bank_or_null, charge=_charge, rider=_rider),
    "bank_returned": _spec(slot=_slot_no, bank=_bank_or_null, charge=_charge, rider=_rider_or_null),
    "unlock_failed": _spec(slot=_slot_no, reason=_choice(UNLOCK_FAIL_REASONS)),
    "slot_fault": _spec(slot=_slot_no, fault=_choice(SLOT_FAULTS)),
    "slot_fault_cleared": _spec(slot=_slot_no, fault=_choice(SLOT_FAULTS)),
    "locker_offline": (),
    "locker_online": (),
    "water_level": _spec(level_state=_choice(LEVEL_STATES), level=_level),
    "dispenser_fault": _spec(fault=_choice(DISPENSER_FAULTS)),
    "dispenser_fault_cleared": _spec(fault=_choice(DISPENSER_FAULTS)),
    "heater_lockout": _spec(reason=_text),
    "heater_lockout_cleared": _spec(reason=_text),
    "refilled": _spec(what=_choice(REFILL_WHAT), staff=_text),
    "maintenance_started": _spec(staff=_text),
    "maintenance_ended": _spec(staff=_text),
    "tamper": _spec(door=_text),
    "visit": _spec(count=_count),
    "water_drawn": _spec(draws=_draws, ml=_drawn_ml),
}
# The event types of contract §6 and the data keys each must carry. Readers accept
# other types too (stored, not acted on).
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    t: tuple(k for k, _ in spec) for t, spec in _EVENT_SPECS.items()
}


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, numbered gap-free by ``seq`` per (sid, epoch)."""

    KIND: ClassVar[Kind] = Kind.EVENT

    sid: str
    epoch: str
    ts: int
    synced: bool
    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    v: int = VERSION

    @property
    def is_known(self) -> bool:
        """Whether the type is one of contract §6 (others are stored, not acted on)."""
        return self.type in _EVENT_SPECS

    def to_dict(self) -> dict[str, Any]:
        d = env_dict(self)
        d["seq"] = self.seq
        d["type"] = self.type
        d["data"] = self.data
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> Event:
        sid, epoch, ts, synced = envelope(d, topic_sid)
        seq = read_int(d, "seq", "", lo=1)
        etype = read_str(d, "type", "", pattern=_EVENT_TYPE_RE, form="1-64 chars of a-z, 0-9, _")
        # Events without data (locker_offline) may omit the object altogether.
        data = read_obj(d, "data", "", OPT)
        data = {} if data is None else data
        for key, check in _EVENT_SPECS.get(etype, ()):
            check(data, key, "data.")
        return cls(sid, epoch, ts, synced, seq, etype, data)

    @classmethod
    def from_json(cls, text: str, topic_sid: str | None = None) -> Event | None:
        """The Event msgspec reads from ``text`` (its data checked as above), or
        None when it refuses: then :meth:`from_dict` judges, and says why."""
        w = read_wire(_EVENT_WIRE, text, topic_sid)
        if w is None:
            return None
        data = {} if w.data is None else w.data
        try:
            for key, check in _EVENT_SPECS.get(w.type, ()):
                check(data, key, "data.")
        except InvalidMessage:
            return None
        return cls(w.sid, w.epoch, w.ts, w.synced, w.seq, w.type, data)


class _EventWire(Envelope):
    seq: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    type: Annotated[str, msgspec.Meta(pattern=_EVENT_TYPE_RE.pattern)]
    data: dict[str, Any] | None = None


_EVENT_WIRE = msgspec.json.Decoder(_EventWire)
