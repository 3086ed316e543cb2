"""Three hub workers draining one notification outbox on a real PostgreSQL
(docs/alerting-internals.md, "Several workers").

Each worker is what a ``yizhan hub`` process has: its own Store (connection
pool), its own Writer thread, its own Outbox with a :class:`SharedPacer`; the
three send at the same time from three threads, to fake chat robots that are
real HTTP servers enforcing the platforms' documented limits
(tests/harness/robots.py), on one ManualClock. Production limits and timeouts.

What it proves: every notification reaches its robot exactly once (no row sent
twice, none lost), the robots' limits hold across the three workers (no
refusal; at most 20 in any minute), and — the control — three workers each
pacing on its own would have been refused. A worker that dies after claiming a
row, mid-request, leaves it to another worker after the lease, and its attempt
still counts against the robot's minute.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.notify.base import DeliveryFailed
from hub.alerting.notify.pacing import Pacer
from hub.alerting.notify.shared_pace import SharedPacer
from hub.config import NotifierSpec
from hub.storage.schema import notifications, robot_pace
from tests.harness.robots import ROBOTS, FakeRobot
from tests.test_notify_outbox import PUBLIC, T0, Db
from yizhan.clock import ManualClock

pytestmark = pytest.mark.postgres

WORKERS = 3
SECRET = "SEC0123456789abcdef0123456789abcdef"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def dbs(pg_url: str) -> Iterator[list[Db]]:
    made = [Db(pg_url) for _ in range(WORKERS)]
    yield made
    for d in made:
        d.close()


@pytest.fixture
def robots(clock: ManualClock) -> Iterator[dict[str, FakeRobot]]:
    made = {p: ROBOTS[p](clock, token=f"{p}-token-0123",
                         secret=SECRET if p != "wecom" else None)
            for p in ("wecom", "dingtalk")}
    yield made
    for r in made.values():
        r.close()


def specs(robots: dict[str, FakeRobot]) -> list[NotifierSpec]:
    return [NotifierSpec(name=f"ops-{p}", type=p, url=r.url, secret=r.secret, timeout=2.0)
            for p, r in robots.items()]


def worker(db: Db, clock: ManualClock, robots: dict[str, FakeRobot], *,
           shared: bool = True, seed: int = 0) -> Outbox:
    pacer = SharedPacer(db.store, clock) if shared else Pacer()
    return Outbox(db.store, db.writer, clock, build_notifiers(specs(robots)),
                  acklinks=AckLinks(b"k" * 32, PUBLIC, clock=clock),
                  rng=random.Random(seed), registry=CollectorRegistry(), pacer=pacer)


def alert(n: int) -> dict[str, Any]:
    sid = f"yh-w-{n % 12:02d}"
    return {"id": f"a-{n:016x}", "rule": "water_low", "sid": sid, "severity": "warning",
            "state": "firing", "summary": "water low", "value": {"level": 0.1},
            "started_at": int(T0 * 1000), "acked_at": None, "resolved_at": None}


def all_at_once(outboxes: list[Outbox]) -> None:
    """Each worker sends what is due, the three at the same moment."""
    errors: list[BaseException] = []
    go = threading.Barrier(len(outboxes))

    def send(o: Outbox) -> None:
        try:
            go.wait(5)
            o.send_due()
        except BaseException as err:  # reported below, with the others joined
            errors.append(err)

    threads = [threading.Thread(target=send, args=(o,)) for o in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a worker's send_due hung"


def run(outboxes: list[Outbox], clock: ManualClock, alerts: int, seconds: int) -> None:
    """``alerts`` alerts raised by the leader's router (the first worker), two a
    second, each to both robots; the three workers sending every second."""
    n = 0
    for _ in range(seconds):
        for _ in range(2):
            if n < alerts:
                a = alert(n)
                for name in outboxes[0].notifiers:
                    outboxes[0].enqueue(name, "firing", a, {"sid": a["sid"], "name": a["sid"]})
                n += 1
        all_at_once(outboxes)
        clock.advance(1.0)


def rows(db: Db) -> list[Any]:
    with db.store.engine.connect() as conn:
        return list(conn.execute(sa.select(notifications)))


def most_in_a_minute(robot: FakeRobot) -> int:
    times = sorted(h.at for h in robot.accepted)
    return max((sum(1 for u in times if t <= u < t + 60) for t in times), default=0)


def test_three_workers_deliver_each_notification_once_within_each_robots_pace(
        dbs: list[Db], clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    outboxes = [worker(db, clock, robots, seed=i) for i, db in enumerate(dbs)]
    try:
        run(outboxes, clock, alerts=40, seconds=200)
        stored = rows(dbs[0])
        for platform, robot in robots.items():
            name = f"ops-{platform}"
            mine = [r for r in stored if r.notifier == name]
            assert robot.refused == [], f"{platform} refused {len(robot.refused)}"
            assert most_in_a_minute(robot) <= 20
            # Nothing waits; each alert went alone or in a digest that went.
            assert all(r.delivered_ms is not None or r.digest_id is not None for r in mine)
            alone = [r for r in mine if r.kind == "firing" and r.digest_id is None]
            digests = [r for r in mine if r.kind == "digest"]
            assert len(alone) + sum(1 for r in mine if r.digest_id) == 40
            # Once each: the robot took exactly as many messages as rows delivered
            # (a row sent twice would be heard twice), each delivery id once.
            assert len(robot.accepted) == len(alone) + len(digests)
            assert all(r.attempts == 1 for r in alone + digests)
        # The three workers did send: the work was shared, not one worker's.
        with dbs[0].store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(robot_pace)).scalar() == 2
    finally:
        for o in outboxes:
            o.close()


def test_three_workers_each_pacing_alone_would_be_refused(
        dbs: list[Db], clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    """The control: the same storm with a pacer per process, as before issue 21."""
    outboxes = [worker(db, clock, robots, shared=False, seed=i) for i, db in enumerate(dbs)]
    try:
        run(outboxes, clock, alerts=40, seconds=60)
        assert robots["wecom"].refused or robots["dingtalk"].refused
    finally:
        for o in outboxes:
            o.close()


def test_a_worker_killed_mid_send_leaves_the_row_to_another_after_its_lease(
        dbs: list[Db], clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    a, b = worker(dbs[0], clock, robots), worker(dbs[1], clock, robots, seed=1)
    try:
        a.enqueue("ops-wecom", "firing", alert(0), {"sid": "yh-w-00"})
        (row,) = a._waiting("ops-wecom")
        # What a dies after, and before the robot answers: the robot taken (a
        # flight in the shared row) and the row claimed for one attempt.
        assert a.pacer.take("ops-wecom", clock.ms()) is None
        assert a._claim(row, clock.ms() + 9_000)
        b.send_due()
        assert robots["wecom"].heard == []  # claimed: not b's to send
        # The flight counts against the robot: 14 lesser ones take the minute
        # (20 less the 5 kept for what goes first, less a's flight).
        assert b.pacer.capacity("ops-wecom", clock.ms(), horizon=1.0) == 14
        clock.advance(9.0)
        b.send_due()
        assert len(robots["wecom"].accepted) == 1
        (done,) = rows(dbs[0])
        assert done.delivered_ms is not None and done.attempts == 2
        clock.advance(60.0)
        b.send_due()
        assert len(robots["wecom"].heard) == 1  # once, not again
    finally:
        a.close()
        b.close()


def test_a_notifier_given_up_by_one_worker_is_failing_for_every_worker(
        dbs: list[Db], clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    """The leader raises notify_failing from its outbox's ``failing()``: with
    several workers it must know what another worker's sender met."""
    wrong = [NotifierSpec(name="ops-wecom", type="wecom",
                          url=robots["wecom"].url.replace("wecom-token-0123", "not-a-key"),
                          timeout=2.0)]

    def shared_worker(db: Db) -> Outbox:
        return Outbox(db.store, db.writer, clock, build_notifiers(wrong),
                      acklinks=AckLinks(b"k" * 32, PUBLIC, clock=clock),
                      registry=CollectorRegistry(), pacer=SharedPacer(db.store, clock),
                      shared=True)

    sender, leader = shared_worker(dbs[0]), shared_worker(dbs[1])
    try:
        sender.enqueue("ops-wecom", "firing", alert(0), {"sid": "yh-w-00"})
        assert sender.send_due() == 1  # the robot does not know the key: given up
        assert sender.failing() == ["ops-wecom"]
        assert leader.failing() == ["ops-wecom"]
        assert leader.status()["ops-wecom"]["gave_up"] is True
    finally:
        sender.close()
        leader.close()


def test_a_refusal_for_speed_seen_by_one_worker_pauses_the_robot_for_all(
        dbs: list[Db], clock: ManualClock, robots: dict[str, FakeRobot]) -> None:
    a, b = worker(dbs[0], clock, robots), worker(dbs[1], clock, robots, seed=1)
    try:
        now = clock.ms()
        assert a.pacer.take("ops-dingtalk", now) is None
        refused = DeliveryFailed("130101 send too fast", rate_limited=True)
        until = a.pacer.answered("ops-dingtalk", now, refused)
        assert until == now + 600_000  # DingTalk's documented ten minutes
        assert b.pacer.free_at("ops-dingtalk", now) == until
        assert b.pacer.take("ops-dingtalk", now + 599_000, first=True) == until
        assert b.pacer.refusals("ops-dingtalk") == 1
        assert b.pacer.take("ops-wecom", now) is None  # another robot: not paused
        b.pacer.release("ops-wecom")
    finally:
        a.close()
        b.close()
