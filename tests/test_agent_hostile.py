"""Hostile input at the station agent (issue 21, item 4): property-based tests of
every MQTT payload the agent reads and every YZ-LB1 answer its board could send.

What the agent reads over MQTT is what it subscribes to (protocol.topics
station_subscriptions): its ``cmd`` and ``directory`` topics, the hub's status
and the hub's time beacon. The volume run feeds Hypothesis's payloads straight
into the link's paho callback of a real agent (simulated cabinet, real
Mosquitto), the path every broker message takes; a second run sends hostile
payloads through the broker itself. Nothing may crash (no exception out of the
callback, which would end paho's network thread; no handler failure in the
log), every payload the agent refuses is counted once
(``StationLink.invalid_inbound``) and logged once (one WARNING line, bounded in
length), nothing a refused payload says changes the station, and the agent is
healthy afterwards: connected, its local API answering, a valid command carried
out and answered once.

The board's side: a serial line whose "board" answers every request with bytes
Hypothesis draws (noise, corrupt frames, well-formed frames with nonsense
payloads, slot records with every byte value), under the real LockerBoard and
Locker: only the locker's own errors come out, the poll never fails, and the
State and the birth the agent would build from the locker stay publishable.

Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import string
import struct
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.hardware.board import BoardOffline, LockerBoard, LockerError
from firmware.hardware.station import build_hardware
from firmware.kept import MAX_FINISHED
from firmware.locker import Locker
from protocol import examples
from protocol import messages as m
from protocol.errors import InvalidMessage
from protocol.frames import (
    RESPONSE_BIT,
    ChargeResult,
    Cmd,
    UnlockResult,
    decode_frame,
    encode_frame,
    error_response,
    status_response,
)
from protocol.topics import HUB_STATUS_TOPIC, HUB_TIME_TOPIC, Kind, TopicError, parse_topic, topic
from tests.harness.mqtt import Subscriber, publish
from tests.harness.procs import http_json, wait_until
from yizhan.clock import SYSTEM_CLOCK, ManualClock
from yizhan.watchdog import Notifier

SID = "yh-hostile-01"
#: Examples of the volume run (straight into the callback) and of the broker run.
CALLBACK_EXAMPLES = 600
BROKER_EXAMPLES = 150
BOARD_EXAMPLES = 40
#: The longest line a refused payload may log: a 64 KiB payload must not make a 64 KiB line.
MAX_LOG_LINE = 2000

CMD_TOPIC = topic(SID, Kind.CMD)
DIRECTORY_TOPIC = topic(SID, Kind.DIRECTORY)
SUBSCRIBED = [CMD_TOPIC, DIRECTORY_TOPIC, HUB_STATUS_TOPIC, HUB_TIME_TOPIC]


# -- payloads ---------------------------------------------------------------------------

#: Values a field can hold on a hostile day: huge, negative, empty, the wrong type.
hostile_leaf = (st.none() | st.booleans()
                | st.integers(-(10**30), 10**30)
                | st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**400])
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=30)
                | st.sampled_from(["", "\x00", "A" * 70_000, "r:" + "0" * 24, "ä" * 200]))
hostile_json = st.recursive(
    hostile_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=15)


def _mutated(name: str) -> st.SearchStrategy[dict]:
    """The contract's example ``name`` with one field (or one argument) dropped, replaced
    by a hostile value, or joined by an unknown one."""
    base = examples.example(name)

    def mutate(draw_args: tuple[str, str, Any]) -> dict:
        action, key, value = draw_args
        d = json.loads(json.dumps(base))
        target = d["args"] if key.startswith("args.") and isinstance(d.get("args"), dict) else d
        key = key.removeprefix("args.")
        if action == "drop":
            target.pop(key, None)
        else:
            target[key if action == "set" else f"x_{key}"] = value
        return d

    keys = [*base, *(f"args.{k}" for k in base.get("args", {}) or {})]
    return st.tuples(st.sampled_from(["drop", "set", "add"]), st.sampled_from(keys),
                     hostile_json).map(mutate)


def _command() -> st.SearchStrategy[dict]:
    """Commands of every name (and none) with hostile arguments."""
    return st.fixed_dictionaries({
        "v": st.sampled_from([1, 1, 2, "1", None]),
        "id": st.text(min_size=1, max_size=40) | hostile_leaf,
        "cmd": st.sampled_from(sorted(m.COMMANDS)) | st.text(max_size=12),
        "ts": st.integers(0, 2 * 10**12) | hostile_leaf,
        "args": st.fixed_dictionaries({}, optional={
            "slot": hostile_leaf | st.integers(1, 12),
            "from_seq": hostile_leaf | st.integers(1, 10**6),
            "to_seq": hostile_leaf | st.integers(1, 10**6),
        }) | hostile_json,
    }, optional={"expires": hostile_leaf | st.integers(0, 2 * 10**12)})


def _directory() -> st.SearchStrategy[dict]:
    return _mutated("directory") | st.fixed_dictionaries({
        "v": st.just(1), "rev": hostile_leaf, "ts": hostile_leaf,
        "policy": st.fixed_dictionaries({}, optional={
            "lending": st.sampled_from(["open", "registered"]) | hostile_leaf,
            "min_charge": hostile_leaf, "max_per_rider": hostile_leaf,
            "loan_hours": hostile_leaf}) | hostile_json,
        "riders": st.lists(hostile_json, max_size=3),
        "staff": st.lists(hostile_json, max_size=3),
        "denied": st.lists(hostile_leaf, max_size=3) | hostile_leaf,
    })


def _encoded(value: dict | Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


payload_for = {
    CMD_TOPIC: st.one_of(_mutated("command"), _command(), hostile_json).map(_encoded),
    DIRECTORY_TOPIC: st.one_of(_directory(), hostile_json).map(_encoded),
    HUB_STATUS_TOPIC: st.one_of(_mutated("hub_status"), _mutated("hub_status_offline"),
                                hostile_json).map(_encoded),
    HUB_TIME_TOPIC: st.one_of(_mutated("hub_time"), hostile_json).map(_encoded),
}
raw_bytes = st.one_of(st.binary(max_size=200), st.sampled_from([
    b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"v":1,' * 1000, b"\xff\xfe{}", b"null",
    b'{"v": 1, "ts": NaN}', b'{"v": 1, "ts": Infinity}', b'{"v":1}' + b" " * 70_000,
    b'{"v": 1, "ts": ' + b"9" * 5000 + b"}"]))
messages = st.sampled_from(SUBSCRIBED).flatmap(
    lambda t: st.tuples(st.just(t), payload_for[t] | raw_bytes))


def _valid(topic_name: str, payload: bytes) -> bool:
    """Whether the contract takes ``payload`` on ``topic_name`` (the agent must take
    these and refuse the rest)."""
    try:
        where = parse_topic(topic_name)
        m.decode(where.kind, payload)
    except (InvalidMessage, TopicError):
        return False
    return True


# -- a real agent -------------------------------------------------------------------------


class Captured(logging.Handler):
    """The agent's log records while a block runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._lock2:
            out, self.records = self.records, []
        return out


@pytest.fixture(scope="module")
def agent(broker: Any, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hostile-agent")
    (tmp / "fleet.key").write_bytes(b"hostile-fleet-key-0123456789abcd")
    config = parse_station_config({
        "hardware": "sim",
        "station": {"id": SID, "name": "楚门镇先锋驿站"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp / "station"),
        "fleet_key_file": str(tmp / "fleet.key"),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "lockers": {"slots": 6, "poll_interval": "250ms"},
        "sim": {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7},
    }, source=None)
    hardware = build_hardware(config, SYSTEM_CLOCK)
    a = Agent(config, SYSTEM_CLOCK, hardware, notifier=Notifier(None))
    thread = threading.Thread(target=a.run, daemon=True)
    thread.start()
    captured = Captured()
    logging.getLogger("firmware").addHandler(captured)
    try:
        wait_until(lambda: a.local_api_port, 10, "the local API")
        wait_until(a.link.connected.is_set, 10, "the agent connected")
        a.captured, a.broker = captured, broker
        yield a
    finally:
        logging.getLogger("firmware").removeHandler(captured)
        a.stop()
        thread.join(15)
        assert not thread.is_alive()


def _failures(records: list[logging.LogRecord]) -> list[str]:
    """Records that say something crashed: a traceback logged by a handler."""
    return [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR]


#: A warning that is no refusal of the input: the command queue was full (the command
#: is answered busy).
_NOT_A_REFUSAL = "command %s refused: %d commands already waiting"


def _refusals(records: list[logging.LogRecord], *, here: bool = False
              ) -> list[logging.LogRecord]:
    """WARNING lines; ``here``: only those of this thread (the command worker logs
    what it does for earlier examples meanwhile)."""
    me = threading.get_ident()
    return [r for r in records if r.levelno >= logging.WARNING and r.msg != _NOT_A_REFUSAL
            and (not here or r.thread == me)]


def _assert_healthy(agent: Agent) -> None:
    """Connected, the watchdog's check passing, the kiosk's API answering, a valid
    command carried out and answered once, a State published after it."""
    wait_until(agent.link.connected.is_set, 10, "the agent connected")
    assert agent.link.healthy()
    assert http_json(f"http://127.0.0.1:{agent.local_api_port}/v1/station")[0] == 200
    # The hub's beacon as it comes every 30 s: a valid hostile one far ahead (a hub
    # clock in 2033) would make the command below look expired until it came.
    heard = agent.link.hub_clock.heard_count
    publish(agent.broker, HUB_TIME_TOPIC, {"v": 1, "ts": int(time.time() * 1000)})
    wait_until(lambda: agent.link.hub_clock.heard_count > heard, 10, "the hub's time heard")
    cid = f"c-{uuid.uuid4().hex[:12]}"
    with Subscriber(agent.broker, [topic(SID, Kind.CMD_RESULT), topic(SID, Kind.STATE)]) as sub:
        now = int(time.time() * 1000)
        publish(agent.broker, CMD_TOPIC, {"v": 1, "id": cid, "cmd": "rebirth", "ts": now,
                                          "expires": now + 60_000, "args": {}})

        def results() -> list[dict]:
            return [json.loads(x.payload) for x in sub.messages
                    if x.topic.endswith("/cmd/result") and json.loads(x.payload)["id"] == cid]

        wait_until(lambda: results(), 10, "the rebirth answered")
        wait_until(lambda: any(x.topic.endswith("/state") for x in sub.messages), 10,
                   "a State published")
        time.sleep(0.3)  # a second answer would have arrived by now
        assert [r["ok"] for r in results()] == [True], json.dumps(results())


# -- MQTT: straight into the link's callback ----------------------------------------------


def test_hostile_payloads_into_the_callback_crash_nothing_and_are_counted_once(agent):
    link, client = agent.link, agent.link._client
    directory_before = agent.directory.rev
    captured = agent.captured
    seen = {"valid": 0, "refused": 0}
    revs: list[int] = []  # of the valid Directories fed

    @settings(max_examples=CALLBACK_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def one(message: tuple[str, bytes]) -> None:
        topic_name, payload = message
        valid = _valid(topic_name, payload)
        msg = mqtt.MQTTMessage(topic=topic_name.encode())
        msg.payload = payload
        before = link.invalid_inbound
        captured.take()
        link._message(client, None, msg)  # must not raise: paho's thread would die
        records = captured.take()
        mine = _refusals(records, here=True)
        link_lines = [r for r in mine if r.name == "firmware.link"]
        if valid:
            seen["valid"] += 1
            if topic_name == DIRECTORY_TOPIC:
                revs.append(m.decode(Kind.DIRECTORY, payload).rev)
            assert link.invalid_inbound == before
            assert link_lines == []
        else:
            seen["refused"] += 1
            assert link.invalid_inbound == before + 1
            # Logged once: one WARNING line, of bounded length, for one bad payload.
            assert len(mine) == 1, [r.getMessage() for r in mine]
            assert len(link_lines[0].getMessage()) <= MAX_LOG_LINE
        assert _failures(records) == []

    one()
    assert seen["refused"] > 0 and seen["valid"] > 0, seen
    # Give the command worker what was queued, then look for failures it logged.
    wait_until(lambda: agent.commands._queue.empty(), 30, "the commands worked off")
    assert _failures(captured.take()) == []
    # The Directory held is the newest valid one fed: no refused one moved it.
    assert agent.directory.rev == max(revs, default=directory_before)
    _assert_healthy(agent)


def test_hostile_payloads_through_the_broker_are_counted_and_answered_once(agent):
    """The same payloads from a real client through Mosquitto: commands that carry a
    usable id are each answered once (bad_args for a malformed one)."""
    link, captured = agent.link, agent.captured
    sent: list[tuple[str, bytes, bool]] = []

    @settings(max_examples=BROKER_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def collect(message: tuple[str, bytes]) -> None:
        topic_name, payload = message
        if topic_name == CMD_TOPIC:
            # A fresh id on every command that has one, so answers can be counted.
            try:
                obj = json.loads(payload)
            except (ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                obj["id"] = f"h-{uuid.uuid4().hex[:16]}"
                payload = _encoded(obj)
        sent.append((topic_name, payload, _valid(topic_name, payload)))

    collect()
    refused = sum(1 for _, _, ok in sent if not ok)
    answerable = {json.loads(p)["id"] for t, p, _ in sent if t == CMD_TOPIC
                  and p.startswith(b"{") and _has_id(p)}
    before = link.invalid_inbound
    captured.take()
    with Subscriber(agent.broker, [topic(SID, Kind.CMD_RESULT)]) as results:
        for topic_name, payload, _ok in sent:
            publish(agent.broker, topic_name, payload, qos=1)
        wait_until(lambda: link.invalid_inbound - before == refused, 20,
                   f"{refused} refusals counted")

        def answered() -> list[str]:
            return [json.loads(x.payload)["id"] for x in results.messages]

        wait_until(lambda: answerable <= set(answered()), 30, "every command answered")
        time.sleep(0.5)
        ids = [i for i in answered() if i in answerable]
        assert sorted(ids) == sorted(answerable)  # once each
    records = captured.take()
    assert len([r for r in _refusals(records) if r.name == "firmware.link"]) == refused
    assert _failures(records) == []
    _assert_healthy(agent)


def _has_id(payload: bytes) -> bool:
    try:
        cid = json.loads(payload).get("id")
    except (ValueError, RecursionError, AttributeError):
        return False
    return isinstance(cid, str) and 0 < len(cid) <= 128


# -- the board's answers ----------------------------------------------------------------


class HostileLine:
    """A serial port whose board answers each request with ``answer(request)``."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.buf = bytearray()
        self.is_open = True

    @property
    def in_waiting(self) -> int:
        return len(self.buf)

    def write(self, data: bytes) -> int:
        self.buf += self.answer(bytes(data))
        return len(data)

    def read(self, n: int = 1) -> bytes:
        if not self.buf:
            time.sleep(0.002)  # as a port's read slice would wait
            return b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def reset_input_buffer(self) -> None:
        self.buf.clear()

    def close(self) -> None:
        self.is_open = False


class Reporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def event(self, type_: str, data: dict) -> int:
        self.events.append((type_, data))
        return len(self.events)

    def changed(self) -> None:
        pass


def _overwrite(record: bytes, hit: tuple[int, int] | None) -> bytes:
    if hit is None:
        return record
    at, value = hit
    return record[:at] + bytes((value,)) + record[at + 1:]


#: A 16-byte slot record the codec reads as valid (slot 0 and 255 among its numbers,
#: every charge, temperature and cycle count the bytes can say), or one with any
#: single byte overwritten.
raw_record = st.tuples(st.builds(
    lambda slot, flags, charge, temp, cycles, status, bank: struct.pack(
        "<BBBbHBB8s", slot, flags, charge, temp, cycles, status, 0, bank),
    st.sampled_from([1, 0, 2, 3, 0, 4, 5, 6, 255]), st.integers(0, 7),
    st.integers(0, 100) | st.just(0xFF), st.integers(-128, 127), st.integers(0, 0xFFFF),
    st.integers(0, 4),
    st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=8)
    .map(lambda s: s.encode().ljust(8, b"\x00")) | st.just(bytes(8))),
    # One record in four has a byte overwritten: whole answers of valid-looking
    # records (slot 0 among them) stay common enough to reach the State.
    st.sampled_from([None, None, None, "hit"]).flatmap(
        lambda hit: st.tuples(st.integers(0, 15), st.integers(0, 255)) if hit else st.none()),
).map(lambda t: _overwrite(*t))


#: What the board does with one request. Hypothesis draws the first entries most
#: often: the answers that cost a 200 ms timeout (silence, an answer to another
#: request) are few and late in the list, so the file stays fast at the board's real
#: timeout.
BEHAVIOURS = ("structured", "shaped", "noise+structured", "structured", "error",
              "noise+shaped", "structured", "other+ours", "structured", "shaped",
              "well-formed", "noise+structured", "silent", "error-about-another")


def _answer(draw: st.DrawFn, request: bytes) -> bytes:
    """What a faulty, noisy or lying board might send back to ``request``."""
    req = decode_frame(request)
    how = draw(st.sampled_from(BEHAVIOURS))
    addr, reply = req.addr, req.cmd | RESPONSE_BIT
    noise = draw(st.binary(max_size=12)) if how.startswith("noise+") else b""
    how = how.removeprefix("noise+")
    if how == "silent":
        return draw(st.binary(max_size=40))  # noise and nothing else: a timeout
    if how == "other+ours":  # another board's answer, then ours
        return (encode_frame(addr % 15 + 1, reply, draw(st.binary(max_size=20)))
                + _answer(draw, request))
    if how in ("error", "error-about-another"):
        about = req.cmd if how == "error" else draw(st.integers(0, 255))
        return error_response(addr, about, draw(st.integers(0, 255)))
    # "structured": the answer's own layout with drawn values (slot records, an
    # INFO's count and firmware, an UNLOCK's or CHARGE's slot and result).
    if how == "structured" and req.cmd == Cmd.STATUS:
        records = draw(st.lists(raw_record, max_size=15))
        count = len(records) if draw(st.sampled_from([True, True, False])) else \
            draw(st.integers(0, 255))
        return noise + encode_frame(addr, reply, bytes((count,)) + b"".join(records))
    if how == "structured" and req.cmd == Cmd.INFO:
        fw = draw(st.just(b"YZ-LB1-2.3") | st.binary(max_size=20))
        return noise + encode_frame(addr, reply, bytes((draw(st.integers(0, 255)),)) + fw)
    if how == "structured" and req.cmd in (Cmd.UNLOCK, Cmd.CHARGE):
        slot = req.payload[0] if draw(st.booleans()) else draw(st.integers(0, 255))
        return noise + encode_frame(addr, reply, bytes((slot, draw(st.integers(0, 255)))))
    if how == "well-formed" and req.cmd == Cmd.STATUS:  # some polls succeed
        return noise + status_response(addr, [])
    return noise + encode_frame(addr, reply, draw(st.binary(max_size=255)))


def _publishable(locker: Locker) -> None:
    """What the agent builds from the locker (State and birth) passes the contract."""
    slots = [r.slot for r in locker.slots()]
    assert len(slots) == len(set(slots)) and all(1 <= s <= 255 for s in slots), slots
    state = m.State(sid=SID, epoch="9f2c01ab", ts=1, synced=True, rev=1, last_seq=0,
                    lockers=locker.section(), dispenser=None, doors=None, health=None,
                    counters=None)
    m.encode(state)
    m.encode(m.Status.online(SID, "9f2c01ab", ts=1, synced=True, rev=1, last_seq=0,
                             agent_version="1.0.0", hw=locker.describe()))


@settings(max_examples=BOARD_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_hostile_board_answers_never_break_the_locker_nor_the_state(data):
    line = HostileLine(lambda request: _answer(data.draw, request))
    board = LockerBoard("hostile://board", open_port=lambda *a, **k: line)
    clock = ManualClock()
    locker = Locker(board, Reporter(), clock, poll_interval=2.0)
    captured = Captured()
    logging.getLogger("firmware").addHandler(captured)
    try:
        for _ in range(2):
            locker.poll_once()  # never raises: a failed poll is counted and logged
            clock.advance(2.0)
            _publishable(locker)
        slot = data.draw(st.integers(1, 6))
        for call, results in ((lambda: board.unlock(slot), UnlockResult),
                              (lambda: board.charge(slot, True), ChargeResult)):
            # BoardOffline or BoardRefused (LockerErrors) are what the callers handle.
            with contextlib.suppress(LockerError):
                assert call() in results
    finally:
        logging.getLogger("firmware").removeHandler(captured)
    assert _failures(captured.records) == []
    # Bad frames are counted (board.bad_frames) and logged at DEBUG; the locker logs a
    # change of state once ("did not answer", another slot count, slots gone), so two
    # polls make a few lines at most, never one per bad byte or frame.
    lines = _refusals(captured.records)
    assert all(r.name == "firmware.locker" for r in lines), [r.getMessage() for r in lines]
    assert len(lines) <= 4, [r.getMessage() for r in lines]
    assert locker.polls == 2


def test_a_status_answer_naming_slot_0_or_a_slot_twice_is_malformed():
    """Found by the test above: a record of slot 0 went into the State as slot 0,
    which the contract refuses, so every State after it failed to publish and the
    agent's loop ended. Such an answer is now a malformed frame, counted."""
    record = struct.pack("<BBBbHBB8s", 0, 3, 96, 29, 212, 0, 0, b"PB0012AF")
    twice = struct.pack("<BBBbHBB8s", 2, 3, 96, 29, 212, 0, 0, b"PB0012AF")
    for records in ([record], [twice, twice]):
        line = HostileLine(lambda req, records=records: encode_frame(
            1, decode_frame(req).cmd | RESPONSE_BIT,
            (bytes((len(records),)) + b"".join(records)) if decode_frame(req).cmd == Cmd.STATUS
            else b"\x06YZ-LB1-2.3"))
        board = LockerBoard("hostile://board", open_port=lambda *a, line=line, **k: line)
        with pytest.raises(BoardOffline, match="malformed answer"):
            board.status()
        assert board.bad_frames == 1 + board.retries
        locker = Locker(board, Reporter(), ManualClock())
        locker.poll_once()
        assert locker.failed_polls == 1 and locker.slots() == []
        _publishable(locker)


# -- the local API: made-up riders --------------------------------------------------------

#: Made-up rider ids measured, after 2 000 that fill the cap: 10 000 in all.
MADE_UP = 8_000


def test_ten_thousand_made_up_riders_keep_memory_bounded(agent):
    """Borrows and return claims for 10 000 made-up rider ids (each refused at once: a
    finished attempt or claim) keep at most MAX_FINISHED of each, and the memory they
    leave stays under a bound per id that keeping them all would break (~0.5 KB each).
    Found by this test: all were kept for ten minutes, and scanned on every request."""
    import tracemalloc

    lending = agent.lending
    base = f"http://127.0.0.1:{agent.local_api_port}"

    def rider(i: int) -> str:
        return "r:" + f"{i:024x}"

    def made_up(start: int, count: int) -> None:
        for i in range(start, start + count):
            lending.borrow(rider(i))  # what POST /v1/borrow calls, without the HTTP
            lending.return_desk.expect(rider(i))

    # The path over HTTP, a few times: answered, refused ones finish at once.
    for i in range(20):
        code, body = http_post(base + "/v1/borrow", {"rider": rider(10**9 + i)})
        assert code == 202 and body["attempt"]["rider"] == rider(10**9 + i)
    quiet = logging.getLogger("firmware")
    level, quiet.level = quiet.level, logging.WARNING  # pytest keeps every record it sees
    agent.captured.take()
    try:
        made_up(0, MAX_FINISHED)  # full to the cap
        tracemalloc.start()
        # Once more, traced: what is kept then was allocated under tracemalloc, so
        # its release is seen when the made-up riders below replace it.
        made_up(MAX_FINISHED, MAX_FINISHED)
        before = tracemalloc.take_snapshot()
        made_up(2 * MAX_FINISHED, MADE_UP)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        quiet.level = level
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(lending._attempts) <= MAX_FINISHED + 12  # finished, and under way (slots)
    assert len(lending.return_desk._claims) <= MAX_FINISHED + 12
    # Keeping each would be ~1 KB per id (an attempt and a claim): 10 MB here.
    assert grown < 50 * MADE_UP, f"{grown} bytes for {MADE_UP} made-up riders"
    _assert_healthy(agent)


def http_post(url: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_refused_requests_are_counted_and_logged_at_powers_of_two(agent):
    """Every refusal of the local API is counted by code; its line is written at the
    1st, 2nd, 4th, 8th … of a code, with the count, so a flood writes a few lines."""
    import http.client

    refusals = agent.local_api_app.extensions["yizhan_local_api"].refusals
    base = f"http://127.0.0.1:{agent.local_api_port}"
    before = refusals.counts["bad_rider"], refusals.counts["bad_host"]
    agent.captured.take()
    for _ in range(40):
        code, body = http_post(base + "/v1/borrow", {"rider": "+86 138 0013 8000"})
        assert (code, body["error"]["code"]) == (400, "bad_rider")
    for _ in range(3):  # DNS rebinding: the browser calls us by the attacker's name
        conn = http.client.HTTPConnection("127.0.0.1", agent.local_api_port, timeout=10)
        conn.request("GET", "/v1/station", headers={"Host": "evil.example"})
        assert conn.getresponse().status == 421
        conn.close()
    assert refusals.counts["bad_rider"] - before[0] == 40
    assert refusals.counts["bad_host"] - before[1] == 3
    lines = [r.getMessage() for r in agent.captured.take() if r.name == "firmware.localapi"]
    counted = [int(line.split("(")[-1].split()[0]) for line in lines if "bad_rider" in line]
    assert counted == [n for n in (1, 2, 4, 8, 16, 32, 64)
                       if before[0] < n <= before[0] + 40]
    assert all("POST /v1/borrow" in line and "138" not in line
               for line in lines if "bad_rider" in line)  # never the phone number
    assert any("for host 'evil.example'" in line for line in lines), lines
