"""Whom a chat message @-mentions: the people the router put under ``mention``.

The router (hub/alerting/routing.py) passes the alert to ``Outbox.enqueue`` with
one more key than the contract's Alert object, ``mention``: the assignee or the
person on call, as the Directory's staff records give them (``id``, ``name``,
``phone``, ``feishu_open_id``). Each platform @-mentions in its own way:

* WeCom: ``mentioned_mobile_list`` — of a ``text`` message only (a group robot's
  ``markdown`` cannot @ by phone), so a message with a mention is sent as text;
* DingTalk: ``at.atMobiles`` beside the markdown, and ``@<phone>`` in its text
  (DingTalk only highlights and notifies a mention whose number is in the text);
* Feishu: ``<at id=ou_…></at>`` in the card's markdown (``<at user_id="ou_…">`` in
  a text message), by open id: a Feishu bot cannot @ a phone number.

The generic webhook and e-mail leave ``mention`` out (the contract's body keeps
its keys). Values are checked again here: a stored alert or a hand-made call may
carry anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hub.fleet.directory_fields import FEISHU_OPEN_ID_PATTERN, PHONE_PATTERN

#: A message @-mentions a few people, not a team (the platforms' own limits are larger).
MAX_MENTIONS = 10
_PHONE = re.compile(PHONE_PATTERN + r"\Z")
_OPEN_ID = re.compile(FEISHU_OPEN_ID_PATTERN + r"\Z")


@dataclass(frozen=True)
class Mention:
    name: str
    phone: str | None = None
    feishu_open_id: str | None = None


def mentions(alert: Mapping[str, Any]) -> tuple[Mention, ...]:
    """The people ``alert["mention"]`` names, each once, at most ``MAX_MENTIONS``;
    entries without a usable name, phone or open id are left out."""
    raw = alert.get("mention")
    if not isinstance(raw, list | tuple):
        return ()
    out: dict[tuple[str | None, str | None], Mention] = {}
    for entry in raw[:MAX_MENTIONS]:
        if not isinstance(entry, Mapping):
            continue
        phone = entry.get("phone")
        phone = phone if isinstance(phone, str) and _PHONE.match(phone) else None
        open_id = entry.get("feishu_open_id")
        open_id = open_id if isinstance(open_id, str) and _OPEN_ID.match(open_id) else None
        name = entry.get("name") if isinstance(entry.get("name"), str) else ""
        name = " ".join(name.split())[:64] or str(entry.get("id") or "")[:64]
        if phone or open_id:
            out.setdefault((phone, open_id), Mention(name, phone, open_id))
    return tuple(out.values())


def phones(people: tuple[Mention, ...]) -> list[str]:
    return list(dict.fromkeys(p.phone for p in people if p.phone))


def open_ids(people: tuple[Mention, ...]) -> list[str]:
    return list(dict.fromkeys(p.feishu_open_id for p in people if p.feishu_open_id))
