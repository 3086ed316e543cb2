"""How many simulated stations one ``yizhan sim fleet`` process holds.

A private Mosquitto (its open-file limit raised to the hard limit), then
``yizhan sim fleet`` as a real process for each fleet size: the time until every
station is online, the process's CPU once they are (a share of one core), its
peak resident memory per station, and the broker's CPU over the same window.

    .venv/bin/python bench/sim_fleet.py             # 1 000 to 19 000 stations, ~6 minutes
    .venv/bin/python bench/sim_fleet.py --sizes 2000 --seconds 30
    .venv/bin/python bench/sim_fleet.py --sizes 15000 --processes 3 --seconds 30

Stations send contract traffic at the default rates (a State heartbeat a minute,
6 visits an hour on the day's mean, the hour's shape at ``--speed 1``).
One process's ceiling on this machine is the open-file limit (``ulimit -Hn``):
one socket a station, in the simulator and in the broker alike; past ~28 000
stations against one broker port the source ports run out too (``--bind``).
``--processes N`` runs each size as ``yizhan sim fleet --processes N``: the
CPU is then the parent's and its children's, the RSS the children's sum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from yizhan.broker import find_mosquitto, free_port, wait_for_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds of ``pid`` (and of its children, --processes: they are alive)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    if not children:
        return own
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_s(int(k)) for k in kids)


def online_count(truth: Path) -> int:
    """Online lines in the log, or in the children's files while they run."""
    n = 0
    for path in [truth, *truth.parent.glob(truth.name + ".*")]:
        try:
            with path.open(encoding="utf-8") as f:
                n += sum(1 for line in f if '"what":"online"' in line)
        except OSError:
            pass
    return n


def one(size: int, seconds: float, work: Path, port: int, broker_pid: int,
        processes: int = 1) -> dict:
    truth = work / f"truth-{size}.jsonl"
    t0 = time.monotonic()
    sim = subprocess.Popen(
        [sys.executable, "-m", "yizhan", "sim", "fleet", "--port", str(port),
         "--stations", str(size), "--connect-rate", "1000", "--quiet",
         "--duration", str(size / 1000 + 30 + seconds), "--truth", str(truth),
         "--processes", str(processes)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while online_count(truth) < size and sim.poll() is None:
        time.sleep(0.5)
        if time.monotonic() - t0 > size / 1000 + 30:
            break
    up = online_count(truth)
    all_online_s = time.monotonic() - t0
    many = processes > 1
    c0, b0, w0 = cpu_s(sim.pid, many), cpu_s(broker_pid), time.monotonic()
    time.sleep(seconds)
    c1, b1, w1 = cpu_s(sim.pid, many), cpu_s(broker_pid), time.monotonic()
    sim.terminate()
    out, _ = sim.communicate(timeout=120)
    summary = json.loads(out.strip().splitlines()[-1])
    window = w1 - w0
    return {"stations": size, "processes": processes, "online": up,
            "connect_s": round(all_online_s, 1),
            "cpu_share": round((c1 - c0) / window, 3),
            "broker_cpu_share": round((b1 - b0) / window, 3),
            "rss_mb": summary["max_rss_mb"],
            "kb_per_station": round(summary["max_rss_mb"] * 1024 / size, 1),
            "published": summary["published"], "connect_errors": summary["connect_errors"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000,10000,19000")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="steady-state window once all are online (default 60)")
    p.add_argument("--processes", type=int, default=1,
                   help="yizhan sim fleet --processes (default 1)")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-sim-fleet-") as tmp:
        work = Path(tmp)
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_connections -1\nmax_queued_messages 100000\n")
        broker = subprocess.Popen([find_mosquitto(), "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  preexec_fn=_raise_nofile)
        try:
            wait_for_port(port, "127.0.0.1", 10)
            print(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}, "
                  f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
            for size in sizes:
                print(json.dumps(one(size, a.seconds, work, port, broker.pid,
                                     a.processes)), flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
