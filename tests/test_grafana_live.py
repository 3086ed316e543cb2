"""Every panel of every Yizhan dashboard shows data, on a real Prometheus (issue 15).

A real hub fed by real simulated stations, one of which had an outage, scraped by
a real Prometheus with the shipped rules (tests/harness/prometheus.py's run, with
water that runs low and is refilled: tests/harness/dashboards.py). Each
panel target's expression is run as Grafana would run it: its variables
substituted with what the dashboard's pickers would give, a range query over the
run for a graph, an instant query at its end for a stat or a table. Each must
return at least one series with a number in it: an empty or all-NaN answer is a
blank panel on the ops lead's screen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from tests.harness import dashboards
from tests.harness.dashboards import grafana_values, run_target, substitute
from tests.test_grafana_dashboards import boards, panels

dashboard_prometheus = dashboards.dashboard_prometheus


def selections(live, board: dict) -> Iterator[tuple[str | None, str | None]]:
    """The choices an ops lead makes: everything, or the outage's group; the
    station dashboard is about one station, the one with alerts open."""
    station_var = next(v for v in board["templating"]["list"] if v["name"] == "station")
    if station_var["multi"]:
        yield None, None
        yield live.outage_group, None
    else:
        yield live.outage_group, dashboards.KEEPS_LOW


def numbers(series: list[dict]) -> list[float]:
    out = []
    for s in series:
        for _t, v in s.get("values", []) + ([s["value"]] if "value" in s else []):
            out.append(float(v))
    return [x for x in out if not math.isnan(x)]


def test_every_panel_expression_returns_data(dashboard_prometheus) -> None:
    live = dashboard_prometheus
    start = live.started
    end = time.time()
    empty, ran = [], 0
    for name, board in boards():
        for group, station in selections(live, board):
            values = grafana_values(start, end, group, station)
            for p in panels(board):
                for t in p["targets"]:
                    series = run_target(live, t, values, start, end)
                    ran += 1
                    if not numbers(series):
                        empty.append(f"{name} [{group or 'All'}/{station or 'All'}] "
                                     f"{p['title']!r} {t['refId']}: "
                                     f"{substitute(t['expr'], values)}")
    assert ran > 60
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_the_outage_shows_where_the_ops_lead_looks(dashboard_prometheus) -> None:
    """Not only data, the right data: the outage station is down in the fleet's
    outage table and the worst station of the SLO board."""
    live = dashboard_prometheus
    end = time.time()
    values = grafana_values(live.started, end, None, None)
    fleet = dict(boards())["yizhan-fleet.json"]
    outages = next(p for p in panels(fleet) if p["title"] == "Outages in the last 24 h")
    down = live.query(substitute(outages["targets"][0]["expr"], values), at=end)
    assert [s["metric"]["station"] for s in down] == [live.outage_station]
    assert 0 < float(down[0]["value"][1]) < live.outage[1] - live.outage[0] + 5
    slo = dict(boards())["yizhan-slo.json"]
    worst = next(p for p in panels(slo) if p["title"] == "Worst ten stations (30 d)")
    ranked = live.query(substitute(worst["targets"][0]["expr"], values), at=end)
    lowest = min(ranked, key=lambda s: float(s["value"][1]))
    assert lowest["metric"]["station"] == live.outage_station
    assert lowest["metric"]["group"] == live.outage_group
    assert float(lowest["value"][1]) < 1.0
    assert all(float(s["value"][1]) == 1.0 for s in ranked if s is not lowest)


# The run waits up to a minute for the hub's first forecast of the day.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
