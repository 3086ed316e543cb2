"""The hub configuration file (contract §14), read once and checked.

>>> config = load_hub_config("hub.yaml")   # ConfigError naming the key of a mistake

Its parts live beside it: ``rules.py`` (the alert rules and their keys),
``routes.py`` (who is told: ``routes:`` and the routing keys of ``groups:``) and
``notifiers.py`` (``notifiers:`` and the ack links). This package imports
nothing of the hub above ``hub.storage``: the fleet, the ingest and the
alerting all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.config.console import ConsoleConfig, parse_console
from hub.config.finder import FinderConfig, parse_finder
from hub.config.notifiers import DEFAULT_ACK_LINK_TTL, LANGUAGES, NotifierSpec, parse_notify
from hub.config.routes import RoutingConfig, parse_routing
from hub.config.rules import DEFAULT_RESPONSE_TIME, Rules
from hub.config.station_meta import BadMeta, coordinate, hours, text
from hub.config.tokens import SCOPES, ApiToken, legacy_token, parse_api_tokens
from protocol.errors import InvalidIdentifier
from protocol.ids import RIDER_ID_SCHEMES, check_sid
from yizhan.config import ConfigError, MqttConfig, Section, load_yaml

__all__ = ["LANGUAGES", "SCOPES", "ApiToken", "HubConfig", "NotifierSpec", "StationMeta",
           "load_hub_config", "parse_hub_config"]


@dataclass(frozen=True)
class StationMeta:
    sid: str
    name: str
    group: str | None = None
    # for riders (docs/finder.md): WGS-84 degrees, the address, who hosts the
    # station, and "24h" or "HH:MM-HH:MM" (hub/config/station_meta.py)
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    host: str | None = None
    hours: str | None = None


@dataclass(frozen=True)
class HubConfig:
    mqtt: MqttConfig
    database: str
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # the API's bearer tokens with their names and scopes (hub/config/tokens.py)
    api_tokens: tuple[ApiToken, ...] = ()
    fleet_key: bytes | None = None
    # how rider ids are made from phone numbers: the stations' kiosk.rider_ids
    # (protocol/ids.py), so a rider registered at the hub is the one the kiosk sees
    rider_ids: str = "hmac"
    stations: tuple[StationMeta, ...] = ()
    # False: messages from a sid not under ``stations:`` are counted invalid and
    # dropped before the fleet sees them (issue 14, finding 12). The contract's
    # default accepts them.
    accept_unknown_stations: bool = True
    # alerting (docs/alerts.md): the rules of the fleet and of each group
    # (``rules:``, ``groups.<group>.rules`` and ``response_time``, checked), how
    # long someone takes to reach a station, flap damping, and the longest a
    # maintenance session on site mutes refill alerts.
    alert_rules: Rules = field(default_factory=Rules, repr=False)
    response_time: float = DEFAULT_RESPONSE_TIME
    flap_window: float = 3600.0
    flap_max: int = 2
    maintenance_max: float = 4 * 3600.0
    heartbeat: float = 60.0  # what the stations promise (contract §5)
    missed_heartbeats: int = 3
    client_id: str = "yizhan-hub"
    source: str | None = None
    # policy: the lending threshold (contract §12 "ready") and how long a loan runs.
    min_charge: int = 80
    loan_hours: float = 24.0
    # timing: gap healing (contract §3). A gap is asked for once it has stayed
    # open ``replay_after``; one replay per station per ``replay_every``, each of
    # at most ``replay_max`` seqs.
    replay_after: float = 10.0
    replay_every: float = 30.0
    replay_max: int = 1000
    # mqtt.shared_group: several hub workers share the subscriptions ($share/...).
    shared_group: str | None = None
    # routing (docs/routing.md): routes:, the routing keys of groups:, timezone:.
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    # notifications (docs/notifications.md): ``notifiers:``, checked, with their
    # secrets read.
    notifier_specs: tuple[NotifierSpec, ...] = ()
    public_url: str | None = None  # how a phone reaches the hub, for ack links
    ack_link_ttl: float = DEFAULT_ACK_LINK_TTL
    ack_secret: bytes | None = field(default=None, repr=False)
    # the web console (hub/console, docs/console.md)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    # the riders' finder's optional map (hub/config/finder.py, docs/finder.md)
    finder: FinderConfig = field(default_factory=FinderConfig)

    def __post_init__(self) -> None:
        # A config built in code may list bare strings, like the file's first form.
        tokens = tuple(t if isinstance(t, ApiToken) else legacy_token(t, f"api_tokens[{i}]")
                       for i, t in enumerate(self.api_tokens))
        object.__setattr__(self, "api_tokens", tokens)

    def notifier_spec(self, name: str) -> NotifierSpec | None:
        for n in self.notifier_specs:
            if n.name == name:
                return n
        return None

    def station_meta(self, sid: str) -> StationMeta | None:
        for s in self.stations:
            if s.sid == sid:
                return s
        return None


def load_hub_config(path: str | Path) -> HubConfig:
    path = Path(path)
    try:
        return parse_hub_config(load_yaml(path), base=path.parent, source=str(path))
    except ConfigError as err:
        raise err.in_file(path) from None


def parse_hub_config(data: dict, base: Path | None = None, source: str | None = None) -> HubConfig:
    """Every key of the hub's file checked, relative paths taken from ``base``."""
    root = Section(data)
    database = _database(root, base)
    return HubConfig(
        database=database,
        api_tokens=parse_api_tokens(root, base),
        fleet_key=_fleet_key(root, base),
        rider_ids=root.str("rider_ids", "hmac", choices=RIDER_ID_SCHEMES),
        stations=_stations(root),
        accept_unknown_stations=_accept_unknown(root),
        **_alerting(root),
        **_mqtt(root, base, database),
        **_http(root),
        **_timing(root),
        **_policy(root),
        source=source,
        routing=parse_routing(root, [n.get("name") for n in root.list("notifiers")
                                     if isinstance(n, dict)]),
        **parse_notify(root, base, database),
        console=parse_console(root, base),
        finder=parse_finder(root),
    )


def _database(root: Section, base: Path | None) -> str:
    """``database:``, a relative SQLite path taken from the file's directory."""
    database = root.str("database", required=True)
    if not database.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise ConfigError("database", f"must be a sqlite:// or postgresql:// URL, not {database!r}")
    if database.startswith("sqlite:///") and base is not None:
        rel = database[len("sqlite:///"):]
        if rel and not rel.startswith("/"):
            database = f"sqlite:///{(base / rel).resolve()}"
    return database


def _fleet_key(root: Section, base: Path | None) -> bytes | None:
    """The key of riders' ids (contract §1), from ``fleet_key_file:``."""
    if not root.has("fleet_key_file"):
        return None
    fleet_key = (root.secret("fleet_key", base) or "").encode()
    if len(fleet_key) < 16:
        raise ConfigError("fleet_key_file", "the fleet key must be at least 16 characters")
    return fleet_key


def _accept_unknown(root: Section) -> bool:
    """``accept_unknown_stations:``; refusing them needs the list to accept."""
    accept = root.bool("accept_unknown_stations", True)
    if not accept and not root.list("stations"):
        raise ConfigError("accept_unknown_stations", "false refuses every station "
                          "unless stations: lists the fleet")
    return accept


def _stations(root: Section) -> tuple[StationMeta, ...]:
    """``stations:``: each sid valid and listed once."""
    stations = []
    seen = set()
    for i, entry in enumerate(root.list("stations")):
        if not isinstance(entry, dict):
            raise ConfigError(f"stations[{i}]", "must be a mapping like {sid: ..., name: ...}")
        sec = Section(entry, f"stations[{i}]")
        sid = sec.str("sid", required=True)
        try:
            check_sid(sid)
        except InvalidIdentifier as err:
            raise ConfigError(f"stations[{i}].sid", str(err)) from err
        if sid in seen:
            raise ConfigError(f"stations[{i}].sid", f"{sid} is listed twice")
        seen.add(sid)
        stations.append(StationMeta(sid=sid, name=sec.str("name", sid), group=sec.str("group"),
                                    **_whereabouts(sec)))
    return tuple(stations)


def _whereabouts(sec: Section) -> dict[str, Any]:
    """A station's lat, lon, address, host and hours, each checked; lat and lon together."""
    out: dict[str, Any] = {}
    for key, check in (("lat", coordinate), ("lon", coordinate), ("address", text),
                       ("host", text), ("hours", lambda v, _k: hours(v))):
        try:
            out[key] = check(sec.raw(key), key)
        except BadMeta as err:
            raise ConfigError(sec.key(key), str(err)) from None
    if (out["lat"] is None) != (out["lon"] is None):
        raise ConfigError(sec.key("lat" if out["lat"] is None else "lon"),
                          "give both lat and lon, or neither")
    return out


def _alerting(root: Section) -> dict[str, Any]:
    """The rules (``rules:``, ``groups.<group>.rules``, ``response_time:``: built
    once here, so a mistake stops the hub at start naming the key), flap damping
    and ``maintenance_max``."""
    rules = root.section("rules")
    groups = root.section("groups")
    response_time = root.duration("response_time", DEFAULT_RESPONSE_TIME)
    if response_time <= 0:
        raise ConfigError("response_time", "must be longer than 0s")
    alert_rules = Rules(rules.data if rules else None, groups.data if groups else None,
                        response_time)
    flap_window = root.duration("flap_window", 3600.0)
    maintenance_max = root.duration("maintenance_max", 4 * 3600.0)
    if maintenance_max <= 0:
        raise ConfigError("maintenance_max", "must be longer than 0s")
    return {"alert_rules": alert_rules, "response_time": response_time,
            "flap_window": flap_window, "flap_max": root.int("flap_max", 2, lo=1),
            "maintenance_max": maintenance_max}


def _mqtt(root: Section, base: Path | None, database: str) -> dict[str, Any]:
    """``mqtt:``: the broker, the hub's client id, and ``shared_group`` for several
    hub workers (which need a shared PostgreSQL database)."""
    sec = root.section("mqtt")
    shared_group = sec.str("shared_group", pattern=r"[^/+#\s]+") if sec else None
    if shared_group and database.startswith("sqlite:"):
        raise ConfigError("mqtt.shared_group", "several hub workers need a shared PostgreSQL "
                          "database, not SQLite (see docs/hub.md)")
    return {"mqtt": MqttConfig.from_section(sec, base),
            "client_id": sec.str("client_id", "yizhan-hub") if sec else "yizhan-hub",
            "shared_group": shared_group}


def _http(root: Section) -> dict[str, Any]:
    http = root.section("http")
    if http is None:
        return {}
    return {"http_host": http.str("host", "127.0.0.1"),
            "http_port": http.int("port", 8080, lo=0, hi=65535)}


def _timing(root: Section) -> dict[str, Any]:
    """``timing:``: the stations' heartbeat and how many may be missed, and gap healing."""
    timing = root.section("timing")
    if timing is None:
        return {}
    return {"heartbeat": timing.duration("heartbeat", 60.0),
            "missed_heartbeats": timing.int("missed_heartbeats", 3, lo=1),
            "replay_after": timing.duration("replay_after", 10.0),
            "replay_every": timing.duration("replay_every", 30.0),
            "replay_max": timing.int("replay_max", 1000, lo=1, hi=100_000)}


def _policy(root: Section) -> dict[str, Any]:
    """``policy:``: the lending threshold (``min_charge``) and ``loan_hours``."""
    policy = root.section("policy")
    if policy is None:
        return {}
    return {"min_charge": policy.int("min_charge", 80, lo=0, hi=100),
            "loan_hours": policy.float("loan_hours", 24.0, lo=0.01)}
