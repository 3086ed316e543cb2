"""The stations' rider-facing facts (hub/config/station_meta.py, hub/public/meta.py)
and what ``public_stations`` makes of them with the fleet's live view.

A real Hub on a SQLite file and a ManualClock, fed the messages the ingest would
apply (tests/harness/console_app.py); the console's overrides are real rows.
"""

from __future__ import annotations

from datetime import time

import pytest
import sqlalchemy as sa

from hub.config import parse_hub_config
from hub.config.station_meta import BadMeta, coordinate, hours, open_at
from hub.public import meta
from hub.public.stations import public_stations
from hub.storage.schema import station_meta
from tests.harness.console_app import (
    bring_online,
    console_hub,
    go_offline,
    placed_stations,
    water,
)
from yizhan.clock import ManualClock
from yizhan.config import ConfigError

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
KEYS = {"sid", "name", "group", "lat", "lon", "address", "host", "hours", "open_now",
        "online", "water", "chargers_ready", "working"}


def _config(**station):
    return parse_hub_config({"database": "sqlite:///hub.db",
                             "stations": [{"sid": "yh-chumen-01", **station}]})


def test_the_configuration_takes_a_stations_place_address_host_and_hours():
    s = _config(name="楚门镇先锋驿站", lat=28.1865, lon=121.2847, address="楚门镇先锋路 18 号",
                host="先锋村便民服务中心", hours="24h").stations[0]
    assert (s.lat, s.lon, s.address, s.host, s.hours) == (
        28.1865, 121.2847, "楚门镇先锋路 18 号", "先锋村便民服务中心", "24h")
    assert _config().stations[0].lat is None  # all optional
    assert _config(hours="20:00-08:00").stations[0].hours == "20:00-08:00"


@pytest.mark.parametrize(("station", "key"), [
    ({"lat": 10**30, "lon": 121.0}, "lat"),
    ({"lat": 28.0, "lon": -10**30}, "lon"),
    ({"lat": float("nan"), "lon": 121.0}, "lat"),
    ({"lat": float("inf"), "lon": 121.0}, "lat"),
    ({"lat": 91, "lon": 121.0}, "lat"),
    ({"lat": True, "lon": 121.0}, "lat"),
    ({"lat": [28], "lon": 121.0}, "lat"),
    ({"lat": "1e400", "lon": 121.0}, "lat"),
    ({"lat": 28.0}, "lon"),
    ({"lon": 121.0}, "lat"),
    ({"hours": "25:00-08:00"}, "hours"),
    ({"hours": "08:00-08:00"}, "hours"),
    ({"hours": "8-20"}, "hours"),
    ({"hours": 24}, "hours"),
    ({"hours": "24:30-08:00"}, "hours"),
    ({"address": "楚门\n镇"}, "address"),
    ({"address": "x" * 121}, "address"),
    ({"address": 10**30}, "address"),
    ({"host": ""}, "host"),
])
def test_a_wrong_value_stops_the_hub_naming_its_key(station, key):
    with pytest.raises(ConfigError, match=rf"stations\[0\]\.{key}"):
        _config(**station)


def test_hours_across_midnight_and_round_the_clock():
    assert open_at("24h", time(3, 0)) is True
    assert open_at(None, time(3, 0)) is None
    assert [open_at("07:00-22:00", time(h, m)) for h, m in ((6, 59), (7, 0), (21, 59), (22, 0))] \
        == [False, True, True, False]
    assert [open_at("20:00-08:00", time(h, m)) for h, m in ((19, 59), (20, 0), (3, 0), (8, 0))] \
        == [False, True, True, False]
    assert open_at("06:00-24:00", time(23, 59)) is True
    assert hours(" 24H ") == "24h"
    assert coordinate("-33.8688", "lat") == -33.8688
    with pytest.raises(BadMeta):
        coordinate("nan", "lat")


@pytest.fixture
def hub(tmp_path):
    h = console_hub(tmp_path, ManualClock(T0), stations=placed_stations())
    yield h
    h.close()


def _slots(charges):
    def change(state):
        state["lockers"]["slots"] = [
            {"slot": i + 1, "bank": f"PB{i + 1:04X}" if c is not None else None, "charge": c,
             "charging": False, "locked": True, "fault": None, "temp_c": 30, "cycles": 1}
            for i, c in enumerate(charges)]
    return change


def _by_sid(hub):
    return {s["sid"]: s for s in public_stations(hub, hub.clock.ms())}


def test_public_stations_say_what_works_now_and_nothing_personal(hub):
    bring_online(hub, "yh-chumen-01", _slots([95, 90, None]))
    bring_online(hub, "yh-chumen-02", water("empty"))
    seen = _by_sid(hub)
    assert all(set(s) == KEYS for s in seen.values())
    one, two, kanmen = seen["yh-chumen-01"], seen["yh-chumen-02"], seen["yh-kanmen-01"]
    assert (one["lat"], one["lon"], one["host"], one["hours"]) == (
        28.1865, 121.2847, "先锋村便民服务中心", "24h")
    assert (one["online"], one["water"], one["chargers_ready"], one["working"]) == (
        True, "ok", 2, True)
    assert (two["water"], two["working"]) == ("empty", False)
    # never heard from: offline, its water unknown, its chargers unknown
    assert (kanmen["online"], kanmen["water"], kanmen["chargers_ready"], kanmen["working"]) \
        == (False, "unknown", None, False)
    go_offline(hub, "yh-chumen-01")
    one = _by_sid(hub)["yh-chumen-01"]
    # its last State is not taken for now
    assert (one["online"], one["water"], one["chargers_ready"], one["working"]) == (
        False, "unknown", None, False)


def test_closed_hours_and_no_charger_ready_are_not_working(hub):
    bring_online(hub, "yh-chumen-01", _slots([40, None]))  # below the lending threshold
    bring_online(hub, "yh-chumen-02")
    seen = _by_sid(hub)
    assert (seen["yh-chumen-01"]["chargers_ready"], seen["yh-chumen-01"]["working"]) == (0, False)
    assert seen["yh-chumen-02"]["open_now"] is True and seen["yh-chumen-02"]["working"]
    hub.clock.advance(14 * 3600 + 1)  # 22:00 CST and a second
    seen = _by_sid(hub)
    assert seen["yh-chumen-02"]["open_now"] is False
    assert seen["yh-chumen-02"]["working"] is False


def test_the_console_overrides_the_configuration_and_resets_to_it(hub):
    row = meta.save(hub, "yh-kanmen-01", {"lat": "28.08", "lon": "121.27", "address": "",
                                          "host": "坎门农商银行", "hours": "20:00-08:00"}, "boss")
    assert row["address"] is None and row["updated_by"] == "boss"
    kanmen = _by_sid(hub)["yh-kanmen-01"]
    assert (kanmen["lat"], kanmen["lon"], kanmen["host"], kanmen["hours"], kanmen["open_now"]) \
        == (28.08, 121.27, "坎门农商银行", "20:00-08:00", False)  # 08:00 CST: just closed
    # a row made wrong by hand is not shown: the configuration's values stand
    with hub.store.engine.begin() as conn:
        conn.execute(sa.update(station_meta).values(hours="99:99-00:00"))
    assert _by_sid(hub)["yh-kanmen-01"]["hours"] is None
    assert meta.reset(hub, "yh-kanmen-01") is True
    assert meta.reset(hub, "yh-kanmen-01") is False
    for bad in ({"lat": "10" * 30, "lon": "1"}, {"lat": "1"}, {"hours": "noon"},
                {"host": "a\x00b"}):
        with pytest.raises(BadMeta):
            meta.save(hub, "yh-kanmen-01", bad, "boss")


def test_the_finders_map_takes_a_tile_server_said_plainly():
    def finder(**keys):
        return parse_hub_config({"database": "sqlite:///hub.db", "finder": keys}).finder
    assert parse_hub_config({"database": "sqlite:///hub.db"}).finder.tile_url is None
    f = finder(tile_url="https://webrd01.example.cn/appmaptile?x={x}&y={y}&z={z}",
               tile_datum="gcj02", tile_attribution="© 底图")
    assert (f.tile_datum, f.tile_origin) == ("gcj02", "https://webrd01.example.cn")
    assert finder(tile_url="https://t.example/{z}/{x}/{y}.png").tile_datum == "wgs84"
    for bad, key in (({"tile_url": "ftp://t.example/{z}/{x}/{y}"}, "tile_url"),
                     ({"tile_url": "https://t.example/{z}/{x}.png"}, "tile_url"),
                     ({"tile_url": 'https://t.example/{z}/{x}/{y}"onerror=x'}, "tile_url"),
                     ({"tile_url": "https://t.example/{z}/{x}/{y}", "tile_datum": "bd09"},
                      "tile_datum"),
                     ({"tile_attribution": "a\nb"}, "tile_attribution"),
                     ({"tiles": "x"}, "tiles")):
        with pytest.raises(ConfigError, match=rf"finder\.{key}"):
            finder(**bad)
