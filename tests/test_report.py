"""The service report (hub/reports/, docs/report.md): its figures equal those
worked out here, on our own, from a simulated two months of events fed through
the hub's ingest with a fixed seed; its CSV, its console page and its PDF."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from hub.alerting.texts import CST
from hub.reports.charts import BLUE
from hub.reports.figures import compute
from hub.reports.period import BadPeriod, Period
from hub.storage.schema import events
from tests.harness.console_app import FLEET_KEY, STATIONS, Browser, console_hub
from tests.harness.sim_month import HOUR_MS, Sent, Simulated, midnight_ms, simulate
from yizhan.clock import ManualClock

SEED = 20
SIDS = [s["sid"] for s in STATIONS]
GROUP = {s["sid"]: s["group"] for s in STATIONS}


@pytest.fixture(scope="module", params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def simulated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """October and November 2026 (China Standard Time), the hub clock an hour into
    December at the end: both months are whole. On SQLite and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("report")
    with contextlib.ExitStack() as stack:
        extra = {}
        if request.param == "postgresql":
            server = request.getfixturevalue("pg_server")
            extra["database"] = stack.enter_context(server.database())
        clock = ManualClock((midnight_ms(dt.date(2026, 10, 1), CST) - HOUR_MS) / 1000)
        hub = console_hub(tmp, clock, **extra)
        stack.callback(hub.close)
        sim = simulate(hub, SIDS, SEED, midnight_ms(dt.date(2026, 12, 1), CST) + HOUR_MS)
        yield hub, sim


#: chargers_low's defaults (docs/alerts.md): fires at 2 ready, clears at 4.
CHARGERS_LEVEL, CHARGERS_CLEAR = 2, 4


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
        elif e.type == "water_drawn":
            f["cups"] += e.data["draws"]
            f["drawn_ml"] += e.data["ml"]
    # Chargers: a run from the State that shows CHARGERS_LEVEL or fewer ready to
    # the first that shows CHARGERS_CLEAR or more.
    short_since: dict[str, int | None] = {sid: None for sid in sim.sids}
    for sid, at, ready in sim.ready:
        f, since = out[sid], short_since[sid]
        if since is None and ready <= CHARGERS_LEVEL:
            short_since[sid] = at
        elif since is not None and ready >= CHARGERS_CLEAR:
            short_since[sid] = None
            if lo <= since < hi:
                f["charger_low_runs"] += 1
                f.setdefault("charger_refills", []).append((at - since) / 1000)
    for sid in sim.sids:
        f = out[sid]
        since = short_since[sid]
        if since is not None and lo <= since < hi:
            f["charger_low_runs"] += 1
            f["charger_waiting"] += 1
        f.setdefault("charger_refills", [])
        # Not measured where no flow meter has reported by the period's end.
        if not any(e.sid == sid and e.type == "water_drawn" and e.at_ms < hi
                   for e in sim.events):
            f["cups"] = f["drawn_ml"] = None
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
        assert want[sid]["charger_refills"]
    # Two stations with a flow meter, one without.
    assert [sid for sid in SIDS if want[sid]["cups"] is not None] == sim.metered
    assert len(sim.metered) == 2 and all(want[sid]["cups"] > 100 for sid in sim.metered)
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
        assert (row.cups, row.drawn_ml) == (w["cups"], w["drawn_ml"])
        assert row.litres == (None if w["drawn_ml"] is None else w["drawn_ml"] / 1000)
        assert (row.charger_low_runs, row.charger_waiting) == (w["charger_low_runs"],
                                                               w["charger_waiting"])
        assert row.charger_refills == pytest.approx(w["charger_refills"])
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
        measured = [s for s in sids if nov[s]["cups"] is not None]
        assert row.cups == (sum(nov[s]["cups"] for s in measured) if measured else None)
        assert row.drawn_ml == (sum(nov[s]["drawn_ml"] for s in measured) if measured
                                else None)
        assert sorted(row.charger_refills) == pytest.approx(
            sorted(t for s in sids for t in nov[s]["charger_refills"]))
        up = sum(nov[s]["up_ms"] for s in sids)
        assert row.availability == pytest.approx(up / (up + sum(nov[s]["down_ms"] for s in sids)))
        before = rep.previous_of(row)
        assert before is not None and before.visits == sum(octo[s]["visits"] for s in sids)
        assert before.returned == sum(octo[s]["returned"] for s in sids)
        assert before.cups == (sum(octo[s]["cups"] for s in measured) if measured else None)


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


# -- the console page, the CSV and the PDF -----------------------------------------------

PDFTOPPM = shutil.which("pdftoppm")


def test_the_page_shows_the_month_its_charts_and_the_month_before(simulated) -> None:
    hub, sim = simulated
    want = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    desk = Browser(hub, "desk")
    # Without a period: the last whole month, November (the clock is in December).
    page = desk.get("/console/report").get_data(as_text=True)
    assert 'name="period" value="2026-11"' in page
    assert page.count("<svg") == 3 and "<script" not in page.split("<main", 1)[-1]
    total = sum(want[s]["visits"] for s in SIDS)
    assert f'class="num">{total}</td>' in page
    cups = sum(want[s]["cups"] for s in sim.metered)
    assert f'class="num">{cups}</td>' in page  # the total's cups
    # kanmen's one station has no flow meter: its cups are not measured, not 0.
    assert page.count('class="num">未计量</td>') == 2  # its row and its town's
    assert "楚门镇先锋驿站" in page
    bad = desk.get("/console/report?period=2026-13")
    assert bad.status_code == 400 and 'role="alert"' in bad.get_data(as_text=True)
    # The page is for ops: a maintenance worker is refused.
    assert Browser(hub, "wang").get("/console/report").status_code == 403


def test_the_csv_carries_every_station_town_and_the_total_with_the_month_before(
        simulated) -> None:
    hub, sim = simulated
    nov = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    octo = expected(sim, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    resp = Browser(hub, "desk").get("/console/report.csv?period=2026-11")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    text = resp.get_data(as_text=True)
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text[1:])))
    assert [r["kind"] for r in rows] == ["station"] * 3 + ["group"] * 2 + ["fleet"]
    for r in rows[:3]:
        sid = r["sid"]
        assert int(r["visits"]) == nov[sid]["visits"]
        assert int(r["visits_before"]) == octo[sid]["visits"]
        assert int(r["lent"]) == nov[sid]["lent"] and int(r["returned"]) == nov[sid]["returned"]
        assert float(r["down_s"]) == nov[sid]["down_ms"] / 1000
        assert r["from"] == "2026-11-01" and r["to"] == "2026-11-30"
        if sid in sim.metered:
            assert int(r["cups"]) == nov[sid]["cups"]
            assert float(r["litres"]) == nov[sid]["drawn_ml"] / 1000
            assert int(r["cups_before"]) == octo[sid]["cups"]
        else:
            assert r["cups"] == r["litres"] == r["cups_before"] == ""  # not measured
        assert int(r["chargers_low"]) == nov[sid]["charger_low_runs"]
    assert int(rows[-1]["visits"]) == sum(nov[s]["visits"] for s in SIDS)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_pdf_opens_its_pages_render_and_its_chinese_is_text(simulated, tmp_path: Path,
                                                                 lang: str) -> None:
    if PDFTOPPM is None:  # make system-deps installs poppler-utils
        if os.environ.get("CI"):
            pytest.fail("pdftoppm (poppler-utils) is required under CI", pytrace=False)
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    hub, sim = simulated
    nov = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    resp = Browser(hub, "desk").client.get(f"/console/report.pdf?period=2026-11&lang={lang}")
    assert resp.status_code == 200 and resp.mimetype == "application/pdf"
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(resp.get_data())
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    assert re.search(r"^Pages:\s+2$", info.stdout, re.M)
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True)
    assert "NotoSansCJK" in fonts.stdout and " yes yes yes " in fonts.stdout  # embedded
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert ("驿站服务报告" if lang == "zh" else "Station service report") in text
    assert "楚门镇先锋驿站" in text  # station names stay Chinese in either language
    assert f"{sum(nov[s]['visits'] for s in SIDS):,}" in text
    assert f"{sum(nov[s]['cups'] for s in sim.metered):,}" in text  # the total's cups
    assert ("未计量" if lang == "zh" else "not measured") in text  # kanmen has no meter
    out = Path(os.environ.get("REPORT_PICTURES") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([PDFTOPPM, "-r", "80", "-png", str(pdf), str(out / f"report-{lang}")],
                   check=True)
    pages = sorted(out.glob(f"report-{lang}-*.png"))
    assert len(pages) == 2
    with Image.open(pages[0]) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    # The charts' bars are there in their blue, and the page is not blank.
    assert any(count > 500 and c == BLUE for count, c in colours)
    assert sum(count for count, c in colours if c != (255, 255, 255)) > 20_000


def test_a_fleet_of_hundreds_charts_its_least_available_stations_not_every_one() -> None:
    from hub.reports.charts import MOST_BARS, Text, charts
    from hub.reports.figures import Figures, Report

    stations = [Figures("station", "chumen", f"yh-t{i:03d}", f"站{i}", up_ms=1000 - i,
                        down_ms=i) for i in range(300)]
    fleet = Figures("fleet", None, None, None)
    for s in stations:
        fleet.add(s)
    town = Figures("group", "chumen", None, None)
    town.add(fleet)
    rep = Report(Period.parse("2026-11"), 0, 1000, stations, [town], fleet)
    chart = charts(rep, "en")[2]
    labels = [s.text for s in chart.shapes if isinstance(s, Text) and s.anchor == "end"]
    assert chart.title == f"The {MOST_BARS} least available stations"
    assert labels == [f"站{i}" for i in range(299, 299 - MOST_BARS, -1)]


# -- yizhan sim month: the same months from the command line ---------------------------


def _hub_yaml(tmp: Path) -> Path:
    """The configuration console_hub makes, as a file for the command."""
    (tmp / "fleet.key").write_text(FLEET_KEY)
    (tmp / "fleet.key").chmod(0o600)
    config = tmp / "hub.yaml"
    config.write_text(json.dumps({
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "fleet_key_file": str(tmp / "fleet.key"),
        "stations": list(STATIONS),
    }, ensure_ascii=False))  # JSON is YAML
    return config


def _sim_month(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yizhan", "sim", "month", *args],
                          capture_output=True, text=True, timeout=120)


def test_yizhan_sim_month_fills_a_hub_whose_report_equals_the_count_of_its_log(
        tmp_path: Path) -> None:
    config = _hub_yaml(tmp_path)
    log = tmp_path / "sent.jsonl"
    done = _sim_month("--config", str(config), "--seed", "7", "--from", "2026-11",
                      "--log", str(log))
    assert done.returncode == 0, done.stderr
    assert "3 stations, 2026-11 to 2026-11" in done.stdout and "(seed 7)" in done.stdout
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    sim = Simulated(SIDS, [Sent(**d) for d in lines[:-1]],
                    {sid: v for sid, v in lines[-1]["offline"].items()},
                    lines[-1]["metered"], [tuple(r) for r in lines[-1]["ready"]])
    want = expected(sim, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    # The hub that reads it: the same database, an hour after the run ended.
    clock = ManualClock((midnight_ms(dt.date(2026, 12, 1), CST) + 2 * HOUR_MS) / 1000)
    hub = console_hub(tmp_path, clock)
    try:
        rep = compute(hub, Period.parse("2026-11"), CST)
        for row in rep.stations:
            w = want[row.sid]
            assert (row.visits, row.lent, row.returned) == (w["visits"], w["lent"],
                                                           w["returned"])
            assert (row.up_ms, row.down_ms, row.outages) == (w["up_ms"], w["down_ms"],
                                                            w["outages"])
            assert row.refills == pytest.approx(w["refills"]) and row.waiting == w["waiting"]
            assert (row.cups, row.drawn_ml) == (w["cups"], w["drawn_ml"])
            assert row.charger_refills == pytest.approx(w["charger_refills"])
            assert row.charger_waiting == w["charger_waiting"]
        assert rep.fleet.visits > 1000 and rep.fleet.cups > 100
    finally:
        hub.close()
    # Never over a database that holds events: that may be a real fleet's history.
    again = _sim_month("--config", str(config), "--from", "2026-11")
    assert again.returncode == 1 and "already holds events" in again.stderr


@pytest.mark.parametrize("args, words", [
    (["--from", "2026-13"], "YYYY-MM"),
    (["--from", "2026-Q4"], "--from must be a month"),
    (["--from", "2026-11", "--months", "0"], "--months must be 1..15"),
    (["--from", "2026-11", "--months", str(10**30)], "--months must be 1..15"),
])
def test_yizhan_sim_month_refuses_a_bad_ask_by_name(tmp_path: Path, args: list[str],
                                                    words: str) -> None:
    done = _sim_month("--config", str(_hub_yaml(tmp_path)), *args)
    assert done.returncode == 2 and words in done.stderr
    assert not (tmp_path / "hub.db").exists()


def test_a_visit_row_that_is_not_a_count_adds_nothing(database_url: str, tmp_path: Path) -> None:
    """The ingest lets only whole counts in; rows written by an older hub or by hand
    are read without failing the report."""
    clock = ManualClock(midnight_ms(dt.date(2026, 12, 1), CST) / 1000)
    hub = console_hub(tmp_path, clock, database=database_url)
    try:
        at = midnight_ms(dt.date(2026, 11, 5), CST)
        datas = ['{"count": 4}', '{"count": 0}', '{"count": -5}', '{"count": "7"}',
                 '{"count": 1.5}', '{"count": 1' + "0" * 30 + "}", '{"count": null}', "{}",
                 "[3]", '{"count": true}', '{"count": 3}', '{"count": 100001}',
                 f'{{"count": {2**63 - 1}}}', f'{{"count": {2**63 - 1}}}']
        if hub.store.dialect == "sqlite":
            datas.append("not json")  # PostgreSQL's jsonb cast would refuse it: see figures.py
        with hub.store.engine.begin() as conn:
            conn.execute(events.insert(), [
                {"sid": "yh-chumen-01", "epoch": "e1", "seq": i + 1, "type": "visit",
                 "ts": at, "synced": True, "received_ms": at, "at_ms": at, "data": d}
                for i, d in enumerate(datas)])
        rep = compute(hub, Period.parse("2026-11"), CST)
        assert [r.visits for r in rep.stations] == [7, 0, 0]
    finally:
        hub.close()


def test_a_water_drawn_row_out_of_range_adds_nothing_and_a_meter_makes_it_measured(
        database_url: str, tmp_path: Path) -> None:
    """The hub's decoder refuses water_drawn out of range (tests/test_protocol_invalid.py);
    rows written otherwise are read whole or not at all, without failing the report.
    A station whose meter has reported is measured even in a month it drew nothing."""
    clock = ManualClock(midnight_ms(dt.date(2026, 12, 1), CST) / 1000)
    hub = console_hub(tmp_path, clock, database=database_url)
    try:
        at = midnight_ms(dt.date(2026, 11, 5), CST)
        datas = ['{"draws": 2, "ml": 500}', '{"draws": 3, "ml": 10000001}',
                 '{"draws": 1' + "0" * 30 + ', "ml": 200}', '{"draws": -1, "ml": 200}',
                 '{"draws": 1, "ml": -200}', '{"draws": 0, "ml": 200}', '{"draws": 1.5, "ml": 1}',
                 '{"draws": "4", "ml": 1}', '{"draws": 1}', "{}", "[1]",
                 '{"draws": true, "ml": 1}', f'{{"draws": {2**63 - 1}, "ml": {2**63 - 1}}}',
                 '{"draws": 100000, "ml": 10000000}']
        if hub.store.dialect == "sqlite":
            datas.append("not json")
        rows = [{"sid": "yh-chumen-01", "epoch": "e1", "seq": i + 1, "type": "water_drawn",
                 "ts": at, "synced": True, "received_ms": at, "at_ms": at, "data": d}
                for i, d in enumerate(datas)]
        october = midnight_ms(dt.date(2026, 10, 9), CST)  # chumen-02: October only
        rows.append({"sid": "yh-chumen-02", "epoch": "e1", "seq": 1, "type": "water_drawn",
                     "ts": october, "synced": True, "received_ms": october,
                     "at_ms": october, "data": '{"draws": 1, "ml": 250}'})
        with hub.store.engine.begin() as conn:
            conn.execute(events.insert(), rows)
        rep = compute(hub, Period.parse("2026-11"), CST)
        assert [(r.cups, r.drawn_ml) for r in rep.stations] == [
            (100_002, 10_000_500), (0, 0), (None, None)]
        assert (rep.fleet.cups, rep.fleet.litres) == (100_002, 10_000.5)
        kanmen = next(g for g in rep.groups if g.group == "kanmen")
        assert kanmen.cups is None and kanmen.litres is None  # no meter: not measured
        assert rep.previous is not None
        assert [r.cups for r in rep.previous.stations] == [None, 1, None]
    finally:
        hub.close()


def test_chargers_time_to_refill_is_the_engine_s_resolution_of_chargers_low(
        database_url: str, tmp_path: Path) -> None:
    from hub.storage.schema import alerts

    clock = ManualClock(midnight_ms(dt.date(2026, 12, 1), CST) / 1000)
    hub = console_hub(tmp_path, clock, database=database_url)
    try:
        nov = midnight_ms(dt.date(2026, 11, 1), CST)
        h = HOUR_MS

        def alert(n: int, rule: str, start: int, end: int | None, by: str | None) -> dict:
            return {"id": f"a{n}", "rule": rule, "sid": "yh-chumen-01", "subject": "",
                    "severity": "warning", "state": "firing" if end is None else "resolved",
                    "summary": rule, "started_ms": start, "resolved_ms": end,
                    "resolved_by": by, "escalation": 0}

        with hub.store.engine.begin() as conn:
            conn.execute(alerts.insert(), [
                alert(1, "chargers_low", nov - 3 * h, nov + h, "auto"),  # began in October
                alert(2, "chargers_low", nov + 10 * h, nov + 13 * h, "auto"),
                alert(3, "chargers_low", nov + 20 * h, nov + 21 * h, "desk"),  # by hand
                alert(4, "chargers_low", nov + 40 * h, nov + 45 * h, "auto"),
                alert(5, "water_low", nov + 50 * h, nov + 90 * h, "auto"),  # not chargers
                alert(6, "chargers_low", nov + 100 * h, None, None),  # still short
            ])
        row = compute(hub, Period.parse("2026-11"), CST).stations[0]
        assert (row.charger_low_runs, row.charger_waiting) == (4, 1)
        assert row.charger_refills == [3 * 3600.0, 5 * 3600.0]
        assert row.charger_refill_mean_s == 4 * 3600.0 and row.charger_refill_max_s == 5 * 3600.0
    finally:
        hub.close()


def test_the_page_in_chromium_draws_its_charts_at_a_desk_and_on_a_phone(simulated,
                                                                         tmp_path: Path) -> None:
    from werkzeug.serving import make_server

    from tests.harness.browser import Chromium, require_chromium
    from tests.harness.console_app import PASSWORD

    require_chromium()
    hub, _sim = simulated
    server = make_server("127.0.0.1", 0, hub.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    out = Path(os.environ.get("REPORT_PICTURES") or tmp_path)
    try:
        with Chromium() as chromium:
            for name, size in (("desk", (1280, 900)), ("phone", (390, 844))):
                page = chromium.page(*size)
                page.goto(base + "/console/signin")
                page.fill("input[name=name]", "desk")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url("**/console/")
                page.goto(base + "/console/report?period=2026-11")
                charts = page.locator("figure.report-chart svg")
                assert charts.count() == 3
                for i in range(3):
                    box = charts.nth(i).bounding_box()
                    assert box is not None and 300 <= box["width"] <= 640 and box["height"] > 30
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                if hub.store.dialect == "sqlite":
                    page.screenshot(path=str(out / f"console-report-{name}.png"), full_page=True,
                                    animations="disabled")
    finally:
        server.shutdown()
        thread.join(10)
