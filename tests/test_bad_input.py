"""Bad input to the hub's API is a 400 with a clear JSON error, never a 500, and
changes nothing (issue 14, findings 3 and 11).

``str.isdigit()`` took ``²`` and ``٣`` (``int("²")`` then raised: a 500; ``٣``
was read as 3), ``int()`` raises past 4 300 digits, and JSON nested ~1 000 deep
made ``json.loads`` raise RecursionError. Replay commands from the API are paced
per station. In process through Flask's test client (real store, writer and
broker behind), then over HTTP against the real ``yizhan hub`` program.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.fleet.commands import REPLAY_WINDOW_MS, REPLAYS_PER_WINDOW
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from tests.test_hub_api import (
    OTHER,
    SID,
    SQLITE_ONLY,
    Api,
    StandInHub,
    assert_error,
    bring_online,
    hub_factory,
)

#: Query values that are not 1 to 15 ASCII digits, each once a 500 or silently read.
NOT_NUMBERS = ["²", "٣", "１２", " 5", "5 ", "1_0", "+5", "-1", "1" * 16, "1" * 5000, ""]
DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"cmd": "rebirth", "args": ' + '{"a": ' * 999 + "1" + "}" * 999 + "}"
DECODER_WORDS = ("Expecting", "line 1", "column", "char ", "recursion")


def generic_json_error(body: dict) -> None:
    """A bad_json answer that does not quote the decoder."""
    assert body["error"]["code"] == "bad_json"
    assert not any(word in body["error"]["message"] for word in DECODER_WORDS), body


# -- in process ---------------------------------------------------------------------------


@pytest.fixture
def hub(database_url: str, broker: Any) -> Iterator[StandInHub]:
    """The stand-in hub of tests/test_hub_api.py: real store, writer, commands."""
    with hub_factory(database_url, broker) as make:
        yield make()


@pytest.fixture
def api(hub: StandInHub) -> Api:
    return Api(hub.app)


@SQLITE_ONLY
@pytest.mark.parametrize("raw", NOT_NUMBERS)
def test_a_limit_that_is_not_ascii_digits_is_a_400(api: Api, raw: str) -> None:
    body = assert_error(api.get("/api/v1/alerts", query_string={"limit": raw}), 400,
                        "bad_limit")
    assert "0-9" in body["error"]["message"]


@SQLITE_ONLY
@pytest.mark.parametrize("raw", NOT_NUMBERS)
@pytest.mark.parametrize("which", ["from", "to"])
def test_a_from_or_to_that_is_not_ascii_digits_is_a_400(api: Api, which: str,
                                                        raw: str) -> None:
    query = {"from": "1764190000000", "to": "1764196800000", which: raw}
    assert_error(api.get(f"/api/v1/stations/{SID}/uptime", query_string=query), 400,
                 "bad_range")


@SQLITE_ONLY
def test_good_numbers_still_read(hub: StandInHub, api: Api) -> None:
    assert api.get("/api/v1/alerts", query_string={"limit": "25"}).status_code == 200
    now = hub.clock.ms()
    r = api.get(f"/api/v1/stations/{SID}/uptime",
                query_string={"from": str(now - 3_600_000), "to": str(now)})
    assert r.status_code == 200 and r.get_json()["from"] == now - 3_600_000


@SQLITE_ONLY
@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJECT, "{", "not json", b"\xff\xfe{}",
                                 '{"cmd": "rebirth", "args": {"x": NaN}}'])
def test_a_command_body_that_is_not_json_is_a_generic_400(hub: StandInHub, api: Api,
                                                          raw: str | bytes) -> None:
    bring_online(hub)
    r = api.post(f"/api/v1/stations/{SID}/commands", data=raw,
                 content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)
    generic_json_error(r.get_json())
    assert hub.commands.open_count() == 0  # nothing sent


@SQLITE_ONLY
@pytest.mark.parametrize("path", ["/api/v1/silences", "/api/v1/maintenance-windows"])
def test_a_deep_mute_body_is_a_generic_400(hub: StandInHub, api: Api, path: str) -> None:
    r = api.post(path, data='{"sid": "yh-chumen-01", "comment": ' + DEEP + "}",
                 content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)
    generic_json_error(r.get_json())
    assert api.get(path, query_string={"include": "all"}).get_json() in (
        {"silences": []}, {"maintenance_windows": []})


@SQLITE_ONLY
@pytest.mark.parametrize(("args", "says"), [
    ({"slot": 256}, "1..255"),
    ({"slot": 10**30}, "1..255"),
    ({"from_seq": 1, "to_seq": 100_001}, "100000"),
    ({"from_seq": 9, "to_seq": 3}, "a <= b"),
    ({"from_seq": 2**63 - 5, "to_seq": 2**64}, "a <= b"),
])
def test_command_args_out_of_range_are_bad_args(hub: StandInHub, api: Api, args: dict,
                                                says: str) -> None:
    bring_online(hub)
    cmd = "unlock" if "slot" in args else "replay"
    r = api.post(f"/api/v1/stations/{SID}/commands", json={"cmd": cmd, "args": args})
    body = assert_error(r, 400, "bad_args")
    assert says in body["error"]["message"]
    assert hub.commands.open_count() == 0


@SQLITE_ONLY
def test_a_burst_of_replays_is_answered_429_after_the_limit(hub: StandInHub,
                                                            api: Api) -> None:
    bring_online(hub)
    bring_online(hub, OTHER)
    url = f"/api/v1/stations/{SID}/commands"
    replay = {"cmd": "replay", "args": {"from_seq": 1, "to_seq": 10}}
    for _ in range(REPLAYS_PER_WINDOW):
        assert api.post(url, json=replay).status_code == 202
    refused = api.post(url, json=replay)
    body = assert_error(refused, 429, "too_many_replays")
    assert int(refused.headers["Retry-After"]) == REPLAY_WINDOW_MS // 1000
    assert "5 replay commands" in body["error"]["message"]
    assert hub.commands.open_count() == REPLAYS_PER_WINDOW  # the refused one never went
    # The limit is per station and per command: others are not held up.
    assert api.post(f"/api/v1/stations/{OTHER}/commands", json=replay).status_code == 202
    assert api.post(url, json={"cmd": "rebirth"}).status_code == 202
    # The hub's own gap repair is paced by replay_every, not by this limit.
    hub.commands.send(SID, "replay", {"from_seq": 1, "to_seq": 10}, by="hub")
    # Time frees the window: half of it is not enough, all of it is.
    hub.clock.advance(REPLAY_WINDOW_MS / 2000)
    again = api.post(url, json=replay)
    assert_error(again, 429, "too_many_replays")
    assert int(again.headers["Retry-After"]) == REPLAY_WINDOW_MS // 2000
    hub.clock.advance(REPLAY_WINDOW_MS / 2000)
    assert api.post(url, json=replay).status_code == 202


@SQLITE_ONLY
@pytest.mark.parametrize(("path", "query", "code"), [
    ("/api/v1/alerts", {"sid": ""}, "bad_sid"),  # not "every station"
    ("/api/v1/alerts", {"state": ""}, "bad_state"),
    ("/api/v1/alerts", {"stat": "firing"}, "unknown_param"),  # a typo, not a filter
    ("/api/v1/stations", {"sid": SID}, "unknown_param"),
    (f"/api/v1/stations/{SID}/uptime", {"form": "1", "to": "2"}, "unknown_param"),
    ("/api/v1/openapi.json", {"x": "1"}, "unknown_param"),
])
def test_an_empty_or_unknown_query_parameter_is_a_400(api: Api, path: str, query: dict,
                                                      code: str) -> None:
    """Issue 14, finding 13: the hub takes the query parameters the OpenAPI document
    lists, and an empty value is refused rather than read as absent."""
    body = assert_error(api.get(path, query_string=query), 400, code)
    if code == "unknown_param":
        assert repr(next(iter(query))) in body["error"]["message"]


@SQLITE_ONLY
def test_health_metrics_and_ack_links_ignore_their_query(api: Api) -> None:
    # Chat apps append their own parameters to the links they open.
    assert api.get("/healthz", query_string={"from": "singlemessage"}).status_code == 200
    assert api.get("/metrics", query_string={"x": "1"}).status_code == 200
    # The link's own page answers (this stand-in has no ack-link key: its 503 page),
    # not the query check's JSON 400.
    page = api.client.get("/ack/not-a-token", query_string={"from": "singlemessage"})
    assert page.status_code != 400 and page.content_type.startswith("text/html")


@SQLITE_ONLY
@pytest.mark.parametrize("times", [
    {"starts_at": 2**70, "ends_at": 2**70 + 1000},  # once a 500: no 64-bit column holds it
    {"starts_at": 2**63 - 2, "duration": "2h"},  # ends past 2**63 - 1
    {"ends_at": 2**63},
    {"starts_at": -1, "duration": "2h"},
    {"duration": 7200},  # seconds or ms? the document says text
    {"duration": 1e308},
    {"duration": "٣h"},  # \d took it as 3 hours
    {"duration": "1" * 5000 + "s"},  # int() refuses past 4 300 digits: was a 500
    {"duration": "2h "},
    {"duration": "31d"},
    {"ends_at": 5.0},
])
@pytest.mark.parametrize("path", ["/api/v1/silences", "/api/v1/maintenance-windows"])
def test_mute_times_out_of_bounds_are_bad_time(api: Api, path: str, times: dict) -> None:
    r = api.post(path, json={"sid": SID, **times})
    assert_error(r, 400, "bad_time")
    assert api.get(path, query_string={"include": "all"}).get_json() in (
        {"silences": []}, {"maintenance_windows": []})


# -- over HTTP, against the real hub program ------------------------------------------------

TOKEN = "bad-input-token-0123456789"


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def send(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, Any]:
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers


def test_the_real_hub_answers_bad_input_with_400s(tmp_path: Path, broker_factory: Any,
                                                  procs: Procs) -> None:
    # A broker of its own: the real hub's retained time beacon must not reach the
    # stations of other tests, whose clocks are manual.
    broker = broker_factory()
    port = free_port()
    cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": port},
        "api_tokens": [{"name": "bad-input", "token": TOKEN, "scopes": ["admin"]}],
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站"}],
    })
    base = f"http://127.0.0.1:{port}"
    hub_proc = procs.start("hub", "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub_proc.tail)

    for raw in ["²", "٣", "1" * 5000]:
        q = urllib.parse.quote(raw)
        status, body, _ = send(base, "GET", f"/api/v1/alerts?limit={q}")
        assert (status, body["error"]["code"]) == (400, "bad_limit"), body
        status, body, _ = send(base, "GET", f"/api/v1/stations/{SID}/uptime?from={q}&to=5")
        assert (status, body["error"]["code"]) == (400, "bad_range"), body

    for path in (f"/api/v1/stations/{SID}/commands", "/api/v1/silences"):
        status, body, _ = send(base, "POST", path, DEEP.encode())
        assert status == 400, body
        generic_json_error(body)

    replay = json.dumps({"cmd": "replay", "args": {"from_seq": 1, "to_seq": 10}}).encode()
    answers = [send(base, "POST", f"/api/v1/stations/{SID}/commands", replay)
               for _ in range(REPLAYS_PER_WINDOW + 1)]
    assert [a[0] for a in answers] == [202] * REPLAYS_PER_WINDOW + [429]
    assert answers[-1][1]["error"]["code"] == "too_many_replays"
    assert 1 <= int(answers[-1][2]["Retry-After"]) <= REPLAY_WINDOW_MS // 1000

    # Nothing changed: no silence, only the paced replays; the hub stayed healthy.
    assert send(base, "GET", "/api/v1/silences?include=all")[:2] == (200, {"silences": []})
    assert http_json(f"{base}/healthz")[0] == 200
    assert "Traceback" not in hub_proc.tail(400)
