"""A simulated cabinet of lock-control boards, numbered as the station numbers it.

``hardware: sim`` with ``lockers.driver: lock8a`` or ``kerong-cu16`` runs one
board simulator a configured line (:mod:`firmware.sim.lockboards`, each on its
own pseudo-terminal) and a Modbus relay/IO module for the charging supply. This
class puts them together in station slots 1..N, in the configuration's order,
so a test or a demo moves a rider's hands the way the agent counts slots::

    sim = CabinetSim(config.lockers, link_dir=data_dir / "sim").start()
    sim.take(3)       # the rider takes the bank from station slot 3
    sim.shut(3)       # and shuts the door
    sim.insert(5)     # a bank pushed into slot 5 (its door shuts behind it)
    sim.stop()

Every relay module of ``lockers.charging`` answers on one pseudo-terminal by
its unit address; their inputs follow the slots' occupancy, as bank sensors
wired to them would (``lockers.charging.occupancy: inputs``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from firmware.config import ALWAYS_ON, LockerConfig
from firmware.sim.lockboards import KerongChainSim, Lock8ABusSim, ModbusIOSim, SimLock
from yizhan.clock import Clock

__all__ = ["CabinetSim"]

_LINES = {"lock8a": Lock8ABusSim, "kerong-cu16": KerongChainSim}


class _RelayLine(ModbusIOSim):
    """Relay modules by unit address on one line; with ``sensing``, their inputs
    are bank sensors in the cabinet's slots, one channel a slot in order."""

    def __init__(self, cabinet: CabinetSim, units: tuple[tuple[int, int], ...],
                 sensing: bool, **kw: Any) -> None:
        first, channels = units[0]
        super().__init__(address=first, channels=channels, **kw)
        self._cabinet = cabinet
        self._sensing = sensing
        self.units = {a: ([False] * c, [False] * c) for a, c in units}
        self._first_slot: dict[int, int] = {}
        n = 1
        for a, c in units:
            self._first_slot[a] = n
            n += c

    def relay(self, slot: int) -> bool:
        for a, (coils, _inputs) in self.units.items():
            k = slot - self._first_slot[a]
            if 0 <= k < len(coils):
                with self._lock:
                    return coils[k]
        raise ValueError(f"no relay channel for slot {slot!r}")

    def _answer(self, r: Any) -> list[tuple[bytes, float]]:
        unit = self.units.get(r.unit)
        if unit is None:
            return []
        coils, inputs = unit
        if self._sensing:
            first = self._first_slot[r.unit]
            sensed = [self._cabinet.lock(first + k).occupied if first + k <= self._cabinet.n_slots
                      else False for k in range(len(inputs))]
        with self._lock:
            if self._sensing:
                inputs[:] = sensed
            # The base answers as the module at r.unit: its own lists, in place.
            self.address, self.channels, self.coils, self.inputs = (
                r.unit, len(coils), coils, inputs)
            return super()._answer(r)


class CabinetSim:
    """The boards and the charging module ``lockers`` describes, simulated.

    ``filled``: slots holding a bank at the start (default: all). ``ports`` and
    ``charging_port`` are what the agent opens.
    """

    def __init__(self, lockers: LockerConfig, link_dir: str | os.PathLike[str] | None = None,
                 clock: Clock | None = None, *, filled: bool = True) -> None:
        try:
            line_sim = _LINES[lockers.driver]
        except KeyError:
            raise ValueError(f"no cabinet simulator for driver {lockers.driver!r}") from None
        link_dir = Path(link_dir) if link_dir is not None else None
        self.lines: list[Any] = []
        self._slots: list[tuple[Any, int, int]] = []  # station slot -> (line, address, lock)
        for i, bus in enumerate(lockers.buses):
            locks = max(b.locks for b in bus.boards)
            line = line_sim(addresses=[b.address for b in bus.boards], locks=locks,
                            locked_when=bus.boards[0].locked_when, clock=clock,
                            link_path=link_dir / f"tty-{lockers.driver}-{i}" if link_dir else None)
            self.lines.append(line)
            self._slots.extend((line, b.address, n) for b in bus.boards
                               for n in range(1, b.locks + 1))
        charging = lockers.charging
        self.module: _RelayLine | None = None  # every relay module, on one line
        if charging is not None and charging.driver != ALWAYS_ON:
            self.module = _RelayLine(self, charging.units, charging.occupancy == "inputs",
                                     clock=clock,
                                     link_path=link_dir / "tty-charging" if link_dir else None)
        if filled:
            for n in range(1, self.n_slots + 1):
                self.fill(n)

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def ports(self) -> list[str]:
        return [line.port for line in self.lines]

    @property
    def charging_port(self) -> str | None:
        return self.module.port if self.module is not None else None

    def start(self) -> CabinetSim:
        try:
            for line in self.lines:
                line.start()
            if self.module is not None:
                self.module.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for line in self.lines:
            line.stop()
        if self.module is not None:
            self.module.stop()

    # -- a rider's hands, by station slot ------------------------------------------------

    def where(self, slot: int) -> tuple[Any, int, int]:
        """``(line simulator, board address, lock)`` of station ``slot``."""
        if isinstance(slot, bool) or not isinstance(slot, int) or not (
                1 <= slot <= len(self._slots)):
            raise ValueError(f"the cabinet has slots 1..{len(self._slots)}, got {slot!r}")
        return self._slots[slot - 1]

    def lock(self, slot: int) -> SimLock:
        line, address, n = self.where(slot)
        return line.lock(address, n)

    def take(self, slot: int) -> None:
        line, address, n = self.where(slot)
        line.take(address, n)

    def shut(self, slot: int) -> None:
        line, address, n = self.where(slot)
        line.shut(address, n)

    def insert(self, slot: int) -> None:
        line, address, n = self.where(slot)
        line.insert(address, n)

    def fill(self, slot: int, occupied: bool = True) -> None:
        line, address, n = self.where(slot)
        line.fill(address, n, occupied)

    def jam(self, slot: int, jammed: bool = True) -> None:
        line, address, n = self.where(slot)
        line.jam(address, n, jammed)

    def coil(self, slot: int) -> bool | None:
        """The charging relay of ``slot`` (None without a module)."""
        return self.module.relay(slot) if self.module is not None else None
