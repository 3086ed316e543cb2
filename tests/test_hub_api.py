"""The hub's HTTP interface (contract §11) through Flask's test client.

Everything behind the app is real — Store and Writer on SQLite and on
PostgreSQL, the ledger, the fleet, commands published on a real broker, the
alert rows — only the object that holds them (``hub.service.Hub``) is stood in
for, so these tests do not start MQTT ingest. Every answer is checked against
the OpenAPI document the hub serves.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from flask import Flask
from openapi_spec_validator import validate as validate_openapi
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import MethodNotAllowed, NotFound

from hub.alerting.alerts import AlertStore
from hub.config import HubConfig, parse_hub_config
from hub.fleet.commands import Commands
from hub.fleet.directory import Directory
from hub.fleet.ledger import Ledger
from hub.fleet.view import Fleet
from hub.http import openapi
from hub.http.metrics import FleetCollector, bank_states
from hub.http.web import create_app
from hub.storage.schema import alerts as alerts_table
from hub.storage.store import Store
from hub.storage.writer import Writer
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, close, connect
from yizhan.clock import ManualClock

SID = "yh-chumen-01"
OTHER = "yh-other"  # configured, never heard from
TOKEN = "api-test-token-0123456789"
TOKEN_NAME = "token:api-test"
OTHER_TOKEN = "second-token-abcdefghijkl"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_764_196_800.0  # the ManualClock's start, seconds

#: For tests where the database makes no difference: SQLite alone keeps the suite fast.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- the hub object, stood in for: real parts inside ------------------------------------


def hub_config(database_url: str, **changes: Any) -> HubConfig:
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "database": database_url,
        "api_tokens": [{"name": "api-test", "token": TOKEN, "scopes": ["admin"]},
                       {"name": "second", "token": OTHER_TOKEN, "scopes": ["read", "ack"]}],
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"},
                     {"sid": OTHER, "name": "Other"}],
    })
    return dataclasses.replace(config, **changes)


class StandInHub:
    """What ``hub.service.Hub`` holds for the web and the metrics, built from the
    real Store, Writer, Ledger, Fleet, Commands and AlertStore."""

    def __init__(self, config: HubConfig, clock: ManualClock,
                 publish: Callable[[str, bytes], Any]) -> None:
        self.config = config
        self.clock = clock
        self.registry = CollectorRegistry()
        self.store = Store(config.database)
        self.writer = Writer(self.store).start()
        self.ledger = Ledger(self.store, self.writer, clock)
        self.ledger.hub_started(clock.ms())
        self.commands = Commands(self.store, self.writer, publish, clock)
        self.fleet = Fleet(config, self.store, self.writer, self.ledger, clock,
                           commands=self.commands)
        self.alerts = AlertStore(self.store, self.writer, clock)
        # The Directory's publishing is tests/test_hub_directory.py's: here it goes nowhere.
        self.directory = Directory(self.store, clock, lambda *_a, **_k: None,
                                   lambda: [(v.sid, v.group) for v in self.fleet.stations()],
                                   fleet_key=config.fleet_key)
        self.registry.register(FleetCollector(self))
        self.app = create_app(self)
        self.broker_connected = True  # what the ingest would say

    def problems(self) -> list[str]:
        out = []
        if not self.broker_connected:
            out.append("not connected to the MQTT broker")
        if not self.store.ping():
            out.append("database unreachable")
        return out

    def close(self) -> None:
        self.writer.close()
        self.store.close()


def mqtt_publisher(broker: Any) -> tuple[Callable[[str, bytes], Any], Callable[[], None]]:
    """A real MQTT client's publish at QoS 1, as the hub's ingest hands it out."""
    client = connect(broker)

    def publish(topic_: str, payload: bytes) -> Any:
        info = client.publish(topic_, payload, qos=1, retain=False)
        if info.rc != 0:
            raise RuntimeError(f"publish refused: rc={info.rc}")
        return info

    return publish, lambda: close(client)


@contextmanager
def hub_factory(database_url: str, broker: Any) -> Iterator[Callable[..., StandInHub]]:
    """``make(clock=None, publish=..., **config changes)``: hubs on one database,
    publishing on ``broker``, all closed at the end."""
    made: list[StandInHub] = []
    publish, stop = mqtt_publisher(broker)

    def make(clock: ManualClock | None = None, publish=publish, **changes: Any) -> StandInHub:
        made.append(StandInHub(hub_config(database_url, **changes), clock or ManualClock(T0),
                               publish))
        return made[-1]

    try:
        yield make
    finally:
        for h in made:
            h.close()
        stop()


@pytest.fixture
def make_hub(database_url: str, broker: Any) -> Iterator[Callable[..., StandInHub]]:
    with hub_factory(database_url, broker) as make:
        yield make


@pytest.fixture
def hub(make_hub: Callable[..., StandInHub]) -> StandInHub:
    return make_hub()


def bring_online(hub: StandInHub, sid: str = SID,
                 change: Callable[[dict], None] | None = None, rev: int = 5013) -> dict:
    """The station's birth and a State, as the ingest would apply them; the State."""
    now = hub.clock.ms()
    status = examples.example("status")
    status.update(sid=sid, ts=now)
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=sid), now)
    state = examples.example("state")
    state.update(sid=sid, ts=now, rev=rev)
    if change is not None:
        change(state)
    hub.fleet.apply_state(m.from_dict(Kind.STATE, state, topic_sid=sid), now)
    return state


# -- every answer checked against the served OpenAPI document ---------------------------

DOC = openapi.document()


def openapi_path(rule: str) -> str:
    """Flask's ``/stations/<sid>`` as OpenAPI's ``/stations/{sid}``."""
    return rule.replace("<", "{").replace(">", "}")


def response_schema(path: str, method: str, status: int) -> dict:
    operation = DOC["paths"][path][method.lower()]
    assert str(status) in operation["responses"], \
        f"{method} {path} answered {status}, which the OpenAPI document does not list"
    response = operation["responses"][str(status)]
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def check_against_document(app: Flask, method: str, path: str, resp: Any) -> None:
    if path.split("?")[0] == "/metrics":
        return
    assert resp.is_json, f"{method} {path} answered {resp.status_code} {resp.content_type}"
    try:
        rule, _args = app.url_map.bind("localhost").match(path.split("?")[0], method=method,
                                                           return_rule=True)
    except (NotFound, MethodNotAllowed):
        schema: dict = {"$ref": "#/components/schemas/Error"}
    else:
        schema = response_schema(openapi_path(rule.rule), method, resp.status_code)
    validator = jsonschema.Draft202012Validator({**schema, "components": DOC["components"]})
    validator.validate(resp.get_json())


class Api:
    """The test client with the bearer token; every answer is checked against
    the OpenAPI document."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client = app.test_client()

    def call(self, method: str, path: str, *, token: str | None = TOKEN,
             headers: dict | None = None, **kwargs: Any) -> Any:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault("Authorization", f"Bearer {token}")
        resp = self.client.open(path, method=method, headers=all_headers, **kwargs)
        check_against_document(self.app, method, path, resp)
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)


@pytest.fixture
def api(hub: StandInHub) -> Api:
    return Api(hub.app)


def assert_error(resp: Any, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


# -- health, metrics, the document -------------------------------------------------------


@SQLITE_ONLY
def test_healthz_needs_no_token_and_reports_problems(hub: StandInHub, api: Api) -> None:
    resp = api.get("/healthz", token=None)
    assert resp.status_code == 200 and resp.get_json() == {"ok": True}
    hub.broker_connected = False
    resp = api.get("/healthz", token=None)
    assert resp.status_code == 503
    assert resp.get_json() == {"ok": False, "problems": ["not connected to the MQTT broker"]}


@SQLITE_ONLY
def test_healthz_is_503_when_the_check_itself_fails(hub: StandInHub, api: Api,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(hub, "problems", broken)
    resp = api.get("/healthz", token=None)
    assert resp.status_code == 503
    assert resp.get_json()["problems"] == ["health check failed: boom"]


@SQLITE_ONLY
def test_metrics_need_no_token(hub: StandInHub, api: Api) -> None:
    bring_online(hub)
    resp = api.get("/metrics", token=None)
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain")
    assert f'yizhan_station_up{{station="{SID}"}} 1.0' in resp.get_data(as_text=True)


@SQLITE_ONLY
def test_openapi_document_is_valid_and_public(api: Api) -> None:
    resp = api.get("/api/v1/openapi.json", token=None)
    assert resp.status_code == 200
    validate_openapi(resp.get_json())  # raises, naming what is wrong
    assert resp.get_json() == DOC


@SQLITE_ONLY
def test_every_route_is_in_the_openapi_document_and_nothing_else(hub: StandInHub) -> None:
    routes = {
        (openapi_path(rule.rule), method.lower())
        for rule in hub.app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in DOC["paths"].items() for method in item}
    assert routes == documented


# -- authentication ---------------------------------------------------------------------

API_ROUTES = [
    ("GET", "/api/v1/stations"),
    ("GET", f"/api/v1/stations/{SID}"),
    ("GET", f"/api/v1/stations/{SID}/uptime"),
    ("GET", "/api/v1/alerts"),
    ("POST", "/api/v1/alerts/a-00/ack"),
    ("POST", "/api/v1/alerts/a-00/resolve"),
    ("POST", f"/api/v1/stations/{SID}/commands"),
    ("GET", f"/api/v1/stations/{SID}/commands/c-00"),
]


@SQLITE_ONLY
def test_every_api_route_needs_a_known_bearer_token(api: Api) -> None:
    for method, path in API_ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
            resp = api.call(method, path, token=None, headers=headers)
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)


def test_a_second_token_works_and_is_recorded_by_its_name(hub: StandInHub,
                                                         api: Api) -> None:
    alert = hub.alerts.raise_alert("water_low", SID, "warning", "水位低")
    resp = api.post(f"/api/v1/alerts/{alert['id']}/ack", token=OTHER_TOKEN)
    assert resp.status_code == 200
    with hub.store.engine.connect() as conn:
        by = conn.execute(sa.select(alerts_table.c.acked_by)
                          .where(alerts_table.c.id == alert["id"])).scalar_one()
    assert by == "token:second"


# -- errors are JSON everywhere ----------------------------------------------------------


@SQLITE_ONLY
def test_unknown_path_is_a_json_404(api: Api) -> None:
    assert_error(api.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(api.get("/nothing", token=None), 404, "not_found")


@SQLITE_ONLY
def test_wrong_method_is_a_json_405_with_allow(api: Api) -> None:
    resp = api.get("/api/v1/alerts/a-00/ack")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_error(api.post("/api/v1/stations"), 405, "method_not_allowed")


@SQLITE_ONLY
def test_an_internal_error_is_a_json_500(hub: StandInHub, api: Api,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list:
        raise RuntimeError("the fleet broke")

    monkeypatch.setattr(hub.fleet, "stations", broken)
    body = assert_error(api.get("/api/v1/stations"), 500, "internal")
    assert "fleet broke" not in body["error"]["message"]  # details go to the log only


@SQLITE_ONLY
def test_a_body_too_large_is_refused(api: Api) -> None:
    resp = api.post(f"/api/v1/stations/{SID}/commands", data=b"x" * (65 * 1024))
    assert_error(resp, 413, "payload_too_large")


# -- stations ----------------------------------------------------------------------------


def test_stations_list_the_fleet(hub: StandInHub, api: Api) -> None:
    hub.clock.advance(5)
    online_at = hub.clock.ms()
    state = bring_online(hub)
    firing = hub.alerts.raise_alert("water_low", SID, "warning", "水位低 18%", value=0.18)
    acked = hub.alerts.raise_alert("door_open_too_long", SID, "warning", "门开着",
                                   subject="entrance")
    hub.alerts.ack(acked["id"], by="test")
    resolved = hub.alerts.raise_alert("tamper", SID, "critical", "tamper")
    hub.alerts.resolve(resolved["id"], by="test")
    assert firing["state"] == "firing"

    resp = api.get("/api/v1/stations")
    assert resp.status_code == 200
    stations = {s["sid"]: s for s in resp.get_json()["stations"]}
    assert set(stations) == {SID, OTHER}
    assert stations[SID] == {
        "sid": SID, "name": "楚门镇先锋驿站", "online": True, "since": online_at,
        "chargers_ready": bank_states(state, 80)["ready"], "water": "ok",
        "alerts_firing": 2,  # firing and acked; not the resolved one
    }
    assert stations[OTHER] == {
        "sid": OTHER, "name": "Other", "online": False, "since": None,
        "chargers_ready": None, "water": None, "alerts_firing": 0,
    }
    assert "楚门镇" in resp.get_data(as_text=True)  # UTF-8, not \\u escapes


def test_one_station_with_its_state(hub: StandInHub, api: Api) -> None:
    state = bring_online(hub)
    resp = api.get(f"/api/v1/stations/{SID}")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["sid"] == SID and body["group"] == "chumen" and body["online"] is True
    assert body["epoch"] == examples.EPOCH and body["last_seen"] == hub.clock.ms()
    assert body["state"]["rev"] == state["rev"]
    assert body["state"]["lockers"] == state["lockers"]
    assert body["chargers_ready"] == hub.fleet.get(SID).chargers_ready(80)


@SQLITE_ONLY
def test_unknown_station_is_404(api: Api) -> None:
    for path in ("/api/v1/stations/yh-nowhere", "/api/v1/stations/yh-nowhere/uptime",
                 "/api/v1/stations/NOT_A_SID"):
        assert_error(api.get(path), 404, "not_found")


# -- uptime ------------------------------------------------------------------------------


def test_uptime_from_to_reads_the_ledger(hub: StandInHub, api: Api) -> None:
    t0 = hub.clock.ms()
    hub.ledger.mark(SID, "station", "up", t0)
    hub.ledger.mark(SID, "station", "down", t0 + 60_000)
    hub.ledger.mark(SID, "station", "up", t0 + 90_000)
    hub.clock.advance(120)
    assert hub.writer.flush()
    resp = api.get(f"/api/v1/stations/{SID}/uptime?from={t0}&to={t0 + 120_000}")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["availability"] == 0.75
    assert (body["up_s"], body["down_s"], body["unknown_s"], body["maintenance_s"]) == \
        (90.0, 30.0, 0.0, 0.0)
    assert body["outages"] == [{"start": t0 + 60_000, "end": t0 + 90_000, "duration_s": 30.0}]
    assert (body["sid"], body["component"], body["window"], body["from"], body["to"]) == \
        (SID, "station", None, t0, t0 + 120_000)


def test_uptime_over_a_window_ending_now(hub: StandInHub, api: Api) -> None:
    hub.ledger.mark(SID, "station", "up", hub.clock.ms())
    hub.clock.advance(3600)
    assert hub.writer.flush()
    now = hub.clock.ms()
    for window in ("24h", "7d", "30d", None):  # None: the default, 24h
        query = f"?window={window}" if window else ""
        body = api.get(f"/api/v1/stations/{SID}/uptime{query}").get_json()
        span = {"24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}[window or "24h"]
        assert (body["window"], body["from"], body["to"]) == (window or "24h", now - span, now)
        expected = hub.ledger.uptime(SID, now - span, now, "station").to_dict()
        assert {k: body[k] for k in expected} == expected
        assert body["up_s"] == 3600.0 and body["availability"] == 1.0
        assert sum(body[k] for k in ("up_s", "down_s", "unknown_s", "maintenance_s")) == \
            span / 1000


def test_uptime_of_a_component(hub: StandInHub, api: Api) -> None:
    t0 = hub.clock.ms()
    hub.ledger.mark(SID, "station", "up", t0)
    hub.ledger.mark(SID, "dispenser", "up", t0)
    hub.ledger.mark(SID, "dispenser", "down", t0 + 10_000)
    hub.clock.advance(40)
    assert hub.writer.flush()
    body = api.get(f"/api/v1/stations/{SID}/uptime?component=dispenser&from={t0}"
                   f"&to={t0 + 40_000}").get_json()
    assert body["component"] == "dispenser"
    assert (body["up_s"], body["down_s"]) == (10.0, 30.0)


BAD_UPTIME_QUERIES = [
    ("window=1h", "bad_window"),
    ("window=", "bad_window"),
    ("from=2000&to=1000", "bad_range"),
    ("from=1000&to=1000", "bad_range"),
    ("from=1000", "bad_range"),
    ("to=1000", "bad_range"),
    ("from=-5&to=1000", "bad_range"),
    ("from=abc&to=1000", "bad_range"),
    ("from=1.5&to=1000", "bad_range"),
    ("window=24h&from=1000&to=2000", "bad_range"),
    ("component=heater", "bad_component"),
]


@SQLITE_ONLY
def test_uptime_refuses_a_bad_query(api: Api) -> None:
    for query, code in BAD_UPTIME_QUERIES:
        assert_error(api.get(f"/api/v1/stations/{SID}/uptime?{query}"), 400, code)


# -- alerts ------------------------------------------------------------------------------


def test_alerts_list_filter_ack_and_resolve(hub: StandInHub, api: Api) -> None:
    low = hub.alerts.raise_alert("water_low", SID, "warning", "水位低 18%", value=0.18)
    hub.clock.advance(1)
    other = hub.alerts.raise_alert("station_offline", OTHER, "critical", "offline")

    body = api.get("/api/v1/alerts").get_json()
    assert [a["id"] for a in body["alerts"]] == [other["id"], low["id"]]  # newest first
    assert body["alerts"][1] == {
        "id": low["id"], "rule": "water_low", "sid": SID, "severity": "warning",
        "state": "firing", "summary": "水位低 18%", "value": 0.18,
        "started_at": int(T0 * 1000), "acked_at": None, "resolved_at": None,
    }
    assert [a["id"] for a in api.get(f"/api/v1/alerts?sid={OTHER}").get_json()["alerts"]] == \
        [other["id"]]

    hub.clock.advance(1)
    acked = api.post(f"/api/v1/alerts/{low['id']}/ack")
    assert acked.status_code == 200
    assert acked.get_json()["state"] == "acked"
    assert acked.get_json()["acked_at"] == hub.clock.ms()
    hub.clock.advance(1)
    again = api.post(f"/api/v1/alerts/{low['id']}/ack").get_json()
    assert again == acked.get_json()  # acked stays acked, at the first ack's time

    assert [a["id"] for a in api.get("/api/v1/alerts?state=acked").get_json()["alerts"]] == \
        [low["id"]]
    assert [a["id"] for a in api.get("/api/v1/alerts?state=firing").get_json()["alerts"]] == \
        [other["id"]]

    resolved = api.post(f"/api/v1/alerts/{low['id']}/resolve").get_json()
    assert resolved["state"] == "resolved" and resolved["resolved_at"] == hub.clock.ms()
    assert resolved["acked_at"] == acked.get_json()["acked_at"]
    hub.clock.advance(1)
    assert api.post(f"/api/v1/alerts/{low['id']}/resolve").get_json() == resolved
    assert_error(api.post(f"/api/v1/alerts/{low['id']}/ack"), 409, "conflict")
    assert [a["id"] for a in api.get("/api/v1/alerts?state=resolved").get_json()["alerts"]] == \
        [low["id"]]

    with hub.store.engine.connect() as conn:
        row = conn.execute(sa.select(alerts_table).where(alerts_table.c.id == low["id"])).one()
    assert (row.acked_by, row.resolved_by) == (TOKEN_NAME, TOKEN_NAME)


def test_a_firing_alert_can_be_resolved_directly(hub: StandInHub, api: Api) -> None:
    alert = hub.alerts.raise_alert("tamper", SID, "critical", "locker panel opened",
                                   subject="locker_panel")
    body = api.post(f"/api/v1/alerts/{alert['id']}/resolve").get_json()
    assert body["state"] == "resolved" and body["acked_at"] is None


def test_unknown_alert_is_404(api: Api) -> None:
    assert_error(api.post("/api/v1/alerts/a-missing/ack"), 404, "not_found")
    assert_error(api.post("/api/v1/alerts/a-missing/resolve"), 404, "not_found")


@SQLITE_ONLY
def test_alerts_list_refuses_a_bad_query(api: Api) -> None:
    for query, code in [("state=open", "bad_state"), ("sid=Not%20A%20Sid", "bad_sid"),
                        ("limit=0", "bad_limit"), ("limit=many", "bad_limit")]:
        assert_error(api.get(f"/api/v1/alerts?{query}"), 400, code)


# -- commands ----------------------------------------------------------------------------


def test_post_command_publishes_it_and_get_shows_it(hub: StandInHub, api: Api,
                                                    broker: Any) -> None:
    bring_online(hub)
    with Subscriber(broker, topic(SID, Kind.CMD)) as sub:
        resp = api.post(f"/api/v1/stations/{SID}/commands",
                        json={"cmd": "unlock", "args": {"slot": 3}})
        assert resp.status_code == 202
        command_id = resp.get_json()["id"]
        assert resp.get_json() == {"id": command_id}
        assert resp.headers["Location"] == f"/api/v1/stations/{SID}/commands/{command_id}"
        got = sub.wait_for(topic(SID, Kind.CMD), timeout=5)
    now = hub.clock.ms()
    assert got.retain is False and got.qos == 1
    assert got.json() == {"v": 1, "id": command_id, "cmd": "unlock", "args": {"slot": 3},
                          "ts": now, "expires": now + 30_000, "by": TOKEN_NAME}
    body = api.get(resp.headers["Location"]).get_json()
    assert {k: body[k] for k in ("id", "cmd", "state", "error")} == \
        {"id": command_id, "cmd": "unlock", "state": "sent", "error": None}
    assert (body["created"], body["expires"], body["answered"]) == (now, now + 30_000, None)


@SQLITE_ONLY
def test_a_command_body_may_come_without_content_type_and_args(api: Api, hub: StandInHub) -> None:
    bring_online(hub)
    resp = api.post(f"/api/v1/stations/{SID}/commands", data='{"cmd": "rebirth"}',
                    content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 202


BAD_COMMANDS = [
    (b"{not json", "bad_json"),
    (b"", "bad_body"),
    (b"[1, 2]", "bad_body"),
    (b'{"args": {"slot": 1}}', "bad_body"),
    (b'{"cmd": 7}', "bad_body"),
    (b'{"cmd": "explode"}', "unknown_cmd"),
    (b'{"cmd": "unlock"}', "bad_args"),
    (b'{"cmd": "unlock", "args": {"slot": 0}}', "bad_args"),
    (b'{"cmd": "unlock", "args": {"slot": "3"}}', "bad_args"),
    (b'{"cmd": "unlock", "args": [3]}', "bad_args"),
    (b'{"cmd": "replay", "args": {"from_seq": 9, "to_seq": 2}}', "bad_args"),
]


@SQLITE_ONLY
def test_a_bad_command_is_400_and_nothing_is_sent(hub: StandInHub, api: Api,
                                                  broker: Any) -> None:
    bring_online(hub)
    with Subscriber(broker, topic(SID, Kind.CMD)) as sub:
        for body, code in BAD_COMMANDS:
            resp = api.post(f"/api/v1/stations/{SID}/commands", data=body,
                            content_type="application/json")
            assert_error(resp, 400, code)
        # A good one after the bad ones: the first message to arrive must be it.
        good = api.post(f"/api/v1/stations/{SID}/commands", json={"cmd": "rebirth"})
        first = sub.wait_for(topic(SID, Kind.CMD))
    assert first.json()["id"] == good.get_json()["id"]
    assert hub.commands.open_count() == 1


@SQLITE_ONLY
def test_a_command_to_an_unknown_station_is_404(hub: StandInHub, api: Api) -> None:
    resp = api.post("/api/v1/stations/yh-typo/commands", json={"cmd": "rebirth"})
    assert_error(resp, 404, "not_found")
    assert hub.commands.open_count() == 0


@SQLITE_ONLY
def test_a_command_the_broker_will_not_take_is_503(make_hub: Callable[..., StandInHub]) -> None:
    def refuse(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("not connected")

    hub = make_hub(publish=refuse)
    bring_online(hub)
    api = Api(hub.app)
    assert_error(api.post(f"/api/v1/stations/{SID}/commands", json={"cmd": "rebirth"}),
                 503, "broker_unavailable")


def test_unknown_command_is_404(hub: StandInHub, api: Api) -> None:
    bring_online(hub)
    command_id = api.post(f"/api/v1/stations/{SID}/commands",
                          json={"cmd": "reload"}).get_json()["id"]
    assert_error(api.get(f"/api/v1/stations/{SID}/commands/c-0000"), 404, "not_found")
    # A command is found only under its own station.
    assert_error(api.get(f"/api/v1/stations/{OTHER}/commands/{command_id}"), 404, "not_found")
    assert api.get(f"/api/v1/stations/{SID}/commands/{command_id}").status_code == 200


def test_a_command_is_found_after_a_restart(make_hub: Callable[..., StandInHub]) -> None:
    first = make_hub()
    bring_online(first)
    command_id = Api(first.app).post(f"/api/v1/stations/{SID}/commands",
                                     json={"cmd": "rebirth"}).get_json()["id"]
    assert first.writer.flush()
    second = make_hub()
    body = Api(second.app).get(f"/api/v1/stations/{SID}/commands/{command_id}").get_json()
    assert body["state"] == "sent" and body["by"] == TOKEN_NAME


@SQLITE_ONLY
def test_json_is_utf8_not_escaped(hub: StandInHub, api: Api) -> None:
    hub.alerts.raise_alert("water_empty", SID, "critical", "水箱空了")
    raw = api.get("/api/v1/alerts").get_data()
    assert "水箱空了".encode() in raw
    assert json.loads(raw)["alerts"][0]["summary"] == "水箱空了"
