"""The topic grammar of contract §2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import topics as t
from protocol.errors import InvalidIdentifier, TopicError

STATION_KINDS = [k for k in t.Kind if k not in t.HUB_KINDS]
sids = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,31}\Z").filter(lambda s: s != "hub")


@settings(max_examples=200, deadline=None)
@given(sids, st.sampled_from(STATION_KINDS))
def test_build_parse_round_trip(sid, kind):
    s = t.topic(sid, kind)
    assert s == f"yizhan/v1/{sid}/{kind.value}"
    parsed = t.parse_topic(s)
    assert parsed == t.Topic(sid, kind)
    assert str(parsed) == s


def test_exact_topics():
    assert t.topic("yh-chumen-01", t.Kind.STATUS) == "yizhan/v1/yh-chumen-01/status"
    assert t.topic("yh-chumen-01", "cmd/result") == "yizhan/v1/yh-chumen-01/cmd/result"
    assert t.parse_topic("yizhan/v1/yh-chumen-01/cmd/result").kind is t.Kind.CMD_RESULT
    assert t.parse_topic("yizhan/v1/yh-chumen-01/cmd").kind is t.Kind.CMD


def test_hub_status_topic():
    assert t.HUB_STATUS_TOPIC == "yizhan/v1/hub/status"
    assert t.parse_topic(t.HUB_STATUS_TOPIC) == t.Topic(None, t.Kind.HUB_STATUS)
    assert str(t.Topic(None, t.Kind.HUB_STATUS)) == t.HUB_STATUS_TOPIC
    with pytest.raises(TopicError):
        t.topic("yh-01", t.Kind.HUB_STATUS)


def test_hub_time_topic():
    assert t.HUB_TIME_TOPIC == "yizhan/v1/hub/time"
    assert t.parse_topic(t.HUB_TIME_TOPIC) == t.Topic(None, t.Kind.HUB_TIME)
    assert str(t.Topic(None, t.Kind.HUB_TIME)) == t.HUB_TIME_TOPIC
    with pytest.raises(TopicError):
        t.topic("yh-01", t.Kind.HUB_TIME)


def test_topic_rejects_bad_sid_and_kind():
    with pytest.raises(InvalidIdentifier):
        t.topic("Bad", t.Kind.STATE)
    with pytest.raises(InvalidIdentifier):
        t.topic("hub", t.Kind.STATE)  # reserved: would be yizhan/v1/hub/status
    with pytest.raises(TopicError):
        t.topic("yh-01", "telemetry")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "yizhan/v1",
        "yizhan/v1/",
        "yizhan/v1/yh-01",
        "yizhan/v1/yh-01/",
        "yizhan/v2/yh-01/state",
        "Yizhan/v1/yh-01/state",
        "yizhan/v1/yh-01/telemetry",
        "yizhan/v1/yh-01/cmd/result/x",
        "yizhan/v1/yh-01/state/",
        "yizhan/v1/YH-01/state",
        "yizhan/v1/+/state",
        "yizhan/v1/#",
        "yizhan/v1//state",
        "yizhan/v1/hub/state",
        "yizhan/v1/hub/cmd",
        "/yizhan/v1/yh-01/state",
        "yizhan/v1/hub/status/x",
    ],
)
def test_parse_rejects(topic):
    with pytest.raises(TopicError):
        t.parse_topic(topic)


def test_parse_rejects_non_string():
    with pytest.raises(TopicError):
        t.parse_topic(b"yizhan/v1/yh-01/state")


def test_hub_subscriptions():
    assert t.hub_subscriptions() == [
        ("yizhan/v1/+/status", 1),
        ("yizhan/v1/+/state", 1),
        ("yizhan/v1/+/event", 1),
        ("yizhan/v1/+/cmd/result", 1),
    ]
    shared = t.hub_subscriptions("hub")
    assert shared[0] == ("$share/hub/yizhan/v1/+/status", 1)
    assert len(shared) == 4
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(TopicError):
            t.hub_subscriptions(bad)


def test_station_subscriptions():
    assert t.station_subscriptions("yh-01") == [
        ("yizhan/v1/yh-01/cmd", 1),
        ("yizhan/v1/yh-01/directory", 1),
        ("yizhan/v1/hub/status", 1),
        ("yizhan/v1/hub/time", 0),
    ]


def test_qos_and_retain_per_kind():
    assert t.QOS == 1
    assert set(t.RETAINED) == set(t.Kind)
    assert {k for k, r in t.RETAINED.items() if r} == {
        t.Kind.STATUS,
        t.Kind.STATE,
        t.Kind.DIRECTORY,
        t.Kind.HUB_STATUS,
        t.Kind.HUB_TIME,
    }
    assert t.STATION_TO_HUB == (t.Kind.STATUS, t.Kind.STATE, t.Kind.EVENT, t.Kind.CMD_RESULT)
