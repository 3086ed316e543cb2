"""Routing (hub/alerting/routing.py) on a ManualClock: who is told of an alert, and when.

Real parts on both sides of the router: the alert rows in a real SQLite store,
the real outbox rendering real webhook bodies into its ``notifications`` table
(its senders not started, so the table shows exactly what the router asked for),
and — for the failing notifier — a real HTTP receiver on loopback that answers
503 and then 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from hub.alerting.acklink import AckLinks
from hub.alerting.alerts import AlertStore
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.routing import HUB_SID, NOTIFY_FAILING, NOTIFY_TEST, Router
from hub.config import parse_hub_config
from hub.storage.schema import notifications
from hub.storage.store import Store
from hub.storage.writer import Writer
from yizhan.clock import ManualClock
from yizhan.config import ConfigError

T0 = 1_764_208_800.0  # 2025-11-27 10:00 in Shanghai (02:00 UTC)
CHUMEN, KANMEN = "yh-chumen-01", "yh-kanmen-01"
SECRET = "routing-test-secret-0123456789"
NOTIFIERS = ("chumen-town", "manager", "ops", "kanmen-town")
MIN = 60.0


class Receiver:
    """A webhook receiver on loopback: checks ``X-Yizhan-Signature``, records
    each attempt's ``X-Yizhan-Delivery``, answers ``status`` (200 or a failure)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.status = 200
        self.attempts: list[dict[str, Any]] = []  # every request, in order
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(receiver.secret, body,
                                                hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(expected,
                                             self.headers.get("X-Yizhan-Signature", ""))
                status = receiver.status
                with receiver.lock:
                    receiver.attempts.append({
                        "path": self.path, "delivery": self.headers.get("X-Yizhan-Delivery"),
                        "signed": signed, "status": status, "body": json.loads(body)})
                self.send_response(status if signed else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def delivered(self) -> list[dict[str, Any]]:
        """Attempts answered 2xx."""
        with self.lock:
            return [a for a in self.attempts if a["signed"] and a["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class World:
    """The alert store, the outbox and a router over one database, on one clock."""

    def __init__(self, tmp_path: Any, receiver: Receiver, routes: list[dict],
                 groups: dict | None = None, **extra: Any) -> None:
        self.clock = ManualClock(T0)
        self.url = f"sqlite:///{tmp_path / 'hub.db'}"
        self.data = {
            "database": self.url,
            "timezone": "Asia/Shanghai",
            "stations": [{"sid": CHUMEN, "name": "楚门镇先锋驿站", "group": "chumen"},
                         {"sid": KANMEN, "name": "坎门驿站", "group": "kanmen"}],
            "notifiers": [{"name": n, "type": "webhook", "url": receiver.url(n),
                           "secret": SECRET} for n in NOTIFIERS],
            "routes": routes,
            **({"groups": groups} if groups else {}),
            **extra,
        }
        self.config = parse_hub_config(self.data)
        self.store = Store(self.url)
        self.writer = Writer(self.store).start()
        self.alerts = AlertStore(self.store, self.writer, self.clock)
        self.held: set[str] = set()  # alert ids the "engine" holds back
        self.seen: set[str] = set()
        self.outbox: Outbox | None = None
        self.router: Router | None = None
        self.restart()

    def restart(self) -> Router:
        """A new outbox and router on the same database (a hub restart)."""
        if self.outbox is not None:
            self.outbox.close()
        self.outbox = Outbox(self.store, self.writer, self.clock,
                             build_notifiers(self.config.notifier_specs),
                             acklinks=AckLinks(b"k" * 32, "http://hub.test", clock=self.clock),
                             failing_after=5 * MIN, jitter=0.0)
        self.router = Router(self.config, self.outbox, self.clock, self.alerts,
                             muted=lambda alert: alert["id"] in self.held)
        return self.router

    def fire(self, rule: str = "water_empty", sid: str = CHUMEN, severity: str = "critical",
             subject: str = "") -> dict[str, Any]:
        alert = self.alerts.raise_alert(rule, sid, severity, f"{rule} at {sid}",
                                        subject=subject)
        self.router.on_transition("firing", alert, None)
        return alert

    def advance(self, seconds: float) -> list[tuple[str, str]]:
        """Move the clock, run the router's tick; what was told meanwhile."""
        self.clock.advance(seconds)
        self.router.tick()
        return self.told()

    def rows(self) -> list[Any]:
        with self.store.engine.connect() as conn:
            # The outbox's own order: by creation, then id.
            return list(conn.execute(sa.select(notifications)
                                     .order_by(notifications.c.created_ms, notifications.c.id)))

    def told(self) -> list[tuple[str, str]]:
        """(kind, notifier) of the deliveries queued since the last look, sorted."""
        new = [r for r in self.rows() if r.id not in self.seen]
        self.seen.update(r.id for r in new)
        return sorted((r.kind, r.notifier) for r in new)

    def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        self.writer.close()
        self.store.close()


@pytest.fixture
def world(tmp_path, receiver) -> Iterator[Any]:
    made: list[World] = []

    def make(routes: list[dict], groups: dict | None = None, **extra: Any) -> World:
        made.append(World(tmp_path / str(len(made)), receiver, routes, groups, **extra))
        return made[-1]

    for i in range(4):
        (tmp_path / str(i)).mkdir()
    yield make
    for w in made:
        w.close()


def two_tiers(**extra: Any) -> list[dict]:
    """Chumen: the town's robot first, the manager after 15 minutes, ops after 30 more."""
    return [{"name": "chumen", "match": {"group": "chumen"}, "notify": ["chumen-town"],
             "escalate": [{"after": "15m", "notify": ["manager"]},
                          {"after": "30m", "notify": ["ops"]}],
             "test_every": "off", **extra},
            {"name": "rest", "match": {}, "notify": ["kanmen-town"], "test_every": "off"}]


# -- tiers ---------------------------------------------------------------------------------


def test_a_firing_alert_tells_tier_zero_only(world):
    w = world(two_tiers())
    alert = w.fire()
    assert w.told() == [("firing", "chumen-town")]
    body = json.loads(w.rows()[0].body)
    assert body["kind"] == "firing" and body["alert"]["id"] == alert["id"]
    assert body["station"]["sid"] == CHUMEN and body["station"]["name"] == "楚门镇先锋驿站"
    assert body["ack_url"].startswith("http://hub.test/ack/")
    # Told once: the engine calling again, or the tick, sends nothing more.
    w.router.on_transition("firing", alert, None)
    assert w.advance(1) == []


def test_an_unacknowledged_alert_escalates_tier_by_tier(world):
    w = world(two_tiers(remind_every="off"))
    w.fire()
    w.told()
    assert w.advance(15 * MIN - 5) == []
    assert w.advance(5) == [("escalated", "manager")]
    # The next tier's "after" counts from when the manager was told.
    assert w.advance(30 * MIN - 5) == []
    assert w.advance(5) == [("escalated", "ops")]
    assert w.advance(10 * 3600) == []  # the last tier: nothing further, reminders off
    body = json.loads(w.rows()[-1].body)
    assert body["kind"] == "escalated" and body["alert"]["state"] == "firing"
    assert body["ack_url"]


def test_a_tier_without_after_takes_its_groups_escalate_after(world):
    routes = [{"match": {}, "notify": ["chumen-town"], "escalate": [{"notify": ["manager"]}],
               "test_every": "off", "remind_every": "off"}]
    w = world(routes, groups={"chumen": {"escalate_after": "5m"}})
    w.fire(sid=CHUMEN)
    w.fire(sid=KANMEN)  # no group setting: the default 15 minutes
    assert w.told() == [("firing", "chumen-town"), ("firing", "chumen-town")]
    assert w.advance(5 * MIN) == [("escalated", "manager")]
    assert w.advance(10 * MIN) == [("escalated", "manager")]


def test_reminders_repeat_to_the_current_tier_at_the_severitys_interval(world):
    routes = [{"match": {}, "notify": ["chumen-town"], "test_every": "off"}]
    w = world(routes)
    w.fire("water_empty", severity="critical")  # default: every hour
    w.fire("water_low", severity="warning")  # every 4 hours
    w.fire("bank_overdue", severity="info", subject="PB0001")  # never
    w.told()
    assert w.advance(59 * MIN) == []
    assert w.advance(1 * MIN) == [("reminder", "chumen-town")]
    assert w.advance(1 * 3600) == [("reminder", "chumen-town")]
    assert w.advance(2 * 3600) == [("reminder", "chumen-town"), ("reminder", "chumen-town")]
    assert w.advance(1 * 3600) == [("reminder", "chumen-town")]
    assert [json.loads(r.body)["alert"]["rule"] for r in w.rows()
            if r.kind == "reminder"].count("bank_overdue") == 0


def test_reminders_follow_escalation_and_the_configured_interval(world):
    w = world(two_tiers(remind_every={"critical": "10m"}))
    w.fire()
    w.told()
    assert w.advance(10 * MIN) == [("reminder", "chumen-town")]
    assert w.advance(5 * MIN) == [("escalated", "manager")]
    # Now the manager's tier is the current one; the clock restarts at the escalation.
    assert w.advance(10 * MIN) == [("reminder", "manager")]


def test_an_ack_stops_escalation_and_is_told_to_every_tier_told(world):
    w = world(two_tiers())
    alert = w.fire()
    w.advance(15 * MIN)
    w.told()
    acked = w.alerts.ack(alert["id"], by="token:test")
    w.router.on_transition("acked", acked, None)
    assert w.told() == [("acked", "chumen-town"), ("acked", "manager")]
    assert w.advance(6 * 3600) == []  # no escalation to ops, no reminders


def test_an_ack_made_elsewhere_is_told_on_the_next_tick(world):
    w = world(two_tiers())
    alert = w.fire()
    w.told()
    w.alerts.ack(alert["id"], by="link:chumen-town")  # nobody called the router
    assert w.advance(5) == [("acked", "chumen-town")]


def test_the_resolution_goes_to_every_tier_that_was_told(world):
    w = world(two_tiers())
    alert = w.fire()
    w.advance(15 * MIN)  # the manager told too
    w.told()
    resolved = w.alerts.clear("water_empty", CHUMEN)
    w.router.on_transition("resolved", resolved, None)
    assert w.told() == [("resolved", "chumen-town"), ("resolved", "manager")]
    body = json.loads(w.rows()[-1].body)
    assert body["alert"]["state"] == "resolved" and body["ack_url"] is None
    assert w.advance(3600) == []
    assert alert["id"] == resolved["id"]


def test_acked_and_resolved_between_two_ticks_tells_only_the_resolution(world):
    w = world(two_tiers())
    alert = w.fire()
    w.told()
    w.alerts.ack(alert["id"], by="x")
    w.alerts.resolve(alert["id"], by="x")
    assert w.advance(5) == [("resolved", "chumen-town")]  # it says who acked, and when
    body = json.loads(w.rows()[-1].body)
    assert body["alert"]["acked_at"] is not None


# -- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "sid", "severity", "route"), [
    ("water_empty", CHUMEN, "critical", "chumen-refill"),  # group and rule
    ("water_low", CHUMEN, "warning", "chumen-refill"),
    ("tamper", CHUMEN, "critical", "critical"),  # by severity
    ("slot_fault", CHUMEN, "warning", "chumen-0001"),  # by sid
    ("slot_fault", KANMEN, "warning", "catch-all"),
    ("water_empty", KANMEN, "critical", "critical"),  # group differs
])
def test_the_first_route_that_matches_takes_the_alert(world, rule, sid, severity, route):
    routes = [
        {"name": "chumen-refill", "match": {"group": "chumen", "rule": ["water_low",
                                                                       "water_empty"]},
         "notify": ["chumen-town"]},
        {"name": "critical", "match": {"severity": "critical"}, "notify": ["ops"]},
        {"name": "chumen-0001", "match": {"sid": [CHUMEN]}, "notify": ["manager"]},
        {"name": "catch-all", "match": {}, "notify": ["kanmen-town"]},
    ]
    w = world([{**r, "test_every": "off"} for r in routes])
    notify = {r["name"]: r["notify"][0] for r in routes}
    w.fire(rule, sid, severity, subject="3" if rule == "slot_fault" else "")
    assert w.told() == [("firing", notify[route])]


def test_the_contracts_minimal_routes_still_work(world):
    w = world([{"match": {}, "notify": ["ops"]}])
    w.fire()
    assert ("firing", "ops") in w.told()


def test_an_alert_no_route_matches_is_told_to_nobody(world, caplog):
    w = world([{"match": {"group": "kanmen"}, "notify": ["kanmen-town"], "test_every": "off"}])
    w.fire(sid=CHUMEN)
    assert w.told() == []
    assert "no route matches" in caplog.text


@pytest.mark.parametrize(("routes", "key"), [
    ([{"match": {}, "notify": ["nobody"]}], "routes[0].notify"),
    ([{"match": {"town": "chumen"}, "notify": ["ops"]}], "routes[0].match.town"),
    ([{"match": {"rule": "water_gone"}, "notify": ["ops"]}], "routes[0].match.rule"),
    ([{"match": {}, "notify": ["ops"], "escalate": [{"after": "0s", "notify": ["ops"]}]}],
     "routes[0].escalate[0].after"),
    ([{"match": {}, "notify": ["ops"], "remind_every": {"urgent": "1h"}}],
     "routes[0].remind_every.urgent"),
    ([{"match": {}, "notify": ["ops"], "test_at": "25:00"}], "routes[0].test_at"),
    ([{"name": "a", "match": {}, "notify": ["ops"]}, {"name": "a", "notify": ["ops"]}],
     "routes[1].name"),
    ([{"match": {}}], "routes[0].notify"),
])
def test_a_bad_route_is_refused_naming_the_key(tmp_path, receiver, routes, key):
    data = {"database": f"sqlite:///{tmp_path / 'x.db'}", "routes": routes,
            "notifiers": [{"name": "ops", "type": "webhook", "url": receiver.url("ops"),
                           "secret": SECRET}]}
    with pytest.raises(ConfigError) as err:
        parse_hub_config(data)
    assert err.value.key == key


# -- held back, restarts, crashes -------------------------------------------------------------


def test_a_held_back_alert_is_not_told_until_the_hold_ends(world):
    w = world(two_tiers())
    alert = w.alerts.raise_alert("water_empty", CHUMEN, "critical", "empty")
    w.held.add(alert["id"])  # staff on site: the engine holds refill alerts back
    w.router.on_transition("firing", alert, None)
    assert w.advance(30 * MIN) == []
    w.held.clear()
    assert w.advance(5) == [("firing", "chumen-town")]
    # Escalation counts from when the town was told, not from the alert's start.
    assert w.advance(15 * MIN - 10) == []
    assert w.advance(10) == [("escalated", "manager")]


def test_a_held_back_alert_that_resolves_unseen_tells_nobody(world):
    w = world(two_tiers())
    alert = w.alerts.raise_alert("water_empty", CHUMEN, "critical", "empty")
    w.held.add(alert["id"])
    w.router.on_transition("firing", alert, None)
    w.router.on_transition("resolved", w.alerts.clear("water_empty", CHUMEN), None)
    w.held.clear()
    assert w.advance(3600) == []


def test_a_restarted_router_neither_repeats_nor_forgets(world):
    w = world(two_tiers(remind_every="off"))
    alert = w.fire()
    w.advance(15 * MIN)  # town and manager told
    w.told()
    w.restart()
    assert w.advance(5) == []
    assert w.advance(30 * MIN - 5) == [("escalated", "ops")]
    w.alerts.resolve(alert["id"], by="x")
    w.restart()  # the hub died before it told anyone of the resolution
    assert w.advance(1) == [("resolved", "chumen-town"), ("resolved", "manager"),
                            ("resolved", "ops")]


def test_a_step_enqueued_but_not_recorded_is_not_sent_twice(world, monkeypatch):
    w = world(two_tiers())
    real_claim = Router._claim
    crashes = []

    def crash_once(self, row, values):
        if not crashes:
            crashes.append(row.id)
            raise RuntimeError("the hub died between the outbox and the alert row")
        return real_claim(self, row, values)

    monkeypatch.setattr(Router, "_claim", crash_once)
    alert = w.fire()  # enqueued, then "crashed" before recording it
    assert crashes == [alert["id"]]
    w.restart()
    w.router.tick()
    w.router.tick()
    assert w.told() == [("firing", "chumen-town")]  # one delivery, not two


# -- scheduled tests ------------------------------------------------------------------------


def test_each_route_is_tested_on_its_schedule(world):
    routes = [{"name": "chumen", "match": {"group": "chumen"}, "notify": ["chumen-town"],
               "escalate": [{"after": "15m", "notify": ["manager"]}], "test_at": "09:30"},
              {"name": "rest", "match": {}, "notify": ["ops"], "test_every": "off"}]
    w = world(routes)  # 10:00 Shanghai: today's 09:30 test is due
    w.router.tick()
    assert w.told() == [("firing", "chumen-town"), ("firing", "manager"),
                        ("resolved", "chumen-town"), ("resolved", "manager")]
    rows = w.rows()
    first, done = json.loads(rows[0].body), json.loads(rows[-1].body)
    assert first["alert"]["rule"] == NOTIFY_TEST and first["alert"]["sid"] == HUB_SID
    assert first["alert"]["severity"] == "info" and first["ack_url"] is None
    assert "测试" in first["station"]["name"] and first["alert"]["id"] == done["alert"]["id"]
    assert done["alert"]["state"] == "resolved"
    assert w.advance(23 * 3600) == []  # 09:00 the next day
    w.restart()
    assert w.advance(20 * MIN) == []  # 09:20: restarted, still nothing due
    assert len(w.advance(10 * MIN)) == 4  # 09:30: the day's test


def test_test_notifications_are_delivered_signed(world, receiver):
    w = world([{"match": {}, "notify": ["ops"], "test_every": "1h", "test_at": "00:00"}])
    w.router.tick()
    assert w.outbox.send_due() == 2
    got = receiver.delivered()
    assert [a["body"]["kind"] for a in got] == ["firing", "resolved"]
    assert all(a["path"] == "/ops" and a["signed"] for a in got)


# -- the hub's own alert: a notifier that cannot deliver -------------------------------------


def test_a_failing_notifier_raises_an_alert_sent_to_every_other_route(world, receiver):
    routes = [{"name": "ops", "match": {"severity": "critical"}, "notify": ["ops"],
               "test_every": "off"},
              {"name": "chumen", "match": {"group": "chumen"}, "notify": ["chumen-town"],
               "escalate": [{"after": "15m", "notify": ["manager"]}], "test_every": "off"},
              {"name": "kanmen", "match": {"group": "kanmen"}, "notify": ["kanmen-town"],
               "test_every": "off"}]
    w = world(routes)
    receiver.status = 503
    w.fire("tamper", CHUMEN, "critical", subject="locker_panel")
    assert w.told() == [("firing", "ops")]
    assert w.outbox.send_due() == 1  # 503
    assert w.advance(4 * MIN) == []  # failing, but not yet for failing_after
    receiver.status = 200
    w.clock.advance(1 * MIN)
    w.router.tick()  # ops has failed for 5 minutes: the hub's own alert
    assert w.told() == [("firing", "chumen-town"), ("firing", "kanmen-town")]
    (hub_alert,) = [a for a in w.alerts.list(state="firing") if a["sid"] == HUB_SID]
    assert hub_alert["rule"] == NOTIFY_FAILING and hub_alert["severity"] == "critical"
    body = json.loads(w.rows()[-1].body)
    assert body["alert"]["rule"] == NOTIFY_FAILING and "ops" in body["alert"]["summary"]
    assert body["ack_url"]  # it can be acknowledged like any alert
    # It escalates along the other routes' tiers like any alert.
    assert w.advance(15 * MIN) == [("escalated", "manager")]

    # ops answers again: the tamper alert goes through, the hub's alert resolves.
    w.clock.advance(10 * MIN)
    w.outbox.send_due()
    assert any(a["body"]["alert"]["rule"] == "tamper" for a in receiver.delivered())
    w.router.tick()
    assert w.told() == [("resolved", "chumen-town"), ("resolved", "kanmen-town"),
                        ("resolved", "manager")]
    assert w.alerts.get(hub_alert["id"])["state"] == "resolved"


def test_a_failing_notifier_every_route_uses_still_shows_in_the_alerts(world, receiver,
                                                                      caplog):
    w = world([{"match": {}, "notify": ["ops"], "test_every": "off"}])
    receiver.status = 503
    w.fire("tamper", CHUMEN, "critical", subject="locker_panel")
    w.told()
    w.outbox.send_due()
    assert w.advance(5 * MIN) == []  # nobody else to tell
    w.router.tick()
    (hub_alert,) = [a for a in w.alerts.list(state="firing") if a["sid"] == HUB_SID]
    assert hub_alert["rule"] == NOTIFY_FAILING
    assert caplog.text.count("nobody else to tell") == 1  # said once, not every tick
