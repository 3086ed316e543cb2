"""State (contract §5) and its sections; import these from :mod:`protocol.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import msgspec

from protocol._fields import (
    MAX_SLOT,
    NULLABLE,
    OPT,
    VERSION,
    Count,
    Envelope,
    Fraction,
    NonEmpty,
    Num,
    Percent,
    SlotNo,
    env_dict,
    envelope,
    read_bool,
    read_int,
    read_list,
    read_num,
    read_obj,
    read_str,
    read_wire,
    type_name,
)
from protocol.errors import InvalidMessage
from protocol.topics import Kind

SlotFault = Literal["lock_jammed", "charger_fault", "sensor_fault", "overheat", "comm"]
DispenserFault = Literal["sensor", "heater", "overtemp", "dry_boil"]
LevelState = Literal["ok", "low", "empty", "unknown"]
SLOT_FAULTS = frozenset(get_args(SlotFault))
DISPENSER_FAULTS = frozenset(get_args(DispenserFault))
LEVEL_STATES = frozenset(get_args(LevelState))


@dataclass(frozen=True, slots=True)
class Slot:
    """One locker slot; ``bank`` is None when the slot is empty.

    ``estimated`` True: the board cannot read the bank (a lock-control board
    without telemetry), so ``bank`` is None even with a bank inside and
    ``charge`` is the station's estimate (None when the slot is empty). It is
    omitted on the wire when False, so measured slots read as before.
    """

    # The field types are also the wire rules msgspec checks (State.from_json).
    slot: SlotNo
    bank: NonEmpty | None
    charge: Percent | None
    charging: bool
    locked: bool
    fault: SlotFault | None
    temp_c: Num | None
    cycles: Count | None
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {
            "slot": self.slot,
            "bank": self.bank,
            "charge": self.charge,
            "charging": self.charging,
            "locked": self.locked,
            "fault": self.fault,
            "temp_c": self.temp_c,
            "cycles": self.cycles,
        }
        if self.estimated:
            d["estimated"] = True
        return d

    @classmethod
    def read(cls, d: dict) -> Slot | None:
        """The common case in one pass (the hub reads ~10 slots a State): a slot
        every field of which ``from_dict`` would accept as it is, or None to let
        ``from_dict`` say what is wrong. Exact types, as ``json.loads`` makes them."""
        try:
            slot, bank, charge, charging, locked, fault, temp_c, cycles = (
                d["slot"], d["bank"], d["charge"], d["charging"], d["locked"], d["fault"],
                d["temp_c"], d["cycles"])
        except KeyError:
            return None
        estimated = d.get("estimated", False)
        if (type(estimated) is bool and type(slot) is int and 1 <= slot <= MAX_SLOT
                and (bank is None or (type(bank) is str and bank != ""))
                and (charge is None or (type(charge) is int and 0 <= charge <= 100))
                and type(charging) is bool and type(locked) is bool
                and (fault is None or (type(fault) is str and fault in SLOT_FAULTS))
                and (temp_c is None or type(temp_c) is int
                     or (type(temp_c) is float and temp_c - temp_c == 0))  # finite
                and (cycles is None or (type(cycles) is int and cycles >= 0))):
            return cls(slot, bank, charge, charging, locked, fault, temp_c, cycles, estimated)
        return None

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Slot:
        return cls(
            slot=read_int(d, "slot", p, lo=1, hi=MAX_SLOT),
            bank=read_str(d, "bank", p, NULLABLE),
            charge=read_int(d, "charge", p, NULLABLE, lo=0, hi=100),
            charging=read_bool(d, "charging", p),
            locked=read_bool(d, "locked", p),
            fault=read_str(d, "fault", p, NULLABLE, choices=SLOT_FAULTS),
            temp_c=read_num(d, "temp_c", p, NULLABLE),
            cycles=read_int(d, "cycles", p, NULLABLE, lo=0),
            estimated=bool(read_bool(d, "estimated", p, OPT)),
        )


@dataclass(frozen=True, slots=True)
class Lockers:
    """The power-bank locker; ``online`` False means the board is silent and the
    slots are the last known."""

    online: bool
    slots: tuple[Slot, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"online": self.online, "slots": [s.to_dict() for s in self.slots]}

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Lockers:
        online = read_bool(d, "online", p)
        raw = read_list(d, "slots", p)
        slots = []
        for i, s in enumerate(raw):
            slot = Slot.read(s) if type(s) is dict else None
            if slot is None:
                sp = f"{p}slots[{i}]"
                if not isinstance(s, dict):
                    raise InvalidMessage(sp, f"must be an object, got {type_name(s)}")
                slot = Slot.from_dict(s, sp + ".")
            slots.append(slot)
        return cls(online, tuple(slots))


@dataclass(frozen=True, slots=True)
class Dispenser:
    """The hot-water dispenser; ``level`` is a 0..1 fraction or None (float switches only)."""

    online: bool
    level: Fraction | None
    level_state: LevelState
    temp_c: Num | None
    heater: bool
    heater_lockout: bool
    fault: DispenserFault | None
    dispensed_ml: Count | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "level": self.level,
            "level_state": self.level_state,
            "temp_c": self.temp_c,
            "heater": self.heater,
            "heater_lockout": self.heater_lockout,
            "fault": self.fault,
            "dispensed_ml": self.dispensed_ml,
        }

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Dispenser:
        return cls(
            online=read_bool(d, "online", p),
            level=read_num(d, "level", p, NULLABLE, lo=0, hi=1),
            level_state=read_str(d, "level_state", p, choices=LEVEL_STATES),
            temp_c=read_num(d, "temp_c", p, NULLABLE),
            heater=read_bool(d, "heater", p),
            heater_lockout=read_bool(d, "heater_lockout", p),
            fault=read_str(d, "fault", p, NULLABLE, choices=DISPENSER_FAULTS),
            dispensed_ml=read_int(d, "dispensed_ml", p, NULLABLE, lo=0),
        )


@dataclass(frozen=True, slots=True)
class Health:
    """The Pi's own health; every field is optional and omitted when None."""

    cpu_temp_c: Num | None = None
    undervoltage: bool | None = None
    throttled: bool | None = None
    disk_free_mb: Count | None = None
    uptime_s: Count | None = None
    outbox: Count | None = None
    kiosk: NonEmpty | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Health:
        return cls(
            cpu_temp_c=read_num(d, "cpu_temp_c", p, OPT),
            undervoltage=read_bool(d, "undervoltage", p, OPT),
            throttled=read_bool(d, "throttled", p, OPT),
            disk_free_mb=read_int(d, "disk_free_mb", p, OPT, lo=0),
            uptime_s=read_int(d, "uptime_s", p, OPT, lo=0),
            outbox=read_int(d, "outbox", p, OPT, lo=0),
            kiosk=read_str(d, "kiosk", p, OPT),
        )


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative per epoch."""

    visits: Count
    borrows: Count
    returns: Count

    def to_dict(self) -> dict[str, Any]:
        return {"visits": self.visits, "borrows": self.borrows, "returns": self.returns}

    @classmethod
    def from_dict(cls, d: dict, p: str) -> Counters:
        return cls(
            visits=read_int(d, "visits", p, lo=0),
            borrows=read_int(d, "borrows", p, lo=0),
            returns=read_int(d, "returns", p, lo=0),
        )


@dataclass(frozen=True, slots=True)
class State:
    """A station's snapshot; a section whose hardware the station lacks is None."""

    KIND: ClassVar[Kind] = Kind.STATE

    sid: str
    epoch: str
    ts: int
    synced: bool
    rev: int
    last_seq: int
    lockers: Lockers | None = None
    dispenser: Dispenser | None = None
    doors: dict[str, bool] | None = None
    health: Health | None = None
    counters: Counters | None = None
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        d = env_dict(self)
        d["rev"] = self.rev
        d["last_seq"] = self.last_seq
        if self.lockers is not None:
            d["lockers"] = self.lockers.to_dict()
        if self.dispenser is not None:
            d["dispenser"] = self.dispenser.to_dict()
        if self.doors is not None:
            d["doors"] = dict(self.doors)
        if self.health is not None:
            d["health"] = self.health.to_dict()
        if self.counters is not None:
            d["counters"] = self.counters.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> State:
        sid, epoch, ts, synced = envelope(d, topic_sid)
        rev = read_int(d, "rev", "", lo=0)
        last_seq = read_int(d, "last_seq", "", lo=0)
        lockers = read_obj(d, "lockers", "", OPT)
        dispenser = read_obj(d, "dispenser", "", OPT)
        doors = read_obj(d, "doors", "", OPT)
        health = read_obj(d, "health", "", OPT)
        counters = read_obj(d, "counters", "", OPT)
        if doors is not None:
            for name, is_open in doors.items():
                if not name:
                    raise InvalidMessage("doors", "door names must not be empty")
                if not isinstance(is_open, bool):
                    raise InvalidMessage(
                        f"doors.{name}", f"must be a bool, got {type_name(is_open)}"
                    )
            doors = dict(doors)
        return cls(
            sid,
            epoch,
            ts,
            synced,
            rev,
            last_seq,
            lockers=None if lockers is None else Lockers.from_dict(lockers, "lockers."),
            dispenser=None if dispenser is None else Dispenser.from_dict(dispenser, "dispenser."),
            doors=doors,
            health=None if health is None else Health.from_dict(health, "health."),
            counters=None if counters is None else Counters.from_dict(counters, "counters."),
        )

    @classmethod
    def from_json(cls, text: str, topic_sid: str | None = None) -> State | None:
        """The State msgspec reads from ``text``, or None when it refuses: then
        :meth:`from_dict` judges, and says why. (msgspec takes a quarter of the time.)"""
        w = read_wire(_STATE_WIRE, text, topic_sid)
        if w is None:
            return None
        return cls(w.sid, w.epoch, w.ts, w.synced, w.rev, w.last_seq, w.lockers, w.dispenser,
                   w.doors, w.health, w.counters)


class _StateWire(Envelope):
    """A State as msgspec reads it: required ``v``, the sections as above."""

    rev: Count
    last_seq: Count
    lockers: Lockers | None = None
    dispenser: Dispenser | None = None
    doors: dict[NonEmpty, bool] | None = None
    health: Health | None = None
    counters: Counters | None = None


_STATE_WIRE = msgspec.json.Decoder(_StateWire)
