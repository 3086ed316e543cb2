"""Several hub workers, one fleet: each learns what the others stored.

With ``mqtt.shared_group`` the broker hands each message of a station to one of
several ``yizhan hub`` workers sharing one PostgreSQL (docs/scaling.md). Each
worker decides in memory, as one hub does, and writes what it decided; the
database is the authority between them:

* the stations' rows are written conditionally (``station_upsert``): a worker
  whose view is behind never undoes a newer birth, a later transition, a later
  ``last_seen_ms`` or a higher ``last_seq``; States only move to a newer
  (epoch, rev) and each event is stored once, as with one worker;
* every ``SYNC_EVERY`` seconds each worker reads the rows the others wrote since
  it last looked (``pull``) and merges them into its view (``Fleet.merge_*``),
  telling the fleet's listeners, so the leader's alert engine sees every
  station's every State and event, and every worker's API the same fleet;
* what is derived from the whole fleet is done once, by the leader
  (hub/storage/leader.py): the ledger's change points (``Ledger.leads``), the
  silent sweep, and replays — a hole in (sid, epoch, seq) that lasts
  ``replay_after`` is checked against the events table (``missing``) before the
  station is asked, so no worker asks for what another one stored.

What a worker wrote is found by when it was written on the database's own clock
(``changed_us``/``stored_us``, migration 0017), not the workers' clocks. A row
is stamped inside its transaction, before the commit, so a pull reads from the
start of the oldest transaction still writing (``pg_stat_activity``) rather
than from the moment it last looked: nothing committed late is skipped, and
what is read twice is merged once (the merges are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hub.fleet.view import Fleet
from hub.storage.schema import DB_NOW_US, events, station_state, stations
from hub.storage.store import Store

log = logging.getLogger(__name__)

#: Seconds between pulls (the scheduler's ``sync`` job): how far behind one
#: worker's view of what another stored may be, well inside ``replay_after``.
SYNC_EVERY = 2
#: A row is stamped a moment before its transaction shows as writing in
#: pg_stat_activity: each pull reads this much further back (microseconds).
SLACK_US = 1_000_000
#: The first pull reads this far back: what was written while the fleet loaded.
START_BACK_US = 60_000_000
#: A transaction writing for longer than this no longer holds the pulls back
#: (an idle session left in a transaction must not make each pull read hours).
OLDEST_BACK_US = 60_000_000

_NOW = sa.literal_column(DB_NOW_US)
_NONE = sa.literal_column("-1")
_ZERO = sa.literal_column("0")

# Now, and the start of the oldest transaction of this database that has written.
_WATERMARK = sa.text(
    f"SELECT {DB_NOW_US}, (SELECT (extract(epoch from min(xact_start)) * 1000000)::bigint"
    " FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_xid IS NOT NULL)")

_EVENT_COLUMNS = (events.c.sid, events.c.epoch, events.c.seq, events.c.type, events.c.ts,
                  events.c.synced, events.c.received_ms, events.c.at_ms, events.c.data)


def station_upsert() -> Any:
    """The stations row as a worker saw it, merged into the stored one as
    ``Fleet.merge_station`` merges a row into a view: a row of another epoch
    replaces it when heard later; in one epoch the liveness (birth, online,
    since, reason) of the later (birth, since) wins, offline at a tie; the
    latest ``last_seen_ms`` and highest ``last_seq`` and ``events_through`` are
    kept. Every write moves ``changed_us``: the other workers read it again."""
    ins = postgresql.insert(stations)
    t, x = stations.c, ins.excluded
    heard_later = sa.func.coalesce(x.last_seen_ms, _ZERO) >= sa.func.coalesce(
        t.last_seen_ms, _ZERO)
    other_epoch = t.epoch.is_distinct_from(x.epoch)
    new_epoch = sa.and_(other_epoch, heard_later)
    theirs = sa.tuple_(sa.func.coalesce(x.birth, _NONE), sa.func.coalesce(x.since_ms, _NONE))
    ours = sa.tuple_(sa.func.coalesce(t.birth, _NONE), sa.func.coalesce(t.since_ms, _NONE))
    later = sa.or_(new_epoch, sa.and_(
        sa.not_(other_epoch),
        sa.or_(theirs > ours, sa.and_(theirs == ours, sa.or_(sa.not_(x.online), t.online)))))

    def pick(name: str, when: Any) -> Any:
        return sa.case((when, x[name]), else_=t[name])

    def highest(name: str) -> Any:
        return sa.case((new_epoch, x[name]), (other_epoch, t[name]),
                       else_=sa.func.greatest(t[name], x[name]))

    return ins.on_conflict_do_update(index_elements=["sid"], set_={
        "name": x.name, "grp": x.grp, "epoch": pick("epoch", new_epoch),
        "birth": pick("birth", later), "online": pick("online", later),
        "since_ms": pick("since_ms", later), "offline_reason": pick("offline_reason", later),
        "last_seen_ms": highest("last_seen_ms"), "events_through": highest("events_through"),
        "last_seq": highest("last_seq"), "changed_us": _NOW,
    }).execution_options(preserve_rowcount=True)


def state_upsert() -> Any:
    """As the one worker's: only a newer (epoch, rev) replaces the stored State,
    and then ``changed_us`` moves."""
    ins = postgresql.insert(station_state)
    t, x = station_state.c, ins.excluded
    return ins.on_conflict_do_update(
        index_elements=["sid"],
        set_={"epoch": x.epoch, "rev": x.rev, "ts": x.ts, "received_ms": x.received_ms,
              "state": x.state, "changed_us": _NOW},
        where=sa.or_(t.epoch != x.epoch, t.rev < x.rev),
    ).execution_options(preserve_rowcount=True)


class Sync:
    """One worker's side: its conditional writes, and the pulls of the others'.

    >>> sync = Sync(store, fleet, shared=config.shared_group is not None)
    >>> sync.pull(clock.ms())     # every SYNC_EVERY s
    >>> sync.missing(sid, epoch, 1, 40, clock.ms())   # before the leader asks for a replay
    [(17, 17)]

    Not shared (one worker, or SQLite): nothing is changed and ``pull`` does nothing.
    """

    def __init__(self, store: Store, fleet: Fleet, *, shared: bool) -> None:
        self.store = store
        self.fleet = fleet
        self.shared = shared and store.dialect == "postgresql"
        #: Rows merged so far: (stations, states, events) that were news here.
        self.merged = [0, 0, 0]
        self.pulls = 0
        self._mark_us: int | None = None
        if self.shared:
            # The fleet's own statements, made conditional where workers may race.
            fleet._save_station = station_upsert()
            fleet._save_state = state_upsert()
            with store.engine.connect() as conn:
                now_us, _ = conn.execute(_WATERMARK).one()
            self._mark_us = now_us - START_BACK_US

    def pull(self, now_ms: int) -> int:
        """Merge what was written since the last pull; how many rows were news."""
        if not self.shared or self._mark_us is None:
            return 0
        since = self._mark_us - SLACK_US
        with self.store.engine.connect() as conn:
            now_us, oldest_us = conn.execute(_WATERMARK).one()
            rows = conn.execute(sa.select(stations).where(stations.c.changed_us > since)
                                .order_by(stations.c.changed_us)).mappings().all()
            evs = conn.execute(sa.select(*_EVENT_COLUMNS).where(events.c.stored_us > since)
                               .order_by(events.c.sid, events.c.epoch, events.c.seq)
                               ).mappings().all()
            states = conn.execute(
                sa.select(station_state.c.sid, station_state.c.epoch, station_state.c.rev,
                          station_state.c.received_ms, station_state.c.state)
                .where(station_state.c.changed_us > since)).all()
        mark = now_us if oldest_us is None else min(now_us, oldest_us)
        self._mark_us = max(mark, now_us - OLDEST_BACK_US)
        self.pulls += 1
        return self.merge(rows, evs, states, now_ms)

    def merge(self, rows: list[Mapping[str, Any]], evs: list[Mapping[str, Any]],
              states: list[Any], now_ms: int) -> int:
        """Stations first (a new epoch is learned from its row), then the events,
        then the States."""
        fleet = self.fleet
        news = [sum(fleet.merge_station(r, now_ms) for r in rows),
                sum(fleet.merge_event(e, now_ms) for e in evs),
                sum(fleet.merge_state(s.sid, s.epoch, s.rev, s.state, s.received_ms, now_ms)
                    for s in states)]
        for i, n in enumerate(news):
            self.merged[i] += n
        return sum(news)

    def missing(self, sid: str, epoch: str, lo: int, hi: int, now_ms: int
                ) -> tuple[int, int] | None:
        """Of the events ``lo..hi`` of (sid, epoch), the span still to ask the
        station for once those another worker stored are counted (and merged):
        None when every one is stored."""
        if not self.shared:
            return lo, hi
        q = (sa.select(*_EVENT_COLUMNS)
             .where(events.c.sid == sid, events.c.epoch == epoch, events.c.seq >= lo,
                    events.c.seq <= hi).order_by(events.c.seq))
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        for r in rows:
            self.fleet.merge_event(r, now_ms)
        held = {r["seq"] for r in rows}
        gaps = [seq for seq in range(lo, hi + 1) if seq not in held]
        return (gaps[0], gaps[-1]) if gaps else None
