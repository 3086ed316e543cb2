"""The fleet as Prometheus metrics (contract §12), read from the live state at scrape time.

>>> hub.registry.register(FleetCollector(hub))

Names and labels are fixed by the contract. A value the hub does not know (no
level sensor, no State yet) is left out rather than reported as 0, so Grafana
shows a gap instead of an empty tank. ``yizhan_hub_messages_total`` and
``yizhan_hub_ingest_lag_seconds`` belong to the ingest, which owns those events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.fleet.banks import bank_states, estimated_banks, holds_bank

log = logging.getLogger(__name__)

WINDOWS = ("24h", "7d", "30d")


def min_charge(hub: Any) -> int:
    """The lending threshold (config ``policy.min_charge``): a bank at or above it is
    ``ready`` (contract §12)."""
    return int(hub.config.min_charge)


def leads(hub: Any) -> bool:
    """Whether this hub worker exports the fleet-wide series: the leader does
    (hub/storage/leader.py); a hub without leadership is alone, and leads."""
    leader = getattr(hub, "leader", None)
    return leader is None or bool(leader.is_leader)


class FleetCollector(Collector):
    """Every station's §12 series from ``hub.fleet.view``, ``hub.fleet.ledger`` and
    ``hub.alerting.alerts``."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def describe(self) -> Iterator[Metric]:
        # The families without samples: enough for the registry's name checks,
        # and it keeps register() from calling collect() on a half-built hub.
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        if not leads(hub):
            # Several workers: the fleet-wide series come from the leader alone,
            # so a sum over the workers counts each station once (docs/hub.md).
            return
        f = self._families()
        now_ms = hub.clock.ms()
        threshold = min_charge(hub)
        for view in hub.fleet.stations():
            sid = view.sid
            f["up"].add_metric([sid], 1.0 if view.online else 0.0)
            for window in WINDOWS:
                ratio = hub.ledger.availability(sid, window, now_ms)
                if ratio is not None:
                    f["availability"].add_metric([sid, window], float(ratio))
            if view.last_seen_ms is not None:
                f["last_seen"].add_metric([sid], view.last_seen_ms / 1000.0)
            self._state(f, view, threshold)
        try:
            counts = hub.alerts.firing_counts()
        except Exception:
            # A scrape must still show the fleet while the database is away;
            # /healthz reports the database.
            log.exception("alert counts unavailable for /metrics")
            counts = {}
        for (sid, rule, severity), n in sorted(counts.items()):
            f["alerts"].add_metric([sid, rule, severity], float(n))
        yield from f.values()

    @staticmethod
    def _state(f: dict[str, Metric], view: Any, threshold: int) -> None:
        state = view.state or {}
        sid = view.sid
        banks = bank_states(state, threshold)
        if banks is not None:
            for name, n in banks.items():
                f["banks"].add_metric([sid, name], float(n))
            slots = state["lockers"].get("slots") or ()
            f["slots_empty"].add_metric([sid], float(sum(1 for s in slots if not holds_bank(s))))
            f["banks_estimated"].add_metric([sid], float(estimated_banks(state) or 0))
        dispenser = state.get("dispenser")
        if dispenser:
            if dispenser.get("level") is not None:
                f["water_level"].add_metric([sid], float(dispenser["level"]))
            if dispenser.get("temp_c") is not None:
                f["water_temp"].add_metric([sid], float(dispenser["temp_c"]))
        for door, is_open in sorted((state.get("doors") or {}).items()):
            f["door"].add_metric([sid, door], 1.0 if is_open else 0.0)
        counters = state.get("counters") or {}
        for key in ("borrows", "returns", "visits"):
            if counters.get(key) is not None:
                f[key].add_metric([sid], float(counters[key]))

    @staticmethod
    def _families() -> dict[str, Metric]:
        st = ["station"]
        return {
            "up": GaugeMetricFamily(
                "yizhan_station_up", "1 while the station is online (birth seen, no death "
                "since, heard within the heartbeat allowance), else 0.", labels=st),
            "availability": GaugeMetricFamily(
                "yizhan_station_availability_ratio", "Up time / (up + down time) over the "
                "window, on the hub's clock; unknown and maintenance time excluded.",
                labels=[*st, "window"]),
            "last_seen": GaugeMetricFamily(
                "yizhan_station_last_seen_timestamp_seconds",
                "When the hub last heard from the station (hub clock, Unix seconds).", labels=st),
            "banks": GaugeMetricFamily(
                "yizhan_power_banks", "Power banks in the locker by state: ready (charged to "
                "the lending threshold), charging, faulty (slot reports a fault).",
                labels=[*st, "state"]),
            "banks_estimated": GaugeMetricFamily(
                "yizhan_power_banks_estimated", "Of yizhan_power_banks, those whose charge the "
                "station estimates from time on charging power (a lock-control board reads "
                "no bank telemetry; contract §5 estimated).", labels=st),
            "slots_empty": GaugeMetricFamily(
                "yizhan_locker_slots_empty", "Locker slots without a power bank.", labels=st),
            "water_level": GaugeMetricFamily(
                "yizhan_water_level_ratio", "Water tank level, 0..1 (stations with a level "
                "sensor only).", labels=st),
            "water_temp": GaugeMetricFamily(
                "yizhan_water_temperature_celsius", "Hot water temperature.", labels=st),
            "door": GaugeMetricFamily(
                "yizhan_door_open", "1 while the door is open.", labels=[*st, "door"]),
            "borrows": CounterMetricFamily(
                "yizhan_borrows", "Power banks borrowed (per station epoch).", labels=st),
            "returns": CounterMetricFamily(
                "yizhan_returns", "Power banks returned (per station epoch).", labels=st),
            "visits": CounterMetricFamily(
                "yizhan_visits", "Visits counted by the station (per station epoch).", labels=st),
            "alerts": GaugeMetricFamily(
                "yizhan_alerts_firing", "Alerts not yet resolved (firing or acknowledged).",
                labels=[*st, "rule", "severity"]),
        }
