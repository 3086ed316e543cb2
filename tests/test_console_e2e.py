"""The console end to end, as the issue's people use it (issue 16).

A real ``yizhan hub`` process with its console, a real Mosquitto, a real agent
on simulated hardware (in this process, so the test holds the board and the
tank) and the real ``yizhan kiosk`` process; Debian's headless Chromium drives
both the console and the kiosk. An ops user signs in, sees the fleet, opens
the station, acknowledges the alert a drained tank raised, exports the uptime
CSV, adds a staff member with a PIN — and that staff member then signs in on
the kiosk with that PIN, because the Directory travelled from the hub over the
broker to the agent. A rider denied in the console is refused at the kiosk.

Afterwards no rider's number and no PIN is in any log, the hub's database,
any page the browser was shown or the CSV; the staff phone (kept for alerts,
docs/security.md) is only in the database. Each console page is saved as a
PNG into the test's tmp dir, or into ``docs/img/console/`` with
``YIZHAN_SCREENSHOTS=docs/img/console`` (how docs/console.md's pictures are made).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.browser import (
    FLEET_KEY,
    SID,
    STATION_NAME,
    Chromium,
    KioskStation,
    require_chromium,
)
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from tests.test_kiosk_e2e import (
    borrow_through_the_api,
    go_home,
    shown,
    start_borrow,
    tap,
    type_digits,
    wait_state,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "ops-password-for-the-test"
TOKEN = "e2e-read-token-0123456789abcdef"
# Eight digits, so a match in a file is not a coincidence of timestamps.
STAFF_PIN = "73950281"
STAFF_PHONE, RIDER_PHONE, DENIED_PHONE = "13900001111", "13812345678", "13912345670"
WAIT_MS = 10_000


class Hub:
    """A ``yizhan hub`` process with its console, beside the station's files."""

    def __init__(self, tmp: Path, broker, procs: Procs) -> None:
        self.dir = tmp / "hub"
        self.dir.mkdir()
        self.procs = procs
        key = tmp / "fleet.key"  # the station's own (KioskStation writes the same bytes)
        key.write_bytes(FLEET_KEY)
        key.chmod(0o600)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.config = write_yaml(self.dir / "hub.yaml", {
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
            "database": f"sqlite:///{self.dir / 'hub.db'}",
            "http": {"host": "127.0.0.1", "port": int(self.url.rsplit(":", 1)[1])},
            "api_tokens": [{"name": "e2e", "token": TOKEN, "scopes": ["read"]}],
            "fleet_key_file": str(key),
            "stations": [{"sid": SID, "name": STATION_NAME, "group": "chumen"}],
            "console": {"secret_key_file": str(self.dir / "console.key")},
        })
        for name, role in (("desk", "ops"), ("boss", "admin")):
            done = subprocess.run(
                [sys.executable, "-m", "yizhan", "console-user", "add", name, "--role", role,
                 "--config", str(self.config)], input=PASSWORD + "\n", text=True,
                capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr
        self.proc = procs.start("hub", "hub", "--config", str(self.config))
        wait_until(lambda: http_json(self.url + "/healthz")[0] == 200, 20, "hub healthz",
                   on_fail=self.proc.tail)

    def api(self, path: str) -> dict:
        status, body = http_json(self.url + path, token=TOKEN)
        assert status == 200, (path, status, body)
        return body


@pytest.fixture
def site(tmp_path, broker_factory):
    require_chromium()
    broker = broker_factory()
    procs = Procs(tmp_path)
    hub = Hub(tmp_path, broker, procs)
    station = KioskStation(tmp_path, broker)
    with Chromium() as chromium:
        yield hub, station, chromium
    station.close()
    procs.close()


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory) -> Path:
    where = os.environ.get("YIZHAN_SCREENSHOTS")
    if not where:
        return tmp_path_factory.mktemp("console-screens")
    path = Path(where)
    path = path if path.is_absolute() else REPO / path
    path.mkdir(parents=True, exist_ok=True)
    return path


class Seen:
    """Every page source the browser was shown, and its screenshots."""

    def __init__(self, shots: Path) -> None:
        self.shots = shots
        self.sources: list[str] = []

    def __call__(self, page, name: str | None = None) -> str:
        page.wait_for_load_state("load")
        html = page.content()
        self.sources.append(html)
        if name is not None:
            page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True,
                            animations="disabled")
        return html


def sign_in(page, hub: Hub, name: str) -> None:
    page.goto(hub.url + "/")
    page.wait_for_selector('input[name="password"]', timeout=WAIT_MS)  # / led to the sign-in
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', PASSWORD)
    page.click('form.signin button[type="submit"]')
    page.wait_for_url("**/console/", timeout=WAIT_MS)


def held(station: KioskStation) -> dict:
    """The Directory the station keeps on its disk (firmware/directory.py)."""
    path = station.tmp_path / "station" / "directory.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def staff_signs_in_at_the_kiosk(page, station: KioskStation, staff_id: str, pin: str) -> None:
    go_home(page, station)
    tap(page, "#staff")
    if page.locator(f'[data-staff="{staff_id}"]').count():
        tap(page, f'[data-staff="{staff_id}"]')
    else:
        page.wait_for_selector("#staff-id", state="attached", timeout=WAIT_MS)
        for key in staff_id:
            tap(page, f'[data-key="{key}"]')
        wait_until(lambda: shown(page, "#staff-id") == staff_id, 5, "the staff id typed")
        tap(page, "#next")
    page.wait_for_selector("#pin", state="attached", timeout=WAIT_MS)
    type_digits(page, pin)
    tap(page, "#next")
    page.wait_for_selector("#release-empty", timeout=WAIT_MS)


def test_console_from_sign_in_to_the_kiosk(site, shots_dir, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # the agent runs in this process: its log is here
    hub, station, chromium = site
    seen = Seen(shots_dir)
    page = chromium.page(1280, 900)

    # Sign in; the fleet shows the station.
    page.goto(hub.url + "/")
    page.wait_for_selector('input[name="password"]', timeout=WAIT_MS)
    seen(page, "console-signin")
    sign_in(page, hub, "desk")
    wait_until(lambda: hub.api(f"/api/v1/stations/{SID}")["online"], 20, "the station online")
    page.reload()
    page.wait_for_selector(f"text={STATION_NAME}", timeout=WAIT_MS)
    seen(page, "console-fleet")

    # Open the station.
    page.click(f'a[href$="/console/stations/{SID}"]')
    page.wait_for_url(f"**/console/stations/{SID}", timeout=WAIT_MS)
    assert SID in seen(page, "console-station")

    # A loan, so the loans page has one; then the tank runs dry and an alert fires.
    borrow_through_the_api(station, RIDER_PHONE)
    station.hardware.simulation.water.drain()

    def water_alert():
        alerts = hub.api(f"/api/v1/alerts?sid={SID}&state=firing")["alerts"]
        return next((a for a in alerts if a["rule"].startswith("water_")), None)

    alert = wait_until(water_alert, 30, "a water alert firing at the hub",
                       on_fail=hub.proc.tail)
    page.goto(hub.url + "/console/alerts")
    page.wait_for_selector(f'form[action$="/alerts/{alert["id"]}/ack"] button', timeout=WAIT_MS)
    seen(page, "console-alerts")
    page.click(f'form[action$="/alerts/{alert["id"]}/ack"] button')
    page.wait_for_selector(".flash.ok", timeout=WAIT_MS)
    seen(page)
    acked = hub.api(f"/api/v1/alerts?sid={SID}&state=acked")["alerts"]
    assert alert["id"] in {a["id"] for a in acked}

    # The uptime report and its CSV, downloaded as a browser does.
    page.goto(hub.url + "/console/uptime")
    seen(page, "console-uptime")
    with page.expect_download(timeout=WAIT_MS) as download:
        page.click("a[download]")
    raw = Path(download.value.path()).read_bytes()
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    row = next(r for r in rows if r["kind"] == "station")
    assert (row["sid"], row["name"], row["group"]) == (SID, STATION_NAME, "chumen")
    assert float(row["up_s"]) > 0 and row["availability"] != ""

    page.goto(hub.url + "/console/loans")
    assert "PB" in seen(page, "console-loans")
    page.goto(hub.url + "/console/refill")
    assert STATION_NAME in seen(page, "console-refill")

    # A staff member with a PIN, added in the console ...
    page.goto(hub.url + "/console/people")
    page.click("details:has(#add-staff) > summary")
    page.fill('#add-staff input[name="id"]', "li")
    page.fill('#add-staff input[name="name"]', "李师傅")
    page.fill('#add-staff input[name="phone"]', STAFF_PHONE)
    page.fill('#add-staff input[name="groups"]', "chumen")
    page.fill('#add-staff input[name="pin"]', STAFF_PIN)
    page.click('#add-staff button[type="submit"]')
    page.wait_for_selector(".flash.ok", timeout=WAIT_MS)
    assert "139****1111" in seen(page)
    # ... reaches the station over the broker, and signs in at the kiosk with it.
    wait_until(lambda: "li" in {s["id"] for s in held(station).get("staff", ())}, 20,
               "li in the station's Directory", on_fail=hub.proc.tail)
    kiosk = chromium.page(800, 480)
    staff_signs_in_at_the_kiosk(kiosk, station, "li", STAFF_PIN)
    station.wait_event("maintenance_started", staff="li")
    tap(kiosk, "#staff-exit")
    station.wait_event("maintenance_ended", staff="li")

    # A rider denied in the console is refused at the kiosk.
    page.goto(hub.url + "/console/people")
    page.click("details:has(#deny-rider) > summary")
    page.fill('#deny-rider input[name="phone"]', DENIED_PHONE)
    page.fill('#deny-rider input[name="reason"]', "多次逾期不还")
    page.click('#deny-rider button[type="submit"]')
    page.wait_for_selector(".flash.ok", timeout=WAIT_MS)
    seen(page, "console-people")
    denied = station.rider(DENIED_PHONE)
    wait_until(lambda: denied in held(station).get("denied", ()), 20,
               "the denial at the station", on_fail=hub.proc.tail)
    mark = len(station.board.frames_received)
    start_borrow(kiosk, station, DENIED_PHONE)
    tap(kiosk, "#next")
    wait_state(kiosk, "failed")
    assert kiosk.locator("#status").get_attribute("data-reason") == "denied"
    assert station.unlocks(after=mark) == [], "nothing opened for a denied rider"
    kiosk_sources = [kiosk.content()]

    # The admin's pages, and the maintenance worker's phone.
    admin = chromium.page(1280, 900)
    sign_in(admin, hub, "boss")
    for path, name in (("/console/users", "console-users"), ("/console/tokens", "console-tokens")):
        admin.goto(hub.url + path)
        seen(admin, name)
    phone = chromium.page(390, 844)
    sign_in(phone, hub, "desk")
    phone.goto(hub.url + "/console/refill")
    seen(phone, "console-refill-phone")
    phone.goto(hub.url + "/console/alerts")
    seen(phone, "console-alerts-phone")

    # Nothing secret anywhere it could leak to: the hub's and the kiosk's logs,
    # the agent's (in this process), the hub's database, every page, the CSV.
    station.close()
    hub.procs.close()
    logs = b"".join(p.log.read_bytes() for p in hub.procs.started + station.procs.started)
    logs += "\n".join(r.getMessage() for r in caplog.records).encode()
    database = b"".join(p.read_bytes() for p in hub.dir.glob("hub.db*"))
    pages = "\n".join(seen.sources + kiosk_sources)
    for secret in (STAFF_PIN, RIDER_PHONE, DENIED_PHONE):
        assert secret.encode() not in logs, secret
        assert secret.encode() not in database, secret
        assert secret not in pages, secret
        assert secret.encode() not in raw, secret
    assert STAFF_PHONE.encode() not in logs and STAFF_PHONE not in pages
