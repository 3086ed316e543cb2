"""The kiosk end to end, as a rider and a staff member use it (issue 5).

Real headless Chromium (Debian's, through Playwright) taps the kiosk's pages at
the touchscreen's 800×480; the real ``yizhan kiosk`` process serves them and
talks to a real agent on simulated hardware; the agent drives the YZ-LB1 board
simulator on a pseudo-terminal and reports to a real Mosquitto. The test plays
the rider's hands at the cabinet (``board.take`` / ``board.insert``) and
watches what comes out at the far edges: UNLOCK frames on the serial line and
events on the broker.

Each screen is saved as a PNG into the test's tmp dir, or into ``docs/img/``
with ``YIZHAN_SCREENSHOTS=docs/img`` (that is how the screenshots in
docs/kiosk.md are made).

The DOM contract with the kiosk: keypad ``[data-key="0".."9"|back|clear]``,
``#phone``, ``#pin``, ``#next``; ``#status[data-state][data-reason]`` and
``#slot`` while borrowing; home ``#borrow``, ``#return``, ``#staff``,
``#lang-zh``, ``#lang-en``; staff ``#staff-id`` or ``[data-staff]``,
``#release-empty``, ``[data-release-slot]``, ``#refill-water``,
``#staff-exit``; thank-you ``#thanks`` with ``#loan-time``.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from protocol.frames import Cmd
from tests.harness.browser import Chromium, KioskStation, require_chromium, staff_directory
from tests.harness.procs import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PHONE = "13812345678"
WAIT_MS = 10_000  # every browser wait is bounded


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    require_chromium()
    with Chromium() as browser:
        yield browser


@pytest.fixture
def open_page(chromium):
    """``open_page(width=800, height=480, **context)``: a fresh page, closed after."""
    pages = []

    def make(width: int = 800, height: int = 480, **context):
        page = chromium.page(width, height, **context)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.context.close()


@pytest.fixture
def page(open_page):
    return open_page()


@pytest.fixture
def make_station(tmp_path, broker_factory, chromium):
    """``make_station(directory=None)``: broker, agent on sim hardware, kiosk, Subscriber.
    (After ``chromium``: without a browser nothing is started.)"""
    made: list[KioskStation] = []

    def make(**options) -> KioskStation:
        made.append(KioskStation(tmp_path, broker_factory(), **options))
        return made[-1]

    yield make
    for st in made:
        st.close()


@pytest.fixture
def station(make_station) -> KioskStation:
    return make_station()


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory) -> Path:
    where = os.environ.get("YIZHAN_SCREENSHOTS")
    if not where:
        return tmp_path_factory.mktemp("screens")
    path = Path(where)
    path = path if path.is_absolute() else REPO / path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def shot(shots_dir):
    """``shot(page, "home-zh")`` saves ``kiosk-home-zh.png``."""

    def save(page, name: str) -> Path:
        path = shots_dir / f"kiosk-{name}.png"
        page.screenshot(path=str(path), animations="disabled")
        return path

    return save


# -- a rider's hands ----------------------------------------------------------------------


def tap(page, selector: str) -> None:
    page.locator(selector).first.tap(timeout=WAIT_MS)


def type_digits(page, digits: str) -> None:
    for d in digits:
        tap(page, f'[data-key="{d}"]')


def shown(page, selector: str) -> str:
    """What a display shows: an input's value or an element's text."""
    el = page.locator(selector).first
    el.wait_for(state="attached", timeout=WAIT_MS)
    if el.evaluate("e => e.tagName") in ("INPUT", "TEXTAREA"):
        return el.input_value()
    return el.inner_text()


def digits_in(page, selector: str) -> str:
    return re.sub(r"\D", "", shown(page, selector))


def wait_digits(page, selector: str, digits: str) -> None:
    wait_until(lambda: digits_in(page, selector) == digits, 5,
               f"{selector} showing {digits!r}")


def wait_state(page, state: str) -> None:
    page.wait_for_selector(f'#status[data-state="{state}"]', state="attached", timeout=WAIT_MS)


CJK = re.compile(r"[\u4e00-\u9fff]")


def set_lang(page, lang: str) -> None:
    """Tap the language switch and wait until the home screen speaks it."""
    tap(page, f"#lang-{lang}")

    def speaks() -> bool:
        from playwright.sync_api import Error as PlaywrightError

        try:
            text = page.inner_text("#borrow")
        except PlaywrightError:  # the page was navigating away under the query
            return False
        return bool(CJK.search(text)) if lang == "zh" else (
            not CJK.search(text) and bool(re.search(r"[A-Za-z]{3}", text)))

    wait_until(speaks, 5, f"the home screen in {lang}")


def go_home(page, station: KioskStation) -> None:
    page.goto(station.kiosk_url + "/")
    page.wait_for_selector("#borrow", timeout=WAIT_MS)


def start_borrow(page, station: KioskStation, phone: str = PHONE) -> None:
    go_home(page, station)
    tap(page, "#borrow")
    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
    type_digits(page, phone)
    wait_digits(page, "#phone", phone)


def borrow_through_the_api(station: KioskStation, phone: str) -> tuple[int, str]:
    """A loan made without the browser (for the tests that start from one)."""
    req = urllib.request.Request(
        station.api_url + "/v1/borrow", method="POST",
        data=json.dumps({"rider": station.rider(phone)}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        attempt = json.loads(resp.read())["attempt"]
    slot = station.board.wait_for_frame(Cmd.UNLOCK, timeout=5).payload[0]
    wait_until(lambda: station.api(f"/v1/borrow/{attempt['id']}")["attempt"]["state"] == "open",
               5, "the slot open")
    bank = station.board.take(slot)
    station.wait_event("bank_borrowed", slot=slot)
    return slot, bank


# -- a rider -----------------------------------------------------------------------------


def test_a_rider_borrows_a_bank_with_the_keypad(station, page, shot):
    ready = {c["slot"] for c in station.api("/v1/station")["chargers"]["ready"]}
    go_home(page, station)
    shot(page, "home-zh")
    tap(page, "#borrow")
    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
    type_digits(page, PHONE)
    wait_digits(page, "#phone", PHONE)
    shot(page, "borrow-keypad")
    assert not station.unlocks(), "nothing opens before the rider confirms"

    tap(page, "#next")
    # The tap reached the serial line as an UNLOCK for one of the ready banks.
    slot = station.board.wait_for_frame(Cmd.UNLOCK, timeout=10).payload[0]
    assert slot in ready, (slot, ready)
    wait_state(page, "open")
    assert digits_in(page, "#slot") == str(slot)
    shot(page, "borrow-open")

    bank = station.board.take(slot)  # the rider pulls the bank out
    wait_state(page, "taken")
    shot(page, "borrow-taken")
    event = station.wait_event("bank_borrowed", slot=slot)
    assert event["data"]["rider"] == station.rider(PHONE)  # the hash, never the number
    assert event["data"]["bank"] == bank
    assert PHONE not in str(station.events.messages)
    assert station.unlocks() == [slot], "exactly one slot opened"


def test_a_rider_returns_the_bank_and_sees_the_loan_time(station, page, shot):
    slot, bank = borrow_through_the_api(station, PHONE)
    go_home(page, station)
    tap(page, "#return")
    # The return page itself, not the load state: that can still be the home
    # page's while the link's navigation starts, and a screenshot taken then
    # fails ("Unable to capture screenshot", seen with Chromium 156.0.8078.108).
    page.wait_for_selector("#empty-slots", timeout=WAIT_MS)
    shot(page, "return")
    station.board.insert(slot, bank, charge=35)  # back in the cabinet, drained
    page.wait_for_selector("#thanks", state="visible", timeout=WAIT_MS)
    loan_time = page.locator("#loan-time")
    loan_time.wait_for(state="visible", timeout=WAIT_MS)
    assert loan_time.inner_text().strip(), "the thank-you screen shows how long the loan was"
    shot(page, "thanks")
    event = station.wait_event("bank_returned", bank=bank)
    assert event["data"]["rider"] == station.rider(PHONE)


def test_no_bank_ready_tells_the_rider_and_opens_nothing(station, page, shot):
    ready = [c["slot"] for c in station.api("/v1/station")["chargers"]["ready"]]
    for slot in ready:  # the only charged banks sit behind stuck locks
        station.board.jam(slot)
    wait_until(lambda: station.api("/v1/station")["slots"]["ready"] == 0, 5,
               "the jams seen by the agent")
    start_borrow(page, station)
    tap(page, "#next")
    wait_state(page, "failed")
    assert page.get_attribute("#status", "data-reason") == "no_ready"
    shot(page, "borrow-failed")
    assert not station.unlocks()
    assert "bank_borrowed" not in station.event_types()


def test_bad_numbers_are_refused_in_the_browser(station, page, shot):
    go_home(page, station)
    tap(page, "#borrow")
    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
    # back and clear edit what was typed
    type_digits(page, "139")
    tap(page, '[data-key="back"]')
    wait_digits(page, "#phone", "13")
    tap(page, '[data-key="clear"]')
    wait_digits(page, "#phone", "")

    for number in ("13812", "12345678901"):  # too short; not a mainland mobile prefix
        tap(page, '[data-key="clear"]')
        type_digits(page, number)
        wait_digits(page, "#phone", number)
        nxt = page.locator("#next")
        if not nxt.is_disabled():
            # This kiosk checks on the server (the page is never trusted): the POST
            # comes back as the keypad again, with the reason and without the number.
            with page.expect_navigation(timeout=WAIT_MS):
                nxt.tap()
            page.wait_for_selector('[data-error]:not([data-error=""])', state="attached",
                                   timeout=WAIT_MS)
            assert page.locator("#status").count() == 0
            assert number not in page.content(), "the refused number is not echoed"
        if number == "13812":
            shot(page, "borrow-bad-number")
    assert not station.unlocks()
    assert "bank_borrowed" not in station.event_types()


def test_an_idle_screen_goes_home_after_60_seconds(station, page):
    page.clock.install()
    start_borrow(page, station, "138")
    page.clock.fast_forward("00:50")
    page.wait_for_timeout(200)
    assert page.locator('[data-key="0"]').count() == 1, "still on the keypad at 50 s"
    assert digits_in(page, "#phone") == "138"
    page.clock.fast_forward("00:11")
    page.wait_for_selector("#borrow", timeout=WAIT_MS)  # home, the number forgotten
    assert page.locator("#phone").count() == 0


def test_the_language_switch_shows_english(station, page, shot):
    go_home(page, station)
    assert CJK.search(page.inner_text("#borrow")), "Chinese first"
    set_lang(page, "en")
    assert not CJK.search(page.inner_text("#return"))
    shot(page, "home-en")
    tap(page, "#borrow")  # the choice holds on the next screen
    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.lang").lower().startswith("en")
    go_home(page, station)
    set_lang(page, "zh")


#: What a page does at the screen's size. The kiosk's body has ``overflow: hidden``
#: (a kiosk never scrolls as a page), so a page too tall for the screen would not
#: scroll but be cut off: besides the document's own scroll size this looks for any
#: element reaching outside the viewport and any box whose content overflows it.
LAYOUT_JS = """() => {
  const W = innerWidth, H = innerHeight, se = document.scrollingElement;
  const name = el => el.id ? '#' + el.id
    : el.dataset.key ? `[data-key=${el.dataset.key}]`
    : el.tagName.toLowerCase() + (el.classList.length ? '.' + el.classList[0] : '');
  // Inside a box that clips on purpose (a moving progress bar) and is itself on screen.
  const clippedByDesign = el => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const r = p.getBoundingClientRect();
      if (getComputedStyle(p).overflow !== 'visible' && r.left >= -1 && r.top >= -1
          && r.right <= W + 1 && r.bottom <= H + 1) return true;
    }
    return false;
  };
  const small = [], outside = [], cut = [];
  for (const el of [document.body, ...document.body.querySelectorAll('*')]) {
    const r = el.getBoundingClientRect(), st = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || st.visibility === 'hidden') continue;
    if ((r.bottom > H + 1 || r.right > W + 1 || r.left < -1 || r.top < -1)
        && !clippedByDesign(el))
      outside.push(`${name(el)} [${Math.round(r.left)},${Math.round(r.top)}..`
                   + `${Math.round(r.right)},${Math.round(r.bottom)}]`);
    if (el.tagName === 'INPUT') {}  // a text field scrolls inside itself by design
    else if (el.scrollHeight > el.clientHeight + 1 && st.overflowY !== 'visible')
      cut.push(`${name(el)} ${el.scrollHeight}>${el.clientHeight}px tall`);
    if (el.tagName !== 'INPUT' && el.scrollWidth > el.clientWidth + 1
        && st.overflowX !== 'visible')
      cut.push(`${name(el)} ${el.scrollWidth}>${el.clientWidth}px wide`);
    if (el.matches('button, a[href], [role=button], input[type=submit], input[type=button]')
        && (r.width < 56 || r.height < 56))
      small.push(`${name(el)} ${Math.round(r.width)}x${Math.round(r.height)}`);
  }
  return {scrollH: se.scrollHeight, scrollW: se.scrollWidth, innerH: H, innerW: W,
          small, outside, cut};
}"""


SETTLED_JS = """() => document.fonts.status === 'loaded'
  && document.getAnimations().every(a => a.playState !== 'running'
                                         || a.effect?.getTiming().iterations === Infinity)"""


def test_home_and_borrow_fit_the_screen_with_big_buttons(station, open_page):
    """At 1024×600 (and the 800×480 screen) nothing scrolls and every button is
    at least 56×56 CSS px, in both languages."""
    problems = []
    for size in ((1024, 600), (800, 480)):
        page = open_page(*size)
        for lang in ("zh", "en"):
            go_home(page, station)
            set_lang(page, lang)
            for screen in ("home", "borrow"):
                if screen == "borrow":
                    tap(page, "#borrow")
                    page.wait_for_selector('[data-key="0"]', timeout=WAIT_MS)
                    type_digits(page, PHONE)  # the number shown, as a rider sees it
                    wait_digits(page, "#phone", PHONE)
                # Measured once the screen has settled: its fonts loaded and no
                # transition half way (a tap's feedback, a screen sliding in).
                page.wait_for_function(SETTLED_JS, timeout=WAIT_MS)
                got = page.evaluate(LAYOUT_JS)
                where = f"{screen} ({lang}) at {size[0]}x{size[1]}"
                if got["scrollH"] > got["innerH"]:
                    problems.append(f"{where} scrolls vertically: {got['scrollH']} px "
                                    f"in {got['innerH']}")
                if got["scrollW"] > got["innerW"]:
                    problems.append(f"{where} scrolls sideways: {got['scrollW']} px "
                                    f"in {got['innerW']}")
                if got["small"]:
                    problems.append(f"{where}: buttons under 56x56 CSS px: {got['small']}")
                if got["outside"]:
                    problems.append(f"{where}: cut off at the screen's edge: {got['outside']}")
                if got["cut"]:
                    problems.append(f"{where}: content overflowing its box: {got['cut']}")
    assert not problems, "\n".join(problems)


# -- staff ----------------------------------------------------------------------------------


def test_staff_restock_the_cabinet_and_confirm_the_water(make_station, page, shot):
    station = make_station(directory=staff_directory("li", "2468"))
    go_home(page, station)
    tap(page, "#staff")
    if page.locator('[data-staff="li"]').count():
        tap(page, '[data-staff="li"]')  # a list of staff to pick from
    else:  # or the id typed on the on-screen keyboard
        page.wait_for_selector("#staff-id", state="attached", timeout=WAIT_MS)
        for key in "li":
            tap(page, f'[data-key="{key}"]')
        wait_until(lambda: shown(page, "#staff-id") == "li", 5, "the staff id typed")
        tap(page, "#next")
    page.wait_for_selector("#pin", state="attached", timeout=WAIT_MS)
    type_digits(page, "2468")
    wait_until(lambda: len(shown(page, "#pin").strip()) == 4, 5, "four PIN digits shown")
    assert page.locator("#pin").evaluate(
        """e => e.type === "password" || !e.value.includes("2468")
              || ["disc", "circle", "square"].includes(
                   getComputedStyle(e).getPropertyValue("-webkit-text-security"))"""
    ), "the PIN is masked on screen"
    shot(page, "staff-pin")
    tap(page, "#next")
    page.wait_for_selector("#release-empty", timeout=WAIT_MS)
    station.wait_event("maintenance_started", staff="li")

    # Staff take two banks out (to charge elsewhere), leaving two empty slots.
    for slot in (1, 2):
        mark = len(station.board.frames_received)
        tap(page, f'[data-release-slot="{slot}"]')
        frame = station.board.wait_for_frame(Cmd.UNLOCK, timeout=10, after=mark)
        assert frame.payload[0] == slot
        wait_until(lambda s=slot: not station.board.slot(s).locked, 5, f"slot {slot} open")
        station.board.take(slot)
    wait_until(lambda: station.api("/v1/station")["slots"]["empty"] == 2, 5,
               "two empty slots seen by the agent")
    assert "bank_borrowed" not in station.event_types(), "staff taking banks is no loan"

    mark = len(station.board.frames_received)
    tap(page, "#release-empty")
    wait_until(lambda: sorted(station.unlocks(after=mark)) == [1, 2], 10,
               "UNLOCK frames for the two empty slots")
    station.board.insert(1, "PB00FF01", charge=100)
    station.board.insert(2, "PB00FF02", charge=100)
    wait_until(lambda: station.api("/v1/station")["slots"]["empty"] == 0, 5, "restocked")
    # The staff screen catches up by itself (it polls, and redraws between taps).
    wait_until(lambda: "100" in page.inner_text('[data-release-slot="1"]'), 10,
               "the staff screen showing the new bank in slot 1")
    shot(page, "staff-session")

    tap(page, "#refill-water")
    event = station.wait_event("refilled", what="water")
    assert event["data"]["staff"] == "li"
    tap(page, "#staff-exit")
    ended = station.wait_event("maintenance_ended", staff="li")
    assert ended["data"].get("reason", "ended") == "ended"
    page.wait_for_selector("#borrow", timeout=WAIT_MS)  # back to the riders' home
    assert station.api("/v1/station")["maintenance"] is False
