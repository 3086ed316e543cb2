"""What a maintenance worker reads on the phone: short, Chinese by default.

One :class:`Message` per (kind, alert, station), rendered per platform by the
templates in ``notify/templates/``: WeCom and DingTalk markdown, Feishu card
markdown, plain text and simple HTML for e-mail. It says which station (name,
sid, group/town), what is wrong, how urgent, what to bring, since when, and
carries the acknowledge link::

    **【紧急】楚门镇先锋驿站：热水已空**
    > 站点：楚门镇先锋驿站（yh-chumen-01 · chumen）
    > 情况：热水已空（水位 0%）
    > 带什么：请带桶装水/检查进水
    > 开始：11-27 02:13（已 35 分钟）
    [✅ 我来处理（点此确认）](https://hub.example.cn/ack/…)

>>> msg = compose("firing", alert, {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站"},
...               "https://hub.example.cn/ack/abc", now_ms=alert["started_at"] + 60_000)
>>> msg.title
'【紧急】楚门镇先锋驿站：热水已空'

``station`` is the contract's ``{"sid", "name"}``; with :func:`station_info`'s
extra keys (``group``, ``slots``, ``ready``, ``faulty``) the message also names
the town and how many charged banks to bring. Times are shown in China Standard
Time (UTC+8, no daylight saving) unless the hub's ``timezone:`` says otherwise.
Every word comes from the hub's catalogue (``hub.alerting.texts``), what is
wrong and what to bring per rule from ``rule_texts``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from hub.alerting.notify.rule_texts import banks_to_bring, bring, what
from hub.alerting.summaries import route_test_name, summary
from hub.alerting.texts import CST, DEFAULT_LANGUAGE, N_, Templates, Texts, clock_text, texts
from hub.alerting.values import read_value
from hub.config.rules import NOTIFY_TEST
from hub.fleet.banks import bank_states

__all__ = ["ASKS_FOR_ACK", "CST", "KINDS", "NO_ACK_RULES", "Message", "banks_to_bring",
           "clock_text", "compose", "cut_utf8", "duration_text", "station_info", "what_text"]

KINDS = ("firing", "resolved", "acked", "escalated", "reminder")
#: Kinds whose message asks for an acknowledgement (and so carries the link).
ASKS_FOR_ACK = ("firing", "escalated", "reminder")
#: Rules whose alerts nobody acknowledges (a route test is not in the alert table).
NO_ACK_RULES = (NOTIFY_TEST,)
MAX_FIELD = 300  # characters of one field's value (an engine summary can be long)

#: Platform limits of the message text, in UTF-8 bytes, from each platform's own
#: documentation (docs/notifications.md, "Message sizes"). A text over its cap is
#: shortened by :meth:`Message.markdown` / :meth:`Message.plain`, never refused.
WECOM_MARKDOWN_MAX = 4096  # markdown.content: "最长不超过4096个字节，必须是utf8编码"
WECOM_TEXT_MAX = 2048  # text.content: "最长不超过2048个字节"
DINGTALK_MESSAGE_MAX = 20_000  # the whole message; over it: 460101 "message too long"
DINGTALK_MARKDOWN_MAX = 18_000  # of those 20 000: room for the title, @numbers and JSON
DINGTALK_TEXT_MAX = DINGTALK_MARKDOWN_MAX
FEISHU_REQUEST_MAX = 20_000  # the whole request: "请求体大小不能超过 20 K"
FEISHU_BODY_MAX = FEISHU_REQUEST_MAX - 1_000  # card markdown; room for the card around it
FEISHU_TEXT_MAX = FEISHU_BODY_MAX  # a text message's content.text

_SEVERITY = {"critical": N_("CRITICAL"), "warning": N_("WARNING"), "info": N_("INFO")}
_TITLES = {
    "firing": N_("[%(severity)s] %(station)s: %(what)s"),
    "resolved": N_("[RESOLVED] %(station)s: %(what)s"),
    "acked": N_("[ACKNOWLEDGED] %(station)s: %(what)s"),
    "escalated": N_("[ESCALATED · %(severity)s] %(station)s: %(what)s"),
    "reminder": N_("[REMINDER · %(severity)s] %(station)s: %(what)s"),
}


def _md(text: str) -> str:
    """User text (station names, summaries) made inert in chat markdown."""
    return text.translate(_MD_INERT)


_MD_INERT = str.maketrans({"<": "＜", ">": "＞", "*": "＊", "[": "［", "]": "］", "`": "'",
                           "_": "＿", "#": "＃", "\n": " "})
_TEMPLATES = Templates(Path(__file__).resolve().parent / "templates", filters={"md": _md})


# -- the station ---------------------------------------------------------------------


def station_info(view: Any, min_charge: int = 80) -> dict[str, Any]:
    """The ``station`` to pass to ``Outbox.enqueue``, from a ``hub.fleet.view.StationView``:
    the contract's ``sid`` and ``name`` plus ``group`` and, with a locker, ``slots``,
    ``ready``, ``charging`` and ``faulty`` (contract §12's bank states), from which the
    message says how many charged banks to bring."""
    info: dict[str, Any] = {"sid": view.sid, "name": view.name or view.sid,
                            "group": view.group}
    banks = bank_states(view.state, min_charge)
    if banks is not None:
        info["slots"] = len(view.state["lockers"].get("slots") or [])
        info.update(banks)
    return info


# -- words for pages about an alert ------------------------------------------------------


def duration_text(seconds: float, lang: str = DEFAULT_LANGUAGE) -> str:
    """``35 分钟``, ``1 小时 7 分钟``, ``2 天 3 小时``; ``35 min``, ``1 h 7 min`` in English."""
    return texts(lang).duration(seconds)


def what_text(alert: Mapping[str, Any], station: Mapping[str, Any],
              language: str = DEFAULT_LANGUAGE) -> str:
    """What is wrong, in one phrase (``热水已空（水位 0%）``), for pages about an alert."""
    t = texts(language)
    rule = str(alert.get("rule") or "")
    return (what(rule, alert.get("value"), station, t) or _summary(alert, t)
            or rule)


def _summary(alert: Mapping[str, Any], t: Texts) -> str:
    """The alert's summary: as stored, in the hub's default language; in another, said
    again from its value (as stored where the value cannot say it)."""
    stored = str(alert.get("summary") or "").strip()
    if not stored or t.lang == DEFAULT_LANGUAGE:
        return stored
    return summary(str(alert.get("rule") or ""), alert.get("value"), t.lang) or stored


# -- the message -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One notification, before it is shaped for a platform."""

    kind: str
    severity: str
    language: str
    title: str
    fields: tuple[tuple[str, str], ...]  # (label, value), in reading order
    ack_url: str | None
    alert_id: str

    @property
    def ack_label(self) -> str:
        """The acknowledge link's words."""
        return texts(self.language).gettext("✅ I'm on it (acknowledge)")

    @property
    def footer(self) -> str:
        """The last line, with the keyword 驿站 that DingTalk and Feishu robots may
        require in every message, in every language."""
        return texts(self.language).gettext("Yizhan (驿站) alert · %(id)s", id=self.alert_id)

    def _render(self, template: str, fields: tuple[tuple[str, str], ...], **extra: Any) -> str:
        return _TEMPLATES.render(self.language, template, title=self.title, fields=fields,
                                 ack_url=self.ack_url, ack_label=self.ack_label,
                                 footer=self.footer, **extra)

    def plain(self, max_bytes: int | None = None) -> str:
        """Plain text: e-mail's text part, Feishu's and WeCom's text messages; at
        most ``max_bytes`` of UTF-8 when given (see :meth:`fit`)."""
        return self.fit(lambda fields: self._render("plain.txt", fields), max_bytes)

    def markdown(self, flavour: str = "wecom", max_bytes: int | None = None) -> str:
        """``wecom`` (bold title, quoted lines, coloured), ``dingtalk`` (heading,
        line breaks) or ``lark`` (Feishu card markdown, no title: the card has one);
        at most ``max_bytes`` of UTF-8 when given (see :meth:`fit`)."""
        if flavour not in ("wecom", "dingtalk", "lark"):
            raise ValueError(f"flavour must be wecom, dingtalk or lark, not {flavour!r}")
        return self.fit(lambda fields: self._markdown(flavour, fields), max_bytes)

    def fit(self, render: Callable[[tuple[tuple[str, str], ...]], str],
            max_bytes: int | None) -> str:
        """``render(fields)`` at most ``max_bytes`` long in UTF-8: the values shortened
        first, then the last fields left out (as many as it takes) — the title, the
        acknowledge link and the footer are what a worker needs most, and they come
        last in the text, where a plain cut would fall — and only then the text
        cut, on a character boundary."""
        def fits(text: str) -> bool:
            return len(text.encode()) <= max_bytes

        text = render(self.fields)
        if max_bytes is None or fits(text):
            return text
        short = tuple((k, _cut(v, 60)) for k, v in self.fields)
        text = render(short)
        if fits(text):
            return text
        # The most leading fields that fit (a digest may have hundreds of lines).
        lo, hi, best = 0, len(short) - 1, render(())
        while lo <= hi:
            mid = (lo + hi + 1) // 2
            text = render(short[:mid])
            if fits(text):
                best, lo = text, mid + 1
            else:
                hi = mid - 1
        return best if fits(best) else cut_utf8(best, max_bytes)

    def _markdown(self, flavour: str, fields: tuple[tuple[str, str], ...]) -> str:
        colour = {"critical": "warning", "warning": "warning", "info": "info"}[self.severity]
        colour = "info" if self.kind in ("resolved", "acked") else colour
        return self._render(f"{flavour}.md", fields, colour=colour).rstrip("\n")

    def html(self) -> str:
        """A small HTML part for e-mail: the same lines, the link as a button."""
        colour = {"critical": "#c0392b", "warning": "#d35400", "info": "#2471a3"}[self.severity]
        colour = "#1e8449" if self.kind in ("resolved", "acked") else colour
        return self._render("email.html", self.fields, colour=colour,
                            lang="zh-CN" if self.language == "zh" else self.language)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def cut_utf8(text: str, max_bytes: int, end: str = "…") -> str:
    """``text`` in at most ``max_bytes`` of UTF-8, ending in ``end`` when cut. The cut
    falls between characters, never inside one (a 4-byte 𠀀 or 🚰 is kept whole
    or left out): a platform refuses, or shows as �, a broken sequence."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(end.encode())
    if room < 0:
        end, room = "", max(max_bytes, 0)
    # Only the last, partial character can fail to decode: the rest was whole.
    return data[:room].decode("utf-8", errors="ignore") + end


def compose(kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
            ack_url: str | None, *, language: str = DEFAULT_LANGUAGE, now_ms: int,
            tz: tzinfo = CST) -> Message:
    """The message for one transition of ``alert`` (contract §11 Alert object);
    times shown in ``tz`` (the hub's ``timezone:``, China Standard Time by default)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    t = texts(language)
    rule = str(alert.get("rule") or "")
    value = alert.get("value")
    severity = alert.get("severity") if alert.get("severity") in _SEVERITY else "warning"
    said = _summary(alert, t)
    wrong = what(rule, value, station, t) or said or rule
    sid = str(station.get("sid") or alert.get("sid") or "")
    name = str(station.get("name") or sid)
    route = read_value(rule, value).get("route") if rule == NOTIFY_TEST else None
    if route is not None:
        name = route_test_name(route, t.lang)  # what the router names it, in this language
    name = _cut(name, 64)
    title = t.gettext(_TITLES[kind], severity=t.gettext(_SEVERITY[severity]), station=name,
                      what=_cut(wrong, 80))
    where = " · ".join(str(p) for p in (sid, station.get("group")) if p)
    fields: list[tuple[str, str]] = [
        (t.pgettext("message field", "Station"),
         t.gettext("%(name)s (%(where)s)", name=name, where=where) if where else name),
        (t.pgettext("message field", "What"), _cut(wrong, MAX_FIELD)),
    ]
    if said and said != wrong:
        fields.append((t.pgettext("message field", "Details"), _cut(said, MAX_FIELD)))
    asks = kind in ASKS_FOR_ACK and rule not in NO_ACK_RULES
    if asks:
        advice = bring(rule, value, station, t)
        if advice:
            fields.append((t.pgettext("message field", "Bring"), advice))
    fields += _times(kind, alert, now_ms, tz, t)
    return Message(kind=kind, severity=severity, language=t.lang, title=title,
                   fields=tuple(fields), ack_url=ack_url if asks else None,
                   alert_id=str(alert.get("id") or ""))


def _times(kind: str, alert: Mapping[str, Any], now_ms: int, tz: tzinfo,
           t: Texts) -> list[tuple[str, str]]:
    """Since when, and how long nobody acknowledged it, it lasted, or when someone did."""
    out: list[tuple[str, str]] = []
    started = alert.get("started_at")
    if _is_ms(started):
        since = clock_text(started, tz)
        ago = t.duration((now_ms - started) / 1000)
        if kind in ("firing", "reminder", "escalated"):
            since = t.gettext("%(at)s (%(ago)s ago)", at=since, ago=ago)
        out.append((t.pgettext("message field", "Since"), since))
        if kind == "escalated":
            out.append((t.pgettext("message field", "Unacknowledged"),
                        t.gettext("nobody acknowledged it for %(ago)s", ago=ago)))
        if kind == "resolved":
            end = alert.get("resolved_at") if _is_ms(alert.get("resolved_at")) else now_ms
            out.append((t.pgettext("message field", "Resolved"), t.gettext(
                "%(at)s (lasted %(took)s)", at=clock_text(end, tz),
                took=t.duration((end - started) / 1000))))
    if kind == "acked":
        at = alert.get("acked_at") if _is_ms(alert.get("acked_at")) else now_ms
        out.append((t.pgettext("message field", "Acknowledged"),
                    t.gettext("%(at)s, someone is on it", at=clock_text(at, tz))))
    return out


def _is_ms(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
