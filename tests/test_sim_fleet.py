"""``yizhan sim fleet`` against a real Mosquitto and a real ``yizhan hub``: the hub's
view (online/offline, outages, events stored) matches the simulator's ground-truth
log; bad arguments exit 2 with a clear message before anything connects;
``--processes N`` is the same fleet in N processes, one log, one summary.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

TOKEN = "sim-fleet-test-token-0123456789"
STATIONS = 50
CUT = "sim-00007"  # power cut: the will fires at once
SILENT = "sim-00041"  # network cut: the will fires after 1.5 keepalives
TAMPERED = "sim-00023"  # with --processes 3 (1-17, 18-34, 35-50), a fault in each
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


@pytest.mark.parametrize("processes", [1, 3])
def test_the_hub_sees_what_the_fleet_did(tmp_path, broker_factory, procs, processes):
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
        "--processes", str(processes),
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
    # One log in time order, one summary, whatever the number of processes.
    assert [r["t"] for r in truth] == sorted(r["t"] for r in truth)
    assert [r["what"] for r in truth].count("summary") == 1
    # Everyone, and the cut two again (more if a loaded machine missed a keepalive).
    assert summary["connects"] >= STATIONS + 2
    assert list(tmp_path.glob("truth.jsonl.*")) == []  # the children's files merged
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
    (["--processes", "0"], "--processes must be 1 to 256"),
    (["--processes", "11"], "at most --stations"),
    (["--processes", "2", "--fault", "power_cut:sim-00099@1"], "names sim-00099, not one of"),
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


def test_a_manual_clock_drives_heartbeats_and_the_stations_answer_commands(broker):
    """In process, on a ManualClock: the heartbeat comes when the clock says so, a
    replay is answered from what the station kept (and names what it never had),
    an unlock of a jammed slot is answered ``jammed``."""
    from firmware.sim.fleet.clients import Fleet, Options
    from firmware.sim.fleet.faults import Fault
    from firmware.sim.fleet.truth import Truth
    from tests.harness.mqtt import Subscriber, publish
    from yizhan.clock import ManualClock

    clock = ManualClock(start=time.time())
    opts = Options(host=broker.host, port=broker.port, stations=3, prefix="mc-",
                   visits_per_hour=0, seed=3, faults=[Fault("board_jam", "mc-00002", 0, None)])
    fleet = Fleet(opts, clock, Truth(None))
    with Subscriber(broker, ["yizhan/v1/+/state", "yizhan/v1/mc-00002/#"]) as sub:
        fleet.start()

        def run_until(predicate, what: str) -> None:
            end = time.monotonic() + 10
            while not predicate():
                assert time.monotonic() < end, what
                fleet.step(0.05)

        clock.advance(1)  # the connects are spread over the first 15 ms
        run_until(lambda: fleet.counts()["online"] == 3, "three online")
        states = lambda: [json.loads(r.payload) for r in sub.messages  # noqa: E731
                          if r.topic.endswith("/state") and r.topic.startswith("yizhan/v1/mc-")]
        run_until(lambda: len(states()) >= 3, "a State after each birth")
        before = len(states())
        clock.advance(60)  # one heartbeat for each station, whenever its offset fell
        run_until(lambda: len(states()) >= before + 3, "a heartbeat each")
        assert {s["sid"] for s in states()[before:]} == {"mc-00001", "mc-00002", "mc-00003"}

        now = int(clock.now() * 1000)
        for cid, cmd, args in (("c-1", "replay", {"from_seq": 1, "to_seq": 5}),
                               ("c-2", "unlock", {"slot": 1})):
            publish(broker, "yizhan/v1/mc-00002/cmd",
                    {"v": 1, "id": cid, "cmd": cmd, "args": args, "ts": now,
                     "expires": now + 30_000})
        publish(broker, "yizhan/v1/mc-00002/cmd", b"\xff not json")

        def result(cid: str) -> dict | None:
            for r in sub.messages:
                if r.topic.endswith("/cmd/result") and json.loads(r.payload)["id"] == cid:
                    return json.loads(r.payload)
            return None

        run_until(lambda: result("c-1") and result("c-2"), "two answers")
        # board_jam at start made seq 1 (slot_fault); 2..5 were never made.
        assert result("c-1")["ok"] and result("c-1")["data"] == {"count": 1,
                                                                 "missing": [[2, 5]]}
        resent = [json.loads(r.payload) for r in sub.messages if r.topic.endswith("/event")]
        assert [(e["seq"], e["type"]) for e in resent] == [(1, "slot_fault"), (1, "slot_fault")]
        assert result("c-2")["ok"] is False and result("c-2")["error"] == "jammed"
        fleet.stop()


def test_random_faults_come_and_go_and_the_stations_come_back(tmp_path, broker):
    truth = tmp_path / "t.jsonl"
    done = run_sim("--host", broker.host, "--port", str(broker.port), "--stations", "5",
                   "--prefix", "rf-", "--duration", "4", "--speed", "1000",
                   "--fault-rate", "1000", "--keepalive", "1", "--truth", str(truth))
    assert done.returncode == 0, done.stderr
    lines = read_truth(truth)
    started = [r for r in lines if r["what"] == "fault"]
    assert {r["kind"] for r in started} >= {"power_cut", "board_jam", "tamper"}
    assert any(r["what"] == "fault_cleared" for r in lines)
    # Stations came back from power cuts with a new birth.
    cuts = [r for r in lines if r.get("reason") == "power_cut"]
    back = [c for c in cuts if any(
        r.get("sid") == c["sid"] and r["what"] == "online" and r["t"] >= c["t"]
        and r["birth"] > 1 for r in lines)]
    assert cuts and back
    assert lines[-1]["what"] == "summary" and lines[-1]["faults"] == len(started)


def test_tls_with_a_password_and_the_deployed_acl(tmp_path, broker_factory):
    """The deployment's broker (TLS, a password per account, the contract's ACL): the
    stations' births reach the hub's account; a wrong password is logged as refused."""
    from tests.harness.mqtt import Subscriber
    from tests.harness.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    users = {"tls-00001": "same-pw", "tls-00002": "same-pw", "_hub": "hub-pw"}
    broker = broker_factory(users=users, acl=True, tls=tls)
    (tmp_path / "pw").write_text("same-pw\n")
    (tmp_path / "bad").write_text("wrong\n")
    truth = tmp_path / "t.jsonl"
    with Subscriber(broker, ["yizhan/v1/+/status"], username="_hub",
                    password="hub-pw") as sub:
        done = run_sim("--host", "127.0.0.1", "--port", str(broker.tls_port),
                       "--cafile", str(tls.ca_file), "--password-file", str(tmp_path / "pw"),
                       "--stations", "2", "--prefix", "tls-", "--duration", "3",
                       "--truth", str(truth))
        assert done.returncode == 0, done.stderr
        births = {json.loads(r.payload)["sid"] for r in sub.messages
                  if json.loads(r.payload)["state"] == "online"}
        assert births == {"tls-00001", "tls-00002"}
    assert read_truth(truth)[-1]["connects"] == 2
    refused = run_sim("--host", "127.0.0.1", "--port", str(broker.tls_port),
                      "--cafile", str(tls.ca_file), "--password-file", str(tmp_path / "bad"),
                      "--stations", "1", "--prefix", "tls-", "--duration", "2",
                      "--truth", str(truth))
    assert refused.returncode == 0, refused.stderr
    lines = read_truth(truth)
    assert any(r["what"] == "refused" for r in lines) and lines[-1]["connects"] == 0


def births(truth: list[dict]) -> set[tuple[str, str, int]]:
    return {(r["sid"], r["epoch"], r["birth"]) for r in truth if r["what"] == "online"}


def test_processes_make_the_same_fleet_in_one_log(tmp_path, broker):
    """--processes 3: the sids, epochs and births one process makes, from three
    shards, in one log in time order with one summary on stdout and in the log."""
    runs = {}
    for n in (1, 3):
        truth = tmp_path / f"t{n}.jsonl"
        done = run_sim("--host", broker.host, "--port", str(broker.port), "--stations", "40",
                       "--prefix", "pr-", "--seed", "7", "--duration", "2",
                       "--processes", str(n), "--truth", str(truth))
        assert done.returncode == 0, done.stderr
        lines = read_truth(truth)
        assert [r["t"] for r in lines] == sorted(r["t"] for r in lines)
        assert [r["what"] for r in lines].count("summary") == 1
        summary = json.loads(done.stdout)
        assert summary == {k: v for k, v in lines[-1].items() if k not in ("t", "what")}
        assert summary["stations"] == 40 and summary["connects"] == 40
        assert summary["online_at_end"] == 40
        runs[n] = births(lines)
    assert len(runs[1]) == 40 and {sid for sid, _, _ in runs[1]} == {
        f"pr-{i:05d}" for i in range(1, 41)}
    assert runs[3] == runs[1]
    assert summary["processes"] == 3


def child_with(parent: int, path: Path) -> int:
    """The child of ``parent`` that has ``path`` open (its shard's truth file)."""
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == str(path):
                    return int(pid)
            except OSError:
                continue
    raise AssertionError(f"no child of {parent} has {path} open")


def test_a_killed_process_is_named_and_the_others_stop_cleanly(tmp_path, broker):
    truth = tmp_path / "t.jsonl"
    sim = subprocess.Popen(
        [sys.executable, "-m", "yizhan", "sim", "fleet", "--host", broker.host,
         "--port", str(broker.port), "--stations", "30", "--prefix", "kc-",
         "--processes", "3", "--quiet", "--truth", str(truth)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def online(k: int) -> int:  # each child flushes its file once a second
            shard = tmp_path / f"t.jsonl.{k}"
            return shard.read_text().count('"what":"online"') if shard.exists() else 0

        wait_until(lambda: all(online(k) == 10 for k in (1, 2, 3)), 20, "30 online")
        os.kill(child_with(sim.pid, tmp_path / "t.jsonl.2"), signal.SIGKILL)
        out, err = sim.communicate(timeout=40)
    finally:
        sim.kill()
    assert sim.returncode == 1, err
    assert "process 2 of 3 (stations kc-00011 .. kc-00020) died, exit code -9" in err
    summary = json.loads(out)
    assert summary["died"] == [2] and summary["online_at_end"] == 20
    lines = read_truth(truth)
    assert [r["t"] for r in lines] == sorted(r["t"] for r in lines)
    assert lines[-1]["what"] == "summary" and lines[-1]["died"] == [2]
    # The killed child's births are kept; the others said goodbye.
    assert len(births(lines)) == 30
    stopped = {r["sid"] for r in lines if r.get("reason") == "shutdown"}
    assert stopped == {f"kc-{i:05d}" for i in (*range(1, 11), *range(21, 31))}
    assert list(tmp_path.glob("t.jsonl.*")) == []
