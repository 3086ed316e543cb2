"""A whole simulated station for ``hardware: sim`` (the demo, development).

Every simulator drives the lowest layer only — MockFactory pins, the DS18B20
sysfs file, a pseudo-terminal speaking YZ-LB1 — so the agent above runs the same
code as on a Pi. A station simulated has every part: where the configuration
leaves a section out, the part is simulated on default pins.
"""

from __future__ import annotations

import logging
import random

from gpiozero.pins.mock import MockFactory

from firmware.config import YZ_LB1, StationConfig
from firmware.doors import DoorSpec
from firmware.occupancy import OccupancySpec
from firmware.sim.board import BoardSimulator
from firmware.sim.cabinet import CabinetSim
from firmware.sim.doors import DoorSim, PirSim, Traffic
from firmware.sim.model import default_banks
from firmware.sim.riders import SimRiders
from firmware.sim.water import WaterSim, sim_spec
from yizhan.clock import Clock
from yizhan.config import DEMO_FLEET_KEY

log = logging.getLogger(__name__)

DEFAULT_DOORS = {"entrance": DoorSpec(pin=17), "locker_panel": DoorSpec(pin=27, panel=True)}
DEFAULT_PIR = OccupancySpec(pin=22)


class StationSim:
    """The physics behind one simulated station, started and stopped as one."""

    def __init__(self, config: StationConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        sim = config.simulation
        seed = sim.seed if sim.seed is not None else random.randrange(1 << 30)
        self.pin_factory = MockFactory()
        self.door_specs = dict(config.doors) or dict(DEFAULT_DOORS)
        self.occupancy_spec = config.occupancy or DEFAULT_PIR
        self.dispenser_spec = sim_spec(config.data_dir, config.dispenser)
        self.riders: SimRiders | None = None
        self._started = False
        sim_dir = config.data_dir / "sim"
        sim_dir.mkdir(parents=True, exist_ok=True)
        lockers = config.lockers
        # The simulators claim their pins before the agent's parts do, so
        # gpiozero's pull-ups cannot move them (see firmware/sim/water.py).
        self.board: BoardSimulator | None = None
        self.cabinet: CabinetSim | None = None  # lock-control boards (lockers.driver)
        if lockers.driver == YZ_LB1:
            self.board = BoardSimulator(n_slots=lockers.slots, address=lockers.address,
                                        clock=clock, link_path=sim_dir / "ttyYZ-board",
                                        banks=default_banks(lockers.slots, station=config.sid),
                                        realtime=True).start()
        else:
            self.cabinet = CabinetSim(lockers, link_dir=sim_dir, clock=clock).start()
        try:
            self.water = WaterSim(self.dispenser_spec, self.pin_factory, clock,
                                  draws_per_hour=sim.draws_per_hour,
                                  auto_refill=sim.auto_refill, seed=seed)
            self.doors = DoorSim(self.door_specs, self.pin_factory)
            self.pir = PirSim(self.occupancy_spec, self.pin_factory)
            self.traffic = Traffic(clock, doors=self.doors, pir=self.pir,
                                   riders_per_hour=sim.riders_per_hour, seed=seed + 1)
        except Exception:
            self._stop_lockers()
            raise
        self._seed = seed

    def attach(self, lending) -> None:
        """Simulated riders borrow through the agent's real Lending."""
        sim = self.config.simulation
        if sim.borrows_per_hour <= 0:
            return
        if self.board is None:
            # The simulated riders take and return banks by id (YZ-LB1);
            # a lock-control cabinet's riders are the tests' and the kiosk's.
            log.info("no simulated riders at a %s cabinet", self.config.lockers.driver)
            return
        self.riders = SimRiders(lending, self.board, self.clock,
                                fleet_key=self.config.fleet_key or DEMO_FLEET_KEY,
                                rng=random.Random(self._seed + 2),
                                mean_interval=3600.0 / sim.borrows_per_hour,
                                mean_loan=sim.mean_loan)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.water.start()
        self.traffic.start()
        if self.riders is not None:
            self.riders.start()

    def close(self) -> None:
        if self.riders is not None:
            self.riders.stop()
        self.traffic.stop()
        self.water.stop()
        self.water.close()
        self._stop_lockers()
        self.pin_factory.close()

    def _stop_lockers(self) -> None:
        if self.board is not None:
            self.board.stop()
        if self.cabinet is not None:
            self.cabinet.stop()
