"""Doors, the PIR and the riders who move them, felt only through GPIO pins.

:class:`DoorSim` holds each door's reed-switch pin where the magnet would,
:class:`PirSim` drives the PIR's output pin, and :class:`Traffic` sends riders
in and out at random plausible times: the entrance opens and shuts as each
arrives and leaves, the PIR sees someone while anyone is inside. Scripted
faults: a bouncing contact and an edge the kernel never delivered.

    >>> from gpiozero.pins.mock import MockFactory
    >>> from firmware.doors import DoorSpec
    >>> doors = DoorSim({"entrance": DoorSpec(pin=17)}, MockFactory())
    >>> doors.open("entrance"); doors.is_open("entrance")
    True

As with :mod:`firmware.sim.water`, build these before the parts that read the pins.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Mapping
from typing import Any

from firmware.doors import DoorSpec
from firmware.occupancy import OccupancySpec
from firmware.sim.timeline import Timeline
from firmware.sim.water import DrivenPin, driven_pin
from yizhan.clock import SYSTEM_CLOCK, Clock


class DoorSim:
    """The reed switches of ``specs``; every door starts shut."""

    def __init__(self, specs: Mapping[str, DoorSpec], pin_factory: Any) -> None:
        self.specs = dict(specs)
        self._lock = threading.Lock()
        self._pins: dict[str, DrivenPin] = {n: driven_pin(pin_factory, s.pin)
                                            for n, s in self.specs.items()}
        self._open: dict[str, bool] = dict.fromkeys(self.specs, False)
        for name in self.specs:
            self._set(name, False)

    def _level(self, name: str, opened: bool) -> bool:
        return opened == (self.specs[name].open_when == "high")

    def _set(self, name: str, opened: bool) -> None:
        self._pins[name].drive(self._level(name, opened))
        self._open[name] = opened

    def is_open(self, name: str) -> bool:
        with self._lock:
            return self._open[name]

    def open(self, name: str) -> None:
        with self._lock:
            self._set(name, True)

    def close(self, name: str) -> None:
        with self._lock:
            self._set(name, False)

    def bounce(self, name: str, opened: bool, chatter: int = 5) -> None:
        """The contact chatters ``chatter`` times, then rests open or shut —
        all at one instant of the clock, as a real bounce is a few ms."""
        with self._lock:
            for _ in range(chatter):
                self._set(name, opened)
                self._set(name, not opened)
            self._set(name, opened)

    def move_unseen(self, name: str, opened: bool) -> None:
        """The door moves but no edge is delivered (an interrupt the kernel
        dropped): only a read of the pin can tell."""
        with self._lock:
            pin = self._pins[name]
            edges, pin.edges = pin.edges, "none"
            try:
                self._set(name, opened)
            finally:
                pin.edges = edges


class PirSim:
    """A PIR's output pin: high while it sees motion."""

    def __init__(self, spec: OccupancySpec, pin_factory: Any) -> None:
        self.pin = driven_pin(pin_factory, spec.pin)
        self.pin.drive(False)

    @property
    def motion(self) -> bool:
        return bool(self.pin.state)

    def set(self, motion: bool) -> None:
        self.pin.drive(motion)


class Traffic(Timeline):
    """Riders arriving at ``riders_per_hour`` (Poisson, seeded), staying a
    uniform ``stay`` seconds, opening ``door`` for ``door_open`` seconds on the
    way in and out; the PIR sees motion while anyone is inside.

    Time works as in the water simulation: ``tick(seconds)`` or catch up with
    the clock on each call; ``start()`` follows a real clock on a thread.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        doors: DoorSim | None = None,
        door: str | None = "entrance",
        pir: PirSim | None = None,
        riders_per_hour: float = 12.0,
        stay: tuple[float, float] = (60.0, 900.0),
        door_open: float = 3.0,
        seed: int = 0,
        time_scale: float = 1.0,
    ) -> None:
        self._init_timeline(clock or SYSTEM_CLOCK, time_scale, "traffic-sim")
        self.doors = doors
        self.door = door if doors is not None and door in doors.specs else None
        self.pir = pir
        self.riders_per_hour = riders_per_hour
        self.stay = stay
        self.door_open = door_open
        self.arrivals = 0
        self.inside = 0
        self._rng = random.Random(seed)
        self._queue: list[tuple[float, int, str]] = []
        self._n = 0
        self._door_holds = 0
        self._schedule_arrival()

    def _push(self, at: float, what: str) -> None:
        self._n += 1
        heapq.heappush(self._queue, (at, self._n, what))

    def _schedule_arrival(self) -> None:
        if self.riders_per_hour > 0:
            self._push(self._t + self._rng.expovariate(self.riders_per_hour / 3600.0), "arrive")

    def _advance(self, seconds: float) -> None:
        end = self._t + seconds
        while self._queue and self._queue[0][0] <= end:
            at, _, what = heapq.heappop(self._queue)
            self._t = max(self._t, at)
            self._do(what)
        self._t = end

    def _do(self, what: str) -> None:
        if what == "arrive":
            self.arrivals += 1
            self.inside += 1
            self._open_door()
            self._push(self._t + self._rng.uniform(*self.stay), "leave")
            self._schedule_arrival()
        elif what == "leave":
            self.inside -= 1
            self._open_door()
        elif what == "shut":
            self._door_holds -= 1
            if self._door_holds == 0 and self.door is not None:
                self.doors.close(self.door)
        if self.pir is not None:
            self.pir.set(self.inside > 0)

    def _open_door(self) -> None:
        if self.door is None:
            return
        self._door_holds += 1
        self.doors.open(self.door)
        self._push(self._t + self.door_open, "shut")
