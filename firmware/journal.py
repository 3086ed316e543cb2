"""The station's durable memory: its epoch, its ``rev`` counter and its events.

One SQLite file in the data directory. Its creation is the creation of the
station's epoch (contract §1): a wiped card means a new epoch, and the hub resets
its counters for the station.

``rev`` must rise strictly across restarts (contract §3), but a write per rev
would cost an fsync per State on an SD card (1–20 ms). So revs are reserved in
blocks: the file records the top of the current block, and after a crash the
next process starts above it. Revs skipped that way are harmless; only order
matters.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protocol.ids import new_epoch

REV_BLOCK = 100

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


class Journal:
    """Epoch, rev and the event outbox of one station, in ``data_dir/station.db``."""

    def __init__(self, data_dir: str | Path) -> None:
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
            seq_before = self._last_seq
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._last_seq = seq_before
                raise

    def add_event(self, tx: sqlite3.Connection, ts: int, synced: bool, type_: str,
                  data: dict) -> int:
        """Record an event inside ``transaction()``; returns its gap-free ``seq``."""
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
