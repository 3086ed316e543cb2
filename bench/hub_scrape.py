"""Hub scrape: what ``/metrics`` costs at 50 000 stations, before and after issue 15.

A hub (no broker: its MQTT callback is handed the messages, as bench/hub_apply.py
does) takes a birth and a State from each of ``--stations`` simulated stations,
then its clock moves on past the silence allowance and the sweep marks a share
of them down (an outage each, so the ledger's accounts have points to count).
Measured, alternately in the same run: ``generate_latest`` of the registry
without issue 15's collectors (what ``/metrics`` served before: contract §12,
the ingest's tallies, the outbox's held count) and of the full registry; the
ratio of the medians is the figure. Also: the first full scrape (every account
opened, every forecast asked) and one a minute later (every forecast asked
again), and ``Forecaster.time_to_empty`` on a station with a learned day, the
cost a minute of asking every station when all of them have forecasts.

    .venv/bin/python bench/hub_scrape.py                    # 50 000 stations, ~2 min
    .venv/bin/python bench/hub_scrape.py --stations 5000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from hub_apply import payloads  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from hub.alerting.durations import AlertDurations  # noqa: E402
from hub.alerting.forecast import Forecaster  # noqa: E402
from hub.config import parse_hub_config  # noqa: E402
from hub.http.uptime_metrics import UptimeCollector  # noqa: E402
from hub.mqtt.broker_stats import BrokerStats  # noqa: E402
from hub.service import Hub  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

NEW = (UptimeCollector, AlertDurations, BrokerStats)


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, len(out)


def forecast_cost(reps: int = 20_000) -> float:
    """Seconds for one ``time_to_empty`` of a station with a day learned."""
    sys.path.insert(0, str(REPO))
    from tests.test_forecast import START, WaterStation  # a tank at known rates

    clock = ManualClock(START)
    fc = Forecaster(clock)
    tank = WaterStation(clock, fc)
    tank.run(26)
    assert fc.time_to_empty(tank.sid, "water") is not None
    t0 = time.perf_counter()
    for _ in range(reps):
        fc.time_to_empty(tank.sid, "water")
    return (time.perf_counter() - t0) / reps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=50_000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--down", type=float, default=0.1, help="share of stations gone silent")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-scrape-"))
    clock = ManualClock(time.time())
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "bench-scrape"},
        "database": f"sqlite:///{work / 'hub.db'}", "http": {"host": "127.0.0.1", "port": 0}})
    hub = Hub(config, clock=clock, registry=CollectorRegistry())
    try:
        hub.ledger.hub_started(clock.ms())
        hub.fleet.broker_up(clock.ms())
        msgs = payloads(args.stations, 2, 0)  # a birth and a State each
        for msg in msgs:
            hub.ingest._message(None, None, msg)
        hub.writer.flush(300)
        # Ten minutes on: all but a share are heard again, the rest go down.
        clock.advance(600)
        silent = int(args.stations * args.down)
        for msg in msgs[len(msgs) // 2 + silent:]:
            hub.ingest._message(None, None, msg)
        down = hub.fleet.sweep_silent(clock.ms())
        hub.ledger.hub_alive(clock.ms())
        hub.writer.flush(300)
        gc.collect()
        gc.freeze()

        before = CollectorRegistry()
        for collector in list(hub.registry._collector_to_names):
            if not isinstance(collector, NEW):
                before.register(collector)

        first, size = timed(lambda: generate_latest(hub.registry))
        clock.advance(61)  # every forecast is asked again
        hub.ledger.hub_alive(clock.ms())
        minute, _ = timed(lambda: generate_latest(hub.registry))
        olds, news = [], []
        for _ in range(args.reps):
            clock.advance(15)  # a scrape interval
            hub.ledger.hub_alive(clock.ms())
            t, old_size = timed(lambda: generate_latest(before))
            olds.append(t)
            t, size = timed(lambda: generate_latest(hub.registry))
            news.append(t)
        mine = [c for c in hub.registry._collector_to_names if isinstance(c, NEW)]
        collect, _ = timed(lambda: [m for c in mine for m in c.collect()])
        per_call = forecast_cost()
    finally:
        hub.engine.close()
        hub.outbox.close()
        hub._close_store()
        gc.unfreeze()
    o, n = statistics.median(olds), statistics.median(news)
    print(f"{args.stations} stations ({len(down)} down once), median of {args.reps} scrapes:")
    print("| scrape | seconds | bytes |")
    print("|---|---|---|")
    print(f"| /metrics before issue 15 | {o:.3f} | {old_size:,} |")
    print(f"| /metrics now | {n:.3f} | {size:,} |")
    print(f"| ratio | {n / o:.2f} | {size / old_size:.2f} |")
    print(f"| of which issue 15's collect() alone, without the text | {collect:.3f} | |")
    print(f"| first scrape (accounts opened, forecasts asked) | {first:.3f} | |")
    print(f"| a minute later (forecasts asked again) | {minute:.3f} | |")
    print(f"| time_to_empty with a day learned, per call | {per_call * 1e6:.1f} µs "
          f"(× {2 * args.stations:,} = {per_call * 2 * args.stations:.2f} s a minute "
          "if every station had both forecasts) | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
