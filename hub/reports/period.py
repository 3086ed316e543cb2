"""The period a report covers: a calendar month (``2026-11``) or a quarter
(``2026-Q4``), in the hub's time zone, and the period before it.

>>> p = Period.parse("2026-Q1"); (p.first, p.after, p.previous().key)
(datetime.date(2026, 1, 1), datetime.date(2026, 4, 1), '2025-Q4')
>>> Period.parse("2026-01").previous().key
'2025-12'
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

#: Years a report may name: the stations did not exist before, and a year past
#: 9998 would make ``after`` overflow the calendar.
FIRST_YEAR, LAST_YEAR = 2000, 9998


class BadPeriod(ValueError):
    """A period the report cannot use; the message says what a good one is."""


@dataclass(frozen=True)
class Period:
    kind: str  # month, quarter
    year: int
    n: int  # month 1..12 or quarter 1..4

    @classmethod
    def parse(cls, raw: str | None) -> Period:
        # Only ASCII digits: int() would take full-width ones and "+1".
        text = (raw or "").strip()
        if len(text) == 7 and text[4] == "-" and text.isascii():
            year, rest = text[:4], text[5:]
            if year.isdigit() and rest.isdigit():
                return cls._checked("month", int(year), int(rest), 12)
            if rest[:1] in "Qq" and rest[1:].isdigit():
                return cls._checked("quarter", int(year), int(rest[1:]), 4)
        raise BadPeriod("period must be a month YYYY-MM or a quarter YYYY-Qn")

    @classmethod
    def _checked(cls, kind: str, year: int, n: int, most: int) -> Period:
        if not FIRST_YEAR <= year <= LAST_YEAR or not 1 <= n <= most:
            raise BadPeriod(f"period must be a month YYYY-MM or a quarter YYYY-Qn "
                            f"of the years {FIRST_YEAR}..{LAST_YEAR}")
        return cls(kind, year, n)

    @classmethod
    def containing(cls, day: dt.date, kind: str = "month") -> Period:
        if kind == "quarter":
            return cls("quarter", day.year, (day.month - 1) // 3 + 1)
        return cls("month", day.year, day.month)

    @property
    def key(self) -> str:
        return f"{self.year}-Q{self.n}" if self.kind == "quarter" else f"{self.year}-{self.n:02d}"

    @property
    def first(self) -> dt.date:
        month = (self.n - 1) * 3 + 1 if self.kind == "quarter" else self.n
        return dt.date(self.year, month, 1)

    @property
    def after(self) -> dt.date:
        """The first day after the period."""
        months = 3 if self.kind == "quarter" else 1
        m = self.first.month - 1 + months
        return dt.date(self.year + m // 12, m % 12 + 1, 1)

    def previous(self) -> Period:
        if self.n > 1:
            return Period(self.kind, self.year, self.n - 1)
        return Period(self.kind, self.year - 1, 4 if self.kind == "quarter" else 12)

    def bounds_ms(self, tz: dt.tzinfo) -> tuple[int, int]:
        """[from, to) in ms: midnight of its first day to midnight after its last,
        where the stations are."""
        def ms(day: dt.date) -> int:
            return int(dt.datetime.combine(day, dt.time(), tz).timestamp() * 1000)
        return ms(self.first), ms(self.after)

    def label(self, lang: str) -> str:
        if lang == "zh":
            if self.kind == "quarter":
                return f"{self.year}年第{'一二三四'[self.n - 1]}季度"
            return f"{self.year}年{self.n}月"
        if self.kind == "quarter":
            return f"Q{self.n} {self.year}"
        return self.first.strftime("%B %Y")
