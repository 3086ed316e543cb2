"""The kiosk through Flask's test client, against a REAL agent (issue 5).

Behind the kiosk: an in-process agent on ``hardware: sim`` (MockFactory pins, the
board simulator on a pseudo-terminal), a real Mosquitto, and the agent's local
API over real HTTP on loopback — the only backend the kiosk has. One agent
serves the whole module; each test uses its own phone numbers (riders), puts the
directory it needs, and leaves the cabinet full again.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, render_template
from flask.testing import FlaskClient

from firmware.directory import hash_pin
from kiosk import create_app
from kiosk.config import BorrowRate, KioskConfig
from kiosk.i18n import load_translations
from protocol import messages as m
from protocol.frames import Cmd
from protocol.ids import rider_id
from tests.harness.procs import wait_until
from tests.test_agent import FLEET_KEY, Running
from yizhan.clock import ManualClock

SID = "yh-kiosk-01"
NAME = "楚门镇先锋驿站"
STAFF = (("li", "李师傅", "2468"), ("wang", "王师傅", "1357"), ("zhou", "周师傅", "8642"))
_REV = itertools.count(1000)
_BANKS = itertools.count(1)
_PHONES = itertools.count(1)
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
ATTEMPT_URL = re.compile(r"/borrow/(b-[0-9a-f]{16})\Z")


def new_phone(prefix: str = "139") -> str:
    """A fresh rider: every test borrows as people nobody else in the module is."""
    return f"{prefix}{next(_PHONES):08d}"


# -- the station behind the kiosk --------------------------------------------------------


@pytest.fixture(scope="module", name="station")
def station_fixture(tmp_path_factory, broker):
    """One real agent for the module, with a short take timeout (not_taken in 2 s)."""
    r = Running(tmp_path_factory.mktemp("kiosk-station"), broker,
                station={"id": SID, "name": NAME}, lending={"take_timeout": "2s"})
    use_directory(r)
    yield r
    r.stop()


def use_directory(station: Running, *, lending: str = "open", min_charge: int = 40,
                  max_per_rider: int = 1, riders: tuple[tuple[str, str], ...] = (),
                  denied: tuple[str, ...] = ()) -> None:
    """Put a directory on the agent as the hub would (applied from the retained
    message; here straight into its DirectoryStore, which is what that does).
    ``min_charge`` 40 by default: every bank of the simulated cabinet lends, so a
    slot held after a failure (5 min) never starves the next test."""
    d = m.Directory(
        rev=next(_REV), ts=int(time.time() * 1000),
        policy=m.Policy(lending=lending, min_charge=min_charge, max_per_rider=max_per_rider),
        riders=tuple(m.RiderEntry(id=rider_id(FLEET_KEY, p), pin=hash_pin(pin, iterations=1000))
                     for p, pin in riders),
        staff=tuple(m.StaffEntry(id=i, name=n, pin=hash_pin(pin, iterations=1000))
                    for i, n, pin in STAFF),
        denied=tuple(rider_id(FLEET_KEY, p) for p in denied))
    assert station.agent.directory.apply(d)


@pytest.fixture(autouse=True, name="cabinet")
def cabinet_fixture(station):
    """Each test starts with the locker online and banks to lend, and leaves the
    default directory, no fault or session, every slot full (not waited for: the
    next test's start waits only if it has to)."""
    wait_until(lambda: (s := station.get("/v1/station")[1])["online"]["locker"]
               and len(s["chargers"]["ready"]) >= 2, 8, "the locker online with banks ready")
    yield station
    board = station.board
    lending = station.agent.lending
    if lending.maintenance is not None:
        lending.maintenance.end()
    if not board.plugged:
        board.replug()
    use_directory(station)
    for n in range(1, board.n_slots + 1):
        board.busy(n, False)
        board.set_fault(n, None)
        if not board.slot(n).present:
            board.insert(n, f"PBK{next(_BANKS):05d}", charge=95)


# -- the kiosk in front of it ------------------------------------------------------------


def kiosk_config(station: Running, tmp_path: Path, **overrides: Any) -> KioskConfig:
    values: dict[str, Any] = {
        "fleet_key": FLEET_KEY, "data_dir": tmp_path / "kiosk", "station_name": NAME,
        "sid": SID, "api_url": station.base, "borrow_rate": BorrowRate(1000, 100_000),
    }
    values.update(overrides)
    return KioskConfig(**values)


@pytest.fixture(name="app")
def app_fixture(station, tmp_path) -> Flask:
    return create_app(kiosk_config(station, tmp_path))


class Screen:
    """One browser at the kiosk, tapping through it as a rider or staff member would
    (Flask tutorial's AuthActions); it keeps every response for the privacy checks."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.responses: list[Any] = []
        self._token: str | None = None

    def get(self, url: str) -> Any:
        return self._seen(self.client.get(url))

    def post(self, url: str, data: dict[str, str], *, token: str | None = "page") -> Any:
        if token == "page":
            token = self.token()
        body = dict(data) if token is None else {"csrf": token, **data}
        return self._seen(self.client.post(url, data=body))

    def token(self) -> str:
        assert self._token, "open a page with a form first"
        return self._token

    def _seen(self, response: Any) -> Any:
        self.responses.append(response)
        found = CSRF_RE.search(response.get_data(as_text=True))
        if found:
            self._token = found.group(1)
        return response

    # -- rider actions ---------------------------------------------------------------

    def borrow(self, phone: str, pin: str | None = None) -> Any:
        """Type ``phone`` (and ``pin`` when asked for one) and tap Next."""
        self.get("/borrow")
        r = self.post("/borrow", {"phone": phone})
        if r.status_code == 302 and r.location.endswith("/borrow/pin") and pin is not None:
            self.get("/borrow/pin")
            r = self.post("/borrow/pin", {"pin": pin})
        return r

    def status(self, attempt: str) -> dict[str, Any]:
        r = self.get(f"/borrow/{attempt}/status.json")
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()

    def wait_state(self, attempt: str, *states: str, timeout: float = 6.0) -> dict[str, Any]:
        return wait_until(lambda: (s := self.status(attempt))["state"] in states and s,
                          timeout, f"attempt {attempt} to be {states}")


def attempt_of(response: Any) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)
    found = ATTEMPT_URL.search(response.location)
    assert found, response.location
    return found.group(1)


@pytest.fixture(name="screen")
def screen_fixture(app) -> Screen:
    return Screen(app.test_client())


class Page:
    """Elements of a rendered page by id (enough for the DOM contract)."""

    def __init__(self, response: Any) -> None:
        from html.parser import HTMLParser

        self.html = response if isinstance(response, str) else response.get_data(as_text=True)
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        page = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                page.tags.append((tag, a))
                if a.get("id"):
                    page.by_id[a["id"]] = {"tag": tag, **a}

        Parser().feed(self.html)

    def __getitem__(self, element_id: str) -> dict[str, str | None]:
        return self.by_id[element_id]

    def __contains__(self, element_id: str) -> bool:
        return element_id in self.by_id

    def text_of(self, element_id: str) -> str:
        start = self.html.index(f'id="{element_id}"')
        end = self.html.index("<", self.html.index(">", start))
        return self.html[self.html.index(">", start) + 1:end].strip()


def take_bank(station: Running, screen: Screen, attempt: str) -> tuple[int, str]:
    """The rider pulls the bank out of the open slot; the board reports it gone."""
    opened = screen.wait_state(attempt, "open")
    bank = station.board.take(opened["slot"])
    screen.wait_state(attempt, "taken")
    return opened["slot"], bank


def unlocks(station: Running) -> int:
    return sum(1 for f in station.board.frames_received if f.cmd == Cmd.UNLOCK)


# -- home ---------------------------------------------------------------------------------


def test_home_shows_chargers_water_name_clock_and_the_links(screen, station):
    r = screen.get("/")
    assert r.status_code == 200
    page = Page(r)
    for element in ("borrow", "return", "staff", "lang-zh", "lang-en", "clock", "chargers",
                    "water", "ready-count"):
        assert element in page, element
    ready = station.get("/v1/station")[1]["chargers"]["ready"]
    assert page["chargers"]["data-ready"] == str(len(ready))
    for charger in ready[:6]:
        assert f'{charger["charge"]}%' in page.html
    assert NAME in page.html and "借充电宝" in page.html  # 中文 by default
    assert page.html.count('lang="zh-Hans"') >= 1
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "0"  # home has no idle timer of its own


def test_home_does_not_promise_hot_water_while_the_tank_is_still_cold(screen, station):
    water = station.get("/v1/station")[1]["water"]
    assert water["level_state"] == "ok" and water["temp_c"] < 85  # the sim tank starts cold
    note = Page(screen.get("/")).text_of("water-note")
    assert "正在加热" in note and "热水充足" not in note


def test_home_says_when_the_next_bank_will_be_ready(screen, station):
    use_directory(station, min_charge=100)  # nothing is full: every bank is charging
    page = Page(screen.get("/"))
    assert page["chargers"]["data-ready"] == "0"
    ready_at = station.get("/v1/station")[1]["chargers"]["next_ready_at"]
    assert ready_at is not None
    assert time.strftime("%H:%M", time.localtime(ready_at / 1000)) in page.text_of("next-ready")


def test_the_language_switch(screen):
    assert 'lang="zh-Hans"' in screen.get("/").get_data(as_text=True)
    r = screen.get("/lang/en")
    assert r.status_code == 302 and r.location.endswith("/")
    home = screen.get("/").get_data(as_text=True)
    assert '<html lang="en">' in home and "Borrow a power bank" in home
    assert "借充电宝" not in home
    # The language stays through the pages, and the home button keeps it ...
    assert "Your mobile number" in screen.get("/borrow").get_data(as_text=True)
    screen.get("/reset")
    assert "Borrow a power bank" in screen.get("/").get_data(as_text=True)
    # ... while the idle timer brings the next rider back to 中文.
    body = next(a for t, a in Page(screen.get("/")).tags if t == "body")
    assert body["data-lang-reset"] == "60"
    screen.get("/reset?idle=1")
    assert "借充电宝" in screen.get("/").get_data(as_text=True)
    screen.get("/lang/en")
    screen.get("/lang/zh")
    assert "借充电宝" in screen.get("/").get_data(as_text=True)
    assert screen.get("/lang/fr").status_code == 404


# -- the phone number ------------------------------------------------------------------------


def test_the_borrow_page_follows_the_dom_contract(screen):
    page = Page(screen.get("/borrow"))
    for key in [str(d) for d in range(10)] + ["back", "clear"]:
        assert any(t == "button" and a.get("data-key") == key for t, a in page.tags), key
    phone = page["phone"]
    assert phone["tag"] == "input" and "readonly" in phone and phone["inputmode"] == "none"
    assert phone["maxlength"] == "11" and phone["autocomplete"] == "off"
    assert page["next"]["tag"] == "button" and page["next"]["type"] == "submit"
    form = next(a for t, a in page.tags if t == "form")
    assert form["method"] == "post"  # the number travels in a POST body, never a URL
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "60" and body["data-idle-url"] == "/reset?idle=1"


@pytest.mark.parametrize(("phone", "problem", "says"), [
    ("", "empty", "请先输入手机号"),
    ("1381234567", "too_short", "只输入了 10 位"),
    ("138123456789", "too_long", "输入了 12 位"),
    ("12812345678", "bad_prefix", "13 至 19 开头"),
    ("10012345678", "bad_prefix", "13 至 19 开头"),
    ("1381234567a", "not_digits", "只能是数字"),
    ("abcdefghijk", "not_digits", "只能是数字"),
    ("138 1234 5678", "not_digits", "只能是数字"),
    ("１３８１２３４５６７８", "not_digits", "只能是数字"),  # full-width: not from our keypad
])
def test_a_bad_phone_number_is_refused_and_never_echoed(screen, station, phone, problem, says):
    before = unlocks(station)
    screen.get("/borrow")
    r = screen.post("/borrow", {"phone": phone})
    assert r.status_code == 400
    page = Page(r)
    assert page["hint"]["data-error"] == problem
    assert says in page.text_of("hint")
    assert page["phone"]["value"] == ""
    if phone:
        assert phone not in page.html
    assert unlocks(station) == before


def test_the_errors_in_english(screen):
    screen.get("/lang/en")
    screen.get("/borrow")
    r = screen.post("/borrow", {"phone": "12812345678"})
    assert "starts with 13 to 19" in Page(r).text_of("hint")


# -- borrowing (open lending) ----------------------------------------------------------------


def test_borrow_opens_a_slot_and_the_board_confirms_the_take(screen, station):
    phone = new_phone()
    r = screen.borrow(phone)
    attempt = attempt_of(r)
    page = Page(screen.get(f"/borrow/{attempt}"))
    status = page["status"]
    assert status["data-state"] in ("releasing", "open") and status["data-reason"] == ""
    assert status["data-poll"] == f"/borrow/{attempt}/status.json"
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "0"  # the progress page keeps itself alive
    opened = screen.wait_state(attempt, "open")
    assert opened["open_ms_left"] > 0 and opened["open_ms_total"] >= opened["open_ms_left"]
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-state"] == "open"
    assert page.text_of("slot") == str(opened["slot"])
    assert f"{opened['slot']} 号仓已打开" in page.html
    assert page.text_of("masked") == f"{phone[:3]}****{phone[-4:]}"  # masked on confirming

    station.board.take(opened["slot"])
    screen.wait_state(attempt, "taken")
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-state"] == "taken"
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "20"  # done: home sooner
    loans = station.agent.lending.open_loans(rider_id(FLEET_KEY, phone))
    assert [loan.slot for loan in loans] == [opened["slot"]]
    # The rider id is forgotten once the bank is out: nothing left to retry with.
    assert screen.post("/borrow/retry", {}).location.endswith("/borrow")


def test_a_rider_holding_a_bank_is_told_to_return_it_first(screen, station):
    phone = new_phone()
    take_bank(station, screen, attempt_of(screen.borrow(phone)))
    attempt = attempt_of(screen.borrow(phone))
    assert screen.status(attempt)["state"] == "failed"
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-state"] == "failed"
    assert page["status"]["data-reason"] == "limit"
    assert "您已借有充电宝" in page.html and "每人同时最多借 1 个" in page.html
    assert "retry" not in page  # nothing to retry until it is back


def test_max_per_rider_comes_from_the_directory(screen, station):
    use_directory(station, max_per_rider=2)
    phone = new_phone()
    take_bank(station, screen, attempt_of(screen.borrow(phone)))
    take_bank(station, screen, attempt_of(screen.borrow(phone)))  # a second is fine
    attempt = attempt_of(screen.borrow(phone))
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-reason"] == "limit" and "最多借 2 个" in page.html


def test_a_denied_rider(screen, station):
    phone = new_phone()
    use_directory(station, denied=(phone,))
    before = unlocks(station)
    page = Page(screen.get(f"/borrow/{attempt_of(screen.borrow(phone))}"))
    assert page["status"]["data-state"] == "failed"
    assert page["status"]["data-reason"] == "denied"
    assert "抱歉，此号码不能在这里借用" in page.html
    assert unlocks(station) == before


def test_no_ready_bank_says_when_the_next_one_will_be(screen, station):
    use_directory(station, min_charge=100)
    phone = new_phone()
    page = Page(screen.get("/borrow"))
    assert page["notice"]["data-notice"] == "no_ready"  # said before typing, too
    attempt = attempt_of(screen.borrow(phone))
    a = station.get(f"/v1/borrow/{attempt}")[1]["attempt"]
    assert a["reason"] == "no_ready" and a["ready_at"]
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-reason"] == "no_ready"
    assert time.strftime("%H:%M", time.localtime(a["ready_at"] / 1000)) in page.text_of("detail")
    assert "retry" in page


def test_a_busy_board_offers_another_try(screen, station):
    for n in range(1, station.board.n_slots + 1):
        station.board.busy(n)
    attempt = attempt_of(screen.borrow(new_phone()))
    screen.wait_state(attempt, "failed")
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-reason"] == "busy" and "retry" in page
    for n in range(1, station.board.n_slots + 1):
        station.board.busy(n, False)
    again = attempt_of(screen.post("/borrow/retry", {}))  # the same rider, no retyping
    assert again != attempt
    take_bank(station, screen, again)


def test_a_bank_not_taken_in_time(screen, station):
    attempt = attempt_of(screen.borrow(new_phone()))
    screen.wait_state(attempt, "open")
    screen.wait_state(attempt, "failed", timeout=8)  # the 2 s take timeout of this agent
    page = Page(screen.get(f"/borrow/{attempt}"))
    assert page["status"]["data-reason"] == "not_taken"
    assert page.text_of("slot")  # the slot that was open
    assert "retry" in page
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "60"


def test_maintenance_pauses_borrowing(screen, station, app):
    staff = Screen(app.test_client())
    staff.get("/staff")
    staff.post("/staff", {"staff_id": "li"})
    staff.get("/staff/pin")
    assert staff.post("/staff/pin", {"pin": "2468"}).location.endswith("/staff/panel")
    rider = Screen(app.test_client())
    assert Page(rider.get("/"))["notice"]["data-notice"] == "maintenance"
    attempt = attempt_of(rider.borrow(new_phone()))
    page = Page(rider.get(f"/borrow/{attempt}"))
    assert page["status"]["data-reason"] == "maintenance"
    assert "工作人员正在维护" in page.html


def test_unknown_or_malformed_attempts(screen):
    assert screen.get("/borrow/b-0000000000000000").status_code == 404
    assert screen.get("/borrow/b-0000000000000000/status.json").status_code == 404
    assert screen.get("/borrow/..%2F..%2Fv1%2Fstation").status_code == 404
    assert screen.get("/borrow/B-NOTANID/status.json").get_json() == {"error": "not_found"}


# -- registered lending: PIN, tries left, lockout -----------------------------------------------


def test_registered_lending_asks_for_the_pin_and_masks_the_number(screen, station):
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    before = unlocks(station)
    r = screen.borrow(phone)
    assert r.status_code == 302 and r.location.endswith("/borrow/pin")
    page = Page(screen.get("/borrow/pin"))
    assert page.text_of("masked") == f"{phone[:3]}****{phone[-4:]}"
    assert phone not in page.html
    pin = page["pin"]
    assert "readonly" in pin and pin["inputmode"] == "none" and pin["maxlength"] == "8"
    assert page["next"]["type"] == "submit"
    assert unlocks(station) == before  # asking for the PIN opened nothing

    r = screen.post("/borrow/pin", {"pin": "0000"})
    page = Page(screen.get(f"/borrow/{attempt_of(r)}"))
    assert page["status"]["data-reason"] == "bad_pin"
    assert "还可以再试 4 次" in page.text_of("detail")
    assert page["pin-again"]["href"] == "/borrow/pin"
    screen.get("/borrow/pin")
    take_bank(station, screen, attempt_of(screen.post("/borrow/pin", {"pin": "4821"})))


@pytest.mark.parametrize("pin", ["", "123", "123456789", "12a4", "١٢٣٤"])
def test_a_malformed_pin_is_refused_here(screen, station, pin):
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    screen.borrow(phone)
    screen.get("/borrow/pin")
    r = screen.post("/borrow/pin", {"pin": pin})
    assert r.status_code == 400
    assert Page(r)["hint"]["data-error"] == "pin_format"


def test_five_wrong_pins_lock_the_rider_for_15_minutes(screen, station):
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    screen.borrow(phone)
    for tries_left in (4, 3, 2, 1):
        screen.get("/borrow/pin")
        attempt = attempt_of(screen.post("/borrow/pin", {"pin": "9999"}))
        page = Page(screen.get(f"/borrow/{attempt}"))
        assert page["status"]["data-reason"] == "bad_pin"
        assert f"还可以再试 {tries_left} 次" in page.html
    screen.get("/borrow/pin")
    attempt = attempt_of(screen.post("/borrow/pin", {"pin": "9999"}))
    a = station.get(f"/v1/borrow/{attempt}")[1]["attempt"]
    assert a["reason"] == "locked_out"
    assert 14 * 60_000 < a["locked_until"] - time.time() * 1000 <= 15 * 60_000
    page = Page(screen.get(f"/borrow/{attempt}"))
    until = time.strftime("%H:%M", time.localtime(a["locked_until"] / 1000))
    assert page["status"]["data-reason"] == "locked_out"
    assert f"请在 {until} 之后再试" in page.text_of("detail")
    # Even the right PIN waits; the rider id is forgotten (nothing to retry).
    assert screen.get("/borrow/pin").location.endswith("/borrow")
    screen.borrow(phone)
    screen.get("/borrow/pin")
    attempt = attempt_of(screen.post("/borrow/pin", {"pin": "4821"}))
    assert Page(screen.get(f"/borrow/{attempt}"))["status"]["data-reason"] == "locked_out"


def test_an_unregistered_rider_under_registered_lending(screen, station):
    use_directory(station, lending="registered")
    page = Page(screen.get(f"/borrow/{attempt_of(screen.borrow(new_phone('137')))}"))
    assert page["status"]["data-reason"] == "not_registered"
    assert "此号码未登记" in page.html


# -- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789abcdefghijklmnopq"])
def test_a_form_without_the_sessions_token_is_refused(screen, station, token):
    before = unlocks(station)
    screen.get("/borrow")
    r = screen.post("/borrow", {"phone": new_phone()}, token=token)
    assert r.status_code == 400
    page = Page(r)
    assert "此页面已过期" in page.html and page["done"]["href"] == "/reset"
    assert unlocks(station) == before


def test_a_token_from_another_session_is_refused(app, station):
    first, second = Screen(app.test_client()), Screen(app.test_client())
    first.get("/borrow")
    second.get("/borrow")
    assert first.token() != second.token()
    r = second.post("/borrow", {"phone": new_phone()}, token=first.token())
    assert r.status_code == 400


# -- the borrow rate limit of this screen --------------------------------------------------------


def test_too_many_borrow_attempts_from_this_screen_wait(station, tmp_path):
    clock = ManualClock()
    app = create_app(kiosk_config(station, tmp_path, borrow_rate=BorrowRate(2, 3)),
                     clock=clock)
    screen = Screen(app.test_client())
    denied = [new_phone() for _ in range(5)]
    use_directory(station, denied=tuple(denied))  # attempts that open nothing
    for phone in denied[:2]:
        attempt_of(screen.borrow(phone))
    r = screen.borrow(denied[2])
    assert r.status_code == 429
    page = Page(r)
    assert "请稍候" in page.html and page["wait"]["data-seconds"] == "60"
    clock.advance(30)
    assert Page(screen.borrow(denied[2]))["wait"]["data-seconds"] == "30"
    clock.advance(30)
    attempt_of(screen.borrow(denied[2]))  # a minute on: again
    clock.advance(60)
    assert screen.borrow(denied[3]).status_code == 429  # 3 an hour
    clock.advance(3600)
    attempt_of(screen.borrow(denied[3]))


def test_asking_for_the_pin_is_no_attempt(station, tmp_path):
    app = create_app(kiosk_config(station, tmp_path, borrow_rate=BorrowRate(1, 1)))
    screen = Screen(app.test_client())
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    for _ in range(3):
        assert screen.borrow(phone).location.endswith("/borrow/pin")
    screen.get("/borrow/pin")
    attempt_of(screen.post("/borrow/pin", {"pin": "0000"}))  # the one attempt
    screen.get("/borrow/pin")
    assert screen.post("/borrow/pin", {"pin": "4821"}).status_code == 429


# -- inactivity (the timers are JavaScript; this is what the server does) -----------------------


def test_every_page_but_home_goes_home_when_idle(screen, station):
    idle_of = {}
    for url in ("/", "/borrow", "/return", "/staff"):
        body = next(a for t, a in Page(screen.get(url)).tags if t == "body")
        idle_of[url] = body["data-idle"]
        assert body["data-idle-url"] == "/reset?idle=1"
    assert idle_of == {"/": "0", "/borrow": "60", "/return": "60", "/staff": "180"}


def test_the_idle_reset_forgets_the_rider(screen, station):
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    screen.borrow(phone)
    assert screen.get("/borrow/pin").status_code == 200
    r = screen.get("/reset?idle=1")
    assert r.status_code == 302 and r.location.endswith("/")
    assert screen.get("/borrow/pin").location.endswith("/borrow")


def test_the_reset_forgets_a_pending_return_s_rider_from_memory(station, tmp_path):
    """A return at a cabinet without bank ids keeps its rider like a borrow does;
    the reset drops that memory too, not only the cookie's ticket."""
    from flask import session

    from kiosk import home, returns
    from kiosk.context import kiosk

    app = create_app(kiosk_config(station, tmp_path))
    with app.test_request_context("/reset"):
        returns._keep("r:" + "ab" * 32, "137****0000")
        ticket = session["return"]
        assert kiosk().riders.get(ticket) is not None
        home.reset()
        assert kiosk().riders.get(ticket) is None


def test_a_pending_rider_goes_stale_without_the_browser(station, tmp_path):
    clock = ManualClock()
    screen = Screen(create_app(kiosk_config(station, tmp_path), clock=clock).test_client())
    phone = new_phone("137")
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    screen.borrow(phone)
    clock.advance(100)
    assert screen.get("/borrow/pin").status_code == 200  # still within the backstop
    clock.advance(121)
    assert screen.get("/borrow/pin").location.endswith("/borrow")


# -- returning -------------------------------------------------------------------------------


def test_return_then_thank_you_with_the_loan_time(screen, station):
    slot, bank = take_bank(station, screen, attempt_of(screen.borrow(new_phone())))
    page = Page(screen.get("/return"))
    poll = page["return-wait"]["data-poll"]
    assert poll.startswith("/return/status.json?since=")
    assert screen.get(poll).get_json() == {"returned": False, "thanks": None}
    since = poll.split("=")[1]
    assert screen.get(f"/return/thanks?since={since}").location.endswith("/return")

    station.board.insert(slot, bank, charge=40)
    done = wait_until(lambda: (s := screen.get(poll).get_json())["returned"] and s, 5,
                      "the return seen")
    assert done["thanks"] == f"/return/thanks?since={since}"
    page = Page(screen.get(done["thanks"]))
    assert "thanks" in page and "谢谢" in page.html
    assert page["loan-time"]["data-seconds"] is not None
    assert int(page["loan-time"]["data-seconds"]) < 60
    assert page.text_of("loan-time") == "不到 1 分钟"
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "20"


def test_a_bank_from_elsewhere_is_thanked_too(screen, station):
    # Make room as staff would (a session on the agent), then a bank that was never
    # lent here is pushed in: the agent returns it with no rider.
    lending = station.agent.lending
    session = lending.start_maintenance("li", "2468")
    assert session.release_slot(1).result == "released"
    station.board.take(1)
    wait_until(lambda: not {r.slot: r for r in lending.locker.slots()}[1].present, 5,
               "slot 1 seen empty")
    session.end()
    since = Page(screen.get("/return"))["return-wait"]["data-poll"].split("=")[1]
    station.board.insert(1, "PBX00001", charge=55)
    wait_until(lambda: screen.get(f"/return/status.json?since={since}").get_json()["returned"],
               5, "the return seen")
    page = Page(screen.get(f"/return/thanks?since={since}"))
    assert page.text_of("loan-time") == "—" and page["loan-time"]["data-seconds"] == ""
    assert "在别处借的" in page.html


@pytest.mark.parametrize("since", ["", "-1", "abc", "1e5", "9" * 20])
def test_a_bad_since(screen, since):
    assert screen.get(f"/return/status.json?since={since}").status_code == 400


# -- privacy -----------------------------------------------------------------------------------


def _session_payload(app: Flask, value: str) -> str:
    return json.dumps(app.session_interface.get_signing_serializer(app).loads(value),
                      ensure_ascii=False)


def test_a_phone_number_is_never_stored_logged_or_put_in_a_url(app, station, caplog):
    """Capture every log record of the kiosk and the in-process agent, every cookie
    and every response of a whole borrow (PIN included, and a mistyped number):
    the digits appear nowhere; only the rider id reached the agent."""
    caplog.set_level(logging.DEBUG)
    phone = new_phone("186")
    typo = phone[:-1]
    use_directory(station, lending="registered", riders=((phone, "4821"),))
    screen = Screen(app.test_client())
    screen.get("/")
    screen.get("/borrow")
    screen.post("/borrow", {"phone": typo})
    screen.borrow(phone)
    screen.get("/borrow/pin")
    attempt = attempt_of(screen.post("/borrow/pin", {"pin": "0000"}))
    screen.get(f"/borrow/{attempt}")
    screen.get("/borrow/pin")
    attempt = attempt_of(screen.post("/borrow/pin", {"pin": "4821"}))
    screen.get(f"/borrow/{attempt}")
    take_bank(station, screen, attempt)
    screen.get(f"/borrow/{attempt}")

    secrets_ = (phone, typo, f"{phone[:3]} {phone[3:7]} {phone[7:]}")
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records and rider_id(FLEET_KEY, phone) in logged  # the agent logged the id
    cookies = [h for r in screen.responses for h in r.headers.getlist("Set-Cookie")]
    assert cookies
    cookie = screen.client.get_cookie("yizhan_kiosk")
    decoded = [_session_payload(app, cookie.value)]
    for header in cookies:
        value = header.split(";", 1)[0].split("=", 1)[1]
        if value:
            decoded.append(_session_payload(app, value))
    urls = [r.location or "" for r in screen.responses]
    bodies = [r.get_data(as_text=True) for r in screen.responses]
    for secret in secrets_:
        assert secret not in logged
        assert not any(secret in c for c in cookies + decoded)
        assert not any(secret in u for u in urls)
        assert not any(secret in b for b in bodies)
    # The cookie is signed, not encrypted: it holds a ticket, neither the rider id
    # nor the masked number (10⁴ candidates once the id is known); the kiosk does.
    assert decoded and not any("****" in d or "r:" in d for d in decoded)
    assert not any(rider_id(FLEET_KEY, phone) in c for c in cookies)
    # Nothing on the station's disk either: the agent got the rider id, never the number.
    kiosk_dir = app.extensions["yizhan_kiosk"].config.data_dir
    for path in [*Path(station.config.data_dir).rglob("*"), *Path(kiosk_dir).rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets_), path
    borrowed = [e for e in station.agent.journal.events(0, 10**9) if e.type == "bank_borrowed"]
    assert borrowed[-1].data["rider"] == rider_id(FLEET_KEY, phone)


# -- the agent unreachable ------------------------------------------------------------------------


def test_the_agent_unreachable_is_out_of_service_not_a_crash(tmp_path, caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    app = create_app(KioskConfig(fleet_key=FLEET_KEY, data_dir=tmp_path / "k",
                                 api_url=f"http://127.0.0.1:{port}", api_timeout=1.0))
    screen = Screen(app.test_client())
    for url in ("/", "/borrow", "/return", "/staff/panel", "/borrow/b-0123456789abcdef"):
        r = screen.get(url)
        if url == "/staff/panel":
            assert r.status_code == 302  # nobody logged in: home, which then says it
            continue
        assert r.status_code == 503, url
        page = Page(r)
        assert "unavailable" in page and "驿站正在启动或暂停服务" in page.html
        assert '<meta http-equiv="refresh" content="10; url=/">' in page.html
    assert screen.get("/borrow/b-0123456789abcdef/status.json").get_json() == {
        "error": "agent_unavailable"}
    assert screen.get("/return/status.json?since=0").status_code == 503
    assert screen.get("/healthz").get_json() == {"ok": True, "agent": False}
    # A borrow typed in meanwhile: 503, and the number is still nowhere.
    screen.get("/staff")
    caplog.set_level(logging.DEBUG)
    r = screen.post("/borrow", {"phone": "13912345678"})
    assert r.status_code == 503
    assert "13912345678" not in r.get_data(as_text=True)
    assert "13912345678" not in caplog.text


# -- every failure reason has its own words ------------------------------------------------------


REASONS = ("denied", "not_registered", "pin_required", "bad_pin", "locked_out", "limit",
           "maintenance", "board_offline", "no_ready", "jammed", "bad_slot", "busy", "not_taken",
           "paused")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_failure_reason_has_its_own_headline(tmp_path, lang):
    """Some reasons (a jam between two board polls) cannot be made on purpose with a
    real agent; their page is rendered here from the attempt the agent would send."""
    from firmware.lending import FAIL_REASONS

    assert set(REASONS) == FAIL_REASONS
    app = create_app(KioskConfig(fleet_key=FLEET_KEY, data_dir=tmp_path / "k"))
    translations = load_translations()
    generic = {"zh": "出了点问题", "en": "Something went wrong"}[lang]
    seen = set()
    for reason in REASONS:
        attempt = {"id": "b-0123456789abcdef", "state": "failed", "reason": reason, "slot": 4,
                   "tries_left": 2, "locked_until": 1764199999000, "ready_at": 1764199999000}
        with app.test_request_context("/"):
            app.preprocess_request()
            g.lang, g.translations = lang, translations[lang]
            html = render_template(
                "borrow_progress.html", a=attempt, idle=60, mask=None, can_retry=True,
                can_pin=False, max_per_rider=1,
                view={"state": "failed", "reason": reason, "slot": 4,
                      "open_ms_left": None, "open_ms_total": None})
        page = Page(html)
        headline = html.split('class="lead bad">', 1)[1].split("</p>", 1)[0].strip()
        assert headline and headline != generic, reason
        seen.add(headline)
        assert page["status"]["data-reason"] == reason
        assert page.text_of("detail"), reason
    assert len(seen) == len(REASONS)


# -- rider ids stretched by scrypt (issue 14, finding 7) ------------------------------------------


def test_a_fleet_on_scrypt_rider_ids_borrows_by_them(station, tmp_path):
    """``kiosk.rider_ids: scrypt``: the id the agent gets, and checks the directory
    against, is the scrypt one; the HMAC one of the same number is another rider."""
    phone = new_phone("187")
    slow = rider_id(FLEET_KEY, phone, "scrypt")
    assert slow != rider_id(FLEET_KEY, phone)
    d = m.Directory(
        rev=next(_REV), ts=int(time.time() * 1000),
        policy=m.Policy(lending="registered", min_charge=40, max_per_rider=1),
        riders=(m.RiderEntry(id=slow, pin=hash_pin("4821", iterations=1000)),),
        staff=(), denied=())
    assert station.agent.directory.apply(d)
    screen = Screen(create_app(kiosk_config(station, tmp_path, rider_ids="scrypt")).test_client())
    attempt = attempt_of(screen.borrow(phone, pin="4821"))
    take_bank(station, screen, attempt)
    borrowed = [e for e in station.agent.journal.events(0, 10**9) if e.type == "bank_borrowed"]
    assert borrowed[-1].data["rider"] == slow
    # The same number on a kiosk still on HMAC ids is not registered in this fleet.
    other = Screen(create_app(kiosk_config(station, tmp_path / "h")).test_client())
    failed = attempt_of(other.borrow(phone, pin="4821"))
    assert other.wait_state(failed, "failed", "taken")["reason"] == "not_registered"
