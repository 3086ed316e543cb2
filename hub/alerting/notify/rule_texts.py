"""Per rule, what a notification says is wrong and what to bring.

Each reads the alert's value by the keys its rule declares
(``hub.alerting.values``) and the station's bank counts (``text.station_info``)::

    >>> from hub.alerting.texts import texts
    >>> what("slot_fault", {"slot": 3, "fault": "lock_jammed"}, {}, texts("zh"))
    '3 号仓故障（锁卡住）'
    >>> bring("slot_fault", {"slot": 3, "fault": "lock_jammed"}, {}, texts("en"))
    'Bring lock repair tools'

None where the rule has nothing to say: the message then shows the alert's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hub.alerting.texts import N_, Texts
from hub.alerting.values import read_value
from hub.config.rules import NOTIFY_FAILING

__all__ = ["DISPENSER_FAULTS", "DOORS", "SLOT_FAULTS", "UNLOCK_REASONS", "banks_to_bring", "bring",
           "what"]

Station = Mapping[str, Any]
Says = Callable[[Texts, dict[str, Any], Station], str | None]

DOORS = {"entrance": N_("entrance"), "locker_panel": N_("locker panel")}
SLOT_FAULTS = {"lock_jammed": N_("lock jammed"), "charger_fault": N_("charger fault"),
               "sensor_fault": N_("sensor fault"), "overheat": N_("overheating"),
               "comm": N_("no contact")}
UNLOCK_REASONS = {"jammed": N_("lock jammed"), "timeout": N_("timed out"),
                  "not_taken": N_("not taken"), "bad_slot": N_("bad slot"),
                  "board_offline": N_("board offline")}
DISPENSER_FAULTS = {"sensor": N_("sensor"), "heater": N_("heater"),
                    "overtemp": N_("over temperature"), "dry_boil": N_("dry boil")}


def what(rule: str, value: Any, station: Station, t: Texts) -> str | None:
    """What is wrong, in one phrase (``热水已空（水位 0%）``)."""
    say = _WHAT.get(rule)
    return say(t, read_value(rule, value), station) if say is not None else None


def bring(rule: str, value: Any, station: Station, t: Texts) -> str | None:
    """What to bring or do on site."""
    say = _BRING.get(rule)
    return say(t, read_value(rule, value), station) if say is not None else None


def banks_to_bring(station: Station) -> int | None:
    """Charged banks to bring: one for every slot not holding a ready bank (empty
    slots are filled, low and faulty banks swapped). None when the slots are unknown."""
    slots, ready = station.get("slots"), station.get("ready")
    if not isinstance(slots, int) or not isinstance(ready, int) or slots <= 0:
        return None
    return max(1, slots - ready)


def _word(t: Texts, words: Mapping[str, str], code: str | None) -> str | None:
    """A code's word (``lock_jammed`` → 锁卡住); an unknown code as it is."""
    if code is None:
        return None
    return t.gettext(words[code]) if code in words else code


# -- what is wrong ---------------------------------------------------------------------


def _fixed(message: str) -> Says:
    return lambda t, v, station: t.gettext(message)


def _water(head: str) -> Says:
    def say(t: Texts, v: dict[str, Any], station: Station) -> str:
        if v["level"] is None:
            return t.gettext(head)
        return t.gettext("%(what)s (level %(pct)s)", what=t.gettext(head),
                         pct=f"{round(v['level'] * 100)}%")
    return say


def _predicted(soon: str, within: str) -> Says:
    def say(t: Texts, v: dict[str, Any], station: Station) -> str:
        if v["seconds"] is None:
            return t.gettext(soon)
        return t.gettext(within, left=t.duration(v["seconds"]))
    return say


def _chargers_low(t: Texts, v: dict[str, Any], station: Station) -> str:
    # The alert's own count; for an alert raised without one, the station's now.
    n = v["ready"] if v["ready"] is not None else station.get("ready")
    if not isinstance(n, int):
        return t.gettext("Few power banks left to lend")
    return t.ngettext("Only %(num)d power bank left to lend",
                      "Only %(num)d power banks left to lend", n)


def _door_open(t: Texts, v: dict[str, Any], station: Station) -> str:
    door = _word(t, DOORS, v["door"])
    head = (t.gettext("Door %(door)s left open", door=door) if door
            else t.gettext("Door left open"))
    if v["open_s"] is None:
        return head
    return t.gettext("%(what)s (%(duration)s)", what=head, duration=t.duration(v["open_s"]))


def _dispenser_fault(t: Texts, v: dict[str, Any], station: Station) -> str:
    fault = _word(t, DISPENSER_FAULTS, v["fault"])
    if fault is None:
        return t.gettext("Dispenser fault")
    return t.gettext("Dispenser fault (%(fault)s)", fault=fault)


def _slot(words: Mapping[str, str], key: str, messages: tuple[str, str, str, str]) -> Says:
    """``messages``: with a slot and why, with a slot, without a slot and with why,
    with neither."""
    def say(t: Texts, v: dict[str, Any], station: Station) -> str:
        why, slot = _word(t, words, v[key]), v["slot"]
        if slot is not None:
            return t.gettext(messages[0] if why else messages[1], slot=slot, why=why)
        return t.gettext(messages[2], why=why) if why else t.gettext(messages[3])
    return say


def _named(with_name: str, without: str, key: str, fmt: str = "") -> Says:
    """``with_name`` filled with the value's ``key`` (formatted by ``fmt``), else ``without``."""
    def say(t: Texts, v: dict[str, Any], station: Station) -> str:
        if v[key] is None:
            return t.gettext(without)
        return t.gettext(with_name, **{key: format(v[key], fmt)})
    return say


_WHAT: dict[str, Says] = {
    "water_low": _water(N_("Hot water low")),
    "water_empty": _water(N_("Hot water empty")),
    "water_predicted_empty": _predicted(N_("Hot water expected to run out soon"),
                                        N_("Hot water expected to run out in %(left)s")),
    "chargers_predicted_empty": _predicted(N_("Power banks expected to run out soon"),
                                           N_("Power banks expected to run out in %(left)s")),
    "chargers_low": _chargers_low,
    "station_offline": _fixed(N_("Station offline")),
    "door_open_too_long": _door_open,
    "tamper": _fixed(N_("Locker panel opened outside maintenance")),
    "dispenser_fault": _dispenser_fault,
    "heater_lockout": _fixed(N_("Heater cut off for safety")),
    "locker_offline": _fixed(N_("Locker board not answering")),
    "slot_fault": _slot(SLOT_FAULTS, "fault", (
        N_("Slot %(slot)d fault (%(why)s)"), N_("Slot %(slot)d fault"),
        N_("A slot fault (%(why)s)"), N_("A slot fault"))),
    "unlock_failed": _slot(UNLOCK_REASONS, "reason", (
        N_("Slot %(slot)d failed to unlock (%(why)s)"), N_("Slot %(slot)d failed to unlock"),
        N_("A slot failed to unlock (%(why)s)"), N_("A slot failed to unlock"))),
    "bank_overdue": _named(N_("Power bank %(bank)s overdue"), N_("A power bank is overdue"),
                           "bank"),
    "pi_overheat": _named(N_("Station computer overheating (%(temp_c)s°C)"),
                          N_("Station computer overheating"), "temp_c", ".0f"),
    "undervoltage": _fixed(N_("Station computer undervoltage")),
    "disk_low": _named(N_("Station disk low (%(disk_free_mb)s MB free)"), N_("Station disk low"),
                       "disk_free_mb", ".0f"),
    NOTIFY_FAILING: _named(N_("Notifier %(notifier)s cannot deliver"),
                           N_("A notifier cannot deliver"), "notifier"),
    # notify_test: the router's summary says it ("Notification test: ..., nothing to do").
}


# -- what to bring -----------------------------------------------------------------------


def _chargers(t: Texts, v: dict[str, Any], station: Station) -> str:
    n = banks_to_bring(station)
    text = (t.ngettext("Bring %(num)d fully charged power bank",
                       "Bring %(num)d fully charged power banks", n) if n
            else t.gettext("Bring fully charged power banks"))
    faulty = station.get("faulty") or 0
    if faulty:
        return t.gettext("%(bring)s, take back %(faulty)d faulty ones", bring=text,
                         faulty=faulty)
    return text


def _slot_tools(key: str) -> Says:
    def say(t: Texts, v: dict[str, Any], station: Station) -> str:
        why = v[key]
        if why in ("lock_jammed", "jammed"):
            return t.gettext("Bring lock repair tools")
        if why == "charger_fault":
            return t.gettext("Bring a spare charging module; check the charging cable")
        if why == "overheat":
            return t.gettext("Take out the overheating bank; check ventilation")
        if why == "board_offline":
            return t.gettext("Check the locker board's power and serial cable")
        return t.gettext("Check the slot (sensor and wiring)")
    return say


def _heater(t: Texts, v: dict[str, Any], station: Station) -> str:
    if v["fault"] == "dry_boil":
        return t.gettext("Refill first, then check the heater and level sensor")
    return t.gettext("Check the heater and level/temperature sensors; reset once there is water")


_WATER = _fixed(N_("Bring bottled water / check the water inlet"))
_BRING: dict[str, Says] = {
    "water_low": _WATER,
    "water_empty": _WATER,
    "water_predicted_empty": _WATER,
    "chargers_low": _chargers,
    "chargers_predicted_empty": _chargers,
    "slot_fault": _slot_tools("fault"),
    "unlock_failed": _slot_tools("reason"),
    "dispenser_fault": _heater,
    "heater_lockout": _heater,
    "station_offline": _fixed(N_("Check network / power (router, station computer)")),
    "locker_offline": _fixed(N_("Check the locker's power and serial cable")),
    "door_open_too_long": _fixed(N_("Close the door; check the door sensor")),
    "tamper": _fixed(N_("Go and check the locker panel")),
    "bank_overdue": _fixed(N_("No visit needed; follow up with the rider")),
    "pi_overheat": _fixed(N_("Check the computer's fan and ventilation")),
    "undervoltage": _fixed(N_("Bring a proper power supply (5 V 5 A) and cable")),
    "disk_low": _fixed(N_("Clean up remotely, or bring a new SD card")),
    NOTIFY_FAILING: _fixed(N_("Check the notifier's address/key and network (see the hub log)")),
}
