"""The hub's series for ops' dashboards and SLOs (issue 15), beside contract §12's.

>>> hub.registry.register(UptimeCollector(hub))

* ``yizhan_station_info{station,name,group}`` = 1: what a query joins on to
  sum by group (``* on(station) group_left(group) yizhan_station_info``).
* ``yizhan_station_seconds_total{station,state}``: seconds up, down, unknown and
  in maintenance since the station's first change point, from the ledger's
  accounts (hub/fleet/seconds.py), so availability over any window is
  ``increase(up) / (increase(up) + increase(down))``.
* ``yizhan_station_outages_total{station}``: outages begun, for MTTR.
* ``yizhan_station_predicted_empty_seconds{station,supply}``: the forecaster's
  time until water or chargers run out; absent without a forecast.
* ``yizhan_hub_healthy``: 1 when ``/healthz`` would say ok, else 0.
* ``yizhan_hub_leader``: 1 on the worker that leads (hub/storage/leader.py),
  always 1 with one worker.

With several workers (``mqtt.shared_group``) the station series come from the
leader alone; each worker exports its own ``yizhan_hub_*`` series.

All computed at scrape time from what the hub holds; nothing here walks a
station's history (the ledger's accounts move on by the time since the last
scrape, and a forecast is kept for ``FORECAST_TTL_MS``).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.fleet.seconds import KINDS
from hub.http.exposition import Scrape, esc, families_text, num, sample_name
from hub.http.health import problems_of
from hub.http.metrics import leads

log = logging.getLogger(__name__)

SUPPLIES = ("water", "chargers")
#: A station's forecast is asked again after this long (hub clock): it moves
#: with the hourly rates, not from one scrape to the next, and asking 100 000
#: of them at every scrape would cost a second.
FORECAST_TTL_MS = 60_000


def _account(account: Any) -> tuple[tuple[float, ...], int]:
    """(seconds in each of KINDS, outages) of a ledger account; zeros for a
    station without a change point."""
    return ((0.0,) * len(KINDS), 0) if account is None else account[1:]


def _ttl(sid: str) -> int:
    """Between half and all of FORECAST_TTL_MS, fixed per station: the forecasts
    all asked at the first scrape fall due over several scrapes afterwards, not
    all in one (20 µs each, 100 000 at 50 000 stations)."""
    return FORECAST_TTL_MS - zlib.crc32(sid.encode()) % (FORECAST_TTL_MS // 2)


class UptimeCollector(Collector):
    """Reads ``hub.fleet``, ``hub.ledger``, ``hub.forecaster`` and ``hub.problems()``."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        # sid -> (asked at, due again at, seconds left of each of SUPPLIES or None):
        # one entry a station, both supplies asked together.
        self._forecasts: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()  # two scrapes at once share the forecasts

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """The series as prometheus_client's objects; /metrics writes the same
        from :meth:`text`."""
        f = self._families()
        views, accounts, predictions, healthy, leading = self._read(Scrape())
        for view in views:
            f["info"].add_metric([view.sid, view.name or "", view.group or ""], 1.0)
        for view, account in zip(views, accounts, strict=True):
            seconds, outages = _account(account)
            for state, value in zip(KINDS, seconds, strict=True):
                f["seconds"].add_metric([view.sid, state], value)
            f["outages"].add_metric([view.sid], float(outages))
        for sid, supply, left in predictions:
            f["empty"].add_metric([sid, supply], left)
        f["healthy"].add_metric([], 1.0 if healthy else 0.0)
        f["leader"].add_metric([], 1.0 if leading else 0.0)
        yield from f.values()

    def text(self, scrape: Scrape) -> list:
        """What :meth:`collect` says, as the lines of the text format
        (hub/http/exposition.py)."""
        families = self._families()
        p = {key: sample_name(family) for key, family in families.items()}
        views, accounts, predictions, healthy, leading = self._read(scrape)
        p_info, p_seconds, p_outages, p_empty = p["info"], p["seconds"], p["outages"], p["empty"]
        info, seconds, outages = [], [], []
        kinds = [f'{p_seconds}{{state="{kind}",' for kind in KINDS]
        for view, account in zip(views, accounts, strict=True):
            sid = esc(view.sid)
            info.append(f'{p_info}{{group="{esc(view.group or "")}",'
                        f'name="{esc(view.name or "")}",station="{sid}"}} 1.0\n')
            spent, n = _account(account)
            seconds.append("".join([f'{kind}station="{sid}"}} {num(value)}\n'
                                    for kind, value in zip(kinds, spent, strict=True)]))
            outages.append(f'{p_outages}{{station="{sid}"}} {num(float(n))}\n')
        empty = [f'{p_empty}{{station="{esc(sid)}",supply="{supply}"}} {num(left)}\n'
                 for sid, supply, left in predictions]
        return families_text(families, {
            "info": info, "seconds": seconds, "outages": outages, "empty": empty,
            "healthy": [f"{p['healthy']} {'1.0' if healthy else '0.0'}\n"],
            "leader": [f"{p['leader']} {'1.0' if leading else '0.0'}\n"]})

    def _read(self, scrape: Scrape) -> tuple[list[Any], list[Any], list[tuple[str, str, float]],
                                              bool, bool]:
        """(views, their accounts, forecasts, healthy, leading) at this scrape."""
        hub = self.hub
        now_ms = hub.clock.ms()
        leading = leads(hub)
        # Another worker leads: it exports the fleet, this one only itself.
        views = scrape.views(hub) if leading else []
        accounts = hub.ledger.seconds(((v.sid, v.last_seen_ms) for v in views), now_ms)
        predictions: list[tuple[str, str, float]] = []
        forecaster = getattr(hub, "forecaster", None)
        if forecaster is not None and leading:
            with self._lock:
                predictions = self._predictions(forecaster, views, now_ms)
        return views, accounts, predictions, not problems_of(hub), leading

    def _predictions(self, forecaster: Any, views: list[Any], now_ms: int
                     ) -> list[tuple[str, str, float]]:
        out = []
        forecasts = self._forecasts
        for view in views:
            if not view.online:
                continue  # a silent station's forecast is stale: no answer, not a guess
            sid = view.sid
            held = forecasts.get(sid)
            if held is None or not held[0] <= now_ms < held[1]:
                held = forecasts[sid] = (now_ms, now_ms + _ttl(sid),
                                         *(self._ask(forecaster, sid, supply, now_ms)
                                           for supply in SUPPLIES))
            for supply, left in zip(SUPPLIES, held[2:], strict=True):
                if left is not None:
                    # Counted down since it was asked, as the forecast itself would.
                    out.append((sid, supply, max(0.0, left - (now_ms - held[0]) / 1000)))
        return out

    @staticmethod
    def _ask(forecaster: Any, sid: str, supply: str, now_ms: int) -> float | None:
        try:
            return forecaster.time_to_empty(sid, supply, now_ms=now_ms)
        except Exception:
            log.exception("forecast of %s for %s failed", supply, sid)
            return None

    @staticmethod
    def _families() -> dict[str, Metric]:
        st = ["station"]
        return {
            "info": GaugeMetricFamily(
                "yizhan_station_info", "1 for every station the hub knows; its name and "
                "group (empty when none) as labels, to join on.",
                labels=[*st, "name", "group"]),
            "seconds": CounterMetricFamily(
                "yizhan_station_seconds", "Seconds the station spent in each state since "
                "its first change point, on the hub's clock (ledger rules: unknown while "
                "the hub was not running; maintenance overrides up and down).",
                labels=[*st, "state"]),
            "outages": CounterMetricFamily(
                "yizhan_station_outages", "Outages begun: changes of the station into down.",
                labels=st),
            "empty": GaugeMetricFamily(
                "yizhan_station_predicted_empty_seconds", "The forecaster's seconds until "
                "the supply (water, chargers) runs out; absent without a forecast.",
                labels=[*st, "supply"]),
            "healthy": GaugeMetricFamily(
                "yizhan_hub_healthy", "1 while /healthz reports ok, else 0 (the same "
                "judgement: MQTT, database, writer, notification senders)."),
            "leader": GaugeMetricFamily(
                "yizhan_hub_leader", "1 on the hub worker that leads (alerts, scheduled "
                "work, the station series), else 0; always 1 with one worker."),
        }
