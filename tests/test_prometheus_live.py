"""The shipped Prometheus rules on a real Prometheus scraping a real hub fed by
real stations, one of which had an outage (tests/harness/prometheus.py)."""

from __future__ import annotations

from tests.harness import prometheus

live_prometheus = prometheus.live_prometheus


def test_the_outage_is_visible(live_prometheus):
    start, end = live_prometheus.outage
    up = f'yizhan_station_up{{station="{live_prometheus.outage_station}"}}'
    series = live_prometheus.query_range(up, start - 2, end, 1)
    values = [float(v) for _t, v in series[0]["values"]]
    assert values[0] == 1.0 and 0.0 in values
    assert [float(s["value"][1]) for s in live_prometheus.query(up, at=end)] == [1.0]
