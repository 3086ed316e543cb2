"""The station's doors: reed switches on GPIO, debounced, reported as events.

Wiring (docs/hardware.md): a reed switch between the GPIO and GND with the Pi's
internal pull-up; the magnet on the door closes the contact while the door is
shut, so a shut door reads low and an open door — or a cut wire — reads high
(``open_when: high``, the default). ``open_when: low`` is for a switch wired
to 3V3, read with the internal pull-down.

    doors = Doors(parse_doors(Section({"entrance": {"pin": 17}}, "doors")),
                  reporter, clock, pin_factory=factory)
    doors.poll()                       # from the station loop, every 0.25 s
    doors["entrance"].is_open          # False
    doors.section()                    # {"entrance": False}  (contract §5 doors)

A change counts once the switch has held its new position ``bounce`` seconds
on the agent's clock: gpiozero's own ``bounce_time`` filters in the kernel's
time, this one makes the rule provable with a ManualClock. Edges only note the
switch's position; :meth:`Doors.poll` turns settled changes into events and,
every ``reconcile_every`` seconds, reads each pin outright, so an edge the
kernel dropped cannot leave a door "open" forever.

Events: ``door_opened`` / ``door_closed`` {door}; ``tamper`` {door} when a
``panel`` door (a locker panel) opens while :attr:`Doors.maintenance` is False.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from firmware.hardware.pins import gpio_pin
from firmware.parts import Reporter
from yizhan.clock import Clock
from yizhan.config import ConfigError, Section, known_keys

DOOR_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class DoorSpec:
    """One door's reed switch: its GPIO, whether it is a locker panel, the pin
    level that means open, and how long a change must hold to count."""

    pin: int
    panel: bool = False
    open_when: Literal["high", "low"] = "high"
    bounce: float = 0.05


def parse_doors(section: Section | None) -> dict[str, DoorSpec]:
    """The ``doors`` section: each key a door name, each value its switch.

    ``{entrance: {pin: 17}, locker_panel: {pin: 27, panel: true}}``; a bare
    number is the pin (``entrance: 17``). A ConfigError names the key, e.g.
    ``doors.entrance.pin: is required``.
    """
    if section is None:
        return {}
    specs: dict[str, DoorSpec] = {}
    used: dict[int, str] = {}
    for name, value in section.data.items():
        where = section.key(str(name))
        if not isinstance(name, str) or not DOOR_NAME_RE.match(name):
            raise ConfigError(where, "a door name is lowercase letters, digits and _, "
                                     "starting with a letter")
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"pin": value}
        if not isinstance(value, Mapping):
            raise ConfigError(where, "must be a mapping such as {pin: 17}")
        sec = Section(value, where)
        known_keys(sec, ("pin", "panel", "open_when", "bounce"))
        pin = gpio_pin(sec, "pin", required=True)
        if pin in used:
            raise ConfigError(sec.key("pin"), f"GPIO{pin} is already the pin of door "
                                              f"{used[pin]!r}")
        used[pin] = name
        specs[name] = DoorSpec(
            pin=pin,
            panel=sec.bool("panel", False),
            open_when=sec.str("open_when", "high", choices=("high", "low")),
            bounce=sec.duration("bounce", 0.05),
        )
    return specs


class Door:
    """One door. ``is_open`` is the settled position the station reports."""

    def __init__(self, name: str, spec: DoorSpec, device: Any, now: float) -> None:
        self.name = name
        self.spec = spec
        self.device = device
        opened = self._read()
        self._open = opened  # settled: what the station reports
        self._seen = opened  # where the switch was last seen (edge or read)
        self._seen_at = now

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def panel(self) -> bool:
        return self.spec.panel

    def _read(self) -> bool:
        # The device is active while the reed contact is closed, i.e. the door shut.
        return not self.device.is_active

    def __repr__(self) -> str:
        return f"<Door {self.name} GPIO{self.spec.pin} {'open' if self._open else 'shut'}>"


class Doors:
    """All the station's doors (contract §5 ``doors``, §6 door events).

    ``pin_factory`` is the gpiozero factory to build the inputs with (a
    ``MockFactory`` in tests and simulation); None uses gpiozero's default.
    """

    def __init__(self, specs: Mapping[str, DoorSpec], reporter: Reporter, clock: Clock,
                 pin_factory: Any = None, *, reconcile_every: float = 5.0) -> None:
        from gpiozero import DigitalInputDevice

        self.reporter = reporter
        self.clock = clock
        self.reconcile_every = reconcile_every
        self.maintenance = False
        self._lock = threading.Lock()
        self._doors: dict[str, Door] = {}
        self._closed = False
        now = clock.monotonic()
        self._next_reconcile = now + reconcile_every
        try:
            for name, spec in specs.items():
                device = DigitalInputDevice(
                    spec.pin,
                    pull_up=spec.open_when == "high",
                    bounce_time=spec.bounce or None,
                    pin_factory=pin_factory,
                )
                door = Door(name, spec, device, now)
                self._doors[name] = door
                device.when_activated = lambda d=door: self._edge(d, opened=False)
                device.when_deactivated = lambda d=door: self._edge(d, opened=True)
        except Exception:
            self.close()  # a half-built set of doors releases the pins it took
            raise

    # -- reading ------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._doors)

    def __getitem__(self, name: str) -> Door:
        return self._doors[name]

    def __iter__(self) -> Iterator[Door]:
        return iter(self._doors.values())

    def is_open(self, name: str) -> bool:
        return self._doors[name].is_open

    def section(self) -> dict[str, bool]:
        """Contract §5 ``doors``: each door, true when open."""
        with self._lock:
            return {name: door.is_open for name, door in self._doors.items()}

    def describe(self) -> dict[str, Any]:
        """This part's share of the birth ``hw`` object (contract §4)."""
        return {"doors": list(self._doors)}

    # -- the loop -------------------------------------------------------------------

    def _edge(self, door: Door, *, opened: bool) -> None:
        # gpiozero's callback thread: note where the switch is, nothing more.
        with self._lock:
            if door._seen != opened:
                door._seen = opened
                door._seen_at = self.clock.monotonic()

    def poll(self) -> None:
        """Report doors whose switch has settled in a new position; every
        ``reconcile_every`` seconds, also read every pin outright."""
        if self._closed:
            return
        now = self.clock.monotonic()
        reconcile = now >= self._next_reconcile
        if reconcile:
            self._next_reconcile = now + self.reconcile_every
        reports: list[tuple[str, str]] = []
        with self._lock:
            for door in self._doors.values():
                if reconcile:
                    level = door._read()
                    if level != door._seen:  # an edge went missing
                        door._seen, door._seen_at = level, now
                if door._seen == door._open or now - door._seen_at < door.spec.bounce:
                    continue
                # Confirm with the pin itself: the last edge of a bounce can be lost.
                level = door._read()
                if level != door._seen:
                    door._seen, door._seen_at = level, now
                    continue
                door._open = level
                reports.append(("door_opened" if level else "door_closed", door.name))
                if level and door.panel and not self.maintenance:
                    reports.append(("tamper", door.name))
        # Report outside the lock: the reporter writes the journal.
        for type_, name in reports:
            self.reporter.event(type_, {"door": name})

    def close(self) -> None:
        """Release the pins; idempotent."""
        if self._closed:
            return
        self._closed = True
        for door in self._doors.values():
            door.device.close()
