"""The station's durable memory: its epoch, its ``rev`` counter and its events.

One SQLite file in the data directory. Its creation is the creation of the
station's epoch (contract §1): a wiped card means a new epoch, and the hub resets
its counters for the station.

``rev`` must rise strictly across restarts (contract §3), but a write per rev
would cost an fsync per State on an SD card (1–20 ms). So revs are reserved in
blocks: the file records the top of the current block, and after a crash the
next process starts above it. Revs skipped that way are harmless; only order
matters.

The event log is also the outbox (docs/delivery.md): an event is written here
before anything is published, marked ``sent`` once the broker acknowledged it,
and kept after that so a ``replay`` can be served — delivered events for at
least 7 days or the newest 100 000, whichever keeps more. The file is bounded
all the same: past ``max_rows`` the oldest rows go, even unsent ones, with a
loud log and a counter, because a full SD card stops the whole station.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.ids import new_epoch
from protocol.messages import Event

log = logging.getLogger(__name__)

REV_BLOCK = 100

#: Contract §3: delivered events are kept at least this long ...
KEEP_MS = 7 * 24 * 3600 * 1000
#: ... or this many of the newest, whichever keeps more.
KEEP_EVENTS = 100_000
#: Hard bound on rows, unsent ones included (about 150 MB of 300-byte events).
MAX_ROWS = 500_000

#: Rows one prune() deletes at most per kind (bounds the time it holds the loop).
PRUNE_LIMIT = 10_000

# Rows are written in batches of this many seqs per statement (SQLite's limit on
# host parameters is 32 766 in recent versions, 999 in old ones).
_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    synced INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_unsent ON events (seq) WHERE sent = 0;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# Cumulative per epoch (contract §5 ``counters``), kept in step with the events
# that move them, in the same transaction.
COUNTED = {"visit": "visits", "bank_borrowed": "borrows", "bank_returned": "returns"}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the event log, as recorded (``ts`` and ``seq`` never change)."""

    seq: int
    ts: int
    synced: bool
    type: str
    data: dict[str, Any]
    sent: bool

    def to_event(self, sid: str, epoch: str) -> Event:
        """The contract §6 message for this row, with its original ``seq`` and ``ts``."""
        return Event(sid=sid, epoch=epoch, ts=self.ts, synced=self.synced, seq=self.seq,
                     type=self.type, data=self.data)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one :meth:`Journal.prune` removed."""

    expired: int = 0  # delivered events past the replay window
    capped: int = 0  # rows removed by the hard cap (``capped_unsent`` of them unsent)
    capped_unsent: int = 0
    more: bool = False  # the limit was reached: call again


_COLUMNS = "seq, ts, synced, type, data, sent"


def _row(r: tuple) -> StoredEvent:
    return StoredEvent(seq=r[0], ts=r[1], synced=bool(r[2]), type=r[3], data=json.loads(r[4]),
                       sent=bool(r[5]))


def _check_event(epoch: str, ts: int, synced: bool, type_: str, data: dict) -> None:
    """Refuse, at the moment it is recorded, an event the hub would reject.

    A row that cannot be published would sit at the head of the outbox for
    ever; better the caller hears about it now (InvalidMessage names the field).
    """
    Event.from_dict({"v": 1, "sid": "journal-check", "epoch": epoch, "ts": ts,
                     "synced": synced, "seq": 1, "type": type_, "data": data})


class Journal:
    """Epoch, rev and the event outbox of one station, in ``data_dir/station.db``."""

    def __init__(self, data_dir: str | Path, *, max_rows: int = MAX_ROWS,
                 keep_ms: int = KEEP_MS, keep_events: int = KEEP_EVENTS) -> None:
        if max_rows < 1 or keep_events < 0 or keep_ms < 0:
            raise ValueError("max_rows must be >= 1, keep_ms and keep_events >= 0")
        self.max_rows = max_rows
        self.keep_ms = keep_ms
        self.keep_events = keep_events
        self.path = Path(data_dir) / "station.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # The agent's threads (MQTT network thread, main loop) share one
        # connection; the lock serialises them.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an event the agent said it recorded must survive a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._lock:
            self.epoch = self._meta("epoch") or self._init_epoch()
            self._rev_top = int(self._meta("rev_top") or 0)
            self._rev = self._rev_top
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
            self._last_seq = int(self._meta("last_seq") or 0)
            self._last_seq = max(self._last_seq, row[0] or 0)
            self._dropped_unsent = int(self._meta("dropped_unsent") or 0)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    def _init_epoch(self) -> str:
        epoch = new_epoch()
        self._set_meta("epoch", epoch)
        return epoch

    def next_rev(self) -> int:
        """The next ``rev``, strictly above every rev any earlier process handed out."""
        with self._lock:
            self._rev += 1
            if self._rev > self._rev_top:
                self._rev_top = self._rev + REV_BLOCK - 1
                self._set_meta("rev_top", self._rev_top)
            return self._rev

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: other modules' rows and events together, or nothing.

        >>> with journal.transaction() as tx:                      # doctest: +SKIP
        ...     tx.execute("INSERT INTO loans ...")
        ...     journal.add_event(tx, ts, synced, "bank_borrowed", data)
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            seq_before, rev_top_before = self._last_seq, self._rev_top
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._last_seq = seq_before
                if self._rev_top != rev_top_before:
                    # A rev block reserved inside the failed transaction was
                    # rolled back on disk but is being handed out: record it
                    # again, or a restart would reuse those revs.
                    self._set_meta("rev_top", self._rev_top)
                raise

    def add_event(self, tx: sqlite3.Connection, ts: int, synced: bool, type_: str,
                  data: dict) -> int:
        """Record an event inside ``transaction()``; returns its gap-free ``seq``.

        Raises InvalidMessage (recording nothing) when ``data`` does not fit the
        contract for ``type_``.
        """
        _check_event(self.epoch, ts, synced, type_, data)
        seq = self._last_seq + 1
        tx.execute(
            "INSERT INTO events (seq, ts, synced, type, data) VALUES (?, ?, ?, ?, ?)",
            (seq, ts, int(synced), type_, json.dumps(data, ensure_ascii=False)),
        )
        self._set_meta("last_seq", seq)
        counter = COUNTED.get(type_)
        if counter is not None:
            step = int(data.get("count", 1)) if type_ == "visit" else 1
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (counter, step),
            )
        self._last_seq = seq
        return seq

    def append_event(self, ts: int, synced: bool, type_: str, data: dict) -> int:
        """Record an event durably in its own transaction and return its ``seq``."""
        with self.transaction() as tx:
            return self.add_event(tx, ts, synced, type_, data)

    # -- the outbox side -------------------------------------------------------------

    def pending(self, limit: int, after_seq: int = 0) -> list[StoredEvent]:
        """Up to ``limit`` unsent events with ``seq > after_seq``, by seq."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE sent = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """Mark events delivered, all in one transaction (one fsync, not one each)."""
        seqs = sorted(set(seqs))
        if not seqs:
            return
        with self.transaction() as tx:
            for i in range(0, len(seqs), _BATCH):
                chunk = seqs[i:i + _BATCH]
                marks = ",".join("?" * len(chunk))
                tx.execute(f"UPDATE events SET sent = 1 WHERE seq IN ({marks})", chunk)

    def events(self, from_seq: int, to_seq: int, limit: int | None = None) -> list[StoredEvent]:
        """Stored events with ``from_seq <= seq <= to_seq``, by seq, sent or not."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (from_seq, to_seq, -1 if limit is None else limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def stored(self, from_seq: int, to_seq: int) -> int:
        """How many events with ``from_seq <= seq <= to_seq`` this journal holds."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events WHERE seq BETWEEN ? AND ?",
                                    (from_seq, to_seq)).fetchone()[0]

    def missing(self, from_seq: int, to_seq: int) -> list[tuple[int, int]]:
        """The sub-ranges of ``from_seq..to_seq`` (inclusive) this journal does not hold:
        pruned, dropped by the hard cap, or never created (above ``last_seq``)."""
        with self._lock:
            held = [r[0] for r in self._db.execute(
                "SELECT seq FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (from_seq, to_seq))]
        gaps, expect = [], from_seq
        for seq in held:
            if seq > expect:
                gaps.append((expect, seq - 1))
            expect = seq + 1
        if expect <= to_seq:
            gaps.append((expect, to_seq))
        return gaps

    def outbox_size(self) -> int:
        """Events not yet acknowledged by the broker (contract §5 ``health.outbox``)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events WHERE sent = 0").fetchone()[0]

    @property
    def dropped_unsent(self) -> int:
        """Unsent events the hard cap has deleted since the epoch began (should stay 0)."""
        with self._lock:
            return self._dropped_unsent

    def prune(self, now_ms: int, limit: int = PRUNE_LIMIT) -> Pruned:
        """Bound the file: drop delivered events past the replay window, then, past
        ``max_rows``, the oldest rows whatever they are.

        A delivered event goes only when it is older than ``keep_ms`` (by its
        ``ts``) AND not among the newest ``keep_events`` — contract §3 asks for
        whichever of the two keeps more. At most ``limit`` rows go per kind and
        call, so one call never holds the station loop for long on an SD card;
        ``Pruned.more`` says another call has work left.
        """
        with self.transaction() as tx:
            expired = tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE sent = 1 "
                "AND ts < ? AND seq <= ? ORDER BY seq LIMIT ?)",
                (now_ms - self.keep_ms, self._last_seq - self.keep_events, limit),
            ).rowcount
            capped, capped_unsent, over = self._cap(tx, limit)
        if expired:
            log.info("pruned %d delivered events older than the replay window", expired)
        return Pruned(expired, capped, capped_unsent, more=expired >= limit or over)

    def _cap(self, tx: sqlite3.Connection, limit: int) -> tuple[int, int, bool]:
        lowest = tx.execute("SELECT MIN(seq) FROM events").fetchone()[0]
        # Rows lie within lowest..last_seq, so that span bounds their number
        # without a full COUNT(*) on a healthy station.
        if lowest is None or self._last_seq - lowest + 1 <= self.max_rows:
            return 0, 0, False
        excess = tx.execute("SELECT COUNT(*) FROM events").fetchone()[0] - self.max_rows
        if excess <= 0:
            return 0, 0, False
        n = min(excess, limit)
        cut = tx.execute("SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?",
                         (n - 1,)).fetchone()[0]
        unsent = tx.execute("SELECT COUNT(*) FROM events WHERE sent = 0 AND seq <= ?",
                            (cut,)).fetchone()[0]
        tx.execute("DELETE FROM events WHERE seq <= ?", (cut,))
        if unsent:
            self._dropped_unsent += unsent
            self._set_meta("dropped_unsent", self._dropped_unsent)
            log.error(
                "JOURNAL FULL: over the cap of %d rows; deleted events up to seq %d, "
                "%d of them NEVER DELIVERED (%d lost in this epoch so far)",
                self.max_rows, cut, unsent, self._dropped_unsent)
        else:
            log.warning("journal over its cap of %d rows: deleted %d delivered events up to "
                        "seq %d; replays below that are no longer possible",
                        self.max_rows, n, cut)
        return n, unsent, excess > n

    # -- counters and meta ------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """``visits``, ``borrows``, ``returns`` since the epoch began."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(rows.get(name, 0)) for name in ("visits", "borrows", "returns")}

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: object) -> None:
        with self._lock:
            self._set_meta(key, value)

    def close(self) -> None:
        with self._lock:
            self._db.close()
