"""The hub's status (contract §9) with three hub workers: the leader's alone.

Three in-process Hubs share the broker's subscriptions (``mqtt.shared_group``)
over one real PostgreSQL, on a fresh real Mosquitto, with their schedulers
running (the ``lead`` job). A subscriber stands for the stations: it hears
``yizhan/v1/hub/status`` as they do, and each online with a new ``ts`` is a
republish wave of the whole fleet (firmware/link.py ``_hub_status``).

What it proves: three workers starting make one online, not three; a follower
stopping cleanly changes nothing the stations hear; a follower whose
connection dies without a DISCONNECT (its will fires) shows offline for a
moment and the leader answers with one online; the leader going (its clean
offline, or a ``yizhan hub`` leader SIGKILLed: its will), the next leader says
online, once. One hub alone keeps its old behaviour
(tests/test_hub_ingest.py: online at connect, offline on a clean stop).

To know that nothing more is on its way, a worker publishes a marker on its
own connection and the test waits for it: the broker hands messages on in the
order it took them, so what that worker published before (or any other
client's publish the broker had acknowledged) has been heard by then.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from protocol.topics import HUB_STATUS_TOPIC
from tests.harness.mqtt import Subscriber
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

pytestmark = pytest.mark.postgres

MARK = "yizhan-test/marker"
_marks = itertools.count(1)


def start(broker: Any, url: str, name: str) -> Hub:
    hub = Hub(parse_hub_config({
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": name,
                 "shared_group": "hubs"},
        "database": url,
    }), registry=CollectorRegistry())
    hub.start()
    if not hub.ingest.connected.wait(10):
        hub.close()
        raise AssertionError(f"{name} did not connect to the broker")
    return hub


@pytest.fixture
def hubs(broker_factory, pg_url: str) -> Iterator[tuple[Any, str, list[Hub]]]:
    broker = broker_factory()  # its own: no retained status from another test
    made: list[Hub] = []
    yield broker, pg_url, made
    for h in made:
        h.close()


def statuses(sub: Subscriber) -> list[tuple[str, int | None]]:
    """(state, ts) of every hub status heard, in order."""
    return [(d["state"], d.get("ts")) for d in
            (json.loads(x.payload) for x in sub.messages if x.topic == HUB_STATUS_TOPIC)]


def waves(sub: Subscriber) -> list[int]:
    """The distinct onlines heard, in order: each one a republish of the fleet."""
    return list(dict.fromkeys(ts for state, ts in statuses(sub) if state == "online"))


def heard_all_of(sub: Subscriber, *workers: Hub) -> None:
    """Everything ``workers`` published so far has reached ``sub``."""
    for h in workers:
        token = f"{h.config.client_id}-{next(_marks)}".encode()
        h.ingest.publish(MARK, token).wait_for_publish(5)
        sub.wait_for(lambda x, t=token: x.topic == MARK and x.payload == t, timeout=5)


def retained(broker: Any) -> tuple[str, int | None]:
    """The hub status a station connecting now is handed."""
    with Subscriber(broker, HUB_STATUS_TOPIC) as fresh:
        doc = json.loads(fresh.wait_for(HUB_STATUS_TOPIC, timeout=5).payload)
    return doc["state"], doc.get("ts")


def test_the_stations_hear_one_online_per_leadership(hubs) -> None:
    broker, url, made = hubs
    with Subscriber(broker, [HUB_STATUS_TOPIC, MARK]) as sub:
        made.extend(start(broker, url, f"hub-{i}") for i in range(3))
        for h in made:
            h.lead()  # a poll as the job makes: nobody's leadership changes
        heard_all_of(sub, *made)
        (leader,) = [h for h in made if h.leader.is_leader]
        first, second = [h for h in made if h is not leader]
        # Three workers started: one online (the leader's), no offline.
        assert statuses(sub) == [("online", waves(sub)[0])]
        assert retained(broker) == statuses(sub)[-1]

        # A follower stops cleanly: the stations hear nothing.
        first.close()
        heard_all_of(sub, leader)
        assert len(statuses(sub)) == 1
        assert retained(broker) == statuses(sub)[-1]

        # A follower's connection dies without a DISCONNECT: its will says
        # offline, and the leader answers with one online.
        before = len(statuses(sub))
        second.ingest._client._sock._sock.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: [s for s, _ in statuses(sub)[before:]] == ["offline", "online"],
                   10, "the follower's will, then the leader's online")
        wait_until(lambda: not second.ingest.connected.is_set(), 10, "the follower cut off")
        wait_until(second.ingest.connected.is_set, 10, "the follower back")
        heard_all_of(sub, leader, second)  # its reconnect says nothing either
        assert [s for s, _ in statuses(sub)[before:]] == ["offline", "online"]
        assert len(waves(sub)) == 2
        assert retained(broker) == statuses(sub)[-1]

        # The leader goes (a clean stop: its offline); the next leader says online.
        before = len(statuses(sub))
        leader.close()
        wait_until(lambda: second.leader.is_leader and ("online", waves(sub)[-1])
                   in statuses(sub)[before:], 10, "the new leader's online")
        heard_all_of(sub, second)
        assert [s for s, _ in statuses(sub)[before:]] == ["offline", "online"]
        assert len(waves(sub)) == 3
        assert retained(broker) == statuses(sub)[-1]


def test_a_sigkilled_leader_process_is_followed_by_one_online_of_the_next_leader(
        hubs, tmp_path) -> None:
    broker, url, made = hubs
    procs = Procs(tmp_path)
    try:
        with Subscriber(broker, [HUB_STATUS_TOPIC, MARK]) as sub:
            port = free_port()
            cfg = write_yaml(tmp_path / "hub-0.yaml", {
                "mqtt": {"host": broker.host, "port": broker.port, "client_id": "hub-0",
                         "shared_group": "hubs"},
                "database": url, "http": {"host": "127.0.0.1", "port": port}})
            first = procs.start("hub-0", "hub", "--config", str(cfg))
            # Up first, so it leads (and migrates the database).
            wait_until(lambda: http_json(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30,
                       "hub-0 healthy", on_fail=first.tail)
            wait_until(lambda: statuses(sub) == [("online", waves(sub)[0])], 10,
                       "hub-0's online")
            made.extend(start(broker, url, f"hub-{i}") for i in (1, 2))
            assert not any(h.leader.is_leader for h in made)
            heard_all_of(sub, *made)
            assert len(statuses(sub)) == 1

            # SIGKILLed: no DISCONNECT (the broker publishes its will) and its
            # database session ends (another worker takes the lock at its poll).
            first.kill()
            wait_until(lambda: any(h.leader.is_leader for h in made)
                       and [s for s, _ in statuses(sub)] == ["online", "offline", "online"],
                       15, "the will, then the next leader's online", on_fail=first.tail)
            heard_all_of(sub, *made)
            # Its will reached the broker before the next leader's online: that
            # online answers it, and no second one follows.
            assert [s for s, _ in statuses(sub)] == ["online", "offline", "online"]
            assert len(waves(sub)) == 2
            assert retained(broker) == statuses(sub)[-1]
    finally:
        procs.close()
