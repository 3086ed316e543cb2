"""Notification pacing (issue 19): a storm of 50 alerts, how long until each chat
robot has acknowledged the last notification.

The real Outbox (SQLite in a temp dir) and the real WeCom, DingTalk and Feishu
notifiers (signed where the platform signs) against fake robots that are real
HTTP servers enforcing each platform's documented limit and codes
(tests/harness/robots.py: WeCom 20/min → 45009; DingTalk 20/min, then blocked
10 minutes → 130101; Feishu 100/min and 5/s → 11232), all on one ManualClock
moved from one event to the next (``Outbox.send_due_next``): simulated time, so
the figures do not depend on this machine.

The storm: 50 alerts across 20 stations (5 critical: tamper ×2, heater lockout,
station offline, water empty; 45 warnings), raised 5 a second, each notified to
the three robots; production limits.

Per platform: first alert → last notification acknowledged by the robot, the
messages it took, the refusals, the slowest critical alert (raised → acked);
against the platform's floor (the 50 messages ÷ its rate, the slowest of its
rates) and against the same storm without pacing (``Outbox(pace=False)``, the
behaviour before issue 19: every alert sent as it comes, refusals retried with
backoff).

    .venv/bin/python bench/notify_pacing.py
    .venv/bin/python bench/notify_pacing.py --alerts 200 --per-second 20

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

from prometheus_client import CollectorRegistry  # noqa: E402

from hub.alerting.acklink import AckLinks  # noqa: E402
from hub.alerting.notify import Outbox, build_notifiers  # noqa: E402
from hub.alerting.notify.pacing import RATES  # noqa: E402
from hub.config import NotifierSpec  # noqa: E402
from hub.storage.store import Store  # noqa: E402
from hub.storage.writer import Writer  # noqa: E402
from tests.harness.robots import ROBOTS, FakeRobot  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

T0 = 1_764_196_800.0
PLATFORMS = ("wecom", "dingtalk", "feishu")
SECRET = "SEC0123456789abcdef0123456789abcdef"
#: A storm not over after this much simulated time is reported as such.
GIVE_UP_S = 4 * 3600.0


def storm(n: int, stations: int, critical: int) -> list[dict[str, Any]]:
    """``n`` alerts across ``stations``, ``critical`` of them spread through it."""
    rules = ("water_low", "chargers_low", "door_open_too_long")
    lesser = [{"rule": rules[(i // stations) % len(rules)], "sid": i % stations,
               "severity": "warning"} for i in range(n - critical)]
    crit_rules = ("tamper", "tamper", "heater_lockout", "station_offline", "water_empty")
    out = list(lesser)
    step = max(1, n // max(1, critical))
    for k in range(critical):
        out.insert(min(len(out), 4 + step * k),
                   {"rule": crit_rules[k % len(crit_rules)], "sid": k % stations,
                    "severity": "critical"})
    return [{"id": f"a-{i:016x}", "rule": a["rule"], "sid": f"yh-storm-{a['sid']:02d}",
             "severity": a["severity"], "state": "firing", "summary": a["rule"],
             "value": None, "started_at": int(T0 * 1000), "acked_at": None,
             "resolved_at": None} for i, a in enumerate(out)]


def run(pace: bool, alerts: list[dict[str, Any]], per_second: int) -> dict[str, dict[str, Any]]:
    clock = ManualClock(T0)
    robots: dict[str, FakeRobot] = {
        p: ROBOTS[p](clock, token=f"{p}-token", secret=None if p == "wecom" else SECRET)
        for p in PLATFORMS}
    specs = [NotifierSpec(name=f"ops-{p}", type=p, url=r.url, secret=r.secret, timeout=5.0)
             for p, r in robots.items()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/hub.db")
        writer = Writer(store).start()
        outbox = Outbox(store, writer, clock, build_notifiers(specs),
                        acklinks=AckLinks(b"k" * 32, "https://hub.example.cn", clock=clock),
                        rng=random.Random(7), registry=CollectorRegistry(), pace=pace)
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
            for p, robot in robots.items():
                acked = robot.accepted
                crit = [a["id"] for a in alerts if a["severity"] == "critical"]
                late = []
                for alert_id in crit:
                    ds = [d for d in outbox.deliveries(alert_id) if d["notifier"] == f"ops-{p}"]
                    if ds and ds[0]["delivered"]:  # not one held over the limits for a digest
                        late.append(ds[0]["delivered"] / 1000 - raised[alert_id])
                result[p] = {
                    "last": max((h.at for h in acked), default=float("nan")) - T0,
                    "messages": len(acked), "refused": len(robot.refused),
                    "digests": sum(1 for h in acked if "汇总" in h.text),
                    "critical": max(late, default=0.0),
                    "left": len(outbox.pending(f"ops-{p}")) + len(outbox.held(f"ops-{p}")),
                }
            return result
        finally:
            outbox.close()
            writer.close()
            store.close()
            for r in robots.values():
                r.close()


def floor(platform: str, n: int) -> float:
    """``n`` messages ÷ the platform's rate (the slowest of its documented rates)."""
    return max(n / r.count * r.window for r in RATES[platform])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=50)
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--critical", type=int, default=5)
    ap.add_argument("--per-second", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    alerts = storm(args.alerts, args.stations, args.critical)
    paced = run(True, alerts, args.per_second)
    before = run(False, alerts, args.per_second)
    print(f"storm: {args.alerts} alerts across {args.stations} stations "
          f"({args.critical} critical), {args.per_second}/s; simulated time")
    print(f"{'platform':10} {'floor':>8} | {'paced: last ack':>16} {'msgs':>5} {'digests':>7} "
          f"{'refused':>7} {'crit max':>8} | {'before: last ack':>16} {'msgs':>5} "
          f"{'refused':>7} {'crit max':>8}")
    for p in PLATFORMS:
        a, b = paced[p], before[p]
        print(f"{p:10} {floor(p, args.alerts):7.0f}s | {a['last']:15.1f}s {a['messages']:5d} "
              f"{a['digests']:7d} {a['refused']:7d} {a['critical']:7.1f}s | "
              f"{b['last']:15.1f}s {b['messages']:5d} {b['refused']:7d} {b['critical']:7.1f}s"
              + ("" if not (a["left"] or b["left"]) else
                 f"  (left undelivered: paced {a['left']}, before {b['left']})"))


if __name__ == "__main__":
    main()
