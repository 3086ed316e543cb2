"""Typed MQTT payloads of contract §4–§9, their validation and their JSON form.

    >>> from protocol.messages import Event, decode, encode
    >>> ev = Event("yh-chumen-01", "9f2c01ab", 1764196800456, True, 1, "locker_offline", {})
    >>> decode("event", encode(ev), topic_sid="yh-chumen-01") == ev
    True

Decoding ignores unknown fields and names the offending field on any error
(:class:`~protocol.errors.InvalidMessage`, ``.field`` like ``"lockers.slots[1].charge"``
with 0-based array indexes). What stations send is read by msgspec first (in C,
against the types of the dataclasses below); what it refuses, the hand readers
(``from_dict``) accept or explain, so both say the same (see :func:`decode`).
Encoding validates too, so a program cannot publish what its peers would reject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import msgspec

from protocol._directory import LENDING_MODES, Directory, Policy, RiderEntry, StaffEntry
from protocol._events import EVENT_TYPES, REFILL_WHAT, UNLOCK_FAIL_REASONS, Event
from protocol._fields import (
    EPOCH_FORM,
    MAX_INT,
    MAX_SLOT,
    NULLABLE,
    OPT,
    REQ,
    VERSION,
    Count,
    Envelope,
    Header,
    NonEmpty,
    check_sid,
    check_v,
    env_dict,
    envelope,
    is_int,
    read_bool,
    read_int,
    read_list,
    read_obj,
    read_str,
    read_wire,
    type_name,
)
from protocol._state import (
    DISPENSER_FAULTS,
    LEVEL_STATES,
    SLOT_FAULTS,
    Counters,
    Dispenser,
    Health,
    Lockers,
    Slot,
    State,
)
from protocol.errors import InvalidMessage, TopicError
from protocol.ids import EPOCH_RE
from protocol.topics import Kind, Topic, parse_topic

__all__ = [
    "COMMANDS",
    "COMMAND_ERRORS",
    "DISPENSER_FAULTS",
    "EVENT_TYPES",
    "LENDING_MODES",
    "LEVEL_STATES",
    "MAX_INT",
    "MAX_PAYLOAD",
    "MAX_REPLAY_SPAN",
    "MAX_SLOT",
    "REFILL_WHAT",
    "SLOT_FAULTS",
    "UNLOCK_FAIL_REASONS",
    "VERSION",
    "Command",
    "CommandResult",
    "Counters",
    "Directory",
    "Dispenser",
    "Event",
    "Health",
    "HubStatus",
    "HubTime",
    "Lockers",
    "Message",
    "Policy",
    "RiderEntry",
    "Slot",
    "StaffEntry",
    "State",
    "Status",
    "decode",
    "encode",
    "from_dict",
    "parse",
    "utf8_text",
]

MAX_PAYLOAD = 65536

StatusState = Literal["online", "offline"]
STATUS_STATES = frozenset(get_args(StatusState))
OFFLINE_REASONS = frozenset({"lost", "shutdown"})
HUB_STATES = frozenset({"online", "offline"})
CommandError = Literal["expired", "bad_args", "unknown_cmd", "jammed", "board_offline", "busy"]
COMMAND_ERRORS = frozenset(get_args(CommandError))
# The commands of contract §7 with the args each needs.
COMMANDS: dict[str, tuple[str, ...]] = {
    "unlock": ("slot",),
    "rebirth": (),
    "replay": ("from_seq", "to_seq"),
    "reload": (),
}
#: The most events one ``replay`` may ask for (``to_seq - from_seq + 1``): the
#: hub's own ``replay_max`` tops out here, and a station queues a few at most.
MAX_REPLAY_SPAN = 100_000


# -- §4 Status ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """A station's birth (online) or death (offline: last will or clean shutdown).

    >>> Status.will("yh-chumen-01", "9f2c01ab", 5012).to_dict()["reason"]
    'lost'
    """

    KIND: ClassVar[Kind] = Kind.STATUS

    sid: str
    epoch: str
    state: str
    birth: int
    ts: int | None = None
    synced: bool | None = None
    rev: int | None = None
    last_seq: int | None = None
    reason: str | None = None
    agent: dict[str, Any] | None = None
    hw: dict[str, Any] | None = None
    v: int = VERSION

    @property
    def is_will(self) -> bool:
        """True for the last-will form (offline, reason ``lost``)."""
        return self.state == "offline" and self.reason == "lost"

    @property
    def is_online(self) -> bool:
        return self.state == "online"

    @classmethod
    def online(
        cls,
        sid: str,
        epoch: str,
        ts: int,
        synced: bool,
        rev: int,
        last_seq: int,
        agent_version: str,
        hw: dict[str, Any],
    ) -> Status:
        """The birth published after every connect; its ``birth`` is its own ``rev``."""
        return cls(
            sid=sid,
            epoch=epoch,
            state="online",
            birth=rev,
            ts=ts,
            synced=synced,
            rev=rev,
            last_seq=last_seq,
            agent={"version": agent_version},
            hw=dict(hw),
        )

    @classmethod
    def will(cls, sid: str, epoch: str, birth: int) -> Status:
        """The last will set before connecting with birth ``birth`` (no ts, synced, rev)."""
        return cls(sid=sid, epoch=epoch, state="offline", birth=birth, reason="lost")

    @classmethod
    def shutdown(
        cls,
        sid: str,
        epoch: str,
        ts: int,
        synced: bool,
        rev: int,
        birth: int,
        last_seq: int | None = None,
    ) -> Status:
        """The offline status a clean shutdown publishes before disconnecting."""
        return cls(
            sid=sid,
            epoch=epoch,
            state="offline",
            birth=birth,
            ts=ts,
            synced=synced,
            rev=rev,
            last_seq=last_seq,
            reason="shutdown",
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": self.v, "sid": self.sid, "epoch": self.epoch}
        if self.ts is not None:
            d["ts"] = self.ts
        if self.synced is not None:
            d["synced"] = self.synced
        if self.rev is not None:
            d["rev"] = self.rev
        d["state"] = self.state
        if self.reason is not None:
            d["reason"] = self.reason
        d["birth"] = self.birth
        if self.last_seq is not None:
            d["last_seq"] = self.last_seq
        if self.agent is not None:
            d["agent"] = self.agent
        if self.hw is not None:
            d["hw"] = self.hw
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> Status:
        check_v(d)
        sid = check_sid(d, topic_sid)
        epoch = read_str(d, "epoch", "", pattern=EPOCH_RE, form=EPOCH_FORM)
        state = read_str(d, "state", "", choices=STATUS_STATES)
        birth = read_int(d, "birth", "", lo=0)
        agent = read_obj(d, "agent", "", OPT)
        hw = read_obj(d, "hw", "", OPT)
        _check_agent_hw(agent, hw)
        if state == "online":
            ts = read_int(d, "ts", "", lo=0)
            synced = read_bool(d, "synced", "")
            rev = read_int(d, "rev", "", lo=0)
            last_seq = read_int(d, "last_seq", "", lo=0)
            if birth != rev:
                raise InvalidMessage("birth", f"must equal rev ({rev}) when online, got {birth}")
            reason = None
        else:
            reason = read_str(d, "reason", "", choices=OFFLINE_REASONS)
            # The will is composed before the connection it outlives: no clock, no rev.
            mode = OPT if reason == "lost" else REQ
            ts = read_int(d, "ts", "", mode, lo=0)
            synced = read_bool(d, "synced", "", mode)
            rev = read_int(d, "rev", "", mode, lo=0)
            last_seq = read_int(d, "last_seq", "", OPT, lo=0)
        return cls(sid, epoch, state, birth, ts, synced, rev, last_seq, reason, agent, hw)

    @classmethod
    def from_json(cls, text: str, topic_sid: str | None = None) -> Status | None:
        """The Status msgspec reads from ``text``, or None when it refuses or a rule
        of :meth:`from_dict` does: then that judges, and says why."""
        w = read_wire(_STATUS_WIRE, text, topic_sid)
        if w is None:
            return None
        try:
            _check_agent_hw(w.agent, w.hw)
        except InvalidMessage:
            return None
        if w.state == "online":
            if (w.ts is None or w.synced is None or w.rev is None or w.last_seq is None
                    or w.birth != w.rev):
                return None
            reason = None  # not read when online, whatever it is
        else:
            reason = w.reason
            if type(reason) is not str or reason not in OFFLINE_REASONS:
                return None
            if reason != "lost" and (w.ts is None or w.synced is None or w.rev is None):
                return None
        return cls(w.sid, w.epoch, w.state, w.birth, w.ts, w.synced, w.rev, w.last_seq, reason,
                   w.agent, w.hw)


def _check_agent_hw(agent: dict | None, hw: dict | None) -> None:
    if agent is not None:
        read_str(agent, "version", "agent.", OPT)
    if hw is not None:
        read_int(hw, "slots", "hw.", OPT, lo=0)
        read_bool(hw, "dispenser", "hw.", OPT)
        doors = read_list(hw, "doors", "hw.", OPT)
        for i, door in enumerate(doors or ()):
            if not isinstance(door, str) or not door:
                raise InvalidMessage(f"hw.doors[{i}]", "must be a non-empty string")


class _StatusWire(Header):
    state: StatusState
    birth: Count
    ts: Count | None = None
    synced: bool | None = None
    rev: Count | None = None
    last_seq: Count | None = None
    reason: Any = None
    agent: dict[str, Any] | None = None
    hw: dict[str, Any] | None = None


_STATUS_WIRE = msgspec.json.Decoder(_StatusWire)


# -- §7 Command and CommandResult ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A hub -> station command. Any ``cmd`` decodes; :meth:`check_args` judges it."""

    KIND: ClassVar[Kind] = Kind.CMD

    id: str
    cmd: str
    args: dict[str, Any]
    ts: int
    expires: int
    by: str | None = None
    v: int = VERSION

    def check_args(self) -> str | None:
        """None when the station can run it, else the CommandResult error to answer with:
        ``"unknown_cmd"`` or ``"bad_args"``."""
        if self.cmd not in COMMANDS:
            return "unknown_cmd"
        a = self.args
        if self.cmd == "unlock":
            slot = a.get("slot")
            if not is_int(slot) or not 1 <= slot <= MAX_SLOT:
                return "bad_args"
        elif self.cmd == "replay":
            lo, hi = a.get("from_seq"), a.get("to_seq")
            if not (is_int(lo) and is_int(hi) and 1 <= lo <= hi <= MAX_INT
                    and hi - lo < MAX_REPLAY_SPAN):
                return "bad_args"
        return None

    def is_expired(self, now_ms: int) -> bool:
        """True once ``expires`` has passed at station time ``now_ms``."""
        return now_ms > self.expires

    def to_dict(self) -> dict[str, Any]:
        d = {"v": self.v, "id": self.id, "cmd": self.cmd, "args": self.args}
        d["ts"] = self.ts
        d["expires"] = self.expires
        if self.by is not None:
            d["by"] = self.by
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> Command:
        check_v(d)
        cid = read_str(d, "id", "")
        cmd = read_str(d, "cmd", "")
        args = read_obj(d, "args", "", OPT)
        ts = read_int(d, "ts", "", lo=0)
        expires = read_int(d, "expires", "", lo=0)
        by = read_str(d, "by", "", OPT)
        return cls(cid, cmd, {} if args is None else args, ts, expires, by)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A station's answer to one Command; ``ok`` only once the hardware confirmed."""

    KIND: ClassVar[Kind] = Kind.CMD_RESULT

    sid: str
    epoch: str
    ts: int
    synced: bool
    rev: int
    id: str
    ok: bool
    error: str | None
    data: dict[str, Any] | None = None
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        d = env_dict(self)
        d["rev"] = self.rev
        d["id"] = self.id
        d["ok"] = self.ok
        d["error"] = self.error
        if self.data is not None:
            d["data"] = self.data
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> CommandResult:
        sid, epoch, ts, synced = envelope(d, topic_sid)
        rev = read_int(d, "rev", "", lo=0)
        cid = read_str(d, "id", "")
        ok = read_bool(d, "ok", "")
        error = read_str(d, "error", "", NULLABLE, choices=COMMAND_ERRORS)
        if ok and error is not None:
            raise InvalidMessage("error", f"must be null when ok is true, got {error!r}")
        if not ok and error is None:
            raise InvalidMessage("error", "must name the failure when ok is false")
        data = read_obj(d, "data", "", OPT)
        return cls(sid, epoch, ts, synced, rev, cid, ok, error, data)

    @classmethod
    def from_json(cls, text: str, topic_sid: str | None = None) -> CommandResult | None:
        """The result msgspec reads from ``text``, or None: then :meth:`from_dict` judges."""
        w = read_wire(_RESULT_WIRE, text, topic_sid)
        if w is None or w.ok != (w.error is None):
            return None
        return cls(w.sid, w.epoch, w.ts, w.synced, w.rev, w.id, w.ok, w.error, w.data)


class _ResultWire(Envelope):
    rev: Count
    id: NonEmpty
    ok: bool
    error: CommandError | None
    data: dict[str, Any] | None = None


_RESULT_WIRE = msgspec.json.Decoder(_ResultWire)


# -- §9 HubStatus ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubStatus:
    """The hub's birth (online, with ts) and last will (offline)."""

    KIND: ClassVar[Kind] = Kind.HUB_STATUS

    state: str
    ts: int | None = None
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": self.v, "state": self.state}
        if self.ts is not None:
            d["ts"] = self.ts
        return d

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> HubStatus:
        check_v(d)
        state = read_str(d, "state", "", choices=HUB_STATES)
        ts = read_int(d, "ts", "", 0 if state == "online" else OPT, lo=0)
        return cls(state, ts)


# -- the hub's time beacon (docs/protocol.md) ----------------------------------------


@dataclass(frozen=True, slots=True)
class HubTime:
    """The hub's clock, on ``yizhan/v1/hub/time`` every 30 s (retained, QoS 0).

    A station whose own clock is not synchronised judges a command's
    ``expires`` by it (firmware/hubclock.py).
    """

    KIND: ClassVar[Kind] = Kind.HUB_TIME

    ts: int
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "ts": self.ts}

    @classmethod
    def from_dict(cls, d: dict, topic_sid: str | None = None) -> HubTime:
        check_v(d)
        return cls(read_int(d, "ts", "", lo=0))


# -- decode / encode ---------------------------------------------------------------

Message = Status | State | Event | Command | CommandResult | Directory | HubStatus | HubTime

_TYPES: dict[Kind, type] = {
    Kind.STATUS: Status,
    Kind.STATE: State,
    Kind.EVENT: Event,
    Kind.CMD: Command,
    Kind.CMD_RESULT: CommandResult,
    Kind.DIRECTORY: Directory,
    Kind.HUB_STATUS: HubStatus,
    Kind.HUB_TIME: HubTime,
}
_BY_VALUE: dict[str, type] = {k.value: t for k, t in _TYPES.items()}
#: The readers by msgspec of what stations send (``decode``).
_FAST = {t: t.from_json for t in (Status, State, Event, CommandResult)}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


#: One decoder for every payload (``json.loads`` with an option builds a new one
#: per call: a twentieth of the hub's decoding).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _text(payload: bytes | bytearray | memoryview | str) -> str:
    """The payload as text: at most MAX_PAYLOAD bytes of UTF-8 (contract §2)."""
    if isinstance(payload, str):
        # Cheap bound first: a str of n chars is at least n UTF-8 bytes.
        size = len(payload)
        if size > MAX_PAYLOAD // 4:
            size = len(payload.encode("utf-8", "surrogatepass"))
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        size = len(payload)
        if isinstance(payload, memoryview):
            payload = payload.tobytes()
    else:
        raise InvalidMessage("", f"payload must be bytes or str, got {type(payload).__name__}")
    if size > MAX_PAYLOAD:
        raise InvalidMessage("", f"payload of {size} bytes exceeds {MAX_PAYLOAD}")
    if isinstance(payload, str):
        return payload
    try:
        # Contract §2: UTF-8 (json.loads would also take UTF-16 and -32); a
        # byte-order mark is tolerated, as json.loads does.
        return utf8_text(payload)
    except UnicodeDecodeError as err:
        raise InvalidMessage("", f"not valid UTF-8 JSON: {err}") from err


def utf8_text(payload: bytes) -> str:
    """``payload.decode("utf-8-sig")``, without that codec's Python-level wrapper
    (a State's every payload goes through it on the hub); an error's position
    counts the byte-order mark."""
    text = payload.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


def _parse(text: str) -> dict:
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise InvalidMessage("", f"not valid UTF-8 JSON: {err}") from err
    if not isinstance(obj, dict):
        raise InvalidMessage("", f"must be a JSON object, got {type_name(obj)}")
    return obj


def decode(kind: Kind | str, payload: bytes | str, *, topic_sid: str | None = None) -> Message:
    """Parse and validate one payload of ``kind``; InvalidMessage names what is wrong.

    ``topic_sid`` is the station id taken from the topic: a station payload whose
    ``sid`` differs is rejected. Hub -> station kinds carry no sid and ignore it.

    A station's payload is read by msgspec first (``from_json``: parsed and
    checked in C, a tenth of the time); only what it refuses goes through
    ``json`` and ``from_dict``, which accept or name the field and the reason.
    ``tests/test_protocol_fast.py`` holds the two to the same verdicts.
    """
    cls = _BY_VALUE.get(kind)
    if cls is None:
        raise TopicError(f"unknown message kind {kind!r}")
    text = _text(payload)
    fast = _FAST.get(cls)
    if fast is not None:
        msg = fast(text, topic_sid)
        if msg is not None:
            return msg
    return cls.from_dict(_parse(text), topic_sid)


def from_dict(kind: Kind | str, obj: dict, *, topic_sid: str | None = None) -> Message:
    """Like :func:`decode` for an already parsed JSON object."""
    cls = _BY_VALUE.get(kind)
    if cls is None:
        raise TopicError(f"unknown message kind {kind!r}")
    if not isinstance(obj, dict):
        raise InvalidMessage("", f"must be a JSON object, got {type_name(obj)}")
    return cls.from_dict(obj, topic_sid)


def encode(msg: Message, *, validate: bool = True) -> bytes:
    """Compact UTF-8 JSON of ``msg``, checked against the same rules as :func:`decode`
    (InvalidMessage when it would be rejected by the receiver)."""
    d = msg.to_dict()
    if validate:
        type(msg).from_dict(d)
    try:
        out = json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidMessage("", f"not JSON-serialisable: {err}") from err
    data = out.encode("utf-8")
    if len(data) > MAX_PAYLOAD:
        raise InvalidMessage("", f"encoded payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    return data


def parse(topic: str, payload: bytes | str) -> tuple[Topic, Message]:
    """Topic grammar and payload in one step, the sid of the topic enforced.

    Raises TopicError for the topic, InvalidMessage for the payload.
    """
    t = parse_topic(topic)
    return t, decode(t.kind, payload, topic_sid=t.sid)
