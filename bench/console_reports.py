"""Console report pages at 5 000 stations: what the uptime report (page and CSV,
30 days), the refill round, loans and alerts cost to render, beside a static
file of the same app in the same run.

A real Hub (SQLite file, not started: no broker) with ``--stations`` configured
stations in 20 groups, each with a State (so the refill round has slots and a
tank to read) and 40 days of ledger history with one outage of an hour inside
the 30 days; an ops user signed in through the real sign-in form. Each page is
fetched ``--runs`` times through Flask's test client (no sockets: the app's own
time), alternating with ``/console/static/console.css``.

    .venv/bin/python bench/console_reports.py                 # 5 000 stations
    .venv/bin/python bench/console_reports.py --stations 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hub.config import parse_hub_config  # noqa: E402
from hub.service import Hub  # noqa: E402
from hub.storage.schema import hub_runs, ledger  # noqa: E402
from tests.harness import console_app  # noqa: E402
from tests.harness.console_app import Browser, send_state  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

PAGES = ("/console/uptime", "/console/uptime.csv", "/console/refill", "/console/loans",
         "/console/alerts")
STATIC = "/console/static/console.css"
DAY = 86_400_000


def build(n: int, tmp: Path) -> Hub:
    stations = [{"sid": f"yh-s{i:05d}", "name": f"驿站{i}", "group": f"g{i % 20}"}
                for i in range(n)]
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "stations": stations,
        "console": {"secret_key_file": str(tmp / "console.key")}})
    clock = ManualClock(1_764_201_600.0)
    hub = Hub(config, clock)
    t = clock.ms()
    with hub.store.engine.begin() as conn:
        conn.execute(hub_runs.insert(), [{"started_ms": t - 40 * DAY, "alive_ms": t,
                                          "stopped_ms": None}])
        conn.execute(ledger.insert(), [
            {"sid": s["sid"], "component": "station", "at_ms": at, "state": state}
            for s in stations
            for at, state in ((t - 40 * DAY, "up"), (t - 10 * DAY, "down"),
                              (t - 10 * DAY + 3_600_000, "up"))])
    hub.ledger.hub_started(t)
    for s in stations:
        send_state(hub, s["sid"])
    hub.writer.flush()
    from hub.console import register
    if "yizhan_console" not in hub.app.extensions:
        register(hub.app, hub)
    hub.app.extensions["yizhan_console"].users.add("desk", console_app.PASSWORD, "ops")
    return hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        hub = build(args.stations, Path(tmp))
        print(f"{args.stations} stations built in {time.perf_counter() - started:.1f} s")
        client = Browser(hub, "desk").client
        times: dict[str, list[float]] = {p: [] for p in (*PAGES, STATIC)}
        sizes: dict[str, int] = {}
        for _ in range(args.runs):
            for path in (*PAGES, STATIC):
                t0 = time.perf_counter()
                resp = client.get(path)
                times[path].append(time.perf_counter() - t0)
                assert resp.status_code == 200, (path, resp.status_code)
                sizes[path] = len(resp.data)
                resp.close()
        print(f"| {args.stations} stations, {args.runs} runs | median ms | p95 ms | KiB |")
        print("|---|---|---|---|")
        for path, ts in times.items():
            ts.sort()
            p95 = ts[min(len(ts) - 1, round(0.95 * (len(ts) - 1)))]
            print(f"| `{path}` | {statistics.median(ts) * 1000:.1f} | {p95 * 1000:.1f} "
                  f"| {sizes[path] // 1024} |")
        hub.close()


if __name__ == "__main__":
    main()
