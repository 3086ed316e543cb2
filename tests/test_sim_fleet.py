"""``yizhan sim fleet`` against a real Mosquitto and a real ``yizhan hub``: the hub's
view (online/offline, outages, events stored) matches the simulator's ground-truth
log; bad arguments exit 2 with a clear message before anything connects.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

TOKEN = "sim-fleet-test-token-0123456789"
STATIONS = 50
CUT = "sim-00007"  # power cut: the will fires at once
SILENT = "sim-00011"  # network cut: the will fires after 1.5 keepalives
TAMPERED = "sim-00003"
HEALTHY = "sim-00001"


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.close()


def read_truth(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stored_events(db: Path) -> set[tuple[str, str, int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return set(conn.execute("SELECT sid, epoch, seq, type FROM events"))


def test_the_hub_sees_what_the_fleet_did(tmp_path, broker_factory, procs):
    broker = broker_factory()
    port = free_port()
    db = tmp_path / "hub.db"
    cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{db}",
        "http": {"host": "127.0.0.1", "port": port},
        "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
    })
    base = f"http://127.0.0.1:{port}"
    hub = procs.start("hub", "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub.tail)
    truth_path = tmp_path / "truth.jsonl"
    sim = procs.start(
        "sim", "sim", "fleet", "--host", broker.host, "--port", str(broker.port),
        "--stations", str(STATIONS), "--duration", "18", "--visits", "720",
        "--keepalive", "2", "--quiet", "--truth", str(truth_path),
        "--fault", f"power_cut:{CUT}@4+8", "--fault", f"network_cut:{SILENT}@4+8",
        "--fault", f"tamper:{TAMPERED}@3+2")

    def station(sid: str) -> dict:
        status, body = http_json(f"{base}/api/v1/stations/{sid}", TOKEN)
        return body if status == 200 else {}

    # While the fleet runs: everyone online, then the cut station goes down.
    wait_until(lambda: station(HEALTHY).get("online") is True, 15, "the fleet online",
               on_fail=sim.tail)
    wait_until(lambda: station(CUT).get("online") is False, 15, "the power cut seen",
               on_fail=lambda: sim.tail() + hub.tail())
    assert station(HEALTHY)["online"]
    assert sim.wait(60) == 0, sim.tail()

    truth = read_truth(truth_path)
    summary = truth[-1]
    assert summary["what"] == "summary" and summary["stations"] == STATIONS
    made = {(r["sid"], r["epoch"], r["seq"], r["type"]) for r in truth if r["what"] == "event"}
    assert len(made) == summary["events"] > STATIONS
    # Every event the stations made is stored once (those made during the network
    # cut arrive from the outbox after it).
    wait_until(lambda: stored_events(db) >= made, 30, "every event stored", on_fail=hub.tail)
    assert stored_events(db) == made

    # The clean stop at the end: every station offline, its birth matched.
    status, body = http_json(f"{base}/api/v1/stations", TOKEN)
    sims = [s for s in body["stations"] if s["sid"].startswith("sim-")]
    assert status == 200 and len(sims) == STATIONS
    wait_until(lambda: not any(s["online"] for s in http_json(
        f"{base}/api/v1/stations", TOKEN)[1]["stations"]), 15, "all offline after the stop")

    def by(sid: str, what: str) -> list[dict]:
        return [r for r in truth if r.get("sid") == sid and r["what"] == what]

    def outages(sid: str) -> list[dict]:
        first = by(sid, "online")[0]["t"]
        last = by(sid, "offline")[-1]
        assert last["reason"] == "shutdown"
        status, up = http_json(f"{base}/api/v1/stations/{sid}/uptime?from={first}"
                               f"&to={last['t'] - 1}", TOKEN)
        assert status == 200, up
        return up["outages"]

    # Cut stations: one outage each, from the last message the hub heard to the
    # reconnect (receive times against send times: within a second).
    for sid, reason in ((CUT, "power_cut"), (SILENT, "network_cut")):
        down = [r for r in by(sid, "offline") if r["reason"] == reason]
        assert len(down) == 1
        back = by(sid, "online")[1]["t"]
        seen = outages(sid)
        assert len(seen) == 1, (sid, seen)
        assert abs(seen[0]["start"] - down[0]["last_sent"]) < 1000, (sid, seen, down)
        assert abs(seen[0]["end"] - back) < 1000, (sid, seen, back)
    # The others were up the whole time.
    for sid in (HEALTHY, TAMPERED):
        assert outages(sid) == []
    tamper = {r[3] for r in made if r[0] == TAMPERED}
    assert {"tamper", "door_opened", "door_closed"} <= tamper
    assert hub.alive()


def run_sim(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yizhan", "sim", "fleet", "--port", "1",
                           "--quiet", *argv], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("argv", "says"), [
    (["--stations", "0"], "--stations must be 1 to 100000"),
    (["--stations", str(10**30)], "--stations must be 1 to 100000"),
    (["--stations", "100001"], "--stations must be 1 to 100000"),
    (["--heartbeat", "61"], "--heartbeat must be 1 to 60"),
    (["--speed", "0"], "--speed must be above 0"),
    (["--speed", "nan"], "--speed must be above 0"),
    (["--prefix", "Big-"], "--prefix 'Big-'"),
    (["--fault", "melt:sim-00001@1"], "unknown kind 'melt'"),
    (["--fault", "power_cut:sim-00001"], "expected KIND:SID@SECONDS"),
    (["--fault", "power_cut:sim-00099@1"], "names sim-00099, not one of"),
    (["--fault", "power_cut:sim-00001@" + "9" * 30], "expected KIND:SID@SECONDS"),
    (["--password-file", "/nonexistent/pw"], "--password-file"),
])
def test_bad_arguments_exit_2_naming_the_problem(argv, says):
    done = run_sim("--stations", "10", *argv) if argv[0] != "--stations" else run_sim(*argv)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_broker_is_retried_and_logged(tmp_path):
    truth = tmp_path / "t.jsonl"
    done = run_sim("--stations", "3", "--duration", "1", "--host", "127.0.0.1",
                   "--port", str(free_port()), "--truth", str(truth))
    assert done.returncode == 0, done.stderr
    lines = read_truth(truth)
    assert {r["sid"] for r in lines if r["what"] == "connect_failed"} == {
        "sim-00001", "sim-00002", "sim-00003"}
    assert lines[-1]["what"] == "summary" and lines[-1]["connects"] == 0
