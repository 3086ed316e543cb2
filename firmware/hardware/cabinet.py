"""A cabinet of lock-control boards (锁控板), seen by the station as one board.

The :class:`~firmware.locker.Locker` speaks to "a board" (``info``, ``status``,
``unlock``, ``charge``, the YZ-LB1 words of contract §10). A :class:`Cabinet`
gives it that over the boards a city can buy: several boards on several RS-485
lines (:mod:`firmware.hardware.lockboards`), and optionally a Modbus relay
module that switches each slot's charging supply::

    cabinet = Cabinet([lock8a_1, lock8a_2], estimates, switches=[relays_1, relays_2])
    cabinet.info()          # (48, "lock8a x2 + modbus-io")
    cabinet.unlock(30)      # board 2, lock 6: UnlockResult.RELEASED
    cabinet.status()        # 48 SlotRecords, estimated=True

Station slots are numbered 1..N in configuration order: bus by bus, board by
board, lock by lock. What a record holds, and where it comes from:

- ``locked``: the board's feedback contact (a board without one: locked, since
  the latch re-engages by itself).
- ``present``: the board's occupancy sensor (KR-CU16 infrared), else the relay
  module's input k (``charging.occupancy: inputs``), else **derived**: a door
  that opened and shut again changed what is in the slot, an empty slot is
  full after it and a full one empty (a rider who opens a slot and leaves it
  as it was is miscounted; fit sensors where that matters).
- ``charge``, ``charging``: the station's estimate (:mod:`firmware.estimates`);
  ``bank_id``, ``temp_c``, ``cycles``: None; ``estimated``: True.
- ``fault``: ``comm`` for every slot of a board that did not answer, while the
  other boards' slots keep working; ``sensor_fault`` for a slot whose
  occupancy comes from the relay module while the module is silent.

Charging power follows presence: a bank in, its coil on; the slot empty, off.
Every status reads the coils back, and only power read back on counts toward
the estimate. All boards silent raises :class:`BoardOffline` (the Locker's
``locker_offline``); a silent relay module only pauses the estimates.

An unlock goes out once (the boards' protocols carry no transaction id; see
:class:`~firmware.hardware.lockboards.base.BoardDriver`). Its ``pulse_ms`` is
not the cabinet's to choose: these boards pulse for their own fixed time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from firmware.config import ALWAYS_ON, YZ_LB1, LockerConfig
from firmware.estimates import ChargeEstimates
from firmware.hardware.board import BoardOffline, LockerError
from firmware.hardware.lockboards import (
    CHARGE_SWITCHES,
    DRIVERS,
    BoardDriver,
    Bus,
    ChargeSwitch,
    Latch,
    LockReading,
)
from protocol.frames import ChargeResult, SlotRecord, UnlockResult
from yizhan.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["ESTIMATES_FILE", "Cabinet", "build_cabinet"]

#: In the station's data_dir.
ESTIMATES_FILE = "charge_estimates.json"

_LATCH = {
    Latch.RELEASED: UnlockResult.RELEASED,
    Latch.STILL_LOCKED: UnlockResult.JAMMED,
    Latch.BAD_LOCK: UnlockResult.BAD_SLOT,
}


class Cabinet:
    """Boards in slot order (each knows its bus) plus the charging supply.

    ``switches``: the relay modules, their channels in slot order (none: the
    supply is ``always_on``, or absent and then no bank ever counts charged).
    ``occupancy_inputs``: read each slot's module input as its bank sensor
    where the board has none.
    """

    def __init__(
        self,
        boards: Sequence[BoardDriver],
        estimates: ChargeEstimates,
        *,
        switches: Sequence[ChargeSwitch] = (),
        always_on: bool = False,
        occupancy_inputs: bool = False,
    ) -> None:
        if not boards:
            raise ValueError("a cabinet needs at least one board")
        if switches and always_on:
            raise ValueError("a supply is switched by modules or always on, not both")
        if occupancy_inputs and not switches:
            raise ValueError("occupancy_inputs needs the relay modules")
        self.boards = list(boards)
        self.estimates = estimates
        self.switches = list(switches)
        self.always_on = always_on
        self.occupancy_inputs = occupancy_inputs
        self._map: list[tuple[BoardDriver, int]] = [
            (b, lock) for b in self.boards for lock in range(1, b.locks + 1)]
        # Station slot n -> (module, its channel): the modules' channels in order.
        self._channel = [(sw, ch) for sw in self.switches
                         for ch in range(1, sw.channels + 1)][: len(self._map)]
        if self.switches and len(self._channel) < len(self._map):
            raise ValueError(f"the relay modules switch {len(self._channel)} channels; "
                             f"the cabinet has {len(self._map)} slots")
        self._buses = []
        for bus in [b.bus for b in self.boards] + [sw.bus for sw in self.switches]:
            if all(bus is not other for other in self._buses):
                self._buses.append(bus)
        self._last: dict[int, SlotRecord] = {}
        self._door_open: set[int] = set()  # derived presence: opened, not yet shut
        self._off: set[int] = set()  # slots whose charger staff switched off
        self._silent: set[int] = set()  # indexes of boards that did not answer last
        self._switch_ok: dict[int, bool] = {}  # index of a module -> it answered last
        self.port = ", ".join(bus.port for bus in self._buses)

    def __repr__(self) -> str:
        return f"<Cabinet {self.info()[1]} on {self.port}>"

    # -- the board seam: lifecycle -------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while any line is open (one gone line still leaves the others)."""
        return any(bus.is_open for bus in self._buses)

    def open(self) -> None:
        """Open every line; raises only when none opens (the first line's error)."""
        errors: list[LockerError] = []
        for bus in self._buses:
            try:
                bus.open()
            except LockerError as err:
                log.warning("cannot open %s: %s", bus.port, err)
                errors.append(err)
        if errors and len(errors) == len(self._buses):
            raise errors[0]

    def close(self) -> None:
        """Close every line, and write what was counted since the last checkpoint."""
        for bus in self._buses:
            bus.close()
        self.estimates.flush()

    # -- the board seam: requests ------------------------------------------------------

    def info(self) -> tuple[int, str]:
        """``(slots, description)``: e.g. ``(48, "lock8a x2 + modbus-io")``."""
        kinds: dict[str, int] = {}
        for b in self.boards:
            kinds[b.name] = kinds.get(b.name, 0) + 1
        words = [f"{name} x{n}" for name, n in kinds.items()]
        if self.switches:
            n = len(self.switches)
            words.append(self.switches[0].name + (f" x{n}" if n > 1 else ""))
        elif self.always_on:
            words.append("always-on")
        return len(self._map), " + ".join(words)

    def status(self) -> list[SlotRecord]:
        """Every slot's record, slot 1 first; raises :class:`BoardOffline` when no
        board answered."""
        readings: dict[int, LockReading] = {}
        silent: set[int] = set()
        errors: list[str] = []
        base = 0
        for i, board in enumerate(self.boards):
            try:
                got = board.read()
                heard = board.events()
            except BoardOffline as err:
                silent.add(i)
                errors.append(str(err))
            else:
                if self._derives(board):
                    # A door opened and shut between two polls: only the board's
                    # own change frames saw it.
                    for r in heard:
                        if 1 <= r.lock <= board.locks:  # never another board's slot
                            self._observe(base + r.lock, r.locked, occupied=None)
                for r in got:
                    if 1 <= r.lock <= board.locks:
                        readings[base + r.lock] = r
            base += board.locks
        for i in sorted(silent - self._silent):
            log.warning("%s does not answer; its slots are faulted 'comm'", self.boards[i])
        for i in sorted(self._silent - silent):
            log.info("%s answers again", self.boards[i])
        self._silent = silent
        if len(silent) == len(self.boards):
            raise BoardOffline("no lock board answers: " + "; ".join(errors))
        coils, inputs = self._read_switch()
        records = []
        for n in range(1, len(self._map) + 1):
            reading = readings.get(n)
            if reading is None:
                records.append(self._comm(n))
                continue
            locked = True if reading.locked is None else reading.locked
            occupied, fault = reading.occupied, None
            if occupied is None and self.occupancy_inputs:
                occupied = inputs[n - 1] if inputs is not None else None
                if occupied is None:
                    fault = "sensor_fault"  # its module is silent
            if fault is None:
                self._observe(n, locked, occupied)
            records.append(self._record(n, locked, fault))
        self._power(coils)
        by_slot = {r.slot: r for r in records}
        self.estimates.tick({n: self._powered(n, coils) for n in self.estimates.slots()})
        out = [self._with_estimate(by_slot[n], coils) for n in range(1, len(self._map) + 1)]
        self._last = {r.slot: r for r in out}
        return out

    def unlock(self, slot: int, pulse_ms: int = 500) -> UnlockResult:
        """Pulse ``slot``'s lock once; RELEASED, JAMMED (the feedback still says
        locked), BAD_SLOT. Raises :class:`BoardOffline` when its board is silent:
        then the lock may or may not have opened, and it is not sent again."""
        if isinstance(slot, bool) or not isinstance(slot, int) or not (
                1 <= slot <= len(self._map)):
            return UnlockResult.BAD_SLOT
        board, lock = self._map[slot - 1]
        latch = board.unlock(lock)
        if latch is Latch.UNCONFIRMED:
            if not board.caps.door_feedback:
                return UnlockResult.RELEASED  # nothing can tell; the take will
            # The board has feedback but its answer did not say: look once.
            reading = next((r for r in board.read() if r.lock == lock), None)
            latch = (Latch.RELEASED if reading is not None and reading.locked is False
                     else Latch.STILL_LOCKED)
        result = _LATCH[latch]
        if result is UnlockResult.RELEASED:
            self._door_open.add(slot)
        return result

    def charge(self, slot: int, on: bool) -> ChargeResult:
        """Staff switch ``slot``'s charger off (a hot bank) or back on; BAD_SLOT
        without a relay module. Raises :class:`BoardOffline` when it is silent."""
        if (not self.switches or isinstance(slot, bool) or not isinstance(slot, int)
                or not 1 <= slot <= len(self._map)):
            return ChargeResult.BAD_SLOT
        if on:
            self._off.discard(slot)
        else:
            self._off.add(slot)
        switch, channel = self._channel[slot - 1]
        switch.set(channel, bool(on) and self.estimates.held(slot))
        return ChargeResult.OK

    # -- presence and power ------------------------------------------------------------

    def _derives(self, board: BoardDriver) -> bool:
        """True when ``board``'s slots know presence only from door cycles."""
        return not board.caps.occupancy and not self.occupancy_inputs

    def _observe(self, slot: int, locked: bool | None, occupied: bool | None) -> None:
        """What one reading says about the bank in ``slot``."""
        held = self.estimates.held(slot)
        if occupied is not None:  # measured
            self._door_open.discard(slot)
            if occupied and not held:
                self.estimates.arrived(slot)
            elif not occupied and held:
                self.estimates.left(slot)
            return
        if locked is False:
            self._door_open.add(slot)
        elif locked is True and slot in self._door_open:
            # The door shut again: derived presence flips.
            self._door_open.discard(slot)
            if held:
                self.estimates.left(slot)
            else:
                self.estimates.arrived(slot)

    def _read_switch(self) -> tuple[list[bool | None] | None, list[bool | None] | None]:
        """Per slot, the coil and (when they sense banks) the input; None for a
        slot whose module did not answer, and no lists without modules."""
        if not self.switches:
            return None, None
        coils: list[bool | None] = []
        inputs: list[bool | None] = []
        for i, switch in enumerate(self.switches):
            try:
                got_coils = switch.coils()
                got_inputs = switch.inputs() if self.occupancy_inputs else None
            except LockerError as err:
                if self._switch_ok.get(i) is not False:
                    log.warning("%s does not answer (%s); charge estimates of its slots "
                                "paused", switch.describe(), err)
                self._switch_ok[i] = False
                coils.extend([None] * switch.channels)
                inputs.extend([None] * switch.channels)
                continue
            if self._switch_ok.get(i) is False:
                log.info("%s answers again", switch.describe())
            self._switch_ok[i] = True
            coils.extend(got_coils)
            inputs.extend(got_inputs if got_inputs is not None else [None] * switch.channels)
        return coils, (inputs if self.occupancy_inputs else None)

    def _power(self, coils: list[bool | None] | None) -> None:
        """Coils follow presence: on for a held bank (unless staff said off)."""
        if coils is None:
            return
        failed: set[int] = set()  # modules that refused once this round
        for n in range(1, len(self._map) + 1):
            want = self.estimates.held(n) and n not in self._off
            switch, channel = self._channel[n - 1]
            if coils[n - 1] is None or coils[n - 1] == want or id(switch) in failed:
                continue
            try:
                switch.set(channel, want)
            except LockerError as err:
                # The rest of that module would fail alike; the next status tries again.
                failed.add(id(switch))
                log.warning("cannot switch the charger of slot %d %s: %s", n,
                            "on" if want else "off", err)
            # Power that was just switched on counts from the next look on.

    def _powered(self, slot: int, coils: list[bool | None] | None) -> bool:
        if self.always_on:
            return True
        return coils is not None and coils[slot - 1] is True

    # -- records ---------------------------------------------------------------------------

    def _record(self, n: int, locked: bool, fault: str | None) -> SlotRecord:
        return SlotRecord(slot=n, present=self.estimates.held(n), locked=locked,
                          charging=False, charge=None, temp_c=None, cycles=None,
                          fault=fault, bank_id=None, estimated=True)

    def _comm(self, n: int) -> SlotRecord:
        """A slot of a silent board: its last known record, faulted."""
        last = self._last.get(n)
        if last is None:
            return self._record(n, True, "comm")
        return replace(last, fault="comm")

    def _with_estimate(self, r: SlotRecord, coils: list[bool] | None) -> SlotRecord:
        held = self.estimates.held(r.slot)
        charge = self.estimates.charge(r.slot)
        charging = held and self._powered(r.slot, coils) and (charge or 0) < 100
        return replace(r, present=held, charge=charge, charging=charging)


def build_cabinet(config: LockerConfig, data_dir: Path, clock: Clock, *,
                  bus_ports: Sequence[str] | None = None,
                  charging_port: str | None = None) -> Cabinet:
    """The cabinet ``lockers`` describes (``driver`` other than yz-lb1).

    ``bus_ports``/``charging_port`` replace the configured ports (the
    simulators' pseudo-terminals under ``hardware: sim``). The estimates live in
    ``data_dir/charge_estimates.json``. Nothing is opened here.
    """
    if config.driver == YZ_LB1:
        # Registered as a driver for the conformance suite, yet a yz-lb1
        # station is the LockerBoard: the board measures charge, nothing is estimated.
        raise ValueError("lockers.driver yz-lb1 is the LockerBoard (firmware.hardware.board), "
                         "not a Cabinet of lock-control boards")
    kind = DRIVERS[config.driver]
    boards: list[BoardDriver] = []
    for i, line in enumerate(config.buses):
        bus = Bus(bus_ports[i] if bus_ports else line.port, baudrate=line.baudrate)
        boards.extend(kind(bus, b.address, b.locks, locked_when=b.locked_when)
                      for b in line.boards)
    charging = config.charging
    if charging is None:  # the configuration refuses this; a caller may not
        raise ValueError(f"a {config.driver} cabinet needs lockers.charging")
    switches: list[ChargeSwitch] = []
    if charging.driver != ALWAYS_ON:
        port = charging_port or charging.port
        # Modules on one of the locks' lines share that line (same speed, checked
        # by the configuration): one request on it at a time.
        bus = next((b.bus for b in boards if b.bus.port == port), None) or Bus(
            port, baudrate=charging.baudrate)
        switches = [CHARGE_SWITCHES[charging.driver](bus, address=a, channels=c)
                    for a, c in charging.units]
    estimates = ChargeEstimates(Path(data_dir) / ESTIMATES_FILE, clock, charging.charge_time)
    return Cabinet(boards, estimates, switches=switches,
                   always_on=charging.driver == ALWAYS_ON,
                   occupancy_inputs=charging.occupancy == "inputs")
