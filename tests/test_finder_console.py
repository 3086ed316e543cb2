"""The console's station page sets where riders find a station (hub/console/station.py).

Real sign-in, session cookies and CSRF tokens through Flask's client
(tests/harness/console_app.py); what is saved is read back through the public
feed, as a rider's app would read it, and from the audit log.
"""

from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa

from hub.storage.schema import directory_audit, station_meta
from tests.harness.console_app import Browser, console_hub
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0
SID = "yh-chumen-01"
PAGE = f"/console/stations/{SID}"
FEED = "/public/v1/stations.geojson"
GOOD = {"lat": "28.1865", "lon": "121.2847", "address": "楚门镇先锋路 18 号",
        "host": "先锋村便民服务中心", "hours": "20:00-08:00"}


@pytest.fixture
def hub(tmp_path):
    h = console_hub(tmp_path, ManualClock(T0))
    yield h
    h.close()


def _feature(hub, sid=SID):
    body = hub.app.test_client().get(FEED).get_json(force=True)
    return next(f for f in body["features"] if f["id"] == sid)


def _flash(b: Browser, resp) -> str:
    page = b.follow(resp)
    found = re.search(r'<p class="flash (\w+)" role="status">([^<]*)</p>', page)
    assert found, "no flash message"
    return f"{found.group(1)}: {html.unescape(found.group(2))}"


def test_ops_set_the_place_riders_see_and_it_is_audited(hub):
    assert _feature(hub)["geometry"] is None
    desk = Browser(hub, "desk")
    page = desk.get(PAGE).get_data(as_text=True)
    assert 'id="place"' in page and f'href="/find?near={SID}"' in page
    resp = desk.post(f"{PAGE}/place", {**GOOD, "action": "save"})
    assert _flash(desk, resp) == "ok: 已保存：骑手现在就能在找驿站页面看到。"
    feature = _feature(hub)
    assert feature["geometry"]["coordinates"] == [121.2847, 28.1865]
    assert feature["properties"]["hours"] == "20:00-08:00"
    assert feature["properties"]["open_now"] is False  # 08:00 CST: just closed
    page = desk.get(PAGE).get_data(as_text=True)
    assert 'value="先锋村便民服务中心"' in page and "在此设置，覆盖配置文件" in page
    with hub.store.engine.connect() as conn:
        audit = conn.execute(sa.select(directory_audit.c.action, directory_audit.c.actor)
                             .where(directory_audit.c.entity_id == SID)).all()
    assert [tuple(a) for a in audit] == [("station_place", "console:desk")]
    resp = desk.post(f"{PAGE}/place", {"action": "reset"})
    assert _flash(desk, resp).startswith("ok: 已恢复为配置文件")
    assert _feature(hub)["geometry"] is None


@pytest.mark.parametrize(("field", "value", "words"), [
    ("lat", "10" * 30, "经纬度"),
    ("lat", "nan", "经纬度"),
    ("lon", "", "经纬度"),  # a latitude without a longitude
    ("hours", "25:00-08:00", "营业时间"),
    ("hours", "<script>", "营业时间"),
    ("address", "x" * 121, "地址"),
    ("host", "村\x00委", "地址"),
])
def test_a_wrong_value_is_refused_in_words_and_nothing_is_saved(hub, field, value, words):
    desk = Browser(hub, "desk")
    desk.get(PAGE)
    resp = desk.post(f"{PAGE}/place", {**GOOD, field: value, "action": "save"})
    message = _flash(desk, resp)
    assert message.startswith("error: 未保存") and words in message
    with hub.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(station_meta)).scalar() == 0


def test_maintenance_sees_the_place_but_may_not_change_it(hub):
    wang = Browser(hub, "wang")
    page = wang.get(PAGE).get_data(as_text=True)
    assert 'id="place"' in page and 'name="hours"' not in page
    assert wang.post(f"{PAGE}/place", {**GOOD, "action": "save"}).status_code == 403
    desk = Browser(hub, "desk")
    desk.get(PAGE)
    assert desk.post(f"{PAGE}/place", {**GOOD, "action": "save"}, csrf=False).status_code \
        in (400, 403)
    assert _feature(hub)["geometry"] is None
    assert Browser(hub, "desk").client.post("/console/stations/yh-nowhere-09/place",
                                            data=GOOD).status_code in (400, 403, 404)
