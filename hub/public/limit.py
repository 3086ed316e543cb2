"""A per-address allowance for the public pages, which anyone may ask for.

Each client address has a bucket of ``BURST`` requests that refills at ``RATE``
a second on the hub's clock; an empty bucket is answered 429 with Retry-After.
A rider's phone asks twice a visit (the page; the feed if an app polls); a
scraper looping on the feed is slowed without slowing the hub's other work.
Behind a reverse proxy every rider shares the proxy's address, so the proxy's
own limit is the one that counts there (docs/finder.md).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

BURST = 60
RATE = 1.0  # a request a second, sustained
#: Addresses remembered; the least recently seen go first (their bucket was full).
KEPT = 10_000


class Allowance:
    def __init__(self, clock, burst: int = BURST, rate: float = RATE) -> None:
        self.clock, self.burst, self.rate = clock, burst, rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, address: str) -> float:
        """0 when ``address`` may go on; else the seconds until it may."""
        now = self.clock.monotonic()
        with self._lock:
            left, then = self._buckets.pop(address, (float(self.burst), now))
            left = min(float(self.burst), left + (now - then) * self.rate)
            waited = 0.0
            if left >= 1.0:
                left -= 1.0
            else:
                waited = (1.0 - left) / self.rate
            self._buckets[address] = (left, now)
            while len(self._buckets) > KEPT:
                self._buckets.popitem(last=False)
            return waited
