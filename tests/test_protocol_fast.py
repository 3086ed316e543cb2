"""``decode`` reads a station's payload with msgspec first (``from_json``) and
leaves what that refuses to the hand reader (``json`` + ``from_dict``), which
accepts it or names the field. Nothing may change by it: these tests hold
``decode`` to the hand reader's verdict — the same message, type for type, or the
same InvalidMessage — on valid payloads and on broken ones, and check that the
fast reader really takes the valid ones."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import examples
from protocol import messages as m
from protocol.errors import InvalidMessage
from protocol.topics import Kind
from tests.test_protocol_messages import ALL

FAST_KINDS = (Kind.STATUS, Kind.STATE, Kind.EVENT, Kind.CMD_RESULT)
STATION_EXAMPLES = [n for n in examples.names() if examples.KINDS[n] in FAST_KINDS]
SETTINGS = settings(max_examples=400, deadline=None)


def hand(kind: Kind, text: str, topic_sid: str | None):
    """The hand reader alone: what ``decode`` was before msgspec."""
    return m._TYPES[kind].from_dict(m._parse(m._text(text)), topic_sid)


def decode(kind: Kind, text: str, topic_sid: str | None):
    return m.decode(kind, text, topic_sid=topic_sid)


def verdict(read, *args) -> tuple[str, str]:
    """``repr`` tells 1 from 1.0 and True from 1, which ``==`` does not."""
    try:
        return "ok", repr(read(*args))
    except InvalidMessage as err:
        return "invalid", f"{err.field}: {err.reason}"


def test_msgspec_reads_every_valid_station_payload():
    for name in STATION_EXAMPLES:
        kind = examples.KINDS[name]
        text = json.dumps(examples.example(name), ensure_ascii=False)
        fast = m._TYPES[kind].from_json(text, examples.SID)
        assert fast is not None, name
        assert repr(fast) == repr(hand(kind, text, examples.SID))


@pytest.mark.parametrize("kind", FAST_KINDS, ids=str)
def test_msgspec_reads_generated_messages_as_the_hand_reader_does(kind):
    @SETTINGS
    @given(ALL[kind])
    def check(msg):
        text = m.encode(msg).decode()
        fast = type(msg).from_json(text, msg.sid)
        assert fast is not None
        assert repr(fast) == repr(hand(kind, text, msg.sid)) == repr(msg)

    check()


# -- broken payloads ------------------------------------------------------------------

# Values that sit on the rules' edges: types JSON confuses, bounds, the contract's
# words, null, empty things, numbers msgspec or json may read differently.
EDGE_VALUES = st.sampled_from([
    None, True, False, 0, 1, -1, 2, 100, 101, 1.0, 0.5, 1.5, -0.0, 1e308, 2**53, 2**63,
    2**64, -(2**63) - 1, "", "x", "1", "hub", "yh-chumen-01", "Bad Sid", "9f2c01ab",
    "online", "offline", "lost", "shutdown", "ok", "low", "charger_fault", "jammed",
    "bank_borrowed", "visit", examples.RIDER, [], {}, [1], {"a": 1}, "中文",
])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)


def _paths(node, path=()):
    """Every place in a JSON document a value sits, the document itself first."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _dumps(node, dup: dict) -> str:
    """JSON of ``node``, with ``dup[id(obj)] = (key, value)`` written as a second
    ``key`` in that object (which JSON allows and readers take the last of)."""
    if isinstance(node, dict):
        items = [f"{json.dumps(k)}:{_dumps(v, dup)}" for k, v in node.items()]
        if id(node) in dup:
            key, value = dup[id(node)]
            items.append(f"{json.dumps(key)}:{_dumps(value, dup)}")
        return "{" + ",".join(items) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_dumps(v, dup) for v in node) + "]"
    return json.dumps(node, ensure_ascii=False)


@st.composite
def broken(draw):
    """A contract example with one to three things changed: a value replaced, a key
    removed or added, a key written twice."""
    name = draw(st.sampled_from(STATION_EXAMPLES))
    doc = examples.example(name)
    dup: dict = {}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        node = parent[path[-1]] if path else doc
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "twice"]))
        value = copy.deepcopy(draw(EDGE_VALUES | JSON_VALUES))  # sampled_from shares objects
        if action == "replace" and path:
            parent[path[-1]] = value
        elif action == "delete" and path:
            del parent[path[-1]]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.sampled_from([*node, "extra"]) if node else st.just("extra"))] = value
        elif action == "twice" and isinstance(node, dict) and node:
            dup[id(node)] = (draw(st.sampled_from(list(node))), value)
    return examples.KINDS[name], _dumps(doc, dup)


@SETTINGS
@given(broken(), st.sampled_from([None, examples.SID, "yh-other-02"]))
def test_decode_gives_the_hand_readers_verdict_on_broken_payloads(case, topic_sid):
    kind, text = case
    assert verdict(decode, kind, text, topic_sid) == verdict(
        hand, kind, text, topic_sid)


def _event(extra: str) -> str:
    return json.dumps(examples.example("event"))[:-1] + extra + "}"


@pytest.mark.parametrize("text", [
    _event(', "x": "a\\u0001b"'), _event(', "x": "a\x01b"'), _event(', "x": "\t"'),
    _event('} x'), _event(', "x": 1e400'), _event(', "x": -}'), _event(', "x": 01'),
    _event(', "x": 1.'), _event(', "x": .5'), _event(', "x": tru'), _event(', "x": NaN'),
    _event(', "x": Infinity'), _event(', "x": "\\x"'), _event(', "x": "\\ud800"'),
    _event(', "data": {"door": "\\ud800"}'), _event(', "x": ' + "[" * 3000 + "]" * 3000),
    _event(', "seq": 1, "seq": 0'), _event(', "seq": 0, "seq": 5'),
    _event(', "x": 1E+2, "y": -0, "z": 1e-400'), _event(', "ts": 1e2'),
    _event(', "data": {"door": "a", "n": ' + "9" * 5000 + "}"),
    "\ufeff" + _event(""), " " + _event("") + "\n", "[]", "null", "", "{}",
], ids=lambda t: repr(t[-24:]))
def test_decode_gives_the_hand_readers_verdict_on_odd_json(text):
    assert verdict(decode, Kind.EVENT, text, None) == verdict(
        hand, Kind.EVENT, text, None)


def test_the_one_difference_is_an_integer_python_will_not_read_in_an_ignored_field():
    """Python's json refuses integers of more than 4 300 digits (a guard against
    slow conversion); msgspec skips an unknown field without converting it. The
    payload is valid JSON, and nothing reads the field."""
    text = _event(', "x": ' + "9" * 5000)
    assert verdict(hand, Kind.EVENT, text, None)[0] == "invalid"
    assert m.decode(Kind.EVENT, text) == m.decode(Kind.EVENT, _event(""))


def test_floats_too_large_are_refused_by_both_readers():
    state = examples.example("state")
    text = json.dumps(state).replace('"temp_c": 92.5', '"temp_c": 1e999')
    assert math.isinf(json.loads(text)["dispenser"]["temp_c"])
    assert verdict(decode, Kind.STATE, text, None) == (
        "invalid", "dispenser.temp_c: must be a finite number")


@pytest.mark.parametrize("raw", [b"", b"{}", b"\xef\xbb\xbf{}", b"\xef\xbb\xbf\xef\xbb\xbf{}",
                                 b"\xef\xbb", "中文".encode(), b"{\xff}", b"\xef\xbb\xbf{\xff}"])
def test_utf8_text_is_the_utf_8_sig_codec(raw: bytes) -> None:
    try:
        expected: str | type = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        expected = UnicodeDecodeError
    try:
        got: str | type = m.utf8_text(raw)
    except UnicodeDecodeError:
        got = UnicodeDecodeError
    assert got == expected
