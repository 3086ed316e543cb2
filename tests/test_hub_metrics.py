"""The fleet's Prometheus metrics (contract §12): names, labels, values, and gaps.

Read twice: through a fresh ``CollectorRegistry`` with ``get_sample_value`` (the
hub registers ``FleetCollector`` on its own registry), and by a real Prometheus
scraping the hub's ``/metrics`` over loopback and answering a query.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from waitress.server import create_server

from hub.http.metrics import FleetCollector
from tests.harness.procs import free_port
from tests.test_hub_api import SID, SQLITE_ONLY, Api, StandInHub, bring_online, hub_factory

OTHER = "yh-other"
FAMILIES = {
    "yizhan_station_up": "gauge",
    "yizhan_station_availability_ratio": "gauge",
    "yizhan_station_last_seen_timestamp_seconds": "gauge",
    "yizhan_power_banks": "gauge",
    "yizhan_power_banks_estimated": "gauge",
    "yizhan_locker_slots_empty": "gauge",
    "yizhan_water_level_ratio": "gauge",
    "yizhan_water_temperature_celsius": "gauge",
    "yizhan_door_open": "gauge",
    "yizhan_borrows": "counter",
    "yizhan_returns": "counter",
    "yizhan_visits": "counter",
    "yizhan_alerts_firing": "gauge",
}


def slot(n: int, bank: str | None, charge: int | None = None, fault: str | None = None) -> dict:
    return {"slot": n, "bank": bank, "charge": charge, "charging": False, "locked": True,
            "fault": fault, "temp_c": 30 if bank else None, "cycles": 10 if bank else None}


SLOTS = [
    slot(1, "PB0001", 96),                    # ready
    slot(2, "PB0002", 50),                    # charging
    slot(3, "PB0003", 90, fault="overheat"),  # faulty, though charged
    slot(4, None),                            # empty
    slot(5, None, fault="lock_jammed"),       # empty, and the lock is at fault
    slot(6, "PB0006", None),                  # charge unknown: charging
    slot(7, "PB0007", 80),                    # ready: the threshold itself counts
]


def full_station(state: dict) -> None:
    state["lockers"]["slots"] = SLOTS
    state["doors"] = {"entrance": False, "locker_panel": True}


def value(hub: StandInHub, name: str, **labels: str) -> float | None:
    return hub.registry.get_sample_value(name, labels)


@pytest.fixture
def make_hub(database_url: str, broker: Any) -> Iterator[Callable[..., StandInHub]]:
    with hub_factory(database_url, broker) as make:
        yield make


@pytest.fixture
def hub(make_hub: Callable[..., StandInHub]) -> StandInHub:
    return make_hub()


def test_a_station_in_full(hub: StandInHub) -> None:
    bring_online(hub, change=full_station)
    st = {"station": SID}
    assert value(hub, "yizhan_station_up", **st) == 1.0
    assert value(hub, "yizhan_station_last_seen_timestamp_seconds", **st) == hub.clock.now()
    banks = {s: value(hub, "yizhan_power_banks", station=SID, state=s)
             for s in ("ready", "charging", "faulty")}
    assert banks == {"ready": 2.0, "charging": 2.0, "faulty": 1.0}
    assert sum(banks.values()) == sum(1 for s in SLOTS if s["bank"])  # each bank once
    assert value(hub, "yizhan_locker_slots_empty", **st) == 2.0
    assert value(hub, "yizhan_water_level_ratio", **st) == 0.62
    assert value(hub, "yizhan_water_temperature_celsius", **st) == 92.5
    assert value(hub, "yizhan_door_open", station=SID, door="entrance") == 0.0
    assert value(hub, "yizhan_door_open", station=SID, door="locker_panel") == 1.0
    assert value(hub, "yizhan_borrows_total", **st) == 560.0
    assert value(hub, "yizhan_returns_total", **st) == 555.0
    assert value(hub, "yizhan_visits_total", **st) == 1234.0


def test_the_api_counts_chargers_as_the_metric_does(hub: StandInHub) -> None:
    bring_online(hub, change=full_station)
    stations = Api(hub.app).get("/api/v1/stations").get_json()["stations"]
    ours = next(s for s in stations if s["sid"] == SID)
    assert ours["chargers_ready"] == value(hub, "yizhan_power_banks", station=SID,
                                           state="ready") == 2
    assert ours["chargers_ready"] == hub.fleet.get(SID).chargers_ready(80)


def test_estimated_banks_count_as_banks_and_the_metric_says_they_are_estimated(
        hub: StandInHub) -> None:
    # A lock-control cabinet: no bank ids; charge is the station's estimate, null
    # exactly when the slot is empty (contract §5).
    def lock_boards(state: dict) -> None:
        state["lockers"]["slots"] = [
            {**slot(1, None, 100), "estimated": True},              # ready
            {**slot(2, None, 30), "charging": True, "estimated": True},  # charging
            {**slot(3, None, None), "estimated": True},             # empty
            {**slot(4, None, 90, fault="comm"), "estimated": True},  # faulty
        ]

    bring_online(hub, change=lock_boards)
    st = {"station": SID}
    banks = {s: value(hub, "yizhan_power_banks", station=SID, state=s)
             for s in ("ready", "charging", "faulty")}
    assert banks == {"ready": 1.0, "charging": 1.0, "faulty": 1.0}
    assert value(hub, "yizhan_power_banks_estimated", **st) == 3.0
    assert value(hub, "yizhan_locker_slots_empty", **st) == 1.0
    stations = Api(hub.app).get("/api/v1/stations").get_json()["stations"]
    assert next(s for s in stations if s["sid"] == SID)["chargers_ready"] == 1
    assert hub.fleet.get(SID).chargers_ready(80) == 1


def test_measured_banks_are_not_counted_as_estimated(hub: StandInHub) -> None:
    bring_online(hub, change=full_station)
    assert value(hub, "yizhan_power_banks_estimated", station=SID) == 0.0


@SQLITE_ONLY
def test_the_lending_threshold_comes_from_the_config(make_hub: Callable[..., StandInHub]) -> None:
    hub = make_hub(min_charge=95)
    bring_online(hub, change=full_station)
    banks = {s: value(hub, "yizhan_power_banks", station=SID, state=s)
             for s in ("ready", "charging", "faulty")}
    assert banks == {"ready": 1.0, "charging": 3.0, "faulty": 1.0}


def test_unknown_values_are_left_out_not_zero(hub: StandInHub) -> None:
    def float_switches_only(state: dict) -> None:
        state["dispenser"].update(level=None, temp_c=None, level_state="ok")
        del state["lockers"]

    bring_online(hub, change=float_switches_only)
    st = {"station": SID}
    for name in ("yizhan_water_level_ratio", "yizhan_water_temperature_celsius",
                 "yizhan_locker_slots_empty"):
        assert value(hub, name, **st) is None, name
    for s in ("ready", "charging", "faulty"):
        assert value(hub, "yizhan_power_banks", station=SID, state=s) is None
    assert value(hub, "yizhan_borrows_total", **st) == 560.0  # the rest is there

    # A station configured but never heard from: down, and nothing else is known.
    assert value(hub, "yizhan_station_up", station=OTHER) == 0.0
    text = generate_latest(hub.registry).decode()
    assert [line for line in text.splitlines()
            if f'station="{OTHER}"' in line] == [f'yizhan_station_up{{station="{OTHER}"}} 0.0']


def test_availability_from_the_ledger(hub: StandInHub) -> None:
    t0 = hub.clock.ms()
    hub.ledger.mark(SID, "station", "up", t0)
    hub.ledger.mark(SID, "station", "down", t0 + 45 * 60_000)
    hub.clock.advance(3600)
    hub.ledger.refresh(hub.clock.ms())
    for window in ("24h", "7d", "30d"):
        # 45 min up, 15 min down; the hub's time before t0 is unknown, not counted.
        assert value(hub, "yizhan_station_availability_ratio", station=SID,
                     window=window) == 0.75
        assert value(hub, "yizhan_station_availability_ratio", station=OTHER,
                     window=window) is None


def test_alerts_firing_counts_what_is_not_resolved(hub: StandInHub) -> None:
    hub.alerts.raise_alert("door_open_too_long", SID, "warning", "door", subject="entrance")
    hub.alerts.raise_alert("door_open_too_long", SID, "warning", "door", subject="locker_panel")
    acked = hub.alerts.raise_alert("tamper", SID, "critical", "tamper")
    hub.alerts.ack(acked["id"], by="test")
    gone = hub.alerts.raise_alert("water_low", OTHER, "warning", "low")
    hub.alerts.resolve(gone["id"], by="test")
    assert value(hub, "yizhan_alerts_firing", station=SID, rule="door_open_too_long",
                 severity="warning") == 2.0
    assert value(hub, "yizhan_alerts_firing", station=SID, rule="tamper",
                 severity="critical") == 1.0
    assert value(hub, "yizhan_alerts_firing", station=OTHER, rule="water_low",
                 severity="warning") is None


def test_names_types_and_labels_are_the_contracts(hub: StandInHub) -> None:
    bring_online(hub, change=full_station)
    hub.ledger.mark(SID, "station", "up", hub.clock.ms())
    hub.alerts.raise_alert("water_low", SID, "warning", "low")
    hub.clock.advance(60)
    hub.ledger.refresh(hub.clock.ms())
    text = generate_latest(hub.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)
                if f.name.startswith("yizhan_") and not f.name.startswith("yizhan_hub_")}
    assert {n: f.type for n, f in families.items()} == FAMILIES
    labels = {n: {tuple(sorted(s.labels)) for s in f.samples} for n, f in families.items()}
    assert labels["yizhan_station_availability_ratio"] == {("station", "window")}
    assert labels["yizhan_power_banks"] == {("state", "station")}
    assert labels["yizhan_door_open"] == {("door", "station")}
    assert labels["yizhan_alerts_firing"] == {("rule", "severity", "station")}
    for name in ("yizhan_station_up", "yizhan_borrows", "yizhan_water_level_ratio"):
        assert labels[name] == {("station",)}
    assert "yizhan_borrows_total{" in text


def test_describe_names_every_family_without_reading_the_fleet() -> None:
    class Empty:  # describe() must not touch the hub: it runs while the hub is built
        pass

    described = list(FleetCollector(Empty()).describe())
    assert {f.name: f.type for f in described} == FAMILIES
    assert all(not f.samples for f in described)


@SQLITE_ONLY
def test_a_scrape_survives_a_broken_alert_store(hub: StandInHub,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bring_online(hub)

    def broken() -> dict:
        raise RuntimeError("database gone")

    monkeypatch.setattr(hub.alerts, "firing_counts", broken)
    assert value(hub, "yizhan_station_up", station=SID) == 1.0


# -- a real Prometheus -------------------------------------------------------------------


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path is None:
        reason = "no prometheus binary (apt-get install prometheus; make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: required under CI", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def served(hub: StandInHub) -> Iterator[str]:
    """The hub's app on a loopback port, as ``Hub.serve`` runs it; its host:port."""
    server = create_server(hub.app, host="127.0.0.1", port=0, threads=2,
                           asyncore_loop_timeout=0.1)
    closed = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:  # close() pulls the socket from under select(), as in Hub.stop
            if not closed.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.effective_port}"
    closed.set()
    server.close()
    thread.join(5)


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=2) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


@SQLITE_ONLY
def test_a_real_prometheus_scrapes_the_hub(hub: StandInHub, served: str,
                                           tmp_path: Path) -> None:
    binary = prometheus_binary()
    bring_online(hub, change=full_station)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 250ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: yizhan-hub\n"
        f"    static_configs: [{{targets: ['{served}']}}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        result: list[dict] = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                result = query(base, "yizhan_station_up")
            except OSError:
                result = []  # not listening yet
            if any(r["metric"].get("station") == SID for r in result):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = {r["metric"]["station"]: r["value"][1] for r in result}
        assert up == {SID: "1", OTHER: "0"}, (tmp_path / "prometheus.log").read_text()[-2000:]
        ready = query(base, f'yizhan_power_banks{{station="{SID}",state="ready"}}')
        assert [r["value"][1] for r in ready] == ["2"]
        assert query(base, 'up{job="yizhan-hub"}')[0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
