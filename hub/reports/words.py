"""The words of the report's PDF and charts in each language (zh first). The
console page says the same through the hub's catalogue (hub/translations); a PDF
is made outside a request, for whichever language the city office reads."""

from __future__ import annotations

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "驿站服务报告", "fleet": "全部驿站", "no_group": "未分组",
        "town": "乡镇", "station": "驿站", "visits": "到访人次", "lent": "借出充电宝",
        "returned": "归还充电宝", "cups": "热水杯数", "availability": "可用率",
        "down": "停机时长", "outages": "停机次数", "mttr": "平均修复时长",
        "low_runs": "缺水次数", "refill_mean": "平均补水用时", "refill_max": "最长补水用时",
        "waiting": "待补水", "litres": "热水（升）",
        "charger_low_runs": "充电宝不足次数", "charger_refill_mean": "充电宝平均补充用时",
        "charger_waiting": "待补充电宝", "before": "上期", "change": "环比",
        "not_measured": "未计量", "towns": "各乡镇", "stations": "各驿站",
        "chart_visits": "到访人次（本期 / 上期）", "chart_lent": "借出充电宝（本期 / 上期）",
        "chart_availability": "各驿站可用率",
        "chart_least_available": "可用率最低的 {n} 个驿站",
        "period": "统计期间", "made": "生成时间", "page": "第 {n} 页",
        "note": "数据来自驿站上报并存储的事件与在线时长记录；可用率 = 在线时长 ÷（在线 + 停机）"
                "时长，集控中心未运行与维护时段不计入。热水杯数与升数来自装有流量计的驿站（每次取水计一杯），"
                "未装的驿站显示“未计量”。",
        "hours": "小时", "minutes": "分钟",
    },
    "en": {
        "title": "Station service report", "fleet": "All stations", "no_group": "no group",
        "town": "Town", "station": "Station", "visits": "Visits", "lent": "Chargers lent",
        "returned": "Chargers returned", "cups": "Cups of hot water",
        "availability": "Availability", "down": "Down time", "outages": "Outages",
        "mttr": "Mean time to repair", "low_runs": "Water ran low",
        "refill_mean": "Mean time to refill", "refill_max": "Longest time to refill",
        "waiting": "Waiting for water", "litres": "Hot water (litres)",
        "charger_low_runs": "Chargers ran low",
        "charger_refill_mean": "Mean time to refill chargers",
        "charger_waiting": "Waiting for chargers", "before": "Before", "change": "Change",
        "not_measured": "not measured", "towns": "Towns", "stations": "Stations",
        "chart_visits": "Visits (this period / the one before)",
        "chart_lent": "Chargers lent (this period / the one before)",
        "chart_availability": "Availability per station",
        "chart_least_available": "The {n} least available stations",
        "period": "Period", "made": "Made",
        "page": "page {n}",
        "note": "From the events the stations sent and the hub stored, and the uptime "
                "ledger; availability is up time over up and down time, leaving out time "
                "the hub was not running and maintenance. Cups and litres of hot water "
                "come from stations with a flow meter (a draw is a cup); the others are "
                "not measured.",
        "hours": "h", "minutes": "min",
    },
}


def words(lang: str) -> dict[str, str]:
    return WORDS.get(lang, WORDS["zh"])


def duration(seconds: float | None, lang: str) -> str:
    """Minutes under two hours, hours above: "95 分钟", "3.5 小时"."""
    if seconds is None:
        return "—"
    w = words(lang)
    if seconds < 7200:
        return f"{seconds / 60:.0f} {w['minutes']}"
    return f"{seconds / 3600:.1f} {w['hours']}"


def change(now: float | None, before: float | None) -> str:
    """Month over month as a signed percentage; "—" with nothing to compare."""
    if now is None or not before:
        return "—"
    return f"{(now - before) / before * 100:+.1f}%"


def points(now: float | None, before: float | None) -> str:
    """A change of a share (availability) in percentage points: 97.3 % to 97.8 %
    is +0.5 pp, not +0.5 %."""
    if now is None or before is None:
        return "—"
    return f"{(now - before) * 100:+.2f} pp"


def percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"
