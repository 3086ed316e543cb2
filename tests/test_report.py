"""The service report (hub/reports/, docs/report.md): its figures equal those
worked out here, on our own, from a simulated two months of events fed through
the hub's ingest with a fixed seed; its CSV, its console page and its PDF."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import pytest

from hub.alerting.texts import CST
from hub.reports.figures import compute
from hub.reports.period import BadPeriod, Period
from tests.harness.console_app import STATIONS, console_hub
from tests.harness.sim_month import HOUR_MS, Simulated, midnight_ms, simulate
from yizhan.clock import ManualClock

SEED = 20
SIDS = [s["sid"] for s in STATIONS]
GROUP = {s["sid"]: s["group"] for s in STATIONS}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    """October and November 2026 (China Standard Time), the hub clock an hour into
    December at the end: both months are whole."""
    tmp = tmp_path_factory.mktemp("report")
    clock = ManualClock((midnight_ms(dt.date(2026, 10, 1), CST) - HOUR_MS) / 1000)
    hub = console_hub(tmp, clock)
    sim = simulate(hub, SIDS, SEED, midnight_ms(dt.date(2026, 12, 1), CST) + HOUR_MS)
    yield hub, sim
    hub.close()


def expected(sim: Simulated, first: dt.date, after: dt.date) -> dict[str, dict]:
    """The figures of each station over [first, after), from what was sent."""
    lo, hi = midnight_ms(first, CST), midnight_ms(after, CST)
    out: dict[str, dict] = {sid: defaultdict(int) for sid in sim.sids}
    low_since: dict[str, int | None] = {sid: None for sid in sim.sids}
    refills: dict[str, list[float]] = {sid: [] for sid in sim.sids}
    for e in sim.events:
        f = out[e.sid]
        if e.type == "water_level":
            state = e.data["level_state"]
            if state != "ok" and low_since[e.sid] is None:
                low_since[e.sid] = e.at_ms
            elif state == "ok":
                since, low_since[e.sid] = low_since[e.sid], None
                if since is not None and lo <= since < hi:
                    f["low_runs"] += 1
                    refills[e.sid].append((e.at_ms - since) / 1000)
        if not lo <= e.at_ms < hi:
            continue
        if e.type == "visit":
            f["visits"] += e.data["count"]
        elif e.type == "bank_borrowed":
            f["lent"] += 1
        elif e.type == "bank_returned":
            f["returned"] += 1
    for sid in sim.sids:
        f = out[sid]
        since = low_since[sid]
        if since is not None and lo <= since < hi:
            f["low_runs"] += 1
            f["waiting"] += 1
        f["refills"] = refills[sid]
        down = 0
        touching = ended = 0
        repair = 0.0
        for start, end in sim.offline[sid]:
            stop = hi if end is None else end
            if start < hi and stop > lo:
                touching += 1
                down += min(stop, hi) - max(start, lo)
                if end is not None and end <= hi:
                    ended += 1
                    repair += (end - start) / 1000
        f["down_ms"], f["up_ms"] = down, (hi - lo) - down
        f["outages"], f["mttr_s"] = touching, (repair / ended if ended else None)
    return out


def test_the_simulation_gives_every_figure_something_to_count(simulated) -> None:
    _hub, sim = simulated
    want = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    for sid in SIDS:
        assert want[sid]["visits"] > 1000 and want[sid]["lent"] > 100
        assert want[sid]["returned"] > 100 and want[sid]["refills"]
    assert sum(want[sid]["outages"] for sid in SIDS) >= 3


@pytest.mark.parametrize("key", ["2026-11", "2026-10"])
def test_each_station_s_month_equals_the_independent_count(simulated, key: str) -> None:
    hub, sim = simulated
    period = Period.parse(key)
    rep = compute(hub, period, CST)
    want = expected(sim, period.first, period.after)
    assert [r.sid for r in rep.stations] == SIDS
    for row in rep.stations:
        w = want[row.sid]
        assert (row.visits, row.lent, row.returned) == (w["visits"], w["lent"], w["returned"])
        assert row.cups is None  # not measured: no event carries it
        assert (row.up_ms, row.down_ms, row.unknown_ms) == (w["up_ms"], w["down_ms"], 0)
        assert row.outages == w["outages"]
        assert row.mttr_s == pytest.approx(w["mttr_s"]) if w["mttr_s"] else row.mttr_s is None
        assert (row.low_runs, row.waiting) == (w["low_runs"], w["waiting"])
        assert row.refills == pytest.approx(w["refills"])


def test_towns_and_the_total_add_up_their_stations_and_compare_with_the_month_before(
        simulated) -> None:
    hub, sim = simulated
    nov = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    octo = expected(sim, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    rep = compute(hub, Period.parse("2026-11"), CST)
    assert [g.group for g in rep.groups] == ["chumen", "kanmen"]
    for row in [*rep.groups, rep.fleet]:
        sids = [s for s in SIDS if row.kind == "fleet" or GROUP[s] == row.group]
        assert row.visits == sum(nov[s]["visits"] for s in sids)
        assert row.lent == sum(nov[s]["lent"] for s in sids)
        up = sum(nov[s]["up_ms"] for s in sids)
        assert row.availability == pytest.approx(up / (up + sum(nov[s]["down_ms"] for s in sids)))
        before = rep.previous_of(row)
        assert before is not None and before.visits == sum(octo[s]["visits"] for s in sids)
        assert before.returned == sum(octo[s]["returned"] for s in sids)


def test_a_quarter_is_its_months_and_the_future_is_not_counted(simulated) -> None:
    hub, sim = simulated
    q4 = compute(hub, Period.parse("2026-Q4"), CST)
    whole = expected(sim, dt.date(2026, 10, 1), dt.date(2027, 1, 1))
    assert q4.fleet.visits == sum(whole[s]["visits"] for s in SIDS)
    # December has one hour behind it: the quarter ends now, not at its end.
    assert q4.to_ms == hub.clock.ms()
    assert q4.fleet.up_ms + q4.fleet.down_ms == 3 * (q4.to_ms - q4.from_ms)
    assert compute(hub, Period.parse("2027-01"), CST).fleet.visits == 0


@pytest.mark.parametrize("raw", ["", "2026-13", "2026-00", "2026-Q5", "2026-Q0", "26-11",
                                 "２０２６-11", "2026-1", "10" + "0" * 30, "1999-12", "+026-11"])
def test_a_bad_period_is_refused_by_name(raw: str) -> None:
    with pytest.raises(BadPeriod, match="YYYY-MM"):
        Period.parse(raw)
