"""PostgreSQL restarted under a running hub (issue 12): the writer reconnects by
itself, nothing is lost, nothing doubled, and /healthz says so.

A real hub (in process, its web served by waitress) on a private PostgreSQL
server (``pg_cluster``) and a real Mosquitto; two stations (journal, link,
outbox) record events steadily — visits, borrows and returns — while the server
is stopped fast, crashed (immediate) or kept down for 20 s. Afterwards every
event is stored once, every borrow has one loan, the ledger holds no point
twice, and /healthz answered 503 naming the database while it was away and
200 again after, the hub never restarted. All at the writer's shipped settings.

Then the case a restart makes rare and a network makes certain: the connection
lost after the server committed but before the writer heard it (a proxy passes
the COMMIT on and cuts the answer). The writer asks the server what became of
its transaction instead of running it again. And a path that goes silent does
not hang /healthz's ping.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from hub.config import parse_hub_config
from hub.service import Hub
from hub.storage import schema
from hub.storage.store import PING_TIMEOUT, Store
from hub.storage.writer import Guarded, Rows, Writer
from protocol.ids import rider_id
from tests.harness.delivery import DeliveryStation
from tests.harness.pgcluster import PgCluster
from tests.harness.procs import free_port, wait_until

SIDS = ("yh-chumen-01", "yh-kanmen-01")
RIDER = rider_id(b"test-fleet-key-0123456789abcdef", "13812345678")
TOKEN = "pg-restart-test-token-0123456789"


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


# -- a hub and its stations -----------------------------------------------------------


class Health:
    """/healthz over HTTP, polled on a thread: (monotonic time, status, body) each time."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/healthz"
        self.answers: list[tuple[float, int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz", daemon=True)

    def get(self) -> tuple[int, dict]:
        import json

        try:
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def start(self) -> Health:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            status, body = self.get()
            self.answers.append((asked, status, body))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(15)

    def between(self, start: float, end: float) -> list[tuple[int, dict]]:
        """The answers to the requests made between ``start`` and ``end``."""
        return [(status, body) for t, status, body in self.answers if start <= t <= end]


class Stream:
    """The stations recording events on a thread, one every ``every`` seconds
    each: visits, and every tenth a borrow of a new bank, returned five later."""

    def __init__(self, stations: list[DeliveryStation], every: float = 0.02) -> None:
        self.stations = stations
        self.every = every
        self.borrows = 0
        self.returns = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)
        self.errors: list[BaseException] = []

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                for i, st in enumerate(self.stations):
                    bank = f"PB{i}{n - n % 10:06d}"
                    if n % 10 == 0:
                        self._record(st, "bank_borrowed", {"slot": 1, "bank": bank,
                                                           "charge": 96, "rider": RIDER})
                        self.borrows += 1
                    elif n % 10 == 5 and n > 10:
                        self._record(st, "bank_returned", {
                            "slot": 2, "bank": f"PB{i}{n - 5:06d}", "charge": 40, "rider": None})
                        self.returns += 1
                    else:
                        self._record(st, "visit", {"count": 1})
                self._stop.wait(self.every)
        except BaseException as err:  # the test asserts there were none
            self.errors.append(err)
            raise

    @staticmethod
    def _record(st: DeliveryStation, type_: str, data: dict) -> None:
        # As a part of the station would: the journal first; the pump sends it.
        st.journal.append_event(st.clock.ms(), True, type_, data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive() and not self.errors, self.errors

    def last_seqs(self) -> dict[str, int]:
        return {st.link.sid: st.journal.last_seq for st in self.stations}


class RunningHub:
    """A started ``Hub`` serving its web on a free port, on ``database``."""

    def __init__(self, broker: Any, database: str) -> None:
        config = parse_hub_config({
            "mqtt": {"host": broker.host, "port": broker.port},
            "database": database,
            "http": {"host": "127.0.0.1", "port": free_port()},
            "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
            "stations": [{"sid": sid, "name": sid} for sid in SIDS]})
        self.hub = Hub(config, registry=CollectorRegistry())
        self.base = f"http://127.0.0.1:{config.http_port}"
        self._web = threading.Thread(target=self.hub.serve, name="hub-web", daemon=True)

    def start(self) -> RunningHub:
        self.hub.start()
        self._web.start()
        return self

    def close(self) -> None:
        self.hub.stop()
        self.hub.close()
        self._web.join(10)


@pytest.fixture
def running(pg_cluster: PgCluster, broker_factory, tmp_path) -> Iterator[dict[str, Any]]:
    """A hub on ``pg_cluster`` with its two stations connected, and /healthz 200."""
    broker = broker_factory()
    hub = RunningHub(broker, pg_cluster.url).start()
    made: list[DeliveryStation] = []
    health = Health(hub.base)
    try:
        wait_until(lambda: health.get()[0] == 200, 20, "hub /healthz 200")
        for sid in SIDS:
            made.append(DeliveryStation(broker, tmp_path / sid, sid).start())
        wait_until(lambda: all((hub.hub.fleet.get(s) or None) and hub.hub.fleet.get(s).online
                               for s in SIDS), 10, "both stations online at the hub")
        yield {"hub": hub.hub, "cluster": pg_cluster, "stations": made, "health": health}
    finally:
        health.stop()
        for st in made:
            st.close()
        if not pg_cluster.running():
            pg_cluster.start()  # or closing the hub waits for the database in vain
        hub.close()
        assert all(not st.pump_errors for st in made)


def assert_stored_once(url: str, last_seqs: dict[str, int], stream: Stream) -> None:
    """Every event of every station once, each borrow one loan, no ledger point twice."""
    ev, lo, led = schema.events, schema.loans, schema.ledger
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            doubled = conn.execute(
                sa.select(ev.c.sid, ev.c.epoch, ev.c.seq, sa.func.count())
                .group_by(ev.c.sid, ev.c.epoch, ev.c.seq).having(sa.func.count() > 1)).all()
            assert doubled == []
            for sid, last in last_seqs.items():
                seqs = list(conn.execute(sa.select(ev.c.seq).where(ev.c.sid == sid)
                                         .order_by(ev.c.seq)).scalars())
                assert seqs == list(range(1, last + 1)), f"{sid}: gaps or extras"
                epochs = conn.execute(sa.select(sa.func.count(sa.distinct(ev.c.epoch)))
                                      .where(ev.c.sid == sid)).scalar_one()
                assert epochs == 1

            borrows = conn.execute(sa.select(sa.func.count()).select_from(ev).where(
                ev.c.type == "bank_borrowed")).scalar_one()
            assert borrows == stream.borrows
            loans = conn.execute(sa.select(lo.c.bank, lo.c.borrow_event, lo.c.returned_ms)).all()
            assert len(loans) == borrows
            assert len({row.borrow_event for row in loans}) == len(loans)
            # Each bank is returned five events after it was borrowed; only the
            # borrows the stream made after its last return may still be out.
            still_out = [row.bank for row in loans if row.returned_ms is None]
            assert len(still_out) == stream.borrows - stream.returns

            twice = conn.execute(
                sa.select(led.c.sid, led.c.component, led.c.at_ms, sa.func.count())
                .group_by(led.c.sid, led.c.component, led.c.at_ms)
                .having(sa.func.count() > 1)).all()
            assert twice == []
            downs = conn.execute(sa.select(sa.func.count()).select_from(led).where(
                led.c.component == "station", led.c.state == "down")).scalar_one()
            assert downs == 0  # the database's outage is not the stations'
            runs = conn.execute(sa.select(sa.func.count()).select_from(schema.hub_runs))
            assert runs.scalar_one() == 1
    finally:
        engine.dispose()


def all_stored(url: str, last_seqs: dict[str, int]) -> bool:
    ev = schema.events
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.select(ev.c.sid, sa.func.count())
                                       .group_by(ev.c.sid)).all())
    finally:
        engine.dispose()
    return all(counts.get(sid, 0) >= last for sid, last in last_seqs.items())


@pytest.mark.parametrize(("mode", "down_for"), [
    pytest.param("fast", 2.0, id="fast-restart"),
    pytest.param("immediate", 2.0, id="crash-restart"),
    pytest.param("immediate", 20.0, id="crash-down-20s"),
])
def test_postgresql_restarted_under_the_hub_loses_and_doubles_nothing(running, mode: str,
                                                                      down_for: float) -> None:
    hub: Hub = running["hub"]
    cluster: PgCluster = running["cluster"]
    health: Health = running["health"].start()
    stream = Stream(running["stations"]).start()
    wait_until(lambda: hub.writer.batches >= 20, 10, "the stream being committed")
    assert hub.writer.in_doubt == 0

    went_down = time.monotonic()
    cluster.stop(mode)
    stopped = time.monotonic()
    # The hub notices at once: its ping is refused.
    wait_until(lambda: any(status == 503 for status, _ in health.between(stopped, 1e12)), 5,
               "/healthz 503 with the database down")
    time.sleep(max(0.0, down_for - (time.monotonic() - went_down)))
    back = time.monotonic()
    cluster.start()
    started = time.monotonic()
    # Back by itself at the writer's shipped backoff (≤ 2 s a retry), no restart.
    wait_until(lambda: health.get()[0] == 200, 15, "/healthz 200 again",
               on_fail=lambda: f"{health.get()}\n{cluster.log_tail()}")
    recovered_s = time.monotonic() - started
    time.sleep(1.0)  # the stream goes on a moment after the database is back
    stream.stop()
    last = stream.last_seqs()
    for st in running["stations"]:
        st.wait_drained(timeout=15)
    wait_until(lambda: all_stored(cluster.url, last), 20, "every event stored", interval=0.2)
    assert hub.writer.flush(10)
    health.stop()

    assert_stored_once(cluster.url, last, stream)
    assert hub.writer.failed == 0 and hub.writer.retries >= 1
    assert recovered_s < 10

    during = health.between(stopped, back - 0.3)
    assert during and all(status == 503 for status, _ in during), during
    for _, body in during:
        assert body["ok"] is False
        assert any("database unreachable" in p for p in body["problems"]), body
    if down_for > hub.writer.unhealthy_after + 2:
        # Long enough for the writer itself to be judged stuck: nothing committed.
        assert any(any("database writer has committed nothing" in p for p in body["problems"])
                   for _, body in during), during
    after = [body for status, body in health.between(started + recovered_s + 0.5,
                                                      time.monotonic())]
    assert after and all(body == {"ok": True} for body in after), after
    assert hub.problems() == []


# -- a COMMIT whose answer is lost ------------------------------------------------------


class CommitCutter:
    """A TCP proxy in front of a PostgreSQL server that, once armed, cuts the
    connection that sends a COMMIT: ``after`` the server answered it (committed,
    and the client never hears so) or ``before`` passing it on (not committed).
    ``black_hole()`` then passes nothing more either way, sockets kept open."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.cuts = 0
        self._armed: str | None = None
        self._silent = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def url_for(self, url: str) -> str:
        return sa.make_url(url).set(port=self.port).render_as_string(hide_password=False)

    def arm(self, when: str) -> None:
        assert when in ("before", "after")
        with self._lock:
            self._armed = when

    def black_hole(self) -> None:
        self._silent = True

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            cut = threading.Event()  # set: drop the server's answer, then close both
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        while data := _recv(client):
            if self._silent:
                continue
            with self._lock:
                # psycopg commits with a simple Query message: "Q", length, "COMMIT\0".
                when = self._armed if b"COMMIT\x00" in data else None
                if when:
                    self._armed = None
                    self.cuts += 1
            if when == "before":
                _close(client, server)
                return
            if when == "after":
                cut.set()
            if not _send(server, data):
                return

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        while data := _recv(server):
            if cut.is_set():  # the server committed and answered: nobody hears it
                _close(client, server)
                return
            if not self._silent and not _send(client, data):
                return
        _close(client, server)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    """False when the other direction already closed this socket (a cut)."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


@pytest.fixture
def cutter(pg_cluster: PgCluster) -> Iterator[CommitCutter]:
    proxy = CommitCutter(pg_cluster.port)
    yield proxy
    proxy.close()


def ledger_row(n: int) -> dict:
    return {"sid": SIDS[0], "component": "station", "at_ms": n, "state": "up"}


def event_row(seq: int) -> dict:
    return {"sid": SIDS[0], "epoch": "9f2c01ab", "seq": seq, "type": "visit", "ts": seq,
            "synced": True, "received_ms": seq, "at_ms": seq, "data": "{}"}


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_commit_whose_answer_is_lost_is_asked_about_not_run_twice(pg_cluster, cutter,
                                                                    when: str) -> None:
    # Ledger points are plain inserts: run twice, they would be there twice.
    store = Store(cutter.url_for(pg_cluster.url))
    writer = Writer(store).start()
    insert_point = schema.ledger.insert()
    insert_event = store.insert_ignore(schema.events)
    try:
        for n in range(1, 11):
            writer.submit(Rows(insert_point, ledger_row(n)))
        assert writer.flush(10)
        cutter.arm(when)
        for n in range(11, 21):
            writer.submit(Rows(insert_point, ledger_row(n)))
            writer.submit(Guarded(insert_event, event_row(n), [Rows(insert_point,
                                                                    ledger_row(100 + n))]))
        assert writer.flush(20)
        assert cutter.cuts == 1
        assert writer.failed == 0 and writer.in_doubt == 1

        engine = engine_for(pg_cluster.url)  # straight to the server, past the proxy
        try:
            with engine.connect() as conn:
                points = list(conn.execute(sa.select(schema.ledger.c.at_ms)
                                           .order_by(schema.ledger.c.at_ms)).scalars())
                seqs = list(conn.execute(sa.select(schema.events.c.seq)
                                         .order_by(schema.events.c.seq)).scalars())
        finally:
            engine.dispose()
        assert points == [*range(1, 21), *range(111, 121)]
        assert seqs == list(range(11, 21))
        # And the writer goes on.
        writer.submit(Rows(insert_point, ledger_row(1000)))
        assert writer.flush(10) and writer.healthy()
    finally:
        writer.close()
        store.close()


# -- a path that goes silent -----------------------------------------------------------


def test_ping_gives_up_quickly_on_a_silent_path(pg_cluster, cutter) -> None:
    store = Store(cutter.url_for(pg_cluster.url))
    try:
        assert store.ping() and store.ping_error is None
        cutter.black_hole()  # established connections and new ones: nothing passes
        answers: list[bool] = []
        started = time.monotonic()
        pinger = threading.Thread(target=lambda: answers.append(store.ping()), daemon=True)
        pinger.start()
        pinger.join(PING_TIMEOUT + 5)
        assert answers == [False], "ping() hung on a silent path"
        assert time.monotonic() - started < PING_TIMEOUT + 2
        assert store.ping_error
    finally:
        store.close()


def test_healthz_judges_the_writer_by_commits_not_by_its_thread(pg_cluster) -> None:
    """A writer alive and retrying is still stuck if nothing commits."""
    store = Store(pg_cluster.url)
    writer = Writer(store).start()
    try:
        writer.submit(Rows(schema.ledger.insert(), ledger_row(1)))
        assert writer.flush(10) and writer.problem() is None
        time.sleep(0.1)
        assert writer.problem() is None  # idle: nothing waits, however long ago the commit
        pg_cluster.stop("fast")
        writer.submit(Rows(schema.ledger.insert(), ledger_row(2)))
        wait_until(lambda: writer.problem() is not None, writer.unhealthy_after + 3,
                   "the writer judged stuck")
        problem = writer.problem()
        assert "committed nothing" in problem and "last error" in problem, problem
        assert writer.retries >= 1  # trying, not succeeding
        pg_cluster.start()
        assert writer.flush(10)
        assert writer.problem() is None and writer.failed == 0
    finally:
        writer.close()
        store.close()
