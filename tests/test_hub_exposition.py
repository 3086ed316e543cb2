"""``/metrics`` written directly (hub/http/exposition.py, issue 21) is, byte for
byte, what prometheus_client's ``generate_latest`` writes from the collectors'
``collect()`` — for a fleet with every kind of series, label values that need
escaping, States replaced and epochs wiped, and a worker that does not lead.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.config import StationMeta
from hub.http.exposition import esc, exposition, num
from hub.http.uptime_metrics import UptimeCollector
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind
from tests.test_hub_api import (
    OTHER,
    SID,
    StandInHub,
    bring_online,
    hub_config,
    hub_factory,
)
from tests.test_hub_metrics import SLOTS

ODD = "yh-odd-01"  # its name and group need escaping in label values
ODD_NAME = 'Lane "7" \\ back door\nupstairs'
DRY = "yh-dry-01"  # no locker, no level sensor


@pytest.fixture
def make_hub(database_url: str, broker: Any) -> Iterator[Callable[..., StandInHub]]:
    with hub_factory(database_url, broker) as make:
        yield make


@pytest.fixture
def hub(make_hub: Callable[..., StandInHub]) -> StandInHub:
    configured = hub_config("sqlite://").stations  # SID and OTHER
    h = make_hub(stations=(*configured, StationMeta(ODD, ODD_NAME, 'g\\"x"'),
                           StationMeta(DRY, "Dry")))
    h.registry.register(UptimeCollector(h))  # the hub's second station collector
    return h


def served(hub: StandInHub) -> bytes:
    answer = hub.app.test_client().get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type == CONTENT_TYPE_LATEST
    return answer.get_data()


def assert_same(hub: StandInHub) -> str:
    """The served bytes equal generate_latest's; the text."""
    expected = generate_latest(hub.registry)
    assert exposition(hub.registry) == expected
    assert served(hub) == expected
    return expected.decode()


def full(state: dict) -> None:
    state["lockers"]["slots"] = SLOTS
    state["doors"] = {"entrance": True, "locker_panel": False, "back": True}


def dry(state: dict) -> None:
    del state["lockers"]
    state["dispenser"].update(level=None, temp_c=None)
    state["counters"] = {"visits": 1_234_567, "borrows": 0, "returns": 7}  # Go's exponent


def no_counters(state: dict) -> None:
    state["counters"] = None


def new_state(hub: StandInHub, sid: str, rev: int, epoch: str = "9f2c01ab",
              change: Callable[[dict], None] | None = None) -> None:
    state = examples.example("state")
    state.update(sid=sid, ts=hub.clock.ms(), rev=rev, epoch=epoch)
    if change is not None:
        change(state)
    hub.fleet.apply_state(m.from_dict(Kind.STATE, state, topic_sid=sid), hub.clock.ms())


def value(hub: StandInHub, name: str, **labels: str) -> float | None:
    return hub.registry.get_sample_value(name, labels)


def test_a_varied_fleet_is_written_as_generate_latest_writes_it(hub: StandInHub) -> None:
    bring_online(hub, change=full)
    bring_online(hub, sid=ODD, change=no_counters)
    bring_online(hub, sid=DRY, change=dry)
    hub.ledger.mark(SID, "station", "up", hub.clock.ms())
    hub.alerts.raise_alert("water_low", SID, "warning", "low")
    hub.alerts.raise_alert("door_open_too_long", ODD, "warning", "door", subject="entrance")
    hub.clock.advance(61)
    hub.ledger.refresh(hub.clock.ms())
    text = assert_same(hub)
    # What the comparison covers: escaped labels, gaps, an exponent, every family.
    assert f'name="{esc(ODD_NAME)}"' in text and r'\n' in esc(ODD_NAME)
    assert 'group="g\\\\\\"x\\""' in text
    assert f'yizhan_visits_total{{station="{DRY}"}} 1.234567e+06' in text
    assert f'yizhan_power_banks{{state="ready",station="{DRY}"}}' not in text
    assert f'yizhan_borrows_total{{station="{ODD}"}}' not in text
    assert f'yizhan_door_open{{door="back",station="{SID}"}} 1.0' in text
    assert f'yizhan_station_up{{station="{OTHER}"}} 0.0' in text
    assert 'yizhan_station_availability_ratio{station="yh-chumen-01",window="7d"} 1.0' in text
    assert text.count("# HELP ") == len(list(hub.registry.collect()))
    # A second scrape reads the States it kept, and still says the same.
    assert_same(hub)


def test_a_new_state_and_a_wiped_epoch_show_at_the_next_scrape(hub: StandInHub) -> None:
    bring_online(hub, change=full)
    assert_same(hub)
    assert value(hub, "yizhan_borrows_total", station=SID) == 560.0

    def lent(state: dict) -> None:
        full(state)
        state["counters"]["borrows"] = 561
        state["lockers"]["slots"] = [s for s in SLOTS if s["slot"] != 1]  # lent out

    new_state(hub, SID, 5014, change=lent)
    text = assert_same(hub)
    assert f'yizhan_borrows_total{{station="{SID}"}} 561.0' in text
    assert value(hub, "yizhan_power_banks", station=SID, state="ready") == 1.0

    # A stale State (an older rev) changes nothing; a new epoch starts afresh,
    # even at a lower rev than the wiped epoch's.
    new_state(hub, SID, 5000)
    assert value(hub, "yizhan_borrows_total", station=SID) == 561.0
    status = examples.example("status")
    status.update(sid=SID, epoch="0badc0de", ts=hub.clock.ms(), rev=3, birth=3)
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=SID), hub.clock.ms())
    new_state(hub, SID, 4, epoch="0badc0de", change=dry)
    text = assert_same(hub)
    assert f'yizhan_visits_total{{station="{SID}"}} 1.234567e+06' in text
    assert f'yizhan_borrows_total{{station="{SID}"}} 0.0' in text
    assert f'yizhan_power_banks{{state="ready",station="{SID}"}}' not in text


def test_a_worker_that_does_not_lead_writes_only_its_own_series(hub: StandInHub) -> None:
    bring_online(hub, change=full)
    hub.leader = types.SimpleNamespace(is_leader=False)
    text = assert_same(hub)
    assert "yizhan_station_up" not in text  # FleetCollector: not even its headers
    assert f'station="{SID}"' not in text
    assert "yizhan_hub_leader 0.0" in text


@pytest.mark.parametrize("given, written", [
    (0, "0.0"), (1.0, "1.0"), (True, "1.0"), (9999, "9999.0"), (999_999, "999999.0"),
    (1_000_000, "1e+06"), (0.62, "0.62"), (-3, "-3.0"), (1_764_196_861.5, "1.7641968615e+09"),
    (float("nan"), "NaN"), (float("inf"), "+Inf")])
def test_values_are_written_as_go_writes_them(given: float, written: str) -> None:
    assert num(given) == written
