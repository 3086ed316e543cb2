"""Hostile input at the station agent: the fuzzing counts for docs/benchmarks.md,
"Hostile input".

The strategies of tests/test_agent_hostile.py, run with more examples than CI
runs, against a real agent (simulated 6-slot cabinet) on a private Mosquitto:

- ``mqtt``: per subscribed topic (cmd, directory, hub/status, hub/time), payloads
  into the link's paho callback: examples, taken, refused (counted in
  ``invalid_inbound``), crashes (an exception out of the callback, a handler's
  traceback or ERROR in the log), WARNING lines;
- ``board``: a LockerBoard and Locker on a serial line whose board answers with
  drawn bytes: requests, timeouts, bad frames, error frames, polls that
  succeeded and failed, crashes (an exception other than the locker's own, a
  State or birth that would not publish);
- ``riders``: 10 000 made-up rider ids borrowing and claiming returns: what is
  kept, and the memory grown (tracemalloc).

No baseline: these are counts, not a speed.

    .venv/bin/python bench/agent_hostile.py                 # ~1 min
    .venv/bin/python bench/agent_hostile.py --examples 500 --board 50
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from firmware.agent import Agent  # noqa: E402
from firmware.config import parse_station_config  # noqa: E402
from firmware.hardware.board import LockerBoard, LockerError  # noqa: E402
from firmware.hardware.station import build_hardware  # noqa: E402
from firmware.kept import MAX_FINISHED  # noqa: E402
from firmware.locker import Locker  # noqa: E402
from tests.harness.mosquitto import Broker  # noqa: E402
from tests.harness.procs import wait_until  # noqa: E402
from tests.test_agent_hostile import (  # noqa: E402
    SID,
    SUBSCRIBED,
    Captured,
    HostileLine,
    Reporter,
    _answer,
    _publishable,
    _valid,
    payload_for,
    raw_bytes,
)
from yizhan.clock import SYSTEM_CLOCK, ManualClock  # noqa: E402
from yizhan.watchdog import Notifier  # noqa: E402


def start_agent(tmp: Path, broker: Broker) -> tuple[Agent, threading.Thread]:
    key = tmp / "fleet.key"
    key.write_bytes(b"hostile-fleet-key-0123456789abcd")
    key.chmod(0o600)
    config = parse_station_config({
        "hardware": "sim",
        "station": {"id": SID, "name": "bench"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp / "station"), "fleet_key_file": str(key),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "lockers": {"slots": 6, "poll_interval": "250ms"},
        "sim": {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7},
    }, source=None)
    agent = Agent(config, SYSTEM_CLOCK, build_hardware(config, SYSTEM_CLOCK),
                  notifier=Notifier(None))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    wait_until(agent.link.connected.is_set, 10, "the agent connected")
    return agent, thread


def fuzz_mqtt(agent: Agent, examples: int) -> dict[str, collections.Counter]:
    link, client = agent.link, agent.link._client
    captured = Captured()
    logging.getLogger("firmware").addHandler(captured)
    out: dict[str, collections.Counter] = {}
    try:
        for name in SUBSCRIBED:
            tally = out[name.split("/v1/")[-1]] = collections.Counter()
            one = _feeder(link, client, name, tally, examples)
            one()
            wait_until(agent.commands._queue.empty, 60, "the commands worked off")
            records = captured.take()
            tally["crashes"] += sum(1 for r in records
                                    if r.exc_info or r.levelno >= logging.ERROR)
            tally["warning lines"] += sum(1 for r in records if r.levelno == logging.WARNING)
    finally:
        logging.getLogger("firmware").removeHandler(captured)
    return out


def _feeder(link, client, name: str, tally: collections.Counter, examples: int):
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload_for[name] | raw_bytes)
    def one(payload: bytes) -> None:
        msg = mqtt.MQTTMessage(topic=name.encode())
        msg.payload = payload
        before = link.invalid_inbound
        tally["examples"] += 1
        try:
            link._message(client, None, msg)
        except Exception:
            tally["crashes"] += 1
        refused = link.invalid_inbound - before
        tally["refused" if refused else "taken"] += 1
        if bool(refused) == _valid(name, payload):
            tally["misjudged"] += 1

    return one


def fuzz_board(examples: int) -> collections.Counter:
    tally: collections.Counter = collections.Counter()
    quiet = logging.getLogger("firmware")
    level, quiet.level = quiet.level, logging.CRITICAL

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data) -> None:
        line = HostileLine(lambda request: _answer(data.draw, request))
        board = LockerBoard("hostile://board", open_port=lambda *a, **k: line)
        clock = ManualClock()
        locker = Locker(board, Reporter(), clock, poll_interval=2.0)
        tally["examples"] += 1
        try:
            for _ in range(2):
                locker.poll_once()
                clock.advance(2.0)
                _publishable(locker)
            for call in (lambda: board.unlock(1), lambda: board.charge(1, True)):
                try:
                    call()
                except LockerError as err:
                    tally[type(err).__name__] += 1
        except Exception:
            tally["crashes"] += 1
        tally["requests"] += board.requests
        tally["timeouts"] += board.timeouts
        tally["bad frames"] += board.bad_frames
        tally["polls ok"] += locker.polls - locker.failed_polls
        tally["polls failed"] += locker.failed_polls

    try:
        one()
    finally:
        quiet.level = level
    return tally


def made_up_riders(agent: Agent, count: int) -> dict[str, int]:
    lending = agent.lending
    quiet = logging.getLogger("firmware")
    level, quiet.level = quiet.level, logging.WARNING

    def run(start: int, n: int) -> None:
        for i in range(start, start + n):
            rider = "r:" + f"{i:024x}"
            lending.borrow(rider)
            lending.return_desk.expect(rider)

    try:
        run(0, MAX_FINISHED)
        tracemalloc.start()
        run(MAX_FINISHED, MAX_FINISHED)
        before = tracemalloc.take_snapshot()
        started = time.perf_counter()
        run(2 * MAX_FINISHED, count)
        seconds = time.perf_counter() - started
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        quiet.level = level
    return {"ids": count, "attempts kept": len(lending._attempts),
            "claims kept": len(lending.return_desk._claims),
            "bytes grown": sum(s.size_diff for s in after.compare_to(before, "filename")),
            "us per id (borrow + claim, traced)": int(seconds / count * 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=3000, help="per MQTT topic")
    ap.add_argument("--board", type=int, default=200, help="hostile board examples")
    ap.add_argument("--riders", type=int, default=10_000, help="made-up rider ids")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "mq") as broker:
        agent, thread = start_agent(Path(tmp), broker)
        try:
            t0 = time.perf_counter()
            mqtt_counts = fuzz_mqtt(agent, args.examples)
            t1 = time.perf_counter()
            riders = made_up_riders(agent, args.riders)
            healthy = agent.link.connected.is_set() and agent.link.healthy()
        finally:
            agent.stop()
            thread.join(15)
    t2 = time.perf_counter()
    board = fuzz_board(args.board)
    t3 = time.perf_counter()

    print(f"MQTT into the callback ({t1 - t0:.0f} s):\n")
    print("| topic | examples | taken | refused (counted) | misjudged | crashes | WARNING lines |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c in mqtt_counts.items():
        print(f"| {name} | {c['examples']} | {c['taken']} | {c['refused']} | {c['misjudged']} "
              f"| {c['crashes']} | {c['warning lines']} |")
    print(f"\nagent healthy afterwards: {healthy}\n")
    print(f"Board answers ({t3 - t2:.0f} s): " + ", ".join(f"{k} {v}" for k, v in board.items()))
    print("\nMade-up riders: " + ", ".join(f"{k} {v}" for k, v in riders.items()))


if __name__ == "__main__":
    main()
