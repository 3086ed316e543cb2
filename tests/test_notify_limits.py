"""Notification rate limits and the digest (docs/alerts.md, "Rate limits"; issue 14,
finding 12): a flood of alerts does not bury the real one.

Unit level: the real Outbox on a real SQLite file or PostgreSQL database, real
HTTP receivers on loopback, a ManualClock and ``send_due()``, at the production
defaults (6 per station in 10 min, 20 a minute, a digest every 5 min). End to end
(at the bottom): a real ``yizhan hub`` on a broker with the deployment's
configuration.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.notify.first import ALWAYS_FIRST
from hub.config import NotifierSpec
from hub.config.notifiers import NotifyLimits, parse_notifier
from tests.harness.procs import Procs
from tests.test_notify_outbox import PUBLIC, T0, Db, webhook
from tests.test_notify_receivers import SECRET, receiver_factory
from yizhan.clock import ManualClock
from yizhan.config import ConfigError, Section

receivers = pytest.fixture(receiver_factory, name="receivers")

LIMITS = NotifyLimits()  # the production defaults, as shipped


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    d = Db(database_url)
    yield d
    d.close()


class Hub:
    """An outbox on ``db`` with a ManualClock; ``restart()`` closes and reopens it all."""

    def __init__(self, db: Db, specs: list[NotifierSpec]) -> None:
        self.db, self.specs = db, specs
        self.clock = ManualClock(T0)
        self.registry = CollectorRegistry()
        self.outbox = self._open()

    def _open(self) -> Outbox:
        return Outbox(self.db.store, self.db.writer, self.clock, build_notifiers(self.specs),
                      acklinks=AckLinks(b"k" * 32, PUBLIC, clock=self.clock),
                      rng=random.Random(7), registry=self.registry)

    def restart(self) -> None:
        self.outbox.close()
        self.db.reopen()
        self.registry = CollectorRegistry()
        self.outbox = self._open()

    def held_metric(self, notifier: str) -> float:
        return self.registry.get_sample_value("yizhan_notifications_held_total",
                                              {"notifier": notifier}) or 0.0


@pytest.fixture
def procs(tmp_path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture
def hubs(db: Db) -> Iterator[Any]:
    made: list[Hub] = []

    def make(specs: list[NotifierSpec]) -> Hub:
        made.append(Hub(db, specs))
        return made[-1]

    yield make
    for h in made:
        h.outbox.close()


def alert(n: int, *, sid: str | None = None, rule: str = "water_empty",
          severity: str = "warning", **changes: Any) -> dict[str, Any]:
    sid = sid or f"yh-flood-{n:05d}"
    a = {"id": f"a-{n:016x}", "rule": rule, "sid": sid, "severity": severity,
         "state": "firing", "summary": "水位空", "value": {"level": 0.0},
         "started_at": int(T0 * 1000) - 60_000, "acked_at": None, "resolved_at": None}
    a.update(changes)
    return a


def station(sid: str) -> dict[str, str]:
    return {"sid": sid, "name": f"驿站 {sid}"}


def flood(outbox: Outbox, n: int, notifier: str = "ops-webhook") -> list[str]:
    """One warning alert from each of ``n`` stations; their delivery ids."""
    return [outbox.enqueue(notifier, "firing", a, station(a["sid"]))
            for a in (alert(i) for i in range(n))]


def test_a_flood_of_stations_sends_the_minute_s_limit_and_digests_the_rest(
        hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    ids = flood(hub.outbox, 50)

    assert hub.outbox.send_due() == LIMITS.per_minute
    sent = r.wait_accepted(LIMITS.per_minute)
    assert sent == ids[:LIMITS.per_minute]  # the first ones, one by one, in order
    held = hub.outbox.held("ops-webhook")
    assert [d["id"] for d in held] == ids[LIMITS.per_minute:]
    assert {d["state"] for d in held} == {"held"}
    assert hub.held_metric("ops-webhook") == 30
    assert hub.outbox.status()["ops-webhook"]["held"] == 30

    # Nothing more before the digest is due, not even when the minute has passed.
    hub.clock.advance(LIMITS.digest_every - 1)
    assert hub.outbox.send_due() == 0
    hub.clock.advance(1)
    assert hub.outbox.send_due() == 1
    digest = r.wait_for(LIMITS.per_minute + 1)[-1].json()
    assert digest["kind"] == "digest" and digest["held"] == 30 and digest["more"] == 0
    assert [a["alert"]["sid"] for a in digest["alerts"]] == \
        [f"yh-flood-{i:05d}" for i in range(LIMITS.per_minute, 50)]
    assert [a["delivery"] for a in digest["alerts"]] == ids[LIMITS.per_minute:]

    # The API shows each held one honestly, and the digest that carried it.
    rows = hub.outbox.deliveries(alert(49)["id"])
    assert rows[0]["state"] == "digested" and rows[0]["held"] == int(T0 * 1000)
    assert rows[0]["digest"] == r.requests[-1].delivery
    assert hub.outbox.held() == [] and hub.outbox.pending() == []
    hub.clock.advance(LIMITS.digest_every)
    assert hub.outbox.send_due() == 0  # one digest, not one per flush


def test_one_station_sends_its_limit_then_is_held_but_a_critical_alert_goes_at_once(
        hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    sid = "yh-liar-01"
    ids = [hub.outbox.enqueue("ops-webhook", "firing", alert(i, sid=sid, rule=rule),
                              station(sid))
           for i, rule in enumerate(["water_empty", "water_low", "lockers_empty", "door_open",
                                     "water_cold", "banks_low", "dispenser_fault",
                                     "water_empty", "water_low"])]
    other = hub.outbox.enqueue("ops-webhook", "firing", alert(100, sid="yh-real-02"),
                               station("yh-real-02"))
    hub.outbox.send_due()
    # Six of the flooding station, and the other station is not held behind it.
    assert r.wait_accepted(LIMITS.per_station + 1) == [*ids[:LIMITS.per_station], other]
    assert [d["id"] for d in hub.outbox.held()] == ids[LIMITS.per_station:]

    # A tamper alert of the same station is critical: never held.
    tamper = alert(200, sid=sid, rule="tamper", severity="critical")
    did = hub.outbox.enqueue("ops-webhook", "firing", tamper, station(sid))
    hub.outbox.send_due()
    assert r.wait_accepted(LIMITS.per_station + 2)[-1] == did

    # After the window the station may speak again.
    hub.clock.advance(LIMITS.station_window)
    hub.outbox.send_due()  # and the digest of the three held goes out
    later = hub.outbox.enqueue("ops-webhook", "firing", alert(300, sid=sid), station(sid))
    hub.outbox.send_due()
    seen = r.wait_for(LIMITS.per_station + 4)
    assert seen[-2].json()["kind"] == "digest" and seen[-2].json()["held"] == 3
    assert seen[-1].delivery == later


def test_critical_alerts_go_out_when_the_minute_is_spent_and_count_toward_it(
        hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    flood(hub.outbox, LIMITS.per_minute + 5)
    lockout = alert(999, sid="yh-real-01", rule="heater_lockout", severity="critical")
    did = hub.outbox.enqueue("ops-webhook", "firing", lockout, station("yh-real-01"))
    hub.outbox.send_due()
    accepted = r.wait_accepted(LIMITS.per_minute + 1)
    # Stored last, sent first: a critical one never waits behind lesser ones (issue 19).
    assert accepted[0] == did and len(accepted) == LIMITS.per_minute + 1
    # The next minute: the critical one was counted, so one fewer warning goes.
    hub.clock.advance(30)
    critical_first = [hub.outbox.enqueue("ops-webhook", "firing",
                                         alert(2000 + i, severity="critical"),
                                         station(f"yh-crit-{i}")) for i in range(3)]
    hub.clock.advance(31)  # the flood's minute is over; the three criticals are not
    fresh = [hub.outbox.enqueue("ops-webhook", "firing", alert(3000 + i),
                                station(f"yh-new-{i}")) for i in range(LIMITS.per_minute)]
    hub.outbox.send_due()
    got = r.wait_accepted(LIMITS.per_minute + 1 + 3 + LIMITS.per_minute - 3)
    assert got[LIMITS.per_minute + 1:] == critical_first + fresh[:LIMITS.per_minute - 3]


def test_a_flood_of_critical_alerts_is_cut_at_the_minute_s_limit_too(hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    ids = [hub.outbox.enqueue("ops-webhook", "firing", alert(i, severity="critical"),
                              station(f"yh-flood-{i:05d}")) for i in range(30)]
    hub.outbox.send_due()
    assert r.wait_accepted(LIMITS.per_minute) == ids[:LIMITS.per_minute]
    assert [d["id"] for d in hub.outbox.held()] == ids[LIMITS.per_minute:]
    hub.clock.advance(LIMITS.digest_every)
    hub.outbox.send_due()
    assert r.wait_for(LIMITS.per_minute + 1)[-1].json()["held"] == 10


def test_a_resolved_notice_of_a_held_alert_folds_into_the_digest(hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    flood(hub.outbox, LIMITS.per_minute + 2)
    held = alert(LIMITS.per_minute + 1)
    hub.clock.advance(120)  # the minute is free again: still, no lone "resolved"
    resolved = dict(held, state="resolved", resolved_at=hub.clock.ms())
    did = hub.outbox.enqueue("ops-webhook", "resolved", resolved, station(held["sid"]))
    hub.outbox.send_due()
    r.wait_accepted(LIMITS.per_minute)
    assert [d["id"] for d in hub.outbox.held()][-1] == did
    assert all(s.json()["kind"] == "firing" for s in r.requests)

    hub.clock.advance(LIMITS.digest_every)
    hub.outbox.send_due()
    digest = r.wait_for(LIMITS.per_minute + 1)[-1].json()
    kinds = {a["alert"]["id"]: a["kind"] for a in digest["alerts"]}
    assert kinds == {alert(LIMITS.per_minute)["id"]: "firing", held["id"]: "resolved"}
    assert digest["held"] == 3


def test_held_notifications_survive_a_restart_and_are_digested_after(
        hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    ids = flood(hub.outbox, 30)
    hub.outbox.send_due()
    r.wait_accepted(LIMITS.per_minute)

    hub.restart()  # outbox, writer and store closed and opened again
    assert [d["id"] for d in hub.outbox.held()] == ids[LIMITS.per_minute:]
    # The counts are the rows: the restarted hub still knows the minute is spent.
    more = hub.outbox.enqueue("ops-webhook", "firing", alert(500), station("yh-late-01"))
    assert hub.outbox.held()[-1]["id"] == more
    hub.clock.advance(LIMITS.digest_every)
    assert hub.outbox.send_due() == 1
    digest = r.wait_for(LIMITS.per_minute + 1)[-1].json()
    assert [a["delivery"] for a in digest["alerts"]] == [*ids[LIMITS.per_minute:], more]


def test_a_chat_robot_s_digest_is_one_message_in_its_language(hubs, receivers) -> None:
    ok = (200, b'{"errcode":0,"errmsg":"ok"}')
    r = receivers(default=ok)
    wecom = NotifierSpec(name="ops-wecom", type="wecom",
                         url=f"{r.url}/cgi-bin/webhook/send?key=k")
    english = NotifierSpec(name="ops-en", type="dingtalk",
                           url=f"{r.url}/robot/send?access_token=t", language="en")
    hub = hubs([wecom, english])
    for n in range(40):
        a = alert(n)
        for name in ("ops-wecom", "ops-en"):
            hub.outbox.enqueue(name, "firing", a, station(a["sid"]))
    hub.outbox.send_due()
    # 20 waiting and 20 held are more than a robot takes in half a minute: each
    # robot is paced (issue 19), so all 40 fold at once into one digest each.
    seen = r.wait_for(2)
    assert len(r.requests) == 2
    by_path = {s.path: s.json() for s in seen}
    zh = by_path["/cgi-bin/webhook/send"]["markdown"]["content"]
    en = by_path["/robot/send"]["markdown"]
    assert "40" in zh.splitlines()[0] and "热水已空" in zh and "驿站 yh-flood-00000" in zh
    assert "另有 30 个" in zh  # ten names listed, the other thirty counted
    assert "群机器人" in zh  # why: more at once than the robot takes
    assert en["title"] == "[DIGEST] 40 notifications held back"
    assert "40 stations: " in en["text"] and "(+30 more)" in en["text"]
    assert "驿站" in en["text"]  # the keyword a DingTalk robot may require


def test_few_alerts_are_sent_as_before(hubs, receivers) -> None:
    r = receivers(secret=SECRET)
    hub = hubs([webhook(r)])
    ids = [hub.outbox.enqueue("ops-webhook", kind, alert(1, sid="yh-one-01"),
                              station("yh-one-01"))
           for kind in ("firing", "acked", "resolved")]
    hub.outbox.send_due()
    assert r.wait_accepted(3) == ids
    assert hub.outbox.held() == [] and hub.held_metric("ops-webhook") == 0


def test_limits_are_configured_per_notifier_and_checked() -> None:
    spec = parse_notifier(Section({"name": "x", "type": "webhook", "url": "https://r.example",
                                   "secret": SECRET, "limits": {
                                       "per_station": 3, "station_window": "30m",
                                       "per_minute": 10, "digest_every": "15m"}}))
    assert spec.limits == NotifyLimits(3, 1800.0, 10, 900.0)
    base = {"name": "x", "type": "webhook", "url": "https://r.example", "secret": SECRET}
    for bad in ({"per_station": 0}, {"per_minute": 10**30}, {"per_minute": True},
                {"digest_every": "5s"}, {"station_window": "400d"}, {"per_station": "٣"}):
        with pytest.raises(ConfigError, match=r"notifiers\.limits|limits\."):
            parse_notifier(Section({**base, "limits": bad}, "notifiers"))
    assert json.loads(json.dumps(NotifyLimits().__dict__)) == {
        "per_station": 6, "station_window": 600.0, "per_minute": 20, "digest_every": 300.0}


# -- end to end: a real hub on the deployment's broker -----------------------------------------

FLOOD = 30  # stations, each with credentials (stolen, or made up by an insider)
HUB_USER = "_hub"


def flood_users() -> dict[str, str]:
    return {f"yh-flood-{i:03d}": f"pw-flood-{i:03d}" for i in range(FLOOD)}


def publish_low_water(broker: Any, sid: str, password: str) -> None:
    """A birth and a State with the tank at 20 % (water_low: a warning)."""
    from protocol import examples
    from tests.harness.mqtt import close, connect

    now_ms = int(time.time() * 1000)
    status = {**examples.example("status"), "sid": sid, "ts": now_ms}
    state = {**examples.example("state"), "sid": sid, "ts": now_ms}
    state["dispenser"] = {**state["dispenser"], "level": 0.2, "level_state": "low"}
    client = connect(broker, username=sid, password=password)
    try:
        for kind, payload in (("status", status), ("state", state)):
            client.publish(f"yizhan/v1/{sid}/{kind}", json.dumps(payload).encode(),
                           qos=1).wait_for_publish(5)
    finally:
        close(client)


def test_a_real_hub_under_a_flood_sends_the_limit_and_a_real_alert_at_once(
        tmp_path, broker_factory, procs) -> None:
    from firmware.agent import Agent
    from firmware.config import parse_station_config
    from firmware.hardware.station import build_hardware
    from tests.conftest import SECURE_USERS
    from tests.harness.procs import free_port, http_json, wait_until, write_yaml
    from tests.test_alert_e2e import FLEET_KEY, NAME, QUIET_SIM, SID, TOKEN, start_hub
    from tests.test_alert_routing import SECRET as RECEIVER_SECRET
    from tests.test_alert_routing import Receiver
    from yizhan.clock import SYSTEM_CLOCK
    from yizhan.watchdog import Notifier

    users = {**SECURE_USERS, **flood_users()}
    broker = broker_factory(users=users, acl=True, deployed=True)
    receiver = Receiver()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                 "username": HUB_USER, "password": users[HUB_USER]},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": port},
        "public_url": base,
        "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
        "stations": [{"sid": SID, "name": NAME, "group": "chumen"}],
        "notifiers": [{"name": "ops", "type": "webhook", "url": receiver.url("ops"),
                       "secret": RECEIVER_SECRET, "timeout": "2s"}],  # limits: the defaults
        "routes": [{"match": {}, "notify": ["ops"], "test_every": "off"}],
    })
    started = time.monotonic()
    hub = start_hub(procs, "hub", cfg, base)

    key = tmp_path / "fleet.key"
    key.write_bytes(FLEET_KEY)
    config = parse_station_config({
        "hardware": "sim", "station": {"id": SID, "name": NAME},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                 "username": SID, "password": users[SID]},
        "data_dir": str(tmp_path / SID), "fleet_key_file": str(key),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "lockers": {"slots": 6, "poll_interval": "250ms"}, "sim": QUIET_SIM})
    hardware = build_hardware(config, SYSTEM_CLOCK)
    agent = Agent(config, SYSTEM_CLOCK, hardware, notifier=Notifier(None))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: http_json(f"{base}/api/v1/stations/{SID}", TOKEN)[1]
                   .get("online"), 15, "the real station online", on_fail=hub.tail)
        for sid, password in flood_users().items():
            publish_low_water(broker, sid, password)

        def held() -> list[dict[str, Any]]:
            status, got = http_json(f"{base}/api/v1/alerts?state=firing", TOKEN)
            out = []
            for a in got.get("alerts", []) if status == 200 else []:
                if a["sid"].startswith("yh-flood-"):
                    _s, d = http_json(f"{base}/api/v1/alerts/{a['id']}/deliveries", TOKEN)
                    out += [x for x in d["deliveries"] if x["state"] == "held"]
            return out

        # Every flood station's alert is stored: sent (the minute's 20) or held.
        wait_until(lambda: len(held()) >= FLOOD - LIMITS.per_minute, 20,
                   "the flood held over the limit", interval=0.3, on_fail=hub.tail)

        # The real station's tank runs dry: critical, it goes out at once.
        hardware.simulation.water.drain()
        wait_until(lambda: any(a["body"]["alert"]["rule"] == "water_empty"
                               for a in receiver.delivered()), 15,
                   "the real water_empty delivered", on_fail=hub.tail)
        took = time.monotonic() - started
        delivered = receiver.delivered()
        # Lesser: neither critical nor one that goes first (the dry tank's heater
        # lockout, a warning, goes first past the limit: hub/alerting/notify/first.py).
        lesser = [a for a in delivered if a["body"]["alert"]["severity"] != "critical"
                  and a["body"]["alert"]["rule"] not in ALWAYS_FIRST]
        assert took < 60, "the test outran the minute it counts"
        assert len(lesser) <= LIMITS.per_minute
        flooded = [a for a in delivered if a["body"]["alert"]["sid"].startswith("yh-flood-")]
        assert flooded and len(flooded) <= LIMITS.per_minute
        (real,) = [a for a in delivered if a["body"]["alert"]["rule"] == "water_empty"]
        assert real["body"]["alert"]["sid"] == SID and real["body"]["station"]["name"] == NAME

        # /metrics counts what was held, and the held rows are still there to digest.
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        (line,) = [x for x in text.splitlines()
                   if x.startswith('yizhan_notifications_held_total{notifier="ops"}')]
        assert float(line.split()[-1]) >= FLOOD - LIMITS.per_minute
    finally:
        agent.stop()
        thread.join(15)
        receiver.close()
