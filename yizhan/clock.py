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

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` have passed on this clock;
        True when the event was set. What a backoff or a timer waits with, so a
        test's ManualClock can end the wait by moving time."""
        return event.wait(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that moves only when told to; ``sleep`` advances it at once.

    Thread-safe, so a test may advance it while a worker thread reads it.
    """

    #: Real seconds between looks at the clock and the event while waiting.
    POLL = 0.01

    def __init__(self, start: float = 1_764_196_800.0) -> None:
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)
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
            self._moved.notify_all()

    def jump(self, wall: float) -> None:
        """Set the wall clock (as NTP does at a Pi's boot); monotonic time is untouched."""
        with self._lock:
            self._wall = float(wall)

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait (in real time) until ``event`` is set or someone has moved this
        clock ``seconds`` on; it does not move the clock itself, so a thread
        waiting out a backoff waits for the test to advance time."""
        with self._lock:
            deadline = self._mono + max(0.0, seconds)
            while not event.is_set() and self._mono < deadline:
                self._moved.wait(self.POLL)
        return event.is_set()


SYSTEM_CLOCK = Clock()
