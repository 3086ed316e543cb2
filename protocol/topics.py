"""The MQTT topic grammar of contract §2, the one place that builds topic strings.

>>> topic("yh-chumen-01", Kind.CMD_RESULT)
'yizhan/v1/yh-chumen-01/cmd/result'
>>> parse_topic("yizhan/v1/yh-chumen-01/state")
Topic(sid='yh-chumen-01', kind=<Kind.STATE: 'state'>)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import InvalidIdentifier, TopicError
from protocol.ids import check_sid

__all__ = [
    "HUB_STATUS_TOPIC",
    "HUB_TIME_TOPIC",
    "HUB_TO_STATION",
    "PREFIX",
    "QOS",
    "RETAINED",
    "STATION_TO_HUB",
    "Kind",
    "Topic",
    "hub_subscriptions",
    "parse_topic",
    "station_subscriptions",
    "topic",
]

PREFIX = "yizhan/v1"
HUB_STATUS_TOPIC = f"{PREFIX}/hub/status"
#: The hub's time beacon (docs/protocol.md): how a station with an unsynced
#: clock still knows a command is stale.
HUB_TIME_TOPIC = f"{PREFIX}/hub/time"
QOS = 1


class Kind(StrEnum):
    """What a topic carries; the value is the topic's tail after ``{sid}/``."""

    STATUS = "status"
    STATE = "state"
    EVENT = "event"
    CMD = "cmd"
    CMD_RESULT = "cmd/result"
    DIRECTORY = "directory"
    HUB_STATUS = "hub/status"
    HUB_TIME = "hub/time"


#: The hub's own topics, which carry no station id.
HUB_KINDS = {Kind.HUB_STATUS: HUB_STATUS_TOPIC, Kind.HUB_TIME: HUB_TIME_TOPIC}
_HUB_TOPICS = {t: k for k, t in HUB_KINDS.items()}

STATION_TO_HUB = (Kind.STATUS, Kind.STATE, Kind.EVENT, Kind.CMD_RESULT)
HUB_TO_STATION = (Kind.CMD, Kind.DIRECTORY)

RETAINED: dict[Kind, bool] = {
    Kind.STATUS: True,
    Kind.STATE: True,
    Kind.EVENT: False,
    Kind.CMD: False,
    Kind.CMD_RESULT: False,
    Kind.DIRECTORY: True,
    Kind.HUB_STATUS: True,
    Kind.HUB_TIME: True,
}

_PREFIX_SLASH = PREFIX + "/"
_STATION_KINDS = {k.value: k for k in Kind if k not in HUB_KINDS}


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: ``sid`` is None only for the hub's own topics."""

    sid: str | None
    kind: Kind

    def __str__(self) -> str:
        if self.kind in HUB_KINDS:
            return HUB_KINDS[self.kind]
        return f"{_PREFIX_SLASH}{self.sid}/{self.kind.value}"


def _kind(kind: Kind | str) -> Kind:
    try:
        return Kind(kind)
    except ValueError:
        raise TopicError(f"unknown topic kind {kind!r}") from None


def topic(sid: str, kind: Kind | str) -> str:
    """The topic of ``kind`` for station ``sid`` (raises InvalidIdentifier on a bad sid).

    The hub's own topics have no sid: use :data:`HUB_STATUS_TOPIC`, :data:`HUB_TIME_TOPIC`.
    """
    k = _kind(kind)
    if k in HUB_KINDS:
        raise TopicError(f"{k.value} is not a station topic; use {HUB_KINDS[k]}")
    return f"{_PREFIX_SLASH}{check_sid(sid)}/{k.value}"


def parse_topic(topic: str) -> Topic:
    """Split a received topic into sid and kind; TopicError for anything off-grammar."""
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a string, got {type(topic).__name__}")
    hub_kind = _HUB_TOPICS.get(topic)
    if hub_kind is not None:
        return Topic(None, hub_kind)
    if not topic.startswith(_PREFIX_SLASH):
        raise TopicError(f"topic {topic!r} is not under {_PREFIX_SLASH}")
    sid, sep, tail = topic[len(_PREFIX_SLASH) :].partition("/")
    if not sep:
        raise TopicError(f"topic {topic!r} has no kind after the station id")
    kind = _STATION_KINDS.get(tail)
    if kind is None:
        raise TopicError(f"topic {topic!r}: unknown kind {tail!r}")
    try:
        check_sid(sid)
    except InvalidIdentifier as err:
        raise TopicError(f"topic {topic!r}: {err}") from err
    return Topic(sid, kind)


def hub_subscriptions(shared_group: str | None = None) -> list[tuple[str, int]]:
    """What the hub subscribes to: every station's outbound kinds at QoS 1.

    With ``shared_group`` several hub workers share the load through MQTT 5 /
    EMQX shared subscriptions (``$share/{group}/...``).
    """
    prefix = ""
    if shared_group is not None:
        if not shared_group or any(c in shared_group for c in "/+#"):
            raise TopicError(f"shared group {shared_group!r} must be non-empty without / + #")
        prefix = f"$share/{shared_group}/"
    return [(f"{prefix}{_PREFIX_SLASH}+/{k.value}", QOS) for k in STATION_TO_HUB]


def station_subscriptions(sid: str) -> list[tuple[str, int]]:
    """What a station subscribes to: its own cmd and directory, the hub's status
    and the hub's time beacon (QoS 0: a lost beacon is replaced by the next)."""
    return [
        (topic(sid, Kind.CMD), QOS),
        (topic(sid, Kind.DIRECTORY), QOS),
        (HUB_STATUS_TOPIC, QOS),
        (HUB_TIME_TOPIC, 0),
    ]
