"""The finder's words, Chinese first and English (``?lang=en``).

The page is public and tiny, so its few words live here rather than in the
console's catalogues: one dictionary per language, the same keys in each
(tests/test_finder.py checks that).
"""

from __future__ import annotations

ZH = {
    "lang": "zh-CN", "title": "附近的驿站",
    "intro": "骑手驿站：热水、充电宝、歇脚。按离你的距离排列。",
    "locating": "正在取得你的位置……", "no_position": "未取得你的位置，按名称排列。",
    "located": "按离你的距离排列（位置只在手机上用，不发给任何人）。",
    "near": "按离“{name}”的距离排列。",
    "working": "可用", "not_working": "暂不可用", "open": "营业中", "closed": "已关门",
    "always": "24 小时", "hours_unknown": "营业时间未知", "online": "在线", "offline": "离线",
    "water_ok": "热水充足", "water_low": "热水不多", "water_empty": "没有热水",
    "water_unknown": "热水情况未知", "chargers": "充电宝可借 {n} 个",
    "no_chargers": "没有可借的充电宝", "chargers_unknown": "充电宝情况未知",
    "next": "最近的可用驿站：", "none_working": "暂时没有可用的驿站。",
    "navigate": "导航", "amap": "高德地图", "baidu": "百度地图", "qq": "腾讯地图",
    "host": "提供场地：", "no_place": "位置未登记", "other": "English", "other_lang": "en",
    "updated": "状态更新于 {at}", "feed": "数据（GeoJSON）",
}
EN = {
    "lang": "en", "title": "Stations nearby", "intro": "Rider stations: hot water, power banks, "
    "a seat. Nearest first.",
    "locating": "Finding where you are…", "no_position": "Your position is not known: "
    "sorted by name.",
    "located": "Nearest to you first (your position stays on your phone).",
    "near": "Nearest to “{name}” first.",
    "working": "Working", "not_working": "Not working now", "open": "Open", "closed": "Closed",
    "always": "24 h", "hours_unknown": "Hours not known", "online": "Online",
    "offline": "Offline", "water_ok": "Hot water", "water_low": "Water low",
    "water_empty": "No water", "water_unknown": "Water not known",
    "chargers": "{n} power banks to borrow", "no_chargers": "No power bank to borrow",
    "chargers_unknown": "Power banks not known", "next": "Nearest working station: ",
    "none_working": "No station is working right now.", "navigate": "Navigate",
    "amap": "Amap", "baidu": "Baidu Maps", "qq": "Tencent Maps", "host": "Hosted by ",
    "no_place": "Place not registered", "other": "中文", "other_lang": "zh",
    "updated": "Status as of {at}", "feed": "Data (GeoJSON)",
}
LANGUAGES = {"zh": ZH, "en": EN}
