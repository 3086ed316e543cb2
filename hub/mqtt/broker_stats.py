"""The broker's own counters, from Mosquitto's ``$SYS`` topics, as hub metrics.

Mosquitto publishes its statistics every ``sys_interval`` (10 s by default;
deploy/mosquitto/yizhan.conf keeps it), retained, under ``$SYS/``. The hub
subscribes to the three ops watch (the deployment ACL lets only ``_hub`` read
``$SYS/#``) and shows each once it has heard it; until then the series is
absent, not 0. A payload is untrusted text: only 1 to 15 ASCII digits count,
anything else is ignored (and logged once).

>>> stats = BrokerStats(registry)
>>> stats.take("$SYS/broker/clients/connected", b"42")
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from yizhan.untrusted import decimal

log = logging.getLogger(__name__)

SYS_PREFIX = "$SYS/"
#: topic → (metric name, help, counter?). Counters are named without ``_total``:
#: the exposition adds it.
TOPICS: dict[str, tuple[str, str, bool]] = {
    "$SYS/broker/clients/connected": (
        "yizhan_broker_clients_connected",
        "Clients connected to the MQTT broker (its $SYS/broker/clients/connected).", False),
    "$SYS/broker/messages/received": (
        "yizhan_broker_messages_received",
        "Messages of any kind the broker received since it started "
        "($SYS/broker/messages/received).", True),
    "$SYS/broker/publish/messages/dropped": (
        "yizhan_broker_messages_dropped",
        "PUBLISH messages the broker dropped since it started, for full queues or "
        "offline clients ($SYS/broker/publish/messages/dropped).", True),
}
#: What the hub subscribes to for them: QoS 0, as the broker publishes them.
SUBSCRIPTIONS = [(topic, 0) for topic in TOPICS]


class BrokerStats(Collector):
    """The last value heard on each of ``TOPICS``; taken in from paho's thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()
        self._complained: set[str] = set()
        #: Whether this process exports them: with several hub workers only the
        #: leader does (the hub sets it), so a sum over workers counts the broker once.
        self.exported: Callable[[], bool] = lambda: True
        if registry is not None:
            registry.register(self)

    @staticmethod
    def is_ours(topic: str) -> bool:
        return isinstance(topic, str) and topic.startswith(SYS_PREFIX)

    def take(self, topic: str, payload: bytes) -> bool:
        """Keep ``payload`` as the value of ``topic``; False when it is not one of
        ours or not a plain count."""
        if topic not in TOPICS:
            return False
        try:
            text = payload.decode("ascii").strip() if len(payload) <= 32 else ""
        except (UnicodeDecodeError, AttributeError):
            text = ""
        value = decimal(text)
        if value is None:
            if topic not in self._complained:
                self._complained.add(topic)
                log.warning("ignoring a broker statistic on %s that is not a count: %r",
                            topic, bytes(payload[:40]) if isinstance(payload, bytes) else "")
            return False
        with self._lock:
            self._values[topic] = value
        return True

    def value(self, topic: str) -> int | None:
        with self._lock:
            return self._values.get(topic)

    def collect(self) -> Iterator[Metric]:
        if not self.exported():
            return
        with self._lock:
            values = dict(self._values)
        for topic, (name, help_, counter) in TOPICS.items():
            if topic not in values:
                continue
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, help_)
            family.add_metric([], float(values[topic]))
            yield family

    def describe(self) -> Iterator[Metric]:
        for name, help_, counter in TOPICS.values():
            yield (CounterMetricFamily if counter else GaugeMetricFamily)(name, help_)
