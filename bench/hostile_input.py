"""Hostile input at the hub: the fuzzing counts for docs/benchmarks.md, "Hostile input".

The strategies of tests/test_hub_hostile.py, run with many more examples than CI
runs, into the message handler of a real Hub (``Ingest._message``, as paho's
network thread calls it) on a private Mosquitto and a SQLite file:

- ``valid``: messages the contract accepts, any value in its range (ts to 10**18,
  seq to 2**53, made-up sids, every event type and its data);
- ``broken``: a contract example with one to three things changed;
- ``raw``: arbitrary bytes, JSON of any shape, edge numbers in the envelope,
  deep nesting, payloads over the 64 KiB limit, on a good topic;
- ``topic``: any station part under the hub's subscriptions, topics not UTF-8.

Counted per category: examples run, outcomes (applied / duplicate / stale /
refused by reason), crashes (an exception out of the handler, a message counted
``apply_failed``, an ERROR logged, a database write dropped), log lines. Then
the memory a made-up station id costs (tracemalloc, 10 000 ids, after 200 of
warm-up) in three cases: refused as unknown (``accept_unknown_stations:
false``), an invalid payload from each (default), a valid Status from each
(default: each becomes a station — the reason to list the fleet and refuse the
rest). No baseline: these are counts, not a speed. On SQLite and on
PostgreSQL (a database made for the run on ``--pg``, dropped after): what one
store takes the other may refuse (U+0000 in a text).

    .venv/bin/python bench/hostile_input.py              # ~6 min, 2 x 4 x 5 000 examples
    .venv/bin/python bench/hostile_input.py --examples 500 --stores pg
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest  # noqa: E402  (its pg_database)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protocol import examples  # noqa: E402
from protocol.topics import Kind, topic  # noqa: E402
from tests.harness.mosquitto import Broker  # noqa: E402
from tests.test_hub_hostile import (  # noqa: E402
    KINDS,
    any_topic,
    broken_message,
    counts,
    diff,
    handle,
    raw_payload,
    valid_message,
)
from tests.test_hub_ingest import example, healthy, start_hub  # noqa: E402

PG_DEFAULT = hub_ingest.PG_DEFAULT

CATEGORIES = {
    "valid": valid_message().map(lambda t: (t[0].encode(), t[1])),
    "broken": broken_message().map(lambda t: (t[0].encode(), t[1])),
    "raw": st.tuples(st.sampled_from(KINDS).map(lambda k: topic(examples.SID, k).encode()),
                     raw_payload()),
    "topic": st.tuples(any_topic(), raw_payload() | st.just(json.dumps(
        examples.example("status")).encode())),
}
MADE_UP = 10_000


class Tally(logging.Handler):
    """Counts the hub's log lines by level, keeps the first few errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines = collections.Counter()
        self.by_logger: collections.Counter = collections.Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[record.levelname] += 1
        self.by_logger[record.name] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 5:
            self.errors.append(self.format(record)[:400])


def fuzz(hub, name: str, strategy, n: int, tally: Tally) -> dict:
    outcomes: collections.Counter = collections.Counter()
    crashes: list[str] = []
    run = [0]
    lines_before = sum(tally.lines.values())

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy, st.booleans())
    def one(case, retain):
        topic_bytes, payload = case
        run[0] += 1
        before = counts(hub)
        try:
            handle(hub, topic_bytes, payload, retain=retain)
        except Exception as err:  # what the property test would fail on
            crashes.append(f"{type(err).__name__}: {err} on {topic_bytes[:60]!r}")
            return
        changed = diff(before, counts(hub))
        refused = [k[1] for k in changed if k[0] == "refused"]
        taken = [k[1] for k in changed if k[0] == "messages"]
        if refused:
            outcomes["refused " + refused[0].split("/")[1]] += 1
        elif taken:
            outcomes[taken[0].split("/")[1]] += 1
        else:
            outcomes["not a station's topic"] += 1

    started = time.perf_counter()
    one()
    return {"category": name, "examples": run[0], "outcomes": dict(outcomes),
            "crashes": len(crashes) + outcomes.get("refused apply_failed", 0),
            "crash_samples": crashes[:5],
            "log_lines": sum(tally.lines.values()) - lines_before,
            "seconds": round(time.perf_counter() - started, 1)}


def per_id(hub, send) -> float:
    for i in range(200):
        send(i)
    hub.writer.flush(30)
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        for i in range(200, 200 + MADE_UP):
            send(i)
        hub.writer.flush(30)
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in end.compare_to(start, "filename")) / MADE_UP


def memory(broker: Broker, workdir: Path) -> dict:
    out = {}

    def status(hub, prefix):
        def send(i: int) -> None:
            sid = f"yh-{prefix}-{i}"
            handle(hub, topic(sid, Kind.STATUS).encode(),
                   json.dumps(example("status", sid=sid)).encode())
        return send

    cases = {
        "refused as unknown": ({"accept_unknown_stations": False,
                                "stations": [{"sid": examples.SID, "name": "known"}]},
                               lambda hub: status(hub, "u")),
        "invalid payload each": ({}, lambda hub: lambda i: handle(
            hub, f"yizhan/v1/yh-i-{i}/state".encode(), b'{"v":1,')),
        "valid Status each (becomes a station)": ({}, lambda hub: status(hub, "v")),
    }
    for n, (label, (config, sender)) in enumerate(cases.items()):
        hub = start_hub(broker, f"sqlite:///{workdir / f'mem-{n}.db'}", **config)
        try:
            out[label] = round(per_id(hub, sender(hub)), 1)
        finally:
            hub.close()
    return out


def run_store(broker: Broker, url: str, examples_each: int) -> None:
    """The four categories on one hub on ``url``; prints the table."""
    tally = Tally()
    logging.getLogger("hub").addHandler(tally)
    hub = start_hub(broker, url)
    try:
        results = [fuzz(hub, name, strategy, examples_each, tally)
                   for name, strategy in CATEGORIES.items()]
        hub.writer.flush(30)
        after = {"writer_failed": hub.writer.failed, "healthy": healthy(hub),
                 "network_thread_alive": hub.ingest._client.loop_alive(),
                 "stations_made": len(hub.fleet.sids()),
                 "log_lines_by_logger": dict(tally.by_logger),
                 "error_lines": tally.errors}
    finally:
        hub.close()
        logging.getLogger("hub").removeHandler(tally)
    print(f"{'category':8} {'examples':>8} {'crashes':>7} {'log lines':>9} {'s':>6}  outcomes")
    for r in results:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"{r['category']:8} {r['examples']:8} {r['crashes']:7} {r['log_lines']:9} "
              f"{r['seconds']:6}  {shown}")
        for sample in r["crash_samples"]:
            print("   crash:", sample)
    print("after:", json.dumps(after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="per category")
    parser.add_argument("--stores", default="sqlite,pg",
                        help="sqlite, pg or both (comma-separated)")
    parser.add_argument("--pg", default=os.environ.get("YIZHAN_TEST_PG", PG_DEFAULT),
                        help="a PostgreSQL server where a database may be made")
    args = parser.parse_args()
    logging.getLogger("hub").propagate = False  # counted, not printed
    logging.getLogger("hub").addHandler(logging.NullHandler())  # not lastResort's stderr
    # A loaded machine makes the scheduler say it ran a job late: not the hub's words.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        if "sqlite" in stores:
            print("== SQLite")
            run_store(broker, f"sqlite:///{Path(tmp) / 'hub.db'}", args.examples)
        if "pg" in stores:
            with hub_ingest.pg_database(args.pg) as (url, why):
                print("== PostgreSQL")
                if url is None:
                    print("skipped:", why)
                else:
                    run_store(broker, url, args.examples)
        mem = memory(broker, Path(tmp))
    print("bytes kept per made-up station id (10 000 ids, SQLite):",
          json.dumps(mem, ensure_ascii=False))


if __name__ == "__main__":
    main()
