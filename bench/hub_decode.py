"""Hub decode: how far decoding alone goes, in one process and in two, and what
the hub's MQTT client (hub/mqtt/bulk_client.py) changes.

The ceiling for the ingest ratio (bench/hub_ingest.py), and for splitting the
hub into decoder processes: subscribers that do what the hub's MQTT callback
does *before* the fleet — the topic parsed, the payload decoded and validated by
``protocol.messages.decode`` — and nothing after it (no fleet, no store, no
alerting). Method as the ratio run: a private Mosquitto, a persistent session
per subscriber registered with the hub's subscriptions, 20 000 messages of 1 000
stations queued while they are away, each drain timed from CONNACK to the last
message. Every subscriber is its own process; with two, both drain the whole
queue at once (each its own session), and the rate is both together — what two
decoder processes behind a ``$share/`` subscription could take in, the broker
sending twice as much (so, if anything, low). Baseline in the same run: one
process that only ``json.loads`` (the ratio run's baseline). Each is run with
bare paho (as the baseline) and with the hub's ``BulkClient``: the latter is
what the hub's ingest pays for paho itself.

    .venv/bin/python bench/hub_decode.py            # ~1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import hub_ingest  # noqa: E402  (its broker, publishers and stations)

from protocol import messages as m  # noqa: E402
from protocol.topics import Kind, parse_topic  # noqa: E402

STATION_KINDS = (Kind.STATUS, Kind.STATE, Kind.EVENT, Kind.CMD_RESULT)


def subscriber(port: int, client_id: str, expected: int, decode: bool, bulk: bool) -> None:
    """A child process: register, say ready, drain on "go", print the seconds."""
    from hub.mqtt.bulk_client import BulkClient

    def decode_one(msg) -> None:
        where = parse_topic(msg.topic)
        if where.kind in STATION_KINDS:
            m.decode(where.kind, msg.payload, topic_sid=where.sid)

    sub = hub_ingest.Baseline(port, client_id, work=decode_one if decode else None,
                              client_class=BulkClient if bulk else hub_ingest.mqtt.Client)
    sub.register()
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        seconds, ok = sub.drain(expected, timeout=300), True
    except RuntimeError:
        seconds, ok = 0.0, False
    print(json.dumps({"ok": ok, "seconds": seconds, "n": sub.count}), flush=True)


def drain(processes: int, decode: bool, bulk: bool, n_msgs: int, n_stations: int,
          seed: int) -> float:
    """Messages a second that ``processes`` subscribers take in together."""
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-decode-"))
    broker, port = hub_ingest.start_mosquitto(work)
    expected = n_msgs + 2 * n_stations  # and the retained Status and State
    procs = []
    try:
        for i in range(processes):
            cid = f"bench-decode-{hub_ingest.RUN}-{seed}-{i}-{int(decode)}-{int(bulk)}"
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--subscriber", str(port), cid, str(expected),
                 "decode" if decode else "loads", "bulk" if bulk else "bare"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a subscriber did not register")
        w = hub_ingest.Workers([{"mode": "mix", "phase": "mix", "port": port, "seed": seed,
                                 "client_id": f"bench-decode-pub-{hub_ingest.RUN}-{seed}",
                                 "prefix": f"d{seed}", "lo": 0, "hi": n_stations,
                                 "rounds": n_msgs // n_stations}])
        w.go()
        w.wait()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        if not all(r["ok"] for r in results):
            raise RuntimeError(f"a subscriber did not get every message: {results}")
        return processes * expected / max(r["seconds"] for r in results)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        hub_ingest.stop(broker)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        port, cid, expected, what, client = sys.argv[2:7]
        subscriber(int(port), cid, int(expected), what == "decode", client == "bulk")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    #: key: (processes, decode, the hub's BulkClient), what the row says
    runs = {"base": (1, False, False, "baseline: one process, bare paho + json.loads"),
            "bulk": (1, False, True, "one process, the hub's client + json.loads"),
            "one": (1, True, False, "one process, bare paho + decode and validate"),
            "one_bulk": (1, True, True, "one process, the hub's client + decode and validate"),
            "two_bulk": (2, True, True, "two such processes together")}
    rows: dict[str, list[float]] = {key: [] for key in runs}
    for rep in range(args.reps):
        for key, (n, decode, bulk, _) in runs.items():
            rows[key].append(drain(n, decode, bulk, args.messages, 1000, rep))
        print(f"[decode {rep + 1}/{args.reps}] "
              + ", ".join(f"{key} {rows[key][-1]:.0f}" for key in runs) + " msg/s",
              file=sys.stderr)
    base = statistics.median(rows["base"])
    print(f"| drained, {args.messages + 2000} queued messages (median of {args.reps}) "
          "| msg/s | ÷ baseline |")
    print("|---|---|---|")
    print(f"| {runs['base'][3]} | {base:,.0f} | 1 |")
    for key, (*_, name) in runs.items():
        if key == "base":
            continue
        ratios = [r / b for r, b in zip(rows[key], rows["base"], strict=True)]
        print(f"| {name} | {statistics.median(rows[key]):,.0f} | "
              f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}–{max(ratios):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
