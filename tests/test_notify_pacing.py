"""Pacing per robot (issue 19, docs/notifications.md "Pacing"): a storm of alerts
reaches every chat robot with no refusal, critical ones first, the rest folded
into digests, within three minutes.

The real Outbox on a real database, the real WeCom, DingTalk and Feishu
notifiers (signed where the platform signs), and fake robots that are real HTTP
servers enforcing each platform's documented limits and codes
(tests/harness/robots.py) on the ManualClock the outbox runs on; the senders
driven by ``send_due()`` as the clock moves. Production limits throughout.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.notify.base import DeliveryFailed
from hub.alerting.notify.pacing import RATES, Pacer, first_critical, foldable, robot_key
from hub.config import NotifierSpec
from hub.config.rules import NOTIFY_TEST
from tests.harness.robots import ROBOTS, DingTalkRobot, FakeRobot, WeComRobot
from tests.test_notify_outbox import PUBLIC, T0, Db
from yizhan.clock import ManualClock

SECRET = "SEC0123456789abcdef0123456789abcdef"
PLATFORMS = ("wecom", "dingtalk", "feishu")


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


def burst() -> list[tuple[dict[str, Any], dict[str, str]]]:
    """50 alerts across 20 stations, five of them critical (tamper, a heater
    lockout made critical, station offline, water empty), in the order a storm
    raises them: the critical ones spread through it."""
    def alert(n: int, rule: str, sid: int, severity: str) -> dict[str, Any]:
        return {"id": f"a-{n:016x}", "rule": rule, "sid": f"yh-storm-{sid:02d}",
                "severity": severity, "state": "firing", "summary": rule,
                "value": {"level": 0.0} if rule.startswith("water") else None,
                "started_at": int(T0 * 1000), "acked_at": None, "resolved_at": None}

    lesser = ([("water_low", s) for s in range(20)] + [("chargers_low", s) for s in range(15)]
              + [("door_open_too_long", s) for s in range(10, 20)])
    critical = [("tamper", 0), ("tamper", 1), ("heater_lockout", 2), ("station_offline", 3),
                ("water_empty", 4)]
    storm: list[dict[str, Any]] = [alert(i, r, s, "warning") for i, (r, s) in enumerate(lesser)]
    for k, (r, s) in enumerate(critical):
        storm.insert(4 + 10 * k, alert(100 + k, r, s, "critical"))
    return [(a, {"sid": a["sid"], "name": f"驿站 {a['sid']}"}) for a in storm]


def run_storm(outbox: Outbox, clock: ManualClock, names: list[str], *,
              per_second: int = 5, until: float = 180.0) -> dict[str, float]:
    """Raise the burst at ``per_second`` alerts a second, the senders looking after
    each second and then every second until ``until``; when each alert was raised."""
    raised: dict[str, float] = {}
    storm = burst()
    while clock.now() - T0 <= until:
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
    specs = [spec(r) for r in robots.values()]
    outbox = outbox_for(db, clock, specs)
    raised = run_storm(outbox, clock, [s.name for s in specs])
    critical_ids = {a["id"] for a, _ in burst() if a["severity"] == "critical"}
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
        assert max(h.at for h in heard) - T0 <= 180.0
        # Critical ones first: each went out the second it was raised, alone.
        for alert_id in critical_ids:
            d = states[alert_id]
            assert d["state"] == "delivered" and d["delivered"] == int(raised[alert_id] * 1000)
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
    assert pacer.free_at("ops-wecom", now + 41_000, critical=True) == now + 42_000
    # Not said: the platform's own pause (DingTalk would be ten minutes).
    assert pacer.take("ops-wecom", now + 42_000, critical=True) is None
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
        assert pacer.take("ops-wecom", now, critical=True) is None
    assert pacer.take("ops-wecom", now, critical=True) is not None
    pacer.release("ops-wecom")  # one of them found its row taken by another worker
    assert pacer.take("ops-wecom", now, critical=True) is None


def test_the_documented_rates() -> None:
    assert [(r.count, r.window) for r in RATES["wecom"]] == [(20, 60.0)]
    assert [(r.count, r.window) for r in RATES["dingtalk"]] == [(20, 60.0)]
    assert [(r.count, r.window) for r in RATES["feishu"]] == [(100, 60.0), (5, 1.0)]
    # A quarter kept for critical notifications.
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


def test_a_critical_notice_goes_first_but_never_before_an_older_notice_of_its_alert() -> None:
    from types import SimpleNamespace as Row

    def row(i: str, alert: str, severity: str, **more: Any) -> Row:
        return Row(id=i, alert_id=alert, severity=severity, kind=more.get("kind", "firing"),
                   attempts=more.get("attempts", 0), about=more.get("about", True))

    warning = row("d1", "a-water", "warning")
    escalated_firing = row("d2", "a-door", "warning")
    escalated = row("d3", "a-door", "critical", kind="escalated")
    tamper = row("d4", "a-tamper", "critical")
    assert first_critical([warning, escalated_firing, escalated, tamper]) is tamper
    assert first_critical([warning, escalated]) is escalated
    assert first_critical([warning, escalated_firing]) is None
    # Folded: a lesser notice never tried, that a digest can sum up; nothing else.
    assert foldable(warning) and not foldable(tamper)
    assert not foldable(row("d5", "a-x", "warning", attempts=1))
    assert not foldable(row("d6", None, "info"))  # a digest or a route test
    assert not foldable(row("d7", "a-y", "warning", about=False))  # stored before issue 19
