"""The hub store on a real SQLite file and a real PostgreSQL database (issue 5).

Migrations bring an empty database to hub/storage/schema.py exactly; re-opening is a
no-op; hubs starting together migrate once; insert_ignore and upsert behave the
same on both dialects.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub.storage import schema
from hub.storage.store import Store, head_revision
from tests.harness.procs import wait_until


def event_row(seq: int, epoch: str = "9f2c01ab", **extra: object) -> dict:
    row = {"sid": "yh-chumen-01", "epoch": epoch, "seq": seq, "type": "visit",
           "ts": 1764196800000 + seq, "synced": True, "received_ms": 1764196800100 + seq,
           "at_ms": 1764196800000 + seq, "data": '{"count": 1}'}
    return row | extra


def schema_differences(store: Store, metadata: sa.MetaData = schema.metadata) -> list:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# -- migrations -----------------------------------------------------------------------


def test_an_empty_database_is_migrated_to_head(store: Store) -> None:
    assert head_revision() is not None  # one head: the revisions form a single chain
    assert current_revision(store) == head_revision()
    tables = set(sa.inspect(store.engine).get_table_names())
    assert set(schema.metadata.tables) <= tables
    assert store.ping()


def test_the_migrated_schema_is_hub_schema(store: Store) -> None:
    assert schema_differences(store) == []
    # The comparison is not vacuous: one more column in the metadata is seen.
    extended = sa.MetaData()
    for table in schema.metadata.tables.values():
        table.to_metadata(extended)
    sa.Table("stations", extended, sa.Column("extra", sa.Integer), extend_existing=True)
    diffs = schema_differences(store, extended)
    assert [d[0] for d in diffs] == ["add_column"] and diffs[0][3].name == "extra"


def test_reopening_is_idempotent_and_keeps_the_data(database_url: str) -> None:
    first = Store(database_url)
    with first.engine.begin() as conn:
        conn.execute(schema.events.insert().values(event_row(1)))
    first.close()
    for again in (Store(database_url), Store(database_url, migrate=False)):
        assert current_revision(again) == head_revision()
        with again.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar() == 1
        again.close()


def test_migrate_false_leaves_the_database_alone(database_url: str) -> None:
    store = Store(database_url, migrate=False)
    try:
        assert sa.inspect(store.engine).get_table_names() == []
    finally:
        store.close()


# Each hub process imports, says it is ready, waits for "go", then opens the store.
HUB_START = """
import pathlib, sys, time
from hub.storage.store import Store
flag = pathlib.Path(sys.argv[2])
flag.with_suffix(f".ready{sys.argv[3]}").touch()
deadline = time.monotonic() + 20
while not flag.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
Store(sys.argv[1]).close()
"""


def test_hubs_starting_together_migrate_once(database_url: str, tmp_path) -> None:
    flag = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", HUB_START, database_url, str(flag), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in range(3)]
    try:
        wait_until(lambda: len(list(tmp_path.glob("go.ready*"))) == 3, 20, "3 hubs ready")
        flag.touch()  # all three migrate at once
        outputs = [p.communicate(timeout=30)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    store = Store(database_url, migrate=False)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() \
                == [(head_revision(),)]
        assert schema_differences(store) == []
    finally:
        store.close()


def test_threads_of_one_process_may_open_stores_at_once(database_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []
    gate = threading.Barrier(4)

    def start() -> None:
        try:
            gate.wait(5)
            stores.append(Store(database_url))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 4
        assert current_revision(stores[0]) == head_revision()
    finally:
        for s in stores:
            s.close()


# -- connections ----------------------------------------------------------------------


def test_sqlite_connections_are_set_up_for_a_writer_thread(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        assert store.dialect == "sqlite"
        with store.engine.connect() as conn:
            pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "synchronous", "foreign_keys",
                                   "busy_timeout")}
        assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1,
                          "busy_timeout": 5000}
        # Another thread may use a connection made here (the writer does).
        result: list[object] = []
        with store.engine.connect() as conn:
            t = threading.Thread(target=lambda: result.append(conn.execute(
                sa.text("SELECT 1")).scalar()))
            t.start()
            t.join(5)
        assert result == [1]
    finally:
        store.close()


def test_sqlite_busy_timeout_can_be_set_in_the_url(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}?timeout=0.25")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250
    finally:
        store.close()


@pytest.mark.postgres
def test_postgresql_urls_use_psycopg_3(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://")
    store = Store(pg_url)
    try:
        assert store.dialect == "postgresql"
        assert store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


@pytest.mark.postgres
def test_ping_is_false_when_the_server_is_gone(pg_server) -> None:
    from tests.harness.procs import free_port

    store = Store(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", migrate=False)
    try:
        assert store.ping() is False
    finally:
        store.close()


# -- statements -----------------------------------------------------------------------


def test_insert_ignore_stores_each_event_once(store: Store) -> None:
    events = schema.events
    with store.engine.begin() as conn:
        first = conn.execute(store.insert_ignore(events).values(event_row(1))).rowcount
        again = conn.execute(store.insert_ignore(events).values(
            event_row(1, type="door_opened"))).rowcount
        other_epoch = conn.execute(store.insert_ignore(events).values(
            event_row(1, epoch="aa11bb22"))).rowcount
        # Many rows at once: the duplicates among them are skipped, the rest land.
        conn.execute(store.insert_ignore(events), [event_row(n) for n in (1, 2, 3)])
    assert (first, again, other_epoch) == (1, 0, 1)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.epoch, events.c.seq, events.c.type)
                            .order_by(events.c.epoch, events.c.seq)).all()
    assert rows == [("9f2c01ab", 1, "visit"), ("9f2c01ab", 2, "visit"),
                    ("9f2c01ab", 3, "visit"), ("aa11bb22", 1, "visit")]


def test_upsert_inserts_then_updates_only_the_named_columns(store: Store) -> None:
    st = schema.station_state
    row = {"sid": "yh-chumen-01", "epoch": "9f2c01ab", "rev": 5, "ts": 1, "received_ms": 10,
           "state": '{"rev": 5}'}
    newer = store.excluded(st).rev > st.c.rev
    stmt = store.upsert(st, ["sid"], ["rev", "state"], where=newer)
    with store.engine.begin() as conn:
        counts = [conn.execute(stmt, values).rowcount for values in (
            row,
            row | {"rev": 7, "ts": 2, "state": '{"rev": 7}'},
            row | {"rev": 6, "state": '{"rev": 6}'},  # older: no change
        )]
    assert counts == [1, 1, 0]
    with store.engine.connect() as conn:
        got = conn.execute(sa.select(st.c.rev, st.c.ts, st.c.state)).one()
    assert tuple(got) == (7, 1, '{"rev": 7}')  # ts not named: kept


def test_upsert_without_columns_inserts_or_ignores(store: Store) -> None:
    st = schema.stations
    with store.engine.begin() as conn:
        for name in ("first", "second"):
            conn.execute(store.upsert(st, ["sid"], []).values(
                sid="yh-a", name=name, online=False, events_through=0))
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(st.c.name)).scalars().all() == ["first"]


def test_load_stations_joins_the_last_state(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(schema.stations.insert(), [
            {"sid": "yh-a", "name": "甲", "online": True, "events_through": 3, "epoch": "aa11bb22"},
            {"sid": "yh-b", "name": None, "online": False, "events_through": 0, "epoch": None},
        ])
        conn.execute(schema.station_state.insert().values(
            sid="yh-a", epoch="aa11bb22", rev=9, ts=100, received_ms=120,
            state='{"rev": 9, "doors": {"entrance": false}}'))
    a, b = store.load_stations()
    assert a["sid"] == "yh-a" and a["online"] is True and a["events_through"] == 3
    assert a["state"] == {"rev": 9, "doors": {"entrance": False}}
    assert (a["state_epoch"], a["state_rev"], a["state_ts"], a["state_received_ms"]) \
        == ("aa11bb22", 9, 100, 120)
    assert b["sid"] == "yh-b" and b["state"] is None and b["state_rev"] is None
