"""Directory (contract §8), the lending policy and who may borrow or maintain;
import from :mod:`protocol.messages`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol._fields import (
    OPT,
    RIDER_FORM,
    VERSION,
    check_v,
    read_int,
    read_list,
    read_obj,
    read_str,
    type_name,
)
from protocol.errors import InvalidMessage
from protocol.ids import RIDER_RE
from protocol.topics import Kind

LENDING_MODES = frozenset({"open", "registered"})


@dataclass(frozen=True, slots=True)
class Policy:
    """Lending rules; ``registered`` lends only to listed riders with their PIN."""

    lending: str = "open"
    min_charge: int = 80
    max_per_rider: int = 1
    loan_hours: int = 24

    def to_dict(self) -> dict[str, Any]:
        return {
            "lending": self.lending,
            "min_charge": self.min_charge,
            "max_per_rider": self.max_per_rider,
            "loan_hours": self.loan_hours,
        }

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Policy:
        # Absent keys take the defaults, so a hub may send only what it changes.
        lending = read_str(d, "lending", p, OPT, choices=LENDING_MODES)
        min_charge = read_int(d, "min_charge", p, OPT, lo=0, hi=100)
        max_per_rider = read_int(d, "max_per_rider", p, OPT, lo=0)
        loan_hours = read_int(d, "loan_hours", p, OPT, lo=1)
        return cls(
            "open" if lending is None else lending,
            80 if min_charge is None else min_charge,
            1 if max_per_rider is None else max_per_rider,
            24 if loan_hours is None else loan_hours,
        )


@dataclass(frozen=True, slots=True)
class RiderEntry:
    """A registered rider; ``pin`` is a password hash, never the PIN."""

    id: str
    pin: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pin": self.pin}


@dataclass(frozen=True, slots=True)
class StaffEntry:
    """A maintenance worker who may log in on the kiosk."""

    id: str
    name: str
    pin: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "pin": self.pin}


def _entries(d: dict, key: str) -> list[tuple[str, dict]]:
    out = []
    for i, e in enumerate(read_list(d, key, "", OPT) or ()):
        p = f"{key}[{i}]"
        if not isinstance(e, dict):
            raise InvalidMessage(p, f"must be an object, got {type_name(e)}")
        out.append((p + ".", e))
    return out


@dataclass(frozen=True, slots=True)
class Directory:
    """Who may borrow and who may maintain, as the station should enforce offline."""

    KIND: ClassVar[Kind] = Kind.DIRECTORY

    rev: int
    ts: int
    policy: Policy = field(default_factory=Policy)
    riders: tuple[RiderEntry, ...] = ()
    staff: tuple[StaffEntry, ...] = ()
    denied: tuple[str, ...] = ()
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "rev": self.rev,
            "ts": self.ts,
            "policy": self.policy.to_dict(),
            "riders": [r.to_dict() for r in self.riders],
            "staff": [s.to_dict() for s in self.staff],
            "denied": list(self.denied),
        }

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> Directory:
        check_v(d)
        rev = read_int(d, "rev", "", lo=0)
        ts = read_int(d, "ts", "", lo=0)
        pol = read_obj(d, "policy", "", OPT)
        policy = Policy() if pol is None else Policy.from_dict(pol, "policy.")
        riders = tuple(
            RiderEntry(
                read_str(e, "id", p, pattern=RIDER_RE, form=RIDER_FORM), read_str(e, "pin", p)
            )
            for p, e in _entries(d, "riders")
        )
        staff = tuple(
            StaffEntry(read_str(e, "id", p), read_str(e, "name", p), read_str(e, "pin", p))
            for p, e in _entries(d, "staff")
        )
        denied = []
        for i, rid in enumerate(read_list(d, "denied", "", OPT) or ()):
            if not isinstance(rid, str) or not RIDER_RE.match(rid):
                raise InvalidMessage(f"denied[{i}]", f"must be {RIDER_FORM}; got {rid!r}")
            denied.append(rid)
        return cls(rev, ts, policy, riders, staff, tuple(denied))
