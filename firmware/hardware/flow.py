"""The flow meter: a hall-effect sensor whose pulses add up the water dispensed.

Wiring (docs/hardware.md): the sensor's open-collector output on ``flow.pin``
with the Pi's pull-up.

    meter = FlowMeter(FlowSpec(pin=24), pin_factory, initial_ml=stored)
    meter.dispensed_ml                # 1200
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlowSpec:
    """A hall-effect flow meter: ``ml_per_pulse`` millilitres per pulse; the
    draws it saw are reported every ``report_every`` seconds (``water_drawn``)."""

    pin: int
    ml_per_pulse: float = 2.25
    report_every: float = 15 * 60.0


class FlowMeter:
    """Counts the meter's pulses (gpiozero callback thread) into millilitres."""

    def __init__(self, spec: FlowSpec, pin_factory: Any = None, initial_ml: int = 0) -> None:
        from gpiozero import DigitalInputDevice

        self.spec = spec
        self._lock = threading.Lock()
        self._initial = int(initial_ml)
        self.pulses = 0
        # An open-collector hall sensor pulls the line low once per pulse; no
        # debounce, the pulses come at up to a few hundred a second.
        self._input = DigitalInputDevice(spec.pin, pull_up=True, pin_factory=pin_factory)
        self._input.when_activated = self._pulse

    def _pulse(self) -> None:
        with self._lock:
            self.pulses += 1

    @property
    def dispensed_ml(self) -> int:
        with self._lock:
            return self._initial + int(self.pulses * self.spec.ml_per_pulse)

    def close(self) -> None:
        self._input.close()
