"""The station link against a real Mosquitto: births and wills per connection,
jittered backoff, credentials, the hub-online republish and the health flag."""

from __future__ import annotations

import json
import socket
import time

import pytest

from firmware.link import PROBE_EVERY
from protocol import messages as m
from protocol.topics import HUB_STATUS_TOPIC, Kind, topic
from tests.conftest import SECURE_USERS
from tests.harness.delivery import SID
from tests.harness.mosquitto import free_port
from tests.harness.mqtt import Subscriber, publish
from tests.harness.procs import advance_until, wait_until

STATUS = topic(SID, Kind.STATUS)


def statuses(sub: Subscriber) -> list[dict]:
    return [json.loads(x.payload) for x in sub.messages if x.topic == STATUS]


def test_backoff_doubles_with_jitter_up_to_the_cap(broker, tmp_path, stations):
    draws = iter([0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0])
    st = stations(broker, tmp_path, reconnect_min=0.5, reconnect_max=4.0,
                  rand=lambda: next(draws))
    link = st.link
    waits = [link.backoff_delay(n) for n in (1, 1, 2, 2, 3, 4, 9)]
    # Each wait is drawn from the upper half of min·2^(n-1), capped at max.
    assert waits == [0.25, 0.5, 0.5, 1.0, 1.5, 2.0, 4.0]


def test_every_connect_has_a_fresh_birth_and_its_own_will(broker_factory, tmp_path, stations):
    broker = broker_factory()
    with Subscriber(broker, STATUS) as sub:
        st = stations(broker, tmp_path).start()
        wait_until(lambda: statuses(sub), 5, "first birth")
        first = statuses(sub)[-1]
        broker.stop()
        wait_until(lambda: not st.link.connected.is_set(), 5, "link down")
    broker.start()
    with Subscriber(broker, STATUS) as sub:
        wait_until(lambda: any(s["state"] == "online" for s in statuses(sub)), 5, "second birth")
        second = next(s for s in statuses(sub) if s["state"] == "online")
        assert second["birth"] == second["rev"] > first["birth"] == first["rev"]
        assert st.births == 2
        # Cut the connection without a goodbye (as a dropped network would): the
        # broker publishes the will, which names the birth of *this* connection.
        st.link._client.socket().shutdown(socket.SHUT_RDWR)
        will_msg = sub.wait_for(lambda x: json.loads(x.payload)["state"] == "offline")
        will = m.decode(Kind.STATUS, will_msg.payload, topic_sid=SID)
        assert will.is_will and will.birth == second["birth"]


def test_username_and_password(secure_broker, tmp_path, stations):
    good = stations(secure_broker, tmp_path / "good", username=SID,
                    password=SECURE_USERS[SID]).start()
    assert good.link.connected.is_set()
    bad = stations(secure_broker, tmp_path / "bad", username=SID, password="wrong")
    bad.link.start()
    time.sleep(0.5)
    assert not bad.link.connected.is_set()
    assert bad.link.healthy()  # refused, but still trying: no reason for a restart


def test_the_hub_turning_online_republishes_the_same_birth_after_a_random_delay(
        broker_factory, tmp_path, stations, clock):
    broker = broker_factory()
    publish(broker, HUB_STATUS_TOPIC, {"v": 1, "state": "online", "ts": 1}, retain=True)
    with Subscriber(broker, STATUS) as sub:
        st = stations(broker, tmp_path, clock=clock, rand=lambda: 0.25)
        st.start()
        # The retained hub status answering the first subscribe counts as turning online.
        wait_until(lambda: st.link.republish_due is not None, 5, "republish scheduled")
        assert st.link.republish_due == pytest.approx(clock.monotonic() + 2.5)  # 0.25 × 10 s
        birth = sub.wait_for(STATUS)
        clock.advance(2.4)
        st.link.poll()
        assert len(statuses(sub)) == 1 and st.births == 1
        clock.advance(0.2)
        st.link.poll()
        again = sub.wait_for(lambda x: x.topic == STATUS and x is not birth)
        # The same birth, byte for byte: the will set at connect names it.
        assert again.payload == birth.payload
        assert st.births == 2  # and a fresh State was asked for
        assert st.link.republish_due is None

        # The hub goes away and comes back (a new ts): once more.
        publish(broker, HUB_STATUS_TOPIC, {"v": 1, "state": "offline"}, retain=True)
        publish(broker, HUB_STATUS_TOPIC, {"v": 1, "state": "online", "ts": 2}, retain=True)
        wait_until(lambda: st.link.republish_due is not None, 5, "second republish scheduled")
        clock.advance(2.5)
        st.link.poll()
        wait_until(lambda: len(statuses(sub)) == 3, 5, "second republish")


def test_the_same_hub_online_after_our_own_reconnect_is_not_a_new_one(
        broker_factory, tmp_path, stations, clock):
    broker = broker_factory(persistence=True)
    publish(broker, HUB_STATUS_TOPIC, {"v": 1, "state": "online", "ts": 7}, retain=True)
    st = stations(broker, tmp_path, clock=clock, rand=lambda: 0.0).start()
    wait_until(lambda: st.link.republish_due is not None, 5, "first republish scheduled")
    st.link.poll()
    wait_until(lambda: st.link.republished == 1, 5, "first republish")
    broker.stop()
    wait_until(lambda: not st.link.connected.is_set(), 5, "link down")
    broker.start()  # the retained hub status (ts 7) comes back with persistence
    # The backoff waits on the test's clock: move it.
    advance_until(clock, lambda: st.births == 3, "reconnected and born again", step=0.25,
                  limit=st.link.reconnect_max)
    time.sleep(0.2)  # the retained hub status has arrived by now
    st.link.poll()
    assert st.link.republish_due is None and st.link.republished == 1


def test_health_is_judged_by_sessions_not_attempts(broker_factory, tmp_path, stations, clock):
    """At the shipped settings: a broker that is down is an outage (healthy, keep
    trying); a port that accepts TCP but yields no session is a stuck link: a
    fresh client object first, then unhealthy so that systemd restarts us."""
    broker = broker_factory()
    st = stations(broker, tmp_path, clock=clock, reconnect_min=0.5, reconnect_max=60.0,
                  keepalive=30)
    link = st.link
    assert not link.healthy()  # not started
    st.start()
    assert link.healthy()
    broker.stop()
    wait_until(lambda: not link.connected.is_set(), 5, "link down")
    # Ten minutes of a refusing port: an outage, never a reason to restart.
    for _ in range(120):
        clock.advance(5.0)
        link.poll()
        time.sleep(0.005)
    assert link.healthy() and link.restarts == 0

    # Something answers TCP on the broker's port but no MQTT session comes of it.
    with socket.create_server((broker.host, broker.port)) as silent:
        silent.listen(8)
        waited = advance_until(clock, lambda: (link.poll(), link.restarts)[1],
                               "a fresh client for the stuck link", step=5.0,
                               limit=link.stuck_after + 2 * PROBE_EVERY)
        # Counted from when the port was first found open, not from the outage's start.
        assert waited >= link.stuck_after
        assert link.healthy() and link.generation == 1  # the remedy gets its chance
        clock.advance(link.stuck_after + 1)
        link.poll()
        assert not link.healthy()  # still nothing: the process must go
    # The real broker returns on the port: the fresh client finds it.
    broker.start()
    advance_until(clock, link.connected.is_set, "reconnected", step=1.0, limit=120)
    assert link.healthy()
    started = time.monotonic()
    link.stop()  # interrupts a backoff wait at once
    assert time.monotonic() - started < 2


def test_a_station_that_boots_before_the_broker_connects_when_it_comes(
        broker_factory, tmp_path, stations):
    broker = broker_factory(start=False, port=free_port())
    st = stations(broker, tmp_path)
    st.link.start()
    time.sleep(0.3)  # a few refused attempts
    assert not st.link.connected.is_set() and st.link.healthy()
    broker.start()
    assert st.link.connected.wait(5)
    assert st.births == 1
