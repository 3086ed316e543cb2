"""Several hub workers (issue 21, item 3): three ``yizhan hub`` processes sharing
the subscriptions (``mqtt.shared_group``) over one PostgreSQL, against one.

A private Mosquitto and a fresh PostgreSQL database a run. Publisher processes
(this file, ``--publish``) send every station's events (real contract payloads,
``protocol.messages``, consecutive seqs) at QoS 1 as fast as the broker takes
them; the clock runs from their start until the last event is stored
(``SELECT count(*) FROM events``). Runs, in one process tree, one after the
other:

* ``broker``: no hub, nobody subscribed — the publishers alone: the ceiling the
  broker and the publishers set on this machine;
* ``1 worker``: one ``yizhan hub`` (no shared group), the baseline;
* ``3 workers``: three ``yizhan hub`` processes, one shared group, the leader's
  sync and every worker's merges running as in production.

Reported: seconds, events a second, the ratio 3 workers / 1 worker (the
aggregate drain ratio) and / broker, replays asked (0: no worker asked for
what another stored), and how busy the machine's cores were.

    .venv/bin/python bench/hub_workers.py                 # about 2 minutes
    .venv/bin/python bench/hub_workers.py --stations 2000 --events 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest as hi  # noqa: E402  (the private broker, publishers, databases)
import sqlalchemy as sa  # noqa: E402

from protocol import messages as m  # noqa: E402
from protocol.topics import Kind, topic  # noqa: E402
from yizhan.broker import free_port  # noqa: E402

PUBLISHERS = 2


def publish(spec: dict) -> int:
    """A publisher process: its stations' events, built first, sent on "go"."""
    hi._die_with_parent()
    now = int(time.time() * 1000)
    msgs = []
    for seq in range(1, spec["events"] + 1):
        for n in range(spec["lo"], spec["hi"]):
            sid = f"bw-{n:06d}"
            ev = m.Event(sid, "b0e1c2d3", now, True, seq, "visit", {"count": 1})
            msgs.append((topic(sid, Kind.EVENT), m.encode(ev, validate=seq == 1)))
    print(json.dumps({"ready": len(msgs)}), flush=True)
    sys.stdin.readline()
    pub = hi.Publisher(spec["port"], f"bw-pub-{os.getpid()}")
    t0 = time.monotonic()
    for t, p in msgs:
        pub.publish(t, p, False)
    ok = pub.finish()
    print(json.dumps({"ok": ok, "seconds": time.monotonic() - t0}), flush=True)
    return 0


class Publishers:
    def __init__(self, port: int, stations: int, events: int) -> None:
        per = stations // PUBLISHERS
        self.procs = [subprocess.Popen(
            [sys.executable, __file__, "--publish", json.dumps(
                {"port": port, "lo": i * per, "hi": (i + 1) * per, "events": events})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for i in range(PUBLISHERS)]
        self.total = sum(json.loads(p.stdout.readline())["ready"] for p in self.procs)

    def go(self) -> None:
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def wait(self) -> float:
        out = [json.loads(p.stdout.readline()) for p in self.procs]
        for p in self.procs:
            p.wait(30)
        assert all(o["ok"] for o in out), out
        return max(o["seconds"] for o in out)


def cpu_busy() -> float:
    """Seconds the machine's cores were busy (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / os.sysconf("SC_CLK_TCK")


def broker_ceiling(port: int, stations: int, events: int) -> dict:
    """The publishers alone, nobody subscribed: how fast the broker and the
    publishers take the events in on this machine — what no hub can beat."""
    pubs = Publishers(port, stations, events)
    busy0, t0 = cpu_busy(), time.monotonic()
    pubs.go()
    sent = pubs.wait()
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "published_s": sent, "events": pubs.total,
            "cores_busy": (cpu_busy() - busy0) / seconds}


def hubs_run(port: int, url: str, workers: int, stations: int, events: int,
             work: Path) -> dict:
    procs, bases = [], []
    for i in range(workers):
        http = free_port()
        mqtt_cfg = {"host": "127.0.0.1", "port": port, "keepalive": 30,
                    "client_id": f"bw-hub-{i}"}
        if workers > 1:
            mqtt_cfg["shared_group"] = "hubs"
        cfg = work / f"hub-{workers}-{i}.yaml"
        cfg.write_text(json.dumps({"mqtt": mqtt_cfg, "database": url,
                                   "http": {"host": "127.0.0.1", "port": http}}))
        log = open(work / f"hub-{workers}-{i}.log", "ab")  # noqa: SIM115 - the child's
        procs.append(subprocess.Popen([sys.executable, "-m", "yizhan", "hub", "--config",
                                       str(cfg)], stdout=log, stderr=log,
                                      preexec_fn=hi._die_with_parent))
        bases.append(f"http://127.0.0.1:{http}")
        deadline = time.monotonic() + 60
        while True:  # one at a time: the first migrates the database
            try:
                with urllib.request.urlopen(f"{bases[-1]}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub {i} not healthy; see {work}")
            time.sleep(0.2)
    engine = sa.create_engine(url)
    pubs = Publishers(port, stations, events)

    def stored() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()

    busy0, t0 = cpu_busy(), time.monotonic()
    pubs.go()
    sent = pubs.wait()
    while stored() < pubs.total:
        if time.monotonic() - t0 > 600:
            raise RuntimeError(f"{stored()} of {pubs.total} stored after 600 s")
        time.sleep(0.1)
    seconds = time.monotonic() - t0
    busy = (cpu_busy() - busy0) / seconds
    time.sleep(12)  # past replay_after: would any worker ask for what another stored?
    with engine.connect() as conn:
        replays = conn.execute(sa.text(
            "SELECT count(*) FROM commands WHERE cmd = 'replay'")).scalar_one()
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)
    engine.dispose()
    return {"seconds": seconds, "published_s": sent, "events": pubs.total,
            "replays": replays, "cores_busy": busy}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--events", type=int, default=40, help="events a station (40)")
    p.add_argument("--pg", default=os.environ.get("YIZHAN_TEST_PG", hi.PG_DEFAULT))
    p.add_argument("--publish", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publish:
        return publish(json.loads(args.publish))
    work = Path(tempfile.mkdtemp(prefix="yz-bench-workers-"))
    broker, port = hi.start_mosquitto(work / "broker")
    res = {}
    try:
        res["broker"] = broker_ceiling(port, args.stations, args.events)
        for workers in (1, 3):
            with hi.pg_database(args.pg) as (url, why):
                if url is None:
                    raise SystemExit(f"PostgreSQL unavailable: {why}")
                res[f"{workers}"] = hubs_run(port, url, workers, args.stations, args.events,
                                             work)
    finally:
        hi.stop(broker)
    n = res["1"]["events"]
    print(f"{n} events ({args.stations} stations x {args.events}), "
          f"{PUBLISHERS} publisher processes, QoS 1, PostgreSQL; {os.cpu_count()} cores")
    print(f"{'run':<10} {'seconds':>8} {'events/s':>9} {'published in':>13} "
          f"{'cores busy':>10} {'replays':>8}")
    for name, label in (("broker", "broker"), ("1", "1 worker"), ("3", "3 workers")):
        r = res[name]
        print(f"{label:<10} {r['seconds']:8.1f} {n / r['seconds']:9.0f} "
              f"{r['published_s']:12.1f}s {r['cores_busy']:10.2f} "
              f"{r.get('replays', '-')!s:>8}")
    ratio = res["1"]["seconds"] / res["3"]["seconds"]
    ceiling = res["broker"]["seconds"] / res["3"]["seconds"]
    print(f"aggregate drain ratio 3 workers / 1 worker: {ratio:.2f}; "
          f"3 workers / broker alone: {ceiling:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
