"""Model time for the simulators: moved by a test, or following a clock.

A simulator's physics moves only in ``_advance(seconds)``. ``tick(seconds)``
moves it explicitly; every other call first catches up with the injected clock
(``sync``), so a test that shares a ManualClock with the agent moves both at
once; ``start()`` follows a real clock on a thread of its own (the demo).
"""

from __future__ import annotations

import threading

from yizhan.clock import Clock


class Timeline:
    """Base of the cabinet, tank and traffic models.

    A subclass calls ``_init_timeline(clock, time_scale, name)`` in its
    constructor and implements ``_advance``; ``_at_rest`` runs when a sync finds
    no time passed (a model may refresh its outputs then).
    """

    clock: Clock
    time_scale: float

    def _init_timeline(self, clock: Clock, time_scale: float, name: str) -> None:
        self.clock = clock
        self.time_scale = time_scale
        self._lock = threading.RLock()
        self._t = 0.0  # model seconds since the simulation started
        self._synced_at = clock.monotonic()
        self._ticker_name = name
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def _advance(self, seconds: float) -> None:
        raise NotImplementedError

    def _at_rest(self) -> None:
        """Called by a sync that found no time passed."""

    @property
    def time(self) -> float:
        """Model seconds since the simulation started."""
        with self._lock:
            self._sync()
            return self._t

    def tick(self, seconds: float) -> None:
        """Move the model ``seconds`` forward on its own (the clock is not touched)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._sync()
            self._advance(seconds)

    def sync(self) -> None:
        """Catch up with the clock (the background ticker calls this)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        now = self.clock.monotonic()
        elapsed, self._synced_at = now - self._synced_at, now
        if elapsed > 0:
            self._advance(elapsed * self.time_scale)
        else:
            self._at_rest()

    def start(self, interval: float = 0.25):
        """Follow the clock on a daemon thread until :meth:`stop`."""
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._follow, args=(interval,),
                                            name=self._ticker_name, daemon=True)
            self._ticker.start()
        return self

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sync()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
