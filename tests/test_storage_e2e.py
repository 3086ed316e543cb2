"""Storage faults through the whole station (issue 12, item 6): a real agent on
``hardware: sim`` with its data directory on a real small file system, a real
Mosquitto with a subscriber in the hub's place, the kiosk's local API over
HTTP, and the kiosk app in front of it.

The card is a tmpfs the test fills to the last byte and remounts read-only
(tests/harness/storage.py). The simulated hardware's own files (the board's
pseudo-terminal link, the 1-wire sensor file) live in ``data_dir/sim``, which
here is a second small tmpfs: they stand for the hardware, not for the card.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.config.rules import DEFAULT_RULES
from kiosk import create_app
from kiosk.config import KioskConfig
from protocol.frames import Cmd
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from tests.harness.storage import SmallDisk, require_mount
from tests.test_agent import FLEET_KEY, SID, Running, station_yaml


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SmallDisk]:
    """The station's SD card (24 MB), with the simulated hardware's files beside
    it on their own little file system."""
    require_mount()
    disk = SmallDisk(tmp_path / "card", size_mb=24).start()
    hardware = SmallDisk(disk.path / "station" / "sim", size_mb=4).start()
    yield disk
    hardware.stop()
    disk.stop()


def start(tmp_path: Path, broker, card: SmallDisk) -> Running:
    return Running(tmp_path, broker, data_dir=str(card.path / "station"))


def events(sub: Subscriber) -> dict[int, dict]:
    """Events the hub's side received, by seq (a duplicate keeps its one seq)."""
    out: dict[int, dict] = {}
    for msg in sub.messages:
        if msg.topic.endswith("/event"):
            e = msg.json()
            out[e["seq"]] = e
    return out


def states(sub: Subscriber) -> list[dict]:
    return [m.json() for m in sub.messages if m.topic.endswith("/state")]


def toggle_door(r: Running, times: int = 1) -> None:
    """Open and close the entrance: two events each time (the agent debounces)."""
    doors = r.hardware.simulation.doors
    for _ in range(times):
        for opening in (True, False):
            (doors.open if opening else doors.close)("entrance")
            want = "door_opened" if opening else "door_closed"
            before = r.agent.journal.last_seq + r.agent.journal.held
            wait_until(lambda b=before: r.agent.journal.last_seq + r.agent.journal.held > b,
                       5, f"the agent to record {want}")


def borrow_and_take(r: Running, phone: str) -> tuple[int, str]:
    status, body = r.post("/v1/borrow", {"rider": rider_id(FLEET_KEY, phone)})
    assert status == 202, body
    attempt = body["attempt"]["id"]
    wait_until(lambda: r.get(f"/v1/borrow/{attempt}")[1]["attempt"]["state"] == "open", 5,
               "the slot open")
    slot = r.get(f"/v1/borrow/{attempt}")[1]["attempt"]["slot"]
    bank = r.board.take(slot)
    wait_until(lambda: r.get(f"/v1/borrow/{attempt}")[1]["attempt"]["state"] == "taken", 5,
               "the loan recorded")
    return slot, bank


def test_a_full_card_pauses_lending_raises_disk_low_and_loses_nothing(
        tmp_path, broker_factory, card):
    broker = broker_factory()
    with Subscriber(broker, [topic(SID, Kind.EVENT), topic(SID, Kind.STATE)]) as sub:
        r = start(tmp_path, broker, card)
        borrow_and_take(r, "13812345678")
        toggle_door(r, 2)
        wait_until(lambda: r.agent.outbox.size() == 0, 10, "every event acknowledged")
        journalled = r.agent.journal.last_seq
        assert sorted(events(sub)) == list(range(1, journalled + 1))

        card.fill()
        for _ in range(50):  # the next writes meet the full card
            toggle_door(r)
            if r.agent.journal.fault is not None:
                break
        assert r.agent.journal.fault == "full"

        # The hub is told: the State says no free disk, which fires disk_low.
        bad = sub.wait_for(lambda m: m.topic.endswith("/state")
                           and m.json()["health"].get("disk_free_mb") == 0, 10).json()
        assert DEFAULT_RULES["disk_low"].fires_at(bad["health"]["disk_free_mb"])
        # The kiosk is told: lending is paused, and why.
        status, station = r.get("/v1/station")
        assert status == 200 and (station["paused"], station["storage"]) == ("storage", "full")
        # A rider tries anyway: refused before any lock opens.
        frames = len(r.board.frames_received)
        locks = [r.board.slot(n).locked for n in range(1, r.board.n_slots + 1)]
        status, body = r.post("/v1/borrow", {"rider": rider_id(FLEET_KEY, "13912345678")})
        assert status == 202 and body["attempt"]["state"] == "failed"
        assert body["attempt"]["reason"] == "paused"
        time.sleep(0.5)  # the board is polled every 250 ms: nothing else may reach it
        assert [f for f in r.board.frames_received[frames:] if f.cmd == Cmd.UNLOCK] == []
        assert [r.board.slot(n).locked for n in range(1, r.board.n_slots + 1)] == locks

        kiosk = create_app(KioskConfig(fleet_key=FLEET_KEY, data_dir=tmp_path / "kiosk",
                                       sid=SID, api_url=r.base)).test_client()
        home = kiosk.get("/").get_data(as_text=True)
        assert 'data-notice="paused"' in home and "借用暂停" in home
        page = kiosk.get(f"/borrow/{body['attempt']['id']}").get_data(as_text=True)
        assert "借用已暂停" in page and 'data-reason="paused"' in page

        # The station goes on: doors still reported (held), States still go out.
        toggle_door(r, 2)
        rev = bad["rev"]
        sub.wait_for(lambda m: m.topic.endswith("/state") and m.json()["rev"] > rev, 10)
        assert r.agent.journal.held >= 4

        card.free()  # staff clear the card
        wait_until(lambda: r.get("/v1/station")[1]["paused"] is None, 15,
                   "lending resumed by itself")
        sub.wait_for(lambda m: m.topic.endswith("/state")
                     and m.json()["health"].get("disk_free_mb", 0) > 0, 10)
        last = r.agent.journal.last_seq
        wait_until(lambda: sorted(events(sub)) == list(range(1, last + 1)), 10,
                   "every event, the held ones too, delivered once each in seq")
        got = events(sub)
        assert [got[s]["type"] for s in range(journalled + 1, last + 1)].count("door_opened") >= 3
        assert all(got[s]["ts"] <= got[s + 1]["ts"] for s in range(1, last))

        slot2, _ = borrow_and_take(r, "13912345678")
        sub.wait_for(lambda m: m.topic.endswith("/event") and m.json()["type"] == "bank_borrowed"
                     and m.json()["data"]["slot"] == slot2, 10)
        r.stop()


def test_the_agent_runs_on_a_read_only_card_and_lends_again_once_it_is_writable(
        tmp_path, broker_factory, card):
    broker = broker_factory()
    with Subscriber(broker, [topic(SID, Kind.EVENT), topic(SID, Kind.STATE),
                             topic(SID, Kind.STATUS)]) as sub:
        first = start(tmp_path, broker, card)
        toggle_door(first)
        wait_until(lambda: first.agent.outbox.size() == 0, 10, "delivered")
        epoch, before = first.agent.journal.epoch, first.agent.journal.last_seq
        first.stop()

        card.read_only()  # the kernel remounted the card read-only; the Pi rebooted
        sub.clear()
        r = start(tmp_path, broker, card)  # starts: no traceback, no restart loop
        assert r.agent.journal.fault == "read_only" and r.agent.journal.epoch == epoch
        birth = sub.wait_for(lambda m: m.topic.endswith("/status")
                             and m.json()["state"] == "online", 10).json()
        assert birth["epoch"] == epoch
        state = sub.wait_for(lambda m: m.topic.endswith("/state"), 10).json()
        assert state["health"]["disk_free_mb"] == 0
        assert state["dispenser"]["online"], "the dispenser (and its heater safety) runs"
        status, station = r.get("/v1/station")
        assert (station["paused"], station["storage"]) == ("storage", "read_only")
        status, body = r.post("/v1/borrow", {"rider": rider_id(FLEET_KEY, "13812345678")})
        assert status == 202 and body["attempt"]["reason"] == "paused"
        toggle_door(r)  # held in memory
        assert r.agent.journal.held >= 2

        card.read_write()  # fsck'd and remounted: the card takes writes again
        wait_until(lambda: r.get("/v1/station")[1]["paused"] is None, 15, "lending resumed")
        last = r.agent.journal.last_seq
        assert last >= before + 2
        wait_until(lambda: set(range(before + 1, last + 1)) <= set(events(sub)), 10,
                   "the events held while read-only delivered, seqs going on")
        borrow_and_take(r, "13812345678")
        r.stop()
    assert not list((card.path / "station").glob("corrupt")), "nothing was damaged"


def test_the_agent_starts_on_a_journal_cut_by_a_power_cut(tmp_path, broker_factory, card):
    broker = broker_factory()
    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        first = start(tmp_path, broker, card)
        toggle_door(first, 3)
        wait_until(lambda: first.agent.outbox.size() == 0, 10, "delivered")
        epoch, last = first.agent.journal.epoch, first.agent.journal.last_seq
        first.stop()
        journal = card.path / "station" / "station.db"
        with open(journal, "r+b") as f:  # garbage where the newest pages were
            f.seek(journal.stat().st_size - 4096)
            f.write(os.urandom(4096))

        r = start(tmp_path, broker, card)
        report = sub.wait_for(lambda m: m.json()["type"] == "journal_recovered", 10).json()
        assert report["epoch"] == epoch and report["seq"] > last
        assert report["data"]["epoch_kept"] is True
        assert (card.path / "station" / report["data"]["aside"]).is_file()
        assert r.agent.journal.writable
        borrow_and_take(r, "13812345678")
        r.stop()
    assert json.loads(json.dumps(report["data"]))  # plain JSON, as the hub stores it


def test_a_real_agent_process_on_a_read_only_card_runs_and_says_why(
        tmp_path, broker_factory, card):
    """``yizhan agent`` as systemd runs it: on a card that is read-only from the
    start (no journal yet) it comes up, reports, and its log names the path and
    what to do — no traceback, no restart loop."""
    broker = broker_factory()
    api_port = free_port()
    data = station_yaml(tmp_path, broker, data_dir=str(card.path / "station"),
                        local_api={"host": "127.0.0.1", "port": api_port})
    cfg = write_yaml(tmp_path / "station.yaml", data)
    card.read_only()
    procs = Procs(tmp_path)
    try:
        with Subscriber(broker, [topic(SID, Kind.STATE)]) as sub:
            agent = procs.start("agent", "agent", "--config", str(cfg))
            state = sub.wait_for(lambda m: m.topic.endswith("/state"), 15).json()
            assert state["health"]["disk_free_mb"] == 0
            status, station = http_json(f"http://127.0.0.1:{api_port}/v1/station")
            assert status == 200
            assert (station["paused"], station["storage"]) == ("storage", "read_only")
            time.sleep(2)
            assert agent.alive(), agent.tail()
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        log = agent.log.read_text()
        assert "Traceback" not in log
        assert f"{card.path / 'station'}" in log and "read-write" in log
    finally:
        procs.close()
