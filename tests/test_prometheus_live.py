"""The shipped Prometheus rules on a real Prometheus scraping a real hub fed by
real stations, one of which had an outage (tests/harness/prometheus.py)."""

from __future__ import annotations

import pytest

from tests.harness import prometheus
from tests.harness.procs import wait_until
from tests.test_prometheus_rules import PLANNED_RECORDS, WINDOWS

live_prometheus = prometheus.live_prometheus


def test_the_outage_is_visible(live_prometheus):
    start, end = live_prometheus.outage
    up = f'yizhan_station_up{{station="{live_prometheus.outage_station}"}}'
    series = live_prometheus.query_range(up, start - 2, end, 1)
    values = [float(v) for _t, v in series[0]["values"]]
    assert values[0] == 1.0 and 0.0 in values
    assert [float(s["value"][1]) for s in live_prometheus.query(up, at=end)] == [1.0]


def test_a_bad_query_is_an_error_not_an_empty_answer(live_prometheus):
    # So "every panel expression returns data" cannot pass on a typo.
    with pytest.raises(RuntimeError, match="parse error"):
        live_prometheus.query("sum(yizhan_station_up")


def test_every_recording_rule_yields_series(live_prometheus):
    # Even the 3-day windows: a minute of data is enough for rate() to answer.
    missing = []
    for record in sorted(PLANNED_RECORDS):
        try:
            live_prometheus.wait_for(record, timeout=5)
        except AssertionError:
            missing.append(record)
    assert not missing, f"no series for {missing}"


def _values(series: list[dict]) -> dict[str, float]:
    return {s["metric"].get("group", ""): float(s["value"][1]) for s in series}


def test_the_slo_error_ratio_shows_the_outage_in_its_group_only(live_prometheus):
    live = live_prometheus
    other = next(g for g in live.groups if g != live.outage_group)
    for window in WINDOWS:
        record = f"group:yizhan_station_errors:ratio_rate{window}"
        live.wait_for(f'{record}{{group="{live.outage_group}"}} > 0')
        ratios = _values(live.query(record))
        assert set(ratios) == set(live.groups), record
        # Down seconds of one station out of two, for a few of the seconds scraped.
        assert 0 < ratios[live.outage_group] < 0.5, (record, ratios)
        assert ratios[other] == 0, (record, ratios)
    worst = live.query("station:yizhan_station_errors:ratio_rate1h > 0")
    assert [s["metric"]["station"] for s in worst] == [live.outage_station]
    assert worst[0]["metric"]["group"] == live.outage_group


def test_the_outage_pages_for_its_group_only(live_prometheus):
    live = live_prometheus

    def burning() -> list[dict]:
        return [a for a in live.alerts()
                if a["labels"]["alertname"] == "YizhanAvailabilityBudgetBurnFast"]

    # Seconds of history: one of two stations down a few of them is far over 14.4x
    # in both the 1h and the 5m window, so the page (no `for`) fires at once.
    alerts = wait_until(burning, 10, "the page for the outage's group", interval=0.25,
                        on_fail=live.log_tail)
    assert [(a["labels"]["group"], a["state"], a["labels"]["severity"]) for a in alerts] == [
        (live.outage_group, "firing", "critical")]


def test_stations_and_ready_banks_per_group(live_prometheus):
    live = live_prometheus
    counts = _values(live.wait_for("group:yizhan_stations:count"))
    assert counts == {g: len(sids) for g, sids in live.groups.items()}
    # The outage is over: every station is up again (once the rule has evaluated).
    wait_until(lambda: _values(live.query("group:yizhan_station_up:sum")) == counts, 5,
               "every station up per group", interval=0.25, on_fail=live.log_tail)
    ready = _values(live.wait_for("group:yizhan_power_banks_ready:sum"))
    assert set(ready) == set(live.groups) and all(v >= 0 for v in ready.values())


def test_hub_metrics_pass_promtool_check_metrics(live_prometheus):
    import shutil
    import subprocess
    import urllib.request

    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    with urllib.request.urlopen(f"{live_prometheus.hub_url}/metrics", timeout=5) as resp:
        text = resp.read()
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


# Last in this module: it stops the fixture's hub for good.
def test_hub_down_alert_goes_pending_when_the_hub_stops(live_prometheus):
    live = live_prometheus
    live.stop_hub()

    def hub_down() -> list[dict]:
        return [a for a in live.alerts() if a["labels"]["alertname"] == "YizhanHubDown"]

    alerts = wait_until(hub_down, 15, "YizhanHubDown pending", interval=0.25,
                        on_fail=live.log_tail)
    # `for: 2m` as shipped: pending now, firing only after two minutes down.
    assert [a["state"] for a in alerts] == ["pending"]
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["labels"]["job"] == "yizhan-hub"
