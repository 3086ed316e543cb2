"""The station's MQTT link to the hub (contract §2, §4, §9).

A station connects with a clean session, so it never receives a command that was
queued while it was away. Before every connection attempt, first or reconnect,
the link takes a fresh ``rev`` as the birth and sets the last will to the
offline form for that birth; right after the broker accepts it publishes the
birth (Status online) and asks the agent for a State. The hub, like
Sparkplug's bdSeq, ignores a will whose birth is not the current one.

Reconnects back off exponentially with jitter (``reconnect_min`` doubling up to
``reconnect_max``, each wait drawn from its upper half), so a fleet does not
reconnect in lock-step after a broker restart. When the hub's status turns
online the link republishes the *same* birth (the will still names it) and asks
for a fresh State, after a random 0–10 s delay that :meth:`poll` serves. Why the
same birth: docs/delivery.md.
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
from yizhan.clock import SYSTEM_CLOCK, Clock
from yizhan.config import MqttConfig

log = logging.getLogger(__name__)

Handler = Callable[[m.Command | m.Directory | m.HubStatus], None]
#: ``fn(mid, ok)`` on the network thread when the broker acknowledged message ``mid``.
PublishListener = Callable[[int, bool], None]

#: Contract §9: stations spread their republish over this many seconds.
HUB_ONLINE_DELAY = 10.0


class LinkStopping(ConnectionAbortedError):
    """Raised inside paho's connect path to abandon an attempt once stop() began.

    An OSError, so paho's loop treats it as a failed attempt and then sees it
    must exit, instead of connecting (and publishing a birth) during shutdown.
    """


class StationLink:
    """One station's connection: birth and will, publishing, inbound messages.

    ``birth_info`` is called on the network thread right after each connect and
    returns ``(ts, synced, last_seq, agent_version, hw)`` for the birth;
    ``on_birth`` is called after the birth was handed to the client (and after
    each republish of it), so the agent publishes its State; ``on_inbound`` gets
    every valid command, directory and hub status — commands go to
    ``on_command`` instead when that is set (a CommandHandler sets it), and a
    command payload that does not decode goes to ``on_bad_command(payload, error)``.

    ``rand`` (0 <= x < 1) draws the reconnect jitter and the hub-online delay,
    ``clock`` times that delay and the health check; tests pass both.
    """

    def __init__(self, sid: str, mqtt_config: MqttConfig, epoch: str,
                 next_rev: Callable[[], int], birth_info: Callable[[], tuple],
                 on_birth: Callable[[], None], on_inbound: Handler, *,
                 clock: Clock = SYSTEM_CLOCK, rand: Callable[[], float] = random.random,
                 reconnect_min: float = 0.5, reconnect_max: float = 60.0,
                 hub_online_delay: float = HUB_ONLINE_DELAY) -> None:
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        self.sid = sid
        self.config = mqtt_config
        self.epoch = epoch
        self._next_rev = next_rev
        self._birth_info = birth_info
        self._on_birth = on_birth
        self._on_inbound = on_inbound
        self.on_command: Callable[[m.Command], None] | None = None
        self.on_bad_command: Callable[[bytes, InvalidMessage], None] | None = None
        self._clock = clock
        self._rand = rand
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.hub_online_delay = hub_online_delay

        self.birth: int | None = None
        self.connected = threading.Event()
        #: Counts successful connections; a message published under an older
        #: session and still unacknowledged is one paho re-sends itself.
        self.session = 0
        self.invalid_inbound = 0
        self.republished = 0
        self._listeners: list[PublishListener] = []
        self._birth_payload: bytes | None = None
        self._hub_online_ts: int | None = None
        self._republish_at: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._attempts = 0  # failed attempts since the last stable connection
        self._connected_at: float | None = None
        self._last_attempt: float | None = None
        self._started_at: float | None = None
        self._net_thread: threading.Thread | None = None

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
        # paho's own backoff doubles without jitter; ours runs in _pre_connect.
        c.reconnect_delay_set(min_delay=0, max_delay=0)
        c.on_pre_connect = self._pre_connect
        c.on_connect = self._connected
        c.on_connect_fail = self._connect_failed
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_publish = self._published

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the network thread reconnects with backoff."""
        self._started_at = self._clock.monotonic()
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
        self._stopping.set()  # ends a backoff wait at once
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # -- publishing ------------------------------------------------------------

    def publish(self, kind: Kind, message: object, *, validate: bool = True
                ) -> mqtt.MQTTMessageInfo:
        """Hand ``message`` to the client at QoS 1 (retained as contract §2 says).

        Also while disconnected: paho keeps it and sends it after the next
        connect. ``info.mid`` is what publish listeners are later told.
        """
        return self._client.publish(self._topic(kind), m.encode(message, validate=validate),
                                    qos=1, retain=RETAINED.get(kind, False))

    def add_publish_listener(self, fn: PublishListener) -> None:
        """Call ``fn(mid, ok)`` for every PUBACK (on the network thread; keep it short)."""
        self._listeners.append(fn)

    def rebirth(self) -> bool:
        """Republish this connection's birth as it was, and ask for a fresh State.

        False when not connected (the next connect births anyway).
        """
        with self._lock:
            payload = self._birth_payload
        if payload is None or not self.connected.is_set():
            return False
        self._client.publish(self._topic(Kind.STATUS), payload, qos=1, retain=True)
        self.republished += 1
        log.info("republished birth %s", self.birth)
        self._on_birth()
        return True

    def poll(self) -> None:
        """Serve a republish that has come due; the station loop calls this each tick."""
        with self._lock:
            due = self._republish_at is not None and self._clock.monotonic() >= self._republish_at
            if due:
                self._republish_at = None
        if due:
            self.rebirth()

    @property
    def republish_due(self) -> float | None:
        """Monotonic time (by ``clock``) of the scheduled hub-online republish, if any."""
        with self._lock:
            return self._republish_at

    def healthy(self) -> bool:
        """For the watchdog: the network thread lives and either the link is up or
        connection attempts keep coming (a broker outage is not a reason to restart)."""
        now = self._clock.monotonic()
        thread = self._net_thread
        if self._started_at is None:
            return False
        if thread is None:
            # Not yet in its first attempt: give it a moment.
            return now - self._started_at < self._attempt_gap()
        if not thread.is_alive():
            return False
        if self.connected.is_set():
            return True
        last = self._last_attempt if self._last_attempt is not None else self._started_at
        return now - last < self._attempt_gap()

    def _attempt_gap(self) -> float:
        # The longest backoff wait, plus a TCP/TLS connect timeout and keepalive
        # detection of a dead link, plus slack.
        return self.reconnect_max + 5.0 + 1.5 * self.config.keepalive + 10.0

    def _topic(self, kind: Kind) -> str:
        return topic(self.sid, kind)

    # -- paho callbacks (network thread) ----------------------------------------

    def backoff_delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first): drawn from
        the upper half of ``reconnect_min · 2^(retry-1)``, capped at ``reconnect_max``."""
        ceiling = min(self.reconnect_max, self.reconnect_min * 2 ** min(retry - 1, 32))
        return ceiling * (0.5 + 0.5 * self._rand())

    def _pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        self._net_thread = threading.current_thread()
        if self._attempts:
            delay = self.backoff_delay(self._attempts)
            log.debug("reconnect attempt %d in %.2f s", self._attempts, delay)
            if self._stopping.wait(delay):
                raise LinkStopping("the link is stopping")
        if self._stopping.is_set():
            raise LinkStopping("the link is stopping")
        self._attempts += 1
        self._last_attempt = self._clock.monotonic()
        self.birth = self._next_rev()
        will = m.Status.will(self.sid, self.epoch, self.birth)
        client.will_set(self._topic(Kind.STATUS), m.encode(will), qos=1, retain=True)

    def _connect_failed(self, client: mqtt.Client, userdata: object) -> None:
        if self._stopping.is_set():
            return
        # Once, then quietly: a broker down for an hour would flood the log.
        level = logging.WARNING if self._attempts <= 1 else logging.DEBUG
        log.log(level, "cannot reach the broker at %s:%s (attempt %d); retrying",
                self.config.host, self.config.port, self._attempts)

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        ts, synced, last_seq, version, hw = self._birth_info()
        birth = m.Status.online(self.sid, self.epoch, ts=ts, synced=synced, rev=self.birth,
                                last_seq=last_seq, agent_version=version, hw=hw)
        payload = m.encode(birth)
        with self._lock:
            self._birth_payload = payload
            # A hub status seen on the last connection says nothing about now;
            # the retained one arrives right after the subscribe.
            self._republish_at = None
        client.publish(self._topic(Kind.STATUS), payload, qos=1, retain=True)
        client.subscribe(station_subscriptions(self.sid))
        self._connected_at = self._clock.monotonic()
        self.session += 1
        self.connected.set()
        log.info("connected to %s:%s, birth %s", self.config.host, self.config.port, self.birth)
        self._on_birth()

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("connection to the broker lost: %s", reason_code)
        self.connected.clear()
        # Reset the backoff only after a connection that lasted: one that is
        # accepted and dropped at once (a duplicate client id, an ACL kick)
        # must not turn into a tight reconnect loop.
        if (self._connected_at is not None
                and self._clock.monotonic() - self._connected_at >= self.reconnect_max):
            self._attempts = 1
        self._connected_at = None

    def _published(self, client, userdata, mid, reason_code, properties) -> None:
        ok = reason_code is None or not reason_code.is_failure
        if not ok:
            log.error("broker refused message %s: %s", mid, reason_code)
        for fn in list(self._listeners):
            try:
                fn(mid, ok)
            except Exception:
                # The network thread must survive a listener's bug; the outbox
                # sweeps acknowledgements again on its next pump.
                log.exception("publish listener failed for mid %s", mid)

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
            if (isinstance(err, InvalidMessage) and self.on_bad_command is not None
                    and msg.topic == self._topic(Kind.CMD)):
                self._dispatch(self.on_bad_command, bytes(msg.payload), err)
            return
        if isinstance(message, m.HubStatus):
            self._hub_status(message)
        if isinstance(message, m.Command) and self.on_command is not None:
            self._dispatch(self.on_command, message)
        else:
            self._dispatch(self._on_inbound, message)

    def _dispatch(self, fn: Callable, *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            # A bug in one handler must not kill the network thread.
            log.exception("handling an inbound message failed")

    def _hub_status(self, status: m.HubStatus) -> None:
        """Schedule the contract §9 republish when the hub turns online.

        "Turns online" is an online whose ``ts`` differs from the last online this
        process saw: the first one after start (the retained one answering the
        first subscribe) and every hub restart count; the same retained
        message re-delivered after our own reconnect does not — that connect
        already published a birth.
        """
        with self._lock:
            if status.state != "online":
                self._hub_online_ts = None
                return
            if status.ts == self._hub_online_ts:
                return
            self._hub_online_ts = status.ts
            if self._republish_at is None:
                delay = self._rand() * self.hub_online_delay
                self._republish_at = self._clock.monotonic() + delay
                log.info("hub is online; republishing the birth in %.1f s", delay)
