"""How busy a station is at each hour of the day.

Delivery riders rest at night and crowd in around meals: the shape below is
visits per hour relative to the day's mean (it averages 1.0), and water is
drawn in proportion (a visit draws a cup or a bottle).
"""

from __future__ import annotations

import math

#: Relative visits by local hour 0..23: a night shift, lunch 11-13, dinner 17-20.
HOURLY = (
    1.0, 0.9, 0.7, 0.5, 0.3, 0.3, 0.4, 0.6, 0.7, 0.8, 1.0, 2.2,
    2.6, 1.6, 0.8, 0.7, 0.9, 1.9, 2.3, 1.6, 1.0, 0.9, 1.0, 1.1,
)
_MEAN = sum(HOURLY) / 24
#: Shanghai: the stations' local time (the hour riders keep).
UTC_OFFSET_S = 8 * 3600


def factor(sim_s: float) -> float:
    """The relative rate at simulated Unix time ``sim_s`` (seconds)."""
    hour = int(((sim_s + UTC_OFFSET_S) % 86400) // 3600)
    return HOURLY[hour] / _MEAN


def next_gap(rng, per_hour: float, sim_s: float) -> float:
    """Simulated seconds to the next visit: exponential at this hour's rate."""
    rate = per_hour * factor(sim_s) / 3600.0
    if rate <= 0:
        return math.inf
    return rng.expovariate(rate)


class SimTime:
    """Simulated time running ``speed`` times faster than ``clock`` (monotonic),
    from ``start`` (Unix seconds; default now)."""

    def __init__(self, clock, speed: float = 1.0, start: float | None = None) -> None:
        self.clock = clock
        self.speed = speed
        self.start = clock.now() if start is None else start
        self._m0 = clock.monotonic()

    def now(self) -> float:
        return self.start + (self.clock.monotonic() - self._m0) * self.speed

    def wall_after(self, sim_seconds: float) -> float:
        """The monotonic time ``sim_seconds`` of simulated time from now."""
        return self.clock.monotonic() + sim_seconds / self.speed


__all__ = ["HOURLY", "SimTime", "factor", "next_gap"]
