"""``yizhan sim fleet``: arguments, the live display, the summary."""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import threading

from firmware.sim.fleet.clients import Fleet, Options, check_faults, identity, station_ids
from firmware.sim.fleet.faults import FaultError, parse_fault
from firmware.sim.fleet.truth import Truth
from yizhan.clock import SYSTEM_CLOCK

MAX_STATIONS = 100_000
MAX_PROCESSES = 256
EXIT_USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--stations", type=int, default=10, help=f"1 to {MAX_STATIONS} (default 10)")
    p.add_argument("--prefix", default="sim-", help="station ids are PREFIX00001... (default sim-)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to run (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated time per wall second for riders, water and random "
                        "faults (default 1)")
    p.add_argument("--visits", type=float, default=6.0,
                   help="rider visits per station per hour, the day's mean (default 6)")
    p.add_argument("--ml-per-visit", type=float, default=300.0, help="water drawn (default 300)")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="State heartbeat, seconds, at most 60 (default 60)")
    p.add_argument("--keepalive", type=int, default=60, help="MQTT keepalive (default 60)")
    p.add_argument("--fault", action="append", default=[], metavar="KIND:SID@S[+S]",
                   help="a scripted fault (repeatable): power_cut, network_cut, board_jam, "
                        "sensor_failure, tamper")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="random faults per station per simulated day (default 0)")
    p.add_argument("--connect-rate", type=float, default=200.0,
                   help="new connections a second (default 200)")
    p.add_argument("--username", default="{sid}",
                   help="MQTT username; {sid} is replaced (default {sid})")
    p.add_argument("--password-file", metavar="FILE",
                   help="the MQTT password, first line of FILE (never on the command line)")
    p.add_argument("--tls", action="store_true", help="TLS to the broker")
    p.add_argument("--cafile", help="CA certificate(s) for the broker's (implies --tls)")
    p.add_argument("--cert", help="client certificate (one for every station)")
    p.add_argument("--key", help="client key")
    p.add_argument("--identities", metavar="DIR",
                   help="each station's own certificate and key, from yizhan provision's "
                        "secrets directory (DIR/stations/<sid>/<sid>.crt and .key; "
                        "implies --tls): a broker that maps certificates to sids")
    p.add_argument("--bind", action="append", default=[], metavar="ADDR",
                   help="source address, repeatable, used in turn (past ~28 000 "
                        "connections from one address to one broker port)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--truth", metavar="FILE", help="write the ground-truth log (JSON lines)")
    p.add_argument("--quiet", action="store_true", help="no live display")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="split the stations into N contiguous shards, one simulator "
                        "process each (same sids and epochs as one process), with one "
                        "display, one --truth log and one summary; past one process's "
                        "open-file limit and CPU (default 1)")


def _options(a: argparse.Namespace) -> Options:
    def bad(text: str) -> None:
        raise FaultError(text)

    # A child of --processes holds stations first .. first+stations-1 of total.
    first, total = getattr(a, "shard", None) or (1, a.stations)
    if not 1 <= total <= MAX_STATIONS:
        bad(f"--stations must be 1 to {MAX_STATIONS}, got {total}")
    if not 1 <= a.processes <= min(MAX_PROCESSES, total):
        bad(f"--processes must be 1 to {MAX_PROCESSES} and at most --stations, "
            f"got {a.processes}")
    if not 1 <= a.port <= 65535:
        bad(f"--port must be 1 to 65535, got {a.port}")
    if not 0 < a.speed <= 100_000:
        bad(f"--speed must be above 0 and at most 100000, got {a.speed}")
    if not 0 <= a.visits <= 3600:
        bad(f"--visits must be 0 to 3600 an hour, got {a.visits}")
    if not 0 <= a.ml_per_visit <= 20_000:
        bad(f"--ml-per-visit must be 0 to 20000, got {a.ml_per_visit}")
    if not 1 <= a.heartbeat <= 60:
        bad(f"--heartbeat must be 1 to 60 s (contract §5), got {a.heartbeat}")
    if not 1 <= a.keepalive <= 65535:
        bad(f"--keepalive must be 1 to 65535, got {a.keepalive}")
    if not 0 <= a.fault_rate <= 1000:
        bad(f"--fault-rate must be 0 to 1000 a day, got {a.fault_rate}")
    if not 0 < a.connect_rate <= 100_000:
        bad(f"--connect-rate must be above 0 and at most 100000, got {a.connect_rate}")
    if not 0 <= a.duration <= 10 ** 7:
        bad(f"--duration must be 0 to 10000000 s, got {a.duration}")
    if len(a.prefix) > 32 - len(str(total)) or not all(
            ch.isdigit() or ch == "-" or "a" <= ch <= "z" for ch in a.prefix) or \
            not a.prefix or a.prefix[0] == "-":
        bad(f"--prefix {a.prefix[:40]!r}: lowercase letters, digits and '-', starting "
            "with a letter or digit, short enough for a 32-character sid")
    password = None
    if a.password_file:
        try:
            with open(a.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as err:
            bad(f"--password-file: {err}")
    if a.identities:
        if a.cert or a.key:
            bad("--identities gives each station its own certificate: not with --cert/--key")
        missing = [sid for sid in station_ids(a.prefix, total, first, a.stations)
                   if not all(p.is_file() for p in identity(a.identities, sid))]
        if missing:
            cert, _ = identity(a.identities, missing[0])
            bad(f"--identities: no certificate and key for {len(missing)} of "
                f"{a.stations} stations, the first {missing[0]} ({cert}); "
                f"yizhan provision --secrets {a.identities} {missing[0]} … makes them")
    return Options(
        host=a.host, port=a.port, stations=a.stations, prefix=a.prefix, keepalive=a.keepalive,
        heartbeat=a.heartbeat, visits_per_hour=a.visits, ml_per_visit=a.ml_per_visit,
        speed=a.speed, fault_rate=a.fault_rate, faults=[parse_fault(f) for f in a.fault],
        connect_rate=a.connect_rate, username=a.username, password=password,
        tls=a.tls, cafile=a.cafile, certfile=a.cert, keyfile=a.key,
        identities=a.identities, bind=a.bind, seed=a.seed, first=first, total=total)


def _raise_fd_limit(needed: int) -> None:
    """One socket a station: take the hard limit, say so if it is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"yizhan sim fleet: warning: {needed} sockets needed, open-file limit is "
              f"{hard} (ulimit -n)", file=sys.stderr)


def line(c: dict, s: dict, faults: int, stations: int, elapsed: float) -> str:
    """The live display: counts by mode ``c``, totals ``s``."""
    return (f"{elapsed:7.0f}s  online {c['online']}/{stations}  "
            f"connecting {c['connecting'] + c['new']}  off {c['off']}  cut {c['cut']}  "
            f"sent {s['published']}  events {s['events']}  faults {faults}  "
            f"replays {s['replays']}")


def progress(fleet: Fleet) -> dict:
    """What a child of --processes reports to its parent, a line a second."""
    return {"progress": {"counts": fleet.counts(), "stats": fleet.stats,
                         "faults": fleet.active_faults}}


def run(a: argparse.Namespace, clock=SYSTEM_CLOCK) -> int:
    try:
        opts = _options(a)
    except FaultError as err:
        print(f"yizhan sim fleet: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Open for the whole run; Truth.close() closes it.
        out = open(a.truth, "w", encoding="utf-8") if a.truth else None  # noqa: SIM115
    except OSError as err:
        print(f"yizhan sim fleet: --truth: {err}", file=sys.stderr)
        return EXIT_USAGE
    if a.processes > 1:
        from firmware.sim.fleet.shards import run_shards

        try:
            check_faults(opts.faults, station_ids(opts.prefix, opts.stations))
        except ValueError as err:
            print(f"yizhan sim fleet: {err}", file=sys.stderr)
            return EXIT_USAGE
        return run_shards(a, opts, out, clock)
    child = getattr(a, "shard", None) is not None
    truth = Truth(out)
    _raise_fd_limit(opts.stations + 32)
    fleet = Fleet(opts, clock, truth)
    try:
        fleet.start()
    except ValueError as err:
        print(f"yizhan sim fleet: {err}", file=sys.stderr)
        truth.close()
        return EXIT_USAGE
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    live = not a.quiet and not child
    t0 = clock.monotonic()
    shown = 0.0
    if not child:
        print(f"yizhan sim fleet: {opts.stations} stations on {opts.host}:{opts.port}",
              file=sys.stderr, flush=True)
    while not done.is_set():
        now = clock.monotonic()
        if a.duration and now - t0 >= a.duration:
            break
        fleet.step(0.2)
        if child and now - shown >= 1.0:
            shown = now
            print(json.dumps(progress(fleet)), flush=True)
            if out is not None:
                out.flush()  # what a killed child leaves is at most a second short
        elif live and now - shown >= 1.0:
            shown = now
            end = "\r" if sys.stderr.isatty() else "\n"
            print(line(fleet.counts(), fleet.stats, fleet.active_faults,
                       len(fleet.stations), now - t0), end=end, file=sys.stderr, flush=True)
    online_at_end = fleet.counts()["online"]
    fleet.stop()
    elapsed = clock.monotonic() - t0
    summary = {"stations": opts.stations, "seconds": round(elapsed, 1), **fleet.stats,
               "online_at_end": online_at_end, "max_rss_mb": round(
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    truth.write(clock.ms(), None, "summary", **summary)
    truth.close()
    if live:
        print(file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0
