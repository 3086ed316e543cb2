"""The kiosk's own brake on borrow attempts from this screen.

The agent locks a rider id after five wrong PINs; this limits how fast anyone at
the screen can try ids at all (a prank, a script on a compromised Pi's browser):

    limiter = RateLimiter([(6, 60.0), (30, 3600.0)], clock)
    wait = limiter.acquire()        # 0.0: go ahead (counted); else seconds to wait
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from yizhan.clock import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """At most ``limit`` acquisitions in any ``window`` seconds, for each rule."""

    def __init__(self, rules: Sequence[tuple[int, float]], clock: Clock) -> None:
        if not rules or any(limit < 1 or window <= 0 for limit, window in rules):
            raise ValueError("rules are (limit >= 1, window > 0) pairs")
        self.rules = tuple(sorted(rules, key=lambda r: r[1]))
        self.clock = clock
        self._lock = threading.Lock()
        self._hits: collections.deque[float] = collections.deque()
        self._longest = max(window for _, window in self.rules)

    def acquire(self) -> float:
        """Count one attempt and return 0.0, or return the seconds until one is allowed
        (nothing counted)."""
        with self._lock:
            now = self.clock.monotonic()
            while self._hits and now - self._hits[0] >= self._longest:
                self._hits.popleft()
            wait = 0.0
            for limit, window in self.rules:
                recent = [t for t in self._hits if now - t < window]
                if len(recent) >= limit:
                    # Allowed again once the oldest hit that fills the window leaves it.
                    wait = max(wait, recent[-limit] + window - now)
            if wait > 0:
                return wait
            self._hits.append(now)
            return 0.0

    def refund(self) -> None:
        """Give the last acquisition back (it turned out to be a step, not an attempt)."""
        with self._lock:
            if self._hits:
                self._hits.pop()
