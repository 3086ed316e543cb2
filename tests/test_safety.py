"""HeaterSafety: every rule as a row of a table, and a property over any readings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.safety import REASONS, HeaterSafety, SafetyLimits
from yizhan.clock import ManualClock

LIMITS = SafetyLimits()  # target 95 (hysteresis 3), max 98, range -5..110, 30 min on, 10 min rest


@dataclass(frozen=True)
class R:
    """One update: move the clock ``dt``, then read ``level`` and ``temp``.

    ``temp`` is a fresh reading, None for "never read", or STALE for "the
    thermometer said nothing new" (the last reading ages)."""

    dt: float
    level: str = "ok"
    temp: float | str | None = 20.0


STALE = "stale"


def run(rows: list[R], limits: SafetyLimits = LIMITS):
    clock = ManualClock()
    safety = HeaterSafety(limits, clock)
    temp, read_at = None, None
    decisions = []
    for row in rows:
        clock.advance(row.dt)
        if row.temp is None:
            temp, read_at = None, None
        elif row.temp != STALE:
            temp, read_at = row.temp, clock.monotonic()
        decisions.append(safety.update(level_state=row.level, temp_c=temp, read_at=read_at))
    return decisions


def heating(minutes: float, temp: float = 50.0) -> list[R]:
    """The heater running ``minutes`` with water that never gets warm enough."""
    return [R(60.0, temp=temp) for _ in range(int(minutes))]


# (name, readings, heater, lockout reason or None, reasons, faults)
TABLE = [
    ("waits for the first temperature",
     [R(0, temp=None)], False, None, set(), set()),
    ("waits for the first level",
     [R(0, level="unknown")], False, None, set(), set()),
    ("heats once level and temperature are sane",
     [R(0)], True, None, set(), set()),
    ("a low tank still covers the element",
     [R(0, level="low")], True, None, set(), set()),
    ("empty: cut and locked out",
     [R(0, level="empty")], False, "empty", {"empty"}, set()),
    ("empty while heating: dry boil",
     [R(0), R(1, level="empty")], False, "empty", {"empty"}, {"dry_boil"}),
    ("level unknown past the start-up grace",
     [R(11, level="unknown")], False, "level_unknown", {"level_unknown"}, {"sensor"}),
    ("never a temperature past the grace: silent",
     [R(11, temp=None)], False, "sensor_silent", {"sensor_silent"}, {"sensor"}),
    ("the last reading is older than sensor_timeout: silent",
     [R(0), R(5, temp=STALE), R(5.5, temp=STALE)],
     False, "sensor_silent", {"sensor_silent"}, {"sensor"}),
    ("a reading within sensor_timeout still counts",
     [R(0), R(9.5, temp=STALE)], True, None, set(), set()),
    ("too hot to be water: sensor range",
     [R(0, temp=120.0)], False, "sensor_range", {"sensor_range"}, {"sensor"}),
    ("too cold to be water: sensor range",
     [R(0, temp=-10.0)], False, "sensor_range", {"sensor_range"}, {"sensor"}),
    ("-127, the DS18B20's read error",
     [R(0, temp=-127.0)], False, "sensor_range", {"sensor_range"}, {"sensor"}),
    ("over max_temp_c",
     [R(0, temp=98.5)], False, "overtemp", {"overtemp"}, {"overtemp"}),
    ("an overtemp holds until the water is overtemp_clear below",
     [R(0, temp=99.0), R(60, temp=94.0)], False, "overtemp", {"overtemp"}, {"overtemp"}),
    ("an overtemp clears at max_temp_c - overtemp_clear",
     [R(0, temp=99.0), R(60, temp=93.0)], False, None, set(), set()),
    ("thermostat: off between target - hysteresis and target when starting",
     [R(0, temp=93.0)], False, None, set(), set()),
    ("thermostat: on at target - hysteresis",
     [R(0, temp=92.0)], True, None, set(), set()),
    ("thermostat: stays on up to target",
     [R(0, temp=92.0), R(30, temp=94.9)], True, None, set(), set()),
    ("thermostat: off at target",
     [R(0, temp=92.0), R(30, temp=95.0)], False, None, set(), set()),
    ("thermostat: stays off while cooling to target - hysteresis",
     [R(0, temp=92.0), R(30, temp=95.0), R(30, temp=93.0)], False, None, set(), set()),
    ("max on-time: cut after 30 min of continuous heating",
     [R(0), *heating(30)], False, "max_on_time", {"max_on_time"}, {"heater"}),
    ("max on-time: 29 min is still fine",
     [R(0), *heating(29)], True, None, set(), set()),
    ("max on-time: still resting 9 min later",
     [R(0), *heating(30), R(9 * 60, temp=50.0)], False, "max_on_time", {"max_on_time"},
     {"heater"}),
    ("max on-time: back after the 10 min cool-down",
     [R(0), *heating(30), R(10 * 60, temp=50.0)], True, None, set(), set()),
    ("a thermostat break restarts the on-time count",
     [R(0, temp=92.0), *heating(20, temp=92.0), R(60, temp=95.0), R(60, temp=92.0),
      *heating(20, temp=92.0)], True, None, set(), set()),
    ("recovery needs every condition clear: refilled but still silent",
     [R(0), R(1, level="empty", temp=STALE), R(15, level="ok", temp=STALE)],
     False, "empty", {"sensor_silent"}, {"sensor"}),
    ("recovery once all clear",
     [R(0), R(1, level="empty", temp=STALE), R(15, level="ok", temp=STALE), R(1, level="ok")],
     True, None, set(), set()),
    ("the lockout keeps the reason that started it",
     [R(0, level="empty"), R(1, level="empty", temp=99.0), R(1, level="ok", temp=99.0)],
     False, "empty", {"overtemp"}, {"overtemp"}),
    ("several at once: the most telling reason",
     [R(11, level="empty", temp=None)], False, "sensor_silent", {"sensor_silent", "empty"},
     {"sensor"}),
]


@pytest.mark.parametrize(("rows", "heater", "reason", "reasons", "faults"),
                         [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_rule(rows, heater, reason, reasons, faults):
    d = run(rows)[-1]
    assert d.heater is heater
    assert d.reason == reason
    assert d.lockout is (reason is not None)
    assert set(d.reasons) == reasons
    assert set(d.faults) == faults


def test_fault_shown_is_the_most_urgent():
    d = run([R(0), R(1, level="empty", temp=99.0)])[-1]
    assert d.faults == {"overtemp", "dry_boil"}
    assert d.fault == "overtemp"


def test_without_thermometer_the_heater_is_never_run():
    clock = ManualClock()
    safety = HeaterSafety(LIMITS, clock, thermometer=False)
    d = safety.update(level_state="ok", temp_c=None, read_at=None)
    assert (d.heater, d.lockout) == (False, False)
    clock.advance(60)
    d = safety.update(level_state="empty", temp_c=None, read_at=None)
    assert (d.heater, d.reason) == (False, "empty")


def test_cut_from_outside_restarts_the_on_time():
    clock = ManualClock()
    safety = HeaterSafety(LIMITS, clock)
    for _ in range(29):
        clock.advance(60)
        assert safety.update(level_state="ok", temp_c=50.0, read_at=clock.monotonic()).heater
    safety.cut()  # the agent's safe(), say at a restart of the loop
    for _ in range(29):
        clock.advance(60)
        assert safety.update(level_state="ok", temp_c=50.0, read_at=clock.monotonic()).heater


@pytest.mark.parametrize("bad", [
    {"hysteresis": 0}, {"target_c": 99.0}, {"max_temp_c": 120.0}, {"max_on": 0},
    {"sensor_timeout": 0}, {"cooldown": -1},
])
def test_limits_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        SafetyLimits(**bad)


# -- the property: whatever the readings, never heating while anything is unsafe ------

# Short on-time limits, so that a run of a few dozen readings can reach them.
PROPERTY_LIMITS = SafetyLimits(max_on=60.0, cooldown=30.0)

readings = st.lists(
    st.tuples(
        st.one_of(  # seconds before the update: mostly a poller's pace, sometimes a gap
            st.floats(min_value=0, max_value=6, allow_nan=False),
            st.floats(min_value=0, max_value=600, allow_nan=False),
        ),
        st.sampled_from(["ok", "ok", "low", "empty", "unknown"]),
        st.one_of(
            st.just(STALE),  # nothing new from the thermometer
            st.none(),  # the thermometer failed again and again: no reading at all
            st.floats(min_value=-130, max_value=130, allow_nan=False),
            st.floats(min_value=20, max_value=92, allow_nan=False),  # water to heat
            st.floats(min_value=85, max_value=100, allow_nan=False),  # near the limits
        ),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(readings)
def test_never_heats_while_unsafe(steps):
    lim = PROPERTY_LIMITS
    clock = ManualClock()
    safety = HeaterSafety(lim, clock)
    temp, read_at = None, None
    on_since = None  # when the heater last went on, by the decisions we saw
    rest_until = None  # a max_on cut holds at least this long
    for dt, level, reading in steps:
        clock.advance(dt)
        now = clock.monotonic()
        if reading is None:
            temp = None  # read_at stays: the last good reading is simply gone
        elif reading != STALE:
            temp, read_at = reading, now
        ran_too_long = on_since is not None and now - on_since >= lim.max_on
        if ran_too_long:
            rest_until = now + lim.cooldown
        d = safety.update(level_state=level, temp_c=temp, read_at=read_at)
        unsafe = (
            level not in ("ok", "low")
            or temp is None
            or read_at is None
            or now - read_at > lim.sensor_timeout
            or not lim.min_valid_c <= temp <= lim.max_valid_c
            or temp > lim.max_temp_c
            or ran_too_long
            or (rest_until is not None and now < rest_until)
        )
        if unsafe:
            assert not d.heater, (level, temp, read_at, now)
        if d.heater:
            assert not d.lockout and not d.reasons
            assert temp is not None and temp < lim.target_c
        if d.reasons:
            assert d.lockout and d.reason in REASONS
        on_since = (on_since if on_since is not None else now) if d.heater else None
