"""Sign-in → fleet → station → unlock in Debian's headless Chromium, at a desk
screen's width and a maintenance worker's phone's (hub/console).

An in-process ``hub.service.Hub`` (SQLite file, ManualClock) holding a small
fleet fed ten days of the messages the ingest would apply, served by waitress
on a free port, its MQTT ingest on a real Mosquitto so the unlock goes out to
the station's topic. The pages are saved as PNGs into the test's tmp dir, or
into ``docs/img/console/`` with ``YIZHAN_SCREENSHOTS=docs/img/console`` (the
pictures of docs/console.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.service import Hub
from protocol.topics import Kind, topic
from tests.harness.browser import Chromium, require_chromium
from tests.harness.console_app import (
    PASSWORD,
    advance,
    bring_online,
    console_hub,
    go_offline,
    send_event,
    send_state,
)
from tests.harness.mqtt import Subscriber
from tests.harness.procs import wait_until
from yizhan.clock import ManualClock

REPO = Path(__file__).resolve().parent.parent
T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
HOUR = 3600.0
DESK, PHONE = (1280, 800), (390, 844)  # a desk screen; a common phone, CSS px
FLEET = (
    ("yh-chumen-01", "楚门镇先锋驿站", "chumen"),
    ("yh-chumen-02", "楚门镇东街驿站", "chumen"),
    ("yh-chumen-03", "楚门镇菜场驿站", "chumen"),
    ("yh-kanmen-01", "坎门街道海港驿站", "kanmen"),
    ("yh-kanmen-02", "坎门街道渔港驿站", "kanmen"),
    ("yh-qinggang-01", "清港镇文化礼堂驿站", "qinggang"),
)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("YIZHAN_SCREENSHOTS")
    if not where:
        return tmp_path_factory.mktemp("console-screens")
    path = Path(where) if Path(where).is_absolute() else REPO / where
    path.mkdir(parents=True, exist_ok=True)
    return path


def _slots(charges: list[int | None], faults: dict[int, str] | None = None):
    def change(state: dict) -> None:
        state["lockers"]["slots"] = [
            {"slot": i + 1, "bank": f"PB{i + 1:04X}" if c is not None else None,
             "charge": c, "charging": c is not None and c < 80, "locked": True,
             "fault": (faults or {}).get(i + 1), "temp_c": 30 if c is not None else None,
             "cycles": 100 if c is not None else None}
            for i, c in enumerate(charges)]
    return change


def _water(level: float, word: str):
    def change(state: dict) -> None:
        state["dispenser"].update(level=level, level_state=word)
    return change


def _both(*changes):
    def change(state: dict) -> None:
        for c in changes:
            c(state)
    return change


FULL = [96, 100, 88, 91, 97, 64, None, 85, 99, 42, 93, None]


@pytest.fixture
def served(tmp_path, broker_factory) -> Iterator[tuple[Hub, str, object]]:
    require_chromium()
    broker = broker_factory()
    h = console_hub(tmp_path, ManualClock(T0),
                    mqtt={"host": broker.host, "port": broker.port},
                    http={"host": "127.0.0.1", "port": 0},
                    stations=[{"sid": s, "name": n, "group": g} for s, n, g in FLEET])
    states = {
        "yh-chumen-01": _slots(FULL, {6: "charger_fault"}),
        "yh-chumen-02": _both(_slots([100, 97, 12, None, 95, 90]), _water(0.14, "low")),
        "yh-chumen-03": _slots([98, 95, 91, 90, 96, 99]),
        "yh-kanmen-01": _slots([30, 25, None, None, 15, 20]),
        "yh-kanmen-02": _slots([99, 98, 97, 96, 95, 94]),
        "yh-qinggang-01": _both(_slots([88, 92, 94, 97]), _water(0.0, "empty")),
    }
    h.ledger.hub_started(h.clock.ms())
    for sid, change in states.items():
        bring_online(h, sid, change)
    for day in range(10):
        advance(h, 24 * HOUR)
        for sid, change in states.items():
            if not (sid == "yh-kanmen-02" and day >= 9):
                send_state(h, sid, change, rev=day + 2)
        if day == 3:  # a 5-hour outage at chumen-01, ten days ago less six
            go_offline(h, "yh-chumen-01")
            advance(h, 5 * HOUR)
            bring_online(h, "yh-chumen-01", states["yh-chumen-01"], rev=50, birth=5020)
    advance(h, HOUR)
    go_offline(h, "yh-kanmen-02")  # silent since yesterday: down now
    send_event(h, "yh-chumen-01", 88121, "bank_borrowed",
               {"slot": 3, "bank": "PB0003", "charge": 88, "rider": "r:" + "5e8f" * 6})
    advance(h, 60)
    send_event(h, "yh-chumen-01", 88122, "door_opened", {"door": "entrance"})
    h.alerts.fire("water_empty", "yh-qinggang-01", "critical", "水箱已空")
    h.alerts.fire("chargers_low", "yh-kanmen-01", "warning", "可借充电宝 0 个")
    h.writer.flush()
    h.start()
    assert h.ingest.connected.wait(10), "the hub's MQTT client did not connect"
    web = threading.Thread(target=h.serve, daemon=True)
    web.start()
    wait_until(lambda: h._server is not None, 10, "the hub's web server")
    try:
        yield h, f"http://127.0.0.1:{h.http_port}", broker
    finally:
        h.stop()
        web.join(10)
        h.close()


def _sign_in(page, base: str, name: str) -> None:
    page.goto(base + "/")
    page.wait_for_url("**/console/signin")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/")


def _fits(page) -> bool:
    """Nothing wider than the screen: no sideways scrolling on a phone."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def _shot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"console-{name}.png"), full_page=True, animations="disabled")


def test_sign_in_fleet_station_and_unlock_at_a_desk_and_on_a_phone(served, shots):
    hub, base, broker = served
    with Chromium() as chromium:
        desk = chromium.page(*DESK)
        desk.goto(base + "/")
        desk.wait_for_url("**/console/signin")
        _shot(desk, shots, "signin-desk")
        _sign_in(desk, base, "desk")
        rows = desk.locator("table.fleet tbody tr")
        assert rows.count() == len(FLEET)
        order = [rows.nth(i).locator("a").get_attribute("href").rsplit("/", 1)[1]
                 for i in range(len(FLEET))]
        # offline, the critical alert, the ones needing attention (the running alert
        # engine adds its own alerts to them), the one with nothing wrong last
        assert order[:2] == ["yh-kanmen-02", "yh-qinggang-01"]
        assert set(order[2:5]) == {"yh-kanmen-01", "yh-chumen-01", "yh-chumen-02"}
        assert order[5] == "yh-chumen-03"
        assert "离线" in rows.nth(0).inner_text()
        _shot(desk, shots, "fleet-desk")
        desk.select_option("select[name=group]", "chumen")
        desk.click("form.filters button")
        desk.wait_for_url("**/console/?group=chumen")
        assert rows.count() == 3
        desk.click("text=楚门镇先锋驿站")
        desk.wait_for_url("**/console/stations/yh-chumen-01")
        assert desk.locator(".slot").count() == len(FULL)
        assert desk.locator(".uptime svg rect").count() == 90
        assert desk.locator(".uptime svg rect.s-bad, .uptime svg rect.s-warn").count() >= 1
        _shot(desk, shots, "station-desk")

        phone = chromium.page(*PHONE, is_mobile=True)
        _sign_in(phone, base, "wang")  # maintenance of chumen
        assert _fits(phone)
        # one column: the fleet's rows are cards, one under the other
        boxes = [phone.locator("table.fleet tbody tr").nth(i).bounding_box() for i in range(2)]
        assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"] - 1
        assert boxes[0]["width"] > PHONE[0] * 0.8
        _shot(phone, shots, "fleet-phone")
        phone.goto(base + "/console/stations/yh-chumen-01")
        assert _fits(phone)
        with Subscriber(broker, [topic("yh-chumen-01", Kind.CMD)]) as sub:
            phone.select_option("select[name=slot]", "3")
            phone.fill("input[name=reason]", "骑手说 3 号仓打不开")
            phone.click("button.danger")
            phone.wait_for_url("**/console/stations/yh-chumen-01")
            assert phone.locator(".flash").count() == 1
            # the unlock is listed at once, before the writer has stored it
            # (the command in the reader's words: 开锁 on this Chinese page)
            assert phone.locator("td", has_text='开锁 {"slot": 3}').count() == 1
            cmd = sub.wait_for(lambda m: True, timeout=10).json()
        assert cmd["cmd"] == "unlock" and cmd["args"] == {"slot": 3}
        assert cmd["by"] == "console:wang"
        audit = [a for a in hub.directory.audit() if a["action"] == "unlock"]
        assert [(a["by"], a["detail"]["reason"]) for a in audit] == [
            ("console:wang", "骑手说 3 号仓打不开")]
        _shot(phone, shots, "station-phone")
        # Not wang's group: the page shows no unlock form.
        phone.goto(base + "/console/stations/yh-kanmen-01")
        assert phone.locator("button.danger").count() == 0
        assert _fits(phone)
