"""A station's condition at a glance, as the fleet and station pages colour it.

One word, shown with its colour (colour is never the only sign): ``down`` (offline)
and ``critical`` (a critical alert open) are red; ``attention`` (a warning alert,
water low or empty, no charged bank to lend, a faulty slot) amber; ``unknown``
(never heard, no State yet) grey; ``ok`` green. The fleet page sorts worst first
by :data:`RANK`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.alerting.texts import N_

#: word -> (css class, rank: lower is worse)
CONDITIONS = {
    "down": ("s-bad", 0),
    "critical": ("s-bad", 1),
    "attention": ("s-warn", 2),
    "unknown": ("s-off", 3),
    "ok": ("s-ok", 4),
}
LABELS = {"down": N_("Offline"), "critical": N_("Critical"), "attention": N_("Attention"),
          "unknown": N_("No data"), "ok": N_("OK")}


def condition(view: Any, banks: Mapping[str, int] | None,
              severities: Mapping[str, int]) -> str:
    """The word of a station: its view, its banks by state (hub.fleet.banks) and
    its open alerts by severity."""
    if not view.online and view.since_ms is not None:
        return "down"
    if severities.get("critical"):
        return "critical"
    if view.state is None:
        return "unknown" if not view.online else "ok"
    water = view.water()
    if (severities.get("warning") or water in ("low", "empty")
            or (banks is not None and (banks["ready"] == 0 or banks["faulty"]))):
        return "attention"
    return "ok"

#: The dispenser's level_state (contract §5) in words.
WATER = {"ok": N_("Water OK"), "low": N_("Water low"), "empty": N_("Water empty"),
         "unknown": N_("Water unknown")}
