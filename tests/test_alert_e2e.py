"""Alerts end to end: a station runs dry, the right person's webhook hears of it.

Real Mosquitto; a real station agent on sim hardware in this process (its water
simulator drained and refilled through ``agent.hardware.simulation.water``); the
real ``yizhan hub`` program on an SQLite file; and a webhook receiver on loopback
(``tests.test_alert_routing.Receiver``) that checks ``X-Yizhan-Signature`` and
records each attempt's ``X-Yizhan-Delivery``.

* the tank runs dry → a signed ``firing`` water_empty → the ack link opened with
  a GET shows it and changes nothing, its page's form POSTed back acknowledges it
  in the API → refilled → ``resolved``;
* the receiver answers 503 for a while and the hub is killed with SIGKILL in
  between → after the restart every notification is delivered, none twice, each
  under the delivery id of its first attempt;
* escalation and reminders, with the hub in this process on a ManualClock that
  the test moves (the station keeps the real clock);
* a notification sender that stopped makes ``/healthz`` fail; a receiver that
  fails does not.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from firmware.agent import Agent
from firmware.config import parse_station_config
from firmware.hardware.station import build_hardware
from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage.schema import notifications
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from tests.test_alert_routing import SECRET, Receiver
from yizhan.clock import SYSTEM_CLOCK, ManualClock
from yizhan.watchdog import Notifier

SID = "yh-chumen-01"
NAME = "楚门镇先锋驿站"
TOKEN = "alert-e2e-token-0123456789"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}
MIN = 60.0


class Station:
    """A real agent on sim hardware, in this process on its own thread."""

    def __init__(self, tmp_path: Path, broker: Any) -> None:
        key = tmp_path / "fleet.key"
        key.write_bytes(FLEET_KEY)
        self.config = parse_station_config({
            "hardware": "sim",
            "station": {"id": SID, "name": NAME},
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
            "data_dir": str(tmp_path / SID),
            "fleet_key_file": str(key),
            "local_api": {"host": "127.0.0.1", "port": 0},
            "lockers": {"slots": 6, "poll_interval": "250ms"},
            "sim": QUIET_SIM,
        })
        self.hardware = build_hardware(self.config, SYSTEM_CLOCK)
        self.agent = Agent(self.config, SYSTEM_CLOCK, self.hardware, notifier=Notifier(None))
        self.agent.link.hub_online_delay = 0.2  # republish soon after a hub restart
        self.water = self.hardware.simulation.water
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_until(self.agent.link.connected.is_set, 10, f"{SID} connected")

    def stop(self) -> None:
        if self.thread.is_alive():
            self.agent.stop()
            self.thread.join(15)


@pytest.fixture
def station(tmp_path, broker_factory) -> Iterator[Any]:
    made: list[Station] = []

    def start(broker: Any) -> Station:
        made.append(Station(tmp_path, broker))
        return made[-1]

    yield start
    for s in made:
        s.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def procs(tmp_path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


def hub_config(tmp_path: Path, broker: Any, receiver: Receiver, http_port: int,
               notifiers: tuple[str, ...] = ("ops",), **extra: Any) -> dict:
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": http_port},
        "public_url": f"http://127.0.0.1:{http_port}",
        "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
        "stations": [{"sid": SID, "name": NAME, "group": "chumen"}],
        # A short timeout: a request cut by SIGKILL is due again after it.
        "notifiers": [{"name": n, "type": "webhook", "url": receiver.url(n), "secret": SECRET,
                       "timeout": "2s"} for n in notifiers],
        "routes": [{"match": {}, "notify": [notifiers[0]], "test_every": "off"}],
        **extra,
    }


def messages(receiver: Receiver, rule: str = "water_empty",
             delivered: bool = True) -> list[dict[str, Any]]:
    """Attempts (2xx only, by default) carrying an alert of ``rule``."""
    with receiver.lock:
        attempts = list(receiver.attempts)
    return [a for a in attempts if a["body"]["alert"]["rule"] == rule
            and (not delivered or (a["signed"] and a["status"] < 300))]


def kinds(receiver: Receiver, rule: str = "water_empty") -> list[str]:
    return [a["body"]["kind"] for a in messages(receiver, rule)]


def start_hub(procs: Procs, name: str, cfg: Path, base: str) -> Any:
    hub = procs.start(name, "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub.tail)
    return hub


def station_online(base: str) -> bool:
    status, body = http_json(f"{base}/api/v1/stations/{SID}", TOKEN)
    return status == 200 and body["online"]


# -- dry tank → signed firing → ack link → resolved ------------------------------------------


def test_a_dry_tank_pages_signed_the_ack_link_acknowledges_a_refill_resolves(
        tmp_path, broker_factory, station, receiver, procs):
    broker = broker_factory()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = write_yaml(tmp_path / "hub.yaml", hub_config(tmp_path, broker, receiver, port))
    hub = start_hub(procs, "hub", cfg, base)
    s = station(broker)
    wait_until(lambda: station_online(base), 10, "the station online", on_fail=hub.tail)

    s.water.drain()
    wait_until(lambda: kinds(receiver) == ["firing"], 15, "a firing water_empty",
               on_fail=hub.tail)
    (firing,) = messages(receiver)
    body = firing["body"]
    assert firing["signed"] and firing["path"] == "/ops"
    assert firing["delivery"] and firing["delivery"].startswith(("r", "d-"))
    assert body["version"] == 1 and body["kind"] == "firing"
    alert = body["alert"]
    assert alert["sid"] == SID and alert["state"] == "firing"
    assert alert["severity"] == "critical" and alert["started_at"]
    assert set(alert) >= {"id", "rule", "sid", "severity", "state", "summary", "value",
                          "started_at", "acked_at", "resolved_at"}
    assert body["station"]["sid"] == SID and body["station"]["name"] == NAME
    assert body["ack_url"].startswith(f"{base}/ack/")

    # The maintenance worker taps the link on the phone: the GET only shows the alert
    # (a mail scanner opening it acknowledges nothing), the page's button POSTs back.
    with urllib.request.urlopen(body["ack_url"], timeout=5) as resp:
        assert resp.status == 200
        shown = resp.read().decode()
    assert "确认这条告警？" in shown and NAME in shown
    status, listed = http_json(f"{base}/api/v1/alerts?state=firing&sid={SID}", TOKEN)
    assert alert["id"] in [a["id"] for a in listed["alerts"]]
    confirm = re.search(r'name="confirm" value="([^"]+)"', shown).group(1)
    form = urllib.parse.urlencode({"confirm": confirm}).encode()
    with urllib.request.urlopen(body["ack_url"], data=form, timeout=5) as resp:
        assert resp.status == 200
        assert "✅ 已确认" in resp.read().decode()
    status, listed = http_json(f"{base}/api/v1/alerts?state=acked&sid={SID}", TOKEN)
    assert status == 200
    (acked,) = [a for a in listed["alerts"] if a["id"] == alert["id"]]
    assert acked["acked_at"] is not None
    wait_until(lambda: kinds(receiver) == ["firing", "acked"], 10, "the ack told",
               on_fail=hub.tail)

    s.water.refill()
    wait_until(lambda: kinds(receiver) == ["firing", "acked", "resolved"], 15,
               "the resolution told", on_fail=hub.tail)
    done = messages(receiver)[-1]["body"]
    assert done["alert"]["id"] == alert["id"] and done["alert"]["state"] == "resolved"
    assert done["ack_url"] is None
    status, got = http_json(f"{base}/api/v1/alerts?state=resolved&sid={SID}", TOKEN)
    assert alert["id"] in [a["id"] for a in got["alerts"]]
    ids = [a["delivery"] for a in receiver.delivered()]
    assert len(ids) == len(set(ids))  # each delivery taken once


# -- a failing receiver and a hub killed in between -------------------------------------------


def test_every_notification_arrives_once_across_503s_and_a_sigkill(
        tmp_path, broker_factory, station, receiver, procs):
    broker = broker_factory()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Only the water alert goes to ops: a notifier sends its rows in order, so an
    # alert of another rule at the head (chargers_low fires at start or not, as the
    # simulated banks' charge stands at the first State) would hold the water
    # alert's first attempt behind its own retries to the 503ing receiver.
    only_water = [{"match": {"rule": "water_empty"}, "notify": ["ops"], "test_every": "off"}]
    cfg = write_yaml(tmp_path / "hub.yaml",
                     hub_config(tmp_path, broker, receiver, port, routes=only_water))
    hub = start_hub(procs, "hub-1", cfg, base)
    s = station(broker)
    wait_until(lambda: station_online(base), 10, "the station online", on_fail=hub.tail)

    receiver.status = 503  # the ops receiver is down
    s.water.drain()
    wait_until(lambda: len(messages(receiver, delivered=False)) >= 1, 15,
               "a first attempt at the firing", on_fail=hub.tail)
    s.water.refill()  # the resolution queues behind the firing, in order
    wait_until(lambda: {a["body"]["kind"] for a in messages(receiver, delivered=False)}
               >= {"firing"} and len(messages(receiver, delivered=False)) >= 2, 20,
               "a retry of the firing", on_fail=hub.tail)
    status, got = http_json(f"{base}/api/v1/alerts?state=resolved&sid={SID}", TOKEN)
    assert status == 200 and any(a["rule"] == "water_empty" for a in got["alerts"])
    tried = {a["delivery"] for a in messages(receiver, delivered=False)}
    assert messages(receiver) == []
    # A receiver that fails is not the hub failing (that is notify_failing's job).
    assert http_json(f"{base}/healthz")[0] == 200

    hub.kill()  # SIGKILL: no goodbye, deliveries left as they were
    receiver.status = 200
    hub = start_hub(procs, "hub-2", cfg, base)
    wait_until(lambda: kinds(receiver) == ["firing", "resolved"], 40,
               "both delivered after the restart", interval=0.2, on_fail=hub.tail)
    time.sleep(1.5)  # anything sent twice would show by now
    delivered = messages(receiver)
    assert [a["body"]["kind"] for a in delivered] == ["firing", "resolved"]
    assert len({a["body"]["alert"]["id"] for a in delivered}) == 1
    ids = [a["delivery"] for a in receiver.delivered()]
    assert len(ids) == len(set(ids)), "a delivery taken twice"
    # Retries carry the id of the first attempt: what failed is what arrived.
    assert tried <= {a["delivery"] for a in delivered}
    assert all(a["signed"] for a in receiver.attempts)
    # And the hub's outbox holds nothing undelivered, each row taken once.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(sa.select(notifications.c.id,
                                               notifications.c.delivered_ms)))
    finally:
        engine.dispose()
    assert rows and all(r.delivered_ms is not None for r in rows)
    assert sorted(r.id for r in rows) == sorted(ids)


# -- escalation and reminders on a moved clock -----------------------------------------------


def test_unacknowledged_it_escalates_and_reminds_until_acknowledged(
        tmp_path, broker_factory, station, receiver):
    broker = broker_factory()
    clock = ManualClock(time.time())
    data = hub_config(tmp_path, broker, receiver, 0, notifiers=("town", "manager"),
                      # Stations promise a State an hour apart here, so moving the
                      # hub's clock by an hour does not make this one silent.
                      timing={"heartbeat": "1h"})
    data["routes"] = [{"match": {"group": "chumen"}, "notify": ["town"],
                       "escalate": [{"after": "15m", "notify": ["manager"]}],
                       "remind_every": {"critical": "1h"}, "test_every": "off"}]
    hub = Hub(parse_hub_config(data), clock=clock, registry=CollectorRegistry())
    try:
        hub.start()
        s = station(broker)
        wait_until(lambda: (hub.fleet.get(SID) or None) and hub.fleet.get(SID).online, 10,
                   "the station online at the hub")
        s.water.drain()

        def told() -> list[tuple[str, str]]:
            return [(a["body"]["kind"], a["path"][1:]) for a in messages(receiver)]

        wait_until(lambda: told() == [("firing", "town")], 15, "the town told")
        clock.advance(14 * MIN)
        hub.route_alerts()
        time.sleep(0.5)
        assert told() == [("firing", "town")]
        clock.advance(1 * MIN)
        hub.route_alerts()
        wait_until(lambda: told()[1:] == [("escalated", "manager")], 10, "escalated")
        clock.advance(1 * 3600)
        hub.route_alerts()
        wait_until(lambda: told()[2:] == [("reminder", "manager")], 10, "a reminder")

        alert = next(a for a in hub.alerts.list(state="firing", sid=SID)
                     if a["rule"] == "water_empty")
        hub.alerts.ack(alert["id"], by="token:e2e")  # the engine tells the router
        wait_until(lambda: sorted(told()[3:]) == [("acked", "manager"), ("acked", "town")],
                   10, "the ack told to both tiers")
        clock.advance(3 * 3600)
        hub.route_alerts()
        s.water.refill()
        wait_until(lambda: sorted(told()[5:]) == [("resolved", "manager"),
                                                  ("resolved", "town")],
                   15, "the resolution told to both tiers")
        assert [k for k, _ in told()].count("reminder") == 1  # none once acknowledged
    finally:
        hub.close()


# -- the alert path's own health ------------------------------------------------------------


def test_a_sender_that_stopped_makes_the_hub_unhealthy(tmp_path, broker_factory, receiver):
    broker = broker_factory()
    clock = ManualClock(time.time())
    hub = Hub(parse_hub_config(hub_config(tmp_path, broker, receiver, 0)), clock=clock,
              registry=CollectorRegistry())
    try:
        hub.start()
        # Healthy, and the broker has acknowledged the hub's time beacon: the clock
        # jumps six minutes below, and an unanswered beacon would count as a stall.
        wait_until(lambda: hub.problems() == [] and hub.ingest.unacknowledged_since is None,
                   10, "a healthy hub")
        hub.outbox.close()  # its senders stop, as a hung thread would
        alert = hub.alerts.raise_alert("tamper", SID, "critical", "面板被打开",
                                       subject="locker_panel")
        hub.router.on_transition("firing", alert, None)
        assert hub.problems() == []  # due, but only just
        clock.advance(6 * MIN)
        assert hub.problems() == ["notification sender stuck: ops"]
        assert receiver.attempts == []  # nothing was even tried
    finally:
        hub.close()
