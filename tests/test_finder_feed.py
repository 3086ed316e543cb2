"""The stations' GeoJSON feed and the finder page over Flask's client (hub/public).

The feed validates against the official GeoJSON schema (tests/geojson/, vendored:
no network at test time) and carries nothing personal, though the hub holding it
knows riders, staff, loans, alerts and events. Cache headers, gzip and the
per-address allowance are checked as a client sees them.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import jsonschema
import pytest

from hub.public import meta
from hub.public.finder import distance_m, kilometres
from hub.public.limit import BURST
from hub.public.maps import navigate, wgs84_to_gcj02
from tests.harness.console_app import (
    bring_online,
    console_hub,
    go_offline,
    placed_stations,
    send_event,
    water,
)
from yizhan.clock import ManualClock

SCHEMA = json.loads((Path(__file__).parent / "geojson" / "FeatureCollection.json").read_text())
T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
FEED = "/public/v1/stations.geojson"
PROPERTIES = {"sid", "name", "group", "address", "host", "hours", "open_now", "online",
              "water", "chargers_ready", "working"}
PHONE, STAFF_PHONE, PIN = "13812345678", "13900001111", "4821"
STATIONS = placed_stations()


@pytest.fixture
def hub(tmp_path):
    h = console_hub(tmp_path, ManualClock(T0), stations=STATIONS)
    h.app.testing = True
    yield h
    h.close()


def _busy_hub(hub):
    """Everything personal a hub holds: a registered rider, staff with a phone, a
    loan to a rider, an alert's text, events with a rider id."""
    rider, _ = hub.directory.register_rider({"phone": PHONE, "pin": PIN}, by="desk")
    hub.directory.add_staff({"id": "li", "name": "李师傅", "phone": STAFF_PHONE, "pin": "9876",
                             "groups": ["chumen"]}, by="desk")
    bring_online(hub, "yh-chumen-01")
    bring_online(hub, "yh-chumen-02", water("empty"))
    send_event(hub, "yh-chumen-01", 9001, "bank_borrowed",
               {"slot": 3, "bank": "PB0003", "charge": 88, "rider": rider["id"]})
    hub.alerts.fire("water_empty", "yh-chumen-02", "critical", "水箱已空，李师傅 13900001111")
    hub.writer.flush()
    return rider


def test_the_feed_is_geojson_and_carries_nothing_personal(hub):
    rider = _busy_hub(hub)
    resp = hub.app.test_client().get(FEED)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/geo+json"
    body = resp.get_json(force=True)
    jsonschema.validate(body, SCHEMA)  # the official FeatureCollection schema
    features = {f["id"]: f for f in body["features"]}
    assert set(features) == {s["sid"] for s in STATIONS}
    # RFC 7946: [longitude, latitude]; a station without a place has no geometry
    assert features["yh-chumen-01"]["geometry"] == {"type": "Point",
                                                    "coordinates": [121.2847, 28.1865]}
    assert features["yh-kanmen-01"]["geometry"] is None
    for f in body["features"]:
        assert set(f["properties"]) == PROPERTIES
    one, two = features["yh-chumen-01"]["properties"], features["yh-chumen-02"]["properties"]
    assert (one["working"], one["host"], one["hours"]) == (True, "先锋村便民服务中心", "24h")
    assert (two["water"], two["working"]) == ("empty", False)
    text = resp.get_data(as_text=True)
    masked = rider["masked"]
    for personal in (rider["id"], PHONE, STAFF_PHONE, "李师傅", "PB0003", "水箱已空", masked,
                     PHONE[-4:], "rider", "staff", "pin"):
        assert personal not in text, personal
    assert not re.search(r"1[3-9]\d{9}", text)  # no mainland mobile number at all


def test_the_feed_and_page_carry_cache_headers_an_etag_and_gzip(hub):
    bring_online(hub, "yh-chumen-01")
    client = hub.app.test_client()
    for path, max_age in ((FEED, 30), ("/find", 15)):
        first = client.get(path)
        assert first.headers["Cache-Control"] == f"public, max-age={max_age}"
        tag = first.headers["ETag"]
        again = client.get(path, headers={"If-None-Match": tag})
        assert (again.status_code, again.data) == (304, b"")
        zipped = client.get(path, headers={"Accept-Encoding": "gzip, br"})
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(zipped.data) == first.data
        assert len(zipped.data) < len(first.data) / 2
    # a change in the fleet is a new ETag
    go_offline(hub, "yh-chumen-01")
    changed = client.get(FEED, headers={"If-None-Match": client.get(FEED).headers["ETag"]})
    assert changed.status_code == 304
    bring_online(hub, "yh-chumen-01", rev=2, birth=6000)
    go_offline(hub, "yh-chumen-01")
    assert client.get(FEED, headers={"If-None-Match": tag}).status_code == 200


def test_an_address_asking_too_often_is_told_to_wait(hub):
    client = hub.app.test_client()
    answers = [client.get(FEED, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code
               for _ in range(BURST + 1)]
    assert answers[:BURST] == [200] * BURST
    assert answers[BURST] == 429
    refused = client.get(FEED, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert int(refused.headers["Retry-After"]) >= 1
    # another rider is not slowed by it; the same one may go on after a while
    assert client.get(FEED, environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200
    hub.clock.advance(2)
    assert client.get(FEED, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200


def test_the_page_in_chinese_and_english_names_a_broken_station_and_the_way_on(hub):
    _busy_hub(hub)
    client = hub.app.test_client()
    zh = client.get("/find?near=yh-chumen-02&from=singlemessage").get_data(as_text=True)
    assert '<html lang="zh-CN">' in zh
    assert 'id="map"' not in zh  # no tile server configured: no map, nothing to fetch
    assert "按离“楚门镇东站”的距离排列" in zh
    two = zh[zh.index('id="s-yh-chumen-02"'):]
    two = two[:two.index("</li>")]
    assert "没有热水" in two and "暂不可用" in two
    assert 'href="#s-yh-chumen-01"' in two  # the nearest working one
    # the nearest first: chumen-02 itself, then chumen-01, then the one without a place
    order = re.findall(r'<li id="s-([a-z0-9-]+)"', zh)
    assert order == ["yh-chumen-02", "yh-chumen-01", "yh-kanmen-01"]
    en = client.get("/find?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in en and "No water" in en and "Nearest working station" in en
    # hostile query values are ignored, not echoed
    odd = client.get("/find?lang=<x>&near=" + "9" * 40 + "<script>")
    assert odd.status_code == 200 and "<script>alert" not in odd.get_data(as_text=True)
    assert "9" * 40 not in odd.get_data(as_text=True)


def test_metadata_set_in_the_console_reaches_the_feed(hub):
    meta.save(hub, "yh-kanmen-01", {"lat": "28.0786", "lon": "121.2712",
                                    "host": "坎门农商银行", "hours": "24h"}, "boss")
    body = hub.app.test_client().get(FEED).get_json(force=True)
    kanmen = next(f for f in body["features"] if f["id"] == "yh-kanmen-01")
    assert kanmen["geometry"]["coordinates"] == [121.2712, 28.0786]
    assert kanmen["properties"]["host"] == "坎门农商银行"


@pytest.mark.parametrize(("wgs", "gcj"), [
    # the published WGS-84 → GCJ-02 reference points (Shanghai, Shenzhen, Beijing)
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
])
def test_places_are_shifted_to_gcj02_for_chinas_map_apps(wgs, gcj):
    got = wgs84_to_gcj02(*wgs)
    assert got == pytest.approx(gcj, abs=1e-9)
    assert wgs84_to_gcj02(51.5, -0.12) == (51.5, -0.12)  # outside China: unchanged


def test_navigate_links_give_each_app_the_shifted_point_in_its_own_order():
    links = navigate(31.1774276, 121.5272106, "先锋;驿站", "路:1 号")
    assert "position=121.531542%2C31.175304" in links["amap"]  # lon,lat
    assert "coordinate=gaode" in links["amap"]
    assert "location=31.175304%2C121.531542" in links["baidu"]  # lat,lon
    assert "coord_type=gcj02" in links["baidu"]
    # Tencent's fields are split by ";" and ":": the name's own are not taken for them
    assert "marker=coord:31.175304,121.531542;title:" in links["qq"]
    assert links["qq"].count(";") == 2 and "referer=yizhan" in links["qq"]


def test_distances_as_the_page_writes_them():
    assert distance_m(28.0, 121.0, 28.0, 121.0) == 0
    assert distance_m(28.0, 121.0, 29.0, 121.0) == pytest.approx(111_195, rel=1e-3)
    assert [kilometres(m) for m in (4, 346, 1234, 12_345)] == ["0 m", "350 m", "1.2 km", "12 km"]
