"""DingTalk (钉钉) custom robot: markdown, signed with the robot's 加签 secret.

``POST https://oapi.dingtalk.com/robot/send?access_token=…&timestamp=…&sign=…``
with ``{"msgtype": "markdown", "markdown": {"title": "…", "text": "…"}}``. The
signature is made fresh on every attempt (DingTalk refuses a timestamp more
than an hour off):

    timestamp = current time in milliseconds
    sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")))

Success is HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}``. A robot takes at
most 20 messages a minute; one more and DingTalk blocks the robot for ten
minutes (130101), which the pacing then waits out. The whole message may be
at most 20 000 bytes (460101, "message too long", is not retried). With the
"custom keyword" security setting, use the keyword 驿站: every message carries it.

A message that @-mentions someone (hub/alerting/notify/mentions.py) adds
``"at": {"atMobiles": ["138…"], "isAtAll": false}`` and ends its text with
``@138…``: DingTalk notifies and highlights only a number that is also in the text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote_plus

from hub.alerting.notify.base import ChatRobotNotifier, dumps
from hub.alerting.notify.mentions import Mention, mentions, phones
from hub.alerting.notify.text import DINGTALK_MARKDOWN_MAX, Message


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The ``sign`` query value (already URL-encoded) for ``timestamp_ms``."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest))


class DingTalkNotifier(ChatRobotNotifier):
    type = "dingtalk"
    PLATFORM = "DingTalk"
    CODE_FIELDS = ("errcode",)
    PERMANENT: ClassVar[dict[int, str]] = {
        310000: "refused by the robot's security settings (sign not matching the secret — "
                "or the hub's clock off by over an hour —, keyword missing, or IP not "
                "allowed)",
        300001: "the access_token is wrong",
        300005: "the access_token does not exist (robot removed, or one of an outside "
                "group): copy its webhook address again",
        400101: "the access_token does not exist",
        400102: "the robot is disabled",
        400105: "message type refused",
        400106: "the robot does not exist",
        400013: "the group was dissolved",
        430101: "message refused: unsafe link",
        430102: "message refused: content",
        430103: "message refused: content",
        430104: "message refused: content",
        460101: "message too long (over 20 000 bytes)",
    }
    TEMPORARY: ClassVar[dict[int, str]] = {
        130101: "rate limited (20 messages a minute per robot); retrying",
        410100: "rate limited; retrying",
        -1: "DingTalk busy; retrying",
    }
    RATE_LIMITED = frozenset({130101, 410100})
    #: Over 20 a minute, DingTalk blocks the robot for 10 minutes (its documentation).
    RETRY_AFTER: ClassVar[dict[int, float]] = {130101: 600.0}

    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        return self.shape(self.compose(kind, alert, station, ack_url, now_ms),
                          delivery_id=delivery_id, now_ms=now_ms, people=mentions(alert))

    def shape(self, msg: Message, *, delivery_id: str, now_ms: int,
              people: tuple[Mention, ...] = ()) -> str:
        mobiles = phones(people)
        # The @numbers last, so that cutting the text to its cap never cuts them.
        tail = ("\n\n" + " ".join(f"@{m}" for m in mobiles)) if mobiles else ""
        text = msg.markdown("dingtalk", max_bytes=DINGTALK_MARKDOWN_MAX - len(tail.encode()))
        body: dict[str, Any] = {"msgtype": "markdown", "markdown": {
            "title": msg.title,  # what the notification and the chat list show
            "text": text + tail,
        }}
        if mobiles:
            body["at"] = {"atMobiles": mobiles, "isAtAll": False}
        return dumps(body)

    def request(self, body: str, delivery_id: str, now: float) -> tuple[str, dict, bytes]:
        url = self.spec.url
        if self.spec.secret:
            timestamp = int(now * 1000)
            url += f"&timestamp={timestamp}&sign={dingtalk_sign(self.spec.secret, timestamp)}"
        return url, self.headers(), body.encode()
