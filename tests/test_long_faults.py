"""Long faults (issue 12): a station and the hub come back by themselves, whatever
the outage and however long, at the settings that ship.

Real Mosquitto, a real in-process agent on simulated hardware, a real in-process
hub on SQLite. Nothing here shrinks a setting: the agent keeps its 0.5–60 s
backoff and 30 s keepalive, the hub its 1–30 s backoff and 30 s keepalive. Long
outages are lived through on a ManualClock that both of them wait on: the test
moves time, the code's waits end as they would after minutes. (The black-holed
link, whose detection is paho's keep-alive in real time, is in
test_dead_links.py.) ``make soak`` runs the same faults in real time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.hardware.station import build_hardware
from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import events as events_table
from protocol.topics import HUB_STATUS_TOPIC, HUB_TIME_TOPIC, Kind, topic
from tests.harness.mqtt import Subscriber
from tests.harness.procs import advance_until, wait_until
from tests.harness.tls import make_tls, renew_server_certificate
from yizhan.clock import ManualClock
from yizhan.watchdog import Notifier

SID = "yh-chumen-01"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}
#: The shipped settings (firmware/link.py, hub/mqtt/ingest.py, yizhan/config.py).
STATION_CEILING, HUB_CEILING, KEEPALIVE = 60.0, 30.0, 30


class Station:
    """The whole agent (``hardware: sim``) on its own thread, on ``clock``."""

    def __init__(self, tmp_path: Path, port: int, clock: ManualClock, **mqtt: object) -> None:
        (tmp_path / "fleet.key").write_bytes(FLEET_KEY)
        data = {
            "hardware": "sim",
            "station": {"id": SID, "name": "楚门镇先锋驿站"},
            "mqtt": {"host": "127.0.0.1", "port": port, **mqtt},  # keepalive: the default
            "data_dir": str(tmp_path / "station"),
            "fleet_key_file": str(tmp_path / "fleet.key"),
            "local_api": {"host": "127.0.0.1", "port": 0},
            "lockers": {"slots": 6},
            "sim": QUIET_SIM,
        }
        self.config = parse_station_config(data, source=None)
        assert self.config.mqtt.keepalive == KEEPALIVE
        self.hardware = build_hardware(self.config, clock)
        self.agent = Agent(self.config, clock, self.hardware, notifier=Notifier(None))
        assert self.agent.link.reconnect_max == STATION_CEILING
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    @property
    def link(self):
        return self.agent.link

    def visit(self) -> int:
        """An event, recorded as the parts record theirs."""
        return self.agent.reporter.event("visit", {"count": 1})

    def close(self) -> None:
        self.agent.stop()
        self.thread.join(10)


def start_hub(port: int, db: Path, clock: ManualClock) -> Hub:
    config = parse_hub_config({"mqtt": {"host": "127.0.0.1", "port": port},
                               "database": f"sqlite:///{db}"})
    assert config.mqtt.keepalive == KEEPALIVE
    hub = Hub(config, clock=clock, registry=CollectorRegistry())
    hub.start()
    return hub


@pytest.fixture
def rig(tmp_path, broker_factory):
    """``rig(persistence=...) -> (broker, station, hub, clock)``, all closed after."""
    made: list = []

    def make(persistence: bool = False):
        clock = ManualClock()
        broker = broker_factory(persistence=persistence)
        hub = start_hub(broker.port, tmp_path / "hub.db", clock)
        made.append(hub)
        station = Station(tmp_path, broker.port, clock)
        made.append(station)
        advance_until(clock, lambda: hub_sees_online(hub, station), "first birth", step=0.5,
                      limit=30)
        return broker, station, hub, clock

    yield make
    for thing in reversed(made):
        thing.close()


def hub_sees_online(hub: Hub, station: Station) -> bool:
    view = hub.fleet.get(SID)
    return (station.link.connected.is_set() and view is not None and view.online
            and view.birth == station.link.birth)


def stored_seqs(hub: Hub) -> list[int]:
    hub.writer.flush(5)
    with hub.store.engine.connect() as conn:
        return [r.seq for r in conn.execute(
            sa.select(events_table.c.seq).where(events_table.c.sid == SID)
            .order_by(events_table.c.seq))]


def healed(hub: Hub, station: Station, clock: ManualClock) -> None:
    """Every event the station created is stored once; the hub's replay requests
    (its scheduler runs in real time, its waits on the clock) get the time they need."""
    def complete() -> bool:
        last = station.agent.journal.last_seq
        return stored_seqs(hub) == list(range(1, last + 1))
    advance_until(clock, complete, "every event stored once", step=1.0, limit=180,
                  settle=0.05, timeout=30)


def live_through_outage(clock: ManualClock, seconds: float, during=None, step: float = 5.0):
    """Move the clock over an outage, letting every backoff wait end as it would."""
    moved = 0.0
    while moved < seconds:
        clock.advance(min(step, seconds - moved))
        moved += step
        if during is not None:
            during()
        time.sleep(0.005)


def retained(broker, topics: list[str]) -> dict[str, dict]:
    """What a newcomer is handed on subscribe: the retained message of each topic."""
    with Subscriber(broker, topics) as sub:
        time.sleep(0.3)
        return {m.topic: json.loads(m.payload) for m in sub.messages if m.retain}


# -- broker outages of 10 s, 2 min and 10 min, with and without persistence -------------------


@pytest.mark.slow
@pytest.mark.parametrize("persistence", [False, True], ids=["lost", "kept"])
@pytest.mark.parametrize("outage", [10, 120, 600], ids=["10s", "2min", "10min"])
def test_both_sides_come_back_after_a_broker_outage(rig, outage, persistence):
    broker, station, hub, clock = rig(persistence)
    for _ in range(3):
        station.visit()
    wait_until(lambda: stored_seqs(hub) == [1, 2, 3], 10, "the first events stored")

    broker.stop()
    wait_until(lambda: not station.link.connected.is_set() and not hub.ingest.connected.is_set(),
               10, "both sides notice")
    # The station keeps recording while the broker is away.
    live_through_outage(clock, outage, during=lambda: clock.monotonic() % 60 < 5
                        and station.visit())
    assert not station.link.connected.is_set()
    assert station.link.healthy()  # an outage of the broker is no fault of ours
    broker.start()

    took = advance_until(clock, lambda: hub_sees_online(hub, station),
                         "the station born again and the hub seeing it online", step=0.5,
                         limit=STATION_CEILING + KEEPALIVE)
    assert took <= STATION_CEILING + KEEPALIVE
    assert station.link.restarts == 0 and hub.problems() == []

    # Nothing lost, nothing stored twice: every event 1..last_seq once. Events the
    # station sent before the hub had subscribed again to a broker that forgot its
    # session were dropped by the broker: replay heals them.
    healed(hub, station, clock)

    # What each side owns is on the broker again, retained, whether or not it kept it.
    kept = retained(broker, [topic(SID, Kind.STATUS), topic(SID, Kind.STATE),
                             HUB_STATUS_TOPIC, HUB_TIME_TOPIC])
    assert kept[topic(SID, Kind.STATUS)]["state"] == "online"
    assert kept[topic(SID, Kind.STATUS)]["birth"] == station.link.birth
    assert kept[topic(SID, Kind.STATE)]["last_seq"] >= 3
    assert kept[HUB_STATUS_TOPIC]["state"] == "online"
    assert kept[HUB_TIME_TOPIC]["ts"] >= clock.ms() - 60_000
    # A broker that lost our session says so, and the hub counts it.
    assert hub.ingest.fresh_sessions == (1 if persistence else 2)


# -- the hub away for ten minutes while the station works on ------------------------------------


@pytest.mark.slow
def test_the_hub_away_ten_minutes_loses_nothing_and_replay_heals_the_rest(rig, tmp_path):
    broker, station, hub, clock = rig(persistence=False)
    station.visit()
    wait_until(lambda: stored_seqs(hub) == [1], 10, "the first event stored")
    hub.close()  # the hub's host reboots; the broker queues for its session meanwhile
    births = station.link.session
    live_through_outage(clock, 300, during=lambda: clock.monotonic() % 30 < 5 and station.visit())
    # ... and then the broker restarts too (no persistence): what it queued is gone.
    broker.stop()
    broker.start()
    live_through_outage(clock, 300, during=lambda: clock.monotonic() % 30 < 5 and station.visit())
    assert station.link.connected.is_set() and station.link.session == births + 1
    last = station.agent.journal.last_seq
    assert last > 10

    again = start_hub(broker.port, tmp_path / "hub.db", clock)
    try:
        advance_until(clock, lambda: hub_sees_online(again, station), "the hub back", step=0.5,
                      limit=HUB_CEILING + 15)  # + contract §9's 0–10 s republish
        healed(again, station, clock)
        assert again.fleet.get(SID).events_through >= last
    finally:
        again.close()


# -- a name that does not resolve for a while; a TLS broker with a new certificate --------------


@pytest.mark.slow
def test_a_broker_name_that_does_not_resolve_for_a_while(tmp_path, broker_factory, monkeypatch):
    """The resolver is the lowest layer here: it fails (as with no DNS on a 4G
    router that has just booted) until the test lets it answer."""
    broker = broker_factory()
    name = "broker.yizhan.test"
    resolvable = threading.Event()
    real = socket.getaddrinfo
    lookups = []

    def getaddrinfo(host, *args, **kwargs):
        if host == name:
            lookups.append(time.monotonic())
            if not resolvable.is_set():
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    clock = ManualClock()
    station = Station(tmp_path, broker.port, clock, host=name)
    try:
        live_through_outage(clock, 300)
        assert len(lookups) >= 5 and not station.link.connected.is_set()
        assert station.link.healthy()  # not stuck: nothing answers at that name
        resolvable.set()
        took = advance_until(clock, station.link.connected.is_set, "connected by name",
                             step=0.5, limit=STATION_CEILING + KEEPALIVE)
        assert took <= STATION_CEILING + KEEPALIVE
    finally:
        station.close()


@pytest.mark.slow
def test_a_tls_broker_restarted_with_a_new_certificate_from_the_same_ca(tmp_path,
                                                                       broker_factory):
    tls = make_tls(tmp_path / "tls")
    broker = broker_factory(tls=tls)
    clock = ManualClock()
    station = Station(tmp_path, broker.tls_port, clock,
                      tls={"ca_file": str(tls.ca_file)}, host="localhost")
    try:
        wait_until(station.link.connected.is_set, 10, "connected over TLS")
        first = station.link.birth
        broker.stop()
        before = tls.cert_file.read_bytes()
        renew_server_certificate(tls)
        assert tls.cert_file.read_bytes() != before
        live_through_outage(clock, 120)
        broker.start()
        took = advance_until(clock, station.link.connected.is_set, "reconnected over TLS",
                             step=0.5, limit=STATION_CEILING + KEEPALIVE)
        assert took <= STATION_CEILING + KEEPALIVE and station.link.birth > first
    finally:
        station.close()
