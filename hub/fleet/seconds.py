"""Each station's running account of seconds up, down, unknown and in maintenance.

``yizhan_station_seconds_total{state}`` is read off these accounts, so that
Prometheus can compute availability over any window (``increase()`` of up over
up + down), not only the ledger's 24h/7d/30d. An account only moves forward:
it has counted time up to ``at_ms`` and each ``accrue`` adds [at_ms, until_ms)
classified exactly as ``hub.fleet.ledger.tally`` classifies it (unknown while
the hub was not running or the state is not known, then maintenance, then the
station's own state), so over a window the counters agree with
``yizhan_station_availability_ratio``.

>>> from hub.fleet.ledger import RunCoverage
>>> acc = Account(0)
>>> accrue(acc, [(0, UP), (60_000, DOWN)], [], RunCoverage([(0, None)], 90_000), 90_000)
>>> acc.seconds()
(60.0, 30.0, 0.0, 0.0)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.fleet.ledger import RunCoverage

UP, DOWN, UNKNOWN, MAINTENANCE = "up", "down", "unknown", "maintenance"
#: The ``state`` label's values, in the order an account keeps them.
KINDS = (UP, DOWN, UNKNOWN, MAINTENANCE)
_INDEX = {UP: 0, DOWN: 1}


@dataclass(slots=True)
class Account:
    """Time counted from a station's first change point up to ``at_ms``."""

    at_ms: int
    ms: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # in KINDS' order

    def seconds(self) -> tuple[float, float, float, float]:
        up, down, unknown, maintenance = self.ms
        return up / 1000, down / 1000, unknown / 1000, maintenance / 1000


def _state_at(points: Sequence[tuple[int, object]], at_ms: int) -> tuple[int, object]:
    """(index of the first point after ``at_ms``, the value holding at ``at_ms``)."""
    i = bisect_right(points, at_ms, key=lambda p: p[0])
    return i, (points[i - 1][1] if i else None)


def accrue(account: Account, points: Sequence[tuple[int, str]],
           switches: Sequence[tuple[int, bool]], coverage: RunCoverage,
           until_ms: int) -> None:
    """Count [account.at_ms, until_ms) into ``account`` and move it to ``until_ms``.

    ``points`` (the station's (at_ms, state)) and ``switches`` (maintenance
    (at_ms, on)) are in time order and reach back to the last one at or before
    ``account.at_ms``; ``coverage`` says when the hub ran. Nothing happens when
    ``until_ms`` is not after ``account.at_ms``: the account never goes back.
    """
    a = account.at_ms
    if until_ms <= a:
        return
    i, state = _state_at(points, a)
    j, on = _state_at(switches, a)
    ms = account.ms
    n, m = len(points), len(switches)
    while True:
        b = min(points[i][0] if i < n else until_ms,
                switches[j][0] if j < m else until_ms, until_ms)
        if b > a:
            vouched = coverage.covered(a, b)
            ms[2] += (b - a) - vouched
            if state is None or state == UNKNOWN:
                ms[2] += vouched
            elif on:
                ms[3] += vouched
            else:
                ms[_INDEX[state]] += vouched  # type: ignore[index]
        if b >= until_ms:
            break
        a = b
        while i < n and points[i][0] <= a:
            state = points[i][1]
            i += 1
        while j < m and switches[j][0] <= a:
            on = bool(switches[j][1])
            j += 1
    account.at_ms = until_ms
