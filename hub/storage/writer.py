"""One writer thread that turns many small writes into few transactions.

A commit per message falls to 50–1 000 rows/s where fsync is slow (SD cards,
eMMC; design.md), so the ingest never writes itself: it hands the writer an
*op*, a function that does its writes on the connection it is given, and goes on.

>>> writer = Writer(store).start()
>>> writer.submit(lambda conn: conn.execute(store.insert_ignore(events).values(**row)))
>>> writer.flush()      # True once everything submitted so far is committed
>>> writer.call(op)     # op committed now, and what it returned (a change read back at once)
>>> writer.close()

Ops run in submission order, up to ``max_batch`` in one transaction, committed
at the latest ``max_delay`` seconds after the oldest was submitted. An op that is
one statement with one row (:class:`Rows`) is not run alone: consecutive ``Rows``
ops of a batch are run as one ``executemany`` per statement (a statement's rows
in their order; ``Rows`` of *different* statements must therefore commute, as
writes to different tables do), which on the hub's hot path is most of them.
Two more kinds keep those runs long (see :class:`Commuting`): ``Guarded``, a
row and the ops it causes only when it is new (an event and its loan), and
``Commuting``, an op declared to commute with ``Rows``; on PostgreSQL a run
of ``ARRAYS_FROM`` rows or more is one statement over arrays of their values
(see ``_ArrayPlan``). A failing op
costs only itself: its batch is rolled back and replayed by halves down to the
op that fails alone, which is dropped (logged, counted). A failure of the
database itself (connection lost, server restarting, "database is locked") is
retried with backoff and drops nothing; meanwhile the queue fills and
``submit`` blocks, which holds the ingest back rather than losing messages.

An op may therefore run more than once (after a rollback): it must keep its
effects inside the transaction, and decide from what it reads there, not from
Python state it changed on an earlier run. When the connection dies during the
COMMIT itself (the server restarted, the network cut) the client cannot tell
whether it happened. On PostgreSQL the writer knows its transaction's id
(``txid_current()``, read before the COMMIT) and asks the server, on a new
connection once there is one, what became of it (``txid_status``): committed
means done, anything else is run again; so nothing is lost and nothing doubled.
On SQLite, in the process, a failed commit did not happen. Inserts that must
not double (events, loans) still use ``store.insert_ignore``, for replays by
the stations.

Health is judged by outcomes: ``problem()`` names why the writer is not doing
its job (ops waiting and nothing committed for ``unhealthy_after`` seconds, or
the thread gone), for /healthz.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.dml import OnConflictDoNothing
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from hub.storage.store import Store, StoreError
from yizhan.backoff import Backoff

log = logging.getLogger(__name__)

#: What ``Writer.submit`` takes: writes on the connection, inside the writer's transaction.
Op = Callable[[sa.Connection], Any]
T = TypeVar("T")

# Messages of sqlite3.OperationalError that say "try again", not "your SQL is wrong"
# (sqlite3 raises OperationalError for both, e.g. "no such table").
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy",
                     "disk i/o error", "unable to open database file")


#: The SQLAlchemy releases whose internals the writer is tested on (pyproject.toml
#: pins the same; tests/test_hub_writer_sqlalchemy.py checks each internal).
TESTED_SQLALCHEMY = ">=2.1,<2.2"


class SQLAlchemyUnsupported(StoreError, RuntimeError):
    """The installed SQLAlchemy lacks internals the writer plans its statements with."""


def missing_sqlalchemy_internals() -> list[str]:
    """The internals the writer reads (tests/test_hub_writer_sqlalchemy.py) that the
    installed SQLAlchemy does not have, by name; empty when all are there."""
    from sqlalchemy.engine.default import DefaultDialect
    from sqlalchemy.pool.base import _ConnectionFairy

    wanted = [
        (sa.Insert, "Insert", ("_values", "_multi_values", "select", "_post_values_clause")),
        (DefaultDialect, "Dialect", ("loaded_dbapi",)),
        (_ConnectionFairy, "PoolProxiedConnection", ("dbapi_connection",)),
        (sa.exc.DBAPIError, "DBAPIError", ("instance",)),
        (visitors, "sqlalchemy.sql.visitors", ("replacement_traverse",)),
        (sa.sql.functions.FunctionElement, "FunctionElement", ("table_valued",)),
    ]
    missing = [f"{name}.{attr}" for owner, name, attrs in wanted for attr in attrs
               if not hasattr(owner, attr)]
    # The compiler's are set per compilation: look at one, compiled as _DriverPlan does.
    try:
        compiled = sa.insert(sa.table("t", sa.column("x"))).compile(
            column_keys=["x"], for_executemany=True)
    except Exception as err:  # a compile API that changed is itself what is missing
        return [*missing, f"Insert.compile(column_keys=…, for_executemany=True): {err}"]
    missing += [f"SQLCompiler.{attr}" for attr in
                ("escaped_bind_names", "post_compile_params", "literal_execute_params",
                 "binds", "positiontup") if not hasattr(compiled, attr)]
    return missing


def check_sqlalchemy() -> None:
    """Refuse to start on a SQLAlchemy without what the writer reads, naming it all."""
    missing = missing_sqlalchemy_internals()
    if missing:
        raise SQLAlchemyUnsupported(
            f"the hub's writer needs SQLAlchemy internals that SQLAlchemy {sa.__version__} "
            f"does not have: {', '.join(missing)}; install the tested range: "
            f"pip install 'SQLAlchemy{TESTED_SQLALCHEMY}'")


class WriterClosed(StoreError, RuntimeError):
    """``submit`` after ``close()``, or while ``close()`` gave up on a dead database."""


class NotCommitted(StoreError, RuntimeError):
    """``Writer.call``: the op was not committed in time, or it failed and was dropped;
    nothing is known to have changed."""


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is the database failing (retry) rather than the op (drop)."""
    if isinstance(err, sa.exc.DBAPIError):
        if err.connection_invalidated or isinstance(err, sa.exc.InterfaceError):
            return True  # the connection is gone; a new one may work
        if isinstance(err, sa.exc.OperationalError):
            if isinstance(err.orig, sqlite3.Error):
                return any(s in str(err.orig).lower() for s in _SQLITE_TRANSIENT)
            # psycopg's OperationalError is SQLSTATE classes 08 (connection), 40
            # (serialization, deadlock), 53 (resources), 55/57 (lock, shutdown):
            # all the server's trouble. Bad SQL and bad data are other classes.
            return True
        return False
    # Pool exhausted, or a connection refused at checkout.
    return isinstance(err, sa.exc.TimeoutError | sa.exc.DisconnectionError)


class Rows:
    """An op that runs ``statement`` with one row of ``params``; see the module doc.

    ``key`` marks a snapshot (the station's row as it is now): of the rows with
    the same key in one executemany only the last is written.

    ``order`` is for the ``then`` ops of ``Guarded`` ones (a loan's rows, by
    bank): ``Rows`` with the same order run in the order they come, ``Rows``
    with different orders commute *and touch different rows of the table*. A
    stretch's ``then`` rows then run in rounds — a row in the round after the
    last one with its order — each round one executemany a statement, not a
    statement each; on PostgreSQL an UPDATE's rows of a round, from
    ``ARRAYS_FROM`` on, one ``UPDATE … FROM unnest(…)`` (see ``_ArrayPlan``).

    >>> writer.submit(Rows(store.insert_ignore(events), row))
    """

    __slots__ = ("key", "order", "params", "statement")

    def __init__(self, statement: sa.Executable, params: dict[str, Any],
                 key: Any = None, order: Any = None) -> None:
        self.statement = statement
        self.params = params
        self.key = key
        self.order = order

    def __call__(self, conn: sa.Connection) -> Any:
        return execute_row(conn, self.statement, self.params)


class Guarded:
    """An op that inserts one row with ``statement`` — an insert that skips a
    conflicting row (``store.insert_ignore``) — and, only when the row was new,
    runs the ops ``then`` in the same transaction: what storing an event causes
    is caused once, however often the event comes.

    >>> writer.submit(Guarded(store.insert_ignore(events), row, [open_loan]))

    The ``then`` ops are run as :class:`Commuting` ops are, so they must keep
    the same rules. The inserts of a stretch's ``Guarded`` ops go first, as one
    ``executemany`` a statement (on PostgreSQL pipelined, each row's rowcount
    read from it; from ``ARRAYS_FROM`` rows on, one insert over arrays that
    returns the new rows' keys).
    """

    __slots__ = ("params", "statement", "then")

    def __init__(self, statement: sa.Executable, params: dict[str, Any],
                 then: list[Op]) -> None:
        self.statement = statement
        self.params = params
        self.then = then

    def __call__(self, conn: sa.Connection) -> None:
        _run_after(conn, [self])


class Commuting:
    """``op`` declared to commute with ``Rows`` ops: it writes no table a ``Rows``
    statement writes and reads nothing one writes.

    A batch runs as stretches between its ops of other kinds: first the stretch's
    ``Rows`` (one executemany a statement), then its ``Commuting`` ops and the
    ``then`` ops of its new ``Guarded`` rows, in the order submitted — on
    PostgreSQL the whole stretch in one psycopg pipeline, where nothing but the
    Guarded inserts waits for its result: Commuting and ``then`` ops must not
    read what their statements return. An op of any other kind runs where it
    was submitted, outside any pipeline, and sees everything before it.

    >>> writer.submit(Commuting(lambda conn: ledger.mark(sid, "station", "up", at_ms)))
    """

    __slots__ = ("op",)

    def __init__(self, op: Op) -> None:
        self.op = op

    def __call__(self, conn: sa.Connection) -> Any:
        return self.op(conn)


_AFTER = (Guarded, Commuting)


def run_ops(conn: sa.Connection, ops: list[Op]) -> None:
    """Run ``ops`` on ``conn`` in stretches (see ``Commuting``)."""
    run: dict[sa.Executable, list[Rows]] = {}
    after: list[Guarded | Commuting] = []
    for op in ops:
        kind = type(op)
        if kind is Rows:
            run.setdefault(op.statement, []).append(op)
            continue
        if kind in _AFTER:
            after.append(op)
            continue
        if run or after:
            _stretch(conn, run, after)
            run, after = {}, []
        op(conn)
    if run or after:
        _stretch(conn, run, after)


def _stretch(conn: sa.Connection, run: dict[sa.Executable, list[Rows]],
             after: list[Guarded | Commuting]) -> None:
    """A stretch's Rows, then its Guarded and Commuting ops. On PostgreSQL in one
    psycopg pipeline: nothing waits for a statement's result but the Guarded
    inserts (which read which rows were new), so the stretch costs the hub one
    or two round trips, each a release of the GIL, not one a statement."""
    raw = _psycopg(conn)
    with contextlib.nullcontext() if raw is None else _pipeline(conn, raw):
        if run:
            _execute_rows(conn, run)
        if after:
            _run_after(conn, after)


@contextlib.contextmanager
def _pipeline(conn: sa.Connection, raw: Any):
    with _dbapi_errors(conn), raw.pipeline():
        yield


def _run_after(conn: sa.Connection, after: list[Guarded | Commuting]) -> None:
    """The stretch's Guarded inserts, then its Commuting ops and the ``then`` ops
    of the new rows: the functions in order, then the ``Rows`` in rounds (all of
    them commute with the functions, as Commuting ops do with Rows)."""
    guarded = [op for op in after if type(op) is Guarded]
    new = iter(_insert_guarded(conn, guarded) if guarded else ())
    calls: list[Op] = []
    rounds: list[dict[sa.Executable, list[Rows]]] = []
    last: dict[Any, int] = {}  # order -> the round its last row went to
    floor = 0  # rows without an order are in order with every row
    for op in after:
        if type(op) is Commuting:
            calls.append(op.op)
        elif next(new):
            for then in op.then:
                if type(then) is not Rows:
                    calls.append(then)
                    continue
                at = max(floor, last.get(then.order, -1) + 1) if then.order is not None \
                    else len(rounds)
                if then.order is None:
                    floor = at + 1
                else:
                    last[then.order] = at
                if at == len(rounds):
                    rounds.append({})
                rounds[at].setdefault(then.statement, []).append(then)
    for call in calls:  # on PostgreSQL in the stretch's pipeline: they must not read
        call(conn)
    for run in rounds:
        _execute_rows(conn, run, apart=True)


def _insert_guarded(conn: sa.Connection, guarded: list[Guarded]) -> list[bool]:
    """Insert each op's row; whether it was new, in the ops' order."""
    raw = _psycopg(conn)
    if raw is None:  # SQLite: in the process, a statement costs no round trip
        return [execute_row(conn, g.statement, g.params).rowcount == 1 for g in guarded]
    new = [False] * len(guarded)
    shapes: dict[tuple, list[int]] = {}
    for i, g in enumerate(guarded):
        shapes.setdefault((g.statement, tuple(g.params)), []).append(i)
    for (statement, _keys), idx in shapes.items():
        params = [guarded[i].params for i in idx]
        plan = _plan(conn, statement, params[0])
        if plan is None:
            for i in idx:
                new[i] = conn.execute(statement, guarded[i].params).rowcount == 1
            continue
        if len(params) >= ARRAYS_FROM:
            arrays = _array_plan(conn, statement, params[0], guarded=True)
            if arrays is not None:
                for i, was_new in zip(idx, arrays.run_guarded(conn, params), strict=True):
                    new[i] = was_new
                continue
        with _dbapi_errors(conn, plan.sql), raw.cursor() as cur:
            # One result a row, each with its own rowcount (psycopg >= 3.1).
            cur.executemany(plan.sql, plan.rows(params), returning=True)
            for i in idx:
                new[i] = cur.rowcount == 1
                cur.nextset()
    return new


def _psycopg(conn: sa.Connection) -> Any:
    """The psycopg connection under ``conn``, or None on another driver."""
    return conn.connection.dbapi_connection if conn.dialect.driver == "psycopg" else None


@contextlib.contextmanager
def _dbapi_errors(conn: sa.Connection, statement: str = "(pipeline)"):
    """The driver's errors as SQLAlchemy's, as ``conn.execute`` raises them: the
    writer tells a database in trouble from a failing op by those."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as err:
        raise sa.exc.DBAPIError.instance(statement, None, err, dbapi_error,
                                         dialect=conn.dialect) from err


def execute_row(conn: sa.Connection, statement: sa.Executable,
                params: dict[str, Any]) -> sa.CursorResult:
    """``conn.execute(statement, params)`` for one row, the statement compiled
    once (see ``_DriverPlan``): for the ops of the hot path that are not ``Rows``."""
    plan = _plan(conn, statement, params)
    if plan is None:
        return conn.execute(statement, params)
    return conn.exec_driver_sql(plan.sql, plan.rows([params])[0])


def _plan(conn: sa.Connection, statement: sa.Executable,
          sample: dict[str, Any]) -> _DriverPlan | None:
    return _cached(conn, "yizhan_driver_plans", (statement, tuple(sample)),
                   lambda: _DriverPlan.of(statement, conn.dialect, sample))


def _cached(conn: sa.Connection, kind: str, shape: tuple, make: Callable[[], Any]) -> Any:
    """A statement's plan of ``kind`` for rows of ``shape`` (a bare insert's
    columns are its rows' keys), made once: kept with the DBAPI connection,
    compiled for its dialect and gone with it. None when it cannot be planned."""
    plans = conn.info.setdefault(kind, {})
    plan = plans.get(shape, _UNPLANNED)
    if plan is _UNPLANNED:
        plan = plans[shape] = make()
    return plan


def _rewritten(compiled: Any, sample: dict[str, Any]) -> bool:
    """Whether SQLAlchemy would rewrite the statement's parameters at execute
    (escaped names, expanding or literal ones), or a bind is not a row key."""
    return bool(compiled.escaped_bind_names or compiled.post_compile_params
                or compiled.literal_execute_params or set(compiled.binds) != set(sample))


def _execute_rows(conn: sa.Connection, run: dict[sa.Executable, list[Rows]],
                  apart: bool = False) -> None:
    """Each statement's rows; ``apart``: a round's, whose rows of different
    orders touch different rows of the table (see ``Rows``)."""
    for statement, rows in run.items():
        if rows[0].key is not None and len(rows) > 1:
            last = {r.key: r.params for r in rows}  # a later snapshot replaces an earlier
            params = list(last.values())
        else:
            params = [r.params for r in rows]
        if len(params) >= ARRAYS_FROM and (apart or not isinstance(statement, sa.Update)):
            arrays = _array_plan(conn, statement, params[0])
            if arrays is not None:
                arrays.run(conn, params)
                continue
        plan = _plan(conn, statement, params[0])
        if plan is None:
            conn.execute(statement, params)
            continue
        conn.exec_driver_sql(plan.sql, plan.rows(params))


#: The writer keeps its connection from one batch to the next that comes within
#: this many seconds: a checkout costs PostgreSQL three round trips (the pool's
#: ping) and a return one (its rollback), each giving up the GIL while the
#: ingest holds it. After a pause the pool's ping finds out whether the server
#: dropped the connection meanwhile.
KEEP_CONNECTION_S = 1.0

#: On PostgreSQL, a statement's rows of one stretch go, from this many on, as
#: one statement over arrays of their values, passed in binary (``_ArrayPlan``):
#: psycopg spends ~2 µs of the hub's CPU on a row that way and ~12 µs on a row
#: of an executemany, which also sends each row and waits for the socket, each
#: time giving up the GIL that the ingest then holds for up to a switch
#: interval. (COPY through a temporary table costs a row about as little, but
#: three round trips more a statement, and cannot be pipelined.)
ARRAYS_FROM = 16

#: Column types whose values psycopg sends in binary arrays as PostgreSQL
#: takes them: others go row by row.
_ARRAY_TYPES = (sa.String, sa.Integer, sa.Boolean)


def _array_plan(conn: sa.Connection, statement: sa.Executable, sample: dict[str, Any], *,
                guarded: bool = False) -> _ArrayPlan | None:
    if conn.dialect.driver != "psycopg":
        return None
    return _cached(conn, "yizhan_array_plans", (statement, tuple(sample), guarded),
                   lambda: _ArrayPlan.of(statement, conn.dialect, sample, guarded))


class _ArrayPlan:
    """Rows of a statement as one statement whose every bound parameter is
    a column of ``unnest`` over an array of the rows' values.

    A bare insert of whole rows becomes ``INSERT … SELECT … FROM unnest(…) WITH
    ORDINALITY … ORDER BY`` the rows' order, its own ON CONFLICT clause kept
    (``guarded``: returning the primary key of each new row). An UPDATE becomes
    ``UPDATE … FROM unnest(…)``: only for rows that touch different rows of the
    table (PostgreSQL updates a row joined twice once), as a round's rows of
    different orders do."""

    __slots__ = ("fields", "primary", "sql")

    def __init__(self, sql: str, fields: tuple[tuple[str, Any], ...],
                 primary: tuple[str, ...]) -> None:
        self.sql, self.fields, self.primary = sql, fields, primary

    @classmethod
    def of(cls, statement: sa.Executable, dialect: sa.Dialect, sample: dict[str, Any],
           guarded: bool = False) -> _ArrayPlan | None:
        if isinstance(statement, sa.Insert):
            return cls._insert(statement, dialect, tuple(sample), guarded)
        if isinstance(statement, sa.Update) and not guarded:
            return cls._update(statement, dialect, sample)
        return None

    @classmethod
    def _insert(cls, statement: sa.Insert, dialect: sa.Dialect, keys: tuple[str, ...],
                guarded: bool) -> _ArrayPlan | None:
        table = getattr(statement, "table", None)
        if (not isinstance(table, sa.Table) or statement._values is not None
                or statement._multi_values or statement.select is not None
                or any(k not in table.c for k in keys)):
            return None  # only what a bare insert of whole rows writes
        types = {k: table.c[k].type for k in keys}
        primary: tuple[str, ...] = ()
        if guarded:
            # Which rows were new is told by their primary keys, compared as the
            # rows hold them: every key column given, none converted on the way.
            primary = tuple(c.key for c in table.primary_key.columns)
            if (not primary or any(k not in keys or types[k].bind_processor(dialect)
                                   for k in primary)
                    or not isinstance(statement._post_values_clause, OnConflictDoNothing)):
                return None
        rows = _unnest(types, ordinality=True)
        names = [table.c[k].name for k in keys]
        insert = statement.from_select(names, sa.select(*(rows.c[k] for k in keys))
                                       .order_by(rows.c.yz_n))
        if primary:
            insert = insert.returning(*(table.c[k] for k in primary))
        return cls._made(insert, dialect, types, primary)

    @classmethod
    def _update(cls, statement: sa.Update, dialect: sa.Dialect,
                sample: dict[str, Any]) -> _ArrayPlan | None:
        compiled = statement.compile(dialect=dialect)
        binds = compiled.binds
        if _rewritten(compiled, sample):
            return None  # parameters not plainly the rows' own values
        types = {n: b.type for n, b in binds.items()}
        rows = _unnest(types)

        def column_for(element: Any) -> Any:
            if isinstance(element, BindParameter) and element.key in binds:
                return rows.c[element.key]
            return None

        joined = visitors.replacement_traverse(statement, {}, column_for)
        return cls._made(joined, dialect, types, ())

    @classmethod
    def _made(cls, statement: sa.Executable, dialect: sa.Dialect,
              types: dict[str, sa.types.TypeEngine], primary: tuple[str, ...]
              ) -> _ArrayPlan | None:
        if any(not isinstance(t, _ARRAY_TYPES) for t in types.values()):
            return None
        compiled = statement.compile(dialect=dialect)
        if set(compiled.binds) != set(types):
            return None  # an ON CONFLICT or WHERE clause with parameters of its own
        sql = str(compiled)
        for name in types:  # binary: psycopg quotes a text array's items in Python
            placeholder = f"%({name})s"
            if sql.count(placeholder) != 1:
                return None
            sql = sql.replace(placeholder, f"%({name})b")
        fields = tuple((n, t.bind_processor(dialect)) for n, t in types.items())
        return cls(sql, fields, primary)

    def arrays(self, params: list[dict[str, Any]]) -> dict[str, list]:
        return {n: [p[n] for p in params] if f is None else [f(p[n]) for p in params]
                for n, f in self.fields}

    def run(self, conn: sa.Connection, params: list[dict[str, Any]]) -> sa.CursorResult:
        return conn.exec_driver_sql(self.sql, self.arrays(params))

    def run_guarded(self, conn: sa.Connection, params: list[dict[str, Any]]) -> list[bool]:
        """As ``run``, for ``Guarded`` rows: whether each was new. Of two rows
        with one key only the first can be (the second conflicts with it), as
        an executemany of them would say."""
        # psycopg's own cursor: in a pipeline its fetch waits for the result.
        with _dbapi_errors(conn, self.sql), _psycopg(conn).cursor() as cur:
            cur.execute(self.sql, self.arrays(params))
            inserted = set(map(tuple, cur.fetchall()))
        primary, new = self.primary, []
        for p in params:
            key = tuple([p[k] for k in primary])
            new.append(key in inserted)
            inserted.discard(key)
        return new


def _unnest(types: dict[str, sa.types.TypeEngine], ordinality: bool = False) -> Any:
    """``unnest(%(a)s::T[], …) AS yz_rows(a, …[, yz_n])``: a column a parameter."""
    arrays = [sa.bindparam(n, type_=ARRAY(t)) for n, t in types.items()]
    columns = [sa.column(n, t) for n, t in types.items()]
    fn = sa.func.unnest(*arrays)
    valued = (fn.table_valued(*columns, with_ordinality="yz_n") if ordinality
              else fn.table_valued(*columns))
    return valued.render_derived(name="yz_rows")


_UNPLANNED = object()


class _DriverPlan:
    """A ``Rows`` statement compiled once, its rows handed to the driver as they are.

    ``conn.execute`` of a Core statement builds each row's parameters through the
    compiled statement's machinery: on the hub's hot path that cost more than the
    database's own work. Only plain statements are planned (every bind a row
    key, no names escaped, no expanding or literal parameters); the rest run
    through ``conn.execute``."""

    __slots__ = ("fields", "names", "processors", "sql")

    def __init__(self, sql: str, names: tuple[str, ...] | None,
                 processors: dict[str, Callable[[Any], Any]]) -> None:
        self.sql, self.names, self.processors = sql, names, processors
        # Positional with bind types: each value taken and typed in one pass.
        self.fields = None if names is None else tuple((n, processors.get(n)) for n in names)

    @classmethod
    def of(cls, statement: sa.Executable, dialect: sa.Dialect,
           sample: dict[str, Any]) -> _DriverPlan | None:
        compiled = statement.compile(dialect=dialect, column_keys=list(sample),
                                     for_executemany=True)
        if _rewritten(compiled, sample):
            return None  # names or parameters SQLAlchemy rewrites at execute
        processors = {}
        for name, bind in compiled.binds.items():
            process = bind.type.bind_processor(dialect)
            if process is not None:
                processors[name] = process
        names = tuple(compiled.positiontup) if dialect.positional else None
        return cls(str(compiled), names, processors)

    def rows(self, params: list[dict[str, Any]]) -> list:
        """``params`` as the driver takes them: tuples in the statement's order
        (qmark, as sqlite3) or dicts (pyformat, as psycopg), bind types applied."""
        procs, names = self.processors, self.names
        if names is None:
            if not procs:
                return params
            return [{**p, **{k: f(p[k]) for k, f in procs.items()}} for p in params]
        if not procs:
            return [tuple([p[n] for n in names]) for p in params]
        fields = self.fields
        return [tuple([p[n] if f is None else f(p[n]) for n, f in fields]) for p in params]


def _op_name(op: Op) -> str:
    if type(op) is Commuting:
        return f"Commuting({_op_name(op.op)})"
    if type(op) is Rows or type(op) is Guarded:
        table = getattr(op.statement, "table", None)
        return f"{type(op).__name__}({getattr(table, 'name', type(op.statement).__name__)})"
    return getattr(op, "__qualname__", None) or type(op).__qualname__


class Writer:
    """The hub's single writer: ``submit(op)`` from any thread, batched commits.

    Counters (read them from any thread): ``batches`` (transactions committed),
    ``ops`` (ops committed), ``failed`` (ops dropped), ``retries`` (attempts
    repeated after a transient database error), ``in_doubt`` (commits whose
    answer was lost, the server asked about them), ``queue_depth``,
    ``last_commit_ms`` (how long the last commit took). ``problem()`` and
    ``healthy()`` are for /healthz.
    """

    def __init__(self, store: Store, *, max_batch: int = 2000, max_delay: float = 0.05,
                 max_queue: int = 100_000, unhealthy_after: float = 5.0,
                 backoff: tuple[float, float] = (0.05, 2.0)) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError("max_batch and max_queue must be ≥ 1 and max_delay ≥ 0")
        check_sqlalchemy()  # at start, not at the first planned statement
        self.store = store
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.unhealthy_after = unhealthy_after
        # No jitter: one writer a process, and the database is not a crowd's.
        self.backoff = Backoff(*backoff, jitter=0.0)

        self.batches = 0
        self.ops = 0
        self.failed = 0
        self.retries = 0
        self.in_doubt = 0
        self.last_commit_ms: float | None = None
        #: Dropped ops by kind (``"op_name: ExceptionType"``).
        self.failures: collections.Counter[str] = collections.Counter()

        # One lock, three conditions on it: ops waiting, room in the queue, ops done.
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._pending: collections.deque[tuple[int, float, Op]] = collections.deque()
        self._submitted = 0  # seq of the last op submitted
        self._finished = 0  # seq of the last op committed or dropped; ops finish in order
        self._flushers = 0  # threads in flush(): commit now instead of waiting max_delay
        self._closing = False
        self._abort = threading.Event()  # close() gave up: stop retrying
        self._thread: threading.Thread | None = None
        self._stalled_since: float | None = None  # a batch is not yet through since then
        self._batch_since: float | None = None  # submitted when, the oldest op of that batch
        self._committed_at: float | None = None  # monotonic, the last commit
        self._last_error: str | None = None  # the database's last complaint, for problem()
        self._conn: sa.Connection | None = None  # kept from one batch to the next
        self._kept_since = 0.0

    # -- any thread -----------------------------------------------------------------------

    def start(self) -> Writer:
        """Start the writer thread (once); returns the writer."""
        with self._lock:
            if self._closing:
                raise WriterClosed("writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hub-writer",
                                                daemon=True)
                self._thread.start()
        return self

    def submit(self, op: Op) -> None:
        """Queue ``op`` to run in a later batch; blocks while the queue is full."""
        on_writer = threading.current_thread() is self._thread
        with self._lock:
            # The writer thread itself must not wait for room only it can make.
            while len(self._pending) >= self.max_queue and not self._closing and not on_writer:
                self._has_room.wait()
            if self._closing and not on_writer:
                raise WriterClosed("writer is closed; the op was not queued")
            self._submitted += 1
            self._pending.append((self._submitted, time.monotonic(), op))
            # Wake the writer only when it has something new to decide on.
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._has_work.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every op submitted before this call is committed (or dropped).

        Commits what is queued now rather than after ``max_delay``. Returns
        False if that did not happen within ``timeout`` seconds.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() from inside an op would wait for itself")
        with self._lock:
            target = self._submitted
            if self._finished >= target:
                return True
            self._flushers += 1
            self._has_work.notify()
            try:
                return self._done.wait_for(lambda: self._finished >= target, timeout)
            finally:
                self._flushers -= 1

    def call(self, op: Callable[[sa.Connection], T], timeout: float = 5.0) -> T:
        """Run ``op`` in the writer's transaction, wait for the commit, and return
        what ``op`` returned: for a change whose caller reads it back at once (an
        alert acknowledged through the API, a delivery claimed before it is sent).

        ``op`` may run more than once (a failed batch is replayed by halves): the
        last answer is the committed one. Raises :class:`WriterClosed` (not
        queued) or :class:`NotCommitted` (not committed within ``timeout``
        seconds, or dropped as failing). Not from inside an op: it would wait
        for itself.

        >>> writer.call(lambda conn: conn.execute(stmt).rowcount)
        1
        """
        answers: list[T] = []
        self.submit(lambda conn: answers.append(op(conn)))
        if not self.flush(timeout) or not answers:
            raise NotCommitted("the change was not committed; try again")
        return answers[-1]

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop. Idempotent.

        Should the database stay unusable for ``timeout`` seconds, the ops still
        queued are given up (logged with their number): the process is stopping.
        """
        with self._lock:
            self._closing = True
            self._has_work.notify_all()
            self._has_room.notify_all()  # blocked submitters get WriterClosed
            thread = self._thread
        if thread is None:
            if self._pending:
                log.error("writer closed before it was started: %d ops not written",
                          len(self._pending))
            return
        thread.join(timeout)
        if thread.is_alive():
            self._abort.set()
            thread.join(max(1.0, timeout / 4))
        lost = len(self._pending)
        if lost:
            log.error("writer stopped with %d ops not written (database unusable)", lost)

    @property
    def queue_depth(self) -> int:
        """Ops submitted and not yet taken into a batch."""
        return len(self._pending)

    def problem(self) -> str | None:
        """Why the writer is not doing its job now, or None: for /healthz.

        An outcome, not an effort: the thread is not running, or ops have been
        waiting while nothing was committed for more than ``unhealthy_after``
        seconds (a database that is down, refuses, or fails every batch). A deep
        queue that is being committed is busy, not stuck.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return "the database writer is not running"
        with self._lock:
            waiting = self._batch_since
            if waiting is None and self._pending:
                waiting = self._pending[0][1]
            queued = len(self._pending)
        if waiting is None:
            return None  # nothing waits: idle, whenever it last committed
        committed = self._committed_at
        since = waiting if committed is None else max(waiting, committed)
        stalled = time.monotonic() - since
        if stalled <= self.unhealthy_after:
            return None
        why = f"; last error: {self._last_error}" if self._last_error else ""
        return (f"the database writer has committed nothing for {stalled:.0f} s "
                f"while ops wait ({queued} queued){why}")

    def healthy(self) -> bool:
        """``problem() is None``."""
        return self.problem() is None

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_batches()
        finally:
            self._let_go()

    def _write_batches(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._write(batch)
            except _Aborted:
                with self._lock:
                    self._pending.extendleft(reversed(batch))  # counted as lost by close()
                return
            except Exception:  # a bug here, not in an op: keep writing the rest
                log.exception("writer: unexpected error; %d ops dropped", len(batch))
                self.failed += len(batch)
            with self._lock:
                self._finished = batch[-1][0]
                self._done.notify_all()

    def _next_batch(self) -> list[tuple[int, float, Op]] | None:
        """Wait for a full batch, the oldest op's deadline, a flush or close."""
        with self._lock:
            while True:
                if self._abort.is_set():
                    return None
                if self._pending:
                    due = self._pending[0][1] + self.max_delay
                    wait = due - time.monotonic()
                    if (len(self._pending) >= self.max_batch or wait <= 0
                            or self._flushers or self._closing):
                        n = min(self.max_batch, len(self._pending))
                        batch = [self._pending.popleft() for _ in range(n)]
                        self._has_room.notify_all()
                        return batch
                    self._has_work.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._has_work.wait()

    def _write(self, batch: list[tuple[int, float, Op]]) -> None:
        self._stalled_since = time.monotonic()
        self._batch_since = batch[0][1]
        ops = [op for _, _, op in batch]
        try:
            self._halves(ops)
        finally:
            self._stalled_since = self._batch_since = None

    def _halves(self, ops: list[Op]) -> None:
        """Commit ``ops``, or, when one fails, each half by itself, and so on down
        to the ops that fail alone, which are dropped: a bad op among n costs
        about 2·log2(n) transactions, not n, and the rest is committed in order.
        (Which op failed is not known for sure: it may show only at commit.)"""
        try:
            self._transaction(ops)
        except _OpFailed as failed:
            if len(ops) == 1:
                self._drop(ops[0], failed.__cause__)
                return
            mid = len(ops) // 2
            self._halves(ops[:mid])
            self._halves(ops[mid:])

    def _transaction(self, ops: list[Op]) -> None:
        """Run ``ops`` in one transaction, retrying while the database is the
        problem; raises _OpFailed when an op (or its commit) is."""
        attempt = 0
        while True:
            started = time.monotonic()
            sent: _Sent | None = None  # the COMMIT went out: what to ask about it
            try:
                conn = self._connection(started)
                with conn.begin():
                    run_ops(conn, ops)
                    sent = _Sent.of(conn)
                    commit_started = time.monotonic()
                # The commit happened on leaving the block.
                self._kept_since = time.monotonic()
            except Exception as err:
                self._let_go()  # in whatever state the failure left it
                if not is_transient(err):
                    raise _OpFailed from err
                self._last_error = _summary(err)
                if sent is None or not self._committed_after_all(sent, err):
                    attempt += 1
                    self.retries += 1
                    self._retry_wait(err, attempt, started)
                    continue
            done = time.monotonic()
            self.last_commit_ms = (done - commit_started) * 1000
            self.batches += 1
            self.ops += len(ops)
            self._committed_at = done
            self._last_error = None
            if attempt:
                log.warning("writer: database back after %d retries (%.1f s)", attempt,
                            done - (self._stalled_since or started))
            return

    def _committed_after_all(self, sent: _Sent, err: BaseException) -> bool:
        """Whether the transaction whose COMMIT failed with ``err`` was committed
        anyway: its answer lost with the connection. Asks the server on a new
        connection, waiting (with backoff) until there is one that can say."""
        self.in_doubt += 1
        log.warning("writer: the connection failed during a COMMIT (%s); asking the "
                    "database whether transaction %d was committed", _summary(err), sent.xid)
        attempt = 0
        while True:
            try:
                with self.store.engine.connect() as conn:
                    committed = sent.committed(conn)
            except Exception as ask_err:
                if not is_transient(ask_err):
                    # Cannot be told (say, an xid the restarted server never
                    # heard of: it did not commit). Run it again.
                    log.warning("writer: the fate of transaction %d is unknown (%s); "
                                "running its batch again", sent.xid, _summary(ask_err))
                    return False
                self._last_error = _summary(ask_err)
                committed = None
            if committed is not None:
                log.warning("writer: transaction %d was %s", sent.xid,
                            "committed" if committed else "not committed; running it again")
                return committed
            attempt += 1
            self._pause(attempt)

    def _pause(self, attempt: int) -> None:
        """The backoff before attempt ``attempt + 1``; raises _Aborted on close()."""
        if self._abort.wait(self.backoff.delay(attempt)):
            raise _Aborted

    def _connection(self, now: float) -> sa.Connection:
        """The connection of the last batch, if it committed less than
        ``KEEP_CONNECTION_S`` ago; else one from the pool (which pings it)."""
        conn = self._conn
        if conn is not None and (conn.invalidated or now - self._kept_since > KEEP_CONNECTION_S):
            self._let_go()
            conn = None
        if conn is None:
            conn = self._conn = self.store.engine.connect()
        return conn

    def _let_go(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead one is discarded by the pool
                conn.close()

    def _retry_wait(self, err: BaseException, attempt: int, started: float) -> None:
        if attempt == 1:
            log.warning("writer: database error, retrying until it works: %s", err)
        else:
            log.debug("writer: retry %d failed: %s", attempt, err)
        self._pause(attempt)

    def _drop(self, op: Op, err: BaseException | None) -> None:
        kind = f"{_op_name(op)}: {type(err).__name__}"
        self.failed += 1
        self.failures[kind] += 1
        if self.failures[kind] == 1:  # the traceback once; the counter says how often
            log.error("writer: dropped an op that fails on its own (%s)", kind, exc_info=err)
        else:
            log.debug("writer: dropped another %s (%d so far)", kind, self.failures[kind])


class _Sent:
    """A PostgreSQL transaction about to be committed: its id and its session's
    process, to ask about it when the COMMIT's answer is lost."""

    __slots__ = ("pid", "xid")

    def __init__(self, xid: int, pid: int) -> None:
        self.xid, self.pid = xid, pid

    @classmethod
    def of(cls, conn: sa.Connection) -> _Sent | None:
        """The open transaction of ``conn`` (one round trip); None on SQLite,
        whose failed commit, in the process, did not happen."""
        raw = _psycopg(conn)
        if raw is None:
            return None
        xid = conn.exec_driver_sql("SELECT txid_current()").scalar_one()
        return cls(xid, raw.info.backend_pid)

    def committed(self, conn: sa.Connection) -> bool | None:
        """True or False once the server knows; None while the transaction is
        still in progress: its session lives on without us (the COMMIT never
        reached it, or it is finishing it), so it is ended, and asked again."""
        status = conn.execute(sa.text("SELECT txid_status(:xid)"), {"xid": self.xid}).scalar()
        if status == "committed":
            return True
        if status != "in progress":
            return False  # aborted, or (NULL) too old to be known: not this one's case
        # Ending a session that is committing waits for the commit: then it is one or the other.
        conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid = :pid AND backend_xid::text = :xid32"),
            {"pid": self.pid, "xid32": str(self.xid & 0xFFFF_FFFF)})
        return None


def _summary(err: BaseException) -> str:
    """An error's first line (a driver's message spans several, with the SQL)."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}".strip().rstrip(":")


class _OpFailed(Exception):
    """An op (not the database) failed; ``__cause__`` says how."""


class _Aborted(Exception):
    """close() gave up waiting for the database."""
