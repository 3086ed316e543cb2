"""The physics of a hot-water dispenser, felt by the agent only through its pins and files.

:class:`WaterSim` is a tank of water with a heater, a tap and riders who draw
from it. It acts on the world the way the real parts do and nothing more: it
moves the float switches' pins of a gpiozero ``MockFactory`` (or the voltage
an MCP3008 channel sees on the SPI pins), writes the DS18B20's ``w1_slave``
file in the kernel's format, pulses the flow meter's pin, and feels the heater
only by the level of the relay's pin. So the dispenser code that runs against
it is the code that runs on a Pi (design principle 1).

Time works as in :class:`~firmware.sim.model.Cabinet`: ``tick(seconds)``
moves the model by itself, and every call first catches up with the injected
clock, so a test sharing a ManualClock with the agent moves both at once.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from gpiozero.pins.mock import MockFactory
    >>> from yizhan.clock import ManualClock
    >>> spec = sim_spec(Path(tempfile.mkdtemp()))
    >>> sim = WaterSim(spec, MockFactory(), ManualClock(), litres=10.0, temp_c=20.0)
    >>> sim.drain()
    >>> sim.level, sim.pin_level("empty")          # the empty float has tripped
    (0.0, True)
    >>> sim.close()

Build the simulation *before* the parts that read it: it claims its pins as
driven pins, which a plain input already set up by gpiozero could not be.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from gpiozero.exc import PinInvalidPull
from gpiozero.pins.mock import MockPin, MockSPIDevice, MockSPISelectPin

from firmware.dispenser import DispenserSpec
from firmware.hardware.flow import FlowSpec
from firmware.hardware.level import AdcLevelSpec, FloatLevelSpec
from firmware.hardware.thermometer import POWER_ON_RESET_C, W1_DEVICES, ThermometerSpec
from firmware.sim.model import SimulatorError
from firmware.sim.timeline import Timeline
from yizhan.clock import SYSTEM_CLOCK, Clock

_WATER_J_PER_KG_K = 4186.0
# What heats up when the tank is dry: the element, its sheath and the bottom.
_DRY_MASS_KG = 0.3
_STEP = 1.0  # longest physics step, model seconds
_BUILT_TOO_LATE = ("GPIO{pin} was set up before the simulation; build the simulated "
                   "hardware first, then the parts that read it")


# -- pins driven from outside --------------------------------------------------------------


class DrivenPin(MockPin):
    """A GPIO with something attached that drives its level: a float or reed
    switch contact, a PIR's output, a flow meter's transistor.

    The Pi's internal pull resistor is weak: it sets the level only while
    nothing drives the pin, so gpiozero setting up its pull-up does not move
    a pin the simulation holds low.
    """

    def __init__(self, factory: Any, info: Any) -> None:
        self.driven: bool | None = None
        super().__init__(factory, info)

    def _set_pull(self, value: str) -> None:
        if self.driven is None:
            super()._set_pull(value)
            return
        if value not in ("floating", "up", "down"):
            raise PinInvalidPull("pull must be floating, up, or down")
        self._pull = value

    def drive(self, level: bool | None) -> None:
        """Hold the pin high (True) or low (False); None lets the pull decide."""
        self.driven = level
        if level is None:
            if self._function == "input":
                self._set_pull(self._pull)
        elif level:
            self.drive_high()
        else:
            self.drive_low()


def driven_pin(factory: Any, number: int) -> DrivenPin:
    """GPIO ``number`` of ``factory`` as a :class:`DrivenPin`."""
    pin = factory.pin(number, pin_class=DrivenPin)
    if not isinstance(pin, DrivenPin):
        raise SimulatorError(_BUILT_TOO_LATE.format(pin=number))
    return pin


class MockMCP3008(MockSPIDevice):
    """The far side of an MCP3008 on SPI0: answers gpiozero's single-ended and
    differential conversions with the voltages in ``channels`` (vref 3.3 V).

    Follows the mock ADCs of gpiozero's own test suite (``tests/test_spi_devices.py``).
    """

    def __init__(self, pin_factory: Any, device: int = 0) -> None:
        select = 8 if device == 0 else 7
        try:
            super().__init__(11, 10, 9, select, pin_factory=pin_factory)
        except AttributeError:  # GPIO11 is already a plain pin, not a SPI clock
            raise SimulatorError(_BUILT_TOO_LATE.format(pin=11)) from None
        if not isinstance(self.select_pin, MockSPISelectPin):
            self.close()
            raise SimulatorError(_BUILT_TOO_LATE.format(pin=select))
        self.vref = 3.3
        self.channels = [0.0] * 8
        self._state = "idle"

    def on_start(self) -> None:
        super().on_start()
        self._state = "idle"

    def on_bit(self) -> None:
        # Start bit, then single/differential, then 3 channel bits; then the
        # chip clocks out a null bit and 10 result bits (12 with the padding).
        if self._state == "idle":
            if self.rx_buf[-1]:
                self._state, self.rx_buf = "mode", []
        elif self._state == "mode":
            self._state = "single" if self.rx_buf[-1] else "diff"
            self.rx_buf = []
        elif self._state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                channel = self.rx_word()
                volts = self.channels[channel]
                if self._state == "diff":
                    volts -= self.channels[channel ^ 1]
                volts = min(self.vref, max(0.0, volts))
                self.tx_word(int(volts / self.vref * 1023), 12)
                self._state = "result"
        elif self._state == "result" and not self.tx_buf:
            self._state, self.rx_buf = "idle", []


# -- the DS18B20 file ------------------------------------------------------------------------


def dallas_crc8(data: bytes) -> int:
    """The 1-wire CRC (x^8 + x^5 + x^4 + 1, reflected) a DS18B20 appends.

    >>> hex(dallas_crc8(bytes.fromhex("72014b467fff0e10")))
    '0x57'
    """
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def w1_slave_text(temp_c: float | None) -> str:
    """What the kernel's w1-therm shows in ``w1_slave`` for a 12-bit reading
    of ``temp_c``; None is a sensor that did not answer (CRC NO).

    >>> print(w1_slave_text(23.125), end="")
    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125
    """
    if temp_c is None:
        # A data line held high reads all ones; the CRC of that is not ff.
        pad = "ff ff ff ff ff ff ff ff ff"
        return f"{pad} : crc=ff NO\n{pad} t=-62\n"
    raw = round(temp_c * 16)
    raw = max(-55 * 16, min(125 * 16, raw))
    lsb, msb = raw & 0xFF, (raw >> 8) & 0xFF
    pad = bytes([lsb, msb, 0x4B, 0x46, 0x7F, 0xFF, 0x10 - (raw & 0xF), 0x10])
    scratch = pad + bytes([dallas_crc8(pad)])
    hexes = " ".join(f"{b:02x}" for b in scratch)
    # The kernel's integer division truncates towards zero.
    return f"{hexes} : crc={scratch[-1]:02x} YES\n{hexes} t={int(raw * 1000 / 16)}\n"


# -- configuration for the simulation ------------------------------------------------------------


def sim_spec(data_dir: Path, spec: DispenserSpec | None = None) -> DispenserSpec:
    """The dispenser a simulated station has: ``spec`` as configured (its
    thermometer moved under ``data_dir``), or a full one on default pins."""
    w1 = Path(data_dir) / "sim" / "w1"
    if spec is None:
        return DispenserSpec(
            level=FloatLevelSpec(low_pin=5, empty_pin=6),
            thermometer=ThermometerSpec(device="28-00000000a001", base=w1),
            heater_pin=23,
            flow=FlowSpec(pin=24),
        )
    if spec.thermometer is not None:
        spec = replace(spec, thermometer=replace(spec.thermometer, base=w1))
    return spec


# -- the tank ------------------------------------------------------------------------------------


class WaterSim(Timeline):
    """A heated tank of ``capacity_l`` litres behind ``spec``'s pins and files.

    Riders arrive at random (``draws_per_hour``, seeded) and each draws
    ``draw_ml`` through the tap at ``flow_ml_s``; the heater (``heater_w``)
    warms the water while its relay pin is energised, and the tank loses heat
    to the room (``loss_w_per_k``). The floats trip below ``low_at`` and
    ``empty_at`` of capacity. ``auto_refill`` is how many seconds after the
    water turns low that staff top it up (None: only :meth:`refill`).
    """

    def __init__(
        self,
        spec: DispenserSpec,
        pin_factory: Any,
        clock: Clock | None = None,
        *,
        capacity_l: float = 20.0,
        litres: float | None = None,
        temp_c: float = 20.0,
        ambient_c: float = 22.0,
        inlet_c: float = 15.0,
        heater_w: float = 2500.0,
        loss_w_per_k: float = 2.5,
        flow_ml_s: float = 30.0,
        draws_per_hour: float = 0.0,
        draw_ml: tuple[float, float] = (200.0, 500.0),
        low_at: float | None = None,
        empty_at: float | None = None,
        auto_refill: float | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
    ) -> None:
        self.spec = spec
        self.factory = pin_factory
        self._init_timeline(clock or SYSTEM_CLOCK, time_scale, "water-sim")
        self.capacity_l = capacity_l
        self.litres = capacity_l * 0.9 if litres is None else float(litres)
        self.temp_c = float(temp_c)
        self.ambient_c = ambient_c
        self.inlet_c = inlet_c
        self.heater_w = heater_w
        self.loss_w_per_k = loss_w_per_k
        self.flow_ml_s = flow_ml_s
        self.draws_per_hour = draws_per_hour
        self.draw_ml = draw_ml
        level = spec.level
        self.low_at = low_at if low_at is not None else (
            level.low if isinstance(level, AdcLevelSpec) else 0.25)
        self.empty_at = empty_at if empty_at is not None else (
            level.empty if isinstance(level, AdcLevelSpec) else 0.08)
        self.auto_refill = auto_refill
        self._rng = random.Random(seed)
        self._drawing_ml = 0.0  # still to come out of the tap
        self._pulse_ml = 0.0  # drawn but not yet a whole flow-meter pulse
        self.pulses = 0
        self.drawn_ml = 0.0
        self._next_rider = self._arrival()
        self._low_since: float | None = None
        self._stuck: dict[str, bool] = {}
        self._wire_cut = False
        self._thermometer: Literal["ok", "crc", "gone", "reset"] = "ok"
        self._written: str | None = None

        self._floats: dict[str, DrivenPin] = {}
        self._adc: MockMCP3008 | None = None
        self._flow: DrivenPin | None = None
        self._heater: MockPin | None = None
        self._w1_dir: Path | None = None
        try:
            if isinstance(level, FloatLevelSpec):
                self._floats = {"low": driven_pin(pin_factory, level.low_pin),
                                "empty": driven_pin(pin_factory, level.empty_pin)}
            else:
                self._adc = MockMCP3008(pin_factory, level.device)
            if spec.flow is not None:
                self._flow = driven_pin(pin_factory, spec.flow.pin)
            if spec.heater_pin is not None:
                self._heater = pin_factory.pin(spec.heater_pin)
            if spec.thermometer is not None:
                base = Path(spec.thermometer.base)
                if base.resolve() == W1_DEVICES:
                    raise SimulatorError("the simulated thermometer must not write into "
                                         f"{W1_DEVICES}; use sim_spec(data_dir, spec)")
                self._w1_dir = base / spec.thermometer.device
        except Exception:
            self.close()
            raise
        self._apply()

    # -- time -----------------------------------------------------------------------------

    def _at_rest(self) -> None:
        # No time passed, but a test may have scripted a fault: show it on the pins.
        self._apply()

    def _advance(self, seconds: float) -> None:
        end = self._t + seconds
        while self._t < end:
            dt = min(_STEP, end - self._t)
            self._step(dt)
            self._t += dt
            self._apply()

    # -- the physics ------------------------------------------------------------------------

    @property
    def level(self) -> float:
        """The tank's fill, 0..1."""
        return max(0.0, min(1.0, self.litres / self.capacity_l))

    @property
    def heater_on(self) -> bool:
        """Whether the relay is energised: its pin is an output at the active level."""
        pin = self._heater
        if pin is None or pin.function != "output":
            return False
        return bool(pin.state) == (self.spec.heater_active == "high")

    def _arrival(self) -> float | None:
        if self.draws_per_hour <= 0:
            return None
        return self._t + self._rng.expovariate(self.draws_per_hour / 3600.0)

    def _step(self, dt: float) -> None:
        # Riders at the tap.
        if self._next_rider is not None and self._next_rider <= self._t + dt:
            self._drawing_ml += self._rng.uniform(*self.draw_ml)
            self._next_rider = self._arrival()
        if self._drawing_ml > 0:
            ml = min(self._drawing_ml, self.flow_ml_s * dt, self.litres * 1000)
            self._drawing_ml = 0.0 if ml <= 0 else self._drawing_ml - ml
            self.litres -= ml / 1000
            self.drawn_ml += ml
            self._pulse_ml += ml
        # Heat in from the element, out to the room.
        power = self.heater_w if self.heater_on else 0.0
        power -= self.loss_w_per_k * (self.temp_c - self.ambient_c)
        mass = max(self.litres, _DRY_MASS_KG)
        self.temp_c += power * dt / (mass * _WATER_J_PER_KG_K)
        if self.litres > 0.05:
            self.temp_c = min(self.temp_c, 100.0)  # water boils, it does not get hotter
        # Staff who come to refill a low tank.
        if self.level <= self.low_at:
            if self._low_since is None:
                self._low_since = self._t
            elif self.auto_refill is not None and self._t - self._low_since >= self.auto_refill:
                self._refill(None)
        else:
            self._low_since = None

    def _refill(self, litres: float | None) -> None:
        add = self.capacity_l - self.litres if litres is None else min(
            litres, self.capacity_l - self.litres)
        if add <= 0:
            return
        mass = max(self.litres, 0.0)
        self.temp_c = (self.temp_c * mass + self.inlet_c * add) / (mass + add)
        self.litres += add
        self._low_since = None

    # -- what the pins and the file show ---------------------------------------------------------

    def _tripped(self, name: str) -> bool:
        if name in self._stuck:
            return self._stuck[name]
        mark = self.low_at if name == "low" else self.empty_at
        return self.level < mark or (name == "empty" and self.litres <= 0)

    def pin_level(self, name: str) -> bool:
        """The level the ``low`` or ``empty`` float's pin is driven to."""
        active_high = self.spec.level.active == "high"
        return self._tripped(name) == active_high

    def _apply(self) -> None:
        for name, pin in self._floats.items():
            if self._wire_cut:
                if pin.driven is not None:
                    pin.drive(None)  # nothing drives it: the Pi's pull decides
                continue
            level = self.pin_level(name)
            if pin.driven != level or pin.state != level:
                pin.drive(level)
        if self._adc is not None:
            spec = self.spec.level
            assert isinstance(spec, AdcLevelSpec)
            fraction = spec.zero + self.level * (spec.full - spec.zero)
            volts = 0.0 if self._wire_cut else fraction * self._adc.vref
            self._adc.channels[spec.channel] = volts
        if self._flow is not None:
            if self._flow.driven is None:
                self._flow.drive(True)  # idle high: the sensor's transistor is off
            assert self.spec.flow is not None
            while self._pulse_ml >= self.spec.flow.ml_per_pulse:
                self._pulse_ml -= self.spec.flow.ml_per_pulse
                self._flow.drive(False)
                self._flow.drive(True)
                self.pulses += 1
        self._write_thermometer()

    def _write_thermometer(self) -> None:
        if self._w1_dir is None:
            return
        if self._thermometer == "gone":
            return
        temp = {"crc": None, "reset": POWER_ON_RESET_C}.get(self._thermometer, self.temp_c)
        text = w1_slave_text(temp)
        if text == self._written:
            return
        self._w1_dir.mkdir(parents=True, exist_ok=True)
        # Written whole and renamed, so a reader never sees half a file.
        tmp = self._w1_dir / ".w1_slave.tmp"
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, self._w1_dir / "w1_slave")
        self._written = text

    # -- what people do ----------------------------------------------------------------------

    def draw(self, ml: float) -> None:
        """A rider draws ``ml`` through the tap; it flows out as the model runs."""
        with self._lock:
            self._sync()
            self._drawing_ml += ml

    def refill(self, litres: float | None = None) -> None:
        """Staff top the tank up (to full, or by ``litres``) with cold water."""
        with self._lock:
            self._sync()
            self._refill(litres)
            self._apply()

    def drain(self) -> None:
        """The tank runs dry (drain valve, a leak): no water, at once."""
        with self._lock:
            self._sync()
            self.litres = 0.0
            self._drawing_ml = 0.0
            self._apply()

    def set_temperature(self, temp_c: float) -> None:
        """Force the water temperature (a scripted over-temperature, say)."""
        with self._lock:
            self._sync()
            self.temp_c = float(temp_c)
            self._apply()

    # -- scripted faults ----------------------------------------------------------------------

    def silence_thermometer(self, mode: Literal["crc", "gone", "reset"] = "crc") -> None:
        """The DS18B20 stops giving temperatures: ``crc`` answers garbage that
        fails the kernel's CRC check (a loose data line), ``gone`` removes the
        sensor from the bus (its sysfs directory disappears), ``reset`` keeps
        browning out and answers its power-on value, 85 °C, with a good CRC."""
        if mode not in ("crc", "gone", "reset"):
            raise ValueError(f"mode must be 'crc', 'gone' or 'reset', not {mode!r}")
        with self._lock:
            self._sync()
            self._thermometer = mode
            self._written = None
            if mode == "gone" and self._w1_dir is not None:
                shutil.rmtree(self._w1_dir, ignore_errors=True)
            self._apply()

    def restore_thermometer(self) -> None:
        with self._lock:
            self._thermometer = "ok"
            self._written = None
            self._sync()
            self._apply()

    def stuck_float(self, name: Literal["low", "empty"], tripped: bool | None = None) -> None:
        """The ``low`` or ``empty`` float sticks: where it is now, or tripped or not."""
        if name not in ("low", "empty"):
            raise ValueError(f"float must be 'low' or 'empty', not {name!r}")
        with self._lock:
            self._sync()
            self._stuck[name] = self._tripped(name) if tripped is None else tripped
            self._apply()

    def free_float(self, name: Literal["low", "empty"] | None = None) -> None:
        """Free a stuck float (all of them with no name)."""
        with self._lock:
            if name is None:
                self._stuck.clear()
            else:
                self._stuck.pop(name, None)
            self._sync()
            self._apply()

    def cut_level_wire(self, cut: bool = True) -> None:
        """The level sensor's cable is cut: the float pins float to the Pi's
        pulls, the ADC channel reads 0 V."""
        with self._lock:
            self._sync()
            self._wire_cut = cut
            self._apply()

    def close(self) -> None:
        """Stop the ticker and let go of the pins (they fall back to their pulls)."""
        self.stop()
        if self._adc is not None:
            self._adc.close()
            self._adc = None
        for pin in (*self._floats.values(), self._flow):
            if pin is not None:
                with contextlib.suppress(Exception):
                    pin.drive(None)
