"""Alerts with three hub workers: each delivered once, across a change of leader.

Three in-process Hubs share the broker's subscriptions (``mqtt.shared_group``)
over one real PostgreSQL, on a real Mosquitto, with their schedulers running
(the ``lead`` and ``sync`` jobs, the router, the outbox's senders) and a signed
webhook receiver on loopback (tests/test_alert_routing.Receiver). Stations
publish a birth and a ``tamper`` event each; the broker gives each message to
one worker; the leader's engine hears of the others' through the database
(hub/fleet/sync.py) and fires; any worker's sender may deliver.

What it proves: every tamper alert reaches the receiver exactly once; the
leader letting go, another takes over, reads the open alerts and sends none of
them again; a tamper after the takeover is delivered once too. (A leader
SIGKILLed: tests/test_hub_leader.py for the takeover, tests/test_notify_workers.py
for a send cut in the middle.)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from protocol.topics import Kind, topic
from tests.harness.mqtt import close, connect
from tests.harness.procs import wait_until
from tests.test_alert_routing import SECRET, Receiver

pytestmark = pytest.mark.postgres

EPOCH = "9f2c01ab"
SIDS = [f"yh-lead-{n:02d}" for n in range(1, 7)]
LATE = "yh-lead-07"  # tampered with after the takeover


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start(broker: Any, url: str, receiver: Receiver, name: str) -> Hub:
    hub = Hub(parse_hub_config({
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                 "client_id": name, "shared_group": "hubs"},
        "database": url,
        "stations": [{"sid": sid, "name": sid} for sid in [*SIDS, LATE]],
        "notifiers": [{"name": "ops", "type": "webhook", "url": receiver.url("ops"),
                       "secret": SECRET, "timeout": "2s"}],
        "routes": [{"match": {}, "notify": ["ops"], "test_every": "off"}],
        # Every worker signs ack links with the same key (required on PostgreSQL).
        "ack_secret": "ack-secret-of-the-three-workers",
    }), registry=CollectorRegistry())
    hub.start()
    if not hub.ingest.connected.wait(10):
        hub.close()
        raise AssertionError(f"{name} did not connect to the broker")
    return hub


def tamper_firings(receiver: Receiver) -> Counter[str]:
    """Firing tamper notices taken (2xx, signed), by station."""
    return Counter(a["body"]["alert"]["sid"] for a in receiver.delivered()
                   if a["body"]["alert"]["rule"] == "tamper"
                   and a["body"].get("kind", "firing") == "firing")


def tampered(client: Any, sid: str) -> None:
    now = int(time.time() * 1000)
    for kind, doc in ((Kind.STATUS, {"ts": now, "synced": True, "rev": 1, "state": "online",
                                     "birth": 1, "last_seq": 0}),
                      (Kind.EVENT, {"ts": now, "synced": True, "seq": 1, "type": "tamper",
                                    "data": {"door": "locker_panel"}})):
        body = {"v": 1, "sid": sid, "epoch": EPOCH, **doc}
        client.publish(topic(sid, kind), json.dumps(body).encode(), qos=1).wait_for_publish(5)


def test_three_workers_deliver_each_alert_once_across_a_change_of_leader(
        broker_factory, pg_url: str, receiver: Receiver) -> None:
    # A broker of its own: the session's holds retained States other test files left.
    broker = broker_factory()
    hubs = [start(broker, pg_url, receiver, f"hub-{i}") for i in range(3)]
    station = connect(broker)
    try:
        (leader,) = [h for h in hubs if h.leader.is_leader]
        for sid in SIDS:
            tampered(station, sid)
        wait_until(lambda: len(tamper_firings(receiver)) == len(SIDS), 30,
                   "a tamper notice for every station")
        # Which workers took the stations' messages: not only the leader.
        takers = [h.registry.get_sample_value("yizhan_hub_messages_total",
                                              {"kind": "event", "result": "applied"}) or 0
                  for h in hubs]
        assert sum(takers) == len(SIDS) and sum(1 for n in takers if n) >= 2
        # The leader lets go (as it does when it stops; its MQTT session stays,
        # so the broker keeps giving it its share); another takes over at its
        # next poll.
        leader.leader.close()
        assert leader.engine.paused
        rest = [h for h in hubs if h is not leader]
        wait_until(lambda: any(h.leader.is_leader and not h.engine.paused for h in rest), 10,
                   "a new leader, its engine resumed")
        (new,) = [h for h in rest if h.leader.is_leader]
        new.evaluate_alerts()
        new.route_alerts()  # what a tick would tell: nothing new
        tampered(station, LATE)
        wait_until(lambda: LATE in tamper_firings(receiver), 30, "the late tamper notice")
        for h in hubs:
            h.route_alerts()
            assert h.writer.flush(5)
        time.sleep(1.0)  # a sender's poll: anything sent twice would be heard by now
        firings = tamper_firings(receiver)
        assert firings == Counter({sid: 1 for sid in [*SIDS, LATE]}), firings
        ids = [a["delivery"] for a in receiver.delivered()]
        assert len(ids) == len(set(ids))  # no delivery id heard twice
    finally:
        close(station)
        for h in hubs:
            h.close()
