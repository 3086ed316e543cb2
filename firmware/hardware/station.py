"""All the hardware of one station, as configured."""

from __future__ import annotations

from dataclasses import dataclass

from firmware.config import StationConfig
from firmware.hardware.health import PiHealth, SimHealth
from protocol.messages import Health
from yizhan.clock import Clock


@dataclass
class StationHardware:
    """What the agent reads and drives. Parts the station lacks are None."""

    health: PiHealth

    def describe(self) -> dict:
        """The ``hw`` object of the birth message (contract §4)."""
        return {}

    def read_health(self, outbox: int = 0) -> Health:
        return self.health.read(outbox=outbox)

    def safe(self) -> None:
        """Put every output in its safe state (heater off, locks engaged)."""

    def close(self) -> None:
        self.safe()


def build_hardware(config: StationConfig, clock: Clock) -> StationHardware:
    health_cls = SimHealth if config.sim else PiHealth
    return StationHardware(health=health_cls(config.data_dir, clock))
