"""The walking skeleton: real broker, real hub and agent processes (issue 2).

The agent (hardware: sim) connects and publishes its birth with a last will and
a State; the hub lists it online over its bearer-token API; SIGKILL makes the
broker deliver the will and the hub shows the station offline within 1.5 × the
keepalive; a stale will (an older birth) does not mark a reconnected station
offline.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, publish
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

SID = "yh-chumen-01"
TOKEN = "skeleton-test-token-0123456789"
KEEPALIVE = 2


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture
def system(tmp_path, broker_factory, procs):
    broker = broker_factory()
    http_port = free_port()
    mqtt = {"host": "127.0.0.1", "port": broker.port, "keepalive": KEEPALIVE}
    hub_cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": mqtt,
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": http_port},
        "api_tokens": [TOKEN],
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"}],
    })
    station_cfg = write_yaml(tmp_path / "station.yaml", {
        "hardware": "sim",
        "station": {"id": SID, "name": "楚门镇先锋驿站"},
        "mqtt": mqtt,
        "data_dir": str(tmp_path / "station"),
        # A free port: another test worker's agent may hold the default 8701.
        "local_api": {"host": "127.0.0.1", "port": 0},
    })
    hub = procs.start("hub", "hub", "--config", str(hub_cfg))
    base = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 15, "hub healthz",
               on_fail=hub.tail)

    class System:
        pass

    s = System()
    s.broker, s.base, s.hub, s.station_cfg = broker, base, hub, station_cfg
    return s


def station(base: str) -> dict | None:
    status, body = http_json(f"{base}/api/v1/stations", TOKEN)
    assert status == 200, body
    return next((st for st in body["stations"] if st["sid"] == SID), None)


def online(base: str) -> bool:
    st = station(base)
    return bool(st and st["online"])


def offline(base: str) -> bool:
    st = station(base)
    return bool(st and not st["online"])


def metric(base: str, kind: str, result: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{base}/metrics", timeout=2).read().decode()
    needle = f'yizhan_hub_messages_total{{kind="{kind}",result="{result}"}}'
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


def test_api_needs_a_bearer_token(system):
    status, body = http_json(f"{system.base}/api/v1/stations")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    status, body = http_json(f"{system.base}/api/v1/stations", "wrong-token-wrong-token")
    assert status == 401


def test_birth_state_and_death_through_real_processes(system, procs):
    sub = Subscriber(system.broker, [topic(SID, Kind.STATUS), topic(SID, Kind.STATE)])
    try:
        agent = procs.start("agent", "agent", "--config", str(system.station_cfg))
        birth_msg = sub.wait_for(
            lambda msg: msg.topic.endswith("/status")
            and json.loads(msg.payload)["state"] == "online", timeout=10)
        birth = m.decode(Kind.STATUS, birth_msg.payload, topic_sid=SID)
        assert birth.birth == birth.rev and birth.ts and birth.synced is not None
        state_msg = sub.wait_for(lambda msg: msg.topic.endswith("/state"), timeout=10)
        state = m.decode(Kind.STATE, state_msg.payload, topic_sid=SID)
        assert state.epoch == birth.epoch and state.rev > birth.rev
        assert state_msg.retain is False or state_msg.retain is True  # live or retained copy

        wait_until(lambda: online(system.base), 10, "station online in the API",
                   on_fail=agent.tail)
        st = station(system.base)
        assert st["name"] == "楚门镇先锋驿站"
        # The hub applies the State a moment after our own subscriber saw it.
        def hub_has_state():
            status, detail = http_json(f"{system.base}/api/v1/stations/{SID}", TOKEN)
            assert status == 200
            return detail["state"] and detail["state"]["rev"] >= state.rev

        wait_until(hub_has_state, 5, "the State in the hub's API")

        killed_at = time.monotonic()
        agent.signal(signal.SIGKILL)
        will_msg = sub.wait_for(
            lambda msg: msg.topic.endswith("/status")
            and json.loads(msg.payload)["state"] == "offline", timeout=KEEPALIVE * 3)
        will = m.decode(Kind.STATUS, will_msg.payload, topic_sid=SID)
        assert will.is_will and will.reason == "lost" and will.birth == birth.birth
        # Mosquitto checks keepalive about once a second: allow that on top of 1.5×.
        wait_until(lambda: offline(system.base), 1.5 * KEEPALIVE + 1.0, "station offline")
        took = time.monotonic() - killed_at
        assert took <= 1.5 * KEEPALIVE + 1.0, took
    finally:
        sub.close()


def test_a_stale_will_does_not_mark_a_reconnected_station_offline(system, procs):
    sub = Subscriber(system.broker, [topic(SID, Kind.STATUS)])
    try:
        first = procs.start("agent-1", "agent", "--config", str(system.station_cfg))
        msg = sub.wait_for(lambda x: json.loads(x.payload)["state"] == "online", timeout=10)
        old = m.decode(Kind.STATUS, msg.payload, topic_sid=SID)
        wait_until(lambda: online(system.base), 10, "first birth applied", on_fail=first.tail)
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0
        wait_until(lambda: offline(system.base), 5, "clean shutdown applied")

        second = procs.start("agent-2", "agent", "--config", str(system.station_cfg))
        wait_until(lambda: online(system.base), 10, "second birth applied", on_fail=second.tail)
        stale_before = metric(system.base, "status", "stale")

        # The first connection's will arriving late, as after a half-open TCP link.
        will = m.Status.will(SID, old.epoch, old.birth)
        publish(system.broker, topic(SID, Kind.STATUS), m.encode(will), qos=1, retain=False)
        wait_until(lambda: metric(system.base, "status", "stale") > stale_before, 5,
                   "the stale will counted")
        assert online(system.base)
    finally:
        sub.close()


def test_agent_restarted_at_once_after_sigkill_stays_online(system, procs):
    """The broker may publish the dead session's will on takeover: it is stale."""
    first = procs.start("agent-1", "agent", "--config", str(system.station_cfg))
    wait_until(lambda: online(system.base), 10, "first birth", on_fail=first.tail)
    first.kill()
    second = procs.start("agent-2", "agent", "--config", str(system.station_cfg))
    wait_until(lambda: online(system.base), 10, "second birth", on_fail=second.tail)
    # Past the point where the first session's keepalive would have expired.
    time.sleep(1.5 * KEEPALIVE + 0.5)
    assert online(system.base), second.tail()
