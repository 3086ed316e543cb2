"""The station configuration file (contract §14), read once and checked.

A station lists exactly the hardware it has; a section left out means that part
is absent and the agent runs with the rest. ``hardware: sim`` runs the whole
station on simulated hardware, the sections then only tune the simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import InvalidIdentifier
from protocol.ids import SID_RE, check_sid
from yizhan.config import ConfigError, MqttConfig, Section, load_yaml

SID_PATTERN = SID_RE.pattern.lstrip("^").rstrip("$")


@dataclass(frozen=True)
class LockerConfig:
    port: str
    baudrate: int = 115200
    address: int = 1
    poll_interval: float = 2.0
    slots: int = 12  # only for the simulator: a real board reports its own count


@dataclass(frozen=True)
class KioskConfig:
    host: str = "127.0.0.1"
    port: int = 8700


@dataclass(frozen=True)
class StationConfig:
    sid: str
    name: str
    data_dir: Path
    mqtt: MqttConfig
    sim: bool = False
    lockers: LockerConfig | None = None
    dispenser: dict | None = None
    doors: dict[str, dict] = field(default_factory=dict)
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    heartbeat: float = 60.0
    coalesce: float = 2.0
    fleet_key: bytes | None = None
    source: str | None = None

    @property
    def has_dispenser(self) -> bool:
        return self.dispenser is not None


def load_station_config(path: str | Path) -> StationConfig:
    """Read and check a station file; a ConfigError names the file and the key."""
    path = Path(path)
    try:
        return parse_station_config(load_yaml(path), base=path.parent, source=str(path))
    except ConfigError as err:
        raise err.in_file(path) from None


def parse_station_config(data: dict, base: Path | None = None,
                         source: str | None = None) -> StationConfig:
    root = Section(data)
    hardware = root.str("hardware", choices=("sim", "pi"))
    station = root.section("station", required=True)
    sid = station.str("id", required=True)
    try:
        check_sid(sid)
    except InvalidIdentifier as err:
        raise ConfigError("station.id", str(err.reason if hasattr(err, "reason") else err)) from err
    data_dir = Path(root.str("data_dir", required=True))
    if base is not None and not data_dir.is_absolute():
        data_dir = base / data_dir
    sim = hardware == "sim"

    lockers = None
    lsec = root.section("lockers")
    if lsec is not None:
        port = lsec.str("port", required=not sim) or "sim"
        lockers = LockerConfig(
            port=port,
            baudrate=lsec.int("baudrate", 115200, lo=1200, hi=4_000_000),
            address=lsec.int("address", 1, lo=1, hi=15),
            poll_interval=lsec.duration("poll_interval", 2.0),
            slots=lsec.int("slots", 12, lo=1, hi=15),  # a STATUS answer holds 15 records at most
        )

    doors: dict[str, dict] = {}
    dsec = root.section("doors")
    if dsec is not None:
        for name, spec in dsec.data.items():
            if not isinstance(name, str) or not name.replace("_", "").isalnum():
                raise ConfigError(f"doors.{name}", "a door name is letters, digits and _")
            if spec is not None and not isinstance(spec, dict):
                raise ConfigError(f"doors.{name}", "must be a mapping (for example {pin: 17})")
            doors[name] = dict(spec or {})

    dispenser = None
    psec = root.section("dispenser")
    if psec is not None:
        dispenser = dict(psec.data)

    ksec = root.section("kiosk")
    kiosk = KioskConfig()
    if ksec is not None:
        kiosk = KioskConfig(host=ksec.str("host", "127.0.0.1"),
                            port=ksec.int("port", 8700, lo=1, hi=65535))

    fleet_key = None
    if root.has("fleet_key_file"):
        fleet_key = (root.secret("fleet_key") or "").encode()

    timing = root.section("timing")
    heartbeat = timing.duration("heartbeat", 60.0) if timing else 60.0
    coalesce = timing.duration("coalesce", 2.0) if timing else 2.0
    if heartbeat > 60.0:
        raise ConfigError("timing.heartbeat", "must be at most 60s (contract §5)")

    return StationConfig(
        sid=sid,
        name=station.str("name", sid),
        data_dir=data_dir,
        mqtt=MqttConfig.from_section(root.section("mqtt"), base),
        sim=sim,
        lockers=lockers,
        dispenser=dispenser,
        doors=doors,
        kiosk=kiosk,
        heartbeat=heartbeat,
        coalesce=coalesce,
        fleet_key=fleet_key,
        source=source,
    )
