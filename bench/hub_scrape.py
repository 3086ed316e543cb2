"""Hub scrape: what ``/metrics`` costs at 100 000 stations (issues 15 and 21).

A hub (no broker: its MQTT callback is handed the messages, as bench/hub_apply.py
does) takes a birth and a State from a share (``--down``) of ``--stations``
simulated stations, then its clock moves on past the silence allowance, the
rest send theirs and the sweep marks the first ones down (an outage each, so
the ledger's accounts have points to count).
Then scrape after scrape, 15 s apart on the hub's clock. Between two scrapes a
quarter of the stations send a new State (a State at least every 60 s,
contract §5), part of them while the scrape runs: a thread hands the hub
``--rate`` States a second (100 000 stations' heartbeats: 1 700/s), and how
late each is applied, against its schedule, is the ingest's lag under the
scrape (the fleet's lock and the GIL are what a scrape takes from the ingest).

Measured in the same run: ``GET /metrics`` as served (``exposition``,
hub/http/exposition.py: the text written directly) and ``generate_latest`` of
the same registry (prometheus_client's object per line: what ``/metrics``
served before issue 21), CPU and wall seconds and bytes; the first scrape
(every account opened, every forecast and State read). ``--issue15`` also
times ``generate_latest`` without issue 15's collectors (the figures of
issue 15). Run from another checkout's bench/ (``--repo``), the same bench
measures that code: what it lacks (``exposition``) it measures as
``generate_latest``.

    .venv/bin/python bench/hub_scrape.py                    # 100 000 stations, ~2 min
    .venv/bin/python bench/hub_scrape.py --reps 1           # the same from a checkout before
                                                            # issue 21 (~2 min)
    .venv/bin/python bench/hub_scrape.py --stations 20000
    .venv/bin/python bench/hub_scrape.py --profile          # cProfile of one scrape
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest  # noqa: E402  (its simulated stations)
from hub_apply import Message, payloads  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from hub.alerting.durations import AlertDurations  # noqa: E402
from hub.config import parse_hub_config  # noqa: E402
from hub.http.uptime_metrics import UptimeCollector  # noqa: E402
from hub.mqtt.broker_stats import BrokerStats  # noqa: E402
from hub.service import GC_GEN2_THRESHOLD, Hub  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

try:
    from hub.http.exposition import exposition
except ImportError:  # a checkout before issue 21: /metrics was generate_latest
    exposition = generate_latest

ISSUE15 = (UptimeCollector, AlertDurations, BrokerStats)
INTERVAL_S = 15  # Prometheus's scrape interval
HEARTBEAT_S = 60  # a State at least this often (contract §5)


class Feeder:
    """New States for the stations, handed to the hub's callback at ``rate`` a
    second on a thread of their own while a scrape runs, or all at once."""

    def __init__(self, hub: Hub, n: int, rate: float) -> None:
        self.on_message = hub.ingest._message
        self.stations = hub_ingest.make_stations("a0", 0, n, 0)  # payloads()' stations
        for st in self.stations:
            st.rev = 10_000  # newer than every State payloads() made
        self.rng = random.Random(1)
        self.next = 0
        self.rate = rate
        self.lags: list[float] = []

    def states(self, count: int) -> list[Message]:
        now = int(time.time() * 1000)
        out = []
        for _ in range(count):
            st = self.stations[self.next % len(self.stations)]
            self.next += 1
            t, p, _ = st.state(now, self.rng)
            out.append(Message(t, p))
        return out

    def during(self, fn, msgs: list[Message]):
        """``fn()`` while ``msgs`` are fed at ``rate``; what it returned and the
        States it left unfed."""
        stop = threading.Event()
        fed = [0]

        def feed() -> None:
            t0 = time.perf_counter()
            for i, msg in enumerate(msgs):
                due = t0 + i / self.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if stop.is_set():
                    return
                self.on_message(None, None, msg)
                self.lags.append(time.perf_counter() - due)
                fed[0] = i + 1

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        try:
            out = fn()
        finally:
            stop.set()
            thread.join()
        return out, msgs[fed[0]:]


def timed(fn) -> tuple[float, float, int]:
    """(wall s, CPU s of this thread — the scrape's, not the feeder's —, bytes)
    of ``fn()``."""
    c0, t0 = time.thread_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.thread_time() - c0, len(out)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=3, help="scrapes of /metrics as served")
    p.add_argument("--old-reps", type=int, default=1,
                   help="scrapes through generate_latest (20 s each at 100 000)")
    p.add_argument("--down", type=float, default=0.1, help="share of stations gone silent")
    p.add_argument("--rate", type=float, default=None,
                   help="States a second during a scrape (default: stations / 60 s)")
    p.add_argument("--issue15", action="store_true",
                   help="also generate_latest without issue 15's collectors")
    p.add_argument("--flask", action="store_true", help="also GET /metrics (test client)")
    p.add_argument("--profile", action="store_true", help="cProfile one /metrics scrape")
    args = p.parse_args()
    rate = args.rate or args.stations / HEARTBEAT_S
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-scrape-"))
    clock = ManualClock(time.time())
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "bench-scrape"},
        "database": f"sqlite:///{work / 'hub.db'}", "http": {"host": "127.0.0.1", "port": 0}})
    hub = Hub(config, clock=clock, registry=CollectorRegistry())
    rows: list[tuple[str, str, str, str, str]] = []
    threshold = gc.get_threshold()
    try:
        t_setup = time.perf_counter()
        hub.ledger.hub_started(clock.ms())
        hub.fleet.broker_up(clock.ms())
        msgs = payloads(args.stations, 2, 0)  # a birth and a State each
        births, states = msgs[:args.stations], msgs[args.stations:]
        del msgs
        # A share of the stations is heard, and then no more: ten minutes on,
        # the sweep marks them down (an outage each); the rest come online then.
        silent = int(args.stations * args.down)
        for msg in (*births[:silent], *states[:silent]):
            hub.ingest._message(None, None, msg)
        clock.advance(600)
        for msg in (*births[silent:], *states[silent:]):
            hub.ingest._message(None, None, msg)
        del births, states
        hub.writer.flush(300)
        down = hub.fleet.sweep_silent(clock.ms())
        hub.ledger.hub_alive(clock.ms())
        hub.writer.flush(300)
        hub.fleet.pack_states()
        feeder = Feeder(hub, args.stations, rate)
        per_interval = int(args.stations * INTERVAL_S / HEARTBEAT_S)
        gc.collect()
        gc.freeze()  # and full collections rare, as Hub.start(tune_gc=True) has them
        gc.set_threshold(*gc.get_threshold()[:2], GC_GEN2_THRESHOLD)
        setup = time.perf_counter() - t_setup

        def scrape(fn) -> tuple[float, float, int, list[float]]:
            """One interval: the clock moves on, a scrape while States come,
            the rest of the interval's States; (wall, CPU, bytes, lags)."""
            clock.advance(INTERVAL_S)
            hub.ledger.hub_alive(clock.ms())
            states = feeder.states(per_interval)
            feeder.lags = []
            (wall, cpu, size), rest = feeder.during(lambda: timed(fn), states)
            lags = feeder.lags
            for msg in rest:
                hub.ingest._message(None, None, msg)
            hub.fleet.pack_states()
            return wall, cpu, size, lags

        def row(name: str, runs: list[tuple[float, float, int, list[float]]]) -> None:
            lags = [lag for r in runs for lag in r[3]]
            rows.append((name, f"{statistics.median(r[0] for r in runs):.2f}",
                         f"{statistics.median(r[1] for r in runs):.2f}",
                         f"{runs[-1][2] / 1e6:.1f} M",
                         f"{pct(lags, 0.99) * 1000:.0f} / {max(lags, default=0) * 1000:.0f} ms"))

        served = lambda: exposition(hub.registry)  # noqa: E731
        row("first scrape as served (every State, account, forecast read)",
            [scrape(served)])
        row("`generate_latest` of the same registry (an object per line)",
            [scrape(lambda: generate_latest(hub.registry)) for _ in range(args.old_reps)])
        row("`/metrics` as served (`exposition`)", [scrape(served) for _ in range(args.reps)])
        if args.flask:
            client = hub.app.test_client()
            row("GET /metrics through Flask's test client",
                [scrape(lambda: client.get("/metrics").get_data())])
        if args.issue15:
            before = CollectorRegistry()
            for collector in list(hub.registry._collector_to_names):
                if not isinstance(collector, ISSUE15):
                    before.register(collector)
            row("`generate_latest` without issue 15's collectors",
                [scrape(lambda: generate_latest(before))])
        quiet: list[float] = []
        feeder.lags = quiet
        feeder.during(lambda: time.sleep(2), feeder.states(int(2 * rate)))
        rows.append(("no scrape (the feeder alone, 2 s)", "", "", "",
                     f"{pct(quiet, 0.99) * 1000:.0f} / {max(quiet, default=0) * 1000:.0f} ms"))
        if args.profile:
            prof = cProfile.Profile()
            clock.advance(INTERVAL_S)
            prof.enable()
            exposition(hub.registry)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        hub.engine.close()
        hub.outbox.close()
        hub._close_store()
        gc.unfreeze()
        gc.set_threshold(*threshold)
    print(f"{args.stations} stations ({len(down)} down once), setup {setup:.0f} s, "
          f"{per_interval} new States an interval, {rate:.0f}/s during a scrape; "
          "medians:")
    print("| scrape | wall s | CPU s (its thread) | bytes | ingest lag p99 / max |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
