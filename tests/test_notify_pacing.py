"""Pacing per robot (issue 19, docs/notifications.md "Pacing"): a storm of alerts
reaches every chat robot with no refusal, the ones that go first (a tamper, a
heater lockout, the station offline that was its group's last one online) at
once, the rest folded into digests, within three minutes.

The real Outbox on a real database, the real Fleet (stations born and lost by
their Status messages) whose live view decides which station_offline goes
first, the real WeCom, DingTalk and Feishu notifiers (signed where the platform
signs), and fake robots that are real HTTP servers enforcing each platform's
documented limits and codes (tests/harness/robots.py) on the ManualClock the
outbox runs on; the senders driven by ``send_due()`` as the clock moves.
Production limits throughout.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from prometheus_client import CollectorRegistry

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.notify.base import DeliveryFailed
from hub.alerting.notify.first import goes_first
from hub.alerting.notify.pacing import RATES, Pacer, first_up, foldable, robot_key
from hub.config import NotifierSpec, parse_hub_config
from hub.config.rules import NOTIFY_TEST
from hub.fleet.ledger import Ledger
from hub.fleet.view import Fleet
from hub.storage.schema import notifications
from hub.storage.store import Store, alembic_config
from protocol import messages as m
from tests.harness.robots import ROBOTS, DingTalkRobot, FakeRobot, WeComRobot
from tests.test_notify_outbox import PUBLIC, T0, Db
from yizhan.clock import ManualClock

SECRET = "SEC0123456789abcdef0123456789abcdef"
PLATFORMS = ("wecom", "dingtalk", "feishu")
EPOCH = "9f2c01ab"
#: The storm's stations: 00–14 in town "city", 15–19 in "town", whose power is cut.
TOWN = tuple(f"yh-storm-{s:02d}" for s in range(15, 20))
#: The order the town's stations went dark in: 17 was the last one online.
CUT = ("yh-storm-19", "yh-storm-15", "yh-storm-18", "yh-storm-16", "yh-storm-17")


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    d = Db(database_url)
    yield d
    d.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def robots(clock: ManualClock) -> Iterator[dict[str, FakeRobot]]:
    made = {p: ROBOTS[p](clock, token=f"{p}-token-0123", secret=SECRET if p != "wecom" else None)
            for p in PLATFORMS}
    yield made
    for r in made.values():
        r.close()


def spec(robot: FakeRobot, name: str | None = None, **changes: Any) -> NotifierSpec:
    return NotifierSpec(name=name or f"ops-{robot.PLATFORM}", type=robot.PLATFORM,
                        url=robot.url, secret=robot.secret, timeout=2.0, **changes)


def outbox_for(db: Db, clock: ManualClock, specs: list[NotifierSpec], **options: Any) -> Outbox:
    return Outbox(db.store, db.writer, clock, build_notifiers(specs),
                  acklinks=AckLinks(b"k" * 32, PUBLIC, clock=clock), rng=random.Random(7),
                  registry=CollectorRegistry(), **options)


def alert(n: int, rule: str, sid: str, severity: str) -> dict[str, Any]:
    return {"id": f"a-{n:016x}", "rule": rule, "sid": sid, "severity": severity,
            "state": "firing", "summary": rule,
            "value": {"level": 0.0} if rule.startswith("water") else None,
            "started_at": int(T0 * 1000), "acked_at": None, "resolved_at": None}


def burst() -> list[tuple[dict[str, Any], dict[str, str]]]:
    """50 alerts across 20 stations, in the order a storm raises them: 42
    warnings, a tamper, a heater lockout (a warning, as configured), a critical
    water empty, and the town's power cut — five critical station_offline, raised
    in the order the stations went dark (CUT; two minutes after each was last
    heard), the last of them its group's last one online."""
    def station(s: int) -> str:
        return f"yh-storm-{s:02d}"

    lesser = ([("water_low", s) for s in range(15)] + [("chargers_low", s) for s in range(15)]
              + [("door_open_too_long", s) for s in range(3, 15)])
    storm = [alert(i, r, station(s), "warning") for i, (r, s) in enumerate(lesser)]
    storm.insert(4, alert(100, "tamper", station(0), "critical"))
    storm.insert(14, alert(101, "heater_lockout", station(2), "warning"))
    for k, sid in enumerate(CUT):
        storm.insert(24 + k, alert(102 + k, "station_offline", sid, "critical"))
    storm.insert(33, alert(107, "water_empty", station(4), "critical"))
    return [(a, {"sid": a["sid"], "name": f"驿站 {a['sid']}"}) for a in storm]


def first_ids() -> set[str]:
    """What goes first in the burst: the tamper, the heater lockout, and the town's
    last station offline — nothing else, whatever its severity."""
    return {a["id"] for a, _ in burst()
            if a["rule"] in ("tamper", "heater_lockout")
            or (a["rule"] == "station_offline" and a["sid"] == CUT[-1])}


class Stations:
    """The real Fleet on the test's database, its stations configured in groups."""

    def __init__(self, db: Db, clock: ManualClock, groups: dict[str, str | None]) -> None:
        config = parse_hub_config({
            "mqtt": {"host": "127.0.0.1", "port": 1883}, "database": db.url,
            "stations": [{"sid": sid, "name": sid, **({"group": g} if g else {})}
                         for sid, g in groups.items()]})
        self.clock, self.groups = clock, groups
        self.ledger = Ledger(db.store, db.writer, clock)
        self.ledger.hub_started(clock.ms())
        self.fleet = Fleet(config, db.store, db.writer, self.ledger, clock)
        self.fleet.broker_up(clock.ms())

    def born(self, *sids: str) -> None:
        for sid in sids:
            self.fleet.apply_status(
                m.Status.online(sid, EPOCH, self.clock.ms(), True, int(self.clock.now()), 0,
                                "1.0.0", {}), self.clock.ms())

    def lost(self, *sids: str) -> None:
        for sid in sids:
            view = self.fleet.get(sid)
            assert view is not None and view.birth is not None
            self.fleet.apply_status(m.Status.will(sid, EPOCH, view.birth), self.clock.ms())


def power_cut(db: Db, clock: ManualClock) -> Stations:
    """The storm's 20 stations heard from, then the town's five lost, each last
    heard (born) a few seconds after the one before; the clock moved on two
    minutes, when their station_offline alerts fire."""
    groups = {f"yh-storm-{s:02d}": "town" if s >= 15 else "city" for s in range(20)}
    stations = Stations(db, clock, groups)
    stations.born(*(sid for sid in groups if sid not in TOWN))
    for sid in CUT:
        clock.advance(3.0)
        stations.born(sid)
    clock.advance(10.0)
    stations.lost(*TOWN)  # the power goes: the broker hands out their last wills
    clock.advance(120.0)
    return stations


def run_storm(outbox: Outbox, clock: ManualClock, names: list[str], *,
              per_second: int = 5, until: float = 180.0) -> dict[str, float]:
    """Raise the burst at ``per_second`` alerts a second from now, the senders
    looking after each second and then every second until ``until``; when each
    alert was raised."""
    raised: dict[str, float] = {}
    storm = burst()
    start = clock.now()
    while clock.now() - start <= until:
        for a, station in storm[:per_second]:
            raised[a["id"]] = clock.now()
            for name in names:
                outbox.enqueue(name, "firing", a, station)
        storm = storm[per_second:]
        outbox.send_due()
        clock.advance(1.0)
    return raised


def test_a_storm_of_50_alerts_reaches_every_robot_in_time_without_a_refusal(
        db: Db, clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    stations = power_cut(db, clock)
    specs = [spec(r) for r in robots.values()]
    outbox = outbox_for(db, clock, specs, last_of_group_down=stations.fleet.last_of_group_down)
    start = clock.now()
    raised = run_storm(outbox, clock, [s.name for s in specs])
    first = first_ids()
    assert len(first) == 3
    # Decided as each was stored, and kept on the row: those three, on every notifier.
    stored = {(r.alert_id, r.notifier) for r in db.rows() if r.goes_first}
    assert stored == {(a, s.name) for a in first for s in specs}
    folds = {a["id"] for a, _ in burst()
             if a["rule"] in ("station_offline", "water_empty") and a["id"] not in first}
    assert len(folds) == 5  # four critical station_offline of the town, a water empty
    for platform, robot in robots.items():
        name = f"ops-{platform}"
        assert robot.refused == [], f"{platform} refused {len(robot.refused)}"
        heard = robot.accepted
        # Every alert reached the robot: alone, or in a digest it took.
        states = {}
        for alert_id in raised:
            (d,) = [d for d in outbox.deliveries(alert_id) if d["notifier"] == name]
            states[alert_id] = d
            assert d["state"] in ("delivered", "digested"), (platform, d)
        digest_ids = {d["digest"] for d in states.values() if d["state"] == "digested"}
        assert digest_ids, f"{platform}: nothing was folded"
        assert outbox.pending(name) == [] and outbox.held(name) == []
        # ... each digest taken by the robot, and within three minutes.
        texts = [h.text for h in heard]
        assert sum("汇总" in t for t in texts) == len(digest_ids)
        assert max(h.at for h in heard) - start <= 180.0
        # Those that go first: each went out the second it was raised, alone.
        for alert_id in first:
            d = states[alert_id]
            assert d["state"] == "delivered" and d["delivered"] == int(raised[alert_id] * 1000)
        # The rest fold, critical or not — the town's other station_offline, the water
        # empty — on the robots the storm swamps (20 a minute). Feishu takes 100 a
        # minute: no backlog there, and they go alone, as their severity lets them
        # past the rate limits' 20 a minute (alerts.md, "Rate limits").
        for alert_id in folds:
            assert states[alert_id]["state"] == ("delivered" if platform == "feishu"
                                                 else "digested"), (platform, states[alert_id])
    assert outbox.failing() == []


def test_without_pacing_the_same_storm_is_refused(db: Db, clock: ManualClock,
                                                  robots: dict[str, FakeRobot]) -> None:
    """What issue 19 measured before pacing (``pace=False``): refusals, DingTalk blocked."""
    specs = [spec(robots["wecom"]), spec(robots["dingtalk"])]
    outbox = outbox_for(db, clock, specs, pace=False)
    run_storm(outbox, clock, [s.name for s in specs], until=60.0)
    assert robots["wecom"].refused and robots["dingtalk"].refused
    assert all(h.code == 130101 for h in robots["dingtalk"].refused)


def test_notifiers_on_one_robot_share_its_pace(db: Db, clock: ManualClock,
                                               robots: dict[str, FakeRobot]) -> None:
    robot = robots["wecom"]
    zh, en = spec(robot, "ops-zh"), spec(robot, "ops-en", language="en")
    outbox = outbox_for(db, clock, [zh, en])
    assert outbox.pacer.sharing("ops-zh") == ["ops-en", "ops-zh"]
    for n in range(12):  # 24 messages for one robot that takes 20 a minute
        a = {"id": f"a-{n:016x}", "rule": "water_low", "sid": f"yh-s-{n:02d}",
             "severity": "warning", "state": "firing", "summary": "low", "value": None,
             "started_at": int(T0 * 1000)}
        for name in ("ops-zh", "ops-en"):
            outbox.enqueue(name, "firing", a, {"sid": a["sid"], "name": a["sid"]})
        outbox.send_due()
        clock.advance(1.0)
    for _ in range(120):
        outbox.send_due()
        clock.advance(1.0)
    assert robot.refused == [] and outbox.pending() == []
    # In any 60 s the robot heard at most its limit, from both notifiers together.
    times = sorted(h.at for h in robot.accepted)
    assert all(sum(1 for u in times if t <= u < t + 60) <= 20 for t in times)


def test_a_restarted_hub_does_not_burst_a_robot_it_just_filled(
        db: Db, clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    robot = robots["dingtalk"]
    outbox = outbox_for(db, clock, [spec(robot)])
    for n in range(20):
        a = {"id": f"a-{n:016x}", "rule": "tamper", "sid": f"yh-s-{n:02d}",
             "severity": "critical", "state": "firing", "summary": "tamper", "value": None,
             "started_at": int(T0 * 1000)}
        outbox.enqueue("ops-dingtalk", "firing", a, {"sid": a["sid"]})
    outbox.send_due()
    assert len(robot.accepted) == 20
    outbox.close()
    db.reopen()
    clock.advance(10)
    # A route test is never held by the limits at enqueue: only the pace stops it.
    outbox = outbox_for(db, clock, [spec(robot)])
    test = {"id": "a-route-test-0001", "rule": NOTIFY_TEST, "sid": None, "severity": "info",
            "state": "firing", "summary": "test", "value": None, "started_at": clock.ms()}
    outbox.enqueue("ops-dingtalk", "firing", test, {})
    assert outbox.send_due() == 0  # the new process remembers the robot's minute
    assert len(robot.heard) == 20
    clock.advance(51)
    assert outbox.send_due() == 1
    assert len(robot.accepted) == 21 and robot.refused == []
    outbox.close()


def test_a_refusal_for_speed_pauses_the_robot_for_what_it_asked() -> None:
    robot = WeComRobot(ManualClock(T0))
    try:
        notifier = build_notifiers([spec(robot)])["ops-wecom"]
    finally:
        robot.close()
    pacer = Pacer()
    pacer.add(notifier)
    now = int(T0 * 1000)
    assert pacer.take("ops-wecom", now) is None
    asked = DeliveryFailed("45009", rate_limited=True, retry_after=42.0)
    assert pacer.answered("ops-wecom", now, asked) == now + 42_000
    assert pacer.free_at("ops-wecom", now + 41_000, first=True) == now + 42_000
    # Not said: the platform's own pause (DingTalk would be ten minutes).
    assert pacer.take("ops-wecom", now + 42_000, first=True) is None
    pacer.answered("ops-wecom", now + 42_000, DeliveryFailed("x", rate_limited=True))
    assert pacer.free_at("ops-wecom", now + 42_000) == now + 102_000
    assert pacer.refusals("ops-wecom") == 2


def test_robot_keys_ignore_signatures_and_hide_the_token() -> None:
    a = "https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1&sign=x"
    b = "https://OAPI.dingtalk.com:443/robot/send?sign=y&access_token=abc"
    assert robot_key(a) == robot_key(b) != robot_key(a.replace("abc", "abd"))
    assert "abc" not in robot_key(a) and robot_key(a).startswith("robot-")
    hostile = "https://x.example:99999999999999999999999999999999/" + "k" * 10_000
    assert robot_key(hostile) != robot_key(hostile.replace("9", "8"))


def test_an_attempt_that_never_went_out_gives_its_place_back() -> None:
    robot = WeComRobot(ManualClock(T0))
    try:
        notifier = build_notifiers([spec(robot)])["ops-wecom"]
    finally:
        robot.close()
    pacer = Pacer()
    pacer.add(notifier)
    now = int(T0 * 1000)
    for _ in range(20):  # all twenty taken, none answered yet
        assert pacer.take("ops-wecom", now, first=True) is None
    assert pacer.take("ops-wecom", now, first=True) is not None
    pacer.release("ops-wecom")  # one of them found its row taken by another worker
    assert pacer.take("ops-wecom", now, first=True) is None


def test_the_documented_rates() -> None:
    assert [(r.count, r.window) for r in RATES["wecom"]] == [(20, 60.0)]
    assert [(r.count, r.window) for r in RATES["dingtalk"]] == [(20, 60.0)]
    assert [(r.count, r.window) for r in RATES["feishu"]] == [(100, 60.0), (5, 1.0)]
    # A quarter kept for the notifications that go first.
    assert [r.limit(False) for r in RATES["feishu"]] == [75, 4]


def test_the_fake_dingtalk_robot_blocks_for_ten_minutes_after_21_a_minute() -> None:
    clock = ManualClock(T0)
    robot = DingTalkRobot(clock, secret=SECRET)
    try:
        notifier = build_notifiers([spec(robot)])["ops-dingtalk"]
        body = notifier.shape(_message(), delivery_id="d-1", now_ms=clock.ms())
        for _ in range(20):
            notifier.send(body, "d-1", clock.now())
        with pytest.raises(DeliveryFailed) as err:
            notifier.send(body, "d-1", clock.now())
        assert "130101" in err.value.reason
        clock.advance(599)
        with pytest.raises(DeliveryFailed):
            notifier.send(body, "d-1", clock.now())
        clock.advance(2)
        notifier.send(body, "d-1", clock.now())
        assert [h.code for h in robot.heard][-3:] == [130101, 130101, 0]
    finally:
        robot.close()


def _message() -> Any:
    from hub.alerting.notify.text import Message
    return Message(kind="firing", severity="critical", language="zh", title="测试 驿站",
                   fields=(("站点", "驿站"),), ack_url=None, alert_id="a-1")


def test_a_notice_goes_first_but_never_before_an_older_notice_of_its_alert() -> None:
    from types import SimpleNamespace as Row

    def row(i: str, alert: str | None, first: bool, **more: Any) -> Row:
        return Row(id=i, alert_id=alert, goes_first=first, kind=more.get("kind", "firing"),
                   attempts=more.get("attempts", 0), about=more.get("about", True))

    warning = row("d1", "a-water", False)
    offline_firing = row("d2", "a-offline", False)  # its group still had a station up
    offline_escalated = row("d3", "a-offline", True, kind="escalated")  # now it had none
    tamper = row("d4", "a-tamper", True)
    assert first_up([warning, offline_firing, offline_escalated, tamper]) is tamper
    assert first_up([warning, offline_escalated]) is offline_escalated
    assert first_up([warning, offline_firing]) is None
    # Folded: a notice that does not go first, never tried, that a digest can sum
    # up (a critical water empty or station offline included); nothing else.
    assert foldable(warning) and foldable(offline_firing) and not foldable(tamper)
    assert not foldable(row("d5", "a-x", False, attempts=1))
    assert not foldable(row("d6", None, False))  # a digest or a route test
    assert not foldable(row("d7", "a-y", False, about=False))  # stored before issue 19


def test_the_last_station_of_a_group_online_is_the_one_whose_offline_goes_first(
        db: Db, clock: ManualClock) -> None:
    stations = Stations(db, clock, {"yh-a-1": "a", "yh-a-2": "a", "yh-a-3": "a",
                                    "yh-b-1": "b", "yh-x-1": None, "yh-x-2": None})
    last = stations.fleet.last_of_group_down
    stations.born("yh-a-1", "yh-a-2", "yh-a-3", "yh-b-1", "yh-x-1", "yh-x-2")
    assert not any(last(s) for s in ("yh-a-1", "yh-b-1", "yh-x-1"))  # all online
    clock.advance(5)
    stations.born("yh-a-2")  # heard again: its outage will start later than a-1's
    stations.lost("yh-a-1")
    assert not last("yh-a-1")  # a-2 and a-3 still up
    clock.advance(5)
    stations.born("yh-a-3")
    stations.lost("yh-a-3", "yh-a-2")
    # All three down: a-3 was heard last, so it was the last one online.
    assert [s for s in ("yh-a-1", "yh-a-2", "yh-a-3") if last(s)] == ["yh-a-3"]
    stations.lost("yh-b-1")
    assert last("yh-b-1")  # alone in its group
    # The stations without a group are one group; down at the same moment, the
    # greatest sid is the last, so never two of one dark group.
    stations.lost("yh-x-1", "yh-x-2")
    assert [s for s in ("yh-x-1", "yh-x-2") if last(s)] == ["yh-x-2"]
    clock.advance(5)
    stations.born("yh-a-1")  # the area has a station again
    assert not any(last(s) for s in ("yh-a-1", "yh-a-2", "yh-a-3"))
    assert not last("yh-nobody") and not last("")
    # What the outbox asks: by rule, then the fleet; hostile alerts are simply not first.
    assert goes_first({"rule": "tamper", "sid": "yh-a-1"}, None)
    assert goes_first({"rule": "heater_lockout"}, last)
    assert goes_first({"rule": "station_offline", "sid": "yh-b-1"}, last)
    assert not goes_first({"rule": "station_offline", "sid": "yh-b-1"}, None)
    assert not goes_first({"rule": "water_empty", "sid": "yh-b-1", "severity": "critical"}, last)
    for hostile in ({"rule": {"x": 1}}, {"rule": 10**30}, {"rule": "station_offline"},
                    {"rule": "station_offline", "sid": 10**30},
                    {"rule": "station_offline", "sid": "y" * 10_000}):
        assert not goes_first(hostile, last)


def test_what_goes_first_is_kept_on_the_row_across_a_restart(
        db: Db, clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    """Decided from the fleet as stored: the hub restarted without a fleet view
    (or the town back online) still sends it first and never folds it."""
    stations = power_cut(db, clock)
    robot = robots["wecom"]
    outbox = outbox_for(db, clock, [spec(robot)],
                        last_of_group_down=stations.fleet.last_of_group_down)
    offline = {sid: alert(200 + k, "station_offline", sid, "critical")
               for k, sid in enumerate(CUT)}
    water = [alert(300 + n, "water_low", f"yh-storm-{n:02d}", "warning") for n in range(15)]
    for a in [*water, *offline.values()]:
        outbox.enqueue("ops-wecom", "firing", a, {"sid": a["sid"], "name": a["sid"]})
    outbox.close()
    db.reopen()
    # The power is back: the restarted hub's fleet would judge otherwise now.
    Stations(db, clock, stations.groups).born(*TOWN)
    outbox = outbox_for(db, clock, [spec(robot)])  # and this one asks no fleet at all
    outbox.send_due()
    last = offline[CUT[-1]]["id"]
    (d,) = outbox.deliveries(last)
    assert d["state"] == "delivered" and d["delivered"] == clock.ms()
    # Nineteen others wait, more than the robot takes in half a minute: they are
    # folded, the town's other four station_offline with the warnings, and the
    # one that goes first went out before the digest.
    assert CUT[-1] in robot.accepted[0].text and "汇总" in robot.accepted[1].text
    for sid in CUT[:-1]:
        (d,) = outbox.deliveries(offline[sid]["id"])
        assert d["state"] == "digested", d
    outbox.close()


def test_critical_ones_that_do_not_go_first_never_hold_back_one_that_does(
        db: Db, clock: ManualClock) -> None:
    """The rate limits' 20 critical a minute (alerts.md) count the ones that go
    first apart: a town's power cut does not hold back its tamper."""
    hook = NotifierSpec(name="ops-hook", type="webhook", url="http://127.0.0.1:9/hook",
                        timeout=2.0)
    outbox = outbox_for(db, clock, [hook])
    for n in range(20):  # no fleet view: none of these is the group's last
        a = alert(400 + n, "station_offline", f"yh-dark-{n:02d}", "critical")
        outbox.enqueue("ops-hook", "firing", a, {"sid": a["sid"]})
    water = alert(500, "water_empty", "yh-dry-01", "critical")
    tamper = alert(501, "tamper", "yh-safe-01", "critical")
    lockout = alert(502, "heater_lockout", "yh-warm-01", "warning")
    for a in (water, tamper, lockout):
        outbox.enqueue("ops-hook", "firing", a, {"sid": a["sid"]})
    assert [d["alert_id"] for d in outbox.held("ops-hook")] == [water["id"]]
    assert {d["alert_id"] for d in outbox.pending("ops-hook")} >= {tamper["id"], lockout["id"]}
    outbox.close()


def test_the_migration_keeps_a_waiting_tamper_first(database_url: str) -> None:
    """Revision 0015 on a database with deliveries waiting: a tamper or a heater
    lockout still waiting goes first after the upgrade; the rest, and what was
    already sent, do not."""
    engine = sa.create_engine(database_url)
    old = sa.table("notifications", *(sa.column(c) for c in (
        "id", "alert_id", "notifier", "kind", "body", "created_ms", "attempts",
        "next_attempt_ms", "delivered_ms", "about")))

    def row(i: str, rule: str, delivered: int | None = None, about: str | None = "") -> dict:
        return {"id": i, "alert_id": f"a-{i}", "notifier": "ops", "kind": "firing",
                "body": "{}", "created_ms": 1, "attempts": 0, "next_attempt_ms": 1,
                "delivered_ms": delivered,
                "about": json.dumps({"rule": rule}) if about == "" else about}

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0014")
            conn.execute(old.insert(), [
                row("d1", "tamper"), row("d2", "heater_lockout"), row("d3", "water_empty"),
                row("d4", "tamper", delivered=5), row("d5", "tamper", about="not json"),
                row("d6", "station_offline")])
    finally:
        engine.dispose()
    store = Store(database_url)  # to head
    try:
        with store.engine.connect() as conn:
            first = dict(conn.execute(sa.select(notifications.c.id,
                                                notifications.c.goes_first)).all())
    finally:
        store.close()
    assert first == {"d1": True, "d2": True, "d3": False, "d4": False, "d5": False,
                     "d6": False}
