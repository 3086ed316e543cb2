"""Reaching a person (issue 19): the router @-mentions the assignee or whoever the
route's on-call rota has on call, each platform in its own format.

Real parts throughout: the staff records in a real SQLite Directory (added through
``Directory.add_staff``, as the API does), the alert rows, the router, the outbox
with the real WeCom, DingTalk and Feishu notifiers, and a real HTTP server on
loopback per robot answering as the platform does; the test reads each request as
the platform would. Time is a ManualClock in the hub's time zone (Asia/Shanghai).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.alerting.acklink import AckLinks
from hub.alerting.alerts import AlertStore
from hub.alerting.notify import Outbox, build_notifiers
from hub.alerting.notify.mentions import mentions
from hub.alerting.notify.text import DINGTALK_MARKDOWN_MAX
from hub.alerting.routing import Router
from hub.config import NotifierSpec, oncall, parse_hub_config
from hub.config.oncall import parse_oncall
from hub.fleet import directory_fields
from hub.fleet.directory import BadField, Directory, contacts
from hub.storage.store import Store
from hub.storage.writer import Writer
from tests.harness.robots import ROBOTS
from tests.test_notify_receivers import receiver_factory
from yizhan.clock import ManualClock
from yizhan.config import ConfigError, Section

receivers = pytest.fixture(receiver_factory, name="receivers")

T0 = 1_764_208_800.0  # Thursday 2025-11-27 10:00 in Shanghai (02:00 UTC)
HOUR = 3600.0
CHUMEN, KANMEN = "yh-chumen-01", "yh-kanmen-01"
OK = {"wecom": (200, b'{"errcode":0,"errmsg":"ok"}'),
      "dingtalk": (200, b'{"errcode":0,"errmsg":"ok"}'),
      "feishu": (200, b'{"code":0,"msg":"success","data":{}}')}
PATHS = {"wecom": "/cgi-bin/webhook/send?key=k-0123", "dingtalk": "/robot/send?access_token=t0",
         "feishu": "/open-apis/bot/v2/hook/h-0123"}
#: The staff as the Directory keeps them: the day and night shifts of Chumen, Kanmen's
#: night, and a manager; 王 has no Feishu open id.
STAFF = [
    {"id": "wang", "name": "王师傅", "pin": "1357", "phone": "13900001111"},
    {"id": "li", "name": "李师傅", "pin": "2468", "phone": "13800002222",
     "feishu_open_id": "ou_7d8a6e6df7621556ce0d21922b676706", "groups": ["chumen"]},
    {"id": "zhao", "name": "赵师傅", "pin": "3579", "phone": "13700003333",
     "feishu_open_id": "ou_0000000000000000000000000000zhao"},
    {"id": "boss", "name": "经理", "pin": "9753", "phone": "13600004444",
     "feishu_open_id": "ou_boss"},
]
ROTA = [{"who": "wang", "hours": "08:00-20:00"},
        {"who": "li", "hours": "20:00-08:00", "groups": ["chumen"]},
        {"who": "zhao", "hours": "20:00-08:00", "groups": ["kanmen"]}]


class World:
    """One hub's Directory, alerts, outbox and router on one SQLite file and clock,
    its three robots on loopback."""

    def __init__(self, tmp_path: Path, robots: dict[str, Any], routes: list[dict],
                 oncall: dict | None = None, urls: dict[str, str] | None = None,
                 secrets: dict[str, str] | None = None) -> None:
        self.clock = ManualClock(T0)
        self.robots = robots
        url = f"sqlite:///{tmp_path / 'hub.db'}"
        self.config = parse_hub_config({
            "database": url, "timezone": "Asia/Shanghai",
            "stations": [{"sid": CHUMEN, "name": "楚门镇先锋驿站", "group": "chumen"},
                         {"sid": KANMEN, "name": "坎门驿站", "group": "kanmen"}],
            "notifiers": [{"name": p, "type": p,
                           "url": (urls or {}).get(p) or robots[p].url + PATHS[p],
                           **({"secret": secrets[p]} if p in (secrets or {}) else {})}
                          for p in robots],
            "oncall": oncall if oncall is not None else {"towns": ROTA},
            "routes": routes,
        })
        self.store = Store(url)
        self.writer = Writer(self.store).start()
        self.published: list[tuple[str, bytes]] = []
        self.directory = Directory(
            self.store, self.clock, lambda t, p, retain=False: self.published.append((t, p)),
            lambda: [(CHUMEN, "chumen"), (KANMEN, "kanmen")])
        for person in STAFF:
            self.directory.add_staff(person, by="test")
        self.alerts = AlertStore(self.store, self.writer, self.clock)
        self.outbox = Outbox(self.store, self.writer, self.clock,
                             build_notifiers(self.config.notifier_specs, "Asia/Shanghai"),
                             acklinks=AckLinks(b"k" * 32, "https://hub.example.cn",
                                               clock=self.clock),
                             rng=random.Random(1))
        self.router = Router(self.config, self.outbox, self.clock, self.alerts)

    def fire(self, sid: str = CHUMEN, rule: str = "water_empty") -> dict[str, Any]:
        alert = self.alerts.raise_alert(rule, sid, "critical", f"{rule} at {sid}")
        self.router.on_transition("firing", alert, None)
        return alert

    def sent(self) -> dict[str, list[dict[str, Any]]]:
        """Send what is due; every body each robot took since the last look."""
        self.outbox.send_due()
        out = {}
        for name, robot in self.robots.items():
            out[name] = [json.loads(s.body) for s in robot.requests]
            robot.requests.clear()
        return out

    def close(self) -> None:
        self.outbox.close()
        self.writer.close()
        self.store.close()


@pytest.fixture
def world(tmp_path: Path, receivers) -> Iterator[Any]:
    made: list[World] = []

    def make(routes: list[dict] | None = None, oncall: dict | None = None) -> World:
        robots = {p: receivers(default=OK[p]) for p in ("wecom", "dingtalk", "feishu")}
        path = tmp_path / str(len(made))
        path.mkdir()
        routes = routes if routes is not None else [
            {"name": "towns", "notify": ["wecom", "dingtalk", "feishu"], "oncall": "towns",
             "test_every": "off"}]
        made.append(World(path, robots, routes, oncall))
        return made[-1]

    yield make
    for w in made:
        w.close()


# -- what each platform is sent ---------------------------------------------------------


def mentioned(platform: str, body: dict[str, Any]) -> list[str]:
    """Whom a request @-mentions, read as the platform reads it: WeCom's text
    ``mentioned_mobile_list``; DingTalk's ``at.atMobiles``, each also as ``@<phone>``
    in the text (or DingTalk would not notify it); Feishu's ``<at id=…>`` in the card."""
    if platform == "wecom":
        if body["msgtype"] != "text":
            assert "mentioned_mobile_list" not in json.dumps(body)  # markdown cannot @
            return []
        return body["text"].get("mentioned_mobile_list", [])
    if platform == "dingtalk":
        phones = body.get("at", {}).get("atMobiles", [])
        for phone in phones:
            assert f"@{phone}" in body["markdown"]["text"]
        assert body.get("at", {}).get("isAtAll", False) is False
        return phones
    divs = [e["text"]["content"] for e in body["card"]["elements"] if e["tag"] == "div"]
    return [part.split(">")[0] for d in divs for part in d.split("<at id=")[1:]]


def test_the_person_on_call_is_mentioned_in_each_platforms_own_format(world):
    w = world()
    w.fire()  # Thursday 10:00: the day shift, 王, whose record has no Feishu open id
    day = w.sent()
    assert mentioned("wecom", day["wecom"][0]) == ["13900001111"]
    assert day["wecom"][0]["msgtype"] == "text"
    text = day["wecom"][0]["text"]["content"]
    assert "楚门镇先锋驿站" in text and "https://hub.example.cn/ack/" in text
    assert mentioned("dingtalk", day["dingtalk"][0]) == ["13900001111"]
    assert mentioned("feishu", day["feishu"][0]) == []  # nothing to @ him by in Feishu

    w.clock.advance(12 * HOUR)  # Thursday 22:00: Chumen's night is 李's, Kanmen's 赵's
    w.fire(KANMEN)
    w.clock.advance(1)  # one after the other, as the outbox sends them (neither goes first)
    w.fire(CHUMEN, "dispenser_fault")
    night = w.sent()
    assert [mentioned("wecom", b) for b in night["wecom"]] == [["13700003333"], ["13800002222"]]
    assert [mentioned("dingtalk", b) for b in night["dingtalk"]] == [["13700003333"],
                                                                     ["13800002222"]]
    assert [mentioned("feishu", b) for b in night["feishu"]] == [
        ["ou_0000000000000000000000000000zhao"], ["ou_7d8a6e6df7621556ce0d21922b676706"]]
    # The card @-mentions first, then the message, the button, the footer.
    assert night["feishu"][1]["card"]["elements"][0]["text"]["content"] == (
        "<at id=ou_7d8a6e6df7621556ce0d21922b676706></at>")


def test_the_fake_robots_enforcing_each_platform_take_the_mentions(tmp_path):
    """P's fake robots (tests/harness/robots.py: each platform's address, signature,
    message types and rate limits) take every mention as the platform would."""
    clock_world: list[World] = []
    secret = "SEC0123456789abcdef"
    made = {p: ROBOTS[p](ManualClock(T0), secret=secret if p != "wecom" else None)
            for p in ("wecom", "dingtalk", "feishu")}
    try:
        w = World(tmp_path, made, [{"name": "towns", "notify": list(made), "oncall": "towns",
                                    "test_every": "off"}],
                  urls={p: r.url for p, r in made.items()},
                  secrets={"dingtalk": secret, "feishu": secret})
        clock_world.append(w)
        for robot in made.values():
            robot.clock = w.clock  # the robots count on the hub's clock
        w.clock.advance(12 * HOUR)  # 22:00: Chumen's night, 李
        w.fire()
        w.outbox.send_due()
        for platform, robot in made.items():
            assert robot.refused == [], platform
            (heard,) = robot.accepted
            who = mentioned(platform, heard.body)
            assert who == (["ou_7d8a6e6df7621556ce0d21922b676706"] if platform == "feishu"
                           else ["13800002222"]), platform
    finally:
        for w in clock_world:
            w.close()
        for robot in made.values():
            robot.close()


def test_a_night_shift_runs_past_midnight_and_a_rota_can_name_its_days(world):
    w = world(oncall={"towns": [{"who": "li", "hours": "20:00-08:00", "days": ["thu"]},
                                {"who": "zhao", "hours": "00:00-24:00", "days": ["sat", "sun"]}]})
    w.clock.advance(18 * HOUR)  # Friday 04:00: still Thursday's night
    w.fire()
    assert mentioned("wecom", w.sent()["wecom"][0]) == ["13800002222"]
    w.clock.advance(6 * HOUR)  # Friday 10:00: nobody on call
    w.fire(KANMEN)
    assert w.sent()["wecom"][0]["msgtype"] == "markdown"  # no mention: markdown as before
    w.clock.advance(24 * HOUR)  # Saturday 10:00
    w.fire(CHUMEN, "heater_lockout")
    assert mentioned("dingtalk", w.sent()["dingtalk"][0]) == ["13700003333"]


def test_the_assignee_is_mentioned_rather_than_the_person_on_call(world):
    w = world()
    alert = w.fire()
    w.sent()
    w.alerts.assign(alert["id"], "li", by="console:desk")
    w.clock.advance(HOUR)  # a critical alert's reminder, an hour on
    w.router.tick()
    sent = w.sent()
    assert [b["msgtype"] for b in sent["wecom"]] == ["text"]
    assert sent["wecom"][0]["text"]["content"].startswith("【仍未处理·紧急】")  # a reminder
    assert mentioned("wecom", sent["wecom"][0]) == ["13800002222"]
    assert mentioned("feishu", sent["feishu"][0]) == ["ou_7d8a6e6df7621556ce0d21922b676706"]


def test_an_escalation_mentions_its_tiers_rota_and_the_news_after_nobody(world):
    w = world(routes=[{"name": "towns", "notify": ["wecom"], "oncall": "towns",
                       "escalate": [{"after": "15m", "notify": ["dingtalk"],
                                     "oncall": "managers"}],
                       "test_every": "off"}],
              oncall={"towns": ROTA, "managers": [{"who": "boss"}]})
    alert = w.fire()
    assert mentioned("wecom", w.sent()["wecom"][0]) == ["13900001111"]
    w.clock.advance(15 * 60)
    w.router.tick()
    assert mentioned("dingtalk", w.sent()["dingtalk"][0]) == ["13600004444"]
    w.alerts.clear("water_empty", CHUMEN, "", by="auto")
    w.router.reconcile(alert["id"])
    done = w.sent()
    # The resolution goes to both tiers and wakes nobody.
    assert [mentioned("wecom", b) for b in done["wecom"]] == [[]]
    assert [mentioned("dingtalk", b) for b in done["dingtalk"]] == [[]]


def test_mention_off_and_a_route_without_a_rota_mention_nobody(world):
    w = world(routes=[{"name": "quiet", "match": {"group": "kanmen"}, "notify": ["wecom"],
                       "oncall": "towns", "mention": "off", "test_every": "off"},
                      {"name": "plain", "notify": ["dingtalk"], "test_every": "off"}])
    w.fire(KANMEN)
    w.fire(CHUMEN)
    sent = w.sent()
    assert [b["msgtype"] for b in sent["wecom"]] == ["markdown"]
    assert [mentioned("dingtalk", b) for b in sent["dingtalk"]] == [[]]


def test_someone_on_call_the_directory_does_not_know_is_told_without_an_at(world, caplog):
    w = world(oncall={"towns": [{"who": "nobody-here"}]})
    with caplog.at_level(logging.WARNING, logger="hub.alerting.routing"):
        w.fire()
    sent = w.sent()
    assert [b["msgtype"] for b in sent["wecom"]] == ["markdown"]  # told all the same
    assert "no staff member nobody-here" in caplog.text


def test_mentions_do_not_reach_a_stations_directory_nor_the_contracts_webhook(world):
    w = world()
    for topic, payload in w.published:
        assert b"ou_" not in payload and b"13800002222" not in payload, topic
    assert any(b"li" in p for _, p in w.published)  # the staff are there, without them
    assert contacts(w.store, ["li", "nobody"]) == {"li": {
        "id": "li", "name": "李师傅", "phone": "13800002222",
        "feishu_open_id": "ou_7d8a6e6df7621556ce0d21922b676706"}}
    assert w.directory.get_staff("li")["phone"] == "138****2222"  # the API masks it
    # A new open id changes nothing a station holds: nothing is published again.
    before = len(w.published)
    w.directory.change_staff("li", {"feishu_open_id": "ou_new0000"}, by="desk")
    assert len(w.published) == before
    assert w.directory.audit(1)[0]["detail"] == {"feishu_open_id": "set"}


@pytest.mark.parametrize("value", ["ou_", "ou_abc def", "on_123", 10**30, ["ou_1"],
                                   "ou_" + "a" * 65])
def test_a_bad_feishu_open_id_is_refused(world, value):
    w = world()
    with pytest.raises(BadField) as err:
        w.directory.change_staff("li", {"feishu_open_id": value}, by="test")
    assert err.value.code == "bad_feishu_open_id"
    w.directory.change_staff("li", {"feishu_open_id": None}, by="test")
    assert w.directory.get_staff("li")["feishu_open_id"] is None


LI = {"id": "li", "name": "李<师傅>", "phone": "13800002222",
      "feishu_open_id": "ou_7d8a6e6df7621556ce0d21922b676706"}
AN_ALERT = {"id": "a-0123456789abcdef", "rule": "water_empty", "sid": CHUMEN,
            "severity": "critical", "state": "firing", "summary": "水位空",
            "value": {"level": 0.0, "level_state": "empty"}, "started_at": int(T0 * 1000),
            "acked_at": None, "resolved_at": None}


def test_feishu_text_mentions_by_open_id_in_front_of_the_message(tmp_path, receivers):
    robot = receivers(default=OK["feishu"])
    spec = NotifierSpec(name="f", type="feishu", format="text",
                        url=robot.url + PATHS["feishu"])
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    writer = Writer(store).start()
    outbox = Outbox(store, writer, ManualClock(T0), build_notifiers([spec]))
    try:
        outbox.enqueue("f", "firing", {**AN_ALERT, "mention": [LI]},
                       {"sid": CHUMEN, "name": "楚门镇先锋驿站"})
        assert outbox.send_due() == 1
    finally:
        outbox.close()
        writer.close()
        store.close()
    body = json.loads(robot.requests[0].body)
    assert body["msg_type"] == "text"
    text = body["content"]["text"]
    # The name made inert: a name cannot close the tag and open one of its own.
    assert text.startswith('<at user_id="ou_7d8a6e6df7621556ce0d21922b676706">李＜师傅＞</at> ')
    assert "楚门镇先锋驿站" in text


def test_a_wecom_text_with_a_mention_keeps_to_2048_bytes_on_a_character_boundary():
    notifier = build_notifiers([NotifierSpec(name="w", type="wecom",
                                             url="http://127.0.0.1:9/cgi-bin/webhook/send")])["w"]
    long = {**AN_ALERT, "summary": "🚰𠀀" * 400, "mention": [LI]}  # 4-byte characters
    station = {"sid": CHUMEN, "name": "𠀀" * 64}
    body = json.loads(notifier.render("firing", long, station, "https://hub.example.cn/ack/x",
                                      delivery_id="d-1", now_ms=int(T0 * 1000)))
    content = body["text"]["content"]
    assert len(content.encode()) <= 2048
    assert "\ufffd" not in content  # no character cut in two
    assert "https://hub.example.cn/ack/x" in content  # values shortened before the link
    assert body["text"]["mentioned_mobile_list"] == ["13800002222"]


def test_a_dingtalk_mention_survives_the_texts_cap():
    notifier = build_notifiers([NotifierSpec(name="d", type="dingtalk",
                                             url="http://127.0.0.1:9/robot/send?access_token=t")])["d"]
    long = {**AN_ALERT, "summary": "𠀀" * 10_000, "mention": [LI]}
    body = json.loads(notifier.render("firing", long, {"sid": CHUMEN}, None,
                                      delivery_id="d-1", now_ms=int(T0 * 1000)))
    assert len(body["markdown"]["text"].encode()) <= DINGTALK_MARKDOWN_MAX
    assert body["markdown"]["text"].endswith("@13800002222")
    assert body["at"] == {"atMobiles": ["13800002222"], "isAtAll": False}


def test_hostile_mention_entries_are_left_out():
    alert = {"mention": [{"name": "x", "phone": "1" * 40}, {"phone": 10**30}, "li",
                         {"name": "李<b>", "phone": "13800002222", "feishu_open_id": 7},
                         {"name": "again", "phone": "13800002222"}]}
    (only,) = mentions(alert)
    assert (only.phone, only.feishu_open_id, only.name) == ("13800002222", None, "李<b>")
    assert mentions({"mention": 10**30}) == mentions({}) == ()


# -- the configuration --------------------------------------------------------------------


def test_a_rota_says_who_is_on_call_by_hour_day_and_group():
    rotas = parse_oncall(Section({"oncall": {"r": [
        {"who": "a", "hours": "08:00-20:00", "days": ["mon", "tue", "wed", "thu", "fri"]},
        {"who": "b", "hours": "20:00-08:00", "groups": "chumen"},
        {"who": "c", "hours": "18:00-00:00"}]}}))
    on = rotas["r"].on_call
    assert on(group="chumen", weekday=0, minute=8 * 60) == ("a",)
    assert on(group="chumen", weekday=5, minute=8 * 60) == ()  # Saturday
    assert on(group="chumen", weekday=0, minute=19 * 60) == ("a", "c")  # a handover
    assert on(group="chumen", weekday=6, minute=23 * 60 + 59) == ("b", "c")
    assert on(group="chumen", weekday=0, minute=7 * 60) == ("b",)  # Sunday's night
    assert on(group="kanmen", weekday=0, minute=7 * 60) == ()
    assert on(group=None, weekday=2, minute=21 * 60) == ("c",)


def test_a_rota_takes_staff_ids_as_the_directory_does():
    assert oncall.STAFF_ID_PATTERN == directory_fields.STAFF_ID_PATTERN


@pytest.mark.parametrize(("oncall", "key", "words"), [
    ({"r": []}, "oncall.r", "non-empty list"),
    ({"r": "li"}, "oncall.r", "non-empty list"),
    ({"r x": [{"who": "li"}]}, "oncall.r x", "a rota's name"),
    ({"r": [{"who": "Li Si"}]}, "who", "staff id"),
    ({"r": [{"who": 10**30}]}, "who", "staff id"),
    ({"r": [{"who": "li", "hours": "8-20"}]}, "hours", "like \"08:00-20:00\""),
    ({"r": [{"who": "li", "hours": "25:00-08:00"}]}, "hours", "time of day"),
    ({"r": [{"who": "li", "hours": "08:00-24:30"}]}, "hours", "time of day"),
    ({"r": [{"who": "li", "hours": "08:00-08:00"}]}, "hours", "no time at all"),
    ({"r": [{"who": "li", "hours": 10**30}]}, "hours", "like \"08:00-20:00\""),
    ({"r": [{"who": "li", "days": ["monday"]}]}, "days", "mon, tue"),
    ({"r": [{"who": "li", "days": []}]}, "days", "list of mon"),
    ({"r": [{"who": "li", "groups": [10**30]}]}, "groups", "list of groups"),
    ({"r": [{"who": "li", "shift": "night"}]}, "shift", "unknown key"),
    ({"r": [{"who": "li"}] * 201}, "oncall.r", "at most 200"),
])
def test_a_bad_rota_is_refused_naming_the_key(oncall, key, words):
    with pytest.raises(ConfigError) as err:
        parse_oncall(Section({"oncall": oncall}))
    assert key in str(err.value) and words in str(err.value)


@pytest.mark.parametrize(("route", "key", "words"), [
    ({"notify": ["n"], "oncall": "nights"}, "routes[0].oncall", "no rota named 'nights'"),
    ({"notify": ["n"], "oncall": 10**30}, "routes[0].oncall", "no rota named"),
    ({"notify": ["n"], "escalate": [{"after": "5m", "notify": ["n"], "oncall": "x"}]},
     "routes[0].escalate[0].oncall", "listed: towns"),
    ({"notify": ["n"], "mention": "maybe"}, "routes[0].mention", "on or off"),
])
def test_a_route_naming_a_rota_that_is_not_there_is_refused(tmp_path, route, key, words):
    with pytest.raises(ConfigError) as err:
        parse_hub_config({"database": f"sqlite:///{tmp_path / 'h.db'}",
                          "notifiers": [{"name": "n", "type": "webhook",
                                         "url": "http://127.0.0.1:9/x"}],
                          "oncall": {"towns": [{"who": "li"}]}, "routes": [route]})
    assert key in str(err.value) and words in str(err.value)
