"""The hub's durable store: one code path for SQLite (default) and PostgreSQL.

SQLAlchemy Core, not the ORM: the ingest path writes plain rows. The tables are
``hub.storage.schema``; the Alembic migrations in ``hub/storage/migrations`` create them, and
``Store(url)`` runs those to head when it opens the database.

>>> store = Store("sqlite:////var/lib/yizhan/hub.db")   # or postgresql://user@host/db
>>> with store.engine.begin() as conn:
...     new = conn.execute(store.insert_ignore(schema.events).values(**row)).rowcount == 1
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import NullPool, StaticPool

from hub.storage.schema import metadata, station_state, stations
from protocol import messages as m
from protocol.errors import InvalidMessage
from yizhan.config import create_private

__all__ = [
    "MIGRATIONS", "MigrationError", "Store", "StoreError", "alembic_config", "head_revision",
    "make_engine", "metadata", "upgrade_schema",
]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")

# Any fixed 64-bit number will do, as long as nothing else in the database uses
# it: the hub processes sharing one PostgreSQL take it to migrate one at a time.
MIGRATION_LOCK_KEY = 0x59_5A_48_55_42_4D_49_47  # "YZHUBMIG"

# How long a SQLite connection waits for another writer before "database is
# locked" (seconds); `?timeout=` in the URL overrides it.
SQLITE_BUSY_TIMEOUT = 5.0


class StoreError(Exception):
    """Root of the store's and writer's own errors."""


class MigrationError(StoreError):
    """The schema could not be brought to the current revision."""


def normalise_url(url: str) -> sa.URL:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy alone would pick psycopg2)."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str) -> sa.Engine:
    """An engine with the connection settings the hub relies on, per dialect."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args: dict[str, Any] = {"check_same_thread": False}  # the writer is a thread
        if "timeout" not in parsed.query:
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT  # sqlite3 sets busy_timeout from it
        memory = parsed.database in (None, "", ":memory:")
        # An in-memory database exists per connection: share one (tests only).
        pool = {"poolclass": StaticPool} if memory else {}
        if not memory and "uri" not in parsed.query:
            # Riders' ids and live ack links: the hub's alone (0600), and so the
            # -wal and -shm SQLite makes beside it.
            try:
                create_private(parsed.database)
            except FileNotFoundError as err:
                # SQLite would only say "unable to open database file".
                raise StoreError(
                    f"cannot create the database file {parsed.database}: its directory "
                    f"does not exist (make it, owned by the hub's user)") from err
            except OSError as err:
                # A read-only or wrongly owned directory, a file where the directory
                # should be: the hub cannot start, and says where and why.
                raise StoreError(
                    f"cannot create the database file {parsed.database}: {err.strerror} "
                    f"(the hub's user must be able to write its directory)") from err
        engine = sa.create_engine(parsed, connect_args=connect_args, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: a connection the server dropped (restart, failover, idle kill) is
    # replaced at checkout instead of failing the next batch.
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=_pg_timeouts(parsed))


#: libpq settings of every PostgreSQL connection (a ``?name=`` in the URL wins).
#: A server that does not answer must not hang /healthz or the writer for the
#: kernel's TCP timeouts (minutes to hours): a connection attempt gives up after
#: ``connect_timeout`` seconds; an established connection whose peer is gone
#: (a host powered off, a link that drops everything) is ended by the kernel —
#: sent data unacknowledged for ``tcp_user_timeout`` ms, or an idle one whose
#: keepalive probes go unanswered for ``keepalives_idle`` plus
#: ``keepalives_count`` × ``keepalives_interval`` seconds — and the writer
#: retries on a new one.
PG_CONNECT_ARGS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                   "keepalives_interval": 5, "keepalives_count": 3,
                   "tcp_user_timeout": 30_000}

#: /healthz's ping: a fresh connection, given up after this many seconds.
PING_TIMEOUT = 3


def _pg_timeouts(url: sa.URL, **overrides: Any) -> dict[str, Any]:
    given = set(url.query)
    return {k: v for k, v in {**PG_CONNECT_ARGS, **overrides}.items() if k not in given}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL: readers (web, metrics) never block the writer nor it them.
        _ensure_wal(cur)
        # NORMAL under WAL: a power cut may lose the last commits, never corrupt;
        # those come back by retained State and replay (contract §3).
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _ensure_wal(cur: sqlite3.Cursor) -> None:
    # WAL is a property of the file, set once. Switching to it needs the file to
    # itself for a moment and, unlike other statements, fails at once instead of
    # waiting in the busy handler: two hubs opening a new database together
    # would get "database is locked". So look first, and retry the switch.
    if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for ``hub/storage/migrations`` without any alembic.ini.

    ``connection`` is what ``env.py`` migrates; see hub/storage/migrations/README.md for
    making a new revision with it.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


# Alembic runs a migration through module-level proxies (alembic.context, op):
# two threads of one process must not run it at once. Between processes the
# database's own locks below keep order.
_ALEMBIC_LOCK = threading.Lock()


def upgrade_schema(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``, one process at a time.

    The whole upgrade is one transaction on both databases (each supports
    transactional DDL), so a crash half-way leaves the previous revision.
    """
    try:
        with _ALEMBIC_LOCK, engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Held until commit: a second hub starting now waits here, then
                # finds the schema at head and does nothing.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": MIGRATION_LOCK_KEY})
            elif conn.dialect.name == "sqlite":
                # Take the write lock before reading alembic_version, for the
                # same reason (pysqlite would only begin at the first INSERT).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            before = MigrationContext.configure(conn).get_current_revision()
            command.upgrade(alembic_config(conn), revision)
            after = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
    except Exception as err:
        raise MigrationError(f"cannot migrate {engine.url!r} to {revision}: {err}") from err
    if before != after:
        log.info("database %r migrated from %s to %s", engine.url, before or "empty", after)


def head_revision() -> str | None:
    """The newest revision shipped in ``hub/storage/migrations``."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class Store:
    """Rows in, rows out; the meaning lives in ``hub.fleet.view`` and friends.

    Writes on the ingest path go through ``hub.storage.writer.Writer``; reads open their
    own connection (``with store.engine.connect() as conn``).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        #: Why the last ``ping()`` failed (None when it answered).
        self.ping_error: str | None = None
        self._pinger: sa.Engine | None = None
        self._ping_lock = threading.Lock()
        #: ``"sqlite"`` or ``"postgresql"``.
        self.dialect: str = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            self.engine.dispose()
            raise StoreError(f"unsupported database {self.dialect!r}: use sqlite:// or "
                             "postgresql://")
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        if migrate:
            try:
                upgrade_schema(self.engine)
            except BaseException:
                self.engine.dispose()
                raise

    # -- statements that differ per dialect -------------------------------------------

    def insert_ignore(self, table: sa.Table) -> Any:
        """``INSERT … ON CONFLICT DO NOTHING``: a duplicate key is skipped, not an error.

        ``conn.execute(store.insert_ignore(events).values(**row)).rowcount`` is 1
        when the row was new and 0 when it was a duplicate. (SQLAlchemy 2.1 with
        psycopg reports -1 for an INSERT's rowcount unless ``preserve_rowcount``
        is set, as it is here: do the same on any INSERT whose rowcount you read.)
        """
        return self._insert(table).on_conflict_do_nothing().execution_options(
            preserve_rowcount=True)

    def upsert(self, table: sa.Table, index_elements: Sequence[str],
               update_columns: Iterable[str], *, where: Any = None) -> Any:
        """``INSERT … ON CONFLICT (index_elements) DO UPDATE SET`` the given columns.

        The new values come from the row being inserted (``.values(...)`` or the
        execute parameters). ``where`` limits the update, say to a newer rev:
        ``where=table.c.rev < store.excluded(table).rev`` (pass it here: an INSERT
        has no ``.where()`` to chain). With no columns to update it inserts or
        ignores. ``rowcount`` is 1 when a row was inserted or updated, else 0.
        """
        stmt = self._insert(table).execution_options(preserve_rowcount=True)
        columns = list(update_columns)
        if not columns:
            return stmt.on_conflict_do_nothing(index_elements=list(index_elements))
        return stmt.on_conflict_do_update(
            index_elements=list(index_elements),
            set_={name: stmt.excluded[name] for name in columns},
            where=where,
        )

    def excluded(self, table: sa.Table) -> Any:
        """The ``excluded`` pseudo-row of an upsert on ``table``, for its ``where``."""
        return self._insert(table).excluded

    # -- reads --------------------------------------------------------------------------

    def load_stations(self) -> list[dict[str, Any]]:
        """Every station row with its last applied State, for the fleet at start.

        Each dict has the ``stations`` columns plus ``state`` (the decoded State
        or None) and ``state_epoch``, ``state_rev``, ``state_ts``,
        ``state_received_ms`` (None without a State).
        """
        ss = station_state
        query = (
            sa.select(
                stations,
                ss.c.epoch.label("state_epoch"), ss.c.rev.label("state_rev"),
                ss.c.ts.label("state_ts"), ss.c.received_ms.label("state_received_ms"),
                ss.c.state.label("state"),
            )
            .select_from(stations.outerjoin(ss, ss.c.sid == stations.c.sid))
            .order_by(stations.c.sid)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for row in rows:
            d = dict(row)
            d["state"] = _state_doc(d["state"]) if d["state"] is not None else None
            out.append(d)
        return out

    def ping(self) -> bool:
        """Whether the database answers now (for /healthz); ``ping_error`` says
        why not.

        On PostgreSQL on a connection of its own, not one from the pool: a pooled
        connection into a path that went silent would wait for TCP to give up,
        and a fresh one gives up after ``PING_TIMEOUT`` seconds, as does the
        statement (``statement_timeout``).
        """
        try:
            with self._ping_engine().connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as err:
            orig = getattr(err, "orig", None) or err
            lines = str(orig).strip().splitlines()
            self.ping_error = lines[0] if lines else type(orig).__name__
            return False
        self.ping_error = None
        return True

    def _ping_engine(self) -> sa.Engine:
        if self.dialect != "postgresql":
            return self.engine  # a file in the process: nothing to wait for
        with self._ping_lock:
            if self._pinger is None:
                url = self.engine.url
                args = _pg_timeouts(url, connect_timeout=PING_TIMEOUT,
                                    options=f"-c statement_timeout={PING_TIMEOUT * 1000}")
                self._pinger = sa.create_engine(url, poolclass=NullPool, connect_args=args)
            return self._pinger

    def close(self) -> None:
        """Close every pooled connection; idempotent."""
        self.engine.dispose()
        if self._pinger is not None:
            self._pinger.dispose()


def _state_doc(text: str) -> dict[str, Any]:
    """A stored State (the payload as the station sent it) as the fleet holds
    one: decoded and dumped again, so that extra fields and absent optional ones
    read as after ``State.to_dict``. One that no longer decodes (stored by an
    older hub) is kept as it is."""
    doc = json.loads(text)
    try:
        return m.State.from_dict(doc).to_dict()
    except InvalidMessage:
        return doc
