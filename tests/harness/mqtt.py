"""A small paho-mqtt 2.x client for tests: subscribe and collect, publish and wait.

>>> with Subscriber(broker, "yizhan/v1/+/state") as sub:     # doctest: +SKIP
...     publish(broker, "yizhan/v1/yh-chumen-01/state", b"{}", retain=True)
...     msg = sub.wait_for(lambda m: m.topic.endswith("/state"))
>>> msg.json()
{}
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

_ids = itertools.count(1)


class ConnectRefused(AssertionError):
    """The broker answered the CONNECT with a failure reason (bad password, ...)."""

    def __init__(self, reason: ReasonCode | str) -> None:
        super().__init__(f"connection refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


def _client_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns() % 100000}"


def connect(
    broker: Any,
    *,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    clean_session: bool = True,
    protocol: int = mqtt.MQTTv311,
    timeout: float = 5.0,
    on_message: Callable[[Received], None] | None = None,
) -> mqtt.Client:
    """A connected, looping client; raises :class:`ConnectRefused` on a refusal.

    The caller owns it: ``client.disconnect(); client.loop_stop()``, or use
    :func:`close`.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or _client_id("test"),
        # MQTT 5 replaced clean_session by clean_start (a connect() argument).
        clean_session=None if protocol == mqtt.MQTTv5 else clean_session,
        protocol=protocol,
    )
    if username is not None:
        client.username_pw_set(username, password)
    outcome: list[ReasonCode | str] = []
    answered = threading.Event()

    def on_connect(c, _u, _flags, reason, _props):
        if reason.is_failure:
            # Stop paho's thread from retrying (and sleeping in its back-off):
            # a test that expects a refusal must see exactly one.
            c.disconnect()
        outcome.append(reason)
        answered.set()

    def on_disconnect(_c, _u, _flags, reason, _props):
        # A refused CONNECT in 3.1.1 may show up only as a disconnect.
        if not answered.is_set():
            outcome.append(reason)
            answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if on_message is not None:
        client.on_message = lambda _c, _u, m: on_message(
            Received(m.topic, bytes(m.payload), m.qos, bool(m.retain), time.monotonic())
        )
    if protocol == mqtt.MQTTv5:
        client.connect(broker.host, broker.port, keepalive=30, clean_start=clean_session)
    else:
        client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not answered.wait(timeout):
        close(client)
        raise AssertionError(f"no CONNACK from {broker.url} within {timeout} s")
    reason = outcome[0]
    if getattr(reason, "is_failure", True):
        close(client)
        raise ConnectRefused(reason)
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


class Subscriber:
    """Subscribes to ``topics`` and keeps every message it gets, in order.

    ``granted`` holds the broker's SUBACK answer per topic; with
    ``require_granted`` (the default) a refused subscription is an error, pass
    ``False`` to look at a refusal (ACL tests).
    """

    def __init__(
        self,
        broker: Any,
        topics: str | Iterable[str],
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        require_granted: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self.granted: list[ReasonCode] = []
        self._client = connect(
            broker,
            username=username,
            password=password,
            client_id=client_id or _client_id("sub"),
            timeout=timeout,
            on_message=self._collect,
        )
        try:
            self._subscribe(qos, timeout, require_granted)
        except BaseException:
            self.close()
            raise

    def _subscribe(self, qos: int, timeout: float, require_granted: bool) -> None:
        acked = threading.Event()

        def on_subscribe(_c, _u, _mid, reasons, _props):
            self.granted = list(reasons)
            acked.set()

        self._client.on_subscribe = on_subscribe
        rc, _mid = self._client.subscribe([(t, qos) for t in self.topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"subscribe to {self.topics} failed to send: {rc}")
        if not acked.wait(timeout):
            raise AssertionError(f"no SUBACK for {self.topics} within {timeout} s")
        refused = self.refused
        if require_granted and refused:
            raise AssertionError(f"subscription refused for {refused}: {self.granted}")

    @property
    def refused(self) -> list[str]:
        """Topics whose subscription the broker refused."""
        return [t for t, r in zip(self.topics, self.granted, strict=False) if r.is_failure]

    def _collect(self, message: Received) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        """A copy of everything received so far."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[Received], bool] | str, timeout: float = 5.0
    ) -> Received:
        """The first message (received so far or later) that matches ``predicate``.

        A string predicate matches the topic exactly. Raises AssertionError
        listing what did arrive when nothing matches within ``timeout``.
        """
        if isinstance(predicate, str):
            topic = predicate
            predicate = lambda m: m.topic == topic  # noqa: E731
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for message in self._messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self._messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(m.topic, m.payload[:80]) for m in self._messages]
                    raise AssertionError(
                        f"no matching message on {self.topics} within {timeout} s; "
                        f"got {len(got)}: {got}"
                    )
                self._cond.wait(left)

    def close(self) -> None:
        close(self._client)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    broker: Any,
    topic: str,
    payload: bytes | str | dict | list,
    qos: int = 1,
    retain: bool = False,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
) -> None:
    """Publish one message and return once the broker acknowledged it (QoS 1/2).

    A dict or list payload is sent as JSON. Note that a broker enforcing an ACL
    still acknowledges a denied QoS 1 publish under MQTT 3.1.1 and drops it, so
    a PUBACK proves delivery to the broker, not to any subscriber.
    """
    if isinstance(payload, dict | list):
        payload = json.dumps(payload, separators=(",", ":"))
    client = connect(broker, username=username, password=password, timeout=timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"no acknowledgement for {topic} within {timeout} s")
    finally:
        close(client)
