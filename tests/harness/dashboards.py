"""The live Prometheus run of tests/harness/prometheus.py, busy enough for every
dashboard panel: water that runs low and is refilled, alerts that fire and resolve.

``dashboard_prometheus`` (module scope) is ``live_prometheus``'s hub, stations,
outage and Prometheus (the same configuration files, amended), plus:

* every station has a level sensor (an MCP3008 channel, not float switches), so
  ``yizhan_water_level_ratio`` exists, and its "low" mark just below the simulated
  tank's starting 90 %: riders' draws make it low within seconds;
* staff refill a low tank after ``REFILL_AFTER`` (the simulator's ``auto_refill``),
  except at ``KEEPS_LOW``: its tank reads low from the start and nobody comes, and
  its riders keep the banks for an hour, so its water and charger alerts are open
  at the end (as some alert is on any real morning) and the forecaster predicts
  both empty now (it needs no history for a tank at its empty mark, nor for a
  locker without a ready bank);
* ``station_offline`` fires after 1 s instead of 2 min (the hub's ``rules:``), so the
  short outage raises and resolves one.

``deploy/grafana/render_pictures.py`` draws its pictures from the same run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import prometheus as live
from tests.harness.mosquitto import Broker
from tests.harness.procs import Procs, free_port, http_json, wait_until
from yizhan import prometheus

REFILL_AFTER = "3s"
#: In the outage's group, but not the outage station (a restart starts its
#: simulated locker and tank afresh).
KEEPS_LOW = "yh-chumen-01"
#: The simulated tank starts 90 % full: "low" at 89 % is a few cups away.
LEVEL_SENSOR = {"type": "mcp3008", "channel": 0, "low": 0.89, "empty": 0.05,
                "clear_margin": 0.05}
#: What the run waits for (each at most its seconds) before its outage, so the
#: panels about refills, alerts and forecasts have something to show. A forecast
#: is asked once a minute (hub/http/uptime_metrics.py FORECAST_TTL_MS): the
#: first, before any bank was out, said nothing.
SETTLE = (('yizhan_alerts_firing{rule="water_low"}', 20.0),
          # What the "Time from alert to refill" panel needs: a resolution inside
          # the range, not only a count (an alert resolved before Prometheus's
          # first scrape of the hub would be a count no increase() sees).
          ('increase(yizhan_alert_duration_seconds_count{rule="water_low"}[7d]) > 0', 20.0),
          (f'yizhan_station_predicted_empty_seconds{{station="{KEEPS_LOW}", '
           'supply="chargers"}', 75.0),
          (f'yizhan_station_predicted_empty_seconds{{station="{KEEPS_LOW}", '
           'supply="water"}', 30.0))
#: The names the hub knows them by (yizhan_station_info{name}), as in a real town.
NAMES = {"yh-chumen-01": "楚门镇先锋驿站", "yh-chumen-02": "楚门镇车站驿站",
         "yh-kanmen-01": "坎门街道渔港驿站", "yh-kanmen-02": "坎门街道东山驿站"}
#: The run's Prometheus scrapes every second; Grafana's $__rate_interval is
#: max($__interval + scrape interval, 4 × scrape interval).
SCRAPE_S = 1.0
STEP_S = 1.0


def grafana_values(start: float, end: float, group: str | None,
                   station: str | None) -> dict[str, str]:
    """What Grafana puts in place of each variable for this time range and choice
    (None: "All", the variables' allValue)."""
    rate_interval = max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)
    return {
        "$__rate_interval": f"{int(rate_interval)}s",
        "$__range": f"{int(end - start)}s",
        "$__interval": f"{int(STEP_S)}s",
        "$group": group if group is not None else ".*",
        "$station": station if station is not None else ".*",
    }


def substitute(expr: str, values: dict[str, str]) -> str:
    # Longest first: $__range must not eat the start of $__rate_interval.
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    if "$" in expr:
        raise ValueError(f"a variable left in {expr}")
    return expr


def run_target(run: live.LivePrometheus, target: dict, values: dict[str, str],
               start: float, end: float) -> list[dict]:
    """The target as its panel runs it: instant at ``end``, or a range over the run."""
    expr = substitute(target["expr"], values)
    if target.get("instant"):
        return run.query(expr, at=end)
    return run.query_range(expr, start, end, STEP_S)


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{station}}`` replaced by the series' label."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def _amend(path: Path, change) -> Path:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return path


def _station(tmp: Path, broker: Broker, sid: str, key: Path) -> Path:
    def busy_water(cfg: dict) -> None:
        cfg["dispenser"] = {"level": LEVEL_SENSOR,
                            "thermometer": {"device": "28-00000000a001"},
                            "heater_pin": 23, "flow": {"pin": 24}}
        cfg["sim"]["auto_refill"] = REFILL_AFTER
        if sid == KEEPS_LOW:
            # Low from the start, and empty a cup later: the forecaster learns where
            # this tank reads empty and predicts water out now, history or not.
            cfg["dispenser"]["level"] = {**LEVEL_SENSOR, "low": 0.95, "empty": 0.895}
            cfg["sim"].update(auto_refill="1h", mean_loan="1h")

    return _amend(live._station_config(tmp, broker, sid, key), busy_water)


def _hub(tmp: Path, broker: Broker, http_port: int, key: Path) -> Path:
    def quick_rules(cfg: dict) -> None:
        cfg["rules"] = {"station_offline": {"for": "1s"}}
        for station in cfg["stations"]:
            station["name"] = NAMES[station["sid"]]

    return _amend(live._hub_config(tmp, broker, http_port, key), quick_rules)


@contextlib.contextmanager
def dashboard_run(tmp: Path) -> Iterator[live.LivePrometheus]:
    """Start everything, make the outage, yield; stop everything at the end."""
    binary = prometheus.find_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (make system-deps installs it)")
    broker = Broker(tmp / "broker").start()
    procs = Procs(tmp)
    prom = None
    try:
        key = tmp / "fleet.key"
        key.write_bytes(live.FLEET_KEY)
        key.chmod(0o600)  # the programs refuse a secret others can read
        http_port = free_port()
        hub = procs.start("hub", "hub", "--config", str(_hub(tmp, broker, http_port, key)))
        configs = {sid: _station(tmp, broker, sid, key)
                   for sids in live.GROUPS.values() for sid in sids}
        agents = {sid: procs.start(sid, "agent", "--config", str(cfg))
                  for sid, cfg in configs.items()}
        hub_url = f"http://127.0.0.1:{http_port}"
        prom_port = free_port()
        config = prometheus.local_config(f"127.0.0.1:{http_port}", interval="1s")
        prom_log = tmp / "prometheus.log"
        prom = prometheus.start(prometheus.write_config(config, tmp / "prometheus.yml"),
                                tmp / "tsdb", prom_port, prom_log, binary)
        run = live.LivePrometheus(url=f"http://127.0.0.1:{prom_port}", hub_url=hub_url,
                                  token=live.TOKEN, hub=hub, procs=procs, prom=prom,
                                  prom_log=prom_log)
        if not prometheus.ready(run.url, 20, alive=lambda: prom.poll() is None):
            raise AssertionError(f"prometheus did not become ready\n{run.log_tail()}")
        run.started = time.time()  # where the pictures and range queries begin

        def all_online() -> bool:
            status, body = http_json(f"{hub_url}/api/v1/stations", live.TOKEN)
            return status == 200 and sum(s["online"] for s in body["stations"]) == len(agents)

        wait_until(all_online, 20, "every station online in the hub", interval=0.2,
                   on_fail=lambda: hub.tail() + "\n" + agents[KEEPS_LOW].tail())
        wait_until(lambda: len(run.query("yizhan_station_up == 1")) == len(agents), 10,
                   "every station scraped up", interval=0.2, on_fail=run.log_tail)
        time.sleep(live.UP_BEFORE)
        for expr, seconds in SETTLE:
            # Not an assertion: a panel left without data is the test's finding.
            with contextlib.suppress(AssertionError):
                wait_until(lambda e=expr: run.query(e), seconds, expr, interval=0.5)

        stopped_at = time.time()
        agents[live.OUTAGE_STATION].signal(signal.SIGTERM)
        agents[live.OUTAGE_STATION].wait(15)
        wait_until(lambda: live._up(run, live.OUTAGE_STATION, 0), 10, "the outage scraped",
                   interval=0.2, on_fail=run.log_tail)
        time.sleep(live.DOWN_FOR)
        procs.start(f"{live.OUTAGE_STATION}-again", "agent", "--config",
                    str(configs[live.OUTAGE_STATION]))
        wait_until(lambda: live._up(run, live.OUTAGE_STATION, 1), 20, "the station back up",
                   interval=0.2, on_fail=run.log_tail)
        run.outage = (stopped_at, time.time())
        time.sleep(live.UP_BEFORE)  # the recovery, and the rules' next rounds
        yield run
    finally:
        prometheus.stop(prom)
        procs.close()
        broker.stop()


@pytest.fixture(scope="module")
def dashboard_prometheus(tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[live.LivePrometheus]:
    if prometheus.find_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is required under CI (Debian package prometheus)",
                        pytrace=False)
        pytest.skip("prometheus is not installed (make system-deps installs it)")
    with dashboard_run(tmp_path_factory.mktemp("dashboard-prometheus")) as run:
        yield run
