"""The uptime ledger: the accounting against a brute-force model, then the real store.

The reference model classifies every single millisecond straight from the rules
of contract §11 and docs/uptime.md; ``tally`` must agree with it on any history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.fleet.ledger import (
    COMPONENTS,
    DOWN,
    MAINTENANCE,
    UNKNOWN,
    UP,
    WINDOWS,
    Ledger,
    LedgerError,
    Outage,
    RunCoverage,
    tally,
    window_availability,
)
from hub.storage.schema import hub_runs
from hub.storage.schema import ledger as ledger_table
from hub.storage.store import Store
from hub.storage.writer import Writer
from yizhan.clock import ManualClock

S = 1000  # ms per second: the hand-written cases read in seconds

# ---------------------------------------------------------------------------
# The reference model: one millisecond at a time


@dataclass
class History:
    points: list[tuple[int, str]]
    runs: list[tuple[int, int | None]]
    maintenance: list[tuple[int, bool]]
    station: list[tuple[int, str]] | None
    from_ms: int
    to_ms: int
    since_ms: int | None
    now_ms: int | None

    def kwargs(self) -> dict:
        return dict(runs=self.runs, maintenance=self.maintenance, station=self.station,
                    since_ms=self.since_ms, now_ms=self.now_ms)


def state_at(points, t):
    """The last point at or before t; of equal times the later one given."""
    found = None
    for at, state in points:
        if at <= t and (found is None or at >= found[0]):
            found = (at, state)
    return None if found is None else found[1]


def kind_at(h: History, t: int) -> str:
    if h.now_ms is not None and t >= h.now_ms:
        return UNKNOWN
    if h.since_ms is not None and t < h.since_ms:
        return UNKNOWN
    if not any(s <= t and (e is None or t < e) for s, e in h.runs):
        return UNKNOWN
    if h.station is not None and state_at(h.station, t) != UP:
        return UNKNOWN
    state = state_at(h.points, t)
    if state in (None, UNKNOWN):
        return UNKNOWN
    if state_at(h.maintenance, t):
        return MAINTENANCE
    return state


def reference(h: History) -> dict:
    times = [h.from_ms] + [at for at, _ in h.points] + [s for s, _ in h.runs]
    first = min(times) - 1
    kinds = {t: kind_at(h, t) for t in range(first, h.to_ms)}
    spent = {k: sum(1 for t in range(h.from_ms, h.to_ms) if kinds[t] == k)
             for k in (UP, DOWN, UNKNOWN, MAINTENANCE)}
    outages = []
    t = first
    while t < h.to_ms:
        if kinds[t] != DOWN:
            t += 1
            continue
        start = t
        while t < h.to_ms and kinds[t] == DOWN:
            t += 1
        if t > h.from_ms:
            inside = sum(1 for _ in range(max(start, h.from_ms), t))
            # Still down at the window's last instant, or at now: ongoing.
            ongoing = t == h.to_ms or t == h.now_ms
            end = None if ongoing else t
            outages.append(Outage(start, end, inside / 1000))
    ended = [(o.end_ms - o.start_ms) / 1000 for o in outages if o.end_ms is not None]
    started = [o for o in outages if o.start_ms >= h.from_ms]
    return {
        "spent": spent,
        "availability": (spent[UP] / (spent[UP] + spent[DOWN])
                         if spent[UP] + spent[DOWN] else None),
        "outages": outages,
        "mttr_s": sum(ended) / len(ended) if ended else None,
        "mtbf_s": spent[UP] / 1000 / len(started) if started else None,
    }


T = st.integers(0, 60)
states = st.sampled_from([UP, DOWN, UNKNOWN])


@st.composite
def histories(draw, component: bool | None = None) -> History:
    points = draw(st.lists(st.tuples(T, states), max_size=8))
    runs = draw(st.lists(st.tuples(T, st.one_of(st.none(), T)), max_size=4))
    runs = [(s, e if e is None else s + e // 3) for s, e in runs]
    maintenance = draw(st.lists(st.tuples(T, st.booleans()), max_size=4))
    if component is None:
        component = draw(st.booleans())
    station = draw(st.lists(st.tuples(T, states), max_size=6)) if component else None
    a, b = sorted(draw(st.tuples(T, T)))
    since = draw(st.one_of(st.none(), T))
    now = draw(st.one_of(st.none(), st.integers(0, 70)))
    return History(points, runs, maintenance, station, a, b, since, now)


# ---------------------------------------------------------------------------
# The pure computation against the model


@settings(max_examples=600, deadline=None)
@given(histories())
def test_tally_agrees_with_the_millisecond_model(h: History) -> None:
    u = tally(h.points, h.from_ms, h.to_ms, **h.kwargs())
    ref = reference(h)
    assert (u.up_ms, u.down_ms, u.unknown_ms, u.maintenance_ms) == (
        ref["spent"][UP], ref["spent"][DOWN], ref["spent"][UNKNOWN], ref["spent"][MAINTENANCE])
    assert u.availability == ref["availability"]
    assert list(u.outages) == ref["outages"]
    assert u.mttr_s == pytest.approx(ref["mttr_s"])
    assert u.mtbf_s == pytest.approx(ref["mtbf_s"])


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_four_kinds_of_time_fill_the_window_and_outages_fill_down(h: History) -> None:
    u = tally(h.points, h.from_ms, h.to_ms, **h.kwargs())
    assert u.up_ms + u.down_ms + u.unknown_ms + u.maintenance_ms == h.to_ms - h.from_ms
    assert sum(round(o.duration_s * 1000) for o in u.outages) == u.down_ms
    assert all(o.end_ms is None or o.start_ms < o.end_ms for o in u.outages)
    assert sum(o.ongoing for o in u.outages) <= 1
    assert u.to_dict()["up_s"] + u.to_dict()["down_s"] == pytest.approx(u.up_s + u.down_s)


@settings(max_examples=300, deadline=None)
@given(histories(component=False), st.lists(st.integers(1, 70), min_size=1, max_size=3))
def test_the_metrics_fast_path_agrees_with_tally(h: History, windows: list[int]) -> None:
    now = h.to_ms
    points = sorted(h.points, key=lambda p: p[0])
    maintenance = sorted(h.maintenance, key=lambda p: p[0])
    fast = window_availability(points, maintenance, RunCoverage(h.runs, now), now, windows)
    slow = [tally(points, now - w, now, runs=h.runs, maintenance=maintenance,
                  now_ms=now).availability for w in windows]
    assert fast == pytest.approx(slow)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(T, st.one_of(st.none(), T)), max_size=5), T, T)
def test_run_coverage_counts_each_vouched_millisecond_once(runs, a, b) -> None:
    runs = [(s, e if e is None else s + e) for s, e in runs]
    until = 80
    expected = sum(1 for t in range(a, b)
                   if any(s <= t < (until if e is None else e) for s, e in runs))
    assert RunCoverage(runs, until).covered(a, b) == expected


# ---------------------------------------------------------------------------
# Hand-written cases, each a sentence of docs/uptime.md

HUB_ALWAYS = [(0, None)]


def test_an_outage_starts_at_the_last_message_not_at_the_will() -> None:
    # Last message at 100 s; the broker delivers the will at 145 s; the fleet
    # marks the station down at the time of that last message.
    u = tally([(0, UP), (100 * S, DOWN), (300 * S, UP)], 0, 600 * S, runs=HUB_ALWAYS)
    assert u.outages == (Outage(100 * S, 300 * S, 200.0),)
    assert (u.up_s, u.down_s) == (400.0, 200.0)
    assert u.mttr_s == 200.0
    assert u.mtbf_s == 400.0


def test_hub_down_time_is_unknown_never_down() -> None:
    # The station was up; the hub was stopped from 100 s to 400 s.
    u = tally([(0, UP)], 0, 500 * S, runs=[(0, 100 * S), (400 * S, None)], now_ms=500 * S)
    assert (u.up_s, u.down_s, u.unknown_s) == (200.0, 0.0, 300.0)
    assert u.availability == 1.0
    assert u.outages == ()


def test_an_outage_cut_by_a_hub_gap_is_two_outages() -> None:
    u = tally([(0, UP), (50 * S, DOWN)], 0, 500 * S,
              runs=[(0, 100 * S), (400 * S, None)], now_ms=500 * S)
    assert u.outages == (Outage(50 * S, 100 * S, 50.0), Outage(400 * S, None, 100.0))
    assert (u.down_s, u.unknown_s) == (150.0, 300.0)
    assert u.mttr_s == 50.0  # only the part that ended


def test_a_hub_that_died_is_unknown_from_its_last_alive_mark() -> None:
    # Run 1 proved life last at 60 s and never stopped cleanly; run 2 began at 90 s.
    u = tally([(0, UP)], 0, 120 * S, runs=[(0, 60 * S), (90 * S, None)], now_ms=120 * S)
    assert (u.up_s, u.unknown_s) == (90.0, 30.0)


def test_maintenance_is_neither_up_nor_down() -> None:
    u = tally([(0, UP), (100 * S, DOWN), (200 * S, UP)], 0, 400 * S, runs=HUB_ALWAYS,
              maintenance=[(90 * S, True), (210 * S, False)])
    assert (u.up_s, u.down_s, u.maintenance_s) == (280.0, 0.0, 120.0)
    assert u.availability == 1.0
    assert u.outages == ()


def test_maintenance_does_not_hide_unknown() -> None:
    u = tally([(0, UP)], 0, 100 * S, runs=[(0, 50 * S)], maintenance=[(0, True)],
              now_ms=100 * S)
    assert (u.maintenance_s, u.unknown_s) == (50.0, 50.0)


def test_before_the_first_message_is_unknown() -> None:
    u = tally([(300 * S, UP)], 0, 400 * S, runs=HUB_ALWAYS)
    assert (u.up_s, u.unknown_s) == (100.0, 300.0)
    assert tally([], 0, 400 * S, runs=HUB_ALWAYS).availability is None


def test_an_ongoing_outage_has_no_end_and_counts_up_to_now() -> None:
    u = tally([(0, UP), (100 * S, DOWN)], 0, 3600 * S, runs=HUB_ALWAYS, now_ms=160 * S)
    assert u.outages == (Outage(100 * S, None, 60.0),)
    assert u.unknown_s == 3600 - 160  # the future is unknown
    assert u.mttr_s is None  # nothing repaired yet
    assert u.mtbf_s == 100.0
    assert u.to_dict()["outages"] == [{"start": 100 * S, "end": None, "duration_s": 60.0}]


def test_an_outage_that_began_before_the_window_keeps_its_start() -> None:
    u = tally([(0, UP), (100 * S, DOWN), (400 * S, UP)], 200 * S, 500 * S, runs=HUB_ALWAYS)
    assert u.outages == (Outage(100 * S, 400 * S, 200.0),)  # clipped duration
    assert u.mttr_s == 300.0  # the whole repair took 300 s
    assert u.mtbf_s is None  # no failure started in this window


def test_parts_are_unknown_while_the_station_is_not_up() -> None:
    station = [(0, UP), (100 * S, DOWN), (200 * S, UP)]
    lockers = [(0, UP), (50 * S, DOWN)]
    u = tally(lockers, 0, 300 * S, runs=HUB_ALWAYS, station=station)
    assert (u.up_s, u.down_s, u.unknown_s) == (50.0, 150.0, 100.0)
    assert u.outages == (Outage(50 * S, 100 * S, 50.0), Outage(200 * S, None, 100.0))


def test_availability_is_none_when_nothing_was_up_or_down() -> None:
    u = tally([(0, UP)], 0, 100 * S, runs=[])
    assert (u.unknown_s, u.availability) == (100.0, None)
    assert u.to_dict() == {"availability": None, "up_s": 0.0, "down_s": 0.0,
                           "unknown_s": 100.0, "maintenance_s": 0.0, "outages": [],
                           "mttr_s": None, "mtbf_s": None}


def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        tally([], 10, 5, runs=[])


# ---------------------------------------------------------------------------
# Through a real Store and Writer, on SQLite and on PostgreSQL

SID = "yh-chumen-01"
DAY = 86_400 * S


@pytest.fixture
def hub_db(database_url: str):
    """``open()`` -> (store, writer) on the test's database; several opens are a
    restart of the hub over the same data. All closed at teardown."""
    opened = []

    def open_():
        store = Store(database_url)
        writer = Writer(store).start()
        opened.append((store, writer))
        return store, writer

    yield open_
    for store, writer in reversed(opened):
        writer.close()
        store.close()


def rows(store: Store, table) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


def test_marks_are_written_once_and_read_back(hub_db, clock: ManualClock) -> None:
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.hub_started(t0)
    assert ledger.mark(SID, "station", UP, t0)
    assert not ledger.mark(SID, "station", UP, t0 + 30 * S)  # every message says "up"
    assert ledger.mark(SID, "station", DOWN, t0 + 60 * S)  # the last message seen
    assert ledger.mark(SID, "station", UP, t0 + 160 * S)
    assert ledger.maintenance(SID, True, t0 + 200 * S)
    assert not ledger.maintenance(SID, True, t0 + 210 * S)
    assert ledger.maintenance(SID, False, t0 + 260 * S)
    clock.advance(300)
    assert writer.flush()

    assert [(r["component"], r["at_ms"] - t0, r["state"]) for r in rows(store, ledger_table)] == [
        ("station", 0, UP), ("station", 60 * S, DOWN), ("station", 160 * S, UP),
        ("maintenance", 200 * S, "on"), ("maintenance", 260 * S, "off")]
    u = ledger.uptime(SID, t0, t0 + 300 * S)
    assert (u.up_s, u.down_s, u.maintenance_s, u.unknown_s) == (140.0, 100.0, 60.0, 0.0)
    assert u.outages == (Outage(t0 + 60 * S, t0 + 160 * S, 100.0),)
    assert u.to_dict()["availability"] == pytest.approx(140 / 240)


def test_a_restarted_hub_resumes_the_last_states_and_its_runs(hub_db, clock) -> None:
    store, writer = hub_db()
    first = Ledger(store, writer, clock)
    t0 = clock.ms()
    first.hub_started(t0)
    first.mark(SID, "station", UP, t0)
    first.mark(SID, "lockers", UP, t0)
    first.mark(SID, "station", DOWN, t0 + 50 * S)
    first.maintenance(SID, True, t0 + 70 * S)
    clock.advance(100)
    first.hub_stopped(clock.ms())
    writer.close()
    store.close()

    clock.advance(100)  # the hub is down 100 s
    store, writer = hub_db()
    second = Ledger(store, writer, clock)
    assert (second.state(SID), second.state(SID, "lockers")) == (DOWN, UP)
    assert not second.mark(SID, "station", DOWN, clock.ms())  # still down: nothing new
    assert not second.maintenance(SID, True, clock.ms())
    second.hub_started(clock.ms())
    second.maintenance(SID, False, clock.ms())
    clock.advance(100)
    assert writer.flush()

    u = second.uptime(SID, t0, clock.ms())
    assert (u.up_s, u.down_s, u.maintenance_s, u.unknown_s) == (50.0, 120.0, 30.0, 100.0)
    # The outage the hub did not see the middle of is two outages.
    assert u.outages == (Outage(t0 + 50 * S, t0 + 70 * S, 20.0),
                         Outage(t0 + 200 * S, None, 100.0))
    assert [(r["started_ms"] - t0, r["stopped_ms"] and r["stopped_ms"] - t0)
            for r in rows(store, hub_runs)] == [(0, 100 * S), (200 * S, None)]


def test_a_crashed_hub_is_unknown_from_its_last_alive_mark_after_restart(hub_db, clock) -> None:
    store, writer = hub_db()
    crashed = Ledger(store, writer, clock)
    t0 = clock.ms()
    crashed.hub_started(t0)
    crashed.mark(SID, "station", UP, t0)
    for _ in range(5):
        clock.advance(10)
        crashed.hub_alive(clock.ms())  # last proof of life at t0 + 50 s
    clock.advance(7)  # and then kill -9: no hub_stopped
    assert writer.flush()
    assert rows(store, hub_runs)[0]["alive_ms"] == t0 + 50 * S

    clock.advance(38)
    store, writer = hub_db()
    restarted = Ledger(store, writer, clock)
    restarted.hub_started(clock.ms())  # at t0 + 95 s
    clock.advance(25)
    u = restarted.uptime(SID, t0, clock.ms())
    assert (u.up_s, u.down_s, u.unknown_s) == (75.0, 0.0, 45.0)
    assert u.availability == 1.0


def test_parts_through_the_database(hub_db, clock) -> None:
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.hub_started(t0)
    ledger.mark(SID, "station", UP, t0)
    ledger.mark(SID, "dispenser", UP, t0)
    ledger.mark(SID, "dispenser", DOWN, t0 + 20 * S)
    ledger.mark(SID, "station", DOWN, t0 + 40 * S)
    ledger.mark(SID, "station", UP, t0 + 90 * S)
    clock.advance(100)
    assert writer.flush()
    u = ledger.uptime(SID, t0, clock.ms(), component="dispenser")
    assert (u.up_s, u.down_s, u.unknown_s) == (20.0, 30.0, 50.0)
    assert u.outages == (Outage(t0 + 20 * S, t0 + 40 * S, 20.0), Outage(t0 + 90 * S, None, 10.0))


def test_an_outage_that_began_before_the_window_starts_when_maintenance_ended(
        hub_db, clock) -> None:
    # Read from the database, the window's history is cut at the last point of
    # each stream; the station went down during maintenance, so its outage began
    # when maintenance ended, not when it was marked down.
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.hub_started(t0)
    ledger.mark(SID, "station", UP, t0)
    ledger.maintenance(SID, True, t0 + 10 * S)
    ledger.mark(SID, "station", DOWN, t0 + 20 * S)
    ledger.maintenance(SID, False, t0 + 30 * S)
    ledger.mark(SID, "station", UP, t0 + 90 * S)
    clock.advance(100)
    assert writer.flush()
    u = ledger.uptime(SID, t0 + 50 * S, t0 + 100 * S)
    assert u.outages == (Outage(t0 + 30 * S, t0 + 90 * S, 40.0),)
    assert u.mttr_s == 60.0


def test_a_mark_never_goes_back_before_the_previous_one(hub_db, clock) -> None:
    # Two threads racing, or the hub's clock stepped back: the part's history
    # stays in order, so the state after the race is the one marked last.
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.mark(SID, "station", UP, t0)
    ledger.mark(SID, "station", DOWN, t0 - 5 * S)
    assert writer.flush()
    assert [(r["at_ms"] - t0, r["state"]) for r in rows(store, ledger_table)] == [
        (0, UP), (1, DOWN)]


def test_marks_may_come_from_inside_a_writer_op(hub_db, clock) -> None:
    # The fleet marks what an event causes in the event's own op (hub-internals).
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    writer.submit(lambda conn: ledger.maintenance(SID, True, clock.ms()))
    assert writer.flush()
    assert writer.flush()  # the mark's own op, queued from the writer thread
    assert [r["state"] for r in rows(store, ledger_table)] == ["on"]


def test_bad_marks_and_windows_are_refused(hub_db, clock) -> None:
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    with pytest.raises(LedgerError, match="component"):
        ledger.mark(SID, "boiler", UP, 0)
    with pytest.raises(LedgerError, match="state"):
        ledger.mark(SID, "station", "flaky", 0)
    with pytest.raises(LedgerError, match="window"):
        ledger.availability(SID, "1y", 0)
    with pytest.raises(LedgerError, match="ends before it starts"):
        ledger.uptime(SID, 10, 5)
    assert ledger.availability("yh-never-seen", "24h", clock.ms()) is None


def test_a_month_of_random_history_reads_back_as_tally_says(hub_db, clock) -> None:
    """The database path (the last point before the window, the cut history, the
    runs) and the /metrics cache agree with ``tally`` over the whole history."""
    rng = random.Random(20251127)
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    sids = ["yh-a", "yh-b", "yh-c"]
    history: dict[tuple[str, str], list] = {(s, c): [] for s in sids for c in COMPONENTS}
    switches: dict[str, list] = {s: [] for s in sids}
    runs: list[tuple[int, int | None]] = []

    def live(until_ms: int) -> None:
        while clock.ms() < until_ms:
            clock.advance(rng.choice([60, 600, 3600, 6 * 3600]))
            now = clock.ms()
            sid = rng.choice(sids)
            if rng.random() < 0.15:
                on = rng.random() < 0.5
                if ledger.maintenance(sid, on, now):
                    switches[sid].append((now, on))
            else:
                component = rng.choice(COMPONENTS)
                state = rng.choice([UP, UP, DOWN, UNKNOWN])
                if ledger.mark(sid, component, state, now):
                    history[(sid, component)].append((now, state))

    ledger.hub_started(t0)
    live(t0 + 12 * DAY)
    ledger.hub_stopped(clock.ms())
    runs.append((t0, clock.ms()))
    clock.advance(2 * 3600)
    ledger.hub_started(clock.ms())
    start = clock.ms()
    live(start + 10 * DAY)
    ledger.hub_alive(clock.ms())
    runs.append((start, clock.ms()))  # and dies here
    assert writer.flush()
    clock.advance(3 * 3600)
    ledger = Ledger(store, writer, clock)  # the restarted hub
    ledger.hub_started(clock.ms())
    runs.append((clock.ms(), None))
    live(clock.ms() + 14 * DAY)
    assert writer.flush()
    now = clock.ms()

    for _ in range(150):
        sid, component = rng.choice(sids), rng.choice(COMPONENTS)
        a = rng.randrange(t0 - DAY, now)
        b = rng.randrange(a, now + DAY)
        expected = tally(history[(sid, component)], a, b, runs=runs,
                         maintenance=switches[sid],
                         station=None if component == "station" else history[(sid, "station")],
                         now_ms=now)
        assert ledger.uptime(sid, a, b, component) == expected

    assert ledger.refresh(now) == len(sids)
    for sid in sids:
        for window, span in WINDOWS.items():
            expected = tally(history[(sid, "station")], now - span, now, runs=runs,
                             maintenance=switches[sid], now_ms=now).availability
            assert ledger.availability(sid, window, now) == pytest.approx(expected)


def test_the_metrics_cache_sees_a_new_outage_before_the_next_refresh(hub_db, clock) -> None:
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.hub_started(t0)
    ledger.mark(SID, "station", UP, t0)
    clock.advance(3600)
    assert ledger.refresh(clock.ms()) == 1
    assert ledger.availability(SID, "24h", clock.ms()) == 1.0
    ledger.mark(SID, "station", DOWN, clock.ms())
    clock.advance(1200)
    assert ledger.availability(SID, "24h", clock.ms()) == pytest.approx(3600 / 4800)
    assert ledger.availability(SID, "30d", clock.ms()) == pytest.approx(3600 / 4800)


def test_a_refresh_in_slices_covers_every_station_once_per_round(hub_db, clock) -> None:
    """``refresh(share=3)``: each call a third of the stations, every station once in
    three calls; one marked meanwhile is still computed alone when read."""
    store, writer = hub_db()
    ledger = Ledger(store, writer, clock)
    t0 = clock.ms()
    ledger.hub_started(t0)
    sids = [f"yh-slice-{i:02d}" for i in range(10)]
    for sid in sids:
        ledger.mark(sid, "station", UP, t0)
    clock.advance(3600)
    assert [ledger.refresh(clock.ms(), share=3) for _ in range(3)] == [4, 3, 3]
    assert set(ledger._cache) == set(sids)
    ledger.mark(sids[1], "station", DOWN, clock.ms())  # in the second slice
    clock.advance(1200)
    assert ledger.refresh(clock.ms(), share=3) == 4  # the first slice again
    assert ledger.availability(sids[1], "24h", clock.ms()) == pytest.approx(3600 / 4800)
    assert ledger.availability(sids[0], "24h", clock.ms()) == 1.0


def test_the_morning_in_docs_uptime_md() -> None:
    """The worked example of docs/uptime.md, minute by minute."""
    m = 60 * S

    def at(hh_mm: str) -> int:
        h, mm = hh_mm.split(":")
        return (int(h) * 60 + int(mm)) * m

    station = [(at("07:00"), UP), (at("08:40"), DOWN), (at("09:10"), UP),
               (at("11:00"), DOWN), (at("11:45"), UP)]
    u = tally(station, at("08:00"), at("12:00"),
              runs=[(at("06:00"), at("11:20")), (at("11:35"), None)],
              maintenance=[(at("10:00"), True), (at("10:30"), False)], now_ms=at("12:00"))
    assert (u.up_s / 60, u.down_s / 60, u.maintenance_s / 60, u.unknown_s / 60) == (
        135, 60, 30, 15)
    assert round(u.availability, 4) == 0.6923
    assert [(o.start_ms, o.end_ms, o.duration_s / 60) for o in u.outages] == [
        (at("08:40"), at("09:10"), 30), (at("11:00"), at("11:20"), 20),
        (at("11:35"), at("11:45"), 10)]
    assert (u.mttr_s / 60, u.mtbf_s / 60) == (20, 45)
