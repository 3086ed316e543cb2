"""The hub's one text catalogue (docs/alerting-internals.md, "Texts"): every message in
the code and templates is in ``hub/translations`` and translated, English has no
Chinese left in it, and an alert's value has the shape its rule declares."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from hub.alerting.notify.text import KINDS, compose
from hub.alerting.summaries import route_test_name, summary
from hub.alerting.texts import texts
from hub.alerting.values import SHAPES, alert_value, read_value
from hub.http.ackpage import _PAGES, _STYLE
from hub.http.ackpage import _page as ack_page_response
from tests.harness.catalogues import assert_translated, read_catalogue

HUB = Path(__file__).resolve().parents[1] / "hub"
TRANSLATIONS = HUB / "translations"
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
#: The one Chinese word an English message keeps: DingTalk's and Feishu's robots may be
#: set to take only messages carrying the keyword 驿站 (docs/notifications.md).
KEYWORD = "驿站"
#: What chat markdown makes of user text's markup characters (text._md): fullwidth, not Chinese.
INERT = str.maketrans("", "", "＜＞＊［］＿＃")
NOW = 1_764_196_800_000
STATION = {"sid": "yh-chumen-01", "name": "Chumen Pioneer", "group": "chumen", "slots": 12,
           "ready": 1, "faulty": 2}

#: A value of each rule as the engine and the router build it.
SAMPLES: dict[str, dict[str, Any]] = {
    "station_offline": {"reason": "lost"},
    "water_low": {"level": 0.18, "level_state": "low"},
    "water_empty": {"level": 0.0, "level_state": "empty"},
    "water_predicted_empty": {"seconds": 2640},
    "chargers_low": {"ready": 1},
    "chargers_predicted_empty": {"seconds": 5400},
    "door_open_too_long": {"door": "entrance", "open_s": 600},
    "tamper": {"door": "locker_panel"},
    "dispenser_fault": {"fault": "dry_boil"},
    "heater_lockout": {"fault": "overtemp"},
    "locker_offline": {},
    "slot_fault": {"slot": 3, "fault": "lock_jammed"},
    "unlock_failed": {"slot": 5, "reason": "board_offline"},
    "bank_overdue": {"bank": "PB0013B0", "due_at": NOW - 3 * 86400_000, "overdue_s": 3 * 86400},
    "pi_overheat": {"temp_c": 84.2},
    "undervoltage": {},
    "disk_low": {"disk_free_mb": 120},
    "notify_failing": {"notifier": "chumen-wecom", "reason": "HTTP 503"},
    "notify_test": {"route": "chumen", "test": True},
}


def _catalogue(lang: str):
    return read_catalogue(TRANSLATIONS, lang)


def _key(msg: Any) -> tuple[str | None, Any]:
    return (msg.context, msg.id)


def _extracted() -> set[tuple[str | None, Any]]:
    """What ``pybabel extract -F hub/babel.cfg`` finds: (context, msgid)."""
    with (HUB / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    found = set()
    for _file, _line, message, _comments, context in extract_from_dir(
            str(HUB), method_map, options_map):
        found.add((context, message))
    return found


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\([a-z_]+\)[.0-9]*[sdf]|%%", text))


# -- the catalogue ---------------------------------------------------------------------------


def test_every_message_is_in_the_template_and_the_chinese_catalogue():
    extracted = _extracted()
    with (TRANSLATIONS / "messages.pot").open("rb") as f:
        pot = {_key(m) for m in read_po(f) if m.id}
    zh = {_key(m) for m in _catalogue("zh") if m.id}
    missing = extracted - zh
    assert not missing, f"run pybabel extract/update (docs/alerting-internals.md): {missing}"
    assert not zh - extracted, "obsolete messages in the catalogue"
    assert pot == extracted, "hub/translations/messages.pot is not current"


def test_every_chinese_translation_is_complete_not_fuzzy_and_keeps_its_placeholders():
    def in_chinese(msg, text):
        assert CJK.search(text), f"not translated into Chinese: {msg.id!r} -> {text!r}"

    assert_translated(_catalogue("zh"), _placeholders, also=in_chinese)


def test_english_is_the_msgid_language_and_has_no_chinese():
    # English needs no catalogue, as the kiosk's: the msgids are the English texts.
    assert not (TRANSLATIONS / "en").exists()
    for _context, msgid in _extracted():
        for text in msgid if isinstance(msgid, tuple) else (msgid,):
            assert not CJK.search(text.replace(KEYWORD, "")), text


# -- every rule, every kind, in English --------------------------------------------------------


def test_every_rule_has_a_sample_value_of_its_declared_shape():
    assert set(SAMPLES) == set(SHAPES)
    for rule, keys in SAMPLES.items():
        value = alert_value(rule, **keys)
        assert read_value(rule, value) == keys


@pytest.mark.parametrize("rule", sorted(SAMPLES))
def test_every_summary_is_said_in_both_languages(rule: str) -> None:
    value = alert_value(rule, **SAMPLES[rule])
    zh, en = summary(rule, value, "zh"), summary(rule, value, "en")
    assert zh and en and zh != en
    assert CJK.search(zh) and not CJK.search(en), (zh, en)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", sorted(SAMPLES))
def test_every_notification_in_english_has_no_chinese(rule: str, kind: str) -> None:
    value = alert_value(rule, **SAMPLES[rule])
    sid = "hub" if rule.startswith("notify_") else STATION["sid"]
    alert = {"id": "a-1f2e3d4c5b6a7980", "rule": rule, "sid": sid, "severity": "critical",
             "state": "firing", "summary": summary(rule, value), "value": value,
             "started_at": NOW - 35 * 60_000, "acked_at": NOW - 60_000, "resolved_at": NOW}
    # As the router names them: a route test by its (Chinese) name, said again in English.
    station = {"notify_failing": {"sid": "hub", "name": "hub"},
               "notify_test": {"sid": "hub", "name": route_test_name("chumen")}}.get(rule, STATION)
    msg = compose(kind, alert, station, "https://hub.example.cn/ack/tok", language="en",
                  now_ms=NOW)
    for text in (msg.title, *(k + v for k, v in msg.fields), msg.ack_label):
        assert not CJK.search(text), text
    assert KEYWORD in msg.footer  # the robots' keyword, in every language
    for text in (msg.plain(), msg.html()):
        assert not CJK.search(text.replace(KEYWORD, "")), text
    for flavour in ("wecom", "dingtalk", "lark"):
        text = msg.markdown(flavour)
        assert not CJK.search(text.replace(KEYWORD, "").translate(INERT)), text
    chinese = compose(kind, alert, station, None, language="zh", now_ms=NOW)
    assert CJK.search(chinese.title) and chinese.fields[0][0] == "站点"


def test_the_stored_summary_is_said_again_in_the_message_s_language():
    value = alert_value("water_low", level=0.18, level_state="low")
    alert = {"id": "a-1", "rule": "water_low", "sid": STATION["sid"], "severity": "warning",
             "state": "firing", "summary": summary("water_low", value), "value": value,
             "started_at": NOW, "acked_at": None, "resolved_at": None}
    assert alert["summary"] == "水位低 18%"  # stored in the hub's default language
    en = dict(compose("firing", alert, STATION, None, language="en", now_ms=NOW).fields)
    assert en["Details"] == "Water level low 18%"
    zh = dict(compose("firing", alert, STATION, None, language="zh", now_ms=NOW).fields)
    assert zh["详情"] == "水位低 18%"


# -- the ack page ------------------------------------------------------------------------------

PAGES = ("ask", "ok", "again", "acked", "resolved", "expired", "invalid", "missing", "busy",
         "off", "form", "foreign")


@pytest.mark.parametrize("page", PAGES)
def test_every_ack_page_in_english_has_no_chinese(page: str) -> None:
    alert = {"name": "Chumen Pioneer", "sid": STATION["sid"], "what": "Hot water empty",
             "severity": "critical", "since": "11-27 06:05", "ago": "35 min",
             "state": "firing", "state_at": "—"}
    with_alert = page in ("ask", "ok", "again", "acked", "resolved")
    body = ack_page_response("en", 200, page, alert=alert if with_alert else None,
                             form={"token": "tok", "confirm": "c"} if page == "ask" else None
                             ).get_data(as_text=True)
    assert 'lang="en"' in body and not CJK.search(body), body
    chinese = ack_page_response("zh", 403, page).get_data(as_text=True)
    assert 'lang="zh-CN"' in chinese and CJK.search(chinese.replace(_STYLE, ""))


def test_the_ack_page_template_knows_every_page_it_is_asked_for():
    for page in PAGES:
        _PAGES.render("zh", "ack.html", page=page, status=200, alert=None, form=None,
                      style="", html_lang="zh-CN")
    with pytest.raises(jinja2.UndefinedError, match="nonsense"):
        _PAGES.render("zh", "ack.html", page="nonsense", status=200, alert=None, form=None,
                      style="", html_lang="zh-CN")


# -- value shapes --------------------------------------------------------------------------------


def test_a_value_that_does_not_fit_its_rule_is_refused_by_name():
    with pytest.raises(TypeError, match="slot, fault"):
        alert_value("slot_fault", slot=3)
    with pytest.raises(TypeError, match="ready"):
        alert_value("chargers_low", ready=True)  # a bool is not a count
    with pytest.raises(TypeError, match="seconds"):
        alert_value("water_predicted_empty", seconds=12.5)
    assert alert_value("locker_offline") is None


def test_values_written_before_the_shapes_or_by_hand_read_by_the_declared_keys():
    assert read_value("water_low", 0.18) == {"level": 0.18, "level_state": None}
    assert read_value("water_low", "low") == {"level": None, "level_state": "low"}
    assert read_value("chargers_low", 2) == {"ready": 2}
    assert read_value("station_offline", "silent") == {"reason": "silent"}
    assert read_value("slot_fault", {"slot": "3", "fault": 7}) == {"slot": None, "fault": None}
    assert read_value("bank_overdue", [1, 2]) == {"bank": None, "due_at": None,
                                                  "overdue_s": None}
    assert read_value("no_such_rule", {"x": 1}) == {}


def test_texts_fall_back_to_the_default_language():
    assert texts("fr").lang == "zh" and texts(None).lang == "zh"
    assert texts("en").gettext("Station offline") == "Station offline"
    assert texts("zh").gettext("Station offline") == "驿站离线（无法联系）"


def test_the_catalogue_and_the_templates_ship_with_the_package():
    """pyproject.toml's package-data covers every file the texts are read from."""
    root = HUB.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]
    files = [f for folder in (TRANSLATIONS, HUB / "http" / "templates",
                              HUB / "alerting" / "notify" / "templates",
                              HUB / "console" / "templates", HUB / "console" / "static")
             for f in folder.rglob("*") if f.is_file()] + [HUB / "babel.cfg"]
    for f in files:
        rel = f.relative_to(root)
        shipped = any(
            fnmatch.fnmatch(str(rel.relative_to(Path(*package.split(".")))), pattern)
            for package, patterns in globs.items() if rel.is_relative_to(Path(*package.split(".")))
            for pattern in patterns)
        assert shipped, f"{rel} is not in pyproject.toml's package-data"


# -- the console's pages say nothing outside the catalogue -------------------------------------

CONSOLE = HUB / "console"
#: Text a console page shows as it is, in any language: an HTTP header to type, and
#: examples of what a box takes (an id, a token's name).
AS_IS = {"Authorization: Bearer …"}
AS_IS_ATTRIBUTES = {'placeholder="s-wang"', 'placeholder="grafana"'}


def test_every_console_page_says_its_words_through_the_catalogue():
    """What a console template shows (text between tags, and the attributes a reader
    sees) is inside ``{{ _("…") }}``, so the catalogue test above holds it."""
    templates = sorted((CONSOLE / "templates" / "console").glob("*.html"))
    assert templates
    for path in templates:
        source = re.sub(r"\{#.*?#\}|<style.*?</style>|<script.*?</script>", "",
                        path.read_text(), flags=re.S)
        visible = re.sub(r"<[^>]*>", "\n", re.sub(r"\{\{.*?\}\}|\{%.*?%\}", "", source,
                                                   flags=re.S))
        for line in visible.splitlines():
            line = line.strip()
            assert not re.search(r"[A-Za-z]{2,}", line) or line in AS_IS, \
                f"{path.name}: {line!r} is not translated"
        for attr in re.finditer(r'\b(?:title|placeholder|aria-label|alt)="([^"]*)"', source):
            assert attr.group(1).startswith("{{ _(") or attr.group(0) in AS_IS_ATTRIBUTES, \
                f"{path.name}: {attr.group(0)} is not translated"


def _catalogue_words(node: Any) -> bool:
    """A flashed message the page translates: a msgid (``N_``), the console's
    words for a refusal (``refusal``), ``gettext``, or a view's ``done`` (an
    ``N_`` of its callers)."""
    import ast
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in ("N_", "refusal", "gettext")
    if isinstance(node, ast.IfExp):
        return _catalogue_words(node.body) and _catalogue_words(node.orelse)
    return isinstance(node, ast.Name) and node.id == "done"


def test_every_console_flash_is_said_through_the_catalogue():
    """No ``flash(str(err))``: an exception's English message is not a reader's word."""
    import ast
    found = 0
    for path in sorted(CONSOLE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "flash":
                found += 1
                assert _catalogue_words(node.args[0]), \
                    f"{path.name}:{node.lineno}: flash of a text not in the catalogue"
    assert found > 10
