"""Reading and checking YAML configuration files.

Every program validates its whole configuration once at start and refuses to run
with a message that names the file, the key and what is wrong (contract §14):

    station.yaml: mqtt.port: must be an integer from 1 to 65535, not 'abc'

The helpers here walk a parsed YAML mapping with a dotted key path so that each
check can say exactly where it failed. The sections more than one program reads
are here too: ``mqtt`` (the hub and the station, :class:`MqttConfig`) and the
part of the station file that both the agent and the kiosk read
(:class:`StationBasics`). The program-specific layouts live in
``firmware/config.py``, ``kiosk/config.py`` and ``hub/config.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str()`` is the message for the operator."""

    def __init__(self, key: str, problem: str, file: str | Path | None = None) -> None:
        self.key = key
        self.problem = problem
        self.file = str(file) if file is not None else None
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.problem}" if self.key else f"{where}{self.problem}"

    def in_file(self, file: str | Path) -> ConfigError:
        return ConfigError(self.key, self.problem, file)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "file not found", path) from None
    except OSError as err:
        raise ConfigError("", f"cannot be read: {err.strerror}", path) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"is not valid YAML{at}", path) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "must be a YAML mapping of keys to values", path)
    return data


def parse_duration(text: Any, key: str) -> float:
    """Seconds in a Prometheus-style duration: ``30s``, ``10m``, ``2h``, ``1h30m``, ``250ms``.

    A bare number is taken as seconds.
    """
    if isinstance(text, bool):
        raise ConfigError(key, f"must be a duration such as 30s or 10m, not {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(key, "must not be negative")
        return float(text)
    if not isinstance(text, str) or not text:
        raise ConfigError(key, f"must be a duration such as 30s or 10m, not {text!r}")
    m = _DURATION_RE.match(text.strip())
    if not m or not any(m.groups()):
        raise ConfigError(key, f"must be a duration such as 30s or 10m, not {text!r}")
    d, h, mi, s, ms = (int(g) if g else 0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s + ms / 1000


@dataclass
class Section:
    """A view of one mapping in the configuration that knows its own dotted path."""

    data: Mapping[str, Any]
    path: str = ""

    @classmethod
    def of(cls, parent: Mapping[str, Any], key: str, path: str = "", *,
           required: bool = False) -> Section | None:
        full = f"{path}.{key}" if path else key
        if key not in parent or parent[key] is None:
            if required:
                raise ConfigError(full, "is required")
            return None
        value = parent[key]
        if not isinstance(value, Mapping):
            raise ConfigError(full, f"must be a mapping, not {type(value).__name__}")
        return cls(value, full)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name)
        return default if value is None else value

    def section(self, name: str, *, required: bool = False) -> Section | None:
        return Section.of(self.data, name, self.path, required=required)

    def str(self, name: str, default: str | None = None, *, required: bool = False,
            pattern: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"must be a non-empty string, not {value!r}")
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(self.key(name), f"{value!r} does not match {pattern}")
        if choices and value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def int(self, name: str, default: int | None = None, *, required: bool = False,
            lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer{_range(lo, hi)}, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(self.key(name), f"must be an integer{_range(lo, hi)}, not {value!r}")
        return value

    def float(self, name: str, default: float | None = None, *, lo: float | None = None,
              hi: float | None = None) -> float | None:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"must be a number{_range(lo, hi)}, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(self.key(name), f"must be a number{_range(lo, hi)}, not {value!r}")
        return float(value)

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, not {value!r}")
        return value

    def duration(self, name: str, default: float | None = None) -> float | None:
        value = self.data.get(name)
        if value is None:
            return default
        return parse_duration(value, self.key(name))

    def list(self, name: str) -> list[Any]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"must be a list, not {type(value).__name__}")
        return value

    def secret(self, name: str, base: Path | None = None) -> str | None:
        """A secret given inline as ``name`` or, better, read from ``name_file``."""
        file_key = f"{name}_file"
        if self.has(file_key):
            path = Path(self.str(file_key))
            if base is not None and not path.is_absolute():
                path = base / path
            try:
                check_secret_file(path, self.key(file_key))
                return path.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ConfigError(self.key(file_key),
                                  f"cannot read {path}: {err.strerror}") from err
            except UnicodeDecodeError as err:
                # Raw random bytes (head -c 32 /dev/urandom): the secret is text.
                raise ConfigError(self.key(file_key), f"{path} is not UTF-8 text; write the "
                                  "secret as text, e.g. openssl rand -hex 32") from err
        return self.str(name)


def known_keys(sec: Section, known: tuple[str, ...]) -> None:
    """Refuse a key the section does not have, naming it and the keys it has."""
    # A misspelt key (``bounse: 1s``) would otherwise silently keep the default.
    for key in sec.data:
        if key not in known:
            raise ConfigError(sec.key(str(key)), f"unknown key; expected one of "
                                                 f"{', '.join(known)}")


def check_secret_file(path: str | Path, key: str) -> None:
    """Refuse a secret file (a key, a password, tokens) that its group or others can read.

    A station's files sit on a Pi at the roadside and the hub's on a shared host:
    a secret that any local account can read is a secret shared with all of them.
    Refused rather than warned about, so that it is mended before it runs
    (docs/security.md, "File modes"); raises OSError when the file cannot be read.

    >>> check_secret_file("/etc/yizhan/fleet.key", "fleet_key_file")
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(key, f"{path} can be read by other accounts (mode {mode:04o}); "
                               f"a secret file must be the program's own: chmod 600 {path}")


def create_private(path: str | Path) -> Path:
    """Make ``path`` an empty file only its owner can read (0600) unless it exists;
    an existing one is tightened to 0600 (said so in the log).

    For the files the programs fill themselves (the hub's and the station's
    SQLite): created here before SQLite opens them, because SQLite gives the
    ``-wal`` and ``-shm`` files it makes the mode of the database file.
    """
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return path
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(each).st_mode)
            if mode & 0o077:
                os.chmod(each, 0o600)
                logging.getLogger(__name__).warning(
                    "%s could be read by other accounts (mode %04o): now 0600", each, mode)
    return path


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    """The ``mqtt`` section shared by the hub and the station (contract §14)."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive: int = 30

    @classmethod
    def from_section(cls, sec: Section | None, base: Path | None = None) -> MqttConfig:
        if sec is None:
            return cls()
        tls = None
        tls_sec = sec.section("tls")
        if tls_sec is not None:
            key_file = tls_sec.str("key_file")
            if key_file is not None:
                with contextlib.suppress(FileNotFoundError):  # paho names a missing one
                    check_secret_file(key_file, tls_sec.key("key_file"))
            tls = TlsConfig(
                ca_file=tls_sec.str("ca_file"),
                cert_file=tls_sec.str("cert_file"),
                key_file=tls_sec.str("key_file"),
                insecure=tls_sec.bool("insecure"),
            )
        return cls(
            host=sec.str("host", "127.0.0.1"),
            port=sec.int("port", 1883, lo=1, hi=65535),
            username=sec.str("username"),
            password=sec.secret("password", base),
            tls=tls,
            keepalive=sec.int("keepalive", 30, lo=2, hi=65535),
        )

    def redacted(self) -> dict[str, Any]:
        """For logging: never the password."""
        return {"host": self.host, "port": self.port, "username": self.username,
                "password": "***" if self.password else None, "tls": self.tls is not None,
                "keepalive": self.keepalive}


# -- the station file's shared part ----------------------------------------------------

#: The addresses that are this machine: the kiosk and the agent's API for it stay here.
LOOPBACK = ("127.0.0.1", "::1", "localhost")

#: The fleet key of the demo, and of a ``hardware: sim`` station whose file names
#: none (its kiosk and its simulated riders then agree on rider ids).
DEMO_FLEET_KEY = b"yizhan-demo-fleet-key"


@dataclass(frozen=True)
class LocalApiConfig:
    """Where the agent serves the kiosk (``local_api``: loopback, or a Unix socket)."""

    host: str = "127.0.0.1"
    port: int = 8701
    unix_socket: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_section(cls, sec: Section | None) -> LocalApiConfig:
        if sec is None:
            return cls()
        known_keys(sec, ("host", "port", "unix_socket"))
        api = cls(host=sec.str("host", "127.0.0.1"), port=sec.int("port", 8701, lo=0, hi=65535),
                  unix_socket=sec.str("unix_socket"))
        if api.unix_socket is None and api.host not in LOOPBACK:
            raise ConfigError(sec.key("host"), "the kiosk's API must stay on loopback "
                                               "(127.0.0.1) or a unix_socket")
        return api


@dataclass(frozen=True)
class StationBasics:
    """What the agent and the kiosk both read from the one station file (contract §14):
    which station this is, where it keeps its data, the fleet key that turns phone
    numbers into rider ids, whether it is simulated, and where the agent serves the
    kiosk. ``fleet_key`` is None when the file names no ``fleet_key_file``.

        basics = StationBasics.from_root(Section(load_yaml(path)), base=path.parent)
    """

    sid: str
    name: str
    data_dir: Path
    sim: bool = False
    fleet_key: bytes | None = None
    local_api: LocalApiConfig = LocalApiConfig()

    @classmethod
    def from_root(cls, root: Section, base: Path | None = None) -> StationBasics:
        """Read from the file's top level; relative paths are taken from ``base``."""
        sim = root.str("hardware", choices=("sim", "pi")) == "sim"
        station = root.section("station", required=True)
        sid = station.str("id", required=True)
        try:
            check_sid(sid)
        except InvalidIdentifier as err:
            raise ConfigError("station.id", str(err)) from err
        data_dir = Path(root.str("data_dir", required=True))
        if base is not None and not data_dir.is_absolute():
            data_dir = base / data_dir
        fleet_key = None
        if root.has("fleet_key_file"):
            fleet_key = (root.secret("fleet_key", base) or "").encode()
            if len(fleet_key) < 16:
                raise ConfigError("fleet_key_file",
                                  "the fleet key must be at least 16 characters")
        return cls(sid=sid, name=station.str("name", sid), data_dir=data_dir, sim=sim,
                   fleet_key=fleet_key,
                   local_api=LocalApiConfig.from_section(root.section("local_api")))
