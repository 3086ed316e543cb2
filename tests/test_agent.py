"""The whole agent through its real edges (issue 3, "Tests must show").

A real Mosquitto; the agent built from a ``hardware: sim`` configuration, so
everything above MockFactory pins and the board simulator's pseudo-terminal is
the code a Pi runs; the kiosk's local API over real HTTP. A subscriber on the
broker sees what the hub would see.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.directory import hash_pin
from firmware.hardware.station import build_hardware
from protocol import messages as m
from protocol.frames import Cmd
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, publish
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from yizhan.clock import SYSTEM_CLOCK
from yizhan.watchdog import Notifier

SID = "yh-chumen-01"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}


def station_yaml(tmp_path, broker, **extra) -> dict:
    (tmp_path / "fleet.key").write_bytes(FLEET_KEY)
    return {
        "hardware": "sim",
        "station": {"id": SID, "name": "楚门镇先锋驿站"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp_path / "station"),
        "fleet_key_file": str(tmp_path / "fleet.key"),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "lockers": {"slots": 6, "poll_interval": "250ms"},
        "sim": QUIET_SIM,
        **extra,
    }


class Running:
    """An in-process agent on its own thread, and a client for its local API."""

    def __init__(self, tmp_path, broker, **extra) -> None:  # extra: top-level keys
        data = station_yaml(tmp_path, broker, **extra)
        self.config = parse_station_config(data, source=None)
        self.hardware = build_hardware(self.config, SYSTEM_CLOCK)
        self.agent = Agent(self.config, SYSTEM_CLOCK, self.hardware, notifier=Notifier(None))
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.agent.local_api_port, 5, "the local API")
        wait_until(self.agent.link.connected.is_set, 10, "the agent connected")
        self.base = f"http://127.0.0.1:{self.agent.local_api_port}"
        self.board = self.hardware.simulation.board

    def get(self, path: str) -> tuple[int, dict]:
        return http_json(self.base + path)

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def running(tmp_path, broker_factory):
    broker = broker_factory()
    runs: list[Running] = []

    def start(**extra) -> Running:
        r = Running(tmp_path, broker, **extra)
        runs.append(r)
        return r

    start.broker = broker
    yield start
    for r in runs:
        if r.thread.is_alive():
            r.stop()


def events_of(sub: Subscriber) -> list[dict]:
    return [json.loads(x.payload) for x in sub.messages if x.topic.endswith("/event")]


def test_borrow_and_return_through_the_local_api_reach_the_broker(running):
    broker = running.broker
    with Subscriber(broker, [topic(SID, Kind.EVENT), topic(SID, Kind.STATE)]) as sub:
        r = running()
        rider = rider_id(FLEET_KEY, "13812345678")
        status, body = r.post("/v1/borrow", {"rider": rider})
        assert status == 202, body
        attempt = body["attempt"]
        assert attempt["state"] in ("releasing", "open"), attempt
        # The kiosk's tap reached the serial line as an UNLOCK frame.
        frame = r.board.wait_for_frame(Cmd.UNLOCK, timeout=3)
        slot = frame.payload[0]

        def opened():
            return r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]["state"] == "open"

        wait_until(opened, 5, "the slot open for the rider")
        bank = r.board.take(slot)  # the rider takes the bank; the board sees it gone
        msg = sub.wait_for(lambda x: x.topic.endswith("/event")
                           and x.json()["type"] == "bank_borrowed", timeout=10)
        borrowed = m.decode(Kind.EVENT, msg.payload, topic_sid=SID)
        assert borrowed.data["slot"] == slot and borrowed.data["bank"] == bank
        assert borrowed.data["rider"] == rider and borrowed.seq >= 1
        done = r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]
        assert done["state"] == "taken"

        r.board.insert(slot, bank, charge=35)  # brought back later, drained
        msg = sub.wait_for(lambda x: x.topic.endswith("/event")
                           and x.json()["type"] == "bank_returned", timeout=10)
        returned = m.decode(Kind.EVENT, msg.payload, topic_sid=SID)
        assert returned.data["rider"] == rider and returned.data["bank"] == bank
        assert returned.seq == borrowed.seq + 1 or returned.seq > borrowed.seq
        status, body = r.get("/v1/returns?since=0")
        assert [x["bank"] for x in body["returns"]] == [bank]

        # The counters of the next State follow the events.
        state = sub.wait_for(lambda x: x.topic.endswith("/state")
                             and x.json()["counters"]["returns"] == 1, timeout=10).json()
        assert state["counters"]["borrows"] == 1
        assert state["last_seq"] >= returned.seq
        r.stop()


def test_an_expired_unlock_is_refused_and_a_fresh_one_confirmed_by_the_board(running):
    broker = running.broker
    with Subscriber(broker, [topic(SID, Kind.CMD_RESULT)]) as sub:
        r = running()
        now = int(time.time() * 1000)
        stale = m.Command(id="c-stale", cmd="unlock", args={"slot": 2}, ts=now - 60_000,
                          expires=now - 30_000, by="staff:li")
        publish(broker, topic(SID, Kind.CMD), m.encode(stale))
        res = sub.wait_for(lambda x: x.json()["id"] == "c-stale", timeout=5).json()
        assert res["ok"] is False and res["error"] == "expired"
        assert not [f for f in r.board.frames_received if f.cmd == Cmd.UNLOCK]

        fresh = m.Command(id="c-fresh", cmd="unlock", args={"slot": 2}, ts=now,
                          expires=now + 30_000, by="staff:li")
        publish(broker, topic(SID, Kind.CMD), m.encode(fresh))
        res = sub.wait_for(lambda x: x.json()["id"] == "c-fresh", timeout=5)
        result = m.decode(Kind.CMD_RESULT, res.payload, topic_sid=SID)
        assert result.ok and result.error is None
        assert result.data == {"slot": 2, "locked": False}
        assert r.board.wait_for_frame(Cmd.UNLOCK, timeout=1).payload[0] == 2
        r.stop()


def test_events_during_a_broker_outage_arrive_once_in_order(running):
    broker = running.broker
    r = running()
    rider = rider_id(FLEET_KEY, "13912345678")
    seen: list[dict] = []

    def borrow_and_return(returns_after: int) -> None:
        status, body = r.post("/v1/borrow", {"rider": rider})
        assert status == 202
        attempt = body["attempt"]
        wait_until(lambda: r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]["state"]
                   == "open", 5, "slot open")
        slot = r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]["slot"]
        bank = r.board.take(slot)
        wait_until(lambda: r.get(f"/v1/borrow/{attempt['id']}")[1]["attempt"]["state"]
                   == "taken", 5, "loan recorded")
        r.board.insert(slot, bank, charge=90)
        wait_until(lambda: len(r.get("/v1/returns?since=0")[1]["returns"]) == returns_after,
                   5, "return seen")

    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        borrow_and_return(1)
        wait_until(lambda: len(events_of(sub)) >= 2, 5, "first events delivered")
        seen += events_of(sub)

    broker.stop()
    wait_until(lambda: not r.agent.link.connected.is_set(), 5, "agent sees the outage")
    borrow_and_return(2)  # lending goes on while the hub cannot be reached
    assert r.agent.outbox.size() >= 2
    broker.start()
    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        wait_until(lambda: r.agent.outbox.size() == 0, 15, "the outbox drained")
        wait_until(lambda: len(events_of(sub)) >= 2, 5, "outage events delivered")
        seen += events_of(sub)
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # each once, in order, no gap
    assert [e["type"] for e in seen].count("bank_borrowed") == 2
    r.stop()


def test_shutdown_leaves_the_heater_off_and_says_goodbye(running):
    broker = running.broker
    with Subscriber(broker, [topic(SID, Kind.STATUS)]) as sub:
        r = running()
        heater = r.hardware.pin_factory.pin(r.hardware.dispenser.heater_pin)
        # The tank is cold: once the thermometer reads sane the thermostat heats.
        wait_until(lambda: heater.state, 15, "the heater on")
        # No lock opened at start-up: the board never saw an UNLOCK.
        assert not [f for f in r.board.frames_received if f.cmd == Cmd.UNLOCK]
        r.stop()
        assert heater.state == 0
        msg = sub.wait_for(lambda x: x.json().get("reason") == "shutdown", timeout=5)
        bye = m.decode(Kind.STATUS, msg.payload, topic_sid=SID)
        assert bye.state == "offline" and bye.birth == r.agent.link.birth


def test_the_directory_is_applied_kept_and_used(tmp_path, running):
    broker = running.broker
    directory = m.Directory(
        rev=3, ts=int(time.time() * 1000), policy=m.Policy(lending="registered"),
        riders=(), staff=(m.StaffEntry(id="li", name="李师傅",
                                       pin=hash_pin("2468", iterations=1000)),), denied=())
    publish(broker, topic(SID, Kind.DIRECTORY), m.encode(directory), retain=True)
    r = running()
    wait_until(lambda: r.agent.directory.rev == 3, 5, "directory applied")
    status, body = r.post("/v1/borrow", {"rider": rider_id(FLEET_KEY, "13700001111")})
    assert body["attempt"]["reason"] in ("not_registered", "pin_required")
    status, body = r.post("/v1/maintenance", {"staff": "li", "pin": "2468"})
    assert status == 201, body
    r.stop()
    assert json.loads((tmp_path / "station" / "directory.json").read_text())["rev"] == 3


def test_a_sigkilled_agent_process_loses_no_event(tmp_path, broker_factory):
    """Events journalled before SIGKILL reach the broker after the restart, in order."""
    broker = broker_factory()
    api_port = free_port()
    data = station_yaml(tmp_path, broker, local_api={"host": "127.0.0.1", "port": api_port})
    cfg = write_yaml(tmp_path / "station.yaml", data)
    staff = m.StaffEntry(id="li", name="李师傅", pin=hash_pin("2468", iterations=1000))
    # min_charge 81 marks this directory, so the test can see when the agent has it.
    directory = m.Directory(rev=1, ts=int(time.time() * 1000), policy=m.Policy(min_charge=81),
                            riders=(), staff=(staff,), denied=())
    publish(broker, topic(SID, Kind.DIRECTORY), m.encode(directory), retain=True)
    base = f"http://127.0.0.1:{api_port}"
    procs = Procs(tmp_path)

    def post(path, body, method="POST"):
        import urllib.request

        req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def maintenance_round():
        session = post("/v1/maintenance", {"staff": "li", "pin": "2468"})["session"]
        post(f"/v1/maintenance/{session['id']}/refill", {"what": "water"})
        post(f"/v1/maintenance/{session['id']}", {}, method="DELETE")

    try:
        with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
            agent = procs.start("agent-1", "agent", "--config", str(cfg))
            # A staff login before the directory arrives would be a wrong PIN.
            wait_until(lambda: http_json(base + "/v1/station")[1]["lending"]["min_charge"]
                       == 81, 15, "the directory applied", on_fail=agent.tail)
            for _ in range(5):
                maintenance_round()
            agent.signal(signal.SIGKILL)
            agent.wait(5)
            agent = procs.start("agent-2", "agent", "--config", str(cfg))
            wait_until(lambda: http_json(base + "/v1/station")[0] == 200, 10, "local API",
                       on_fail=agent.tail)
            for _ in range(3):
                maintenance_round()
            expected = 3 * 8  # started, refilled, ended per round
            wait_until(lambda: len({e["seq"] for e in events_of(sub)}) >= expected, 15,
                       "every event", on_fail=agent.tail)
            events = events_of(sub)
        first: dict[int, int] = {}
        for i, e in enumerate(events):
            first.setdefault(e["seq"], i)
        seqs = sorted(first, key=first.get)
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        assert len(seqs) == expected
        assert {e["epoch"] for e in events} == {events[0]["epoch"]}  # same storage, same epoch
    finally:
        procs.close()


def test_the_agent_speaks_tls_with_its_password(tmp_path, broker_factory):
    """Contract §2 deployment: TLS to the broker, username = sid, password from a file."""
    from tests.conftest import SECURE_USERS
    from tests.harness.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    broker = broker_factory(users=SECURE_USERS, acl=True, tls=tls)
    (tmp_path / "mqtt.password").write_text(SECURE_USERS[SID] + "\n")
    mqtt = {"host": "127.0.0.1", "port": broker.tls_port, "keepalive": 5,
            "username": SID, "password_file": str(tmp_path / "mqtt.password"),
            "tls": {"ca_file": str(tls.ca_file)}}
    with Subscriber(broker, [topic(SID, Kind.STATUS)], username="_hub",
                    password=SECURE_USERS["_hub"]) as sub:
        r = Running(tmp_path, broker, mqtt=mqtt)
        birth = sub.wait_for(lambda x: x.json()["state"] == "online", timeout=10)
        assert birth.json()["birth"] == r.agent.link.birth
        r.stop()


def test_a_broker_with_an_unknown_certificate_is_refused(tmp_path, broker_factory, caplog):
    from tests.harness.tls import make_tls

    served = make_tls(tmp_path / "served", name="served")
    other = make_tls(tmp_path / "other", name="other")
    broker = broker_factory(tls=served)
    mqtt = {"host": "127.0.0.1", "port": broker.tls_port, "keepalive": 5,
            "tls": {"ca_file": str(other.ca_file)}}
    data = station_yaml(tmp_path, broker, mqtt=mqtt)
    config = parse_station_config(data)
    hardware = build_hardware(config, SYSTEM_CLOCK)
    agent = Agent(config, SYSTEM_CLOCK, hardware, notifier=Notifier(None))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        # The agent does not trust the broker's certificate, and says so.
        wait_until(lambda: f"cannot reach the broker at 127.0.0.1:{broker.tls_port}"
                   in caplog.text, 10, "a refused connection attempt")
        assert not agent.link.connected.is_set()
    finally:
        agent.stop()
        thread.join(15)
