"""An in-process hub with its console, for the console's page tests.

A real ``hub.service.Hub`` (Store on a SQLite file, Writer, Ledger, Fleet, Loans,
AlertStore, Forecaster, Directory) on a ManualClock, not started: the tests feed
the fleet the station's messages as the ingest would, and drive the console
through Flask's test client with real sign-in, session cookies and CSRF tokens.
:func:`serving` and :class:`WebBrowser` do the same over real HTTP: the hub's web
served by waitress in a thread, a ``requests.Session`` signed in through the form.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from hub.config import parse_hub_config
from hub.service import Hub
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind
from tests.harness.procs import wait_until
from yizhan.clock import ManualClock

FLEET_KEY = "console-test-fleet-key-0123456789"
PASSWORD = "correct horse battery"
#: (name, role, groups) of the users every console test hub has.
USERS = (("boss", "admin", ()), ("desk", "ops", ()), ("wang", "maintenance", ("chumen",)))
STATIONS = (
    {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站", "group": "chumen"},
    {"sid": "yh-chumen-02", "name": "楚门镇东站", "group": "chumen"},
    {"sid": "yh-kanmen-01", "name": "坎门渔港驿站", "group": "kanmen"},
)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def console_hub(tmp: Path, clock: ManualClock, **extra: Any) -> Hub:
    key = tmp / "fleet.key"
    key.write_text(FLEET_KEY)
    key.chmod(0o600)
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1},  # never connected: not started
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "fleet_key_file": str(key),
        "api_tokens": [{"name": "desk-app", "token": "desk-secret-0123456789abcdef",
                        "scopes": ["read", "directory"]}],
        "stations": list(STATIONS),
        "console": {"secret_key_file": str(tmp / "console.key")},
        **extra,
    })
    hub = Hub(config, clock)
    hub.ledger.hub_started(clock.ms())  # what Hub.start() does, without MQTT
    if "yizhan_console" not in hub.app.extensions:
        from hub.console import register
        register(hub.app, hub)
    users = hub.app.extensions["yizhan_console"].users
    for name, role, groups in USERS:
        users.add(name, PASSWORD, role, groups)
    hub.app.testing = True
    return hub


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


class Browser:
    """Flask's test client signed in as one console user; ``post`` sends the
    form with the CSRF token of the last page seen (as a browser's form would)."""

    def __init__(self, hub: Hub, name: str | None = None) -> None:
        self.hub = hub
        self.client = hub.app.test_client()
        self.token = ""
        self.pages: list[str] = []  # every page's source, to grep afterwards
        if name is not None:
            self.get("/console/signin")
            resp = self.post("/console/signin", {"name": name, "password": PASSWORD})
            assert resp.status_code == 303, resp.status_code

    def get(self, path: str) -> Any:
        resp = self.client.get(path)
        # A download (the report's PDF) is no page: read it as text all the same.
        text = resp.get_data().decode("utf-8", "replace")
        self.pages.append(text)
        found = _CSRF.search(text)
        if found:
            self.token = found.group(1)
        return resp

    def post(self, path: str, form: dict[str, str], csrf: bool = True) -> Any:
        data = dict(form)
        if csrf:
            data["csrf"] = self.token
        resp = self.client.post(path, data=data)
        self.pages.append(resp.get_data(as_text=True))
        return resp

    def follow(self, resp: Any) -> str:
        """The page a POST redirected to (flash messages included), or the page a
        refused POST showed again (a 4xx saying why, docs/console.md)."""
        if 400 <= resp.status_code < 500:
            page = resp.get_data(as_text=True)
            assert 'class="flash error"' in page, (resp.status_code, "refused without a word")
            return page
        assert resp.status_code == 303, resp.status_code
        return self.get(resp.headers["Location"]).get_data(as_text=True)


@contextlib.contextmanager
def serving(hub: Hub) -> Iterator[str]:
    """``hub``'s web served by waitress (``Hub.serve``) in a thread of this process,
    as ``yizhan hub`` serves it; yields its base URL. The hub must have been made
    with ``http={"host": "127.0.0.1", "port": 0}`` (a free port, chosen by the
    kernel). Stops serving on the way out; closing the hub is the caller's."""
    web = threading.Thread(target=hub.serve, name="console-web", daemon=True)
    web.start()
    wait_until(lambda: hub._server is not None, 10, "the hub's web server")
    try:
        yield f"http://127.0.0.1:{hub.http_port}"
    finally:
        hub.stop()
        web.join(10)


class WebBrowser:
    """:class:`Browser` over real HTTP: a ``requests.Session`` keeps the console's
    session cookie, and ``post`` sends the CSRF token of the last page seen in the
    form's ``csrf`` field (hub/console/auth.py). Redirects are not followed: a
    303 is the answer under test."""

    def __init__(self, base: str, name: str | None = None) -> None:
        self.base = base
        self.session = requests.Session()
        self.token = ""
        if name is not None:
            self.get("/console/signin")
            resp = self.post("/console/signin", {"name": name, "password": PASSWORD})
            assert resp.status_code == 303, resp.status_code

    def get(self, path: str, params: dict[str, str] | None = None) -> requests.Response:
        resp = self.session.get(self.base + path, params=params, allow_redirects=False,
                                timeout=30)
        found = _CSRF.search(resp.content.decode("utf-8", "replace"))
        if found:
            self.token = found.group(1)
        return resp

    def post(self, path: str, form: dict[str, str], csrf: bool = True) -> requests.Response:
        data = dict(form)
        if csrf:
            data["csrf"] = self.token
        return self.session.post(self.base + path, data=data, allow_redirects=False,
                                 timeout=30)


def placed_stations() -> list[dict]:
    """STATIONS with what the rider finder shows of a place (docs/finder.md): one
    in full, one with its hours only, one not placed yet (a fresh list each call)."""
    return [
        {"sid": "yh-chumen-01", "name": "楚门镇先锋驿站", "group": "chumen", "lat": 28.1865,
         "lon": 121.2847, "address": "楚门镇先锋路 18 号", "host": "先锋村便民服务中心",
         "hours": "24h"},
        {"sid": "yh-chumen-02", "name": "楚门镇东站", "group": "chumen", "lat": 28.1902,
         "lon": 121.2981, "hours": "07:00-22:00"},
        {"sid": "yh-kanmen-01", "name": "坎门渔港驿站", "group": "kanmen"},  # no place yet
    ]


def bring_online(hub: Hub, sid: str, change: Any = None, rev: int = 1,
                 birth: int = 5012) -> dict:
    """The station's birth (a later ``birth`` for a come-back) and a State, as the
    ingest would apply them."""
    now = hub.clock.ms()
    status = examples.example("status")
    status.update(sid=sid, ts=now, birth=birth, rev=birth)
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=sid), now)
    return send_state(hub, sid, change, rev)


def send_state(hub: Hub, sid: str, change: Any = None, rev: int = 1) -> dict:
    now = hub.clock.ms()
    state = examples.example("state")
    state.update(sid=sid, ts=now, rev=rev)
    if change is not None:
        change(state)
    hub.fleet.apply_state(m.from_dict(Kind.STATE, state, topic_sid=sid), now)
    return state


def water(word: str) -> Any:
    """A State change for :func:`bring_online`: the dispenser's level is ``word``."""
    def change(state: dict) -> None:
        state["dispenser"].update(level_state=word, level=0.0 if word == "empty" else 0.5)
    return change


def go_offline(hub: Hub, sid: str) -> None:
    now = hub.clock.ms()
    status = {"v": 1, "sid": sid, "epoch": "9f2c01ab", "state": "offline", "reason": "lost",
              "birth": examples.example("status")["birth"]}
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=sid), now)


def send_event(hub: Hub, sid: str, seq: int, type_: str, data: dict) -> None:
    now = hub.clock.ms()
    event = examples.example("event")
    event.update(sid=sid, ts=now, seq=seq, type=type_, data=data)
    hub.fleet.apply_event(m.from_dict(Kind.EVENT, event, topic_sid=sid), now)


def advance(hub: Hub, seconds: float) -> None:
    """Move the hub's clock on, with its proof of life as the scheduler gives it."""
    hub.clock.advance(seconds)
    hub.ledger.hub_alive(hub.clock.ms())
