"""The station poster (hub/public/poster.py): printed to PDF by real Chromium, its
page rendered to PNG by pdftoppm, and its QR code read back by zbar's ``zbarimg`` —
the URL a rider's phone would open is the finder centred on that station.

An in-process hub (SQLite file, ManualClock, not started: the poster needs no MQTT)
served by waitress on a free port. Without Chromium, pdftoppm or zbarimg the
decoding tests are skipped with the reason, except under CI (env ``CI``), where they
fail. With ``YIZHAN_SCREENSHOTS=docs/img/finder`` the printed poster is also saved
there as ``poster.png`` (the picture of docs/finder.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from waitress.server import create_server

from hub.public.poster import finder_url
from tests.harness.browser import Chromium, require_chromium
from tests.harness.console_app import Browser, console_hub
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
PUBLIC = "https://yizhan.example.cn/yuhuan/"
STATIONS = [
    {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站", "group": "chumen", "lat": 28.1403,
     "lon": 121.2431, "address": "玉环市楚门镇先锋路 12 号", "host": "先锋村便民服务中心",
     "hours": "24h"},
    {"sid": "yh-chumen-02", "name": "楚门镇东站", "group": "chumen", "lat": 28.1421,
     "lon": 121.2502, "address": "玉环市楚门镇东街 3 号", "host": "农商银行楚门支行",
     "hours": "20:00-08:00"},
    {"sid": "yh-kanmen-01", "name": "坎门渔港驿站", "group": "kanmen"},
]


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing (make system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; required under CI", pytrace=False)
        pytest.skip(message)
    return found


def served(hub) -> Iterator[str]:
    server = create_server(hub.app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(10)


@pytest.fixture
def hub(tmp_path):
    h = console_hub(tmp_path, ManualClock(T0), stations=STATIONS, public_url=PUBLIC)
    yield h
    h.close()


@pytest.fixture
def bare_hub(tmp_path):
    """A hub whose configuration has no ``public_url:``."""
    h = console_hub(tmp_path, ManualClock(T0), stations=STATIONS)
    yield h
    h.close()


REPO = Path(__file__).resolve().parent.parent


def save_picture(pdftoppm: str, pdf: Path, name: str) -> None:
    where = os.environ.get("YIZHAN_SCREENSHOTS")
    if not where:
        return
    path = Path(where) if Path(where).is_absolute() else REPO / where
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([pdftoppm, "-r", "40", "-png", "-singlefile", str(pdf),
                    str(path / name)], check=True, timeout=60)
    (path / f"{name}.png").chmod(0o644)  # pdftoppm writes it private; it is a doc's picture


def printed_codes(url: str, tmp: Path, picture: str | None = None) -> tuple[int, list[str]]:
    """Print ``url`` to A4 PDF in Chromium as a host would, render each page at
    150 dpi with pdftoppm and read every QR code on it with zbarimg: (pages, codes)."""
    require_chromium()
    pdftoppm, zbarimg = require_tool("pdftoppm"), require_tool("zbarimg")
    pdf = tmp / "poster.pdf"
    with Chromium() as chromium:
        page = chromium.page(794, 1123)
        response = page.goto(url)
        assert response is not None and response.status == 200
        page.pdf(path=str(pdf), format="A4", print_background=True,
                 prefer_css_page_size=True)
    subprocess.run([pdftoppm, "-r", "150", "-png", str(pdf), str(tmp / "page")],
                   check=True, timeout=60)
    if picture:
        save_picture(pdftoppm, pdf, picture)
    pngs = sorted(tmp.glob("page*.png"))
    codes: list[str] = []
    for png in pngs:
        done = subprocess.run([zbarimg, "--quiet", "--raw", "-Sdisable",
                               "-Sqrcode.enable", str(png)],
                              capture_output=True, text=True, timeout=60)
        # zbarimg exits 4 when it finds no code: that is a failure of the poster.
        assert done.returncode == 0, (png.name, done.returncode, done.stderr)
        codes += done.stdout.splitlines()
    return len(pngs), codes


def test_the_printed_poster_has_one_page_whose_qr_opens_the_finder_on_that_station(
        hub, tmp_path):
    for base in served(hub):
        pages, codes = printed_codes(f"{base}/public/v1/stations/yh-chumen-02/poster",
                                     tmp_path, picture="poster")
    assert pages == 1
    assert codes == ["https://yizhan.example.cn/yuhuan/find?near=yh-chumen-02"]


def test_the_poster_says_where_the_station_is_and_when_it_is_open(hub):
    resp = hub.app.test_client().get("/public/v1/stations/yh-chumen-02/poster")
    assert resp.status_code == 200
    assert resp.content_type == "text/html; charset=utf-8"
    html = resp.get_data(as_text=True)
    for words in ("楚门镇东站", "玉环市楚门镇东街 3 号", "农商银行楚门支行",
                  "每天 20:00–08:00 开放", "扫码找最近的驿站",
                  "https://yizhan.example.cn/yuhuan/find?near=yh-chumen-02"):
        assert words in html, words
    assert "<svg" in html and 'class="qr"' in html
    # Nothing to fetch: a poster prints the same offline.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "public_url" not in html  # the missing-address note is not there

    full = hub.app.test_client().get("/public/v1/stations/yh-chumen-01/poster")
    assert "24 小时开放" in full.get_data(as_text=True)
    # A station without an address or hours still gets its poster: name and code.
    bare = hub.app.test_client().get("/public/v1/stations/yh-kanmen-01/poster")
    assert bare.status_code == 200
    text = bare.get_data(as_text=True)
    assert "坎门渔港驿站" in text and "开放时间" not in text and "地址" not in text


def test_without_public_url_the_code_is_the_address_opened_and_the_screen_says_so(
        bare_hub, tmp_path):
    for base in served(bare_hub):
        url = f"{base}/public/v1/stations/yh-chumen-01/poster"
        pages, codes = printed_codes(url, tmp_path)
        with Chromium() as chromium:
            page = chromium.page(794, 1123)
            page.goto(url)
            assert page.locator(".note").is_visible()
            assert "public_url:" in page.locator(".note").inner_text()
            page.emulate_media(media="print")
            assert not page.locator(".note").is_visible()  # never on paper
    assert pages == 1
    assert codes == [f"{base}/find?near=yh-chumen-01"]


@pytest.mark.parametrize("sid", [
    "yh-nowhere-01",                 # well formed, not a station of this hub
    "YH-CHUMEN-01",                  # not a sid
    "yh-chumen-01%00",
    "x" * 5000,
    str(10**30),
    "..%2F..%2Fetc%2Fpasswd",
])
def test_a_poster_of_no_station_is_not_found(hub, sid):
    resp = hub.app.test_client().get(f"/public/v1/stations/{sid}/poster")
    assert resp.status_code == 404
    assert b"<svg" not in resp.data


def test_markup_in_a_name_or_address_is_printed_as_text(tmp_path):
    marked = [{"sid": "yh-chumen-01", "name": "<script>alert(1)</script>驿站",
               "address": '"><svg onload=alert(1)>', "hours": "24h"}]
    h = console_hub(tmp_path, ManualClock(T0), stations=marked, public_url=PUBLIC)
    try:
        html = h.app.test_client().get("/public/v1/stations/yh-chumen-01/poster") \
            .get_data(as_text=True)
    finally:
        h.close()
    assert "<script>alert" not in html and "<svg onload" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;驿站" in html
    assert "&#34;&gt;&lt;svg onload=alert(1)&gt;" in html


def test_the_poster_needs_no_sign_in_and_takes_no_form(hub):
    client = hub.app.test_client()
    assert client.get("/public/v1/stations/yh-chumen-01/poster").status_code == 200
    assert client.post("/public/v1/stations/yh-chumen-01/poster").status_code == 405


def test_the_poster_shares_the_public_pages_allowance_of_an_address(hub):
    from hub.public.limit import BURST

    client = hub.app.test_client()
    for _ in range(BURST):
        assert client.get("/public/v1/stations/yh-chumen-01/poster").status_code == 200
    resp = client.get("/public/v1/stations/yh-chumen-01/poster")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert client.get("/find").status_code == 429  # one allowance for all public pages
    hub.clock.advance(2)  # it refills on the hub's clock
    assert client.get("/public/v1/stations/yh-chumen-01/poster").status_code == 200


def test_the_console_station_page_links_its_poster(hub):
    page = Browser(hub, "wang").get("/console/stations/yh-chumen-01")
    assert page.status_code == 200
    assert 'href="/public/v1/stations/yh-chumen-01/poster"' in page.get_data(as_text=True)


@pytest.mark.parametrize(("base", "url"), [
    ("https://yizhan.example.cn", "https://yizhan.example.cn/find?near=yh-a-01"),
    ("https://yizhan.example.cn/", "https://yizhan.example.cn/find?near=yh-a-01"),
    ("https://c.example.cn/yuhuan", "https://c.example.cn/yuhuan/find?near=yh-a-01"),
    ("http://10.0.0.2:8080/", "http://10.0.0.2:8080/find?near=yh-a-01"),
])
def test_the_finder_url_sits_under_the_public_url_path_and_all(base, url):
    assert finder_url(base, "yh-a-01") == url
