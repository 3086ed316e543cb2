"""The routing keys of the hub configuration (docs/routing.md): ``routes:``, the
routing keys of ``groups.<group>`` and ``timezone:``, checked once at start.

>>> routing = parse_routing(Section({"routes": [{"notify": ["ops-webhook"]}]}), ["ops-webhook"])
>>> routing.routes[0].tiers[0].notify
('ops-webhook',)

A route matches alerts by the station's ``group``, its ``sid``, the ``rule`` and
the ``severity``; its ``notify:`` list is tier 0, each entry of ``escalate:`` a
further tier. A route (and each tier) may name an on-call rota of ``oncall:``
(``hub/config/oncall.py``) whose person on call is @-mentioned. What the router
does with them is ``hub/alerting/routing.py``.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.config.notifiers import NOTIFIER_NAME
from hub.config.oncall import Rota, parse_oncall
from hub.config.rules import NOTIFY_FAILING, RULES, SEVERITIES
from yizhan.config import ConfigError, Section, parse_duration

MATCH_KEYS = ("group", "sid", "rule", "severity")
DEFAULT_TEST_EVERY = 86400.0
DEFAULT_TEST_AT = "09:00"
_OFF = ("off", "none", "never", "no")


@dataclass(frozen=True)
class Tier:
    """Who is told at one level of a route; ``after`` (seconds) is how long the tier
    before it has to acknowledge first (None for tier 0, and for a tier that takes
    its group's ``escalate_after``)."""

    notify: tuple[str, ...]
    after: float | None = None
    oncall: str | None = None  # the rota whose person on call this tier @-mentions


@dataclass(frozen=True)
class Route:
    name: str
    match: Mapping[str, tuple[str, ...]]  # key -> accepted values; absent key: any
    tiers: tuple[Tier, ...]
    remind_every: Mapping[str, float | None] = field(default_factory=dict)  # by severity
    test_every: float | None = DEFAULT_TEST_EVERY
    test_at: tuple[int, int] = (9, 0)
    #: @-mention the alert's assignee or the person on call (``mention: off``: nobody).
    mention: bool = True

    def matches(self, *, group: str | None, sid: str, rule: str, severity: str) -> bool:
        facts = {"group": group, "sid": sid, "rule": rule, "severity": severity}
        return all(facts[key] in accepted for key, accepted in self.match.items())

    @property
    def notifiers(self) -> tuple[str, ...]:
        """Every notifier of every tier, each once, in order."""
        return tuple(dict.fromkeys(n for t in self.tiers for n in t.notify))


@dataclass(frozen=True)
class GroupRouting:
    """The routing keys of ``groups.<group>`` (the engine reads its own keys there)."""

    escalate_after: float | None = None
    remind_every: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingConfig:
    routes: tuple[Route, ...] = ()
    groups: Mapping[str, GroupRouting] = field(default_factory=dict)
    timezone: str | None = None  # for test_at, rotas and messages; None: China Standard Time
    rotas: Mapping[str, Rota] = field(default_factory=dict)  # ``oncall:``, by name


def parse_routing(root: Section, notifier_names: Iterable[str]) -> RoutingConfig:
    """``routes:``, the routing keys of ``groups:`` and ``timezone:``, checked."""
    known = set(notifier_names)
    tz = root.str("timezone")
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError("timezone", f"unknown time zone {tz!r} "
                              "(an IANA name such as Asia/Shanghai)") from None
    rotas = parse_oncall(root)
    routes = []
    names: set[str] = set()
    for i, entry in enumerate(root.list("routes")):
        key = f"routes[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(key, "must be a mapping like {match: {}, notify: [ops-webhook]}")
        route = _parse_route(Section(entry, key), i, known, rotas)
        if route.name in names:
            raise ConfigError(f"{key}.name", f"route {route.name!r} is named twice")
        names.add(route.name)
        routes.append(route)
    groups: dict[str, GroupRouting] = {}
    grp_sec = root.section("groups")
    if grp_sec is not None:
        for name in grp_sec.data:
            sec = grp_sec.section(str(name))
            if sec is None:
                continue
            groups[str(name)] = GroupRouting(
                escalate_after=_positive_duration(sec, "escalate_after"),
                remind_every=_remind_every(sec))
    return RoutingConfig(routes=tuple(routes), groups=groups, timezone=tz, rotas=rotas)


def _parse_route(sec: Section, i: int, known: set[str], rotas: Mapping[str, Rota]) -> Route:
    name = sec.str("name", f"route-{i + 1}", pattern=NOTIFIER_NAME)  # named as notifiers are
    match: dict[str, tuple[str, ...]] = {}
    match_sec = sec.section("match")
    if match_sec is None and "match" not in sec.data:
        match_sec = Section({}, sec.key("match"))
    for key, value in (match_sec.data if match_sec else {}).items():
        path = match_sec.key(str(key))
        if key not in MATCH_KEYS:
            raise ConfigError(path, f"a route matches by {', '.join(MATCH_KEYS)}, not {key!r}")
        values = (value,) if isinstance(value, str) else value
        if not isinstance(values, list | tuple) or not values or not all(
                isinstance(v, str) and v for v in values):
            raise ConfigError(path, "must be a name or a non-empty list of names")
        allowed = {"rule": (*RULES, NOTIFY_FAILING), "severity": SEVERITIES}.get(key)
        for v in values:
            if allowed and v not in allowed:
                raise ConfigError(path, f"{v!r} is not one of {', '.join(allowed)}")
        match[key] = tuple(values)

    oncall = _rota(sec, rotas)
    tiers = [Tier(_notify_list(sec, "notify", known, required=True), oncall=oncall)]
    for j, step in enumerate(sec.list("escalate")):
        key = sec.key(f"escalate[{j}]")
        if not isinstance(step, Mapping):
            raise ConfigError(key, "must be a mapping like {after: 15m, notify: [...]}")
        step_sec = Section(step, key)
        tiers.append(Tier(_notify_list(step_sec, "notify", known, required=True),
                          after=_positive_duration(step_sec, "after"),
                          oncall=_rota(step_sec, rotas) or oncall))

    test_every: float | None = DEFAULT_TEST_EVERY
    if "test_every" in sec.data:
        test_every = _optional_duration(sec, "test_every")
        if test_every is not None and test_every < 60:
            raise ConfigError(sec.key("test_every"), "must be at least 1m (or off)")
    test_at = sec.raw("test_at", DEFAULT_TEST_AT)
    if isinstance(test_at, int) and not isinstance(test_at, bool):
        # YAML 1.1 reads an unquoted 9:30 as a sexagesimal number: 570 minutes.
        test_at = f"{test_at // 60}:{test_at % 60:02d}"
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(test_at))
    if not m:
        raise ConfigError(sec.key("test_at"),
                          f"must be a time of day like \"09:00\", not {test_at!r}")
    return Route(name=name, match=match, tiers=tuple(tiers), remind_every=_remind_every(sec),
                 test_every=test_every, test_at=(int(m[1]), int(m[2])),
                 mention=_mention(sec))


def _mention(sec: Section) -> bool:
    value = sec.data.get("mention", True)
    if value is True or (isinstance(value, str) and value.lower() in ("on", "yes", "true")):
        return True
    if value is False or (isinstance(value, str) and value.lower() in _OFF):
        return False
    raise ConfigError(sec.key("mention"), "must be on or off")


def _rota(sec: Section, rotas: Mapping[str, Rota]) -> str | None:
    """``oncall: <rota>``: a rota of ``oncall:``."""
    name = sec.data.get("oncall")
    if name is None:
        return None
    if not isinstance(name, str) or name not in rotas:
        listed = ", ".join(sorted(rotas)) or "none"
        raise ConfigError(sec.key("oncall"), f"no rota named {str(name)[:64]!r} in oncall: "
                          f"(listed: {listed})")
    return name


def _notify_list(sec: Section, name: str, known: set[str], required: bool) -> tuple[str, ...]:
    value = sec.data.get(name)
    if value is None:
        if required:
            raise ConfigError(sec.key(name), "is required: the notifiers to tell")
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ConfigError(sec.key(name), "must be a non-empty list of notifier names")
    for v in values:
        if v not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ConfigError(sec.key(name),
                              f"no notifier named {v!r} in notifiers: (listed: {listed})")
    return tuple(dict.fromkeys(values))


def _is_off(value: Any) -> bool:
    # YAML 1.1 reads an unquoted off/no as false.
    return value is False or value == 0 or (isinstance(value, str) and value.lower() in _OFF)


def _optional_duration(sec: Section, name: str) -> float | None:
    value = sec.data.get(name)
    if value is None or _is_off(value):
        return None
    return parse_duration(value, sec.key(name))


def _positive_duration(sec: Section, name: str) -> float | None:
    value = sec.duration(name)
    if value is not None and value <= 0:
        raise ConfigError(sec.key(name), "must be longer than 0s")
    return value


def _remind_every(sec: Section) -> dict[str, float | None]:
    """``remind_every: 2h`` (every severity), ``off``, or ``{critical: 30m, info: off}``."""
    name = "remind_every"
    if name not in sec.data:
        return {}
    value = sec.data[name]
    if isinstance(value, Mapping):
        out = {}
        sub = Section(value, sec.key(name))
        for sev in value:
            if sev not in SEVERITIES:
                raise ConfigError(sub.key(str(sev)),
                                  f"a severity is one of {', '.join(SEVERITIES)}")
            out[sev] = _checked_interval(sub, sev)
        return out
    every = _checked_interval(sec, name)
    return dict.fromkeys(SEVERITIES, every)


def _checked_interval(sec: Section, name: str) -> float | None:
    every = _optional_duration(sec, name)
    if every is not None and every < 60:
        raise ConfigError(sec.key(name), "must be at least 1m (or off)")
    return every
