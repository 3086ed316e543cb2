"""The hub end to end: real Mosquitto, real station agents on sim hardware, the hub
in process or as the real ``yizhan hub`` program, SQLite files and PostgreSQL.

* events lost on the way (the broker's queue for the absent hub overflows) are
  healed by ``replay``: the command goes out, the agent re-sends, each is stored once;
* the hub killed with SIGKILL in the middle of a stream and started again stores
  every event once, and the ledger counts the time it was dead as unknown;
* a broker that crashed and restarts from its persistence file keeps a dead
  station's retained "online":
  the hub takes it for what it is and marks the station down after three missed
  heartbeats, the outage starting when it was last heard.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.hardware.station import build_hardware
from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import events, loans
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.harness.mosquitto import Broker
from tests.harness.mqtt import Subscriber
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from yizhan.clock import SYSTEM_CLOCK
from yizhan.watchdog import Notifier

SID = "yh-chumen-01"
OTHER = "yh-kanmen-01"
TOKEN = "e2e-test-token-0123456789"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}
RIDER = rider_id(FLEET_KEY, "13812345678")


def station_data(tmp_path: Path, broker: Broker, sid: str = SID, **extra: Any) -> dict:
    key = tmp_path / "fleet.key"
    key.write_bytes(FLEET_KEY)
    return {
        "hardware": "sim",
        "station": {"id": sid, "name": sid},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp_path / sid),
        "fleet_key_file": str(key),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "lockers": {"slots": 6, "poll_interval": "250ms"},
        "sim": QUIET_SIM,
        **extra,
    }


class Station:
    """A real agent on sim hardware, in this process on its own thread."""

    def __init__(self, tmp_path: Path, broker: Broker, sid: str = SID, **extra: Any) -> None:
        self.config = parse_station_config(station_data(tmp_path, broker, sid, **extra))
        self.hardware = build_hardware(self.config, SYSTEM_CLOCK)
        self.agent = Agent(self.config, SYSTEM_CLOCK, self.hardware, notifier=Notifier(None))
        # Republish soon after the hub comes back (contract §9 allows 0-10 s).
        self.agent.link.hub_online_delay = 0.2
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_until(self.agent.link.connected.is_set, 10, f"{sid} connected")

    def record(self, type_: str = "visit", data: dict | None = None) -> int:
        """An event, recorded as a part of the station would (journal first)."""
        return self.agent.reporter.event(type_, {"count": 1} if data is None else data)

    def delivered(self) -> bool:
        return not self.agent.journal.pending(1)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.agent.stop()
            self.thread.join(15)
            assert not self.thread.is_alive()


@pytest.fixture
def agents(tmp_path) -> Iterator:
    made: list[Station] = []

    def start(broker: Broker, sid: str = SID, **extra: Any) -> Station:
        made.append(Station(tmp_path, broker, sid, **extra))
        return made[-1]

    yield start
    for s in made:
        s.stop()


@pytest.fixture
def procs(tmp_path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


def hub_config(broker: Broker, database: str, http_port: int = 0, **extra: Any) -> dict:
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": database,
        "http": {"host": "127.0.0.1", "port": http_port},
        "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站"}],
        **extra,
    }


def stored_seqs(url: str) -> list[int]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [r.seq for r in conn.execute(
                sa.select(events.c.seq).where(events.c.sid == SID).order_by(events.c.seq))]
    finally:
        engine.dispose()


class SmallQueueBroker(Broker):
    """A Mosquitto that keeps only ``queued`` messages for an absent persistent
    session (the default configuration of contract deployments raises it)."""

    def __init__(self, workdir: Path, queued: int, **options: Any) -> None:
        super().__init__(workdir, **options)
        self.queued = queued

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        assert "max_queued_messages 100000" in text
        self.config_path.write_text(text.replace("max_queued_messages 100000",
                                                 f"max_queued_messages {self.queued}"))


# -- a gap healed by replay ------------------------------------------------------------


def test_events_dropped_while_the_hub_was_away_are_replayed(tmp_path, agents):
    # Room for 20 queued messages (beyond 20 in flight): enough for a replay in
    # one go to a connected hub, not for what 60 events make while it is away.
    broker = SmallQueueBroker(tmp_path / "broker", queued=20).start()
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    config = parse_hub_config(hub_config(
        broker, url, timing={"replay_after": "2s", "replay_every": "3s"}))
    hub = Hub(config, registry=CollectorRegistry())
    station = None
    try:
        hub.start()
        station = agents(broker)
        wait_until(lambda: (hub.fleet.get(SID) or None) and hub.fleet.get(SID).online, 10,
                   "the station online at the hub")
        first = [station.record() for _ in range(3)]
        wait_until(lambda: hub.fleet.get(SID).events_through == first[-1], 10,
                   "the first events stored")
        hub.close()  # the session stays at the broker, with room for 20 messages

        more = [station.record() for _ in range(60)]
        wait_until(station.delivered, 15, "the station delivered everything to the broker")

        with Subscriber(broker, [topic(SID, Kind.CMD), topic(SID, Kind.CMD_RESULT)]) as sub:
            hub = Hub(config, registry=CollectorRegistry())
            hub.start()
            cmd = sub.wait_for(lambda x: x.topic.endswith("/cmd"), timeout=20).json()
            assert cmd["cmd"] == "replay" and cmd["by"] == "hub"
            assert cmd["args"]["from_seq"] > first[-1]
            assert cmd["args"]["to_seq"] <= more[-1]
            answer = sub.wait_for(lambda x: x.topic.endswith("/cmd/result"), timeout=10).json()
            assert answer["id"] == cmd["id"] and answer["ok"] is True
            wait_until(lambda: hub.fleet.get(SID).events_through == more[-1], 20,
                       "every event held after the replay")
        assert hub.writer.flush(5)
        assert stored_seqs(url) == list(range(1, more[-1] + 1))
        assert hub.registry.get_sample_value(
            "yizhan_hub_messages_total", {"kind": "result", "result": "applied"}) >= 1
        assert hub.commands.get(SID, cmd["id"])["state"] == "ok"
    finally:
        if station is not None:
            station.stop()
        hub.close()
        broker.stop()


# -- the hub killed in the middle of a stream ----------------------------------------------


def test_a_hub_killed_mid_stream_stores_every_event_once(database_url, tmp_path,
                                                         broker_factory, agents, procs):
    broker = broker_factory()
    port = free_port()
    cfg = write_yaml(tmp_path / "hub.yaml", hub_config(
        broker, database_url, port, timing={"replay_after": "2s"}))
    base = f"http://127.0.0.1:{port}"
    hub = procs.start("hub-1", "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub.tail)
    station = agents(broker)

    def online() -> bool:
        status, body = http_json(f"{base}/api/v1/stations/{SID}", TOKEN)
        return status == 200 and body["online"]

    wait_until(online, 10, "the station online", on_fail=hub.tail)
    started_ms = int(time.time() * 1000)

    recorded: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set() and n < 300:
            n += 1
            if n % 10 == 0:  # a borrow now and then: a loan must not double
                recorded.append(station.record("bank_borrowed", {
                    "slot": 1, "bank": f"PB{n:06d}", "charge": 96, "rider": RIDER}))
            else:
                recorded.append(station.record())
            time.sleep(0.01)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        wait_until(lambda: len(recorded) >= 100, 10, "the stream under way")
        hub.kill()  # SIGKILL: no goodbye, the last batch perhaps not committed
        killed_ms = int(time.time() * 1000)
        time.sleep(2.0)
        hub = procs.start("hub-2", "hub", "--config", str(cfg))
        restarted_ms = int(time.time() * 1000)
    finally:
        writer.join(30)
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz again",
               on_fail=hub.tail)
    wait_until(station.delivered, 15, "the station delivered everything")

    def all_stored() -> bool:
        return stored_seqs(database_url) == list(range(1, recorded[-1] + 1))

    wait_until(all_stored, 30, "every event stored", interval=0.5, on_fail=hub.tail)
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            n_loans = conn.execute(sa.select(sa.func.count()).select_from(loans)).scalar_one()
            n_borrows = conn.execute(sa.select(sa.func.count()).select_from(events).where(
                events.c.type == "bank_borrowed")).scalar_one()
    finally:
        engine.dispose()
    assert n_loans == n_borrows == len(recorded) // 10

    # The ledger: up while a hub watched, unknown while none did; never down.
    now_ms = int(time.time() * 1000)
    status, up = http_json(
        f"{base}/api/v1/stations/{SID}/uptime?from={started_ms}&to={now_ms}", TOKEN)
    assert status == 200, up
    assert up["down_s"] == 0 and up["outages"] == []
    assert up["unknown_s"] >= (restarted_ms - killed_ms) / 1000 - 0.5
    assert up["availability"] == 1.0
    assert online()


# -- a broker restart leaves a stale retained "online" ----------------------------------------


def test_a_station_that_died_with_the_broker_goes_down_after_missed_heartbeats(
        tmp_path, broker_factory, procs):
    # Mosquitto sends every will when it is stopped cleanly; a crash sends none and
    # leaves the retained births of its last autosave.
    broker = broker_factory(persistence=True, autosave_interval=1)
    port = free_port()
    cfg = write_yaml(tmp_path / "hub.yaml", hub_config(
        broker, f"sqlite:///{tmp_path / 'hub.db'}", port, timing={"heartbeat": "1s"}))
    base = f"http://127.0.0.1:{port}"
    hub = procs.start("hub", "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub.tail)
    dying = procs.start("agent-dying", "agent", "--config", str(write_yaml(
        tmp_path / "dying.yaml", station_data(tmp_path, broker, SID, timing={"heartbeat": "1s"}))))
    living = procs.start("agent-living", "agent", "--config", str(write_yaml(
        tmp_path / "living.yaml",
        station_data(tmp_path, broker, OTHER, timing={"heartbeat": "1s"}))))

    def station(sid: str) -> dict:
        status, body = http_json(f"{base}/api/v1/stations/{sid}", TOKEN)
        return body if status == 200 else {}

    wait_until(lambda: station(SID).get("online") and station(OTHER).get("online"), 15,
               "both stations online", on_fail=lambda: dying.tail() + living.tail())

    time.sleep(2.5)  # an autosave with both births in it
    broker.kill()
    stopped_ms = int(time.time() * 1000)
    dying.kill()  # dies while there is no broker to publish its will
    time.sleep(1.0)
    broker.start()
    back = time.monotonic()

    def down() -> bool:
        return station(SID).get("online") is False

    wait_until(down, 40, "the dead station down", on_fail=hub.tail)
    # Three missed 1 s heartbeats after the hub is back, not at once.
    assert time.monotonic() - back >= 3.0 - 0.5
    assert station(SID)["since"] <= stopped_ms
    # The station that lived through it republished and stays online.
    assert station(OTHER)["online"], living.tail()
    time.sleep(3.5)
    assert station(OTHER)["online"], living.tail()
    assert hub.alive()
    hub.signal(signal.SIGTERM)
    assert hub.wait(15) == 0, hub.tail()
