"""One leader among hub workers (hub/storage/leader.py), on a real PostgreSQL.

What it proves: of several workers sharing one database exactly one leads; the
leader that lets go (closes, or loses its connection as a SIGKILLed worker
would) is replaced at another worker's next poll; without sharing every worker
leads alone, and nothing connects. Two in-process hubs on a real Mosquitto
(``mqtt.shared_group``): the follower's alert engine is paused and /metrics
shows the stations from the leader only; the leader closed, the follower leads.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from hub.service import Hub
from hub.storage.leader import LEADER_EVERY, Leadership
from hub.storage.store import Store
from tests.harness.procs import wait_until
from tests.test_hub_ingest import make_hub  # noqa: F401  (the fixture)


@pytest.fixture
def pg_store(pg_url: str):
    s = Store(pg_url)
    yield s
    s.close()


def _workers(store: Store, n: int) -> list[Leadership]:
    return [Leadership(store, shared=True) for _ in range(n)]


@pytest.mark.postgres
def test_one_of_three_leads_and_another_takes_over_when_it_closes(pg_store: Store) -> None:
    workers = _workers(pg_store, 3)
    try:
        assert [w.poll() for w in workers] == [True, False, False]
        # Polling again changes nothing: the leader keeps it, the others wait.
        assert [w.poll() for w in workers] == [True, False, False]
        changes: list[bool] = []
        workers[1].listen(changes.append)
        workers[0].close()
        assert workers[0].is_leader is False
        assert [w.poll() for w in workers[1:]] == [True, False]
        assert changes == [True]
    finally:
        for w in workers:
            w.close()


@pytest.mark.postgres
def test_a_leader_whose_connection_is_killed_steps_down_and_is_replaced(
        pg_store: Store) -> None:
    a, b = _workers(pg_store, 2)
    lost: list[bool] = []
    a.listen(lost.append)
    try:
        assert a.poll() and not b.poll()
        # What a SIGKILL or a cut network does, seen from the server: the
        # leader's session ends, and its lock with it.
        with pg_store.engine.connect() as conn:
            ended = conn.execute(sa.text(
                # This test's database only: other tests share the server.
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'yizhan-hub leader' "
                "AND datname = current_database() AND pid IN "
                "(SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND d.datname = current_database())"
            )).scalars().all()
        assert ended == [True]
        # The server ends the session a moment after it was asked to.
        wait_until(b.poll, 5, "another worker takes the lock")
        assert a.poll() is False  # its next poll finds its connection gone
        assert lost == [True, False] and a.error
        assert a.poll() is False  # reconnected, but the lock is b's
    finally:
        a.close()
        b.close()


def test_without_sharing_every_worker_leads_and_nothing_connects(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        workers = [Leadership(store, shared=True), Leadership(store, shared=False)]
        assert [w.is_leader for w in workers] == [True, True]
        assert [w.poll() for w in workers] == [True, True]
        assert all(w._conn is None for w in workers)
    finally:
        store.close()


# -- two hub workers in process, on one broker and one PostgreSQL ----------------------


def scrape(hub: Hub) -> dict[str, list[float]]:
    """/metrics as served: {sample name: values}."""
    text = hub.app.test_client().get("/metrics").get_data(as_text=True)
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s.value)
    return out


@pytest.mark.postgres
def test_of_two_hub_workers_one_leads_the_alerts_and_the_station_series(
        make_hub, broker_factory, pg_url: str) -> None:  # noqa: F811
    # A broker of its own: the session's holds retained States other test files
    # left, which reach shared subscribers too and would count as stations here.
    broker = broker_factory()
    shared = {"shared_group": "hubs"}
    stations = [{"sid": "yh-lead-01", "name": "驿站 1"}, {"sid": "yh-lead-02", "name": "驿站 2"}]
    a = make_hub(broker, pg_url, mqtt={**shared, "client_id": "hub-a"}, stations=stations)
    b = make_hub(broker, pg_url, mqtt={**shared, "client_id": "hub-b"}, stations=stations)
    assert a.leader.is_leader and not b.leader.is_leader
    assert not a.engine.paused and b.engine.paused
    # One view: the stations' series from the leader only, each worker's own part.
    ma, mb = scrape(a), scrape(b)
    assert len(ma["yizhan_station_up"]) == 2 and "yizhan_station_up" not in mb
    assert len(ma["yizhan_station_info"]) == 2 and "yizhan_station_info" not in mb
    assert ma["yizhan_hub_leader"] == [1.0] and mb["yizhan_hub_leader"] == [0.0]
    assert mb["yizhan_hub_healthy"] == [1.0]
    # The follower skips the leader's jobs quietly.
    evaluated = b.engine.evaluations
    b.evaluate_alerts()
    b.engine.evaluate_all()
    assert b.engine.evaluations == evaluated
    # The leader stops: the other takes over at its next poll (the `lead` job).
    a.close()
    wait_until(lambda: (b.lead(), b.leader.is_leader)[1], 10, "b leads")
    assert not b.engine.paused and b.engine.evaluations >= evaluated + 2
    assert len(scrape(b)["yizhan_station_up"]) == 2


HOLDER = """
import sys, time
from hub.storage.leader import Leadership
from hub.storage.store import Store
leader = Leadership(Store(sys.argv[1], migrate=False), shared=True)
print("leads" if leader.poll() else "follows", flush=True)
while True:
    time.sleep(2)
    leader.poll()
"""


@pytest.mark.postgres
def test_a_sigkilled_leader_process_is_replaced_within_a_poll_or_two(pg_store: Store,
                                                                    pg_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url], stdout=subprocess.PIPE,
                            text=True)
    follower = Leadership(pg_store, shared=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leads"
        assert follower.poll() is False
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The process's session ends with it, and its lock: at the next poll
        # (LEADER_EVERY, 2 s) or the one after.
        wait_until(follower.poll, 2 * LEADER_EVERY, "the follower takes over")
        assert follower.is_leader and follower.since_ms is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        follower.close()
