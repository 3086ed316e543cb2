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
from hub.http.exposition import (
    WHOLE,
    Scrape,
    esc,
    families_text,
    num,
    sample_name,
    station_views,
)
from hub.http.exposition import floatToGoString as go

log = logging.getLogger(__name__)

WINDOWS = ("24h", "7d", "30d")
BANK_STATES = ("ready", "charging", "faulty")  # bank_states' keys, in its order
COUNTERS = ("borrows", "returns", "visits")


def min_charge(hub: Any) -> int:
    """The lending threshold (config ``policy.min_charge``): a bank at or above it is
    ``ready`` (contract §12)."""
    return int(hub.config.min_charge)


def leads(hub: Any) -> bool:
    """Whether this hub worker exports the fleet-wide series: the leader does
    (hub/storage/leader.py); a hub without leadership is alone, and leads."""
    leader = getattr(hub, "leader", None)
    return leader is None or bool(leader.is_leader)


#: A station's last State as /metrics shows it (``_state_values``): the
#: station's (epoch, rev) it was read from, then as the text format writes
#: them (``num``: small counts are shared strings) the banks ready, charging
#: and faulty, the empty slots and the estimated banks (all None without a
#: locker), the water level and temperature, then the doors as sorted
#: (name, open) pairs, then the counters borrows, returns and visits; None
#: where the State says nothing.
StateValues = tuple

#: Door tuples are shared between stations (most stations report the same
#: doors in the same positions); past this many distinct ones, no longer.
_SHARED_MAX = 4096


def _num_or_none(value: Any) -> str | None:
    return None if value is None else num(float(value))


class FleetCollector(Collector):
    """Every station's §12 series from ``hub.fleet.view``, ``hub.fleet.ledger`` and
    ``hub.alerting.alerts``.

    A station's State is read once per (epoch, rev), not at every scrape: what
    the series need of it is kept (``_states``, ~0.27 kB a station) and a State
    the station has not replaced since the last scrape costs a dict lookup —
    decoding 100 000 States took a second and a half of every scrape."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        # sid -> StateValues. Two scrapes at once may both read a State and
        # store the same values; nothing else writes here.
        self._states: dict[str, StateValues] = {}
        self._threshold: int | None = None
        self._shared: dict[tuple, tuple] = {}

    def describe(self) -> Iterator[Metric]:
        # The families without samples: enough for the registry's name checks,
        # and it keeps register() from calling collect() on a half-built hub.
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """The series as prometheus_client's objects (``get_sample_value``, and
        ``generate_latest`` of a registry); /metrics writes the same from
        :meth:`text`."""
        hub = self.hub
        if not leads(hub):
            # Several workers: the fleet-wide series come from the leader alone,
            # so a sum over the workers counts each station once (docs/hub.md).
            return
        f = self._families()
        now_ms = hub.clock.ms()
        threshold = self._reset(min_charge(hub))
        availability = hub.ledger.availability
        views = station_views(hub)
        for view in views:
            sid = view.sid
            f["up"].add_metric([sid], 1.0 if view.online else 0.0)
            for window in WINDOWS:
                ratio = availability(sid, window, now_ms)
                if ratio is not None:
                    f["availability"].add_metric([sid, window], float(ratio))
            if view.last_seen_ms is not None:
                f["last_seen"].add_metric([sid], view.last_seen_ms / 1000.0)
            s = self._state_values(view, threshold)
            if s[2] is not None:  # the values as text: float() gives them back exactly
                for name, n in zip(BANK_STATES, s[2:5], strict=True):
                    f["banks"].add_metric([sid, name], float(n))
                f["slots_empty"].add_metric([sid], float(s[5]))
                f["banks_estimated"].add_metric([sid], float(s[6]))
            if s[7] is not None:
                f["water_level"].add_metric([sid], float(s[7]))
            if s[8] is not None:
                f["water_temp"].add_metric([sid], float(s[8]))
            for door, is_open in s[9]:
                f["door"].add_metric([sid, door], 1.0 if is_open else 0.0)
            for key, n in zip(COUNTERS, s[10:13], strict=True):
                if n is not None:
                    f[key].add_metric([sid], float(n))
        self._forget_gone(views)
        for (sid, rule, severity), n in self._alerts():
            f["alerts"].add_metric([sid, rule, severity], float(n))
        yield from f.values()

    def text(self, scrape: Scrape) -> list:
        """What :meth:`collect` says, as the lines of the text format
        (hub/http/exposition.py): the same bytes, without an object per line."""
        hub = self.hub
        if not leads(hub):
            return []
        families = self._families()
        p = {key: sample_name(family) for key, family in families.items()}
        now_ms = hub.clock.ms()
        threshold = self._reset(min_charge(hub))
        availability = hub.ledger.availability
        state_values = self._state_values
        whole = WHOLE.get
        p_up, p_avail, p_seen = p["up"], p["availability"], p["last_seen"]
        p_banks, p_empty, p_est = p["banks"], p["slots_empty"], p["banks_estimated"]
        p_level, p_temp, p_door = p["water_level"], p["water_temp"], p["door"]
        p_counts = [p[key] for key in COUNTERS]
        up, avail, seen, banks, empty, est, level, temp, door = ([] for _ in range(9))
        counts: list[list[str]] = [[], [], []]
        views = scrape.views(hub)
        for view in views:
            sid = view.sid
            st = f'station="{esc(sid)}"'
            up.append(f"{p_up}{{{st}}} {'1.0' if view.online else '0.0'}\n")
            for window in WINDOWS:
                ratio = availability(sid, window, now_ms)
                if ratio is not None:
                    # 1.0 and 0.0 mostly: num's table, without num's call.
                    avail.append(f'{p_avail}{{{st},window="{window}"}} '
                                 f'{whole(ratio) or num(ratio)}\n')
            if view.last_seen_ms is not None:
                seen.append(f"{p_seen}{{{st}}} {go(view.last_seen_ms / 1000.0)}\n")
            s = state_values(view, threshold)
            if s[2] is not None:
                banks.append(f'{p_banks}{{state="ready",{st}}} {s[2]}\n'
                             f'{p_banks}{{state="charging",{st}}} {s[3]}\n'
                             f'{p_banks}{{state="faulty",{st}}} {s[4]}\n')
                empty.append(f"{p_empty}{{{st}}} {s[5]}\n")
                est.append(f"{p_est}{{{st}}} {s[6]}\n")
            if s[7] is not None:
                level.append(f"{p_level}{{{st}}} {s[7]}\n")
            if s[8] is not None:
                temp.append(f"{p_temp}{{{st}}} {s[8]}\n")
            for name, is_open in s[9]:
                door.append(f'{p_door}{{door="{esc(name)}",{st}}} '
                            f"{'1.0' if is_open else '0.0'}\n")
            for lines, prefix, n in zip(counts, p_counts, s[10:13], strict=True):
                if n is not None:
                    lines.append(f"{prefix}{{{st}}} {n}\n")
        self._forget_gone(views)
        p_alerts = p["alerts"]
        alerts = [f'{p_alerts}{{rule="{esc(rule)}",severity="{esc(severity)}",'
                  f'station="{esc(sid)}"}} {num(n)}\n'
                  for (sid, rule, severity), n in self._alerts()]
        return families_text(families, {
            "up": up, "availability": avail, "last_seen": seen, "banks": banks,
            "banks_estimated": est, "slots_empty": empty, "water_level": level,
            "water_temp": temp, "door": door,
            **dict(zip(COUNTERS, counts, strict=True)), "alerts": alerts})

    def _alerts(self) -> list[tuple[tuple[str, str, str], int]]:
        try:
            return sorted(self.hub.alerts.firing_counts().items())
        except Exception:
            # A scrape must still show the fleet while the database is away;
            # /healthz reports the database.
            log.exception("alert counts unavailable for /metrics")
            return []

    def _forget_gone(self, views: list[Any]) -> None:
        """Drop the States of stations the fleet no longer holds."""
        if len(self._states) > len(views):
            held = {v.sid for v in views}
            for sid in [sid for sid in self._states if sid not in held]:
                self._states.pop(sid, None)

    def _reset(self, threshold: int) -> int:
        """Forget the States read at another lending threshold."""
        if threshold != self._threshold:
            self._states, self._threshold = {}, threshold
        return threshold

    def _state_values(self, view: Any, threshold: int) -> StateValues:
        """What the series need of the station's last State, read from it once
        per (epoch, rev): the fleet replaces a State only with a newer rev, or
        with a new epoch (hub/fleet/view.py)."""
        held = self._states.get(view.sid)
        if held is not None and held[1] == view.state_rev and held[0] == view.epoch:
            return held
        state = view.state or {}
        banks = bank_states(state, threshold)
        if banks is None:
            locker: tuple = (None,) * 5
        else:
            slots = state["lockers"].get("slots") or ()
            locker = (num(banks["ready"]), num(banks["charging"]), num(banks["faulty"]),
                      num(sum(1 for s in slots if not holds_bank(s))),
                      num(estimated_banks(state) or 0))
        dispenser = state.get("dispenser") or {}
        doors = tuple(sorted((state.get("doors") or {}).items()))
        doors = self._shared.get(doors, doors)
        if len(self._shared) < _SHARED_MAX:
            self._shared.setdefault(doors, doors)
        counters = state.get("counters") or {}
        values = (view.epoch, view.state_rev, *locker,
                  _num_or_none(dispenser.get("level")), _num_or_none(dispenser.get("temp_c")),
                  doors, *(_num_or_none(counters.get(key)) for key in COUNTERS))
        self._states[view.sid] = values
        return values

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
