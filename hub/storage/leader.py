"""Which of several hub workers does the work that must be done once.

Several ``yizhan hub`` workers may share the broker's subscriptions
(``mqtt.shared_group``) over one PostgreSQL database (docs/hub.md "Several
workers"). Each stores what it receives; the work that must happen once for the
fleet — the alert engine and router, the hub-alive mark, the Directories,
expiring commands, pruning — is done by one of them, the leader.

>>> leader = Leadership(store, shared=config.shared_group is not None)
>>> leader.poll()          # at start, then every LEADER_EVERY seconds
True
>>> leader.is_leader
True

The leader is whoever holds a PostgreSQL session-level advisory lock
(``pg_try_advisory_lock``) on a connection of its own — not one of the pool the
writer uses, which SQLAlchemy may close or recycle (and a pooled connection
would keep the lock after being handed back). The lock lives exactly as long as
that connection: a worker that is SIGKILLed, loses power or its network loses
its connection, the server lets the lock go, and the next poll of another worker
takes it. The leader itself checks the connection at each poll; when it no
longer answers, it stops leading at once (before the server lets go of the
lock, if that is the slower side: no two leaders from this side).

Without ``shared`` (one worker: SQLite, or no ``mqtt.shared_group``) there is
nobody to share with: ``is_leader`` is always True and nothing connects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from hub.storage.store import Store, _pg_timeouts
from yizhan.clock import SYSTEM_CLOCK, Clock

__all__ = ["LEADER_EVERY", "LEADER_KEY", "Leadership"]

log = logging.getLogger(__name__)

#: Seconds between polls (the scheduler's ``lead`` job): a dead leader is
#: replaced within about this long once the server has let its lock go.
LEADER_EVERY = 2

#: The advisory lock's key: any fixed 64-bit number nothing else in the database
#: uses (the migrations use store.MIGRATION_LOCK_KEY, "YZHUBMIG").
LEADER_KEY = 0x59_5A_48_55_42_4C_45_41  # "YZHUBLEA"

#: A poll must not hang the scheduler when the server stops answering: the
#: connection attempt and each statement give up after this many seconds, and
#: sent data unacknowledged for as long ends the connection (tcp_user_timeout).
POLL_TIMEOUT = 3


class Leadership:
    """Whether this worker leads; ``poll()`` takes or keeps the lock."""

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK, key: int = LEADER_KEY,
                 shared: bool) -> None:
        self.store = store
        self.clock = clock
        self.key = key
        #: Only PostgreSQL can be shared between workers (the config refuses
        #: shared_group on SQLite); on SQLite this worker leads, alone.
        self.shared = shared and store.dialect == "postgresql"
        #: When this worker last became leader (ms), None while it does not lead.
        self.since_ms: int | None = None if self.shared else clock.ms()
        #: Why the last poll could not reach the database (None when it could).
        self.error: str | None = None
        self._leading = not self.shared
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self._closed = False

    @property
    def is_leader(self) -> bool:
        return self._leading

    def listen(self, fn: Callable[[bool], None]) -> None:
        """Call ``fn(is_leader)`` after each change (from the polling thread)."""
        self._listeners.append(fn)

    def poll(self) -> bool:
        """Take the lock if free, or check that it is still held; returns ``is_leader``."""
        if not self.shared:
            return True
        with self._lock:
            if self._closed:
                return False
            before = self._leading
            try:
                self._leading = self._hold()
                self.error = None
            except sa.exc.SQLAlchemyError as err:
                # A lost connection is lost leadership: the server lets the lock
                # go with it, and another worker may already have taken it.
                self.error = _first_line(err)
                self._leading = False
                self._drop()
            changed = self._leading != before
            if changed:
                self.since_ms = self.clock.ms() if self._leading else None
        if changed:
            self._tell(self._leading)
        return self._leading

    def _hold(self) -> bool:
        if self._conn is None:
            if self._engine is None:
                url = self.store.engine.url
                args = _pg_timeouts(
                    url, connect_timeout=POLL_TIMEOUT, tcp_user_timeout=POLL_TIMEOUT * 1000,
                    options=f"-c statement_timeout={POLL_TIMEOUT * 1000}",
                    application_name="yizhan-hub leader")
                self._engine = sa.create_engine(url, poolclass=NullPool, connect_args=args)
            # Autocommit: the session-level lock outlives any transaction, and an
            # idle connection must not sit "idle in transaction" for hours.
            self._conn = self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT")
        if self._leading:
            # Session locks are re-entrant: taking it again would only stack it.
            self._conn.execute(sa.text("SELECT 1"))
            return True
        return bool(self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                       {"key": self.key}).scalar())

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # no unlock round trip on a dead connection
                self._conn.close()
            except Exception:  # already broken; only letting it go
                pass
            self._conn = None

    def close(self) -> None:
        """Let the lock go (another worker leads at its next poll); idempotent."""
        if not self.shared:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            was = self._leading
            self._leading = False
            self.since_ms = None
            if self._conn is not None:
                try:
                    if was:
                        self._conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"),
                                           {"key": self.key})
                    self._conn.close()
                except sa.exc.SQLAlchemyError:
                    self._drop()  # closing the connection lets the lock go anyway
                self._conn = None
            if self._engine is not None:
                self._engine.dispose()
        if was:
            self._tell(False)

    def _tell(self, leading: bool) -> None:
        if leading:
            log.info("this worker now leads (scheduled work, alerts)")
        else:
            log.warning("this worker no longer leads%s",
                        f": {self.error}" if self.error else "")
        for fn in list(self._listeners):
            try:
                fn(leading)
            except Exception:  # one listener's bug must not keep the others uninformed
                log.exception("leadership listener %r failed", fn)


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
