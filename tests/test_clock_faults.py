"""Clock faults (issue 12, item 5): a Pi's wall clock steps; nothing that measures cares.

A Raspberry Pi has no battery clock: it boots on yesterday's time (fake-hwclock)
and NTP steps it later, forward or back. Durations on the station are measured
on the monotonic clock, dating on the hub uses the hub's own clock:

* a real agent on ``hardware: sim`` and a ManualClock, on a real Mosquitto,
  stepped by the test as its loop would (``Agent.step``): its wall clock jumps
  back a day and forward again (``ManualClock.jump``, what NTP does) while its
  State heartbeat, coalescing, heater safety, take timeout, maintenance idle,
  PIN lockout and loan time keep to monotonic time, and its events keep their
  gap-free ``seq`` and say ``synced: false`` while the clock is not synced;
* a real hub on a ManualClock, given a station a day behind (not synced) and
  one ten years ahead (claiming to be synced): their events are dated by
  receipt, uptime and outages follow the hub's clock, alerts keep their
  ``for`` and quiet times, loans fall due a loan's length after the borrow.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.directory import hash_pin
from firmware.hardware.station import build_hardware
from hub.storage.schema import events
from kiosk import create_app
from kiosk.config import KioskConfig
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, close, connect, publish
from tests.harness.procs import wait_until
from tests.test_agent import FLEET_KEY, SID, station_yaml
from tests.test_hub_ingest import start_hub
from tests.test_kiosk import Screen
from tests.test_kiosk_staff import log_in
from yizhan.clock import ManualClock
from yizhan.watchdog import Notifier

DAY = 86_400.0
YEARS_10 = 10 * 365 * DAY


# -- the station: a real agent, stepped on a ManualClock -----------------------------------------


class Stepped:
    """A real agent on sim hardware and ``clock``; the test moves time and steps it.

    The world is made quiet (no charging, no heat loss, water at a steady 94 °C,
    the heater idle by its thermostat), so that every State is one the rules
    under test sent.
    """

    def __init__(self, tmp_path, broker, clock: ManualClock) -> None:
        self.clock = clock
        self.config = parse_station_config(station_yaml(tmp_path, broker), source=None)
        self.hardware = build_hardware(self.config, clock)
        self.sim = self.hardware.simulation
        self.board = self.sim.board
        self.board.cabinet.charge_rate = 0.0  # no bank's charge creeps up between States
        self.water = self.sim.water
        self.water.loss_w_per_k = 0.0
        self.water.set_temperature(94.0)  # above the thermostat's 92 °C: the heater rests
        self.agent = Agent(self.config, clock, self.hardware, notifier=Notifier(None))
        # What the agent hands its link, counted as it happens: "no State yet" is
        # then a fact, not a short wait for the broker.
        self.handed: list[Kind] = []
        publish = self.agent.link.publish

        def counted(kind: Kind, message: object, **kwargs: Any) -> Any:
            self.handed.append(kind)
            return publish(kind, message, **kwargs)

        self.agent.link.publish = counted
        self.agent.start()
        wait_until(self.agent.link.connected.is_set, 10, "the agent connected")
        self.base = f"http://127.0.0.1:{self.agent.local_api_port}"

    @property
    def states_sent(self) -> int:
        return self.handed.count(Kind.STATE)

    @property
    def synced(self) -> bool:
        return self.hardware.clock_sync.is_synced

    @synced.setter
    def synced(self, value: bool) -> None:
        # The kernel's flag (adjtimex) of the simulated Pi.
        self.hardware.clock_sync.is_synced = value

    def run(self, seconds: float, every: float = 1.0) -> None:
        """``seconds`` of the station's life: the clock moved ``every`` seconds at a
        time and one loop step after each, as ``Agent.run`` would."""
        reader = self.agent.dispenser._thermometer
        left = seconds
        while left > 1e-9:
            dt = min(every, left)
            self.clock.advance(dt)
            left -= dt
            # The tank follows the clock here, not whenever its real-time ticker wakes.
            self.water.sync()
            self.agent.step()
            # The thermometer reads on a thread of its own; on a Pi time runs while it
            # does. The clock stands still until it has: a thread a loaded machine
            # leaves waiting must not age the reading past sensor_timeout.
            wait_until(lambda: reader.settled, 10, "the thermometer's read", interval=0.001)

    def event(self, sub: Subscriber, type_: str, timeout: float = 3.0) -> dict:
        """The latest ``type_`` event on the wire; the station steps (time standing
        still) meanwhile, as its loop would, so that what its threads saw goes out."""
        def seen() -> dict | None:
            self.agent.step()
            found = events_of(sub, type_)
            return found[-1] if found else None

        return wait_until(seen, timeout, f"a {type_} event on the wire")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def close(self) -> None:
        self.agent.close()


@pytest.fixture
def stepped(tmp_path, broker, clock) -> Iterator[Any]:
    made: list[Stepped] = []

    def start() -> Stepped:
        made.append(Stepped(tmp_path, broker, clock))
        return made[-1]

    yield start
    for s in made:
        s.close()


def states(sub: Subscriber) -> list[dict]:
    return [x.json() for x in sub.messages if x.topic.endswith("/state")]


def events_of(sub: Subscriber, type_: str | None = None) -> list[dict]:
    out = [x.json() for x in sub.messages if x.topic.endswith("/event")]
    return [e for e in out if type_ in (None, e["type"])]


def arrived(sub: Subscriber, n: int) -> dict:
    """The ``n``-th State on the wire (1-based), waited for."""
    wait_until(lambda: len(states(sub)) >= n, 3, f"State number {n} on the wire")
    return states(sub)[n - 1]


def test_state_heartbeat_and_coalescing_keep_to_monotonic_time_while_the_wall_clock_jumps(
        broker, stepped, clock):
    with Subscriber(broker, [topic(SID, Kind.STATE), topic(SID, Kind.EVENT)]) as sub:
        s = stepped()
        s.run(15)  # the first readings, the birth's State: the station settles
        doors = s.sim.doors
        booted = clock.now()

        # A change, then another inside the 2 s window: one State, 2 s after the
        # first, though the wall clock went back a day in between (a Pi whose
        # NTP lost its server and fell back to fake-hwclock's time).
        # (Steps are binary fractions of a second, so that they add up exactly.)
        before = s.states_sent
        doors.open("entrance")
        s.run(0.125)  # the reed switch settles: door_opened, a State due in 2 s
        s.run(1.0)
        clock.jump(booted - DAY)
        s.synced = False
        doors.close("entrance")
        s.run(0.125)  # door_closed, inside the window
        s.run(0.75)  # 1.875 s after the first change
        assert s.states_sent == before, "a State went out before the coalescing window ended"
        s.run(0.125)  # 2 s
        assert s.states_sent == before + 1, "no State 2 s after the change"
        s.run(0.875)
        assert s.states_sent == before + 1, "the two changes were not folded into one State"
        folded = arrived(sub, before + 1)
        assert folded["doors"]["entrance"] is False
        assert folded["synced"] is False and folded["ts"] < booted * 1000 - DAY * 1000 + 10_000

        # The heartbeat: 60 s of monotonic time after the last State, whatever
        # the wall clock did meanwhile.
        s.run(58.125)  # 59 s after that State
        assert s.states_sent == before + 1, "a heartbeat before 60 s"
        s.run(1)
        assert s.states_sent == before + 2, "no heartbeat after 60 s"
        assert arrived(sub, before + 2)["synced"] is False
        # NTP steps the clock forward again: no early heartbeat.
        clock.jump(clock.now() + DAY)
        s.synced = True
        s.run(59)
        assert s.states_sent == before + 2, "the wall clock's step forward sent a heartbeat early"
        s.run(1)
        assert s.states_sent == before + 3, "no heartbeat after 60 s"
        last = arrived(sub, before + 3)
        assert last["synced"] is True and abs(last["ts"] - clock.ms()) < 1000

        # The events: gap-free seq whatever the wall clock did; unsynced ones say so.
        opened, shut = events_of(sub, "door_opened")[-1], events_of(sub, "door_closed")[-1]
        assert shut["seq"] == opened["seq"] + 1
        assert opened["synced"] is True and shut["synced"] is False
        assert shut["ts"] < opened["ts"]  # dated on the Pi's clock as it read then
        doors.open("entrance")
        s.run(0.125)
        again = wait_until(lambda: next((e for e in events_of(sub, "door_opened")
                                         if e["seq"] > shut["seq"]), None), 3, "the third event")
        assert again["seq"] == shut["seq"] + 1 and again["synced"] is True
        seqs = {e["seq"] for e in events_of(sub)}  # a re-sent event keeps its seq
        assert seqs == set(range(min(seqs), max(seqs) + 1))


def test_the_heater_is_cut_after_max_on_time_of_monotonic_time_across_ntp_steps(
        broker, stepped, clock):
    """The heater's one forced cut is 30 minutes of continuous heating; a Pi whose
    clock NTP steps back a day meanwhile still cuts it then, not a day later."""
    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        s = stepped()
        # A weak element in a big tank: it never reaches its target in 30 minutes.
        s.water.heater_w = 40.0
        s.water.set_temperature(40.0)
        for _ in range(30):  # the first sane readings; the heater starts at a step
            s.run(1)
            if s.water.heater_on:
                break
        assert s.water.heater_on, "the heater never started"
        on_at = clock.monotonic()
        clock.jump(clock.now() - DAY)  # the Pi falls back on yesterday's time
        s.synced = False
        s.run(60, every=2.0)
        clock.jump(clock.now() + DAY + 3)  # NTP steps it right
        s.synced = True
        s.run(30 * 60 - 2 - (clock.monotonic() - on_at), every=2.0)
        assert s.water.heater_on, "cut before 30 minutes of heating"
        assert not events_of(sub, "heater_lockout")
        s.run(2, every=2.0)  # 30 minutes on
        assert not s.water.heater_on, "still heating after 30 minutes"
        lockout = s.event(sub, "heater_lockout")
        assert lockout["data"]["reason"] == "max_on_time"
        # The cooldown, 10 minutes, counts on the same clock.
        cut_at = clock.monotonic()
        clock.jump(clock.now() - DAY)
        s.run(10 * 60 - 2, every=2.0)
        assert not events_of(sub, "heater_lockout_cleared"), "the cooldown ended early"
        assert clock.monotonic() - cut_at == 10 * 60 - 2
        s.run(2, every=2.0)
        s.event(sub, "heater_lockout_cleared")


def with_staff(broker) -> None:
    """The hub's Directory, retained: staff ``li`` with PIN 2468."""
    staff = m.StaffEntry(id="li", name="李师傅", pin=hash_pin("2468", iterations=1000))
    directory = m.Directory(rev=1, ts=1_764_196_700_000, policy=m.Policy(), riders=(),
                            staff=(staff,), denied=())
    publish(broker, topic(SID, Kind.DIRECTORY), m.encode(directory), retain=True)


def test_a_take_timeout_and_a_maintenance_idle_end_after_their_monotonic_durations(
        broker, stepped, clock):
    with_staff(broker)
    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        s = stepped()
        wait_until(lambda: s.agent.directory.rev == 1, 5, "the directory")
        s.run(3)
        status, body = s.request("POST", "/v1/maintenance", {"staff": "li", "pin": "2468"})
        assert status == 201, body
        session = body["session"]["id"]

        def active() -> bool:
            return s.request("GET", f"/v1/maintenance/{session}")[1]["session"]["active"]

        # Staff walk away; the Pi falls back on yesterday's time meanwhile.
        clock.jump(clock.now() - DAY)
        s.synced = False
        s.run(599, every=5.0)
        assert active(), "maintenance ended before 10 idle minutes"
        s.run(1)
        assert not active(), "maintenance still open after 10 idle minutes"
        ended = s.event(sub, "maintenance_ended")
        assert ended["data"]["reason"] == "idle" and ended["synced"] is False
        # The ended session stays readable for an hour (the kiosk says why it
        # ended), however far NTP steps the clock meanwhile.
        clock.jump(clock.now() + 2 * DAY)
        s.synced = True
        s.run(1)
        status, body = s.request("GET", f"/v1/maintenance/{session}")
        assert status == 200 and body["session"]["end_reason"] == "idle", body

        # This cabinet's latches stay open a while: only the take timeout can end it.
        s.board.cabinet.release_window = 300.0
        status, body = s.request("POST", "/v1/borrow", {"rider": examples.RIDER})
        assert status == 202, body
        attempt = body["attempt"]["id"]

        def state() -> str:
            return s.request("GET", f"/v1/borrow/{attempt}")[1]["attempt"]["state"]

        wait_until(lambda: state() == "open", 5, "the slot open")
        # The rider walks away; the clock steps back a day meanwhile.
        clock.jump(clock.now() - DAY)
        s.run(29.75, every=0.25)
        assert state() == "open", "the take timeout fired early"
        s.run(0.25)
        assert state() == "failed"
        failed = s.event(sub, "unlock_failed")
        assert failed["data"]["reason"] == "not_taken" and failed["synced"] is True


def test_a_pin_lockout_lasts_fifteen_minutes_whatever_ntp_does(broker, stepped, clock):
    with_staff(broker)
    s = stepped()
    wait_until(lambda: s.agent.directory.rev == 1, 5, "the directory")
    s.run(3)
    # Five wrong PINs lock staff li out for 15 minutes ...
    for _ in range(5):
        status, body = s.request("POST", "/v1/maintenance", {"staff": "li", "pin": "1111"})
    assert status == 429 and body["error"]["code"] == "locked_out", body
    # ... and NTP stepping the Pi's clock a day forward does not end that early.
    clock.jump(clock.now() + DAY)
    s.run(899, every=10.0)
    status, body = s.request("POST", "/v1/maintenance", {"staff": "li", "pin": "2468"})
    assert status == 429, "the lockout ended early"
    s.run(1)
    status, body = s.request("POST", "/v1/maintenance", {"staff": "li", "pin": "2468"})
    assert status == 201, body


def test_a_loan_time_is_measured_on_the_monotonic_clock(broker, stepped, clock):
    """A loan that began on yesterday's time and ended after NTP stepped the clock
    lasted what the monotonic clock says (the kiosk's thank-you shows it), not a
    day longer."""
    with Subscriber(broker, [topic(SID, Kind.EVENT)]) as sub:
        s = stepped()
        s.run(3)
        clock.jump(clock.now() - DAY)
        s.synced = False
        status, body = s.request("POST", "/v1/borrow", {"rider": examples.RIDER})
        assert status == 202, body
        attempt = body["attempt"]["id"]
        wait_until(lambda: s.request("GET", f"/v1/borrow/{attempt}")[1]["attempt"]["state"]
                   == "open", 5, "the slot open")
        slot = s.request("GET", f"/v1/borrow/{attempt}")[1]["attempt"]["slot"]
        bank = s.board.take(slot)
        s.run(0.5, every=0.25)
        s.event(sub, "bank_borrowed")
        s.run(600, every=10.0)
        clock.jump(clock.now() + DAY)
        s.synced = True
        s.run(300, every=10.0)
        s.board.insert(slot, bank, charge=40)
        s.run(0.5, every=0.25)
        back = s.event(sub, "bank_returned")
        assert 900 <= back["data"]["duration_s"] <= 902, back["data"]
        shown = s.request("GET", "/v1/returns?since=0")[1]["returns"][-1]
        assert 900 <= shown["duration_s"] <= 902


def test_the_kiosks_staff_session_keeps_its_idle_time_whatever_ntp_does(
        broker, stepped, clock, tmp_path):
    """The kiosk on the same Pi, on the same clock: its own idle limit (twice the
    screen's, 6 minutes) is kept on monotonic time too."""
    with_staff(broker)
    s = stepped()
    wait_until(lambda: s.agent.directory.rev == 1, 5, "the directory")
    config = KioskConfig(fleet_key=FLEET_KEY, data_dir=tmp_path / "kiosk", sid=SID,
                         api_url=s.base)
    screen = Screen(create_app(config, clock=clock).test_client())
    r = log_in(screen)
    assert r.status_code == 302 and r.location.endswith("/staff/panel"), r.status_code
    assert screen.get("/staff/panel").status_code == 200
    clock.jump(clock.now() + DAY)  # NTP steps the clock a day forward: still logged in
    clock.advance(300)
    assert screen.get("/staff/panel").status_code == 200, "logged out by the clock's step"
    clock.jump(clock.now() - 2 * DAY)  # and back: the idle limit still ends the session
    clock.advance(361)
    r = screen.get("/staff/panel")
    assert r.status_code == 302 and r.location.endswith("/"), "still logged in"
    assert s.agent.lending.maintenance is None


# -- the hub: its own clock dates what the stations' clocks cannot -------------------------------

TOKEN = "clock-faults-token-0123456789"
BEHIND, AHEAD = "yh-behind-01", "yh-ahead-01"


class Pi:
    """A station on the wire whose clock reads ``offset`` seconds off the hub's;
    each message it sends is waited for until ``hub`` has applied it."""

    def __init__(self, broker, hub, sid: str, hub_clock: ManualClock, offset: float,
                 synced: bool) -> None:
        self.client = connect(broker)
        self.hub = hub
        self.sid, self.epoch = sid, "9f2c01ab"
        self.hub_clock, self.offset, self.synced = hub_clock, offset, synced
        self.rev = self.seq = 0
        self.birth_rev: int | None = None

    def ts(self, shift: float = 0.0) -> int:
        return int((self.hub_clock.now() + self.offset + shift) * 1000)

    def send(self, message: Any, applied: Callable[[Any], bool]) -> None:
        t = topic(self.sid, message.KIND)
        retain = message.KIND in (Kind.STATUS, Kind.STATE)
        self.client.publish(t, m.encode(message), qos=1, retain=retain).wait_for_publish(5)
        wait_until(lambda: (v := self.hub.fleet.get(self.sid)) is not None and applied(v), 5,
                   f"{message.KIND.value} of {self.sid} applied by the hub")

    def birth(self) -> None:
        self.rev += 1
        self.birth_rev = self.rev
        birth = self.rev
        self.send(m.Status.online(self.sid, self.epoch, self.ts(), self.synced, self.rev,
                                  self.seq, "1.0.0", {"slots": 6, "dispenser": False}),
                  lambda v: v.online and v.birth == birth)

    def state(self) -> None:
        self.rev += 1
        d = examples.example("state")
        d.update(sid=self.sid, epoch=self.epoch, ts=self.ts(), synced=self.synced,
                 rev=self.rev, last_seq=self.seq)
        rev = self.rev
        self.send(m.from_dict(Kind.STATE, d), lambda v: v.state_rev == rev)

    def lost(self) -> None:
        """What the broker publishes for it when its link dies: its last will."""
        assert self.birth_rev is not None
        self.send(m.Status.will(self.sid, self.epoch, self.birth_rev), lambda v: not v.online)

    def event(self, type_: str, data: dict, *, shift: float = 0.0) -> None:
        self.seq += 1
        seq = self.seq
        self.send(m.Event(self.sid, self.epoch, self.ts(shift), self.synced, seq, type_, data),
                  lambda v: v.events_through >= seq)

    def close(self) -> None:
        close(self.client)


@pytest.fixture
def hub_and_pis(broker_factory, tmp_path, clock) -> Iterator[tuple[Any, Pi, Pi]]:
    broker = broker_factory()  # its own: no station's retained messages from before
    hub = start_hub(broker, f"sqlite:///{tmp_path / 'hub.db'}", clock,
                    api_tokens=[{"name": "tests", "token": TOKEN, "scopes": ["admin"]}])
    # A Pi on yesterday's time (fake-hwclock, before NTP), and one ten years ahead
    # whose flag says synced (an NTP server astray).
    behind = Pi(broker, hub, BEHIND, clock, -DAY, synced=False)
    ahead = Pi(broker, hub, AHEAD, clock, YEARS_10, synced=True)
    try:
        yield hub, behind, ahead
    finally:
        behind.close()
        ahead.close()
        hub.close()


def api(hub, path: str) -> dict:
    answer = hub.app.test_client().get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def alerts(hub, sid: str, rule: str) -> list[dict]:
    return [a for a in api(hub, f"/api/v1/alerts?sid={sid}")["alerts"] if a["rule"] == rule]


def committed(hub) -> None:
    """What the fleet decided is in the database (a ledger mark is an op that
    submits its own row: two rounds)."""
    for _ in range(2):
        assert hub.writer.flush(5)


def evaluated(hub) -> None:
    """The scheduler's jobs at the hub's clock now (they also run on their own)."""
    hub.sweep()
    hub.engine.run_pending()  # what the fleet noted, not left to the engine's thread
    hub.evaluate_alerts()
    committed(hub)


def test_the_hub_dates_by_its_own_clock_what_a_pi_a_day_behind_or_years_ahead_says(
        hub_and_pis, clock):
    hub, behind, ahead = hub_and_pis
    t0 = clock.ms()
    for pi in (behind, ahead):
        pi.birth()
        pi.state()

    # Events are dated by their receipt: neither a day back nor ten years on.
    clock.advance(10)
    behind.event("door_opened", {"door": "entrance"})
    ahead.event("door_opened", {"door": "entrance"})
    committed(hub)
    with hub.store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.sid, events.c.ts, events.c.received_ms,
                                      events.c.at_ms)).all()
    assert {r.sid: r.at_ms for r in rows} == {BEHIND: t0 + 10_000, AHEAD: t0 + 10_000}
    assert all(r.received_ms == r.at_ms for r in rows)
    assert {r.sid: r.ts for r in rows} == {BEHIND: t0 + 10_000 - DAY * 1000,
                                           AHEAD: t0 + 10_000 + YEARS_10 * 1000}

    # An outage on the hub's clock: from the last message heard to the next birth;
    # station_offline fires its 2 minutes after that start, not before.
    clock.advance(50)
    behind.state()  # last heard at t0 + 60 s
    clock.advance(30)
    behind.lost()
    clock.advance(89)  # 119 s after the last message heard
    evaluated(hub)
    assert not alerts(hub, BEHIND, "station_offline")
    clock.advance(2)
    evaluated(hub)
    offline = wait_until(lambda: alerts(hub, BEHIND, "station_offline"), 5, "offline alert")
    assert offline[0]["state"] == "firing" and offline[0]["started_at"] == t0 + 60_000
    clock.advance(119)  # t0 + 300 s
    behind.birth()
    evaluated(hub)
    wait_until(lambda: alerts(hub, BEHIND, "station_offline")[0]["state"] == "resolved", 5,
               "offline alert resolved")
    clock.advance(100)
    behind.state()
    committed(hub)
    up = api(hub, f"/api/v1/stations/{BEHIND}/uptime?from={t0}&to={t0 + 400_000}")
    assert up["outages"] == [{"start": t0 + 60_000, "end": t0 + 300_000, "duration_s": 240.0}]
    assert up["down_s"] == 240.0 and up["up_s"] == 160.0

    # The Pi ten years ahead: its maintenance counts in today's window ...
    ahead.birth()
    ahead.event("maintenance_started", {"staff": "li"})
    t_m = clock.ms()
    clock.advance(600)
    ahead.event("maintenance_ended", {"staff": "li", "reason": "ended"})
    committed(hub)
    up = api(hub, f"/api/v1/stations/{AHEAD}/uptime?from={t_m - 60_000}&to={t_m + 660_000}")
    assert up["maintenance_s"] == 600.0, up

    # ... and an event alert of it starts now and resolves after its quiet time (30 min).
    ahead.event("unlock_failed", {"slot": 2, "reason": "jammed"})
    t_u = clock.ms()
    failed = wait_until(lambda: alerts(hub, AHEAD, "unlock_failed"), 5, "unlock_failed alert")
    assert failed[0]["started_at"] == t_u
    clock.advance(30 * 60 - 1)
    evaluated(hub)
    assert alerts(hub, AHEAD, "unlock_failed")[0]["state"] == "firing"
    clock.advance(2)
    evaluated(hub)
    wait_until(lambda: alerts(hub, AHEAD, "unlock_failed")[0]["state"] == "resolved", 5,
               "unlock_failed resolved after its quiet time")


def test_loans_fall_due_a_loan_after_the_borrow_by_the_hubs_clock(hub_and_pis, clock):
    hub, behind, ahead = hub_and_pis
    for pi in (behind, ahead):
        pi.birth()
    t_l = clock.ms()
    behind.event("bank_borrowed", {"slot": 1, "bank": "PBA00001", "charge": 96,
                                   "rider": examples.RIDER})
    ahead.event("bank_borrowed", {"slot": 1, "bank": "PBB00001", "charge": 96,
                                  "rider": examples.RIDER})
    # A borrow made before the Pi's clock was synced, heard late (the hub was away),
    # and its return made after NTP synced it, heard just after: the return's own
    # ts is earlier than the borrow's receipt, yet it closes that loan.
    clock.advance(600)
    behind.event("bank_borrowed", {"slot": 2, "bank": "PBA00002", "charge": 96,
                                   "rider": examples.RIDER})
    behind.offset, behind.synced = 0.0, True
    behind.event("bank_returned", {"slot": 2, "bank": "PBA00002", "charge": 90,
                                   "rider": examples.RIDER}, shift=-300)
    committed(hub)
    assert hub.fleet.loans.open_loan("PBA00002") is None

    def overdue() -> set[str]:
        return {a["value"]["bank"] for a in alerts(hub, BEHIND, "bank_overdue")
                + alerts(hub, AHEAD, "bank_overdue") if a["state"] == "firing"}

    clock.advance(24 * 3600 - 600 - 60)  # a minute before the first two fall due
    evaluated(hub)
    assert overdue() == set()
    clock.advance(120)
    evaluated(hub)
    assert wait_until(lambda: overdue() == {"PBA00001", "PBB00001"}, 5, "overdue loans")
    for pi in (behind, ahead):
        (late,) = alerts(hub, pi.sid, "bank_overdue")  # PBA00002 came back: none for it
        assert late["started_at"] == t_l + 24 * 3600_000
