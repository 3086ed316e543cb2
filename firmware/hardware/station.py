"""The station's hardware edge, as configured: pins, the serial line, the Pi.

``build_hardware(config, clock)`` returns what the agent builds its parts on:
the gpiozero pin factory, the locker board client (a YZ-LB1 board, or a
:class:`~firmware.hardware.cabinet.Cabinet` of lock-control boards), the Pi's health readers and
clock-sync check. On a Pi that is gpiozero's default factory (lgpio) and the
configured serial device; with ``hardware: sim`` it is a ``MockFactory`` whose
pins the simulators drive, and a board simulator on a pseudo-terminal — the
same code above that edge either way (design principle 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from firmware.config import YZ_LB1, StationConfig
from firmware.dispenser import DispenserSpec
from firmware.doors import DoorSpec
from firmware.hardware.board import LockerBoard
from firmware.hardware.cabinet import Cabinet, build_cabinet
from firmware.hardware.clocksync import AssumedSynced, KernelClockSync
from firmware.hardware.health import PiHealth, SimHealth
from firmware.occupancy import OccupancySpec
from yizhan.clock import Clock

log = logging.getLogger(__name__)


@dataclass
class StationHardware:
    """The lowest layer the agent stands on. ``simulation`` is None on a Pi."""

    pin_factory: Any | None  # None: gpiozero's own default (lgpio on a Pi)
    board: LockerBoard | Cabinet | None  # the Locker's board seam
    health: PiHealth
    clock_sync: KernelClockSync | AssumedSynced
    dispenser: DispenserSpec | None
    doors: dict[str, DoorSpec]
    occupancy: OccupancySpec | None
    simulation: Any | None = None  # firmware.sim.station.StationSim

    def synced(self) -> bool:
        return self.clock_sync.synced()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        if self.simulation is not None:
            self.simulation.close()


def build_hardware(config: StationConfig, clock: Clock) -> StationHardware:
    if config.sim:
        from firmware.sim.station import StationSim

        sim = StationSim(config, clock)
        if sim.cabinet is not None:
            board = build_cabinet(config.lockers, config.data_dir, clock,
                                  bus_ports=sim.cabinet.ports,
                                  charging_port=sim.cabinet.charging_port)
        else:
            board = LockerBoard(sim.board.port, address=config.lockers.address)
        return StationHardware(pin_factory=sim.pin_factory, board=board,
                               health=SimHealth(config.data_dir, clock),
                               clock_sync=AssumedSynced(), dispenser=sim.dispenser_spec,
                               doors=sim.door_specs, occupancy=sim.occupancy_spec,
                               simulation=sim)
    board: LockerBoard | Cabinet | None = None
    if config.lockers is not None and config.lockers.driver != YZ_LB1:
        board = build_cabinet(config.lockers, config.data_dir, clock)
    elif config.lockers is not None:
        board = LockerBoard(config.lockers.port, baudrate=config.lockers.baudrate,
                            address=config.lockers.address)
    return StationHardware(pin_factory=None, board=board,
                           health=PiHealth(config.data_dir, clock),
                           clock_sync=KernelClockSync(), dispenser=config.dispenser,
                           doors=config.doors, occupancy=config.occupancy)
