"""The station's SD card: what its refusals mean, and writing a file safely.

A card refuses a write in three ways the station cares about, each a word the
journal, the State and the kiosk share:

- ``full``: ENOSPC, EDQUOT, SQLite's ``SQLITE_FULL``;
- ``read_only``: EROFS (the kernel remounts a damaged ext4 read-only),
  EACCES/EPERM, ``SQLITE_READONLY``, ``SQLITE_CANTOPEN``;
- ``failing``: EIO, ``SQLITE_IOERR``, pages that no longer read back
  (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``).

    try:
        write_atomically(path, data)
    except OSError as err:
        if storage_fault(err) is None:
            raise                      # a bug, not the card
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

__all__ = ["FAILING", "FULL", "READ_ONLY", "StorageFault", "free_mb", "fsync_path",
           "is_damaged", "remove_stale_temporaries", "storage_fault",
           "write_atomically"]

FULL, READ_ONLY, FAILING = "full", "read_only", "failing"

# SQLite's primary result codes and errnos that mean "the card", not "the code".
_SQLITE = {13: FULL, 8: READ_ONLY, 14: READ_ONLY, 10: FAILING, 11: FAILING, 26: FAILING}
_ERRNO = {errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EROFS: READ_ONLY,
          errno.EACCES: READ_ONLY, errno.EPERM: READ_ONLY, errno.EIO: FAILING}
_FAULT_ERRNO = {FULL: errno.ENOSPC, READ_ONLY: errno.EROFS, FAILING: errno.EIO}
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class StorageFault(OSError):
    """The card refuses writes: ``fault`` is ``full``, ``read_only`` or ``failing``
    (and ``errno`` the matching ENOSPC, EROFS or EIO)."""

    def __init__(self, fault: str, message: str) -> None:
        super().__init__(_FAULT_ERRNO[fault], message)
        self.fault = fault

    def __str__(self) -> str:
        return self.strerror or self.fault


def storage_fault(err: BaseException) -> str | None:
    """``full``, ``read_only`` or ``failing`` when ``err`` is the card's refusal
    (an sqlite3 error or an OSError), else None (a bug, a lock, bad SQL)."""
    if isinstance(err, StorageFault):
        return err.fault
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        return None if code is None else _SQLITE.get(code & 0xFF)
    if isinstance(err, OSError):
        return _ERRNO.get(err.errno)
    return None


def is_damaged(err: BaseException) -> bool:
    """Whether SQLite says the file itself is damaged (not merely unwritable)."""
    code = getattr(err, "sqlite_errorcode", None)
    return isinstance(err, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGED


def free_mb(path: Path) -> int | None:
    """MB free to this user on the file system of ``path``; None when unreadable."""
    try:
        return shutil.disk_usage(path).free // (1024 * 1024)
    except OSError:
        return None


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a power cut leaves the old or the new
    file, never a torn one: a temporary file beside it, fsync, rename, fsync of
    the directory. Raises OSError (nothing changed) when the card refuses."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def remove_stale_temporaries(path: Path) -> int:
    """Delete the temporaries :func:`write_atomically` left beside ``path`` when the
    power went mid-write; returns how many."""
    n = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            n += 1
    return n
