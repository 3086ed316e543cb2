"""Staff mode on the kiosk against a real agent: log in with a staff id and PIN,
release slots, confirm refills, see faults, and leave — by "exit", by the idle
timer, or because the agent ended the session. The board going offline closes
the module (riders and staff both see it)."""

from __future__ import annotations

import time

import pytest

from kiosk import create_app
from protocol.frames import Cmd
from tests.harness.procs import wait_until
from tests.test_kiosk import (  # noqa: F401  (the fixtures: the same agent set-up)
    Page,
    Screen,
    app_fixture,
    attempt_of,
    cabinet_fixture,
    kiosk_config,
    new_phone,
    screen_fixture,
    station_fixture,
)
from yizhan.clock import ManualClock


def log_in(screen: Screen, staff: str = "li", pin: str = "2468"):
    screen.get("/staff")
    r = screen.post("/staff", {"staff_id": staff})
    assert r.status_code == 302 and r.location.endswith("/staff/pin"), r.status_code
    screen.get("/staff/pin")
    return screen.post("/staff/pin", {"pin": pin})


def unlocked_slots(station) -> list[int]:
    return [f.payload[0] for f in station.board.frames_received if f.cmd == Cmd.UNLOCK]


def events(station, type_: str) -> list[dict]:
    return [e.data for e in station.agent.journal.events(0, 10**9) if e.type == type_]


def flashes(page: Page) -> str:
    return page.html.split('class="flashes"', 1)[1].split("</div>", 1)[0] \
        if 'class="flashes"' in page.html else ""


def test_staff_log_in_and_see_the_panel(screen, station):
    page = Page(screen.get("/staff"))
    field = page["staff-id"]
    assert field["tag"] == "input" and "readonly" in field and field["inputmode"] == "none"
    keys = {a.get("data-key") for t, a in page.tags if t == "button"}
    assert set("abcdefghijklmnopqrstuvwxyz0123456789") <= keys and "back" in keys
    assert page["next"]["type"] == "submit"
    r = log_in(screen)
    assert r.status_code == 302 and r.location.endswith("/staff/panel")
    session = station.agent.lending.maintenance
    assert session is not None and session.staff == "li"
    page = Page(screen.get("/staff/panel"))
    for n in range(1, station.board.n_slots + 1):
        assert any(a.get("data-release-slot") == str(n) for t, a in page.tags), n
    for element in ("release-empty", "refill-water", "refill-banks", "refill-cups",
                    "staff-exit", "faults"):
        assert element in page, element
    assert page["release-empty"]["value"] == "empty"
    body = next(a for t, a in page.tags if t == "body")
    assert body["data-idle"] == "180" and body["data-staff-poll"] == "/staff/status.json"
    assert screen.get("/staff/status.json").get_json()["active"] is True
    # Logged in already: /staff goes straight to the panel.
    assert screen.get("/staff").location.endswith("/staff/panel")


def test_release_one_slot(screen, station):
    log_in(screen)
    screen.get("/staff/panel")
    r = screen.post("/staff/release", {"slot": "2"})
    assert r.status_code == 302 and r.location.endswith("/staff/panel")
    assert unlocked_slots(station)[-1] == 2
    assert "2 号仓已打开" in flashes(Page(screen.get("/staff/panel")))


def test_release_the_empty_slots_to_restock_and_confirm(screen, station):
    log_in(screen)
    screen.get("/staff/panel")
    screen.post("/staff/release", {"slot": "5"})
    bank = station.board.take(5)  # a faulty bank out, say
    lending = station.agent.lending
    wait_until(lambda: not {r.slot: r for r in lending.locker.slots()}[5].present, 5,
               "slot 5 seen empty")
    screen.get("/staff/panel")
    screen.post("/staff/release", {"slot": "empty"})
    assert unlocked_slots(station)[-1] == 5
    assert "已打开空仓位：5" in flashes(Page(screen.get("/staff/panel")))
    station.board.insert(5, "PBS00001", charge=100)  # a fresh bank in
    wait_until(lambda: lending.maintenance.banks_in == 1, 5, "the restock counted")
    screen.post("/staff/refill", {"what": "banks"})
    assert "已记录补充充电宝" in flashes(Page(screen.get("/staff/panel")))
    assert events(station, "refilled")[-1] == {"what": "banks", "staff": "li", "count": 1}
    assert bank != "PBS00001"


def test_confirm_water_and_cups(screen, station):
    log_in(screen)
    screen.get("/staff/panel")
    screen.post("/staff/refill", {"what": "water"})
    assert "已记录加水" in flashes(Page(screen.get("/staff/panel")))
    screen.post("/staff/refill", {"what": "cups"})
    assert [e["what"] for e in events(station, "refilled")[-2:]] == ["water", "cups"]
    assert events(station, "refilled")[-1]["staff"] == "li"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("slot", "0", "没有这个仓位"), ("slot", "abc", "没有这个仓位"), ("slot", "", "没有这个仓位"),
    ("slot", "99", "没有这个仓位"), ("what", "coffee", "未知的补给项目"),
    # int() raises past 4 300 digits: a 500 before; "²" is a digit to str.isdigit().
    ("slot", "1" * 5000, "没有这个仓位"), ("slot", "²", "没有这个仓位"),
    ("slot", "٣", "没有这个仓位"),
])
def test_bad_release_and_refill_values(screen, station, field, value, says):
    log_in(screen)
    screen.get("/staff/panel")
    before = len(unlocked_slots(station))
    url = "/staff/release" if field == "slot" else "/staff/refill"
    assert screen.post(url, {field: value}).location.endswith("/staff/panel")
    assert says in flashes(Page(screen.get("/staff/panel")))
    assert len(unlocked_slots(station)) == before


def test_faults_are_shown(screen, station):
    station.board.set_fault(4, "overheat")
    wait_until(lambda: {r.slot: r for r in station.agent.lending.locker.slots()}[4].fault,
               5, "the fault seen")
    log_in(screen)
    page = Page(screen.get("/staff/panel"))
    assert page["faults"]["tag"] == "ul" and "4 号仓" in page.html and "过热" in page.html
    tile = next(a for t, a in page.tags if a.get("data-release-slot") == "4")
    assert "slot-fault" in tile["class"]


def test_wrong_pins_say_tries_left_then_lock_the_staff_id(screen, station):
    for tries_left in (4, 3, 2, 1):
        r = log_in(screen, "zhou", "0000")
        assert r.status_code == 403
        page = Page(r)
        assert page["hint"]["data-error"] == "bad_pin"
        assert f"还可以再试 {tries_left} 次" in page.text_of("hint")
    r = log_in(screen, "zhou", "0000")
    assert r.status_code == 429
    until = station.agent.directory.locked_until("staff:zhou")
    assert until is not None
    assert f"锁定至 {time.strftime('%H:%M', time.localtime(until / 1000))}" in r.get_data(
        as_text=True)
    assert log_in(screen, "zhou", "8642").status_code == 429  # the right PIN waits too
    assert station.agent.lending.maintenance is None


def test_an_unknown_staff_id_is_answered_like_a_wrong_pin(screen):
    r = log_in(screen, "zhao", "2468")
    assert r.status_code == 403 and "工号或密码错误" in r.get_data(as_text=True)


@pytest.mark.parametrize("staff_id", ["", "LI", "li li", "李", "a" * 65, "-li"])
def test_a_malformed_staff_id(screen, staff_id):
    screen.get("/staff")
    r = screen.post("/staff", {"staff_id": staff_id})
    assert r.status_code == 400 and "hint" in Page(r)
    assert screen.get("/staff/pin").location.endswith("/staff")


@pytest.mark.parametrize("pin", ["", "12", "123456789", "12ab"])
def test_a_malformed_staff_pin(screen, station, pin):
    r = log_in(screen, "li", pin)
    assert r.status_code == 400 and Page(r)["hint"]["data-error"] == "pin_format"
    assert station.agent.lending.maintenance is None


def test_exit_ends_the_session(screen, station):
    log_in(screen)
    screen.get("/staff/panel")
    r = screen.post("/staff/exit", {})
    assert r.status_code == 302 and r.location.endswith("/")
    assert station.agent.lending.maintenance is None
    assert "维护已结束，辛苦了" in Page(screen.get("/")).html
    assert screen.get("/staff/panel").location.endswith("/")
    assert events(station, "maintenance_ended")[-1] == {"staff": "li", "reason": "ended"}


def test_the_agent_ending_the_session_sends_the_screen_home(app, station):
    first, second = Screen(app.test_client()), Screen(app.test_client())
    log_in(first, "li", "2468")
    first.get("/staff/panel")
    log_in(second, "wang", "1357")  # takes over: li's session ends ("replaced")
    assert first.get("/staff/status.json").get_json()["active"] is False
    before = len(unlocked_slots(station))
    r = first.post("/staff/release", {"slot": "1"})
    assert r.status_code == 302 and r.location.endswith("/")
    assert len(unlocked_slots(station)) == before
    assert "另一位工作人员已登录" in Page(first.get("/")).html
    assert station.agent.lending.maintenance.staff == "wang"


def test_idle_staff_session_ends_on_the_server_too(station, tmp_path):
    clock = ManualClock()
    screen = Screen(create_app(kiosk_config(station, tmp_path), clock=clock).test_client())
    log_in(screen)
    screen.get("/staff/panel")
    clock.advance(300)
    assert screen.get("/staff/panel").status_code == 200  # within twice the idle time
    clock.advance(361)
    assert screen.get("/staff/panel").location.endswith("/")
    assert station.agent.lending.maintenance is None
    assert "屏幕长时间无人操作" in Page(screen.get("/")).html


def test_the_idle_reset_ends_the_session(screen, station):
    log_in(screen)
    assert station.agent.lending.maintenance is not None
    assert screen.get("/reset?idle=1").location.endswith("/")
    assert station.agent.lending.maintenance is None


@pytest.mark.parametrize("url", ["/staff/release", "/staff/refill", "/staff/exit", "/staff"])
def test_staff_forms_need_the_csrf_token(screen, station, url):
    log_in(screen)
    before = len(unlocked_slots(station))
    r = screen.post(url, {"slot": "1", "what": "water", "staff_id": "li"}, token=None)
    assert r.status_code == 400
    assert len(unlocked_slots(station)) == before
    assert station.agent.lending.maintenance is not None  # exit without a token: no exit


def test_the_board_offline_for_riders_and_staff(app, station):
    """Last in the module: the unplugged board is plugged back at teardown unwaited."""
    station.board.unplug()
    wait_until(lambda: not station.get("/v1/station")[1]["online"]["locker"], 6,
               "the locker offline")
    rider = Screen(app.test_client())
    assert Page(rider.get("/"))["notice"]["data-notice"] == "board_offline"
    page = Page(rider.get(f"/borrow/{attempt_of(rider.borrow(new_phone()))}"))
    assert page["status"]["data-reason"] == "board_offline"
    assert "充电宝柜暂无响应" in page.html

    staff = Screen(app.test_client())
    log_in(staff)
    page = Page(staff.get("/staff/panel"))
    assert "柜控板无响应" in page.html  # said on the panel
    staff.post("/staff/release", {"slot": "empty"})
    assert "柜控板无响应：没有打开任何仓位" in flashes(Page(staff.get("/staff/panel")))
