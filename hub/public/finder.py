"""What the finder page shows of each station, before the phone knows where it is.

The hub renders every station with its words and, when it is not working, the
nearest station that is: measured from the station the
page is centred on (``?near=<sid>``, the poster's QR code), else from the broken
station itself. The page's script then re-sorts the list by distance from the
phone and points each broken station at the working one nearest the phone —
computed on the phone; its position is never sent to the hub — and adds each
station's navigate links (``hub.public.maps.navigate``, in the page's script).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hub.public.words import LANGUAGES, ZH


def words_of(lang: str | None) -> dict[str, str]:
    return LANGUAGES.get(lang or "zh", ZH)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius), as the page's script computes it."""
    r = math.pi / 180
    a = math.sin((lat2 - lat1) * r / 2) ** 2 + \
        math.cos(lat1 * r) * math.cos(lat2 * r) * math.sin((lon2 - lon1) * r / 2) ** 2
    return 12_742_000 * math.asin(math.sqrt(a))


def _placed(s: dict[str, Any]) -> bool:
    return s["lat"] is not None and s["lon"] is not None


def nearest_working(stations: list[dict[str, Any]], lat: float | None,
                    lon: float | None) -> dict[str, Any] | None:
    """The working station nearest (lat, lon); without a point, the first by name."""
    working = [s for s in stations if s["working"]]
    if lat is None or lon is None:
        return min(working, key=lambda s: (s["name"], s["sid"]), default=None)
    placed = [s for s in working if _placed(s)]
    return min(placed, key=lambda s: distance_m(lat, lon, s["lat"], s["lon"]),
               default=None) or (working[0] if working else None)


def status_words(s: dict[str, Any], w: dict[str, str]) -> list[tuple[str, str]]:
    """(css, words) of each of the station's facts, the bad ones marked ``bad``."""
    out = [("ok" if s["open_now"] else "bad",
            w["open"] if s["open_now"] else w["closed"]),
           ("ok" if s["online"] else "bad", w["online"] if s["online"] else w["offline"])]
    water = s["water"]
    out.append(({"ok": "ok", "low": "warn", "empty": "bad"}.get(water, "unk"),
                w[f"water_{water}"]))
    ready = s["chargers_ready"]
    if ready is None:
        out.append(("unk", w["chargers_unknown"]))
    elif ready > 0:
        out.append(("ok", w["chargers"].format(n=ready)))
    else:
        out.append(("bad", w["no_chargers"]))
    return out


def page(stations: list[dict[str, Any]], near: str | None,
         w: dict[str, str]) -> dict[str, Any]:
    """The template's list, ordered by distance from the ``near`` station when it
    has a place, else by name."""
    centre = next((s for s in stations if s["sid"] == near), None)
    if centre is not None and _placed(centre):
        origin = (centre["lat"], centre["lon"])

        def key(s: dict[str, Any]) -> tuple:
            if not _placed(s):
                return (1, math.inf, s["name"])
            return (0, distance_m(*origin, s["lat"], s["lon"]), s["name"])
        ordered = sorted(stations, key=key)
    else:
        centre, origin = None, None
        ordered = sorted(stations, key=lambda s: (s["name"], s["sid"]))
    items = []
    for s in ordered:
        item = {**s, "facts": status_words(s, w), "next": None, "km": ""}
        if origin is not None and _placed(s):
            item["km"] = kilometres(distance_m(*origin, s["lat"], s["lon"]))
        if not s["working"]:
            lat, lon = origin or ((s["lat"], s["lon"]) if _placed(s) else (None, None))
            item["next"] = nearest_working(stations, lat, lon)
        items.append(item)
    script_words = {k: w[k] for k in ("located", "no_position", "locating", "amap", "baidu",
                                       "qq")}
    return {"items": items, "centre": centre, "any_working": any(s["working"] for s in stations),
            "script_words": json.dumps(script_words, ensure_ascii=False).replace("<", "\\u003c")}


def kilometres(metres: float) -> str:
    """As the page's script writes a distance: 10 m steps under a kilometre."""
    if metres < 1000:
        return f"{round(metres / 10) * 10:.0f} m"
    return f"{metres / 1000:.1f} km" if metres < 10_000 else f"{metres / 1000:.0f} km"
