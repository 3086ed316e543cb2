"""Every platform's text within its documented byte cap, cut between characters.

The caps (hub/alerting/notify/text.py) are UTF-8 bytes; station names and
summaries here are made of 4-byte characters (𠀀, 🚰) so that a cut lands inside
one unless it is made on a boundary, with ASCII padding moving the boundary
through every offset. The notifiers render through their real ``render``; what
is checked is the stored body as the platform will read it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.alerting.notify import build_notifiers
from hub.alerting.notify.limits import digest_message
from hub.alerting.notify.text import (
    DINGTALK_MARKDOWN_MAX,
    DINGTALK_MESSAGE_MAX,
    FEISHU_BODY_MAX,
    FEISHU_REQUEST_MAX,
    FEISHU_TEXT_MAX,
    WECOM_MARKDOWN_MAX,
    WECOM_TEXT_MAX,
    compose,
    cut_utf8,
)
from hub.config import NotifierSpec
from hub.config.notifiers import NotifyLimits

SID = "yh-chumen-01"
NOW_MS = 1_764_196_800_000
LINK = "https://hub.example.cn/ack/" + "A" * 120
WIDE = ("𠀀", "🚰", "驿", "é")  # 4, 4, 3 and 2 bytes


def hostile_alert(char: str) -> dict[str, Any]:
    return {"id": "a-0123456789abcdef", "rule": "water_empty", "sid": SID,
            "severity": "critical", "state": "firing", "summary": char * 6000,
            "value": {"level": 0.0, "level_state": "empty"},
            "started_at": NOW_MS - 35 * 60_000, "acked_at": None, "resolved_at": None}


def hostile_station(char: str, pad: int = 0) -> dict[str, Any]:
    return {"sid": SID, "name": "x" * pad + char * 3000, "group": "chumen"}


# -- the cut ----------------------------------------------------------------------------


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("pad", range(4))
def test_a_cut_falls_between_characters_and_is_as_long_as_it_can_be(char: str,
                                                                      pad: int) -> None:
    text = "a" * pad + char * 40
    for cap in range(0, len(text.encode()) + 2):
        out = cut_utf8(text, cap)
        data = out.encode()
        assert len(data) <= cap or (cap < len("…".encode()) and out == ""), (cap, out)
        assert "\ufffd" not in out and data.decode("utf-8") == out  # whole characters
        if len(text.encode()) <= cap:
            assert out == text
            continue
        if cap >= 3:
            kept = out[:-1]
            assert out.endswith("…") and text.startswith(kept)
            # As long as it can be: one more character would not fit.
            assert len((text[:len(kept) + 1] + "…").encode()) > cap


def test_a_cut_of_nothing_and_hostile_sizes() -> None:
    assert cut_utf8("", 0) == ""
    assert cut_utf8("🚰", 0) == "" and cut_utf8("🚰", 2) == ""
    assert cut_utf8("🚰🚰", 5) == "…"  # the ellipsis fits, the second 🚰 does not
    assert cut_utf8("驿站", 10**30) == "驿站"
    assert cut_utf8("驿站", -5) == ""


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("cap", [WECOM_TEXT_MAX, WECOM_MARKDOWN_MAX, 700, 301])
def test_a_message_over_its_cap_keeps_title_link_and_footer(char: str, cap: int) -> None:
    msg = compose("firing", hostile_alert(char), hostile_station(char), LINK, now_ms=NOW_MS)
    for text in (msg.plain(cap), msg.markdown("wecom", cap), msg.markdown("dingtalk", cap),
                 msg.markdown("lark", cap)):
        assert len(text.encode()) <= cap and "\ufffd" not in text
        if cap >= 700:
            assert LINK in text
    if cap >= 700:  # the footer's keyword (a Feishu card has it in its own note)
        assert all("驿站" in t for t in (msg.plain(cap), msg.markdown("wecom", cap),
                                         msg.markdown("dingtalk", cap)))


def test_the_fields_go_before_the_link_does() -> None:
    msg = compose("firing", hostile_alert("🚰"), hostile_station("𠀀"), LINK, now_ms=NOW_MS)
    roomy = msg.plain(WECOM_TEXT_MAX)
    assert "…" in roomy and "带什么" in roomy  # shortened, not dropped
    tight = msg.plain(560)
    assert LINK in tight and "带什么" not in tight  # dropped, the link kept


# -- each platform's body, as sent -----------------------------------------------------


def spec(kind: str, **changes: Any) -> NotifierSpec:
    url = {"wecom": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
           "dingtalk": "https://oapi.dingtalk.com/robot/send?access_token=t",
           "feishu": "https://open.feishu.cn/open-apis/bot/v2/hook/x"}[kind]
    return NotifierSpec(name=f"n-{kind}", type=kind, url=url, **changes)


def body_of(s: NotifierSpec, char: str, pad: int) -> tuple[dict[str, Any], bytes]:
    (n,) = build_notifiers([s]).values()
    text = n.render("firing", hostile_alert(char), hostile_station(char, pad), LINK,
                    delivery_id="d-1", now_ms=NOW_MS)
    return json.loads(text), text.encode()


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("pad", range(4))
def test_wecom_markdown(char: str, pad: int) -> None:
    body, _ = body_of(spec("wecom"), char, pad)
    content = body["markdown"]["content"]
    assert len(content.encode()) <= WECOM_MARKDOWN_MAX and LINK in content


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("pad", range(4))
def test_dingtalk_markdown_and_the_whole_message(char: str, pad: int) -> None:
    body, raw = body_of(spec("dingtalk"), char, pad)
    text = body["markdown"]["text"]
    assert len(text.encode()) <= DINGTALK_MARKDOWN_MAX and LINK in text
    assert len(raw) <= DINGTALK_MESSAGE_MAX  # 460101 beyond


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("pad", range(4))
def test_feishu_card_and_the_whole_request(char: str, pad: int) -> None:
    body, raw = body_of(spec("feishu", secret="s" * 32), char, pad)
    content = body["card"]["elements"][-3]["text"]["content"]
    assert len(content.encode()) <= FEISHU_BODY_MAX
    # The signed request adds a timestamp and a sign (~80 bytes) to the stored body.
    assert len(raw) + 100 <= FEISHU_REQUEST_MAX


@pytest.mark.parametrize("char", WIDE)
def test_feishu_text(char: str) -> None:
    body, raw = body_of(spec("feishu", format="text"), char, 1)
    text = body["content"]["text"]
    assert len(text.encode()) <= FEISHU_TEXT_MAX and LINK in text
    assert len(raw) + 100 <= FEISHU_REQUEST_MAX


def test_wecom_text_with_a_mention() -> None:
    (n,) = build_notifiers([spec("wecom")]).values()
    alert = {**hostile_alert("🚰"), "mention": [{"id": "s1", "name": "李师傅",
                                                 "phone": "13800001111"}]}
    body = json.loads(n.render("firing", alert, hostile_station("𠀀"), LINK,
                               delivery_id="d-1", now_ms=NOW_MS))
    assert body["msgtype"] == "text"
    content = body["text"]["content"]
    assert len(content.encode()) <= WECOM_TEXT_MAX and LINK in content


# -- a digest of many different things: where the caps bind ---------------------------


def big_digest() -> Any:
    entries = [{"kind": "firing", "what": f"{i:03d}" + "🚰" * 80, "name": "𠀀" * 64,
                "sid": f"s{i}"} for i in range(300)]
    return digest_message(entries, 300, NotifyLimits(), "zh", "digest-1")


@pytest.mark.parametrize(("s", "cap", "text_of"), [
    (spec("wecom"), WECOM_MARKDOWN_MAX, lambda b: b["markdown"]["content"]),
    (spec("dingtalk"), DINGTALK_MARKDOWN_MAX, lambda b: b["markdown"]["text"]),
    (spec("feishu"), FEISHU_BODY_MAX, lambda b: b["card"]["elements"][0]["text"]["content"]),
    (spec("feishu", format="text"), FEISHU_TEXT_MAX, lambda b: b["content"]["text"]),
], ids=["wecom", "dingtalk", "feishu-card", "feishu-text"])
def test_a_long_digest_is_cut_to_each_platforms_cap(s: NotifierSpec, cap: int,
                                                     text_of: Any) -> None:
    (n,) = build_notifiers([s]).values()
    msg = big_digest()
    assert len(msg.plain().encode()) > 5 * cap  # the cap does bind
    raw = n.render_digest(msg, {}, delivery_id="d-1", now_ms=NOW_MS)
    text = text_of(json.loads(raw))
    assert len(text.encode()) <= cap and "\ufffd" not in text
    assert "【汇总】" in (text + raw)  # the digest's title survives
    assert len(raw.encode()) <= min(DINGTALK_MESSAGE_MAX, FEISHU_REQUEST_MAX) - 100
