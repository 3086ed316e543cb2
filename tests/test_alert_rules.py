"""The alert rules of contract §13: defaults, overrides per fleet and per group,
and configuration mistakes that name their key (hub/config/rules.py, hub/config/__init__.py)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.alerting.alerts import RULES
from hub.config import parse_hub_config
from hub.config.rules import BANK, DEFAULT_RULES, DOOR, SLOT, Rules
from yizhan.config import ConfigError


def hub_config(**extra: Any):
    return parse_hub_config({"mqtt": {"host": "127.0.0.1"},
                             "database": "sqlite:////tmp/yz-never-opened.db", **extra})


def test_every_rule_of_the_contract_has_a_default() -> None:
    assert tuple(DEFAULT_RULES) == RULES
    for name, rule in DEFAULT_RULES.items():
        assert rule.name == name
        assert rule.severity in ("info", "warning", "critical")
        assert rule.for_s >= 0 and rule.enabled


@pytest.mark.parametrize(("name", "severity", "for_s", "level", "clear", "subject"), [
    ("station_offline", "critical", 120, None, None, None),
    ("water_low", "warning", 0, 0.25, 0.35, None),
    ("water_empty", "critical", 0, 0.05, 0.15, None),
    ("water_predicted_empty", "warning", 0, None, None, None),
    ("chargers_low", "warning", 0, 2, 4, None),
    ("chargers_predicted_empty", "warning", 0, None, None, None),
    ("door_open_too_long", "warning", 600, None, None, DOOR),
    ("tamper", "critical", 0, None, None, DOOR),
    ("dispenser_fault", "critical", 0, None, None, None),
    ("heater_lockout", "warning", 0, None, None, None),
    ("locker_offline", "critical", 0, None, None, None),
    ("slot_fault", "warning", 0, None, None, SLOT),
    ("unlock_failed", "warning", 0, None, None, SLOT),
    ("bank_overdue", "info", 0, None, None, BANK),
    ("pi_overheat", "warning", 0, 80, 70, None),
    ("undervoltage", "warning", 60, None, None, None),
    ("disk_low", "warning", 0, 200, 400, None),
])
def test_defaults(name: str, severity: str, for_s: float, level: Any, clear: Any,
                  subject: Any) -> None:
    rule = Rules().rule_for(None, name)
    assert (rule.severity, rule.for_s, rule.level, rule.clear, rule.subject) == \
        (severity, for_s, level, clear, subject)


def test_refill_rules_and_door_are_muted_in_maintenance_and_jams_are_critical() -> None:
    muted = {n for n, r in DEFAULT_RULES.items() if r.mute_in_maintenance}
    assert muted == {"water_low", "water_empty", "water_predicted_empty", "chargers_low",
                     "chargers_predicted_empty", "door_open_too_long"}
    unlock = DEFAULT_RULES["unlock_failed"]
    assert (unlock.jammed_severity, unlock.quiet_s) == ("critical", 1800)
    assert DEFAULT_RULES["tamper"].quiet_s is None  # a person looks at every tamper


def test_hysteresis_goes_both_ways() -> None:
    low, hot = DEFAULT_RULES["water_low"], DEFAULT_RULES["pi_overheat"]
    assert low.fires_at(0.25) and not low.fires_at(0.26)
    assert not low.clears_at(0.34) and low.clears_at(0.35)
    assert hot.fires_at(80) and not hot.fires_at(79.9)
    assert not hot.clears_at(70.1) and hot.clears_at(70)


def test_fleet_rules_then_group_rules_override_the_defaults() -> None:
    config = hub_config(
        rules={"water_empty": {"for": "0s", "severity": "critical"},
               "door_open_too_long": {"for": "15m", "doors": ["entrance"]},
               "water_low": {"level": 0.2, "clear": 0.3}},
        groups={"chumen": {"response_time": "45m", "escalate_after": "20m",
                           "rules": {"water_low": {"level": 0.3, "clear": 0.4},
                                     "chargers_low": {"level": 3, "clear": 6},
                                     "unlock_failed": {"quiet": "10m"}}},
                "kanmen": None})
    rules = Rules.from_config(config)
    assert rules.rule_for(None, "door_open_too_long").for_s == 900
    assert rules.rule_for(None, "door_open_too_long").doors == ("entrance",)
    assert rules.rule_for("chumen", "door_open_too_long").for_s == 900  # inherited
    assert (rules.rule_for(None, "water_low").level, rules.rule_for(None, "water_low").clear) \
        == (0.2, 0.3)
    assert (rules.rule_for("chumen", "water_low").level,
            rules.rule_for("chumen", "water_low").clear) == (0.3, 0.4)
    assert rules.rule_for("kanmen", "water_low").level == 0.2
    assert rules.rule_for("unknown-group", "water_low").level == 0.2
    assert rules.rule_for("chumen", "chargers_low").clear == 6
    assert rules.rule_for("chumen", "unlock_failed").quiet_s == 600
    assert rules.response_time("chumen") == 2700 and rules.response_time(None) == 3600
    assert rules.prediction_band("chumen", "water_predicted_empty") == (2700, 4050)
    assert config.routing.groups["chumen"].escalate_after == 1200  # the router's, left alone


def test_hub_level_settings_and_their_defaults() -> None:
    config = hub_config()
    assert (config.response_time, config.flap_window, config.flap_max,
            config.maintenance_max) == (3600, 3600, 2, 4 * 3600)
    config = hub_config(response_time="30m", flap_window="20m", flap_max=4,
                        maintenance_max="2h")
    assert (config.response_time, config.flap_window, config.flap_max,
            config.maintenance_max) == (1800, 1200, 4, 7200)
    assert Rules.from_config(config).response_time("any") == 1800


def test_a_rule_can_be_switched_off_and_predictions_given_their_own_horizon() -> None:
    rules = Rules({"bank_overdue": {"enabled": False},
                   "chargers_predicted_empty": {"level": "2h", "clear": "3h"}})
    assert not rules.rule_for(None, "bank_overdue").enabled
    assert rules.prediction_band(None, "chargers_predicted_empty") == (7200, 10800)


@pytest.mark.parametrize(("config", "key", "words"), [
    ({"rules": {"water_lo": {"level": 0.2}}}, "rules.water_lo", "is not a rule"),
    ({"rules": {"water_low": {"levle": 0.2}}}, "rules.water_low.levle", "takes for, severity"),
    ({"rules": {"tamper": {"level": 1}}}, "rules.tamper.level", "is not a key of rule tamper"),
    ({"rules": {"door_open_too_long": {"for": "ten minutes"}}},
     "rules.door_open_too_long.for", "duration such as 30s"),
    ({"rules": {"water_empty": {"severity": "urgent"}}}, "rules.water_empty.severity",
     "info, warning, critical"),
    ({"rules": {"water_low": {"level": 25}}}, "rules.water_low.level", "fraction from 0 to 1"),
    ({"rules": {"water_low": {"level": 0.4}}}, "rules.water_low.level",
     "clear (0.35) must be above level (0.4)"),
    ({"rules": {"pi_overheat": {"clear": 85}}}, "rules.pi_overheat.clear",
     "must be below level (80)"),
    ({"rules": {"chargers_low": {"level": 2.5}}}, "rules.chargers_low.level", "whole number"),
    ({"rules": {"water_low": "0.3"}}, "rules.water_low", "must be a mapping"),
    ({"rules": {"water_low": {"enabled": "no"}}}, "rules.water_low.enabled", "true or false"),
    ({"rules": {"door_open_too_long": {"doors": "entrance"}}},
     "rules.door_open_too_long.doors", "list of door names"),
    ({"rules": {"unlock_failed": {"quiet": "0s"}}}, "rules.unlock_failed.quiet",
     "longer than 0s"),
    ({"groups": {"chumen": {"rules": {"water_low": {"level": 0.5}}}}},
     "groups.chumen.rules.water_low.level", "must be above level (0.5)"),
    ({"groups": {"chumen": {"response_time": "soon"}}}, "groups.chumen.response_time",
     "duration"),
    ({"groups": {"chumen": {"response_time": "0s"}}}, "groups.chumen.response_time",
     "longer than 0s"),
    ({"groups": {"chumen": "45m"}}, "groups.chumen", "must be a mapping"),
    ({"groups": ["chumen"]}, "groups", "must be a mapping"),
    ({"response_time": "0s"}, "response_time", "longer than 0s"),
    ({"flap_max": 0}, "flap_max", "at least 1"),
    ({"maintenance_max": "never"}, "maintenance_max", "duration"),
])
def test_a_bad_rule_configuration_names_its_key(config: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        hub_config(**config)
    assert caught.value.key == key
    assert words in caught.value.problem, caught.value.problem
