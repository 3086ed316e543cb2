"""Hub apply: the CPU the hub spends on one message, without a broker in the way.

The same contract payloads bench/hub_ingest.py's ratio run queues (1 000
stations: a birth, then States and events) are handed straight to the hub's
MQTT callback (``Ingest._message``: topic, decode and validation, the fleet,
the listeners — forecaster and alert engine —, the writer's ops), then the
writer is flushed and the engine's thread left to finish what it was noted.
Measured: CPU seconds of this process per message, and, as the baseline in the
same run, ``json.loads`` of the same payloads — the only work the ratio run's
bare subscriber does beyond paho. It says where the hub stands without paho and
without the broker's scheduling: a profile target, not a target of its own.

    .venv/bin/python bench/hub_apply.py             # ~20 s
    .venv/bin/python bench/hub_apply.py --pg        # on a fresh PostgreSQL database
    .venv/bin/python bench/hub_apply.py --profile   # and where the callback spends it (cProfile)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest  # noqa: E402  (its simulated stations)
from prometheus_client import CollectorRegistry  # noqa: E402

from hub.config import parse_hub_config  # noqa: E402
from hub.service import Hub  # noqa: E402


class Message:
    """What paho hands the callback: a topic, a payload, the retain and DUP flags."""

    __slots__ = ("dup", "payload", "retain", "topic")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload, self.retain, self.dup = topic, payload, False, False


def payloads(n_stations: int, rounds: int, seed: int) -> list[Message]:
    rng = random.Random(seed)
    stations = hub_ingest.make_stations(f"a{seed}", 0, n_stations, seed)
    now = int(time.time() * 1000)
    out = []
    for r in range(rounds):
        kind = hub_ingest.mix_kind(r)
        for st in stations:
            st.rev = max(st.rev, 1000)
            t, p, _ = (st.birth(now) if kind == "birth" else st.state(now, rng)
                       if kind == "state" else st.event(now, rng))
            out.append(Message(t, p))
    return out


def hub_run(msgs: list[Message], database: str, profile: cProfile.Profile | None) -> float:
    """CPU seconds per message for the hub to apply, store and evaluate ``msgs``
    (this process's: a PostgreSQL server's own work is not in it)."""
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "bench-apply"},
        "database": database, "http": {"host": "127.0.0.1", "port": 0}})
    hub = Hub(config, registry=CollectorRegistry())
    try:
        # What Hub.start does, but the MQTT client, which is never connected.
        hub.ledger.hub_started(hub.clock.ms())
        hub.engine.start()
        hub.fleet.broker_up(hub.clock.ms())
        gc.collect()
        gc.freeze()  # as Hub.run (start(tune_gc=True)) does after loading
        on_message = hub.ingest._message
        if profile is not None:
            profile.enable()
        c0 = time.process_time()
        for msg in msgs:
            on_message(None, None, msg)
        if not hub.writer.flush(120):
            raise RuntimeError("the writer did not commit")
        while True:  # the engine's thread: what it was noted
            with hub.engine._queue:
                if not hub.engine._dirty:
                    break
            time.sleep(0.005)
        # The scheduler's job (every 2 s in a running hub): the new States packed.
        hub.fleet.pack_states()
        spent = time.process_time() - c0
        if profile is not None:
            profile.disable()
        if hub.writer.failed:
            raise RuntimeError(f"the writer dropped {hub.writer.failed} ops")
        return spent / len(msgs)
    finally:
        hub.engine.close()
        hub.outbox.close()
        hub._close_store()
        gc.unfreeze()


def loads_run(msgs: list[Message]) -> float:
    c0 = time.process_time()
    for msg in msgs:
        json.loads(msg.payload)
    return (time.process_time() - c0) / len(msgs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20, help="messages per station (20)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--pg", nargs="?", const=hub_ingest.PG_DEFAULT, metavar="SERVER",
                   help=f"PostgreSQL instead of SQLite ({hub_ingest.PG_DEFAULT})")
    p.add_argument("--profile", action="store_true",
                   help="print the top of a cProfile of the callback (not of the "
                        "writer's or the engine's thread)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-apply-"))
    hub_us, base_us = [], []
    profile = cProfile.Profile() if args.profile else None
    for rep in range(args.reps):
        msgs = payloads(args.stations, args.rounds, rep)
        base_us.append(loads_run(msgs) * 1e6)
        prof = profile if rep == 0 else None
        if args.pg:
            with hub_ingest.pg_database(args.pg) as (url, why):
                if url is None:
                    raise SystemExit(f"PostgreSQL at {args.pg}: {why}")
                hub_us.append(hub_run(msgs, url, prof) * 1e6)
        else:
            db = f"sqlite:///{work / f'apply-{rep}.db'}"
            hub_us.append(hub_run(msgs, db, prof) * 1e6)
        print(f"[apply {rep + 1}/{args.reps}] {len(msgs)} messages: hub "
              f"{hub_us[-1]:.1f} µs, json.loads {base_us[-1]:.1f} µs of CPU a message",
              file=sys.stderr)
    hub_m, base_m = statistics.median(hub_us), statistics.median(base_us)
    print("| measure (CPU of this process a message, median of "
          f"{args.reps}) | hub | json.loads alone | ratio |")
    print("|---|---|---|---|")
    store = "PostgreSQL" if args.pg else "SQLite"
    print(f"| {args.stations} stations × {args.rounds} messages (births, States, events), "
          f"applied, stored ({store}), evaluated | {hub_m:.1f} µs ({1e6 / hub_m:,.0f} msg/s of one "
          f"core) | {base_m:.1f} µs | {hub_m / base_m:.1f} |")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
