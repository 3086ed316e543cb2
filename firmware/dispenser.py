"""The hot-water dispenser: tank level, water temperature, heater relay, flow meter.

The parts, each read exactly as on a Pi (docs/hardware.md has the wiring):

- level: two float switches on GPIO (``low_pin``, ``empty_pin``), or a level
  sensor on an MCP3008 ADC channel (SPI0);
- temperature: a DS18B20 on the 1-wire bus, read from sysfs
  (``/sys/bus/w1/devices/28-…/w1_slave``); the simulation writes the same file;
- the heater: a relay on ``heater_pin``, off at construction and whenever
  :class:`~firmware.safety.HeaterSafety` says so;
- an optional flow meter on ``flow.pin`` whose pulses add up ``dispensed_ml``.

Their drivers are in ``firmware/hardware/`` (``level.py``, ``thermometer.py``,
``flow.py``); this module reads the ``dispenser`` section, lets a new level
settle, drives the relay as :class:`~firmware.safety.HeaterSafety` decides and
turns what changes into events.

    spec = parse_dispenser(Section(config["dispenser"], "dispenser"))
    dispenser = Dispenser(spec, reporter, clock, pin_factory=factory, dispensed_ml=stored)
    dispenser.poll()                  # from the station loop, every 0.25 s
    dispenser.level_state             # "ok"
    dispenser.section()               # protocol.messages.Dispenser for the State
    dispenser.close()                 # heater off, pins released

Events (contract §6): ``water_level`` {level_state, level} on every change of
the settled level state; ``dispenser_fault`` / ``dispenser_fault_cleared``
{fault}; ``heater_lockout`` / ``heater_lockout_cleared`` {reason}; with a flow
meter, ``water_drawn`` {draws, ml} every ``flow.report_every`` when a draw
ended, and at close (a draw is a run of pulses ended by ``DRAW_GAP`` without one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from firmware.hardware.flow import FlowMeter, FlowSpec
from firmware.hardware.level import (
    AdcLevel,
    AdcLevelSpec,
    FloatLevelSpec,
    FloatSwitches,
    LevelSensor,
)
from firmware.hardware.pins import SPI0_PINS, gpio_pin
from firmware.hardware.thermometer import (
    W1_DEVICES,
    W1_ID_PATTERN,
    ThermometerReader,
    ThermometerSpec,
)
from firmware.parts import Reporter
from firmware.safety import HeaterSafety, SafetyLimits
from protocol.messages import Dispenser as DispenserSection
from yizhan.clock import Clock
from yizhan.config import ConfigError, Section, known_keys

# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class DispenserSpec:
    """Everything the dispenser is wired to (configuration ``dispenser``)."""

    level: FloatLevelSpec | AdcLevelSpec
    thermometer: ThermometerSpec | None = None
    heater_pin: int | None = None
    heater_active: Literal["high", "low"] = "high"
    flow: FlowSpec | None = None
    safety: SafetyLimits = field(default_factory=SafetyLimits)

    def pins(self) -> dict[int, str]:
        """The GPIOs this dispenser takes, each with the key that names it."""
        used: dict[int, str] = {}
        if isinstance(self.level, FloatLevelSpec):
            used[self.level.low_pin] = "dispenser.level.low_pin"
            used[self.level.empty_pin] = "dispenser.level.empty_pin"
        else:
            for pin in (11, 10, 9, 8 if self.level.device == 0 else 7):
                used[pin] = "dispenser.level (SPI0)"
        if self.heater_pin is not None:
            used[self.heater_pin] = "dispenser.heater_pin"
        if self.flow is not None:
            used[self.flow.pin] = "dispenser.flow.pin"
        return used


def parse_dispenser(section: Section | None) -> DispenserSpec | None:
    """The ``dispenser`` section, or None when the station has no dispenser.

    A ConfigError names the key: ``dispenser.level.low_pin: is required``.
    """
    if section is None:
        return None
    known_keys(section, ("level", "thermometer", "heater_pin", "heater_active", "flow",
                               "safety"))
    level = _parse_level(section.section("level", required=True))
    thermometer = None
    tsec = section.section("thermometer")
    if tsec is not None:
        known_keys(tsec, ("type", "device", "base", "read_every", "sensor_timeout",
                                "max_failures"))
        tsec.str("type", "ds18b20", choices=("ds18b20",))
        thermometer = ThermometerSpec(
            device=tsec.str("device", required=True, pattern=W1_ID_PATTERN),
            base=Path(tsec.str("base", str(W1_DEVICES))),
            read_every=_positive(tsec, "read_every", 2.0),
            sensor_timeout=_positive(tsec, "sensor_timeout", 10.0),
            max_failures=tsec.int("max_failures", 3, lo=1, hi=100),
        )
    heater_pin = gpio_pin(section, "heater_pin")
    if heater_pin is not None and thermometer is None:
        raise ConfigError(section.key("thermometer"),
                          "is required when heater_pin is set: the heater is never run blind")
    flow = None
    fsec = section.section("flow")
    if fsec is not None:
        known_keys(fsec, ("pin", "ml_per_pulse", "report_every"))
        flow = FlowSpec(pin=gpio_pin(fsec, "pin", required=True),
                        ml_per_pulse=fsec.float("ml_per_pulse", 2.25, lo=0.01, hi=1000),
                        report_every=_positive(fsec, "report_every", 15 * 60.0))
        if flow.report_every > 86_400:
            # A day of draws held in memory is a day lost at a power cut.
            raise ConfigError(fsec.key("report_every"), "must be at most 1 day")
    safety = _parse_safety(section.section("safety"),
                           thermometer.sensor_timeout if thermometer else 10.0)
    spec = DispenserSpec(
        level=level,
        thermometer=thermometer,
        heater_pin=heater_pin,
        heater_active=section.str("heater_active", "high", choices=("high", "low")),
        flow=flow,
        safety=safety,
    )
    _check_pins(spec)
    return spec


def _parse_level(sec: Section) -> FloatLevelSpec | AdcLevelSpec:
    kind = sec.str("type", required=True, choices=("floats", "mcp3008"))
    if kind == "floats":
        known_keys(sec, ("type", "low_pin", "empty_pin", "active", "settle"))
        return FloatLevelSpec(
            low_pin=gpio_pin(sec, "low_pin", required=True),
            empty_pin=gpio_pin(sec, "empty_pin", required=True),
            active=sec.str("active", "high", choices=("high", "low")),
            settle=sec.duration("settle", 2.0),
        )
    known_keys(sec, ("type", "channel", "low", "empty", "clear_margin", "zero", "full",
                           "device", "settle"))
    spec = AdcLevelSpec(
        channel=sec.int("channel", required=True, lo=0, hi=7),
        low=sec.float("low", 0.25, lo=0, hi=1),
        empty=sec.float("empty", 0.08, lo=0, hi=1),
        clear_margin=sec.float("clear_margin", 0.05, lo=0, hi=0.5),
        zero=sec.float("zero", 0.0, lo=0, hi=1),
        full=sec.float("full", 1.0, lo=0, hi=1),
        device=sec.int("device", 0, lo=0, hi=1),
        settle=sec.duration("settle", 2.0),
    )
    if not spec.empty < spec.low:
        raise ConfigError(sec.key("empty"), f"must be below low ({spec.low}), not {spec.empty}")
    if spec.low + spec.clear_margin > 1:
        raise ConfigError(sec.key("clear_margin"), "low + clear_margin must be at most 1")
    if not spec.zero < spec.full:
        raise ConfigError(sec.key("full"), f"must be above zero ({spec.zero}), not {spec.full}")
    return spec


def _parse_safety(sec: Section | None, sensor_timeout: float) -> SafetyLimits:
    if sec is None:
        return SafetyLimits(sensor_timeout=sensor_timeout)
    keys = ("target_c", "hysteresis", "max_temp_c", "overtemp_clear", "min_valid_c",
            "max_valid_c")
    known_keys(sec, (*keys, "max_on", "cooldown"))
    d = SafetyLimits()
    values: dict[str, Any] = {k: sec.float(k, getattr(d, k)) for k in keys}
    values["max_on"] = _positive(sec, "max_on", d.max_on)
    values["cooldown"] = sec.duration("cooldown", d.cooldown)
    try:
        return SafetyLimits(sensor_timeout=sensor_timeout, **values)
    except ValueError as err:
        raise ConfigError(sec.path, str(err)) from err


def _positive(sec: Section, name: str, default: float) -> float:
    value = sec.duration(name, default)
    if value <= 0:
        raise ConfigError(sec.key(name), "must be longer than zero")
    return value


def _check_pins(spec: DispenserSpec) -> None:
    seen: dict[int, str] = {}
    keys: list[tuple[int, str]] = []
    if isinstance(spec.level, FloatLevelSpec):
        keys += [(spec.level.low_pin, "dispenser.level.low_pin"),
                 (spec.level.empty_pin, "dispenser.level.empty_pin")]
    else:
        seen.update({p: "the MCP3008 on SPI0" for p in SPI0_PINS})
    if spec.heater_pin is not None:
        keys.append((spec.heater_pin, "dispenser.heater_pin"))
    if spec.flow is not None:
        keys.append((spec.flow.pin, "dispenser.flow.pin"))
    for pin, key in keys:
        if pin in seen:
            raise ConfigError(key, f"GPIO{pin} is already used by {seen[pin]}")
        seen[pin] = key


# -- the dispenser --------------------------------------------------------------------------

# How far a reading must move before the State is asked to go out early (the
# 60 s heartbeat carries the small drifts).
_TEMP_STEP_C = 0.5
_LEVEL_STEP = 0.02
_FLOW_STEP_ML = 250
#: A draw ends when the meter has been quiet this long: a cup under the tap is
#: one steady run of pulses; the next rider's cup comes seconds later at least.
DRAW_GAP = 2.0


class Dispenser:
    """The hot-water dispenser (contract §5 ``dispenser``, §6 water and heater events).

    ``dispensed_ml`` is where the flow meter's total starts (the agent stores
    it across restarts). The heater relay is off at construction and after
    :meth:`safe` and :meth:`close`; only :meth:`poll` switches it on, when
    :class:`~firmware.safety.HeaterSafety` allows.
    """

    def __init__(self, spec: DispenserSpec, reporter: Reporter, clock: Clock,
                 pin_factory: Any = None, *, dispensed_ml: int = 0) -> None:
        from gpiozero import OutputDevice

        self.spec = spec
        self.reporter = reporter
        self.clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._heater: Any = None
        self._level: LevelSensor | None = None
        self._thermometer: ThermometerReader | None = None
        self._flow: FlowMeter | None = None
        try:
            if spec.heater_pin is not None:
                # The relay first, off, before anything else can fail half-way.
                self._heater = OutputDevice(spec.heater_pin,
                                            active_high=spec.heater_active == "high",
                                            initial_value=False, pin_factory=pin_factory)
            if isinstance(spec.level, FloatLevelSpec):
                self._level = FloatSwitches(spec.level, pin_factory)
            else:
                self._level = AdcLevel(spec.level, pin_factory)
            if spec.thermometer is not None:
                self._thermometer = ThermometerReader(spec.thermometer, clock)
            if spec.flow is not None:
                self._flow = FlowMeter(spec.flow, pin_factory, dispensed_ml)
        except Exception:
            self.close()
            raise
        self.safety = HeaterSafety(spec.safety, clock, thermometer=spec.thermometer is not None,
                                   heater=spec.heater_pin is not None)
        self.level_state = "unknown"  # settled; unknown until the first poll
        self.level: float | None = None
        self._candidate: tuple[str, float] | None = None  # (state, since)
        self._reported: tuple | None = None
        # Draws (docs/protocol.md §6 water_drawn): pulses seen at the last poll,
        # the pulses of the draw running now and when its last pulse was seen,
        # the draws ended and their pulses not yet reported.
        self._pulses_seen = 0
        self._draw_pulses = 0
        self._draw_last: float | None = None
        self._draws = 0
        self._drawn_pulses = 0
        if spec.flow is not None:
            self._next_drawn = clock.monotonic() + spec.flow.report_every

    # -- reading ------------------------------------------------------------------------

    @property
    def temp_c(self) -> float | None:
        """The last good water temperature, None when the thermometer is silent."""
        if self._thermometer is None:
            return None
        temp, at = self._thermometer.latest()
        if temp is None or at is None:
            return None
        if self.clock.monotonic() - at > self.spec.safety.sensor_timeout:
            return None
        return temp

    @property
    def heater(self) -> bool:
        """Whether the heater relay is energised now (read back from the pin)."""
        return self._heater is not None and not self._closed and bool(self._heater.value)

    @property
    def heater_lockout(self) -> bool:
        return self._heater is not None and self.safety.decision.lockout

    @property
    def faults(self) -> frozenset[str]:
        return self.safety.decision.faults

    @property
    def dispensed_ml(self) -> int | None:
        return None if self._flow is None else self._flow.dispensed_ml

    @property
    def online(self) -> bool:
        """The dispenser's sensors answer: the level reads and the thermometer
        (if any) is not silent."""
        if self.level_state == "unknown":
            return False
        return self._thermometer is None or "sensor_silent" not in self.safety.decision.reasons

    def section(self) -> DispenserSection:
        """Contract §5 ``dispenser``."""
        with self._lock:
            temp = self.temp_c
            return DispenserSection(
                online=self.online,
                level=self.level,
                level_state=self.level_state,
                temp_c=None if temp is None else round(temp, 1),
                heater=self.heater,
                heater_lockout=self.heater_lockout,
                fault=self.safety.decision.fault,
                dispensed_ml=self.dispensed_ml,
            )

    def describe(self) -> dict[str, Any]:
        """This part's share of the birth ``hw`` object (contract §4)."""
        return {"dispenser": True}

    # -- the loop --------------------------------------------------------------------------

    def poll(self) -> None:
        """Read the level and the thermometer, decide the heater, report changes."""
        with self._lock:
            if self._closed:
                return
            before = self.safety.decision
            self._read_level()
            if self._thermometer is not None:
                self._thermometer.poll()
                temp, at = self._thermometer.latest()
            else:
                temp, at = None, None
            decision = self.safety.update(level_state=self.level_state, temp_c=temp, read_at=at)
            if self._heater is not None:
                self._heater.value = decision.heater
            reports: list[tuple[str, dict]] = []
            for fault in sorted(decision.faults - before.faults):
                reports.append(("dispenser_fault", {"fault": fault}))
            for fault in sorted(before.faults - decision.faults):
                reports.append(("dispenser_fault_cleared", {"fault": fault}))
            if self._heater is not None:
                if decision.lockout and not before.lockout:
                    reports.append(("heater_lockout", {"reason": decision.reason}))
                elif before.lockout and not decision.lockout:
                    reports.append(("heater_lockout_cleared", {"reason": before.reason}))
            for type_, data in reports:
                self.reporter.event(type_, data)
            if self._flow is not None:
                self._watch_draws()
            self._maybe_changed()

    def _watch_draws(self) -> None:
        assert self._flow is not None and self.spec.flow is not None
        now = self.clock.monotonic()
        pulses = self._flow.pulses
        if pulses > self._pulses_seen:
            self._draw_pulses += pulses - self._pulses_seen
            self._pulses_seen = pulses
            self._draw_last = now
        elif self._draw_last is not None and now - self._draw_last >= DRAW_GAP:
            self._end_draw()
        if now >= self._next_drawn:
            self._next_drawn = now + self.spec.flow.report_every
            self._report_draws()

    def _end_draw(self) -> None:
        if self._draw_last is not None:
            self._draws += 1
            self._drawn_pulses += self._draw_pulses
        self._draw_pulses, self._draw_last = 0, None

    def _report_draws(self) -> None:
        """``water_drawn`` for the draws ended since the last one, if any. The
        counts start again only once the reporter (the journal) took the event."""
        if not self._draws:
            return
        assert self.spec.flow is not None
        ml = round(self._drawn_pulses * self.spec.flow.ml_per_pulse)
        self.reporter.event("water_drawn", {"draws": self._draws, "ml": ml})
        self._draws = self._drawn_pulses = 0

    @property
    def draws_pending(self) -> tuple[int, int]:
        """(draws ended, their pulses) not yet in a ``water_drawn``."""
        with self._lock:
            return self._draws, self._drawn_pulses

    def _read_level(self) -> None:
        assert self._level is not None
        now = self.clock.monotonic()
        state, level = self._level.read(self.level_state)
        if self._candidate is None:
            # The first reading is where the station starts from, not a change.
            self.level_state, self.level = state, level
            self._candidate = (state, now)
            return
        self.level = level
        if state != self._candidate[0]:  # the sensor moved: it must now hold for settle
            self._candidate = (state, now)
        settle = self.spec.level.settle
        if state != self.level_state and now - self._candidate[1] >= settle:
            self.level_state = state
            self.reporter.event("water_level", {"level_state": state, "level": level})

    def _maybe_changed(self) -> None:
        temp = self.temp_c
        flow = self.dispensed_ml
        shown = (self.level_state, self.heater, self.heater_lockout, self.safety.decision.fault,
                 self.online, temp is None, flow is None)
        if self._reported is None:
            self._reported = (shown, temp, self.level, flow)
            return
        was, was_temp, was_level, was_flow = self._reported
        moved = (
            shown != was
            or (temp is not None and was_temp is not None and abs(temp - was_temp) >= _TEMP_STEP_C)
            or (self.level is not None and was_level is not None
                and abs(self.level - was_level) >= _LEVEL_STEP)
            or (flow is not None and was_flow is not None and flow - was_flow >= _FLOW_STEP_ML)
        )
        if moved:
            self._reported = (shown, temp, self.level, flow)
            self.reporter.changed()

    # -- safe and close -----------------------------------------------------------------

    def safe(self) -> None:
        """Heater off now (SIGTERM, a crash path, the agent's start)."""
        with self._lock:
            if self._heater is not None and not self._closed:
                self._heater.off()
            self.safety.cut()

    def close(self) -> None:
        """Heater off, the draws so far reported (a draw running counts as ended)
        and every pin released; idempotent. Close it while the reporter (the
        journal) is still open."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._heater is not None:
                    try:
                        self._heater.off()
                    finally:
                        self._heater.close()
            finally:
                self._closed = True
                try:
                    if self._flow is not None and hasattr(self, "_next_drawn"):
                        self._draw_pulses += max(0, self._flow.pulses - self._pulses_seen)
                        self._pulses_seen = self._flow.pulses
                        if self._draw_pulses:
                            self._draw_last = self._draw_last or self.clock.monotonic()
                        self._end_draw()
                        self._report_draws()
                finally:
                    for part in (self._flow, self._thermometer, self._level):
                        if part is not None:
                            part.close()
