"""A real Prometheus scraping a real hub fed by real stations, with one outage.

``live_prometheus`` (module scope) starts, on a broker of its own:

* the ``yizhan hub`` program with four stations in two groups (``GROUPS``);
* one ``yizhan agent`` process per station on sim hardware, busy enough that
  counters move;
* Prometheus (Debian's binary) with the shipped deploy/prometheus configuration,
  only the target and the intervals changed (1 s, so seconds make data);

then stops ``OUTAGE_STATION``'s agent (a clean shutdown: the hub marks it down),
waits until Prometheus has scraped it down, starts it again and waits until
Prometheus sees it up. Bounded: well under 60 s of wall time.

Use it from a test module as ``live_prometheus = prometheus.live_prometheus``
(after ``from tests.harness import prometheus``), then::

    def test_x(live_prometheus):
        series = live_prometheus.query('group:yizhan_station_up:sum')
        [s["value"][1] for s in series]                   # values are strings

Interface (stable; engineer G's dashboard tests rely on it): ``url``,
``hub_url``, ``token``, ``groups``, ``outage_station``, ``outage_group``,
``outage`` (start, end: Unix seconds), ``query(expr, at=None)``,
``query_range(expr, start, end, step)``, ``alerts()``, ``stop_hub()``,
``wait_for(expr, timeout)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.mosquitto import Broker
from tests.harness.procs import Proc, Procs, free_port, http_json, wait_until, write_yaml
from yizhan import prometheus

#: group -> its stations; the outage is in the first group, the second stays up.
GROUPS = {
    "chumen": ("yh-chumen-01", "yh-chumen-02"),
    "kanmen": ("yh-kanmen-01", "yh-kanmen-02"),
}
OUTAGE_STATION, OUTAGE_GROUP = "yh-chumen-02", "chumen"
TOKEN = "live-prometheus-token-0123456789"
FLEET_KEY = b"live-prometheus-fleet-key-0123456"
#: Busy stations: borrows, returns, visits and water draws within seconds.
BUSY_SIM = {"borrows_per_hour": 3600, "riders_per_hour": 7200, "mean_loan": "5s",
            "draws_per_hour": 3600}
#: Seconds every station is up before the outage, and the outage's length:
#: several scrapes each, so rates over any window have two samples to go on.
UP_BEFORE, DOWN_FOR = 4.0, 4.0


@dataclass
class LivePrometheus:
    url: str
    hub_url: str
    token: str
    hub: Proc
    procs: Procs
    prom: subprocess.Popen
    prom_log: Path
    groups: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(GROUPS))
    outage_station: str = OUTAGE_STATION
    outage_group: str = OUTAGE_GROUP
    outage: tuple[float, float] = (0.0, 0.0)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query: the ``result`` list (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return prometheus.api(self.url, "query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0
                    ) -> list[dict]:
        """Range query: ``[{"metric": {...}, "values": [[t, "v"], ...]}]``."""
        return prometheus.api(self.url, "query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"})[
            "result"]

    def alerts(self) -> list[dict]:
        """Alerts pending or firing now (``/api/v1/alerts``)."""
        return prometheus.api(self.url, "alerts")["alerts"]

    def wait_for(self, expr: str, timeout: float = 10.0) -> list[dict]:
        """Poll ``expr`` until it returns series; fails with Prometheus's log tail."""
        return wait_until(lambda: self.query(expr), timeout, f"series for {expr}",
                          interval=0.25, on_fail=self.log_tail)

    def stop_hub(self) -> None:
        """Stop the hub (SIGTERM): its target goes down. Irreversible for the module."""
        self.hub.signal(signal.SIGTERM)
        self.hub.wait(15)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.prom_log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            lines = ["(no log)"]
        return "prometheus log:\n" + "\n".join(lines) + "\nhub log:\n" + self.hub.tail(20)


def _station_config(tmp: Path, broker: Broker, sid: str, key: Path) -> Path:
    return write_yaml(tmp / f"{sid}.yaml", {
        "hardware": "sim",
        "station": {"id": sid, "name": sid},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp / sid),
        "fleet_key_file": str(key),
        "local_api": {"host": "127.0.0.1", "port": 0},
        "sim": {**BUSY_SIM, "seed": sum(map(ord, sid))},
    })


def _hub_config(tmp: Path, broker: Broker, http_port: int, key: Path) -> Path:
    return write_yaml(tmp / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": http_port},
        "api_tokens": [{"name": "live-prometheus", "token": TOKEN, "scopes": ["read"]}],
        "fleet_key_file": str(key),
        "stations": [{"sid": sid, "name": sid, "group": group}
                     for group, sids in GROUPS.items() for sid in sids],
    })


def _up(live: LivePrometheus, sid: str, value: int) -> bool:
    return bool(live.query(f'yizhan_station_up{{station="{sid}"}} == {value}'))


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    binary = prometheus.find_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is required under CI (Debian package prometheus)",
                        pytrace=False)
        pytest.skip("prometheus is not installed (make system-deps installs it)")
    tmp = tmp_path_factory.mktemp("live-prometheus")
    broker = Broker(tmp / "broker").start()
    procs = Procs(tmp)
    prom = None
    try:
        key = tmp / "fleet.key"
        key.write_bytes(FLEET_KEY)
        http_port = free_port()
        hub = procs.start("hub", "hub", "--config", str(_hub_config(tmp, broker, http_port, key)))
        station_cfgs = {sid: _station_config(tmp, broker, sid, key)
                        for sids in GROUPS.values() for sid in sids}
        agents = {sid: procs.start(sid, "agent", "--config", str(cfg))
                  for sid, cfg in station_cfgs.items()}
        hub_url = f"http://127.0.0.1:{http_port}"

        prom_port = free_port()
        config = prometheus.local_config(f"127.0.0.1:{http_port}", interval="1s")
        prom_log = tmp / "prometheus.log"
        prom = prometheus.start(prometheus.write_config(config, tmp / "prometheus.yml"),
                                tmp / "tsdb", prom_port, prom_log, binary)
        live = LivePrometheus(url=f"http://127.0.0.1:{prom_port}", hub_url=hub_url,
                              token=TOKEN, hub=hub, procs=procs, prom=prom, prom_log=prom_log)
        if not prometheus.ready(live.url, 20, alive=lambda: prom.poll() is None):
            raise AssertionError(f"prometheus did not become ready\n{live.log_tail()}")

        def all_online() -> bool:
            status, body = http_json(f"{hub_url}/api/v1/stations", TOKEN)
            return status == 200 and sum(s["online"] for s in body["stations"]) == len(agents)

        wait_until(all_online, 20, "every station online in the hub", interval=0.2,
                   on_fail=lambda: hub.tail() + "\n" + agents[OUTAGE_STATION].tail())
        wait_until(lambda: len(live.query("yizhan_station_up == 1")) == len(agents), 10,
                   "every station scraped up", interval=0.2, on_fail=live.log_tail)
        time.sleep(UP_BEFORE)  # wall time is what Prometheus samples: data before the outage

        # The outage: a clean shutdown of one station, down for a few scrapes, then back.
        stopped_at = time.time()
        agents[OUTAGE_STATION].signal(signal.SIGTERM)
        agents[OUTAGE_STATION].wait(15)
        wait_until(lambda: _up(live, OUTAGE_STATION, 0), 10, "the outage scraped",
                   interval=0.2, on_fail=live.log_tail)
        time.sleep(DOWN_FOR)
        procs.start(f"{OUTAGE_STATION}-again", "agent", "--config",
                    str(station_cfgs[OUTAGE_STATION]))
        wait_until(lambda: _up(live, OUTAGE_STATION, 1), 20, "the station back up",
                   interval=0.2, on_fail=live.log_tail)
        live.outage = (stopped_at, time.time())
        yield live
    finally:
        prometheus.stop(prom)
        procs.close()
        broker.stop()
