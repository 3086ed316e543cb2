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
import time
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import commands, events, ledger, status_log
from protocol import examples
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


def _shared_hub(pg_url: str) -> Hub:
    """A shared worker's Hub, not started: its store, fleet and Sync only."""
    return Hub(parse_hub_config({"mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "w",
                                          "shared_group": "hubs"},
                                 "database": pg_url}),
               clock=ManualClock(T0 / 1000), registry=CollectorRegistry())


def test_a_worker_behind_never_undoes_a_newer_row(pg_url):
    """The stations upsert of shared workers (hub/fleet/sync.py): a stale snapshot
    keeps the newer liveness, the latest last_seen and the highest seqs; a new
    epoch heard later replaces the old one, and an old epoch's row does not
    come back."""
    from hub.fleet.sync import station_upsert
    from hub.storage.schema import stations

    hub = _shared_hub(pg_url)
    try:
        upsert = station_upsert()
        cols = ("epoch", "birth", "online", "since_ms", "last_seen_ms", "offline_reason",
                "last_seq", "events_through")

        def write(**row: Any) -> tuple:
            values = {"sid": A, "name": A, "grp": None, "epoch": EPOCH, "birth": None,
                      "online": False, "since_ms": None, "last_seen_ms": None,
                      "offline_reason": None, "last_seq": None, "events_through": 0} | row
            with hub.store.engine.begin() as conn:
                conn.execute(upsert, values)
                return tuple(conn.execute(sa.select(*(stations.c[c] for c in cols))
                                          .where(stations.c.sid == A)).one())

        assert write(birth=2, online=True, since_ms=100, last_seen_ms=150, last_seq=10,
                     events_through=5) == (EPOCH, 2, True, 100, 150, None, 10, 5)
        # A worker that never heard birth 2, saving after a State it took at 200.
        assert write(birth=1, online=True, since_ms=50, last_seen_ms=200, last_seq=8,
                     events_through=3) == (EPOCH, 2, True, 100, 200, None, 10, 5)
        # Birth 2's will, taken by a third worker.
        assert write(birth=2, online=False, since_ms=200, last_seen_ms=200,
                     offline_reason="lost", last_seq=10) == (
            EPOCH, 2, False, 200, 200, "lost", 10, 5)
        # A worker still holding birth 2 online saves its older snapshot.
        assert write(birth=2, online=True, since_ms=100, last_seen_ms=190, last_seq=10,
                     events_through=5) == (EPOCH, 2, False, 200, 200, "lost", 10, 5)
        # The station's storage was wiped: a new epoch, heard later.
        assert write(epoch="0ddba11", birth=1, online=True, since_ms=300, last_seen_ms=300,
                     last_seq=1) == ("0ddba11", 1, True, 300, 300, None, 1, 0)
        # A worker behind saves the old epoch's snapshot: it does not come back.
        assert write(birth=2, online=True, since_ms=100, last_seen_ms=250, last_seq=12,
                     events_through=12) == ("0ddba11", 1, True, 300, 300, None, 1, 0)
    finally:
        hub.close()


def test_a_row_committed_late_is_still_merged(pg_url):
    """A pull reads from the start of the oldest transaction still writing: a row
    stamped well before its commit is not skipped by the next pull."""
    hub = _shared_hub(pg_url)
    try:
        row = {"sid": B, "epoch": EPOCH, "seq": 1, "type": "visit", "ts": T0, "synced": True,
               "received_ms": T0, "at_ms": T0, "data": '{"count": 1}'}
        slow = hub.store.engine.connect()
        tx = slow.begin()
        slow.execute(events.insert().values(**row))  # stamped now, committed later
        time.sleep(2.5)  # longer than the pull's margin
        hub.peers.pull(T0)
        assert hub.peers.merged[1] == 0  # not committed yet: not seen
        tx.commit()
        slow.close()
        hub.peers.pull(T0)
        assert hub.peers.merged[1] == 1
        assert hub.fleet.get(B) is not None
    finally:
        hub.close()


def test_a_new_leader_writes_what_the_dead_one_decided_but_never_wrote(pg_url,
                                                                        broker_factory):
    """The leader decides a station up and its lockers down and dies before its
    ledger points are written (here: they were never submitted); the worker that
    takes over writes the station's liveness at once, dated when it changed, and
    the lockers at the station's next State."""
    broker = broker_factory()
    clock = ManualClock(T0 / 1000)
    hubs = [start(broker, pg_url, clock, f"hub-{i}", shared=True) for i in range(2)]
    old, new = hubs
    assert old.leader.is_leader and not new.leader.is_leader
    side = Fleetside(broker, hubs)
    try:
        old.ledger.leads = lambda: False  # what it decides from now on is never written
        side.send(A, Kind.STATUS, {"ts": T0, "synced": True, "rev": 1, "state": "online",
                                   "birth": 1, "last_seq": 0})
        side.send(A, Kind.STATE, state(1, 0, lockers_online=False))
        side.settle()
        for h in hubs:  # the merges' marks too, noted while neither writes
            assert h.writer.flush(5)

        def points() -> list[tuple]:
            with new.store.engine.connect() as conn:
                return conn.execute(sa.select(ledger.c.component, ledger.c.state,
                                              ledger.c.at_ms)
                                    .where(ledger.c.sid == A)
                                    .order_by(ledger.c.component, ledger.c.at_ms)).all()

        assert points() == []
        old.leader.close()  # the lock goes, as with a SIGKILL
        wait_until(lambda: new.leader.poll(), 10, "the survivor leads")
        wait_until(lambda: ("station", "up", T0) in points(), 10, "the station's point")
        clock.advance(60)
        old.close()  # the survivor alone takes the next State
        side.send(A, Kind.STATE, state(2, 0, lockers_online=False))
        wait_until(lambda: len(points()) == 2, 10, "the lockers' point")
        assert points() == [("lockers", "down", T0 + 60_000), ("station", "up", T0)]
    finally:
        side.close()
        for h in hubs:
            h.close()


def test_every_worker_holds_the_open_loans_whoever_took_the_events(pg_url, broker_factory):
    """A borrow and its return taken by different workers: the loan is closed in
    the table, and every worker's memory of the open loans (what the leader's
    overdue alerts read) holds the one still out, not the one returned."""
    broker = broker_factory()
    clock = ManualClock(T0 / 1000)
    hubs = [start(broker, pg_url, clock, f"hub-{i}", shared=True) for i in range(3)]
    side = Fleetside(broker, hubs)
    rider = examples.RIDER

    def bank(seq: int, kind: str, bank_id: str) -> dict:
        return {"ts": clock.ms(), "synced": True, "seq": seq, "type": kind,
                "data": {"slot": 3, "bank": bank_id, "charge": 96, "rider": rider}}

    try:
        for sid in (A, B):
            side.send(sid, Kind.STATUS, {"ts": T0, "synced": True, "rev": 1,
                                         "state": "online", "birth": 1, "last_seq": 0})
        side.settle()
        side.send(A, Kind.EVENT, bank(1, "bank_borrowed", "PB0001AA"))
        side.send(B, Kind.EVENT, bank(1, "bank_borrowed", "PB0002BB"))
        side.settle()
        clock.advance(60)
        side.send(A, Kind.EVENT, bank(2, "bank_returned", "PB0001AA"))
        side.settle()
        a_week = T0 + 7 * 86_400_000
        for h in hubs:
            assert [loan.bank for loan in h.loans.overdue(a_week)] == ["PB0002BB"]
        with hubs[0].store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT bank, returned_ms FROM loans ORDER BY bank"))
            assert [tuple(r) for r in rows] == [("PB0001AA", T0 + 60_000), ("PB0002BB", None)]
    finally:
        side.close()
        for h in hubs:
            h.close()
