"""The hub's MQTT side: a persistent session that takes in every station's words.

The hub connects with a fixed client id and ``clean_session=False``, so the
broker queues what stations publish while the hub restarts (up to Mosquitto's
``max_queued_messages``; what overflows comes back by replay). On connect it
subscribes to ``hub_subscriptions()`` and publishes its retained ``online``
status, with the ``offline`` form as its last will (contract §9).

On paho's network thread each message is parsed and validated (``protocol``),
applied to the in-memory ``Fleet`` and handed to the writer — nothing waits on
the database. An invalid payload is counted in
``yizhan_hub_messages_total{kind,result="invalid"}``, logged once per station
and reason, and dropped: it never stops the hub (design principle 7).

>>> ingest = Ingest(config, fleet, clock, registry)
>>> ingest.start()      # connects in the background; ``connected`` is set once up
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from hub.bulk_client import BulkClient
from hub.config import HubConfig
from hub.fleet import APPLIED, DUPLICATE, INVALID, STALE, Fleet
from hub.tallies import LagHistogram, MessageTallies
from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import HUB_STATUS_TOPIC, PREFIX, Kind, hub_subscriptions, parse_topic
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
#: How many (station, reason) pairs are remembered as already logged.
LOGGED_KEPT = 10_000


class NotConnected(ConnectionError):
    """A publish while the hub has no connection to the broker."""


class Ingest:
    """The hub's one MQTT client: takes station messages in, publishes commands."""

    def __init__(self, config: HubConfig, fleet: Fleet, clock: Clock,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.fleet = fleet
        self.clock = clock
        # Plain numbers, not prometheus_client's locked Counter and Histogram:
        # they change on every message (hub/tallies.py).
        self.messages = MessageTallies(METRIC_KIND.values(), RESULTS, registry)
        self.lag = LagHistogram(LAG_BUCKETS, registry)
        self.connected = threading.Event()
        self._logged: set[tuple[str, str]] = set()
        self._subscriptions = hub_subscriptions(config.shared_group)
        c = BulkClient(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                       clean_session=False, protocol=mqtt.MQTTv311)
        mc = config.mqtt
        if mc.username:
            c.username_pw_set(mc.username, mc.password)
        if mc.tls is not None:
            c.tls_set(ca_certs=mc.tls.ca_file, certfile=mc.tls.cert_file,
                      keyfile=mc.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(mc.tls.insecure)
        c.will_set(HUB_STATUS_TOPIC, m.encode(m.HubStatus(state="offline")), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        self._client = c

    def start(self) -> None:
        mc = self.config.mqtt
        self._client.connect_async(mc.host, mc.port, mc.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Say goodbye (the retained ``offline``), disconnect, stop the network thread."""
        if self.connected.is_set():
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
        client.subscribe(self._subscriptions)
        online = m.HubStatus(state="online", ts=self.clock.ms())
        client.publish(HUB_STATUS_TOPIC, m.encode(online), qos=1, retain=True)
        self.fleet.broker_up(self.clock.ms())
        self.connected.set()
        log.info("hub connected to %s:%s (session %s)", self.config.mqtt.host,
                 self.config.mqtt.port, "kept" if flags.session_present else "new")

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("hub lost the broker: %s", reason_code)
        self.connected.clear()
        self.fleet.broker_down()

    def _message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        kind = sid = None
        try:
            where = parse_topic(msg.topic)
            kind, sid = where.kind, where.sid
            if kind is Kind.HUB_STATUS or kind not in METRIC_KIND:
                return  # our own status, or a hub → station topic: not ours to take in
            payload = msg.payload
            if kind is Kind.STATE:
                # Decoded once: parsed, then stored as the text the station sent.
                with contextlib.suppress(UnicodeDecodeError):  # decode() says why not
                    payload = m.utf8_text(payload)
            message = m.decode(kind, payload, topic_sid=sid)
        except (InvalidMessage, TopicError) as err:
            self._invalid(msg.topic, kind, sid, err)
            return
        # A retained copy handed out on subscribe, or a message the broker sends
        # again because our PUBACK never reached it (DUP: a broken connection, or
        # a broker restarted from its saved sessions), says what the station
        # published before, not that it is talking now.
        live = not (msg.retain or msg.dup)
        try:
            result = self.apply(kind, message, live,
                                raw=payload if kind is Kind.STATE else None)
        except Exception:
            # A bug must not take the network thread down with it; it is logged
            # with its traceback and the message is not counted as applied.
            log.exception("applying a message on %s failed", msg.topic)
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

    def _invalid(self, topic: str, kind: Kind | None, sid: str | None,
                 err: Exception) -> None:
        label = METRIC_KIND.get(kind) if kind is not None else _kind_of(topic)
        if label is not None:
            self.messages.inc(label, INVALID)
        field_ = getattr(err, "field", "")
        reason = getattr(err, "reason", str(err))
        # Once per station and reason: the numbers in a reason ("payload of 70000
        # bytes") would make every message new.
        key = (sid or topic, f"{label}:{field_}:{re.sub(r'[0-9]+', 'N', reason)[:120]}")
        if key in self._logged:
            return
        if len(self._logged) >= LOGGED_KEPT:
            self._logged.clear()  # bound the memory of what was already said
        self._logged.add(key)
        log.warning("invalid %s from %s dropped (logged once): %s", label or "message",
                    sid or topic, err)


def _kind_of(topic: str) -> str | None:
    """The metric kind of a topic whose station id failed the grammar."""
    if not isinstance(topic, str) or not topic.startswith(PREFIX + "/"):
        return None
    parts = topic[len(PREFIX) + 1:].split("/", 1)
    return _KIND_OF_TAIL.get(parts[1]) if len(parts) == 2 else None
