"""The notification outbox drained by several hub workers (issue 21, item 3).

A backlog of webhook notifications on a fresh PostgreSQL database, drained by
one worker, then (the same backlog again, in the same run) by three: each
worker is what a ``yizhan hub`` process has for it — its own Store (pool), its
own Writer thread, its own Outbox with one sender thread per notifier and the
shared robot pace — all in this process. The receiver is a real HTTP server on
loopback answering each request after ``--latency`` ms (a chat platform's
answer takes 50–300 ms from a hub in China; 50 by default); its notifiers'
``limits:`` take everything (``per_minute: 10000``), so nothing is held for a
digest.

Reported: seconds to drain, deliveries a second, the ratio three workers / one
(the baseline, measured in the same run), and the check that matters more than
speed: every delivery id heard once.

What to expect: a notifier's queue is sent in order, one request at a time,
whichever worker sends it (a resolved never overtakes its firing), so more
workers do not send one notifier's queue faster; with several notifiers one
worker already sends them in parallel (a thread each). The ratio says what the
claims and the shared locks cost or gain, not a speed-up.

    .venv/bin/python bench/notify_workers.py
    .venv/bin/python bench/notify_workers.py --notifiers 8 --per-notifier 100 --latency 100
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from hub.alerting.acklink import AckLinks  # noqa: E402
from hub.alerting.notify import Outbox, build_notifiers  # noqa: E402
from hub.alerting.notify.shared_pace import SharedPacer  # noqa: E402
from hub.config import NotifierSpec  # noqa: E402
from hub.config.notifiers import NotifyLimits  # noqa: E402
from hub.storage.schema import notifications  # noqa: E402
from hub.storage.store import Store  # noqa: E402
from hub.storage.writer import Writer  # noqa: E402
from yizhan.clock import SYSTEM_CLOCK  # noqa: E402

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-webhook-secret-0123456789"


class Receiver:
    """Takes every POST after ``latency`` seconds; keeps each delivery id heard."""

    def __init__(self, latency: float) -> None:
        self.heard: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(latency)
                with receiver.lock:
                    receiver.heard.append(self.headers.get("X-Yizhan-Delivery") or "")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def pg_database(server: str):
    """A fresh database on ``server`` for the run, dropped after."""
    import psycopg
    from psycopg import sql

    admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    name = "yz_bench_" + secrets.token_hex(5)
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))
        admin.close()


class Worker:
    def __init__(self, url: str, specs: list[NotifierSpec], seed: int) -> None:
        self.store = Store(url)
        self.writer = Writer(self.store).start()
        self.outbox = Outbox(self.store, self.writer, SYSTEM_CLOCK, build_notifiers(specs),
                             acklinks=AckLinks(b"k" * 32, "https://hub.example.cn"),
                             rng=random.Random(seed), registry=CollectorRegistry(),
                             pacer=SharedPacer(self.store, SYSTEM_CLOCK), poll=0.2)

    def close(self) -> None:
        self.outbox.close()
        self.writer.close()
        self.store.close()


def alert(n: int) -> dict[str, Any]:
    return {"id": f"a-{n:016x}", "rule": "water_low", "sid": f"yh-b-{n % 500:03d}",
            "severity": "warning", "state": "firing", "summary": "water low",
            "value": {"level": 0.1}, "started_at": SYSTEM_CLOCK.ms(),
            "acked_at": None, "resolved_at": None}


def drain(url: str, specs: list[NotifierSpec], per: int, workers: int,
          receiver: Receiver) -> dict[str, float]:
    """Store the backlog (senders not started), then start ``workers`` and time
    them until every row is delivered."""
    made = [Worker(url, specs, seed=i) for i in range(workers)]
    try:
        with made[0].store.engine.begin() as conn:
            conn.execute(notifications.delete())
        for n in range(per):
            a = alert(n)
            for s in specs:
                made[0].outbox.enqueue(s.name, "firing", a, {"sid": a["sid"], "name": a["sid"]})
        total = per * len(specs)
        with receiver.lock:
            receiver.heard.clear()
        started = time.monotonic()
        for w in made:
            w.outbox.start()
        q = sa.select(sa.func.count()).select_from(notifications) \
            .where(notifications.c.delivered_ms.is_not(None))
        while True:
            with made[0].store.engine.connect() as conn:
                if conn.execute(q).scalar() >= total:
                    break
            if time.monotonic() - started > 600:
                raise SystemExit("not drained in 10 minutes")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        time.sleep(0.5)  # a row sent twice would be heard by now
        with receiver.lock:
            heard = list(receiver.heard)
        return {"seconds": seconds, "rate": total / seconds, "total": total,
                "heard": len(heard), "distinct": len(set(heard))}
    finally:
        for w in made:
            w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg", default=os.environ.get("YIZHAN_TEST_PG", PG_DEFAULT))
    p.add_argument("--notifiers", type=int, default=4)
    p.add_argument("--per-notifier", type=int, default=100)
    p.add_argument("--latency", type=float, default=50.0, help="receiver's answer, ms")
    p.add_argument("--workers", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    receiver = Receiver(args.latency / 1000)
    # A ticket system's webhook, configured to take everything (the most
    # `limits:` allows): the rate limits would hold most of a backlog for a
    # digest five minutes later, which measures the limits, not the workers.
    wide = NotifyLimits(per_station=10_000, per_minute=10_000)
    specs = [NotifierSpec(name=f"ops-{i}", type="webhook", url=receiver.url(f"ops-{i}"),
                          secret=SECRET, timeout=5.0, limits=wide)
             for i in range(args.notifiers)]
    try:
        import psycopg

        psycopg.connect(args.pg, connect_timeout=3).close()
    except Exception as err:  # make bench runs every bench: say why, do not fail
        print(f"skipped: PostgreSQL at {sa.make_url(args.pg).render_as_string()} "
              f"unreachable ({type(err).__name__})")
        receiver.close()
        return
    try:
        with pg_database(args.pg) as url:
            print(f"{args.notifiers} webhook notifiers × {args.per_notifier} notifications, "
                  f"receiver answering after {args.latency:g} ms, PostgreSQL; "
                  f"{os.cpu_count()} CPUs")
            one = drain(url, specs, args.per_notifier, 1, receiver)
            many = drain(url, specs, args.per_notifier, args.workers, receiver)
    finally:
        receiver.close()
    for label, r in (("1 worker", one), (f"{args.workers} workers", many)):
        print(f"  {label:10s} {r['seconds']:6.2f} s  {r['rate']:7.1f} deliveries/s  "
              f"heard {r['heard']} of {r['total']}, {r['distinct']} distinct ids")
    print(f"  ratio {args.workers} workers / 1: {many['rate'] / one['rate']:.2f} "
          f"(floor per notifier: {1000 / args.latency:.0f}/s)")
    for r in (one, many):
        if r["heard"] != r["total"] or r["distinct"] != r["total"]:
            raise SystemExit("a delivery was heard twice or not at all")


if __name__ == "__main__":
    main()
