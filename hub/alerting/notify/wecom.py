"""WeCom (企业微信) group robot: markdown to the robot's webhook address.

``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…`` with
``{"msgtype": "markdown", "markdown": {"content": "…"}}`` (content at most 4096
UTF-8 bytes). The key in the address is the credential; there is no signature.
The robot answers HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}`` when sent.
A robot takes at most 20 messages a minute; more are refused with 45009, a
rate limit the pacing waits out (a minute at most) before trying again.

A message that @-mentions someone (the assignee or the person on call,
hub/alerting/notify/mentions.py) is sent as ``{"msgtype": "text", "text":
{"content": "…", "mentioned_mobile_list": ["138…"]}}`` (content at most 2048
bytes): the robot's markdown cannot @ by phone number, only its text can. The
text carries the same lines and the acknowledge link, without colour or bold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hub.alerting.notify.base import ChatRobotNotifier, dumps
from hub.alerting.notify.mentions import Mention, mentions, phones
from hub.alerting.notify.text import WECOM_MARKDOWN_MAX, WECOM_TEXT_MAX, Message


class WeComNotifier(ChatRobotNotifier):
    type = "wecom"
    PLATFORM = "WeCom"
    CODE_FIELDS = ("errcode",)
    PERMANENT: ClassVar[dict[int, str]] = {
        93000: "the robot's key is wrong or the robot was removed: copy its webhook "
               "address again",
        40008: "message type refused",
        44004: "message content is empty",
        40058: "message refused as invalid",
    }
    TEMPORARY: ClassVar[dict[int, str]] = {
        45009: "rate limited (20 messages a minute per robot); retrying",
        -1: "WeCom busy; retrying",
    }
    RATE_LIMITED = frozenset({45009})
    RETRY_AFTER: ClassVar[dict[int, float]] = {45009: 60.0}  # the window is a minute

    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        return self.shape(self.compose(kind, alert, station, ack_url, now_ms),
                          delivery_id=delivery_id, now_ms=now_ms, people=mentions(alert))

    def shape(self, msg: Message, *, delivery_id: str, now_ms: int,
              people: tuple[Mention, ...] = ()) -> str:
        mobiles = phones(people)
        if mobiles:
            return dumps({"msgtype": "text", "text": {
                "content": plain_within(msg, WECOM_TEXT_MAX),
                "mentioned_mobile_list": mobiles}})
        content = msg.markdown("wecom", max_bytes=WECOM_MARKDOWN_MAX)
        return dumps({"msgtype": "markdown", "markdown": {"content": content}})


def plain_within(msg: Message, max_bytes: int) -> str:
    """The plain text in at most ``max_bytes`` of UTF-8 (values shortened, then the
    last lines left out, the link kept: ``Message.fit``), without its last newline."""
    return msg.plain(max_bytes).rstrip("\n")
