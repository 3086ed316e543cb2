"""The kiosk's local API, through Flask's test client, over the real lending parts.

Behind the app: the board simulator on a pty, the real Locker and Lending, a
real Journal (see test_lending.py). Every bad request must get a 4xx with
``{"error": {"code", "message"}}`` and change nothing: no UNLOCK on the wire,
no event in the journal.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from typing import Any

import pytest
from flask.testing import FlaskClient

from firmware.hardware.board import BoardOffline
from firmware.localapi import _is_local, create_local_api
from protocol.frames import Cmd
from protocol.messages import Dispenser
from tests.test_lending import (
    RIDER,
    Station,
    StationFactory,
    directory,
    stations,  # noqa: F401  (fixture)
    wait_until,
)

WATER = Dispenser(online=True, level=0.62, level_state="ok", temp_c=92.5, heater=True,
                  heater_lockout=False, fault=None, dispensed_ml=1200)


def state() -> dict[str, Any]:
    return {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站", "hub_online": False,
            "dispenser": WATER}


@pytest.fixture
def station(stations: StationFactory) -> Station:  # noqa: F811
    s = stations.make()
    s.directory.apply(directory())
    return s


@pytest.fixture
def client(station: Station) -> FlaskClient:
    app = create_local_api(station.lending, state, station.directory)
    app.testing = True
    return app.test_client()


def unlocks(station: Station) -> list[int]:
    return [f.payload[0] for f in station.board.frames_received if f.cmd == Cmd.UNLOCK]


def assert_error(response: Any, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def session_id(client: FlaskClient) -> str:
    r = client.post("/v1/maintenance", json={"staff": "li", "pin": "2468"})
    assert r.status_code == 201
    return r.get_json()["session"]["id"]


# -- the station ---------------------------------------------------------------------------


def test_station(client: FlaskClient, station: Station) -> None:
    station.board.set_fault(12, "charger_fault")
    station.sync()
    body = client.get("/v1/station").get_json()
    assert body["station"] == {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站"}
    assert body["online"] == {"hub": False, "locker": True}
    assert body["lending"] == {"lending": "open", "min_charge": 80, "max_per_rider": 1,
                               "loan_hours": 24}
    assert body["chargers"]["ready"] == [{"slot": 7, "charge": 98}, {"slot": 3, "charge": 91},
                                         {"slot": 10, "charge": 88}, {"slot": 6, "charge": 81}]
    assert body["chargers"]["next_ready_at"] is None
    assert body["slots"] == {"total": 12, "ready": 4, "charging": 7, "faulty": 1, "empty": 0}
    assert body["water"] == {"level_state": "ok", "level": 0.62, "temp_c": 92.5, "fault": None}
    assert body["maintenance"] is False and body["ts"] == station.clock.ms()


def test_station_says_when_the_next_bank_is_ready(stations: StationFactory) -> None:  # noqa: F811
    s = stations.make(banks={1: ("PB01", 75)})
    app = create_local_api(s.lending, lambda: {"name": "x"}, s.directory)
    body = app.test_client().get("/v1/station").get_json()
    assert body["chargers"] == {"ready": [], "next_ready_at": s.clock.ms() + 5 * 60_000}
    assert body["water"] is None  # a station without a dispenser


# -- borrowing -----------------------------------------------------------------------------


def test_borrow_and_follow(client: FlaskClient, station: Station) -> None:
    r = client.post("/v1/borrow", json={"rider": RIDER})
    assert r.status_code == 202
    attempt = r.get_json()["attempt"]
    assert attempt["rider"] == RIDER and attempt["slot"] == 7
    assert attempt["state"] in ("releasing", "open")
    url = f"/v1/borrow/{attempt['id']}"
    wait_until(lambda: client.get(url).get_json()["attempt"]["state"] == "open")
    station.board.take(7)
    station.sync()
    got = wait_until(lambda: (a := client.get(url).get_json()["attempt"])["state"] == "taken"
                     and a)
    assert got["bank"] == "PB0012A7" and got["charge"] == 98


def test_a_refused_borrow_is_a_failed_attempt(client: FlaskClient, station: Station) -> None:
    station.directory.apply(directory(rev=2, lending="registered"))
    r = client.post("/v1/borrow", json={"rider": RIDER, "pin": "4821"})
    assert r.status_code == 202
    assert r.get_json()["attempt"]["state"] == "failed"
    assert r.get_json()["attempt"]["reason"] == "not_registered"


@pytest.mark.parametrize(("body", "code"), [
    (None, "bad_json"),
    ("not json", "bad_json"),
    ([RIDER], "bad_json"),
    ({}, "missing_field"),
    ({"rider": ""}, "missing_field"),
    ({"rider": "r:123"}, "bad_rider"),
    ({"rider": RIDER.upper()}, "bad_rider"),
    ({"rider": "13800138000"}, "bad_rider"),
    ({"rider": 13800138000}, "bad_rider"),
    ({"rider": RIDER, "pin": 4821}, "bad_pin_format"),
    ({"rider": RIDER, "pin": "12"}, "bad_pin_format"),
    ({"rider": RIDER, "pin": "12ab"}, "bad_pin_format"),
])
def test_bad_borrow_requests_change_nothing(client: FlaskClient, station: Station,
                                            body: Any, code: str) -> None:
    if body is None:
        r = client.post("/v1/borrow")
    elif isinstance(body, str):
        r = client.post("/v1/borrow", data=body, content_type="application/json")
    else:
        r = client.post("/v1/borrow", json=body)
    error = assert_error(r, 400, code)
    if body == {"rider": "13800138000"}:
        assert "phone" in error["message"]
    assert unlocks(station) == [] and station.events() == []
    assert station.lending.attempt("x") is None


def test_unknown_attempt(client: FlaskClient) -> None:
    assert_error(client.get("/v1/borrow/b-0000000000000000"), 404, "unknown_attempt")


# -- returns -------------------------------------------------------------------------------


def test_returns(client: FlaskClient, station: Station) -> None:
    station.borrow_and_take(RIDER)
    since = station.clock.ms()
    station.clock.advance(600)
    station.board.insert(7, "PB0012A7", 60)
    station.sync()
    got = wait_until(lambda: client.get(f"/v1/returns?since={since}").get_json()["returns"])
    assert got == [{"slot": 7, "bank": "PB0012A7", "charge": 60, "rider": RIDER,
                    "returned_ts": since + 600_000, "borrowed_ts": since,
                    "duration_s": 600}]
    later = client.get(f"/v1/returns?since={since + 600_001}")
    assert later.get_json() == {"returns": []}


# int() took "٣" (Arabic-Indic 3), " 5" and "1_0"; "²" and 5 000 digits must not crash.
@pytest.mark.parametrize("since", ["abc", "-5", "1.5", "²", "٣", " 5", "1_0", "1" * 5000,
                                   "1" * 16])
def test_bad_since(client: FlaskClient, since: str) -> None:
    assert_error(client.get("/v1/returns", query_string={"since": since}), 400, "bad_since")


def test_deeply_nested_json_is_bad_json_not_a_crash(client: FlaskClient,
                                                    station: Station) -> None:
    # ~1 000 levels made json raise RecursionError: a 500 before.
    for depth in (33, 1000, 3000):
        r = client.post("/v1/maintenance", data="[" * depth + "]" * depth,
                        content_type="application/json")
        assert_error(r, 400, "bad_json")
    assert station.events() == []


# -- maintenance ---------------------------------------------------------------------------


def test_maintenance_session(client: FlaskClient, station: Station) -> None:
    station.board.set_fault(5, "overheat")
    station.locker.release(1)
    station.board.take(1)  # an empty slot to restock
    station.sync()
    sid = session_id(client)

    view = client.get(f"/v1/maintenance/{sid}").get_json()
    assert view["session"]["staff"] == "li" and view["session"]["active"] is True
    assert view["online"] is True and len(view["slots"]) == 12
    assert view["faults"] == [{"slot": 5, "fault": "overheat"}]
    assert client.get("/v1/station").get_json()["maintenance"] is True

    r = client.post(f"/v1/maintenance/{sid}/release", json={"slot": "empty"})
    assert r.status_code == 200 and r.get_json() == {"released": [{"slot": 1,
                                                                   "result": "released"}]}
    r = client.post(f"/v1/maintenance/{sid}/release", json={"slot": 5})
    assert r.get_json() == {"released": [{"slot": 5, "result": "released"}]}

    r = client.post(f"/v1/maintenance/{sid}/refill", json={"what": "water"})
    assert r.status_code == 200 and r.get_json()["refilled"] == "water"
    assert station.data("refilled") == [{"what": "water", "staff": "li"}]

    r = client.delete(f"/v1/maintenance/{sid}")
    assert r.status_code == 200 and r.get_json()["session"]["active"] is False
    assert r.get_json()["session"]["end_reason"] == "ended"
    assert station.data("maintenance_ended") == [{"staff": "li", "reason": "ended"}]
    assert client.delete(f"/v1/maintenance/{sid}").status_code == 200  # idempotent

    # An ended session can no longer open anything.
    before = unlocks(station)
    assert_error(client.post(f"/v1/maintenance/{sid}/release", json={"slot": 1}), 409,
                 "session_ended")
    assert_error(client.post(f"/v1/maintenance/{sid}/refill", json={"what": "cups"}), 409,
                 "session_ended")
    assert unlocks(station) == before


def test_staff_login_refused(client: FlaskClient, station: Station) -> None:
    error = assert_error(client.post("/v1/maintenance", json={"staff": "li", "pin": "1111"}),
                         403, "bad_pin")
    assert error["tries_left"] == 4
    for _ in range(3):
        client.post("/v1/maintenance", json={"staff": "li", "pin": "1111"})
    error = assert_error(client.post("/v1/maintenance", json={"staff": "li", "pin": "1111"}),
                         429, "locked_out")
    assert error["locked_until"] == station.clock.ms() + 15 * 60_000
    assert_error(client.post("/v1/maintenance", json={"staff": "li", "pin": "2468"}),
                 429, "locked_out")
    assert station.data("maintenance_started") == [] and not station.lending.maintenance


@pytest.mark.parametrize(("body", "code"), [
    (None, "bad_json"),
    ({"pin": "2468"}, "missing_field"),
    ({"staff": "li"}, "missing_field"),
    ({"staff": 7, "pin": "2468"}, "bad_staff"),
    ({"staff": "x" * 65, "pin": "2468"}, "bad_staff"),
    ({"staff": "li", "pin": 2468}, "bad_pin_format"),
])
def test_bad_login_requests(client: FlaskClient, station: Station, body: Any,
                            code: str) -> None:
    r = client.post("/v1/maintenance") if body is None else client.post("/v1/maintenance",
                                                                         json=body)
    assert_error(r, 400, code)
    assert station.events() == []
    # None of these counted as a wrong PIN.
    assert client.post("/v1/maintenance", json={"staff": "li", "pin": "2468"}).status_code == 201


@pytest.mark.parametrize(("body", "code"), [
    (None, "bad_json"),
    ({}, "bad_slot"),
    ({"slot": 0}, "bad_slot"),
    ({"slot": 99}, "bad_slot"),
    ({"slot": "3"}, "bad_slot"),
    ({"slot": True}, "bad_slot"),
    ({"slot": 2.0}, "bad_slot"),
    ({"slot": "all"}, "bad_slot"),
])
def test_bad_release_requests(client: FlaskClient, station: Station, body: Any,
                              code: str) -> None:
    sid = session_id(client)
    url = f"/v1/maintenance/{sid}/release"
    r = client.post(url) if body is None else client.post(url, json=body)
    assert_error(r, 400, code)
    assert unlocks(station) == []


@pytest.mark.parametrize("what", [None, "", "coffee", 1])
def test_bad_refill_requests(client: FlaskClient, station: Station, what: Any) -> None:
    sid = session_id(client)
    assert_error(client.post(f"/v1/maintenance/{sid}/refill", json={"what": what}), 400,
                 "bad_what")
    assert station.data("refilled") == []


@pytest.mark.parametrize(("method", "path", "body"), [
    ("get", "/v1/maintenance/m-nope", None),
    ("delete", "/v1/maintenance/m-nope", None),
    ("post", "/v1/maintenance/m-nope/release", {"slot": 1}),
    ("post", "/v1/maintenance/m-nope/refill", {"what": "water"}),
])
def test_unknown_session(client: FlaskClient, station: Station, method: str, path: str,
                         body: Any) -> None:
    r = getattr(client, method)(path, json=body) if body else getattr(client, method)(path)
    assert_error(r, 404, "unknown_session")
    assert unlocks(station) == [] and station.events() == []


def test_release_empty_while_the_board_is_offline(client: FlaskClient,
                                                  station: Station) -> None:
    sid = session_id(client)
    station.board.unplug()
    for _ in range(3):
        station.clock.advance(30)
        with contextlib.suppress(BoardOffline):
            station.sync()
    assert not station.locker.online
    assert_error(client.post(f"/v1/maintenance/{sid}/release", json={"slot": "empty"}), 503,
                 "board_offline")
    assert station.data("unlock_failed") == []


# -- who may call --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/v1/station"), ("post", "/v1/borrow"), ("get", "/v1/borrow/b-1"),
    ("get", "/v1/returns"), ("post", "/v1/maintenance"), ("get", "/v1/maintenance/m-1"),
    ("delete", "/v1/maintenance/m-1"), ("post", "/v1/maintenance/m-1/release"),
    ("post", "/v1/maintenance/m-1/refill"),
])
def test_only_this_machine_may_call(client: FlaskClient, station: Station, method: str,
                                    path: str) -> None:
    r = getattr(client, method)(path, json={"rider": RIDER, "staff": "li", "pin": "2468"},
                                environ_base={"REMOTE_ADDR": "192.168.1.20"})
    assert_error(r, 403, "forbidden")
    assert unlocks(station) == [] and station.events() == []


def test_loopback_addresses() -> None:
    assert _is_local("127.0.0.1") and _is_local("127.8.0.1") and _is_local("::1")
    assert _is_local("::ffff:127.0.0.1")
    assert _is_local("localhost")  # waitress's name for a Unix-socket peer
    assert not _is_local("10.0.0.5") and not _is_local("") and not _is_local(None)
    assert not _is_local("fe80::1%eth0") and not _is_local("example.org")


def test_a_unix_socket_app_accepts_any_peer(station: Station) -> None:
    app = create_local_api(station.lending, state, station.directory, unix_socket=True)
    r = app.test_client().get("/v1/station", environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert r.status_code == 200


def test_unknown_path_and_method(client: FlaskClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/v1/borrow", json={}), 405, "method_not_allowed")


def test_too_large_a_body(client: FlaskClient, station: Station) -> None:
    r = client.post("/v1/borrow", data=json.dumps({"rider": RIDER, "x": "y" * 20_000}),
                    content_type="application/json")
    assert_error(r, 413, "too_large")
    assert unlocks(station) == []


def test_served_by_waitress_on_loopback(station: Station) -> None:
    from waitress.server import create_server

    app = create_local_api(station.lending, state, station.directory)
    server = create_server(app, host="127.0.0.1", port=0)
    stop = threading.Event()

    def serve() -> None:
        # server.run() until told; closing the server under a running loop
        # would pull its sockets out of a select().
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/v1/station"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["station"]["name"] == "楚门镇先锋驿站"
    finally:
        stop.set()
        thread.join(5)
        server.close()
        server.task_dispatcher.shutdown()
