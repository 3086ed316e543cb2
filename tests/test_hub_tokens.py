"""API tokens with names and scopes (issue 14, finding 2; contract §11, §14).

A dashboard's token must read and nothing else: every operation of the OpenAPI
document is tried with a token of each scope, on the real app over the Flask
test client, and once on a real ``yizhan hub`` process over HTTP.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hub.config import SCOPES, parse_hub_config
from hub.config.tokens import parse_api_tokens
from hub.http import openapi
from hub.storage.schema import alerts as alerts_table
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from tests.test_hub_api import SID, StandInHub, bring_online, hub_factory
from yizhan.config import ConfigError, Section

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: One token a scope, each secret distinct from its name so a leak is visible.
SECRETS = {scope: f"S3CRET-{scope}-{'x' * 16}" for scope in SCOPES}
SECRETS["default"] = "S3CRET-default-yyyyyyyyyyyy"
SECRETS["legacy"] = "S3CRET-legacy-zzzzzzzzzzzzz"
TOKENS: list[Any] = [{"name": f"{scope}-bot", "token": SECRETS[scope], "scopes": [scope]}
                     for scope in SCOPES]
TOKENS.append({"name": "dashboard", "token": SECRETS["default"]})  # no scopes: read
TOKENS.append(SECRETS["legacy"])  # the old bare form: every scope, deprecated
#: What each placeholder of a documented path is filled with.
PATH_ARGS = {"sid": SID, "alert_id": "a-00", "command_id": "c-00", "silence_id": "s-00",
             "window_id": "w-00", "staff_id": "li", "rider_id": "r:" + "0" * 24}


def operations() -> list[tuple[str, str, str]]:
    """(method, concrete path, scope) of every documented operation that takes a token."""
    out = []
    for path, item in openapi.document()["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:
                continue
            out.append((method.upper(), path.format(**PATH_ARGS), op["x-yizhan-scope"]))
    return out


# -- the configuration ------------------------------------------------------------------


def tokens_of(entries: Any, base: Path | None = None, **more: Any) -> Any:
    return parse_api_tokens(Section({"api_tokens": entries, **more}), base)


def test_entries_get_names_scopes_and_read_by_default(tmp_path: Path) -> None:
    (tmp_path / "grafana.token").write_text("from-a-file-0123456789\n")
    got = tokens_of([{"name": "grafana", "token_file": "grafana.token"},
                     {"name": "oncall", "token": "inline-0123456789abc",
                      "scopes": ["read", "ack"]}], tmp_path)
    assert [(t.name, t.secret, sorted(t.scopes), t.legacy) for t in got] == [
        ("grafana", "from-a-file-0123456789", ["read"], False),
        ("oncall", "inline-0123456789abc", ["ack", "read"], False)]
    assert got[0].allows("read") and not got[0].allows("command")
    assert "from-a-file" not in repr(got[0])


@pytest.mark.parametrize(("entries", "key", "words"), [
    ([{"name": "a", "token": "short"}], "api_tokens[0].token", "at least 16"),
    ([{"name": "a", "token": "0123456789abcdef", "scopes": ["write"]}],
     "api_tokens[0].scopes[0]", "unknown scope 'write'"),
    ([{"name": "a", "token": "0123456789abcdef", "scopes": []}], "api_tokens[0].scopes",
     "list of scopes"),
    ([{"token": "0123456789abcdef"}], "api_tokens[0].name", "is required"),
    ([{"name": "a b", "token": "0123456789abcdef"}], "api_tokens[0].name", "does not match"),
    ([{"name": "a", "token": "0123456789abcdef", "token_file": "x"}], "api_tokens[0].token",
     "one of them"),
    ([{"name": "a"}], "api_tokens[0].token", "one of them"),
    ([{"name": "a", "token": "0123456789abcdef", "scope": ["read"]}], "api_tokens[0].scope",
     "unknown key"),
    ([{"name": "a", "token": "0123456789abcdef"}, {"name": "a", "token": "fedcba9876543210"}],
     "api_tokens", "given twice"),
    ([{"name": "a", "token": "0123456789abcdef"}, {"name": "b", "token": "0123456789abcdef"}],
     "api_tokens", "same token"),
    ([{"name": "a", "token_file": "missing"}], "api_tokens[0].token_file", "cannot read"),
    ([42], "api_tokens[0]", "token_file"),
])
def test_a_wrong_entry_names_its_key_and_never_echoes_a_secret(
        tmp_path: Path, entries: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tokens_of(entries, tmp_path)
    assert caught.value.key == key and words in str(caught.value)
    assert "0123456789abcdef" not in str(caught.value)


def test_a_bare_token_keeps_every_scope_and_is_warned_without_its_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tokens").write_text("file-token-0123456789\n")
    with caplog.at_level(logging.WARNING, logger="hub.config.tokens"):
        got = tokens_of(["bare-token-0123456789"], tmp_path, api_tokens_file="tokens")
    assert [(t.name, t.legacy, t.scopes) for t in got] == [
        ("api_tokens[0]", True, frozenset(SCOPES)), ("api_tokens_file[0]", True, frozenset(SCOPES))]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("deprecated" in w for w in warnings)
    assert not any("bare-t" in w or "file-t" in w for w in warnings)


# -- every route against every scope, on the real app ---------------------------------------


@pytest.fixture
def hub(database_url: str, broker: Any) -> Iterator[StandInHub]:
    config = parse_hub_config({"database": database_url, "api_tokens": TOKENS})
    with hub_factory(database_url, broker) as make:
        hub = make(api_tokens=config.api_tokens)
        bring_online(hub)
        yield hub


def call(hub: StandInHub, method: str, path: str, secret: str | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return hub.app.test_client().open(path, method=method, headers=headers, **kw)


@SQLITE_ONLY
def test_each_scope_opens_exactly_its_routes_and_admin_opens_all(hub: StandInHub) -> None:
    ops = operations()
    assert {scope for _m, _p, scope in ops} == {"read", "ack", "silence", "command",
                                                "directory"}
    for holder in [*SCOPES, "default", "legacy"]:
        for method, path, scope in ops:
            resp = call(hub, method, path, SECRETS[holder])
            allowed = holder in (scope, "admin", "legacy") or (holder == "default"
                                                                and scope == "read")
            if allowed:
                assert resp.status_code not in (401, 403), (holder, method, path, resp.json)
            else:
                assert resp.status_code == 403, (holder, method, path, resp.json)
                assert resp.json["error"]["code"] == "forbidden"


@SQLITE_ONLY
def test_a_read_token_reads_and_cannot_command_ack_or_silence(hub: StandInHub) -> None:
    read = SECRETS["read"]
    assert call(hub, "GET", f"/api/v1/stations/{SID}", read).status_code == 200
    alert = hub.alerts.raise_alert("water_low", SID, "warning", "水位低")
    for path, body in [(f"/api/v1/stations/{SID}/commands", {"cmd": "unlock",
                                                             "args": {"slot": 1}}),
                       (f"/api/v1/alerts/{alert['id']}/ack", None),
                       ("/api/v1/silences", {"sid": SID, "duration": "30d"})]:
        assert call(hub, "POST", path, read, json=body).status_code == 403, path
    # Nothing happened: the alert still fires, no silence, no command.
    assert hub.alerts.get(alert["id"])["state"] == "firing"
    assert hub.alerts.mutes.list("silence", include_ended=True) == []


@SQLITE_ONLY
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", "Bearer ",
                                    f"Basic {SECRETS['admin']}"])
def test_a_missing_or_wrong_token_is_401_on_every_route(hub: StandInHub, header: str) -> None:
    for method, path, _scope in operations():
        headers = {"Authorization": header} if header else {}
        resp = hub.app.test_client().open(path, method=method, headers=headers)
        assert resp.status_code == 401, (method, path)
        assert resp.json["error"]["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@SQLITE_ONLY
def test_records_and_logs_name_the_token_never_its_secret(
        hub: StandInHub, caplog: pytest.LogCaptureFixture) -> None:
    bodies = []
    with caplog.at_level(logging.DEBUG):
        alert = hub.alerts.raise_alert("water_low", SID, "warning", "水位低")
        acked = call(hub, "POST", f"/api/v1/alerts/{alert['id']}/ack", SECRETS["ack"])
        silence = call(hub, "POST", "/api/v1/silences", SECRETS["silence"],
                       json={"sid": SID, "duration": "1h"})
        sent = call(hub, "POST", f"/api/v1/stations/{SID}/commands", SECRETS["command"],
                    json={"cmd": "reload", "args": {}})
        command = call(hub, "GET", sent.headers["Location"], SECRETS["read"])
        legacy = call(hub, "POST", f"/api/v1/alerts/{alert['id']}/resolve", SECRETS["legacy"])
        refused = call(hub, "POST", "/api/v1/silences", SECRETS["read"], json={})
        bodies = [r.get_data(as_text=True) for r in (acked, silence, sent, command, legacy,
                                                      refused)]
    assert acked.status_code == 200 and legacy.status_code == 200
    with hub.store.engine.connect() as conn:
        row = conn.execute(sa.select(alerts_table.c.acked_by, alerts_table.c.resolved_by)
                           .where(alerts_table.c.id == alert["id"])).one()
    assert tuple(row) == ("token:ack-bot", "token:api_tokens[7]")
    assert silence.json["created_by"] == "token:silence-bot"
    assert command.json["by"] == "token:command-bot"
    assert "read-bot" in refused.json["error"]["message"]
    # Every secret starts "S3CRET": not even a 6-character prefix shows.
    assert "S3CRET" not in caplog.text + "".join(bodies)


# -- a real hub process over HTTP ------------------------------------------------------------


def request(url: str, secret: str, method: str = "GET", body: Any = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {secret}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


def test_the_real_hub_refuses_a_read_token_a_command_and_logs_no_secret(
        tmp_path: Path, broker: Any, procs: Procs) -> None:
    (tmp_path / "grafana.token").write_text(SECRETS["read"] + "\n")
    port = free_port()
    cfg = write_yaml(tmp_path / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp_path / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": port},
        "api_tokens": [{"name": "grafana", "token_file": "grafana.token"},
                       {"name": "ops", "token": SECRETS["admin"], "scopes": ["admin"]},
                       SECRETS["legacy"]],
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站"}],
    })
    base = f"http://127.0.0.1:{port}"
    hub = procs.start("hub", "hub", "--config", str(cfg))
    wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
               on_fail=hub.tail)
    reads: Callable[[str], int] = lambda s: request(f"{base}/api/v1/stations", s)[0]  # noqa: E731
    assert (reads(SECRETS["read"]), reads(SECRETS["admin"]), reads(SECRETS["legacy"])) == \
        (200, 200, 200)
    status, body = request(f"{base}/api/v1/silences", SECRETS["read"], "POST",
                           {"sid": SID, "duration": "30d", "rule": "tamper"})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = request(f"{base}/api/v1/silences", SECRETS["admin"], "POST",
                           {"sid": SID, "duration": "1h"})
    assert (status, body["created_by"]) == (201, "token:ops")
    assert request(f"{base}/api/v1/stations", "not-a-token-0123456789")[0] == 401
    log = hub.tail(400)
    assert "api_tokens[2] is a bare token" in log and "deprecated" in log
    assert "S3CRET" not in log
