"""Message round trips (hypothesis), schema agreement, and the encoder's rules."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import examples
from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import Kind

EXAMPLES = settings(max_examples=200, deadline=None)

VALIDATORS = {
    kind: jsonschema.Draft202012Validator(protocol.load_schema(name))
    for kind, name in examples.SCHEMA_OF.items()
}

# -- strategies -----------------------------------------------------------------------

sids = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,31}\Z").filter(lambda s: s != "hub")
epochs = st.from_regex(r"\A[0-9a-f]{8,32}\Z")
riders = st.from_regex(r"\Ar:[0-9a-f]{24}\Z")
ts = st.integers(0, 2**53)
counts = st.integers(0, 2**53)
words = st.text(min_size=1, max_size=12)  # any Unicode, Chinese included
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

slots = st.builds(
    m.Slot,
    slot=st.integers(1, 64),
    bank=st.none() | words,
    charge=st.none() | st.integers(0, 100),
    charging=st.booleans(),
    locked=st.booleans(),
    fault=st.none() | st.sampled_from(sorted(m.SLOT_FAULTS)),
    temp_c=st.none() | st.integers(-40, 120) | finite,
    cycles=st.none() | counts,
    estimated=st.booleans(),
)
lockers = st.builds(m.Lockers, st.booleans(), st.lists(slots, max_size=12).map(tuple))
dispensers = st.builds(
    m.Dispenser,
    online=st.booleans(),
    level=st.none() | st.floats(0, 1),
    level_state=st.sampled_from(sorted(m.LEVEL_STATES)),
    temp_c=st.none() | finite,
    heater=st.booleans(),
    heater_lockout=st.booleans(),
    fault=st.none() | st.sampled_from(sorted(m.DISPENSER_FAULTS)),
    dispensed_ml=st.none() | counts,
)
healths = st.builds(
    m.Health,
    cpu_temp_c=st.none() | finite,
    undervoltage=st.none() | st.booleans(),
    throttled=st.none() | st.booleans(),
    disk_free_mb=st.none() | counts,
    uptime_s=st.none() | counts,
    outbox=st.none() | counts,
    kiosk=st.none() | words,
)
states = st.builds(
    m.State,
    sid=sids,
    epoch=epochs,
    ts=ts,
    synced=st.booleans(),
    rev=counts,
    last_seq=counts,
    lockers=st.none() | lockers,
    dispenser=st.none() | dispensers,
    doors=st.none() | st.dictionaries(words, st.booleans(), max_size=4),
    health=st.none() | healths,
    counters=st.none() | st.builds(m.Counters, counts, counts, counts),
)

hw = st.fixed_dictionaries(
    {},
    optional={
        "slots": st.integers(0, 64),
        "doors": st.lists(words, max_size=3),
        "dispenser": st.booleans(),
        "camera": json_values,
    },
)
statuses = st.one_of(
    st.builds(m.Status.online, sids, epochs, ts, st.booleans(), counts, counts, words, hw),
    st.builds(m.Status.will, sids, epochs, counts),
    st.builds(
        m.Status.shutdown, sids, epochs, ts, st.booleans(), counts, counts, st.none() | counts
    ),
)

_data_keys = {
    "door": words,
    "slot": st.integers(1, 64),
    "bank": words,
    "charge": st.none() | st.integers(0, 100),
    "rider": riders,
    "staff": words,
    "count": counts,
    "level": st.none() | st.floats(0, 1),
    "level_state": st.sampled_from(sorted(m.LEVEL_STATES)),
    "what": st.sampled_from(sorted(m.REFILL_WHAT)),
    "draws": st.integers(1, 100_000),
    "ml": st.integers(0, 10_000_000),
}
_type_overrides = {
    "bank_borrowed": {"bank": st.none() | words},
    "bank_returned": {"bank": st.none() | words, "rider": st.none() | riders},
    "unlock_failed": {"reason": st.sampled_from(sorted(m.UNLOCK_FAIL_REASONS))},
    "slot_fault": {"fault": st.sampled_from(sorted(m.SLOT_FAULTS))},
    "slot_fault_cleared": {"fault": st.sampled_from(sorted(m.SLOT_FAULTS))},
    "dispenser_fault": {"fault": st.sampled_from(sorted(m.DISPENSER_FAULTS))},
    "dispenser_fault_cleared": {"fault": st.sampled_from(sorted(m.DISPENSER_FAULTS))},
    "heater_lockout": {"reason": words},
    "heater_lockout_cleared": {"reason": words},
}


@st.composite
def event_types_and_data(draw):
    etype = draw(st.sampled_from(sorted(m.EVENT_TYPES)) | st.from_regex(r"\A[a-z0-9_]{1,20}\Z"))
    if etype not in m.EVENT_TYPES:
        return etype, draw(json_objects)
    overrides = _type_overrides.get(etype, {})
    data = {k: draw(overrides.get(k, _data_keys.get(k))) for k in m.EVENT_TYPES[etype]}
    return etype, data


@st.composite
def events(draw):
    etype, data = draw(event_types_and_data())
    return m.Event(draw(sids), draw(epochs), draw(ts), draw(st.booleans()),
                   draw(st.integers(1, 2**53)), etype, data)  # fmt: skip


commands = st.builds(
    m.Command,
    id=words,
    cmd=st.sampled_from(sorted(m.COMMANDS)) | words,
    args=json_objects,
    ts=ts,
    expires=ts,
    by=st.none() | words,
)


@st.composite
def results(draw):
    ok = draw(st.booleans())
    error = None if ok else draw(st.sampled_from(sorted(m.COMMAND_ERRORS)))
    return m.CommandResult(draw(sids), draw(epochs), draw(ts), draw(st.booleans()),
                           draw(counts), draw(words), ok, error,
                           draw(st.none() | json_objects))  # fmt: skip


directories = st.builds(
    m.Directory,
    rev=counts,
    ts=ts,
    policy=st.builds(
        m.Policy,
        lending=st.sampled_from(sorted(m.LENDING_MODES)),
        min_charge=st.integers(0, 100),
        max_per_rider=st.integers(0, 5),
        loan_hours=st.integers(1, 240),
    ),
    riders=st.lists(st.builds(m.RiderEntry, riders, words), max_size=5).map(tuple),
    staff=st.lists(st.builds(m.StaffEntry, words, words, words), max_size=3).map(tuple),
    denied=st.lists(riders, max_size=3).map(tuple),
)
hub_statuses = st.builds(m.HubStatus, st.just("online"), ts) | st.builds(
    m.HubStatus, st.just("offline"), st.none() | ts
)

ALL = {
    Kind.STATUS: statuses,
    Kind.STATE: states,
    Kind.EVENT: events(),
    Kind.CMD: commands,
    Kind.CMD_RESULT: results(),
    Kind.DIRECTORY: directories,
    Kind.HUB_STATUS: hub_statuses,
}


# -- round trips and schema agreement -----------------------------------------------


@pytest.mark.parametrize("kind", list(ALL), ids=str)
def test_round_trip_and_schema(kind):
    @EXAMPLES
    @given(ALL[kind])
    def check(msg):
        raw = m.encode(msg)
        sid = getattr(msg, "sid", None)
        back = m.decode(kind, raw, topic_sid=sid)
        assert back == msg
        assert type(back) is type(msg) and back.KIND is kind
        assert m.encode(back) == raw
        VALIDATORS[kind].validate(json.loads(raw))

    check()


@pytest.mark.parametrize("name", examples.names())
def test_contract_examples_decode_and_validate(name):
    kind = examples.KINDS[name]
    d = examples.example(name)
    msg = m.from_dict(kind, d, topic_sid=examples.SID)
    # Key order and nulls follow the contract, so the example comes back byte for byte.
    assert m.encode(msg) == json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()
    VALIDATORS[kind].validate(d)


def test_schemas_are_valid_draft_2020_12():
    assert set(protocol.SCHEMA_NAMES) == set(examples.SCHEMA_OF.values())
    for name in protocol.SCHEMA_NAMES:
        schema = protocol.load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
    assert (protocol.schemas_dir() / "state.json").is_file()
    assert protocol.load_schema("state.json") == protocol.load_schema("state")
    with pytest.raises(KeyError):
        protocol.load_schema("telemetry")


# -- what the encoder writes ----------------------------------------------------------


def test_encoding_is_compact_utf8_and_keeps_contract_nulls():
    raw = m.encode(m.from_dict(Kind.DIRECTORY, examples.example("directory")))
    assert "李师傅".encode() in raw and b" " not in raw.replace("李师傅".encode(), b"")
    state = m.State("yh-01", "9f2c01ab", 1, True, 2, 0, lockers=m.Lockers(True, (
        m.Slot(1, None, None, False, True, None, None, None),)))  # fmt: skip
    d = json.loads(m.encode(state))
    assert d["lockers"]["slots"][0]["bank"] is None and "bank" in d["lockers"]["slots"][0]
    for section in ("dispenser", "doors", "health", "counters"):
        assert section not in d
    result = json.loads(
        m.encode(m.CommandResult("yh-01", "9f2c01ab", 1, True, 3, "c1", True, None))
    )
    assert result["error"] is None and "data" not in result


def test_health_omits_unknown_fields():
    state = m.State("yh-01", "9f2c01ab", 1, True, 2, 0, health=m.Health(outbox=0))
    assert json.loads(m.encode(state))["health"] == {"outbox": 0}


def test_slot_estimated_is_written_only_when_true_and_must_be_a_bool():
    measured = m.Slot(1, "PB1", 90, False, True, None, None, 3)
    estimated = m.Slot(2, None, 40, True, True, None, None, None, estimated=True)
    state = m.State("yh-01", "9f2c01ab", 1, True, 2, 0,
                    lockers=m.Lockers(True, (measured, estimated)))
    raw = m.encode(state)
    slots = json.loads(raw)["lockers"]["slots"]
    assert "estimated" not in slots[0] and slots[1]["estimated"] is True
    assert m.decode(Kind.STATE, raw, topic_sid="yh-01") == state
    VALIDATORS[Kind.STATE].validate(json.loads(raw))
    d = json.loads(raw)
    for bad in ("yes", 1, 10**30, [], {}):
        d["lockers"]["slots"][1]["estimated"] = bad
        with pytest.raises(InvalidMessage) as info:
            m.from_dict(Kind.STATE, d, topic_sid="yh-01")
        assert info.value.field == "lockers.slots[1].estimated"


def test_encode_refuses_what_a_reader_would_reject():
    bad_slot = m.Slot(1, "PB1", 150, False, True, None, None, None)
    with pytest.raises(InvalidMessage) as info:
        m.encode(m.State("yh-01", "9f2c01ab", 1, True, 2, 0, lockers=m.Lockers(True, (bad_slot,))))
    assert info.value.field == "lockers.slots[0].charge"
    with pytest.raises(InvalidMessage) as info:
        m.encode(m.Status("yh-01", "9f2c01ab", "online", 4, ts=1, synced=True, rev=5, last_seq=0))
    assert info.value.field == "birth"
    with pytest.raises(InvalidMessage):
        m.encode(m.Event("yh-01", "9f2c01ab", 1, True, 1, "visit", {"count": float("nan")}))


def test_encode_refuses_oversize():
    big = m.Event("yh-01", "9f2c01ab", 1, True, 1, "note", {"text": "x" * m.MAX_PAYLOAD})
    with pytest.raises(InvalidMessage) as info:
        m.encode(big)
    assert info.value.field == "" and "exceeds" in info.value.reason


# -- Status forms ---------------------------------------------------------------------


def test_status_constructors():
    online = m.Status.online("yh-01", "9f2c01ab", 10, True, 7, 3, "1.0.0", {"slots": 12})
    assert online.birth == online.rev == 7 and online.is_online and not online.is_will
    assert online.to_dict()["agent"] == {"version": "1.0.0"}
    will = m.Status.will("yh-01", "9f2c01ab", 7)
    assert will.is_will and not will.is_online
    assert set(will.to_dict()) == {"v", "sid", "epoch", "state", "reason", "birth"}
    down = m.Status.shutdown("yh-01", "9f2c01ab", 20, True, 9, 7)
    assert not down.is_will and down.reason == "shutdown"
    for s in (online, will, down):
        assert m.decode(Kind.STATUS, m.encode(s), topic_sid="yh-01") == s


# -- commands -------------------------------------------------------------------------


def _cmd(cmd, args=None):
    return m.Command("c-1", cmd, {} if args is None else args, 1000, 31000)


@pytest.mark.parametrize(
    ("cmd", "args", "verdict"),
    [
        ("unlock", {"slot": 3}, None),
        ("unlock", {"slot": 3, "extra": 1}, None),
        ("unlock", {}, "bad_args"),
        ("unlock", {"slot": 0}, "bad_args"),
        ("unlock", {"slot": True}, "bad_args"),
        ("unlock", {"slot": "3"}, "bad_args"),
        ("unlock", {"slot": 3.0}, "bad_args"),
        ("replay", {"from_seq": 1, "to_seq": 1}, None),
        ("replay", {"from_seq": 5, "to_seq": 9}, None),
        ("replay", {"from_seq": 9, "to_seq": 5}, "bad_args"),
        ("replay", {"from_seq": 0, "to_seq": 5}, "bad_args"),
        ("replay", {"from_seq": 1}, "bad_args"),
        ("replay", {"from_seq": False, "to_seq": 5}, "bad_args"),
        ("rebirth", {}, None),
        ("reload", {"why": "ignored"}, None),
        ("selfdestruct", {}, "unknown_cmd"),
        ("Unlock", {"slot": 3}, "unknown_cmd"),
    ],
)
def test_check_args(cmd, args, verdict):
    assert _cmd(cmd, args).check_args() == verdict


def test_unknown_command_decodes():
    raw = b'{"v":1,"id":"c-9","cmd":"selfdestruct","ts":1,"expires":2}'
    cmd = m.decode("cmd", raw)
    assert cmd.cmd == "selfdestruct" and cmd.args == {} and cmd.check_args() == "unknown_cmd"
    VALIDATORS[Kind.CMD].validate(json.loads(raw))


def test_command_expiry():
    c = _cmd("rebirth")
    assert not c.is_expired(31000) and c.is_expired(31001)


# -- events ---------------------------------------------------------------------------


def test_unknown_event_type_accepted_and_stored():
    raw = m.encode(m.Event("yh-01", "9f2c01ab", 5, False, 7, "coffee_brewed", {"cups": 2}))
    ev = m.decode("event", raw, topic_sid="yh-01")
    assert ev.type == "coffee_brewed" and ev.data == {"cups": 2} and not ev.is_known
    VALIDATORS[Kind.EVENT].validate(json.loads(raw))


def test_event_without_data_object():
    raw = b'{"v":1,"sid":"yh-01","epoch":"9f2c01ab","ts":5,"synced":true,"seq":1,' \
          b'"type":"locker_offline"}'  # fmt: skip
    ev = m.decode(Kind.EVENT, raw)
    assert ev.data == {} and ev.is_known
    VALIDATORS[Kind.EVENT].validate(json.loads(raw))


def test_water_drawn_round_trips_at_its_limits():
    for data in ({"draws": 1, "ml": 0}, {"draws": 100_000, "ml": 10_000_000}):
        raw = m.encode(m.Event("yh-01", "9f2c01ab", 5, True, 7, "water_drawn", data))
        ev = m.decode(Kind.EVENT, raw, topic_sid="yh-01")
        assert ev.is_known and ev.data == data
        VALIDATORS[Kind.EVENT].validate(json.loads(raw))


def test_event_types_constant_matches_contract():
    assert m.EVENT_TYPES["bank_borrowed"] == ("slot", "bank", "charge", "rider")
    assert m.EVENT_TYPES["locker_offline"] == ()
    assert m.EVENT_TYPES["water_drawn"] == ("draws", "ml")
    assert len(m.EVENT_TYPES) == 20


# -- parse() --------------------------------------------------------------------------


def test_parse_topic_and_payload():
    raw = m.encode(m.from_dict(Kind.STATE, examples.example("state")))
    topic, msg = m.parse("yizhan/v1/yh-chumen-01/state", raw)
    assert topic.sid == "yh-chumen-01" and isinstance(msg, m.State)
    with pytest.raises(InvalidMessage) as info:
        m.parse("yizhan/v1/yh-other/state", raw)
    assert info.value.field == "sid"
    with pytest.raises(TopicError):
        m.parse("yizhan/v1/yh-chumen-01/telemetry", raw)
    topic, hub = m.parse("yizhan/v1/hub/status", b'{"v":1,"state":"offline"}')
    assert topic.sid is None and hub == m.HubStatus("offline")


def test_decode_accepts_str_and_kind_names():
    raw = m.encode(m.HubStatus("online", 5))
    assert m.decode("hub/status", raw.decode()) == m.decode(Kind.HUB_STATUS, raw)
    with pytest.raises(TopicError):
        m.decode("telemetry", raw)


# -- the package stands alone ---------------------------------------------------------


def test_protocol_imports_none_of_the_programs():
    import subprocess
    import sys

    code = (
        "import sys, protocol, protocol.frames, protocol.messages, protocol.topics, "
        "protocol.ids, protocol.examples\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "{'firmware', 'hub', 'kiosk', 'yizhan', 'jsonschema', 'paho', 'serial'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "module", ["protocol", "frames", "ids", "topics", "messages", "examples", "errors"]
)
def test_docstring_examples_hold(module):
    import doctest
    import importlib

    mod = importlib.import_module(module if module == "protocol" else f"protocol.{module}")
    assert doctest.testmod(mod).failed == 0


# -- the slot's fast path agrees with its checks --------------------------------------------------

_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 120),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                         st.sampled_from(["charger_fault", "lock_jammed", "PB0012A1", ""]),
                         st.lists(st.integers(), max_size=1))
_SLOT_KEYS = ("slot", "bank", "charge", "charging", "locked", "fault", "temp_c", "cycles")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(_SLOT_KEYS), _JSON_VALUES, max_size=8))
def test_slot_read_takes_only_what_from_dict_takes(d):
    fast = m.Slot.read(d)
    try:
        checked = m.Slot.from_dict(d, "")
    except InvalidMessage:
        checked = None
    # The fast path may pass a good slot on to the checks, never let a bad one in.
    assert fast is None or fast == checked


def test_slot_read_takes_the_common_slot():
    good = {"slot": 3, "bank": "PB0012A1", "charge": 85, "charging": True, "locked": True,
            "fault": None, "temp_c": 31.5, "cycles": 20}
    assert m.Slot.read(good) == m.Slot.from_dict(good, "")
    empty = {**good, "bank": None, "charge": None, "fault": "charger_fault", "temp_c": None}
    assert m.Slot.read(empty) == m.Slot.from_dict(empty, "")
