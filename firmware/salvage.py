"""What can still be read from a damaged journal file (a power cut, a lying SD card).

Used by :class:`firmware.journal.Journal` when its file fails ``PRAGMA
quick_check`` at start; docs/agent-internals.md, "Storage faults".

SQLite's ``.recover`` is a shell command, not part of Python's sqlite3, so this
module does the part the station needs: it copies every row it can read, table
by table, into a fresh database and says which rowid ranges it could not read.

    src = open_read_only(path)             # None: nothing readable at all
    found = salvage(src, fresh)            # fresh: an empty sqlite3.Connection
    found.tables["events"].lost            # [(120, 180)]: rowids 120..180 unreadable

A damaged page raises ``sqlite3.DatabaseError`` ("database disk image is
malformed") when a query reaches it. Rows are read in rowid order; when a read
fails, the next readable rowid is found by probing further and further ahead
and then bisecting back, so one bad leaf page costs a few dozen queries and
the rows on either side of it are kept. A tail cut off by a power cut reads as
a bad region that runs to the end (``hi`` None).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.storage import fsync_path
from protocol.ids import EPOCH_RE, new_epoch

log = logging.getLogger(__name__)

__all__ = ["Recovery", "Salvaged", "TableSalvage", "adopt_interrupted", "companions",
           "move_aside", "open_read_only", "salvage", "settle", "sound_event", "write_copy"]

#: Seq ranges a ``journal_recovered`` event lists at most.
REPORT_RANGES = 20

# Rows read per query while the table reads cleanly.
_CHUNK = 256
# Probing ahead stops here: rowids beyond are not ours (SQLite's max is 2**63-1).
_PROBE_LIMIT = 1 << 62
# A file damaged in more places than this is given up on past that point:
# every region costs about 2 x 62 queries.
_MAX_REGIONS = 1_000
_LOWEST = -(1 << 63)

#: One row as read (rowid first); a check returns False for a row that reads
#: but makes no sense (garbage that happened to decode).
RowCheck = Callable[[tuple], bool]


@dataclass(slots=True)
class TableSalvage:
    """One table's rows copied (``kept``) and the rowid ranges it could not read.

    A range ``(lo, hi)`` is inclusive; ``hi`` None means "to the end". It may
    cover rowids that never existed (a range is where reading failed, not a
    list of rows), so the count of rows lost is at most its width.
    """

    kept: int = 0
    rejected: int = 0  # rows that read but failed their check
    lost: list[tuple[int, int | None]] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.lost and not self.rejected


@dataclass(slots=True)
class Salvaged:
    """What :func:`salvage` copied: per table, and the tables it could not open."""

    tables: dict[str, TableSalvage] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # tables not even listed/opened
    schema_read: bool = True  # False: sqlite_master itself was unreadable


def open_read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection that can read ``path`` (its WAL too where possible),
    or None when nothing in it can be read."""
    if not path.exists():
        return None
    # mode=ro reads the WAL when its -shm index can be opened; immutable=1
    # reads the main file alone (a read-only directory after a clean stop).
    for query in ("mode=ro", "immutable=1"):
        try:
            db = sqlite3.connect(f"file:{path}?{query}", uri=True, check_same_thread=False,
                                 isolation_level=None)
        except sqlite3.Error:
            continue
        try:
            # A file shorter than its header says (a cut tail) reads only with
            # this: SQLite otherwise refuses the whole file as malformed.
            db.execute("PRAGMA writable_schema=ON")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as err:
            log.debug("reading %s with %s: %s", path, query, err)
            db.close()
            continue
        return db
    return None


def salvage(src: sqlite3.Connection, dst: sqlite3.Connection,
            checks: dict[str, RowCheck] | None = None) -> Salvaged:
    """Copy every readable row of every table of ``src`` into ``dst``.

    ``dst`` may already hold some of the tables (same columns); the others are
    created from ``src``'s own schema, and its indexes after the rows.
    ``checks`` maps a table to a test each row must pass to be kept.
    """
    checks = checks or {}
    out = Salvaged()
    try:
        schema = src.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            " AND sql IS NOT NULL ORDER BY type DESC").fetchall()  # tables before indexes
    except sqlite3.DatabaseError as err:
        log.error("the journal's schema is unreadable (%s): nothing can be salvaged", err)
        out.schema_read = False
        return out
    have = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    regions = [0]
    for type_, name, sql in schema:
        if type_ != "table":
            continue
        if name not in have:
            try:
                dst.execute(sql)
            except sqlite3.Error as err:
                log.error("table %s cannot be re-created (%s); its rows are lost", name, err)
                out.unreadable.append(name)
                continue
        try:
            out.tables[name] = _copy_table(src, dst, name, checks.get(name), regions)
        except sqlite3.DatabaseError as err:
            log.error("table %s is unreadable (%s)", name, err)
            out.unreadable.append(name)
    for type_, name, sql in schema:
        if type_ == "index":
            try:
                dst.execute(sql.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            except sqlite3.Error as err:
                log.warning("index %s not re-created: %s", name, err)
    return out


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, name: str,
                check: RowCheck | None, regions: list[int]) -> TableSalvage:
    quoted = _quote(name)
    columns = [r[1] for r in src.execute(f"PRAGMA table_info({quoted})")]
    insert = (f"INSERT OR REPLACE INTO {quoted} ({', '.join(map(_quote, columns))}) "
              f"VALUES ({', '.join('?' * len(columns))})")
    select = f"SELECT rowid, * FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT ?"
    result = TableSalvage()
    after = _LOWEST
    dst.execute("BEGIN")
    try:
        while True:
            rows, failed = _read_from(src, select, after)
            fresh = False
            for row in rows:
                if row[0] <= after:
                    # A damaged interior page can lead back to rows already
                    # read: only rowids beyond the cursor are new.
                    continue
                after, fresh = row[0], True
                if check is None or check(row):
                    dst.execute(insert, row[1:])
                    result.kept += 1
                else:  # garbage that happened to decode: as lost as unreadable
                    result.rejected += 1
                    _lose(result, row[0], row[0])
            if not failed:
                if fresh:
                    continue
                if not rows:
                    break
                # Rows, none new: the order is broken here; skip past it.
            regions[0] += 1
            resume = None if regions[0] > _MAX_REGIONS else _next_readable(src, quoted, after)
            _lose(result, after + 1, resume)
            if resume is None:
                break
            after = resume
        dst.execute("COMMIT")
    except BaseException:
        dst.execute("ROLLBACK")
        raise
    if not result.sound:
        log.error("table %s: %d rows kept, %d rejected, unreadable rowids %s", name,
                  result.kept, result.rejected, result.lost)
    return result


def _lose(result: TableSalvage, lo: int, hi: int | None) -> None:
    """Add ``lo..hi`` to the lost ranges, joined to the last one when they touch."""
    if result.lost:
        last_lo, last_hi = result.lost[-1]
        if last_hi is not None and last_hi + 1 >= lo:
            result.lost[-1] = (last_lo, hi if hi is None else max(hi, last_hi))
            return
    result.lost.append((lo, hi))


def _read_from(src: sqlite3.Connection, select: str, after: int) -> tuple[list[tuple], bool]:
    """Rows after ``after``: a chunk, or when the chunk fails, the rows one by one up
    to the failure. Returns (rows, whether a read failed)."""
    try:
        return src.execute(select, (after, _CHUNK)).fetchall(), False
    except sqlite3.DatabaseError:
        pass
    rows: list[tuple] = []
    while len(rows) < _CHUNK:
        try:
            row = src.execute(select, (after, 1)).fetchone()
        except sqlite3.DatabaseError:
            return rows, True
        if row is None:
            return rows, False
        rows.append(row)
        after = row[0]
    return rows, False


def _next_readable(src: sqlite3.Connection, quoted: str, after: int) -> int | None:
    """The least ``t > after`` from which the table reads again (rows ``> t``), or
    None when nothing after ``after`` can be read."""
    probe = f"SELECT rowid FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT 1"

    def readable(t: int) -> bool:
        try:
            row = src.execute(probe, (t,)).fetchone()
        except sqlite3.DatabaseError:
            return False
        # A damaged page can answer with a rowid out of order: no answer either.
        return row is None or row[0] > t

    bad, step = after, 1
    while True:
        t = after + step
        if t > _PROBE_LIMIT:
            return None
        if readable(t):
            break
        bad, step = t, step * 2
    good = t
    while good - bad > 1:  # bad fails, good reads: close in on the edge
        mid = (bad + good) // 2
        if readable(mid):
            good = mid
        else:
            bad = mid
    return good


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- the journal's salvage: what to keep, and the files ---------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the salvage of a damaged journal file kept and dropped.

    ``lost_seqs`` are inclusive seq ranges that could not be read (at most
    their width in events were lost: pruned seqs inside count too);
    ``damaged`` names other tables with unreadable parts; ``aside`` is where
    the damaged file went, relative to the data directory.
    """

    reason: str
    epoch_kept: bool
    events_kept: int
    events_lost: int
    lost_seqs: tuple[tuple[int, int], ...]
    damaged: tuple[str, ...]
    aside: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The ``journal_recovered`` event's data (an event type readers store
        without acting on it, contract §6)."""
        return {"epoch_kept": self.epoch_kept, "kept": self.events_kept,
                "lost": self.events_lost,
                "lost_seqs": [list(r) for r in self.lost_seqs[:REPORT_RANGES]],
                "damaged": list(self.damaged), "aside": self.aside}


def sound_event(row: tuple) -> bool:
    """A salvaged ``events`` row (rowid first) the outbox can publish."""
    try:
        _, seq, ts, _synced, type_, data, _sent = row
        return (isinstance(seq, int) and seq >= 1 and isinstance(ts, int)
                and isinstance(type_, str) and isinstance(json.loads(data), dict))
    except (ValueError, TypeError):
        return False


def settle(mem: sqlite3.Connection, found: Salvaged, why: str, rev_margin: int) -> Recovery:
    """Decide the epoch and counters of a salvaged journal in ``mem``.

    The epoch is kept when the meta table read whole with a well-formed epoch:
    then ``last_seq`` is the higher of what meta says and the highest seq
    kept (events go on gap-free where they left off), and ``rev_top`` rises by
    ``rev_margin`` (skipping revs is harmless, repeating one is not). Otherwise
    a new epoch — "the station's storage was wiped" (contract §1) — and the old
    epoch's events are not carried over: their seqs mean nothing in the new one.
    """
    meta_t = found.tables.get("meta")
    meta = dict(mem.execute("SELECT key, value FROM meta").fetchall())
    events_t = found.tables.get("events", TableSalvage())
    damaged = tuple(sorted(
        [n for n, t in found.tables.items()
         if n not in ("meta", "events", "probe") and not t.sound]
        + found.unreadable))
    epoch = meta.get("epoch")
    keep = (meta_t is not None and meta_t.sound and isinstance(epoch, str)
            and EPOCH_RE.match(epoch) is not None)
    try:
        last_seq, rev_top = int(meta.get("last_seq", 0)), int(meta.get("rev_top", 0))
    except ValueError:
        keep = False
    if not keep:
        old = mem.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        for table in ("events", "counters", "meta"):
            mem.execute(f"DELETE FROM {table}")
        mem.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))
        log.error("the journal's epoch is unreadable: a new epoch; %d readable events of "
                  "the old one are not carried over", old)
        return Recovery(why, False, 0, old, (), damaged)
    kept = [r[0] for r in mem.execute("SELECT seq FROM events ORDER BY seq")]
    top = max(last_seq, kept[-1] if kept else 0)
    # Below the first event kept, only what failed to read is lost (older ones
    # may have been pruned); above it every seq up to top should be there.
    first = kept[0] if kept else top + 1
    lost: list[tuple[int, int]] = []
    for lo, hi in events_t.lost:
        lo, hi = max(lo, 1), first - 1 if hi is None else min(hi, first - 1)
        if lo <= hi:
            lost.append((lo, hi))
    expect = first
    for seq in [*kept, top + 1]:
        if seq > expect:
            lost.append((expect, seq - 1))
        expect = seq + 1
    for key, value in (("last_seq", top), ("rev_top", rev_top + rev_margin)):
        mem.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))
    n_lost = sum(hi - lo + 1 for lo, hi in lost)
    log.error("journal salvaged: epoch %s kept, %d events kept, at most %d lost (seqs %s), "
              "damaged tables: %s", epoch, events_t.kept, n_lost, lost, list(damaged) or "none")
    return Recovery(why, True, events_t.kept, n_lost, tuple(lost), damaged)


def companions(path: Path) -> tuple[Path, Path]:
    """SQLite's WAL and shared-memory files beside ``path``."""
    return Path(f"{path}-wal"), Path(f"{path}-shm")


def salvaged_path(path: Path) -> Path:
    return path.with_name(path.name + ".salvaged")


def write_copy(mem: sqlite3.Connection, path: Path) -> Path:
    """Write the database ``mem`` beside ``path`` as a complete, synced WAL-mode
    file (``<name>.salvaged``) and return its path; the caller renames it in."""
    tmp = salvaged_path(path)
    for stale in (tmp, *companions(tmp)):
        stale.unlink(missing_ok=True)
    out = sqlite3.connect(tmp)
    try:
        mem.backup(out)
        out.execute("PRAGMA journal_mode=WAL")
    finally:
        out.close()  # checkpoints: the whole database is in tmp itself
    fsync_path(tmp)
    return tmp


def adopt_interrupted(path: Path) -> None:
    """Finish a salvage a power cut interrupted: the copy was written and the
    damaged file moved aside, but the copy not yet renamed in."""
    tmp = salvaged_path(path)
    if not tmp.exists():
        return
    with contextlib.suppress(OSError):
        if path.exists():
            tmp.unlink()  # the damaged file is still there: it is salvaged again
        else:
            os.replace(tmp, path)
            log.warning("journal: finished a salvage interrupted by a restart")


def move_aside(path: Path, keep: int, folder: str = "corrupt") -> str:
    """Move the damaged ``path`` (and its WAL) into ``folder`` beside it, keep the
    newest ``keep`` such copies, and return the new name relative to the
    directory. A rename: it needs no free space."""
    aside = path.parent / folder
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name, n = f"station-{stamp}.db", 1
    while (aside / name).exists():
        n += 1
        name = f"station-{stamp}-{n}.db"
    os.replace(path, aside / name)
    wal, shm = companions(path)
    if wal.exists():
        os.replace(wal, aside / f"{name}-wal")
    shm.unlink(missing_ok=True)
    log.error("the damaged journal is kept as %s for a post-mortem", aside / name)
    for old in sorted(aside.glob("station-*.db"))[:-keep]:
        for part in (old, companions(old)[0]):
            part.unlink(missing_ok=True)
    return f"{folder}/{name}"
