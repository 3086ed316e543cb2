"""The console's doors (hub/console/auth.py): every route × every role, CSRF,
the session cookie, sign-in lockout, idle timeout, sign-out voiding copies of the
cookie, and a maintenance worker's reach over the stations of their groups.

A real ``hub.service.Hub`` on SQLite and a ManualClock (tests/harness/console_app.py);
the unlock tests start its MQTT ingest on a real Mosquitto and read the command
the station would get.
"""

from __future__ import annotations

import json
import subprocess
import sys
from http.cookies import SimpleCookie

import pytest
import sqlalchemy as sa

import hub.console.auth as auth
from hub.console.auth import LOCK_MS, MAX_FAILURES, PUBLIC, ROLES, ROUTE_ROLES
from hub.storage.schema import commands, console_users, directory_audit
from protocol.topics import Kind, topic
from tests.harness.console_app import PASSWORD, USERS, Browser, bring_online, console_hub, csrf_of
from tests.harness.mqtt import Subscriber
from yizhan.clock import ManualClock

SIGNIN = "/console/signin"
#: A role of each kind, by the user who has it (tests/harness/console_app.py USERS).
USER_OF = {role: name for name, role, _groups in USERS}
#: Values for a route's variables: a real station, else something of the right shape.
SAMPLE = {"sid": "yh-chumen-01", "filename": "console.css", "code": "en"}


@pytest.fixture
def hub(tmp_path):
    h = console_hub(tmp_path, ManualClock(1_764_196_800.0))
    bring_online(h, "yh-chumen-01")
    yield h
    h.close()


def console_routes(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) of every console route: under /console, or ``/``."""
    out = []
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/console") or rule.rule == "/"):
            continue
        values = {arg: SAMPLE.get(arg, "1") for arg in rule.arguments}
        url = adapter.build(rule.endpoint, values)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, url))
    return out


def test_every_console_route_declares_its_roles(hub):
    routes = console_routes(hub.app)
    assert len({e for e, _m, _u in routes}) >= 6  # the foundation's own and the pages'
    undeclared = sorted({e for e, _m, _u in routes if e not in ROUTE_ROLES})
    assert undeclared == [], "add @requires(...) (or @public) to these views"


def test_a_view_without_roles_is_refused_to_everyone(tmp_path):
    from flask import Blueprint

    h = console_hub(tmp_path, ManualClock(1_764_196_800.0))
    try:
        # A page added later without @requires (nor @public).
        stray = Blueprint("console_stray", __name__, url_prefix="/console")
        stray.add_url_rule("/stray", "stray", lambda: "secret page")
        h.app.register_blueprint(stray)
        b = Browser(h, "boss")
        resp = b.get("/console/stray")
        assert resp.status_code == 403
        assert "secret page" not in resp.get_data(as_text=True)
    finally:
        h.close()


def _expect(endpoint: str, role: str | None) -> str:
    roles = ROUTE_ROLES[endpoint]
    if roles == PUBLIC:
        return "public"
    if role is None:
        return "signin"
    return "allowed" if role in roles else "forbidden"


@pytest.mark.parametrize("role", [None, *ROLES])
def test_roles_on_every_route(hub, role):
    """Anonymous → the sign-in page; a role not allowed → 403; allowed → served."""
    failures = []
    for endpoint, method, url in console_routes(hub.app):
        if endpoint not in ROUTE_ROLES:
            failures.append(f"{endpoint}: no roles declared")
            continue
        # A fresh session per request: one route's POST (sign-out) ends no other's.
        b = Browser(hub, USER_OF[role] if role else None)
        # A CSRF token, as a form in the browser would have (sign-in or the nav's sign-out).
        b.get("/console/" if role else SIGNIN)
        resp = b.get(url) if method == "GET" else b.post(url, {})
        expect = _expect(endpoint, role)
        status, where = resp.status_code, resp.headers.get("Location", "")
        ok = {
            "public": status not in (403, 500),
            "signin": status in (302, 303) and where.startswith(SIGNIN),
            "forbidden": status == 403,
            # served: the page, or the form's answer (a redirect, or a refusal of
            # the empty form or the sample id) — never the door shut or a crash
            "allowed": (status in (200, 302, 303, 400, 404, 409, 422)
                        and not where.startswith(SIGNIN)
                        and (method == "POST" or "<" in endpoint
                             or status in (200, 302, 303))),
        }[expect]
        if not ok:
            failures.append(f"{method} {url} ({endpoint}) as {role}: {status} {where}, "
                            f"expected {expect}")
    assert failures == []


def test_get_pages_of_each_role_are_served_with_200(hub):
    for role in ROLES:
        b = Browser(hub, USER_OF[role])
        for endpoint, method, url in console_routes(hub.app):
            if method != "GET" or ROUTE_ROLES.get(endpoint) in (None, PUBLIC):
                continue
            if role in ROUTE_ROLES[endpoint] and "{" not in url:
                resp = b.get(url)
                assert resp.status_code == 200, (role, url, resp.status_code)


def test_root_leads_to_the_console_or_the_sign_in_page(hub):
    anon = Browser(hub)
    resp = anon.get("/")
    assert resp.status_code == 303 and resp.headers["Location"] == SIGNIN
    signed = Browser(hub, "desk")
    resp = signed.get("/")
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/"
    # The JSON API is unchanged beside it.
    assert hub.app.test_client().get("/api/v1/stations").status_code == 401


def test_csrf_refused_without_the_token(hub):
    b = Browser(hub)
    b.get(SIGNIN)
    resp = b.post(SIGNIN, {"name": "boss", "password": PASSWORD}, csrf=False)
    assert resp.status_code == 400
    assert b.get("/console/").status_code == 303  # not signed in
    b = Browser(hub, "boss")
    before = _audit(hub)
    resp = b.post("/console/stations/yh-chumen-01/unlock", {"slot": "1", "reason": "stuck"},
                  csrf=False)
    assert resp.status_code == 400
    resp = b.client.post("/console/stations/yh-chumen-01/unlock",
                         data={"slot": "1", "reason": "stuck", "csrf": "x" * 43})
    assert resp.status_code == 400
    assert _audit(hub) == before
    assert _commands(hub) == []


def _set_cookie(resp) -> SimpleCookie:
    cookie = SimpleCookie()
    for header in resp.headers.getlist("Set-Cookie"):
        cookie.load(header)
    return cookie


def test_session_cookie_is_httponly_and_samesite(hub):
    b = Browser(hub)
    b.get(SIGNIN)
    resp = b.post(SIGNIN, {"name": "desk", "password": PASSWORD})
    assert resp.status_code == 303
    morsel = _set_cookie(resp)["yizhan_console"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert not morsel["secure"]  # console.secure_cookies defaults to false (plain HTTP)
    assert PASSWORD not in resp.headers["Set-Cookie"]


def test_secure_cookies_when_configured(tmp_path):
    h = console_hub(tmp_path, ManualClock(1_764_196_800.0),
                    console={"secret_key_file": str(tmp_path / "console.key"),
                             "secure_cookies": True})
    try:
        b = Browser(h)
        b.get(SIGNIN)
        resp = b.post(SIGNIN, {"name": "desk", "password": PASSWORD})
        morsel = _set_cookie(resp)["yizhan_console"]
        assert morsel["secure"] is True and morsel["httponly"] is True
        assert (tmp_path / "console.key").stat().st_mode & 0o077 == 0
    finally:
        h.close()


def test_passwords_are_stored_only_as_salted_hashes(hub):
    with hub.store.engine.connect() as conn:
        rows = conn.execute(sa.select(console_users)).all()
    assert {r.name for r in rows} == {n for n, _r, _g in USERS}
    hashes = [r.password for r in rows]
    assert all(h.startswith(("scrypt:", "pbkdf2:")) and PASSWORD not in h for h in hashes)
    assert len(set(hashes)) == len(hashes)  # same password, different salts


def test_lockout_is_counted_before_hashing(hub, monkeypatch):
    hashed = []
    real = auth.check_password_hash
    monkeypatch.setattr(auth, "check_password_hash",
                        lambda h, p: hashed.append(1) or real(h, p))
    b = Browser(hub)
    b.get(SIGNIN)
    for _ in range(MAX_FAILURES):
        assert b.post(SIGNIN, {"name": "desk", "password": "wrong password!"}).status_code == 401
    assert len(hashed) == MAX_FAILURES
    # Locked: the right password is refused too, and costs no hash.
    resp = b.post(SIGNIN, {"name": "desk", "password": PASSWORD})
    assert resp.status_code == 429
    assert len(hashed) == MAX_FAILURES
    # Another address is locked out of that name as well (counted per name).
    other = hub.app.test_client()
    page = other.get(SIGNIN, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    resp = other.post(SIGNIN, data={"name": "desk", "password": PASSWORD,
                                    "csrf": csrf_of(page.get_data(as_text=True))},
                      environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert resp.status_code == 429 and len(hashed) == MAX_FAILURES
    hub.clock.advance(LOCK_MS / 1000 - 1)
    assert b.post(SIGNIN, {"name": "desk", "password": PASSWORD}).status_code == 429
    hub.clock.advance(2)
    assert b.post(SIGNIN, {"name": "desk", "password": PASSWORD}).status_code == 303


def test_an_unknown_name_costs_a_hash_like_a_known_one(hub, monkeypatch):
    hashed = []
    real = auth.check_password_hash
    monkeypatch.setattr(auth, "check_password_hash",
                        lambda h, p: hashed.append(1) or real(h, p))
    b = Browser(hub)
    b.get(SIGNIN)
    assert b.post(SIGNIN, {"name": "nobody", "password": PASSWORD}).status_code == 401
    assert hashed == [1]


@pytest.mark.parametrize("name", ["x" * 10_000, "ｂｏｓｓ", "boss\x00", "١٢٣", "../boss"])
def test_hostile_names_are_refused_quietly(hub, name):
    b = Browser(hub)
    b.get(SIGNIN)
    resp = b.post(SIGNIN, {"name": name, "password": PASSWORD})
    assert resp.status_code == 401
    assert b.get("/console/").status_code == 303


def test_an_idle_session_is_signed_out(hub):
    b = Browser(hub, "desk")
    assert b.get("/console/").status_code == 200
    hub.clock.advance(29 * 60)
    assert b.get("/console/").status_code == 200  # used: the idle clock starts again
    hub.clock.advance(29 * 60)
    assert b.get("/console/").status_code == 200
    hub.clock.advance(31 * 60)
    resp = b.get("/console/")
    assert resp.status_code == 303 and resp.headers["Location"].startswith(SIGNIN)


def test_sign_out_voids_every_copy_of_the_cookie(hub):
    b = Browser(hub, "desk")
    b.get("/console/")
    stolen = b.client.get_cookie("yizhan_console").value
    assert b.post("/console/signout", {}).status_code == 303
    thief = hub.app.test_client()
    thief.set_cookie("yizhan_console", stolen)
    resp = thief.get("/console/")
    assert resp.status_code == 303 and resp.headers["Location"].startswith(SIGNIN)


def test_a_disabled_user_is_out_at_once(hub):
    b = Browser(hub, "desk")
    assert b.get("/console/").status_code == 200
    hub.app.extensions["yizhan_console"].users.change("desk", disabled=True)
    assert b.get("/console/").status_code == 303
    b2 = Browser(hub)
    b2.get(SIGNIN)
    assert b2.post(SIGNIN, {"name": "desk", "password": PASSWORD}).status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/\\evil.example", "/api/v1/stations"])
def test_sign_in_never_redirects_off_the_console(hub, target):
    b = Browser(hub)
    b.get(f"{SIGNIN}?next={target}")
    resp = b.post(SIGNIN, {"name": "desk", "password": PASSWORD, "next": target})
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/"


def test_sign_in_returns_to_the_page_asked_for(hub):
    b = Browser(hub)
    resp = b.get("/console/stations/yh-chumen-01")
    assert resp.headers["Location"].startswith(SIGNIN)
    b.get(resp.headers["Location"])
    resp = b.post(SIGNIN, {"name": "desk", "password": PASSWORD,
                           "next": "/console/stations/yh-chumen-01"})
    assert resp.headers["Location"] == "/console/stations/yh-chumen-01"


# -- a maintenance worker's reach -------------------------------------------------------


def _audit(h) -> list:
    with h.store.engine.connect() as conn:
        return conn.execute(sa.select(directory_audit).order_by(directory_audit.c.id)).all()


def _commands(h) -> list:
    h.writer.flush()
    with h.store.engine.connect() as conn:
        return conn.execute(sa.select(commands)).all()


@pytest.fixture
def live_hub(tmp_path, broker_factory):
    broker = broker_factory()
    h = console_hub(tmp_path, ManualClock(1_764_196_800.0),
                    mqtt={"host": broker.host, "port": broker.port})
    for sid in ("yh-chumen-01", "yh-kanmen-01"):
        bring_online(h, sid)
    h.start()
    assert h.ingest.connected.wait(10), "the hub's MQTT client did not connect"
    yield h, broker
    h.close()


def test_maintenance_unlocks_only_in_their_groups(live_hub):
    h, broker = live_hub
    wang = Browser(h, "wang")  # maintenance of chumen
    with Subscriber(broker, [topic("yh-chumen-01", Kind.CMD),
                             topic("yh-kanmen-01", Kind.CMD)]) as sub:
        wang.get("/console/stations/yh-kanmen-01")
        page = wang.pages[-1]
        assert "Only ops, admin or maintenance" in page or "只有" in page  # no form shown
        resp = wang.post("/console/stations/yh-kanmen-01/unlock",
                         {"slot": "1", "reason": "rider's bank stuck"})
        assert resp.status_code == 403
        wang.get("/console/stations/yh-chumen-01")
        resp = wang.post("/console/stations/yh-chumen-01/unlock",
                         {"slot": "2", "reason": "rider's bank stuck"})
        assert resp.status_code == 303
        cmd = sub.wait_for(lambda x: True, timeout=10).json()
        assert cmd["cmd"] == "unlock" and cmd["args"] == {"slot": 2}
        assert cmd["by"] == "console:wang"
        assert all(m.topic == topic("yh-chumen-01", Kind.CMD) for m in sub.messages)
    rows = [r for r in _audit(h) if r.action == "unlock"]
    assert [(r.actor, r.entity_id, json.loads(r.detail)) for r in rows] == [
        ("console:wang", "yh-chumen-01", {"slot": 2, "reason": "rider's bank stuck"})]


@pytest.mark.parametrize("slot", ["", "0", "99", "２", "1e3", "9" * 5000, "-1"])
def test_unlock_needs_a_slot_the_station_has_and_a_reason(live_hub, slot):
    h, _broker = live_hub
    desk = Browser(h, "desk")
    desk.get("/console/stations/yh-chumen-01")
    # Refused: the station's page again, saying why (400).
    resp = desk.post("/console/stations/yh-chumen-01/unlock", {"slot": slot, "reason": "x"})
    assert resp.status_code == 400 and 'class="flash error"' in resp.get_data(as_text=True)
    resp = desk.post("/console/stations/yh-chumen-01/unlock", {"slot": "1", "reason": " "})
    assert resp.status_code == 400
    assert [r for r in _audit(h) if r.action == "unlock"] == []


# -- yizhan console-user ----------------------------------------------------------------


def _cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yizhan", "console-user", *argv],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_console_user_command_adds_a_user_who_signs_in(tmp_path):
    config = tmp_path / "hub.yaml"
    config.write_text(f"mqtt: {{host: 127.0.0.1, port: 1}}\n"
                      f"database: sqlite:///{tmp_path / 'hub.db'}\n"
                      f"stations: [{{sid: yh-chumen-01, name: A, group: chumen}}]\n")
    secret = "a long enough password 楚门"
    done = _cli("add", "li.wei", "--role", "maintenance", "--groups", "chumen",
                "--config", str(config), stdin=secret + "\n")
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    refused = _cli("add", "zhao", "--role", "maintenance", "--config", str(config),
                   stdin=secret + "\n")
    assert refused.returncode == 1 and "--groups" in refused.stderr
    short = _cli("add", "qian", "--role", "ops", "--config", str(config), stdin="short\n")
    assert short.returncode == 1 and "password" in short.stderr
    listed = _cli("list", "--config", str(config))
    assert listed.stdout.splitlines() == ["li.wei\tmaintenance\tchumen\tenabled"]

    from hub.config import load_hub_config
    from hub.service import Hub
    h = Hub(load_hub_config(config), ManualClock(1_764_196_800.0))
    try:
        b = Browser(h)
        b.get(SIGNIN)
        assert b.post(SIGNIN, {"name": "li.wei", "password": secret}).status_code == 303
        assert b.get("/console/").status_code == 200
    finally:
        h.close()
    assert _cli("disable", "li.wei", "--config", str(config)).returncode == 0
    assert _cli("list", "--config", str(config)).stdout.split("\t")[-1].strip() == "disabled"


@pytest.mark.parametrize(("console", "key"), [
    ({"idle_minute": 5}, "console.idle_minute"),
    ({"idle_minutes": 0}, "console.idle_minutes"),
    ({"idle_minutes": 10 ** 30}, "console.idle_minutes"),
    ({"secure_cookies": "yes please"}, "console.secure_cookies"),
])
def test_console_keys_are_checked(tmp_path, console, key):
    from hub.config import parse_hub_config
    from yizhan.config import ConfigError
    with pytest.raises(ConfigError) as err:
        parse_hub_config({"mqtt": {"host": "127.0.0.1"}, "database": "sqlite:///x.db",
                          "console": console})
    assert key in str(err.value)


def test_a_hub_without_the_console_answers_the_api_only(tmp_path):
    from hub.config import parse_hub_config
    from hub.service import Hub
    h = Hub(parse_hub_config({"mqtt": {"host": "127.0.0.1", "port": 1},
                              "database": f"sqlite:///{tmp_path / 'hub.db'}",
                              "console": {"enabled": False}}), ManualClock(1_764_196_800.0))
    try:
        client = h.app.test_client()
        assert client.get("/").status_code == 404
        assert client.get("/console/signin").status_code == 404
        assert client.get("/console/signin").is_json
    finally:
        h.close()


def test_an_address_is_locked_only_after_many_names_fail_from_it(hub):
    from hub.console.auth import MAX_ADDRESS_FAILURES
    b = Browser(hub)
    b.get(SIGNIN)
    # One guesser trying many names from a depot's shared address ...
    for i in range(MAX_ADDRESS_FAILURES - 1):
        assert b.post(SIGNIN, {"name": f"guess{i}", "password": "wrong password!"}
                      ).status_code == 401
    # ... has not locked out the others behind that address
    assert b.post(SIGNIN, {"name": "desk", "password": PASSWORD}).status_code == 303
    b = Browser(hub)
    b.get(SIGNIN)
    b.post(SIGNIN, {"name": "guess-last", "password": "wrong password!"})
    # until the address's own limit: then nobody signs in from it for a while
    assert b.post(SIGNIN, {"name": "boss", "password": PASSWORD}).status_code == 429
