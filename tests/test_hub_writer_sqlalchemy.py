"""What hub/storage/writer.py relies on in SQLAlchemy beyond its documented API.

The writer plans its hot statements once and hands their rows to the driver
itself (``_DriverPlan``, ``_ArrayPlan``): to do so it reads attributes that
SQLAlchemy does not promise to keep. pyproject.toml pins SQLAlchemy to the
series these tests pass on; each test names one thing the writer reads and
checks it is there and means what the writer takes it to mean. When an upgrade
fails one, change the writer (or stop it planning that statement), then widen
the pin. What the writer reads:

* ``Insert._values``, ``Insert._multi_values``, ``Insert.select``: a bare insert
  of whole rows (``_ArrayPlan._insert``);
* ``Insert._post_values_clause`` and ``postgresql.dml.OnConflictDoNothing``:
  an insert that skips a conflicting row (``Guarded`` over arrays);
* ``SQLCompiler.escaped_bind_names``, ``.post_compile_params``,
  ``.literal_execute_params``, ``.binds``, ``.positiontup`` and
  ``compile(column_keys=…, for_executemany=True)``: a statement whose every bind
  is a row key, in the driver's order (``_rewritten``, ``_DriverPlan``);
* ``visitors.replacement_traverse``: an UPDATE's binds replaced by the columns of
  ``unnest`` (``_ArrayPlan._update``), ``table_valued(with_ordinality=…)`` and
  ``render_derived``;
* ``DBAPIError.instance``, ``Dialect.loaded_dbapi``, ``Connection.connection
  .dbapi_connection``: driver errors in pipelines raised as ``conn.execute``
  raises them (``_dbapi_errors``).

The last test checks the sum: the hub's own hot statements are still planned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.dml import OnConflictDoNothing
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from hub.fleet.loans import Loans
from hub.storage import schema
from hub.storage import writer as writer_module
from hub.storage.store import Store

EVENT = {"sid": "yh-chumen-01", "epoch": "9f2c01ab", "seq": 1, "type": "visit", "ts": 1,
         "synced": True, "received_ms": 1, "at_ms": 1, "data": "{}"}


@pytest.fixture
def pg(pg_url: str) -> Iterator[Store]:
    s = Store(pg_url)
    yield s
    s.close()


def compiled_rows(statement: sa.Executable, dialect: sa.Dialect, keys: list[str]) -> sa.Compiled:
    return statement.compile(dialect=dialect, column_keys=keys, for_executemany=True)


def test_insert__values__multi_values_and_select_tell_a_bare_insert() -> None:
    events = schema.events
    bare = sa.insert(events)
    assert bare._values is None and not bare._multi_values and bare.select is None
    assert sa.insert(events).values(seq=1)._values is not None
    assert sa.insert(events).values([{"seq": 1}, {"seq": 2}])._multi_values
    assert sa.insert(events).from_select(["seq"], sa.select(events.c.seq)).select is not None


@pytest.mark.postgres
def test_insert__post_values_clause_holds_on_conflict_do_nothing(pg: Store) -> None:
    ignoring = pg.insert_ignore(schema.events)
    assert isinstance(ignoring._post_values_clause, OnConflictDoNothing)
    assert postgresql.insert(schema.events)._post_values_clause is None
    updating = pg.upsert(schema.stations, ["sid"], ["name"])
    assert not isinstance(updating._post_values_clause, OnConflictDoNothing)


def test_compiled_binds_are_the_row_keys_of_a_plain_statement(store: Store) -> None:
    dialect = store.engine.dialect
    keys = list(EVENT)
    compiled = compiled_rows(store.insert_ignore(schema.events), dialect, keys)
    assert set(compiled.binds) == set(keys)
    assert all(isinstance(b, BindParameter) for b in compiled.binds.values())
    assert isinstance(compiled.binds["seq"].type, sa.Integer)  # what bind_processor asks
    assert not compiled.escaped_bind_names
    assert not compiled.post_compile_params and not compiled.literal_execute_params


def test_compiled_escaped_bind_names_says_a_name_was_rewritten(store: Store) -> None:
    t = sa.table("t", sa.column("a b", sa.Integer), sa.column("x", sa.Integer))
    compiled = compiled_rows(sa.insert(t), store.engine.dialect, ["a b", "x"])
    assert "a b" in compiled.escaped_bind_names
    assert writer_module._rewritten(compiled, {"a b": 1, "x": 2})


def test_compiled_post_compile_and_literal_execute_params_say_a_bind_is_rendered_later(
        store: Store) -> None:
    t = sa.table("t", sa.column("x", sa.Integer))
    dialect = store.engine.dialect
    expanding = sa.select(t).where(t.c.x.in_(sa.bindparam("xs", expanding=True)))
    assert expanding.compile(dialect=dialect).post_compile_params
    literal = sa.select(t).where(t.c.x == sa.bindparam("x", literal_execute=True))
    assert literal.compile(dialect=dialect).literal_execute_params


def test_compiled_positiontup_orders_the_row_keys_for_a_positional_driver(store: Store) -> None:
    dialect = store.engine.dialect
    compiled = compiled_rows(sa.insert(schema.events), dialect, ["seq", "sid", "epoch"])
    if dialect.positional:  # SQLite's qmark: the driver takes tuples in this order
        assert sorted(compiled.positiontup) == ["epoch", "seq", "sid"]
        assert str(compiled).count("?") == 3
    else:  # psycopg's pyformat: dicts, each bind once by name
        assert dialect.paramstyle == "pyformat"
        assert all(str(compiled).count(f"%({k})s") == 1 for k in ("seq", "sid", "epoch"))


def test_replacement_traverse_swaps_an_updates_binds_for_columns() -> None:
    t = schema.loans
    update = (t.update().where(t.c.bank == sa.bindparam("b_bank"))
              .values(returned_ms=sa.bindparam("b_at")))
    rows = sa.func.unnest(sa.bindparam("b_bank"), sa.bindparam("b_at")).table_valued(
        sa.column("b_bank", sa.String), sa.column("b_at", sa.BigInteger)).render_derived(
        name="yz_rows")

    def column_for(element):
        return rows.c[element.key] if isinstance(element, BindParameter) else None

    joined = visitors.replacement_traverse(update, {}, column_for)
    sql = str(joined.compile(dialect=postgresql.dialect()))
    assert "yz_rows.b_bank" in sql and "yz_rows.b_at" in sql
    assert "FROM unnest(" in sql


def test_table_valued_with_ordinality_renders_as_the_array_insert_needs() -> None:
    fn = sa.func.unnest(sa.bindparam("seq"))
    valued = fn.table_valued(sa.column("seq", sa.Integer), with_ordinality="yz_n")
    sql = str(sa.select(valued.render_derived(name="yz_rows"))
              .compile(dialect=postgresql.dialect()))
    assert "unnest(%(seq)s) WITH ORDINALITY AS yz_rows(seq, yz_n)" in sql


def test_dbapi_error_instance_wraps_a_driver_error_as_execute_does(store: Store) -> None:
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        driver_error = conn.dialect.loaded_dbapi.Error
        assert driver_error is (sqlite3.Error if conn.dialect.name == "sqlite"
                                else psycopg.Error)
        assert isinstance(raw, sqlite3.Connection if conn.dialect.name == "sqlite"
                          else psycopg.Connection)
        with pytest.raises(driver_error) as caught:
            raw.execute("SELECT * FROM no_such_table")
        raw.rollback()
    wrapped = sa.exc.DBAPIError.instance("SELECT", None, caught.value, driver_error,
                                         dialect=conn.dialect)
    assert isinstance(wrapped, sa.exc.DBAPIError) and wrapped.orig is caught.value
    # What the writer then decides from: bad SQL is the op's fault, not the database's.
    assert isinstance(wrapped, sa.exc.OperationalError | sa.exc.ProgrammingError)
    assert not writer_module.is_transient(wrapped)


def test_the_hubs_hot_statements_are_still_planned(store: Store) -> None:
    """Not a fallback to ``conn.execute`` (correct, but the benchmark's pace gone)."""
    dialect = store.engine.dialect
    loans = Loans(store, loan_hours=1)
    insert_event = store.insert_ignore(schema.events)
    save_state = store.upsert(schema.station_state, ["sid"],
                              ["epoch", "rev", "ts", "received_ms", "state"])
    state = {"sid": "yh-chumen-01", "epoch": "9f2c01ab", "rev": 1, "ts": 1,
             "received_ms": 1, "state": "{}"}
    give_back = {"b_bank": "PB1", "b_at": 1, "b_sid": "yh-chumen-01"}
    for statement, row in ((insert_event, EVENT), (save_state, state),
                           (loans._give_back, give_back)):
        assert writer_module._DriverPlan.of(statement, dialect, row) is not None, statement
    if dialect.name == "postgresql":
        arrays = writer_module._ArrayPlan
        assert arrays.of(insert_event, dialect, EVENT, guarded=True) is not None
        assert arrays.of(insert_event, dialect, EVENT) is not None
        assert arrays.of(loans._give_back, dialect, give_back) is not None


def test_the_writer_finds_every_internal_it_reads_in_this_sqlalchemy() -> None:
    assert writer_module.missing_sqlalchemy_internals() == []


@pytest.mark.parametrize(("owner", "attr", "named"), [
    (sa.Insert, "_post_values_clause", "Insert._post_values_clause"),
    (sa.exc.DBAPIError, "instance", "DBAPIError.instance"),
    (sa.sql.compiler.SQLCompiler, "escaped_bind_names", "escaped_bind_names"),
])
def test_a_sqlalchemy_without_an_internal_stops_the_writer_at_start(
        store: Store, monkeypatch: pytest.MonkeyPatch, owner: type, attr: str,
        named: str) -> None:
    # The library's surface is what is under test: take one thing away from it.
    for holder in [k for k in owner.__mro__ if attr in vars(k)]:
        monkeypatch.delattr(holder, attr)
    with pytest.raises(writer_module.SQLAlchemyUnsupported) as refused:
        writer_module.Writer(store)
    said = str(refused.value)
    assert named in said and sa.__version__ in said
    assert "install the tested range: pip install 'SQLAlchemy>=2.1,<2.2'" in said


def test_the_tested_range_the_writer_names_is_the_pin() -> None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert f'"SQLAlchemy{writer_module.TESTED_SQLALCHEMY}"' in pyproject.read_text()
