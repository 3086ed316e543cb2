"""Soak: broker outages of 5 s to 10 min at the settings that ship.

How long until every station and the hub are back by themselves, and whether an
event was lost or stored twice on the way (issue 12, "Measure").

Real processes, as in a fleet. Each *lane* is a private Mosquitto (persistence on
and saved every 60 s, as deployed), one ``yizhan hub`` on SQLite and three
``yizhan agent`` with ``hardware: sim`` whose riders come in, borrow and return
banks and draw hot water all the while (a busy hour). Nothing is shrunk: the
stations back off 0.5 s doubling to 60 s, the hub 1 s to 30 s, both jittered,
keepalive 30 s, and time is the wall clock.

An outage stops the lane's broker, keeps it down for its drawn length and starts
it again on the same port. Outages take turns: SIGTERM (the broker saves its
state) or SIGKILL (a crash: what the last autosave wrote comes back), and the
persistence file kept (retained messages and the hub's queued session survive)
or deleted while the broker is down (everything the broker held is gone).

Twenty outages of five minutes on average do not fit 30 minutes one after
another, so lanes run side by side: the outages are packed onto lanes by cost
(length + the recovery target + a minute of stable running), longest first
onto the least loaded lane, in as few lanes as fit the budget; the plan is
printed before anything starts.

Measured per outage and station, from the broker's return (it answers a
CONNECT again): (a) the station's birth, a Status online with a birth newer
than before the outage, seen by an observer client on that broker; (b) the
hub's API showing the station online on the strength of what it heard after
the return (``since`` or ``last_seen`` after it; polled every 0.5 s). After a
lane's last outage each station's journal is compared with the hub's
database: every seq 1..last_seq of the epoch stored exactly once (lost =
missing, doubled = stored more than once), once the hub has had time to heal
gaps by replay.

    .venv/bin/python bench/soak.py                              # under 30 minutes
    .venv/bin/python bench/soak.py --outages 3 --max-outage 20  # a quick run, ~5 min
    .venv/bin/python bench/soak.py --seed 12345                 # the same plan again

Targets: p99 of both recovery times ≤ the stations' backoff ceiling + keepalive
(60 + 30 = 90 s); no event lost; none stored twice. Exit status 1 when one is
missed. Raw rows go to ``run/soak/results.json``, logs to ``run/soak/lane-*/``;
the report is docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from firmware.link import StationLink  # noqa: E402
from hub.mqtt.ingest import RECONNECT as HUB_BACKOFF  # noqa: E402
from protocol import messages as m  # noqa: E402
from protocol.errors import InvalidMessage  # noqa: E402
from protocol.topics import Kind, topic  # noqa: E402
from tests.harness.mosquitto import Broker, BrokerError, free_port  # noqa: E402
from tests.harness.procs import Proc, write_yaml  # noqa: E402
from yizhan.config import MqttConfig  # noqa: E402

# -- what ships (read from the code, so the target follows it) --------------------------

_link_defaults = inspect.signature(StationLink.__init__).parameters
BACKOFF_MIN = _link_defaults["reconnect_min"].default
BACKOFF_CEILING = _link_defaults["reconnect_max"].default
KEEPALIVE = MqttConfig().keepalive
#: Issue 12: recovery p99 ≤ the backoff ceiling + keepalive.
TARGET_S = BACKOFF_CEILING + KEEPALIVE

# -- the run's shape -----------------------------------------------------------------

BUDGET_S = 30 * 60
#: Stable running after every station is back, before the next outage: a session
#: must last the backoff ceiling before a station's retry count starts again
#: (PacedClient's stable_after), so each outage starts from a settled fleet.
STABLE_S = BACKOFF_CEILING
#: What the plan reserves per lane to start: four Python processes on a busy
#: 2-core machine, then a stable minute.
START_RESERVE_S = 45 + STABLE_S
#: How long the hub may take to heal gaps by replay before the count stands: it
#: asks replay_after (10 s) after seeing a gap, again every replay_every (30 s);
#: twice over, and slack.
HEAL_TIMEOUT_S = 100.0
#: ... and to end: healing, counting, stopping the processes.
END_RESERVE_S = HEAL_TIMEOUT_S + 20
#: Past this the outage is recorded as not recovered and the lane goes on.
RECOVERY_TIMEOUT_S = 2 * TARGET_S
MAX_LANES = 8
POLL_S = 0.5
#: Mosquitto's autosave as deployed (deploy/mosquitto/yizhan.conf).
AUTOSAVE_S = 60
TOKEN = "soak-api-token-" + secrets.token_hex(8)
#: A busy hour at a station (per hour): visitors, loans, cups of hot water.
SIM = {"riders_per_hour": 60, "borrows_per_hour": 20, "mean_loan": "15m",
       "draws_per_hour": 40}

_print_lock = threading.Lock()
T0 = time.monotonic()


def say(text: str) -> None:
    """One progress line, stamped with the minutes and seconds since the start."""
    el = time.monotonic() - T0
    with _print_lock:
        print(f"[{int(el // 60):02d}:{el % 60:04.1f}] {text}", flush=True)


# -- the plan ------------------------------------------------------------------------


@dataclass
class Outage:
    n: int  # 1-based, in drawn order
    length: float  # seconds down
    signal: str  # SIGTERM or SIGKILL
    persistence: str  # kept or lost
    lane: int = 0

    @property
    def cost(self) -> float:
        """Lane seconds the plan reserves: down, recovered within target, stable."""
        return self.length + TARGET_S + STABLE_S


def draw(seed: int, n: int, lo: float, hi: float) -> list[Outage]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(Outage(n=i + 1, length=round(rng.uniform(lo, hi), 1),
                          signal="SIGTERM" if (i // 2) % 2 == 0 else "SIGKILL",
                          persistence="kept" if i % 2 == 0 else "lost"))
    return out


def lane_budget() -> float:
    return BUDGET_S - START_RESERVE_S - END_RESERVE_S


def pack(outages: list[Outage], lanes: int) -> list[list[Outage]]:
    """Longest first onto the least loaded lane; each lane runs in drawn order."""
    bins: list[list[Outage]] = [[] for _ in range(lanes)]
    for o in sorted(outages, key=lambda o: -o.cost):
        i = min(range(lanes), key=lambda k: (sum(x.cost for x in bins[k]), k))
        bins[i].append(o)
    for i, b in enumerate(bins):
        b.sort(key=lambda o: o.n)
        for o in b:
            o.lane = i + 1
    return [b for b in bins if b]


def plan(outages: list[Outage], forced: int | None) -> list[list[Outage]]:
    budget = lane_budget()
    tries = [forced] if forced else range(1, MAX_LANES + 1)
    for k in tries:
        bins = pack(outages, k)
        if max(sum(o.cost for o in b) for b in bins) <= budget:
            return bins
    raise SystemExit(
        f"{len(outages)} outages (longest {max(o.length for o in outages):.0f} s) do not fit "
        f"{BUDGET_S // 60} minutes in {tries[-1]} lanes of {budget:.0f} s each; "
        "use fewer outages or a shorter --max-outage")


# -- one lane ------------------------------------------------------------------------


@dataclass
class Row:
    """One station through one outage."""

    outage: int
    lane: int
    sid: str
    length_s: float
    signal: str
    persistence: str
    returned_at: float  # Unix time the broker answered again
    birth_s: float | None = None
    hub_s: float | None = None
    birth_before: int | None = None
    birth_after: int | None = None


@dataclass
class Tally:
    """A station's events: its journal against the hub's database."""

    sid: str
    epoch: str
    last_seq: int
    stored: int = 0
    lost: int = 0
    doubled: int = 0
    missing: list[int] = field(default_factory=list)


class Observer:
    """A plain MQTT client on one broker life: the newest birth of each station and
    when it was first seen (a retained copy, older than our subscription, counts
    from the station's own ``ts``)."""

    def __init__(self, port: int, sids: list[str], births: dict[str, tuple[int, float]],
                 lock: threading.Lock) -> None:
        self.births, self.lock = births, lock
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"soak-observer-{secrets.token_hex(3)}")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port, KEEPALIVE)
        self.client.subscribe([(topic(sid, Kind.STATUS), 1) for sid in sids])
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        try:
            status = m.decode(Kind.STATUS, msg.payload)
        except InvalidMessage:
            return
        if not status.is_online:
            return
        if msg.retain and status.ts is not None:
            at = min(at, status.ts / 1000)
        with self.lock:
            known = self.births.get(status.sid)
            if known is None or status.birth > known[0]:
                self.births[status.sid] = (status.birth, at)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Lane:
    """A broker, a hub and its stations, taken through this lane's outages."""

    def __init__(self, index: int, outages: list[Outage], root: Path, seed: int,
                 stations: int, stop: threading.Event) -> None:
        self.index, self.outages, self.stop = index, outages, stop
        self.dir = root / f"lane-{index}"
        self.dir.mkdir(parents=True)
        self.sids = [f"yh-soak-{index:02d}-{k + 1}" for k in range(stations)]
        self.seed = seed
        self.broker = Broker(self.dir / "broker", persistence=True,
                             autosave_interval=AUTOSAVE_S)
        self.http_port = free_port()
        self.procs: list[Proc] = []
        self.hub: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.observer: Observer | None = None
        self.births: dict[str, tuple[int, float]] = {}
        self.births_lock = threading.Lock()
        self.rows: list[Row] = []
        self.tallies: list[Tally] = []
        self.error: str | None = None
        self.skipped: list[int] = []
        self.cpu: dict[str, float] = {}  # pid kind -> CPU seconds, summed at the end
        self.wall = 0.0
        self.healthz: list[int | None] = []
        self.healthz_down: list[list] = []
        self._closed = False

    # -- starting ----------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        key = self.dir / "fleet.key"
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)
        mqtt_section = {"host": "127.0.0.1", "port": self.broker.port}  # keepalive: default
        hub_cfg = write_yaml(self.dir / "hub.yaml", {
            "mqtt": mqtt_section,
            "database": f"sqlite:///{self.dir / 'hub.db'}",
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "api_tokens": [TOKEN],
            "fleet_key_file": str(key),
            "stations": [{"sid": sid, "name": f"浸泡测试驿站 {sid[-4:]}"} for sid in self.sids],
        })
        self.hub = self._spawn("hub", "hub", "--config", str(hub_cfg))
        for k, sid in enumerate(self.sids):
            cfg = write_yaml(self.dir / f"{sid}.yaml", {
                "hardware": "sim",
                "station": {"id": sid, "name": sid},
                "mqtt": mqtt_section,
                "data_dir": str(self.dir / sid),
                "fleet_key_file": str(key),
                "local_api": {"host": "127.0.0.1", "port": 0},
                "sim": {**SIM, "seed": self.seed * 100 + self.index * 10 + k},
            })
            self.agents[sid] = self._spawn(sid, "agent", "--config", str(cfg))
        self.observer = Observer(self.broker.port, self.sids, self.births, self.births_lock)
        t = time.time()
        births, hub = self._recover(t, {}, 90.0)
        missing = [sid for sid in self.sids if births.get(sid) is None or hub.get(sid) is None]
        if missing:
            raise RuntimeError(f"lane {self.index}: {', '.join(missing)} did not come online "
                               f"within 90 s; see {self.dir}")

    def _spawn(self, name: str, *argv: str) -> Proc:
        proc = Proc(name, ["--log-level", "info", *argv], self.dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    # -- looking -------------------------------------------------------------------

    def _hub_get(self, path: str) -> tuple[int | None, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        req.add_header("Authorization", f"Bearer {TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=2.0) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {}
        except (OSError, ValueError):
            return None, {}

    def _hub_heard(self, sid: str, since: float) -> bool:
        """The hub's API shows ``sid`` online on what it heard after ``since``."""
        code, body = self._hub_get(f"/api/v1/stations/{sid}")
        if code != 200 or not body.get("online"):
            return False
        since_ms = body.get("since") or 0
        seen_ms = body.get("last_seen") or 0
        return max(since_ms, seen_ms) >= since * 1000

    def _recover(self, returned: float, before: dict[str, int], timeout: float
                 ) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Seconds from ``returned`` to each station's new birth and to the hub
        showing it online; None where it did not happen within ``timeout``."""
        births: dict[str, float | None] = dict.fromkeys(self.sids)
        hub: dict[str, float | None] = dict.fromkeys(self.sids)
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            with self.births_lock:
                for sid in self.sids:
                    seen = self.births.get(sid)
                    if births[sid] is None and seen and seen[0] > before.get(sid, -1):
                        births[sid] = max(0.0, seen[1] - returned)
            now = time.time()
            for sid in self.sids:
                if hub[sid] is None and self._hub_heard(sid, returned):
                    hub[sid] = now - returned
            if all(v is not None for v in (*births.values(), *hub.values())):
                break
            if time.monotonic() > deadline:
                break
            self.stop.wait(POLL_S)
        return births, hub

    # -- the outages -----------------------------------------------------------------

    def run(self, deadline: float) -> None:
        started = time.monotonic()
        try:
            self.start()
            say(f"lane {self.index}: {len(self.sids)} stations online; "
                f"{len(self.outages)} outage(s) to go")
            self.stop.wait(STABLE_S)
            for o in self.outages:
                if self.stop.is_set():
                    return
                if time.monotonic() + o.length + TARGET_S > deadline:
                    self.skipped.append(o.n)
                    say(f"lane {self.index}: outage {o.n} skipped: the 30-minute budget "
                        "is spent")
                    continue
                self._outage(o)
                self.stop.wait(STABLE_S)
            self._count()
        except Exception as err:  # reported with the results; the lane's processes stop
            self.error = f"{type(err).__name__}: {err}"
            say(f"lane {self.index}: FAILED: {self.error}")
        finally:
            self.wall = time.monotonic() - started
            self.close()

    def _outage(self, o: Outage) -> None:
        with self.births_lock:
            before = {sid: self.births[sid][0] for sid in self.sids if sid in self.births}
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        self._count_broker_cpu()
        if o.signal == "SIGKILL":
            self.broker.kill()
        else:
            self.broker.stop(timeout=30.0)
        if o.persistence == "lost":
            (self.broker.workdir / "mosquitto.db").unlink(missing_ok=True)
        if self.stop.wait(o.length):
            return
        # What the hub says of itself just before the broker returns: by outcome,
        # it should be 503, not connected.
        code, body = self._hub_get("/healthz")
        self.healthz_down.append([code, (body.get("problems") or [None])[0]])
        self.broker.start()
        returned = time.time()
        self.observer = Observer(self.broker.port, self.sids, self.births, self.births_lock)
        births, hub = self._recover(returned, before, RECOVERY_TIMEOUT_S)
        self.healthz.append(self._hub_get("/healthz")[0])  # and once all are back
        with self.births_lock:
            after = {sid: self.births.get(sid, (None,))[0] for sid in self.sids}
        for sid in self.sids:
            self.rows.append(Row(outage=o.n, lane=self.index, sid=sid, length_s=o.length,
                                 signal=o.signal, persistence=o.persistence,
                                 returned_at=returned, birth_s=_round(births[sid]),
                                 hub_s=_round(hub[sid]), birth_before=before.get(sid),
                                 birth_after=after[sid]))
        say(f"lane {self.index} outage {o.n:2d}: {o.length:6.1f} s down, {o.signal}, "
            f"persistence {o.persistence:4s} → birth {_span(births.values())}, "
            f"hub {_span(hub.values())}")

    # -- events: the journals against the hub's database -----------------------------

    def _count(self) -> None:
        journals = {sid: _journal(self.dir / sid / "station.db") for sid in self.sids}
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while True:
            tallies = [_tally(self.dir / "hub.db", sid, epoch, last)
                       for sid, (epoch, last) in journals.items()]
            if all(t.lost == 0 for t in tallies) or time.monotonic() > deadline:
                break
            if self.stop.wait(2.0):
                break
        self.tallies = tallies
        lost = sum(t.lost for t in tallies)
        doubled = sum(t.doubled for t in tallies)
        say(f"lane {self.index}: events {sum(t.last_seq for t in tallies)}, "
            f"lost {lost}, doubled {doubled}")

    # -- stopping ----------------------------------------------------------------------

    def _count_broker_cpu(self) -> None:
        if self.broker.pid is not None:
            self.cpu["broker"] = self.cpu.get("broker", 0.0) + _cpu_of(self.broker.pid)

    def close(self) -> None:
        """Stop every process of the lane (idempotent; also after a failure)."""
        if self._closed:
            return
        self._closed = True
        for proc in self.procs:
            self.cpu[_kind(proc.name)] = (self.cpu.get(_kind(proc.name), 0.0)
                                          + _cpu_of(proc.popen.pid))
        self._count_broker_cpu()
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.close()
            self.observer = None
        # Stations first (each says goodbye), then the hub, then the broker.
        for proc in [*self.agents.values(), *([self.hub] if self.hub else [])]:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        # A broker that ignores SIGTERM is killed by stop() itself, which then says so.
        with contextlib.suppress(BrokerError):
            self.broker.stop()


def _kind(name: str) -> str:
    return "hub" if name == "hub" else "agent"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _span(values: Any) -> str:
    xs = list(values)
    if any(x is None for x in xs):
        return f"{sum(x is None for x in xs)} of {len(xs)} NOT BACK"
    return f"{min(xs):.1f}–{max(xs):.1f} s"


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _journal(path: Path) -> tuple[str, int]:
    """(epoch, last seq) of a station's journal (firmware/journal.py)."""
    db = _ro(path)
    try:
        epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        top = db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
        meta = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return epoch, max(top, int(meta[0]) if meta else 0)
    finally:
        db.close()


def _tally(hub_db: Path, sid: str, epoch: str, last_seq: int) -> Tally:
    """Every seq 1..last_seq of (sid, epoch) in the hub's events table, once."""
    db = _ro(hub_db)
    try:
        counts = dict(db.execute(
            "SELECT seq, COUNT(*) FROM events WHERE sid = ? AND epoch = ? GROUP BY seq",
            (sid, epoch)).fetchall())
    finally:
        db.close()
    missing = [s for s in range(1, last_seq + 1) if s not in counts]
    return Tally(sid=sid, epoch=epoch, last_seq=last_seq,
                 stored=sum(1 for s in counts if 1 <= s <= last_seq), lost=len(missing),
                 doubled=sum(c - 1 for c in counts.values() if c > 1), missing=missing[:50])


# -- CPU ----------------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _cpu_of(pid: int) -> float:
    """CPU seconds a live process has used (0 once it is gone)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICKS


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


# -- the report ------------------------------------------------------------------------


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return {"p50": xs[0], "p99": xs[0], "max": xs[0]}
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"p50": statistics.median(xs), "p99": q[98], "max": xs[-1]}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def report(args: argparse.Namespace, outages: list[Outage], lanes: list[Lane],
           wall: float, busy: float, commit: str, out: Path) -> bool:
    rows = [r for lane in lanes for r in lane.rows]
    tallies = [t for lane in lanes for t in lane.tallies]
    errors = [f"lane {lane.index}: {lane.error}" for lane in lanes if lane.error]
    skipped = sorted(n for lane in lanes for n in lane.skipped)
    ran = {r.outage for r in rows}
    not_run = [o.n for o in outages if o.n not in ran]
    stats, missed = {}, {}
    for key in ("birth_s", "hub_s"):
        got = [getattr(r, key) for r in rows if getattr(r, key) is not None]
        missed[key] = sum(1 for r in rows if getattr(r, key) is None)
        stats[key] = percentiles(got) if got else None
    lost = sum(t.lost for t in tallies)
    doubled = sum(t.doubled for t in tallies)
    events = sum(t.last_seq for t in tallies)
    counted = {t.sid for t in tallies}
    uncounted = [sid for lane in lanes for sid in lane.sids if sid not in counted]

    cpu: dict[str, float] = {}
    for lane in lanes:
        for k, v in lane.cpu.items():
            cpu[k] = cpu.get(k, 0.0) + v
    t = os.times()
    cpu["soak script"] = t.user + t.system  # the observers and the polling
    n_agents = sum(len(lane.sids) for lane in lanes)
    ours = sum(cpu.values())

    ok_time = {k: s is not None and s["p99"] <= TARGET_S and missed[k] == 0
               for k, s in stats.items()}
    ok = (all(ok_time.values()) and lost == 0 and doubled == 0 and not errors
          and not not_run and not uncounted)

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "seed": args.seed, "outages": args.outages, "min_outage": args.min_outage,
        "max_outage": args.max_outage, "lanes": len(lanes),
        "stations_per_lane": args.stations, "machine": f"{platform.machine()}, {NCPU} cores",
        "python": platform.python_version(), "wall_s": round(wall, 1),
        "target_s": TARGET_S, "backoff": [BACKOFF_MIN, BACKOFF_CEILING],
        "hub_backoff": [HUB_BACKOFF.minimum, HUB_BACKOFF.maximum], "keepalive": KEEPALIVE,
        "stable_s": STABLE_S, "recovery_timeout_s": RECOVERY_TIMEOUT_S,
    }
    results = {
        "meta": meta,
        "plan": [{"lane": lane.index, "outages": [asdict(o) for o in lane.outages]}
                 for lane in lanes],
        "rows": [asdict(r) for r in rows],
        "events": [asdict(t) for t in tallies],
        "summary": {"birth": stats["birth_s"], "hub": stats["hub_s"],
                    "birth_not_back": missed["birth_s"], "hub_not_back": missed["hub_s"],
                    "events": events, "lost": lost, "doubled": doubled,
                    "errors": errors, "skipped": skipped, "not_run": not_run, "met": ok},
        "cpu": {"seconds": {k: round(v, 1) for k, v in cpu.items()},
                "machine_busy_share": round(busy / (wall * NCPU), 3) if wall else None,
                "ours_share": round(ours / (wall * NCPU), 3) if wall else None},
        "lanes": [{"lane": lane.index, "wall_s": round(lane.wall, 1),
                   "hub_healthz_down": lane.healthz_down, "hub_healthz_back": lane.healthz,
                   **_log_counts(lane)} for lane in lanes],
    }
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))

    p = print
    p()
    p(f"## Soak: {len(ran)} broker outages of {args.min_outage:g}–{args.max_outage:g} s, "
      f"{len(lanes)} lane(s) × {args.stations} stations")
    p()
    p(f"{meta['date']}, commit {meta['commit']}, seed {args.seed}, {meta['machine']}, "
      f"wall {wall / 60:.1f} min.")
    p()
    p("| # | lane | down s | stop | persistence | birth s (max) | hub online s (max) |")
    p("|---|---|---|---|---|---|---|")
    by_outage: dict[int, list[Row]] = {}
    for r in rows:
        by_outage.setdefault(r.outage, []).append(r)
    for n in sorted(by_outage):
        rs = by_outage[n]
        r0 = rs[0]
        p(f"| {n} | {r0.lane} | {r0.length_s:.1f} | {r0.signal} | {r0.persistence} | "
          f"{_cell([r.birth_s for r in rs])} | {_cell([r.hub_s for r in rs])} |")
    p()
    p("| from the broker's return to | samples | p50 s | p99 s | max s | target | |")
    p("|---|---|---|---|---|---|---|")
    for key, label in (("birth_s", "the station's birth"), ("hub_s", "the hub showing it online")):
        s = stats[key]
        n = sum(1 for r in rows if getattr(r, key) is not None)
        verdict = "met" if ok_time[key] else "**NOT met**"
        extra = f" ({missed[key]} not back in {RECOVERY_TIMEOUT_S:.0f} s)" if missed[key] else ""
        if s is None:
            p(f"| {label} | 0 | – | – | – | p99 ≤ {TARGET_S:.0f} s | {verdict}{extra} |")
        else:
            p(f"| {label} | {n} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | "
              f"p99 ≤ {TARGET_S:.0f} s | {verdict}{extra} |")
    p(f"| events lost (of {events}) | | | | {lost} | 0 | {'met' if lost == 0 else '**NOT met**'} |")
    p(f"| events stored twice | | | | {doubled} | 0 | "
      f"{'met' if doubled == 0 else '**NOT met**'} |")
    p()
    shares = ", ".join(f"{k} {v / (wall * NCPU) * 100:.1f} %" for k, v in sorted(cpu.items()))
    p(f"CPU, as a share of the machine's {NCPU} cores over the run: {shares} (together "
      f"{ours / (wall * NCPU) * 100:.1f} %: {n_agents} agents, {len(lanes)} hub(s), "
      f"{len(lanes)} broker(s) and this script); the whole machine was busy "
      f"{busy / (wall * NCPU) * 100:.0f} %, other people's work included.")
    for e in errors:
        p(f"ERROR {e}")
    if not_run:
        p(f"outages not run: {not_run}")
    if uncounted:
        p(f"stations whose events were not counted: {uncounted}")
    p(f"raw rows: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    p(f"targets: {'met' if ok else 'NOT met'}")
    return ok


def _cell(xs: list[float | None]) -> str:
    if any(x is None for x in xs):
        return f"**{sum(x is None for x in xs)} not back**"
    return f"{max(xs):.1f}"


def _log_counts(lane: Lane) -> dict[str, int]:
    """How often the remedies showed in the lane's logs."""
    marks = {"fresh_clients": "starting a fresh client", "dead_links": "no answer to a PINGREQ",
             "hub_fresh_sessions": "(session new)"}
    found = dict.fromkeys(marks, 0)
    for proc in lane.procs:
        try:
            text = proc.log.read_text(errors="replace")
        except OSError:
            continue
        for key, mark in marks.items():
            found[key] += text.count(mark)
    return found


# -- main ----------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None, help="the outages' RNG seed (default: random)")
    p.add_argument("--outages", type=int, default=20)
    p.add_argument("--min-outage", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument("--max-outage", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--stations", type=int, default=3, help="stations per lane (default 3)")
    p.add_argument("--lanes", type=int, default=None, help="force this many lanes")
    p.add_argument("--dir", default=str(REPO / "run" / "soak"),
                   help="working directory, emptied first (default run/soak)")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1, 1_000_000)
    if not (0 < args.min_outage <= args.max_outage) or args.outages < 1 or args.stations < 1:
        p.error("need 1 or more outages and stations, and 0 < --min-outage <= --max-outage")

    # The code under test is what the processes load at the start: name it now.
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    outages = draw(args.seed, args.outages, args.min_outage, args.max_outage)
    bins = plan(outages, args.lanes)
    say(f"soak: seed {args.seed}; {len(outages)} outages of {args.min_outage:g}–"
        f"{args.max_outage:g} s ({sum(o.length for o in outages) / 60:.1f} min down in all); "
        f"commit {commit}; backoff {BACKOFF_MIN:g}–{BACKOFF_CEILING:g} s, "
        f"hub {HUB_BACKOFF.minimum:g}–{HUB_BACKOFF.maximum:g} s, keepalive {KEEPALIVE} s; "
        f"target p99 ≤ {TARGET_S:g} s")
    say(f"plan: {len(bins)} lane(s) × {args.stations} stations; a lane may use "
        f"{lane_budget():.0f} s (an outage costs its length + {TARGET_S:g} s recovery + "
        f"{STABLE_S:g} s stable)")
    for i, b in enumerate(bins, 1):
        say(f"  lane {i}: " + ", ".join(f"#{o.n} {o.length:.0f}s {o.signal[3:]}/{o.persistence}"
                                         for o in b)
            + f"  = {sum(o.cost for o in b):.0f} s")

    work = Path(args.dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stop = threading.Event()
    lanes = [Lane(i, b, work, args.seed, args.stations, stop) for i, b in enumerate(bins, 1)]
    deadline = time.monotonic() + BUDGET_S - END_RESERVE_S

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background
    started, busy0 = time.monotonic(), _busy_seconds()
    threads = []
    try:
        for lane in lanes:
            t = threading.Thread(target=lane.run, args=(deadline,), name=f"lane-{lane.index}",
                                 daemon=True)
            t.start()
            threads.append(t)
            time.sleep(2.0)  # a staggered start: 2 cores, four Python processes a lane
        for t in threads:
            while t.is_alive():
                t.join(1.0)
    except KeyboardInterrupt:
        say("interrupted: stopping every lane")
        stop.set()
        for t in threads:
            t.join(60)
        return 130
    finally:
        stop.set()
        for lane in lanes:
            lane.close()  # idempotent: a lane closes itself when its thread ends
    wall, busy = time.monotonic() - started, _busy_seconds() - busy0
    ok = report(args, outages, lanes, wall, busy, commit, work / "results.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
