"""The fleet as the hub sees it: each station's birth, liveness, last State and events.

The ordering rules of contract §3 and §4 live here and nowhere else:

* an ``online`` Status makes its ``birth`` the current one (an older birth of the
  same epoch is stale);
* an ``offline`` Status counts only for the current (epoch, birth), or when no
  birth is known yet — a stale last will never marks a reconnected station down;
* a State is applied only when its (epoch, rev) is newer; a new epoch (the
  station's storage was wiped) resets the station's State, counters and events;
* each event is stored once per (sid, epoch, seq), and what it causes (a loan,
  a maintenance window) happens once, in the transaction that stored it;
* an outage starts at the hub receive time of the last message seen, and a
  station that stops talking without a will (the broker restarted and kept a
  stale retained "online") is down after ``missed_heartbeats`` heartbeats;
* a hole in a station's ``seq`` that stays open ``replay_after`` becomes a
  ``replay`` command (``gaps_due``), at most one per station per ``replay_every``.

``Fleet`` is the authority while the hub runs — decisions are made in memory,
on the MQTT thread, without waiting for the database — and every durable change
goes to the ``Writer`` in decision order. At start it is loaded from the store.
All times are the hub's own clock in integer milliseconds, except an event's
``at_ms``, which is the station's ``ts`` when its clock was synced and not ahead
of the hub's (:func:`event_time`).

>>> fleet = Fleet(config, store, writer, ledger, clock)
>>> fleet.apply_state(state, clock.ms())
'applied'
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace  # noqa: F401  (the doctests')
from typing import Any

import msgspec
import sqlalchemy as sa

from hub.config import HubConfig
from hub.fleet.banks import holds_bank
from hub.fleet.loans import Loans
from hub.fleet.packed import pack, unpack
from hub.log_once import EVENTS_GIVEN_UP, NEW_EPOCH, StationNotes
from hub.storage.schema import events, station_state, stations, status_log
from hub.storage.writer import Commuting, Guarded, Rows
from protocol import messages as m
from protocol.topics import Kind
from yizhan.clock import Clock

log = logging.getLogger(__name__)

APPLIED, DUPLICATE, STALE, INVALID = "applied", "duplicate", "stale", "invalid"
UP, DOWN, UNKNOWN = "up", "down", "unknown"

#: Why a station is offline: its will (``lost``), a clean ``shutdown``, or the
#: hub stopped hearing it (``silent``) — only the last is undone by a message.
SILENT = "silent"
#: A gap the station keeps answering without filling is given up after this
#: many replays (the station logs why; the hub stops asking).
MAX_REPLAYS_OF_ONE_GAP = 10
#: Epochs other than the current one whose seqs are remembered, per station
#: (events of a wiped station's old epoch can still be in flight).
OTHER_EPOCHS_KEPT = 4
#: Replay commands remembered for their results.
REPLAYS_KEPT = 10_000
#: Seqs given up on that are still remembered, to take one if it comes late
#: (``Seqs.lost``): the highest these many. A gap that never closes (a valid seq
#: near 2**63) gives up ``replay_max`` more every ``MAX_REPLAYS_OF_ONE_GAP``
#: replays, for ever: unbounded, a station grew the hub ~30 MB a day.
LOST_KEPT = 10_000
#: Events held above a gap (``Seqs.ahead``), per (station, epoch), at most. A
#: station publishes in seq order and a gap closes by replay within minutes, so
#: ``ahead`` holds what came above a lost message meanwhile: a week's backlog of
#: a busy station flushed after an outage is ~10 000 events (firmware/journal.py
#: MAX_HELD). At 100 000 the station has delivered its own KEEP_EVENTS (100 000)
#: newer events than the missing one, past which its journal no longer promises
#: to keep it (only if under 7 days old): no real station gets here, while one
#: with a stolen certificate sending seqs 2, 4, 6, … would grow the set without
#: end (~75 bytes a seq). Past it the lowest gaps are given up (counted lost,
#: asked for no more) until ``AHEAD_KEPT - AHEAD_SHED`` are held: a sort of the
#: set every ``AHEAD_SHED`` events, not a scan per event. ~7.4 MB at the cap.
AHEAD_KEPT = 100_000
AHEAD_SHED = AHEAD_KEPT // 10
#: The same for each other epoch a station had (``OTHER_EPOCHS_KEPT`` of them):
#: a wiped station cannot replay its old epoch, so its gaps never close and
#: what is held above them only tells a late duplicate in flight. Kept small,
#: a station with a stolen certificate holds at most one full ``ahead``, not
#: one an epoch (5 × 7.4 MB, filling four made-up epochs in turn).
OTHER_AHEAD_KEPT = 10_000
#: A "synced" station clock this far ahead of the hub's receipt is wrong all the
#: same (an NTP server astray, a Pi whose flag lies): nothing can arrive before it
#: was sent, so such an event is dated by its receipt, like an unsynced one. Five
#: minutes leave room for the hub's own clock being a little behind.
MAX_AHEAD_MS = 5 * 60_000
#: An event's data as compact UTF-8 JSON, ten times faster than json.dumps (what
#: decode gave is JSON's own types, which it writes as json does).
_data_json = msgspec.json.Encoder().encode
#: A station's last State, read from its compact JSON (``StationView.doc``).
_read_json = msgspec.json.decode


def _liveness(birth: int | None, since_ms: int | None) -> tuple[int, int]:
    """What orders two records of a station's liveness in one epoch (merge_station)."""
    return (-1 if birth is None else birth, -1 if since_ms is None else since_ms)


def event_time(event: m.Event, received_ms: int) -> int:
    """When ``event`` happened, on the hub's clock as well as the hub can tell.

    The station's ``ts`` when its clock was synced (a replayed event keeps the
    time it happened); the hub's receive time when it was not — a Pi boots with
    yesterday's time until NTP steps it (contract §3) — or when the ``ts`` lies
    ahead of its own receipt, which no true clock can do (``MAX_AHEAD_MS``).
    Loans, maintenance, the ledger and the alert engine all date events so.

    >>> e = m.Event("yh-chumen-01", "9f2c01ab", 1_000, True, 1, "visit", {"count": 1})
    >>> event_time(e, 5_000), event_time(replace(e, synced=False), 5_000)
    (1000, 5000)
    >>> event_time(replace(e, ts=10**12), 5_000)
    5000
    """
    if event.synced and event.ts <= received_ms + MAX_AHEAD_MS:
        return event.ts
    return received_ms


#: The empty seq set every station shares until it holds one (see Seqs).
_NONE: frozenset[int] = frozenset()


class Seqs:
    """Which events of one (sid, epoch) the hub holds: all of ``1..through``, plus
    the out-of-order ones in ``ahead``. ``lost`` are seqs the station said it no
    longer has: counted as held for gap detection, still welcome if they come.

    >>> s = Seqs()
    >>> [s.add(n) for n in (1, 3, 3, 2)], s.through, s.ahead
    ([True, True, False, True], 3, set())
    """

    __slots__ = ("ahead", "lost", "through")

    def __init__(self, through: int = 0) -> None:
        self.through = through
        # Most stations never hold an event out of order: their two sets are the
        # one shared empty frozenset until then (an empty set is 216 bytes, and
        # 100 000 stations had two each).
        self.ahead: set[int] | frozenset[int] = _NONE
        self.lost: set[int] | frozenset[int] = _NONE

    def add(self, seq: int) -> bool | tuple[int, int]:
        """Take ``seq`` in; False when it is already held (a duplicate). When it
        took ``ahead`` past ``AHEAD_KEPT``, the lowest gaps were given up to make
        room: (lo, hi), the span of the seqs given up (true as well: ``seq`` is new)."""
        if seq in self.lost:
            self.lost.discard(seq)
            return True
        if seq <= self.through or seq in self.ahead:
            return False
        if seq == self.through + 1:
            self.through = seq
            if self.ahead or self.lost:
                self._advance()
        else:
            if self.ahead is _NONE:
                self.ahead = set()
            self.ahead.add(seq)
            if len(self.ahead) > AHEAD_KEPT:
                return self.shed(AHEAD_KEPT - AHEAD_SHED)
        return True

    def shed(self, keep: int) -> tuple[int, int]:
        """Give up every missing seq below all but the ``keep`` highest held in
        ``ahead`` (there must be more): ``through`` moves up to the highest of
        those let go, the highest ``LOST_KEPT`` seqs given up go to ``lost``
        (still welcome if they come), and ``ahead`` is made anew (a set never
        shrinks its table as it empties). Returns the span given up."""
        held = sorted(self.ahead)
        let_go = len(held) - keep
        lo, cut = self.through + 1, held[let_go - 1]
        # The missing seqs, from the top down, gap by gap: a hole may be 2**62
        # wide, so only as many are looked at as lost can keep.
        gone: list[int] = []
        for i in range(let_go - 1, -1, -1):
            below = held[i - 1] if i else self.through
            for seq in range(held[i] - 1, below, -1):
                if seq not in self.lost:
                    gone.append(seq)
                    if len(gone) == LOST_KEPT:
                        break
            if len(gone) == LOST_KEPT:
                break
        self.ahead = set(held[let_go:])
        self.through = cut
        lost = set(gone).union(self.lost)
        self.lost = set(sorted(lost)[-LOST_KEPT:]) if len(lost) > LOST_KEPT else lost
        self._advance()
        return lo, gone[0]

    def _advance(self) -> None:
        while True:
            following = self.through + 1
            if following in self.ahead:
                self.ahead.discard(following)
            elif following not in self.lost:
                return
            self.through = following

    def give_up(self, lo: int, hi: int) -> None:
        for seq in range(max(lo, self.through + 1), hi + 1):
            if seq not in self.ahead:
                if self.lost is _NONE:
                    self.lost = set()
                self.lost.add(seq)
        self._advance()
        if len(self.lost) > LOST_KEPT:
            # The oldest go (all at or below through now): one of them arriving
            # this late is taken for a duplicate.
            self.lost = set(sorted(self.lost)[-LOST_KEPT:])

    def first_missing(self, upto: int, limit: int) -> tuple[int, int] | None:
        """The lowest missing range at or below ``upto``, at most ``limit`` long;
        it may enclose held seqs (they come again and are dropped as duplicates)."""
        lo = self.through + 1
        if lo > upto:
            return None
        hi = min(upto, lo + limit - 1)
        while hi > lo and (hi in self.ahead or hi in self.lost):
            hi -= 1
        return lo, hi


def _shed_other(seqs: Seqs) -> tuple[int, int]:
    """Bring another epoch's ``ahead`` down under ``OTHER_AHEAD_KEPT``."""
    return seqs.shed(OTHER_AHEAD_KEPT - OTHER_AHEAD_KEPT // 10)


@dataclass(slots=True)
class StationView:
    """What the hub knows of one station; the web and /metrics read copies of it.

    ``state`` is the last State as a dict. A copy the fleet hands out carries it
    as compact JSON (``doc``: text while new, packed bytes once the fleet packed
    it, hub/fleet/packed.py) and makes a fresh dict of it each time ``state`` is
    read: /metrics walking 100 000 copies holds one such dict at a time, not
    100 000 (0.4 GB). A dict given (``state=``) is kept as it is."""

    sid: str
    name: str
    group: str | None = None
    epoch: str | None = None
    birth: int | None = None
    online: bool = False
    since_ms: int | None = None  # when it came online or went down (outage start)
    last_seen_ms: int | None = None  # hub clock, the last message from the station
    offline_reason: str | None = None  # lost, shutdown, silent
    state_rev: int | None = None
    state: dict[str, Any] | None = field(default=None, repr=False)
    state_ts: int | None = None
    last_seq: int | None = None  # the highest seq the station said it created
    events_through: int = 0  # every event 1..this of the epoch is held
    doc: str | bytes | None = field(default=None, repr=False, compare=False)

    def chargers_ready(self, min_charge: int = 80) -> int | None:
        lockers = (self.state or {}).get("lockers")
        if not lockers:
            return None
        return sum(1 for s in lockers.get("slots", ())
                   if holds_bank(s) and not s.get("fault")
                   and (s.get("charge") or 0) >= min_charge)

    def water(self) -> str | None:
        dispenser = (self.state or {}).get("dispenser")
        return dispenser.get("level_state") if dispenser else None


# ``state`` is stored in its slot as given, and read from ``doc`` when that is None.
_STATE_SLOT = StationView.state


def _get_state(view: StationView) -> dict[str, Any] | None:
    state = _STATE_SLOT.__get__(view, StationView)
    if state is None and view.doc is not None:
        return _read_json(_text_of(view.doc))
    return state


def _set_state(view: StationView, state: dict[str, Any] | None) -> None:
    _STATE_SLOT.__set__(view, state)
    view.doc = None


StationView.state = property(_get_state, _set_state)  # type: ignore[assignment]


def _text_of(doc: str | bytes) -> str | bytes:
    """A State's compact JSON, as held: text while new, packed once packed."""
    return doc if isinstance(doc, str) else unpack(doc)


def _compact(state: m.State) -> str:
    """The compact JSON of the dict of ``state``: what readers get, whatever
    the payload looked like (other key order, keys the contract does not know).
    Made on the ingest's thread from the State it decoded (~6 µs); packing it
    (zlib, which gives up the GIL twice and then waits for it behind every busy
    thread: a quarter of the ingest's time at 100 000 stations) is left to
    ``Fleet.pack_states``, on the scheduler's thread."""
    return _data_json(state.to_dict()).decode()


def _copy(view: StationView, doc: str | bytes | None) -> StationView:
    """A reader's copy of the fleet's own ``view`` (whose ``state`` is None),
    with the last State as held (``doc``)."""
    return StationView(view.sid, view.name, view.group, view.epoch, view.birth, view.online,
                       view.since_ms, view.last_seen_ms, view.offline_reason, view.state_rev,
                       None, view.state_ts, view.last_seq, view.events_through, doc)


#: Stations copied under one hold of the fleet's lock (``Fleet.stations``): ~3 ms.
COPY_SHARE = 2_000


class _Parts:
    """The state last marked for each part of a station (``component -> state``,
    as ``dict.get``, item assignment and ``clear`` see it): 64 bytes where a
    dict of the four was 232 (100 000 stations on one hub, issue 21)."""

    __slots__ = ("dispenser", "kiosk", "lockers", "station")

    def __init__(self) -> None:
        self.clear()

    def get(self, component: str, default: str | None = None) -> str | None:
        state = getattr(self, component, None)
        return default if state is None else state

    def __setitem__(self, component: str, state: str) -> None:
        setattr(self, component, state)

    def clear(self) -> None:
        self.dispenser = self.kiosk = self.lockers = self.station = None


@dataclass(slots=True)
class _Station:
    """A view plus the bookkeeping behind it. Slotted, and what most stations
    never need (other epochs, marks) made when first needed: 100 000 of these
    are the hub's memory (docs/hub-internals.md, "Memory and the garbage
    collector")."""

    view: StationView
    seqs: Seqs = field(default_factory=Seqs)  # of the current epoch
    others: OrderedDict[str, Seqs] | None = None  # other epochs, when there are
    known_high: int = 0  # the highest seq known to exist in the current epoch
    # (highest seq, hub ms when first known): a seq is missing since the first mark
    # at or above it. Marks are merged, so there are a handful at a time.
    marks: list[list[int]] = field(default_factory=list)
    state_last_seq: int = 0  # what the applied State already reflects
    # The last State: its dict as compact JSON, text (~1.2 kB) until
    # ``Fleet.pack_states`` packs it (hub/fleet/packed.py, ~150 bytes) a
    # second or two later. The decoded State and its dict were 2.7 and 3.9 kB
    # of small objects the collector walks; either form is one object it does not.
    doc: str | bytes | None = None
    next_replay_ms: int = 0
    replay_from: int = 0
    replays_of_gap: int = 0
    parts: _Parts = field(default_factory=lambda: _Parts())  # component -> marked state
    clock_ahead_told: bool = False  # its synced clock was found ahead (logged once)


_STATION_COLUMNS = ("name", "grp", "epoch", "birth", "online", "since_ms", "last_seen_ms",
                    "offline_reason", "events_through", "last_seq")


@dataclass(frozen=True, slots=True)
class _Replay:
    sid: str
    epoch: str
    lo: int
    hi: int


class Fleet:
    """Live view of every station; durable changes go through ``writer`` in order.

    ``loans`` defaults to ``Loans(store, config.loan_hours)``; ``commands``
    (hub.commands.Commands) takes the results of commands (``apply_result``).
    """

    def __init__(self, config: HubConfig, store, writer, ledger, clock: Clock, *,
                 loans: Loans | None = None, commands=None) -> None:
        self.config = config
        self.store = store
        self.writer = writer
        self.ledger = ledger
        self.clock = clock
        #: What the fleet and its loans note about station messages: counted,
        #: logged once an hour per station (the ingest registers it).
        self.notes = StationNotes(clock)
        self.loans = loans if loans is not None else Loans(store, config.loan_hours)
        self.loans.notes = self.notes  # one count, and the hub's clock
        self.commands = commands
        self._lock = threading.Lock()
        # Writer ops, queued under _lock in decision order; see _drain.
        self._pending: deque[Callable[[sa.Connection], Any]] = deque()
        self._drain_lock = threading.Lock()
        self._stations: dict[str, _Station] = {}
        # The stations that may have marks (events known missing): gaps_due
        # looks at these every 2 s, not at all 50 000 under the fleet's lock.
        self._marked: set[str] = set()
        # The stations whose last State is still text: pack_states packs them.
        self._loose: set[str] = set()
        self._replays: OrderedDict[str, _Replay] = OrderedDict()
        self._listening_since: int | None = None
        self._listeners: list[Callable[[str, str, Any, int], None]] = []
        # Built once: the hot path only passes parameters (SQLAlchemy caches the SQL).
        self._insert_event = store.insert_ignore(events)
        self._insert_status = status_log.insert()
        self._save_station = store.upsert(stations, ["sid"], _STATION_COLUMNS)
        excluded = store.excluded(station_state)
        # Newer only, checked in the database too: hub workers sharing it may race.
        self._save_state = store.upsert(
            station_state, ["sid"], ["epoch", "rev", "ts", "received_ms", "state"],
            where=sa.or_(station_state.c.epoch != excluded.epoch,
                         station_state.c.rev < excluded.rev))
        self._load()

    # -- start ---------------------------------------------------------------------------

    def _load(self) -> None:
        now = self.clock.ms()
        for row in self.store.load_stations():
            view = StationView(
                sid=row["sid"], name=row["name"] or row["sid"], group=row["grp"],
                epoch=row["epoch"], birth=row["birth"], online=bool(row["online"]),
                since_ms=row["since_ms"], last_seen_ms=row["last_seen_ms"],
                offline_reason=row["offline_reason"], last_seq=row["last_seq"],
                events_through=row["events_through"] or 0)
            st = _Station(view=view, seqs=Seqs(view.events_through))
            if row["state"] is not None and row["state_epoch"] == view.epoch:
                view.state_rev, view.state_ts = row["state_rev"], row["state_ts"]
                st.doc = pack(_data_json(row["state"]))
                st.state_last_seq = row["state"].get("last_seq") or 0
            self._stations[view.sid] = st
        # Events stored past each station's events_through (written lazily, with
        # its row): one query for the fleet, not one per station.
        q = (sa.select(events.c.sid, events.c.seq)
             .select_from(events.join(stations, sa.and_(events.c.sid == stations.c.sid,
                                                        events.c.epoch == stations.c.epoch)))
             .where(events.c.seq > stations.c.events_through)
             .order_by(events.c.sid, events.c.seq))
        with self.store.engine.connect() as conn:
            for sid, seq in conn.execute(q):
                self._stations[sid].seqs.add(seq)
        for st in self._stations.values():
            v, s = st.view, st.seqs
            v.events_through = s.through
            st.known_high = max(v.last_seq or 0, s.through, max(s.ahead, default=0))
            if st.known_high > s.through:
                st.marks.append([st.known_high, now])
                self._marked.add(v.sid)
        for meta in self.config.stations:
            st = self._station(meta.sid)
            st.view.name, st.view.group = meta.name, meta.group

    def _station(self, sid: str) -> _Station:
        st = self._stations.get(sid)
        if st is None:
            meta = self.config.station_meta(sid)
            st = _Station(view=StationView(sid=sid, name=meta.name if meta else sid,
                                           group=meta.group if meta else None))
            self._stations[sid] = st
        return st

    # -- reading -------------------------------------------------------------------------

    def stations(self) -> list[StationView]:
        """A copy of every station's view, by sid, each with its own dict of the
        last State."""
        with self._lock:
            held = list(self._stations.items())
        held.sort()  # outside the lock: the ingest waits for no sort
        copies: list[StationView] = []
        # A share at a time: each copy is one moment of its station, and the
        # ingest never waits for more than a share (100 000 copies at once held
        # the lock for ~150 ms, every /metrics scrape).
        for i in range(0, len(held), COPY_SHARE):
            with self._lock:
                copies.extend([_copy(st.view, st.doc) for _, st in held[i:i + COPY_SHARE]])
        return copies

    def sids(self) -> list[str]:
        """Every station's id, sorted (no copy of the views: 50 000 of those
        would hold the lock for a fifth of a second)."""
        with self._lock:
            sids = list(self._stations)
        return sorted(sids)

    def groups(self) -> list[tuple[str, str | None]]:
        """(sid, group) of every station, unsorted: what the Directory job asks
        every 5 s, without a copy of any view."""
        with self._lock:
            return [(sid, st.view.group) for sid, st in self._stations.items()]

    def pack_states(self) -> int:
        """Pack the last States still held as text (hub/fleet/packed.py), outside
        the lock; a newer State that came meanwhile is left for the next call.
        The hub's scheduler calls it every ``PACK_EVERY`` seconds. Returns how
        many were packed."""
        with self._lock:
            loose, self._loose = self._loose, set()
            held = [(st, st.doc) for st in map(self._stations.get, loose)
                    if st is not None and isinstance(st.doc, str)]
        packed = [(st, text, pack(text)) for st, text in held]
        with self._lock:
            for st, text, doc in packed:
                if st.doc is text:
                    st.doc = doc
        return len(packed)

    def get(self, sid: str) -> StationView | None:
        with self._lock:
            st = self._stations.get(sid)
            if st is None:
                return None
            return _copy(st.view, st.doc)

    def _hold_state(self, st: _Station, state: m.State) -> None:
        """Keep ``state`` as the station's last (under the lock): as text, until
        pack_states packs it."""
        st.doc = _compact(state)
        self._loose.add(st.view.sid)

    def last_of_group_down(self, sid: str) -> bool:
        """Whether ``sid`` is down and was the last station of its group online:
        every other station of its group (the stations without a group are one
        group) is down too, and went down before it — the riders of that area have
        no station left. Down at the same moment: the greatest sid is the last,
        so one station of a dark group is, never two."""
        with self._lock:
            # References only: the walk below reads plain attributes without
            # the lock (a judgement of the moment), the ingest does not wait on it.
            me = self._stations.get(sid)
            everyone = list(self._stations.values())
        if me is None or me.view.online:
            return False
        group = me.view.group
        mine = (me.view.since_ms or 0, sid)
        for st in everyone:
            v = st.view
            if v.group != group or v.sid == sid:
                continue
            if v.online or (v.since_ms or 0, v.sid) > mine:
                return False
        return True

    def stored_events(self, types: Iterable[str], since_ms: int
                      ) -> list[tuple[str, str, int, str, int]]:
        """``(sid, epoch, seq, type, at_ms)`` of the stored events of ``types``
        dated ``since_ms`` or later, by station, epoch and seq: what a reader
        rebuilds at start (the alert engine: staff on site)."""
        q = (sa.select(events.c.sid, events.c.epoch, events.c.seq, events.c.type,
                       events.c.at_ms)
             .where(events.c.type.in_(tuple(types)), events.c.at_ms >= since_ms)
             .order_by(events.c.sid, events.c.epoch, events.c.seq))
        with self.store.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(q)]

    # -- listeners (the alert engine, the forecaster) ---------------------------------------

    def add_listener(self, fn: Callable[[str, str, Any, int], None]) -> None:
        """``fn(sid, kind, payload, now_ms)`` after each Status, State or Event is
        applied (kind ``status``, ``state``, ``event``; payload the message), and
        with kind ``status`` and payload None when only the station's liveness
        changed (silent, or heard again). Called on the ingest thread, outside
        the fleet's lock: it must only take note, never wait."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[str, str, Any, int], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _tell(self, sid: str, kind: str, payload: Any, now_ms: int) -> None:
        for fn in self._listeners:
            try:
                fn(sid, kind, payload, now_ms)
            except Exception:  # a listener's bug must not stop the ingest
                log.exception("fleet listener %r failed on %s of %s", fn, kind, sid)

    def _told(self, sid: str, kind: str, msg: Any, applied: bool, was_online: bool,
              now_ms: int) -> None:
        if applied:
            self._tell(sid, kind, msg, now_ms)
        elif self._listeners and self._online(sid) != was_online:
            self._tell(sid, "status", None, now_ms)

    def _online(self, sid: str) -> bool:
        st = self._stations.get(sid)
        return st is not None and st.view.online

    # -- what other hub workers stored (several workers, hub/fleet/sync.py) ---------------

    def merge_station(self, row: Mapping[str, Any], now_ms: int) -> bool:
        """Take in a station's row (``stations`` columns) as the database holds it,
        written by any hub worker. The newer liveness wins: a later birth of the
        epoch, else a later ``since_ms`` (offline at the same one: a will follows
        its birth); the latest ``last_seen_ms`` and ``last_seq`` are kept. A
        station presumed silent but heard since is up again from when it was heard
        (the leader records that). Nothing else is written: the worker that
        decided wrote it. Returns whether the station's liveness changed here."""
        sid, epoch = row["sid"], row["epoch"]
        if epoch is None:
            return False
        with self._lock:
            st = self._station(sid)
            v = st.view
            was_online = v.online
            if v.epoch != epoch:
                if v.epoch is not None and (row["last_seen_ms"] or 0) <= (v.last_seen_ms or 0):
                    return False  # not heard later than this worker heard its own epoch
                self._new_epoch(st, epoch)
            theirs, mine = _liveness(row["birth"], row["since_ms"]), _liveness(v.birth, v.since_ms)
            if theirs > mine or (theirs == mine and v.online and not row["online"]):
                v.birth, v.since_ms = row["birth"], row["since_ms"]
                v.offline_reason = row["offline_reason"]
                if bool(row["online"]) != v.online:
                    v.online = bool(row["online"])
                    self._mark(st, "station", UP if v.online else DOWN, v.since_ms)
            self._heard_elsewhere(st, row["last_seen_ms"])
            self._learn_seq(st, row["last_seq"], now_ms)
            changed = v.online != was_online
        self._drain()
        if changed:
            self._tell(sid, "status", None, now_ms)
        return changed

    def forget_parts(self) -> None:
        """Forget the state each part was last marked in, so that the next State
        marks every part again (the ledger writes only what differs from its own
        last point): a worker that starts leading does this, its predecessor
        having perhaps died before its last marks were written."""
        with self._lock:
            for st in self._stations.values():
                st.parts.clear()

    def _heard_elsewhere(self, st: _Station, heard_ms: int | None) -> None:
        """Another worker heard the station at ``heard_ms``; one that did not know
        it was presumed silent did not bring it back up: this does (the leader
        records it, dated when it was heard)."""
        v = st.view
        if heard_ms is not None and heard_ms > (v.last_seen_ms or 0):
            v.last_seen_ms = heard_ms
        heard_ms = v.last_seen_ms  # this worker may have heard it too, unaware
        if (not v.online and v.offline_reason == SILENT and heard_ms is not None
                and heard_ms > (v.since_ms or 0)):
            v.online, v.since_ms, v.offline_reason = True, heard_ms, None
            self._mark(st, "station", UP, heard_ms)
            if self.ledger.leads():
                self._log_status(st, heard_ms, "heard")
                self._save(st)

    def merge_state(self, sid: str, epoch: str, rev: int, raw: str, received_ms: int,
                    now_ms: int) -> bool:
        """Take in a State another worker stored, when newer than the one held
        (of the station's current epoch: its row is merged first). The parts it
        shows are marked as of its receipt. Returns whether it was taken."""
        with self._lock:
            st = self._stations.get(sid)
            if st is None or st.view.epoch != epoch or (
                    st.view.state_rev is not None and rev <= st.view.state_rev):
                return False
        try:
            state = m.decode(Kind.STATE, raw)
        except Exception as err:  # validated by the worker that stored it
            log.warning("stored State of %s rev %d unreadable: %s", sid, rev, err)
            return False
        with self._lock:
            v = st.view
            if v.epoch != epoch or (v.state_rev is not None and rev <= v.state_rev):
                return False  # the ingest was quicker
            v.state_rev, v.state_ts = state.rev, state.ts
            self._hold_state(st, state)
            st.state_last_seq = max(st.state_last_seq, state.last_seq)
            self._learn_seq(st, state.last_seq, now_ms)
            self._parts_from_state(st, state, received_ms)
        self._drain()
        # The open loans in this worker's memory (the storing worker wrote its own).
        self.loans.on_state(sid, state, received_ms)
        self._tell(sid, "state", state, now_ms)
        return True

    def merge_event(self, row: Mapping[str, Any], now_ms: int) -> bool:
        """Take in an event another worker stored (``events`` columns): held from
        now on (no gap, a redelivery is a duplicate), what it shows of the parts
        marked as of its receipt, its maintenance noted (the storing worker wrote
        it). Returns whether it was new here (its listeners are then told)."""
        sid, epoch, seq = row["sid"], row["epoch"], row["seq"]
        kind, received_ms = row["type"], row["received_ms"]
        with self._lock:
            st = self._station(sid)
            current = st.view.epoch == epoch
            seqs = st.seqs if current else self._other_epoch(st, epoch)
            if not seqs.add(seq):
                return False
            # Heard then (a station's last words may reach another worker than its will).
            self._heard_elsewhere(st, received_ms)
            if current:
                st.view.events_through = seqs.through
                self._learn_seq(st, seq, now_ms)
                if seq > st.state_last_seq:  # as _effects: newer than the State only
                    if kind in ("locker_offline", "locker_online"):
                        self._mark(st, "lockers", UP if kind == "locker_online" else DOWN,
                                   received_ms)
                    elif kind == "dispenser_fault":
                        self._mark(st, "dispenser", DOWN, received_ms)
                    elif kind == "dispenser_fault_cleared" and st.parts.get("dispenser") == DOWN:
                        self._mark(st, "dispenser", UP, received_ms)
        self._drain()
        if kind in ("maintenance_started", "maintenance_ended"):
            self.ledger.maintenance(sid, kind == "maintenance_started", row["at_ms"],
                                    write=False)
        event = m.Event(sid, epoch, row["ts"], bool(row["synced"]), seq, kind,
                        json.loads(row["data"]))
        if event.is_known:
            # The open loans in this worker's memory (what overdue alerts read);
            # the writes were the storing worker's, decided again from the table.
            self.loans.on_event(sid, epoch, event, row["at_ms"], received_ms)
        self._tell(sid, "event", event, now_ms)
        return True

    # -- the broker connection -------------------------------------------------------------

    def broker_up(self, now_ms: int) -> None:
        """The hub (re)connected: silence is counted from now at the earliest, so a
        broker or hub outage does not read as every station falling silent."""
        with self._lock:
            self._listening_since = now_ms

    def broker_down(self) -> None:
        """The hub cannot hear anyone: no station is judged silent meanwhile."""
        with self._lock:
            self._listening_since = None

    # -- Status (contract §4) ----------------------------------------------------------------

    def apply_status(self, status: m.Status, now_ms: int, live: bool = True) -> str:
        """Apply a birth or a death. ``live`` is False for a retained copy handed
        out on subscribe, or a message the broker delivers again (DUP): it says
        what the station published before, not that it is talking now."""
        with self._lock:
            was_online = self._online(status.sid)
            st = self._station(status.sid)
            if status.is_online:
                result = self._birth(st, status, now_ms, live)
            else:
                result = self._death(st, status, now_ms, live)
        self._drain()
        self._told(status.sid, "status", status, result == APPLIED, was_online, now_ms)
        return result

    def _birth(self, st: _Station, status: m.Status, now_ms: int, live: bool) -> str:
        v = st.view
        if v.epoch == status.epoch and v.birth is not None:
            if status.birth < v.birth:
                return STALE  # an older connection's, delayed: no sign of life now
            if status.birth == v.birth:
                # The same birth again: a retained copy, or a rebirth after the hub
                # came back (§9). Only the latter shows the station alive.
                self._heard(st, now_ms, live)
                return DUPLICATE
        if v.epoch != status.epoch:
            self._new_epoch(st, status.epoch)
        v.birth = status.birth
        self._learn_seq(st, status.last_seq, now_ms)
        if live or not v.online or v.last_seen_ms is None:
            # A retained birth of a station thought offline still brings it online
            # now; should it be stale, the silence sweep ends that from here.
            v.last_seen_ms = now_ms
        if not v.online:
            v.online, v.since_ms, v.offline_reason = True, now_ms, None
            self._mark(st, "station", UP, now_ms)
        self._log_status(st, now_ms, "birth")
        self._save(st)
        return APPLIED

    def _death(self, st: _Station, status: m.Status, now_ms: int, live: bool) -> str:
        v = st.view
        if v.birth is not None and (status.epoch, status.birth) != (v.epoch, v.birth):
            return STALE
        if v.birth is None:
            if v.epoch != status.epoch:
                self._new_epoch(st, status.epoch)
            v.birth = status.birth
        if not v.online and v.offline_reason in ("lost", "shutdown"):
            return DUPLICATE
        if status.reason == "shutdown" and live:
            v.last_seen_ms = now_ms  # the station said goodbye itself, just now
        self._learn_seq(st, status.last_seq, now_ms)
        self._go_down(st, status.reason or "lost", now_ms)
        return APPLIED

    # -- State (contract §5) -------------------------------------------------------------

    def apply_state(self, state: m.State, now_ms: int, live: bool = True,
                    raw: str | None = None) -> str:
        """Apply a State; ``raw``, the payload as received, is what is stored (a
        JSON dump of the decoded State otherwise)."""
        with self._lock:
            was_online = self._online(state.sid)
            result = self._apply_state(self._station(state.sid), state, now_ms, live, raw)
        self._drain()
        self._told(state.sid, "state", state, result == APPLIED, was_online, now_ms)
        return result

    def _apply_state(self, st: _Station, state: m.State, now_ms: int, live: bool,
                     raw: str | None) -> str:
        v = st.view
        self._heard(st, now_ms, live)
        if v.epoch == state.epoch and v.state_rev is not None:
            if state.rev == v.state_rev:
                return DUPLICATE
            if state.rev < v.state_rev:
                return STALE
        if v.epoch != state.epoch:
            self._new_epoch(st, state.epoch)
        v.state_rev, v.state_ts = state.rev, state.ts
        self._hold_state(st, state)
        st.state_last_seq = max(st.state_last_seq, state.last_seq)
        self._learn_seq(st, state.last_seq, now_ms)
        self._parts_from_state(st, state, now_ms)
        values = {"sid": v.sid, "epoch": state.epoch, "rev": state.rev, "ts": state.ts,
                  "received_ms": now_ms,
                  # What the station sent, as it sent it: a dump would cost the
                  # ingest a tenth of its time (the load normalises it again).
                  "state": raw if raw is not None else json.dumps(state.to_dict(),
                                                                  ensure_ascii=False)}
        self._submit(Rows(self._save_state, values, key=v.sid))  # the newest State wins
        # Returns of other stations' loans here are confirmed by the bank in a slot.
        for rows in self.loans.on_state(v.sid, state, now_ms):
            self._submit(rows)
        self._save(st)
        return APPLIED

    def _parts_from_state(self, st: _Station, state: m.State, now_ms: int) -> None:
        lockers, dispenser, health = state.lockers, state.dispenser, state.health
        if lockers is not None:
            self._mark(st, "lockers", UP if lockers.online else DOWN, now_ms)
        elif st.parts.get("lockers", UNKNOWN) != UNKNOWN:
            self._mark(st, "lockers", UNKNOWN, now_ms)
        if dispenser is not None:
            working = dispenser.online and dispenser.fault is None
            self._mark(st, "dispenser", UP if working else DOWN, now_ms)
        elif st.parts.get("dispenser", UNKNOWN) != UNKNOWN:
            self._mark(st, "dispenser", UNKNOWN, now_ms)
        kiosk = health.kiosk if health is not None else None
        self._mark(st, "kiosk", {"ok": UP, "stale": DOWN}.get(kiosk, UNKNOWN), now_ms)

    # -- Events (contract §6) -------------------------------------------------------------

    def apply_event(self, event: m.Event, now_ms: int, live: bool = True) -> str:
        with self._lock:
            was_online = self._online(event.sid)
            result = self._apply_event(self._station(event.sid), event, now_ms, live)
        self._drain()
        self._told(event.sid, "event", event, result == APPLIED, was_online, now_ms)
        return result

    def _apply_event(self, st: _Station, event: m.Event, now_ms: int, live: bool) -> str:
        v = st.view
        self._heard(st, now_ms, live)
        if v.epoch is None:
            self._new_epoch(st, event.epoch)
            self._save(st)  # the epoch, so that a restart knows what it holds
        current = v.epoch == event.epoch
        seqs = st.seqs if current else self._other_epoch(st, event.epoch)
        taken = seqs.add(event.seq)
        if not taken:
            return DUPLICATE
        if not current and len(seqs.ahead) > OTHER_AHEAD_KEPT:
            taken = _shed_other(seqs)
        if taken is not True:
            self._gave_up(st, event.epoch, taken, AHEAD_KEPT if current else OTHER_AHEAD_KEPT)
        if current:
            v.events_through = seqs.through
            self._learn_seq(st, event.seq, now_ms)
        # A station without a synced clock cannot date it; the hub's receipt does.
        at_ms = event_time(event, now_ms)
        if at_ms != event.ts and event.synced:
            self._clock_ahead(st, event, now_ms)
        effects = self._effects(st, event, at_ms, now_ms, current)
        row = {"sid": event.sid, "epoch": event.epoch, "seq": event.seq, "type": event.type,
               "ts": event.ts, "synced": event.synced, "received_ms": now_ms, "at_ms": at_ms,
               "data": _data_json(event.data).decode()}
        if not effects:
            self._submit(Rows(self._insert_event, row))  # batched with its neighbours
        else:
            # Stored before (a replay after a crash), it causes nothing twice.
            self._submit(Guarded(self._insert_event, row, effects))
        return APPLIED

    def _effects(self, st: _Station, event: m.Event, at_ms: int, now_ms: int,
                 current: bool) -> list[Callable[[sa.Connection], None]]:
        """What a new event causes, as writes for the transaction that stores it."""
        if not event.is_known:
            return []  # stored, not acted on (contract §6)
        out: list[Callable[[sa.Connection], None]] = []
        out.extend(self.loans.on_event(event.sid, event.epoch, event, at_ms, now_ms))
        kind, sid = event.type, event.sid
        if kind in ("maintenance_started", "maintenance_ended"):
            on = kind == "maintenance_started"
            out.append(lambda conn: self.ledger.maintenance(sid, on, at_ms))
        # A part's state from an event only when it is newer than what the last
        # State showed; a replayed old event must not undo a newer State.
        fresh = current and event.seq > st.state_last_seq
        if fresh and kind in ("locker_offline", "locker_online"):
            self._mark(st, "lockers", UP if kind == "locker_online" else DOWN, now_ms, out)
        if fresh and kind == "dispenser_fault":
            self._mark(st, "dispenser", DOWN, now_ms, out)
        if fresh and kind == "dispenser_fault_cleared" and st.parts.get("dispenser") == DOWN:
            self._mark(st, "dispenser", UP, now_ms, out)
        return out

    def _other_epoch(self, st: _Station, epoch: str) -> Seqs:
        if st.others is None:
            st.others = OrderedDict()
        seqs = st.others.get(epoch)
        if seqs is None:
            # Not loaded from the database: after a restart a duplicate of an old
            # epoch is caught by the insert (ON CONFLICT DO NOTHING), not here.
            seqs = st.others[epoch] = Seqs()
            while len(st.others) > OTHER_EPOCHS_KEPT:
                st.others.popitem(last=False)
        else:
            st.others.move_to_end(epoch)
        return seqs

    # -- CommandResult (contract §7) -----------------------------------------------------

    def apply_result(self, result: m.CommandResult, now_ms: int, live: bool = True) -> str:
        """Hand a station's answer to the commands; a replay's answer naming events
        the station no longer has ends the hub's asking for them."""
        with self._lock:
            was_online = self._online(result.sid)
            self._heard(self._station(result.sid), now_ms, live)
        self._drain()
        self._told(result.sid, "result", None, False, was_online, now_ms)
        if self.commands is None:
            return STALE
        outcome = self.commands.result(result, now_ms)
        if outcome == APPLIED:
            self._replay_answered(result)
        return outcome

    def replay_sent(self, sid: str, command_id: str, from_seq: int, to_seq: int) -> None:
        """Remember a replay command, to read the station's answer to it."""
        with self._lock:
            st = self._stations.get(sid)
            if st is None or st.view.epoch is None:
                return
            self._replays[command_id] = _Replay(sid, st.view.epoch, from_seq, to_seq)
            while len(self._replays) > REPLAYS_KEPT:
                self._replays.popitem(last=False)

    def _replay_answered(self, result: m.CommandResult) -> None:
        with self._lock:
            asked = self._replays.pop(result.id, None)
            if asked is None or not result.ok:
                return
            st = self._stations.get(asked.sid)
            if st is None or st.view.epoch != asked.epoch:
                return
            for span in (result.data or {}).get("missing") or ():
                try:
                    lo, hi = (int(span[0]), int(span[1]))
                except (TypeError, ValueError, IndexError):
                    log.warning("replay answer from %s: unreadable missing range %r",
                                asked.sid, span)
                    continue
                lo, hi = max(lo, asked.lo), min(hi, asked.hi)
                if lo <= hi:
                    log.warning("station %s no longer has events %d..%d; not asking again",
                                asked.sid, lo, hi)
                    st.seqs.give_up(lo, hi)
            st.view.events_through = st.seqs.through

    # -- silence and gaps (scheduler) -------------------------------------------------------

    def sweep_silent(self, now_ms: int) -> list[str]:
        """Mark down every online station not heard for ``missed_heartbeats``
        heartbeats (counted from the hub's connection at the earliest); the
        outage starts when it was last heard. Returns their sids."""
        limit = int(self.config.heartbeat * self.config.missed_heartbeats * 1000)
        gone = []
        with self._lock:
            if self._listening_since is None:
                return gone
            for st in self._stations.values():
                v = st.view
                if not v.online:
                    continue
                heard = max(v.last_seen_ms or 0, self._listening_since)
                if now_ms - heard > limit:
                    self._go_down(st, SILENT, now_ms)
                    gone.append(v.sid)
        self._drain()
        for sid in gone:
            self._tell(sid, "status", None, now_ms)
        return gone

    def gaps_due(self, now_ms: int) -> list[tuple[str, int, int]]:
        """(sid, from_seq, to_seq) for each online station with events missing for
        ``replay_after`` and no replay asked of it in the last ``replay_every``."""
        grace = int(self.config.replay_after * 1000)
        every = int(self.config.replay_every * 1000)
        due = []
        with self._lock:
            if self._listening_since is None:
                return due
            for sid in sorted(self._marked):
                st = self._stations.get(sid)
                if st is None:
                    self._marked.discard(sid)
                    continue
                span = self._gap_due(st, now_ms, grace)
                if not st.marks:
                    self._marked.discard(sid)  # nothing missing (any more)
                if span is None or not st.view.online or now_ms < st.next_replay_ms:
                    continue
                lo, hi = span
                if lo == st.replay_from:
                    st.replays_of_gap += 1
                else:
                    st.replay_from, st.replays_of_gap = lo, 1
                if st.replays_of_gap > MAX_REPLAYS_OF_ONE_GAP:
                    log.warning("station %s: events %d..%d still missing after %d replays; "
                                "giving them up", st.view.sid, lo, hi, MAX_REPLAYS_OF_ONE_GAP)
                    st.seqs.give_up(lo, hi)
                    st.view.events_through = st.seqs.through
                    continue
                st.next_replay_ms = now_ms + every
                due.append((st.view.sid, lo, hi))
        return due

    def _gap_due(self, st: _Station, now_ms: int, grace: int) -> tuple[int, int] | None:
        through = st.seqs.through
        marks = st.marks
        while marks and marks[0][0] <= through:
            del marks[0]
        if not marks:
            return None
        upto = None
        while marks and marks[0][1] + grace <= now_ms:
            upto = marks.pop(0)
        if upto is None:
            return None
        marks.insert(0, upto)  # the due ones merged into one
        return st.seqs.first_missing(upto[0], self.config.replay_max)

    # -- the bookkeeping behind the rules ------------------------------------------------------

    def _new_epoch(self, st: _Station, epoch: str) -> None:
        """The station's storage was wiped (or it is new): start its record afresh."""
        v = st.view
        if v.epoch is not None:
            # A wiped card is rare; a station alternating two epochs (a stolen
            # certificate, two cards in one cabinet) would be a line a message.
            self.notes.say(log, logging.WARNING, v.sid, NEW_EPOCH,
                           "station %s: new epoch %s (was %s): its storage was wiped",
                           v.sid, epoch, v.epoch)
            if st.others is None:
                st.others = OrderedDict()
            st.others[v.epoch] = st.seqs
            if len(st.seqs.ahead) > OTHER_AHEAD_KEPT:
                self._gave_up(st, v.epoch, _shed_other(st.seqs), OTHER_AHEAD_KEPT)
            while len(st.others) > OTHER_EPOCHS_KEPT:
                st.others.popitem(last=False)
        v.epoch, v.birth = epoch, None
        v.state, v.state_rev, v.state_ts, v.last_seq = None, None, None, None
        st.doc = None
        st.seqs = (st.others.pop(epoch, None) if st.others else None) or Seqs()
        v.events_through = st.seqs.through
        st.known_high, st.state_last_seq = st.seqs.through, 0
        st.marks.clear()
        st.next_replay_ms = st.replay_from = st.replays_of_gap = 0

    def _gave_up(self, st: _Station, epoch: str, span: tuple[int, int], kept: int) -> None:
        """Say (once an hour) that ``st`` held more than ``kept`` events above a
        gap of ``epoch``, and which were given up for it."""
        sid = st.view.sid
        self.notes.say(log, logging.WARNING, sid, EVENTS_GIVEN_UP,
                       "station %s (epoch %s): more than %d events held above a gap; "
                       "events %d..%d given up, not asked for again", sid, epoch, kept, *span)

    def _learn_seq(self, st: _Station, seq: int | None, now_ms: int) -> None:
        """The station has created events up to ``seq``: any not held are missing
        from now on."""
        if seq is None:
            return
        v = st.view
        v.last_seq = max(v.last_seq or 0, seq)
        if seq <= st.known_high:
            return
        st.known_high = seq
        if seq <= st.seqs.through:
            return
        # One mark a second at most: a seq is then dated up to 1 s early.
        if st.marks and now_ms - st.marks[-1][1] < 1000:
            st.marks[-1][0] = seq
        else:
            st.marks.append([seq, now_ms])
            self._marked.add(v.sid)

    def _clock_ahead(self, st: _Station, event: m.Event, now_ms: int) -> None:
        """Say once per station and hub run that its synced clock is ahead."""
        if st.clock_ahead_told:
            return
        st.clock_ahead_told = True
        log.warning("station %s says its clock is synced but dates event %d %.0f s ahead "
                    "of the hub's; its events are dated by their receipt",
                    st.view.sid, event.seq, (event.ts - now_ms) / 1000)

    def _heard(self, st: _Station, now_ms: int, live: bool) -> None:
        v = st.view
        if not live:
            if v.last_seen_ms is None:
                v.last_seen_ms = now_ms  # a baseline for the silence sweep
            return
        v.last_seen_ms = now_ms
        if not v.online and v.offline_reason == SILENT:
            # It was only presumed down for its silence; it is talking again.
            v.online, v.since_ms, v.offline_reason = True, now_ms, None
            self._mark(st, "station", UP, now_ms)
            self._log_status(st, now_ms, "heard")
            self._save(st)

    def _go_down(self, st: _Station, reason: str, now_ms: int) -> None:
        v = st.view
        was_online = v.online
        v.online, v.offline_reason = False, reason
        if was_online or v.since_ms is None:
            # The outage began when the station was last heard, not now.
            v.since_ms = v.last_seen_ms if v.last_seen_ms is not None else now_ms
            self._mark(st, "station", DOWN, v.since_ms)
        self._log_status(st, v.since_ms, reason)
        self._save(st)

    def _mark(self, st: _Station, component: str, state: str, at_ms: int,
              into: list | None = None) -> None:
        """A ledger change point, as a writer op (``into`` an event's ops): the ledger
        then sees every change in the order the fleet decided it."""
        if component != "station" and st.parts.get(component, UNKNOWN) == state:
            return
        st.parts[component] = state
        sid = st.view.sid

        def mark(conn: sa.Connection) -> None:
            self.ledger.mark(sid, component, state, at_ms)

        if into is not None:
            into.append(mark)
        else:
            # Writes nothing itself (the ledger submits its point): the Rows
            # around it stay one executemany.
            self._submit(Commuting(mark))

    def _log_status(self, st: _Station, at_ms: int, reason: str) -> None:
        v = st.view
        values = {"sid": v.sid, "at_ms": at_ms, "online": v.online, "reason": reason,
                  "epoch": v.epoch, "birth": v.birth}
        self._submit(Rows(self._insert_status, values))

    def _save(self, st: _Station) -> None:
        """The station's row as it is now (a full snapshot: the last write wins)."""
        v = st.view
        values = {"sid": v.sid, "name": v.name, "grp": v.group, "epoch": v.epoch,
                  "birth": v.birth, "online": v.online, "since_ms": v.since_ms,
                  "last_seen_ms": v.last_seen_ms, "offline_reason": v.offline_reason,
                  "events_through": st.seqs.through, "last_seq": v.last_seq}
        self._submit(Rows(self._save_station, values, key=v.sid))

    # -- handing decisions to the writer, in order --------------------------------------------

    def _submit(self, op: Callable[[sa.Connection], Any]) -> None:
        self._pending.append(op)

    def _drain(self) -> None:
        """Hand the queued ops to the writer outside the fleet lock (``submit``
        blocks while the writer is full; readers of the fleet must not), one
        drainer at a time, in the order they were decided."""
        with self._drain_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    op = self._pending.popleft()
                self.writer.submit(op)
