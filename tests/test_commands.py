"""Hub commands end to end: a real broker carries them in and the results out;
``unlock`` goes through a real Locker to the YZ-LB1 board simulator on a pty.

Every test checks that each command id was answered exactly once (a repeated
id twice, identically) and that the board saw only the UNLOCKs it should.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter

import pytest

from firmware.commands import INTERNAL_MESSAGE, CommandHandler
from firmware.hardware.board import LockerBoard
from firmware.locker import Locker
from firmware.outbox import MAX_QUEUED_REPLAY, MAX_QUEUED_REPLAYS
from firmware.parts import RecordingReporter
from protocol import messages as m
from protocol.frames import Cmd
from protocol.topics import HUB_TIME_TOPIC, Kind, topic
from tests.harness.delivery import DeliveryStation
from tests.harness.mqtt import Subscriber, publish
from tests.harness.procs import wait_until
from yizhan.config import ConfigError

_sids = itertools.count(1)


class Rig:
    """A station (journal, link, outbox, command handler) under its own sid on the
    session broker, and a subscriber on its ``cmd/result``."""

    def __init__(self, broker, tmp_path, clock, *, locker=None, synced=True, on_reload=None,
                 pump=True):
        self.broker, self.clock = broker, clock
        self.sid = f"yh-cmd-{next(_sids)}"
        # The session broker may hold a real hub's retained time beacon from another
        # test file (today's time, far ahead of this ManualClock): the station would
        # judge every command by it. These tests publish the beacons they mean.
        publish(broker, HUB_TIME_TOPIC, b"", retain=True)
        self.synced = synced
        self.station = DeliveryStation(broker, tmp_path / self.sid, self.sid, clock=clock)
        self.handler = CommandHandler(
            self.sid, self.station.journal, self.station.link, clock, lambda: self.synced,
            locker=locker, outbox=self.station.outbox, on_reload=on_reload)
        self.results = Subscriber(broker, topic(self.sid, Kind.CMD_RESULT))
        self.station.start(pump=pump)
        self.handler.start()

    def send(self, cmd: str, args: dict | None = None, *, cid: str | None = None,
             expires_in: float = 30.0) -> str:
        cid = cid or f"c-{next(_sids)}"
        now = self.clock.ms()
        self.send_raw({"v": 1, "id": cid, "cmd": cmd, "args": args or {}, "ts": now,
                       "expires": now + int(expires_in * 1000), "by": "staff:li"})
        return cid

    def send_raw(self, payload: dict | bytes) -> None:
        publish(self.broker, topic(self.sid, Kind.CMD), payload)

    def result(self, cid: str, timeout: float = 5.0) -> m.CommandResult:
        msg = self.results.wait_for(lambda x: json.loads(x.payload)["id"] == cid, timeout)
        return m.decode(Kind.CMD_RESULT, msg.payload, topic_sid=self.sid)

    def answers(self) -> Counter:
        return Counter(json.loads(x.payload)["id"] for x in self.results.messages)

    def close(self):
        self.handler.close()
        self.results.close()
        self.station.close()


@pytest.fixture
def rig(broker, tmp_path, clock):
    made: list[Rig] = []

    def make(**kwargs) -> Rig:
        made.append(Rig(broker, tmp_path, clock, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def locker(board, clock):
    lk = Locker(LockerBoard(board.port), RecordingReporter(), clock).start()
    yield lk
    lk.close()


def unlocks(board) -> list[int]:
    return [f.payload[0] for f in board.frames_received if f.cmd == Cmd.UNLOCK]


def settle(r: Rig, expected: dict[str, int]) -> None:
    """Wait a moment for stray answers, then check the count per id."""
    time.sleep(0.15)
    assert r.answers() == Counter(expected)


def test_unlock_released_through_the_board(rig, locker, board):
    r = rig(locker=locker)
    cid = r.send("unlock", {"slot": 3})
    res = r.result(cid)
    assert (res.ok, res.error, res.data) == (True, None, {"slot": 3, "locked": False})
    assert res.sid == r.sid and res.epoch == r.station.journal.epoch
    assert unlocks(board) == [3]
    settle(r, {cid: 1})


def test_unlock_jammed_and_busy(rig, locker, board):
    r = rig(locker=locker)
    board.jam(2)
    board.busy(5)
    jammed, busy = r.send("unlock", {"slot": 2}), r.send("unlock", {"slot": 5})
    assert (r.result(jammed).ok, r.result(jammed).error) == (False, "jammed")
    assert (r.result(busy).ok, r.result(busy).error) == (False, "busy")
    assert unlocks(board) == [2, 5]
    settle(r, {jammed: 1, busy: 1})


def test_unlock_with_the_board_gone_or_no_locker(rig, locker, board):
    r = rig(locker=locker)
    board.unplug()
    cid = r.send("unlock", {"slot": 1})
    res = r.result(cid, timeout=8)
    assert (res.ok, res.error, res.data["slot"]) == (False, "board_offline", 1)

    bare = rig()  # a station without a locker
    cid2 = bare.send("unlock", {"slot": 1})
    assert bare.result(cid2).error == "board_offline"
    settle(r, {cid: 1})
    settle(bare, {cid2: 1})


def test_an_expired_unlock_is_refused_and_never_reaches_the_board(rig, locker, board):
    r = rig(locker=locker)
    cid = r.send("unlock", {"slot": 3}, expires_in=-1)
    res = r.result(cid)
    assert (res.ok, res.error) == (False, "expired")
    assert unlocks(board) == []
    settle(r, {cid: 1})


def test_with_an_unsynced_clock_the_hub_time_beacon_judges_an_unlock(rig, locker, board, clock):
    """A Pi boots with yesterday's time: its own clock cannot tell a late unlock.
    Until the hub's time has been heard it refuses to open anything; after that
    the hub's clock, carried forward on the monotonic clock, does the judging."""
    r = rig(locker=locker, synced=False)
    # No hub time heard yet: an unlock cannot be proven fresh, even a fresh one.
    cid = r.send("unlock", {"slot": 3})
    assert (r.result(cid).ok, r.result(cid).error) == (False, "expired")
    # Harmless commands still run.
    assert r.result(r.send("rebirth")).ok

    hub_now = clock.ms() + 86_400_000  # the hub's clock is a day ahead of this Pi's
    publish(r.broker, HUB_TIME_TOPIC, {"v": 1, "ts": hub_now}, retain=False)
    wait_until(lambda: r.station.link.hub_clock.now_ms() is not None, 5, "the beacon")
    clock.advance(20)  # the beacon is carried forward on the monotonic clock

    def unlock_at_hub_time(ts: int, expires_in: int, slot: int) -> m.CommandResult:
        cid = f"c-{next(_sids)}"
        r.send_raw({"v": 1, "id": cid, "cmd": "unlock", "args": {"slot": slot}, "ts": ts,
                    "expires": ts + expires_in, "by": "staff:li"})
        return r.result(cid)

    # Sent 10 s ago with 30 s to live, by the hub's clock: carried out.
    fresh = unlock_at_hub_time(hub_now + 10_000, 30_000, 4)
    assert (fresh.ok, fresh.error) == (True, None)
    # Sent 50 s ago with 30 s to live (it sat in a half-open link): refused,
    # though by the Pi's own clock (a day behind) it would look fresh.
    late = unlock_at_hub_time(hub_now - 30_000, 30_000, 5)
    assert (late.ok, late.error) == (False, "expired")
    assert unlocks(board) == [4]


def test_a_late_beacon_lowers_no_bound(rig, clock):
    """Every beacon bounds the hub's clock from below; a late one lowers no
    bound, so the largest is kept; a number that is no clock reading is ignored.
    Only a beacon far below the bound (the hub's own clock stepped back) is followed."""
    r = rig(synced=False)
    hub = r.station.link.hub_clock
    publish(r.broker, HUB_TIME_TOPIC, {"v": 1, "ts": 2_000_000_000_000}, retain=False)
    wait_until(lambda: hub.now_ms() is not None, 5, "the beacon")
    before = hub.now_ms()
    publish(r.broker, HUB_TIME_TOPIC, {"v": 1, "ts": 2_000_000_000_000 - 60_000}, retain=False)
    publish(r.broker, HUB_TIME_TOPIC, {"v": 1, "ts": 10**30}, retain=False)  # not a clock
    wait_until(lambda: hub.heard_count >= 2, 5, "the late beacon")
    time.sleep(0.1)
    assert hub.now_ms() == before  # a minute late: delivered late, not a new clock
    publish(r.broker, HUB_TIME_TOPIC, {"v": 1, "ts": 2_000_000_000_000 - 3_600_000},
            retain=False)
    wait_until(lambda: hub.heard_count >= 3, 5, "the stepped-back beacon")
    assert hub.now_ms() == before - 3_600_000  # the hub's clock went back an hour: follow it


def test_unknown_commands_and_bad_args(rig, locker, board):
    r = rig(locker=locker)
    unknown = r.send("self_destruct")
    no_slot = r.send("unlock", {})
    zero = r.send("unlock", {"slot": 0})
    backwards = r.send("replay", {"from_seq": 9, "to_seq": 3})
    # Slots are one byte on the board (YZ-LB1); a replay spans MAX_REPLAY_SPAN at most.
    slot_256 = r.send("unlock", {"slot": 256})
    too_long = r.send("replay", {"from_seq": 1, "to_seq": m.MAX_REPLAY_SPAN + 1})
    past_64_bits = r.send("replay", {"from_seq": 2**63 - 2, "to_seq": 2**63})
    assert r.result(unknown).error == "unknown_cmd"
    assert r.result(no_slot).error == "bad_args"
    assert r.result(zero).error == "bad_args"
    assert r.result(backwards).error == "bad_args"
    assert r.result(slot_256).error == "bad_args"
    assert r.result(too_long).error == "bad_args"
    assert r.result(past_64_bits).error == "bad_args"
    # A slot the board does not have: its answer BAD_SLOT is the hub's bad args.
    too_high = r.send("unlock", {"slot": 15})
    assert r.result(too_high).error == "bad_args"
    assert unlocks(board) == [15]
    settle(r, {unknown: 1, no_slot: 1, zero: 1, backwards: 1, too_high: 1, slot_256: 1,
               too_long: 1, past_64_bits: 1})


def test_an_invalid_payload_with_an_id_is_still_answered(rig):
    r = rig()
    r.send_raw({"v": 1, "id": "c-broken", "cmd": "unlock", "args": {"slot": 1}})  # no ts
    res = r.result("c-broken")
    assert (res.ok, res.error) == (False, "bad_args")
    assert "ts" in res.data["message"]
    r.send_raw(b"not json at all")
    r.send_raw({"v": 1, "cmd": "unlock"})  # no id: nobody to answer
    wait_until(lambda: r.handler.unanswerable == 2, 5, "two unanswerable payloads")
    settle(r, {"c-broken": 1})


def test_a_repeated_command_id_is_answered_again_not_run_again(rig, locker, board):
    r = rig(locker=locker)
    cid = r.send("unlock", {"slot": 6})
    first = r.result(cid)
    r.send("unlock", {"slot": 6}, cid=cid)
    wait_until(lambda: r.answers()[cid] == 2, 5, "the second answer")
    payloads = [x.payload for x in r.results.messages]
    assert payloads[0] == payloads[1]  # the very same result
    assert first.ok and unlocks(board) == [6]
    assert r.handler.executed == 1
    settle(r, {cid: 2})


def test_rebirth_republishes_the_birth(rig):
    r = rig()
    with Subscriber(r.broker, topic(r.sid, Kind.STATUS)) as status:
        birth = status.wait_for(lambda x: True)  # the retained birth
        cid = r.send("rebirth")
        assert r.result(cid).ok
        again = status.wait_for(lambda x: x is not birth)
        assert again.payload == birth.payload
    assert r.station.births == 2
    settle(r, {cid: 1})


def test_replay_command(rig):
    r = rig()
    r.station.record(12)
    r.station.wait_drained()
    with Subscriber(r.broker, topic(r.sid, Kind.EVENT)) as events:
        cid = r.send("replay", {"from_seq": 5, "to_seq": 20})
        res = r.result(cid)
        assert res.ok and res.data == {"count": 8, "missing": [[13, 20]]}
        wait_until(lambda: len(events.messages) >= 8, 5, "replayed events")
        assert [json.loads(x.payload)["seq"] for x in events.messages] == list(range(5, 13))
    settle(r, {cid: 1})


def test_reload_good_and_bad(rig):
    calls = []

    def reload() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConfigError("lockers.port", "must be a string", "/etc/yizhan/station.yaml")

    r = rig(on_reload=reload)
    good = r.send("reload")
    assert r.result(good).ok
    bad = r.send("reload")
    res = r.result(bad)
    assert (res.ok, res.error) == (False, "bad_args")
    assert res.data["message"] == "/etc/yizhan/station.yaml: lockers.port: must be a string"
    settle(r, {good: 1, bad: 1})


def test_a_replay_of_the_largest_span_is_taken(rig):
    r = rig()
    r.station.record(3)
    r.station.wait_drained()
    cid = r.send("replay", {"from_seq": 1, "to_seq": m.MAX_REPLAY_SPAN})
    res = r.result(cid)
    assert res.ok and res.data == {"count": 3, "missing": [[4, m.MAX_REPLAY_SPAN]]}
    settle(r, {cid: 1})


def test_replays_past_the_queue_cap_are_answered_busy(rig, caplog):
    # The pump held: what is queued stays queued, as behind a slow uplink.
    r = rig(pump=False)
    r.station.record(12)
    full = [r.send("replay", {"from_seq": 1, "to_seq": m.MAX_REPLAY_SPAN}) for _ in range(2)]
    assert all(r.result(cid).ok for cid in full)
    assert r.station.outbox.replays_queued == (2, MAX_QUEUED_REPLAY)
    refused = r.send("replay", {"from_seq": 1, "to_seq": 1})
    res = r.result(refused)
    assert (res.ok, res.error) == (False, "busy")
    assert "queued" in res.data["message"]
    assert r.station.outbox.replays_queued == (2, MAX_QUEUED_REPLAY)  # nothing added
    assert "replay 1..1 refused" in caplog.text
    settle(r, {full[0]: 1, full[1]: 1, refused: 1})


def test_many_small_replays_stop_at_the_count_cap(rig):
    r = rig(pump=False)
    r.station.record(2)
    cids = [r.send("replay", {"from_seq": 1, "to_seq": 2})
            for _ in range(MAX_QUEUED_REPLAYS + 5)]
    errors = Counter(r.result(cid).error for cid in cids)
    assert errors == Counter({None: MAX_QUEUED_REPLAYS, "busy": 5})
    assert r.station.outbox.replays_queued == (MAX_QUEUED_REPLAYS, 2 * MAX_QUEUED_REPLAYS)
    # Once the pump runs the queue drains and replays are taken again.
    r.station.start_pump()
    wait_until(lambda: r.station.outbox.replays_queued == (0, 0), 10, "the replays sent")
    again = r.send("replay", {"from_seq": 1, "to_seq": 2})
    assert r.result(again).ok


def test_a_handler_bug_is_answered_without_its_exception_text(rig, caplog):
    def reload() -> None:  # not a ConfigError: a bug, whose text must stay on the station
        raise OSError(13, "Permission denied", "/var/lib/yizhan/secret-fleet.key")

    r = rig(on_reload=reload)
    cid = r.send("reload")
    res = r.result(cid)
    assert (res.ok, res.error) == (False, "bad_args")
    assert res.data == {"message": INTERNAL_MESSAGE}
    assert "secret-fleet.key" not in json.dumps(res.to_dict())
    assert "secret-fleet.key" in caplog.text  # the detail is in the station's log
    settle(r, {cid: 1})
