"""Agent footprint: resident memory and CPU per hour of a busy simulated station.

Runs the real ``yizhan agent`` (``hardware: sim``, a busy station: 60 borrows,
120 visitors and 60 cups an hour) against a private Mosquitto for ``--seconds``
(default 120) after a warm-up, beside a baseline measured in the same run: a
bare paho-mqtt client that only publishes a State-sized message every 2 s —
the least any agent must do. The simulation runs on the real clock, so a
simulated hour is an hour; CPU seconds per hour are extrapolated from the run.

    .venv/bin/python bench/agent_footprint.py --seconds 120

Targets (issue 3): under 60 MB RSS and under 2 % of one core.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from yizhan.broker import free_port, start_broker  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")

BASELINE = r"""
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline")
c.connect("127.0.0.1", int(sys.argv[1]), 30)
c.loop_start()
payload = json.dumps({"pad": "x" * 1500}).encode()
while True:
    c.publish("bench/baseline/state", payload, qos=1, retain=True)
    time.sleep(2)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=10.0)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-agent-"))
    port = free_port()
    broker, name = start_broker("mosquitto", port, work)
    cfg = work / "station.yaml"
    cfg.write_text(yaml.safe_dump({
        "hardware": "sim",
        "station": {"id": "yh-bench-01", "name": "bench"},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 30},
        "data_dir": str(work / "station"),
        "local_api": {"port": free_port()},
        "sim": {"borrows_per_hour": 60, "riders_per_hour": 120, "draws_per_hour": 60,
                "mean_loan": "10m", "seed": 1},
    }, allow_unicode=True))
    log = open(work / "agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen([sys.executable, "-m", "yizhan", "--log-level", "warning",
                              "agent", "--config", str(cfg)], stdout=log, stderr=log)
    base = subprocess.Popen([sys.executable, "-c", BASELINE, str(port)])
    try:
        time.sleep(args.warmup)
        t0 = time.monotonic()
        a0, b0 = cpu_seconds(agent.pid), cpu_seconds(base.pid)
        deadline = t0 + args.seconds
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                print(f"the agent died; see {work / 'agent.log'}", file=sys.stderr)
                return 1
            left = deadline - time.monotonic()
            print(f"\rmeasuring… {left:5.0f} s left ", end="", file=sys.stderr, flush=True)
            time.sleep(min(5.0, max(0.0, left)))
        print(file=sys.stderr)
        elapsed = time.monotonic() - t0
        a_cpu, b_cpu = cpu_seconds(agent.pid) - a0, cpu_seconds(base.pid) - b0
        a_rss, a_peak = rss_mb(agent.pid)
        b_rss, b_peak = rss_mb(base.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        base.kill()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        base.wait()
        broker.terminate()
        broker.wait()
        log.close()

    a_pct, b_pct = 100 * a_cpu / elapsed, 100 * b_cpu / elapsed
    print(f"agent footprint, {elapsed:.0f} s measured after {args.warmup:.0f} s warm-up, "
          f"broker: {name}")
    print("| process | RSS MB (peak) | CPU % of one core | CPU s per hour |")
    print("|---|---|---|---|")
    print(f"| agent (busy sim station) | {a_rss:.1f} ({a_peak:.1f}) | {a_pct:.2f} | "
          f"{a_cpu / elapsed * 3600:.0f} |")
    print(f"| baseline (bare paho publisher) | {b_rss:.1f} ({b_peak:.1f}) | {b_pct:.2f} | "
          f"{b_cpu / elapsed * 3600:.0f} |")
    ratio_cpu = a_cpu / b_cpu if b_cpu > 0 else float("inf")
    print(f"ratios agent/baseline: RSS {a_rss / b_rss:.2f}, CPU {ratio_cpu:.1f}")
    ok = a_peak < 60 and a_pct < 2.0
    print(f"targets (RSS < 60 MB, CPU < 2 % of one core): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
