"""Hub ingest: how fast the hub takes messages in, its lag under a 100 000-station
fleet (``--stations``; 50 000 until issue 21), and how long it takes to absorb a reconnect storm.

Everything runs against a private Mosquitto whose configuration raises
``max_queued_messages`` to 1 000 000 (and ``max_inflight_messages`` to 1 000),
so the broker never drops what a consumer has not taken yet. The hub runs in
this process (``Hub`` built from a configuration dict, SQLite in a temp dir;
``--fleet-store pg`` puts phases 2 and 3 on a fresh PostgreSQL database),
so its counters can be read directly; stations are simulated by publisher
processes (this same file, ``--worker``) that send real contract payloads built
with ``protocol.messages``.

1. Ingest ratio. For the hub and for a baseline — a bare paho-mqtt 2.x client
   in this process that only ``json.loads`` each payload — a persistent session
   is registered, N messages (1 000 stations: birth, States with rising revs,
   events with consecutive seqs) are published while it is away, and the
   drain is timed from CONNACK to the last message processed (for the hub:
   applied and committed by the writer). Repeated, on SQLite and PostgreSQL.
2. Fleet. 100 000 stations at 3 messages a minute each (a State heartbeat per
   minute, events at random) for 60 s: the hub's ingest lag (apply time − ts)
   and its resident memory.
3. Storms. Every station's birth and State at once, as fast as two publishers
   can: the time until the hub has applied and committed them all — first to
   a hub that has never seen the stations (which also introduces them for the
   fleet run), then, after the fleet run, to one that knows them.

Phases 2 and 3 run first, on one hub, so that the process's VmHWM is theirs.
The figures are this process's, on a shared machine: the bench reports how
much CPU other processes took during each phase.

    .venv/bin/python bench/hub_ingest.py            # 4 to 5 minutes
    .venv/bin/python bench/hub_ingest.py --quick    # about 1 minute, smaller

    .venv/bin/python bench/hub_ingest.py --stations 100000 --skip ratio,pg   # issue 21

Targets: ratio ≥ 0.6; fleet lag p99 < 1 s; storm absorbed within 60 s; no
garbage-collection pause over 200 ms. It also reports the hub's RSS a station
and what the walk of every object, the frozen ones too, finds at the end.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from protocol import messages as m  # noqa: E402
from protocol.topics import HUB_STATUS_TOPIC, Kind, hub_subscriptions, topic  # noqa: E402
from yizhan.broker import find_mosquitto, free_port, wait_for_port  # noqa: E402

MAX_QUEUED = 1_000_000
#: Client ids carry this process's pid: two benches never take over each other's session.
RUN = os.getpid()
MAX_INFLIGHT = 1_000
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Each phase's revs start above the previous one's (stations persist their rev).
REV_BASE = {"mix": 1_000_000, "storm1": 2_000_000, "fleet": 3_000_000, "storm2": 4_000_000}

# ---------------------------------------------------------------------------
# Simulated stations: real contract payloads (protocol.messages)


def _hex(*parts: object, n: int = 24) -> str:
    return hashlib.blake2s("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:n]


class SimStation:
    """One station's counters (rev, seq, banks, water) and its payloads. It evolves
    as a healthy station does: banks charge a few percent a minute and only ready
    ones are lent, returns come back drained, the tank empties slowly and is
    refilled, a door closes again, slot faults are rare."""

    __slots__ = ("banks", "charges", "counters", "door_open", "epoch", "fault_slot",
                 "level", "level_state", "ml", "out", "rev", "seq", "sid", "topics")

    def __init__(self, sid: str, index: int, rng: random.Random) -> None:
        self.sid = sid
        self.epoch = _hex(sid, n=8)
        self.rev = 0
        self.seq = 0
        n_slots = rng.choice((6, 8, 8, 12, 12))
        # Bank ids are 8 characters (YZ-LB1) and unique in the fleet; a few are out.
        self.banks: list[str | None] = [
            f"B{index:05d}{s:02d}" if rng.random() < 0.85 else None for s in range(n_slots)]
        self.charges = [rng.choice((100, 100, 95, 90, 85, 70, 50)) if b else 0
                        for b in self.banks]
        self.out = [f"B{index:05d}{s:02d}" for s, b in enumerate(self.banks) if b is None]
        self.door_open = False
        self.fault_slot: int | None = None
        self.level = round(rng.uniform(0.4, 1.0), 2)
        self.level_state = "ok"
        self.ml = rng.randrange(10_000, 500_000)
        self.counters = [rng.randrange(0, 5000), rng.randrange(0, 2000), 0]
        self.counters[2] = max(0, self.counters[1] - len(self.out))
        self.topics = {k: topic(sid, k) for k in (Kind.STATUS, Kind.STATE, Kind.EVENT)}

    def birth(self, ts: int, validate: bool = False) -> tuple[str, bytes, bool]:
        self.rev += 1
        msg = m.Status.online(self.sid, self.epoch, ts, True, self.rev, self.seq, "1.0.0",
                              {"slots": len(self.banks), "doors": ["entrance", "locker_panel"],
                               "dispenser": True})
        return self.topics[Kind.STATUS], m.encode(msg, validate=validate), True

    def state(self, ts: int, rng: random.Random, validate: bool = False) -> tuple[str, bytes, bool]:
        self.rev += 1
        slots = []
        for i, bank in enumerate(self.banks):
            fault = "charger_fault" if self.fault_slot == i + 1 else None
            if bank is None:
                slots.append(m.Slot(i + 1, None, None, False, True, fault, None, None))
            else:
                if fault is None:
                    self.charges[i] = min(100, self.charges[i] + 4)
                charge = self.charges[i]
                slots.append(m.Slot(i + 1, bank, charge, charge < 100 and fault is None, True,
                                    fault, 26 + i % 5, 100 + 37 * i))
        msg = m.State(
            self.sid, self.epoch, ts, True, self.rev, self.seq,
            lockers=m.Lockers(True, tuple(slots)),
            dispenser=m.Dispenser(True, self.level, self.level_state,
                                  round(rng.uniform(88, 95), 1), rng.random() < 0.3, False,
                                  None, self.ml),
            doors={"entrance": self.door_open, "locker_panel": False},
            health=m.Health(cpu_temp_c=round(rng.uniform(45, 60), 1), undervoltage=False,
                            throttled=False, disk_free_mb=2100, uptime_s=86400, outbox=0,
                            kiosk="ok"),
            counters=m.Counters(*self.counters))
        return self.topics[Kind.STATE], m.encode(msg, validate=validate), True

    def event(self, ts: int, rng: random.Random, validate: bool = False) -> tuple[str, bytes, bool]:
        """A mix of visits, doors, borrows and returns (that open and close loans),
        dispensing with its water-level changes and refills, rare slot faults."""
        r = rng.random()
        etype, data = "", {}
        if self.door_open:  # a door opened closes again
            self.door_open = False
            etype, data = "door_closed", {"door": "entrance"}
        elif r < 0.28:
            self.door_open = True
            etype, data = "door_opened", {"door": "entrance"}
        elif r < 0.58:
            ready = [i for i, b in enumerate(self.banks)
                     if b is not None and self.charges[i] >= 80 and self.fault_slot != i + 1]
            empty = [i for i, b in enumerate(self.banks) if b is None]
            rider = "r:" + _hex(self.sid, self.counters[1], rng.random())
            if ready and (not self.out or not empty or rng.random() < 0.4):
                i = rng.choice(ready)
                bank, self.banks[i] = self.banks[i], None
                self.out.append(bank)
                self.counters[1] += 1
                etype = "bank_borrowed"
                data = {"slot": i + 1, "bank": bank, "charge": self.charges[i],
                        "rider": rider}
            elif self.out and empty:
                i = rng.choice(empty)
                bank = self.out.pop(0)
                self.banks[i], self.charges[i] = bank, rng.randrange(30, 70)
                self.counters[2] += 1
                etype = "bank_returned"
                data = {"slot": i + 1, "bank": bank, "charge": self.charges[i],
                        "rider": rider if rng.random() < 0.8 else None}
        elif r < 0.68:
            self.ml += rng.randrange(200, 500)
            self.level = round(max(0.0, self.level - 0.02), 2)
            new = "ok" if self.level > 0.25 else "low" if self.level > 0.05 else "empty"
            if self.level < 0.2:
                self.level, new = 0.98, "ok"
                etype, data = "refilled", {"what": "water", "staff": "li"}
            elif new != self.level_state:
                etype, data = "water_level", {"level_state": new, "level": self.level}
            self.level_state = new
        elif r < 0.685:
            if self.fault_slot is None:
                self.fault_slot = rng.randrange(1, len(self.banks) + 1)
                etype = "slot_fault"
            else:
                etype = "slot_fault_cleared"
            data = {"slot": self.fault_slot, "fault": "charger_fault"}
            if etype == "slot_fault_cleared":
                self.fault_slot = None
        if not etype:
            n = rng.randrange(1, 4)
            self.counters[0] += n
            etype, data = "visit", {"count": n}
        self.seq += 1
        msg = m.Event(self.sid, self.epoch, ts, True, self.seq, etype, data)
        return self.topics[Kind.EVENT], m.encode(msg, validate=validate), False


def mix_kind(round_: int) -> str:
    """What each station sends in round ``round_`` of the ratio run's mix: a birth,
    then a State every third round and events between."""
    return "birth" if round_ == 0 else "state" if round_ % 3 == 1 else "event"


def make_stations(prefix: str, lo: int, hi: int, seed: int) -> list[SimStation]:
    rng = random.Random(seed)
    return [SimStation(f"{prefix}-{i:05d}", i, rng) for i in range(lo, hi)]


# ---------------------------------------------------------------------------
# The publisher process (``--worker SPEC``): stdout says "ready" and the result,
# stdin says "go"; its end (the parent gone) ends the worker.


def _die_with_parent() -> None:
    """Children get SIGTERM when this process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Publisher:
    """A paho client that publishes at QoS 1 and counts the PUBACKs."""

    def __init__(self, port: int, client_id: str) -> None:
        self.acked = 0
        self.sent = 0
        self._all = threading.Event()
        # At most MAX_INFLIGHT unacknowledged: what paho would queue past its
        # window is not handed to it. With 100 000 messages queued inside paho
        # a publisher stalled for good after ~68 000 (both storms of a
        # 100 000-station run, the broker and the hub idle, no PUBACK owed).
        self._window = threading.Semaphore(MAX_INFLIGHT)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.on_publish = self._acked
        c.connect("127.0.0.1", port, 60)
        c.loop_start()
        self.client = c

    def _acked(self, client, userdata, mid, reason_code, properties) -> None:
        self._window.release()
        self.acked += 1
        if self.acked >= self.sent and self._done_sending:
            self._all.set()

    _done_sending = False

    def publish(self, t: str, payload: bytes, retain: bool) -> None:
        if not self._window.acquire(timeout=60):
            raise RuntimeError(f"no PUBACK for 60 s ({self.acked} of {self.sent} acked)")
        self.sent += 1
        self.client.publish(t, payload, qos=1, retain=retain)

    def finish(self, timeout: float = 300.0) -> bool:
        self._done_sending = True
        if self.acked >= self.sent:
            self._all.set()
        ok = self._all.wait(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        return ok


def worker(spec: dict) -> int:
    _die_with_parent()
    go = threading.Event()

    def stdin_watch() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()
        os._exit(3)  # the parent is gone

    threading.Thread(target=stdin_watch, daemon=True).start()
    rng = random.Random(spec["seed"])
    stations = make_stations(spec["prefix"], spec["lo"], spec["hi"], spec["seed"])
    if spec.get("seqs_in"):
        seqs = json.loads(Path(spec["seqs_in"]).read_text())
        for st in stations:
            st.seq = seqs.get(st.sid, 0)
    for st in stations:
        st.rev = REV_BASE[spec["phase"]]
    # The first payloads of each kind are checked against the contract, the rest
    # encoded as the agent does after the same check.
    checked = 0

    def build(st: SimStation, kind: str, ts: int) -> tuple[str, bytes, bool]:
        nonlocal checked
        validate = checked < 300
        checked += 1
        if kind == "birth":
            return st.birth(ts, validate)
        if kind == "state":
            return st.state(ts, rng, validate)
        return st.event(ts, rng, validate)

    mode = spec["mode"]
    pub = Publisher(spec["port"], spec["client_id"])
    if mode in ("mix", "storm"):
        now = int(time.time() * 1000)
        msgs = []
        if mode == "mix":  # round-robin over the stations: a birth, then States and events
            for r in range(spec["rounds"]):
                msgs.extend(build(st, mix_kind(r), now) for st in stations)
        else:  # every station's birth and State at once
            for st in stations:
                msgs.append(build(st, "birth", now))
                msgs.append(build(st, "state", now))
        sizes = [len(p) for _, p, _ in msgs]
        _say(ready=True, messages=len(msgs), bytes_mean=statistics.fmean(sizes),
             bytes_min=min(sizes), bytes_max=max(sizes))
        if spec.get("wait_go"):
            go.wait()
        t0 = time.monotonic()
        for t, p, retain in msgs:
            pub.publish(t, p, retain)
        t_sent = time.monotonic()
        ok = pub.finish()
        _say(done=True, ok=ok, sent=pub.sent, acked=pub.acked, send_s=t_sent - t0,
             ack_s=time.monotonic() - t0)
        return 0

    # mode == "rate": each station a State per minute (at its own phase) and Poisson
    # events at its own rate (mean ``events_per_min``), for ``seconds``.
    seconds = spec["seconds"]
    sched: list[tuple[float, int, str]] = []
    for i in range(len(stations)):
        phase = rng.uniform(0, 60)
        t = phase
        while t < seconds:
            sched.append((t, i, "state"))
            t += 60
        rate = spec["events_per_min"] * rng.expovariate(1.0) / 60  # per second
        if rate > 0:
            t = rng.expovariate(rate)
            while t < seconds:
                sched.append((t, i, "event"))
                t += rng.expovariate(rate)
    sched.sort()
    _say(ready=True, messages=len(sched))
    go.wait()
    t0 = time.monotonic()
    late = array.array("f")
    n = len(sched)
    i = 0
    while i < n:
        now = time.monotonic() - t0
        while i < n and sched[i][0] <= now:
            at, idx, kind = sched[i]
            t, p, retain = build(stations[idx], kind, int(time.time() * 1000))
            pub.publish(t, p, retain)
            late.append(time.monotonic() - t0 - at)
            i += 1
        if i < n:
            wait = sched[i][0] - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(min(wait, 0.02))
    t_sent = time.monotonic() - t0
    ok = pub.finish()
    if spec.get("seqs_out"):
        Path(spec["seqs_out"]).write_text(json.dumps({st.sid: st.seq for st in stations}))
    lateness = sorted(late)
    _say(done=True, ok=ok, sent=pub.sent, acked=pub.acked, send_s=t_sent,
         late_p99=lateness[int(0.99 * (len(lateness) - 1))] if lateness else 0.0,
         late_max=lateness[-1] if lateness else 0.0)
    return 0


# ---------------------------------------------------------------------------
# The parent: broker, workers, consumers, progress

PROCS: list[subprocess.Popen] = []
BROKERS: list[subprocess.Popen] = []


def check_brokers() -> None:
    for proc in BROKERS:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited (status {proc.returncode})")


def progress(text: str, end: str = "") -> None:
    sys.stderr.write("\r\033[K" + text + end)
    sys.stderr.flush()


def start_mosquitto(work: Path) -> tuple[subprocess.Popen, int]:
    """A private Mosquitto on a free port; returns it and the port. A port taken
    meanwhile by someone else's broker (which would answer in its stead) is
    caught by ours exiting, and another port is tried."""
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("Mosquitto is not installed: apt-get install mosquitto")
    work.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"max_queued_messages {MAX_QUEUED}\n"
            "max_queued_bytes 0\n"
            f"max_inflight_messages {MAX_INFLIGHT}\n"
            "log_type error\nlog_type warning\nlog_type notice\n")
        log = open(work / "broker.log", "ab")  # noqa: SIM115 - the child's
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log,
                                preexec_fn=_die_with_parent)
        log.close()
        PROCS.append(proc)
        BROKERS.append(proc)
        up = wait_for_port(port)
        time.sleep(0.3)  # a broker that could not bind exits at once
        if up and proc.poll() is None:
            return proc, port
        stop(proc)
    raise RuntimeError(f"mosquitto did not start; see {work / 'broker.log'}")


def broker_log_about(work: Path, client_id: str, lines: int = 6) -> list[str]:
    """The broker's last log lines naming ``client_id`` (why it was disconnected)."""
    try:
        text = (work / "broker.log").read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if client_id in ln][-lines:]


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in PROCS:
        PROCS.remove(proc)
    if proc in BROKERS:
        BROKERS.remove(proc)


class Workers:
    """Publisher processes running ``worker(spec)``; each says ready, then done."""

    def __init__(self, specs: list[dict]) -> None:
        self.procs = []
        for spec in specs:
            p = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            PROCS.append(p)
            self.procs.append(p)
        self.ready = [self._read(p) for p in self.procs]
        self.results: list[dict] = []

    @staticmethod
    def _read(p: subprocess.Popen) -> dict:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"publisher {p.pid} died (exit {p.wait()})")
        return json.loads(line)

    def go(self) -> None:
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def wait(self) -> list[dict]:
        self.results = [self._read(p) for p in self.procs]
        for p in self.procs:
            p.stdin.close()
            p.wait(30)
            PROCS.remove(p)
        for r in self.results:
            if not r.get("ok"):
                raise RuntimeError(f"a publisher did not get all its PUBACKs: {r}")
        return self.results

    def poll_done(self) -> bool:
        return all(p.poll() is not None for p in self.procs)


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, MB."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def _cpu_of(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICKS


class OthersLoad:
    """How busy the machine was with other people's work during a phase: CPU the
    machine spent, less this process, its brokers and its finished publishers,
    as a share of all cores. A high share means the phase's figures are pessimistic."""

    def __enter__(self) -> OthersLoad:
        self.share = 0.0
        self._t = time.monotonic()
        self._busy = _busy_seconds()
        t = os.times()
        self._ours = t.user + t.system + t.children_user + t.children_system
        self._brokers = {p.pid: _cpu_of(p.pid) for p in BROKERS}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system - self._ours
        ours += sum(_cpu_of(pid) - c for pid, c in self._brokers.items())
        busy = _busy_seconds() - self._busy
        self.share = max(0.0, (busy - ours) / (wall * NCPU)) if wall > 0 else 0.0


class RssPeak:
    """Samples VmRSS every 0.25 s: the peak of one phase (VmHWM is the process's)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, rss_mb()[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb()[0])


class GcWatch:
    """The cyclic garbage collector's pauses in this process (it stops every thread,
    so a full collection over the hub's many objects shows as ingest lag)."""

    def __init__(self) -> None:
        self.full = 0
        self.count = 0
        self.longest = 0.0
        self.longest_full = 0.0
        # The collecting thread's own CPU time: on a machine other processes
        # crowd, a pause's wall time also counts the time the OS ran them.
        self.longest_gen = -1
        self.longest_cpu_of = 0.0  # the CPU time of the longest (wall) pause
        self.longest_cpu = 0.0  # the most CPU time any one collection took
        self._t = self._c = 0.0

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t, self._c = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._t
        cpu = time.thread_time() - self._c
        self.count += 1
        if took > self.longest:
            self.longest, self.longest_gen, self.longest_cpu_of = took, info["generation"], cpu
        self.longest_cpu = max(self.longest_cpu, cpu)
        if info["generation"] == 2:
            self.full += 1
            self.longest_full = max(self.longest_full, took)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)


def quantile(values: list[float], q: float) -> float:
    if not len(values):
        return float("nan")  # nothing live observed (a run the broker's drops voided)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- consumers -----------------------------------------------------------------


class Baseline:
    """A bare paho-mqtt 2.x subscriber with the hub's session and subscriptions
    that only ``json.loads`` each payload (or does ``work(msg)`` instead; or is
    ``client_class``, such as the hub's own ``BulkClient``, instead of paho's)."""

    def __init__(self, port: int, client_id: str = f"bench-baseline-{RUN}",
                 work: Callable[[mqtt.MQTTMessage], object] | None = None,
                 client_class: type[mqtt.Client] = mqtt.Client) -> None:
        self.port = port
        self.work = work or (lambda msg: json.loads(msg.payload))
        self.count = 0
        self.expected = 0
        self.t_connack = 0.0
        self.t_last = 0.0
        self.done = threading.Event()
        self.subscribed = threading.Event()
        c = client_class(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False, protocol=mqtt.MQTTv311)
        c.on_connect = self._connected
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._message
        self.client = c

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        self.t_connack = time.monotonic()
        client.subscribe(hub_subscriptions())  # as the hub does on every connect

    def _message(self, client, userdata, msg) -> None:
        self.work(msg)
        if msg.topic != HUB_STATUS_TOPIC:
            self.count += 1
            if self.count == self.expected:
                self.t_last = time.monotonic()
                self.done.set()

    def register(self) -> None:
        self.client.connect("127.0.0.1", self.port, 60)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the baseline did not subscribe")
        self.client.disconnect()
        self.client.loop_stop()

    def drain(self, expected: int, timeout: float) -> float:
        """Seconds from CONNACK to the last message processed."""
        self.count, self.expected = 0, expected
        self.done.clear()
        self.client.connect("127.0.0.1", self.port, 60)
        self.client.loop_start()
        try:
            if not self.done.wait(timeout):
                raise RuntimeError(f"baseline got {self.count} of {expected} messages")
            return self.t_last - self.t_connack
        finally:
            self.client.disconnect()
            self.client.loop_stop()


class LagRecorder:
    """Stands in for ``hub.ingest.lag``: keeps every value the hub observes (while
    ``on``) and passes it on to the real histogram."""

    def __init__(self, histogram) -> None:
        self.histogram = histogram
        self.values = array.array("f")
        self.on = False

    def observe(self, value: float) -> None:
        self.histogram.observe(value)
        if self.on:
            self.values.append(value)


class HubUnderTest:
    """An in-process ``Hub`` with a counter of the station messages its MQTT
    callback finished (the instrumentation only wraps paho's callbacks)."""

    def __init__(self, port: int, database: str, client_id: str = f"bench-hub-{RUN}") -> None:
        from prometheus_client import CollectorRegistry

        from hub.config import parse_hub_config
        from hub.service import Hub

        config = parse_hub_config({
            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 30,
                     "client_id": client_id},
            "database": database,
            "http": {"host": "127.0.0.1", "port": 0},
        })
        self.hub = Hub(config, registry=CollectorRegistry())
        # The scheduled collections (Hub.start(tune_gc=True)): when and how long.
        self.collections: list[tuple[float, str, float]] = []
        collect = self.hub._collect

        def timed_collect(full: bool, **kw: bool) -> int:
            # The pause is the collector's own (start to stop, all threads held),
            # not the job's wall time, which includes waiting for the GIL.
            pauses: list[tuple[int, float]] = []
            began = [0.0]

            def watch(phase: str, info: dict) -> None:
                if phase == "start":
                    began[0] = time.perf_counter()
                elif began[0]:  # not the end of one that began before we listened
                    pauses.append((info["generation"], time.perf_counter() - began[0]))
                    began[0] = 0.0

            t0 = time.monotonic()
            gc.callbacks.append(watch)
            try:
                found = collect(full, **kw)  # frozen=True: the walk of everything
            finally:
                gc.callbacks.remove(watch)
            mine = [d for g, d in pauses if g == (2 if full else 1)]
            kind = "everything" if kw.get("frozen") else "full" if full else "young"
            self.collections.append((t0, kind, max(mine, default=0.0)))
            return found

        self.hub._collect = timed_collect
        self.count = 0
        self.expected = -1
        self.t_connack = 0.0
        self.t_last = 0.0
        self.done = threading.Event()
        self.lag = LagRecorder(self.hub.ingest.lag)
        self.hub.ingest.lag = self.lag
        self.client_id = client_id
        self.disconnects = 0
        self.broker_dir: Path | None = None
        client = self.hub.ingest._client
        on_connect, on_message = client.on_connect, client.on_message
        on_disconnect = client.on_disconnect

        def disconnected(*args) -> None:
            self.disconnects += 1  # a measurement with one is void: retained copies flood in
            on_disconnect(*args)

        def connected(*args) -> None:
            self.t_connack = time.monotonic()
            on_connect(*args)

        def message(c, userdata, msg) -> None:
            on_message(c, userdata, msg)
            if msg.topic != HUB_STATUS_TOPIC:
                self.count += 1
                if self.count == self.expected:
                    self.t_last = time.monotonic()
                    self.done.set()

        client.on_connect = connected
        client.on_message = message
        client.on_disconnect = disconnected

    def start(self) -> None:
        self.t_started = time.monotonic()
        self.hub.start(tune_gc=True)  # as ``yizhan hub`` (Hub.run) does
        if not self.hub.ingest.connected.wait(15):
            raise RuntimeError("the hub did not connect to the broker")

    def counts(self) -> dict[str, float]:
        """``yizhan_hub_messages_total`` by result, summed over kinds."""
        out: dict[str, float] = {}
        for fam in self.hub.ingest.messages.collect():
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[s.labels["result"]] = out.get(s.labels["result"], 0) + s.value
        return out

    def total(self) -> int:
        return int(sum(self.counts().values()))

    def close(self) -> None:
        self.hub.close()


# ---------------------------------------------------------------------------
# 1. Ingest ratio


def ratio_run(kind: str, database: str, work: Path, n_msgs: int, n_stations: int,
              reps: int) -> dict:
    """Alternating which consumer drains first, ``reps`` times; a fresh broker each."""
    base_rates, hub_rates, pub_rates, sizes = [], [], [], None
    rounds = n_msgs // n_stations
    for rep in range(reps):
        broker, port = start_mosquitto(work / f"broker-{kind}-{rep}")
        try:
            base = Baseline(port)
            base.register()
            reg = HubUnderTest(port, database)
            reg.start()
            reg.close()
            progress(f"[ingest {kind} {rep + 1}/{reps}] publishing {n_msgs} messages "
                     f"from {n_stations} stations while both are away…")
            w = Workers([{"mode": "mix", "phase": "mix", "port": port, "seed": rep,
                          "client_id": f"bench-pub-{RUN}", "prefix": f"r{rep}", "lo": 0,
                          "hi": n_stations, "rounds": rounds}])
            sizes = w.ready[0]
            w.go()
            pub_rates.append(sizes["messages"] / w.wait()[0]["ack_s"])
            n = sizes["messages"]
            expected = n + 2 * n_stations  # and the retained Status and State, re-sent
            order = ("baseline", "hub") if rep % 2 == 0 else ("hub", "baseline")
            for who in order:
                progress(f"[ingest {kind} {rep + 1}/{reps}] {who} draining {expected} "
                         f"messages…")
                if who == "baseline":
                    secs = base.drain(expected, timeout=120)
                    base_rates.append(expected / secs)
                else:
                    h = HubUnderTest(port, database)
                    h.expected = expected
                    try:
                        h.start()
                        if not h.done.wait(300):
                            raise RuntimeError(f"the hub took {h.count} of {expected}")
                        if not h.hub.writer.flush(120):
                            raise RuntimeError("the hub's writer did not commit")
                        t_end = time.monotonic()
                        taken = h.total()
                        failed = h.hub.writer.failed
                    finally:
                        h.close()
                    if taken != expected or failed:
                        raise RuntimeError(f"the hub counted {taken} of {expected} "
                                           f"(writer failed {failed})")
                    hub_rates.append(expected / (t_end - h.t_connack))
                    del h
                    gc.collect()
        finally:
            stop(broker)
    ratios = [h / b for h, b in zip(hub_rates, base_rates, strict=True)]
    progress(f"[ingest {kind}] hub {statistics.median(hub_rates):.0f} msg/s, baseline "
             f"{statistics.median(base_rates):.0f} msg/s, ratio "
             f"{statistics.median(ratios):.2f}", end="\n")
    return {"base": base_rates, "hub": hub_rates, "ratios": ratios, "messages": expected,
            "sizes": sizes, "publisher": pub_rates}


@contextlib.contextmanager
def pg_database(server: str):
    """A fresh database on ``server`` for the run, dropped after (None if unreachable)."""
    try:
        import psycopg
        import sqlalchemy as sa
        from psycopg import sql

        admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    except Exception as err:  # the row is skipped with the reason
        yield None, f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
        return
    name = "yz_bench_" + secrets.token_hex(5)
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = sa.make_url(server).set(database=name).render_as_string(hide_password=False)
        yield url, None
    finally:
        with contextlib.suppress(Exception):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))
        admin.close()


# ---------------------------------------------------------------------------
# 2 and 3. Fleet and storms, on one hub


def _lost(h: HubUnderTest, before: int) -> dict:
    """How often the hub lost the broker during a phase, and what the broker said."""
    n = h.disconnects - before
    said = broker_log_about(h.broker_dir, h.client_id) if n and h.broker_dir else []
    return {"disconnects": n, "broker_said": said}


def storm(h: HubUnderTest, port: int, phase: str, n_stations: int, seqs: Path | None,
          label: str) -> dict:
    half = n_stations // 2
    specs = [{"mode": "storm", "phase": phase, "port": port, "seed": 100 + k,
              "client_id": f"bench-storm-{k}-{RUN}", "prefix": "st", "lo": lo, "hi": hi,
              "wait_go": True, "seqs_in": str(seqs) if seqs else None}
             for k, (lo, hi) in enumerate(((0, half), (half, n_stations)))]
    progress(f"[{label}] building {2 * n_stations} payloads…")
    w = Workers(specs)
    n = sum(r["messages"] for r in w.ready)
    counts0 = h.counts()
    before = sum(counts0.values())
    lost0 = h.disconnects
    backlog = None
    with RssPeak() as peak, OthersLoad() as others:
        t0 = time.monotonic()
        w.go()
        last = (t0, 0)
        while True:
            got = int(h.total() - before)
            now = time.monotonic()
            if backlog is None and w.poll_done():
                backlog = n - got  # at the broker (or in flight) when publishing ended
            if got >= n:
                break
            check_brokers()
            if now - t0 > 600:
                raise RuntimeError(f"[{label}] the hub took only {got} of {n} in 600 s")
            if now - last[0] >= 0.5:
                rate = (got - last[1]) / (now - last[0])
                last = (now, got)
                progress(f"[{label}] {now - t0:5.1f} s  applied {got}/{n}  "
                         f"({rate:.0f}/s)  writer queue {h.hub.writer.queue_depth}  "
                         f"RSS {rss_mb()[0]:.0f} MB")
            time.sleep(0.02)
        t_applied = time.monotonic() - t0
        if not h.hub.writer.flush(300):
            raise RuntimeError("the hub's writer did not commit")
        t_done = time.monotonic() - t0
        results = w.wait()
    counts = {k: v - counts0.get(k, 0) for k, v in h.counts().items()}
    progress(f"[{label}] {n} messages absorbed in {t_done:.1f} s", end="\n")
    return {"messages": n, "applied_s": t_applied, "absorbed_s": t_done,
            "publish_s": max(r["ack_s"] for r in results), "peak_rss": peak.peak,
            "backlog": backlog if backlog is not None else 0, "others": others.share,
            **_lost(h, lost0),
            "counts": counts, "hwm": rss_mb()[1], "failed": h.hub.writer.failed}


def fleet(h: HubUnderTest, port: int, n_stations: int, seconds: float,
          seqs: Path) -> dict:
    spec = {"mode": "rate", "phase": "fleet", "port": port, "seed": 7,
            "client_id": f"bench-fleet-{RUN}", "prefix": "st", "lo": 0, "hi": n_stations,
            "seconds": seconds, "events_per_min": 2.0, "seqs_out": str(seqs)}
    progress(f"[fleet] scheduling {n_stations} stations for {seconds:.0f} s…")
    w = Workers([spec])
    n = w.ready[0]["messages"]
    before = h.total()
    lost0 = h.disconnects
    h.lag.values = array.array("f")
    max_queue = 0
    with RssPeak() as peak, GcWatch() as gcw, OthersLoad() as others:
        h.lag.on = True
        t0 = time.monotonic()
        w.go()
        last = (t0, 0)
        while not w.poll_done():
            time.sleep(0.1)
            check_brokers()
            max_queue = max(max_queue, h.hub.writer.queue_depth)
            now = time.monotonic()
            if now - last[0] >= 1.0:
                got = int(h.total() - before)
                lags = sorted(h.lag.values[-2000:])
                p99 = quantile(lags, 0.99) if lags else 0.0
                progress(f"[fleet] {now - t0:5.1f}/{seconds:.0f} s  ingested {got}/{n}  "
                         f"({(got - last[1]) / (now - last[0]):.0f}/s)  recent lag p99 "
                         f"{p99 * 1000:.0f} ms  writer queue {h.hub.writer.queue_depth}  "
                         f"RSS {rss_mb()[0]:.0f} MB")
                last = (now, got)
        result = w.wait()[0]
        deadline = time.monotonic() + 120
        while h.total() - before < result["acked"] and time.monotonic() < deadline:
            time.sleep(0.05)
        h.hub.writer.flush(120)
        h.lag.on = False
    got = int(h.total() - before)
    lags = sorted(h.lag.values)
    rss, hwm = rss_mb()
    progress(f"[fleet] {got} messages, lag p99 {quantile(lags, 0.99) * 1000:.0f} ms",
             end="\n")
    return {"planned": n / seconds, "achieved": result["sent"] / result["send_s"],
            "sent": result["sent"], "ingested": got, "late_p99": result["late_p99"],
            "late_max": result["late_max"], "p50": quantile(lags, 0.5),
            "p99": quantile(lags, 0.99), "max": quantile(lags, 1.0), "observed": len(lags),
            "over_1s": sum(1 for v in lags if v >= 1.0) / max(1, len(lags)), "rss": rss,
            "peak_rss": max(peak.peak, rss), "hwm": hwm, "max_queue": max_queue,
            "gc_full": gcw.full, "gc_full_longest": gcw.longest_full,
            "others": others.share,
            "seconds": seconds, "stations": n_stations, **_lost(h, lost0)}


# ---------------------------------------------------------------------------


def fmt_int(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def spread(xs: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}" if len(xs) > 1 else fmt.format(xs[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="about 1 minute: 10 000 stations, 20 s fleet, fewer messages")
    p.add_argument("--stations", type=int, help="fleet and storm size (100 000; quick 10 000)")
    p.add_argument("--seconds", type=float, help="fleet duration (60; quick 20)")
    p.add_argument("--messages", type=int, help="messages per ingest-ratio run (20 000)")
    p.add_argument("--reps", type=int,
                   help="ingest-ratio runs per store (3; quick: 2 on SQLite, 1 on PostgreSQL)")
    p.add_argument("--pg", default=os.environ.get("YIZHAN_TEST_PG", PG_DEFAULT),
                   help="PostgreSQL server to create the run's database on")
    p.add_argument("--skip", default="", help="comma list of: ratio,pg,fleet")
    p.add_argument("--fleet-store", choices=("sqlite", "pg"), default="sqlite",
                   help="the store of the fleet and storm phases (SQLite)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        try:
            return worker(json.loads(args.worker))
        except KeyboardInterrupt:
            return 130
    quick = args.quick
    # 100 000: issue 21's one hub (make bench); 50 000 was issue 4's.
    n_stations = args.stations or (10_000 if quick else 100_000)
    seconds = args.seconds or (20.0 if quick else 60.0)
    n_msgs = args.messages or (6_000 if quick else 20_000)
    reps = args.reps or (2 if quick else 3)
    pg_reps = args.reps or (1 if quick else 3)  # --quick: one PostgreSQL run, no spread
    skip = set(filter(None, args.skip.split(",")))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-hub-"))
    started = time.monotonic()
    rss0 = rss_mb()[0]
    res: dict = {}
    stack = contextlib.ExitStack()  # the fleet's PostgreSQL database, dropped at the end
    try:
        if "fleet" not in skip:
            # Fleet and storms first, on one hub, so that VmHWM is that hub's.
            broker, port = start_mosquitto(work / "broker-fleet")
            import hub.service  # noqa: F401  (imports done before the baseline RSS)
            rss0 = rss_mb()[0]
            fleet_db = contextlib.nullcontext((f"sqlite:///{work / 'fleet.db'}", None))
            if args.fleet_store == "pg":
                fleet_db = pg_database(args.pg)
            url, why = stack.enter_context(fleet_db)
            if url is None:
                raise RuntimeError(f"no PostgreSQL for the fleet: {why}")
            res["fleet_store"] = "PostgreSQL" if args.fleet_store == "pg" else "SQLite"
            h = HubUnderTest(port, url)
            h.broker_dir = work / "broker-fleet"
            h.start()
            seqs = work / "seqs.json"
            try:
                # Every collection's pause from the first storm to the second's
                # end, the scheduler's and the automatic ones alike.
                with GcWatch() as watch:
                    res["storm1"] = storm(h, port, "storm1", n_stations, None,
                                          "first contact")
                    res["fleet"] = fleet(h, port, n_stations, seconds, seqs)
                    res["storm2"] = storm(h, port, "storm2", n_stations, seqs,
                                          "reconnect storm")
                res["gc_run"] = {"longest": watch.longest, "longest_full": watch.longest_full,
                                 "full": watch.full, "count": watch.count,
                                 "gen": watch.longest_gen, "cpu_of": watch.longest_cpu_of,
                                 "cpu": watch.longest_cpu}
                res["hub_rss_end"], res["hub_hwm"] = rss_mb()
                res["stations"] = n_stations
                res["gc"] = scheduled_collections(h)
            finally:
                h.close()
                stop(broker)
            del h
            gc.collect()
        if "ratio" not in skip:
            with OthersLoad() as others:
                res["sqlite"] = ratio_run("SQLite", f"sqlite:///{work / 'ratio.db'}", work,
                                          n_msgs, 1000, reps)
            res["sqlite"]["others"] = others.share
        if "pg" not in skip:
            with pg_database(args.pg) as (url, why):
                if url is None:
                    res["pg_skipped"] = why
                    progress(f"[ingest PostgreSQL] skipped: {why}", end="\n")
                else:
                    with OthersLoad() as others:
                        res["pg"] = ratio_run("PostgreSQL", url, work, n_msgs, 1000, pg_reps)
                    res["pg"]["others"] = others.share
    except KeyboardInterrupt:
        progress("interrupted; cleaning up", end="\n")
        return 130
    finally:
        for proc in list(PROCS):
            stop(proc, 5)
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    report(res, rss0, quick, time.monotonic() - started)
    return 0


def ms(x: float) -> str:
    """Milliseconds; ``ts`` is whole milliseconds, so a lag under 1 ms reads 0."""
    return "< 1" if x < 0.001 else f"{x * 1000:.0f}"


def scheduled_collections(h: HubUnderTest) -> dict:
    """How long the hub's scheduled collections stop it, with every station loaded
    (``Hub.run`` runs the young one every 10 min and the full one every 6 h)."""
    during = [(kind, secs) for _, kind, secs in h.collections]
    out = {"objects": len(gc.get_objects()) + gc.get_freeze_count(), "during": during,
           "seconds": time.monotonic() - h.t_started}
    # "frozen": the walk of everything, frozen objects too, that start() makes
    # once (what the 6-hourly one was before issue 21): what it finds is what
    # the fleet's frozen objects leaked in cycles during the run.
    for name in ("young", "all", "frozen"):
        collect = getattr(h.hub, f"collect_{name}_garbage", None)
        if collect is not None:
            out[f"{name}_found"] = collect()
            out[name] = h.collections[-1][2]
            if name == "young":
                # What the hub holds once the storm is written and its next
                # minute's collection ran (which gives freed memory back, since
                # session 10): the end's RSS still holds the storm's queue.
                out["rss_settled"] = rss_mb()[0]
    return out


def report(res: dict, rss0: float, quick: bool, elapsed: float) -> None:
    print(f"hub ingest{' (--quick)' if quick else ''}, {elapsed:.0f} s; Mosquitto with "
          f"max_queued_messages {MAX_QUEUED}, max_inflight_messages {MAX_INFLIGHT}")
    print()
    print("| measure | result | target | met |")
    print("|---|---|---|---|")
    verdicts = []

    def verdict(ok: bool, phase: dict | None = None) -> str:
        lost = (phase or {}).get("disconnects", 0)
        verdicts.append(ok and not lost)
        if lost:  # the re-subscribe's retained copies then flood the phase
            return f"**void**: the hub lost the broker {lost}×"
        return "yes" if ok else "**no**"

    for key, name in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
        r = res.get(key)
        if r is None:
            if key == "pg" and "pg_skipped" in res:
                print(f"| ingest ratio, {name} | skipped: {res['pg_skipped']} | ≥ 0.6 | — |")
            continue
        ratio = statistics.median(r["ratios"])
        print(f"| ingest ratio, {name}: {fmt_int(r['messages'])} queued messages drained, "
              f"hub ÷ bare paho + json.loads (median of {len(r['ratios'])}) | "
              f"{fmt_int(statistics.median(r['hub']))} ÷ "
              f"{fmt_int(statistics.median(r['base']))} msg/s = **{ratio:.2f}** "
              f"(runs {spread(r['ratios'], '{:.2f}')}; hub {spread(r['hub'])}, baseline "
              f"{spread(r['base'])}) | ≥ 0.6 | {verdict(ratio >= 0.6)} |")
    f = res.get("fleet")
    if f:
        print(f"| fleet of {fmt_int(f['stations'])} stations ({res['fleet_store']}), "
              f"{f['seconds']:.0f} s, "
              f"{fmt_int(f['planned'])} msg/s planned, {fmt_int(f['achieved'])} achieved: "
              f"ingest lag p50 / p99 / max | {ms(f['p50'])} / **{ms(f['p99'])}** / "
              f"{ms(f['max'])} ms ({100 * f['over_1s']:.1f} % ≥ 1 s) | p99 < 1 s | "
              f"{verdict(f['p99'] < 1.0, f)} |")
        print(f"| hub RSS in the fleet run: end / peak (process before the hub: "
              f"{rss0:.0f} MB) | {f['rss']:.0f} / {f['peak_rss']:.0f} MB | — | — |")
    for key, name in (("storm1", "first contact (stations new to the hub)"),
                      ("storm2", "reconnect storm (stations known)")):
        s = res.get(key)
        if not s:
            continue
        print(f"| {name}, {res['fleet_store']}: {fmt_int(s['messages'])} births + States at "
              f"once, absorbed in | "
              f"**{s['absorbed_s']:.1f} s** ({fmt_int(s['messages'] / s['absorbed_s'])} msg/s;"
              f" published in {s['publish_s']:.1f} s; peak RSS {s['peak_rss']:.0f} MB) | "
              f"≤ 60 s | {verdict(s['absorbed_s'] <= 60, s)} |")
    if "hub_hwm" in res:
        print(f"| hub process VmHWM after fleet and storms | {res['hub_hwm']:.0f} MB | — | — |")
        per = (res["hub_rss_end"] - rss0) * 1024 / res["stations"]
        print(f"| hub RSS a station at the end: (RSS {res['hub_rss_end']:.0f} − "
              f"{rss0:.0f} MB before the hub) ÷ {fmt_int(res['stations'])} | "
              f"**{per:.1f} KB** | — | — |")
        settled = res.get("gc", {}).get("rss_settled")
        if settled is not None:
            per = (settled - rss0) * 1024 / res["stations"]
            print(f"| hub RSS a station once settled (after the scheduled young collection "
                  f"that follows the storm): (RSS {settled:.0f} − {rss0:.0f} MB) ÷ "
                  f"{fmt_int(res['stations'])} | **{per:.1f} KB** | — | — |")
    r = res.get("gc_run")
    if r:
        print(f"| longest garbage-collection pause from first contact to the reconnect "
              f"storm's end ({fmt_int(r['count'])} collections, {r['full']} of the oldest "
              f"generation) | **{r['longest'] * 1000:.0f} ms** (generation {r['gen']}, "
              f"{r['cpu_of'] * 1000:.0f} ms of its thread's CPU; the most CPU any one "
              f"took: {r['cpu'] * 1000:.0f} ms; oldest generation: "
              f"{r['longest_full'] * 1000:.0f} ms) | ≤ 200 ms of the collector's "
              f"own work | {verdict(r['cpu'] <= 0.2)} |")
    g = res.get("gc")
    if g:
        print(f"| the hub's scheduled collections over {fmt_int(g['objects'])} objects, at the "
              f"end: young (every minute) / full (every 6 h, after {g['seconds']:.0f} s of "
              f"the bench: {fmt_int(g['all_found'])} unreachable found) stop it for | "
              f"{g['young'] * 1000:.0f} / {g['all'] * 1000:.0f} ms | — | — |")
        if "frozen" in g:
            print(f"| the walk of everything, frozen objects too (start's, before it "
                  f"listens), at the end: {fmt_int(g['frozen_found'])} unreachable found "
                  f"(the cycles the frozen fleet leaked in the run) | "
                  f"{g['frozen'] * 1000:.0f} ms | — | — |")
        young = [secs for kind, secs in g["during"] if kind == "young"]
        if young:
            print(f"| young collections the scheduler ran during the phases: {len(young)}, "
                  f"each | {spread([y * 1000 for y in young])} ms | — | — |")
    print()
    if res.get("sqlite"):
        r = res["sqlite"]
        z = r["sizes"]
        print(f"- ingest: payloads {z['bytes_min']}–{z['bytes_max']} bytes (mean "
              f"{z['bytes_mean']:.0f}); one publisher process sent "
              f"{spread(r['publisher'])} msg/s (QoS 1)")
    if f:
        print(f"- fleet: {fmt_int(f['sent'])} published, {fmt_int(f['ingested'])} ingested; "
              f"publisher late by ≤ {f['late_p99'] * 1000:.0f} ms (p99); writer queue max "
              f"{f['max_queue']}; {f['gc_full']} full GC collections, longest "
              f"{f['gc_full_longest'] * 1000:.0f} ms")
    for key in ("storm1", "storm2"):
        s = res.get(key)
        if s:
            c = {k: int(v) for k, v in s["counts"].items() if v}
            print(f"- {key}: hub counted {c}; writer failed {s['failed']}; about "
                  f"{fmt_int(s['backlog'])} messages waited at the broker when publishing ended")
    for key in ("storm1", "fleet", "storm2"):
        for line in (res.get(key) or {}).get("broker_said", ()):
            print(f"- {key}, the broker's log: `{line.strip()}`")
    loads = [(name, res[key]["others"]) for key, name in
             (("sqlite", "ingest SQLite"), ("pg", "ingest PostgreSQL"), ("fleet", "fleet"),
              ("storm1", "first contact"), ("storm2", "reconnect storm"))
             if key in res and "others" in res[key]]
    if loads:
        print("- other processes on this machine used " + ", ".join(
            f"{100 * share:.0f} %" + f" ({name})" for name, share in loads)
            + f" of its {NCPU} cores (high shares make the figures pessimistic)")
    print()
    print(f"targets: {'all met' if verdicts and all(verdicts) else 'NOT all met'}")


if __name__ == "__main__":
    sys.exit(main())
