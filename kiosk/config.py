"""The kiosk's settings, read from the same station file as the agent (contract §14).

    config = load_kiosk_config("/etc/yizhan/station.yaml")
    app = create_app(config)

The kiosk reads only what it needs: the part of the file it shares with the
agent (station id and name, ``data_dir``, ``fleet_key_file``, ``local_api``:
:class:`yizhan.config.StationBasics`, read and checked by one owner for both)
and its own ``kiosk`` section, each error naming its key::

    kiosk:
      host: 127.0.0.1            # loopback only: the browser runs on the same Pi
      port: 8700
      borrow_rate: {per_minute: 6, per_hour: 30}   # borrow attempts from this screen
      idle: 60s                  # back to the home screen after this long untouched
      staff_idle: 3m             # the same on the staff screens
      done_idle: 20s             # a "done" screen (bank taken, thank you) goes home sooner
      language: zh               # the screen's language after idle (zh or en)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.i18n import LANGUAGES as _LANGUAGES
from protocol.ids import RIDER_ID_SCHEMES
from yizhan.config import (
    DEMO_FLEET_KEY,
    LOOPBACK,
    ConfigError,
    Section,
    StationBasics,
    known_keys,
    load_yaml,
)

log = logging.getLogger(__name__)

__all__ = ["BorrowRate", "KioskConfig", "kiosk_config", "load_kiosk_config"]

KIOSK_KEYS = ("host", "port", "borrow_rate", "idle", "staff_idle", "done_idle", "language",
              "api_timeout", "rider_ids")
LANGUAGES = tuple(_LANGUAGES)


@dataclass(frozen=True)
class BorrowRate:
    """At most ``per_minute`` borrow attempts a minute and ``per_hour`` an hour."""

    per_minute: int = 6
    per_hour: int = 30


@dataclass(frozen=True)
class KioskConfig:
    """Everything ``create_app`` needs; tests build one directly."""

    fleet_key: bytes
    data_dir: Path
    station_name: str = "驿站"
    sid: str = ""
    api_url: str = "http://127.0.0.1:8701"
    api_socket: str | None = None
    api_timeout: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8700
    borrow_rate: BorrowRate = field(default_factory=BorrowRate)
    idle: float = 60.0
    staff_idle: float = 180.0
    done_idle: float = 20.0
    language: str = "zh"
    #: How phone numbers become rider ids (protocol.ids.RIDER_ID_SCHEMES): the
    #: fleet's choice, the same on every kiosk and in whatever registers riders.
    rider_ids: str = "hmac"
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fleet_key, (bytes, bytearray)) or not self.fleet_key:
            raise ValueError("fleet_key must be non-empty bytes")
        if self.language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        if self.rider_ids not in RIDER_ID_SCHEMES:
            raise ValueError(f"rider_ids must be one of {', '.join(RIDER_ID_SCHEMES)}")


def load_kiosk_config(path: str | Path) -> KioskConfig:
    """Read a station file for the kiosk; a ConfigError names the file and the key."""
    path = Path(path)
    data = load_yaml(path)
    try:
        return kiosk_config(data, base=path.parent, source=str(path))
    except ConfigError as err:
        raise err.in_file(path) from None


def kiosk_config(data: Mapping[str, Any], base: Path | None = None,
                 source: str | None = None) -> KioskConfig:
    """The kiosk's settings from a parsed station file; relative paths from ``base``.

    The sections only the agent reads (hardware, ``mqtt``, ``lending``...) are the
    agent's to check: the kiosk neither reads nor judges them.
    """
    root = Section(data)
    station = StationBasics.from_root(root, base)
    sec = root.section("kiosk") or Section({}, "kiosk")
    known_keys(sec, KIOSK_KEYS)
    host = sec.str("host", "127.0.0.1")
    port = sec.int("port", 8700, lo=1, hi=65535)
    if host not in LOOPBACK:
        raise ConfigError("kiosk.host", "the kiosk must stay on loopback (127.0.0.1): "
                                        "riders type phone numbers into it")
    rate = BorrowRate()
    rsec = sec.section("borrow_rate")
    if rsec is not None:
        known_keys(rsec, ("per_minute", "per_hour"))
        rate = BorrowRate(per_minute=rsec.int("per_minute", 6, lo=1, hi=1000),
                          per_hour=rsec.int("per_hour", 30, lo=1, hi=100_000))
        if rate.per_hour < rate.per_minute:
            raise ConfigError("kiosk.borrow_rate.per_hour",
                              "must be at least kiosk.borrow_rate.per_minute")
    idle = _seconds(sec, "idle", 60.0, lo=10.0)
    staff_idle = _seconds(sec, "staff_idle", 180.0, lo=10.0)
    done_idle = _seconds(sec, "done_idle", 20.0, lo=3.0)
    api_timeout = _seconds(sec, "api_timeout", 5.0, lo=0.5)
    language = sec.str("language", "zh", choices=LANGUAGES)
    rider_ids = sec.str("rider_ids", "hmac", choices=RIDER_ID_SCHEMES)

    fleet_key = station.fleet_key
    if fleet_key is None:
        if not station.sim:
            raise ConfigError("fleet_key_file", "is required: the kiosk turns phone numbers "
                                                "into rider ids with it (contract §1)")
        # A simulated station without a key runs on the demo's, as its simulated
        # riders do (the agent's simulator): named by `hardware: sim`, not guessed.
        log.warning("hardware: sim without fleet_key_file: using the demo fleet key")
        fleet_key = DEMO_FLEET_KEY

    api = station.local_api
    return KioskConfig(
        fleet_key=fleet_key,
        data_dir=station.data_dir,
        station_name=station.name,
        sid=station.sid,
        api_url=api.url,
        api_socket=api.unix_socket,
        api_timeout=api_timeout,
        host=host,
        port=port,
        borrow_rate=rate,
        idle=idle,
        staff_idle=staff_idle,
        done_idle=done_idle,
        language=language,
        rider_ids=rider_ids,
        source=source,
    )


def _seconds(sec: Section, name: str, default: float, lo: float) -> float:
    value = sec.duration(name, default)
    if value < lo:
        raise ConfigError(sec.key(name), f"must be at least {lo:g}s")
    return value
