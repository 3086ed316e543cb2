"""The water thermometer: a DS18B20 on the 1-wire bus, read through sysfs.

Wiring (docs/hardware.md): data on GPIO4 with a 4.7 kΩ pull-up to 3V3 and
``dtoverlay=w1-gpio``; the kernel's w1-therm driver then shows the sensor as
``/sys/bus/w1/devices/28-…/w1_slave``. The simulation writes the same file.

    reader = ThermometerReader(ThermometerSpec("28-0316a2795a1f"), clock)
    reader.poll()                     # from the dispenser's poll
    reader.latest()                   # (92.5, monotonic time of the reading) or (None, None)

A driver only: the dispenser (``firmware/dispenser.py``) judges a silent or
out-of-range sensor through :class:`~firmware.safety.HeaterSafety`.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from yizhan.clock import Clock

log = logging.getLogger(__name__)

W1_DEVICES = Path("/sys/bus/w1/devices")
#: A 1-wire device id as sysfs names it (family code, dash, 48-bit serial).
W1_ID_PATTERN = r"[0-9a-f]{2}-[0-9a-f]{12}"
POWER_ON_RESET_C = 85.0  # what a DS18B20 reads before its first conversion


class ThermometerError(Exception):
    """A temperature read that gave no temperature (the root of this module's errors)."""


class ThermometerMissing(ThermometerError):
    """The sensor's sysfs directory is gone: unplugged, or never found on the bus."""


class BadReading(ThermometerError, ValueError):
    """The sensor answered, but not with a temperature (CRC NO, a garbled file)."""


@dataclass(frozen=True)
class ThermometerSpec:
    """A DS18B20 on 1-wire: ``base/device/w1_slave`` is read every ``read_every``
    seconds; ``max_failures`` failed reads in a row make it silent at once.
    ``background`` reads on a thread of its own, because on a Pi a read waits
    about 750 ms for the sensor's conversion (tests read in the caller)."""

    device: str
    base: Path = W1_DEVICES
    read_every: float = 2.0
    sensor_timeout: float = 10.0
    max_failures: int = 3
    background: bool = True
    type: Literal["ds18b20"] = "ds18b20"

    @property
    def path(self) -> Path:
        return Path(self.base) / self.device / "w1_slave"


def parse_w1_slave(text: str) -> float:
    """The temperature in a DS18B20's ``w1_slave`` file, in °C.

    >>> parse_w1_slave("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\\n"
    ...                "72 01 4b 46 7f ff 0e 10 57 t=23125\\n")
    23.125

    The kernel checks the scratchpad's CRC and says YES or NO; a NO (the
    sensor did not answer cleanly) or anything unreadable is :class:`BadReading`.
    """
    lines = text.strip().splitlines()
    if len(lines) < 2:
        raise BadReading(f"w1_slave has {len(lines)} line(s), expected 2")
    if not lines[0].rstrip().endswith("YES"):
        raise BadReading("CRC check failed (crc=... NO)")
    m = re.search(r"t=(-?\d+)\s*$", lines[1])
    if not m:
        raise BadReading("no t= in the second line")
    return int(m.group(1)) / 1000


class DS18B20:
    """A DS18B20 read through the kernel's w1-therm driver (``dtoverlay=w1-gpio``).

    >>> DS18B20("28-0316a2795a1f").path
    PosixPath('/sys/bus/w1/devices/28-0316a2795a1f/w1_slave')
    """

    def __init__(self, device: str, base: Path = W1_DEVICES) -> None:
        self.device = device
        self.path = Path(base) / device / "w1_slave"

    def read(self) -> float:
        """One reading, °C; blocks for the conversion (≈750 ms) on a Pi."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            raise ThermometerMissing(f"{self.path} does not exist") from None
        except OSError as err:  # EIO when the bus is shorted, say
            raise BadReading(f"{self.path}: {err.strerror}") from err
        return parse_w1_slave(text)


class ThermometerReader:
    """Keeps the last good reading; reads inline or on its own thread."""

    def __init__(self, spec: ThermometerSpec, clock: Clock) -> None:
        self.spec = spec
        self.sensor = DS18B20(spec.device, spec.base)
        self.clock = clock
        self._lock = threading.Lock()
        self.temp_c: float | None = None
        self.read_at: float | None = None
        self.failures = 0
        self._last_good: float | None = None  # kept when temp_c is dropped as silent
        self._next = clock.monotonic()
        self._closed = threading.Event()
        self._wanted = threading.Event()
        # Reads asked for and reads made (good or not), numbered: ``settled``.
        self._asked = self._made = 0
        self._thread: threading.Thread | None = None
        if spec.background:
            self._thread = threading.Thread(target=self._run, name=f"ds18b20-{spec.device}",
                                            daemon=True)
            self._thread.start()

    def poll(self) -> None:
        now = self.clock.monotonic()
        if now < self._next:
            return
        self._next = now + self.spec.read_every
        if self._thread is None:
            self._read_once()
        else:
            with self._lock:
                self._asked += 1
            self._wanted.set()  # a read still hanging simply keeps it pending

    @property
    def settled(self) -> bool:
        """Every read asked for so far has been made (inline reads always have).

        The agent never waits on it: on a Pi time runs while the thread reads. A
        harness that moves a ManualClock by seconds in a few milliseconds waits on
        it before moving on, or a thread the scheduler left waiting would see the
        reading go stale in model time (sensor_silent) that no Pi would."""
        with self._lock:
            return self._made == self._asked

    def latest(self) -> tuple[float | None, float | None]:
        with self._lock:
            return self.temp_c, self.read_at

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closed.is_set():
                return
            with self._lock:
                asked = self._asked  # this read answers every request made so far
            self._read_once()
            with self._lock:
                self._made = asked

    def _read_once(self) -> None:
        try:
            value = self.sensor.read()
            if value == POWER_ON_RESET_C and self._last_good is not None \
                    and abs(self._last_good - value) > 10:
                # A sensor that browned out answers its reset value before any
                # conversion; a jump to exactly 85 °C is that, not the water.
                raise BadReading("85 °C power-on reset value")
        except ThermometerError as err:
            with self._lock:
                self.failures += 1
                if self.failures == 1:
                    log.warning("thermometer %s: %s", self.spec.device, err)
                if self.failures >= self.spec.max_failures:
                    self.temp_c = None  # failing again and again: no reading at all
            return
        with self._lock:
            if self.failures:
                log.info("thermometer %s reads again after %d failure(s)", self.spec.device,
                         self.failures)
            self.temp_c, self.read_at, self.failures = value, self.clock.monotonic(), 0
            self._last_good = value

    def close(self) -> None:
        self._closed.set()
        self._wanted.set()
        # A thread stuck in a hung sysfs read is a daemon and is not waited for.
