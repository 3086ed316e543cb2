"""The hub configuration file (contract §14), read once and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid
from yizhan.config import ConfigError, MqttConfig, Section, load_yaml


@dataclass(frozen=True)
class StationMeta:
    sid: str
    name: str
    group: str | None = None


@dataclass(frozen=True)
class HubConfig:
    mqtt: MqttConfig
    database: str
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    api_tokens: tuple[str, ...] = ()
    fleet_key: bytes | None = None
    stations: tuple[StationMeta, ...] = ()
    notifiers: tuple[dict, ...] = ()
    routes: tuple[dict, ...] = ()
    rules: dict[str, Any] = field(default_factory=dict)
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
    root = Section(data)
    database = root.str("database", required=True)
    if not database.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise ConfigError("database", f"must be a sqlite:// or postgresql:// URL, not {database!r}")
    if database.startswith("sqlite:///") and base is not None:
        rel = database[len("sqlite:///"):]
        if rel and not rel.startswith("/"):
            database = f"sqlite:///{(base / rel).resolve()}"

    http = root.section("http")
    tokens = root.list("api_tokens")
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str) or len(tok) < 16:
            raise ConfigError(f"api_tokens[{i}]", "must be a string of at least 16 characters")
    if root.has("api_tokens_file"):
        tokens = tokens + [t for t in (root.secret("api_tokens") or "").split() if t]

    fleet_key = None
    if root.has("fleet_key_file"):
        fleet_key = (root.secret("fleet_key", base) or "").encode()
        if len(fleet_key) < 16:
            raise ConfigError("fleet_key_file", "the fleet key must be at least 16 characters")

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
        stations.append(StationMeta(sid=sid, name=sec.str("name", sid), group=sec.str("group")))

    rules = root.section("rules")
    timing = root.section("timing")
    policy = root.section("policy")
    mqtt_sec = root.section("mqtt")
    shared_group = mqtt_sec.str("shared_group", pattern=r"[^/+#\s]+") if mqtt_sec else None
    if shared_group and database.startswith("sqlite:"):
        raise ConfigError("mqtt.shared_group", "several hub workers need a shared PostgreSQL "
                          "database, not SQLite (see docs/hub.md)")
    return HubConfig(
        mqtt=MqttConfig.from_section(root.section("mqtt"), base),
        database=database,
        http_host=http.str("host", "127.0.0.1") if http else "127.0.0.1",
        http_port=http.int("port", 8080, lo=0, hi=65535) if http else 8080,
        api_tokens=tuple(tokens),
        fleet_key=fleet_key,
        stations=tuple(stations),
        notifiers=tuple(root.list("notifiers")),
        routes=tuple(root.list("routes")),
        rules=dict(rules.data) if rules else {},
        heartbeat=timing.duration("heartbeat", 60.0) if timing else 60.0,
        missed_heartbeats=timing.int("missed_heartbeats", 3, lo=1) if timing else 3,
        client_id=(root.section("mqtt").str("client_id", "yizhan-hub")
                   if root.section("mqtt") else "yizhan-hub"),
        source=source,
        min_charge=policy.int("min_charge", 80, lo=0, hi=100) if policy else 80,
        loan_hours=policy.float("loan_hours", 24.0, lo=0.01) if policy else 24.0,
        replay_after=timing.duration("replay_after", 10.0) if timing else 10.0,
        replay_every=timing.duration("replay_every", 30.0) if timing else 30.0,
        replay_max=timing.int("replay_max", 1000, lo=1, hi=100_000) if timing else 1000,
        shared_group=shared_group,
    )
