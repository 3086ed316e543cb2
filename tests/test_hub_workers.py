"""Several hub workers sharing the broker's subscriptions over one PostgreSQL
(hub/fleet/sync.py, docs/scaling.md): ordering, gaps, liveness and the uptime
ledger come out as with one worker, though a station's messages reach different
workers. Real Mosquitto (shared subscriptions), real PostgreSQL, real Hubs; the
hubs' clock is a ManualClock moved between steps, so the one-worker run and the
three-worker run date everything alike and their ledgers can be compared row
for row. The three-worker SIGKILL test of real ``yizhan hub`` processes is
tests/test_hub_workers_kill.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import commands, events, ledger, status_log
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, close, connect
from tests.harness.procs import wait_until
from yizhan.clock import ManualClock

pytestmark = pytest.mark.postgres

T0 = 1_764_000_000_000
A, B = "yh-chumen-01", "yh-xinjiekou-02"
EPOCH = "9f2c01ab"


def start(broker: Any, url: str, clock: ManualClock, name: str, shared: bool) -> Hub:
    mqtt = {"host": broker.host, "port": broker.port, "keepalive": 5, "client_id": name}
    if shared:
        mqtt["shared_group"] = "hubs"
    hub = Hub(parse_hub_config({"mqtt": mqtt, "database": url}), clock=clock,
              registry=CollectorRegistry())
    hub.start()
    if not hub.ingest.connected.wait(10):
        hub.close()
        raise AssertionError(f"{name} did not connect to the broker")
    return hub


def taken(hubs: list[Hub], kind: str) -> float:
    """Messages of ``kind`` the hubs have taken in, whatever they made of them."""
    total = 0.0
    for h in hubs:
        for result in ("applied", "duplicate", "stale"):
            total += h.registry.get_sample_value(
                "yizhan_hub_messages_total", {"kind": kind, "result": result}) or 0.0
    return total


class Fleetside:
    """Two stations publishing QoS 1, and what the hubs send them (commands)."""

    def __init__(self, broker: Any, hubs: list[Hub]) -> None:
        self.hubs = hubs
        self.client = connect(broker)
        self.cmds = Subscriber(broker, [topic(A, Kind.CMD), topic(B, Kind.CMD)])
        self.sent: dict[str, int] = {}

    def send(self, sid: str, kind: Kind, doc: dict) -> None:
        doc = {"v": 1, "sid": sid, "epoch": EPOCH, **doc}
        self.client.publish(topic(sid, kind), json.dumps(doc).encode(),
                            qos=1).wait_for_publish(5)
        self.sent[kind] = self.sent.get(kind, 0) + 1

    def settle(self) -> None:
        """Every message sent is taken in and committed, and every worker has
        merged the others' rows."""
        for kind in (Kind.STATUS, Kind.STATE, Kind.EVENT):
            n = self.sent.get(kind, 0)
            wait_until(lambda k=kind, n=n: taken(self.hubs, k.value) >= n, 10,
                       f"{n} {kind} messages taken in")
        for h in self.hubs:
            assert h.writer.flush(5)
        for h in self.hubs:
            h.sync()

    def replays(self) -> list[dict]:
        return [json.loads(r.payload) for r in self.cmds.messages
                if json.loads(r.payload).get("cmd") == "replay"]

    def close(self) -> None:
        self.cmds.close()
        close(self.client)


def state(rev: int, last_seq: int, lockers_online: bool) -> dict:
    return {"ts": T0, "synced": True, "rev": rev, "last_seq": last_seq,
            "lockers": {"online": lockers_online, "slots": []}}


def event(seq: int) -> dict:
    return {"ts": T0, "synced": True, "seq": seq, "type": "visit", "data": {"count": 1}}


def run(broker: Any, url: str, workers: int) -> dict[str, Any]:
    """The same day of two stations against ``workers`` hubs; what they made of it."""
    clock = ManualClock(T0 / 1000)
    hubs = [start(broker, url, clock, f"hub-{i}", shared=workers > 1) for i in range(workers)]
    leader = [h for h in hubs if h.leader.is_leader]
    assert len(leader) == 1
    side = Fleetside(broker, hubs)
    try:
        def at(seconds: float) -> None:
            side.settle()
            clock.advance((T0 + int(seconds * 1000) - clock.ms()) / 1000)

        def every(job: str) -> None:
            for h in hubs:
                getattr(h, job)()

        for sid in (A, B):
            side.send(sid, Kind.STATUS, {"ts": T0, "synced": True, "rev": 1, "state": "online",
                                         "birth": 1, "last_seq": 0})
        at(1)
        for seq in range(1, 31):  # spread over the workers by the broker
            side.send(A, Kind.EVENT, event(seq))
            side.send(B, Kind.EVENT, event(seq))
        at(2)
        side.send(A, Kind.STATE, state(1, 30, lockers_online=False))
        side.send(B, Kind.STATE, state(1, 30, lockers_online=True))
        at(3)
        side.send(A, Kind.STATE, state(2, 30, lockers_online=True))
        at(15)
        every("heal_gaps")  # past replay_after: nothing is missing
        assert side.replays() == []
        at(20)
        for seq in (32, 33, 34):  # 31 never came
            side.send(A, Kind.EVENT, event(seq))
        at(21)
        at(32)
        every("heal_gaps")
        wait_until(lambda: len(side.replays()) >= 1, 5, "a replay asked")
        side.send(A, Kind.EVENT, event(31))  # the station answers it
        at(40)
        side.send(A, Kind.STATUS, {"state": "offline", "reason": "lost", "birth": 1})
        at(250)  # B silent for more than three heartbeats
        every("sweep")
        at(300)
        side.send(B, Kind.STATE, state(2, 30, lockers_online=True))  # heard again
        at(301)
        every("heal_gaps")
        every("sweep")
        side.settle()
        with hubs[0].store.engine.connect() as conn:
            out = {
                "ledger": conn.execute(
                    sa.select(ledger.c.sid, ledger.c.component, ledger.c.state, ledger.c.at_ms)
                    .order_by(ledger.c.sid, ledger.c.component, ledger.c.at_ms)).all(),
                "status_log": conn.execute(
                    sa.select(status_log.c.sid, status_log.c.at_ms, status_log.c.online,
                              status_log.c.reason)
                    .order_by(status_log.c.sid, status_log.c.at_ms, status_log.c.id)).all(),
                "events": conn.execute(sa.select(events.c.sid, sa.func.count())
                                       .group_by(events.c.sid).order_by(events.c.sid)).all(),
                "replays": conn.execute(sa.select(commands.c.sid, commands.c.args)
                                        .where(commands.c.cmd == "replay")).all(),
            }
        out["sent_replays"] = side.replays()
        out["applied"] = [h.registry.get_sample_value(
            "yizhan_hub_messages_total", {"kind": "event", "result": "applied"}) for h in hubs]
        out["views"] = [[(v.sid, v.epoch, v.birth, v.online, v.since_ms, v.offline_reason,
                          v.state_rev, v.events_through, v.last_seq)
                         for v in h.fleet.stations()] for h in hubs]
        return out
    finally:
        side.close()
        for h in hubs:
            h.close()


def test_three_workers_keep_order_gaps_liveness_and_ledger_as_one(pg_server, broker_factory):
    with pg_server.database() as one_url, pg_server.database() as three_url:
        one = run(broker_factory(), one_url, workers=1)
        three = run(broker_factory(), three_url, workers=3)
    # One worker, as a reference: what the day must give.
    assert one["events"] == [(A, 34), (B, 30)]
    assert [json.loads(args) for _, args in one["replays"]] == [{"from_seq": 31,
                                                                  "to_seq": 31}]
    assert (A, "station", "down", T0 + 32_000) in one["ledger"]  # last heard
    assert (B, "station", "down", T0 + 2_000) in one["ledger"]  # last heard
    assert (B, "station", "up", T0 + 300_000) in one["ledger"]
    assert (A, "lockers", "down", T0 + 2_000) in one["ledger"]
    # Three workers: every event once, the one real hole asked for once (no
    # worker asked for what another stored), and the same ledger and status log.
    assert three["events"] == one["events"]
    assert [json.loads(args) for _, args in three["replays"]] == [{"from_seq": 31,
                                                                    "to_seq": 31}]
    assert [c["args"] for c in three["sent_replays"]] == [{"from_seq": 31, "to_seq": 31}]
    assert three["ledger"] == one["ledger"]
    assert three["status_log"] == one["status_log"]
    assert all(n and n > 0 for n in three["applied"])  # the broker shared the load
    # Every worker's view of the fleet is the one worker's.
    for view in three["views"]:
        assert view == one["views"][0]


def test_a_command_is_answered_on_the_worker_that_sent_it(pg_url, broker_factory):
    """The station's answer reaches whichever worker the broker picks; the sender
    still reports it, and does not expire it."""
    broker = broker_factory()
    clock = ManualClock(T0 / 1000)
    hubs = [start(broker, pg_url, clock, f"hub-{i}", shared=True) for i in range(3)]
    side = Fleetside(broker, hubs)
    try:
        side.send(A, Kind.STATUS, {"ts": T0, "synced": True, "rev": 1, "state": "online",
                                   "birth": 1, "last_seq": 0})
        side.settle()
        sender = hubs[1]
        ids = [sender.commands.send(A, "unlock", {"slot": n}, by="test") for n in range(1, 7)]
        wait_until(lambda: len([r for r in side.cmds.messages
                                if json.loads(r.payload).get("cmd") == "unlock"]) == 6, 5,
                   "the six commands at the station")
        for n, cid in enumerate(ids, start=1):
            side.send(A, Kind.CMD_RESULT, {"ts": T0, "synced": True, "rev": 1 + n, "id": cid,
                                           "ok": True, "error": None,
                                           "data": {"slot": n, "locked": False}})
        wait_until(lambda: taken(hubs, "result") >= 6, 10, "the six answers taken in")
        for h in hubs:
            assert h.writer.flush(5)
        # Some answers went to the other workers (the broker shares them out).
        assert [sender.commands.get(A, cid)["state"] for cid in ids] == ["ok"] * 6
        clock.advance(60)
        for h in hubs:
            h.expire_commands()
            assert h.writer.flush(5)
        assert [sender.commands.get(A, cid)["state"] for cid in ids] == ["ok"] * 6
        with sender.store.engine.connect() as conn:
            states = conn.execute(sa.select(commands.c.state)
                                  .where(commands.c.id.in_(ids))).scalars().all()
        assert states == ["ok"] * 6
    finally:
        side.close()
        for h in hubs:
            h.close()
