"""An alert's summary: one line from its rule and value, in the hub's words.

The engine and the router store it with the alert (contract §11's ``summary``)
in the hub's default language; a notification in another language says it
again in its own, from the same value::

    >>> summary("slot_fault", {"slot": 2, "fault": "charger_fault"})
    '2 号仓故障：charger_fault'
    >>> summary("slot_fault", {"slot": 2, "fault": "charger_fault"}, "en")
    'Slot 2 fault: charger_fault'

None when the value lacks what the line needs (a value written by hand, or
before the value shapes of ``hub.alerting.values``), and for an unknown rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.alerting.texts import N_, Texts, texts
from hub.alerting.values import read_value
from hub.config.rules import NOTIFY_FAILING, NOTIFY_TEST

_DOORS = {"entrance": N_("Entrance door"), "locker_panel": N_("Locker panel")}
_OFFLINE = {"lost": N_("connection lost"), "shutdown": N_("shut down"),
            "silent": N_("no heartbeat for a long time")}

Summary = Callable[[Texts, dict[str, Any]], str | None]


def summary(rule: str, value: Any, language: str | None = None) -> str | None:
    """The summary of an alert of ``rule`` with ``value``, in ``language`` (the
    hub's default when None)."""
    say = _SUMMARIES.get(rule)
    return say(texts(language), read_value(rule, value)) if say is not None else None


def route_test_name(route: str, language: str | None = None) -> str:
    """What a route test's message names as its station: the test itself."""
    return texts(language).gettext("Notification test (route %(route)s)", route=route)


def door_name(t: Texts, door: Any) -> str:
    return t.gettext(_DOORS[door]) if door in _DOORS else t.gettext("Door %(door)s", door=door)


def minutes_text(t: Texts, seconds: float) -> str:
    """``44 分钟`` up to 89 minutes, then ``1.5 小时``."""
    minutes = max(0, round(seconds / 60))
    if minutes < 90:
        return t.gettext("%(num)d min", num=minutes)
    return t.gettext("%(hours).1f h", hours=minutes / 60)


def hours_text(t: Texts, seconds: float) -> str:
    """``5 小时`` up to two days, then ``2.5 天``."""
    hours = seconds / 3600
    if hours < 48:
        return t.gettext("%(hours).0f h", hours=hours)
    return t.gettext("%(days).1f d", days=hours / 24)


def _station_offline(t: Texts, v: dict[str, Any]) -> str:
    reason = v["reason"]
    if not reason:
        return t.gettext("Station is offline")
    words = t.gettext(_OFFLINE[reason]) if reason in _OFFLINE else reason
    return t.gettext("Station is offline (%(reason)s)", reason=words)


def _water_low(t: Texts, v: dict[str, Any]) -> str:
    if v["level"] is None:
        return t.gettext("Water level low")
    return t.gettext("Water level low %(pct)d%%", pct=round(v["level"] * 100))


def _predicted(message: str) -> Summary:
    def say(t: Texts, v: dict[str, Any]) -> str | None:
        if v["seconds"] is None:
            return None
        return t.gettext(message, left=minutes_text(t, v["seconds"]))
    return say


def _chargers_low(t: Texts, v: dict[str, Any]) -> str | None:
    if v["ready"] is None:
        return None
    return t.ngettext("Only %(num)d power bank left to lend, please restock",
                      "Only %(num)d power banks left to lend, please restock", v["ready"])


def _door_open(t: Texts, v: dict[str, Any]) -> str | None:
    if v["door"] is None or v["open_s"] is None:
        return None
    return t.gettext("%(door)s open for %(open)s", door=door_name(t, v["door"]),
                     open=minutes_text(t, v["open_s"]))


def _tamper(t: Texts, v: dict[str, Any]) -> str | None:
    if v["door"] is None:
        return None
    return t.gettext("%(door)s opened outside maintenance", door=door_name(t, v["door"]))


def _keys(message: str, *keys: str) -> Summary:
    """A line that only fills in ``keys`` of the value."""
    def say(t: Texts, v: dict[str, Any]) -> str | None:
        if any(v[k] is None for k in keys):
            return None
        return t.gettext(message, **{k: v[k] for k in keys})
    return say


def _bank_overdue(t: Texts, v: dict[str, Any]) -> str | None:
    if v["bank"] is None or v["overdue_s"] is None:
        return None
    return t.gettext("Power bank %(bank)s overdue by %(late)s", bank=v["bank"],
                     late=hours_text(t, v["overdue_s"]))


def _number(message: str, key: str) -> Summary:
    def say(t: Texts, v: dict[str, Any]) -> str | None:
        return None if v[key] is None else t.gettext(message, n=f"{v[key]:g}")
    return say


def _notify_failing(t: Texts, v: dict[str, Any]) -> str | None:
    if v["notifier"] is None:
        return None
    if v["reason"]:
        return t.gettext("Notifier %(notifier)s cannot deliver; alerts may not reach the "
                         "people on duty: %(reason)s", notifier=v["notifier"],
                         reason=v["reason"])
    return t.gettext("Notifier %(notifier)s cannot deliver; alerts may not reach the "
                     "people on duty", notifier=v["notifier"])


def _fixed(message: str) -> Summary:
    return lambda t, v: t.gettext(message)


_SUMMARIES: dict[str, Summary] = {
    "station_offline": _station_offline,
    "water_low": _water_low,
    "water_empty": _fixed(N_("Water tank empty, please refill soon")),
    "water_predicted_empty": _predicted(N_("Water expected to run out in about %(left)s")),
    "chargers_low": _chargers_low,
    "chargers_predicted_empty": _predicted(
        N_("Power banks to lend expected to run out in about %(left)s")),
    "door_open_too_long": _door_open,
    "tamper": _tamper,
    "dispenser_fault": _keys(N_("Dispenser fault: %(fault)s"), "fault"),
    "heater_lockout": _fixed(N_("Dispenser heating cut off for safety, please check the tank "
                                "and the temperature")),
    "locker_offline": _fixed(N_("Locker board not answering")),
    "slot_fault": _keys(N_("Slot %(slot)s fault: %(fault)s"), "slot", "fault"),
    "unlock_failed": _keys(N_("Slot %(slot)s failed to unlock (%(reason)s)"), "slot", "reason"),
    "bank_overdue": _bank_overdue,
    "pi_overheat": _number(N_("Station computer too hot: %(n)s°C"), "temp_c"),
    "undervoltage": _fixed(N_("Station computer undervoltage, please check the power supply")),
    "disk_low": _number(N_("Only %(n)s MB left on the station computer's disk"), "disk_free_mb"),
    NOTIFY_FAILING: _notify_failing,
    NOTIFY_TEST: _keys(N_("Notification test: route %(route)s works, nothing to do"), "route"),
}
