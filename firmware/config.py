"""The station configuration file (contract §14), read once and checked.

A station lists exactly the hardware it has; a section left out means that part
is absent and the agent runs with the rest. ``hardware: sim`` runs the whole
station on simulated hardware; the sections then only tune the simulation (a
simulated station has every part, on default pins where a section is missing).

A ConfigError names the key: ``station.yaml: doors.entrance.pin: is required``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from firmware.dispenser import DispenserSpec, parse_dispenser
from firmware.doors import DoorSpec, parse_doors
from firmware.hardware.pins import W1_PIN
from firmware.occupancy import OccupancySpec, parse_occupancy
from yizhan.config import (
    ConfigError,
    LocalApiConfig,
    MqttConfig,
    Section,
    StationBasics,
    known_keys,
    load_yaml,
)

TOP_LEVEL = ("hardware", "station", "mqtt", "data_dir", "fleet_key_file", "lockers",
             "dispenser", "doors", "occupancy", "kiosk", "local_api", "lending", "timing",
             "sim")


@dataclass(frozen=True)
class LockerConfig:
    port: str
    baudrate: int = 115200
    address: int = 1
    poll_interval: float = 2.0
    slots: int = 12  # only for the simulator: a real board reports its own count

    @classmethod
    def from_section(cls, sec: Section | None, *, sim: bool) -> LockerConfig | None:
        """The ``lockers`` section; None for a station without a cabinet. A
        simulated station always has one (on the simulator's pseudo-terminal)."""
        if sec is None and not sim:
            return None
        sec = sec or Section({}, "lockers")
        known_keys(sec, ("port", "baudrate", "address", "poll_interval", "slots"))
        return cls(
            port=sec.str("port", required=not sim) or "sim",
            baudrate=sec.int("baudrate", 115200, lo=1200, hi=4_000_000),
            address=sec.int("address", 1, lo=1, hi=15),
            poll_interval=sec.duration("poll_interval", 2.0),
            # A STATUS answer holds 15 records at most (255-byte payload).
            slots=sec.int("slots", 12, lo=1, hi=15),
        )


@dataclass(frozen=True)
class LendingConfig:
    take_timeout: float = 30.0
    maintenance_idle: float = 600.0
    charge_rate: float = 1.0  # % per minute, for "next bank ready at"
    slot_hold: float = 300.0
    pulse_ms: int = 500

    @classmethod
    def from_section(cls, sec: Section | None) -> LendingConfig:
        if sec is None:
            return cls()
        known_keys(sec, ("take_timeout", "maintenance_idle", "charge_rate", "slot_hold",
                         "pulse_ms"))
        return cls(
            take_timeout=sec.duration("take_timeout", 30.0),
            maintenance_idle=sec.duration("maintenance_idle", 600.0),
            charge_rate=sec.float("charge_rate", 1.0, lo=0.01, hi=100),
            slot_hold=sec.duration("slot_hold", 300.0),
            pulse_ms=sec.int("pulse_ms", 500, lo=50, hi=5000),
        )


@dataclass(frozen=True)
class SimConfig:
    """How busy a simulated station is (``sim`` section, ``hardware: sim`` only)."""

    riders_per_hour: float = 12.0  # visitors through the door
    borrows_per_hour: float = 6.0
    mean_loan: float = 2 * 3600.0
    draws_per_hour: float = 20.0  # cups of hot water
    auto_refill: float | None = 1800.0  # staff top the tank up this long after "low"
    seed: int | None = None

    @classmethod
    def from_section(cls, sec: Section | None, *, sim: bool) -> SimConfig:
        if sec is None:
            return cls()
        if not sim:
            raise ConfigError("sim", "only means something with hardware: sim")
        known_keys(sec, ("riders_per_hour", "borrows_per_hour", "mean_loan",
                         "draws_per_hour", "auto_refill", "seed"))
        return cls(
            riders_per_hour=sec.float("riders_per_hour", 12.0, lo=0),
            borrows_per_hour=sec.float("borrows_per_hour", 6.0, lo=0),
            mean_loan=sec.duration("mean_loan", 7200.0),
            draws_per_hour=sec.float("draws_per_hour", 20.0, lo=0),
            auto_refill=sec.duration("auto_refill", 1800.0),
            seed=sec.int("seed"),
        )


@dataclass(frozen=True)
class StationConfig:
    sid: str
    name: str
    data_dir: Path
    mqtt: MqttConfig
    sim: bool = False
    lockers: LockerConfig | None = None
    dispenser: DispenserSpec | None = None
    doors: dict[str, DoorSpec] = field(default_factory=dict)
    occupancy: OccupancySpec | None = None
    local_api: LocalApiConfig = field(default_factory=LocalApiConfig)
    lending: LendingConfig = field(default_factory=LendingConfig)
    simulation: SimConfig = field(default_factory=SimConfig)
    heartbeat: float = 60.0
    coalesce: float = 2.0
    tick: float = 0.25
    fleet_key: bytes | None = None
    source: str | None = None


def load_station_config(path: str | Path) -> StationConfig:
    """Read and check a station file; a ConfigError names the file and the key."""
    path = Path(path)
    try:
        return parse_station_config(load_yaml(path), base=path.parent, source=str(path))
    except ConfigError as err:
        raise err.in_file(path) from None


def parse_station_config(data: dict, base: Path | None = None,
                         source: str | None = None) -> StationConfig:
    """Check a parsed station file; relative paths are taken from ``base``."""
    root = Section(data)
    known_keys(root, TOP_LEVEL)
    basics = StationBasics.from_root(root, base)
    sim = basics.sim
    lockers = LockerConfig.from_section(root.section("lockers"), sim=sim)
    doors = parse_doors(root.section("doors"))
    dispenser = parse_dispenser(root.section("dispenser"))
    occupancy = parse_occupancy(root.section("occupancy"))
    if not sim:
        _check_pins(doors, dispenser, occupancy)
    lending = LendingConfig.from_section(root.section("lending"))
    simulation = SimConfig.from_section(root.section("sim"), sim=sim)
    heartbeat, coalesce, tick = _timing(root.section("timing"))
    return StationConfig(
        sid=basics.sid,
        name=basics.name,
        data_dir=basics.data_dir,
        mqtt=MqttConfig.from_section(root.section("mqtt"), base),
        sim=sim,
        lockers=lockers,
        dispenser=dispenser,
        doors=doors,
        occupancy=occupancy,
        local_api=basics.local_api,
        lending=lending,
        simulation=simulation,
        heartbeat=heartbeat,
        coalesce=coalesce,
        tick=tick,
        fleet_key=basics.fleet_key,
        source=source,
    )


def _timing(sec: Section | None) -> tuple[float, float, float]:
    """``timing``: the State's heartbeat and coalescing window, the loop's tick."""
    heartbeat = sec.duration("heartbeat", 60.0) if sec else 60.0
    coalesce = sec.duration("coalesce", 2.0) if sec else 2.0
    tick = sec.duration("tick", 0.25) if sec else 0.25
    if heartbeat > 60.0:
        raise ConfigError("timing.heartbeat", "must be at most 60s (contract §5)")
    if coalesce > 2.0:
        raise ConfigError("timing.coalesce", "must be at most 2s (contract §5)")
    if not 0.01 <= tick <= 1.0:
        raise ConfigError("timing.tick", "must be from 10ms to 1s")
    return heartbeat, coalesce, tick


def _check_pins(doors: dict[str, DoorSpec], dispenser: DispenserSpec | None,
                occupancy: OccupancySpec | None) -> None:
    """Two parts on one GPIO would fight silently; refuse naming both keys."""
    used: dict[int, str] = {}

    def take(pin: int, key: str) -> None:
        if pin in used:
            raise ConfigError(key, f"GPIO{pin} is already used by {used[pin]}")
        used[pin] = key

    if dispenser is not None:
        if dispenser.thermometer is not None:
            used[W1_PIN] = "the DS18B20 1-wire bus (GPIO4)"
        for pin, key in sorted(dispenser.pins().items()):
            take(pin, key)
    for name, spec in doors.items():
        take(spec.pin, f"doors.{name}.pin")
    if occupancy is not None:
        take(occupancy.pin, "occupancy.pin")
