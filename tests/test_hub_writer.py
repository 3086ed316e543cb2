"""The hub writer on a real SQLite file and a real PostgreSQL database (issue 5).

Many ops become few transactions; flush and close mean committed; a bad op
costs only itself; a full queue holds the submitter back instead of losing
anything; a database that fails for a while (locked, connection killed) is
retried until it works, and nothing is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

from hub.storage import schema
from hub.storage import writer as writer_module
from hub.storage.store import Store
from hub.storage.writer import Commuting, Guarded, Rows, Writer, WriterClosed, execute_row
from tests.harness.procs import wait_until

SID = "yh-chumen-01"
EPOCH = "9f2c01ab"


def event_row(seq: int, sid: str = SID) -> dict:
    return {"sid": sid, "epoch": EPOCH, "seq": seq, "type": "visit", "ts": seq,
            "synced": True, "received_ms": seq, "at_ms": seq, "data": "{}"}


def insert_event(store: Store, seq: int, sid: str = SID) -> Callable[[sa.Connection], None]:
    def insert_event(conn: sa.Connection) -> None:
        conn.execute(store.insert_ignore(schema.events).values(event_row(seq, sid)))
    return insert_event


def stored(store: Store, sid: str | None = None) -> list[int]:
    ev = schema.events
    query = sa.select(ev.c.seq).order_by(ev.c.sid, ev.c.seq)
    if sid is not None:
        query = query.where(ev.c.sid == sid)
    with store.engine.connect() as conn:
        return list(conn.execute(query).scalars())


@pytest.fixture
def writers() -> Iterator[Callable[..., Writer]]:
    """``writers(store, **options)``: Writers closed after the test, even a failed one."""
    made: list[Writer] = []

    def make(target: Store, **options: object) -> Writer:
        made.append(Writer(target, **options))
        return made[-1]

    yield make
    for w in made:
        w.close(timeout=5)


# -- batching and flushing ------------------------------------------------------------


def test_many_ops_become_few_transactions(store: Store, writers) -> None:
    writer = writers(store, max_batch=250)
    for seq in range(1, 1001):
        writer.submit(insert_event(store, seq))
    assert writer.queue_depth == 1000 and not writer.healthy()  # queued, not started
    writer.start()
    assert writer.flush(10)
    assert (writer.batches, writer.ops, writer.failed) == (1000 // writer.max_batch, 1000, 0)
    assert writer.queue_depth == 0 and writer.last_commit_ms is not None
    assert stored(store) == list(range(1, 1001))

    # While running, a quick burst is still committed in few transactions.
    for seq in range(1001, 1501):
        writer.submit(insert_event(store, seq))
    assert writer.flush(10)
    assert writer.ops == 1500 and writer.batches - 1000 // writer.max_batch <= 50
    assert writer.healthy()


def test_a_lone_op_is_committed_after_max_delay_without_flush(store: Store, writers) -> None:
    writer = writers(store, max_delay=0.05).start()
    started = time.monotonic()
    writer.submit(insert_event(store, 1))
    # The counter moves just after the commit, so wait for both.
    wait_until(lambda: stored(store) == [1] and writer.batches == 1, 2,
               "the op committed by the max_delay timer")
    assert time.monotonic() - started < 1.0


def test_flush_waits_for_everything_submitted_before_it(store: Store, writers) -> None:
    writer = writers(store, max_delay=10).start()  # only flush makes this writer commit soon
    assert writer.flush(0.1)  # nothing submitted: at once
    gate = threading.Event()

    def slow(conn: sa.Connection) -> None:
        assert gate.wait(5)
        insert_event(store, 1)(conn)

    writer.submit(slow)
    writer.submit(insert_event(store, 2))
    assert writer.flush(0.2) is False  # the slow op holds its batch open
    results: list[bool] = []
    flusher = threading.Thread(target=lambda: results.append(writer.flush(5)))
    flusher.start()
    time.sleep(0.1)
    assert flusher.is_alive() and stored(store) == []
    gate.set()
    flusher.join(5)
    assert results == [True] and stored(store) == [1, 2]


def test_close_commits_what_is_queued_and_then_refuses(store: Store, writers) -> None:
    writer = writers(store, max_delay=10).start()
    for seq in range(1, 301):
        writer.submit(insert_event(store, seq))
    writer.close()
    assert stored(store) == list(range(1, 301))
    assert not writer.healthy()
    with pytest.raises(WriterClosed):
        writer.submit(insert_event(store, 301))
    writer.close()  # again: nothing happens


def test_ops_from_many_threads_all_land(store: Store, writers) -> None:
    writer = writers(store).start()
    gate = threading.Barrier(8)

    def produce(n: int) -> None:
        gate.wait(5)
        for seq in range(1, 201):
            writer.submit(insert_event(store, seq, sid=f"yh-t{n}"))

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert writer.flush(10)
    for n in range(8):
        assert stored(store, f"yh-t{n}") == list(range(1, 201))
    assert writer.ops == 1600 and writer.failed == 0 and writer.batches < 200


# -- failures -------------------------------------------------------------------------


def test_a_bad_op_costs_only_itself(store: Store, writers, caplog) -> None:
    def duplicate(conn: sa.Connection) -> None:  # a plain INSERT of a stored key
        conn.execute(schema.events.insert().values(event_row(1)))

    def broken(conn: sa.Connection) -> None:
        raise ValueError("a bug in an op")

    writer = writers(store)
    for seq in range(1, 6):
        writer.submit(insert_event(store, seq))
    writer.submit(duplicate)
    for seq in range(6, 11):
        writer.submit(insert_event(store, seq))
    writer.submit(broken)
    writer.submit(broken)
    with caplog.at_level(logging.DEBUG, logger="hub.storage.writer"):
        writer.start()
        assert writer.flush(10)
    assert stored(store) == list(range(1, 11))
    assert writer.failed == 3 and writer.ops == 10
    assert writer.failures == {"test_a_bad_op_costs_only_itself.<locals>.duplicate: "
                               "IntegrityError": 1,
                               "test_a_bad_op_costs_only_itself.<locals>.broken: ValueError": 2}
    # One traceback per kind of failure, not one per failure.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2
    assert {type(r.exc_info[1]).__name__ for r in tracebacks} == {"IntegrityError",
                                                                  "ValueError"}
    # The writer goes on.
    writer.submit(insert_event(store, 11))
    assert writer.flush(5) and stored(store)[-1] == 11 and writer.healthy()


def test_a_full_queue_holds_the_submitter_back(store: Store, writers) -> None:
    writer = writers(store, max_queue=5, max_delay=0.01).start()
    gate = threading.Event()

    def slow(conn: sa.Connection) -> None:
        assert gate.wait(5)
        insert_event(store, 1)(conn)

    writer.submit(slow)
    wait_until(lambda: writer.queue_depth == 0, 2, "the writer to take the slow op")
    submitted: list[int] = []

    def produce() -> None:
        for seq in range(2, 22):
            writer.submit(insert_event(store, seq))
            submitted.append(seq)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: writer.queue_depth == 5, 2, "the queue to fill")
    time.sleep(0.1)
    assert producer.is_alive() and len(submitted) == 5  # blocked, not dropping
    gate.set()
    producer.join(5)
    assert not producer.is_alive() and writer.flush(5)
    assert stored(store) == list(range(1, 22)) and writer.failed == 0


def test_a_locked_sqlite_database_is_waited_out(tmp_path, writers, caplog) -> None:
    path = tmp_path / "hub.db"
    store = Store(f"sqlite:///{path}?timeout=0.05")  # give up on the lock quickly
    writer = writers(store, unhealthy_after=0.3, backoff=(0.02, 0.1)).start()
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        for seq in range(1, 51):
            writer.submit(insert_event(store, seq))
        wait_until(lambda: not writer.healthy(), 3, "the writer to report itself stuck")
        assert writer.retries > 0 and writer.failed == 0
        assert any("database is locked" in r.getMessage() for r in caplog.records)
        other.execute("COMMIT")
        other.close()
        assert writer.flush(5)
        assert stored(store) == list(range(1, 51)) and writer.failed == 0
        assert writer.healthy()
    finally:
        writer.close()
        store.close()


@pytest.mark.postgres
def test_a_killed_postgresql_connection_is_retried_without_loss(pg_server, pg_url: str,
                                                               writers) -> None:
    store = Store(pg_url)
    writer = writers(store, backoff=(0.02, 0.2)).start()
    killed: list[int] = []

    def killer(conn: sa.Connection) -> None:
        # The first time, the server ends this very connection mid-transaction.
        if not killed:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            killed.append(pg_server.terminate(pg_url, pid=pid))
        conn.execute(store.insert_ignore(schema.events).values(event_row(1000)))

    try:
        for seq in range(1, 51):
            writer.submit(insert_event(store, seq))
        writer.submit(killer)
        for seq in range(51, 101):
            writer.submit(insert_event(store, seq))
        assert writer.flush(10)
        assert killed == [1] and writer.retries >= 1 and writer.failed == 0
        assert stored(store) == [*range(1, 101), 1000]

        # Every connection dropped while idle between batches (a restart, a
        # failover), the writer's kept one too: the batch on it fails and is
        # retried on one from the pool, which replaces the dead ones. Nothing
        # is lost either.
        pg_server.terminate(pg_url)
        for seq in range(101, 151):
            writer.submit(insert_event(store, seq))
        assert writer.flush(10)
        assert stored(store) == [*range(1, 151), 1000] and writer.failed == 0
        assert writer.healthy()
    finally:
        writer.close()
        store.close()


# -- Rows: one statement, one row; batched as executemany -------------------------------


@contextlib.contextmanager
def executes(store: Store) -> Iterator[list[tuple[str, bool]]]:
    """(statement's first words, executemany) of every execute on ``store`` meanwhile."""
    seen: list[tuple[str, bool]] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((" ".join(statement.split()[:3]), executemany))

    sa.event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", before)


def test_batches_that_follow_closely_keep_one_connection(store: Store, writers,
                                                         monkeypatch) -> None:
    checkouts: list[int] = []
    sa.event.listen(store.engine, "checkout", lambda *args: checkouts.append(1))
    writer = writers(store).start()
    for seq in range(1, 6):  # five batches, each committed before the next
        writer.submit(insert_event(store, seq))
        assert writer.flush(10)
    assert writer.batches == 5 and len(checkouts) == 1
    # After a pause it goes back to the pool, whose ping tests it at checkout.
    monkeypatch.setattr(writer_module, "KEEP_CONNECTION_S", 0.0)
    writer.submit(insert_event(store, 6))
    assert writer.flush(10)
    assert len(checkouts) == 2 and stored(store) == [1, 2, 3, 4, 5, 6]


def test_rows_of_one_statement_are_written_as_one_executemany(store: Store, writers) -> None:
    insert = store.insert_ignore(schema.events)
    upsert = store.upsert(schema.stations, ["sid"], ["name"])
    writer = writers(store)
    for seq in range(1, 201):  # 400 ops: one batch
        writer.submit(Rows(insert, event_row(seq)))
        # A snapshot per message: only the last of each station's is written.
        sid = f"yh-town-{seq % 3}"
        writer.submit(Rows(upsert, {"sid": sid, "name": f"{sid} at {seq}"}, key=sid))
    with executes(store) as seen:
        writer.start()
        assert writer.flush(10)
    assert stored(store) == list(range(1, 201))
    with store.engine.connect() as conn:
        names = dict(conn.execute(sa.select(schema.stations.c.sid,
                                            schema.stations.c.name)).all())
    assert names == {"yh-town-0": "yh-town-0 at 198", "yh-town-1": "yh-town-1 at 199",
                     "yh-town-2": "yh-town-2 at 200"}
    writes = [s for s in seen if s[0].startswith("INSERT")]
    # 400 ops in one batch: one statement for 200 events, one for 3 station rows.
    assert (writer.ops, writer.batches) == (400, 1)
    if store.engine.dialect.name == "postgresql":  # the events as arrays (see below)
        assert writes == [("INSERT INTO events", False), ("INSERT INTO stations", True)]
    else:
        assert len(writes) == 2 and all(many for _, many in writes)


def test_an_op_between_rows_sees_the_rows_before_it(store: Store, writers) -> None:
    insert = store.insert_ignore(schema.events)
    counted: list[int] = []
    writer = writers(store).start()
    writer.submit(Rows(insert, event_row(1)))
    writer.submit(Rows(insert, event_row(2)))
    writer.submit(lambda conn: counted.append(
        conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar_one()))
    writer.submit(Rows(insert, event_row(3)))
    assert writer.flush(10)
    assert counted == [2] and stored(store) == [1, 2, 3]


def test_a_bad_row_costs_only_itself(store: Store, writers, caplog) -> None:
    insert = store.insert_ignore(schema.events)
    writer = writers(store).start()
    bad = {**event_row(2), "sid": None}  # NOT NULL
    with caplog.at_level(logging.ERROR, logger="hub.storage.writer"):
        for row in (event_row(1), bad, event_row(3)):
            writer.submit(Rows(insert, row))
        assert writer.flush(10)
    assert stored(store) == [1, 3]
    assert writer.failed == 1 and list(writer.failures) == ["Rows(events): IntegrityError"]


def test_rows_go_to_the_driver_typed_as_sqlalchemy_would_write_them(store: Store,
                                                                     writers) -> None:
    log_insert = schema.status_log.insert()
    # Only sid and name: the columns' Python-side defaults (online, events_through)
    # must still be written, so this statement is left to SQLAlchemy.
    partial = store.upsert(schema.stations, ["sid"], ["name"])
    writer = writers(store).start()
    for i, (online, reason) in enumerate([(True, None), (False, "lost"), (True, None)]):
        writer.submit(Rows(log_insert, {"sid": SID, "at_ms": i, "online": online,
                                        "reason": reason, "epoch": EPOCH, "birth": None}))
        writer.submit(Rows(partial, {"sid": f"yh-town-{i}", "name": f"town {i}"},
                           key=f"yh-town-{i}"))
    assert writer.flush(10) and writer.failed == 0
    log_, st = schema.status_log.c, schema.stations.c
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(log_.at_ms, log_.online, log_.reason, log_.birth)
                            .order_by(log_.at_ms)).all()
        towns = conn.execute(sa.select(st.sid, st.online, st.events_through)
                             .order_by(st.sid)).all()
    assert [tuple(r) for r in rows] == [(0, True, None, None), (1, False, "lost", None),
                                        (2, True, None, None)]
    assert [tuple(t) for t in towns] == [(f"yh-town-{i}", False, 0) for i in range(3)]


def test_execute_row_leaves_an_expanding_parameter_to_sqlalchemy(store: Store,
                                                                 writers) -> None:
    insert = store.insert_ignore(schema.events)
    ev = schema.events
    delete = ev.delete().where(ev.c.seq.in_(sa.bindparam("seqs", expanding=True)))
    bump = ev.update().where(ev.c.seq == sa.bindparam("b_seq")).values(
        received_ms=sa.bindparam("b_ms"))
    counts: list[int] = []
    writer = writers(store).start()
    for seq in (1, 2, 3):
        writer.submit(Rows(insert, event_row(seq)))
    writer.submit(lambda conn: counts.append(
        execute_row(conn, delete, {"seqs": [1, 3]}).rowcount))
    writer.submit(lambda conn: counts.append(
        execute_row(conn, bump, {"b_seq": 2, "b_ms": 99}).rowcount))
    assert writer.flush(10) and writer.failed == 0
    assert counts == [2, 1] and stored(store) == [2]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(ev.c.received_ms)).scalar_one() == 99


# -- Guarded: a row, and what it causes only when it is new ------------------------------


def _log(store: Store, seq: int, sid: str | None = SID) -> Callable[[sa.Connection], None]:
    """A ``then`` op: a status_log row at ``seq`` (a table no ``Rows`` here writes)."""
    def log_it(conn: sa.Connection) -> None:
        execute_row(conn, schema.status_log.insert(),
                    {"sid": sid, "at_ms": seq, "online": True, "reason": "heard",
                     "epoch": EPOCH, "birth": 1})
    return log_it


def logged(store: Store) -> list[int]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(schema.status_log.c.at_ms)).scalars())


def test_a_guarded_rows_then_runs_only_when_the_row_is_new(store: Store, writers) -> None:
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    counted: list[int] = []
    with store.engine.begin() as conn:
        execute_row(conn, insert, event_row(4))  # stored before: a replay after a crash
    for seq in (1, 2, 3, 4, 5, 3):  # 3 twice in one batch, 4 already stored
        writer.submit(Guarded(insert, event_row(seq), [_log(store, seq), _log(store, -seq)]))
        writer.submit(Rows(insert, event_row(100 + seq)))
    # An op of another kind sees what the Guarded before it caused.
    writer.submit(lambda conn: counted.append(
        conn.execute(sa.select(sa.func.count()).select_from(schema.status_log)).scalar_one()))
    writer.start()
    assert writer.flush(10)
    writer.submit(Guarded(insert, event_row(2), [_log(store, 2)]))  # again, a later batch
    writer.submit(Guarded(insert, event_row(6), [_log(store, 6)]))
    assert writer.flush(10)
    assert stored(store) == [1, 2, 3, 4, 5, 6, 101, 102, 103, 104, 105]
    assert logged(store) == [-5, -3, -2, -1, 1, 2, 3, 5, 6]
    assert counted == [8] and writer.failed == 0


def test_many_guarded_rows_are_told_new_as_one_at_a_time(store: Store, writers,
                                                          caplog, monkeypatch) -> None:
    # Enough of them for PostgreSQL to insert them as arrays and learn which
    # were new from the keys its INSERT returns: duplicates in the batch and in the table, and
    # a bad row, must come out as they do one row at a time.
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    with store.engine.begin() as conn:
        for seq in (4, 30):  # stored before: a replay after a crash
            execute_row(conn, insert, event_row(seq))
    seqs = [*range(1, 41), 3, 17, 40, 17]
    for seq in seqs:
        row = {**event_row(seq), "sid": None} if seq == 25 else event_row(seq)
        writer.submit(Guarded(insert, row, [_log(store, seq)]))
    arrayed: list[int] = []  # how many rows each insert over arrays took
    run_guarded = writer_module._ArrayPlan.run_guarded
    monkeypatch.setattr(writer_module._ArrayPlan, "run_guarded", lambda plan, conn, params: (
        arrayed.append(len(params)), run_guarded(plan, conn, params))[1])
    with caplog.at_level(logging.ERROR, logger="hub.storage.writer"):
        writer.start()
        assert writer.flush(10)
    assert stored(store) == [s for s in range(1, 41) if s != 25]
    assert logged(store) == [s for s in range(1, 41) if s not in (4, 25, 30)]
    assert writer.failed == 1 and list(writer.failures) == ["Guarded(events): IntegrityError"]
    # On PostgreSQL one INSERT over arrays (the bad row fails it: then by halves).
    pg = store.engine.dialect.name == "postgresql"
    assert arrayed[:2] == ([len(seqs), len(seqs) // 2] if pg else [])


def test_a_rounds_many_updates_end_as_row_by_row(store: Store, writers) -> None:
    # Loans' rows in one batch: 20 banks borrowed and returned, 4 of them borrowed
    # and returned again. On PostgreSQL a round's 16 or more UPDATE rows are one
    # UPDATE … FROM unnest(…); the table must end as one row at a time leaves it.
    from hub.fleet.loans import Loans
    from protocol import messages as m

    loans = Loans(store, loan_hours=1)
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    seq = 0
    expected: dict[str, tuple[int, str | None]] = {}

    def event(type_: str, bank: str, at: int, sid: str) -> None:
        nonlocal seq
        seq += 1
        ev = m.Event(sid, EPOCH, at, True, seq, type_, {"bank": bank, "slot": 1})
        writer.submit(Guarded(insert, {**event_row(seq, sid), "type": type_},
                              loans.on_event(sid, EPOCH, ev, at)))

    banks = [f"PB{n:04d}" for n in range(20)]
    for n, bank in enumerate(banks):
        event("bank_borrowed", bank, 1000 + n, "yh-a")
    # Returned where they were lent: a return elsewhere closes a loan only once
    # that station's State shows the bank (docs/alerts.md), not in this batch.
    for n, bank in enumerate(banks):
        event("bank_returned", bank, 2000 + n, "yh-a")
        expected[f"yh-a/{EPOCH}/{n + 1}"] = (2000 + n, "yh-a")
    for n, bank in enumerate(banks[:4]):
        event("bank_borrowed", bank, 3000 + n, "yh-c")
        event("bank_returned", bank, 3500 + n, "yh-c")
        expected[f"yh-c/{EPOCH}/{seq - 1}"] = (3500 + n, "yh-c")
    with executes(store) as seen:
        writer.start()
        assert writer.flush(10)
    with store.engine.connect() as conn:
        got = {r.borrow_event: (r.returned_ms, r.returned_sid)
               for r in conn.execute(sa.select(schema.loans))}
    assert got == expected and writer.batches == 1 and writer.failed == 0
    updates = [many for words, many in seen if words.startswith("UPDATE loans")]
    if store.engine.dialect.name == "postgresql":
        assert False in updates  # a round of 20 returns: one statement
    else:
        assert updates and all(updates)


def test_a_failing_then_costs_only_its_own_op(store: Store, writers, caplog) -> None:
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    for seq in (1, 2, 3):
        # seq 2's then breaks a NOT NULL: on PostgreSQL it shows only when the
        # pipeline is read, after the other ops' statements were sent.
        then = [_log(store, seq, sid=None if seq == 2 else SID), _log(store, -seq)]
        writer.submit(Guarded(insert, event_row(seq), then))
    with caplog.at_level(logging.ERROR, logger="hub.storage.writer"):
        writer.start()
        assert writer.flush(10)
    assert stored(store) == [1, 3] and logged(store) == [-3, -1, 1, 3]
    assert writer.failed == 1 and list(writer.failures) == ["Guarded(events): IntegrityError"]


@pytest.mark.postgres
def test_a_killed_postgresql_connection_under_guarded_ops_is_retried(pg_server, pg_url: str,
                                                                     writers) -> None:
    store = Store(pg_url)
    insert = store.insert_ignore(schema.events)
    writer = writers(store, backoff=(0.02, 0.2))
    pids: list[int] = []
    killed: list[int] = []

    def note_pid(conn: sa.Connection) -> None:
        pids.append(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def kill(conn: sa.Connection) -> None:
        if not killed:  # the server ends this transaction's connection, mid-pipeline
            killed.append(pg_server.terminate(pg_url, pid=pids[-1]))

    try:
        writer.submit(note_pid)
        for seq in range(1, 21):
            then = [_log(store, seq)] + ([kill] if seq == 10 else [])
            writer.submit(Guarded(insert, event_row(seq), then))
        writer.start()
        assert writer.flush(10)
        assert killed == [1] and writer.retries >= 1 and writer.failed == 0
        assert stored(store) == list(range(1, 21)) and logged(store) == list(range(1, 21))
    finally:
        writer.close()
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("locked", ["events", "status_log"])
def test_a_lock_timeout_in_guarded_ops_is_retried(pg_url: str, writers, locked: str) -> None:
    """A server error that says "try again" is read from psycopg's pipeline, not
    raised by SQLAlchemy: it must still reach the writer as SQLAlchemy's
    OperationalError, or the ops would be dropped as bad."""
    store = Store(pg_url)
    insert = store.insert_ignore(schema.events)
    writer = writers(store, backoff=(0.05, 0.2))
    holder = psycopg.connect(pg_url)
    try:
        holder.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")  # until rollback
        writer.submit(lambda conn: conn.exec_driver_sql("SET LOCAL lock_timeout = '50ms'"))
        for seq in range(1, 11):
            writer.submit(Guarded(insert, event_row(seq), [_log(store, seq)]))
        writer.start()
        wait_until(lambda: writer.retries >= 1, 10, "the writer to meet the lock")
        holder.rollback()
        assert writer.flush(10)
        assert writer.failed == 0
        assert stored(store) == list(range(1, 11)) and logged(store) == list(range(1, 11))
    finally:
        holder.close()
        writer.close()
        store.close()


def test_commuting_ops_keep_rows_together_and_run_in_order_with_thens(store: Store,
                                                                       writers) -> None:
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    order: list[str] = []

    def note(what: str) -> Callable[[sa.Connection], None]:
        return lambda conn: order.append(what)

    for seq in range(1, 4):
        writer.submit(Rows(insert, event_row(seq)))
        writer.submit(Commuting(note(f"c{seq}")))
        writer.submit(Guarded(insert, event_row(10 + seq), [note(f"g{seq}")]))
    writer.submit(lambda conn: order.append("x:{}".format(conn.execute(  # another kind
        sa.select(sa.func.count()).select_from(schema.events)).scalar_one())))
    writer.submit(Commuting(note("c4")))
    with executes(store) as seen:
        writer.start()
        assert writer.flush(10)
    assert order == ["c1", "g1", "c2", "g2", "c3", "g3", "x:6", "c4"]
    assert stored(store) == [1, 2, 3, 11, 12, 13]
    # The three event Rows around the Commuting ops: one executemany.
    assert [many for words, many in seen if words.startswith("INSERT INTO events")
            and many] == [True]


# -- PostgreSQL: many rows of a statement as arrays ----------------------------------------


@pytest.mark.postgres
def test_many_rows_go_as_arrays_as_executemany_would_write_them(pg_url: str, writers) -> None:
    store = Store(pg_url)
    insert = store.insert_ignore(schema.events)
    upsert = store.upsert(schema.stations, ["sid"], ["name", "online"])
    log_row = schema.status_log.insert()
    writer = writers(store)
    texts = ["tab\there", "new\nline", "back\\slash", "中文", "\\N", "", "quote'\""]
    with store.engine.begin() as conn:
        execute_row(conn, insert, {**event_row(5), "data": '"stored before"'})
    for seq in range(1, 41):
        data = json.dumps({"text": texts[seq % len(texts)], "n": 2**62 + seq})
        writer.submit(Rows(insert, {**event_row(seq), "synced": seq % 2 == 0,
                                    "data": data}))
        sid = f"yh-town-{seq % 4}"  # snapshots: the last of each station's wins
        writer.submit(Rows(upsert, {"sid": sid, "name": f"{sid} at {seq}",
                                    "online": seq % 3 == 0}, key=sid))
        # Bools, NULLs, and small and 64-bit integers in one array each.
        writer.submit(Rows(log_row, {"sid": SID, "at_ms": seq, "online": seq % 2 == 0,
                                     "reason": None if seq % 3 else texts[seq % len(texts)],
                                     "epoch": EPOCH,
                                     "birth": seq if seq % 2 else 2**62 + seq}))
    try:
        with executes(store) as seen:
            writer.start()
            assert writer.flush(10)
        with store.engine.connect() as conn:
            ev = conn.execute(sa.select(schema.events.c.seq, schema.events.c.synced,
                                        schema.events.c.data)
                              .order_by(schema.events.c.seq)).all()
            st = dict(conn.execute(sa.select(schema.stations.c.sid,
                                             schema.stations.c.name)).all())
            lg = schema.status_log.c
            log_rows = conn.execute(sa.select(lg.at_ms, lg.online, lg.reason, lg.birth)
                                    .order_by(lg.id)).all()
    finally:
        writer.close()
        store.close()
    logs = [r.at_ms for r in log_rows]
    assert [(r.online, r.reason, r.birth) for r in log_rows] == [
        (seq % 2 == 0, None if seq % 3 else texts[seq % len(texts)],
         seq if seq % 2 else 2**62 + seq) for seq in range(1, 41)]
    assert [r.seq for r in ev] == list(range(1, 41))
    assert ev[4].data == '"stored before"'  # ON CONFLICT DO NOTHING kept
    for r in ev[5:]:
        assert r.synced is (r.seq % 2 == 0)
        assert json.loads(r.data) == {"text": texts[r.seq % len(texts)], "n": 2**62 + r.seq}
    assert st == {f"yh-town-{seq % 4}": f"yh-town-{seq % 4} at {seq}" for seq in range(37, 41)}
    assert logs == list(range(1, 41))  # in the order submitted (ids from one sequence)
    # Events and the log as arrays (one execute each); 4 stations: executemany.
    assert [s for s in seen if s[0].startswith("INSERT")] == [
        ("INSERT INTO events", False), ("INSERT INTO stations", True),
        ("INSERT INTO status_log", False)]
    assert writer.failed == 0


@pytest.mark.postgres
def test_arrayed_rows_of_two_stretches_in_one_batch_are_written_once(pg_url: str,
                                                                     writers) -> None:
    # An op of another kind between them splits a batch into stretches, each
    # with its own statement over arrays: the second must not write the first
    # one's rows again (an upsert would fail on a row it affects twice, a plain
    # insert would store it twice), as it did when both were COPY into one
    # temporary table.
    store = Store(pg_url)
    upsert = store.upsert(schema.stations, ["sid"], ["name"])
    log_row = schema.status_log.insert()
    writer = writers(store)
    for stretch in range(2):
        for n in range(20):
            sid = f"yh-town-{n}"
            writer.submit(Rows(upsert, {"sid": sid, "name": f"{sid} {stretch}"}, key=sid))
            writer.submit(Rows(log_row, {"sid": sid, "at_ms": stretch * 100 + n,
                                         "online": True, "reason": None, "epoch": EPOCH,
                                         "birth": 1}))
        writer.submit(lambda conn: conn.execute(sa.text("SELECT 1")))  # ends the stretch
    try:
        writer.start()
        assert writer.flush(10)
        with store.engine.connect() as conn:
            names = dict(conn.execute(sa.select(schema.stations.c.sid,
                                                schema.stations.c.name)).all())
            logs = conn.execute(sa.select(schema.status_log.c.at_ms)
                                .order_by(schema.status_log.c.id)).scalars().all()
    finally:
        writer.close()
        store.close()
    assert writer.batches == 1 and writer.failed == 0  # one transaction, not bisected
    assert names == {f"yh-town-{n}": f"yh-town-{n} 1" for n in range(20)}
    assert logs == [*range(20), *range(100, 120)]


@pytest.mark.postgres
def test_a_bad_row_among_arrayed_ones_costs_only_itself(pg_url: str, writers, caplog) -> None:
    store = Store(pg_url)
    insert = store.insert_ignore(schema.events)
    writer = writers(store).start()
    try:
        with caplog.at_level(logging.ERROR, logger="hub.storage.writer"):
            for seq in range(1, 31):
                row = {**event_row(seq), "sid": None} if seq == 7 else event_row(seq)
                writer.submit(Rows(insert, row))
            assert writer.flush(10)
            # The connection the failed batch left is no worse for it.
            batches = writer.batches
            for seq in range(31, 61):
                writer.submit(Rows(insert, event_row(seq)))
            assert writer.flush(10)
            assert writer.batches == batches + 1  # whole, not replayed by halves
        assert stored(store) == [s for s in range(1, 61) if s != 7]
        assert writer.failed == 1 and list(writer.failures) == ["Rows(events): IntegrityError"]
    finally:
        writer.close()
        store.close()


def test_a_bad_op_is_found_by_halves_not_one_op_at_a_time(store: Store, writers,
                                                          caplog) -> None:
    writer = writers(store, max_batch=1024)
    for seq in range(1, 1025):
        if seq == 700:
            writer.submit(lambda conn: conn.execute(sa.text("SELECT * FROM no_such_table")))
        else:
            writer.submit(insert_event(store, seq))
    with caplog.at_level(logging.ERROR, logger="hub.storage.writer"):
        writer.start()
        assert writer.flush(30)
    assert stored(store) == [s for s in range(1, 1025) if s != 700]
    # Committed: the halves without the bad op, one per level of 1024 = 2**10.
    assert writer.failed == 1 and writer.batches == 10 and writer.ops == 1023


def test_then_rows_keep_the_order_of_their_key_and_run_in_rounds(store: Store,
                                                                 writers) -> None:
    insert = store.insert_ignore(schema.events)
    log = schema.status_log
    add = log.insert()
    mark = log.update().where(log.c.sid == sa.bindparam("s")).values(reason="marked")

    def added(sid: str, at_ms: int, order: object) -> Rows:
        return Rows(add, {"sid": sid, "at_ms": at_ms, "online": True, "reason": None,
                          "epoch": EPOCH, "birth": 1}, order=order)

    def marked(sid: str, order: object) -> Rows:
        return Rows(mark, {"s": sid}, order=order)

    writer = writers(store)
    # Station a: a row, then marked. Station b: marked (nothing yet), then a row.
    # Grouped by statement alone, b's row would be marked too.
    writer.submit(Guarded(insert, event_row(1), [added("a", 1, "a"), marked("a", "a")]))
    writer.submit(Guarded(insert, event_row(2), [marked("b", "b"), added("b", 2, "b")]))
    # Without an order, a row is in order with every row before and after it.
    writer.submit(Guarded(insert, event_row(3), [added("c", 3, None)]))
    writer.submit(Guarded(insert, event_row(4), [marked("c", "c")]))
    writer.submit(Guarded(insert, event_row(5), [marked("d", "d"), added("d", 5, "d")]))
    with executes(store) as seen:
        writer.start()
        assert writer.flush(10)
    with store.engine.connect() as conn:
        reasons = dict(conn.execute(sa.select(log.c.sid, log.c.reason)).all())
    assert reasons == {"a": "marked", "b": None, "c": "marked", "d": None}
    # Rounds: {a's row, b's mark}, {a's mark, b's row}, {c's row}, {c's and d's
    # marks}, {d's row}: the two marks of a round are one executemany.
    updates = [many for words, many in seen if words.startswith("UPDATE status_log")]
    assert updates == [False, False, True] and writer.failed == 0


def test_a_state_closing_a_loan_borrowed_in_the_same_batch_closes_it_in_the_table(
        store: Store, writers) -> None:
    # A backlog (the hub was away): a bank's borrow at one station and a State of
    # another showing it arrive in one batch. The State's close must follow the
    # borrow's insert, or the table keeps a loan the hub holds closed.
    from hub.fleet.loans import Loans
    from protocol import examples
    from protocol import messages as m

    loans = Loans(store, loan_hours=1)
    insert = store.insert_ignore(schema.events)
    writer = writers(store)
    borrow = m.Event("yh-a", EPOCH, 1000, True, 1, "bank_borrowed",
                     {"bank": "PB0001", "slot": 1, "charge": 96, "rider": None})
    writer.submit(Guarded(insert, {**event_row(1, "yh-a"), "type": "bank_borrowed"},
                          loans.on_event("yh-a", EPOCH, borrow, 1000)))
    doc = examples.example("state")
    doc["lockers"]["slots"] = [{"slot": 1, "bank": "PB0001", "charge": 96, "charging": False,
                                "locked": True, "fault": None, "temp_c": None,
                                "cycles": None}]
    doc.update(sid="yh-b", epoch=EPOCH, ts=5000, rev=1, last_seq=0)
    for op in loans.on_state("yh-b", m.from_dict("state", doc), 5000):
        writer.submit(op)
    writer.start()
    assert writer.flush(10)
    with store.engine.connect() as conn:
        (row,) = conn.execute(sa.select(schema.loans)).mappings()
    assert (row["returned_ms"], row["returned_sid"]) == (5000, "yh-b")
    assert loans.open_loan("PB0001") is None and writer.batches == 1
