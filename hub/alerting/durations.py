"""``yizhan_alert_duration_seconds{rule}``: how long alerts lasted, from start to resolution.

Observed once per alert, when it is resolved (by the engine when its condition
cleared, or by a person), so ops can ask how long a tank stayed low before a
refill: ``histogram_quantile(0.9, sum by (le) (rate(
yizhan_alert_duration_seconds_bucket{rule="water_low"}[7d])))``.

>>> durations = AlertDurations(registry, rules=RULES + HUB_RULES)
>>> alerts.on_resolved.append(durations.observe)
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

NAME = "yizhan_alert_duration_seconds"
HELP = "Time from an alert's start to its resolution, observed when it is resolved."
#: A minute to three days: refills take minutes to hours, a fault can take days.
BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


class AlertDurations(Collector):
    """A histogram per rule: each of ``rules`` from the start, at 0, and any other
    rule once one of its alerts was resolved.

    Why at 0: ``increase()`` and ``rate()`` count from a series' first sample, so a
    histogram that first appears with its first observation in it shows that
    observation to nobody: a new hub's first refill was missing from "Time from
    alert to refill" until a second one came (Prometheus's "avoid missing metrics").
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 rules: tuple[str, ...] = ()) -> None:
        self.bounds = tuple(float(b) for b in BUCKETS)
        self._lock = threading.Lock()  # the engine's thread and the API's resolve
        self._rules: dict[str, tuple[list[int], list[float]]] = {
            rule: ([0] * (len(self.bounds) + 1), [0.0]) for rule in rules}
        if registry is not None:
            registry.register(self)

    def observe(self, alert: dict[str, Any]) -> None:
        """Count ``alert`` (as ``AlertStore`` returns it) by its rule."""
        started, resolved = alert.get("started_at"), alert.get("resolved_at")
        if not isinstance(started, int) or not isinstance(resolved, int):
            return
        # A hub clock that stepped back between start and resolution: not negative.
        seconds = max(0, resolved - started) / 1000
        with self._lock:
            counts, total = self._rules.setdefault(
                str(alert["rule"]), ([0] * (len(self.bounds) + 1), [0.0]))
            counts[bisect.bisect_left(self.bounds, seconds)] += 1
            total[0] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(NAME, HELP, labels=["rule"])
        with self._lock:
            rules = {r: (list(c), t[0]) for r, (c, t) in self._rules.items()}
        for rule, (counts, total) in sorted(rules.items()):
            buckets, running = [], 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                buckets.append((floatToGoString(bound), running))
            family.add_metric([rule], buckets, total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(NAME, HELP, labels=["rule"])
