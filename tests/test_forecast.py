"""The forecaster (hub/alerting/forecast.py): synthetic stations whose true hourly rates are
known, driven minute by minute on a ManualClock, and what it predicts from them."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as found
from hypothesis import strategies as st

from hub.alerting.forecast import DEFAULT_EMPTY_MARK, Forecaster, Refill, hours_to_zero
from hub.storage.schema import events
from hub.storage.store import Store
from protocol import messages as m
from protocol.examples import example
from yizhan.clock import ManualClock

SID = "yh-chumen-01"
MIN = 60_000
HOUR = 3_600_000
OFFSET_MS = 8 * HOUR  # the forecaster's default: China Standard Time
START = 1_764_172_800.0  # 2025-11-27 00:00 local (UTC+8)

#: Tank fraction drawn per hour, by local hour: 4 %/h at night, 12 %/h at noon.
WATER_RATES = ([0.04] * 7 + [0.07] * 4 + [0.12] * 3 + [0.08] * 6 + [0.05] * 4)
#: Ready banks borrowed per hour, by local hour.
BORROW_RATES = ([0.25] * 7 + [1.5] * 4 + [3.0] * 3 + [1.5] * 6 + [0.5] * 4)


def local_hour(ms: int) -> int:
    return ((ms + OFFSET_MS) // HOUR) % 24


def true_hours_to(level: float, mark: float, ms: int, rates=WATER_RATES) -> float:
    """The truth: integrate the real rates from ``ms`` until ``level`` reaches ``mark``."""
    return hours_to_zero(rates, (ms + OFFSET_MS) / HOUR, level - mark)


def state(level: float | None = None, *, level_state: str | None = None,
          ml: int | None = None, slots: list[dict] | None = None,
          dispenser_online: bool = True, lockers_online: bool = True) -> dict:
    doc: dict = {"v": 1, "sid": SID}
    if level is not None or level_state is not None:
        if level_state is None:
            level_state = "empty" if level <= DEFAULT_EMPTY_MARK else (
                "low" if level <= 0.25 else "ok")
        doc["dispenser"] = {"online": dispenser_online, "level": level,
                            "level_state": level_state, "temp_c": 92.0, "heater": True,
                            "heater_lockout": False, "fault": None, "dispensed_ml": ml}
    if slots is not None:
        doc["lockers"] = {"online": lockers_online, "slots": slots}
    return doc


# -- a water station --------------------------------------------------------------------


@dataclass
class WaterStation:
    """A tank drawn at ``WATER_RATES``; staff come ``response_min`` after it is low
    (below ``call_at``) and pour it back to 0.95 in three steps over two minutes."""

    clock: ManualClock
    fc: Forecaster
    sid: str = SID
    level: float = 0.95
    call_at: float = 0.2
    response_min: int = 30
    noise: float = 0.003
    scale: float = 1.0  # multiplies every rate (a busier station)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    called_at: int | None = None
    refills_done: int = 0
    pour: list[float] = field(default_factory=list)

    def minute(self, tick: bool = True) -> None:
        """One minute of the station; ``tick=False`` when the test moves the
        shared clock itself (several stations)."""
        if tick:
            self.clock.advance(60)
        now = self.clock.ms()
        rate = WATER_RATES[local_hour(now - MIN)] * self.scale
        self.level = max(0.0, self.level - rate / 60)
        if self.pour:
            self.level += self.pour.pop(0)
        if self.called_at is None and self.level < self.call_at:
            self.called_at = now
            self.fc.alert_started(self.sid, "water", now)
        elif (self.called_at is not None and not self.pour
              and now - self.called_at >= self.response_min * MIN):
            self.pour = [0.3, 0.25, 0.95 - self.level - 0.55]  # three pours to 0.95
            self.called_at = None
            self.refills_done += 1
        seen = min(1.0, max(0.0, self.level + self.rng.uniform(-self.noise, self.noise)))
        self.fc.observe(self.sid, state(round(seen, 3)), now)

    def run(self, hours: float) -> None:
        for _ in range(int(hours * 60)):
            self.minute()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
def fc(clock: ManualClock) -> Forecaster:
    return Forecaster(clock)


def test_water_time_to_empty_is_within_10_percent_after_a_few_days(clock, fc) -> None:
    station = WaterStation(clock, fc)
    station.run(4 * 24)
    errors = []
    for _ in range(24 * 4):  # every 15 minutes of the fifth day
        station.run(0.25)
        remaining = station.level - DEFAULT_EMPTY_MARK
        if remaining < 0.1 or station.pour:
            continue  # minutes from empty or mid-refill: the relative error means little
        truth = true_hours_to(station.level, DEFAULT_EMPTY_MARK, clock.ms()) * 3600
        predicted = fc.time_to_empty(SID, "water")
        assert predicted is not None
        errors.append(abs(predicted - truth) / truth)
    assert len(errors) > 50
    assert max(errors) < 0.10, f"worst {max(errors):.1%}, mean {sum(errors) / len(errors):.1%}"


def test_a_2am_tank_lasts_longer_than_the_same_tank_at_noon(clock, fc) -> None:
    WaterStation(clock, fc, noise=0.001).run(3 * 24)
    day = clock.ms() - (clock.ms() + OFFSET_MS) % (24 * HOUR) + 24 * HOUR
    at_2am = fc.time_to_empty(SID, "water", level=0.5, now_ms=day + 2 * HOUR)
    at_noon = fc.time_to_empty(SID, "water", level=0.5, now_ms=day + 12 * HOUR)
    assert at_2am is not None and at_noon is not None
    for got, start in ((at_2am, 2), (at_noon, 12)):
        truth = hours_to_zero(WATER_RATES, start, 0.5 - DEFAULT_EMPTY_MARK) * 3600
        assert got == pytest.approx(truth, rel=0.05)
    assert at_2am > at_noon + 1.5 * 3600


def test_refills_are_kept_out_of_the_rate_and_recorded_with_time_to_refill(clock, fc) -> None:
    station = WaterStation(clock, fc, response_min=40, noise=0.001)
    station.run(5 * 24)
    profile = fc.profile(SID, "water")
    assert profile is not None
    for hour, (got, truth) in enumerate(zip(profile, WATER_RATES, strict=True)):
        assert got == pytest.approx(truth, rel=0.05), f"hour {hour}"
    refills = fc.refills(SID)
    assert station.refills_done >= 9
    assert len(refills) == 8  # the most recent ones are kept
    for r in refills:
        assert isinstance(r, Refill) and r.what == "water"
        assert r.level_before == pytest.approx(0.2 - 40 / 60 * 0.12, abs=0.15)
        assert r.level_after == pytest.approx(0.95, abs=0.01)  # the top of a 3-step pour
        # The alert started when the level fell below 0.2; staff poured 40 minutes later.
        assert r.time_to_refill_s == pytest.approx(40 * 60, abs=120)
    assert fc.refill_detected(SID, "water", since_ms=refills[-1].at_ms)
    assert not fc.refill_detected(SID, "water", since_ms=refills[-1].at_ms + 1)


def test_sensor_noise_is_no_refill_and_does_not_bias_the_rate(clock, fc) -> None:
    level = 0.9
    for minute in range(24 * 60):
        clock.advance(60)
        level -= 0.03 / 60
        wobble = 0.015 if minute % 2 else -0.015  # rises of 0.03: never 0.2
        fc.observe(SID, state(level + wobble), clock.ms())
    assert fc.refills(SID) == []
    assert not fc.refill_detected(SID, "water")
    profile = fc.profile(SID, "water")
    assert profile is not None
    assert sum(profile) / 24 == pytest.approx(0.03, rel=0.05)


def test_a_refill_the_station_saw_happens_without_an_alert(clock, fc) -> None:
    fc.observe(SID, state(0.3), clock.ms())
    clock.advance(60)
    fc.observe(SID, state(0.9), clock.ms())
    assert fc.refill_detected(SID, "water")
    [refill] = fc.refills(SID)
    assert refill == Refill("water", clock.ms(), 0.3, 0.9, None)
    clock.advance(11 * 60)
    assert not fc.refill_detected(SID, "water")  # no longer news


def test_too_little_history_gives_none(clock, fc) -> None:
    assert fc.time_to_empty("yh-nowhere", "water") is None
    station = WaterStation(clock, fc)
    station.run(16)
    assert fc.time_to_empty(SID, "water") is None  # 16 hours of data: not a day yet
    assert fc.time_to_empty(SID, "chargers") is None  # no lockers at all
    station.run(8)
    assert fc.time_to_empty(SID, "water") is not None
    clock.advance(7 * 3600)  # the station has said nothing for 7 hours
    assert fc.time_to_empty(SID, "water") is None
    with pytest.raises(ValueError, match="water, chargers"):
        fc.time_to_empty(SID, "cups")


def test_a_tank_nobody_draws_from_never_empties(clock, fc) -> None:
    for _ in range(2 * 24 * 60):
        clock.advance(60)
        fc.observe(SID, state(0.7), clock.ms())
    assert fc.time_to_empty(SID, "water") is None
    assert fc.time_to_empty(SID, "water", level=DEFAULT_EMPTY_MARK) == 0.0


def test_an_offline_dispenser_is_not_forecast(clock, fc) -> None:
    WaterStation(clock, fc).run(24)
    assert fc.time_to_empty(SID, "water") is not None
    clock.advance(60)
    fc.observe(SID, state(0.5, dispenser_online=False), clock.ms())
    assert fc.time_to_empty(SID, "water") is None


def test_a_new_station_borrows_the_fleet_hour_shape(clock) -> None:
    fc = Forecaster(clock)
    fleet = [WaterStation(clock, fc, sid=f"yh-s{i}", rng=random.Random(i)) for i in range(3)]
    newcomer = WaterStation(clock, fc, sid="yh-new", scale=2.0, rng=random.Random(9))
    for _ in range(3 * 24 * 60 - 15 * 60):
        clock.advance(60)
        for s in fleet:
            s.minute(tick=False)
    for _ in range(15 * 60):  # the newcomer has seen only 15 hours of the day
        clock.advance(60)
        for s in (*fleet, newcomer):
            s.minute(tick=False)
    profile = fc.profile("yh-new", "water")
    assert profile is not None
    seen = {local_hour(clock.ms() - i * HOUR) for i in range(1, 16)}
    unseen = [h for h in range(24) if h not in seen]
    for h in unseen:  # its own mean, shaped by the fleet: close to the truth
        assert profile[h] == pytest.approx(2.0 * WATER_RATES[h], rel=0.2), f"hour {h}"


def test_the_fleet_listener_takes_typed_states(clock, fc) -> None:
    """``attach(fleet)`` hands the forecaster each applied ``protocol`` State."""
    doc = example("state")
    for minute in range(30):
        doc["dispenser"]["level"] = round(0.9 - minute * 0.002, 4)
        doc["rev"] += 1
        clock.advance(60)
        fc.on_fleet(SID, "state", m.State.from_dict(doc), clock.ms())
        fc.on_fleet(SID, "status", None, clock.ms())  # liveness only: ignored
    water = fc._stations[SID].water
    assert water.level == pytest.approx(0.842)
    assert sum(water.prof.v[:24]) == pytest.approx(0.058, abs=1e-4)
    assert fc._stations[SID].chargers.slots is not None


# -- a float-switch station (level null) ------------------------------------------------


def test_a_float_switch_station_is_forecast_from_its_flow_meter_and_switches(clock, fc) -> None:
    tank_ml, low_ml, empty_ml = 20_000, 5_000, 1_600
    ml_per_h = [r * tank_ml for r in WATER_RATES]
    water, dispensed, empty_since = float(tank_ml), 0.0, None
    answers = []
    for minute in range(5 * 24 * 60):
        clock.advance(60)
        now = clock.ms()
        draw = min(water, ml_per_h[local_hour(now - MIN)] / 60)
        water, dispensed = water - draw, dispensed + draw
        level_state = "empty" if water <= empty_ml else "low" if water <= low_ml else "ok"
        if level_state == "empty":
            empty_since = empty_since or now
            if now - empty_since >= 20 * MIN:  # staff arrive 20 minutes after empty
                water, empty_since, level_state = float(tank_ml), None, "ok"
        fc.observe(SID, state(level_state=level_state, ml=int(dispensed)), now)
        if minute > 3 * 24 * 60 and level_state != "empty" and minute % 30 == 0:
            predicted = fc.time_to_empty(SID, "water")
            truth = hours_to_zero(ml_per_h, (now + OFFSET_MS) / HOUR, water - empty_ml)
            answers.append((predicted, truth * 3600))
    assert answers and all(p is not None for p, _ in answers)
    worst = max(abs(p - t) / t for p, t in answers if t > 1800)
    assert worst < 0.10
    assert all(r.what == "water" and r.level_before is None for r in fc.refills(SID))


def test_a_float_switch_station_without_history_of_empty_is_none(clock, fc) -> None:
    for minute in range(24 * 60):
        clock.advance(60)
        fc.observe(SID, state(level_state="ok" if minute < 600 else "low",
                              ml=minute * 100), clock.ms())
    assert fc.time_to_empty(SID, "water") is None  # never seen how long "low" lasts


# -- chargers -------------------------------------------------------------------------------


@dataclass
class LockerStation:
    """``n`` slots; riders borrow the fullest ready bank at ``BORROW_RATES``; three
    banks in four come back ``back_after_min`` later at 40 % into an empty slot and
    charge one point a minute; staff restock charged banks ``response_min`` after
    ready banks fall to ``call_at``."""

    clock: ManualClock
    fc: Forecaster
    n: int = 16
    banks: list[int | None] = field(default_factory=lambda: [100] * 12 + [None] * 4)
    faults: set[int] = field(default_factory=set)
    owed: float = 0.0
    away: list[int] = field(default_factory=list)  # when each borrowed bank comes back
    lent: int = 0
    call_at: int = 2
    response_min: int = 45
    back_after_min: int = 120
    called_at: int | None = None
    restocks: int = 0
    borrow_scale: float = 1.0
    staff: bool = True

    def ready(self) -> int:
        return sum(1 for i, c in enumerate(self.banks)
                   if c is not None and c >= 80 and i not in self.faults)

    def minute(self, observe: bool = True, tick: bool = True) -> None:
        if tick:
            self.clock.advance(60)
        now = self.clock.ms()
        for i, c in enumerate(self.banks):
            if c is not None and c < 100:
                self.banks[i] = c + 1
        self.owed += BORROW_RATES[local_hour(now - MIN)] * self.borrow_scale / 60
        while self.owed >= 1:
            self.owed -= 1
            ready = [i for i, c in enumerate(self.banks)
                     if c is not None and c >= 80 and i not in self.faults]
            if not ready:
                break  # no bank to lend: the demand is lost
            best = max(ready, key=lambda i: self.banks[i])
            self.banks[best] = None
            self.lent += 1
            if self.lent % 4:
                self.away.append(now + self.back_after_min * MIN)
        for due in [t for t in self.away if t <= now]:
            self.away.remove(due)
            free = [i for i, c in enumerate(self.banks) if c is None]
            if free:
                self.banks[free[0]] = 40
        if self.staff:
            if self.called_at is None and self.ready() <= self.call_at:
                self.called_at = now
                self.fc.alert_started(SID, "chargers", now)
            elif self.called_at is not None and now - self.called_at >= self.response_min * MIN:
                for i, c in enumerate(self.banks):
                    if (c is None or c < 80) and sum(b is not None for b in self.banks) < 14:
                        self.banks[i] = 100
                self.called_at = None
                self.restocks += 1
        if observe:
            self.fc.observe(SID, state(slots=self.slots()), now)

    def slots(self) -> list[dict]:
        return [{"slot": i + 1, "bank": None if c is None else f"PB{i:04d}", "charge": c,
                 "charging": c is not None and c < 100, "locked": True,
                 "fault": "charger_fault" if i in self.faults else None,
                 "temp_c": 30, "cycles": 1} for i, c in enumerate(self.banks)]

    def copy(self) -> LockerStation:
        clone = LockerStation(ManualClock(self.clock.now()), self.fc, staff=False)
        clone.banks, clone.faults = list(self.banks), set(self.faults)
        clone.owed, clone.away, clone.lent = self.owed, list(self.away), self.lent
        clone.borrow_scale = self.borrow_scale
        return clone

    def truly_empty_in(self) -> float | None:
        """Run a copy without staff until no bank is ready: the seconds it took."""
        clone = self.copy()
        for minute in range(1, 3 * 24 * 60):
            clone.minute(observe=False)
            if clone.ready() == 0:
                return minute * 60.0
        return None


def test_chargers_net_rate_counts_borrows_and_charge_ups(clock, fc) -> None:
    station = LockerStation(clock, fc)
    for _ in range(4 * 24 * 60):
        station.minute()
    assert station.restocks >= 2
    assert [r.what for r in fc.refills(SID)] == ["chargers"] * len(fc.refills(SID))
    refill = fc.refills(SID)[-1]
    assert refill.level_after > refill.level_before
    assert refill.time_to_refill_s == pytest.approx(45 * 60, abs=60)
    checks = []
    for _ in range(48):  # every half hour of the fifth day
        for _ in range(30):
            station.minute()
        if station.called_at is not None or station.ready() < 3:
            continue
        truth = station.truly_empty_in()
        predicted = fc.time_to_empty(SID, "chargers")
        if truth is None:
            continue
        assert predicted is not None
        checks.append((predicted, truth))
    assert len(checks) > 30
    errors = sorted(abs(p - t) / t for p, t in checks)
    # A day's lowest point that comes near zero without reaching it can move
    # "empty" by a day (docs/forecast.md): a few far-off answers, never soon.
    assert errors[len(errors) // 2] < 0.05, checks
    assert sum(e < 0.15 for e in errors) >= 0.9 * len(errors), checks
    assert all(p >= t * 0.85 or t - p < 3600 for p, t in checks), checks


def test_a_slot_fault_is_not_a_borrow_and_a_charge_up_is_no_restock(clock, fc) -> None:
    slots = [{"slot": i + 1, "bank": f"PB{i}", "charge": 79 if i == 3 else 95,
              "charging": False, "locked": True, "fault": None, "temp_c": 30, "cycles": 1}
             for i in range(6)]
    fc.observe(SID, state(slots=slots), clock.ms())
    clock.advance(60)
    slots[0] = {**slots[0], "fault": "overheat"}  # one ready bank faults
    slots[1] = {**slots[1], "charge": 80}  # still ready
    fc.observe(SID, state(slots=slots), clock.ms())
    clock.advance(60)
    slots[3] = {**slots[3], "charge": 80}  # finished charging
    slots[2] = {**slots[2], "bank": None, "charge": None}  # borrowed
    fc.observe(SID, state(slots=slots), clock.ms())
    station = fc._stations[SID].chargers
    assert station.ready == 4 and station.cap == 4  # banks in working slots
    amounts = list(station.prof.v[:24])
    assert sum(amounts) == pytest.approx(0.0)  # one borrow, one charge-up, no fault counted
    assert fc.refills(SID) == []
    clock.advance(60)
    slots[2] = {**slots[2], "bank": "PB9", "charge": 100}  # a rider's full bank: one put in
    fc.observe(SID, state(slots=slots), clock.ms())
    clock.advance(11 * 60)
    fc.observe(SID, state(slots=slots), clock.ms())
    assert fc.refills(SID) == []  # one bank is a return, not a restock
    assert sum(station.prof.v[:24]) == pytest.approx(-1.0)  # ... and counts as supply


# -- properties ---------------------------------------------------------------------------


def naive_hours_to_zero(rates, start, level, cap, step=0.05):
    t, left = 0.0, level
    while t < 24 * 40:
        hour = math.floor(start + t + 1e-12)
        r = rates[hour % 24]
        span = min(step, hour + 1 - (start + t))
        # Within rounding of empty is empty: twenty 0.05 h steps of one hour
        # leave 1e-18 behind, which would wait a whole day for the next use.
        if r > 0 and r * span >= left - 1e-12:
            return t + left / r
        left = min(cap, left - r * span)
        t += span
    return None


rates_st = st.lists(st.floats(-2, 3, allow_nan=False), min_size=24, max_size=24)


@settings(max_examples=150, deadline=None)
@given(rates=rates_st, start=st.floats(0, 10_000), a=st.floats(0, 50), b=st.floats(0, 50),
       headroom=st.floats(0, 20))
def test_hours_to_zero_is_never_negative_and_monotonic_in_the_level(rates, start, a, b,
                                                                    headroom) -> None:
    low, high = min(a, b), max(a, b)
    cap = high + headroom
    t_low, t_high = hours_to_zero(rates, start, low, cap), hours_to_zero(rates, start, high, cap)
    assert t_low is None or t_low >= 0
    if t_high is not None:
        assert t_high >= 0
        assert t_low is not None and t_low <= t_high + 1e-6


@settings(max_examples=60, deadline=None)
@given(rates=st.lists(st.floats(-1, 2, allow_nan=False), min_size=24, max_size=24),
       start=st.floats(0, 48), level=st.floats(0.01, 8), headroom=st.floats(0, 4))
@found(rates=[0.0] * 23 + [0.005], start=0.0, level=0.01, headroom=0.0)  # found once
def test_hours_to_zero_matches_a_step_by_step_simulation(rates, start, level, headroom) -> None:
    exact = hours_to_zero(rates, start, level, level + headroom)
    naive = naive_hours_to_zero(rates, start, level, level + headroom)
    if naive is None:
        assert exact is None or exact > 24 * 39
    else:
        assert exact == pytest.approx(naive, abs=1e-6)


_TRAINED: dict[str, Forecaster] = {}


def trained() -> Forecaster:
    """One forecaster that learned both a water and a locker station (built once)."""
    if "fc" not in _TRAINED:
        clock = ManualClock(start=START)
        fc = Forecaster(clock)
        water = WaterStation(clock, fc)
        lockers = LockerStation(clock, fc)
        for _ in range(3 * 24 * 60):
            clock.advance(60)
            water.minute(tick=False)
            lockers.minute(tick=False)
        _TRAINED["fc"] = fc
    return _TRAINED["fc"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(what=st.sampled_from(["water", "chargers"]), a=st.floats(0, 1), b=st.floats(0, 1),
       later_h=st.floats(0, 72))
def test_the_forecast_is_never_negative_and_more_is_never_sooner_empty(what, a, b,
                                                                       later_h) -> None:
    fc = trained()
    scale = 1.0 if what == "water" else 16
    low, high = min(a, b) * scale, max(a, b) * scale
    now = fc.clock.ms() + int(later_h * HOUR)
    t_low = fc.time_to_empty(SID, what, level=low, now_ms=now)
    t_high = fc.time_to_empty(SID, what, level=high, now_ms=now)
    assert t_low is not None  # both stations are used up every day
    assert t_low >= 0
    assert t_high is not None and t_high >= t_low - 1e-6


# -- re-learning after a restart ------------------------------------------------------------


def test_after_a_restart_the_rates_are_relearned_from_stored_events(database_url, clock) -> None:
    """A hub that ran for four days stored the station's events; a new forecaster
    on the same database re-learns the chargers from them at once, and water
    (whose events do not tell how full a refill left the tank) from live States."""
    first = Forecaster(clock)
    water = WaterStation(clock, first)
    lockers = LockerStation(clock, first)
    rows, seq, last = [], 0, None

    def event(kind: str, data: dict) -> None:
        nonlocal seq
        seq += 1
        rows.append({"sid": SID, "epoch": "9f2c01ab", "seq": seq, "type": kind,
                     "ts": clock.ms(), "synced": True, "received_ms": clock.ms(),
                     "at_ms": clock.ms(), "data": json.dumps(data)})

    for _ in range(4 * 24 * 60):
        clock.advance(60)
        water.minute(tick=False)
        before = list(lockers.banks)
        lockers.minute(tick=False)
        for old, new in zip(before, lockers.banks, strict=True):
            if old is not None and new is None:
                event("bank_borrowed", {"slot": 1, "bank": "PB1", "charge": old + 1,
                                        "rider": "r:00"})
            elif old is None and new == 40:
                event("bank_returned", {"slot": 1, "bank": "PB1", "charge": 40, "rider": None})
        level_state = state(water.level)["dispenser"]["level_state"]
        if level_state != last:
            event("water_level", {"level_state": level_state, "level": round(water.level, 3)})
            last = level_state
    store = Store(database_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(events.insert(), rows)
        again = Forecaster(clock, store=store)  # the hub restarted
        assert Forecaster(store, clock).profile(SID, "chargers")  # alerting-internals order
        learned, live = again.profile(SID, "chargers"), first.profile(SID, "chargers")
        assert learned is not None and live is not None
        assert sum(learned) == pytest.approx(sum(live), rel=0.15)  # net banks a day
        clock.advance(60)
        water.fc = lockers.fc = again
        water.minute(tick=False)
        lockers.minute(tick=False)
        predicted = again.time_to_empty(SID, "chargers")
        truth = lockers.truly_empty_in()
        assert predicted is not None and truth is not None
        assert predicted == pytest.approx(truth, rel=0.2)
        assert again.time_to_empty(SID, "water") is None  # water: live States again
        for _ in range(24 * 60):
            clock.advance(60)
            water.minute(tick=False)
        predicted = again.time_to_empty(SID, "water")
        truth = true_hours_to(water.level, DEFAULT_EMPTY_MARK, clock.ms()) * 3600
        assert predicted == pytest.approx(truth, rel=0.1)
    finally:
        store.close()


def test_water_is_relearned_from_a_drain_from_low_to_empty(tmp_path, clock) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    day0 = clock.ms() - 10 * 24 * HOUR
    rows, seq = [], 0
    for day in range(10):
        noon = day0 + day * 24 * HOUR + 11 * HOUR  # 11:00 local
        # Low at 0.25, empty at 0.06 95 minutes later (0.12 an hour), then the pour.
        for at, level_state, level in ((noon, "low", 0.25), (noon + 95 * MIN, "empty", 0.06),
                                       (noon + 150 * MIN, "ok", 0.31)):
            seq += 1
            rows.append({"sid": SID, "epoch": "9f2c01ab", "seq": seq, "type": "water_level",
                         "ts": at, "synced": True, "received_ms": at, "at_ms": at,
                         "data": json.dumps({"level_state": level_state, "level": level})})
    with store.engine.begin() as conn:
        conn.execute(events.insert(), rows)
    fc = Forecaster(clock, store=store)
    store.close()
    water = fc._stations[SID].water  # white box: too few hours for a forecast yet
    assert water.mark == 0.06  # where this station's dispenser reads empty
    amounts, hours = water.prof.aged(fc._day(clock.ms()), fc._decay)
    assert sum(amounts) / sum(hours) == pytest.approx(0.12, rel=0.01)
    assert {h for h in range(24) if hours[h]} == {11, 12}
    assert fc.refills(SID) == []  # refills are what live sensors prove


# -- memory -------------------------------------------------------------------------------


def test_memory_per_station_is_bounded(clock) -> None:
    """50 000 stations must fit: measure one with a tank, a 16-slot locker and a
    full refill history."""
    fc = Forecaster(clock)
    n = 300
    slots = LockerStation(clock, fc).slots()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sids = [f"yh-station-{i:05d}" for i in range(n)]
    for step in range(30):
        clock.advance(3600)  # an hour apart: every other State is a refill of its own
        doc = state(0.9 if step % 2 else 0.2, slots=slots)
        for sid in sids:
            fc.observe(sid, doc, clock.ms())
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_station = used / n
    print(f"forecast memory: {per_station:.0f} bytes per station")
    assert all(len(fc.refills(sid)) == 8 for sid in sids)
    assert per_station < 3000
