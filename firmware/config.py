"""The station configuration file (contract §14), read once and checked.

A station lists exactly the hardware it has; a section left out means that part
is absent and the agent runs with the rest. ``hardware: sim`` runs the whole
station on simulated hardware; the sections then only tune the simulation (a
simulated station has every part, on default pins where a section is missing).

A ConfigError names the key: ``station.yaml: doors.entrance.pin: is required``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from firmware.dispenser import DispenserSpec, parse_dispenser
from firmware.doors import DoorSpec, parse_doors
from firmware.hardware.pins import W1_PIN
from firmware.occupancy import OccupancySpec, parse_occupancy
from protocol.messages import MAX_SLOT
from yizhan.config import (
    ConfigError,
    LocalApiConfig,
    MqttConfig,
    Section,
    StationBasics,
    known_keys,
    load_yaml,
)

log = logging.getLogger(__name__)

TOP_LEVEL = ("hardware", "station", "mqtt", "data_dir", "fleet_key_file", "lockers",
             "dispenser", "doors", "occupancy", "kiosk", "local_api", "lending", "timing",
             "sim")


#: The reference board of contract §10; the default driver.
YZ_LB1 = "yz-lb1"
#: A charging supply the station cannot switch (``lockers.charging.driver``).
ALWAYS_ON = "always-on"
_LOCKBOARD_KEYS = ("driver", "poll_interval", "buses", "charging", "slots")
# The contract's one-board form (§14): port, baudrate, address, slots.
_ONE_BOARD_KEYS = ("driver", "poll_interval", "port", "baudrate", "address", "slots",
                   "locked_when", "charging")


@dataclass(frozen=True)
class BoardConfig:
    """One lock-control board on a bus: its DIP/chain ``address``, how many
    ``locks`` are wired, which feedback value means locked."""

    address: int
    locks: int
    locked_when: str


@dataclass(frozen=True)
class BusConfig:
    """One RS-485 line (``port``) and the boards on it, in slot order."""

    port: str
    baudrate: int
    boards: tuple[BoardConfig, ...]


@dataclass(frozen=True)
class ChargingConfig:
    """How the slots' charging supply is switched (``lockers.charging``).

    ``modbus-io``: Modbus RTU relay modules on one line, ``modules`` of
    ``(address, channels)`` in slot order: the first module's coil k switches
    station slot k, the next module's take the slots after (one module:
    ``address`` and ``channels``); ``occupancy: inputs`` also reads the
    matching discrete input as the slot's bank sensor. ``always-on``: the chargers are wired to a
    supply the station cannot switch. ``charge_time``: how long an empty bank
    takes to fill, the base of the charge estimate (docs/locker.md).
    """

    driver: str
    charge_time: float = 3 * 3600.0
    port: str | None = None
    baudrate: int = 9600
    address: int = 1
    channels: int = 8
    occupancy: str = "none"  # or "inputs"
    modules: tuple[tuple[int, int], ...] = ()  # (address, channels); () = ((address, channels),)

    @property
    def units(self) -> tuple[tuple[int, int], ...]:
        """Every relay module as ``(address, channels)``, in slot order."""
        return self.modules or ((self.address, self.channels),)


@dataclass(frozen=True)
class LockerConfig:
    port: str
    baudrate: int = 115200
    address: int = 1
    poll_interval: float = 2.0
    slots: int = 12  # only for the simulator: a real board reports its own count
    driver: str = YZ_LB1
    buses: tuple[BusConfig, ...] = ()  # lock-control boards (driver other than yz-lb1)
    charging: ChargingConfig | None = None

    @property
    def n_slots(self) -> int:
        """Station slots: the locks of every board (``slots`` for YZ-LB1)."""
        if self.driver == YZ_LB1:
            return self.slots
        return sum(b.locks for bus in self.buses for b in bus.boards)

    @classmethod
    def from_section(cls, sec: Section | None, *, sim: bool) -> LockerConfig | None:
        """The ``lockers`` section; None for a station without a cabinet. A
        simulated station always has one (on the simulator's pseudo-terminal)."""
        if sec is None and not sim:
            return None
        sec = sec or Section({}, "lockers")
        driver = sec.str("driver", YZ_LB1, choices=lock_drivers())
        if driver != YZ_LB1:
            return cls._lockboards(sec, driver, sim=sim)
        known_keys(sec, ("driver", "port", "baudrate", "address", "poll_interval", "slots"))
        return cls(
            port=sec.str("port", required=not sim) or "sim",
            baudrate=sec.int("baudrate", 115200, lo=1200, hi=4_000_000),
            address=sec.int("address", 1, lo=1, hi=15),
            poll_interval=sec.duration("poll_interval", 2.0),
            # A STATUS answer holds 15 records at most (255-byte payload).
            slots=sec.int("slots", 12, lo=1, hi=15),
        )

    @classmethod
    def _lockboards(cls, sec: Section, driver: str, *, sim: bool) -> LockerConfig:
        """``lockers`` for lock-control boards: one board (``port``, ``address``,
        ``slots``) or ``buses`` of ``boards``, and ``charging`` (required on a Pi:
        such a board cannot say a bank is charged)."""
        from firmware.hardware.lockboards import DRIVERS

        kind = DRIVERS[driver]
        if sec.has("buses"):
            known_keys(sec, _LOCKBOARD_KEYS)
            if sec.has("slots"):
                raise ConfigError(sec.key("slots"), "goes with one board (port, address); "
                                  "under lockers.buses each board says its locks")
        else:
            known_keys(sec, _ONE_BOARD_KEYS)
        raw = sec.list("buses")
        if not sec.has("buses"):
            # The contract's form (§14): one board on one line, its locks the slots.
            line = {"port": sec.str("port", required=not sim), "baudrate": sec.raw("baudrate"),
                    "boards": [{"address": sec.raw("address", kind.addresses.start),
                                "locks": sec.raw("slots", min(12, kind.max_locks)),
                                "locked_when": sec.raw("locked_when")}]}
            buses: tuple[BusConfig, ...] = (_bus(line, "lockers", kind, sim=sim, flat=True),)
        elif not raw:
            raise ConfigError(sec.key("buses"), "must list each RS-485 line and the boards "
                              "on it")
        else:
            buses = tuple(_bus(item, f"{sec.key('buses')}[{i}]", kind, sim=sim)
                          for i, item in enumerate(raw))
        ports = [b.port for b in buses]
        for i, port in enumerate(ports):
            if port != "sim" and port in ports[:i]:
                raise ConfigError(f"{sec.key('buses')}[{i}].port",
                                  f"{port} is already bus {ports.index(port)}; list every "
                                  "board of one line under that bus")
        n = sum(b.locks for bus in buses for b in bus.boards)
        if n > MAX_SLOT:
            raise ConfigError(sec.key("buses"), f"{n} locks in all; a station has at most "
                              f"{MAX_SLOT} slots")
        charging = _charging(sec.section("charging"), sec.key("charging"), kind, n, sim=sim)
        if charging.port in ports and charging.port != "sim":
            line = buses[ports.index(charging.port)]
            if line.baudrate != charging.baudrate:
                raise ConfigError(sec.key("charging.baudrate"), f"the module shares "
                                  f"{charging.port} with the boards, which run at "
                                  f"{line.baudrate} baud; one line has one speed")
        return cls(port=ports[0], baudrate=buses[0].baudrate, address=1,
                   poll_interval=sec.duration("poll_interval", 2.0), slots=n, driver=driver,
                   buses=buses, charging=charging)


def lock_drivers() -> tuple[str, ...]:
    """The names ``lockers.driver`` accepts: YZ-LB1 and every registered board.

    YZ-LB1 is registered too (its driver runs the conformance suite), but the
    name keeps its meaning here: the LockerBoard with bank telemetry.
    """
    from firmware.hardware.lockboards import DRIVERS

    return (YZ_LB1, *sorted(set(DRIVERS) - {YZ_LB1}))


def _bus(item: object, path: str, kind: type, *, sim: bool, flat: bool = False) -> BusConfig:
    """One line; ``flat``: the one-board form, whose keys sit in ``lockers`` itself."""
    if not isinstance(item, dict):
        raise ConfigError(path, f"must be a mapping with port and boards, not "
                          f"{type(item).__name__}")
    sec = Section(item, path)
    known_keys(sec, ("port", "baudrate", "boards"))
    raw = sec.list("boards")
    if not raw:
        raise ConfigError(sec.key("boards"), "is required: the boards on this line, "
                          "each with its address")
    boards: list[BoardConfig] = []
    for i, b in enumerate(raw):
        bpath = path if flat else f"{sec.key('boards')}[{i}]"
        if not isinstance(b, dict):
            raise ConfigError(bpath, f"must be a mapping with address and locks, not "
                              f"{type(b).__name__}")
        bsec = Section(b, bpath)
        known_keys(bsec, ("address", "locks", "locked_when"))
        locks_key = "slots" if flat else "locks"
        first, last = kind.addresses.start, kind.addresses.stop - 1
        address = bsec.int("address", required=True, lo=first, hi=last)
        if any(x.address == address for x in boards):
            raise ConfigError(bsec.key("address"), f"{address} is already a board on this "
                              "line; every board needs its own address")
        boards.append(BoardConfig(
            address=address,
            locks=_locks(bsec, locks_key, kind),
            locked_when=bsec.str("locked_when", kind.default_locked_when,
                                 choices=("closed", "open")),
        ))
    return BusConfig(
        port=sec.str("port", required=not sim) or "sim",
        baudrate=sec.int("baudrate", kind.baudrate, lo=1200, hi=4_000_000),
        boards=tuple(boards),
    )


def _locks(sec: Section, key: str, kind: type) -> int:
    value = sec.data.get("locks")
    if value is None:
        raise ConfigError(sec.key(key), "is required: how many locks are wired to the board")
    if isinstance(value, bool) or not isinstance(value, int) or not (
            1 <= value <= kind.max_locks):
        raise ConfigError(sec.key(key), f"must be an integer from 1 to {kind.max_locks} "
                          f"(a {kind.name} board's locks), not {value!r}")
    return value


def _charging(sec: Section | None, path: str, kind: type, n_slots: int, *,
              sim: bool) -> ChargingConfig:
    driver = kind.name
    if sec is None:
        if sim:
            from firmware.hardware.lockboards.modbus_io import MAX_CHANNELS

            if n_slots > MAX_CHANNELS:
                raise ConfigError(path, f"is required for a simulated cabinet of more than "
                                  f"{MAX_CHANNELS} slots")
            # The simulated module's inputs sense the banks where the board cannot.
            return ChargingConfig(driver="modbus-io", port="sim", channels=max(8, n_slots),
                                  occupancy="none" if kind.caps.occupancy else "inputs")
        # The contract's minimal `lockers` (driver, port, baudrate, address) is a whole
        # configuration: chargers on a supply the station cannot switch. The estimate
        # then counts from a bank's arrival; said once at start (docs/locker.md).
        log.warning("%s: no charging section: the %s board cannot read a bank's charge; "
                    "the station assumes the chargers are always powered (always-on) and "
                    "estimates the charge from the time a bank is in its slot", path, driver)
        return ChargingConfig(driver=ALWAYS_ON)
    from firmware.hardware.lockboards import CHARGE_SWITCHES
    from firmware.hardware.lockboards.modbus_io import MAX_CHANNELS

    kind = sec.str("driver", required=True, choices=(ALWAYS_ON, *sorted(CHARGE_SWITCHES)))
    charge_time = sec.duration("charge_time", 3 * 3600.0)
    # A simulated bank may fill in seconds, so a demo lends before its visitor leaves.
    if not (1.0 if sim else 60.0) <= charge_time <= 86400.0:
        raise ConfigError(sec.key("charge_time"),
                          "must be from 1s to 24h" if sim else "must be from 1m to 24h")
    if kind == ALWAYS_ON:
        known_keys(sec, ("driver", "charge_time"))
        return ChargingConfig(driver=kind, charge_time=charge_time)
    known_keys(sec, ("driver", "charge_time", "port", "baudrate", "address", "channels",
                     "occupancy", "modules"))
    modules: tuple[tuple[int, int], ...] = ()
    if sec.has("modules"):
        for key in ("address", "channels"):
            if sec.has(key):
                raise ConfigError(sec.key(key), "goes with one module; under modules each "
                                  "module says its address and channels")
        modules = _modules(sec, MAX_CHANNELS)
        address, channels = modules[0]
        total, what = sum(c for _, c in modules), sec.key("modules")
    else:
        address = sec.int("address", 1, lo=1, hi=247)
        channels = sec.int("channels", max(8, n_slots) if sim else 8, lo=1, hi=MAX_CHANNELS)
        total, what = channels, sec.key("channels")
    if total < n_slots:
        raise ConfigError(what, f"the relay modules switch {total} channels but the "
                          f"cabinet has {n_slots} slots (one channel a slot, in order)")
    return ChargingConfig(
        driver=kind,
        charge_time=charge_time,
        port=sec.str("port", required=not sim) or "sim",
        baudrate=sec.int("baudrate", 9600, lo=1200, hi=4_000_000),
        address=address,
        channels=channels,
        occupancy=sec.str("occupancy", "none", choices=("none", "inputs")),
        modules=modules,
    )


def _modules(sec: Section, most_channels: int) -> tuple[tuple[int, int], ...]:
    raw = sec.list("modules")
    if not raw:
        raise ConfigError(sec.key("modules"), "must list the relay modules, each with its "
                          "address and channels")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(raw):
        path = f"{sec.key('modules')}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(path, f"must be a mapping with address and channels, not "
                              f"{type(item).__name__}")
        msec = Section(item, path)
        known_keys(msec, ("address", "channels"))
        address = msec.int("address", required=True, lo=1, hi=247)
        if any(a == address for a, _ in out):
            raise ConfigError(msec.key("address"), f"{address} is already a module on "
                              "this line; every module needs its own address")
        out.append((address, msec.int("channels", 8, lo=1, hi=most_channels)))
    return tuple(out)


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
