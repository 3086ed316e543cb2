"""The hub's series for ops' dashboards and SLO rules (issue 15).

The hub in process on a ManualClock, on a real Mosquitto with the deployment's
ACL and settings (``secure_broker``, logged in as ``_hub``) and a real SQLite
file; stations publish with their own credentials. The scheduler's jobs that
matter here (the silence sweep, the ledger's proof of life) are called by hand
after the clock moves, as the scheduler would call them. Then a real
``yizhan hub`` process, whose ``/metrics`` ``promtool check metrics`` must pass.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.fleet.ledger import RunCoverage, tally
from hub.fleet.seconds import Account, accrue
from hub.http.uptime_metrics import UptimeCollector
from protocol import examples
from tests.conftest import SECURE_USERS
from tests.harness.mqtt import Subscriber, close, connect
from tests.harness.procs import Procs, advance_until, free_port, wait_until, write_yaml
from tests.test_forecast import START, WaterStation
from tests.test_hub_ingest import make_hub  # noqa: F401  (the fixture)
from yizhan.clock import SYSTEM_CLOCK, Clock, ManualClock

SID = examples.SID  # yh-chumen-01: has broker credentials
NAME = "楚门镇先锋驿站"
HUB_MQTT = {"username": "_hub", "password": SECURE_USERS["_hub"]}
STATIONS = [{"sid": SID, "name": NAME, "group": "chumen"}]
TOKEN = "slo-metrics-token-0123456789"
TOKENS = [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}]
STATES = ("up", "down", "unknown", "maintenance")
PROMTOOL = "/usr/bin/promtool"


# -- the accounts: the ledger's own arithmetic, counted forward ---------------------------


@pytest.mark.parametrize("seed", range(40))
def test_accounts_counted_in_steps_equal_the_ledgers_tally(seed: int) -> None:
    """However the span is cut into scrapes, the account ends where ``tally``
    (which the availability ratio and the uptime API use) says."""
    rng = random.Random(seed)
    t, points = 0, []
    for _ in range(rng.randint(1, 15)):
        t += rng.randint(1, 5_000)
        points.append((t, rng.choice(("up", "down", "unknown"))))
    at, switches = 0, []
    for _ in range(rng.randint(0, 6)):
        at += rng.randint(1, 10_000)
        switches.append((at, rng.random() < 0.5))
    runs = [(0, None)] if seed % 2 else [(0, 7_000), (9_000, 20_000), (26_000, None)]
    origin = min(p[0] for p in points + switches)
    end = max(t, at) + rng.randint(0, 10_000)
    coverage = RunCoverage(runs, end)
    account = Account(origin)
    seen = []
    for cut in [*sorted(rng.sample(range(origin, end + 1), min(8, end - origin))), end]:
        accrue(account, points, switches, coverage, cut)
        seen.append(list(account.ms))
    u = tally(points, origin, end, runs=runs, maintenance=switches, now_ms=end)
    assert account.ms == [u.up_ms, u.down_ms, u.unknown_ms, u.maintenance_ms]
    assert sum(account.ms) == end - origin
    assert all(a <= b for before, after in itertools.pairwise(seen)
               for a, b in zip(before, after, strict=True))


def test_an_account_never_goes_back() -> None:
    account = Account(1_000)
    coverage = RunCoverage([(0, None)], 10_000)
    accrue(account, [(1_000, "up")], [], coverage, 5_000)
    accrue(account, [(1_000, "up")], [], coverage, 3_000)  # a clock that stepped back
    assert account.at_ms == 5_000 and account.ms == [4_000, 0, 0, 0]


# -- the hub in process ----------------------------------------------------------------


class Station:
    """Station ``SID`` on the broker with its own credentials, dating what it
    sends by the hub's clock (a synced station)."""

    def __init__(self, broker: Any, clock: Clock) -> None:
        self.clock = clock
        self.client = connect(broker, username=SID, password=SECURE_USERS[SID])
        self.rev = 6000

    def send(self, kind: str, **changes: Any) -> None:
        doc = examples.example(kind)
        self.rev += 1
        doc.update(ts=self.clock.ms(), rev=self.rev, **changes)
        if kind == "status":
            doc["birth"] = self.rev
        self.client.publish(f"yizhan/v1/{SID}/{kind}", json.dumps(doc).encode(),
                            qos=1).wait_for_publish(5)

    def close(self) -> None:
        close(self.client)


def scrape(hub: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The hub's ``/metrics`` as served, parsed: {(sample name, labels): value}.

    The fleet hands the ledger its change points through the writer: flushed
    first, so the scrape sees every change made so far."""
    hub.writer.flush()
    text = hub.app.test_client().get("/metrics").get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def seconds(metrics: dict, sid: str = SID) -> dict[str, float]:
    return {state: metrics[("yizhan_station_seconds_total",
                            (("state", state), ("station", sid)))] for state in STATES}


def outages(metrics: dict, sid: str = SID) -> float:
    return metrics[("yizhan_station_outages_total", (("station", sid),))]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def in_process_hub(make: Any, broker: Any, clock: ManualClock) -> Any:
    """A started hub whose silence sweep and proof of life only the test runs
    (the scheduler would run them every 5 and 10 s of real time, whenever)."""
    hub = make(broker, clock=clock, mqtt=HUB_MQTT, stations=STATIONS, api_tokens=TOKENS)
    for job in ("sweep", "alive"):
        hub.scheduler.pause_job(job)
    return hub


@pytest.fixture
def hub(make_hub, secure_broker, clock):  # noqa: F811
    return in_process_hub(make_hub, secure_broker, clock)


@pytest.fixture
def station(secure_broker, clock):
    s = Station(secure_broker, clock)
    yield s
    s.close()


def online(hub: Any) -> bool:
    view = hub.fleet.get(SID)
    return view is not None and view.online


def test_station_seconds_add_up_move_with_the_clock_and_count_an_outage(
        hub, station, clock, make_hub, secure_broker) -> None:  # noqa: F811
    m = scrape(hub)
    assert m[("yizhan_station_info", (("group", "chumen"), ("name", NAME),
                                      ("station", SID)))] == 1
    assert seconds(m) == dict.fromkeys(STATES, 0.0)  # configured, never heard: zeros
    station.send("status")
    wait_until(lambda: online(hub), 10, "the station online at the hub")
    born = clock.ms()

    clock.advance(45)
    station.send("state")  # heard 45 s after its birth
    wait_until(lambda: hub.fleet.get(SID).last_seen_ms == clock.ms(), 10, "the State heard")
    clock.advance(5)
    hub.alive()
    m = scrape(hub)
    # Counted as up only until it was last heard: had it gone silent, it would be
    # down from then on, and counted seconds are never taken back.
    assert seconds(m) == {"up": 45.0, "down": 0.0, "unknown": 0.0, "maintenance": 0.0}
    assert outages(m) == 0

    # Silent past 3 heartbeats of 60 s: the sweep marks it down from its last word.
    clock.advance(600)
    hub.sweep()
    assert not online(hub)
    hub.alive()
    m = scrape(hub)
    assert seconds(m) == {"up": 45.0, "down": 605.0, "unknown": 0.0, "maintenance": 0.0}
    assert sum(seconds(m).values()) == (clock.ms() - born) / 1000
    assert outages(m) == 1

    # The counters agree with the availability the ledger reports (the 24 h window
    # holds the station's whole life, and the hub ran all of it).
    ratio = m[("yizhan_station_availability_ratio", (("station", SID), ("window", "24h")))]
    assert ratio == pytest.approx(45 / (45 + 605))
    hub.writer.flush()
    u = hub.ledger.uptime(SID, born, clock.ms())
    assert (u.up_s, u.down_s, u.unknown_s) == (45.0, 605.0, 0.0)

    # Back: up again, one outage still; the proof of life caps what is counted.
    station.send("status")
    wait_until(lambda: online(hub), 10, "the station back online")
    clock.advance(30)
    station.send("state")
    wait_until(lambda: hub.fleet.get(SID).last_seen_ms == clock.ms(), 10, "the State heard")
    before_alive = seconds(scrape(hub))
    assert before_alive["up"] == 45.0  # nothing past the last proof of life
    hub.alive()
    after = seconds(scrape(hub))
    assert after == {"up": 75.0, "down": 605.0, "unknown": 0.0, "maintenance": 0.0}
    assert outages(scrape(hub)) == 1

    # A restart 31 days later continues from the stored history (older than the
    # ledger keeps in memory): every value where this process left it...
    hub.close()
    clock.advance(31 * 86400)
    again = in_process_hub(make_hub, secure_broker, clock)
    again.alive()
    assert seconds(scrape(again)) == after
    # ...until the new hub, having listened 3 heartbeats, finds the station
    # silent: down from its last word, the hub's absence unknown.
    clock.advance(200)
    again.sweep()
    again.alive()
    m = scrape(again)
    assert seconds(m) == {"up": 75.0, "down": 605.0 + 200, "unknown": 31 * 86400.0,
                          "maintenance": 0.0}
    assert outages(m) == 2


def dispenser(level: float, level_state: str) -> dict:
    d = examples.example("state")["dispenser"]
    d.update(level=level, level_state=level_state)
    return d


def test_a_dry_tank_refilled_is_observed_in_the_alert_duration_histogram(
        hub, station, clock) -> None:
    station.send("status")
    wait_until(lambda: online(hub), 10, "the station online at the hub")
    station.send("state", dispenser=dispenser(0.02, "empty"))
    wait_until(lambda: hub.alerts.firing_counts().get((SID, "water_empty", "critical")),
               10, "water_empty firing")
    # Observed when resolved, not before; but there from the start, at 0, so that
    # increase() over the first resolution counts it.
    before = scrape(hub)
    assert before[("yizhan_alert_duration_seconds_count", (("rule", "water_empty"),))] == 0
    assert before[("yizhan_alert_duration_seconds_bucket",
                   (("le", "+Inf"), ("rule", "water_empty")))] == 0
    assert before[("yizhan_alert_duration_seconds_count", (("rule", "notify_failing"),))] == 0

    clock.advance(20 * 60)  # staff refill it 20 minutes later
    station.send("state", dispenser=dispenser(0.95, "ok"))
    wait_until(lambda: not hub.alerts.firing_counts().get((SID, "water_empty", "critical")),
               10, "water_empty resolved by the engine")
    m = scrape(hub)
    rule = ("rule", "water_empty")
    assert m[("yizhan_alert_duration_seconds_count", (rule,))] == 1
    assert m[("yizhan_alert_duration_seconds_sum", (rule,))] == pytest.approx(1200, abs=2)
    assert m[("yizhan_alert_duration_seconds_bucket", (("le", "900.0"), rule))] == 0
    assert m[("yizhan_alert_duration_seconds_bucket", (("le", "1800.0"), rule))] == 1
    assert m[("yizhan_alert_duration_seconds_bucket", (("le", "+Inf"), rule))] == 1


def test_an_alert_resolved_by_hand_through_the_api_is_observed(hub, clock) -> None:
    fired = hub.alerts.fire("door_open_too_long", SID, "warning", "door open")
    clock.advance(3 * 3600)
    client = hub.app.test_client()
    answer = client.post(f"/api/v1/alerts/{fired.alert['id']}/resolve",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.get_json()
    # Resolving it again changes nothing, and is not observed twice.
    client.post(f"/api/v1/alerts/{fired.alert['id']}/resolve",
                headers={"Authorization": f"Bearer {TOKEN}"})
    m = scrape(hub)
    rule = ("rule", "door_open_too_long")
    assert m[("yizhan_alert_duration_seconds_count", (rule,))] == 1
    assert m[("yizhan_alert_duration_seconds_sum", (rule,))] == 3 * 3600
    assert m[("yizhan_alert_duration_seconds_bucket", (("le", "7200.0"), rule))] == 0
    assert m[("yizhan_alert_duration_seconds_bucket", (("le", "14400.0"), rule))] == 1


def test_predicted_empty_appears_once_the_forecaster_has_a_forecast(hub, station, clock) -> None:
    station.send("status")
    wait_until(lambda: online(hub), 10, "the station online at the hub")
    empty = ("yizhan_station_predicted_empty_seconds", (("station", SID), ("supply", "water")))
    assert empty not in scrape(hub)  # no history: no forecast, no series (not 0)

    # A day of the tank draining at known hourly rates, learned by the hub's
    # forecaster (tests/test_forecast.py's simulated tank), then a State on the wire.
    tank = WaterStation(clock, hub.forecaster)
    tank.run(24)
    station.send("state", dispenser=dispenser(round(tank.level, 3), "ok"))
    wait_until(lambda: hub.fleet.get(SID).last_seen_ms == clock.ms(), 10, "the State heard")
    hub.sweep()
    assert online(hub)
    m = scrape(hub)
    forecast = hub.forecaster.time_to_empty(SID, "water")
    assert forecast is not None and forecast > 0
    assert m[empty] == pytest.approx(forecast)
    chargers = ("yizhan_station_predicted_empty_seconds", (("station", SID),
                                                            ("supply", "chargers")))
    assert chargers not in m  # no borrowing learned: no forecast

    # Within a minute the forecast is not asked again, only counted down.
    clock.advance(30)
    assert scrape(hub)[empty] == pytest.approx(forecast - 30)


def test_the_broker_counters_come_from_sys_only_for_the_hub(hub, secure_broker) -> None:
    """Mosquitto publishes $SYS every sys_interval (10 s, the deployment's);
    the hub, allowed by the deployed ACL, shows three of its counters."""
    names = ("yizhan_broker_clients_connected", "yizhan_broker_messages_received_total",
             "yizhan_broker_messages_dropped_total")

    def present() -> bool:
        m = scrape(hub)
        return all((n, ()) in m for n in names)

    wait_until(present, 25, "the broker's $SYS counters at the hub")
    # Connected: the hub at least (once a sys_interval has passed since it came).
    wait_until(lambda: scrape(hub)[(names[0], ())] >= 1, 25, "the hub counted as connected")
    assert scrape(hub)[(names[1], ())] >= 1
    # A station may subscribe, but the ACL gives it nothing under $SYS, for a
    # whole sys_interval and more, while the hub hears them.
    with Subscriber(secure_broker, "$SYS/#", qos=0, username=SID,
                    password=SECURE_USERS[SID], require_granted=False) as sub, \
            Subscriber(secure_broker, "$SYS/broker/messages/received", qos=0,
                       username="_hub", password=SECURE_USERS["_hub"]) as hub_user:
        hub_user.wait_for(lambda msg: not msg.retain, timeout=15)
        assert sub.messages == []


def test_sys_payloads_are_untrusted(hub) -> None:
    stats = hub.ingest.broker_stats
    topic = "$SYS/broker/clients/connected"
    assert stats.take(topic, b"17")
    for bad in (b"", b"-1", b"\xd9\xa3", "٣".encode(), b"1" * 16, b"12" * 40, b"1e9",
                b"nan", b"{}", b" 3 4"):
        assert not stats.take(topic, bad), bad
    assert not stats.take("$SYS/broker/uptime", b"5")  # not one of ours
    assert stats.value(topic) == 17
    assert scrape(hub)[("yizhan_broker_clients_connected", ())] == 17


def test_hub_healthy_is_the_healthz_judgement(hub, secure_broker, clock) -> None:
    client = hub.app.test_client()
    assert client.get("/healthz").status_code == 200
    assert scrape(hub)[("yizhan_hub_healthy", ())] == 1
    secure_broker.stop()
    wait_until(lambda: client.get("/healthz").status_code == 503, 10, "/healthz 503")
    assert scrape(hub)[("yizhan_hub_healthy", ())] == 0
    secure_broker.start()
    # The hub's reconnects are paced on its clock: moved on until it is back.
    advance_until(clock, lambda: client.get("/healthz").status_code == 200, "/healthz 200",
                  step=1.0, limit=120, settle=0.05)
    assert scrape(hub)[("yizhan_hub_healthy", ())] == 1



#: Issue 15's names, types and label sets, as the dashboards and rules use them.
PLAN = {
    "yizhan_station_info": ("gauge", {("group", "name", "station")}),
    "yizhan_station_seconds": ("counter", {("state", "station")}),
    "yizhan_station_outages": ("counter", {("station",)}),
    "yizhan_station_predicted_empty_seconds": ("gauge", {("station", "supply")}),
    "yizhan_alert_duration_seconds": ("histogram", {("le", "rule")}),
    "yizhan_hub_healthy": ("gauge", {()}),
    "yizhan_hub_leader": ("gauge", {()}),  # issue 21: 1 on the worker that leads
    "yizhan_broker_clients_connected": ("gauge", {()}),
    "yizhan_broker_messages_received": ("counter", {()}),
    "yizhan_broker_messages_dropped": ("counter", {()}),
}


def test_names_types_and_labels_are_the_plans(hub, station, clock) -> None:
    station.send("status")
    wait_until(lambda: online(hub), 10, "the station online at the hub")
    tank = WaterStation(clock, hub.forecaster)
    tank.run(24)
    station.send("state", dispenser=dispenser(round(tank.level, 3), "ok"))
    wait_until(lambda: hub.fleet.get(SID).last_seen_ms == clock.ms(), 10, "the State heard")
    hub.alerts.resolve(hub.alerts.fire("tamper", SID, "critical", "tamper").alert["id"], None)
    for topic in ("$SYS/broker/clients/connected", "$SYS/broker/messages/received",
                  "$SYS/broker/publish/messages/dropped"):
        hub.ingest.broker_stats.take(topic, b"3")
    hub.writer.flush()
    text = hub.app.test_client().get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text) if f.name in PLAN}
    assert {n: (f.type, {tuple(sorted(s.labels)) for s in f.samples
                         if not s.name.endswith(("_sum", "_count")) or f.type != "histogram"})
            for n, f in families.items()} == PLAN
    assert {s.labels["state"] for s in families["yizhan_station_seconds"].samples} == set(STATES)
    buckets = [s.labels["le"] for s in families["yizhan_alert_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["rule"] == "tamper"]
    assert buckets == ["60.0", "300.0", "900.0", "1800.0", "3600.0", "7200.0", "14400.0",
                       "43200.0", "86400.0", "259200.0", "+Inf"]


def test_describe_reads_nothing_of_a_half_built_hub() -> None:
    class Empty:  # register() calls describe() while the hub is being built
        pass

    described = list(UptimeCollector(Empty()).describe())
    assert {f.name for f in described} == {n for n in PLAN if not n.startswith(
        ("yizhan_alert_", "yizhan_broker_"))}
    assert all(not f.samples for f in described)


# -- a real hub process: promtool reads its /metrics ---------------------------------------


@pytest.fixture
def procs(tmp_path) -> Any:
    p = Procs(tmp_path)
    yield p
    p.close()


def metrics_text(base: str) -> bytes:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        return answer.read()


def families_of(text: bytes) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def start_hub_process(tmp_path, broker, procs, name: str = "hub", port: int = 0) -> Any:
    """``yizhan hub`` on ``broker`` as ``_hub``, SQLite in ``tmp_path``; (proc, base URL)."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, **HUB_MQTT},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": port},
        "api_tokens": TOKENS,
        "stations": STATIONS,
    })
    hub = procs.start(name, "hub", "--config", str(cfg))
    wait_until(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200,
               20, "the hub's /healthz", on_fail=hub.tail)
    return hub, base


def seconds_of(base: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics_text(base).decode()):
        for s in family.samples:
            if s.name == "yizhan_station_seconds_total" and s.labels["station"] == SID:
                out[s.labels["state"]] = s.value
    return out


def test_a_hub_killed_and_restarted_never_shows_less(tmp_path, secure_broker, procs) -> None:
    """SIGKILL: no goodbye, the run's end is its last proof of life (every 10 s).
    The next process counts from the stored history and must start at or above
    every value the killed one showed, or Prometheus would see a counter reset
    and count the whole value again."""
    hub, base = start_hub_process(tmp_path, secure_broker, procs)
    station = Station(secure_broker, SYSTEM_CLOCK)
    try:
        station.send("status")
        shown = {}
        deadline = time.monotonic() + 13  # past the hub's first proof of life
        while time.monotonic() < deadline:
            station.send("state")
            shown = seconds_of(base)
            time.sleep(0.5)
        assert shown["up"] > 5
        hub.kill()
        _, base = start_hub_process(tmp_path, secure_broker, procs, "hub-2",
                                    int(base.rsplit(":", 1)[1]))
        after = seconds_of(base)
        assert all(after[s] >= shown[s] for s in STATES), (shown, after)
    finally:
        station.close()


@pytest.mark.skipif(not shutil.which(PROMTOOL), reason="promtool is not installed")
def test_promtool_finds_the_real_hubs_metrics_clean(tmp_path, secure_broker, procs) -> None:
    hub, base = start_hub_process(tmp_path, secure_broker, procs)
    station = Station(secure_broker, SYSTEM_CLOCK)
    try:
        station.send("status")
        station.send("state", dispenser=dispenser(0.02, "empty"))
        wait_until(lambda: b'yizhan_alerts_firing{' in metrics_text(base), 20,
                   "water_empty firing", on_fail=hub.tail)
        station.send("state", dispenser=dispenser(0.95, "ok"))
        wait_until(lambda: b"yizhan_alert_duration_seconds_count" in metrics_text(base), 20,
                   "water_empty resolved", on_fail=hub.tail)
    finally:
        station.close()
    wanted = {"yizhan_station_info", "yizhan_station_seconds_total",
              "yizhan_station_outages_total", "yizhan_alert_duration_seconds_bucket",
              "yizhan_hub_healthy", "yizhan_broker_clients_connected",
              "yizhan_broker_messages_received_total", "yizhan_broker_messages_dropped_total",
              "yizhan_station_up", "yizhan_station_availability_ratio",
              "yizhan_hub_messages_total", "yizhan_hub_ingest_lag_seconds_bucket"}
    # $SYS arrives within a sys_interval (10 s) of the hub's subscription.
    wait_until(lambda: wanted <= families_of(metrics_text(base)), 25,
               "every family on /metrics", on_fail=lambda: sorted(
                   wanted - families_of(metrics_text(base))))
    text = metrics_text(base)
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           timeout=30)
    assert check.returncode == 0 and not check.stdout and not check.stderr, (
        check.stdout.decode() + check.stderr.decode())
