"""Injectable clocks.

Code that waits, expires or dates something takes a clock instead of calling
``time`` directly, so tests move time instead of sleeping (design principle 5).

>>> clock = ManualClock(start=1_764_196_800.0)
>>> clock.advance(45)
>>> clock.ms()
1764196845000
"""

from __future__ import annotations

import threading
import time


class Clock:
    """The real clock: wall time for dating, monotonic time for measuring."""

    def now(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        return time.time()

    def ms(self) -> int:
        """Wall-clock integer milliseconds since the Unix epoch (contract ``ts``)."""
        return int(self.now() * 1000)

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for timeouts and intervals."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ManualClock(Clock):
    """A clock that moves only when told to; ``sleep`` advances it at once.

    Thread-safe, so a test may advance it while a worker thread reads it.
    """

    def __init__(self, start: float = 1_764_196_800.0) -> None:
        self._lock = threading.Lock()
        self._wall = float(start)
        self._mono = 1000.0

    def now(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot be moved backwards with advance(); use jump()")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def jump(self, wall: float) -> None:
        """Set the wall clock (as NTP does at a Pi's boot); monotonic time is untouched."""
        with self._lock:
            self._wall = float(wall)

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


SYSTEM_CLOCK = Clock()
