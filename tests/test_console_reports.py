"""The console's report pages on a real hub (SQLite file, ledger, loans, alert
store, forecaster, Directory), driven through Flask's test client with real
sign-in and CSRF: the uptime report and its CSV (parsed back), loans overdue by
the Directory's policy, the refill round, and the alerts page's ack, resolve,
assign and silence, audited as ``console:<user>``. A maintenance worker sees
and acts on their own groups only, and cannot open ops' reports.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from hub.alerting.alerts import SILENCE
from hub.console.uptime import BOM, CSV_COLUMNS
from hub.service import Hub
from hub.storage.schema import directory_audit
from protocol import examples
from tests.harness.console_app import (
    Browser,
    advance,
    bring_online,
    console_hub,
    go_offline,
    send_event,
    send_state,
)
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST (00:00 UTC)
HOUR = 3600.0
C1, C2, K1 = "yh-chumen-01", "yh-chumen-02", "yh-kanmen-01"


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    h = console_hub(tmp_path, ManualClock(T0))
    yield h
    h.close()


def audit_rows(hub: Hub) -> list[dict]:
    with hub.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(directory_audit).order_by(directory_audit.c.id))]


# -- uptime ---------------------------------------------------------------------------------


def outage_day(hub: Hub) -> None:
    """All three up from T0; C1 heard at +10 h, lost, back at +12 h; 24 h in all."""
    for sid in (C1, C2, K1):
        bring_online(hub, sid)
    advance(hub, 10 * HOUR)
    send_state(hub, C1, rev=2)
    go_offline(hub, C1)
    advance(hub, 2 * HOUR)
    bring_online(hub, C1, rev=3, birth=5020)
    advance(hub, 12 * HOUR)
    for sid in (C1, C2, K1):
        send_state(hub, sid, rev=9)
    hub.writer.flush()


def parse_csv(body: bytes) -> list[dict[str, str]]:
    text = body.decode("utf-8")
    assert text.startswith(BOM), "no byte order mark: Excel would misread the Chinese names"
    rows = list(csv.DictReader(io.StringIO(text[len(BOM):])))
    assert rows and list(rows[0]) == list(CSV_COLUMNS)
    return rows


def test_uptime_csv_says_what_happened_and_the_page_agrees(hub: Hub) -> None:
    outage_day(hub)
    ops = Browser(hub, "desk")
    resp = ops.get("/console/uptime.csv?from=2025-11-27&to=2025-11-28")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = parse_csv(resp.data)
    by = {(r["kind"], r["sid"] or r["group"]): r for r in rows}

    c1 = by[("station", C1)]
    assert c1["name"] == "楚门镇先锋驿站" and c1["group"] == "chumen"
    assert float(c1["up_s"]) == 22 * HOUR and float(c1["down_s"]) == 2 * HOUR
    assert float(c1["availability"]) == pytest.approx(22 / 24, abs=1e-6)
    assert c1["outages"] == "1" and float(c1["mttr_s"]) == 2 * HOUR
    # The ledger's own account of the same window, as the API gives it.
    u = hub.ledger.uptime(C1, T0 * 1000 - 8 * HOUR * 1000, hub.clock.ms())
    assert float(c1["down_s"]) == u.down_s and float(c1["mttr_s"]) == u.mttr_s

    c2 = by[("station", C2)]
    assert float(c2["availability"]) == 1.0 and c2["outages"] == "0" and c2["mttr_s"] == ""
    chumen = by[("group", "chumen")]
    assert float(chumen["up_s"]) == 46 * HOUR and float(chumen["down_s"]) == 2 * HOUR
    assert float(chumen["availability"]) == pytest.approx(46 / 48, abs=1e-6)
    assert chumen["outages"] == "1" and float(chumen["mttr_s"]) == 2 * HOUR
    fleet = by[("fleet", "")]
    assert float(fleet["up_s"]) == 70 * HOUR and fleet["outages"] == "1"
    # Nothing before the hub started is counted: unknown, not down.
    assert float(c1["unknown_s"]) == 8 * HOUR

    page = ops.get("/console/uptime?from=2025-11-27&to=2025-11-28").get_data(as_text=True)
    assert "91.67%" in page and "95.83%" in page  # C1 and the chumen group
    assert "楚门镇先锋驿站" in page and "坎门渔港驿站" in page

    kanmen = parse_csv(ops.get("/console/uptime.csv?from=2025-11-27&to=2025-11-28"
                               "&group=kanmen").data)
    assert {r["sid"] for r in kanmen if r["kind"] == "station"} == {K1}


def test_uptime_defaults_to_the_last_30_days_and_refuses_bad_ranges(hub: Hub) -> None:
    outage_day(hub)
    ops = Browser(hub, "desk")
    rows = parse_csv(ops.get("/console/uptime.csv").data)
    assert rows[0]["from"] == "2025-10-30" and rows[0]["to"] == "2025-11-28"
    assert float(next(r for r in rows if r["sid"] == C1)["down_s"]) == 2 * HOUR
    for query in ("from=2025-11-28&to=2025-11-27", "from=2024-01-01&to=2025-11-27",
                  "from=２０２５-11-27", "from=2025-13-01", "to=99999999999999999999",
                  "from=2025-1-1"):
        assert ops.get(f"/console/uptime?{query}").status_code == 400, query
        assert ops.get(f"/console/uptime.csv?{query}").status_code == 400, query


def test_a_name_that_looks_like_a_formula_is_not_one_in_the_csv(tmp_path) -> None:
    h = console_hub(tmp_path, ManualClock(T0),
                    stations=[{"sid": C1, "name": "=HYPERLINK(\"x\")", "group": "chumen"}])
    try:
        bring_online(h, C1)
        advance(h, HOUR)
        h.writer.flush()
        rows = parse_csv(Browser(h, "desk").get("/console/uptime.csv").data)
        assert rows[0]["name"] == "'=HYPERLINK(\"x\")"
    finally:
        h.close()


# -- loans ------------------------------------------------------------------------------


RIDER = examples.example("event")["data"]["rider"]


def borrow(hub: Hub, sid: str, seq: int, bank: str, slot: int) -> None:
    send_event(hub, sid, seq, "bank_borrowed",
               {"slot": slot, "bank": bank, "charge": 96, "rider": RIDER})


def test_loans_overdue_by_the_stations_policy_come_first(hub: Hub) -> None:
    for sid in (C1, C2, K1):
        bring_online(hub, sid)
    # A town lending for 4 hours, where the hub's default is 24.
    hub.directory.set_policy("group", "chumen", {"loan_hours": 4}, by="test")
    borrow(hub, K1, 90001, "PBKAN001", 1)
    advance(hub, 60)
    borrow(hub, C1, 90001, "PBCHU001", 1)
    advance(hub, 60)
    borrow(hub, C2, 90001, "PBCHU002", 2)
    advance(hub, 4 * HOUR + 30)  # both chumen loans 4 h old and more: late; K1's is not
    hub.writer.flush()
    page = Browser(hub, "desk").get("/console/loans").get_data(as_text=True)
    order = [page.index(b) for b in ("PBCHU001", "PBCHU002", "PBKAN001")]
    assert order == sorted(order), "overdue first, then by when due"
    assert '<span class="count">3</span>' in page
    assert '<span class="count bad">2</span>' in page  # both chumen loans past 4 h
    assert page.count('class="overdue"') == 2


def test_maintenance_cannot_open_the_reports_of_ops(hub: Hub) -> None:
    wang = Browser(hub, "wang")
    for path in ("/console/uptime", "/console/uptime.csv", "/console/loans",
                 "/console/people", "/console/tokens", "/console/users"):
        assert wang.get(path).status_code == 403, path
    anon = Browser(hub)
    for path in ("/console/uptime", "/console/loans", "/console/alerts", "/console/refill"):
        resp = anon.get(path)
        assert resp.status_code == 303 and "/console/signin" in resp.headers["Location"]


# -- refill round -----------------------------------------------------------------------------


def empty_tank(state: dict) -> None:
    state["dispenser"].update(level=0.0, level_state="empty")


def half_and_gaps(state: dict) -> None:
    state["dispenser"].update(level=0.4, level_state="ok")
    state["lockers"]["slots"] = [
        {"slot": i, "bank": None, "charge": None, "charging": False, "locked": True,
         "fault": None, "temp_c": None, "cycles": None} for i in range(1, 4)] + [
        {"slot": 4, "bank": "PB00FA17", "charge": 12, "charging": False, "locked": True,
         "fault": "charger_fault", "temp_c": 30, "cycles": 5},
        {"slot": 5, "bank": None, "charge": None, "charging": False, "locked": True,
         "fault": "lock_jammed", "temp_c": None, "cycles": None},
        {"slot": 6, "bank": "PB00C4A6", "charge": 97, "charging": False, "locked": True,
         "fault": None, "temp_c": 29, "cycles": 40}]


def test_refill_round_orders_by_time_to_empty_and_says_what_to_bring(hub: Hub) -> None:
    bring_online(hub, C2, half_and_gaps)
    bring_online(hub, K1, empty_tank)
    bring_online(hub, C1, empty_tank)
    desk = Browser(hub, "desk")
    page = desk.get("/console/refill").get_data(as_text=True)
    # Empty tanks first (C1, K1 by sid), then the station with no forecast yet
    # (water at 40 %, one bank ready: not empty, and too new to forecast).
    assert page.index(C1) < page.index(K1) < page.index(C2)
    row = page[page.index(C2):]
    row = row[:row.index("</tr>")]
    # 3 free working slots + 1 faulty bank to swap (the jammed slot takes none).
    assert ">4 <small>" in row and "60% " in row
    assert 'media="print"' in page and "print.css" in page
    assert desk.get("/console/static/print.css").status_code == 200

    wang = Browser(hub, "wang").get("/console/refill").get_data(as_text=True)
    assert C1 in wang and C2 in wang and K1 not in wang
    assert K1 not in Browser(hub, "desk").get("/console/refill?group=chumen").get_data(
        as_text=True)


# -- alerts ---------------------------------------------------------------------------------


def test_alerts_ack_resolve_assign_silence_audited_and_limited_to_own_groups(hub: Hub) -> None:
    for sid in (C1, K1):
        bring_online(hub, sid)
    hub.directory.add_staff({"id": "s-li", "name": "李师傅", "pin": "4821",
                             "groups": ["chumen"]}, by="test")
    mine = hub.alerts.fire("water_low", C1, "warning", "水位低 18%").alert["id"]
    theirs = hub.alerts.fire("station_offline", K1, "critical", "驿站离线").alert["id"]
    wang = Browser(hub, "wang")
    page = wang.get("/console/alerts").get_data(as_text=True)
    assert mine in page and theirs not in page

    # Another group's alert: refused, and nothing changes.
    for action in ("ack", "resolve", "assign"):
        assert wang.post(f"/console/alerts/{theirs}/{action}", {"staff": ""}).status_code == 403
    assert wang.post("/console/silences", {"alert": theirs, "duration": "4h"}).status_code == 403
    assert hub.alerts.get(theirs)["state"] == "firing"

    # Without the form's CSRF token: refused.
    assert wang.post(f"/console/alerts/{mine}/ack", {}, csrf=False).status_code == 400
    assert hub.alerts.get(mine)["state"] == "firing"

    assert 'class="flash ok"' in wang.follow(wang.post(f"/console/alerts/{mine}/ack", {}))
    assert hub.alerts.get(mine)["state"] == "acked"
    wang.follow(wang.post(f"/console/alerts/{mine}/assign", {"staff": "s-li"}))
    assert hub.alerts.get(mine)["assigned_to"] == "s-li"
    page = wang.get("/console/alerts").get_data(as_text=True)
    assert 'value="s-li" selected' in page
    # Refused: the alerts page again, saying so (400).
    assert wang.post(f"/console/alerts/{mine}/assign", {"staff": "nobody-such"}).status_code == 400
    assert hub.alerts.get(mine)["assigned_to"] == "s-li"
    wang.follow(wang.post("/console/silences",
                          {"alert": mine, "duration": "4h", "comment": "水箱已报修"}))
    silences = hub.alerts.mutes.list(SILENCE)
    assert [(s["sid"], s["rule"], s["comment"]) for s in silences] == \
        [(C1, "water_low", "水箱已报修")]
    assert silences[0]["ends_at"] - silences[0]["starts_at"] == 4 * 3600_000
    wang.follow(wang.post(f"/console/alerts/{mine}/resolve", {}))
    assert hub.alerts.get(mine)["state"] == "resolved"

    # The API shows who the alert was given to; the audit log who did what.
    token = {"Authorization": "Bearer desk-secret-0123456789abcdef"}
    api = hub.app.test_client().get(f"/api/v1/alerts?sid={C1}", headers=token).get_json()
    assert api["alerts"][0]["assigned_to"] == "s-li"
    done = [(r["actor"], r["action"], r["entity_id"]) for r in audit_rows(hub)
            if r["entity"] in ("alert", "silence")]
    assert done == [("console:wang", "alert.ack", mine), ("console:wang", "alert.assign", mine),
                    ("console:wang", "silence.add", silences[0]["id"]),
                    ("console:wang", "alert.resolve", mine)]
    assert json.loads(audit_rows(hub)[-3]["detail"])["to"] == "s-li"
    # ops sees every group's alerts
    assert theirs in Browser(hub, "desk").get("/console/alerts").get_data(as_text=True)


# -- the report's one read of the ledger ---------------------------------------------------


@pytest.fixture
def any_hub(tmp_path, database_url) -> Iterator[Hub]:
    """The console's hub on SQLite and on PostgreSQL."""
    h = console_hub(tmp_path, ManualClock(T0), database=database_url)
    yield h
    h.close()


def test_the_batch_read_of_the_ledger_gives_what_uptime_gives_station_by_station(
        any_hub: Hub) -> None:
    """``Ledger.uptimes`` (three queries for every station) against ``Ledger.uptime``
    (five a station) on histories with outages across the window's edges, two
    changes at one millisecond, maintenance, a hub stop and a station never seen."""
    hub = any_hub
    ledger, t = hub.ledger, hub.clock.ms()
    h = 3_600_000
    history = {
        C1: [("up", 0), ("down", 5 * h), ("up", 7 * h), ("down", 30 * h), ("up", 31 * h)],
        C2: [("up", 0), ("down", 2 * h), ("up", 2 * h), ("down", 40 * h)],
        K1: [("up", 20 * h)],
    }
    for sid, points in history.items():
        for state, at in points:
            ledger.mark(sid, "station", state, t + at)
    ledger.maintenance(C2, True, t + 10 * h)
    ledger.maintenance(C2, False, t + 12 * h)
    hub.clock.advance(35 * 3600)
    ledger.hub_alive(hub.clock.ms())
    ledger.hub_stopped(hub.clock.ms())
    hub.clock.advance(2 * 3600)
    ledger.hub_started(hub.clock.ms())
    hub.clock.advance(10 * 3600)
    ledger.hub_alive(hub.clock.ms())
    hub.writer.flush()
    sids = [C1, C2, K1, "yh-never-seen"]
    now = hub.clock.ms()
    for start, end in ((t - 5 * h, now), (t + 6 * h, t + 31 * h), (t + 2 * h, t + 2 * h),
                       (t + 33 * h, now), (t + 45 * h, now + 5 * h)):
        batch = ledger.uptimes(sids, start, end)
        assert set(batch) == set(sids)
        for sid in sids:
            assert batch[sid] == ledger.uptime(sid, start, end), (sid, start - t, end - t)
    assert ledger.uptimes(sids, t, now)[C1].outages  # the histories are not all empty
