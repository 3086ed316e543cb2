"""Exponential backoff with jitter, one definition for every retry loop.

A fleet that lost its broker must not come back in lock-step: each wait is
drawn from the upper half of ``minimum · 2^(retry-1)``, capped at ``maximum``
(so the n-th wait is never shorter than half the deterministic one, and a
thousand stations spread over the second half of the window).

>>> b = Backoff(0.5, 60.0, rand=lambda: 1.0)
>>> [b.delay(n) for n in (1, 2, 3, 10)]
[0.5, 1.0, 2.0, 60.0]
>>> Backoff(0.5, 60.0, rand=lambda: 0.0).delay(10)
30.0
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

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.maximum:
            raise ValueError(f"need 0 < minimum <= maximum, got {self.minimum}, {self.maximum}")

    def ceiling(self, retry: int) -> float:
        """The undrawn wait before retry ``retry``: ``minimum · 2^(retry-1)``, capped."""
        return min(self.maximum, self.minimum * 2 ** min(max(retry, 1) - 1, 64))

    def delay(self, retry: int) -> float:
        return self.ceiling(retry) * (0.5 + 0.5 * self.rand())
