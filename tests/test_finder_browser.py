"""The finder in Debian's headless Chromium emulating a phone at a fixed place.

An in-process ``hub.service.Hub`` (SQLite file, ManualClock) holding six
stations round Chumen, fed the messages the ingest would apply: one offline,
one out of water, one without a charger ready, two working, one whose place is
not registered. Served by waitress on a free port; the phone (390×844, mobile,
touch) is given a fixed geolocation and the permission to read it. The page
must list the stations nearest first, mark the broken ones, and point each at
the working station nearest the phone; its transferred size is measured from
the browser's own Resource Timing. Screenshots go to the test's tmp dir, or to
``docs/img/finder/`` with ``YIZHAN_SCREENSHOTS=docs/img/finder`` (docs/finder.md).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from hub.public.finder import distance_m
from hub.public.maps import navigate, wgs84_to_gcj02
from hub.service import Hub
from tests.harness.browser import Chromium, require_chromium
from tests.harness.console_app import bring_online, console_hub, go_offline
from tests.harness.procs import wait_until
from yizhan.clock import ManualClock

REPO = Path(__file__).resolve().parent.parent
T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
PHONE = (390, 844)
HERE = {"latitude": 28.1800, "longitude": 121.2800}  # a rider in Chumen
#: The page's target on a weak 4G link (issue 20): the whole transfer, headers included.
MAX_TRANSFER = 30 * 1024
FLEET = (  # sid, name, lat, lon, state
    ("yh-chumen-01", "楚门镇先锋驿站", 28.1810, 121.2805, "offline"),
    ("yh-chumen-02", "楚门镇东街驿站", 28.1830, 121.2820, "no_water"),
    ("yh-chumen-03", "楚门镇菜场驿站", 28.1870, 121.2850, "working"),
    ("yh-kanmen-01", "坎门街道海港驿站", 28.0800, 121.2700, "working"),
    ("yh-kanmen-02", "坎门街道渔港驿站", 28.0900, 121.2600, "no_chargers"),
    ("yh-qinggang-01", "清港镇文化礼堂驿站", None, None, "working"),
)


def _state(kind: str):
    def change(state: dict) -> None:
        charges = [20, 35, None, 10] if kind == "no_chargers" else [96, 100, 88, None]
        state["lockers"]["slots"] = [
            {"slot": i + 1, "bank": f"PB{i + 1:04X}" if c is not None else None, "charge": c,
             "charging": c is not None and c < 80, "locked": True, "fault": None,
             "temp_c": 30, "cycles": 100} for i, c in enumerate(charges)]
        if kind == "no_water":
            state["dispenser"].update(level=0.0, level_state="empty")
    return change


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("YIZHAN_SCREENSHOTS")
    if not where:
        return tmp_path_factory.mktemp("finder-screens")
    path = Path(where) if Path(where).is_absolute() else REPO / where
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Hub, str]]:
    with _served(tmp_path) as hub_and_base:
        yield hub_and_base


@contextlib.contextmanager
def _served(tmp_path, **extra) -> Iterator[tuple[Hub, str]]:
    require_chromium()
    stations = [{"sid": sid, "name": name, "group": sid.split("-")[1], "hours": "24h",
                 **({"lat": lat, "lon": lon, "address": f"{name[:3]}{i + 1} 号",
                     "host": "村便民服务中心"} if lat is not None else {})}
                for i, (sid, name, lat, lon, _) in enumerate(FLEET)]
    h = console_hub(tmp_path, ManualClock(T0), http={"host": "127.0.0.1", "port": 0},
                    stations=stations, **extra)
    for sid, _name, _lat, _lon, kind in FLEET:
        bring_online(h, sid, _state(kind))
        if kind == "offline":
            go_offline(h, sid)
    web = threading.Thread(target=h.serve, daemon=True)
    web.start()
    wait_until(lambda: h._server is not None, 10, "the hub's web server")
    try:
        yield h, f"http://127.0.0.1:{h.http_port}"
    finally:
        h.stop()
        web.join(10)
        h.close()


def _same_link(got: str, want: str) -> bool:
    """The same URL once decoded, its coordinates equal to 1e-6° (the script's
    sines and Python's may differ in the last bit)."""
    numbers = re.compile(r"\d+\.\d{6}")
    got, want = unquote(got), unquote(want)
    if numbers.sub("#", got) != numbers.sub("#", want):
        return False
    return all(abs(float(a) - float(b)) <= 1.5e-6
               for a, b in zip(numbers.findall(got), numbers.findall(want), strict=True))


def _order(page) -> list[str]:
    return page.eval_on_selector_all("#list > li", "els => els.map(e => e.dataset.sid)")


def _next_of(page, sid: str) -> str | None:
    return page.get_attribute(f"#s-{sid} .next a", "href")


def test_a_phone_finds_the_nearest_working_station(served, shots):
    hub, base = served
    placed = [f for f in FLEET if f[2] is not None]
    nearest_first = [f[0] for f in sorted(placed, key=lambda f: distance_m(
        HERE["latitude"], HERE["longitude"], f[2], f[3]))] + ["yh-qinggang-01"]
    by_name = [f[0] for f in sorted(FLEET, key=lambda f: f[1])]
    assert nearest_first != by_name  # so the order seen is the phone's doing
    with Chromium() as chromium:
        phone = chromium.page(*PHONE, is_mobile=True, device_scale_factor=2,
                              geolocation=HERE, permissions=["geolocation"])
        requests: list[str] = []
        phone.on("request", lambda r: requests.append(r.url))
        phone.goto(base + "/find")
        phone.wait_for_function("document.getElementById('where').textContent"
                                ".indexOf('按离你的距离排列') === 0")
        assert _order(phone) == nearest_first
        # the broken ones are marked, each saying why
        for sid, why in (("yh-chumen-01", "离线"), ("yh-chumen-02", "没有热水"),
                         ("yh-kanmen-02", "没有可借的充电宝")):
            card = phone.locator(f"#s-{sid}")
            assert card.get_attribute("class") == "bad"
            assert "暂不可用" in card.inner_text() and why in card.inner_text()
        assert phone.locator("#s-yh-chumen-03").get_attribute("class") is None
        # each points at the working station nearest the phone: chumen-03, not the
        # kanmen-01 the hub named for kanmen-02 (nearest to that station itself)
        rendered = hub.app.test_client().get("/find").get_data(as_text=True)
        card = rendered[rendered.index('id="s-yh-kanmen-02"'):]
        card = card[:card.index("</li>")]
        assert 'class="next">最近的可用驿站：<a href="#s-yh-kanmen-01"' in card
        for sid in ("yh-chumen-01", "yh-chumen-02", "yh-kanmen-02"):
            assert _next_of(phone, sid) == "#s-yh-chumen-03"
        assert phone.locator("#s-yh-chumen-01 .next a").inner_text() == "楚门镇菜场驿站"
        assert phone.locator("#s-yh-chumen-01 .km").inner_text() == "120 m"
        # the navigate links, made by the page's script, are the hub's navigate()
        # (hub/public/maps.py, the one tested against the GCJ-02 reference points)
        for sid, name, lat, lon, _kind in FLEET[:5]:
            links = phone.eval_on_selector_all(f"#s-{sid} details a",
                                               "els => els.map(e => [e.className, e.href])")
            assert [k for k, _ in links] == ["amap", "baidu", "qq"]
            address = f"{name[:3]}{FLEET.index((sid, name, lat, lon, _kind)) + 1} 号"
            for (app, href), want in zip(links, navigate(lat, lon, name, address).values(),
                                         strict=True):
                assert _same_link(href, want), (app, href, want)
        phone.screenshot(path=str(shots / "finder-phone.png"), full_page=True,
                         animations="disabled")
        phone.click("#s-yh-chumen-01 .next a")
        assert phone.url.endswith("#s-yh-chumen-03")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # the transfer: the page alone (no script, style, font or image fetched)
        timing = phone.evaluate("""() => {
            const n = performance.getEntriesByType('navigation')[0];
            return {transfer: n.transferSize, encoded: n.encodedBodySize,
                    decoded: n.decodedBodySize,
                    others: performance.getEntriesByType('resource').length};
        }""")
        print(f"\nfinder page, 6 stations: {timing['transfer']} B transferred "
              f"({timing['encoded']} B gzipped body, {timing['decoded']} B of HTML)")
        assert requests == [base + "/find"]
        assert timing["others"] == 0
        assert 0 < timing["transfer"] < MAX_TRANSFER
        assert timing["encoded"] < timing["decoded"]  # it came gzipped


def test_a_poster_link_centres_on_its_station_without_the_phones_position(served, shots):
    _hub, base = served
    with Chromium() as chromium:
        # no permission: the phone's position stays unknown; the station's place is used
        phone = chromium.page(*PHONE, is_mobile=True, locale="en-US")
        phone.goto(base + "/find?near=yh-kanmen-02&lang=en")
        phone.wait_for_function("document.getElementById('where').textContent"
                                ".indexOf('Nearest to') === 0")
        order = _order(phone)
        assert order[:2] == ["yh-kanmen-02", "yh-kanmen-01"]
        assert "No power bank to borrow" in phone.locator("#s-yh-kanmen-02").inner_text()
        # from the poster's station, the nearest working one is kanmen-01
        assert _next_of(phone, "yh-kanmen-02") == "#s-yh-kanmen-01"
        assert phone.locator("#s-yh-kanmen-01 .km").inner_text().endswith("km")
        phone.screenshot(path=str(shots / "finder-phone-near-en.png"), full_page=True,
                         animations="disabled")


TILES = "https://tiles.test/{z}/{x}/{y}.png"
#: A 1×1 PNG for every tile: the map's drawing is tested, not a tile server.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAC"
                       "hwGA60e6kgAAAABJRU5ErkJggg==")


def _tile_of(lat: float, lon: float, z: int) -> tuple[int, int]:
    """Web Mercator tile (x, y) of a point at zoom z."""
    n = 2 ** z
    s = math.sin(math.radians(lat))
    return int((lon + 180) / 360 * n), int((0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n)


def test_with_a_tile_server_the_page_draws_the_stations_round_the_rider(tmp_path):
    finder = {"tile_url": TILES, "tile_datum": "gcj02", "tile_attribution": "© 测试底图"}
    with _served(tmp_path, finder=finder) as (_hub, base), Chromium() as chromium:
        phone = chromium.page(*PHONE, is_mobile=True, geolocation=HERE,
                              permissions=["geolocation"])
        tiles: list[str] = []

        def tile(route) -> None:
            tiles.append(route.request.url)
            route.fulfill(status=200, content_type="image/png", body=PNG)

        phone.route("https://tiles.test/**", tile)
        phone.goto(base + "/find")
        phone.wait_for_function("document.getElementById('where').textContent"
                                ".indexOf('按离你的距离排列') === 0")
        wait_until(lambda: phone.evaluate(
            "[...document.querySelectorAll('#map img')].every(i => i.complete "
            "&& i.naturalWidth === 1)"), 10, "the tiles")
        box = phone.locator("#map").bounding_box()
        assert box["height"] == 220 and box["width"] > 300
        # the rider's tile at the zoom chosen, in GCJ-02 as the server draws
        z = int(tiles[0].split("/")[3])
        assert 8 <= z <= 16
        here = wgs84_to_gcj02(HERE["latitude"], HERE["longitude"])
        tx, ty = _tile_of(*here, z)
        assert f"https://tiles.test/{z}/{tx}/{ty}.png" in tiles
        assert all(t.startswith(f"https://tiles.test/{z}/") for t in tiles)
        # a pin per placed station, red for the broken; the nearest working one,
        # chumen-03, is on the map, the rider (blue) in its middle
        pins = phone.eval_on_selector_all("#map a", "els => els.map(e => [e.hash, e.className, "
                                          "parseFloat(e.style.left), parseFloat(e.style.top)])")
        assert sorted(p[0] for p in pins) == sorted(f"#s-{f[0]}" for f in FLEET if f[2])
        assert {p[0]: p[1] for p in pins}["#s-yh-chumen-01"] == "bad"
        _, css, x, y = next(p for p in pins if p[0] == "#s-yh-chumen-03")
        assert css == "" and 0 <= x <= box["width"] and 0 <= y <= box["height"]
        assert phone.locator(".attr").inner_text() == "© 测试底图"
        phone.screenshot(path=str(tmp_path / "finder-map.png"), full_page=True,
                         animations="disabled")
