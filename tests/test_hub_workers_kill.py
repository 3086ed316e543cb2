"""Three real ``yizhan hub`` workers sharing the subscriptions over one PostgreSQL,
a fleet of ``yizhan sim fleet`` stations, and the leader SIGKILLed mid-stream:
every event the stations made is stored once (what the dead worker had taken
and not committed comes back by replay), each borrow opened one loan, each
tamper one alert, and the survivors agree on every station and on its uptime
(docs/scaling.md). Production settings (replay_after 10 s, replay_every 30 s).
"""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

from tests.harness.procs import free_port, http_json, wait_until, write_yaml
from tests.test_sim_fleet import procs, read_truth  # noqa: F401  (procs: the fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

TOKEN = "workers-kill-test-token-0123456789"
STATIONS = 30
EARLY, LATE = "sim-00003", "sim-00005"  # tampered before and after the kill


def metric(base: str, name: str) -> float | None:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_three_workers_one_killed_lose_nothing_and_do_nothing_twice(
        tmp_path, broker_factory, pg_url, procs):  # noqa: F811
    broker = broker_factory()
    engine = sa.create_engine(pg_url)
    bases, hubs = [], []
    for i in (1, 2, 3):
        port = free_port()
        cfg = write_yaml(tmp_path / f"hub-{i}.yaml", {
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                     "client_id": f"hub-{i}", "shared_group": "hubs"},
            "database": pg_url,
            "http": {"host": "127.0.0.1", "port": port},
            "api_tokens": [{"name": "tests", "token": TOKEN, "scopes": ["admin"]}],
        })
        hubs.append(procs.start(f"hub-{i}", "hub", "--config", str(cfg)))
        bases.append(f"http://127.0.0.1:{port}")
        # One at a time: the first one up leads (and migrates the database).
        wait_until(lambda b=bases[-1]: http_json(f"{b}/healthz")[0] == 200, 30,
                   f"hub-{i} healthy", on_fail=hubs[-1].tail)
    leading = [i for i, b in enumerate(bases) if metric(b, "yizhan_hub_leader") == 1]
    assert len(leading) == 1
    dead = leading[0]
    truth_path = tmp_path / "truth.jsonl"
    sim = procs.start(
        "sim", "sim", "fleet", "--host", broker.host, "--port", str(broker.port),
        "--stations", str(STATIONS), "--duration", "60", "--visits", "2400",
        "--heartbeat", "10", "--quiet", "--truth", str(truth_path),
        "--fault", f"tamper:{EARLY}@3+2", "--fault", f"tamper:{LATE}@18+2")
    survivors = [b for i, b in enumerate(bases) if i != dead]

    def stored() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()

    wait_until(lambda: stored() > 150, 30, "the stream flowing", on_fail=sim.tail)
    hubs[dead].signal(signal.SIGKILL)  # mid-stream: no goodbye, no flush
    assert hubs[dead].wait(5) == -signal.SIGKILL
    wait_until(lambda: sum(metric(b, "yizhan_hub_leader") == 1 for b in survivors) == 1, 20,
               "a survivor leads")
    assert sim.wait(90) == 0, sim.tail()

    truth = read_truth(truth_path)
    made = {(r["sid"], r["epoch"], r["seq"], r["type"]) for r in truth if r["what"] == "event"}
    assert len(made) > 400

    def events() -> list[tuple]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT sid, epoch, seq, type FROM events"))]

    # Nothing lost: what the dead worker held is asked for again and comes back.
    def missing() -> str:
        gone = sorted(made - set(events()))
        return f"{len(gone)} missing, e.g. {gone[:20]}\n" + "\n".join(h.tail() for h in hubs)

    wait_until(lambda: set(events()) >= made, 60, "every event stored", on_fail=missing)
    stored_events = events()
    assert set(stored_events) == made and len(stored_events) == len(made)
    with engine.connect() as conn:
        # Nothing twice: one loan a borrow, one tamper alert a tampered station.
        borrows = {f"{s}/{e}/{q}" for s, e, q, t in made if t == "bank_borrowed"}
        loans = [r[0] for r in conn.execute(sa.text("SELECT borrow_event FROM loans"))]
        assert sorted(loans) == sorted(borrows)
        tampers = dict(conn.execute(sa.text(
            "SELECT sid, count(*) FROM alerts WHERE rule = 'tamper' GROUP BY sid")).all())
        assert tampers == {EARLY: 1, LATE: 1}

    # The survivors agree: every station offline after the fleet's stop.
    def offline_everywhere() -> bool:
        for b in survivors:
            status, body = http_json(f"{b}/api/v1/stations", TOKEN)
            sims = [s for s in body.get("stations", []) if s["sid"].startswith("sim-")]
            if status != 200 or len(sims) != STATIONS or any(s["online"] for s in sims):
                return False
        return True

    wait_until(offline_everywhere, 20, "every station offline on both survivors")

    # The ledger: each station up once at its birth, down once at its shutdown —
    # no point twice, none missing, whoever wrote it (the dead leader, the new one).
    def station_points() -> dict[str, list[str]]:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT sid, state FROM ledger WHERE component = 'station' "
                "ORDER BY sid, at_ms, id")).all()
        out: dict[str, list[str]] = {}
        for sid, state in rows:
            out.setdefault(sid, []).append(state)
        return out

    everyone = {s for s, *_ in made}
    wait_until(lambda: station_points() == {sid: ["up", "down"] for sid in everyone}, 10,
               "each station up then down in the ledger", on_fail=lambda: station_points())
    for h in hubs:
        if h is not hubs[dead]:
            assert h.alive(), h.tail()
