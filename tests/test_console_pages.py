"""The fleet and station pages on a real hub (SQLite file, ledger, fleet, alert
store; hub/console/fleet.py, hub/console/station.py), with stations fed the
messages the ingest would apply and the clock moved instead of waiting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from hub.service import Hub
from tests.harness.console_app import (
    Browser,
    advance,
    bring_online,
    console_hub,
    go_offline,
    send_event,
    send_state,
)
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
HOUR = 3600.0
C1, C2, K1 = "yh-chumen-01", "yh-chumen-02", "yh-kanmen-01"


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    h = console_hub(tmp_path, ManualClock(T0))
    h.ledger.hub_started(h.clock.ms())
    yield h
    h.close()


def english(hub: Hub, name: str) -> Browser:
    b = Browser(hub, name)
    b.get("/console/lang/en?next=/console/")
    return b


def rows_of(page: str) -> list[str]:
    """The fleet table's rows, as the station ids they show, in order."""
    body = page.split("<tbody>", 1)[1]
    return re.findall(r'href="/console/stations/([^"]+)"', body)


def empty_water(state: dict) -> None:
    state["dispenser"].update(level=0.0, level_state="empty")


def all_charged(state: dict) -> None:
    for slot in state["lockers"]["slots"]:
        slot.update(bank=f"PB{slot['slot']:04d}", charge=97, fault=None)


def test_fleet_shows_every_station_worst_first(hub):
    bring_online(hub, C1, all_charged)
    bring_online(hub, C2, empty_water)
    bring_online(hub, K1, all_charged)
    advance(hub, 60)
    go_offline(hub, K1)
    hub.alerts.fire("water_empty", C2, "critical", "水用完了")
    hub.writer.flush()
    b = english(hub, "desk")
    page = b.get("/console/").get_data(as_text=True)
    # Offline first, then the critical alert, then the station with nothing wrong.
    assert rows_of(page) == [K1, C2, C1]
    row = {sid: page.split(f'/console/stations/{sid}"', 1)[1].split("</tr>", 1)[0]
           for sid in (C1, C2, K1)}
    assert "Water empty" in row[C2] and ">1<" in row[C2]  # one open alert
    assert "2 / 2" in row[C1]  # both slots hold a charged bank
    assert "Water OK" in row[C1]
    names = {"楚门镇先锋驿站", "楚门镇东站", "坎门渔港驿站"}
    assert all(n in page for n in names)
    assert 'class="s-bad"' in page and 'class="s-ok"' in page


def test_fleet_filters_by_group(hub):
    for sid in (C1, C2, K1):
        bring_online(hub, sid, all_charged)
    b = english(hub, "desk")
    page = b.get("/console/?group=chumen").get_data(as_text=True)
    assert sorted(rows_of(page)) == [C1, C2]
    page = b.get("/console/?group=kanmen").get_data(as_text=True)
    assert rows_of(page) == [K1]


@pytest.mark.parametrize("group", ["x" * 100_000, "楚门" * 40, "<script>", "%00", "１"])
def test_fleet_takes_any_group_filter(hub, group):
    bring_online(hub, C1)
    b = english(hub, "desk")
    resp = b.client.get("/console/", query_string={"group": group})
    assert resp.status_code in (200, 414)
    assert "<script>" not in resp.get_data(as_text=True)


def test_station_page_shows_slots_dispenser_doors_and_events(hub):
    def state(s: dict) -> None:
        s["lockers"]["slots"] = [
            {"slot": 1, "bank": "PB0012AF", "charge": 96, "charging": False, "locked": True,
             "fault": None, "temp_c": 29, "cycles": 212},
            {"slot": 2, "bank": "PB0013B0", "charge": 41, "charging": True, "locked": True,
             "fault": None, "temp_c": 30, "cycles": 12},
            {"slot": 3, "bank": "PB0014C1", "charge": 80, "charging": False, "locked": True,
             "fault": "charger_fault", "temp_c": 55, "cycles": 9},
            {"slot": 4, "bank": None, "charge": None, "charging": False, "locked": True,
             "fault": None, "temp_c": None, "cycles": None}]
        s["dispenser"].update(level=0.18, level_state="low", temp_c=88.5)
        s["doors"] = {"entrance": True, "locker_panel": False}
    bring_online(hub, C1, state)
    send_event(hub, C1, 88121, "bank_borrowed",
               {"slot": 3, "bank": "PB0013B0", "charge": 96, "rider": "r:5e8f0c1d2e3f4a5b6c7d8e9f"})
    advance(hub, 60)
    send_event(hub, C1, 88122, "door_opened", {"door": "entrance"})
    hub.writer.flush()
    b = english(hub, "wang")
    page = b.get(f"/console/stations/{C1}").get_data(as_text=True)
    slots = re.findall(r'<div class="slot (s-\w+)">\s*<b>Slot (\d+)</b>', page)
    assert slots == [("s-ok", "1"), ("s-warn", "2"), ("s-bad", "3"), ("s-off", "4")]
    assert "96 %" in page and "41 %" in page and "charger fault" in page
    assert "charger_fault" not in page  # the code in words (hub/console/event_words.py)
    assert "1 ready, 1 charging, 1 faulty" in page
    assert "Water low" in page and "(18 %)" in page and "88.5 °C" in page
    assert re.search(r"<dt>entrance</dt><dd class=\"s-warn\">.*?Door open", page)
    events = page.split("Recent events", 1)[1]
    assert events.index("Door opened") < events.index("Bank borrowed")  # newest first
    assert "bank PB0013B0" in events
    assert "5e8f0c1d2e3f4a5b" not in page  # a rider's id is not shown
    # wang is maintenance of chumen: the unlock form is there, with the station's slots.
    form = page.split("Remote unlock", 1)[1]
    assert re.findall(r'<option value="(\d+)">', form) == ["1", "2", "3", "4"]


def test_a_lock_board_cabinets_banks_show_as_estimates(hub):
    def state(s: dict) -> None:
        # contract §5 estimated: no bank ids; charge is the station's floor, null when empty
        s["lockers"]["slots"] = [
            {"slot": 1, "bank": None, "charge": 100, "charging": False, "locked": True,
             "fault": None, "temp_c": None, "cycles": None, "estimated": True},
            {"slot": 2, "bank": None, "charge": 40, "charging": True, "locked": True,
             "fault": None, "temp_c": None, "cycles": None, "estimated": True},
            {"slot": 3, "bank": None, "charge": None, "charging": False, "locked": True,
             "fault": None, "temp_c": None, "cycles": None, "estimated": True}]
    bring_online(hub, C1, state)
    b = english(hub, "wang")
    page = b.get(f"/console/stations/{C1}").get_data(as_text=True)
    slots = re.findall(r'<div class="slot (s-\w+)">\s*<b>Slot (\d+)</b>', page)
    assert slots == [("s-ok", "1"), ("s-warn", "2"), ("s-off", "3")]
    assert "≥ 100 %" in page and "≥ 40 %" in page
    assert "1 ready, 1 charging, 0 faulty" in page


def test_station_uptime_bar_shows_90_days_and_the_outage(hub):
    bring_online(hub, C1)
    bring_online(hub, K1)
    for _ in range(10):  # ten days up, the hub alive all along
        advance(hub, 24 * HOUR)
    send_state(hub, C1, rev=2)  # heard until now: the outage starts here
    go_offline(hub, C1)
    advance(hub, 3 * HOUR)
    bring_online(hub, C1, rev=3, birth=5020)
    advance(hub, HOUR)
    hub.writer.flush()
    b = english(hub, "desk")
    page = b.get(f"/console/stations/{C1}").get_data(as_text=True)
    bar = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    days = re.findall(r'<rect class="(s-\w+)"[^>]*><title>([^<]+)</title>', bar)
    assert len(days) == 90
    kinds = [k for k, _t in days]
    # Before the station was first seen: no data; then up days; today the 3 h outage.
    assert kinds[:79] == ["s-off"] * 79
    assert kinds[79:89] == ["s-ok"] * 10
    assert kinds[89] == "s-bad"
    assert "no data" in days[0][1]
    # 3 h down of the 12 h the station has been watched today (08:00 CST start + 10 days + 4 h).
    share = float(days[89][1].split(": ")[1].split(" ")[0])
    assert 70 <= share < 100
    other = b.get(f"/console/stations/{K1}").get_data(as_text=True)
    assert "s-bad" not in other.split("<svg", 1)[1].split("</svg>", 1)[0]


def test_unknown_station_is_a_404_page(hub):
    b = english(hub, "desk")
    for sid in ("yh-nowhere-01", "x" * 5000, "..%2f..%2fetc", "楚门"):
        resp = b.client.get(f"/console/stations/{sid}")
        assert resp.status_code == 404
        assert resp.mimetype == "text/html"


def test_pages_are_chinese_by_default_and_english_on_request(hub):
    bring_online(hub, C1)
    b = Browser(hub, "desk")
    zh = b.get("/console/").get_data(as_text=True)
    assert 'lang="zh-CN"' in zh and "驿站" in zh and "Chargers ready" not in zh
    b.get("/console/lang/en?next=/console/")
    en = b.get("/console/").get_data(as_text=True)
    assert 'lang="en"' in en and "Chargers ready" in en


def test_pages_load_nothing_from_elsewhere(hub):
    bring_online(hub, C1)
    b = Browser(hub, "boss")
    for url in ("/console/", f"/console/stations/{C1}", "/console/signin"):
        resp = b.get(url)
        page = resp.get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', page), url
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


def test_fleet_pages_the_worst_200_first_and_counts_every_station(tmp_path):
    from hub.console.fleet import PAGE
    listed = [{"sid": f"yh-big-{i:03d}", "name": f"站 {i}", "group": "big"} for i in range(250)]
    h = console_hub(tmp_path, ManualClock(T0), stations=listed)
    try:
        for i in (7, 230):  # two stations heard from, then lost: the worst
            bring_online(h, f"yh-big-{i:03d}")
        advance(h, 60)
        go_offline(h, "yh-big-230")
        b = english(h, "desk")
        first = b.get("/console/").get_data(as_text=True)
        assert len(rows_of(first)) == PAGE == 200
        assert rows_of(first)[0] == "yh-big-230"  # offline first, whatever its id
        assert "Stations 1–200 of 250" in first
        assert re.search(r"No data: <b>248</b>", first)  # counts are the whole fleet's
        second = b.get("/console/?page=2").get_data(as_text=True)
        assert len(rows_of(second)) == 50
        assert "Stations 201–250 of 250" in second
        assert not set(rows_of(first)) & set(rows_of(second))
        for hostile in ("0", "-1", "999999999999", "２", "x" * 5000):
            resp = b.client.get("/console/", query_string={"page": hostile})
            assert resp.status_code == 200
            assert len(rows_of(resp.get_data(as_text=True))) in (200, 50)
    finally:
        h.close()


def test_a_crash_is_an_html_page_in_the_console_and_json_in_the_api(hub, monkeypatch):
    b = english(hub, "desk")

    def broken():
        raise RuntimeError("the fleet is broken")
    monkeypatch.setattr(hub.fleet, "stations", broken)
    resp = b.get("/console/")
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    assert "the fleet is broken" not in resp.get_data(as_text=True)
    token = {"Authorization": "Bearer desk-secret-0123456789abcdef"}
    api = hub.app.test_client().get("/api/v1/stations", headers=token)
    assert api.status_code == 500 and api.get_json()["error"]["code"] == "internal"
