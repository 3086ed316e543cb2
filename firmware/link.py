"""The station's MQTT link to the hub (contract §2, §4, §9).

A station connects with a clean session, so it never receives a command that was
queued while it was away. Before every connection attempt, first or reconnect,
the link takes a fresh ``rev`` as the birth and sets the last will to the
offline form for that birth; right after the broker accepts it publishes the
birth (Status online) and asks the agent for a State. The hub, like
Sparkplug's bdSeq, ignores a will whose birth is not the current one.

Reconnects back off exponentially with jitter (``reconnect_min`` doubling up to
``reconnect_max``, each wait drawn from its upper half), so a fleet does not
reconnect in lock-step after a broker restart. The wait is paced by
:class:`yizhan.mqtt_client.PacedClient` *before* paho resets its keep-alive
clocks, on the injected clock: an outage of any length ends in a session at
these settings (docs/reliability.md). When the hub's status turns online the
link republishes the *same* birth (the will still names it) and asks for a
fresh State, after a random 0–10 s delay that :meth:`poll` serves. Why the same
birth: docs/delivery.md.

Health is judged by outcome (:meth:`healthy`): a link that has established no
session for longer than the backoff ceiling plus a connect timeout, while the
broker's port accepts TCP, first gets a fresh client object (:meth:`poll`);
if that does not help either, it reports itself unhealthy and the watchdog lets
systemd restart the agent. The link also keeps the hub's clock
(:class:`HubClock`) from the hub's time beacons, so a command can be judged
stale even while the station's own clock is not synchronised.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from firmware.hubclock import HubClock
from protocol import messages as m
from protocol.errors import InvalidMessage, TopicError
from protocol.topics import (
    RETAINED,
    Kind,
    parse_topic,
    station_subscriptions,
    topic,
)
from yizhan.backoff import Backoff
from yizhan.clock import SYSTEM_CLOCK, Clock
from yizhan.config import MqttConfig
from yizhan.mqtt_client import CallbackAPIVersion, PacedClient

log = logging.getLogger(__name__)

Handler = Callable[[m.Command | m.Directory | m.HubStatus], None]
#: ``fn(mid, ok)`` on the network thread when the broker acknowledged message ``mid``.
PublishListener = Callable[[int, bool], None]

#: Contract §9: stations spread their republish over this many seconds.
HUB_ONLINE_DELAY = 10.0
#: paho's own TCP (and TLS) connect timeout, seconds.
CONNECT_TIMEOUT = 5.0
#: Seconds a TCP probe of the broker's port may take (health check only) ...
PROBE_TIMEOUT = 3.0
#: ... and between two probes, while the link is down.
PROBE_EVERY = 30.0


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
    ``clock`` times the backoff, that delay and the health check; tests pass
    both. ``probe(host, port)`` says whether the broker's port accepts TCP
    (default: a real connect); a test may pass its own.
    """

    def __init__(self, sid: str, mqtt_config: MqttConfig, epoch: str,
                 next_rev: Callable[[], int], birth_info: Callable[[], tuple],
                 on_birth: Callable[[], None], on_inbound: Handler, *,
                 clock: Clock = SYSTEM_CLOCK, rand: Callable[[], float] = random.random,
                 reconnect_min: float = 0.5, reconnect_max: float = 60.0,
                 hub_online_delay: float = HUB_ONLINE_DELAY,
                 probe: Callable[[str, int], bool] | None = None) -> None:
        self.backoff = Backoff(reconnect_min, reconnect_max, rand)
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
        self._probe = probe or _port_accepts_tcp
        #: The hub's clock as the hub's own messages prove it (firmware/hubclock.py).
        self.hub_clock = HubClock(clock)

        self.birth: int | None = None
        self.connected = threading.Event()
        #: Counts successful connections; a message published under an older
        #: session and still unacknowledged is one paho re-sends itself.
        self.session = 0
        #: Counts client objects: a new one (after a stuck link) re-sends nothing
        #: the old one held, so whoever tracks messages in flight must forget them.
        self.generation = 0
        self.restarts = 0
        self.invalid_inbound = 0
        self.republished = 0
        self._listeners: list[PublishListener] = []
        self._reset_listeners: list[Callable[[], None]] = []
        self._birth_payload: bytes | None = None
        self._hub_online_ts: int | None = None
        self._republish_at: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started_at: float | None = None
        #: Last moment the link was known good: started, restarted, connected or lost.
        self._good_at: float | None = None
        self._restarted_at: float | None = None
        self._probing = False
        self._probed_at: float | None = None
        #: Since when every probe found the broker's port accepting (None: it did not).
        self._open_since: float | None = None
        self._client = self._make_client()

    def _make_client(self) -> PacedClient:
        config = self.config
        # The deployment's broker makes a client's id its username
        # (use_username_as_clientid, docs/protocol.md §2): send that id ourselves,
        # so the broker's logs and a broker without the setting agree with it.
        client_id = config.username or f"yizhan-{self.sid}"
        c = PacedClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=True, protocol=mqtt.MQTTv311)
        if config.username:
            c.username_pw_set(config.username, config.password)
        if config.tls is not None:
            t = config.tls
            c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(t.insecure)
        c.connect_timeout = CONNECT_TIMEOUT
        # A session must last a backoff ceiling before the count starts again:
        # one accepted and dropped at once (a duplicate client id, an ACL kick)
        # must not turn into a tight reconnect loop.
        c.pace(self.backoff, self._clock, stable_after=self.reconnect_max)
        c.on_pre_connect = self._pre_connect
        c.on_connect = self._connected
        c.on_connect_fail = self._connect_failed
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_publish = self._published
        return c

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the network thread reconnects with backoff."""
        self._started_at = self._good_at = self._clock.monotonic()
        self._launch()

    def _launch(self) -> None:
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
        self._stopping.set()
        self._client.disconnect()  # also ends a backoff wait at once
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

    def add_reset_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the client object is replaced: what the old one held
        in flight will never be acknowledged nor re-sent."""
        self._reset_listeners.append(fn)

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
        """What the station loop calls each tick: a republish that has come due,
        and the remedy for a stuck link (a fresh client object)."""
        with self._lock:
            due = self._republish_at is not None and self._clock.monotonic() >= self._republish_at
            if due:
                self._republish_at = None
        if due:
            self.rebirth()
        self._heal()

    @property
    def republish_due(self) -> float | None:
        """Monotonic time (by ``clock``) of the scheduled hub-online republish, if any."""
        with self._lock:
            return self._republish_at

    # -- health: outcomes, not attempts ------------------------------------------------

    @property
    def stuck_after(self) -> float:
        """Seconds without a session after which a reachable broker means we are stuck:
        the longest backoff wait, a TCP/TLS connect, a keepalive for the CONNACK
        (paho's wait for it), and slack."""
        return self.reconnect_max + CONNECT_TIMEOUT + self.config.keepalive + 10.0

    def _stuck(self, now: float) -> bool:
        """No session for ``stuck_after`` seconds, all of them with the broker's
        port accepting TCP: then the fault is ours, not the network's."""
        if self._started_at is None or self.connected.is_set() or self._stopping.is_set():
            self._open_since = None
            return False
        self._probe_if_due(now)
        open_since = self._open_since
        if open_since is None:
            return False
        return now - max(self._good_at or self._started_at, open_since) >= self.stuck_after

    def _probe_if_due(self, now: float) -> None:
        """Probe the broker's port every ``PROBE_EVERY`` seconds while down, in the
        background: a connect to a black-holed address must not hold up the loop."""
        with self._lock:
            if self._probing or (self._probed_at is not None
                                 and now - self._probed_at < PROBE_EVERY):
                return
            self._probing = True
            self._probed_at = now
        threading.Thread(target=self._run_probe, args=(now,), name="mqtt-probe",
                         daemon=True).start()

    def _run_probe(self, started: float) -> None:
        try:
            ok = self._probe(self.config.host, self.config.port)
        except Exception:
            log.exception("probing the broker's port failed")
            ok = False
        with self._lock:
            self._probing = False
            if not ok:
                self._open_since = None
            elif self._open_since is None:
                self._open_since = started

    def _heal(self) -> None:
        now = self._clock.monotonic()
        if self._restarted_at is not None or not self._stuck(now):
            return
        log.error("no MQTT session for %.0f s though %s:%s accepts connections; "
                  "starting a fresh client", now - (self._good_at or now),
                  self.config.host, self.config.port)
        self.restart_client()

    def restart_client(self) -> None:
        """Throw the client object away and connect with a new one."""
        old = self._client
        old.disconnect()
        old.loop_stop()
        self.connected.clear()
        self._client = self._make_client()
        self.generation += 1
        self.restarts += 1
        self._restarted_at = self._good_at = self._clock.monotonic()
        for fn in list(self._reset_listeners):
            fn()
        if not self._stopping.is_set():
            self._launch()

    def healthy(self) -> bool:
        """For the watchdog: True unless the link is stuck even after a fresh client.

        Up is healthy; a broker that is down (its port refuses or does not
        answer) is an outage, not a reason to restart. A broker whose port has
        accepted TCP for ``stuck_after`` seconds with no session coming of it
        (probed every ``PROBE_EVERY`` seconds while down) gets a fresh client first
        (:meth:`poll`); still none after another ``stuck_after``: unhealthy,
        and systemd restarts the process.
        """
        if self._started_at is None:
            return False
        if self.connected.is_set():
            return True
        now = self._clock.monotonic()
        if not self._stuck(now):
            return True
        return self._restarted_at is None or now - self._restarted_at < self.stuck_after

    def _topic(self, kind: Kind) -> str:
        return topic(self.sid, kind)

    # -- paho callbacks (network thread) ----------------------------------------

    def backoff_delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first): drawn from
        the upper half of ``reconnect_min · 2^(retry-1)``, capped at ``reconnect_max``."""
        return self.backoff.delay(retry)

    def _pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        # No waiting here: paho has already reset its keep-alive clocks (the
        # backoff was waited out before, in PacedClient._reconnect_wait).
        self.birth = self._next_rev()
        will = m.Status.will(self.sid, self.epoch, self.birth)
        client.will_set(self._topic(Kind.STATUS), m.encode(will), qos=1, retain=True)

    def _connect_failed(self, client: mqtt.Client, userdata: object) -> None:
        if self._stopping.is_set():
            return
        # Once, then quietly: a broker down for an hour would flood the log.
        level = logging.WARNING if client.retry <= 1 else logging.DEBUG
        log.log(level, "cannot reach the broker at %s:%s; retrying", self.config.host,
                self.config.port)

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
        self._good_at = self._clock.monotonic()
        self._restarted_at = None
        self.session += 1
        self.connected.set()
        log.info("connected to %s:%s, birth %s", self.config.host, self.config.port, self.birth)
        self._on_birth()

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("connection to the broker lost: %s", reason_code)
            self._good_at = self._clock.monotonic()
        self.connected.clear()

    def _published(self, client, userdata, mid, reason_code, properties) -> None:
        if client is not self._client:
            return  # a replaced client's late word: its mids mean nothing now
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
            if where.kind in (Kind.HUB_STATUS, Kind.HUB_TIME):
                message = m.decode(where.kind, msg.payload)
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
        if isinstance(message, m.HubTime):
            # A retained beacon may be old: it still bounds the hub's clock from below.
            self.hub_clock.heard(message.ts)
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


def _port_accepts_tcp(host: str, port: int) -> bool:
    """Whether a TCP connection to the broker's port completes (then closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False
