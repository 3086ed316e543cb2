"""The hub's MQTT side: a persistent session that takes in every station's words.

Every payload is validated by ``protocol``; an invalid one is counted in
``yizhan_hub_messages_total{result="invalid"}``, logged once per station and
reason, and dropped — it never stops the hub (design principle 7).
"""

from __future__ import annotations

import logging
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter

from hub.config import HubConfig
from hub.fleet import INVALID, Fleet
from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import HUB_STATUS_TOPIC, Kind, hub_subscriptions, parse_topic
from yizhan.clock import Clock

log = logging.getLogger(__name__)

METRIC_KIND = {Kind.STATUS: "status", Kind.STATE: "state", Kind.EVENT: "event",
               Kind.CMD_RESULT: "result"}


class Ingest:
    def __init__(self, config: HubConfig, fleet: Fleet, clock: Clock,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.fleet = fleet
        self.clock = clock
        self.messages = Counter(
            "yizhan_hub_messages", "Messages taken in from stations, by kind and outcome.",
            ["kind", "result"], registry=registry)
        self.connected = threading.Event()
        self._logged: set[tuple[str, str]] = set()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
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
        if self.connected.is_set():
            info = self._client.publish(HUB_STATUS_TOPIC, m.encode(m.HubStatus(state="offline")),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                log.warning("could not publish the hub's offline status")
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=1, retain=retain)

    # -- paho callbacks (network thread) ------------------------------------------------

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub: %s", reason_code)
            return
        client.subscribe(hub_subscriptions())
        online = m.HubStatus(state="online", ts=self.clock.ms())
        client.publish(HUB_STATUS_TOPIC, m.encode(online), qos=1, retain=True)
        self.connected.set()
        log.info("hub connected to %s:%s", self.config.mqtt.host, self.config.mqtt.port)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("hub lost the broker: %s", reason_code)
        self.connected.clear()

    def _message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        kind = None
        try:
            where = parse_topic(msg.topic)
            kind = where.kind
            if kind is Kind.HUB_STATUS:
                return  # our own retained status, echoed by the wildcard
            message = m.decode(kind, msg.payload, topic_sid=where.sid)
        except (InvalidMessage, TopicError) as err:
            self._invalid(msg.topic, kind, err)
            return
        try:
            result = self.apply(kind, message)
        except Exception:
            log.exception("applying a message on %s failed", msg.topic)
            return
        self.messages.labels(METRIC_KIND[kind], result).inc()

    def apply(self, kind: Kind, message: object) -> str:
        now = self.clock.ms()
        if kind is Kind.STATUS:
            return self.fleet.apply_status(message, now)
        if kind is Kind.STATE:
            return self.fleet.apply_state(message, now)
        self.fleet.seen(message.sid, message.epoch, now)
        return "applied"

    def _invalid(self, topic: str, kind: Kind | None, err: Exception) -> None:
        if kind in METRIC_KIND:
            self.messages.labels(METRIC_KIND[kind], INVALID).inc()
        key = (topic, str(err))
        if key not in self._logged:
            if len(self._logged) > 10_000:
                self._logged.clear()  # bound the memory of what was already said
            self._logged.add(key)
            log.warning("invalid message on %s: %s", topic, err)
