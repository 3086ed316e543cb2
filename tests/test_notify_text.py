"""What the maintenance worker reads: station, what, how urgent, what to bring, since when."""

from __future__ import annotations

from typing import Any

import pytest

from hub.alerting.notify.text import (
    WECOM_MARKDOWN_MAX,
    banks_to_bring,
    clock_text,
    compose,
    duration_text,
    station_info,
)
from hub.fleet.view import StationView

SID = "yh-chumen-01"
NOW = 1_764_196_800_000  # 2025-11-27 06:40 China Standard Time
STATION = {"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"}
LINK = "https://hub.example.cn/ack/tok"


def alert(rule: str, severity: str = "warning", value: Any = None, summary: str = "",
          **changes: Any) -> dict[str, Any]:
    a = {"id": "a-1f2e3d4c5b6a7980", "rule": rule, "sid": SID, "severity": severity,
         "state": "firing", "summary": summary, "value": value,
         "started_at": NOW - 35 * 60_000, "acked_at": None, "resolved_at": None}
    a.update(changes)
    return a


def fields(msg: Any) -> dict[str, str]:
    return dict(msg.fields)


def test_a_firing_message_says_where_what_how_urgent_what_to_bring_and_since_when() -> None:
    msg = compose("firing", alert("water_empty", "critical", {"level": 0.0}), STATION, LINK,
                  now_ms=NOW)
    assert msg.title == "【紧急】楚门镇先锋驿站：热水已空（水位 0%）"
    assert fields(msg) == {
        "站点": "楚门镇先锋驿站（yh-chumen-01 · chumen）",
        "情况": "热水已空（水位 0%）",
        "带什么": "请带桶装水/检查进水",
        "开始": "11-27 06:05（已 35 分钟）",
    }
    assert msg.ack_url == LINK
    assert f"[✅ 我来处理（点此确认）]({LINK})" in msg.markdown("wecom")
    assert msg.plain().splitlines()[-1] == "—— 驿站告警 · a-1f2e3d4c5b6a7980"


@pytest.mark.parametrize(("severity", "word"), [("critical", "紧急"), ("warning", "警告"),
                                                ("info", "提示")])
def test_severity_is_said_in_words(severity: str, word: str) -> None:
    msg = compose("firing", alert("water_low", severity, 0.18), STATION, LINK, now_ms=NOW)
    assert msg.title.startswith(f"【{word}】")
    assert "热水水位低（水位 18%）" in msg.title


@pytest.mark.parametrize(("rule", "value", "what", "bring"), [
    ("water_low", 0.18, "热水水位低（水位 18%）", "请带桶装水/检查进水"),
    ("water_predicted_empty", {"seconds": 5400}, "热水预计 1 小时 30 分钟 后用完",
     "请带桶装水/检查进水"),
    ("chargers_low", 1, "可借充电宝仅剩 1 个", "请带已充满的充电宝 11 个，取回故障充电宝 2 个"),
    ("chargers_predicted_empty", {"seconds": 1800}, "充电宝预计 30 分钟 后借完",
     "请带已充满的充电宝 11 个，取回故障充电宝 2 个"),
    ("slot_fault", {"slot": 3, "fault": "lock_jammed"}, "3 号仓故障（锁卡住）", "请带锁具维修工具"),
    ("unlock_failed", {"slot": 5, "reason": "jammed"}, "5 号仓开锁失败（锁卡住）",
     "请带锁具维修工具"),
    ("unlock_failed", {"slot": 5, "reason": "board_offline"}, "5 号仓开锁失败（控制板离线）",
     "检查充电柜控制板电源与串口线"),
    ("slot_fault", {"slot": 2, "fault": "charger_fault"}, "2 号仓故障（充电故障）",
     "请带备用充电模块，检查充电线"),
    ("dispenser_fault", {"fault": "heater"}, "饮水机故障（加热器）",
     "检查加热器与水位/温度传感器，确认有水后复位"),
    ("heater_lockout", {"fault": "dry_boil"}, "加热器已被安全切断",
     "先加水，再检查加热器与水位传感器"),
    ("station_offline", None, "驿站离线（无法联系）", "检查网络/电源（路由器、主机电源）"),
    ("locker_offline", None, "充电柜控制板无响应", "检查充电柜电源与串口线"),
    ("door_open_too_long", {"door": "entrance", "open_s": 900}, "入口门长时间未关（已 15 分钟）",
     "到场关门，检查门磁"),
    ("tamper", {"door": "locker_panel"}, "充电柜面板在非维护时间被打开", "尽快到场查看充电柜面板"),
    ("bank_overdue", {"bank": "PB0013B0"}, "充电宝 PB0013B0 逾期未还", "无需到场；跟进骑手归还"),
    ("pi_overheat", {"temp_c": 84.2}, "主机过热（84°C）", "检查主机散热风扇与通风"),
    ("undervoltage", None, "主机供电不足", "请带合格电源适配器（5V 5A）与电源线"),
    ("disk_low", {"disk_free_mb": 120}, "主机存储空间不足（剩 120 MB）",
     "远程清理日志，或带新存储卡"),
])
def test_each_rule_says_what_is_wrong_and_what_to_bring(rule: str, value: Any, what: str,
                                                       bring: str) -> None:
    station = {**STATION, "slots": 12, "ready": 1, "faulty": 2}
    msg = compose("firing", alert(rule, value=value), station, LINK, now_ms=NOW)
    assert fields(msg)["情况"] == what
    assert fields(msg)["带什么"] == bring


def test_the_engine_summary_is_kept_when_it_says_more() -> None:
    msg = compose("firing", alert("water_low", value=0.2, summary="水位 20%，预计 40 分钟后空"),
                  STATION, LINK, now_ms=NOW)
    assert fields(msg)["详情"] == "水位 20%，预计 40 分钟后空"
    unknown = compose("firing", alert("something_new", summary="新规则"), STATION, LINK,
                      now_ms=NOW)
    assert fields(unknown)["情况"] == "新规则" and "带什么" not in fields(unknown)


def test_banks_to_bring_fill_every_slot_without_a_ready_bank() -> None:
    assert banks_to_bring({"slots": 12, "ready": 1}) == 11
    assert banks_to_bring({"slots": 12, "ready": 12}) == 1
    assert banks_to_bring({"sid": SID}) is None
    msg = compose("firing", alert("chargers_low", value=0), STATION, LINK, now_ms=NOW)
    assert fields(msg)["带什么"] == "请带已充满的充电宝"


def test_station_info_counts_banks_from_the_state() -> None:
    slots = [{"slot": 1, "bank": "PB1", "charge": 96, "fault": None},
             {"slot": 2, "bank": "PB2", "charge": 40, "fault": None},
             {"slot": 3, "bank": "PB3", "charge": 99, "fault": "overheat"},
             {"slot": 4, "bank": None, "charge": None, "fault": None}]
    view = StationView(sid=SID, name="楚门镇先锋驿站", group="chumen",
                       state={"lockers": {"online": True, "slots": slots}})
    info = station_info(view, min_charge=80)
    assert info == {"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen", "slots": 4,
                    "ready": 1, "charging": 1, "faulty": 1}
    assert banks_to_bring(info) == 3
    assert station_info(StationView(sid="yh-x", name="")) == {"sid": "yh-x", "name": "yh-x",
                                                              "group": None}


def test_resolved_acked_escalated_and_reminder_notices() -> None:
    resolved = compose("resolved", alert("water_empty", "critical", resolved_at=NOW - 5 * 60_000),
                       STATION, LINK, now_ms=NOW)
    assert resolved.title == "【已恢复】楚门镇先锋驿站：热水已空"
    assert fields(resolved)["恢复"] == "11-27 06:35（持续 30 分钟）"
    assert resolved.ack_url is None and "带什么" not in fields(resolved)
    assert "/ack/" not in resolved.markdown("wecom")

    acked = compose("acked", alert("water_empty", "critical", acked_at=NOW), STATION, LINK,
                    now_ms=NOW)
    assert acked.title.startswith("【已确认】") and acked.ack_url is None
    assert fields(acked)["确认"] == "11-27 06:40，已有人处理"

    escalated = compose("escalated", alert("water_empty", "critical"), STATION, LINK, now_ms=NOW)
    assert escalated.title.startswith("【升级·紧急】") and escalated.ack_url == LINK
    assert fields(escalated)["无人确认"] == "已 35 分钟无人确认，请尽快处理"

    reminder = compose("reminder", alert("water_empty", "critical"), STATION, LINK, now_ms=NOW)
    assert reminder.title.startswith("【仍未处理·紧急】") and reminder.ack_url == LINK


def test_the_hub_s_own_alerts_read_well_and_a_route_test_asks_for_nothing() -> None:
    failing = compose("firing", alert("notify_failing", "critical", {"notifier": "chumen-wecom"},
                                      sid="hub"), {"sid": "hub", "name": "hub"}, LINK, now_ms=NOW)
    assert fields(failing)["情况"] == "通知渠道 chumen-wecom 无法送达"
    test = compose("firing", alert("notify_test", "info", {"route": "chumen"},
                                   summary="通知测试：路由 chumen 畅通，无需处理", sid="hub"),
                   {"sid": "hub", "name": "通知测试（路由 chumen）"}, LINK, now_ms=NOW)
    assert fields(test)["情况"] == "通知测试：路由 chumen 畅通，无需处理"
    assert test.ack_url is None and "带什么" not in fields(test)


def test_english_by_configuration() -> None:
    station = {**STATION, "slots": 12, "ready": 1}
    msg = compose("firing", alert("chargers_low", "critical", 1), station, LINK, now_ms=NOW,
                  language="en")
    assert msg.title == "[CRITICAL] 楚门镇先锋驿站: Only 1 power bank left to lend"
    assert fields(msg) == {"Station": "楚门镇先锋驿站 (yh-chumen-01 · chumen)",
                           "What": "Only 1 power bank left to lend",
                           "Bring": "Bring 11 fully charged power banks",
                           "Since": "11-27 06:05 (35 min ago)"}
    assert "I'm on it" in msg.plain()


def test_user_text_cannot_break_the_markdown() -> None:
    station = {"sid": SID, "name": "驿站 [点我](http://evil) <b>**"}
    text = compose("firing", alert("water_empty"), station, LINK, now_ms=NOW).markdown("wecom")
    assert "[点我](http://evil)" not in text and "<b>" not in text
    assert text.count("](") == 1  # only the ack link


def test_every_message_fits_wecom_and_keeps_its_link() -> None:
    msg = compose("firing", alert("water_empty", summary="说明" * 3000),
                  {"sid": SID, "name": "很长的名字" * 100}, LINK, now_ms=NOW)
    text = msg.markdown("wecom", max_bytes=WECOM_MARKDOWN_MAX)
    assert len(text.encode()) <= WECOM_MARKDOWN_MAX and LINK in text


def test_durations_and_times() -> None:
    assert duration_text(20) == "不到 1 分钟"
    assert duration_text(35 * 60) == "35 分钟"
    assert duration_text(3600) == "1 小时"
    assert duration_text(3600 + 7 * 60) == "1 小时 7 分钟"
    assert duration_text(2 * 86400 + 3 * 3600 + 59) == "2 天 3 小时"
    assert duration_text(3600 + 7 * 60, "en") == "1 h 7 min"
    assert clock_text(NOW) == "11-27 06:40"  # China Standard Time, UTC+8


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        compose("exploded", alert("water_low"), STATION, LINK, now_ms=NOW)
