"""When the dispenser's heater may run: pure rules on the injected clock.

The heater of a hot-water urn is the one output of a station that can start a
fire. :class:`HeaterSafety` holds the rules and nothing else — no pins, no
files — so that every path is tested with a table of readings and a property
test. The dispenser (``firmware/dispenser.py``) feeds it the level
and the thermometer at every poll and drives the relay with what it decides.

    >>> from yizhan.clock import ManualClock
    >>> clock = ManualClock()
    >>> safety = HeaterSafety(SafetyLimits(), clock)
    >>> safety.update(level_state="ok", temp_c=20.0, read_at=clock.monotonic()).heater
    True
    >>> d = safety.update(level_state="empty", temp_c=20.0, read_at=clock.monotonic())
    >>> d.heater, d.lockout, d.reason
    (False, True, 'empty')

Rules (docs/hardware.md has them as a table):

- the heater is never energised until the level and the temperature are sane;
- it is cut, and a lockout raised with a reason, when the water is ``empty``,
  the level is unknown (``level_unknown``), the thermometer is silent
  (``sensor_silent``: no good reading for ``sensor_timeout``) or reads outside
  the range a DS18B20 in water can show (``sensor_range``), the water is over
  ``max_temp_c`` (``overtemp``), or the heater has run ``max_on`` without a
  break (``max_on_time``);
- the lockout clears only when every condition is clear, an over-temperature
  once the water has cooled ``overtemp_clear`` below the limit, and a
  ``max_on_time`` only after ``cooldown``;
- while allowed, a thermostat holds ``target_c`` with ``hysteresis``.
"""

from __future__ import annotations

from dataclasses import dataclass

from yizhan.clock import Clock

#: Lockout reasons, most telling first: when several start at once, the first
#: one named here is the reason the event carries.
REASONS = ("sensor_silent", "sensor_range", "level_unknown", "empty", "overtemp", "max_on_time")

#: Which dispenser fault (contract §5 ``dispenser.fault``) each reason shows as.
FAULT_OF_REASON = {
    "sensor_silent": "sensor",
    "sensor_range": "sensor",
    "level_unknown": "sensor",
    "overtemp": "overtemp",
    "max_on_time": "heater",
}

#: When several faults hold, the State shows the most urgent one.
FAULT_PRIORITY = ("overtemp", "dry_boil", "heater", "sensor")

# Level states in which the element is still under water.
_WET = ("ok", "low")


@dataclass(frozen=True)
class SafetyLimits:
    """The numbers the rules use (configuration ``dispenser.safety``)."""

    target_c: float = 95.0
    hysteresis: float = 3.0  # heat again once the water has cooled this far below target
    max_temp_c: float = 98.0
    overtemp_clear: float = 5.0  # an overtemp clears at max_temp_c - overtemp_clear
    min_valid_c: float = -5.0  # a DS18B20 in water reading outside these is broken
    max_valid_c: float = 110.0
    max_on: float = 30 * 60.0  # seconds of continuous heating before a forced cut
    cooldown: float = 10 * 60.0  # how long a max_on_time lockout holds at least
    sensor_timeout: float = 10.0  # a reading older than this is no reading

    def __post_init__(self) -> None:
        if not self.min_valid_c < self.target_c - self.hysteresis < self.target_c:
            raise ValueError("target_c - hysteresis must lie above min_valid_c, below target_c")
        if not self.target_c < self.max_temp_c < self.max_valid_c:
            raise ValueError("need target_c < max_temp_c < max_valid_c")
        if self.hysteresis <= 0 or self.overtemp_clear < 0:
            raise ValueError("hysteresis must be positive and overtemp_clear not negative")
        if self.max_on <= 0 or self.cooldown < 0 or self.sensor_timeout <= 0:
            raise ValueError("max_on and sensor_timeout must be positive, cooldown not negative")


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`HeaterSafety.update` decided.

    ``heater`` is what the relay must be now. ``reasons`` are the unsafe
    conditions that hold now (empty while all is well or while still waiting
    for the first readings); ``lockout`` stays true from the first reason until
    every one has cleared, and ``reason`` is the one that started it.
    ``faults`` are the dispenser faults (contract §5) that hold now.
    """

    heater: bool
    lockout: bool
    reason: str | None
    reasons: frozenset[str]
    faults: frozenset[str]

    @property
    def fault(self) -> str | None:
        """The one fault the State shows, the most urgent."""
        return next((f for f in FAULT_PRIORITY if f in self.faults), None)


class HeaterSafety:
    """The heater's interlock and thermostat. Not thread-safe: one poller calls it.

    ``heater=False`` is a dispenser whose heater the agent does not drive (it
    keeps its own thermostat): the rules still find faults, the decision never
    heats. ``thermometer=False`` also has no temperature rules; such a
    dispenser never runs a heater (the configuration refuses a heater relay
    without a thermometer).
    """

    def __init__(self, limits: SafetyLimits, clock: Clock, *, thermometer: bool = True,
                 heater: bool = True) -> None:
        self.limits = limits
        self.clock = clock
        self.thermometer = thermometer
        self.heater = heater and thermometer
        self._started = clock.monotonic()
        self._heating = False
        self._on_since: float | None = None
        self._max_on_until: float | None = None  # a max_on_time lockout holds until then
        self._overtemp = False  # latched until the water has cooled by overtemp_clear
        self._lockout_reason: str | None = None
        self._dry_boil = False
        self._last = Decision(False, False, None, frozenset(), frozenset())

    @property
    def decision(self) -> Decision:
        """The last decision (heater off and nothing known before the first update)."""
        return self._last

    def update(self, *, level_state: str, temp_c: float | None,
               read_at: float | None) -> Decision:
        """Decide from the latest readings.

        ``level_state`` is the dispenser's (``ok``, ``low``, ``empty``,
        ``unknown``); ``temp_c`` the last good temperature or None when there is
        none (never read, or the thermometer failed repeatedly); ``read_at`` the
        clock's monotonic time of that reading.
        """
        now = self.clock.monotonic()
        # In the first sensor_timeout after start a missing reading is "not yet",
        # not a fault: the heater stays off, but no lockout is raised at each boot.
        starting = now - self._started < self.limits.sensor_timeout
        reasons: set[str] = set()
        waiting = self._check_level(level_state, starting, reasons)
        if self.thermometer:
            waiting = self._check_temperature(temp_c, read_at, now, starting, reasons) \
                or waiting
        else:
            waiting = True  # without a thermometer the heater is never ours to run
        self._check_on_time(now, reasons)

        # The element was energised when the tank ran dry: it may have boiled dry.
        if "empty" in reasons and self._heating:
            self._dry_boil = True
        elif "empty" not in reasons:
            self._dry_boil = False

        if reasons:
            if self._lockout_reason is None:
                self._lockout_reason = next(r for r in REASONS if r in reasons)
        else:
            self._lockout_reason = None

        # Allowed only with no reason and nothing awaited: temp_c is then fresh.
        heat = self.heater and not reasons and not waiting and self._thermostat(temp_c)
        self._switch(heat, now)
        return self._decide(heat, reasons)

    def _check_level(self, level_state: str, starting: bool, reasons: set[str]) -> bool:
        """Add the level's reasons; True while a first level reading is awaited."""
        if level_state == "empty":
            reasons.add("empty")
        elif level_state not in _WET:
            if starting:
                return True
            reasons.add("level_unknown")
        return False

    def _check_temperature(self, temp_c: float | None, read_at: float | None, now: float,
                           starting: bool, reasons: set[str]) -> bool:
        """Add the thermometer's reasons (silent, out of range, over-temperature,
        latched until the water has cooled); True while a first reading is awaited."""
        lim = self.limits
        fresh = temp_c is not None and read_at is not None and now - read_at <= lim.sensor_timeout
        if not fresh:
            if starting and read_at is None:
                return True
            reasons.add("sensor_silent")
        elif not lim.min_valid_c <= temp_c <= lim.max_valid_c:
            reasons.add("sensor_range")
        else:
            if temp_c > lim.max_temp_c:
                self._overtemp = True
            elif temp_c <= lim.max_temp_c - lim.overtemp_clear:
                self._overtemp = False
            if self._overtemp:
                reasons.add("overtemp")
        return False

    def _check_on_time(self, now: float, reasons: set[str]) -> None:
        """Add ``max_on_time`` from a run of ``max_on`` until ``cooldown`` has passed."""
        lim = self.limits
        # Continuous on-time, counted up to now: a heater that has been on since
        # the last update has been on all that while.
        if self._heating and self._on_since is not None and now - self._on_since >= lim.max_on:
            self._max_on_until = now + lim.cooldown
        if self._max_on_until is not None:
            if now < self._max_on_until:
                reasons.add("max_on_time")
            else:
                self._max_on_until = None

    def _thermostat(self, temp_c: float) -> bool:
        """Hold ``target_c``: heating goes on up to it, and starts again only once
        the water has cooled ``hysteresis`` below it."""
        if self._heating:
            return temp_c < self.limits.target_c
        return temp_c <= self.limits.target_c - self.limits.hysteresis

    def _switch(self, heat: bool, now: float) -> None:
        """Note the relay's new position; an on-period starts when it goes on."""
        if heat and not self._heating:
            self._on_since = now
        elif not heat:
            self._on_since = None
        self._heating = heat

    def _decide(self, heat: bool, reasons: set[str]) -> Decision:
        faults = {FAULT_OF_REASON[r] for r in reasons if r in FAULT_OF_REASON}
        if self._dry_boil:
            faults.add("dry_boil")
        self._last = Decision(
            heater=heat,
            lockout=self._lockout_reason is not None,
            reason=self._lockout_reason,
            reasons=frozenset(reasons),
            faults=frozenset(faults),
        )
        return self._last

    def cut(self) -> None:
        """The relay was switched off from outside (``Dispenser.safe()``): forget
        the running time, so the next decision starts a fresh on-period."""
        self._heating = False
        self._on_since = None
