"""The alert engine (hub/alerting/engine.py) on a clock the test moves.

Real parts behind it — Store and Writer on a SQLite file and on PostgreSQL
(``database_url``), the ledger, the fleet, the loans, the alert rows — fed with
the protocol messages a station sends (Status, State, Event) through the
fleet, exactly as the ingest applies them. ``on_transition`` is recorded. The
tests that do not depend on the database run on SQLite alone, to stay fast.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hub.alerting.alerts import SILENCE, WINDOW, AlertStore, BadMute, StoreUnavailable
from hub.alerting.engine import INHIBITED, MAINTENANCE, SILENCED, AlertEngine
from hub.config import parse_hub_config
from hub.fleet.ledger import Ledger
from hub.fleet.view import Fleet, StationView
from hub.storage.store import Store
from hub.storage.writer import Writer
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind
from yizhan.clock import ManualClock

SID = "yh-chumen-01"
OTHER = "yh-kanmen-01"  # another group
EPOCH = "9f2c01ab"
T0 = 1_764_196_800.0
MIN = 60.0

#: Where the database makes no difference (the rules' logic): SQLite alone keeps
#: the suite fast. Rows, reloads, mutes and the thread run on both.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def slots(ready: int, *, empty: int = 1, faults: dict[int, str] | None = None) -> list[dict]:
    """``ready`` charged banks, then ``empty`` empty slots; ``faults`` by slot number."""
    out = []
    for i in range(ready + empty):
        n = i + 1
        bank = f"PB{n:06d}" if i < ready else None
        out.append({"slot": n, "bank": bank, "charge": 96 if bank else None,
                    "charging": False, "locked": True,
                    "fault": (faults or {}).get(n), "temp_c": 29 if bank else None,
                    "cycles": 10 if bank else None})
    return out


class Station:
    """One station as it talks to the hub: births, States, events (rev and seq kept)."""

    def __init__(self, rig: Rig, sid: str) -> None:
        self.rig, self.sid = rig, sid
        self.rev, self.seq, self.birth = 5000, 0, 0
        self.doc = examples.example("state")
        self.doc["lockers"]["slots"] = slots(6)

    def online(self) -> Station:
        self.rev += 1
        self.birth = self.rev
        status = m.Status.online(self.sid, EPOCH, self.rig.clock.ms(), True, self.rev,
                                 self.seq, "1.0.0", {})
        self.rig.fleet.apply_status(status, self.rig.clock.ms())
        return self.state()

    def lost(self) -> None:
        self.rig.fleet.apply_status(m.Status.will(self.sid, EPOCH, self.birth),
                                    self.rig.clock.ms())

    def state(self, change: Callable[[dict], None] | None = None, **sections: Any) -> Station:
        if change is not None:
            change(self.doc)
        for name, values in sections.items():
            self.doc[name].update(values)
        self.rev += 1
        d = {**self.doc, "sid": self.sid, "epoch": EPOCH, "ts": self.rig.clock.ms(),
             "rev": self.rev, "last_seq": self.seq}
        self.rig.fleet.apply_state(m.from_dict(Kind.STATE, d, topic_sid=self.sid),
                                   self.rig.clock.ms())
        return self

    def water(self, level: float | None, level_state: str = "ok") -> Station:
        return self.state(dispenser={"level": level, "level_state": level_state})

    def event(self, type_: str, **data: Any) -> Station:
        self.seq += 1
        self.rig.fleet.apply_event(
            m.Event(self.sid, EPOCH, self.rig.clock.ms(), True, self.seq, type_, data),
            self.rig.clock.ms())
        return self


class Rig:
    """Store, writer, ledger, fleet, alert store and engine on one database."""

    def __init__(self, database_url: str, clock: ManualClock, forecaster: Any = None,
                 **config: Any) -> None:
        self.clock = clock
        self.config = parse_hub_config({
            "mqtt": {"host": "127.0.0.1"}, "database": database_url,
            "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"},
                         {"sid": OTHER, "name": "坎门驿站", "group": "kanmen"}],
            **config})
        self.store = Store(database_url)
        self.writer = Writer(self.store).start()
        self.ledger = Ledger(self.store, self.writer, clock)
        self.ledger.hub_started(clock.ms())
        self.fleet = Fleet(self.config, self.store, self.writer, self.ledger, clock)
        self.fleet.broker_up(clock.ms())
        self.alerts = AlertStore(self.store, self.writer, clock)
        self.told: list[tuple[str, str, str, str]] = []  # (kind, rule, sid, state)
        self.forecaster = forecaster
        self.engine = self.new_engine()

    def new_engine(self) -> AlertEngine:
        return AlertEngine(self.config, self.fleet, self.alerts, self.clock,
                           forecaster=self.forecaster, on_transition=self.record)

    def record(self, kind: str, alert: dict, station: StationView) -> None:
        assert station.sid == alert["sid"]
        self.told.append((kind, alert["rule"], alert["sid"], alert["state"]))

    def station(self, sid: str = SID) -> Station:
        return Station(self, sid)

    def run(self) -> None:
        """What the engine's thread does with what the fleet noted."""
        self.engine.run_pending()

    def later(self, seconds: float) -> None:
        """Time passes; the scheduler ticks."""
        self.clock.advance(seconds)
        self.engine.tick(self.clock.ms())

    def open(self, sid: str = SID) -> dict[tuple[str, str], str | None]:
        """{(rule, subject): hold} of the open alerts the engine keeps."""
        return {(r, s): h for r, s, h in self.engine.open_tracks(sid)}

    def alerts_of(self, rule: str, sid: str = SID) -> list[dict]:
        return [a for a in self.alerts.list(sid=sid) if a["rule"] == rule]

    def kinds(self, rule: str | None = None) -> list[str]:
        return [k for k, r, _s, _st in self.told if rule is None or r == rule]

    def close(self) -> None:
        self.engine.close()
        self.writer.close()
        self.store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def make(database_url: str, clock: ManualClock) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def build(**kw: Any) -> Rig:
        made.append(Rig(database_url, clock, **kw))
        return made[-1]

    yield build
    for r in made:
        r.close()


@pytest.fixture
def rig(make: Callable[..., Rig]) -> Rig:
    return make()


# -- thresholds with hysteresis ----------------------------------------------------------


def test_water_low_fires_at_its_level_and_clears_only_past_clear(rig: Rig) -> None:
    st = rig.station().online()
    rig.run()
    assert rig.open() == {}
    st.water(0.26)
    rig.run()
    assert rig.open() == {}
    st.water(0.25)
    rig.run()
    assert rig.open() == {("water_low", ""): None}
    [alert] = rig.alerts_of("water_low")
    assert (alert["severity"], alert["state"], alert["value"], alert["summary"]) == \
        ("warning", "firing", {"level": 0.25, "level_state": "ok"}, "水位低 25%")
    for level in (0.3, 0.34, 0.2, 0.34):  # inside the band: no new alert, no resolve
        st.water(level)
        rig.run()
    assert rig.kinds() == ["firing"] and len(rig.alerts_of("water_low")) == 1
    st.water(0.35)
    rig.run()
    assert rig.open() == {}
    assert rig.kinds() == ["firing", "resolved"]
    [alert] = rig.alerts_of("water_low")
    assert alert["state"] == "resolved" and alert["resolved_at"] == rig.clock.ms()


@SQLITE_ONLY
def test_water_low_from_float_switches_alone(rig: Rig) -> None:
    st = rig.station().online()
    st.water(None, "low")
    rig.run()
    assert ("water_low", "") in rig.open()
    st.water(None, "unknown")  # cannot tell: stays
    rig.run()
    assert ("water_low", "") in rig.open()
    st.water(None, "ok")
    rig.run()
    assert rig.open() == {}


@SQLITE_ONLY
def test_an_empty_tank_is_critical_and_not_also_low(rig: Rig) -> None:
    st = rig.station().online()
    st.water(0.02, "empty")
    rig.run()
    assert rig.open() == {("water_empty", ""): None}
    assert rig.alerts_of("water_empty")[0]["severity"] == "critical"
    st.water(0.1, "low")  # below clear: still empty as far as the rule goes
    rig.run()
    assert set(rig.open()) == {("water_empty", "")}
    st.water(0.2, "low")  # partly refilled: no longer empty, still low
    rig.run()
    assert set(rig.open()) == {("water_low", "")}
    st.water(0.9)
    rig.run()
    assert rig.open() == {}
    assert [(k, r) for k, r, _, _ in rig.told] == [
        ("firing", "water_empty"), ("resolved", "water_empty"), ("firing", "water_low"),
        ("resolved", "water_low")]


@SQLITE_ONLY
def test_chargers_low_counts_ready_banks_with_hysteresis(rig: Rig) -> None:
    st = rig.station().online()

    def ready(n: int, **kw: Any) -> None:
        st.state(lambda d: d["lockers"].__setitem__("slots", slots(n, **kw)))
        rig.run()

    ready(3)
    assert rig.open() == {}
    ready(2)
    assert rig.open() == {("chargers_low", ""): None}
    assert rig.alerts_of("chargers_low")[0]["value"] == {"ready": 2}
    ready(3)
    assert ("chargers_low", "") in rig.open()
    ready(4, faults={1: "charger_fault"})  # a faulty bank is not ready: 3
    assert ("chargers_low", "") in rig.open()
    ready(4)
    assert ("chargers_low", "") not in rig.open()
    assert rig.kinds("chargers_low") == ["firing", "resolved"]


@SQLITE_ONLY
@pytest.mark.parametrize(("rule", "key", "fire", "band", "clear"), [
    ("pi_overheat", "cpu_temp_c", 80, 75, 70),
    ("disk_low", "disk_free_mb", 200, 300, 400),
])
def test_health_thresholds(rig: Rig, rule: str, key: str, fire: float, band: float,
                           clear: float) -> None:
    st = rig.station().online()
    for value, is_open in [(band, False), (fire, True), (band, True), (clear, False)]:
        st.state(health={key: value})
        rig.run()
        assert ((rule, "") in rig.open()) is is_open, (value, rig.open())
    assert rig.kinds(rule) == ["firing", "resolved"]


@SQLITE_ONLY
def test_undervoltage_must_last_a_minute(rig: Rig) -> None:
    st = rig.station().online()
    st.state(health={"undervoltage": True})
    rig.run()
    rig.later(30)
    st.state(health={"undervoltage": False})  # a blip: nobody hears of it
    rig.run()
    rig.later(60)
    assert rig.open() == {}
    st.state(health={"undervoltage": True})
    rig.run()
    rig.later(59)
    assert rig.open() == {}
    rig.later(1)
    assert ("undervoltage", "") in rig.open()
    st.state(health={"undervoltage": False})
    rig.run()
    assert rig.kinds("undervoltage") == ["firing", "resolved"]


# -- for durations, subjects ----------------------------------------------------------------


@SQLITE_ONLY
def test_a_door_open_ten_minutes_fires_for_that_door(rig: Rig) -> None:
    st = rig.station().online()
    st.event("door_opened", door="entrance")  # before the State shows it
    rig.run()
    opened = rig.clock.ms()
    rig.later(5 * MIN)
    st.state(doors={"entrance": True})
    rig.run()
    rig.later(4 * MIN + 59)
    assert rig.open() == {}
    rig.later(1)
    assert rig.open() == {("door_open_too_long", "entrance"): None}
    [alert] = rig.alerts_of("door_open_too_long")
    assert alert["started_at"] == opened  # when it opened, not when it was judged
    assert alert["summary"] == "入口门已开 10 分钟"
    rig.later(30 * MIN)
    assert len(rig.alerts_of("door_open_too_long")) == 1
    st.event("door_closed", door="entrance")
    rig.run()
    assert rig.open() == {}
    assert rig.kinds() == ["firing", "resolved"]


@SQLITE_ONLY
def test_a_door_closed_within_its_time_never_fires(rig: Rig) -> None:
    st = rig.station().online()
    st.state(doors={"entrance": True})
    rig.run()
    rig.later(9 * MIN)
    st.state(doors={"entrance": False})
    rig.run()
    rig.later(2 * MIN)
    st.state(doors={"entrance": True})  # opened again: counted afresh
    rig.run()
    rig.later(9 * MIN)
    assert rig.open() == {} and rig.told == []


def test_one_alert_per_slot_however_often_it_is_seen(rig: Rig) -> None:
    st = rig.station().online()
    for _ in range(3):
        st.state(lambda d: d["lockers"].__setitem__(
            "slots", slots(6, faults={2: "charger_fault", 5: "sensor_fault"})))
        rig.run()
        rig.later(MIN)
    assert set(rig.open()) == {("slot_fault", "2"), ("slot_fault", "5")}
    assert len(rig.alerts_of("slot_fault")) == 2
    assert {a["summary"] for a in rig.alerts_of("slot_fault")} == \
        {"2 号仓故障：charger_fault", "5 号仓故障：sensor_fault"}
    st.event("slot_fault_cleared", slot=2, fault="charger_fault")  # ahead of the State
    rig.run()
    assert set(rig.open()) == {("slot_fault", "5")}
    assert rig.alerts.firing_counts() == {(SID, "slot_fault", "warning"): 1}


@SQLITE_ONLY
def test_dispenser_heater_and_locker_board(rig: Rig) -> None:
    st = rig.station().online()
    st.event("dispenser_fault", fault="heater")
    st.event("heater_lockout", reason="dry_boil")
    rig.run()
    assert set(rig.open()) == {("dispenser_fault", ""), ("heater_lockout", "")}
    assert rig.alerts_of("dispenser_fault")[0]["severity"] == "critical"
    st.state(dispenser={"fault": "heater", "heater_lockout": True})  # the State agrees
    rig.run()
    st.event("dispenser_fault_cleared", fault="heater")
    st.event("heater_lockout_cleared", reason="dry_boil")
    rig.run()
    assert rig.open() == {}
    st.state(lockers={"online": False}, dispenser={"fault": None, "heater_lockout": False})
    rig.run()
    assert rig.open() == {("locker_offline", ""): None}
    assert rig.alerts_of("locker_offline")[0]["severity"] == "critical"
    st.event("locker_online")
    rig.run()
    assert rig.open() == {}


# -- events: tamper, unlock failures ---------------------------------------------------------


@SQLITE_ONLY
def test_tamper_is_critical_per_door_and_waits_for_a_person(rig: Rig) -> None:
    st = rig.station().online()
    st.event("tamper", door="locker_panel")
    st.event("tamper", door="locker_panel")
    rig.run()
    assert rig.open() == {("tamper", "locker_panel"): None}
    [alert] = rig.alerts_of("tamper")
    assert alert["severity"] == "critical" and alert["summary"] == "充电柜面板在非维护时间被打开"
    rig.later(24 * 3600)  # nothing proves a tamper harmless
    assert ("tamper", "locker_panel") in rig.open()
    rig.alerts.resolve(alert["id"], by="token:ops")
    assert rig.open() == {}
    st.event("tamper", door="locker_panel")  # a new one is a new alert
    rig.run()
    assert len(rig.alerts_of("tamper")) == 2
    assert rig.kinds("tamper") == ["firing", "resolved", "firing"]


@SQLITE_ONLY
def test_an_old_tamper_from_a_replay_is_history(rig: Rig) -> None:
    st = rig.station().online()
    st.seq += 1
    old = rig.clock.ms() - 25 * 3600_000
    rig.fleet.apply_event(m.Event(SID, EPOCH, old, True, st.seq, "tamper",
                                  {"door": "locker_panel"}), rig.clock.ms())
    rig.run()
    assert rig.open() == {}


@SQLITE_ONLY
def test_unlock_failed_jammed_is_critical_and_clears_when_the_slot_works(rig: Rig) -> None:
    st = rig.station().online()
    st.event("unlock_failed", slot=3, reason="timeout")
    rig.run()
    [alert] = rig.alerts_of("unlock_failed")
    assert (alert["severity"], alert["value"]) == ("warning", {"slot": 3, "reason": "timeout"})
    st.event("unlock_failed", slot=3, reason="jammed")  # worse: the same alert, critical
    st.state(lambda d: d["lockers"].__setitem__("slots", slots(6, faults={3: "lock_jammed"})))
    rig.run()
    [alert] = rig.alerts_of("unlock_failed")
    assert alert["severity"] == "critical" and alert["state"] == "firing"
    assert set(rig.open()) == {("unlock_failed", "3"), ("slot_fault", "3")}
    st.state(lambda d: d["lockers"].__setitem__("slots", slots(6)))  # fixed on site
    rig.run()
    assert rig.open() == {}
    assert rig.kinds("unlock_failed") == ["firing", "resolved"]


@SQLITE_ONLY
def test_unlock_failed_clears_after_a_quiet_time_or_a_borrow(rig: Rig) -> None:
    st = rig.station().online()
    st.event("unlock_failed", slot=4, reason="not_taken")
    rig.run()
    rig.later(29 * MIN)
    assert ("unlock_failed", "4") in rig.open()
    rig.later(MIN)
    assert rig.open() == {}
    st.event("unlock_failed", slot=4, reason="timeout")
    rig.run()
    assert ("unlock_failed", "4") in rig.open()
    st.event("bank_borrowed", slot=4, bank="PB000004", charge=96, rider=examples.RIDER)
    rig.run()
    assert rig.open() == {}
    assert rig.kinds("unlock_failed") == ["firing", "resolved", "firing", "resolved"]


# -- the station offline, and what it inhibits -----------------------------------------------


@SQLITE_ONLY
def test_station_offline_after_two_minutes_inhibits_its_parts(rig: Rig) -> None:
    st = rig.station().online()
    st.water(0.2)
    st.state(doors={"entrance": True})
    rig.run()
    assert rig.kinds() == ["firing"]  # water_low
    rig.later(MIN)
    st.state()  # a heartbeat, the last the hub hears: the outage starts here
    lost_at = rig.clock.ms()
    rig.later(30)
    st.lost()
    rig.run()
    assert rig.open() == {("water_low", ""): INHIBITED}  # told already; not reminded now
    rig.later(89)
    assert ("station_offline", "") not in rig.open()
    rig.later(1)
    [offline] = rig.alerts_of("station_offline")
    assert (offline["severity"], offline["started_at"]) == ("critical", lost_at)
    assert offline["summary"] == "驿站离线（连接中断）"
    rig.later(10 * MIN)  # the door's ten minutes pass while the station is away
    assert rig.open() == {("station_offline", ""): None, ("water_low", ""): INHIBITED,
                          ("door_open_too_long", "entrance"): INHIBITED}
    door = rig.alerts_of("door_open_too_long")[0]
    assert rig.engine.muted({**door, "subject": "entrance"})
    assert not rig.engine.muted(offline)
    assert [(k, r) for k, r, _, _ in rig.told] == [("firing", "water_low"),
                                                  ("firing", "station_offline")]
    st.online()  # back: the outage resolves, the door held back is told now
    rig.run()
    assert rig.open() == {("water_low", ""): None, ("door_open_too_long", "entrance"): None}
    assert [(k, r) for k, r, _, _ in rig.told][2:] == [
        ("resolved", "station_offline"), ("firing", "door_open_too_long")]


@SQLITE_ONLY
def test_a_short_outage_is_not_an_alert_and_a_silent_station_is(rig: Rig) -> None:
    st = rig.station().online()
    st.lost()
    rig.later(90)
    st.online()
    rig.run()
    rig.later(5 * MIN)
    assert rig.told == []
    # Silent (no will): down after three missed heartbeats, from when last heard.
    rig.later(3 * MIN + 1)
    assert rig.fleet.sweep_silent(rig.clock.ms()) == [SID]
    rig.run()  # the fleet told the engine; no tick needed
    assert rig.open() == {("station_offline", ""): None}
    assert rig.alerts_of("station_offline")[0]["value"] == {"reason": "silent"}


# -- maintenance, windows, silences ---------------------------------------------------------


@SQLITE_ONLY
def test_staff_on_site_mute_refill_alerts_not_faults(rig: Rig) -> None:
    st = rig.station().online()
    st.event("maintenance_started", staff="li")
    st.water(0.1)
    st.state(lambda d: d["lockers"].__setitem__("slots", slots(1)))
    st.state(dispenser={"fault": "sensor"})
    rig.run()
    assert rig.open() == {("water_low", ""): MAINTENANCE, ("chargers_low", ""): MAINTENANCE,
                          ("dispenser_fault", ""): None}
    assert rig.kinds() == ["firing"] and rig.told[0][1] == "dispenser_fault"
    st.water(0.9)  # refilled while on site: nobody needs to hear of it
    rig.run()
    st.event("maintenance_ended", staff="li")
    rig.run()
    assert rig.open() == {("chargers_low", ""): None, ("dispenser_fault", ""): None}
    # The banks were not restocked: that is told now the staff have left.
    assert [(k, r) for k, r, _, _ in rig.told] == [("firing", "dispenser_fault"),
                                                  ("firing", "chargers_low")]


@SQLITE_ONLY
def test_a_forgotten_maintenance_session_mutes_for_maintenance_max_only(rig: Rig) -> None:
    st = rig.station().online()
    st.event("maintenance_started", staff="li")
    st.water(0.1)
    rig.run()
    assert rig.open() == {("water_low", ""): MAINTENANCE}
    rig.later(4 * 3600)
    assert rig.open() == {("water_low", ""): None}
    assert rig.kinds() == ["firing"]


def test_maintenance_windows_and_silences_from_the_store(rig: Rig) -> None:
    st = rig.station().online()
    other = rig.station(OTHER).online()
    now = rig.clock.ms()
    window = rig.alerts.mutes.add(WINDOW, {"group": "chumen", "starts_at": now + 60_000,
                                           "duration": "1h"}, by="token:ops")
    st.water(0.1)
    other.water(0.1)
    rig.run()
    assert rig.open() == {("water_low", ""): None}  # not started yet
    rig.later(MIN)
    assert rig.open() == {("water_low", ""): MAINTENANCE}
    assert rig.open(OTHER) == {("water_low", ""): None}  # another group
    silence = rig.alerts.mutes.add(SILENCE, {"rule": "water_low", "sid": OTHER,
                                             "duration": "30m"}, by="token:ops")
    assert rig.open(OTHER) == {("water_low", ""): SILENCED}  # at once, no tick needed
    rig.alerts.mutes.end(SILENCE, silence["id"])
    assert rig.open(OTHER) == {("water_low", ""): None}
    rig.later(60 * MIN)  # the window is over
    assert rig.open() == {("water_low", ""): None}
    assert rig.alerts.mutes.get(WINDOW, window["id"])["ends_at"] == now + 3_660_000


@SQLITE_ONLY
def test_a_silence_holds_new_alerts_back_until_it_ends(rig: Rig) -> None:
    st = rig.station().online()
    rig.alerts.mutes.add(SILENCE, {"sid": SID, "duration": "20m"}, by="token:ops")
    st.event("tamper", door="locker_panel")
    st.water(0.1)
    rig.run()
    assert rig.open() == {("tamper", "locker_panel"): SILENCED, ("water_low", ""): SILENCED}
    assert rig.told == []
    st.water(0.9)  # fixed while silenced: never told, not even resolved
    rig.run()
    rig.later(20 * MIN)
    assert rig.open() == {("tamper", "locker_panel"): None}
    assert rig.told == [("firing", "tamper", SID, "firing")]


@SQLITE_ONLY
def test_bad_silences_and_windows_are_refused(rig: Rig) -> None:
    now = rig.clock.ms()
    for kind, body, code in [
        (SILENCE, {"duration": "1h"}, "bad_match"),
        (WINDOW, {"rule": "water_low", "duration": "1h"}, "bad_body"),
        (SILENCE, {"sid": "Bad Sid", "duration": "1h"}, "bad_sid"),
        (SILENCE, {"rule": "water_lo", "duration": "1h"}, "bad_rule"),
        (SILENCE, {"sid": SID}, "bad_time"),
        (SILENCE, {"sid": SID, "duration": "1h", "ends_at": now + 1}, "bad_time"),
        (SILENCE, {"sid": SID, "duration": "soon"}, "bad_time"),
        (SILENCE, {"sid": SID, "ends_at": now - 1}, "bad_time"),
        (SILENCE, {"sid": SID, "duration": "31d"}, "bad_time"),
        (WINDOW, {"group": "", "duration": "1h"}, "bad_group"),
        (WINDOW, {"sid": SID, "duration": "1h", "comment": 5}, "bad_comment"),
        (WINDOW, [SID], "bad_body"),
    ]:
        with pytest.raises(BadMute) as caught:
            rig.alerts.mutes.add(kind, body, by=None)
        assert caught.value.code == code, (body, caught.value)
    assert rig.alerts.mutes.list(SILENCE) == [] and rig.alerts.mutes.list(WINDOW) == []


# -- flapping ----------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_flapping_alert_stays_firing_until_quiet(rig: Rig) -> None:
    st = rig.station().online()
    for _ in range(3):  # fires, resolves: each told
        st.water(0.0, "empty")
        rig.run()
        rig.later(MIN)
        st.water(0.5)
        rig.run()
        rig.later(MIN)
    assert rig.kinds("water_empty") == ["firing", "resolved"] * 3
    st.water(0.0, "empty")  # the third time again within the hour: flapping
    rig.run()
    rig.later(MIN)
    for _ in range(3):
        st.water(0.5)
        rig.run()
        rig.later(5 * MIN)
        st.water(0.0, "empty")
        rig.run()
        rig.later(5 * MIN)
    assert rig.kinds("water_empty") == ["firing", "resolved"] * 3 + ["firing"]
    assert len(rig.alerts_of("water_empty")) == 4
    st.water(0.5)
    rig.run()
    rig.later(59 * MIN)
    assert ("water_empty", "") in rig.open()
    rig.later(MIN)  # quiet for the flap window
    assert rig.open() == {}
    assert rig.kinds("water_empty")[-1] == "resolved"


# -- people: ack and resolve -----------------------------------------------------------------


def test_an_acked_alert_still_resolves_itself_when_fixed(rig: Rig) -> None:
    st = rig.station().online()
    st.water(0.1)
    rig.run()
    [alert] = rig.alerts_of("water_low")
    acked = rig.alerts.ack(alert["id"], by="token:li")
    assert acked["state"] == "acked"
    rig.alerts.ack(alert["id"], by="token:li")  # again: nothing new to tell
    st.water(0.2)
    rig.run()
    assert rig.alerts.get(alert["id"])["state"] == "acked"
    st.water(0.9)
    rig.run()
    resolved = rig.alerts.get(alert["id"])
    assert resolved["state"] == "resolved" and resolved["acked_at"] == acked["acked_at"]
    assert [(k, st_) for k, _, _, st_ in rig.told] == [
        ("firing", "firing"), ("acked", "acked"), ("resolved", "resolved")]


@SQLITE_ONLY
def test_resolved_by_hand_stays_resolved_until_it_happens_again(rig: Rig) -> None:
    st = rig.station().online()
    st.water(0.1)
    rig.run()
    [alert] = rig.alerts_of("water_low")
    rig.alerts.resolve(alert["id"], by="token:li")
    for level in (0.1, 0.2, 0.3):
        st.water(level)
        rig.run()
        rig.later(MIN)
    assert rig.open() == {} and len(rig.alerts_of("water_low")) == 1
    st.water(0.5)  # cleared...
    rig.run()
    st.water(0.2)  # ...and low again: a new alert
    rig.run()
    assert len(rig.alerts_of("water_low")) == 2
    assert rig.kinds() == ["firing", "resolved", "firing"]


# -- per group -------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_group_override_applies_to_its_stations_only(make: Callable[..., Rig]) -> None:
    rig = make(groups={"chumen": {"rules": {"water_low": {"level": 0.3, "clear": 0.4},
                                            "door_open_too_long": {"for": "2m"}}}})
    mine, other = rig.station().online(), rig.station(OTHER).online()
    for st in (mine, other):
        st.water(0.28)
        st.state(doors={"entrance": True})
    rig.run()
    rig.later(2 * MIN)
    assert set(rig.open()) == {("water_low", ""), ("door_open_too_long", "entrance")}
    assert rig.open(OTHER) == {}
    mine.water(0.38)
    rig.run()
    assert ("water_low", "") in rig.open()  # clear is 0.4 here
    rig.later(8 * MIN)
    assert rig.open(OTHER) == {("door_open_too_long", "entrance"): None}


@SQLITE_ONLY
def test_a_rule_switched_off_resolves_and_stays_quiet(make: Callable[..., Rig]) -> None:
    rig = make(rules={"disk_low": {"enabled": False}})
    st = rig.station().online()
    st.state(health={"disk_free_mb": 10})
    rig.run()
    assert rig.open() == {}


# -- predictions and loans --------------------------------------------------------------------


class Forecast:
    """Stands in for hub.forecast.Forecaster at its interface: a time to empty the
    test sets, and the refill bookkeeping the engine reports."""

    def __init__(self) -> None:
        self.left: dict[str, float | None] = {"water": None, "chargers": None}
        self.calls: list[tuple] = []

    def time_to_empty(self, sid: str, what: str) -> float | None:
        return self.left[what]

    def alert_started(self, sid: str, what: str, at_ms: int) -> None:
        self.calls.append(("alert_started", sid, what))

    def alert_ended(self, sid: str, what: str) -> None:
        self.calls.append(("alert_ended", sid, what))


@SQLITE_ONLY
def test_predicted_empty_fires_within_the_groups_response_time(make: Callable[..., Rig]) -> None:
    fc = Forecast()
    rig = make(forecaster=fc, groups={"chumen": {"response_time": "45m"}})
    st = rig.station().online()
    rig.run()
    for left, is_open in [(50 * MIN, False), (44 * MIN, True), (60 * MIN, True),
                          (68 * MIN, False), (None, False)]:
        fc.left["water"] = left
        st.state()  # a forecast moves with what the station reports
        rig.later(5)
        rig.run()
        assert (("water_predicted_empty", "") in rig.open()) is is_open, left
    alert = rig.alerts_of("water_predicted_empty")[0]
    assert (alert["severity"], alert["value"], alert["summary"]) == \
        ("warning", {"seconds": 2640}, "预计约 44 分钟 后断水")
    assert fc.calls == [("alert_started", SID, "water")]
    fc.left["chargers"] = 10 * MIN
    st.state(lambda d: d["lockers"].__setitem__("slots", slots(2)))  # low already
    rig.run()
    rig.later(5)
    assert set(rig.open()) == {("chargers_low", "")}  # the prediction adds nothing


@SQLITE_ONLY
def test_overdue_loans_are_info_then_warning_per_bank(rig: Rig) -> None:
    st = rig.station().online()
    st.event("bank_borrowed", slot=1, bank="PB000001", charge=96, rider=examples.RIDER)
    rig.run()
    rig.later(24 * 3600)
    assert rig.open() == {}
    rig.later(1)
    assert rig.open() == {("bank_overdue", "PB000001"): None}
    [alert] = rig.alerts_of("bank_overdue")
    assert alert["severity"] == "info" and alert["value"]["bank"] == "PB000001"
    st.lost()  # a loan is the hub's record: the station's outage does not hold it back
    rig.later(72 * 3600)
    assert rig.alerts_of("bank_overdue")[0]["severity"] == "warning"
    assert rig.open()[("bank_overdue", "PB000001")] is None
    st.online().event("bank_returned", slot=1, bank="PB000001", charge=40, rider=None)
    rig.later(1)
    assert ("bank_overdue", "PB000001") not in rig.open()


# -- restart, the thread, latency ----------------------------------------------------------------


def test_a_restarted_engine_takes_the_open_alerts_back(rig: Rig) -> None:
    st = rig.station().online()
    st.water(0.1)
    st.event("tamper", door="locker_panel")
    rig.run()
    rig.engine.close()
    rig.engine = rig.new_engine().start()  # the hub restarted (same database)
    st.water(0.15)
    rig.engine.evaluate(SID, rig.clock.ms())
    assert set(rig.open()) == {("water_low", ""), ("tamper", "locker_panel")}
    assert len(rig.alerts.list()) == 2 and rig.kinds() == ["firing", "firing"]
    st.water(0.5)
    rig.engine.evaluate(SID, rig.clock.ms())
    assert set(rig.open()) == {("tamper", "locker_panel")}
    assert rig.kinds() == ["firing", "firing", "resolved"]


def test_the_engine_thread_tells_of_each_change_it_is_fed(rig: Rig) -> None:
    """The engine's own thread, fed by the fleet listener, reports every transition.

    How fast it does so is bench/alert_latency.py's business, not a test's."""
    kinds: list[str] = []
    told = threading.Event()

    def on_transition(kind: str, alert: dict, station: StationView) -> None:
        kinds.append(kind)
        told.set()

    rig.engine.add_listener(on_transition)
    st = rig.station().online()
    rig.engine.start()
    for _ in range(3):
        for level, state in [(0.0, "empty"), (0.9, "ok")]:
            told.clear()
            st.water(level, state)  # as the ingest applies it
            assert told.wait(5), "the engine did not tell"
        rig.clock.advance(3600)  # no flapping
    assert kinds == ["firing", "resolved"] * 3


# -- the engine under load: what it evaluates, and when ---------------------------------------


@SQLITE_ONLY
def test_events_no_rule_reads_cost_no_evaluation(rig: Rig) -> None:
    st = rig.station().online()
    rig.run()
    before = rig.engine.evaluations
    st.event("visit", count=2).event("bank_returned", slot=1, bank="PB0012A1", charge=40)
    st.event("refilled", what="water", staff="li")
    assert rig.engine.run_pending() == 0 and rig.engine.evaluations == before
    st.event("door_opened", door="entrance")  # the State's overlay: read by a rule
    assert rig.engine.run_pending() == 1


@SQLITE_ONLY
def test_tick_evaluates_what_time_can_change_and_sweeps_the_rest(rig: Rig) -> None:
    quiet = rig.station(OTHER).online()
    st = rig.station().online()
    rig.run()
    assert rig.open() == {}
    counted = rig.engine.evaluations
    rig.later(1)
    assert rig.engine.evaluations == counted  # nothing of either can change with time
    st.event("door_opened", door="entrance")
    rig.run()
    counted = rig.engine.evaluations
    for _ in range(3):
        rig.later(1)  # the door has ten minutes: nothing to look at before
    assert rig.engine.evaluations == counted
    rig.later(10 * 60 - 4)  # both swept meanwhile (a minute since their last look)
    assert rig.open() == {} and rig.engine.evaluations == counted + 2
    rig.later(1)  # ten minutes: due
    assert rig.open() == {("door_open_too_long", "entrance"): None}
    assert rig.engine.evaluations == counted + 3
    st.event("door_closed", door="entrance")
    rig.run()
    assert rig.open() == {}
    # Sixty seconds after its last evaluation, each station is swept (the quiet
    # one was last looked at a second before the other).
    counted = rig.engine.evaluations
    rig.later(58)
    assert rig.engine.evaluations == counted
    rig.later(2)
    assert rig.engine.evaluations == counted + 2
    assert quiet.sid in rig.engine._evaluated


@SQLITE_ONLY
def test_the_sweep_after_a_storm_is_spread_over_ticks(rig: Rig) -> None:
    """Stations all evaluated at once (a reconnect storm) are not all swept at
    the same tick a minute later: at most SWEEP_AT_LEAST (or a SWEEP_SHARE-th)."""
    from hub.alerting.engine import SWEEP_AT_LEAST

    for i in range(120):
        rig.station(f"yh-storm-{i:03d}").online()
    rig.run()
    counted = rig.engine.evaluations
    rig.later(60)
    swept = [rig.engine.evaluations - counted]
    while rig.engine.evaluations - counted < 120:
        before = rig.engine.evaluations
        rig.later(1)
        swept.append(rig.engine.evaluations - before)
    assert swept == [SWEEP_AT_LEAST, SWEEP_AT_LEAST, 120 - 2 * SWEEP_AT_LEAST]


def test_the_engine_thread_rests_after_a_pass_but_not_for_urgent_events(rig: Rig) -> None:
    """A long rest (the cap, 2 s): a State noted during it waits; a tamper does not.

    Bounded real waits: the engine's own thread is what is tested."""
    from hub.alerting import engine as engine_module

    told = threading.Event()
    rig.engine.add_listener(lambda kind, alert, station: told.set())
    st = rig.station().online()
    other = rig.station(OTHER).online()
    rig.engine.rest = 1e6  # every pass is followed by the longest rest
    rig.engine.start()
    assert wait_for(lambda: not rig.engine._dirty, 5)
    rig.engine._next_pass = engine_module.time.monotonic() + 30  # as after a long pass
    counted = rig.engine.evaluations
    other.water(0.1)
    assert not wait_for(lambda: rig.engine.evaluations > counted, 0.3)  # resting
    st.event("tamper", door="entrance")
    assert told.wait(5), "a tamper waited for the rest"
    assert ("tamper", "entrance") in rig.open()
    assert rig.open(OTHER) == {}  # still resting: evaluated after the rest
    assert OTHER in rig.engine._dirty


def wait_for(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@SQLITE_ONLY
def test_a_listener_that_fails_does_not_stop_the_ingest(rig: Rig) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    rig.fleet.add_listener(broken)
    st = rig.station().online()
    st.water(0.1)
    rig.run()
    assert ("water_low", "") in rig.open()
    assert dataclasses.asdict(rig.fleet.get(SID))["state"]["dispenser"]["level"] == 0.1


# -- the API: silences and maintenance windows ---------------------------------------------------


@pytest.fixture
def web(database_url: str, broker: Any) -> Iterator[tuple[Any, Any]]:
    """The hub's web app on real parts (tests/test_hub_api.py), every answer
    checked against the OpenAPI document."""
    from tests.test_hub_api import Api, hub_factory

    with hub_factory(database_url, broker) as make_hub:
        hub = make_hub()
        yield hub, Api(hub.app)


def test_silences_over_the_api(web: tuple[Any, Any]) -> None:
    from tests.test_hub_api import TOKEN_NAME, assert_error

    hub, api = web
    now = hub.clock.ms()
    resp = api.post("/api/v1/silences", json={"sid": SID, "rule": "water_low",
                                                "duration": "2h", "comment": "水泵维修中"})
    assert resp.status_code == 201, resp.get_json()
    silence = resp.get_json()
    assert silence == {"id": silence["id"], "sid": SID, "group": None, "rule": "water_low",
                       "starts_at": now, "ends_at": now + 7_200_000, "comment": "水泵维修中",
                       "created_by": TOKEN_NAME, "created_at": now}
    assert hub.alerts.mutes.silenced(SID, "chumen", "water_low", now)
    assert api.get("/api/v1/silences").get_json() == {"silences": [silence]}
    hub.clock.advance(60)
    ended = api.call("DELETE", f"/api/v1/silences/{silence['id']}").get_json()
    assert ended == {**silence, "ends_at": now + 60_000}
    assert not hub.alerts.mutes.silenced(SID, "chumen", "water_low", hub.clock.ms())
    assert api.call("DELETE", f"/api/v1/silences/{silence['id']}").get_json() == ended
    assert api.get("/api/v1/silences").get_json() == {"silences": []}
    assert api.get("/api/v1/silences?include=all").get_json() == {"silences": [ended]}

    assert_error(api.post("/api/v1/silences", json={"duration": "2h"}), 400, "bad_match")
    assert_error(api.post("/api/v1/silences", data="{nope"), 400, "bad_json")
    assert_error(api.post("/api/v1/silences", json={"sid": SID, "until": now}), 400,
                 "bad_body")
    assert_error(api.get("/api/v1/silences?include=some"), 400, "bad_include")
    assert_error(api.call("DELETE", "/api/v1/silences/s-missing"), 404, "not_found")
    for method, path in [("GET", "/api/v1/silences"), ("POST", "/api/v1/silences"),
                         ("DELETE", "/api/v1/silences/s-00"),
                         ("GET", "/api/v1/maintenance-windows"),
                         ("POST", "/api/v1/maintenance-windows"),
                         ("DELETE", "/api/v1/maintenance-windows/mw-00")]:
        assert_error(api.call(method, path, token=None), 401, "unauthorized")


@SQLITE_ONLY
def test_maintenance_windows_over_the_api(web: tuple[Any, Any]) -> None:
    from tests.test_hub_api import assert_error

    hub, api = web
    now = hub.clock.ms()
    planned = api.post("/api/v1/maintenance-windows",
                       json={"group": "chumen", "starts_at": now + 3_600_000,
                             "ends_at": now + 3 * 3_600_000, "comment": "季度检修"})
    assert planned.status_code == 201
    window = planned.get_json()
    assert (window["group"], window["sid"], window["starts_at"]) == \
        ("chumen", None, now + 3_600_000)
    assert "rule" not in window
    assert hub.alerts.mutes.window_for(SID, "chumen", now) is None
    assert hub.alerts.mutes.window_for(SID, "chumen", now + 3_600_000) is not None
    cancelled = api.call("DELETE", f"/api/v1/maintenance-windows/{window['id']}").get_json()
    assert cancelled["ends_at"] == cancelled["starts_at"]  # never starts
    assert hub.alerts.mutes.window_for(SID, "chumen", now + 3_600_000) is None
    assert api.get("/api/v1/maintenance-windows").get_json() == {"maintenance_windows": []}
    assert_error(api.post("/api/v1/maintenance-windows",
                          json={"sid": SID, "rule": "water_low", "duration": "1h"}),
                 400, "bad_body")
    assert_error(api.call("DELETE", "/api/v1/maintenance-windows/mw-missing"), 404,
                 "not_found")


# -- the writer behind (a reconnect storm) --------------------------------------------


def _fire_given_up(rig: Rig) -> Station:
    """Water low while the writer is busy with an op that holds it, as behind a
    storm's backlog: the alert store gives up waiting after 0.2 s, then the
    writer goes on and commits the alert's row after all."""
    st = rig.station().online()
    rig.run()
    rig.alerts.flush_timeout = 0.2
    gate = threading.Event()
    rig.writer.submit(lambda conn: gate.wait(10))
    st.water(0.2)
    with pytest.raises(StoreUnavailable):
        rig.run()
    gate.set()
    assert rig.writer.flush(10)
    return st


@SQLITE_ONLY
def test_an_alert_committed_after_its_wait_gave_up_is_still_told(rig: Rig) -> None:
    _fire_given_up(rig)
    assert len(rig.alerts_of("water_low")) == 1  # the insert went through after all
    assert rig.kinds() == []
    rig.later(5)  # evaluated again soon, not at the next minute's sweep
    assert rig.kinds("water_low") == ["firing"]  # its own alert, not "open before"
    assert [a["state"] for a in rig.alerts_of("water_low")] == ["firing"]


@SQLITE_ONLY
def test_a_late_alert_whose_condition_ended_meanwhile_is_resolved_untold(rig: Rig) -> None:
    st = _fire_given_up(rig)
    st.water(0.9)  # refilled before the engine tried again
    rig.run()
    assert [a["state"] for a in rig.alerts_of("water_low")] == ["resolved"]
    assert rig.kinds() == [] and rig.open() == {}
