"""Exponential backoff with jitter, one definition for every retry loop.

A fleet that lost its broker must not come back in lock-step: each wait is
drawn from the upper ``jitter`` share of ``minimum · 2^(retry-1)``, capped at
``maximum`` — by default the upper half (so the n-th wait is never shorter than
half the deterministic one, and a thousand stations spread over the second half
of the window); ``jitter=0`` waits exactly the ceiling.

>>> b = Backoff(0.5, 60.0, rand=lambda: 1.0)
>>> [b.delay(n) for n in (1, 2, 3, 10)]
[0.5, 1.0, 2.0, 60.0]
>>> Backoff(0.5, 60.0, rand=lambda: 0.0).delay(10)
30.0
>>> Backoff(1.0, 30.0, rand=lambda: 0.0, jitter=0.25).delay(2)
1.5

Who uses it: the MQTT link of the stations and of the hub (``yizhan/mqtt_client.py``,
upper half), the locker board's reopening (``firmware/locker.py``, upper quarter),
the hub's notification retries (``hub/alerting/notify/outbox.py``, upper fifth)
and the hub writer's retries while the database is away (``hub/storage/writer.py``,
no jitter: one writer a process).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """``delay(retry)``: seconds to wait before retry number ``retry`` (1 = the first)."""

    minimum: float
    maximum: float
    rand: Callable[[], float] = field(default=random.random, compare=False)
    #: The share of the ceiling drawn at random: a wait lies in
    #: ``[(1 - jitter) · ceiling, ceiling]``.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.maximum:
            raise ValueError(f"need 0 < minimum <= maximum, got {self.minimum}, {self.maximum}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"need 0 <= jitter <= 1, got {self.jitter}")

    def ceiling(self, retry: int) -> float:
        """The undrawn wait before retry ``retry``: ``minimum · 2^(retry-1)``, capped."""
        return min(self.maximum, self.minimum * 2 ** min(max(retry, 1) - 1, 64))

    def delay(self, retry: int) -> float:
        if not self.jitter:
            return self.ceiling(retry)
        return self.ceiling(retry) * (1 - self.jitter + self.jitter * self.rand())
