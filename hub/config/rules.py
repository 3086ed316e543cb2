"""The alert rules of contract §13: their names, defaults and the configuration that changes them.

A rule says when a station needs someone: how bad (``severity``), how long the
condition must hold before anyone is told (``for``), and, where it measures a
quantity, the ``level`` it fires at and the ``clear`` level it must come back
past before it resolves (hysteresis: a tank hovering around 25 % does not page
every minute). The configuration overrides the defaults for the whole fleet
(``rules:``) and per group of stations (``groups.<group>.rules:``)::

    rules:
      door_open_too_long: {for: 15m}
    groups:
      chumen:
        response_time: 45m
        rules: {water_low: {level: 0.3}}

>>> rules = Rules({"door_open_too_long": {"for": "15m"}},
...               {"chumen": {"response_time": "45m", "rules": {"water_low": {"level": 0.3}}}})
>>> rules.rule_for("chumen", "water_low").level, rules.rule_for(None, "water_low").level
(0.3, 0.25)
>>> rules.response_time("chumen")
2700.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yizhan.config import ConfigError, parse_duration

SEVERITIES = ("info", "warning", "critical")
#: Contract §13.
RULES = (
    "station_offline", "water_low", "water_empty", "water_predicted_empty", "chargers_low",
    "chargers_predicted_empty", "door_open_too_long", "tamper", "dispenser_fault",
    "heater_lockout", "locker_offline", "slot_fault", "unlock_failed", "bank_overdue",
    "pi_overheat", "undervoltage", "disk_low",
)
#: The hub's own alerts and messages (docs/routing.md), beside contract §13's rules:
#: a notifier that cannot deliver, and a route's scheduled test.
NOTIFY_FAILING = "notify_failing"
NOTIFY_TEST = "notify_test"
HUB_RULES = (NOTIFY_FAILING, NOTIFY_TEST)
HUB_SID = "hub"  # reserved: no station may be called so (protocol.ids.RESERVED_SIDS)

#: What a rule's alerts are about, beside the station: one alert per subject.
DOOR, SLOT, BANK = "door", "slot", "bank"
#: Which way a threshold rule fires: at or below its level, or at or above it.
BELOW, ABOVE = "below", "above"
#: The fleet's default time for someone to get to a station (``response_time``):
#: a predicted empty tank within it is worth a trip now.
DEFAULT_RESPONSE_TIME = 3600.0
#: The predicted rules clear once the time left is this many response times.
PREDICTION_CLEAR_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule as it applies to a station.

    ``level``/``clear`` are in the rule's own unit (a 0..1 fraction for water,
    a count of banks, °C, MB, seconds of time left for the predictions);
    ``None`` where the rule has no threshold. ``quiet_s``: an event rule's
    alert resolves after this long without another such event (``None``: only
    a person resolves it). ``mute_in_maintenance``: held back while staff are
    on site or a maintenance window is open.
    """

    name: str
    severity: str
    for_s: float = 0.0
    level: float | None = None
    clear: float | None = None
    subject: str | None = None
    enabled: bool = True
    mute_in_maintenance: bool = False
    quiet_s: float | None = None
    jammed_severity: str | None = None  # unlock_failed: a jammed lock
    warning_after_s: float | None = None  # bank_overdue: info, then warning
    doors: tuple[str, ...] | None = None  # door_open_too_long: None is every door

    @property
    def direction(self) -> str | None:
        return _THRESHOLDS[self.name].direction if self.name in _THRESHOLDS else None

    def fires_at(self, value: float) -> bool:
        """Whether ``value`` is at or past the level (for threshold rules)."""
        assert self.level is not None
        return value <= self.level if self.direction == BELOW else value >= self.level

    def clears_at(self, value: float) -> bool:
        """Whether ``value`` is back past the clear level."""
        assert self.clear is not None
        return value >= self.clear if self.direction == BELOW else value <= self.clear


@dataclass(frozen=True, slots=True)
class _Threshold:
    direction: str
    unit: str  # fraction, count, number, duration
    lo: float | None = None
    hi: float | None = None


_THRESHOLDS: dict[str, _Threshold] = {
    "water_low": _Threshold(BELOW, "fraction", 0, 1),
    "water_empty": _Threshold(BELOW, "fraction", 0, 1),
    "chargers_low": _Threshold(BELOW, "count", 0),
    "water_predicted_empty": _Threshold(BELOW, "duration"),
    "chargers_predicted_empty": _Threshold(BELOW, "duration"),
    "pi_overheat": _Threshold(ABOVE, "number", 0, 150),
    "disk_low": _Threshold(BELOW, "number", 0),
}

_M = 60.0
DEFAULT_RULES: dict[str, RuleSpec] = {r.name: r for r in (
    RuleSpec("station_offline", "critical", 2 * _M),
    RuleSpec("water_low", "warning", 0, 0.25, 0.35, mute_in_maintenance=True),
    RuleSpec("water_empty", "critical", 0, 0.05, 0.15, mute_in_maintenance=True),
    # level/clear None: the group's response_time, and 1.5 times it.
    RuleSpec("water_predicted_empty", "warning", 0, mute_in_maintenance=True),
    RuleSpec("chargers_low", "warning", 0, 2, 4, mute_in_maintenance=True),
    RuleSpec("chargers_predicted_empty", "warning", 0, mute_in_maintenance=True),
    RuleSpec("door_open_too_long", "warning", 10 * _M, subject=DOOR, mute_in_maintenance=True),
    RuleSpec("tamper", "critical", subject=DOOR),
    RuleSpec("dispenser_fault", "critical"),
    RuleSpec("heater_lockout", "warning"),
    RuleSpec("locker_offline", "critical"),
    RuleSpec("slot_fault", "warning", subject=SLOT),
    RuleSpec("unlock_failed", "warning", subject=SLOT, quiet_s=30 * _M,
             jammed_severity="critical"),
    RuleSpec("bank_overdue", "info", subject=BANK, warning_after_s=72 * 60 * _M),
    RuleSpec("pi_overheat", "warning", 0, 80, 70),
    RuleSpec("undervoltage", "warning", 1 * _M),
    RuleSpec("disk_low", "warning", 0, 200, 400),
)}
assert tuple(DEFAULT_RULES) == RULES, "every rule of contract §13, in its order"

_COMMON_KEYS = ("for", "severity", "enabled", "mute_in_maintenance")
_EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "door_open_too_long": ("doors",),
    "tamper": ("quiet",),
    "unlock_failed": ("quiet", "jammed_severity"),
    "bank_overdue": ("warning_after",),
}


def keys_of(name: str) -> tuple[str, ...]:
    """The configuration keys rule ``name`` takes."""
    threshold = ("level", "clear") if name in _THRESHOLDS else ()
    return _COMMON_KEYS + threshold + _EXTRA_KEYS.get(name, ())


def parse_rule(base: RuleSpec, data: Any, path: str) -> RuleSpec:
    """``base`` changed by one rule's mapping from the configuration at ``path``."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"must be a mapping like {{for: 5m, severity: warning}}, "
                          f"not {type(data).__name__}")
    allowed = keys_of(base.name)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", f"is not a key of rule {base.name}; "
                              f"it takes {', '.join(allowed)}")
    changes: dict[str, Any] = {}
    if "for" in data:
        changes["for_s"] = parse_duration(data["for"], f"{path}.for")
    for key in ("severity", "jammed_severity"):
        if key in data:
            value = data[key]
            if value not in SEVERITIES:
                raise ConfigError(f"{path}.{key}", f"must be one of {', '.join(SEVERITIES)}, "
                                  f"not {value!r}")
            changes[key] = value
    for key in ("enabled", "mute_in_maintenance"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ConfigError(f"{path}.{key}", f"must be true or false, not {data[key]!r}")
            changes[key] = data[key]
    if "quiet" in data:
        quiet = data["quiet"]
        changes["quiet_s"] = None if quiet in (None, "never") else \
            _positive_duration(quiet, f"{path}.quiet")
    if "warning_after" in data:
        changes["warning_after_s"] = (None if data["warning_after"] in (None, "never") else
                                      parse_duration(data["warning_after"],
                                                     f"{path}.warning_after"))
    if "doors" in data:
        doors = data["doors"]
        if doors == "any" or doors is None:
            changes["doors"] = None
        elif (isinstance(doors, list) and doors
              and all(isinstance(d, str) and d for d in doors)):
            changes["doors"] = tuple(doors)
        else:
            raise ConfigError(f"{path}.doors", f"must be a list of door names (as in the "
                              f"station's State) or \"any\", not {doors!r}")
    for key in ("level", "clear"):
        if key in data:
            changes[key] = _threshold(base.name, data[key], f"{path}.{key}")
    rule = dataclasses.replace(base, **changes)
    _check_band(rule, path, "clear" if "clear" in data else "level")
    return rule


def _positive_duration(value: Any, key: str) -> float:
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(key, "must be longer than 0s")
    return seconds


def _threshold(name: str, value: Any, key: str) -> float | None:
    spec = _THRESHOLDS[name]
    if spec.unit == "duration":
        return None if value is None else _positive_duration(value, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a {_UNIT_TEXT[spec.unit]}, not {value!r}")
    if spec.unit == "count" and value != int(value):
        raise ConfigError(key, f"must be a whole number of banks, not {value!r}")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise ConfigError(key, f"must be a {_UNIT_TEXT[spec.unit]}, not {value!r}")
    return float(value)


_UNIT_TEXT = {"fraction": "fraction from 0 to 1 (0.25 is a quarter full)",
              "count": "number of banks (0 or more)",
              "number": "number in range", "duration": "duration such as 30m"}


def _check_band(rule: RuleSpec, path: str, key: str) -> None:
    """``clear`` must lie strictly beyond ``level``, or the rule cannot settle."""
    if rule.level is None or rule.clear is None:
        return
    if rule.direction == BELOW and not rule.clear > rule.level:
        raise ConfigError(f"{path}.{key}", f"clear ({_num(rule.clear)}) must be above level "
                          f"({_num(rule.level)}): the rule fires at or below level and "
                          "resolves at or above clear; set both")
    if rule.direction == ABOVE and not rule.clear < rule.level:
        raise ConfigError(f"{path}.{key}", f"clear ({_num(rule.clear)}) must be below level "
                          f"({_num(rule.level)}): the rule fires at or above level and "
                          "resolves at or below clear; set both")


def _num(x: float) -> str:
    return f"{x:g}"


def parse_rules(data: Any, path: str = "rules",
                base: Mapping[str, RuleSpec] = DEFAULT_RULES) -> dict[str, RuleSpec]:
    """Every rule, ``base`` changed by the ``rules:`` mapping at ``path``."""
    if data is None:
        return dict(base)
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"must be a mapping of rule names to settings, "
                          f"not {type(data).__name__}")
    out = dict(base)
    for name, settings in data.items():
        if name not in base:
            raise ConfigError(f"{path}.{name}", f"is not a rule; the rules are "
                              f"{', '.join(base)}")
        if settings is None:
            continue
        out[name] = parse_rule(base[name], settings, f"{path}.{name}")
    return out


@dataclass(frozen=True)
class _Group:
    rules: dict[str, RuleSpec]
    response_time: float


class Rules:
    """The rules of the fleet and of each group, from the hub configuration.

    ``rules``: the ``rules:`` mapping; ``groups``: the ``groups:`` mapping (its
    other keys, such as the router's ``escalate_after``, are left alone).
    Raises :class:`ConfigError` naming the key of the first mistake.
    """

    def __init__(self, rules: Mapping[str, Any] | None = None,
                 groups: Mapping[str, Any] | None = None,
                 response_time: float = DEFAULT_RESPONSE_TIME) -> None:
        self.fleet = parse_rules(rules)
        self.default_response_time = float(response_time)
        self.groups: dict[str, _Group] = {}
        if groups is None:
            return
        if not isinstance(groups, Mapping):
            raise ConfigError("groups", "must be a mapping of group names to settings, "
                              f"not {type(groups).__name__}")
        for name, settings in groups.items():
            path = f"groups.{name}"
            if settings is None:
                settings = {}
            if not isinstance(settings, Mapping):
                raise ConfigError(path, f"must be a mapping, not {type(settings).__name__}")
            respond = self.default_response_time
            if settings.get("response_time") is not None:
                respond = _positive_duration(settings["response_time"],
                                             f"{path}.response_time")
            self.groups[str(name)] = _Group(
                parse_rules(settings.get("rules"), f"{path}.rules", self.fleet), respond)

    @classmethod
    def from_config(cls, config: Any) -> Rules:
        """The rules of a :class:`hub.config.HubConfig`, as built when it was read
        (``alert_rules``); the defaults for a configuration without them."""
        rules = getattr(config, "alert_rules", None)
        return rules if rules is not None else cls()

    def rule_for(self, group: str | None, name: str) -> RuleSpec:
        """Rule ``name`` as it applies to the stations of ``group`` (None: no group)."""
        g = self.groups.get(group) if group is not None else None
        return (g.rules if g is not None else self.fleet)[name]

    def response_time(self, group: str | None) -> float:
        """Seconds for someone to reach a station of ``group``."""
        g = self.groups.get(group) if group is not None else None
        return g.response_time if g is not None else self.default_response_time

    def prediction_band(self, group: str | None, name: str) -> tuple[float, float]:
        """(fire below, clear at or above) in seconds of time left, for a predicted rule."""
        rule = self.rule_for(group, name)
        level = rule.level if rule.level is not None else self.response_time(group)
        clear = rule.clear if rule.clear is not None else level * PREDICTION_CLEAR_FACTOR
        return level, max(clear, level)
