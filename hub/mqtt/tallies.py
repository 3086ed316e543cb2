"""The ingest's own metrics (contract §12), kept as plain numbers.

``yizhan_hub_messages_total`` and ``yizhan_hub_ingest_lag_seconds`` change on
every message. prometheus_client's ``Counter`` and ``Histogram`` take a lock per
change, and a histogram walks its buckets in Python: a twentieth of the hub's
CPU in a backlog (``bench/hub_apply.py``). Only paho's network thread changes
these, so they are plain integers here, handed to Prometheus at scrape time like
the fleet's own series (``hub.http.metrics``).

>>> tallies = MessageTallies(["state"], ["applied"], registry)
>>> tallies.inc("state", "applied")
>>> lag = LagHistogram(registry=registry, buckets=(0.1, 1.0))
>>> lag.observe(0.25)
>>> refused = RefusalTallies(["state"], ["not_json"], registry)
>>> refused.inc("state", "not_json")
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class MessageTallies(Collector):
    """``yizhan_hub_messages_total{kind,result}``: every pair from the start, at 0.

    Changed from one thread (paho's); read from any (a scrape, a test)."""

    NAME = "yizhan_hub_messages"
    HELP = "Messages taken in from stations, by kind and outcome."
    LABELS = ("kind", "result")

    def __init__(self, kinds: Iterable[str], results: Iterable[str],
                 registry: CollectorRegistry | None = None) -> None:
        self.counts = {(k, r): 0 for k in kinds for r in results}
        if registry is not None:
            registry.register(self)

    def inc(self, kind: str, result: str) -> None:
        self.counts[(kind, result)] += 1

    def value(self, kind: str, result: str) -> int:
        return self.counts[(kind, result)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=list(self.LABELS))
        for (kind, result), n in list(self.counts.items()):
            family.add_metric([kind, result], n)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=list(self.LABELS))


class RefusalTallies(MessageTallies):
    """``yizhan_hub_invalid_messages_total{kind,reason}``: why each message the
    ingest refused was refused, every pair from the start, at 0. The reasons
    are a fixed few words (hub/mqtt/ingest.py ``REASONS``), never text a
    station sent: a label per made-up value would be a series per attacker's
    whim."""

    NAME = "yizhan_hub_invalid_messages"
    HELP = "Messages the hub refused, by kind and reason (each also counted invalid " \
           "in yizhan_hub_messages_total, but kind other)."
    LABELS = ("kind", "reason")


class LagHistogram(Collector):
    """``yizhan_hub_ingest_lag_seconds``: a Prometheus histogram (cumulative
    ``le`` buckets, a value equal to a bound counted in it), observed from one thread."""

    NAME = "yizhan_hub_ingest_lag_seconds"
    HELP = "Hub apply time minus the station's ts, for live messages from synced clocks."

    def __init__(self, buckets: Iterable[float], registry: CollectorRegistry | None = None
                 ) -> None:
        bounds = sorted(float(b) for b in buckets if b != math.inf)
        if not bounds:
            raise ValueError("a histogram needs at least one finite bucket")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # the last is +Inf's own
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
            running += n
            buckets.append((floatToGoString(bound), running))
        family = HistogramMetricFamily(self.NAME, self.HELP)
        family.add_metric([], buckets, total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.NAME, self.HELP)
