"""The station's MQTT link to the hub (contract §2, §4, §9).

A station connects with a clean session, so it never receives a command that was
queued while it was away. Before every connection attempt, first or reconnect,
the link takes a fresh ``rev`` as the birth and sets the last will to the
offline form for that birth; right after the broker accepts it publishes the
birth (Status online) and asks the agent for a State. The hub, like
Sparkplug's bdSeq, ignores a will whose birth is not the current one.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import (
    HUB_STATUS_TOPIC,
    RETAINED,
    Kind,
    parse_topic,
    station_subscriptions,
    topic,
)
from yizhan.config import MqttConfig

log = logging.getLogger(__name__)

Handler = Callable[[m.Command | m.Directory | m.HubStatus], None]


class StationLink:
    """One station's connection: birth and will, publishing, inbound messages.

    ``birth_info`` is called on the network thread right after each connect and
    returns ``(ts, synced, last_seq, agent_version, hw)`` for the birth;
    ``on_birth`` is called after the birth was handed to the client, so the
    agent publishes its State; ``on_inbound`` gets every valid command,
    directory and hub status.
    """

    def __init__(self, sid: str, mqtt_config: MqttConfig, epoch: str,
                 next_rev: Callable[[], int], birth_info: Callable[[], tuple],
                 on_birth: Callable[[], None], on_inbound: Handler) -> None:
        self.sid = sid
        self.config = mqtt_config
        self.epoch = epoch
        self._next_rev = next_rev
        self._birth_info = birth_info
        self._on_birth = on_birth
        self._on_inbound = on_inbound
        self.birth: int | None = None
        self.connected = threading.Event()
        self.invalid_inbound = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"yizhan-{sid}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        c = self._client
        if mqtt_config.username:
            c.username_pw_set(mqtt_config.username, mqtt_config.password)
        if mqtt_config.tls is not None:
            t = mqtt_config.tls
            c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(t.insecure)
        c.reconnect_delay_set(min_delay=1, max_delay=60)
        c.on_pre_connect = self._pre_connect
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        self._attempts = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with backoff."""
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self._client.loop_start()

    def stop(self, shutdown_status: m.Status | None = None, timeout: float = 3.0) -> None:
        """Publish the clean offline (if connected), then disconnect."""
        if shutdown_status is not None and self.connected.is_set():
            info = self._client.publish(self._topic(Kind.STATUS), m.encode(shutdown_status),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("clean offline could not be published before shutdown")
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # -- publishing ------------------------------------------------------------

    def publish(self, kind: Kind, message: object) -> mqtt.MQTTMessageInfo:
        return self._client.publish(self._topic(kind), m.encode(message), qos=1,
                                    retain=RETAINED.get(kind, False))

    def _topic(self, kind: Kind) -> str:
        return topic(self.sid, kind)

    # -- paho callbacks (network thread) ----------------------------------------

    def _pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        if self._attempts:
            # paho's backoff doubles without jitter; after a broker restart a
            # whole fleet would otherwise reconnect in lock-step.
            threading.Event().wait(random.uniform(0, min(5.0, 0.5 * self._attempts)))
        self._attempts += 1
        self.birth = self._next_rev()
        will = m.Status.will(self.sid, self.epoch, self.birth)
        client.will_set(self._topic(Kind.STATUS), m.encode(will), qos=1, retain=True)

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._attempts = 0
        ts, synced, last_seq, version, hw = self._birth_info()
        birth = m.Status.online(self.sid, self.epoch, ts=ts, synced=synced, rev=self.birth,
                                last_seq=last_seq, agent_version=version, hw=hw)
        client.publish(self._topic(Kind.STATUS), m.encode(birth), qos=1, retain=True)
        client.subscribe(station_subscriptions(self.sid))
        self.connected.set()
        log.info("connected to %s:%s, birth %s", self.config.host, self.config.port, self.birth)
        self._on_birth()

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("connection to the broker lost: %s", reason_code)
        self.connected.clear()

    def _message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            where = parse_topic(msg.topic)
            if where.kind is Kind.HUB_STATUS or msg.topic == HUB_STATUS_TOPIC:
                message = m.decode(Kind.HUB_STATUS, msg.payload)
            elif where.sid != self.sid:
                raise TopicError(f"not this station's topic: {msg.topic}")
            else:
                message = m.decode(where.kind, msg.payload)
        except (InvalidMessage, TopicError) as err:
            self.invalid_inbound += 1
            log.warning("ignored an invalid message on %s: %s", msg.topic, err)
            return
        try:
            self._on_inbound(message)
        except Exception:
            # A bug in one handler must not kill the network thread.
            log.exception("handling %s failed", msg.topic)
