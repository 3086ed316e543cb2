"""The hub's MQTT side: a persistent session that takes in every station's words.

The hub connects with a fixed client id and ``clean_session=False``, so the
broker queues what stations publish while the hub restarts (up to Mosquitto's
``max_queued_messages``; what overflows comes back by replay). On connect it
subscribes to ``hub_subscriptions()`` and publishes its retained ``online``
status, with the ``offline`` form as its last will (contract §9; of several
workers, only the leader speaks for the hub: ``speaks``, ``announce``). It also
subscribes to three of the broker's ``$SYS`` counters, shown as
``yizhan_broker_*`` metrics (hub/mqtt/broker_stats.py).

Reconnects are paced by :class:`yizhan.mqtt_client.PacedClient` (1 s doubling
to 30 s, jittered, on the hub's clock). When the broker has lost our session
(``session_present`` false on a reconnect: a broker restarted without
persistence) it has lost its retained messages too: the hub republishes what
it owns (its status; the stations republish theirs on their own reconnect).
Every ``TIME_EVERY`` seconds the hub publishes its clock on
``yizhan/v1/hub/time`` (retained), which stations with an unsynchronised
clock judge commands by (docs/protocol.md); its PUBACK is also the proof that
the session works (:meth:`Ingest.problem`).

On paho's network thread each message is parsed and validated (``protocol``),
applied to the in-memory ``Fleet`` and handed to the writer — nothing waits on
the database. An invalid payload is counted in
``yizhan_hub_messages_total{kind,result="invalid"}`` and, by why, in
``yizhan_hub_invalid_messages_total{kind,reason}`` (``REASONS``), logged once
an hour per (station, kind, reason), and dropped: it never stops the hub
(design principle 7). What is remembered as logged is bounded (``LOGGED_KEPT``
keys; past them one line says the rest is only counted), so a flood of made-up
stations or made-up values costs neither memory nor log lines without end
(docs/security.md, "Hostile input at the hub").

>>> ingest = Ingest(config, fleet, clock, registry)
>>> ingest.start()      # connects in the background; ``connected`` is set once up
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from hub.config import HubConfig
from hub.fleet.view import APPLIED, DUPLICATE, INVALID, STALE, Fleet
from hub.log_once import LOG_WINDOW, LOGGED_KEPT, LogOnce  # noqa: F401  (the bounds, read here too)
from hub.mqtt.broker_stats import SUBSCRIPTIONS as BROKER_SUBSCRIPTIONS
from hub.mqtt.broker_stats import BrokerStats
from hub.mqtt.bulk_client import BulkClient
from hub.mqtt.tallies import LagHistogram, MessageTallies, RefusalTallies
from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import (
    HUB_STATUS_TOPIC,
    HUB_TIME_TOPIC,
    PREFIX,
    Kind,
    hub_subscriptions,
    parse_topic,
)
from yizhan.backoff import Backoff
from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: The ``kind`` label of each station → hub topic (contract §12).
METRIC_KIND = {Kind.STATUS: "status", Kind.STATE: "state", Kind.EVENT: "event",
               Kind.CMD_RESULT: "result"}
_KIND_OF_TAIL = {k.value: name for k, name in METRIC_KIND.items()}
RESULTS = (APPLIED, DUPLICATE, STALE, INVALID)
#: From a millisecond on loopback to a minute behind (a queued session, a replay).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0)
#: Why a message was refused: the ``reason`` label of
#: ``yizhan_hub_invalid_messages_total``. A fixed few words: the station's own
#: text (a made-up door name, a value) never becomes a label or a log key.
TOPIC, UNKNOWN_STATION, TOO_LARGE, NOT_JSON = "topic", "unknown_station", "too_large", "not_json"
VERSION, SID, FIELD, APPLY_FAILED = "version", "sid", "field", "apply_failed"
REASONS = (TOPIC, UNKNOWN_STATION, TOO_LARGE, NOT_JSON, VERSION, SID, FIELD, APPLY_FAILED)
#: The ``kind`` of a refused message whose topic does not tell its kind (not
#: one the hub subscribes to: a topic that is not UTF-8, say).
OTHER_KIND = "other"
#: Characters of a refusal's reason shown in the log (a 60 KB string a station
#: sent is quoted in the reason).
SHOWN_CHARS = 200
#: The hub's reconnect backoff: 1 s doubling to 30 s, each wait jittered.
RECONNECT = Backoff(1.0, 30.0)
#: Seconds between two of the hub's time beacons (``yizhan/v1/hub/time``).
TIME_EVERY = 30.0


class NotConnected(ConnectionError):
    """A publish while the hub has no connection to the broker."""


class NulInString(InvalidMessage):
    """A payload with U+0000 in a string, which the contract's JSON allows and
    PostgreSQL's text cannot store: each such write was dropped (a borrow's
    event and loan lost, the writer's batch retried by halves, a traceback), so
    the hub refuses it on either store."""

    def __init__(self) -> None:
        super().__init__("", "a string holds U+0000 (\\u0000), which the hub cannot store")


#: ``\u0000`` not itself escaped (an odd run of backslashes before ``u0000``):
#: JSON has no other way to put U+0000 in a string.
_NUL_TEXT = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_NUL_BYTES = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def holds_nul(payload: bytes | str) -> bool:
    """Whether JSON ``payload`` puts U+0000 in a string; a substring test first,
    so that a message without ``\\u0000`` costs no regex."""
    if isinstance(payload, str):
        return "\\u0000" in payload and _NUL_TEXT.search(payload) is not None
    return b"\\u0000" in payload and _NUL_BYTES.search(bytes(payload)) is not None


class Ingest:
    """The hub's one MQTT client: takes station messages in, publishes commands."""

    def __init__(self, config: HubConfig, fleet: Fleet, clock: Clock,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.fleet = fleet
        self.clock = clock
        # Plain numbers, not prometheus_client's locked Counter and Histogram:
        # they change on every message (hub/mqtt/tallies.py).
        self.messages = MessageTallies(METRIC_KIND.values(), RESULTS, registry)
        self.refused = RefusalTallies((*METRIC_KIND.values(), OTHER_KIND), REASONS, registry)
        self.lag = LagHistogram(LAG_BUCKETS, registry)
        self.broker_stats = BrokerStats(registry)
        # What the fleet and its loans note about messages they took, beside
        # what the ingest refused (hub/log_once.py).
        registry.register(fleet.notes)
        self.connected = threading.Event()
        #: Which (station or "", kind, reason) refusals are logged: once a
        #: window of LOG_WINDOW, at most LOGGED_KEPT keys (hub/log_once.py).
        self._once = LogOnce(clock, log, "invalid messages", "stations and reasons",
                             "sent invalid messages", "yizhan_hub_invalid_messages_total")
        self._subscriptions = hub_subscriptions(config.shared_group)
        #: Whether this worker speaks for the hub on ``hub/status`` (contract §9):
        #: one hub always; of several workers (mqtt.shared_group) only the leader
        #: (the Hub sets it to its leadership), else each worker's connect and
        #: clean stop would make the whole fleet republish.
        self.speaks: Callable[[], bool] = lambda: True
        self._shared = config.shared_group is not None
        if self._shared:
            # Not shared: each worker hears every offline (a worker's will), so
            # the leader, whichever it is, can answer it (``_hub_status``).
            self._subscriptions = [*self._subscriptions, (HUB_STATUS_TOPIC, 1)]
        self._status_lock = threading.Lock()
        self._up = False  # a session, for announce(); under _status_lock
        #: The last online this worker published, until it hears it back: an
        #: offline heard meanwhile was taken by the broker before it, and so is
        #: already answered (a will that fired just before a takeover; the same
        #: offline heard twice, by the shared and by the worker's own subscription).
        self._answer_ts: int | None = None
        self._stopping = False
        #: The only sids taken in, or None for any (``accept_unknown_stations``).
        self._known: frozenset[str] | None = (
            None if config.accept_unknown_stations
            else frozenset(s.sid for s in config.stations))
        # Several workers (mqtt.shared_group): a clean session each. Mosquitto
        # keeps handing a dead member's persistent session its share of the
        # group's messages, queued for a worker that may never come back; with
        # a clean session a killed worker leaves the group at once, and what it
        # held unacknowledged comes back by replay (events) or retained (States,
        # Statuses). docs/scaling.md.
        c = BulkClient(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                       clean_session=config.shared_group is not None, protocol=mqtt.MQTTv311)
        mc = config.mqtt
        if mc.username:
            c.username_pw_set(mc.username, mc.password)
        if mc.tls is not None:
            c.tls_set(ca_certs=mc.tls.ca_file, certfile=mc.tls.cert_file,
                      keyfile=mc.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(mc.tls.insecure)
        c.will_set(HUB_STATUS_TOPIC, m.encode(m.HubStatus(state="offline")), qos=1, retain=True)
        c.pace(RECONNECT, clock)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        self._client = c
        #: Sessions that began without the broker's memory of us (and so of
        #: our retained messages): each time, the hub republished what it owns.
        self.fresh_sessions = 0
        self._down_since: float | None = clock.monotonic()
        # The oldest beacon not known to be acknowledged: (monotonic sent, info).
        self._beacon: tuple[float, mqtt.MQTTMessageInfo] | None = None
        self.beacons = 0

    def start(self) -> None:
        mc = self.config.mqtt
        self._client.connect_async(mc.host, mc.port, mc.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Say goodbye (the retained ``offline``; of several workers, the leader
        only: a follower going leaves the hub up), disconnect, stop the network thread."""
        self._stopping = True  # its own offline coming back is not to be answered
        if self.connected.is_set() and self.speaks():
            info = self._client.publish(HUB_STATUS_TOPIC, m.encode(m.HubStatus(state="offline")),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as err:
                log.warning("could not publish the hub's offline status: %s", err)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
        self.fleet.broker_down()

    def publish_time(self) -> bool:
        """Publish the hub's clock on ``yizhan/v1/hub/time`` (retained), QoS 1 so
        that its PUBACK proves the session still works; False while not connected."""
        if not self.connected.is_set():
            return False
        payload = m.encode(m.HubTime(ts=self.clock.ms()))
        info = self._client.publish(HUB_TIME_TOPIC, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        beacon = self._beacon
        if beacon is None or beacon[1].is_published():  # else the older one still counts
            self._beacon = (self.clock.monotonic(), info)
        self.beacons += 1
        return True

    def problem(self) -> str | None:
        """Why the hub's MQTT side does not work now, or None: judged by outcomes —
        a session established and the broker acknowledging what we publish."""
        now = self.clock.monotonic()
        mc = self.config.mqtt
        if not self._client.loop_alive():
            return "the MQTT network thread is not running"
        if not self.connected.is_set():
            since = self._down_since if self._down_since is not None else now
            return (f"not connected to the MQTT broker at {mc.host}:{mc.port} "
                    f"for {now - since:.0f} s ({self._client.retry} attempts)")
        waiting = self.unacknowledged_since
        if waiting is not None and now - waiting > self.stall_after:
            return (f"the MQTT session is stalled: the broker has acknowledged nothing "
                    f"for {now - waiting:.0f} s")
        return None

    def stuck(self) -> bool:
        """A fault a restart of the process would mend: the network thread is gone,
        or the session is up and nothing goes through. A broker that is away is
        an outage, not this."""
        if not self._client.loop_alive():
            return True
        waiting = self.unacknowledged_since
        return (self.connected.is_set() and waiting is not None
                and self.clock.monotonic() - waiting > self.stall_after)

    @property
    def unacknowledged_since(self) -> float | None:
        """When (``clock.monotonic()``) the oldest time beacon not yet acknowledged
        by the broker was sent; None when every one was."""
        beacon = self._beacon
        if beacon is None or beacon[1].is_published():
            return None
        return beacon[0]

    @property
    def stall_after(self) -> float:
        """Seconds a beacon may go unacknowledged: a keepalive and a half (by then
        a dead link is dropped), and a beacon interval of slack."""
        return 1.5 * self.config.mqtt.keepalive + TIME_EVERY

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """QoS 1. Raises NotConnected while the broker is away: a command must not
        wait in paho's queue and reach a station long after it was meant."""
        if not self.connected.is_set():
            raise NotConnected("the hub is not connected to the MQTT broker")
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    # -- paho callbacks (network thread) ------------------------------------------------

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the hub: %s", self.config.mqtt.host,
                      self.config.mqtt.port, reason_code)
            return
        # Even with the session kept: a subscribe is what re-sends the retained
        # Status and State, and it costs nothing when they are known (duplicates).
        # And the broker's own counters ($SYS): for ops, not for the fleet.
        client.subscribe(self._subscriptions + BROKER_SUBSCRIPTIONS)
        # What the hub owns on the broker, republished on every connect: a
        # session the broker forgot (restarted without persistence) took the
        # retained copies with it. The status is also contract §9's "online"
        # (of several workers, the leader's only).
        with self._status_lock:
            self._up, self._answer_ts = True, None
            if self.speaks():
                self._online(client)
        if not flags.session_present:
            self.fresh_sessions += 1
        self._down_since = None
        self._beacon = None  # a new session: what the last one owed is moot
        self.fleet.broker_up(self.clock.ms())
        self.connected.set()
        self.publish_time()
        log.info("hub connected to %s:%s (session %s)", self.config.mqtt.host,
                 self.config.mqtt.port, "kept" if flags.session_present else "new")

    def announce(self) -> bool:
        """Publish ``online`` (a new ``ts``) now, if connected: a worker that starts
        leading speaks for the hub (several workers). False while not connected
        (its connect will)."""
        with self._status_lock:
            if not self._up or self._stopping:
                return False
            self._online(self._client)
            return True

    def _online(self, client: mqtt.Client) -> None:
        """Publish ``online`` with a new ``ts`` (under ``_status_lock``)."""
        ts = self.clock.ms()
        client.publish(HUB_STATUS_TOPIC, m.encode(m.HubStatus(state="online", ts=ts)),
                       qos=1, retain=True)
        self._answer_ts = ts

    def _hub_status(self, msg: mqtt.MQTTMessage) -> None:
        """Several workers: the leader answers an offline — a follower's will, an old
        leader's — with online again, a new ``ts``: the stations republish, which
        also resends what a dead worker took and lost. A retained copy is old news
        (each connect publishes its own); one hub ignores its status."""
        if not self._shared or msg.retain or self._stopping or not self.speaks():
            return
        try:
            status = m.decode(Kind.HUB_STATUS, msg.payload)
        except InvalidMessage:
            return  # not from a hub worker (the ACL lets none other publish here)
        with self._status_lock:
            if status.state == "online":
                if status.ts == self._answer_ts:
                    self._answer_ts = None  # answered; the next offline is a new one
                return
            if self._answer_ts is None and self._up:
                log.info("a hub worker's offline on %s: answering online", HUB_STATUS_TOPIC)
                self._online(self._client)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        with self._status_lock:
            self._up = False
        if self.connected.is_set():
            log.warning("hub lost the broker: %s", reason_code)
            self._down_since = self.clock.monotonic()
        self.connected.clear()
        self.fleet.broker_down()

    def _message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg)
        except Exception as err:
            # The last guard: an exception out of on_message stops paho's network
            # thread (suppress_exceptions is off), and with it the whole ingest.
            self._refuse(OTHER_KIND, None, APPLY_FAILED, None, err, trace=True)

    def _take(self, msg: mqtt.MQTTMessage) -> None:
        kind = sid = None
        try:
            name = msg.topic
        except UnicodeDecodeError:  # paho decodes the topic when asked; a broker lets none by
            self._refuse(OTHER_KIND, None, TOPIC, None, TopicError("topic is not UTF-8"))
            return
        if BrokerStats.is_ours(name):
            self.broker_stats.take(name, msg.payload)
            return
        try:
            where = parse_topic(name)
            kind, sid = where.kind, where.sid
            if kind is Kind.HUB_STATUS:
                self._hub_status(msg)  # several workers: the leader answers an offline
                return
            if kind not in METRIC_KIND:
                return  # a hub → station topic: not ours to take in
            if self._known is not None and sid not in self._known:
                # Before decoding: a flood of made-up sids costs a set lookup,
                # and never reaches the fleet, the store, /metrics or alerting.
                self._unknown(kind, sid)
                return
            payload = msg.payload
            if kind is Kind.STATE:
                # Decoded once: parsed, then stored as the text the station sent.
                with contextlib.suppress(UnicodeDecodeError):  # decode() says why not
                    payload = m.utf8_text(payload)
            if holds_nul(payload):
                raise NulInString()
            message = m.decode(kind, payload, topic_sid=sid)
        except (InvalidMessage, TopicError) as err:
            self._invalid(name, kind, sid, err)
            return
        # A retained copy handed out on subscribe, or a message the broker sends
        # again because our PUBACK never reached it (DUP: a broken connection, or
        # a broker restarted from its saved sessions), says what the station
        # published before, not that it is talking now.
        live = not (msg.retain or msg.dup)
        try:
            result = self.apply(kind, message, live,
                                raw=payload if kind is Kind.STATE else None)
        except Exception as err:
            # A bug must not take the network thread down with it; the message
            # is counted invalid (apply_failed) and the first of its kind from
            # this station logged with its traceback.
            self._refuse(METRIC_KIND[kind], sid, APPLY_FAILED, name, err, trace=True)
            return
        self.messages.inc(METRIC_KIND[kind], result)

    def apply(self, kind: Kind, message: object, live: bool = True,
              raw: str | None = None) -> str:
        """Apply a decoded ``message`` to the fleet; ``raw``, the text a State was
        decoded from (a BOM dropped), is what it is stored as."""
        now = self._observe(message, live)
        if kind is Kind.STATUS:
            return self.fleet.apply_status(message, now, live)
        if kind is Kind.STATE:
            return self.fleet.apply_state(message, now, live, raw=raw)
        if kind is Kind.EVENT:
            return self.fleet.apply_event(message, now, live)
        return self.fleet.apply_result(message, now, live)

    def _observe(self, message: object, live: bool) -> int:
        """The hub's time of applying ``message``, its lag observed (§12)."""
        now = self.clock.ms()
        ts = getattr(message, "ts", None)
        if live and ts is not None and getattr(message, "synced", False):
            self.lag.observe(max(0.0, (now - ts) / 1000))
        return now

    def _unknown(self, kind: Kind, sid: str) -> None:
        """A message from a station ``stations:`` does not list, refused."""
        # Logged once a window for all unknown sids, not once each: 10 000
        # made-up ids must not become 10 000 log lines.
        self._refuse(METRIC_KIND[kind], "", UNKNOWN_STATION, sid,
                     "accept_unknown_stations is false", who=sid)

    def _invalid(self, topic: str, kind: Kind | None, sid: str | None,
                 err: Exception) -> None:
        label = METRIC_KIND.get(kind) if kind is not None else _kind_of(topic)
        self._refuse(label or OTHER_KIND, sid, reason_of(err), topic, err)

    def _refuse(self, label: str, sid: str | None, reason: str, topic: str | None,
                err: object, *, trace: bool = False, who: str | None = None) -> None:
        """Count a refused message and log it once per (station, kind, reason) a
        window. ``sid`` None: the topic named no station (all such are one key)."""
        if label != OTHER_KIND:
            self.messages.inc(label, INVALID)
        self.refused.inc(label, reason)
        if not self._first((sid or "", label, reason)):
            return
        who = _shown(who or sid or topic or "a topic that is not UTF-8", 80)
        text = _shown(str(err), SHOWN_CHARS)
        if trace:
            log.error("applying a %s from %s failed (%s; logged once an hour per station "
                      "and reason): %s", label, who, reason, text, exc_info=err)
        elif reason == UNKNOWN_STATION:
            log.warning("messages from unknown stations dropped (accept_unknown_stations "
                        "is false); first from %s, counted as invalid (reason %s)", who, reason)
        else:
            log.warning("invalid %s from %s dropped (%s; logged once an hour per station "
                        "and reason): %s", label, who, reason, text)

    def _first(self, key: tuple[str, str, str]) -> bool:
        """Whether ``key`` is to be logged now: not yet this window, and room to
        remember it."""
        return self._once.first(key)


def reason_of(err: Exception) -> str:
    """The ``reason`` label of a refusal (``REASONS``), from what ``protocol`` raised."""
    if isinstance(err, TopicError):
        return TOPIC
    if not isinstance(err, InvalidMessage):
        return APPLY_FAILED
    if isinstance(err, NulInString):
        return FIELD
    if err.field == "v":
        return VERSION
    if err.field == "sid":
        return SID
    if err.field:
        return FIELD
    return TOO_LARGE if "exceeds" in err.reason else NOT_JSON


def _shown(text: str, limit: int) -> str:
    """``text`` for a log line: at most ``limit`` characters, control characters
    escaped (a station's newline must not forge a second log line)."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + ("…" if len(text) > limit else "")


def _kind_of(topic: str) -> str | None:
    """The metric kind of a topic whose station id failed the grammar."""
    if not isinstance(topic, str) or not topic.startswith(PREFIX + "/"):
        return None
    parts = topic[len(PREFIX) + 1:].split("/", 1)
    return _KIND_OF_TAIL.get(parts[1]) if len(parts) == 2 else None
