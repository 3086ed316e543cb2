"""When will a station run dry? Water and ready power banks, forecast by hour of day.

Maintenance staff must refill a station *before* riders find it empty, and how
soon that is depends on the hour: a tank that loses 4 % an hour at 2 a.m. loses
12 % an hour at noon. The forecaster learns each station's rates from its
successive States (contract §5) and integrates them forward from what the
station has now:

* **water** — how fast the dispenser's ``level`` fraction falls, per hour;
* **chargers** — the net rate at which *ready* banks (present, no fault,
  charged to ``min_charge``) are used up, per hour: borrows minus banks that
  finish charging or come back charged.

Each rate is kept for the 24 local hours of the day, exponentially weighted so
that recent days count more (half-life ``history_days / 4``). An hour with
little data leans on the station's own mean, shaped (for water) by the hour
profile of the whole fleet. Refills — the level jumping up, charged banks put
in — are recognised, kept out of the rates, and recorded with the time they
took from the alert that asked for them.

Nothing is persisted: the model is compact and in memory (about 1.8 kB a
station with a tank, 16 slots and its refill history), and at start it is
re-learned from the last ``history_days`` of stored events: the chargers fully
(``bank_borrowed``, ``bank_returned``), water only from drains ``low`` →
``empty`` (``water_level`` events do not say how full a refill left the tank),
so water forecasts come back after a day of live States.
``docs/forecast.md`` explains the numbers for the ops lead.

Time is the hub's clock (``now_ms`` of the applied State); hours of the day are
local (``utc_offset_h``, China Standard Time by default).

>>> fc = Forecaster(clock, store=store, min_charge=80)
>>> fc.observe("yh-chumen-01", state_dict, clock.ms())    # for every applied State
>>> fc.time_to_empty("yh-chumen-01", "water")              # seconds, or None
16200.0
>>> fc.alert_started("yh-chumen-01", "water", clock.ms())
>>> fc.refills("yh-chumen-01")[-1]
Refill(what='water', at_ms=1764203400000, level_before=0.14, level_after=0.97,
       time_to_refill_s=2400.0)
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from hub.storage.schema import events
from protocol import messages as m
from yizhan.clock import Clock

if TYPE_CHECKING:
    from hub.storage.store import Store

__all__ = ["CHARGERS", "WATER", "WHATS", "Forecaster", "Refill", "hours_to_zero"]

log = logging.getLogger(__name__)

WATER, CHARGERS = "water", "chargers"
WHATS = (WATER, CHARGERS)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
HOURS = 24

#: A level at least this much (fraction of the tank) above the lowest reading
#: of the last ``REFILL_WINDOW_MS`` is a refill.
WATER_REFILL_RISE = 0.2
#: During a refill, a reading this far above the highest so far is still the
#: pour; a smaller rise is sensor noise and counts as usual.
POUR_STEP = 0.005
#: This many charged banks put into slots, each within ``REFILL_WINDOW_MS`` of
#: the one before, is a restock (one alone is a rider's return).
CHARGER_REFILL_BANKS = 2
REFILL_WINDOW_MS = 10 * 60_000
#: A bank whose charge jumps by this many points between two States was swapped
#: for another (put in), not charged: charging is about 1 point a minute.
SWAP_JUMP = 10
#: Where the dispenser reads ``empty`` unless a station shows otherwise (the
#: agent's default ``dispenser.level.empty``); learned from each station's
#: transition into ``empty``.
DEFAULT_EMPTY_MARK = 0.08
#: Exposure a station needs (decayed hours, summed over the day) before it is
#: forecast at all: about a day, so that every hour has been seen.
MIN_HISTORY_HOURS = 18.0
#: ... or this much, when the fleet's hour profile covers the whole day (a new
#: station in a running fleet: its own mean, shaped like the fleet's day).
MIN_HISTORY_HOURS_WITH_FLEET = 6.0
#: How many hours of the station mean an hour's own rate is blended with
#: (Bayesian shrinkage): with a few days of data the hour's own rate dominates.
PRIOR_HOURS = 0.1
#: A fleet hour needs this much exposure before it shapes other stations' priors.
FLEET_SHAPE_MIN_HOURS = 1.0
#: Two States further apart than this are not compared (an outage of the
#: station or the hub: what happened in between is unknown).
MAX_SPAN_MS = 24 * HOUR_MS
#: Between two ``water_level`` events (re-learning), a longer span is skipped.
MAX_EVENT_SPAN_MS = 48 * HOUR_MS
#: A forecast is not projected from a State older than this.
STALE_MS = 6 * HOUR_MS
#: Refills kept per station (the ``refilled`` events hold the full history).
REFILLS_KEPT = 8
#: How fast a returned bank charges, for re-learning from events only
#: (points per minute; docs/agent-api.md).
NOMINAL_CHARGE_PER_MIN = 1.0
#: Weight of a new band sample (float-switch stations) in its running average.
BAND_ALPHA = 0.3
_NO_BANK = 255
_REFILL_FIELDS = 5  # what, at_ms, level_before, level_after, time_to_refill_s
_LEVEL_RANK = {"empty": 0, "low": 1, "ok": 2}


class Refill(NamedTuple):
    """A refill the sensors proved. ``level_*`` are the tank fraction for water
    (None on a float-switch station) and the ready-bank count for chargers;
    ``time_to_refill_s`` is from the alert given to ``alert_started``, else None."""

    what: str
    at_ms: int
    level_before: float | None
    level_after: float | None
    time_to_refill_s: float | None = None


# -- the hour-of-day profile ------------------------------------------------------------


class _Profile:
    """Exponentially weighted amount and exposure hours for each local hour of the
    day: ``v[h]`` the amount, ``v[24 + h]`` the hours, both as of local day ``day``
    (data of an earlier day is added with its decayed weight)."""

    __slots__ = ("day", "v")

    def __init__(self) -> None:
        # Single precision: plenty for rates, and half the memory of 50 000 stations.
        self.v = array("f", bytes(4 * 2 * HOURS))
        self.day = -1

    def _weight(self, day: int, decay: float) -> float:
        if self.day < 0:
            self.day = day
        elif day > self.day:
            f = decay ** (day - self.day)
            v = self.v
            for i in range(2 * HOURS):
                v[i] *= f
            self.day = day
        elif day < self.day:
            return decay ** (self.day - day)
        return 1.0

    def add(self, lh: float, amount: float, hours: float, decay: float) -> None:
        """Add at local hour ``lh`` (hours since the epoch, local time)."""
        hb = math.floor(lh)
        w = self._weight(hb // HOURS, decay)
        h = hb % HOURS
        self.v[h] += w * amount
        self.v[HOURS + h] += w * hours

    def add_span(self, lh0: float, lh1: float, amount: float, decay: float) -> None:
        """Exposure from ``lh0`` to ``lh1`` with ``amount`` used meanwhile, split
        over the hours it covers in proportion to each hour's known rate."""
        if lh1 <= lh0:
            if amount:
                self.add(lh1, amount, 0.0, decay)
            return
        first = math.floor(lh0)
        if lh1 <= first + 1:  # within one hour: the common case, every State
            self.add(lh0, amount, lh1 - lh0, decay)
            return
        pieces = []
        t = lh0
        while t < lh1:
            end = min(math.floor(t) + 1, lh1)
            pieces.append((t, end - t))
            t = end
        guess = self.guesses()
        weights = [span * guess[math.floor(t) % HOURS] for t, span in pieces]
        total = sum(weights) or 1.0
        for (t, span), w in zip(pieces, weights, strict=True):
            self.add(t, amount * w / total, span, decay)

    def add_hours(self, lh0: float, lh1: float, decay: float) -> None:
        """Exposure only, however long: whole days in closed form."""
        if lh1 <= lh0:
            return
        first_day_end = (math.floor(lh0) // HOURS + 1) * HOURS
        if lh1 <= first_day_end + HOURS:
            self._hours_walk(lh0, lh1, decay)
            return
        self._hours_walk(lh0, first_day_end, decay)
        last_day_start = (math.floor(lh1) // HOURS) * HOURS
        d0, d1 = first_day_end // HOURS, last_day_start // HOURS  # whole days d0..d1-1
        w_last = self._weight(d1 - 1, decay)  # also moves the stamp forward if needed
        # Σ weights of days d0..d1-1 relative to day d1-1, times its own weight.
        n = d1 - d0
        series = n if decay == 1.0 else (1 - decay ** n) / (1 - decay)
        for h in range(HOURS):
            self.v[HOURS + h] += w_last * series
        self._hours_walk(last_day_start, lh1, decay)

    def _hours_walk(self, lh0: float, lh1: float, decay: float) -> None:
        t = lh0
        while t < lh1:
            end = min(math.floor(t) + 1, lh1)
            self.add(t, 0.0, end - t, decay)
            t = end

    def guesses(self) -> list[float]:
        """A rough rate per hour to split a long span by: the hour's own where it
        has data, else the mean of those that do, else 1."""
        v = self.v
        known = [v[h] / v[HOURS + h] if v[HOURS + h] > 0.25 and v[h] > 0 else None
                 for h in range(HOURS)]
        seen = [r for r in known if r is not None]
        fill = sum(seen) / len(seen) if seen else 1.0
        return [fill if r is None else r for r in known]

    def aged(self, day: int, decay: float) -> tuple[list[float], list[float]]:
        """(amounts, hours) as of local ``day``, without changing the profile."""
        f = decay ** (day - self.day) if 0 <= self.day < day else 1.0
        v = self.v
        return [v[h] * f for h in range(HOURS)], [v[HOURS + h] * f for h in range(HOURS)]

    def shape(self, day: int, decay: float) -> tuple[list[float], bool] | None:
        """Each hour's rate relative to the mean (fleet profile), 1 where unknown,
        and whether every hour is known."""
        amt, hrs = self.aged(day, decay)
        total_h = sum(hrs)
        total_a = sum(amt)
        if total_h <= 0 or total_a <= 0:
            return None
        mean = total_a / total_h
        known = [hrs[h] >= FLEET_SHAPE_MIN_HOURS and amt[h] > 0 for h in range(HOURS)]
        return ([(amt[h] / hrs[h]) / mean if known[h] else 1.0 for h in range(HOURS)],
                all(known))

    def rates(self, day: int, decay: float,
              shape: tuple[list[float], bool] | None) -> list[float] | None:
        """The rate for each local hour, or None with too little history: each
        hour's own data blended with the station mean (scaled by ``shape``)."""
        amt, hrs = self.aged(day, decay)
        complete = shape is not None and shape[1]
        if sum(hrs) < (MIN_HISTORY_HOURS_WITH_FLEET if complete else MIN_HISTORY_HOURS):
            return None
        shape = shape[0] if shape is not None else [1.0] * HOURS
        denominator = sum(hrs[h] * shape[h] for h in range(HOURS))
        mean = sum(amt) / denominator if denominator > 0 else 0.0
        return [(amt[h] + PRIOR_HOURS * mean * shape[h]) / (hrs[h] + PRIOR_HOURS)
                for h in range(HOURS)]


def hours_to_zero(rates: Sequence[float], start_lh: float, level: float,
                  cap: float = math.inf) -> float | None:
    """Hours from local hour ``start_lh`` until ``level``, used up at
    ``rates[hour of day]`` per hour (negative: replenished) and never above
    ``cap``, reaches zero; None if it never does.

    Exact for piecewise-constant hourly rates: after one day without touching
    the cap, every following day is the same curve shifted down, so whole days
    are skipped in closed form.

    >>> hours_to_zero([0.1] * 24, 0.0, 0.5)
    5.0
    """
    if level <= 0:
        return 0.0
    cap = max(cap, level)
    level = float(level)
    elapsed = 0.0
    # The partial first hour.
    hb = math.floor(start_lh)
    r = rates[hb % HOURS]
    piece = hb + 1 - start_lh
    if piece > 0:
        if r > 0 and r * piece >= level:
            return level / r
        level = min(cap, level - r * piece)
        elapsed = piece
    hour = hb + 1
    skipped = False
    for _day in range(64):  # at most a few days are walked; the rest is skipped
        day_start, deepest, clamped = level, 0.0, False
        for i in range(HOURS):
            r = rates[(hour + i) % HOURS]
            if r > 0 and r >= level:
                return elapsed + i + level / r
            level -= r
            if level > cap:
                level, clamped = cap, True
            deepest = max(deepest, day_start - level)
        elapsed += HOURS
        drop = day_start - level
        if drop <= 1e-12:
            return None  # a whole day without net use: it never empties
        if not clamped and not skipped:
            # Every later day repeats this one, ``drop`` lower: skip whole days
            # while the day's lowest point stays above zero (one short of the
            # exact count, so that rounding never skips past the crossing).
            days = math.floor((level - deepest) / drop) - 1
            if days > 0:
                level -= days * drop
                elapsed += days * HOURS
            skipped = True
    return None


# -- per station -------------------------------------------------------------------------


class _Quantity:
    """How one quantity of one station (its water, its ready banks) is used up: its
    profile, last reading, refill run and alert."""

    __slots__ = ("alert_ms", "alert_open", "at_ms", "last_refill_ms", "prof", "run_base",
                 "run_count", "run_ms", "run_pending", "run_record", "run_top")

    def __init__(self) -> None:
        self.prof = _Profile()
        self.at_ms: int | None = None  # the last reading's time; None: no baseline
        # A refill in progress (water) or a run of banks put in (chargers):
        # when it last rose, from what to what, the rises counted as negative
        # use so far (taken back if it is a refill), banks put in, its record.
        self.run_ms: int | None = None
        self.run_base = 0.0
        self.run_top = 0.0
        self.run_pending = 0.0
        self.run_count = 0
        self.run_record = -1  # the number of its refill record, -1: none
        self.alert_ms: int | None = None
        self.alert_open = False
        self.last_refill_ms: int | None = None


class _Water(_Quantity):
    __slots__ = ("band_low", "band_ok", "level", "low", "low_ms", "mark", "ml", "phase_ml",
                 "state")

    def __init__(self) -> None:
        super().__init__()
        self.level: float | None = None
        self.low = 0.0  # the lowest level of the refill window, and when
        self.low_ms = 0
        self.state: str | None = None
        self.mark = DEFAULT_EMPTY_MARK
        # Float-switch stations (level null): dispensed ml since the phase began,
        # and the ml each band (ok → low, low → empty) has lasted.
        self.ml: int | None = None
        self.phase_ml: int | None = None
        self.band_ok: float | None = None
        self.band_low: float | None = None


class _Chargers(_Quantity):
    __slots__ = ("cap", "faults", "ready", "slots")

    def __init__(self) -> None:
        super().__init__()
        self.ready = 0
        # Banks in slots without a fault: the most that can be ready, as far as
        # the station knows (banks still out come back uncounted: a cap on the
        # safe side, it never makes the forecast later).
        self.cap = 0
        self.slots: bytes | None = None  # charge per slot, 255 without a bank
        self.faults = 0  # bit i: slot i reports a fault


class _Station:
    """A station's quantities and its last ``REFILLS_KEPT`` refills, kept as a ring of
    ``_REFILL_FIELDS`` doubles each (tuples would cost three times the memory)."""

    __slots__ = ("chargers", "refills", "refills_n", "water")

    def __init__(self) -> None:
        self.water: _Water | None = None
        self.chargers: _Chargers | None = None
        self.refills: array | None = None
        self.refills_n = 0  # refills recorded so far

    def log_refill(self, what: str, at_ms: int, before: float | None, after: float | None,
                   took_s: float | None) -> int:
        """Keep a refill; returns its number (for ``set_refill_after``)."""
        values = (float(WHATS.index(what)), float(at_ms), _f(before), _f(after), _f(took_s))
        if self.refills is None:
            self.refills = array("d")
        n = self.refills_n
        if len(self.refills) < REFILLS_KEPT * _REFILL_FIELDS:
            self.refills.extend(values)
        else:
            pos = (n % REFILLS_KEPT) * _REFILL_FIELDS
            self.refills[pos:pos + _REFILL_FIELDS] = array("d", values)
        self.refills_n = n + 1
        return n

    def set_refill_after(self, number: int, after: float | None) -> None:
        if self.refills is not None and number >= self.refills_n - REFILLS_KEPT:
            self.refills[(number % REFILLS_KEPT) * _REFILL_FIELDS + 3] = _f(after)

    def read_refills(self) -> list[Refill]:
        if self.refills is None:
            return []
        out = []
        for number in range(max(0, self.refills_n - REFILLS_KEPT), self.refills_n):
            pos = (number % REFILLS_KEPT) * _REFILL_FIELDS
            what, at, before, after, took = self.refills[pos:pos + _REFILL_FIELDS]
            out.append(Refill(WHATS[int(what)], int(at), _n(before), _n(after), _n(took)))
        return out


# -- the forecaster -------------------------------------------------------------------------


class Forecaster:
    """Learns every station's hourly rates and tells how long until it is empty.

    ``observe`` is O(slots) with memory that does not grow with history;
    ``time_to_empty`` is O(24). Thread-safe (one lock). With a ``store``, the
    constructor re-learns from stored events (``relearn``), as ``Fleet`` loads.

    ``Forecaster(store, clock)``, the order of ``docs/alerting-internals.md``,
    is accepted too.
    """

    def __init__(self, clock: Clock, second: Any = None, *,
                 store: Store | None = None, min_charge: int = 80,
                 history_days: float = 14, utc_offset_h: float = 8.0,
                 relearn: bool = True) -> None:
        if second is not None:
            if hasattr(second, "ms"):  # Forecaster(store, clock)
                clock, store = second, clock  # type: ignore[assignment]
            else:  # Forecaster(clock, store)
                store = second
        if history_days <= 0:
            raise ValueError(f"history_days must be positive, not {history_days!r}")
        self.clock = clock
        self.store = store
        self.min_charge = int(min_charge)
        self.history_days = history_days
        self._offset_ms = int(utc_offset_h * HOUR_MS)
        # Half-life history_days / 4: a day 14 days old weighs 1/16 of today.
        self._decay = 0.5 ** (4.0 / history_days)
        self._lock = threading.Lock()
        self._stations: dict[str, _Station] = {}
        self._fleet_water = _Profile()  # level fraction per hour, all stations with a level
        if store is not None and relearn:
            self.relearn()

    # -- time ----------------------------------------------------------------------------

    def _lh(self, ms: int) -> float:
        """Local hours since the epoch."""
        return (ms + self._offset_ms) / HOUR_MS

    def _day(self, ms: int) -> int:
        return math.floor(self._lh(ms)) // HOURS

    # -- learning ------------------------------------------------------------------------

    def observe(self, sid: str, state: Any, now_ms: int | None = None) -> None:
        """Learn from a State the hub applied (a dict of contract §5 or a
        ``protocol.messages.State``) at ``now_ms`` on the hub's clock."""
        if isinstance(state, m.State):
            # Only the sections it reads: the fleet already builds the State's
            # dict, and a second whole to_dict (ten slots) for every State was
            # about 4 % of the ingest's callback (cProfile, bench/hub_apply.py).
            dispenser = state.dispenser.to_dict() if state.dispenser is not None else None
            lockers = state.lockers
        elif isinstance(state, dict):
            dispenser, lockers = state.get("dispenser"), state.get("lockers")
        else:
            return
        now = self.clock.ms() if now_ms is None else int(now_ms)
        with self._lock:
            st = self._stations.get(sid)
            if st is None:
                st = self._stations[sid] = _Station()
            if isinstance(dispenser, dict):
                if st.water is None:
                    st.water = _Water()
                self._observe_water(st, st.water, dispenser, now)
            if isinstance(lockers, dict | m.Lockers):
                if st.chargers is None:
                    st.chargers = _Chargers()
                self._observe_chargers(st, st.chargers, lockers, now)

    def on_fleet(self, sid: str, kind: str, payload: Any, now_ms: int) -> None:
        """A ``Fleet.add_listener`` callback: learns from each applied State.
        Use it or the engine's ``observe`` calls, not both (a State seen twice
        at the same instant is ignored the second time, so no harm is done)."""
        if kind == "state":
            self.observe(sid, payload, now_ms)

    def attach(self, fleet: Any) -> None:
        """Listen to ``fleet`` directly (``fleet.add_listener(self.on_fleet)``)."""
        fleet.add_listener(self.on_fleet)

    def _observe_water(self, st: _Station, tr: _Water, d: dict, now: int) -> None:
        if tr.at_ms is not None and now <= tr.at_ms:
            return  # the same instant again, or out of order
        if not d.get("online") or d.get("fault") == "sensor" or d.get("level_state") == "unknown":
            tr.at_ms = None  # no reading: start again from the next one
            return
        level = d.get("level")
        if level is None:
            self._observe_band(st, tr, d, now)
            return
        level = float(level)
        state = d.get("level_state")
        if state == "empty" and tr.state in ("ok", "low"):
            tr.mark = level  # where this station's dispenser reads empty
        prev, prev_ms = tr.level, tr.at_ms
        tr.level, tr.at_ms, tr.state = level, now, state
        if prev is None or prev_ms is None or now - prev_ms > MAX_SPAN_MS:
            tr.low, tr.low_ms, tr.run_pending = level, now, 0.0
            tr.run_ms, tr.run_record = None, -1
            return
        self._end_refill(tr, now)
        # The lowest reading of the last REFILL_WINDOW_MS (restarted from the
        # previous reading once it is older): a refill is measured from there.
        if now - tr.low_ms > REFILL_WINDOW_MS:
            tr.low, tr.low_ms, tr.run_pending = prev, prev_ms, 0.0
        rise = level - prev
        # Every change counts at once, a rise as negative use, so that sensor
        # noise cancels where it happened. What a refill adds is not use: the
        # changes since the window's low are taken back when a refill shows, and
        # during one, only a new top is the refill (wobbles below it count).
        # The minutes of a pour are not exposure either: what was drawn while
        # the level rose cannot be seen.
        counted = rise
        lh0, lh1 = self._lh(prev_ms), self._lh(now)
        pouring = tr.run_record >= 0 and level >= tr.run_top + POUR_STEP
        if pouring:
            counted = rise - (level - max(prev, tr.run_top))
        if prev > tr.mark:  # an empty tank tells nothing of demand
            self._add_span(tr, lh1 if pouring else lh0, lh1, -counted, fleet=True)
            tr.run_pending += counted
        if level < tr.low:
            tr.low, tr.low_ms, tr.run_pending = level, now, 0.0
        if rise <= 0:
            return
        if tr.run_record >= 0:  # a refill still going on
            if pouring:
                tr.run_top, tr.run_ms = level, now
                self._refilled(st, tr, WATER, tr.run_base, level, fleet=True)
        elif level - tr.low >= WATER_REFILL_RISE:
            if prev > tr.mark:  # this State's minutes were a pour, not exposure
                tr.prof.add(lh1, 0.0, lh0 - lh1, self._decay)
                self._fleet_water.add(lh1, 0.0, lh0 - lh1, self._decay)
            tr.run_ms, tr.run_base, tr.run_top = now, tr.low, level
            self._refilled(st, tr, WATER, tr.low, level, fleet=True)

    def _observe_band(self, st: _Station, tr: _Water, d: dict, now: int) -> None:
        """A float-switch station: the rate from the flow meter (``dispensed_ml``),
        the size of each band from the switches' transitions."""
        state = d.get("level_state")
        ml = d.get("dispensed_ml")
        prev_state, prev_ml, prev_ms = tr.state, tr.ml, tr.at_ms
        tr.level, tr.state, tr.ml, tr.at_ms = None, state, ml, now
        if prev_ms is None or prev_state is None:
            return
        if ml is not None and prev_ml is not None:
            if ml < prev_ml:  # the counter restarted (a new epoch)
                tr.phase_ml = None
            elif prev_state != "empty" and now - prev_ms <= MAX_SPAN_MS:
                self._add_span(tr, self._lh(prev_ms), self._lh(now), ml - prev_ml, fleet=False)
        else:
            tr.phase_ml = None
        if state == prev_state or state not in _LEVEL_RANK or prev_state not in _LEVEL_RANK:
            return
        if _LEVEL_RANK[state] > _LEVEL_RANK[prev_state]:
            self._refilled(st, tr, WATER, None, None)
        elif ml is not None and tr.phase_ml is not None:
            drawn = float(ml - tr.phase_ml)
            if prev_state == "ok" and state == "low":
                tr.band_ok = _blend(tr.band_ok, drawn)
            elif prev_state == "low" and state == "empty":
                tr.band_low = _blend(tr.band_low, drawn)
        tr.phase_ml = ml

    def _observe_chargers(self, st: _Station, tr: _Chargers, lockers: dict | m.Lockers,
                          now: int) -> None:
        if tr.at_ms is not None and now <= tr.at_ms:
            return
        if isinstance(lockers, m.Lockers):
            online = lockers.online
            raw = [(s.bank, s.charge, s.fault) for s in lockers.slots]
        else:
            online = lockers.get("online")
            raw = [(s.get("bank"), s.get("charge"), s.get("fault"))
                   for s in lockers.get("slots") or ()]
        if not online:
            tr.at_ms = None  # slot data is the last known, not news
            return
        mc = self.min_charge
        cur = bytearray(len(raw))
        faults = ready = cap = 0
        for i, (bank, charge, fault) in enumerate(raw):
            charge = charge or 0
            if fault:
                faults |= 1 << i
            if bank:
                cur[i] = min(max(int(charge), 0), 100)
                if not fault:
                    cap += 1
                    ready += charge >= mc
            else:
                cur[i] = _NO_BANK
        prev, prev_faults, prev_ms, prev_ready = tr.slots, tr.faults, tr.at_ms, tr.ready
        tr.slots, tr.faults, tr.ready, tr.cap, tr.at_ms = bytes(cur), faults, ready, cap, now
        if (prev is None or prev_ms is None or len(prev) != len(cur)
                or now - prev_ms > MAX_SPAN_MS):
            tr.run_ms, tr.run_record = None, -1
            return
        self._end_refill(tr, now)
        uses = ups = put_in = 0
        for i, (a, b) in enumerate(zip(prev, cur, strict=True)):
            was = a != _NO_BANK and a >= mc and not (prev_faults >> i) & 1
            now_ready = b != _NO_BANK and b >= mc and not (faults >> i) & 1
            if was == now_ready:
                continue
            if was:
                if not (faults >> i) & 1:
                    uses += 1  # borrowed (a slot that faulted is not a use)
            elif not (prev_faults >> i) & 1:  # (a fault that cleared is not a charge-up)
                if a == _NO_BANK or b - a >= SWAP_JUMP:
                    put_in += 1  # a charged bank put in: returned, or staff restocking
                else:
                    ups += 1  # finished charging
        # Banks put in count at once as supply (a rider's charged bank); when
        # two are put in with less than the refill window between them it is
        # a restock, and they are taken back.
        if put_in:
            if tr.run_ms is None:
                tr.run_base, tr.run_top = prev_ready, ready
                tr.run_pending, tr.run_count, tr.run_record = 0.0, 0, -1
            tr.run_ms = now
            tr.run_count += put_in
        counted = put_in if tr.run_record < 0 and prev_ready > 0 else 0
        if prev_ready > 0:  # with none ready, demand cannot show
            self._add_span(tr, self._lh(prev_ms), self._lh(now), float(uses - ups - counted),
                           fleet=False)
            tr.run_pending += counted
        if tr.run_ms is not None:
            tr.run_top = max(tr.run_top, ready)
            if tr.run_count >= CHARGER_REFILL_BANKS:
                self._refilled(st, tr, CHARGERS, tr.run_base, tr.run_top, fleet=False)

    def _add_span(self, tr: _Quantity, lh0: float, lh1: float, amount: float, *,
                  fleet: bool) -> None:
        tr.prof.add_span(lh0, lh1, amount, self._decay)
        if fleet:
            self._fleet_water.add_span(lh0, lh1, amount, self._decay)

    @staticmethod
    def _end_refill(tr: _Quantity, now: int) -> None:
        """A refill (or a run of banks put in) is over once the refill window
        passed without the level rising further (another bank put in)."""
        if tr.run_ms is not None and now - tr.run_ms > REFILL_WINDOW_MS:
            tr.run_ms, tr.run_record, tr.run_count = None, -1, 0
            if isinstance(tr, _Chargers):
                tr.run_pending = 0.0

    def _refilled(self, st: _Station, tr: _Quantity, what: str, before: float | None,
                  after: float | None, *, fleet: bool = False) -> None:
        """Record a refill, or raise the level of the one this run already
        recorded; the run's rises counted as negative use are taken back."""
        if tr.run_pending:
            lh = self._lh(tr.at_ms or 0)
            tr.prof.add(lh, tr.run_pending, 0.0, self._decay)
            if fleet:
                self._fleet_water.add(lh, tr.run_pending, 0.0, self._decay)
            tr.run_pending = 0.0
        if tr.run_record >= 0 and tr.run_ms is not None:
            st.set_refill_after(tr.run_record, after)
            return
        at = tr.at_ms  # the State that showed it
        assert at is not None
        took = None
        if tr.alert_open and tr.alert_ms is not None:
            took = max(0.0, (at - tr.alert_ms) / 1000)
            tr.alert_open = False
        tr.run_record = st.log_refill(what, at, before, after, took)
        tr.last_refill_ms = at

    # -- alerts and refills ----------------------------------------------------------------

    def alert_started(self, sid: str, what: str, at_ms: int | None = None) -> None:
        """An alert asked for ``what`` to be refilled at ``at_ms``: the next refill
        is recorded with the time it took from the first alert still open."""
        _check_what(what)
        at = self.clock.ms() if at_ms is None else int(at_ms)
        with self._lock:
            tr = self._track(sid, what, create=True)
            assert tr is not None
            if not (tr.alert_open and tr.alert_ms is not None and tr.alert_ms <= at):
                tr.alert_ms = at  # several alerts (low, then empty): from the first
            tr.alert_open = True

    def alert_ended(self, sid: str, what: str) -> None:
        """The alert ended without a refill (resolved by hand): forget its start."""
        _check_what(what)
        with self._lock:
            tr = self._track(sid, what)
            if tr is not None:
                tr.alert_open = False

    def refill_detected(self, sid: str, what: str, since_ms: int | None = None) -> bool:
        """Whether the sensors proved a refill of ``what`` at or after ``since_ms``
        (default: the start of the last alert given to ``alert_started``, or
        without one, within the last refill window)."""
        _check_what(what)
        with self._lock:
            tr = self._track(sid, what)
            if tr is None or tr.last_refill_ms is None:
                return False
            if since_ms is None:
                since_ms = (tr.alert_ms if tr.alert_ms is not None
                            else self.clock.ms() - REFILL_WINDOW_MS)
            return tr.last_refill_ms >= since_ms

    def refills(self, sid: str) -> list[Refill]:
        """The station's recent refills, oldest first (at most ``REFILLS_KEPT``)."""
        with self._lock:
            st = self._stations.get(sid)
            return st.read_refills() if st is not None else []

    # -- forecasting -------------------------------------------------------------------------

    def time_to_empty(self, sid: str, what: str, *, level: float | None = None,
                      now_ms: int | None = None) -> float | None:
        """Seconds until ``what`` (``water`` or ``chargers``) is empty at this
        station's hourly rates, from its last State (or from ``level`` now:
        a tank fraction, or a count of ready banks). None without enough history,
        when it is not being used up, or when nothing fresh is known."""
        _check_what(what)
        now = self.clock.ms() if now_ms is None else int(now_ms)
        with self._lock:
            tr = self._track(sid, what)
            if tr is None or tr.at_ms is None:
                return None
            if level is None and now - tr.at_ms > STALE_MS:
                return None
            start = tr.at_ms if level is None else now
            day = self._day(now)
            if isinstance(tr, _Water):
                if tr.level is None and level is None:
                    return self._band_time(tr, start, now, day)
                amount = (tr.level if level is None else float(level)) - tr.mark
                if amount <= 0:
                    return 0.0
                shape = self._fleet_water.shape(day, self._decay)
                rates = tr.prof.rates(day, self._decay, shape)
                if rates is None:
                    return None
                rates = [max(0.0, r) for r in rates]
                cap = max(1.0 - tr.mark, amount)
            else:
                assert isinstance(tr, _Chargers)
                amount = float(tr.ready if level is None else level)
                if amount <= 0:
                    return 0.0
                rates = tr.prof.rates(day, self._decay, None)
                if rates is None:
                    return None
                cap = max(float(tr.cap), amount)
        hours = hours_to_zero(rates, self._lh(start), amount, cap)
        if hours is None:
            return None
        return max(0.0, hours * 3600.0 - (now - start) / 1000)

    def _band_time(self, tr: _Water, start: int, now: int, day: int) -> float | None:
        if tr.state == "empty":
            return 0.0
        if tr.ml is None or tr.phase_ml is None or tr.band_low is None:
            return None
        drawn = tr.ml - tr.phase_ml
        if tr.state == "low":
            amount = max(0.0, tr.band_low - drawn)
        elif tr.state == "ok" and tr.band_ok is not None:
            amount = max(0.0, tr.band_ok - drawn) + tr.band_low
        else:
            return None
        if amount <= 0:
            return 0.0
        rates = tr.prof.rates(day, self._decay, self._fleet_water.shape(day, self._decay))
        if rates is None:
            return None
        hours = hours_to_zero([max(0.0, r) for r in rates], self._lh(start), amount)
        if hours is None:
            return None
        return max(0.0, hours * 3600.0 - (now - start) / 1000)

    def profile(self, sid: str, what: str, now_ms: int | None = None) -> list[float] | None:
        """The rate per local hour 0..23 the forecast uses (tank fraction, ml on a
        float-switch station, or ready banks, per hour), or None."""
        _check_what(what)
        day = self._day(self.clock.ms() if now_ms is None else int(now_ms))
        with self._lock:
            tr = self._track(sid, what)
            if tr is None:
                return None
            shape = self._fleet_water.shape(day, self._decay) if what == WATER else None
            return tr.prof.rates(day, self._decay, shape)

    def forget(self, sid: str) -> None:
        """Drop everything known of a station (it was removed from the fleet)."""
        with self._lock:
            self._stations.pop(sid, None)

    def __len__(self) -> int:
        return len(self._stations)

    def _track(self, sid: str, what: str, create: bool = False) -> _Quantity | None:
        st = self._stations.get(sid)
        if st is None:
            if not create:
                return None
            st = self._stations[sid] = _Station()
        if what == WATER:
            if st.water is None and create:
                st.water = _Water()
            return st.water
        if st.chargers is None and create:
            st.chargers = _Chargers()
        return st.chargers

    # -- re-learning after a restart -------------------------------------------------------

    def relearn(self, now_ms: int | None = None) -> int:
        """Re-learn the rates from the stored events of the last ``history_days``
        (the hub keeps no model on disk). Returns how many events were read.

        Chargers come back well: each ``bank_borrowed`` of a ready bank is a use,
        each ``bank_returned`` a bank ready again once it would have charged (at
        the nominal 1 point a minute). Water only partly: ``water_level`` events
        come at each change of ``level_state``, and only a drain from ``low`` to
        ``empty`` is a span whose both ends are known (see ``_relearn_water``);
        otherwise water needs ``MIN_HISTORY_HOURS`` of live States again. It adds
        to what live States taught, so it may also run while the hub runs."""
        if self.store is None:
            return 0
        now = self.clock.ms() if now_ms is None else int(now_ms)
        since = now - int(self.history_days * DAY_MS)
        query = (sa.select(events.c.sid, events.c.type, events.c.at_ms, events.c.data)
                 .where(events.c.at_ms >= since, events.c.at_ms <= now,
                        events.c.type.in_(("water_level", "bank_borrowed", "bank_returned")))
                 .order_by(events.c.sid, events.c.at_ms, events.c.seq))
        count = 0
        with self.store.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
            for sid, group in itertools.groupby(rows, key=lambda row: row[0]):
                batch = [(kind, at, _json(data)) for _, kind, at, data in group]
                count += len(batch)
                with self._lock:
                    self._relearn_station(sid, batch, now)
        log.info("forecast: re-learned %d stations from %d events", len(self._stations), count)
        return count

    def _relearn_station(self, sid: str, batch: Iterable[tuple[str, int, dict]],
                         now: int) -> None:
        st = self._stations.get(sid)
        if st is None:
            st = self._stations[sid] = _Station()
        levels: list[tuple[int, float, str]] = []
        supply: list[int] = []  # when returned banks became ready
        moves: list[tuple[int, float]] = []  # (at, +1 used / -1 ready again)
        first_bank_ms: int | None = None
        mc = self.min_charge
        for kind, at, data in batch:
            if kind == "water_level":
                if data.get("level") is not None:
                    levels.append((at, float(data["level"]), str(data.get("level_state"))))
                continue
            first_bank_ms = at if first_bank_ms is None else first_bank_ms
            charge = data.get("charge")
            charge = charge if isinstance(charge, int | float) else 0
            if kind == "bank_borrowed" and charge >= mc:
                moves.append((at, 1.0))
            elif kind == "bank_returned":
                wait = max(0.0, mc - charge) / NOMINAL_CHARGE_PER_MIN * 60_000
                supply.append(at + int(wait))
        if levels:
            if st.water is None:
                st.water = _Water()
            self._relearn_water(st.water, levels)
        if first_bank_ms is not None:
            if st.chargers is None:
                st.chargers = _Chargers()
            prof = st.chargers.prof
            prof.add_hours(self._lh(first_bank_ms), self._lh(now), self._decay)
            moves.extend((at, -1.0) for at in supply if at <= now)
            for at, amount in moves:
                prof.add(self._lh(at), amount, 0.0, self._decay)

    def _relearn_water(self, tr: _Water, levels: list[tuple[int, float, str]]) -> None:
        """Only the span between two *falling* transitions is trusted (``ok`` →
        ``low`` then ``low`` → ``empty``): both levels are read as the tank drains
        past a mark. A refill's ``low`` → ``ok`` event is dated in the middle of
        the pour, at a level that says nothing of how full the tank ended up."""
        prev_state: str | None = None
        last_fall: tuple[int, float] | None = None
        for at, level, state in levels:
            rank, prev_rank = _LEVEL_RANK.get(state), _LEVEL_RANK.get(prev_state or "")
            falling = rank is not None and prev_rank is not None and rank < prev_rank
            if falling and state == "empty":
                tr.mark = level
            if (falling and last_fall is not None and 0 < at - last_fall[0] <= MAX_EVENT_SPAN_MS
                    and level <= last_fall[1]):
                self._add_span(tr, self._lh(last_fall[0]), self._lh(at), last_fall[1] - level,
                               fleet=True)
            last_fall = (at, level) if falling else None
            prev_state = state


def _f(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _n(value: float) -> float | None:
    return None if math.isnan(value) else value


def _blend(old: float | None, sample: float) -> float:
    return sample if old is None else old + BAND_ALPHA * (sample - old)


def _json(data: Any) -> dict:
    if isinstance(data, dict):
        return data
    try:
        out = json.loads(data)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _check_what(what: str) -> None:
    if what not in WHATS:
        raise ValueError(f"what must be one of {', '.join(WHATS)}, not {what!r}")
