"""Hub memory: what one station costs the hub, and where (issue 21).

A ``Hub`` without a broker (built as bench/hub_apply.py builds it, SQLite in a
temp dir, the alert engine and forecaster running) takes N stations' messages
straight into the ingest's MQTT callback: a birth, a State, two events, a
State, an event each (contract payloads from bench/hub_ingest.py's simulated
stations). Measured: the process's RSS before and after, a station's share;
with ``--trace`` tracemalloc's allocations still held, by source line (what
each part of the hub keeps a station); with ``--read`` a reader of every
station (``Fleet.stations()``, what a /metrics scrape does) first.

    .venv/bin/python bench/hub_memory.py 20000           # ~1 min
    .venv/bin/python bench/hub_memory.py 4000 --trace    # ~2 min (tracemalloc is slow)
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest  # noqa: E402  (its simulated stations)
from hub_apply import Message  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from hub.config import parse_hub_config  # noqa: E402
from hub.service import Hub  # noqa: E402
from yizhan import heap  # noqa: E402

ROUNDS = ("birth", "state", "event", "event", "state", "event")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stations", type=int, nargs="?", default=20_000)
    p.add_argument("--trace", action="store_true", help="tracemalloc by source line")
    p.add_argument("--read", action="store_true", help="read every station once at the end")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    n = args.stations
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-memory-"))
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "bench-memory"},
        "database": f"sqlite:///{work / 'hub.db'}", "http": {"host": "127.0.0.1", "port": 0}})
    hub = Hub(config, registry=CollectorRegistry())
    hub.ledger.hub_started(hub.clock.ms())
    hub.engine.start()
    hub.fleet.broker_up(hub.clock.ms())
    rng = random.Random(1)
    stations = hub_ingest.make_stations("st", 0, n, 1)
    on_message = hub.ingest._message
    gc.collect()
    rss0, objects0 = rss_mb(), len(gc.get_objects())
    if args.trace:
        tracemalloc.start(1)
    t0 = time.monotonic()
    for kind in ROUNDS:
        now = int(time.time() * 1000)
        for st in stations:
            t, payload, _ = (st.birth(now) if kind == "birth" else st.state(now, rng)
                             if kind == "state" else st.event(now, rng))
            on_message(None, None, Message(t, payload))
        hub.writer.flush(300)
    while True:  # the engine's thread: what it was noted
        with hub.engine._queue:
            if not hub.engine._dirty:
                break
        time.sleep(0.01)
    hub.writer.flush(300)
    hub.fleet.pack_states()  # what the running hub's scheduler does every 2 s
    if args.read:
        hub.fleet.stations()
    gc.collect()
    heap.give_back()  # as the hub's scheduled collection does, once a minute
    rss1, objects1 = rss_mb(), len(gc.get_objects())
    print(f"{n} stations × {len(ROUNDS)} messages in {time.monotonic() - t0:.0f} s: RSS "
          f"{rss0:.0f} → {rss1:.0f} MB, **{(rss1 - rss0) * 1024 * 1024 / n:.0f} B a station**; "
          f"{(objects1 - objects0) / n:.1f} objects the collector tracks a station")
    if args.trace:
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("lineno")
        print(f"tracemalloc: {sum(s.size for s in stats) / n:.0f} B a station still held; "
              f"the largest by source line:")
        for s in stats[:args.top]:
            frame = s.traceback[0]
            where = frame.filename.replace(str(REPO) + "/", "")
            print(f"{s.size / n:8.0f} B {s.count / n:6.2f} objects  {where}:{frame.lineno}")
    hub.engine.close()
    hub.outbox.close()
    hub._close_store()
    return 0


if __name__ == "__main__":
    sys.exit(main())
