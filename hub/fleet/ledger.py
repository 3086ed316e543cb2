"""The uptime ledger: when each station (and each of its parts) was up, on the hub's clock.

The ledger keeps *change points*: "at 02:13:07.120 the station went down", "at
02:40 the lockers came back", "at 09:00 staff started maintenance". Availability
is read off those points for any window (contract §11):

    availability = up ÷ (up + down)

and the two kinds of time that are neither:

* ``unknown`` — the hub was not running (outside every ``hub_runs`` interval, so
  the hub cannot vouch for what happened), before the first change point of the
  station, and, for the lockers, dispenser and kiosk, whenever the station
  itself is not up (a silent station tells us nothing about its locker);
* ``maintenance`` — staff are working on the station; it overrides up and down,
  but not unknown.

Time is explicit (design principle 5): every function here takes the instant
it is about; only ``Ledger.uptime`` asks its clock what "now" is.

>>> run = [(0, None)]                                  # the hub has run since t=0
>>> u = tally([(0, UP), (60_000, DOWN), (90_000, UP)], 0, 120_000, runs=run)
>>> u.up_s, u.down_s, u.availability
(90.0, 30.0, 0.75)
>>> u.outages
(Outage(start_ms=60000, end_ms=90000, duration_s=30.0),)

``docs/uptime.md`` explains the numbers for the ops lead.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hub.fleet.seconds import Account, accrue
from hub.storage.schema import hub_runs, ledger
from hub.storage.writer import Rows
from yizhan.clock import Clock

if TYPE_CHECKING:
    from hub.storage.store import Store
    from hub.storage.writer import Writer

log = logging.getLogger(__name__)

UP, DOWN, UNKNOWN, MAINTENANCE = "up", "down", "unknown", "maintenance"
STATES = (UP, DOWN, UNKNOWN)

STATION = "station"
COMPONENTS = (STATION, "lockers", "dispenser", "kiosk")
#: Maintenance is stored in the ``ledger`` table as its own component, "on"/"off".
MAINTENANCE_COMPONENT = "maintenance"
_ON, _OFF = "on", "off"

#: The windows of ``yizhan_station_availability_ratio{window=...}`` (contract §12).
WINDOWS: Mapping[str, int] = {
    "24h": 24 * 3600_000,
    "7d": 7 * 24 * 3600_000,
    "30d": 30 * 24 * 3600_000,
}

Point = tuple[int, str]  # (at_ms, state)
Switch = tuple[int, bool]  # (at_ms, maintenance on)
Run = tuple[int, int | None]  # (started_ms, end_ms); None: running until now


class LedgerError(ValueError):
    """A mark the ledger cannot record: an unknown component, state or window."""


# ---------------------------------------------------------------------------
# What the API returns


@dataclass(frozen=True, slots=True)
class Outage:
    """A maximal stretch of ``down`` time.

    ``start_ms`` is when the station went down, even before the window asked
    about; ``end_ms`` is None while it is still down at the end of the window
    (or now); ``duration_s`` counts only the part inside the window.

    >>> Outage(1_000, None, 4.0).to_dict()
    {'start': 1000, 'end': None, 'duration_s': 4.0}
    """

    start_ms: int
    end_ms: int | None
    duration_s: float

    @property
    def ongoing(self) -> bool:
        return self.end_ms is None

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start_ms, "end": self.end_ms, "duration_s": self.duration_s}


@dataclass(frozen=True, slots=True)
class Uptime:
    """How one station (or one of its parts) spent the window [from_ms, to_ms).

    The four kinds of time are whole milliseconds and add up to the window;
    ``up_s`` and friends are the same in seconds, as contract §11 reports them.

    >>> u = Uptime(0, 10_000, up_ms=6_000, down_ms=2_000, unknown_ms=2_000,
    ...            maintenance_ms=0, outages=(), mttr_s=None, mtbf_s=None)
    >>> u.availability, u.to_dict()["unknown_s"]
    (0.75, 2.0)
    """

    from_ms: int
    to_ms: int
    up_ms: int
    down_ms: int
    unknown_ms: int
    maintenance_ms: int
    outages: tuple[Outage, ...]
    #: Mean full duration of the outages that ended inside the window.
    mttr_s: float | None
    #: Up time ÷ the number of outages that started inside the window.
    mtbf_s: float | None

    @property
    def availability(self) -> float | None:
        seen = self.up_ms + self.down_ms
        return self.up_ms / seen if seen else None

    @property
    def up_s(self) -> float:
        return self.up_ms / 1000

    @property
    def down_s(self) -> float:
        return self.down_ms / 1000

    @property
    def unknown_s(self) -> float:
        return self.unknown_ms / 1000

    @property
    def maintenance_s(self) -> float:
        return self.maintenance_ms / 1000

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/stations/{sid}/uptime`` (contract §11)."""
        return {
            "availability": self.availability,
            "up_s": self.up_s,
            "down_s": self.down_s,
            "unknown_s": self.unknown_s,
            "maintenance_s": self.maintenance_s,
            "outages": [o.to_dict() for o in self.outages],
            "mttr_s": self.mttr_s,
            "mtbf_s": self.mtbf_s,
        }


# ---------------------------------------------------------------------------
# The pure computation: change points in, time accounts out. No I/O.


def _in_time_order(points: Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
    # A stable sort: of two points at the same millisecond the later one given wins,
    # as the later row (higher id) does in the database.
    return sorted(points, key=lambda p: p[0])


def _merge_runs(runs: Iterable[Run], until_ms: int) -> list[tuple[int, int]]:
    """Hub runs as sorted, disjoint [start, end) intervals; an open run ends at ``until_ms``.

    Runs may overlap (a restart on a clock that stepped back, or several hub
    workers sharing one database): the hub vouched for any instant one of them covered.
    """
    spans = sorted((s, until_ms if e is None else e) for s, e in runs)
    merged: list[list[int]] = []
    for s, e in spans:
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _classify(state: str | None, station_up: bool, maintenance: bool, vouched: bool) -> str:
    """The rules, in order: unknown overrides all, then maintenance, then the state."""
    if not vouched or not station_up or state is None or state == UNKNOWN:
        return UNKNOWN
    if maintenance:
        return MAINTENANCE
    return state


def tally(points: Iterable[Point], from_ms: int, to_ms: int, *,
          runs: Iterable[Run],
          maintenance: Iterable[Switch] = (),
          station: Iterable[Point] | None = None,
          since_ms: int | None = None,
          now_ms: int | None = None) -> Uptime:
    """Account for every millisecond of [from_ms, to_ms) from one component's change points.

    ``points``: (at_ms, state) of the component, state in up/down/unknown; a point
    holds until the next one, and before the first the component is unknown.
    ``runs``: when the hub ran, (started_ms, end_ms) with end None for the current run.
    ``maintenance``: (at_ms, on) switches; off before the first.
    ``station``: the station's own points when ``points`` are a part's (lockers,
    dispenser, kiosk): the part is unknown whenever the station is not up.
    ``since_ms``: the caller passes no history before this instant (it cut the
    points there), so time before it is unknown. ``now_ms``: time from now on is
    unknown — the hub cannot vouch for the future.

    Outages are the maximal down stretches that touch the window. One that the
    hub itself was not running for part of is reported as two outages with unknown
    time between them: the hub cannot say the station stayed down meanwhile.

    >>> u = tally([(10_000, UP), (40_000, DOWN)], 0, 60_000,
    ...           runs=[(0, 50_000), (55_000, None)], now_ms=60_000)
    >>> (u.up_s, u.down_s, u.unknown_s)
    (30.0, 15.0, 15.0)
    >>> [(o.start_ms, o.end_ms) for o in u.outages]  # no hub from 50 s to 55 s
    [(40000, 50000), (55000, None)]
    """
    if to_ms < from_ms:
        raise ValueError(f"the window ends before it starts: [{from_ms}, {to_ms})")
    horizon = to_ms if now_ms is None else max(from_ms, min(to_ms, now_ms))
    own = _in_time_order(p for p in points if p[0] < horizon)
    parent = None if station is None else _in_time_order(p for p in station if p[0] < horizon)
    switches = _in_time_order(m for m in maintenance if m[0] < horizon)
    vouched = _merge_runs(runs, horizon)

    # Every instant where some input changes; between two of them nothing does.
    cuts = {from_ms, horizon}
    cuts.update(at for at, _ in own)
    cuts.update(at for at, _ in switches)
    if parent is not None:
        cuts.update(at for at, _ in parent)
    for s, e in vouched:
        cuts.update((s, e))
    if since_ms is not None:
        cuts.add(since_ms)
    timeline = sorted(c for c in cuts if c <= horizon)

    # Sweep the cuts once, each input with its own cursor, merging equal neighbours
    # into (start, end, kind) stretches that cover [timeline[0], horizon).
    stretches: list[list[Any]] = []
    i_own = i_parent = i_switch = i_run = 0
    state: str | None = None
    station_state: str | None = None
    on = False
    for a, b in itertools.pairwise(timeline):
        while i_own < len(own) and own[i_own][0] <= a:
            state = own[i_own][1]
            i_own += 1
        if parent is not None:
            while i_parent < len(parent) and parent[i_parent][0] <= a:
                station_state = parent[i_parent][1]
                i_parent += 1
        while i_switch < len(switches) and switches[i_switch][0] <= a:
            on = bool(switches[i_switch][1])
            i_switch += 1
        while i_run < len(vouched) and vouched[i_run][1] <= a:
            i_run += 1
        running = i_run < len(vouched) and vouched[i_run][0] <= a
        known = since_ms is None or a >= since_ms
        kind = _classify(state, parent is None or station_state == UP, on, running and known)
        if stretches and stretches[-1][2] == kind:
            stretches[-1][1] = b
        else:
            stretches.append([a, b, kind])

    spent = {UP: 0, DOWN: 0, UNKNOWN: to_ms - horizon, MAINTENANCE: 0}
    outages: list[Outage] = []
    for a, b, kind in stretches:
        lo, hi = max(a, from_ms), min(b, horizon)
        if lo >= hi:
            continue
        spent[kind] += hi - lo
        if kind == DOWN:
            # Down at the window's last instant: for all this window knows, it goes on.
            outages.append(Outage(a, None if b >= horizon else b, (hi - lo) / 1000))

    repaired = [(o.end_ms - o.start_ms) / 1000 for o in outages if o.end_ms is not None]
    failures = sum(1 for o in outages if o.start_ms >= from_ms)
    return Uptime(
        from_ms, to_ms,
        up_ms=spent[UP], down_ms=spent[DOWN], unknown_ms=spent[UNKNOWN],
        maintenance_ms=spent[MAINTENANCE],
        outages=tuple(outages),
        mttr_s=sum(repaired) / len(repaired) if repaired else None,
        mtbf_s=spent[UP] / 1000 / failures if failures else None,
    )


class RunCoverage:
    """How much of any stretch of time the hub was running, in O(log runs).

    Built once per refresh and shared by every station: what differs between
    stations is their change points, not when the hub ran.

    >>> cov = RunCoverage([(0, 10), (20, None)], until_ms=30)
    >>> cov.covered(5, 25)
    10
    """

    def __init__(self, runs: Iterable[Run], until_ms: int) -> None:
        self._runs = _merge_runs(runs, until_ms)
        self._starts = [s for s, _ in self._runs]
        self._before: list[int] = []  # run time before each run starts
        total = 0
        for s, e in self._runs:
            self._before.append(total)
            total += e - s

    def _upto(self, t: int) -> int:
        i = bisect_right(self._starts, t) - 1
        if i < 0:
            return 0
        s, e = self._runs[i]
        return self._before[i] + min(t, e) - s

    def covered(self, a: int, b: int) -> int:
        """Milliseconds of [a, b) during which the hub ran."""
        return self._upto(b) - self._upto(a) if a < b else 0


def window_availability(points: Sequence[Point], maintenance: Sequence[Switch],
                        coverage: RunCoverage, now_ms: int,
                        windows: Sequence[int]) -> list[float | None]:
    """The availability of a station over each of the last ``windows`` ms up to now.

    The fast path behind ``/metrics``: up and down only (no outages), one pass
    over the station's points for every window at once, runs looked up in
    ``coverage``. ``points`` and ``maintenance`` are in time order and need not
    reach further back than the last point before the longest window. Agrees
    with ``tally(...).availability`` — the tests hold it to that.

    >>> cov = RunCoverage([(0, None)], until_ms=100)
    >>> window_availability([(0, UP), (90, DOWN)], [], cov, 100, [20, 100])
    [0.5, 0.9]
    """
    up = [0] * len(windows)
    down = [0] * len(windows)
    starts = [now_ms - w for w in windows]
    # Walk both inputs merged in time order; a stretch [a, b) has one kind.
    i = j = 0
    state: str | None = None
    on = False
    a = min(starts)
    n, m = len(points), len(maintenance)
    while True:
        # Apply everything at or before a, then find where the next change is.
        while i < n and points[i][0] <= a:
            state = points[i][1]
            i += 1
        while j < m and maintenance[j][0] <= a:
            on = bool(maintenance[j][1])
            j += 1
        b = min(points[i][0] if i < n else now_ms, maintenance[j][0] if j < m else now_ms,
                now_ms)
        if b > a and not on and state in (UP, DOWN):
            into = up if state == UP else down
            for k, w0 in enumerate(starts):
                lo = a if a > w0 else w0
                if lo < b:
                    into[k] += coverage.covered(lo, b)
        if b >= now_ms:
            break
        a = b
    return [u / (u + d) if u + d else None for u, d in zip(up, down, strict=True)]


# ---------------------------------------------------------------------------
# The ledger: change points in memory and in the database


#: Where each part's last point sits in a station's row of ``_LastPoints``.
_PART_AT = {part: 2 * n for n, part in enumerate((*COMPONENTS, MAINTENANCE_COMPONENT))}


class _LastPoints:
    """The last change point of every (sid, component), as ``dict.get`` and item
    assignment see it, kept as one list a station — at, state, at, state, … in
    ``_PART_AT`` order — instead of a key tuple and a point tuple a part: ~350
    bytes a station instead of ~780 (100 000 stations on one hub, issue 21). A
    component the ledger does not know is not kept (``mark`` refuses them)."""

    __slots__ = ("_rows",)

    def __init__(self, points: Iterable[tuple[tuple[str, str], Point]] = ()) -> None:
        self._rows: dict[str, list[Any]] = {}
        for key, point in points:
            self[key] = point

    def get(self, key: tuple[str, str], default: Point | None = None) -> Point | None:
        row = self._rows.get(key[0])
        i = _PART_AT.get(key[1])
        if row is None or i is None or row[i] is None:
            return default
        return row[i], row[i + 1]

    def __setitem__(self, key: tuple[str, str], point: Point) -> None:
        i = _PART_AT.get(key[1])
        if i is None:
            return
        row = self._rows.get(key[0])
        if row is None:
            row = self._rows[key[0]] = [None] * (2 * len(_PART_AT))
        row[i], row[i + 1] = point


@dataclass
class _Recent:
    """One station's own points and maintenance switches since just before the
    longest window: all that ``refresh`` needs, in time order."""

    points: list[Point] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)


@dataclass
class _Run:
    """The hub run of this process. ``id`` is set by the op that inserted its row
    (ops run in submission order, so later updates find it)."""

    started_ms: int
    alive_ms: int
    id: int | None = None


def _prune(points: list[tuple[int, Any]], cutoff_ms: int) -> None:
    """Forget points that no window reaches: keep the last one at or before the cutoff."""
    if len(points) > 1 and points[1][0] <= cutoff_ms:
        keep = bisect_right(points, cutoff_ms, key=lambda p: p[0]) - 1
        del points[:keep]


class Ledger:
    """Records when stations and their parts go up and down, and answers for any window.

    The fleet marks changes as it sees them on the hub's clock, the scheduler
    marks the hub's own life, the API asks ``uptime`` and /metrics asks
    ``availability`` (from the cache ``refresh`` keeps).

    >>> ledger = Ledger(store, writer, clock)
    >>> ledger.hub_started(clock.ms())
    >>> ledger.mark("yh-chumen-01", "station", "up", clock.ms())
    >>> ledger.uptime("yh-chumen-01", clock.ms() - 86_400_000, clock.ms()).to_dict()
    {'availability': 1.0, 'up_s': ..., 'outages': [], ...}

    Any thread may call any method; ``mark`` and ``maintenance`` may be called
    from inside a writer op (they queue their own op and never wait on the writer
    while holding the ledger's lock).
    """

    def __init__(self, store: Store, writer: Writer, clock: Clock) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        #: The last change point of every (sid, component), maintenance as "on"/"off".
        self._last = _LastPoints()
        self._recent: dict[str, _Recent] = {}
        self._runs: list[tuple[int, int]] = []  # finished runs, (started_ms, end_ms)
        self._run: _Run | None = None
        self._cache: dict[str, tuple[float | None, ...]] = {}
        self._dirty: set[str] = set()  # marked since the cache was computed
        self._turn = 0  # the next slice refresh(share=…) computes
        #: Every station's seconds up/down/unknown/maintenance since its first
        #: change point (hub/fleet/seconds.py); moved on by ``seconds`` and,
        #: before its points are pruned, by ``refresh``.
        self._accounts: dict[str, Account] = {}
        #: Every station's changes into down since its first point (outages begun),
        #: counted as they are marked: a point dated before what ``seconds``
        #: already counted is still an outage.
        self._outages: dict[str, int] = {}
        #: Whether this process writes the change points the fleet derives (a
        #: station or a part up or down). Several hub workers sharing one
        #: database (docs/scaling.md): only the leader does; the others keep the
        #: same points in memory, from the same merged view, to lead in turn.
        self.leads: Callable[[], bool] = lambda: True
        self._load(clock.ms())

    # -- the fleet's side -------------------------------------------------------------

    def mark(self, sid: str, component: str, state: str, at_ms: int) -> bool:
        """Record that ``component`` of station ``sid`` is ``state`` from ``at_ms`` on.

        Returns False (and writes nothing) when that is already its state, so the
        fleet may say "up" on every message. ``at_ms`` is the hub's clock; for a
        station going down it is the time of the last message seen (contract §4).

        >>> ledger.mark("yh-chumen-01", "lockers", "down", 1_764_196_800_000)
        True
        """
        if component not in COMPONENTS:
            raise LedgerError(f"unknown component {component!r}; one of {COMPONENTS}")
        if state not in STATES:
            raise LedgerError(f"unknown state {state!r}; one of {STATES}")
        return self._record(sid, component, state, int(at_ms))

    def maintenance(self, sid: str, on: bool, at_ms: int, *, write: bool = True) -> bool:
        """Staff started (``on``) or ended maintenance of station ``sid`` at ``at_ms``.
        Written by whichever worker stored the event (its insert decides, once);
        ``write=False``: another worker did, this one only takes note.

        >>> ledger.maintenance("yh-chumen-01", True, clock.ms())
        True
        """
        return self._record(sid, MAINTENANCE_COMPONENT, _ON if on else _OFF, int(at_ms),
                            write)

    def resume(self) -> None:
        """Read the last point of every part again: a worker that starts leading
        marks from what the database holds, not from what it only noted."""
        newest = sa.func.row_number().over(
            partition_by=(ledger.c.sid, ledger.c.component),
            order_by=(ledger.c.at_ms.desc(), ledger.c.id.desc())).label("n")
        last = sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state,
                         newest).subquery()
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(last).where(last.c.n == 1)).all()
        with self._lock:
            # Replaced, not updated: what was only noted and never written must go.
            self._last = _LastPoints(((r.sid, r.component), (r.at_ms, r.state))
                                     for r in rows)

    def _record(self, sid: str, component: str, state: str, at_ms: int,
                write: bool | None = None) -> bool:
        key = (sid, component)
        with self._lock:
            last = self._last.get(key)
            if last is not None:
                if last[1] == state:
                    return False
                # Each part's points strictly increase in time, so their order
                # never depends on which thread's insert landed first, and a hub
                # clock that stepped back cannot rewrite the past.
                at_ms = max(at_ms, last[0] + 1)
            self._last[key] = (at_ms, state)
            if component == STATION and state == DOWN:
                self._outages[sid] = self._outages.get(sid, 0) + 1
            if component == STATION:
                self._recent.setdefault(sid, _Recent()).points.append((at_ms, state))
                self._dirty.add(sid)
            elif component == MAINTENANCE_COMPONENT:
                self._recent.setdefault(sid, _Recent()).switches.append((at_ms, state == _ON))
                self._dirty.add(sid)
        if not (write if write is not None else self.leads()):
            return True
        # Outside the lock: submit may block on a full queue, and the writer
        # thread itself may be the caller.
        self.writer.submit(Rows(_INSERT_POINT, {"sid": sid, "component": component,
                                                "at_ms": at_ms, "state": state}))
        return True

    def state(self, sid: str, component: str = STATION) -> str | None:
        """The last state marked for that part (None if never): what ``mark`` compares to."""
        with self._lock:
            last = self._last.get((sid, component))
        return None if last is None else last[1]

    # -- the hub's own life -----------------------------------------------------------

    def hub_started(self, now_ms: int) -> None:
        """This hub process starts vouching for what it sees.

        A previous run that never called ``hub_stopped`` (a crash, a kill -9)
        ended at its last ``hub_alive`` mark, at most one alive period early.
        """
        run = _Run(int(now_ms), int(now_ms))
        with self._lock:
            if self._run is not None:
                self._runs.append((self._run.started_ms, self._run.alive_ms))
            self._run = run
        self.writer.submit(functools.partial(_insert_run, run))

    def hub_alive(self, now_ms: int) -> None:
        """Proof of life, every 10 s from the scheduler: after a crash, the hub's
        downtime is counted unknown from the last of these."""
        with self._lock:
            run = self._run
            if run is None:
                log.warning("ledger: hub_alive() without hub_started(); ignored")
                return
            run.alive_ms = max(run.alive_ms, int(now_ms))
            alive = run.alive_ms
        self.writer.submit(functools.partial(_update_run, run, alive, None))

    def hub_stopped(self, now_ms: int) -> None:
        """A clean stop: from ``now_ms`` until the next start, every station is unknown."""
        with self._lock:
            run, self._run = self._run, None
            if run is None:
                return
            stopped = max(run.alive_ms, int(now_ms))
            self._runs.append((run.started_ms, stopped))
        self.writer.submit(functools.partial(_update_run, run, stopped, stopped))

    # -- the API's side ---------------------------------------------------------------

    def uptime(self, sid: str, from_ms: int, to_ms: int, component: str = STATION) -> Uptime:
        """How ``component`` of ``sid`` spent [from_ms, to_ms), read from the database.

        Reads the change points inside the window plus the last one before it (of
        the part, of the station for a part, of maintenance) and the hub runs.
        What the writer has not committed yet (≤ its batch delay) is not seen.

        >>> ledger.uptime("yh-chumen-01", now - 7 * 86_400_000, now).availability
        0.9971
        """
        if component not in COMPONENTS:
            raise LedgerError(f"unknown component {component!r}; one of {COMPONENTS}")
        from_ms, to_ms = int(from_ms), int(to_ms)
        if to_ms < from_ms:
            raise LedgerError(f"the window ends before it starts: [{from_ms}, {to_ms})")
        now_ms = self.clock.ms()
        with self._lock:
            running_since = None if self._run is None else self._run.started_ms
        wanted = [component, MAINTENANCE_COMPONENT]
        if component != STATION:
            wanted.append(STATION)
        streams: dict[str, list[Point]] = {}
        cut_at: list[int] = []  # where the history we read begins, per stream
        with self.store.engine.connect() as conn:
            for name in wanted:
                before = conn.execute(
                    _points(sid, name).where(ledger.c.at_ms < from_ms)
                    .order_by(ledger.c.at_ms.desc(), ledger.c.id.desc()).limit(1)
                ).all()
                inside = conn.execute(
                    _points(sid, name).where(ledger.c.at_ms >= from_ms, ledger.c.at_ms < to_ms)
                    .order_by(ledger.c.at_ms, ledger.c.id)
                ).all()
                streams[name] = [(r.at_ms, r.state) for r in (*before, *inside)]
                cut_at.extend(r.at_ms for r in before)
            rows = conn.execute(
                sa.select(hub_runs.c.started_ms, hub_runs.c.alive_ms, hub_runs.c.stopped_ms)
                .where(hub_runs.c.started_ms < to_ms)
            ).all()
        return self._tally(component, streams, cut_at, from_ms, to_ms,
                           _runs(rows, running_since), now_ms)

    @staticmethod
    def _tally(component: str, streams: dict[str, list[Point]], cut_at: list[int],
               from_ms: int, to_ms: int, runs: list[Run], now_ms: int) -> Uptime:
        return tally(
            streams[component], from_ms, to_ms,
            runs=runs,
            maintenance=[(at, s == _ON) for at, s in streams[MAINTENANCE_COMPONENT]],
            station=streams.get(STATION) if component != STATION else None,
            # Before the latest of these cuts some input is missing; since every
            # point is a real change, no outage reaching into the window began earlier.
            since_ms=max(cut_at) if cut_at else None,
            now_ms=now_ms,
        )

    def uptimes(self, sids: Iterable[str], from_ms: int, to_ms: int) -> dict[str, Uptime]:
        """``uptime(sid, from_ms, to_ms)`` of the station component of many stations
        at once, the same numbers in three queries instead of five a station: the
        console's uptime report over 5 000 stations (docs/console.md)."""
        from_ms, to_ms = int(from_ms), int(to_ms)
        if to_ms < from_ms:
            raise LedgerError(f"the window ends before it starts: [{from_ms}, {to_ms})")
        wanted = set(sids)
        now_ms = self.clock.ms()
        with self._lock:
            running_since = None if self._run is None else self._run.started_ms
        parts = (STATION, MAINTENANCE_COMPONENT)
        streams = {sid: {name: [] for name in parts} for sid in wanted}
        cut_at: dict[str, list[int]] = {sid: [] for sid in wanted}
        # The last point of each (station, part) before the window: what it was
        # when the window began (ties on time broken by id, as ``uptime`` does).
        rank = sa.func.row_number().over(
            partition_by=(ledger.c.sid, ledger.c.component),
            order_by=(ledger.c.at_ms.desc(), ledger.c.id.desc())).label("rank")
        last = (sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state, rank)
                .where(ledger.c.component.in_(parts), ledger.c.at_ms < from_ms)
                .subquery())
        with self.store.engine.connect() as conn:
            for r in conn.execute(sa.select(last.c.sid, last.c.component, last.c.at_ms,
                                            last.c.state).where(last.c.rank == 1)):
                if r.sid in wanted:
                    streams[r.sid][r.component].append((r.at_ms, r.state))
                    cut_at[r.sid].append(r.at_ms)
            for r in conn.execute(
                    sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state)
                    .where(ledger.c.component.in_(parts), ledger.c.at_ms >= from_ms,
                           ledger.c.at_ms < to_ms)
                    .order_by(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.id)):
                if r.sid in wanted:
                    streams[r.sid][r.component].append((r.at_ms, r.state))
            rows = conn.execute(
                sa.select(hub_runs.c.started_ms, hub_runs.c.alive_ms, hub_runs.c.stopped_ms)
                .where(hub_runs.c.started_ms < to_ms)
            ).all()
        runs = _runs(rows, running_since)
        return {sid: self._tally(STATION, streams[sid], cut_at[sid], from_ms, to_ms, runs,
                                 now_ms) for sid in wanted}

    # -- /metrics' side ---------------------------------------------------------------

    def availability(self, sid: str, window: str, now_ms: int) -> float | None:
        """The station's availability over the last ``window`` ("24h", "7d", "30d").

        From the cache ``refresh`` keeps; a station marked since then is
        recomputed alone at ``now_ms``, so a new outage shows at the next scrape.
        None for a station never seen up or down.

        >>> ledger.availability("yh-chumen-01", "7d", clock.ms())
        0.9971
        """
        try:
            k = list(WINDOWS).index(window)
        except ValueError:
            raise LedgerError(f"unknown window {window!r}; one of {list(WINDOWS)}") from None
        with self._lock:
            if sid in self._dirty:
                self._dirty.discard(sid)
                recent = self._recent.get(sid, _Recent())
                coverage = RunCoverage(self._all_runs(), int(now_ms))
                # Copies: a refresh may be cutting the front of these lists right now.
                self._cache[sid] = tuple(window_availability(
                    tuple(recent.points), tuple(recent.switches), coverage, int(now_ms),
                    list(WINDOWS.values())))
            cached = self._cache.get(sid)
        return None if cached is None else cached[k]

    def refresh(self, now_ms: int, share: int = 1) -> int:
        """Recompute the stations' availability for every window; returns how many.

        ``share`` > 1: only every ``share``-th station, the next slice at each
        call, so that a call every minute / ``share`` refreshes each station once
        a minute without holding the GIL for the whole fleet at once (half a
        second at 50 000 stations: the ingest's lag showed it).

        From memory, not the database: each station's points since just before
        the longest window. A station without a change in that time costs one
        lookup; the others one pass over their points.
        """
        now_ms = int(now_ms)
        spans = list(WINDOWS.values())
        oldest = now_ms - max(spans)
        with self._refreshing:
            with self._lock:
                coverage = RunCoverage(self._all_runs(), now_ms)
                # Only the station ids: one allocation, where 50 000 new tuples would
                # set off a garbage collection over every point held (~100 ms).
                # Stations are only ever added at the end, so a slice keeps its
                # stations from one call to the next.
                sids = list(self._recent)
                if share > 1:
                    turn, self._turn = self._turn % share, self._turn + 1
                    sids = sids[turn::share]
                    self._dirty.difference_update(sids)
                else:
                    self._dirty.clear()
            # The long part runs without the lock, so marks are not held up by it.
            # That is safe because stations are never removed, a station's lists
            # only grow at the end (in mark, under the lock) and only refresh (one
            # at a time) cuts their front.
            self._settle(sids, coverage, oldest)
            cache = self._compute([(sid, self._recent[sid]) for sid in sids],
                                  coverage, now_ms, spans, oldest)
            with self._lock:
                for sid in self._dirty:  # marked while we computed: keep them dirty
                    cache.pop(sid, None)
                self._cache.update(cache)
        return len(cache)

    def seconds(self, seen: Iterable[tuple[str, int | None]], now_ms: int
                ) -> list[tuple[str, tuple[float, float, float, float], int] | None]:
        """Each station's (sid, seconds up/down/unknown/maintenance, outages begun),
        counted from its first change point up to what is settled now.

        ``seen``: (sid, when the hub last heard from it). A station the ledger has
        up is counted only up to then: if it has gone silent, the fleet marks it
        down from that instant, and time counted as up must never be taken back.
        Otherwise up to ``now_ms``; and never past the hub's last proof of life
        (``hub_alive``), which is where the database ends this run after a
        crash, so that the next process, counting from the stored history,
        starts at or above every value this one showed (for a station up and
        not heard since, up to the end of the last run: the stored last_seen
        may be older than the one this process held). None in place of a
        station without a change point.
        """
        now_ms = int(now_ms)
        out: list[tuple[str, tuple[float, float, float, float], int] | None] = []
        with self._refreshing:  # keeps refresh from cutting the lists we walk
            with self._lock:
                coverage = RunCoverage(self._all_runs(), now_ms)
                cap = now_ms if self._run is None else min(now_ms, self._run.alive_ms)
                # Where the last run before this one ended: a station still up and
                # not heard since is counted up to there, at least (below).
                before = max((end for _, end in self._runs), default=0)
            for sid, last_seen_ms in seen:
                recent = self._recent.get(sid)
                account = None if recent is None else (
                    self._accounts.get(sid) or self._open_account(sid, recent))
                if account is None:
                    out.append(None)
                    continue
                last = self._last.get((sid, STATION))
                until = cap
                if last is not None and last[1] == UP and last_seen_ms is not None:
                    # Up to the end of the last run at least: after a crash the
                    # stored last_seen may be older than what that process had
                    # counted to, and a counter that goes back is a reset to
                    # Prometheus (its whole value counted again as new).
                    until = min(until, max(int(last_seen_ms), before))
                accrue(account, recent.points, recent.switches, coverage, until)
                out.append((sid, account.seconds(), self._outages.get(sid, 0)))
        return out

    def _open_account(self, sid: str, recent: _Recent) -> Account | None:
        firsts = [lst[0][0] for lst in (recent.points, recent.switches) if lst]
        if not firsts:
            return None
        account = self._accounts[sid] = Account(min(firsts))
        return account

    def _settle(self, sids: list[str], coverage: RunCoverage, oldest: int) -> None:
        """Count what ``_prune`` is about to forget into the accounts first.

        Not a station that is up: ``seconds`` holds it at when it was last heard,
        and its last point, which the prune keeps, is all its account needs."""
        for sid in sids:
            recent = self._recent[sid]
            account = self._accounts.get(sid) or self._open_account(sid, recent)
            last = self._last.get((sid, STATION))
            if last is not None and last[1] == UP:
                continue
            if account is not None and account.at_ms < oldest:
                accrue(account, recent.points, recent.switches, coverage, oldest)

    @staticmethod
    def _compute(todo: list[tuple[str, _Recent]], coverage: RunCoverage,
                 now_ms: int, spans: list[int], oldest: int
                 ) -> dict[str, tuple[float | None, ...]]:
        steady: dict[tuple[str | None, bool], tuple[float | None, ...]] = {}
        cache: dict[str, tuple[float | None, ...]] = {}
        for sid, recent in todo:
            points, switches = recent.points, recent.switches
            _prune(points, oldest)
            _prune(switches, oldest)
            if (not points or points[-1][0] <= oldest) and (
                    not switches or switches[-1][0] <= oldest):
                # Nothing changed in 30 days: the answer depends only on when the hub ran.
                key = (points[-1][1] if points else None, bool(switches and switches[-1][1]))
                if key not in steady:
                    steady[key] = tuple(window_availability(
                        points[-1:], switches[-1:], coverage, now_ms, spans))
                cache[sid] = steady[key]
            else:
                cache[sid] = tuple(window_availability(points, switches, coverage, now_ms,
                                                       spans))
        return cache

    # -- loading ----------------------------------------------------------------------

    def _all_runs(self) -> list[Run]:
        runs: list[Run] = list(self._runs)
        if self._run is not None:
            runs.append((self._run.started_ms, None))
        return runs

    def _load(self, now_ms: int) -> None:
        """Resume from the database: the last state of every part (what ``mark``
        compares to), the recent points ``refresh`` needs, and when the hub ran."""
        oldest = now_ms - max(WINDOWS.values())
        newest = sa.func.row_number().over(
            partition_by=(ledger.c.sid, ledger.c.component),
            order_by=(ledger.c.at_ms.desc(), ledger.c.id.desc()),
        ).label("n")
        last = sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state,
                         newest).subquery()
        mine = (STATION, MAINTENANCE_COMPONENT)
        before = (sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state,
                            newest)
                  .where(ledger.c.component.in_(mine), ledger.c.at_ms <= oldest).subquery())
        with self.store.engine.connect() as conn:
            for r in conn.execute(sa.select(last).where(last.c.n == 1)):
                self._last[(r.sid, r.component)] = (r.at_ms, r.state)
            # The last point at or before the longest window, then everything after it.
            rows = [*conn.execute(sa.select(before).where(before.c.n == 1)),
                    *conn.execute(
                        sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms,
                                  ledger.c.state)
                        .where(ledger.c.component.in_(mine), ledger.c.at_ms > oldest)
                        .order_by(ledger.c.at_ms, ledger.c.id))]
            for r in rows:
                recent = self._recent.setdefault(r.sid, _Recent())
                if r.component == STATION:
                    recent.points.append((r.at_ms, r.state))
                else:
                    recent.switches.append((r.at_ms, r.state == _ON))
            for r in conn.execute(sa.select(hub_runs.c.started_ms, hub_runs.c.alive_ms,
                                            hub_runs.c.stopped_ms)):
                end = r.stopped_ms if r.stopped_ms is not None else r.alive_ms
                self._runs.append((r.started_ms, end))
            self._load_accounts(conn, oldest)
            downs = (sa.select(ledger.c.sid, sa.func.count().label("n"))
                     .where(ledger.c.component == STATION, ledger.c.state == DOWN)
                     .group_by(ledger.c.sid))
            self._outages.update((r.sid, r.n) for r in conn.execute(downs))
        self._dirty.update(self._recent)

    def _load_accounts(self, conn: sa.Connection, oldest: int) -> None:
        """The accounts of seconds as the stored history has them up to ``oldest``;
        what follows is in ``_recent`` and counted as ``seconds`` is asked. One
        pass over the older points, station by station, at start only."""
        coverage = RunCoverage(self._runs, oldest)
        mine = (STATION, MAINTENANCE_COMPONENT)
        rows = conn.execute(
            sa.select(ledger.c.sid, ledger.c.component, ledger.c.at_ms, ledger.c.state)
            .where(ledger.c.component.in_(mine), ledger.c.at_ms < oldest)
            .order_by(ledger.c.sid, ledger.c.at_ms, ledger.c.id))
        for sid, group in itertools.groupby(rows, key=lambda r: r.sid):
            old = _Recent()
            for r in group:
                if r.component == STATION:
                    old.points.append((r.at_ms, r.state))
                else:
                    old.switches.append((r.at_ms, r.state == _ON))
            account = self._open_account(sid, old)
            if account is None:
                continue
            # A station last seen up is counted only up to that point here: the
            # fleet will mark it down from when it was last heard, which the
            # ledger does not know (``seconds`` counts on once it is known).
            until = oldest
            if old.points and old.points[-1][1] == UP and self._last.get(
                    (sid, STATION), old.points[-1]) == old.points[-1]:
                until = old.points[-1][0]
            accrue(account, old.points, old.switches, coverage, until)


# -- writer ops: each re-runnable (the writer may replay a batch after a rollback) ---


def _runs(rows: Iterable[Any], running_since: int | None) -> list[Run]:
    runs: list[Run] = [
        (r.started_ms, r.stopped_ms if r.stopped_ms is not None else r.alive_ms)
        for r in rows]
    if running_since is not None:
        # This process's run lasts until now, not until its last alive mark (nor
        # only from when the writer commits its row); runs are merged, so its
        # own row does no harm.
        runs.append((running_since, None))
    return runs


def _points(sid: str, component: str) -> sa.Select:
    return sa.select(ledger.c.at_ms, ledger.c.state).where(
        ledger.c.sid == sid, ledger.c.component == component)


#: Built once: one statement for every point, batched by the writer (``Rows``).
_INSERT_POINT = ledger.insert()


def _insert_run(run: _Run, conn: sa.Connection) -> None:
    result = conn.execute(hub_runs.insert().values(
        started_ms=run.started_ms, alive_ms=run.started_ms, stopped_ms=None))
    run.id = result.inserted_primary_key[0]  # a replayed batch sets it again, to the kept row


def _update_run(run: _Run, alive_ms: int, stopped_ms: int | None, conn: sa.Connection) -> None:
    if run.id is None:
        log.warning("ledger: the hub run of %d has no row (its insert failed)", run.started_ms)
        return
    values: dict[str, int] = {"alive_ms": alive_ms}
    if stopped_ms is not None:
        values["stopped_ms"] = stopped_ms
    conn.execute(hub_runs.update().where(hub_runs.c.id == run.id).values(**values))
