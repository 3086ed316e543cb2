"""Feishu (飞书) custom bot: a message card with an acknowledge button.

``POST https://open.feishu.cn/open-apis/bot/v2/hook/…`` with
``{"msg_type": "interactive", "card": {…}}`` (or ``format: text``:
``{"msg_type": "text", "content": {"text": "…"}}``), the whole request at most
20 KB. With a signature secret (签名校验), every attempt adds a fresh
``"timestamp"`` (seconds, as a string) and ``"sign"`` in front of the stored
body — Feishu refuses a timestamp more than an hour off:

    sign = base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))

Success is HTTP 200 with ``{"code": 0, "msg": "success"}`` (older answers:
``"StatusCode": 0``); some refusals come as HTTP 400 with a code, which decides.
A bot takes at most 100 messages a minute and 5 a second (11232 beyond). With
the "custom keyword" setting, use 驿站.

A message that @-mentions someone (hub/alerting/notify/mentions.py) does it by
the person's Feishu open id (the staff record's ``feishu_open_id``; a Feishu bot
cannot @ a phone number): ``<at id=ou_…></at>`` in the card's markdown, first,
or ``<at user_id="ou_…">name</at>`` at the head of a text message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar

from hub.alerting.notify.base import ChatRobotNotifier, dumps
from hub.alerting.notify.mentions import Mention, mentions, open_ids
from hub.alerting.notify.text import FEISHU_BODY_MAX, FEISHU_TEXT_MAX, Message

_TEMPLATE = {"critical": "red", "warning": "orange", "info": "blue"}


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """The ``sign`` field for ``timestamp_s``."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class FeishuNotifier(ChatRobotNotifier):
    type = "feishu"
    PLATFORM = "Feishu"
    CODE_FIELDS = ("code", "StatusCode")
    PERMANENT: ClassVar[dict[int, str]] = {
        19001: "the webhook address is wrong (invalid token)",
        19021: "signature refused: check the secret (and that the hub's clock is right)",
        19022: "the hub's IP address is not in the bot's allow list",
        19024: "keyword missing: set the bot's keyword to 驿站",
        9499: "request refused as malformed",
    }
    TEMPORARY: ClassVar[dict[int, str]] = {
        11232: "rate limited; retrying",
        -1: "Feishu busy; retrying",
    }
    RATE_LIMITED = frozenset({11232})

    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        return self.shape(self.compose(kind, alert, station, ack_url, now_ms),
                          delivery_id=delivery_id, now_ms=now_ms, people=mentions(alert))

    def shape(self, msg: Message, *, delivery_id: str, now_ms: int,
              people: tuple[Mention, ...] = ()) -> str:
        ids = open_ids(people)
        if self.spec.format == "text":
            names = {p.feishu_open_id: p.name for p in people}
            head = "".join(f'<at user_id="{i}">{_inert(names.get(i) or "")}</at> ' for i in ids)
            text = msg.plain(FEISHU_TEXT_MAX - len(head.encode()))
            return dumps({"msg_type": "text", "content": {"text": head + text}})
        ok = msg.kind in ("resolved", "acked")
        elements: list[dict[str, Any]] = []
        if ids:
            elements.append({"tag": "div", "text": {
                "tag": "lark_md", "content": " ".join(f"<at id={i}></at>" for i in ids)}})
        elements.append({"tag": "div", "text": {
            "tag": "lark_md", "content": msg.markdown("lark", max_bytes=FEISHU_BODY_MAX)}})
        if msg.ack_url:
            elements.append({"tag": "action", "actions": [{
                "tag": "button", "type": "primary",
                "text": {"tag": "plain_text", "content": msg.ack_label},
                "url": msg.ack_url}]})
        elements.append({"tag": "note", "elements": [
            {"tag": "plain_text", "content": msg.footer}]})
        return dumps({"msg_type": "interactive", "card": {
            "config": {"wide_screen_mode": True},
            "header": {"template": "green" if ok else _TEMPLATE[msg.severity],
                       "title": {"tag": "plain_text", "content": msg.title}},
            "elements": elements,
        }})

    def request(self, body: str, delivery_id: str, now: float) -> tuple[str, dict, bytes]:
        if self.spec.secret:
            timestamp = int(now)
            head = dumps({"timestamp": str(timestamp),
                          "sign": feishu_sign(self.spec.secret, timestamp)})
            # The stored body, untouched, after the fresh signature fields.
            body = head[:-1] + "," + body[1:]
        return self.spec.url, self.headers(), body.encode()


def _inert(name: str) -> str:
    """A name inside an ``<at>`` tag: no tag of its own."""
    return name.replace("<", "＜").replace(">", "＞")
