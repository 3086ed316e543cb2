"""Bad payloads are rejected with the right field, by the decoder and, where JSON
Schema can say it, by the shipped schemas too."""

from __future__ import annotations

import json

import jsonschema
import pytest

import protocol
from protocol import examples
from protocol import messages as m
from protocol.errors import InvalidMessage
from protocol.topics import STATION_TO_HUB, Kind

VALIDATORS = {
    kind: jsonschema.Draft202012Validator(protocol.load_schema(name))
    for kind, name in examples.SCHEMA_OF.items()
}
DELETE = object()
RIDER = examples.RIDER


def mutated(name: str, changes: dict) -> dict:
    """The named example with ``{"a.b.0.c": value}`` changes applied (DELETE removes)."""
    d = examples.example(name)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = d
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return d


# (example, changes, field named by the decoder, whether the schema can express it)
CASES = [
    # envelope
    ("status", {"sid": DELETE}, "sid", True),
    ("status", {"sid": "Bad Sid"}, "sid", True),
    ("status", {"sid": "hub"}, "sid", True),
    ("status", {"sid": 12}, "sid", True),
    ("status", {"epoch": "9F2C01AB"}, "epoch", True),
    ("status", {"epoch": "9f2c"}, "epoch", True),
    ("status", {"epoch": DELETE}, "epoch", True),
    ("status", {"v": 2}, "v", True),
    ("status", {"v": DELETE}, "v", True),
    ("status", {"v": True}, "v", True),
    ("status", {"v": "1"}, "v", True),
    ("state", {"v": 1.0}, "v", False),  # JSON Schema counts 1.0 as an integer
    # Status
    ("status", {"ts": DELETE}, "ts", True),
    ("status", {"rev": True}, "rev", True),  # a bool is no int
    ("status", {"rev": 5012.0}, "rev", False),
    ("status", {"rev": "5012"}, "rev", True),
    ("status", {"synced": 1}, "synced", True),  # nor an int a bool
    ("status", {"last_seq": DELETE}, "last_seq", True),
    ("status", {"state": "sleeping"}, "state", True),
    ("status", {"birth": 5011}, "birth", False),  # birth must equal rev
    ("status", {"hw.slots": "12"}, "hw.slots", True),
    ("status", {"hw.doors.0": ""}, "hw.doors[0]", True),
    ("status", {"hw": []}, "hw", True),
    ("status", {"agent.version": 1}, "agent.version", True),
    ("will", {"reason": DELETE}, "reason", True),
    ("will", {"reason": "crashed"}, "reason", True),
    ("will", {"birth": DELETE}, "birth", True),
    ("will", {"birth": -1}, "birth", True),
    ("shutdown", {"rev": DELETE}, "rev", True),
    ("shutdown", {"ts": DELETE}, "ts", True),
    ("shutdown", {"synced": None}, "synced", True),
    # State
    ("state", {"rev": DELETE}, "rev", True),
    ("state", {"rev": "5013"}, "rev", True),
    ("state", {"ts": 1.5}, "ts", True),
    ("state", {"ts": -1}, "ts", True),
    ("state", {"synced": "true"}, "synced", True),
    ("state", {"last_seq": DELETE}, "last_seq", True),
    ("state", {"lockers": []}, "lockers", True),
    ("state", {"lockers.online": DELETE}, "lockers.online", True),
    ("state", {"lockers.slots": {}}, "lockers.slots", True),
    ("state", {"lockers.slots.0": "slot"}, "lockers.slots[0]", True),
    ("state", {"lockers.slots.1.charge": 101}, "lockers.slots[1].charge", True),
    ("state", {"lockers.slots.0.charge": True}, "lockers.slots[0].charge", True),
    ("state", {"lockers.slots.0.charge": 96.5}, "lockers.slots[0].charge", True),
    ("state", {"lockers.slots.0.slot": 0}, "lockers.slots[0].slot", True),
    ("state", {"lockers.slots.0.bank": DELETE}, "lockers.slots[0].bank", True),
    ("state", {"lockers.slots.0.bank": ""}, "lockers.slots[0].bank", True),
    ("state", {"lockers.slots.0.fault": "smoke"}, "lockers.slots[0].fault", True),
    ("state", {"lockers.slots.0.locked": None}, "lockers.slots[0].locked", True),
    ("state", {"lockers.slots.0.temp_c": "29"}, "lockers.slots[0].temp_c", True),
    ("state", {"lockers.slots.0.cycles": -1}, "lockers.slots[0].cycles", True),
    ("state", {"dispenser.level": 1.5}, "dispenser.level", True),
    ("state", {"dispenser.level": False}, "dispenser.level", True),
    ("state", {"dispenser.level_state": "full"}, "dispenser.level_state", True),
    ("state", {"dispenser.fault": "leak"}, "dispenser.fault", True),
    ("state", {"dispenser.heater": "on"}, "dispenser.heater", True),
    ("state", {"dispenser.heater_lockout": DELETE}, "dispenser.heater_lockout", True),
    ("state", {"dispenser.dispensed_ml": 1.5}, "dispenser.dispensed_ml", True),
    ("state", {"doors.entrance": "open"}, "doors.entrance", True),
    ("state", {"doors": ["entrance"]}, "doors", True),
    ("state", {"health.uptime_s": -1}, "health.uptime_s", True),
    ("state", {"health.outbox": False}, "health.outbox", True),
    ("state", {"health.undervoltage": 0}, "health.undervoltage", True),
    ("state", {"counters.visits": DELETE}, "counters.visits", True),
    ("state", {"counters.borrows": True}, "counters.borrows", True),
    # Event
    ("event", {"seq": 0}, "seq", True),
    ("event", {"seq": DELETE}, "seq", True),
    ("event", {"seq": True}, "seq", True),
    ("event", {"type": ""}, "type", True),
    ("event", {"type": "Bank-Borrowed"}, "type", True),
    ("event", {"type": DELETE}, "type", True),
    ("event", {"data": []}, "data", True),
    ("event", {"data": DELETE}, "data.slot", True),
    ("event", {"data.slot": DELETE}, "data.slot", True),
    ("event", {"data.slot": "3"}, "data.slot", True),
    ("event", {"data.bank": ""}, "data.bank", True),  # null where ids cannot be read
    ("event", {"data.bank": 7}, "data.bank", True),
    ("event", {"data.charge": 120}, "data.charge", True),
    ("event", {"data.rider": "13800138000"}, "data.rider", True),  # raw phones never leave
    ("event", {"data.rider": None}, "data.rider", True),  # null only when returned
    (
        "event",
        {"type": "unlock_failed", "data": {"slot": 1, "reason": "gremlins"}},
        "data.reason",
        True,
    ),
    ("event", {"type": "slot_fault", "data": {"slot": 1, "fault": "sensor"}}, "data.fault", True),
    ("event", {"type": "dispenser_fault", "data": {"fault": "overheat"}}, "data.fault", True),
    (
        "event",
        {"type": "water_level", "data": {"level_state": "brimming", "level": 0.5}},
        "data.level_state",
        True,
    ),
    ("event", {"type": "water_level", "data": {"level_state": "low"}}, "data.level", True),
    ("event", {"type": "refilled", "data": {"what": "coffee", "staff": "li"}}, "data.what", True),
    ("event", {"type": "refilled", "data": {"what": "water"}}, "data.staff", True),
    ("event", {"type": "visit", "data": {}}, "data.count", True),
    ("event", {"type": "water_drawn", "data": {"ml": 250}}, "data.draws", True),
    ("event", {"type": "water_drawn", "data": {"draws": 1}}, "data.ml", True),
    ("event", {"type": "water_drawn", "data": {"draws": 0, "ml": 0}}, "data.draws", True),
    ("event", {"type": "water_drawn", "data": {"draws": -1, "ml": 250}}, "data.draws", True),
    ("event", {"type": "water_drawn", "data": {"draws": 1, "ml": -250}}, "data.ml", True),
    ("event", {"type": "water_drawn", "data": {"draws": 1, "ml": 10**30}}, "data.ml", True),
    ("event", {"type": "water_drawn", "data": {"draws": 10**30, "ml": 1}}, "data.draws", True),
    ("event", {"type": "water_drawn", "data": {"draws": 100_001, "ml": 1}}, "data.draws", True),
    ("event", {"type": "water_drawn", "data": {"draws": 1, "ml": 10_000_001}}, "data.ml", True),
    ("event", {"type": "water_drawn", "data": {"draws": 1, "ml": 2.5}}, "data.ml", True),
    ("event", {"type": "water_drawn", "data": {"draws": True, "ml": 1}}, "data.draws", True),
    ("event", {"type": "door_opened", "data": {"door": 1}}, "data.door", True),
    ("event", {"type": "heater_lockout", "data": {}}, "data.reason", True),
    # Command
    ("command", {"id": DELETE}, "id", True),
    ("command", {"id": ""}, "id", True),
    ("command", {"cmd": DELETE}, "cmd", True),
    ("command", {"cmd": ""}, "cmd", True),
    ("command", {"args": []}, "args", True),
    ("command", {"ts": DELETE}, "ts", True),
    ("command", {"expires": "soon"}, "expires", True),
    ("command", {"expires": True}, "expires", True),
    ("command", {"by": 5}, "by", True),
    ("command", {"v": 2}, "v", True),
    # CommandResult
    ("command_result", {"rev": DELETE}, "rev", True),
    ("command_result", {"id": DELETE}, "id", True),
    ("command_result", {"ok": "yes"}, "ok", True),
    ("command_result", {"error": DELETE}, "error", True),
    ("command_result", {"error": "jammed"}, "error", True),  # ok true needs error null
    ("command_result", {"ok": False}, "error", True),  # ok false needs an error
    ("command_result", {"ok": False, "error": "exploded"}, "error", True),
    ("command_result", {"data": "slot 3"}, "data", True),
    # Directory
    ("directory", {"rev": DELETE}, "rev", True),
    ("directory", {"ts": "now"}, "ts", True),
    ("directory", {"policy": "open"}, "policy", True),
    ("directory", {"policy.lending": "closed"}, "policy.lending", True),
    ("directory", {"policy.min_charge": 120}, "policy.min_charge", True),
    ("directory", {"policy.loan_hours": 0}, "policy.loan_hours", True),
    ("directory", {"riders": {}}, "riders", True),
    ("directory", {"riders.0": "r:x"}, "riders[0]", True),
    ("directory", {"riders.0.id": "13800138000"}, "riders[0].id", True),
    ("directory", {"riders.0.pin": DELETE}, "riders[0].pin", True),
    ("directory", {"staff.0.name": DELETE}, "staff[0].name", True),
    ("directory", {"denied.0": "someone"}, "denied[0]", True),
    # HubStatus
    ("hub_status", {"state": "maybe"}, "state", True),
    ("hub_status", {"ts": DELETE}, "ts", True),
    ("hub_status", {"v": "1"}, "v", True),
    ("hub_status_offline", {"state": DELETE}, "state", True),
    # Every number must fit the hub's 64-bit columns (10**20 was stored as held,
    # then dropped by the writer: an event lost for good).
    ("event", {"ts": 10**20}, "ts", True),
    ("event", {"seq": 2**63}, "seq", True),
    ("state", {"rev": 10**30}, "rev", True),
    ("status", {"birth": 10**30}, "birth", True),
    ("command_result", {"rev": 2**64}, "rev", True),
    ("hub_time", {"ts": 10**30}, "ts", True),
    # A slot is one byte on the board (YZ-LB1): 1..255 wherever it appears.
    ("state", {"lockers.slots.0.slot": 256}, "lockers.slots[0].slot", True),
    ("state", {"lockers.slots.0.slot": 2**63 - 1}, "lockers.slots[0].slot", True),
    ("event", {"data.slot": 256}, "data.slot", True),
    ("event", {"type": "slot_fault", "data": {"slot": 300, "fault": "comm"}}, "data.slot", True),
]


@pytest.mark.parametrize(("name", "changes", "field", "schema_can"), CASES)
def test_invalid_field_rejected(name, changes, field, schema_can):
    kind = examples.KINDS[name]
    d = mutated(name, changes)
    raw = json.dumps(d, ensure_ascii=False).encode()
    with pytest.raises(InvalidMessage) as info:
        m.decode(kind, raw, topic_sid=examples.SID)
    assert info.value.field == field, info.value
    assert info.value.reason and str(info.value) == f"{field}: {info.value.reason}"
    assert isinstance(info.value, ValueError)
    if schema_can:
        assert not VALIDATORS[kind].is_valid(d), f"schema accepts {changes}"
    else:
        assert VALIDATORS[kind].is_valid(d)


@pytest.mark.parametrize("kind", STATION_TO_HUB, ids=str)
def test_sid_must_match_topic(kind):
    name = {Kind.STATUS: "status", Kind.STATE: "state", Kind.EVENT: "event",
            Kind.CMD_RESULT: "command_result"}[kind]  # fmt: skip
    raw = json.dumps(examples.example(name))
    with pytest.raises(InvalidMessage) as info:
        m.decode(kind, raw, topic_sid="yh-other-02")
    assert info.value.field == "sid" and "topic" in info.value.reason
    m.decode(kind, raw, topic_sid=examples.SID)  # the right one passes


WHOLE = [
    (b"", "not valid"),
    (b"not json", "not valid"),
    (b'{"v":1', "not valid"),
    (b"[1, 2]", "got array"),
    (b'"state"', "got string"),
    (b"42", "got int"),
    (b"null", "got null"),
    (b"\xff\xfe{}", "not valid"),
    (b'{"v":1,"ts":NaN}', "not valid"),
    (b'{"v":1,"ts":Infinity}', "not valid"),
    (b"[" * 20000 + b"]" * 20000, "not valid"),
    (b'{"pad":"' + b"x" * m.MAX_PAYLOAD + b'"}', "exceeds"),
]


@pytest.mark.parametrize("kind", list(Kind), ids=str)
@pytest.mark.parametrize(("raw", "reason"), WHOLE, ids=lambda x: repr(x)[:24])
def test_whole_payload_rejected(kind, raw, reason):
    with pytest.raises(InvalidMessage) as info:
        m.decode(kind, raw, topic_sid=examples.SID)
    assert info.value.field == ""
    assert reason in info.value.reason


def test_payloads_are_utf8_as_the_contract_says():
    text = json.dumps({**examples.example("event"), "type": "note", "data": {"who": "李师傅"}},
                      ensure_ascii=False)
    assert m.decode(Kind.EVENT, text.encode("utf-8")).data == {"who": "李师傅"}
    # A UTF-8 byte-order mark is tolerated (RFC 8259: a parser may ignore it).
    assert m.decode(Kind.EVENT, b"\xef\xbb\xbf" + text.encode("utf-8")).seq
    assert m.decode(Kind.EVENT, bytearray(text.encode("utf-8"))).seq
    assert m.decode(Kind.EVENT, memoryview(text.encode("utf-8"))).seq
    # json.loads alone would take UTF-16 and UTF-32; contract §2 says UTF-8.
    for other in ("utf-16", "utf-32", "gbk"):
        with pytest.raises(InvalidMessage, match="not valid UTF-8 JSON"):
            m.decode(Kind.EVENT, text.encode(other))


def test_size_limit_is_in_utf8_bytes():
    # 30 000 Chinese characters are 90 000 UTF-8 bytes: too big even as a str.
    d = {**examples.example("event"), "type": "note", "data": {"t": "驿" * 30000}}
    with pytest.raises(InvalidMessage, match="exceeds"):
        m.decode(Kind.EVENT, json.dumps(d, ensure_ascii=False))
    d["data"] = {"t": "驿" * 20000}  # 60 000 bytes: fine
    assert m.decode(Kind.EVENT, json.dumps(d, ensure_ascii=False)).data["t"][0] == "驿"


@pytest.mark.parametrize("name", examples.names())
def test_unknown_fields_ignored_everywhere(name):
    kind = examples.KINDS[name]
    expected = m.from_dict(kind, examples.example(name), topic_sid=examples.SID)
    d = examples.example(name)
    d["added_in_v1_1"] = {"anything": [1, 2]}
    # (Status.agent and .hw, Event.data and Command.args are open objects kept whole.)
    for section in ("lockers", "dispenser", "health", "counters", "policy"):
        if isinstance(d.get(section), dict):
            d[section]["future"] = True
    for row in d.get("lockers", {}).get("slots", []) + d.get("riders", []) + d.get("staff", []):
        row["future"] = "x"
    if kind is Kind.EVENT:
        d["data"]["future"] = 1
        expected = m.Event(**{**{f: getattr(expected, f) for f in expected.__slots__},
                              "data": d["data"]})  # fmt: skip
    got = m.from_dict(kind, d, topic_sid=examples.SID)
    assert got == expected
    assert VALIDATORS[kind].is_valid(d)


def test_null_optional_sections_read_as_absent():
    d = examples.example("state")
    d["dispenser"] = None
    assert m.from_dict(Kind.STATE, d).dispenser is None
