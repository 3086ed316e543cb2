"""``--processes N``: one fleet in N simulator processes, shown, logged and summed as one.

The stations are cut into N contiguous shards of the index range (1..k, k+1..,
…); each child is ``python -m firmware.sim.fleet.child`` with the parent's
arguments for its shard (the same sids, epochs and banks one process would give
those indices). A child reports a JSON line a second on its stdout (counts by
mode, totals) and its summary at the end; it writes its own truth file, which
the parent merges into ``--truth`` in time order when all have stopped.

The parent holds no MQTT connection. A child that exits non-zero (or without a
summary) is named with its exit code and the end of its stderr; the others are
stopped cleanly (SIGTERM: their stations say ``shutdown``) and their truth is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from operator import itemgetter
from pathlib import Path
from typing import IO

from firmware.sim.fleet.clients import Options, station_ids
from firmware.sim.fleet.faults import parse_fault
from firmware.sim.fleet.truth import Truth

EXIT_DIED = 1
EXIT_USAGE = 2
STOP_GRACE_S = 30.0  # a child's clean stop takes at most ~10 s (Fleet.stop's timeout)
TAIL = 20  # stderr lines kept of each child
REPO = Path(__file__).resolve().parents[3]
MODES = ("online", "connecting", "off", "cut", "new", "stopped")


def shards(stations: int, n: int) -> list[tuple[int, int]]:
    """(first index, count) of each of ``n`` contiguous shards, the larger first."""
    size, extra = divmod(stations, n)
    out, first = [], 1
    for k in range(n):
        count = size + (k < extra)
        out.append((first, count))
        first += count
    return out


def _die_with_parent() -> None:
    """Children get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One child process, what it last reported and the end of its stderr."""

    def __init__(self, k: int, first: int, count: int, sids: tuple[str, str],
                 truth: Path | None, spec: dict) -> None:
        self.k, self.first, self.count, self.sids, self.truth = k, first, count, sids, truth
        self.progress: dict | None = None
        self.summary: dict | None = None
        self.tail: deque[str] = deque(maxlen=TAIL)
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        # A session of its own: a terminal's Ctrl-C reaches the parent, which stops
        # the children with SIGTERM once (not twice, half of them mid-import).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.sim.fleet.child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True, preexec_fn=_die_with_parent)
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.close()
        self.readers = [threading.Thread(target=self._read_out, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.readers:
            t.start()

    def _read_out(self) -> None:
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(raw)
                if "progress" in msg:
                    self.progress = msg["progress"]
                else:
                    self.summary = msg

    def _read_err(self) -> None:
        for raw in self.proc.stderr:
            text = raw.rstrip("\n")
            self.tail.append(text)
            print(f"yizhan sim fleet: process {self.k + 1}: {text}", file=sys.stderr,
                  flush=True)

    def finished(self) -> bool:
        """Exited and every line it wrote read."""
        return self.proc.poll() is not None and not any(t.is_alive() for t in self.readers)

    def died(self) -> bool:
        return self.finished() and (self.proc.returncode != 0 or self.summary is None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)


def _spec(a: argparse.Namespace, first: int, count: int, n: int, truth: Path | None,
          faults: list[str]) -> dict:
    spec = {k: v for k, v in vars(a).items() if not callable(v)}
    spec.update(stations=count, shard=[first, a.stations], processes=1,
                truth=str(truth) if truth else None, fault=faults, quiet=True,
                # The fleet's rate, shared: every child connects its shard at once.
                connect_rate=a.connect_rate / n)
    return spec


def merge(paths: list[Path], out: IO[str]) -> int:
    """The children's truth lines into ``out`` by ``t`` (each file is in time order);
    their own summaries left out, a killed child's half-written last line too."""

    def records(f):
        for raw in f:
            if not raw.endswith("\n"):
                return
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if rec.get("what") != "summary":
                yield rec["t"], raw

    files = [p.open(encoding="utf-8") for p in paths if p.is_file()]
    n = 0
    try:
        for _, raw in heapq.merge(*(records(f) for f in files), key=itemgetter(0)):
            out.write(raw)
            n += 1
    finally:
        for f in files:
            f.close()
    return n


def _totals(children: list[Child]) -> tuple[dict, dict]:
    """Counts by mode (the display) and the summed totals (the summary)."""
    counts = dict.fromkeys(MODES, 0)
    stats: dict[str, float] = {}
    for c in children:
        rep = c.progress
        if rep is None:
            counts["new"] += c.count
        else:
            for mode, v in rep["counts"].items():
                counts[mode] = counts.get(mode, 0) + v
        # A child that died before its summary: its last report's totals.
        got = c.summary or (rep and {**rep["stats"], "online_at_end": 0}) or {}
        for key, v in got.items():
            if key not in ("stations", "seconds") and isinstance(v, int | float):
                stats[key] = round(stats.get(key, 0) + v, 1)
    return counts, stats


def run_shards(a: argparse.Namespace, opts: Options, out: IO[str] | None, clock) -> int:
    from firmware.sim.fleet.run import line

    n = a.processes
    parts = shards(opts.stations, n)
    holder: dict[str, int] = {}
    if a.fault:  # each scripted fault goes to the child holding its station
        for k, (first, count) in enumerate(parts):
            holder.update(dict.fromkeys(station_ids(a.prefix, opts.stations, first, count), k))
    truths = [Path(f"{a.truth}.{k + 1}") if a.truth else None for k in range(n)]
    for path in filter(None, truths):  # the children's files, before any child starts
        try:
            path.open("w").close()
        except OSError as err:
            print(f"yizhan sim fleet: --truth: {err}", file=sys.stderr)
            return EXIT_USAGE
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"yizhan sim fleet: {opts.stations} stations on {opts.host}:{opts.port}, "
          f"{n} processes", file=sys.stderr, flush=True)
    children: list[Child] = []
    t0 = clock.monotonic()
    for k, (first, count) in enumerate(parts):
        sids = station_ids(a.prefix, opts.stations, first, count)
        truth = truths[k]
        faults = [f for f in a.fault if holder[parse_fault(f).sid] == k]
        children.append(Child(k, first, count, (sids[0], sids[-1]), truth,
                              _spec(a, first, count, n, truth, faults)))
    live = not a.quiet
    shown, stop_by = 0.0, None
    while not all(c.finished() for c in children):
        time.sleep(0.2)  # a signal's handler runs meanwhile; the check below sees it
        now = clock.monotonic()
        if stop_by is None and (done.is_set() or any(c.died() for c in children)):
            stop_by = now + STOP_GRACE_S
            for c in children:
                c.stop()
        if stop_by is not None and now > stop_by:
            for c in children:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
        if live and now - shown >= 1.0:
            shown = now
            counts, stats = _totals(children)
            end = "\r" if sys.stderr.isatty() else "\n"
            print(line(counts, {"published": 0, "events": 0, "replays": 0, **stats},
                       int(sum((c.progress or {}).get("faults", 0) for c in children)),
                       opts.stations, now - t0), end=end, file=sys.stderr, flush=True)
    if live:
        print(file=sys.stderr)
    dead = [c for c in children if c.died()]
    for c in dead:
        print(f"yizhan sim fleet: process {c.k + 1} of {n} (stations {c.sids[0]} .. "
              f"{c.sids[1]}) died, exit code {c.proc.returncode}; the end of its stderr:",
              file=sys.stderr)
        for text in c.tail:
            print(f"    {text}", file=sys.stderr)
    _, stats = _totals(children)
    summary = {"stations": opts.stations, "seconds": round(clock.monotonic() - t0, 1),
               **stats, "processes": n}
    if dead:
        summary["died"] = [c.k + 1 for c in dead]
    if out is not None:
        merge([c.truth for c in children], out)
        Truth(out).write(clock.ms(), None, "summary", **summary)
        out.close()
        for c in children:
            with contextlib.suppress(OSError):
                c.truth.unlink(missing_ok=True)
    print(json.dumps(summary), flush=True)
    return EXIT_DIED if dead else 0
