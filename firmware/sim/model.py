"""The physics of a power-bank cabinet: banks, locks and chargers, no wire.

:class:`Cabinet` is what a simulated locker board reports and acts on. It moves
only with time, and time comes from outside: ``tick(seconds)`` moves the model by
itself, and every call first catches up with the injected clock, so a test that
shares a :class:`~yizhan.clock.ManualClock` with the agent moves both at once.

>>> from yizhan.clock import ManualClock
>>> cab = Cabinet(2, banks={1: ("PB0012AF", 96)}, clock=ManualClock())
>>> cab.unlock(1).name, cab.slot(1).locked
('RELEASED', False)
>>> cab.take(1)
'PB0012AF'
>>> cab.tick(10.0)            # the release window ends and the latch re-engages
>>> cab.slot(1).locked, cab.slot(1).present
(True, False)
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from firmware.sim.timeline import Timeline
from protocol.frames import ChargeResult, SlotRecord, UnlockResult
from yizhan.clock import SYSTEM_CLOCK, Clock

#: Faults a test or the demo may script with ``set_fault`` (a jam has its own verbs).
SCRIPTABLE_FAULTS = ("charger_fault", "sensor_fault", "overheat")

# Bank temperatures the board would report: ambient, warm while charging, and
# what a thermistor reads when the cell overheats.
_AMBIENT_C = 26
_CHARGING_C = 31
_OVERHEAT_C = 65


class SimulatorError(Exception):
    """Root of the simulator's errors."""


class SlotError(SimulatorError, ValueError):
    """An impossible physical act: taking a locked bank, filling a full slot."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A bank a simulated rider took out of the cabinet."""

    slot: int
    bank_id: str
    charge: int
    at: float  # model seconds


class _Slot:
    __slots__ = (
        "bank_id",
        "busy",
        "charge",
        "charging_enabled",
        "fault",
        "jammed",
        "locked",
        "number",
        "released_until",
        "take_at",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.bank_id: str | None = None
        self.charge = 0.0  # kept fractional so slow charging still adds up
        self.charging_enabled = True
        self.locked = True  # no lock opens on power-up (design principle 4)
        self.released_until: float | None = None
        self.take_at: float | None = None
        self.jammed = False
        self.busy = False
        self.fault: str | None = None

    @property
    def charging(self) -> bool:
        return (
            self.bank_id is not None
            and self.charging_enabled
            and self.charge < 100
            and self.fault not in ("charger_fault", "overheat")
        )


def default_banks(n_slots: int, station: str | None = None) -> dict[int, tuple[str, int]]:
    """A full cabinet with varied charges, the same every time.

    With ``station`` the bank ids are that station's own (``PB`` + 4 hex of the
    station id's CRC + 2 hex of the slot), so simulated stations sharing a hub do
    not lend the same bank: the hub would close one station's loan when another
    lends a bank of that id.

    >>> default_banks(3)
    {1: ('PB0012A1', 57), 2: ('PB0012A2', 74), 3: ('PB0012A3', 91)}
    >>> default_banks(2, station="yh-chumen-01")
    {1: ('PBFC0701', 57), 2: ('PBFC0702', 74)}
    """
    if station is None:
        return {n: (f"PB{0x12A0 + n:06X}", 40 + (17 * n) % 61) for n in range(1, n_slots + 1)}
    tag = zlib.crc32(station.encode()) & 0xFFFF
    return {n: (f"PB{tag:04X}{n & 0xFF:02X}", 40 + (17 * n) % 61) for n in range(1, n_slots + 1)}


class Cabinet(Timeline):
    """``n_slots`` charging slots, each maybe holding a bank.

    ``banks`` maps slot → ``(bank_id, charge)`` (default: :func:`default_banks`;
    pass ``{}`` for an empty cabinet). A present bank below 100 % charges at
    ``charge_rate`` percent per minute while charging is enabled. An unlocked
    slot re-engages its lock ``release_window`` seconds later, or at once when
    a bank is pushed in. With ``auto_take`` a simulated rider takes a released
    bank ``auto_take_delay`` seconds after the release (the demo's riders);
    ``time_scale`` makes the model run faster than the clock.
    """

    def __init__(
        self,
        n_slots: int = 12,
        *,
        banks: Mapping[int, tuple[str, int]] | None = None,
        clock: Clock | None = None,
        charge_rate: float = 1.0,
        release_window: float = 10.0,
        auto_take: bool = False,
        auto_take_delay: float = 2.0,
        time_scale: float = 1.0,
    ) -> None:
        if not 1 <= n_slots <= 15:
            # 15 records of 16 bytes are the most one STATUS frame can carry.
            raise ValueError(f"n_slots must be 1..15, got {n_slots}")
        self.n_slots = n_slots
        self._init_timeline(clock or SYSTEM_CLOCK, time_scale, "cabinet-sim")
        self.charge_rate = charge_rate
        self.release_window = release_window
        self.auto_take = auto_take
        self.auto_take_delay = auto_take_delay
        self._slots = {n: _Slot(n) for n in range(1, n_slots + 1)}
        self._cycles: dict[str, int] = {}  # per bank: it keeps its count across slots
        self.taken: list[Taken] = []
        for n, (bank_id, charge) in (default_banks(n_slots) if banks is None else banks).items():
            self._slot(n)  # validates the number
            self._put(n, bank_id, charge, cycles=10 * n)

    # -- time ---------------------------------------------------------------

    def _advance(self, seconds: float) -> None:
        # Step from one due event (a take, a relock) to the next, so that charge
        # and the order of events are right however large the step.
        end = self._t + seconds
        while True:
            due = [t for s in self._slots.values() for t in (s.take_at, s.released_until)]
            upcoming = [t for t in due if t is not None and t <= end]
            target = min(upcoming, default=end)
            self._charge(max(0.0, target - self._t))
            self._t = max(self._t, target)
            if not upcoming:
                return
            self._fire_due()

    def _charge(self, seconds: float) -> None:
        gain = self.charge_rate * seconds / 60.0
        for s in self._slots.values():
            if s.charging:
                before = s.charge
                s.charge = min(100.0, s.charge + gain)
                if before < 100.0 <= s.charge and s.bank_id is not None:
                    self._cycles[s.bank_id] = self._cycles.get(s.bank_id, 0) + 1

    def _fire_due(self) -> None:
        for s in self._slots.values():
            if s.take_at is not None and s.take_at <= self._t:
                s.take_at = None
                if s.bank_id is not None and not s.locked:
                    self._remove(s)
            if s.released_until is not None and s.released_until <= self._t:
                s.released_until = None
                s.take_at = None
                s.locked = True

    # -- what the board reports ----------------------------------------------

    def slot(self, n: int) -> SlotRecord:
        """What the board reports for slot ``n`` right now."""
        with self._lock:
            self._sync()
            return self._record(self._slot(n))

    def records(self) -> list[SlotRecord]:
        with self._lock:
            self._sync()
            return [self._record(s) for s in self._slots.values()]

    def _record(self, s: _Slot) -> SlotRecord:
        present = s.bank_id is not None
        if not present or s.fault == "sensor_fault":
            temp_c = None
        elif s.fault == "overheat":
            temp_c = _OVERHEAT_C
        else:
            temp_c = _CHARGING_C if s.charging else _AMBIENT_C
        return SlotRecord(
            slot=s.number,
            present=present,
            locked=s.locked,
            charging=s.charging,
            # A sensor fault leaves the gauge unreadable too.
            charge=int(s.charge) if present and s.fault != "sensor_fault" else None,
            temp_c=temp_c,
            cycles=self._cycles.get(s.bank_id) if s.bank_id is not None else None,
            fault="lock_jammed" if s.jammed else s.fault,
            bank_id=s.bank_id,
        )

    # -- what the board does --------------------------------------------------

    def valid(self, n: int) -> bool:
        return isinstance(n, int) and n in self._slots

    def unlock(self, n: int) -> UnlockResult:
        """Pulse slot ``n``'s lock, as the UNLOCK command does."""
        with self._lock:
            self._sync()
            if not self.valid(n):
                return UnlockResult.BAD_SLOT
            s = self._slots[n]
            if s.busy:
                return UnlockResult.BUSY
            if s.jammed:
                return UnlockResult.JAMMED
            s.locked = False
            s.released_until = self._t + self.release_window
            if self.auto_take and s.bank_id is not None:
                s.take_at = self._t + min(self.auto_take_delay, self.release_window / 2)
            return UnlockResult.RELEASED

    def set_charging(self, n: int, on: bool) -> ChargeResult:
        """Switch slot ``n``'s charger, as the CHARGE command does."""
        with self._lock:
            self._sync()
            if not self.valid(n):
                return ChargeResult.BAD_SLOT
            self._slots[n].charging_enabled = bool(on)
            return ChargeResult.OK

    # -- what people do ---------------------------------------------------------

    def take(self, n: int) -> str:
        """A rider pulls the bank out of released slot ``n``; returns its id."""
        with self._lock:
            self._sync()
            s = self._slot(n)
            if s.bank_id is None:
                raise SlotError(f"slot {n} is empty")
            if s.locked:
                raise SlotError(f"slot {n} is locked; its bank cannot be taken")
            return self._remove(s).bank_id

    def insert(self, n: int, bank_id: str, charge: int, cycles: int | None = None) -> None:
        """A rider pushes a bank into empty slot ``n``; the latch catches it."""
        with self._lock:
            self._sync()
            s = self._slot(n)
            if s.bank_id is not None:
                raise SlotError(f"slot {n} already holds {s.bank_id}")
            held = [o.number for o in self._slots.values() if o.bank_id == bank_id]
            if held:
                raise SlotError(f"bank {bank_id} is already in slot {held[0]}")
            self._put(n, bank_id, charge, cycles)
            if not s.jammed:
                s.locked = True
                s.released_until = None
            s.take_at = None

    def shut(self, n: int) -> None:
        """The door of slot ``n`` is pushed shut before its release window ends:
        the latch catches now (a jammed lock is shut already)."""
        with self._lock:
            self._sync()
            s = self._slot(n)
            s.locked, s.released_until, s.take_at = True, None, None

    def place(self, n: int, bank_id: str | None, charge: int = 50) -> None:
        """The installer's hand: put a bank into slot ``n`` (or, with None, take
        it out) whatever the latch, and leave the latch as it is."""
        with self._lock:
            self._sync()
            s = self._slot(n)
            if bank_id is None:
                if s.bank_id is not None:
                    self._remove(s)
                return
            if s.bank_id is not None:
                raise SlotError(f"slot {n} already holds {s.bank_id}")
            if any(o.bank_id == bank_id for o in self._slots.values()):
                raise SlotError(f"bank {bank_id} is already in this cabinet")
            self._put(n, bank_id, charge, None)

    # -- scripted faults -----------------------------------------------------------

    def jam(self, n: int, jammed: bool = True) -> None:
        """The lock sticks shut: UNLOCK answers JAMMED, the slot reports lock_jammed."""
        with self._lock:
            self._sync()
            s = self._slot(n)
            s.jammed = jammed
            if jammed:
                s.locked, s.released_until, s.take_at = True, None, None

    def unjam(self, n: int) -> None:
        self.jam(n, False)

    def set_fault(self, n: int, fault: str | None) -> None:
        """Report ``fault`` (one of :data:`SCRIPTABLE_FAULTS`) on slot ``n``; None clears."""
        if fault is not None and fault not in SCRIPTABLE_FAULTS:
            raise ValueError(f"fault must be one of {SCRIPTABLE_FAULTS} or None, got {fault!r}")
        with self._lock:
            self._sync()
            self._slot(n).fault = fault

    def busy(self, n: int, busy: bool = True) -> None:
        """UNLOCK of slot ``n`` answers BUSY until ``busy(n, False)``."""
        with self._lock:
            self._slot(n).busy = busy

    # -- internals -----------------------------------------------------------------

    def _slot(self, n: int) -> _Slot:
        if not self.valid(n):
            raise SlotError(f"no slot {n!r}; this cabinet has slots 1..{self.n_slots}")
        return self._slots[n]

    def _put(self, n: int, bank_id: str, charge: int, cycles: int | None) -> None:
        if not (isinstance(bank_id, str) and 1 <= len(bank_id) <= 8 and bank_id.isascii()
                and bank_id.isprintable()):
            raise SlotError(f"bank id must be 1..8 printable ASCII chars, got {bank_id!r}")
        if not (isinstance(charge, int | float) and 0 <= charge <= 100):
            raise SlotError(f"charge must be 0..100, got {charge!r}")
        s = self._slots[n]
        s.bank_id, s.charge = bank_id, float(charge)
        if cycles is not None:
            self._cycles[bank_id] = cycles
        else:
            self._cycles.setdefault(bank_id, 0)

    def _remove(self, s: _Slot) -> Taken:
        assert s.bank_id is not None
        taken = Taken(s.number, s.bank_id, int(s.charge), self._t)
        self.taken.append(taken)
        s.bank_id, s.charge, s.take_at = None, 0.0, None
        return taken
