"""The hub's ingest on a real Mosquitto: what a station publishes, as the hub takes it in.

An in-process ``Hub`` (ingest, writer, fleet, scheduler; the web through Flask's
test client) on a broker of its own; the test publishes as a station would —
good payloads out of order and twice, and bad payloads of every kind — and reads
the counters of contract §12, the database and ``/healthz``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import events, station_state
from protocol import examples
from protocol import messages as m
from protocol.topics import HUB_STATUS_TOPIC, Kind, topic
from tests.harness.mqtt import Subscriber, close, connect
from tests.harness.procs import wait_until
from yizhan.clock import SYSTEM_CLOCK, Clock, ManualClock

SID = examples.SID
EPOCH = examples.EPOCH
KINDS = {"status": Kind.STATUS, "state": Kind.STATE, "event": Kind.EVENT,
         "result": Kind.CMD_RESULT}
EXAMPLE = {"status": "status", "state": "state", "event": "event", "result": "command_result"}


def start_hub(broker: Any, database_url: str, clock: Clock = SYSTEM_CLOCK,
              **config: Any) -> Hub:
    data = {"mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
            "database": database_url}
    for key, value in config.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    hub = Hub(parse_hub_config(data), clock=clock, registry=CollectorRegistry())
    hub.start()
    if not hub.ingest.connected.wait(10):
        hub.close()
        raise AssertionError("the hub did not connect to the broker")
    return hub


@pytest.fixture
def make_hub(broker_factory, tmp_path) -> Iterator[Callable[..., Hub]]:
    made: list[Hub] = []

    def make(broker=None, database_url=None, clock: Clock = SYSTEM_CLOCK,
             **config: Any) -> Hub:
        broker = broker or broker_factory()
        hub = start_hub(broker, database_url or f"sqlite:///{tmp_path / 'hub.db'}", clock,
                        **config)
        hub.broker = broker
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


class Station:
    """A test client publishing as station ``SID`` (QoS 1, waiting for each PUBACK)."""

    def __init__(self, broker: Any) -> None:
        self.client = connect(broker)

    def send(self, kind: str | Kind, payload: bytes | dict, *, sid: str = SID,
             retain: bool = False, raw_topic: str | None = None) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        t = raw_topic or topic(sid, KINDS.get(kind, kind))
        self.client.publish(t, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        close(self.client)


@pytest.fixture
def station(make_hub) -> Iterator[tuple[Hub, Station]]:
    hub = make_hub()
    s = Station(hub.broker)
    yield hub, s
    s.close()


def count(hub: Hub, kind: str, result: str) -> float:
    value = hub.registry.get_sample_value("yizhan_hub_messages_total",
                                          {"kind": kind, "result": result})
    return value or 0.0


def wait_count(hub: Hub, kind: str, result: str, n: float, timeout: float = 5) -> None:
    wait_until(lambda: count(hub, kind, result) >= n, timeout,
               f"{n} {kind} messages counted {result}")


def healthy(hub: Hub) -> bool:
    answer = hub.app.test_client().get("/healthz")
    return answer.status_code == 200 and answer.get_json() == {"ok": True}


def example(kind: str, **changes: Any) -> dict:
    d = examples.example(EXAMPLE[kind])
    d.update(changes)
    return d


# -- invalid payloads: counted under their kind, logged once, nothing else happens ---------


def _missing(kind: str) -> dict:
    d = example(kind)
    del d["epoch"]
    return d


def _wrong_type(kind: str) -> dict:
    return example(kind, ts="yesterday")


BAD_PAYLOADS: dict[str, Callable[[str], bytes | dict]] = {
    "not JSON": lambda kind: b'{"v":1,"sid":',
    "not UTF-8": lambda kind: b'{"v":1,"sid":"\xff\xfe"}',
    "an array": lambda kind: b"[1, 2, 3]",
    "oversize": lambda kind: json.dumps(
        {**example(kind), "pad": "x" * (64 * 1024)}).encode(),
    "sid mismatch": lambda kind: example(kind, sid="yh-someone-else"),
    "wrong types": _wrong_type,
    "v=2": lambda kind: example(kind, v=2),
    "missing fields": _missing,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_invalid_payload_is_counted_under_its_kind(station, kind, caplog):
    hub, s = station
    caplog.set_level(logging.WARNING, logger="hub.mqtt.ingest")
    for make_payload in BAD_PAYLOADS.values():
        s.send(kind, make_payload(kind))
    # A station id the topic grammar refuses is still this kind's invalid message.
    s.send(kind, example(kind), raw_topic=f"yizhan/v1/Not_A_Sid/{KINDS[kind].value}")
    wait_count(hub, kind, "invalid", len(BAD_PAYLOADS) + 1)
    assert count(hub, kind, "applied") == 0
    assert healthy(hub)
    # The same mistake again is counted, not logged again.
    logged = len(caplog.records)
    for _ in range(3):
        s.send(kind, BAD_PAYLOADS["v=2"](kind))
    wait_count(hub, kind, "invalid", len(BAD_PAYLOADS) + 4)
    assert len(caplog.records) == logged
    assert hub.fleet.get(SID) is None or hub.fleet.get(SID).state is None
    # And the hub still takes a good message after all that.
    s.send(kind, example(kind))
    wait_until(lambda: sum(count(hub, kind, r) for r in ("applied", "stale", "duplicate")),
               5, "the good message taken in")


def test_the_invalid_reason_is_logged_with_the_station(station, caplog):
    hub, s = station
    caplog.set_level(logging.WARNING, logger="hub.mqtt.ingest")
    s.send("state", example("state", rev="5013"))
    wait_count(hub, "state", "invalid", 1)
    (record,) = [r for r in caplog.records if r.name == "hub.mqtt.ingest"]
    assert SID in record.getMessage() and "rev: must be an int" in record.getMessage()


# -- ordering on the wire ---------------------------------------------------------------------


def test_out_of_order_and_repeated_messages(database_url, make_hub):
    hub = make_hub(database_url=database_url)
    s = Station(hub.broker)
    try:
        now = hub.clock.ms()
        s.send("status", example("status", ts=now))
        for rev in (5013, 5015, 5014, 5015):
            s.send("state", example("state", ts=now, rev=rev, last_seq=3))
        for seq in (1, 3, 3, 2, 1):
            s.send("event", example("event", ts=now, seq=seq))
        wait_count(hub, "event", "duplicate", 2)
        assert count(hub, "status", "applied") == 1
        assert (count(hub, "state", "applied"), count(hub, "state", "stale"),
                count(hub, "state", "duplicate")) == (2, 1, 1)
        assert count(hub, "event", "applied") == 3
        assert hub.writer.flush(5) and hub.writer.flush(5)
        with hub.store.engine.connect() as conn:
            seqs = sorted(r.seq for r in conn.execute(sa.select(events.c.seq)))
            rev = conn.execute(sa.select(station_state.c.rev)).scalar_one()
        assert seqs == [1, 2, 3] and rev == 5015
        view = hub.fleet.get(SID)
        assert view.online and view.events_through == 3
    finally:
        s.close()


def test_ingest_lag_is_observed_for_live_synced_messages(station):
    hub, s = station
    now = hub.clock.ms()
    s.send("state", example("state", ts=now - 1500, rev=1))  # 1.5 s behind
    s.send("state", example("state", ts=now - 999_999, rev=2, synced=False))  # unsynced
    wait_count(hub, "state", "applied", 2)
    lag_count = hub.registry.get_sample_value("yizhan_hub_ingest_lag_seconds_count")
    lag_sum = hub.registry.get_sample_value("yizhan_hub_ingest_lag_seconds_sum")
    assert lag_count == 1 and 1.5 <= lag_sum < 5
    assert hub.registry.get_sample_value("yizhan_hub_ingest_lag_seconds_bucket",
                                         {"le": "0.001"}) == 0


# -- the hub's own status and session (contract §2, §9) ------------------------------------------


def test_a_message_the_broker_sends_again_is_no_sign_of_life(make_hub):
    # The broker re-sends (DUP) a QoS 1 message whose PUBACK it never got when the
    # hub's session resumes: after a broken connection, or from a broker's saved
    # sessions after a crash. That it arrives later says nothing of the station now.
    clock = ManualClock(1_800_000_000.0)
    hub = make_hub(clock=clock)
    station = Station(hub.broker)
    try:
        station.send("status", example("status"))
        station.send("state", example("state"))
        wait_count(hub, "state", "applied", 1)
        # The next State is taken in but not acknowledged: the network thread is
        # held in the callback while the connection breaks under it.
        client = hub.ingest._client
        held = hub.fleet._lock
        held.acquire()
        try:
            station.send("state", example("state", rev=example("state")["rev"] + 1))
            wait_until(client._in_callback_mutex.locked, 5, "the State in the callback")
            client._sock._sock.shutdown(socket.SHUT_RDWR)
        finally:
            held.release()
        wait_count(hub, "state", "applied", 2)
        first = hub.fleet.get(SID).last_seen_ms  # its first delivery: heard then
        clock.advance(120)
        wait_count(hub, "state", "duplicate", 1, timeout=10)  # sent again on reconnect
        assert hub.fleet.get(SID).last_seen_ms == first < clock.ms()
    finally:
        station.close()


def test_the_hub_publishes_its_status_retained_and_says_goodbye(make_hub, broker_factory):
    broker = broker_factory()
    hub = make_hub(broker)
    with Subscriber(broker, HUB_STATUS_TOPIC) as sub:
        msg = sub.wait_for(lambda x: True, timeout=5)
        assert msg.retain and msg.json()["state"] == "online" and msg.json()["ts"] > 0
        hub.close()
        msg = sub.wait_for(lambda x: x.json()["state"] == "offline", timeout=5)
        assert m.decode(Kind.HUB_STATUS, msg.payload).state == "offline"


def test_messages_sent_while_the_hub_is_away_are_kept_for_its_session(make_hub,
                                                                        broker_factory,
                                                                        tmp_path):
    broker = broker_factory()
    url = f"sqlite:///{tmp_path / 'away.db'}"
    hub = make_hub(broker, url)
    s = Station(broker)
    try:
        s.send("status", example("status", ts=hub.clock.ms()))
        wait_count(hub, "status", "applied", 1)
        hub.close()
        for seq in range(1, 21):
            s.send("event", example("event", seq=seq))
        again = make_hub(broker, url)  # the same client id: the broker kept its session
        wait_count(again, "event", "applied", 20)
        assert again.fleet.get(SID).events_through == 20
    finally:
        s.close()


def test_commands_are_refused_while_the_broker_is_away(make_hub, broker_factory):
    from hub.fleet.commands import CommandNotSent

    broker = broker_factory()
    hub = make_hub(broker)
    broker.stop()
    wait_until(lambda: not hub.ingest.connected.is_set(), 10, "the hub notices")
    with pytest.raises(CommandNotSent):
        hub.commands.send(SID, "rebirth", {}, by="test")
    assert not healthy(hub)


# -- several workers sharing the subscriptions (design principle 8) ---------------------------


@pytest.mark.postgres
def test_two_workers_sharing_subscriptions_store_each_event_once(pg_url, make_hub,
                                                                  broker_factory):
    broker = broker_factory()
    a = make_hub(broker, pg_url, mqtt={"shared_group": "hubs", "client_id": "hub-a"})
    b = make_hub(broker, pg_url, mqtt={"shared_group": "hubs", "client_id": "hub-b"})
    s = Station(broker)
    try:
        now = a.clock.ms()
        for seq in range(1, 101):
            s.send("event", example("event", ts=now, seq=seq))
        for seq in range(1, 101, 10):  # some of them twice
            s.send("event", example("event", ts=now, seq=seq))
        wait_until(lambda: sum(count(h, "event", r) for h in (a, b)
                               for r in ("applied", "duplicate")) >= 110, 10, "all taken in")
        # The load was shared, each message went to one worker.
        assert count(a, "event", "applied") > 0 and count(b, "event", "applied") > 0
        assert a.writer.flush(5) and b.writer.flush(5)
        with a.store.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        assert n == 100
    finally:
        s.close()


def test_a_shared_group_needs_postgresql(tmp_path):
    from yizhan.config import ConfigError

    with pytest.raises(ConfigError, match=r"mqtt\.shared_group"):
        parse_hub_config({"database": f"sqlite:///{tmp_path / 'x.db'}",
                          "mqtt": {"shared_group": "hubs"}})


def test_policy_and_timing_are_read_from_the_configuration(tmp_path):
    config = parse_hub_config({
        "database": f"sqlite:///{tmp_path / 'x.db'}",
        "policy": {"min_charge": 60, "loan_hours": 12},
        "timing": {"heartbeat": "1s", "replay_after": "3s", "replay_every": "5s",
                   "replay_max": 50},
    })
    assert (config.min_charge, config.loan_hours) == (60, 12.0)
    assert (config.heartbeat, config.replay_after, config.replay_every, config.replay_max) == (
        1.0, 3.0, 5.0, 50)
    defaults = dataclasses.asdict(parse_hub_config({"database": "sqlite:///x.db"}))
    assert (defaults["min_charge"], defaults["loan_hours"], defaults["replay_after"],
            defaults["replay_every"], defaults["replay_max"]) == (80, 24.0, 10.0, 30.0, 1000)


# -- what is kept of a State ---------------------------------------------------------------------


def test_a_state_is_stored_as_sent_and_read_back_as_decoded(database_url, make_hub):
    """The payload goes to the database untouched (no dump on the ingest's path);
    a restarted hub holds it as ``State.to_dict`` would, an unknown field
    (allowed, contract §2) left out as at runtime."""
    hub = make_hub(database_url=database_url)
    s = Station(hub.broker)
    try:
        doc = example("state", ts=hub.clock.ms(), rev=7, firmware_note="新版本")
        payload = json.dumps(doc, ensure_ascii=False, indent=1).encode()
        s.send("state", payload)
        wait_count(hub, "state", "applied", 1)
        assert hub.writer.flush(5)
        with hub.store.engine.connect() as conn:
            stored = conn.execute(sa.select(station_state.c.state)).scalar_one()
        assert stored == payload.decode()
        live = hub.fleet.get(SID).state
        assert live == m.State.from_dict(doc).to_dict() and "firmware_note" not in live
    finally:
        s.close()
    hub.close()
    again = make_hub(broker=hub.broker, database_url=database_url)
    assert again.fleet.get(SID).state == live


def test_a_state_sent_with_a_byte_order_mark_is_stored_without_it(database_url, make_hub):
    """Decoding tolerates a UTF-8 BOM; the stored copy must still load at the next start."""
    hub = make_hub(database_url=database_url)
    s = Station(hub.broker)
    try:
        text = json.dumps(example("state", ts=hub.clock.ms(), rev=9))
        s.send("state", b"\xef\xbb\xbf" + text.encode())
        wait_count(hub, "state", "applied", 1)
        assert hub.writer.flush(5)
        with hub.store.engine.connect() as conn:
            assert conn.execute(sa.select(station_state.c.state)).scalar_one() == text
    finally:
        s.close()
    hub.close()
    again = make_hub(broker=hub.broker, database_url=database_url)
    assert again.fleet.get(SID).state["rev"] == 9


def test_a_running_hub_packs_each_new_state_on_the_schedulers_time(database_url, make_hub):
    """The ingest keeps a new State as compact JSON text (no zlib on its thread);
    the scheduler's job packs it within PACK_EVERY, and readers get the same dict."""
    from hub import service

    hub = make_hub(database_url=database_url)
    jobs = {job.id: job.trigger.interval.total_seconds() for job in hub.scheduler.get_jobs()}
    assert jobs["pack_states"] == service.PACK_EVERY
    s = Station(hub.broker)
    try:
        doc = example("state", ts=hub.clock.ms(), rev=11)
        s.send("state", json.dumps(doc).encode())
        wait_count(hub, "state", "applied", 1)
        expected = m.State.from_dict(doc).to_dict()
        assert hub.fleet.get(SID).state == expected
        deadline = time.monotonic() + 3 * service.PACK_EVERY + 2
        while isinstance(hub.fleet.get(SID).doc, str) and time.monotonic() < deadline:
            time.sleep(0.1)
        packed = hub.fleet.get(SID)
        assert isinstance(packed.doc, bytes) and packed.state == expected
    finally:
        s.close()


# -- the collector kept out of the ingest's way (Hub.run) ---------------------------------------


def test_a_tuned_hub_freezes_its_fleet_and_collects_on_the_schedulers_time(
        broker_factory, tmp_path):
    import gc

    from hub import service

    threshold = gc.get_threshold()
    broker = broker_factory()
    hub = Hub(parse_hub_config({"mqtt": {"host": broker.host, "port": broker.port},
                                "database": f"sqlite:///{tmp_path / 'hub.db'}"}),
              registry=CollectorRegistry())
    try:
        gave_back: list[bool] = []
        real_give_back = service.heap.give_back
        service.heap.give_back = lambda: gave_back.append(True) or real_give_back()
        hub.start(tune_gc=True)  # what ``yizhan hub`` (Hub.run) does
        # The walk before listening gave the heap's free pages back (and every
        # scheduled collection does: a storm's freed memory returned).
        assert gave_back == [True]
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[2] == service.GC_GEN2_THRESHOLD
        jobs = {job.id: job.trigger.interval.total_seconds()
                for job in hub.scheduler.get_jobs()}
        assert jobs["collect_young_garbage"] == service.GC_YOUNG_EVERY
        assert jobs["collect_all_garbage"] == service.GC_FULL_EVERY
        # The jobs paused from here: a job's objects frozen and then freed (the
        # set pack_states swaps every 2 s) would move the freeze count under us.
        hub.scheduler.pause()
        # Cyclic garbage made after the freeze is found by the young collection
        # (the automatic ones are off meanwhile: only the job can find it).
        collected: list[bool] = []
        gc.disable()
        try:
            cycle = Node()
            cycle.me = cycle
            weakref.finalize(cycle, collected.append, True)
            del cycle
            assert collected == []
            hub.collect_young_garbage()
        finally:
            gc.enable()
        assert collected == [True] and gc.get_freeze_count() > 0
        # The 6-hourly collection leaves the frozen fleet unwalked (a second's
        # pause at 100 000 stations): a cycle frozen before it became garbage
        # is found only by the walk of everything (start's, before listening).
        gc.disable()
        try:
            old = Node()
            old.me = old
            weakref.finalize(old, collected.append, "frozen")
            hub.collect_young_garbage()  # it survives a minute: frozen
            frozen = gc.get_freeze_count()
            del old
            hub.collect_all_garbage()
            # Still frozen (a few may have been freed meanwhile: what the hubs of
            # earlier tests in this process left, ending with their threads).
            assert collected == [True] and gc.get_freeze_count() >= frozen - 100
            hub.collect_frozen_garbage()
        finally:
            gc.enable()
        assert collected == [True, "frozen"]
        assert len(gave_back) >= 5  # start's, and the four collections above
    finally:
        service.heap.give_back = real_give_back
        hub.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)


class Node:
    me: Any = None
