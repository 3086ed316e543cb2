"""Links that die without a word, and a hub whose MQTT side stalls (issue 12).

A mobile network's half-open link resets nothing and answers nothing: only the
keep-alive can tell. That runs on paho's own clock, so this test takes real
time at the shipped keepalive (30 s): both sides must notice within 1.5
keepalives, and come back when the path does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from protocol import examples
from protocol.topics import Kind, topic
from tests.harness.delivery import SID, DeliveryStation
from tests.harness.faultproxy import FaultProxy
from tests.harness.mqtt import connect
from tests.harness.procs import advance_until, wait_until
from yizhan.clock import ManualClock
from yizhan.watchdog import Notifier

KEEPALIVE = 30  # what ships


def make_hub(port: int, tmp_path, clock=None, **kwargs) -> Hub:
    config = parse_hub_config({"mqtt": {"host": "127.0.0.1", "port": port},
                               "database": f"sqlite:///{tmp_path / 'hub.db'}"})
    assert config.mqtt.keepalive == KEEPALIVE
    if clock is not None:
        kwargs["clock"] = clock
    hub = Hub(config, registry=CollectorRegistry(), **kwargs)
    hub.start()
    assert hub.ingest.connected.wait(10), "the hub did not connect"
    return hub


@contextlib.contextmanager
def stalled_session(hub: Hub, station, clock: ManualClock):
    """The hub's network thread hangs in a callback (a station's Status waits on
    the fleet's lock): the connection stays up and nothing goes through. A beacon
    is published and the clock moved past ``stall_after``; released on exit."""
    held = hub.fleet._lock
    held.acquire()
    try:
        status = {**examples.example("status"), "sid": SID}
        station.publish(topic(SID, Kind.STATUS), json.dumps(status), qos=1)
        wait_until(hub.ingest._client._in_callback_mutex.locked, 5, "the thread held")
        assert hub.ingest.publish_time()
        clock.advance(hub.ingest.stall_after + 1)
        yield
    finally:
        held.release()


def healthz(hub: Hub) -> tuple[int, dict]:
    answer = hub.app.test_client().get("/healthz")
    return answer.status_code, answer.get_json()


@pytest.mark.slow
def test_a_black_holed_link_is_noticed_within_one_and_a_half_keepalives(
        broker_factory, tmp_path, stations):
    broker = broker_factory()
    with FaultProxy(broker.host, broker.port) as to_station, \
            FaultProxy(broker.host, broker.port) as to_hub:
        hub = make_hub(to_hub.port, tmp_path)
        station = stations(to_station, tmp_path / "station", keepalive=KEEPALIVE,
                           reconnect_min=0.5, reconnect_max=60.0).start()
        try:
            assert healthz(hub)[0] == 200
            noticed: dict[str, float] = {}

            def watch(name, is_up):
                while is_up() and time.monotonic() - holed < 3 * KEEPALIVE:
                    time.sleep(0.05)
                noticed[name] = time.monotonic() - holed

            holed = time.monotonic()
            to_station.blackhole()
            to_hub.blackhole()
            watchers = [threading.Thread(target=watch, args=(n, f)) for n, f in (
                ("station", station.link.connected.is_set),
                ("hub", hub.ingest.connected.is_set))]
            for w in watchers:
                w.start()
            for w in watchers:
                w.join()
            assert noticed["station"] <= 1.5 * KEEPALIVE, noticed
            assert noticed["hub"] <= 1.5 * KEEPALIVE, noticed
            status, body = healthz(hub)
            assert status == 503 and "not connected to the MQTT broker" in body["problems"][0]

            to_station.restore()
            to_hub.restore()
            wait_until(station.link.connected.is_set, 2 * KEEPALIVE, "the station back")
            wait_until(lambda: healthz(hub)[0] == 200, 2 * KEEPALIVE, "the hub back")
            wait_until(lambda: (hub.fleet.get(SID) or 0) and hub.fleet.get(SID).online,
                       15, "the hub sees the station online")
        finally:
            hub.close()


def test_a_stalled_mqtt_session_makes_the_hub_unhealthy_and_says_why(broker_factory, tmp_path):
    """The connection is up, but the hub's network thread is stuck in a callback:
    nothing it publishes is acknowledged. /healthz judges that outcome, not the
    connected flag."""
    broker = broker_factory()
    clock = ManualClock()
    hub = make_hub(broker.port, tmp_path, clock)
    station = connect(broker)
    try:
        wait_until(lambda: hub.ingest.problem() is None and healthz(hub)[0] == 200, 5,
                   "healthy, the first beacon acknowledged")
        with stalled_session(hub, station, clock):
            status, body = healthz(hub)
            assert status == 503
            assert any("stalled" in p for p in body["problems"]), body
            assert hub.ingest.connected.is_set()  # the flag alone would have said "fine"
        wait_until(lambda: healthz(hub)[0] == 200, 5, "healthy again once the thread runs")
    finally:
        station.disconnect()
        hub.close()


def test_the_stations_get_a_time_beacon_they_can_judge_commands_by(broker_factory, tmp_path):
    broker = broker_factory()
    clock = ManualClock(2_000_000_000.0)
    hub = make_hub(broker.port, tmp_path, clock)
    station = DeliveryStation(broker, tmp_path / "station")
    try:
        station.start()
        wait_until(lambda: station.link.hub_clock.now_ms() is not None, 5, "the beacon")
        # Retained: even a station that connects later hears the hub's time at once.
        assert abs(station.link.hub_clock.now_ms() - 2_000_000_000_000) < 5_000
        clock.advance(30)
        hub.beacon()
        wait_until(lambda: station.link.hub_clock.heard_count >= 2, 5, "the next beacon")
    finally:
        station.close()
        hub.close()


def test_the_hub_withholds_its_watchdog_ping_only_for_what_a_restart_mends(
        broker_factory, tmp_path, systemd):
    """systemd restarts the hub when its MQTT session is stuck, never because the
    broker is away (restarting would not bring it back)."""
    broker = broker_factory()
    clock = ManualClock()
    hub = make_hub(broker.port, tmp_path, clock,
                   notifier=Notifier(systemd.address, watchdog_usec=60_000_000))
    station = connect(broker)
    try:
        wait_until(lambda: hub.ingest.unacknowledged_since is None, 5, "the beacon acknowledged")
        hub.watchdog.beat()
        assert hub.watchdog.healthy() == []
        wait_until(lambda: "WATCHDOG=1" in systemd.read(), 10, "a ping from the scheduler")

        broker.stop()  # an outage: not ours to mend
        wait_until(lambda: not hub.ingest.connected.is_set(), 10, "the hub notices")
        hub.watchdog.beat()
        assert hub.watchdog.healthy() == [] and hub.problems()  # unhealthy, yet no restart
        broker.start()
        station.reconnect()
        advance_until(clock, hub.ingest.connected.is_set, "the hub back", step=0.5, limit=40)
        wait_until(lambda: hub.ingest.unacknowledged_since is None, 5, "the beacon acknowledged")

        with stalled_session(hub, station, clock):
            hub.watchdog.beat()
            assert hub.watchdog.healthy() == ["mqtt"]
    finally:
        station.disconnect()
        hub.close()
