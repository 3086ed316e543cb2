"""Hostile input at the hub (issue 21, item 4a): whatever a stranger publishes,
nothing crashes, every refused message is counted with its reason and logged
once, memory stays bounded under 10 000 made-up station ids, and a station
cannot change another station by its topic or by the ``sid`` of its payload.

A real ``Hub`` (ingest, writer, fleet, scheduler) on a real Mosquitto and a real
SQLite file. For volume, hypothesis's inputs go straight into the ingest's
message handler (``Ingest._message``, as paho's network thread calls it, under
paho's callback lock); a sample of them goes through the broker as well. The
bench (bench/hostile_input.py) runs the same strategies with many more examples
and gives the counts in docs/benchmarks.md, "Hostile input".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.fleet.view import LOST_KEPT, Seqs
from hub.mqtt.bulk_client import Received
from hub.mqtt.ingest import LOG_WINDOW, LOGGED_KEPT, METRIC_KIND, OTHER_KIND, REASONS
from hub.service import Hub
from hub.storage import schema
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.conftest import SECURE_USERS
from tests.harness.mqtt import close, connect
from tests.harness.procs import wait_until
from tests.test_hub_ingest import example, healthy, make_hub  # noqa: F401
from tests.test_protocol_fast import EDGE_VALUES, JSON_VALUES, broken
from tests.test_protocol_messages import ALL
from yizhan.clock import ManualClock

KINDS = (Kind.STATUS, Kind.STATE, Kind.EVENT, Kind.CMD_RESULT)
RESULTS = ("applied", "duplicate", "stale", "invalid")
#: Enough to find what the bench found, small enough for CI (the file runs in
#: well under a minute); bench/hostile_input.py runs thousands.
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
HUB_MQTT = {"username": "_hub", "password": SECURE_USERS["_hub"]}


# -- what a stranger can send ------------------------------------------------------------


def valid_message() -> st.SearchStrategy[tuple[str, bytes]]:
    """Messages the contract accepts, values anywhere in their ranges (10**18 ts,
    2**53 seq, any of the contract's words), on their station's topic."""
    return st.sampled_from(KINDS).flatmap(
        lambda k: ALL[k].map(lambda msg, k=k: (topic(msg.sid, k), m.encode(msg))))


def broken_message() -> st.SearchStrategy[tuple[str, bytes]]:
    """A contract example with one to three things changed (tests/test_protocol_fast.py),
    on its own station's topic or another's."""
    return st.tuples(broken(), st.sampled_from([examples.SID, "yh-other", "yh-x-9"])).map(
        lambda case: (topic(case[1], case[0][0]), case[0][1].encode("utf-8", "surrogatepass")))


def raw_payload() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        EDGE_VALUES.map(lambda v: json.dumps({"v": 1, "sid": examples.SID, "epoch": v,
                                              "ts": v, "seq": v, "rev": v}).encode()),
        st.integers(1, 3).map(lambda n: b"[" * (400 * n) + b"]" * (400 * n)),
        st.integers(0, 2).map(lambda n: b'{"v":1,"pad":"' + b"x" * (m.MAX_PAYLOAD + n)
                              + b'"}'),
    )


def any_topic() -> st.SearchStrategy[bytes]:
    """Topics under the hub's subscriptions with any station part, and a few the
    broker would never deliver (not UTF-8, another prefix)."""
    tails = st.sampled_from([k.value for k in KINDS])
    sid = st.text(max_size=40) | st.sampled_from(["", "hub", "yh-", "YH-A", "a" * 40,
                                                 "yh-chumen-01\n", "+", "#"])
    return st.one_of(
        st.tuples(sid, tails).map(lambda t: f"yizhan/v1/{t[0]}/{t[1]}".encode(
            "utf-8", "surrogatepass")),
        st.binary(max_size=60),
        st.sampled_from([b"yizhan/v1/hub/status", b"yizhan/v1/hub/time",
                         b"yizhan/v1/yh-chumen-01/cmd", b"$SYS/broker/clients/connected"]),
    )


def hostile() -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(topic, payload) of every sort above."""
    good_topic = st.sampled_from(KINDS).map(lambda k: topic(examples.SID, k).encode())
    return st.one_of(
        valid_message().map(lambda t: (t[0].encode(), t[1])),
        broken_message().map(lambda t: (t[0].encode(), t[1])),
        st.tuples(good_topic, raw_payload()),
        st.tuples(any_topic(), raw_payload() | st.just(json.dumps(
            examples.example("status")).encode())),
    )


# -- the hub's side ----------------------------------------------------------------------


def counts(hub: Hub) -> dict[tuple[str, str], int]:
    """Every counter of the two families: ("messages", kind/result) and
    ("refused", kind/reason)."""
    out = {("messages", f"{k}/{r}"): n for (k, r), n in hub.ingest.messages.counts.items()}
    out.update({("refused", f"{k}/{r}"): n for (k, r), n in hub.ingest.refused.counts.items()})
    return out


def handle(hub: Hub, topic_bytes: bytes, payload: bytes, *, retain: bool = False) -> None:
    """Hand one PUBLISH to the ingest as paho's network thread does."""
    msg = Received(1, topic_bytes)
    msg.payload, msg.qos, msg.retain = payload, 1, retain
    client = hub.ingest._client
    with client._in_callback_mutex:  # as paho holds it: never alongside its own thread
        hub.ingest._message(client, None, msg)


def diff(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def rows_of(hub: Hub, sid: str) -> dict[str, list]:
    """Every stored row about station ``sid``, table by table."""
    hub.writer.flush()
    out = {}
    with hub.store.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            if "sid" in table.c:
                out[table.name] = sorted(
                    tuple(map(str, r)) for r in conn.execute(
                        sa.select(table).where(table.c.sid == sid)))
    return out


@pytest.fixture
def hub(make_hub) -> Hub:  # noqa: F811
    return make_hub()


# -- nothing crashes; every input counted once, with its reason; logged at most once ----


def test_every_hostile_message_is_counted_once_and_nothing_breaks(make_hub, database_url,  # noqa: F811
                                                                    caplog):
    """On both stores: PostgreSQL refuses what SQLite takes (a NUL in a text)."""
    hub = make_hub(database_url=database_url)
    caplog.set_level(logging.WARNING)
    seen_keys: set = set()

    @FUZZ
    @given(hostile(), st.booleans())
    def check(case, retain):
        topic_bytes, payload = case
        before = counts(hub)
        logged = len(caplog.records)
        handle(hub, topic_bytes, payload, retain=retain)
        changed = diff(before, counts(hub))
        messages = {k[1]: n for k, n in changed.items() if k[0] == "messages"}
        refused = {k[1]: n for k, n in changed.items() if k[0] == "refused"}
        new_logs = caplog.records[logged:]
        assert not [r for r in new_logs if r.levelno >= logging.ERROR], (
            "a hub error (traceback) on hostile input", topic_bytes[:80], payload[:200])
        assert all(n == 1 for n in changed.values()), changed
        if not messages and not refused:
            # Not a station's message: the hub's own topics, $SYS, a hub → station kind.
            assert not topic_bytes.startswith(b"yizhan/v1/") or any(
                topic_bytes.endswith(t) for t in (b"/cmd", b"/directory", b"hub/status",
                                                  b"hub/time")) or topic_bytes.startswith(
                b"$SYS/"), (topic_bytes, payload[:80])
            return
        if refused:
            ((key, _),) = refused.items()
            kind, reason = key.split("/")
            assert reason in REASONS and reason != "apply_failed", (key, payload[:200])
            assert messages == ({} if kind == OTHER_KIND else {f"{kind}/invalid": 1})
            assert len(new_logs) <= 1
            if new_logs:
                line = new_logs[0].getMessage()
                assert "\n" not in line and len(line) < 600, line
                seen_keys.add(key)
        else:
            ((key, _),) = messages.items()
            assert key.split("/")[1] in ("applied", "duplicate", "stale"), key
            assert not new_logs or all("invalid" not in r.getMessage() for r in new_logs)

    check()
    assert hub.writer.flush(10)
    assert hub.writer.failed == 0, "a write the hub built from hostile input failed"
    assert hub.ingest._client.loop_alive()
    assert healthy(hub)
    # And the hub still takes a good message after all that.
    before = hub.ingest.messages.value("status", "applied")
    handle(hub, topic("yh-after-9", Kind.STATUS).encode(),
           json.dumps(example("status", sid="yh-after-9")).encode())
    assert hub.ingest.messages.value("status", "applied") == before + 1


def test_hostile_messages_through_the_broker_are_counted(hub):
    """The same inputs as a client publishes them, through Mosquitto (which refuses
    what MQTT forbids before the hub sees it: those are the broker's to count)."""
    client = connect(hub.broker)
    sent = [0]

    @settings(FUZZ, max_examples=40)
    @given(st.one_of(valid_message(), broken_message(),
                     st.tuples(st.sampled_from(KINDS).map(lambda k: topic(examples.SID, k)),
                               raw_payload())))
    def check(case):
        name, payload = case
        if len(payload) > m.MAX_PAYLOAD + 16:
            payload = payload[: m.MAX_PAYLOAD + 16]
        client.publish(name, payload, qos=1).wait_for_publish(5)
        sent[0] += 1

    try:
        check()
        wait_until(lambda: sum(hub.ingest.messages.counts.values()) >= sent[0], 10,
                   f"{sent[0]} messages counted")
    finally:
        close(client)
    assert sum(hub.ingest.messages.counts.values()) == sent[0]
    refused = sum(n for (k, _), n in hub.ingest.refused.counts.items() if k != OTHER_KIND)
    assert refused == sum(hub.ingest.messages.value(k, "invalid") for k in METRIC_KIND.values())
    assert hub.ingest.refused.value("status", "apply_failed") == 0
    assert hub.writer.flush(10) and hub.writer.failed == 0
    assert healthy(hub)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{", "not_json"), (b"\xff", "not_json"), (b"[]", "not_json"),
    (b"x" * (m.MAX_PAYLOAD + 1), "too_large"),
    (json.dumps(example("state", v=2)).encode(), "version"),
    (json.dumps(example("state", sid="yh-other")).encode(), "sid"),
    (json.dumps(example("state", rev=10**30)).encode(), "field"),
])
def test_each_refusal_has_its_reason(hub, payload, reason):
    handle(hub, topic(examples.SID, Kind.STATE).encode(), payload)
    assert hub.ingest.refused.value("state", reason) == 1
    assert hub.ingest.messages.value("state", "invalid") == 1
    text = hub.app.test_client().get("/metrics").get_data(as_text=True)
    assert (f'yizhan_hub_invalid_messages_total{{kind="state",reason="{reason}"}} 1.0'
            in text)


def test_a_topic_that_is_not_utf8_is_counted_not_fatal(hub):
    handle(hub, b"yizhan/v1/\xff\xfe/state", b"{}")
    assert hub.ingest.refused.value(OTHER_KIND, "topic") == 1
    assert hub.ingest._client.loop_alive() and healthy(hub)


def test_made_up_values_do_not_make_new_log_lines(hub, caplog):
    """A station varying what it makes up (a door name, a sid in the payload, an
    unknown word) is one (station, kind, reason): one line, not one per value."""
    caplog.set_level(logging.WARNING, logger="hub.mqtt.ingest")
    state_topic = topic(examples.SID, Kind.STATE).encode()
    for i in range(300):
        handle(hub, state_topic, json.dumps(example("state", sid=f"yh-fake-{i}")).encode())
        bad = example("state")
        bad["doors"] = {f"door{i}\nFORGED LOG LINE": "open"}
        handle(hub, state_topic, json.dumps(bad).encode())
    assert hub.ingest.refused.value("state", "sid") == 300
    assert hub.ingest.refused.value("state", "field") == 300
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.mqtt.ingest"]
    assert len(lines) == 2, lines
    assert all("\n" not in line for line in lines)


def test_the_log_is_bounded_and_speaks_again_after_the_hour(make_hub, caplog):  # noqa: F811
    clock = ManualClock()
    hub = make_hub(clock=clock)
    caplog.set_level(logging.WARNING, logger="hub.mqtt.ingest")
    n = LOGGED_KEPT + 500
    for i in range(n):
        handle(hub, f"yizhan/v1/yh-made-{i}/event".encode(), b"not json")
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.mqtt.ingest"]
    assert len(lines) == LOGGED_KEPT + 1  # the first LOGGED_KEPT, and "the rest are counted"
    assert "the rest are counted" in lines[-1]
    assert hub.ingest.refused.value("event", "not_json") == n
    caplog.clear()
    handle(hub, b"yizhan/v1/yh-made-0/event", b"not json")
    assert not caplog.records  # still within the hour
    clock.advance(LOG_WINDOW)
    handle(hub, b"yizhan/v1/yh-made-0/event", b"not json")
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.mqtt.ingest"]
    assert len(lines) == 2 and "500 more invalid messages" in lines[0], lines
    assert "yh-made-0" in lines[1]


# -- memory under 10 000 made-up station ids ---------------------------------------------

MADE_UP = 10_000


def grown_per_id(hub: Hub, send: Callable[[int], None]) -> float:
    """Bytes still held per made-up id after ``MADE_UP`` of them were sent: the
    smaller of two rounds of fresh ids, after 200 of warm-up. What the hub's
    other threads cache once (a statement compiled by a scheduled job) lands in
    one round; what is kept per id, in both."""
    for i in range(200):
        send(i)
    hub.writer.flush(10)
    # The log records pytest keeps for its report would be the test's memory, not
    # the hub's: the ingest's lines go to a handler that keeps nothing meanwhile.
    ingest_log = logging.getLogger("hub.mqtt.ingest")
    quiet = logging.NullHandler()
    ingest_log.addHandler(quiet)
    ingest_log.propagate = False
    rounds = []
    tracemalloc.start()
    try:
        for first in (200, 200 + MADE_UP):
            start = tracemalloc.take_snapshot()
            for i in range(first, first + MADE_UP):
                send(i)
            hub.writer.flush(10)
            end = tracemalloc.take_snapshot()
            rounds.append(sum(s.size_diff for s in end.compare_to(start, "filename")))
    finally:
        tracemalloc.stop()
        ingest_log.propagate = True
        ingest_log.removeHandler(quiet)
    return min(rounds) / MADE_UP


def test_unknown_stations_cost_nothing_when_refused(make_hub):  # noqa: F811
    """``accept_unknown_stations: false``: 10 000 made-up sids with valid messages
    leave nothing behind. A leak of the sid alone (a 20-character str is 69 bytes)
    would break the bound."""
    hub = make_hub(accept_unknown_stations=False,
                   stations=[{"sid": examples.SID, "name": "known"}])

    def send(i: int) -> None:
        sid = f"yh-made-{i}"
        handle(hub, topic(sid, Kind.STATUS).encode(),
               json.dumps(example("status", sid=sid)).encode())

    per_id = grown_per_id(hub, send)
    assert per_id < 8, f"{per_id:.1f} bytes kept per refused made-up station"
    assert hub.ingest.refused.value("status", "unknown_station") == 2 * MADE_UP + 200
    assert hub.fleet.sids() == [] or set(hub.fleet.sids()) <= {examples.SID}


def test_invalid_messages_from_made_up_stations_cost_bounded_memory(hub):
    """By default (unknown stations accepted) an invalid payload from each of 10 000
    made-up sids: nothing of them is kept but the log's bounded memory
    (``LOGGED_KEPT`` keys; after the warm-up's 200, 800 more at most)."""
    def send(i: int) -> None:
        handle(hub, f"yizhan/v1/yh-made-{i}/state".encode(), b'{"v":1,')

    per_id = grown_per_id(hub, send)
    # The 800 keys the log may still remember (full within the first round), ~160
    # bytes each (a tuple, the sid, the set's slot): 13 bytes a made-up id at most.
    # Keeping the sid of each would be 60 and more.
    bound = (LOGGED_KEPT - 200) * 250 / MADE_UP
    assert per_id < bound, f"{per_id:.1f} bytes kept per made-up station"
    assert hub.fleet.sids() == []


# -- one station cannot change another ----------------------------------------------------

VICTIM, THIEF = "yh-other", examples.SID


def publish_as(broker: Any, user: str, messages: list[tuple[str, dict | bytes]]) -> None:
    client = connect(broker, username=user, password=SECURE_USERS[user])
    try:
        for name, payload in messages:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            client.publish(name, data, qos=1).wait_for_publish(5)
    finally:
        close(client)


def newer(kind: str, sid: str) -> dict:
    """A message for ``sid`` that would change it if taken: a later birth, a higher
    rev, a later seq, a borrow that opens a loan."""
    if kind == "status":
        return example("status", sid=sid, birth=90, rev=90)
    if kind == "state":
        return example("state", sid=sid, rev=99)
    if kind == "event":
        return example("event", sid=sid, seq=999)
    return example("result", sid=sid)


def test_a_station_cannot_change_another(make_hub, secure_broker):  # noqa: F811
    hub = make_hub(secure_broker, mqtt=HUB_MQTT)
    # The victim speaks for itself first.
    publish_as(secure_broker, VICTIM, [
        (topic(VICTIM, Kind.STATUS), example("status", sid=VICTIM)),
        (topic(VICTIM, Kind.STATE), example("state", sid=VICTIM)),
        (topic(VICTIM, Kind.EVENT), example("event", sid=VICTIM)),
    ])
    wait_until(lambda: hub.ingest.messages.value("event", "applied") == 1, 10,
               "the victim's messages taken in")
    # The contract's example State has few chargers ready: the engine's own
    # alert of it comes on its own time, before the snapshot.
    wait_until(lambda: rows_of(hub, VICTIM)["alerts"], 10, "the victim's chargers_low")
    view_before = hub.fleet.get(VICTIM)
    rows_before = rows_of(hub, VICTIM)
    assert rows_before["events"] and rows_before["station_state"]
    kinds = ("status", "state", "event", "result")
    tails = {"status": Kind.STATUS, "state": Kind.STATE, "event": Kind.EVENT,
             "result": Kind.CMD_RESULT}
    # The thief, with its own (stolen) credentials: on the victim's topics (the ACL
    # drops them), then on its own topics in the victim's name (the hub refuses
    # them: sid), then one good message of its own, which arrives after the rest.
    publish_as(secure_broker, THIEF,
               [(topic(VICTIM, tails[k]), newer(k, VICTIM)) for k in kinds]
               + [(topic(THIEF, tails[k]), newer(k, VICTIM)) for k in kinds]
               + [(topic(THIEF, Kind.STATUS), example("status", sid=THIEF))])
    wait_until(lambda: hub.ingest.messages.value("status", "applied") == 2, 10,
               "the thief's own status taken in")
    for k in kinds:
        assert hub.ingest.refused.value(k, "sid") == 1, k
    assert hub.writer.flush(10)
    assert dataclasses.asdict(hub.fleet.get(VICTIM)) == dataclasses.asdict(view_before)
    assert rows_of(hub, VICTIM) == rows_before
    # Counted: nothing of the victim's own kinds but its first three.
    assert sum(hub.ingest.messages.counts[(k, "applied")] for k in kinds) == 4


# -- a gap that never closes ---------------------------------------------------------------


def test_seqs_given_up_are_remembered_up_to_a_bound():
    seqs = Seqs()
    seqs.add(1)
    seqs.add(2**62)  # valid (seq < 2**63), and the gap below it never closes
    for _n in range(30):  # what 30 give-ups of 1 000 leave
        lo = seqs.through + 1
        seqs.give_up(lo, lo + 999)
    assert seqs.through == 30_001
    assert len(seqs.lost) == LOST_KEPT
    assert min(seqs.lost) == 30_001 - LOST_KEPT + 1  # the latest kept: still welcome
    assert seqs.add(30_001) and not seqs.add(30_001 - LOST_KEPT)


def test_a_station_with_a_gap_that_never_closes_does_not_grow_the_hub(make_hub):  # noqa: F811
    """One valid event with a seq near 2**63: the hub asks for the gap below it,
    a replay every replay_every, giving up replay_max seqs every ten unanswered
    replays, for ever. What it remembers of them stays bounded."""
    clock = ManualClock()
    hub = make_hub(clock=clock)
    sid = examples.SID

    def alive() -> None:
        handle(hub, topic(sid, Kind.STATUS).encode(),
               json.dumps(example("status", ts=clock.ms())).encode())

    alive()
    for seq in (1, 2**62):
        handle(hub, topic(sid, Kind.EVENT).encode(),
               json.dumps(example("event", seq=seq, ts=clock.ms())).encode())
    every = hub.config.replay_every + 1

    def passes(n: int) -> None:
        for _ in range(n):
            clock.advance(every)
            alive()
            hub.heal_gaps()

    # LOST_KEPT seqs given up (11 replays a thousand), then as many again; traced
    # from the first, so that what the second frees is counted against it.
    tracemalloc.start()
    try:
        passes(11 * (LOST_KEPT // hub.config.replay_max) + 5)
        through = hub.fleet.get(sid).events_through
        start = tracemalloc.take_snapshot()
        passes(11 * (LOST_KEPT // hub.config.replay_max))
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert hub.fleet.get(sid).events_through >= through + LOST_KEPT  # still asking
    seqs_file = [tracemalloc.Filter(True, sys.modules[Seqs.__module__].__file__)]
    grown = sum(s.size_diff for s in end.filter_traces(seqs_file).compare_to(
        start.filter_traces(seqs_file), "filename"))
    # Unbounded, the 10 000 more seqs given up were ~800 KB of set and ints.
    assert grown < 100_000, f"the fleet grew {grown} bytes over 10 000 seqs given up"


# -- what one store takes and the other refuses ------------------------------------------


def _borrow(bank: str) -> dict:
    d = example("event", seq=7)
    d["data"] = {**d["data"], "bank": bank}
    return d


def _state_door(name: str) -> dict:
    d = example("state")
    d["doors"] = {name: False}
    return d


#: U+0000 where the contract takes any string: PostgreSQL's text cannot hold it.
NUL_CASES = {
    "a borrow's bank id": ("event", lambda: _borrow("PB\x00X")),
    "a door name in a State": ("state", lambda: _state_door("front\x00")),
    "a key of an unknown event's data": ("event", lambda: {
        **example("event", seq=8), "type": "made_up", "data": {"k\x00": "v"}}),
    "a command result's data": ("result", lambda: {**example("result"), "data": {"x": "\x00"}}),
}
TAILS = {"status": Kind.STATUS, "state": Kind.STATE, "event": Kind.EVENT,
         "result": Kind.CMD_RESULT}


def test_a_nul_in_a_station_string_is_refused_on_both_stores(make_hub, database_url):  # noqa: F811
    """It was taken, and on PostgreSQL its write then failed: the borrow's event
    and loan lost, a traceback, the writer's batch retried by halves."""
    hub = make_hub(database_url=database_url)
    for case, (kind, make) in NUL_CASES.items():
        before = hub.ingest.refused.value(kind, "field")
        handle(hub, topic(examples.SID, TAILS[kind]).encode(), json.dumps(make()).encode())
        assert hub.ingest.refused.value(kind, "field") == before + 1, case
    # What only looks like one (a backslash, then the letters) is a good message.
    handle(hub, topic(examples.SID, Kind.EVENT).encode(),
           json.dumps(_borrow("PB\\u0000")).encode())
    assert hub.ingest.messages.value("event", "applied") == 1
    assert hub.writer.flush(10)
    assert hub.writer.failed == 0
