"""On-call rotas (``oncall:`` in the hub configuration, docs/routing.md): who is
on call, at which hours, for which groups of stations; checked once at start.

>>> rotas = parse_oncall(Section({"oncall": {"chumen": [
...     {"who": "li", "hours": "20:00-08:00", "groups": ["chumen"]}]}}))
>>> rotas["chumen"].on_call(group="chumen", weekday=0, minute=22 * 60)
('li',)

A route names a rota (``oncall: chumen``); the router @-mentions whoever the rota
has on call when it tells of an alert nobody was given to yet. ``who`` is a staff
id of the Directory, where the phone number (and a Feishu open id) is kept: the
configuration names people, the Directory says how to reach them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from yizhan.config import ConfigError, Section, known_keys

#: A staff id as the Directory takes it (hub/fleet/directory_fields.py's
#: STAFF_ID_PATTERN, the same by test: the configuration is read before the
#: fleet's modules and may not import them).
STAFF_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60
#: A rota is read by a person: past this many shifts it is a spreadsheet.
MAX_SHIFTS = 200
_SHIFT_KEYS = ("who", "hours", "days", "groups")
_ROTA_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_HOURS = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


@dataclass(frozen=True)
class Shift:
    """``who`` is on call from ``start`` to ``end`` (minutes of the day, in the
    hub's time zone; ``end <= start`` runs past midnight) on the ``days`` it
    starts (0 = Monday), for stations of ``groups`` (empty: every group)."""

    who: str
    start: int = 0
    end: int = DAY_MINUTES
    days: frozenset[int] = frozenset(range(7))
    groups: frozenset[str] = frozenset()

    def covers(self, *, group: str | None, weekday: int, minute: int) -> bool:
        if self.groups and group not in self.groups:
            return False
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Past midnight: the evening of a day it starts, or the morning after one.
        return ((weekday in self.days and minute >= self.start)
                or ((weekday - 1) % 7 in self.days and minute < self.end))


@dataclass(frozen=True)
class Rota:
    name: str
    shifts: tuple[Shift, ...]

    def on_call(self, *, group: str | None, weekday: int, minute: int) -> tuple[str, ...]:
        """The staff ids on call then for a station of ``group``, each once, in
        the rota's order (two shifts may overlap at a handover)."""
        return tuple(dict.fromkeys(s.who for s in self.shifts
                                   if s.covers(group=group, weekday=weekday, minute=minute)))


def parse_oncall(root: Section) -> dict[str, Rota]:
    """``oncall:``: rota name → list of shifts, checked."""
    sec = root.section("oncall")
    if sec is None:
        return {}
    rotas: dict[str, Rota] = {}
    for name, entries in sec.data.items():
        key = sec.key(str(name))
        if not isinstance(name, str) or not re.fullmatch(_ROTA_NAME, name):
            raise ConfigError(key, "a rota's name is 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(key, "must be a non-empty list of shifts like "
                              "{who: li, hours: \"20:00-08:00\", groups: [chumen]}")
        if len(entries) > MAX_SHIFTS:
            raise ConfigError(key, f"has {len(entries)} shifts; at most {MAX_SHIFTS}")
        shifts = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{key}[{i}]", "must be a mapping like {who: li, "
                                  "hours: \"08:00-20:00\"}")
            shifts.append(_shift(Section(entry, f"{key}[{i}]")))
        rotas[name] = Rota(name, tuple(shifts))
    return rotas


def _shift(sec: Section) -> Shift:
    known_keys(sec, _SHIFT_KEYS)
    who = sec.data.get("who")
    if not isinstance(who, str) or not re.fullmatch(STAFF_ID_PATTERN, who):
        raise ConfigError(sec.key("who"), "must be a staff id of the Directory (as the "
                          "kiosk's keyboard types it: a-z, 0-9, '.', '_', '-')")
    start, end = _hours(sec)
    return Shift(who=who, start=start, end=end, days=_days(sec), groups=_groups(sec))


def _hours(sec: Section) -> tuple[int, int]:
    """``hours: "08:00-20:00"``, ``"20:00-08:00"`` (past midnight), ``"00:00-24:00"``."""
    value = sec.data.get("hours")
    if value is None:
        return 0, DAY_MINUTES
    m = _HOURS.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ConfigError(sec.key("hours"), "must be like \"08:00-20:00\" (hours in the "
                          f"hub's timezone; quoted), not {str(value)[:40]!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > DAY_MINUTES:
        raise ConfigError(sec.key("hours"), f"{value!r} is not a time of day from 00:00 "
                          "to 24:00")
    if start == end:
        raise ConfigError(sec.key("hours"), f"{value!r} is no time at all; for the whole "
                          "day leave hours out")
    if end == 0:
        end = DAY_MINUTES  # "20:00-00:00": until midnight
    return start, end


def _days(sec: Section) -> frozenset[int]:
    value = sec.data.get("days")
    if value is None:
        return frozenset(range(7))
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ConfigError(sec.key("days"), f"must be a list of {', '.join(DAYS)}")
    days = set()
    for v in values:
        if not isinstance(v, str) or v.lower() not in DAYS:
            raise ConfigError(sec.key("days"), f"{str(v)[:20]!r} is not one of "
                              f"{', '.join(DAYS)}")
        days.add(DAYS.index(v.lower()))
    return frozenset(days)


def _groups(sec: Section) -> frozenset[str]:
    value = sec.data.get("groups")
    if value is None:
        return frozenset()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and v for v in values):
        raise ConfigError(sec.key("groups"), "must be a group or a non-empty list of groups")
    return frozenset(values)
