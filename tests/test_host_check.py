"""DNS rebinding against the kiosk and the agent's local API (issue 14, finding 10).

A page opened on the Pi's browser whose name comes to resolve to 127.0.0.1
reaches both servers same-origin, but its requests carry its own name in
``Host``: they must be refused, and loopback's names must still be answered.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest

from firmware.localapi import create_local_api
from kiosk import create_app
from kiosk.config import KioskConfig
from tests.test_lending import Station, StationFactory, stations  # noqa: F401  (fixture)
from yizhan.hosts import loopback_host

KEY = b"test-fleet-key-0123456789abcdef"
REBOUND = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
           "localhost:{other}", "[::1]:{other}", "127.0.0.2:{port}", "0.0.0.0:{port}"]
LOOPBACK = ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "localhost",
            "LocalHost:{port}"]


def test_loopback_names() -> None:
    assert loopback_host("127.0.0.1:8700", 8700) and loopback_host("[::1]", 8700)
    assert loopback_host("localhost:40123", None)  # a server on an ephemeral port
    assert not loopback_host("evil.example:8700", None)
    assert not loopback_host("127.0.0.1:٨٧٠٠", None) and not loopback_host("::1", None)
    assert not loopback_host("", 8700) and not loopback_host(None, 8700)
    assert not loopback_host("127.0.0.1:8700:8700", 8700)


@pytest.mark.parametrize("host", REBOUND)
def test_the_kiosk_refuses_another_name(tmp_path, host: str) -> None:
    app = create_app(KioskConfig(fleet_key=KEY, data_dir=tmp_path / "data", port=8700))
    r = app.test_client().get("/healthz", headers={"Host": host.format(port=8700, other=8701)})
    assert r.status_code == 421
    assert 'data-status="421"' in r.get_data(as_text=True)


@pytest.mark.parametrize("host", LOOPBACK)
def test_the_kiosk_answers_loopback(tmp_path, host: str) -> None:
    app = create_app(KioskConfig(fleet_key=KEY, data_dir=tmp_path / "data", port=8700))
    r = app.test_client().get("/healthz", headers={"Host": host.format(port=8700)})
    assert r.status_code == 200


@pytest.fixture
def served(stations: StationFactory) -> Iterator[tuple[Station, int]]:  # noqa: F811
    """The local API served by waitress on loopback, as the agent serves it."""
    from waitress.server import create_server

    station = stations.make()
    server = create_server(
        create_local_api(station.lending, lambda: {"name": "x"}, station.directory,
                         port=None), host="127.0.0.1", port=0)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield station, server.effective_port
    finally:
        stop.set()
        thread.join(5)
        server.close()
        server.task_dispatcher.shutdown()


def _get(port: int, host: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", "/v1/station", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_the_local_api_refuses_another_name(served: tuple[Station, int]) -> None:
    _, port = served
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        status, body = _get(port, host)
        assert status == 421 and body["error"]["code"] == "bad_host", host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        status, body = _get(port, host)
        assert status == 200 and body["station"]["name"] == "x", host


def test_the_local_api_checks_the_port_it_is_given(stations: StationFactory) -> None:  # noqa: F811
    station = stations.make()
    app = create_local_api(station.lending, lambda: {"name": "x"}, station.directory,
                           port=8701)
    client = app.test_client()
    assert client.get("/v1/station", headers={"Host": "127.0.0.1:8701"}).status_code == 200
    r = client.get("/v1/station", headers={"Host": "127.0.0.1:8700"})
    assert r.status_code == 421 and r.get_json()["error"]["code"] == "bad_host"


def test_a_unix_socket_has_no_name_to_check(stations: StationFactory) -> None:  # noqa: F811
    station = stations.make()
    app = create_local_api(station.lending, lambda: {"name": "x"}, station.directory,
                           unix_socket=True)
    assert app.test_client().get("/v1/station",
                                 headers={"Host": "evil.example"}).status_code == 200
