"""Visits counted by a PIR motion sensor over the seating area.

A visit is one burst of motion: the first motion after the sensor has seen
nothing for ``rearm`` seconds (on the agent's clock) counts one, and motion
within ``rearm`` of the last keeps belonging to the same visit. Counts are
reported as ``visit`` {count} events every ``flush_every`` (and at shutdown
with :meth:`Occupancy.flush`), so the hub's ``yizhan_visits_total`` grows
without an event per rider.

    occupancy = Occupancy(parse_occupancy(Section({"pin": 22}, "occupancy")),
                          reporter, clock, pin_factory=factory)
    occupancy.poll()       # from the station loop
    occupancy.flush()      # at shutdown, before the journal closes

Wiring (docs/hardware.md): an HC-SR501-style PIR, powered from 5 V, its 3.3 V
output on the GPIO; the Pi's pull-down keeps an unplugged sensor quiet.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from firmware.hardware.pins import gpio_pin
from firmware.parts import Reporter
from yizhan.clock import Clock
from yizhan.config import ConfigError, Section, known_keys


@dataclass(frozen=True)
class OccupancySpec:
    """The PIR's GPIO, the quiet time that ends a visit, how often counts are
    reported, and how often gpiozero samples the sensor (per second)."""

    pin: int
    rearm: float = 30.0
    flush_every: float = 15 * 60.0
    sample_rate: float = 10.0


def parse_occupancy(section: Section | None) -> OccupancySpec | None:
    """The ``occupancy`` section, or None when the station has no PIR."""
    if section is None:
        return None
    known_keys(section, ("pin", "rearm", "flush_every", "sample_rate"))
    spec = OccupancySpec(
        pin=gpio_pin(section, "pin", required=True),
        rearm=section.duration("rearm", 30.0),
        flush_every=section.duration("flush_every", 15 * 60.0),
        sample_rate=section.float("sample_rate", 10.0, lo=1, hi=1000),
    )
    if spec.flush_every <= 0:
        raise ConfigError(section.key("flush_every"), "must be longer than zero")
    return spec


class Occupancy:
    """Counts visits from a PIR (gpiozero ``MotionSensor``) into ``visit`` events."""

    def __init__(self, spec: OccupancySpec, reporter: Reporter, clock: Clock,
                 pin_factory: Any = None) -> None:
        from gpiozero import MotionSensor

        self.spec = spec
        self.reporter = reporter
        self.clock = clock
        self._lock = threading.Lock()
        self._pending = 0  # visits not yet reported
        self._motion = False
        self._last_motion: float | None = None  # clock time motion was last seen
        self._next_flush = clock.monotonic() + spec.flush_every
        self._closed = False
        self.sensor = MotionSensor(spec.pin, queue_len=1, sample_rate=spec.sample_rate,
                                   pin_factory=pin_factory)
        self.sensor.when_motion = self._on_motion
        self.sensor.when_no_motion = self._on_no_motion

    @property
    def motion(self) -> bool:
        """Whether the sensor sees motion now (as the callbacks last heard)."""
        with self._lock:
            return self._motion

    @property
    def pending(self) -> int:
        """Visits counted since the last ``visit`` event."""
        with self._lock:
            return self._pending

    def _on_motion(self) -> None:
        # gpiozero's sampling thread: count, nothing more.
        with self._lock:
            now = self.clock.monotonic()
            if self._last_motion is None or now - self._last_motion >= self.spec.rearm:
                self._pending += 1
            self._motion = True
            self._last_motion = now

    def _on_no_motion(self) -> None:
        with self._lock:
            self._motion = False
            self._last_motion = self.clock.monotonic()

    def poll(self) -> None:
        """Report the count every ``flush_every`` when it is not zero."""
        now = self.clock.monotonic()
        if self._closed or now < self._next_flush:
            return
        self._next_flush = now + self.spec.flush_every
        self.flush()

    def flush(self) -> None:
        """Report the visits counted so far now, if any (the agent's shutdown)."""
        with self._lock:
            count, self._pending = self._pending, 0
        if count:
            self.reporter.event("visit", {"count": count})

    def describe(self) -> dict[str, Any]:
        """This part's share of the birth ``hw`` object: nothing the contract names."""
        return {}

    def close(self) -> None:
        """Report what is counted, stop sampling and release the pin; idempotent.

        Close it while the reporter (the journal) is still open."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self.sensor.close()
