"""What a console reader sees of the hub's codes, in their language, on a real hub
(SQLite file, Directory, alert store; hub/console/refusals.py, event_words.py):
a refused form says why in Chinese by default and in English on request, never
the API's English message; the station page says its slots' faults, its doors
and its events' details in words instead of codes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from hub.alerting.alerts import MAX_COMMENT
from hub.alerting.summaries import summary
from hub.alerting.texts import texts
from hub.alerting.values import alert_value
from hub.console.auth import MAX_NAME, MAX_PASSWORD, MIN_PASSWORD
from hub.console.refusals import (
    DIRECTORY_WORDS,
    RANGE_WORDS,
    SILENCE_WORDS,
    TOKEN_WORDS,
    USER_WORDS,
)
from hub.console.uptime import MAX_DAYS
from hub.fleet import directory_fields as fields
from hub.service import Hub
from hub.storage.schema import denied
from protocol import messages as m
from tests.harness.console_app import Browser, bring_online, console_hub, send_event
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
C1 = "yh-chumen-01"
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
RIDER = "r:" + "ab" * 12


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    h = console_hub(tmp_path, ManualClock(T0))
    yield h
    h.close()


def browser(hub: Hub, name: str, lang: str) -> Browser:
    b = Browser(hub, name)
    if lang != "zh":  # Chinese is the default: nothing to choose
        b.get(f"/console/lang/{lang}?next=/console/")
    return b


def said(lang: str, msgid: str, **values: object) -> str:
    """The catalogue's words for ``msgid`` in ``lang``, as the page must show them."""
    text = texts(lang).gettext(msgid)
    text = text % values if values else text
    if lang == "zh":
        assert CJK.search(text), f"not in Chinese: {text!r}"
    else:
        assert text == (msgid % values if values else msgid)
    return text


def shown(page: str) -> str:
    return html.unescape(page)


def flashed(b: Browser, resp) -> str:
    return shown(b.follow(resp))


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_directory_refusals_in_the_reader_s_language(hub: Hub, lang: str) -> None:
    desk = browser(hub, "desk", lang)
    desk.get("/console/people")
    cases = [
        ("/console/people/staff", {"id": "s-li", "name": "李师傅", "pin": "12"}, "bad_pin",
         "pin must be 4 to 8 digits"),
        ("/console/people/staff", {"id": "-li", "name": "李", "pin": "4821"}, "bad_id",
         "id must be 1 to 64"),
        ("/console/people/staff", {"id": "s-li", "name": "李" * 65, "pin": "4821"}, "bad_name",
         "name must be text"),
        ("/console/people/riders", {"phone": "1381234567８", "pin": "4821"}, "bad_phone",
         "phone must be a mainland mobile number"),
        ("/console/people/staff/nobody", {"name": "谁"}, "not_found", "no staff member"),
        ("/console/people/denied", {"rider": RIDER, "reason": "打人", "expires": "2026-13-40"},
         "bad_date", "expires must be a date"),
        ("/console/people/denied", {"reason": "打人"}, "bad_body", "give the rider id"),
    ]
    for path, form, code, english in cases:
        page = flashed(desk, desk.post(path, form))
        most = {"bad_name": fields.NAME_MAX}.get(code)
        expected = said(lang, DIRECTORY_WORDS[code], **({"most": most} if most else {}))
        assert f'<p class="flash error" role="status">{expected}</p>' in page, (code, page)
        assert english not in page, code  # the API's own message is not the page's

    # Staff already there.
    hub.directory.add_staff({"id": "s-li", "name": "李师傅", "pin": "4821"}, by="test")
    page = flashed(desk, desk.post("/console/people/staff",
                                   {"id": "s-li", "name": "李", "pin": "4821"}))
    assert said(lang, DIRECTORY_WORDS["exists"]) in page

    # The Directory full to its one-message cap: a denial more is refused as a whole.
    with hub.store.engine.begin() as conn:
        conn.execute(denied.insert(), [
            {"rider": f"r:{i:024x}", "reason": "test fill", "expires_ms": None,
             "created_ms": 0, "created_by": "test"}
            for i in range(m.MAX_PAYLOAD // len(',"r:000000000000000000000000"'))])
    page = flashed(desk, desk.post("/console/people/denied", {"rider": RIDER, "reason": "打人"}))
    assert said(lang, DIRECTORY_WORDS["directory_too_large"]) in page
    assert "65536" not in page
    with hub.store.engine.connect() as conn:
        assert conn.execute(sa.select(denied.c.rider).where(denied.c.rider == RIDER)).first() \
            is None


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_uptime_range_refusals_in_the_reader_s_language(hub: Hub, lang: str) -> None:
    desk = browser(hub, "desk", lang)
    cases = [
        ({"from": "2025-11-20", "to": "2025-11-10"}, "backwards", {}),
        ({"from": "2025-11-2O"}, "bad_date", {}),
        ({"from": "２０２５-11-20"}, "bad_date", {}),
        ({"from": "2023-01-01", "to": "2025-11-20"}, "too_long", {"most": MAX_DAYS}),
        ({"group": "g" * 65}, "bad_group", {}),
    ]
    for query, code, values in cases:
        resp = desk.client.get("/console/uptime", query_string=query)
        assert resp.status_code == 400, query
        page = shown(resp.get_data(as_text=True))
        assert f'<p class="flash error" role="alert">{said(lang, RANGE_WORDS[code], **values)}' \
               in page, (query, page)
        assert "from must be a date" not in page and "from must not be after to" not in page
    # The CSV's refusal is the same words, as text.
    resp = desk.client.get("/console/uptime.csv", query_string={"from": "x"})
    assert resp.status_code == 400
    assert resp.get_data(as_text=True) == said(lang, RANGE_WORDS["bad_date"])


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_silence_refusals_in_the_reader_s_language(hub: Hub, lang: str) -> None:
    bring_online(hub, C1)
    alert = hub.alerts.fire("water_low", C1, "warning", "水位低 18%").alert["id"]
    wang = browser(hub, "wang", lang)
    wang.get("/console/alerts")
    for form, code, values in [
        ({"duration": "forever"}, "bad_time", {}),
        ({"duration": "31d"}, "bad_time", {}),
        ({"duration": "2h", "comment": "注" * (MAX_COMMENT + 1)}, "bad_comment",
         {"most": MAX_COMMENT}),
        # Too long as typed, though not once stripped (found by the forms fuzz).
        ({"duration": "2h", "comment": "注" * MAX_COMMENT + " "}, "bad_comment",
         {"most": MAX_COMMENT}),
    ]:
        page = flashed(wang, wang.post("/console/silences", {"alert": alert, **form}))
        assert said(lang, SILENCE_WORDS[code], **values) in page, (form, page)
        assert "duration must be text" not in page and "at most 30 days: a longer" not in page


def _station(s: dict) -> None:
    s["lockers"]["slots"] = [
        {"slot": 1, "bank": "PB0012AF", "charge": 96, "charging": False, "locked": True,
         "fault": None, "temp_c": 29, "cycles": 212},
        {"slot": 2, "bank": "PB0013B0", "charge": 80, "charging": False, "locked": True,
         "fault": "charger_fault", "temp_c": 55, "cycles": 9},
        {"slot": 3, "bank": None, "charge": None, "charging": False, "locked": True,
         "fault": "lock_jammed", "temp_c": None, "cycles": None}]
    s["dispenser"].update(fault="dry_boil")
    s["doors"] = {"entrance": True, "locker_panel": False}


EVENTS = [
    ("bank_borrowed", {"slot": 3, "bank": "PB0013B0", "charge": 88, "rider": RIDER}),
    ("door_opened", {"door": "entrance"}),
    ("unlock_failed", {"slot": 5, "reason": "board_offline"}),
    ("slot_fault", {"slot": 2, "fault": "charger_fault"}),
    ("dispenser_fault", {"fault": "dry_boil"}),
    ("heater_lockout", {"reason": "max_on_time"}),
    ("refilled", {"what": "cups", "staff": "s-li"}),
    ("water_level", {"level_state": "low", "level": 0.18}),
    ("visit", {"count": 1}),
    ("water_drawn", {"draws": 3, "ml": 750}),
    ("slot_fault_cleared", {"slot": 2, "fault": "comm"}),
    ("slot_swapped", {"slot": 4, "fault": "a_new_fault", "rider": RIDER}),  # a newer agent's
]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_station_page_says_faults_doors_and_event_details_in_words(hub: Hub, lang: str) -> None:
    bring_online(hub, C1, _station)
    for seq, (kind, data) in enumerate(EVENTS, start=88121):
        send_event(hub, C1, seq, kind, data)
        hub.clock.advance(1)
    hub.writer.flush()
    page = shown(browser(hub, "wang", lang).get(f"/console/stations/{C1}")
                 .get_data(as_text=True))
    sep = said(lang, ", ")

    def w(msgid: str, **values: object) -> str:
        return said(lang, msgid, **values)

    slots = re.findall(r'<span class="fault">([^<]*)</span>', page)
    assert slots == [w("charger fault"), w("lock jammed")]
    assert f"<dd>{w('dry boil')}</dd>" in page
    assert f"<dt>{w('entrance')}</dt>" in page and f"<dt>{w('locker panel')}</dt>" in page
    events = page.split(f'<h2>{w("Recent events")}</h2>', 1)[1]
    details = re.findall(r'data-label="[^"]*">([^<]*)</td></tr>', events)
    expected = [
        sep.join([w("slot %(slot)s", slot=3), w("bank %(bank)s", bank="PB0013B0"),
                  w("charge %(charge)s%%", charge=88)]),
        w("entrance"),
        sep.join([w("slot %(slot)s", slot=5), w("board offline")]),
        sep.join([w("slot %(slot)s", slot=2), w("charger fault")]),
        w("dry boil"),
        w("heating too long"),
        sep.join([w("cups"), w("by %(staff)s", staff="s-li")]),
        w("Water low"),
        texts(lang).ngettext("%(num)d visit", "%(num)d visits", 1),
        sep.join([texts(lang).ngettext("%(num)d cup", "%(num)d cups", 3) % {"num": 3},
                  w("%(litres)s L", litres="0.8")]),
        sep.join([w("slot %(slot)s", slot=2), w("no contact")]),
        sep.join([w("slot %(slot)s", slot=4), "a_new_fault"]),
    ]
    assert details == list(reversed(expected))  # newest first
    for code in ("charger_fault", "lock_jammed", "dry_boil", "board_offline", "max_on_time"):
        assert code not in page
    assert RIDER not in page and RIDER[2:14] not in page


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_user_and_token_refusals_in_the_reader_s_language(hub: Hub, lang: str) -> None:
    boss = browser(hub, "boss", lang)
    boss.get("/console/users")
    good = "a long enough password"
    for form, code in [
        ({"name": "li wei", "password": good, "role": "ops"}, "bad_name"),
        ({"name": "liwei", "password": "short", "role": "ops"}, "bad_password"),
        ({"name": "liwei", "password": good, "role": "root"}, "bad_role"),
        ({"name": "liwei", "password": good, "role": "maintenance"}, "needs_groups"),
        ({"name": "desk", "password": good, "role": "ops"}, "exists"),
    ]:
        page = flashed(boss, boss.post("/console/users", form))
        expected = said(lang, USER_WORDS[code], **{
            "bad_name": {"longest": MAX_NAME},
            "bad_password": {"least": MIN_PASSWORD, "most": MAX_PASSWORD}}.get(code, {}))
        assert f'<p class="flash error" role="status">{expected}</p>' in page, (code, page)
    page = flashed(boss, boss.post("/console/users/nobody", {"action": "password",
                                                             "password": good}))
    assert said(lang, USER_WORDS["not_found"]) in page and "no user" not in page

    boss.get("/console/tokens")
    for form, code in [({"name": "-x", "scopes": "read"}, "bad_name"),
                       ({"name": "grafana"}, "bad_scopes"),
                       ({"name": "desk-app", "scopes": "read"}, "configured")]:
        page = flashed(boss, boss.post("/console/tokens", form))
        assert said(lang, TOKEN_WORDS[code]) in page, (code, page)
    page = flashed(boss, boss.post("/console/tokens/nothing/revoke", {}))
    assert said(lang, TOKEN_WORDS["not_found"]) in page and "no token" not in page

    # Signing out says so in words, not as the code it was flashed with.
    page = flashed(boss, boss.post("/console/signout", {}))
    assert said(lang, "You are signed out.") in page and "signed_out" not in page


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_an_alert_s_summary_is_said_in_the_reader_s_language(hub: Hub, lang: str) -> None:
    bring_online(hub, C1)
    value = alert_value("water_low", level=0.18, level_state="low")
    stored = summary("water_low", value)  # in the hub's language, Chinese by default
    hub.alerts.fire("water_low", C1, "warning", stored, value)
    page = shown(browser(hub, "wang", lang).get("/console/alerts").get_data(as_text=True))
    assert summary("water_low", value, lang) in page
    if lang == "en":
        assert stored not in page and CJK.search(stored)
