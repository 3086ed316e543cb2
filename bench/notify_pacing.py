"""Notification pacing (issue 19): a storm of 50 alerts, how long until each chat
robot has acknowledged the last notification.

The real Outbox (SQLite in a temp dir) and the real WeCom, DingTalk and Feishu
notifiers (signed where the platform signs) against fake robots that are real
HTTP servers enforcing each platform's documented limit and codes
(tests/harness/robots.py: WeCom 20/min → 45009; DingTalk 20/min, then blocked
10 minutes → 130101; Feishu 100/min and 5/s → 11232), all on one ManualClock
moved from one event to the next (``Outbox.send_due_next``): simulated time, so
the figures do not depend on this machine.

The storm: 50 alerts across 20 stations, raised 5 a second, each notified to
the three robots; production limits. The last five stations are a town whose
power is cut: the real Fleet saw them lost one after another, and their five
station_offline alerts (critical) come in the storm, of which only the last
station's goes first (hub/alerting/notify/first.py). Besides: a tamper, a
heater lockout (a warning) — both go first — a water empty (critical, folds),
and warnings.

Per platform: first alert → last notification acknowledged by the robot, the
messages it took, the refusals, the slowest of the alerts that go first (raised
→ acked); against the platform's floor (the 50 messages ÷ its rate, the slowest
of its rates) and against the same storm without pacing (``Outbox(pace=False)``,
the behaviour before issue 19: every alert sent as it comes, refusals retried
with backoff).

    .venv/bin/python bench/notify_pacing.py
    .venv/bin/python bench/notify_pacing.py --alerts 200 --per-second 20 --town 10

Target (issue 19): no refusal; every robot done within 3 minutes of the first alert.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from hub.alerting.acklink import AckLinks  # noqa: E402
from hub.alerting.notify import Outbox, build_notifiers  # noqa: E402
from hub.alerting.notify.pacing import RATES  # noqa: E402
from hub.config import NotifierSpec, parse_hub_config  # noqa: E402
from hub.fleet.ledger import Ledger  # noqa: E402
from hub.fleet.view import Fleet  # noqa: E402
from hub.storage.schema import notifications  # noqa: E402
from hub.storage.store import Store  # noqa: E402
from hub.storage.writer import Writer  # noqa: E402
from protocol import messages as m  # noqa: E402
from tests.harness.robots import ROBOTS, FakeRobot  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

T0 = 1_764_196_800.0
PLATFORMS = ("wecom", "dingtalk", "feishu")
SECRET = "SEC0123456789abcdef0123456789abcdef"
#: A storm not over after this much simulated time is reported as such.
GIVE_UP_S = 4 * 3600.0


EPOCH = "9f2c01ab"


def sid_of(s: int) -> str:
    return f"yh-storm-{s:02d}"


def storm(n: int, stations: int, town: int) -> list[dict[str, Any]]:
    """``n`` alerts across ``stations``: the last ``town`` stations' station_offline
    (a power cut) a third of the way in, in the order they went dark (by sid: the
    last one is the town's last), a tamper, a heater lockout, a water empty
    spread through it; warnings the rest, about the other stations."""
    rules = ("water_low", "chargers_low", "door_open_too_long")
    lit = stations - town
    specials = 3 + town
    out: list[dict[str, Any]] = [{"rule": rules[(i // lit) % len(rules)], "sid": i % lit,
                                  "severity": "warning"} for i in range(n - specials)]
    out.insert(min(len(out), 4), {"rule": "tamper", "sid": 0, "severity": "critical"})
    out.insert(min(len(out), n // 4), {"rule": "heater_lockout", "sid": 2 % lit,
                                       "severity": "warning"})
    for k in range(town):
        out.insert(min(len(out), n // 3 + k), {"rule": "station_offline", "sid": lit + k,
                                               "severity": "critical"})
    out.insert(min(len(out), 2 * n // 3), {"rule": "water_empty", "sid": 4 % lit,
                                           "severity": "critical"})
    return [{"id": f"a-{i:016x}", "rule": a["rule"], "sid": sid_of(a["sid"]),
             "severity": a["severity"], "state": "firing", "summary": a["rule"],
             "value": None, "started_at": int(T0 * 1000), "acked_at": None,
             "resolved_at": None} for i, a in enumerate(out)]


def power_cut(store: Any, writer: Any, clock: ManualClock, stations: int, town: int) -> Fleet:
    """The real Fleet: every station heard from, then the town's lost one after
    another (each heard 3 s after the one before), two minutes before the storm."""
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1883}, "database": "sqlite://",
        "stations": [{"sid": sid_of(s), "name": sid_of(s),
                      "group": "town" if s >= stations - town else "city"}
                     for s in range(stations)]})
    ledger = Ledger(store, writer, clock)
    ledger.hub_started(clock.ms())
    fleet = Fleet(config, store, writer, ledger, clock)
    fleet.broker_up(clock.ms())

    def born(s: int) -> None:
        fleet.apply_status(m.Status.online(sid_of(s), EPOCH, clock.ms(), True,
                                           int(clock.now()), 0, "1.0.0", {}), clock.ms())

    for s in range(stations - town):
        born(s)
    for s in range(stations - town, stations):
        clock.advance(3.0)
        born(s)
    clock.advance(10.0)
    for s in range(stations - town, stations):
        view = fleet.get(sid_of(s))
        fleet.apply_status(m.Status.will(sid_of(s), EPOCH, view.birth), clock.ms())
    clock.advance(120.0)
    return fleet


def run(pace: bool, alerts: list[dict[str, Any]], per_second: int, stations: int,
        town: int) -> dict[str, dict[str, Any]]:
    clock = ManualClock(T0 - 200.0)
    robots: dict[str, FakeRobot] = {
        p: ROBOTS[p](clock, token=f"{p}-token", secret=None if p == "wecom" else SECRET)
        for p in PLATFORMS}
    specs = [NotifierSpec(name=f"ops-{p}", type=p, url=r.url, secret=r.secret, timeout=5.0)
             for p, r in robots.items()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/hub.db")
        writer = Writer(store).start()
        fleet = power_cut(store, writer, clock, stations, town)
        clock.advance(T0 - clock.now())  # the storm begins at T0
        outbox = Outbox(store, writer, clock, build_notifiers(specs),
                        acklinks=AckLinks(b"k" * 32, "https://hub.example.cn", clock=clock),
                        rng=random.Random(7), registry=CollectorRegistry(), pace=pace,
                        last_of_group_down=fleet.last_of_group_down)
        raised: dict[str, float] = {}
        waiting = list(alerts)
        next_raise = T0
        try:
            while clock.now() - T0 < GIVE_UP_S:
                if waiting and clock.now() >= next_raise:
                    for a in waiting[:per_second]:
                        raised[a["id"]] = clock.now()
                        for s in specs:
                            outbox.enqueue(s.name, "firing", a,
                                           {"sid": a["sid"], "name": f"驿站 {a['sid']}"})
                    waiting = waiting[per_second:]
                    next_raise += 1.0
                _made, next_ms = outbox.send_due_next()
                if not waiting and not outbox.pending() and not outbox.held():
                    break
                target = min(x for x in (next_ms / 1000 if next_ms else None,
                                         next_raise if waiting else None,
                                         clock.now() + 60.0) if x is not None)
                clock.advance(max(0.001, target - clock.now()))
            result = {}
            first = first_ids(store)
            for p, robot in robots.items():
                acked = robot.accepted
                late = []
                for alert_id in sorted(first):
                    ds = [d for d in outbox.deliveries(alert_id) if d["notifier"] == f"ops-{p}"]
                    if ds and ds[0]["delivered"]:  # not one held over the limits for a digest
                        late.append(ds[0]["delivered"] / 1000 - raised[alert_id])
                result[p] = {
                    "last": max((h.at for h in acked), default=float("nan")) - T0,
                    "messages": len(acked), "refused": len(robot.refused),
                    "digests": sum(1 for h in acked if "汇总" in h.text),
                    "first": max(late, default=0.0), "firsts": len(first),
                    # Critical alerts that did not go first, carried by a digest.
                    "folded": sum(1 for a in alerts if a["severity"] == "critical"
                                  for d in outbox.deliveries(a["id"])
                                  if d["notifier"] == f"ops-{p}" and d["digest"]),
                    "left": len(outbox.pending(f"ops-{p}")) + len(outbox.held(f"ops-{p}")),
                }
            return result
        finally:
            outbox.close()
            writer.close()
            store.close()
            for r in robots.values():
                r.close()


def first_ids(store: Any) -> set[str]:
    """The alerts whose notifications went first, as the outbox stored them."""
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(notifications.c.alert_id).distinct()
                                .where(notifications.c.goes_first.is_(True))).scalars())


def floor(platform: str, n: int) -> float:
    """``n`` messages ÷ the platform's rate (the slowest of its documented rates)."""
    return max(n / r.count * r.window for r in RATES[platform])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=50)
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--town", type=int, default=5,
                    help="stations of the group whose power is cut (the last ones)")
    ap.add_argument("--per-second", type=int, default=5)
    args = ap.parse_args()
    if not 1 <= args.town < args.stations <= 99 or args.alerts < args.town + 3:
        ap.error("need 1 ≤ town < stations ≤ 99 and alerts ≥ town + 3")
    logging.basicConfig(level=logging.ERROR)
    alerts = storm(args.alerts, args.stations, args.town)
    paced = run(True, alerts, args.per_second, args.stations, args.town)
    before = run(False, alerts, args.per_second, args.stations, args.town)
    critical = sum(1 for a in alerts if a["severity"] == "critical")
    print(f"storm: {args.alerts} alerts across {args.stations} stations ({critical} critical, "
          f"{paced['wecom']['firsts']} go first: tamper, heater lockout, the last of "
          f"{args.town} town stations offline), {args.per_second}/s; simulated time")
    print(f"{'platform':10} {'floor':>8} | {'paced: last ack':>16} {'msgs':>5} {'digests':>7} "
          f"{'refused':>7} {'1st max':>8} {'crit folded':>11} | {'before: last ack':>16} "
          f"{'msgs':>5} {'refused':>7} {'1st max':>8}")
    for p in PLATFORMS:
        a, b = paced[p], before[p]
        print(f"{p:10} {floor(p, args.alerts):7.0f}s | {a['last']:15.1f}s {a['messages']:5d} "
              f"{a['digests']:7d} {a['refused']:7d} {a['first']:7.1f}s {a['folded']:11d} | "
              f"{b['last']:15.1f}s {b['messages']:5d} {b['refused']:7d} {b['first']:7.1f}s"
              + ("" if not (a["left"] or b["left"]) else
                 f"  (left undelivered: paced {a['left']}, before {b['left']})"))


if __name__ == "__main__":
    main()
