"""What a maintenance worker reads on the phone: short, Chinese by default.

One :class:`Message` per (kind, alert, station), rendered per platform: WeCom
and DingTalk markdown, Feishu card markdown, plain text and simple HTML for
e-mail. It says which station (name, sid, group/town), what is wrong, how
urgent, what to bring, since when, and carries the acknowledge link::

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
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

# The hub's own rules (docs/routing.md), about the hub rather than a station.
from hub.config.rules import NOTIFY_FAILING, NOTIFY_TEST
from hub.fleet.banks import bank_states

KINDS = ("firing", "resolved", "acked", "escalated", "reminder")
#: Kinds whose message asks for an acknowledgement (and so carries the link).
ASKS_FOR_ACK = ("firing", "escalated", "reminder")
#: Rules whose alerts nobody acknowledges (a route test is not in the alert table).
NO_ACK_RULES = (NOTIFY_TEST,)
CST = timezone(timedelta(hours=8), "CST")
MAX_FIELD = 300  # characters of one field's value (an engine summary can be long)

#: Platform limits of the message text, in UTF-8 bytes (docs/notifications.md).
WECOM_MARKDOWN_MAX = 4096
DINGTALK_MARKDOWN_MAX = 18_000  # the robot takes about 20 000; the title and JSON need room
FEISHU_BODY_MAX = 20_000 - 1_000  # the whole request ≤ 20 KB; room for the card around it

_SEVERITY = {
    "zh": {"critical": "紧急", "warning": "警告", "info": "提示"},
    "en": {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"},
}
_LABELS = {
    "zh": {"station": "站点", "what": "情况", "bring": "带什么", "since": "开始",
           "detail": "详情", "resolved": "恢复", "acked": "确认", "waiting": "无人确认",
           "open": "未处理", "ack": "✅ 我来处理（点此确认）", "footer": "驿站告警",
           "sep": "：", "comma": "，", "lp": "（", "rp": "）"},
    "en": {"station": "Station", "what": "What", "bring": "Bring", "since": "Since",
           "detail": "Details", "resolved": "Resolved", "acked": "Acknowledged",
           "waiting": "Unacknowledged", "open": "Open", "ack": "✅ I'm on it (acknowledge)",
           "footer": "Yizhan (驿站) alert", "sep": ": ", "comma": ", ", "lp": " (",
           "rp": ")"},
}

_DOORS = {"zh": {"entrance": "入口", "locker_panel": "充电柜面板"},
          "en": {"entrance": "entrance", "locker_panel": "locker panel"}}
_SLOT_FAULTS = {
    "zh": {"lock_jammed": "锁卡住", "charger_fault": "充电故障", "sensor_fault": "传感器故障",
           "overheat": "过热", "comm": "通信故障"},
    "en": {"lock_jammed": "lock jammed", "charger_fault": "charger fault",
           "sensor_fault": "sensor fault", "overheat": "overheating", "comm": "no contact"},
}
_UNLOCK_REASONS = {
    "zh": {"jammed": "锁卡住", "timeout": "超时", "not_taken": "未取走", "bad_slot": "仓号无效",
           "board_offline": "控制板离线"},
    "en": {"jammed": "lock jammed", "timeout": "timed out", "not_taken": "not taken",
           "bad_slot": "bad slot", "board_offline": "board offline"},
}
_DISPENSER_FAULTS = {
    "zh": {"sensor": "传感器", "heater": "加热器", "overtemp": "超温", "dry_boil": "干烧"},
    "en": {"sensor": "sensor", "heater": "heater", "overtemp": "over temperature",
           "dry_boil": "dry boil"},
}


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


def banks_to_bring(station: Mapping[str, Any]) -> int | None:
    """Charged banks to bring: one for every slot not holding a ready bank (empty
    slots are filled, low and faulty banks swapped). None when the slots are unknown."""
    slots, ready = station.get("slots"), station.get("ready")
    if not isinstance(slots, int) or not isinstance(ready, int) or slots <= 0:
        return None
    return max(1, slots - ready)


# -- reading the alert's value ---------------------------------------------------------


def _pick(value: Any, *keys: str, number: bool = True) -> Any:
    """The first of ``keys`` in a dict value, or the value itself when it is a
    bare number (``number``): engines put either."""
    if isinstance(value, Mapping):
        for key in keys:
            v = value.get(key)
            if v is not None and (not number or _is_num(v)):
                return v
        return None
    if number and _is_num(value):
        return value
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pct(level: Any) -> str | None:
    if not _is_num(level):
        return None
    return f"{round(level * 100) if level <= 1 else round(level)}%"


def duration_text(seconds: float, lang: str = "zh") -> str:
    """``35 分钟``, ``1 小时 7 分钟``, ``2 天 3 小时``; ``35 min``, ``1 h 7 min`` in English."""
    minutes = int(max(0, seconds) // 60)
    if minutes < 1:
        return "不到 1 分钟" if lang == "zh" else "under 1 min"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    units = (("天", "小时", "分钟") if lang == "zh" else ("d", "h", "min"))
    parts = []
    if days:
        parts += [f"{days} {units[0]}", f"{hours} {units[1]}" if hours else ""]
    elif hours:
        parts += [f"{hours} {units[1]}", f"{mins} {units[2]}" if mins else ""]
    else:
        parts.append(f"{mins} {units[2]}")
    return " ".join(p for p in parts if p)


def clock_text(ms: int, tz: tzinfo = CST) -> str:
    """``11-27 02:13``, in China Standard Time unless told otherwise."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).strftime("%m-%d %H:%M")


def _what(rule: str, value: Any, station: Mapping[str, Any], lang: str) -> str | None:
    zh = lang == "zh"
    if rule in ("water_low", "water_empty"):
        pct = _pct(_pick(value, "level", "level_ratio"))
        head = ("热水水位低" if rule == "water_low" else "热水已空") if zh else (
            "Hot water low" if rule == "water_low" else "Hot water empty")
        if pct is None:
            return head
        return f"{head}（水位 {pct}）" if zh else f"{head} (level {pct})"
    if rule in ("water_predicted_empty", "chargers_predicted_empty"):
        secs = _pick(value, "seconds", "time_to_empty_s", "eta_s")
        water = rule.startswith("water")
        if secs is None:
            return (("热水" if water else "充电宝") + "预计很快用完") if zh else (
                f"{'Hot water' if water else 'Power banks'} expected to run out soon")
        d = duration_text(secs, lang)
        if zh:
            return f"热水预计 {d} 后用完" if water else f"充电宝预计 {d} 后借完"
        return f"{'Hot water' if water else 'Power banks'} expected to run out in {d}"
    if rule == "chargers_low":
        n = _pick(value, "ready", "chargers_ready")
        if n is None:
            n = station.get("ready")
        if not _is_num(n):
            return "可借充电宝不足" if zh else "Few power banks left to lend"
        if zh:
            return f"可借充电宝仅剩 {int(n)} 个"
        return f"Only {int(n)} power bank{'' if int(n) == 1 else 's'} left to lend"
    if rule == "station_offline":
        return "驿站离线（无法联系）" if zh else "Station offline"
    if rule == "door_open_too_long":
        door = _pick(value, "door", number=False)
        name = _DOORS[lang].get(door, door) if door else None
        secs = _pick(value, "open_s", "seconds")
        head = (f"{name}门长时间未关" if name else "门长时间未关") if zh else (
            f"Door {name} left open" if name else "Door left open")
        if secs is None:
            return head
        return f"{head}（已 {duration_text(secs, lang)}）" if zh else (
            f"{head} ({duration_text(secs, lang)})")
    if rule == "tamper":
        return "充电柜面板在非维护时间被打开" if zh else "Locker panel opened outside maintenance"
    if rule == "dispenser_fault":
        fault = _pick(value, "fault", number=False)
        name = _DISPENSER_FAULTS[lang].get(fault, fault) if fault else None
        if zh:
            return f"饮水机故障（{name}）" if name else "饮水机故障"
        return f"Dispenser fault ({name})" if name else "Dispenser fault"
    if rule == "heater_lockout":
        return "加热器已被安全切断" if zh else "Heater cut off for safety"
    if rule == "locker_offline":
        return "充电柜控制板无响应" if zh else "Locker board not answering"
    if rule in ("slot_fault", "unlock_failed"):
        slot = _pick(value, "slot")
        fault = rule == "slot_fault"
        why = _pick(value, "fault" if fault else "reason", number=False)
        why = (_SLOT_FAULTS if fault else _UNLOCK_REASONS)[lang].get(why, why) if why else None
        if zh:
            where = f"{int(slot)} 号仓" if slot is not None else "充电仓"
            text = where + ("故障" if fault else "开锁失败")
            return text + (f"（{why}）" if why else "")
        where = f"Slot {int(slot)}" if slot is not None else "A slot"
        text = where + (" fault" if fault else " failed to unlock")
        return text + (f" ({why})" if why else "")
    if rule == "bank_overdue":
        bank = _pick(value, "bank", number=False)
        if zh:
            return f"充电宝 {bank} 逾期未还" if bank else "有充电宝逾期未还"
        return f"Power bank {bank} overdue" if bank else "A power bank is overdue"
    if rule == "pi_overheat":
        t = _pick(value, "temp_c", "cpu_temp_c")
        if zh:
            return f"主机过热（{t:.0f}°C）" if t is not None else "主机过热"
        return f"Station computer overheating ({t:.0f}°C)" if t is not None else (
            "Station computer overheating")
    if rule == "undervoltage":
        return "主机供电不足" if zh else "Station computer undervoltage"
    if rule == NOTIFY_FAILING:
        name = _pick(value, "notifier", number=False)
        if zh:
            return f"通知渠道 {name} 无法送达" if name else "通知渠道无法送达"
        return f"Notifier {name} cannot deliver" if name else "A notifier cannot deliver"
    if rule == NOTIFY_TEST:
        return None  # the router's summary says it ("通知测试：…，无需处理")
    if rule == "disk_low":
        mb = _pick(value, "disk_free_mb", "free_mb")
        if zh:
            return f"主机存储空间不足（剩 {mb:.0f} MB）" if mb is not None else "主机存储空间不足"
        return f"Station disk low ({mb:.0f} MB free)" if mb is not None else "Station disk low"
    return None


def _bring(rule: str, value: Any, station: Mapping[str, Any], lang: str) -> str | None:
    zh = lang == "zh"
    if rule.startswith("water_"):
        return "请带桶装水/检查进水" if zh else "Bring bottled water / check the water inlet"
    if rule.startswith("chargers_"):
        n = banks_to_bring(station)
        faulty = station.get("faulty") or 0
        if zh:
            text = f"请带已充满的充电宝 {n} 个" if n else "请带已充满的充电宝"
            return text + (f"，取回故障充电宝 {faulty} 个" if faulty else "")
        text = (f"Bring {n} fully charged power bank{'' if n == 1 else 's'}" if n
                else "Bring fully charged power banks")
        return text + (f", take back {faulty} faulty ones" if faulty else "")
    if rule in ("slot_fault", "unlock_failed"):
        why = _pick(value, "fault" if rule == "slot_fault" else "reason", number=False)
        if why in ("lock_jammed", "jammed"):
            return "请带锁具维修工具" if zh else "Bring lock repair tools"
        if why == "charger_fault":
            return "请带备用充电模块，检查充电线" if zh else (
                "Bring a spare charging module; check the charging cable")
        if why == "overheat":
            return "取出过热的充电宝，检查散热" if zh else (
                "Take out the overheating bank; check ventilation")
        if why == "board_offline":
            return "检查充电柜控制板电源与串口线" if zh else (
                "Check the locker board's power and serial cable")
        return "到场检查该仓（传感器与连线）" if zh else "Check the slot (sensor and wiring)"
    if rule == "dispenser_fault" or rule == "heater_lockout":
        if _pick(value, "fault", "reason", number=False) == "dry_boil":
            return "先加水，再检查加热器与水位传感器" if zh else (
                "Refill first, then check the heater and level sensor")
        return "检查加热器与水位/温度传感器，确认有水后复位" if zh else (
            "Check the heater and level/temperature sensors; reset once there is water")
    return {
        "station_offline": ("检查网络/电源（路由器、主机电源）",
                            "Check network / power (router, station computer)"),
        "locker_offline": ("检查充电柜电源与串口线", "Check the locker's power and serial cable"),
        "door_open_too_long": ("到场关门，检查门磁", "Close the door; check the door sensor"),
        "tamper": ("尽快到场查看充电柜面板", "Go and check the locker panel"),
        "bank_overdue": ("无需到场；跟进骑手归还", "No visit needed; follow up with the rider"),
        "pi_overheat": ("检查主机散热风扇与通风", "Check the computer's fan and ventilation"),
        "undervoltage": ("请带合格电源适配器（5V 5A）与电源线",
                         "Bring a proper power supply (5 V 5 A) and cable"),
        "disk_low": ("远程清理日志，或带新存储卡", "Clean up remotely, or bring a new SD card"),
        NOTIFY_FAILING: ("检查该渠道的机器人地址/密钥与网络（见 hub 日志）",
                         "Check the notifier's address/key and network (see the hub log)"),
    }.get(rule, (None, None))[0 if zh else 1]


def what_text(alert: Mapping[str, Any], station: Mapping[str, Any], language: str = "zh") -> str:
    """What is wrong, in one phrase (``热水已空（水位 0%）``), for pages about an alert."""
    lang = language if language in _LABELS else "zh"
    return (_what(str(alert.get("rule") or ""), alert.get("value"), station, lang)
            or str(alert.get("summary") or alert.get("rule") or ""))


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
    def labels(self) -> dict[str, str]:
        return _LABELS[self.language]

    @property
    def footer(self) -> str:
        return f"{self.labels['footer']} · {self.alert_id}"

    def plain(self) -> str:
        """Plain text: e-mail's text part, Feishu's text message."""
        sep = self.labels["sep"]
        lines = [self.title, *(f"{k}{sep}{v}" for k, v in self.fields)]
        if self.ack_url:
            lines.append(f"{self.labels['ack']}{sep}{self.ack_url}")
        lines.append(f"—— {self.footer}")
        return "\n".join(lines)

    def markdown(self, flavour: str = "wecom", max_bytes: int | None = None) -> str:
        """``wecom`` (bold title, quoted lines, coloured), ``dingtalk`` (heading,
        line breaks) or ``lark`` (Feishu card markdown, no title: the card has one)."""
        text = self._markdown(flavour, self.fields)
        if max_bytes is not None and len(text.encode()) > max_bytes:
            # Shorten the values rather than lose the link at the end.
            short = tuple((k, _cut(v, 60)) for k, v in self.fields)
            text = self._markdown(flavour, short)
            if len(text.encode()) > max_bytes:
                text = text.encode()[:max_bytes].decode(errors="ignore")
        return text

    def _markdown(self, flavour: str, fields: tuple[tuple[str, str], ...]) -> str:
        sep = self.labels["sep"]
        rows = [(k, _md(v)) for k, v in fields]
        link = f"[{self.labels['ack']}]({self.ack_url})" if self.ack_url else None
        if flavour == "wecom":
            colour = {"critical": "warning", "warning": "warning", "info": "info"}
            colour = "info" if self.kind in ("resolved", "acked") else colour[self.severity]
            lines = [f"**<font color=\"{colour}\">{_md(self.title)}</font>**"]
            lines += [f"> {k}{sep}{v}" for k, v in rows]
            if link:
                lines.append(link)
            lines.append(f"<font color=\"comment\">{self.footer}</font>")
            return "\n".join(lines)
        if flavour == "dingtalk":
            lines = [f"### {_md(self.title)}", *(f"- **{k}**{sep}{v}" for k, v in rows)]
            if link:
                lines.append(f"**{link}**")
            lines.append(f"###### {self.footer}")
            return "\n\n".join(lines)
        lines = [f"**{k}**{sep}{v}" for k, v in rows]  # lark: the title is the card's header
        if link:
            lines.append(link)
        return "\n".join(lines)

    def html(self) -> str:
        """A small HTML part for e-mail: the same lines, the link as a button."""
        esc = html.escape
        colour = {"critical": "#c0392b", "warning": "#d35400", "info": "#2471a3"}
        colour = "#1e8449" if self.kind in ("resolved", "acked") else colour[self.severity]
        rows = "".join(f"<tr><th align=\"left\" style=\"padding:2px 12px 2px 0;"
                       f"white-space:nowrap\">{esc(k)}</th><td>{esc(v)}</td></tr>"
                       for k, v in self.fields)
        button = ""
        if self.ack_url:
            button = (f"<p><a href=\"{esc(self.ack_url)}\" style=\"display:inline-block;"
                      "padding:10px 18px;background:#1e8449;color:#fff;"
                      f"text-decoration:none;border-radius:6px\">{esc(self.labels['ack'])}"
                      "</a></p>")
        lang = "zh-CN" if self.language == "zh" else "en"
        return (f"<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title></head>"
                "<body style=\"font-family:sans-serif;font-size:16px\">"
                f"<h2 style=\"color:{colour};font-size:18px\">{esc(self.title)}</h2>"
                f"<table>{rows}</table>{button}"
                f"<p style=\"color:#888;font-size:12px\">{esc(self.footer)}</p>"
                "</body></html>")


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _md(text: str) -> str:
    """User text (station names, summaries) made inert in chat markdown."""
    table = str.maketrans({"<": "＜", ">": "＞", "*": "＊", "[": "［", "]": "］", "`": "'",
                           "_": "＿", "#": "＃", "\n": " "})
    return text.translate(table)


def compose(kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
            ack_url: str | None, *, language: str = "zh", now_ms: int,
            tz: tzinfo = CST) -> Message:
    """The message for one transition of ``alert`` (contract §11 Alert object);
    times shown in ``tz`` (the hub's ``timezone:``, China Standard Time by default)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    lang = language if language in _LABELS else "zh"
    lab = _LABELS[lang]
    zh = lang == "zh"
    rule = str(alert.get("rule") or "")
    severity = alert.get("severity") if alert.get("severity") in _SEVERITY[lang] else "warning"
    sev = _SEVERITY[lang][severity]
    value = alert.get("value")
    summary = str(alert.get("summary") or "").strip()
    what = _what(rule, value, station, lang) or summary or rule
    sid = str(station.get("sid") or alert.get("sid") or "")
    name = _cut(str(station.get("name") or sid), 64)

    prefix = {
        "firing": f"【{sev}】" if zh else f"[{sev}] ",
        "resolved": "【已恢复】" if zh else "[RESOLVED] ",
        "acked": "【已确认】" if zh else "[ACKNOWLEDGED] ",
        "escalated": f"【升级·{sev}】" if zh else f"[ESCALATED · {sev}] ",
        "reminder": f"【仍未处理·{sev}】" if zh else f"[REMINDER · {sev}] ",
    }[kind]
    title = f"{prefix}{name}{lab['sep']}{_cut(what, 80)}"

    where = " · ".join(str(p) for p in (sid, station.get("group")) if p)
    fields: list[tuple[str, str]] = [
        (lab["station"], f"{name}{lab['lp']}{where}{lab['rp']}" if where else name),
        (lab["what"], _cut(what, MAX_FIELD)),
    ]
    if summary and summary != what:
        fields.append((lab["detail"], _cut(summary, MAX_FIELD)))
    if kind in ASKS_FOR_ACK and rule not in NO_ACK_RULES:
        bring = _bring(rule, value, station, lang)
        if bring:
            fields.append((lab["bring"], bring))

    started = alert.get("started_at")
    if _is_num(started):
        since = clock_text(started, tz)
        if kind in ("firing", "reminder", "escalated"):
            ago = duration_text((now_ms - started) / 1000, lang)
            since += f"（已 {ago}）" if zh else f" ({ago} ago)"
        fields.append((lab["since"], since))
        if kind == "escalated":
            ago = duration_text((now_ms - started) / 1000, lang)
            fields.append((lab["waiting"], f"已 {ago}无人确认，请尽快处理" if zh else
                           f"nobody acknowledged it for {ago}"))
        if kind == "resolved":
            end = alert.get("resolved_at") if _is_num(alert.get("resolved_at")) else now_ms
            took = duration_text((end - started) / 1000, lang)
            fields.append((lab["resolved"], f"{clock_text(end, tz)}（持续 {took}）" if zh else
                           f"{clock_text(end, tz)} (lasted {took})"))
    if kind == "acked":
        at = alert.get("acked_at") if _is_num(alert.get("acked_at")) else now_ms
        fields.append((lab["acked"], f"{clock_text(at, tz)}，已有人处理" if zh else
                       f"{clock_text(at, tz)}, someone is on it"))
    asks = kind in ASKS_FOR_ACK and rule not in NO_ACK_RULES
    return Message(kind=kind, severity=severity, language=lang, title=title,
                   fields=tuple(fields), ack_url=ack_url if asks else None,
                   alert_id=str(alert.get("id") or ""))
