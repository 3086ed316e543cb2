"""The station page's words for what a station reports in codes: slot and dispenser
faults (contract §5), doors, and each event's details (contract §6).

The codes' words are the notifications' (hub/alerting/notify/rule_texts.py), so a
worker reads the same 锁卡住 in the alert and on the page. A code no table knows
(a newer agent's) is shown as it came: readers accept what they do not know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hub.alerting.notify.rule_texts import DISPENSER_FAULTS, DOORS, SLOT_FAULTS, UNLOCK_REASONS
from hub.alerting.texts import N_
from hub.console import gettext, ngettext
from hub.console.health import WATER

__all__ = ["command_words", "door", "event_details", "fault"]

#: Why the agent cut the heater (firmware/safety.py REASONS).
HEATER_REASONS = {"sensor_silent": N_("no reading from the thermometer"),
                  "sensor_range": N_("thermometer reading out of range"),
                  "level_unknown": N_("water level unknown"), "empty": N_("tank empty"),
                  "overtemp": N_("over temperature"), "max_on_time": N_("heating too long")}
#: What a staff member refilled (contract §6 ``refilled``).
REFILLED = {"water": N_("water"), "banks": N_("power banks"), "cups": N_("cups")}
#: Commands (contract §7): what was sent, how it stands, why it failed.
COMMANDS = {"unlock": N_("Unlock"), "rebirth": N_("Report again"),
            "replay": N_("Resend events"), "reload": N_("Reload configuration")}
COMMAND_STATES = {"sent": N_("sent, no answer yet"), "ok": N_("done"),
                  "failed": N_("failed"), "expired": N_("expired")}
COMMAND_ERRORS = {"expired": N_("expired"), "bad_args": N_("bad arguments"),
                  "unknown_cmd": N_("unknown to the station"), "jammed": N_("lock jammed"),
                  "board_offline": N_("board offline"), "busy": N_("station busy")}
#: The longest piece of an event's data shown (a hostile agent's text is cut).
MOST = 40


def _word(words: Mapping[str, str], code: Any) -> str:
    """A code's word in the reader's language; an unknown one as it came (cut)."""
    if isinstance(code, str) and code in words:
        return gettext(words[code])
    return str(code)[:MOST]


def fault(code: Any, dispenser: bool = False) -> str:
    """A slot's (or the dispenser's) fault code in words: ``charger_fault`` → 充电故障."""
    return _word(DISPENSER_FAULTS if dispenser else SLOT_FAULTS, code)


def door(code: Any) -> str:
    return _word(DOORS, code)


def command_words(cmd: Any, state: Any, error: Any) -> tuple[str, str, str | None]:
    """(the command, its state, its error or None) in words."""
    return (_word(COMMANDS, cmd), _word(COMMAND_STATES, state),
            _word(COMMAND_ERRORS, error) if error else None)


def _slot(v: Any) -> str:
    return gettext("slot %(slot)s") % {"slot": str(v)[:MOST]}


def _bank(v: Any) -> str:
    return gettext("bank %(bank)s") % {"bank": str(v)[:MOST]}


def _charge(v: Any) -> str:
    return gettext("charge %(charge)s%%") % {"charge": str(v)[:MOST]}


def _staff(v: Any) -> str:
    return gettext("by %(staff)s") % {"staff": str(v)[:MOST]}


def _count(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)[:MOST]
    return ngettext("%(num)d visit", "%(num)d visits", v) % {"num": v}


def _cups(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)[:MOST]
    return ngettext("%(num)d cup", "%(num)d cups", v) % {"num": v}


def _litres(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)[:MOST]
    return gettext("%(litres)s L") % {"litres": f"{v / 1000:.1f}"}


def _words(words: Mapping[str, str]) -> Callable[[Any], str]:
    return lambda v: _word(words, v)


#: Each event type's data, in the order shown, each field by its own words.
#: (A rider's id is never shown.)
_SHOWN: dict[str, tuple[tuple[str, Callable[[Any], str]], ...]] = {
    "door_opened": (("door", door),),
    "door_closed": (("door", door),),
    "tamper": (("door", door),),
    "bank_borrowed": (("slot", _slot), ("bank", _bank), ("charge", _charge)),
    "bank_returned": (("slot", _slot), ("bank", _bank), ("charge", _charge)),
    "unlock_failed": (("slot", _slot), ("reason", _words(UNLOCK_REASONS))),
    "slot_fault": (("slot", _slot), ("fault", fault)),
    "slot_fault_cleared": (("slot", _slot), ("fault", fault)),
    "water_level": (("level_state", _words(WATER)),),
    "dispenser_fault": (("fault", lambda v: fault(v, dispenser=True)),),
    "dispenser_fault_cleared": (("fault", lambda v: fault(v, dispenser=True)),),
    "heater_lockout": (("reason", _words(HEATER_REASONS)),),
    "heater_lockout_cleared": (("reason", _words(HEATER_REASONS)),),
    "refilled": (("what", _words(REFILLED)), ("staff", _staff)),
    "maintenance_started": (("staff", _staff),),
    "maintenance_ended": (("staff", _staff),),
    "visit": (("count", _count),),
    "water_drawn": (("draws", _cups), ("ml", _litres)),
}
#: An event type no table knows (a newer agent's): the fields the console has words
#: for, then the others it shows as they came (never ``rider``).
_UNKNOWN = (("slot", _slot), ("door", door), ("bank", _bank), ("charge", _charge),
            ("fault", lambda v: str(v)[:MOST]), ("reason", lambda v: str(v)[:MOST]),
            ("what", lambda v: str(v)[:MOST]), ("staff", _staff))


def event_details(kind: str, data: Any) -> str:
    """An event's data as the reader says it: ``3 号仓，充电宝 PB0003，电量 88%``."""
    if not isinstance(data, dict):
        return ""
    shown = _SHOWN.get(kind, _UNKNOWN)
    return gettext(", ").join(say(data[k]) for k, say in shown if data.get(k) is not None)
