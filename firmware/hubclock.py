"""The hub's clock as this station can prove it, for judging commands stale.

A Raspberry Pi has no battery clock: it boots with yesterday's time
(fake-hwclock) and NTP steps it later, so while ``synced`` is false its own
clock says nothing about whether a command's ``expires`` has passed. The hub's
clock does. The hub's time beacon on ``yizhan/v1/hub/time`` (every 30 s,
retained) says "the hub's clock read at least ``ts`` when I was sent". It reached us at
monotonic time ``r``, so the hub's clock now reads at least
``ts + (monotonic_now − r)``. A message that waited in a queue or a half-open
link only makes that bound lower, never higher, so the largest bound is kept:
a late beacon cannot make a late command look fresh (unless it is so late
that only a step back of the hub's own clock explains it: ``STEPPED_BACK_MS``),
and one prompt beacon is enough to judge every later command (docs/protocol.md,
"Commands and the station's clock"). A command's own ``ts`` is not used: it would vouch for itself.

>>> from yizhan.clock import ManualClock
>>> clock = ManualClock()
>>> hub = HubClock(clock)
>>> hub.now_ms() is None
True
>>> hub.heard(1_764_196_800_000)
>>> clock.advance(40)
>>> hub.now_ms()
1764196840000
"""

from __future__ import annotations

import logging
import threading

from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: A hub timestamp beyond this (year 2286) is not a clock reading: ignored.
MAX_TS = 10**13
#: A beacon this far below the bound is no late delivery (a retained copy is at
#: most a beacon interval old, a half-open link holds one 1.5 keepalives): the
#: hub's clock was stepped back (NTP on the hub, a restored VM). Follow it, or
#: every command it sends would look expired until the station restarts.
STEPPED_BACK_MS = 120_000


class HubClock:
    """A lower bound on the hub's clock, carried forward on the monotonic clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._offset_ms: int | None = None  # hub ms minus monotonic ms, the largest seen
        self.heard_count = 0

    def heard(self, ts_ms: int | None) -> None:
        """A hub-stamped message with ``ts_ms`` arrived just now."""
        if ts_ms is None or not 0 < ts_ms < MAX_TS:
            return
        offset = ts_ms - int(self._clock.monotonic() * 1000)
        with self._lock:
            self.heard_count += 1
            if self._offset_ms is None or offset > self._offset_ms:
                self._offset_ms = offset
            elif self._offset_ms - offset > STEPPED_BACK_MS:
                log.warning("the hub's clock stepped back by %.0f s; following it",
                            (self._offset_ms - offset) / 1000)
                self._offset_ms = offset

    def now_ms(self) -> int | None:
        """The hub's clock reads at least this now; None before any hub time was heard."""
        with self._lock:
            offset = self._offset_ms
        if offset is None:
            return None
        return int(self._clock.monotonic() * 1000) + offset
