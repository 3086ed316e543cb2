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

Storage faults (docs/agent-internals.md, "Storage faults") never stop the
station and never lose what it was told:

- A write the card refuses — full (``SQLITE_FULL``, ENOSPC), read-only
  (``SQLITE_READONLY``, EROFS) or failing (EIO) — is kept in memory, in order,
  by :meth:`record`; :meth:`retry` (the outbox calls it every few seconds)
  writes it once the card takes writes again. Meanwhile :attr:`fault` names
  the trouble and :attr:`writable` is False: lending refuses what it could not
  record, and the State reports no free disk. :meth:`commit` is the strict
  form: written now, or StorageFault.
- A file SQLite finds damaged at start (``PRAGMA quick_check``) is salvaged
  (:mod:`firmware.salvage`): what reads is kept, the damaged file goes to
  ``corrupt/`` (the newest three kept), the epoch survives when the meta table
  reads whole, and a ``journal_recovered`` event says what was dropped.
- A data directory that cannot be written at start is read into memory: the
  station runs on what it holds and writes everything back when it can.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from firmware import salvage as _salvage
from firmware.salvage import Recovery
from firmware.storage import (
    FAILING,
    FULL,
    READ_ONLY,
    StorageFault,
    free_mb,
    fsync_path,
    is_damaged,
    storage_fault,
)
from protocol.ids import new_epoch
from protocol.messages import Event
from yizhan.config import create_private

log = logging.getLogger(__name__)

__all__ = ["FAILING", "FULL", "READ_ONLY", "SEQ", "Journal", "JournalDamaged", "Pruned",
           "Recovery", "StorageFault", "StoredEvent", "storage_fault"]

REV_BLOCK = 100

#: Contract §3: delivered events are kept at least this long ...
KEEP_MS = 7 * 24 * 3600 * 1000
#: ... or this many of the newest, whichever keeps more.
KEEP_EVENTS = 100_000
#: Hard bound on rows, unsent ones included (about 150 MB of 300-byte events).
MAX_ROWS = 500_000

#: Rows one prune() deletes at most per kind (bounds the time it holds the loop).
PRUNE_LIMIT = 10_000

#: Writes held in memory at most while the card refuses them; past it the
#: oldest go, loudly (about a week of a busy station's events).
MAX_HELD = 10_000
#: After "full", writes resume only with this much free space in the data
#: directory, so a card at the edge does not flap between lending and not.
RESUME_FREE_MB = 8
#: Damaged journal files kept in ``data_dir/corrupt/`` for a post-mortem.
KEEP_CORRUPT = 3
#: Revs skipped after a salvage that kept the epoch (see salvage.settle).
SALVAGE_REV_MARGIN = 10 * REV_BLOCK

#: In a row written with events, stands for the seq of the last of them.
SEQ = object()

# Rows are written in batches of this many seqs per statement (SQLite's limit on
# host parameters is 32 766 in recent versions, 999 in old ones).
_BATCH = 500
# Held writes recorded per transaction when the card takes writes again.
_FLUSH_BATCH = 200

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
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
"""

# Cumulative per epoch (contract §5 ``counters``), kept in step with the events
# that move them, in the same transaction.
COUNTED = {"visit": "visits", "bank_borrowed": "borrows", "bank_returned": "returns"}


class JournalDamaged(Exception):
    """PRAGMA quick_check found the journal file damaged."""


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


@dataclass(frozen=True, slots=True)
class _Write:
    """One atomic write: events and rows together (``SEQ`` in a row's args)."""

    ts: int
    synced: bool
    events: tuple[tuple[str, dict], ...]
    rows: tuple[tuple[str, tuple], ...]


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


def _quick_check(db: sqlite3.Connection) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong (empty: sound)."""
    problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
    return [] if problems == ["ok"] else problems


class Journal:
    """Epoch, rev and the event outbox of one station, in ``data_dir/station.db``.

    ``on_fault(fault)`` is called (from whichever thread wrote) whenever
    :attr:`fault` changes, ``None`` once writes succeed again.
    """

    def __init__(self, data_dir: str | Path, *, max_rows: int = MAX_ROWS,
                 keep_ms: int = KEEP_MS, keep_events: int = KEEP_EVENTS,
                 on_fault: Callable[[str | None], None] | None = None) -> None:
        if max_rows < 1 or keep_events < 0 or keep_ms < 0:
            raise ValueError("max_rows must be >= 1, keep_ms and keep_events >= 0")
        self.max_rows = max_rows
        self.keep_ms = keep_ms
        self.keep_events = keep_events
        self.on_fault: Callable[[str | None], None] | None = None  # set once built
        self.path = Path(data_dir) / "station.db"
        # The agent's threads (MQTT network thread, main loop, local API) share
        # one connection; the lock serialises them.
        self._lock = threading.RLock()
        self._fault: str | None = None
        self._held: deque[_Write] = deque()
        self._held_lost = 0  # held writes dropped past MAX_HELD
        self._schemas: list[str] = []  # other modules' tables (ensure_schema)
        self._durable = False  # False: running from memory, the card refused us at start
        self._file_copy = False  # the memory copy is the file's, unchanged (reopen it)
        self._aside_pending = False  # a damaged file still at self.path
        self._closed = False
        self.recovery: Recovery | None = None
        with self._lock:
            self._db = self._open()
            self._load()
        if self.recovery is not None:
            # No clock here: the hub dates an unsynced event by its own receipt.
            self.record(int(time.time() * 1000), False,
                        [("journal_recovered", self.recovery.to_data())])
        self.on_fault = on_fault

    # -- opening -----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        _salvage.adopt_interrupted(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
        except (sqlite3.Error, OSError, JournalDamaged) as err:
            if isinstance(err, JournalDamaged) or is_damaged(err):
                return self._recover(str(err))
            fault = storage_fault(err)
            if fault is None:
                raise
            return self._read_only(fault, err)
        self._durable = True
        return db

    def _connect(self) -> sqlite3.Connection:
        """The file, opened for writing and checked; raises what the card says."""
        # Riders' ids and loans: the owner's alone (0600), and so its -wal and -shm.
        create_private(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: an event the agent said it recorded must survive a power cut.
            db.execute("PRAGMA synchronous=FULL")
            problems = _quick_check(db)
            if problems:
                raise JournalDamaged("; ".join(problems))
            db.executescript(_SCHEMA)
            for ddl in self._schemas:
                db.execute(ddl)
            if db.execute("SELECT 1 FROM meta WHERE key = 'epoch'").fetchone() is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))
        except BaseException:
            db.close()
            raise
        return db

    def _memory(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        return db

    def _read_only(self, fault: str, err: BaseException) -> sqlite3.Connection:
        """The card refused us at start: run from a copy in memory."""
        log.error(
            "STORAGE: the journal %s cannot be written (%s: %s). The station runs from "
            "memory: it keeps the heater safe and reports State, holds every event, and "
            "lends nothing until the card takes writes again; check that %s is mounted "
            "read-write and has free space", self.path, fault, err, self.path.parent)
        src = _salvage.open_read_only(self.path)
        if src is None:
            if self.path.exists():
                log.error("the journal %s cannot be read either: a new epoch, in memory only",
                          self.path)
                self._aside_pending = True
            return self._in_memory(self._memory(), fault, file_copy=False)
        try:
            problems = _quick_check(src)
        except sqlite3.DatabaseError as bad:
            problems = [str(bad)]
        if problems:
            src.close()
            return self._recover("; ".join(problems), fault)
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        try:
            src.backup(mem)
        finally:
            src.close()
        mem.executescript(_SCHEMA)
        return self._in_memory(mem, fault, file_copy=True)

    def _in_memory(self, mem: sqlite3.Connection, fault: str,
                   file_copy: bool) -> sqlite3.Connection:
        if mem.execute("SELECT 1 FROM meta WHERE key = 'epoch'").fetchone() is None:
            # Nothing to go back to (no file, or one never initialised): this
            # epoch reaches the card when the card takes writes again.
            mem.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))
            file_copy = False
        self._durable = False
        self._file_copy = file_copy
        self._fault = fault
        return mem

    def _recover(self, why: str, fault: str | None = None) -> sqlite3.Connection:
        """Salvage a damaged file into memory, then onto the card if it takes it."""
        log.error("JOURNAL DAMAGED: %s (%s); salvaging what still reads", self.path, why)
        mem = self._memory()
        src = _salvage.open_read_only(self.path)
        found = _salvage.Salvaged(schema_read=False)
        if src is not None:
            try:
                found = _salvage.salvage(src, mem, checks={"events": _salvage.sound_event})
            finally:
                src.close()
        self.recovery = _salvage.settle(mem, found, why, SALVAGE_REV_MARGIN)
        self._aside_pending = self.path.exists()
        if fault is None:
            try:
                db = self._persist(mem)
                mem.close()
                return db
            except (sqlite3.Error, OSError) as err:
                fault = storage_fault(err)
                if fault is None:
                    raise
                log.error("the salvaged journal cannot be written (%s: %s); running from memory",
                          fault, err)
        return self._in_memory(mem, fault, file_copy=False)

    def _persist(self, mem: sqlite3.Connection) -> sqlite3.Connection:
        """Write the in-memory journal to the card as the journal file, and open it.

        The copy is complete and synced before a damaged file moves aside, so a
        power cut in between leaves one or the other (``adopt_interrupted``).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _salvage.write_copy(mem, self.path)
        if self._aside_pending:
            aside = _salvage.move_aside(self.path, KEEP_CORRUPT)
            self._aside_pending = False
            if self.recovery is not None:
                self.recovery = replace(self.recovery, aside=aside)
        for stale in _salvage.companions(self.path):
            stale.unlink(missing_ok=True)  # another file's WAL must never meet ours
        tmp.replace(self.path)
        fsync_path(self.path.parent)
        db = self._connect()
        self._durable = True
        self._file_copy = False
        return db

    def _load(self) -> None:
        self.epoch = self._meta("epoch")
        self._rev_top = int(self._meta("rev_top") or 0)
        self._rev = self._rev_top
        self._rev_saved = self._rev_top if self._durable else 0
        row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        self._last_seq = max(int(self._meta("last_seq") or 0), row[0] or 0)
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

    def ensure_schema(self, statements: Iterable[str]) -> None:
        """Create another module's tables and indexes (``IF NOT EXISTS``) in this file.

        They are made again whenever the journal reopens its file, so a station
        that started from memory finds them on the card once it writes again.
        """
        statements = list(statements)
        with self._lock:
            for ddl in statements:
                if ddl not in self._schemas:
                    self._schemas.append(ddl)
            if not self._durable:
                for ddl in statements:
                    self._db.execute(ddl)
                return
            try:
                with self.transaction() as tx:
                    for ddl in statements:
                        tx.execute(ddl)
            except StorageFault as err:
                # Tables that exist already read fine; new ones come with retry().
                log.warning("tables not created now (%s); again when the card takes writes", err)

    # -- storage faults ----------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """``full``, ``read_only`` or ``failing`` while writes fail, else None."""
        return self._fault

    @property
    def writable(self) -> bool:
        """Whether a write made now goes to the card (nothing held, no fault)."""
        with self._lock:
            return self._durable and self._fault is None and not self._held

    @property
    def held(self) -> int:
        """Writes waiting in memory for the card to take them."""
        with self._lock:
            return len(self._held)

    @property
    def held_lost(self) -> int:
        """Held writes dropped because more than MAX_HELD waited (should stay 0)."""
        with self._lock:
            return self._held_lost

    def _set_fault(self, fault: str | None) -> None:
        if fault == self._fault:
            return
        was, self._fault = self._fault, fault
        if fault is None:
            log.warning("STORAGE: the journal takes writes again (was %s)", was)
        else:
            log.error("STORAGE: the journal cannot write (%s): events are held in memory "
                      "and lending is paused until it can", fault)
        if self.on_fault is not None:
            try:
                self.on_fault(fault)
            except Exception:
                log.exception("the journal's on_fault listener failed")

    def _refusal(self) -> StorageFault:
        fault = self._fault or READ_ONLY
        return StorageFault(fault, f"the journal {self.path} cannot be written now ({fault})")

    def retry(self, batches: int | None = None) -> bool:
        """Write what is held, reopening the card first if the station started
        without it; True when nothing is held and writes work.

        ``batches`` bounds the work of one call (each batch is one transaction
        of up to 200 held writes), so the station loop that calls it is never
        held up for long; call again while :attr:`held` goes down. The outbox
        calls this every few seconds while :attr:`writable` is False.
        """
        with self._lock:
            if self._closed:
                return False
            if self._fault is None and self._durable and not self._held:
                self._save_rev_top()
                return self._fault is None
            if self._fault == FULL and not self._room():
                return False
            held, done = len(self._held), 0
            try:
                if not self._durable:
                    self._reattach()
                while self._held and (batches is None or done < batches):
                    self._flush_some()
                    done += 1
                if not held:
                    self._probe()
                self._save_rev_top()
            except (sqlite3.Error, OSError) as err:
                fault = storage_fault(err)
                if fault is None:
                    raise
                self._set_fault(fault)
                return False
            if held:
                log.warning("STORAGE: %d held writes are on the card now, %d still held",
                            held - len(self._held), len(self._held))
            if self._held:
                return False
            self._set_fault(None)
            return True

    def _room(self) -> bool:
        free = free_mb(self.path.parent)
        return free is None or free >= RESUME_FREE_MB  # unknown: let a write decide

    def _reattach(self) -> None:
        """Back from memory to the card: reopen the file, or write memory to it."""
        mem = self._db
        if self._file_copy:
            db = self._connect()
            self._durable = True
        else:
            db = self._persist(mem)
        self._db = db
        mem.close()
        self._rev_saved = 0  # rev_top was never written from memory
        log.warning("STORAGE: the journal is on the card again (%s)", self.path)

    def _flush_some(self) -> None:
        batch = [self._held[i] for i in range(min(_FLUSH_BATCH, len(self._held)))]
        with self.transaction() as tx:
            for ddl in self._schemas:
                tx.execute(ddl)
            for w in batch:
                tx.execute("SAVEPOINT held")
                before = self._last_seq
                try:
                    self._apply(tx, w)
                except sqlite3.Error as err:
                    if storage_fault(err) is not None:
                        raise
                    # It can never be written (a table gone with a salvage, say):
                    # drop it rather than block everything behind it.
                    tx.execute("ROLLBACK TO held")
                    self._last_seq = before
                    log.error("a held write can never be recorded (%s), dropped: events %s",
                              err, [t for t, _ in w.events])
                tx.execute("RELEASE held")
        for _ in batch:
            self._held.popleft()

    def _probe(self) -> None:
        """One real write (a page's worth, then gone): does the card take writes?"""
        with self.transaction() as tx:
            for ddl in self._schemas:  # tables a full card kept us from making
                tx.execute(ddl)
            tx.execute("INSERT INTO probe (pad) VALUES (zeroblob(4000))")
            tx.execute("DELETE FROM probe")

    def _hold(self, w: _Write) -> None:
        if not self._held:
            log.error("STORAGE: holding writes in memory until the card takes them (%s)",
                      self._fault)
        self._held.append(w)
        if self._fault is None:
            self._set_fault(FAILING)
        while len(self._held) > MAX_HELD:
            lost = self._held.popleft()
            self._held_lost += 1
            if self._held_lost == 1 or self._held_lost % 1000 == 0:
                log.error("STORAGE: more than %d writes held; dropped the oldest (events %s), "
                          "%d dropped so far", MAX_HELD, [t for t, _ in lost.events],
                          self._held_lost)

    # -- rev and seq --------------------------------------------------------------------

    def next_rev(self) -> int:
        """The next ``rev``, strictly above every rev any earlier process handed out.

        Never fails on a full or read-only card: the rev is handed out and its
        block written when the card takes it again.
        """
        with self._lock:
            self._rev += 1
            if self._rev > self._rev_top:
                self._rev_top = self._rev + REV_BLOCK - 1
            if self._rev_saved < self._rev_top:
                self._save_rev_top()
            return self._rev

    def _save_rev_top(self) -> None:
        if not self._durable or self._rev_saved >= self._rev_top:
            return
        try:
            self._set_meta("rev_top", self._rev_top)
        except sqlite3.Error as err:
            fault = storage_fault(err)
            if fault is None:
                raise
            self._set_fault(fault)
            return
        self._rev_saved = self._rev_top

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    # -- writing ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: other modules' rows and events together, or nothing.

        Raises StorageFault (nothing written) when the card refuses it.

        >>> with journal.transaction() as tx:                      # doctest: +SKIP
        ...     tx.execute("INSERT INTO loans ...")
        ...     journal.add_event(tx, ts, synced, "bank_borrowed", data)
        """
        with self._lock:
            if not self._durable:
                raise self._refusal()
            before = (self._last_seq, self._rev_saved, self._dropped_unsent)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as err:
                with contextlib.suppress(sqlite3.Error):
                    # SQLite may have rolled back already (a full disk does).
                    self._db.execute("ROLLBACK")
                self._last_seq, self._rev_saved, self._dropped_unsent = before
                fault = storage_fault(err)
                if fault is not None:
                    self._set_fault(fault)
                # A rev block reserved inside the failed transaction was rolled
                # back on disk but is being handed out: record it again, or a
                # restart would reuse those revs.
                self._save_rev_top()
                if fault is not None and not isinstance(err, StorageFault):
                    raise StorageFault(fault, f"the journal {self.path}: {err}") from err
                raise

    def add_event(self, tx: sqlite3.Connection, ts: int, synced: bool, type_: str,
                  data: dict) -> int:
        """Record an event inside ``transaction()``; returns its gap-free ``seq``.

        Raises InvalidMessage (recording nothing) when ``data`` does not fit the
        contract for ``type_``.
        """
        _check_event(self.epoch, ts, synced, type_, data)
        return self._insert_event(tx, ts, synced, type_, data)

    def _insert_event(self, tx: sqlite3.Connection, ts: int, synced: bool, type_: str,
                      data: dict) -> int:
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

    def _write(self, ts: int, synced: bool, events: Sequence[tuple[str, dict]],
               rows: Sequence[tuple[str, tuple]]) -> _Write:
        for type_, data in events:
            _check_event(self.epoch, ts, synced, type_, data)
        return _Write(ts, bool(synced), tuple((t, dict(d)) for t, d in events),
                      tuple((sql, tuple(args)) for sql, args in rows))

    def _apply(self, tx: sqlite3.Connection, w: _Write) -> int | None:
        seq = None
        for type_, data in w.events:
            seq = self._insert_event(tx, w.ts, w.synced, type_, data)
        for sql, args in w.rows:
            tx.execute(sql, tuple(seq if v is SEQ else v for v in args))
        return seq

    def record(self, ts: int, synced: bool, events: Sequence[tuple[str, dict]] = (),
               rows: Sequence[tuple[str, tuple]] = ()) -> int | None:
        """Events and rows in one transaction; the last event's seq.

        When the card refuses the write it is held in memory, in order with
        every later one, and None is returned; :meth:`retry` writes it later.
        A row's args may hold :data:`SEQ`, replaced by the last event's seq.
        Raises InvalidMessage (holding nothing) for an event the hub would reject.
        """
        w = self._write(ts, synced, events, rows)
        with self._lock:
            if self._durable and not self._held:
                try:
                    with self.transaction() as tx:
                        return self._apply(tx, w)
                except StorageFault:
                    pass
            self._hold(w)
            return None

    def commit(self, ts: int, synced: bool, events: Sequence[tuple[str, dict]] = (),
               rows: Sequence[tuple[str, tuple]] = ()) -> int | None:
        """As :meth:`record`, but written now or not at all: StorageFault when
        the card refuses it or writes are held (what must be on the card before
        the station acts, such as a slot opening for a borrow)."""
        w = self._write(ts, synced, events, rows)
        with self._lock:
            if self._held:
                raise self._refusal()
            with self.transaction() as tx:
                return self._apply(tx, w)

    def append_event(self, ts: int, synced: bool, type_: str, data: dict) -> int | None:
        """Record an event durably in its own transaction and return its ``seq``
        (None while the card refuses writes: it is held, see :meth:`record`)."""
        return self.record(ts, synced, [(type_, data)])

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
        """Mark events delivered, all in one transaction (one fsync, not one each).

        Raises StorageFault when the card refuses it (the caller keeps the seqs).
        """
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
        pruned, dropped by the hard cap or a salvage, or never created (above ``last_seq``)."""
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
        """Events not yet acknowledged by the broker (contract §5 ``health.outbox``),
        those held in memory included."""
        with self._lock:
            held = sum(len(w.events) for w in self._held)
            return held + self._db.execute(
                "SELECT COUNT(*) FROM events WHERE sent = 0").fetchone()[0]

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
        ``Pruned.more`` says another call has work left. Raises StorageFault
        when the card refuses the deletes.
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

    # -- counters, meta, reading --------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """``visits``, ``borrows``, ``returns`` since the epoch began (what is held
        in memory not counted yet)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(rows.get(name, 0)) for name in ("visits", "borrows", "returns")}

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: object) -> None:
        """Keep ``value`` under ``key`` (held in memory while the card refuses it)."""
        self.record(0, False, rows=[(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, str(value)))])

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for other modules' queries (no write: see :meth:`record`)."""
        with self._lock:
            yield self._db

    def close(self) -> None:
        """Write what is held if the card lets us, then close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._held or self._fault is not None or not self._durable:
                self.retry()
            self._closed = True
            if self._held:
                events = sum(len(w.events) for w in self._held)
                log.error("STORAGE: %d writes (%d events) never reached the card and are lost "
                          "with this process", len(self._held), events)
            self._db.close()

