"""The tank's level sensors: two float switches on GPIO, or a level sensor on an
MCP3008 ADC channel (SPI0). Each reads a level state (``ok``/``low``/``empty``/
``unknown``) and, where it can, the level as a 0..1 fraction.

Wiring (docs/hardware.md): the floats between their GPIO and GND with the Pi's
pull-ups; the MCP3008 on SPI0 (``dtparam=spi=on``).

    sensor = FloatSwitches(FloatLevelSpec(low_pin=5, empty_pin=6), pin_factory)
    sensor.read(settled="ok")         # ("low", None)

A driver only: how long a new level must hold before it counts, and the
``water_level`` event, are the dispenser's (``firmware/dispenser.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class FloatLevelSpec:
    """Two float switches: ``low_pin`` trips below the low mark, ``empty_pin``
    below the mark where the element would run dry. ``active`` is the pin
    level of a tripped float; ``settle`` how long a new level must hold."""

    low_pin: int
    empty_pin: int
    active: Literal["high", "low"] = "high"
    settle: float = 2.0
    type: Literal["floats"] = "floats"


@dataclass(frozen=True)
class AdcLevelSpec:
    """A level sensor on an MCP3008 channel. The reading is scaled so that
    ``zero`` reads as an empty and ``full`` as a full tank; the level state
    turns ``low`` at ``low``, ``empty`` at ``empty``, and back only
    ``clear_margin`` above either (so it does not flap on ripples)."""

    channel: int
    low: float = 0.25
    empty: float = 0.08
    clear_margin: float = 0.05
    zero: float = 0.0
    full: float = 1.0
    device: int = 0  # SPI0 chip select: CE0 (GPIO8) or CE1 (GPIO7)
    settle: float = 2.0
    type: Literal["mcp3008"] = "mcp3008"


class LevelSensor(Protocol):
    """What the dispenser asks a level sensor: the level state it reads now
    (``ok``/``low``/``empty``/``unknown``) and the level as a 0..1 fraction
    (None where only float switches exist). ``settled`` is the dispenser's
    current state, for sensors with hysteresis."""

    def read(self, settled: str) -> tuple[str, float | None]: ...

    def close(self) -> None: ...


class FloatSwitches:
    """Two float switches wired to GND with the Pi's pull-ups.

    Tripped means the water is below the float. Neither tripped is ``ok``, the
    low one ``low``, both ``empty``; the empty float tripped while the low one
    is not cannot be, and reads ``unknown`` (a stuck or broken float)."""

    def __init__(self, spec: FloatLevelSpec, pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        self.spec = spec
        self._low = self._empty = None
        try:
            self._low = DigitalInputDevice(spec.low_pin, pull_up=True, pin_factory=pin_factory)
            self._empty = DigitalInputDevice(spec.empty_pin, pull_up=True,
                                             pin_factory=pin_factory)
        except Exception:
            self.close()
            raise

    def _tripped(self, device: Any) -> bool:
        # With the pull-up a device is active when its pin is low.
        high = not device.is_active
        return high if self.spec.active == "high" else not high

    def read(self, settled: str) -> tuple[str, float | None]:
        low, empty = self._tripped(self._low), self._tripped(self._empty)
        if empty:
            return ("empty" if low else "unknown"), None
        return ("low" if low else "ok"), None

    def close(self) -> None:
        for device in (self._low, self._empty):
            if device is not None:
                device.close()


class AdcLevel:
    """A level sensor on an MCP3008 channel (gpiozero ``MCP3008`` on SPI0)."""

    def __init__(self, spec: AdcLevelSpec, pin_factory: Any = None) -> None:
        self.spec = spec
        self._adc = open_mcp3008(spec.channel, spec.device, pin_factory)

    def level(self) -> float | None:
        """The level as a 0..1 fraction, or None when the reading is outside any
        level the sensor can show (a broken wire on a 0.5–4.5 V sensor)."""
        s = self.spec
        raw = float(self._adc.value)
        margin = 0.02
        if raw < s.zero - margin or raw > s.full + margin:
            return None
        return min(1.0, max(0.0, (raw - s.zero) / (s.full - s.zero)))

    def read(self, settled: str) -> tuple[str, float | None]:
        level = self.level()
        if level is None:
            return "unknown", None
        return classify_level(level, settled, self.spec), round(level, 3)

    def close(self) -> None:
        self._adc.close()


def classify_level(level: float, settled: str, spec: AdcLevelSpec) -> str:
    """The level state of a fraction, with ``clear_margin`` hysteresis.

    >>> spec = AdcLevelSpec(channel=0)
    >>> classify_level(0.27, "ok", spec), classify_level(0.27, "low", spec)
    ('ok', 'low')
    """
    s = spec
    if level <= s.empty or (settled == "empty" and level < s.empty + s.clear_margin):
        return "empty"
    if level <= s.low or (settled in ("low", "empty") and level < s.low + s.clear_margin):
        return "low"
    return "ok"


_GLOBAL_FACTORY_LOCK = threading.Lock()


def open_mcp3008(channel: int, device: int = 0, pin_factory: Any = None) -> Any:
    """A gpiozero ``MCP3008`` on SPI0, built on ``pin_factory``.

    gpiozero 2.0's software SPI bus — what a ``MockFactory`` always builds, and
    what a Pi falls back to without spidev — constructs itself without the
    factory it is given and so asks for the global ``Device.pin_factory``
    (loading a default, or failing, when none is set). While it is built, the
    global is our factory if nothing else was set; it is put back after.
    """
    from gpiozero import MCP3008, Device

    with _GLOBAL_FACTORY_LOCK:
        borrowed = pin_factory is not None and Device.pin_factory is None
        if borrowed:
            Device.pin_factory = pin_factory
        try:
            return MCP3008(channel=channel, port=0, device=device, pin_factory=pin_factory)
        finally:
            if borrowed:
                Device.pin_factory = None
