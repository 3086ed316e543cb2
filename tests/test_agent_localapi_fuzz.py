"""The station's local API and its OpenAPI document agree (issue 21, item 4).

Schemathesis reads the document (firmware/localapi/openapi.py) and sends each
operation examples derived from it, valid and not, over HTTP to a real
``yizhan agent`` process on a simulated cabinet; every answer must be one the
document lists, match its schema, and never be a 5xx. A valid example the
agent refuses fails (positive_data_acceptance), and so does an invalid one it
takes (negative_data_rejection). The agent takes a free port (``port: 0``) and
the test reads it from the agent's log. Example counts are bounded so the file
runs in well under a minute.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from firmware.directory import hash_pin
from firmware.localapi import create_local_api, openapi
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mqtt import publish
from tests.harness.procs import Procs, http_json, wait_until, write_yaml

SID = "yh-fuzz-agent-01"
SLOTS = 12
STAFF, STAFF_PIN = "li", "2468"
RIDER = "r:5e8f0c1d2e3f4a5b6c7d8e9f"
MAX_EXAMPLES = 25
NEGATIVE_EXAMPLES = 25
#: The Directory's mark: /v1/station shows it once the directory is applied (a login
#: tried before would count as a wrong PIN).
LOAN_HOURS = 12
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}

SCHEMA = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


class _Agent:
    base = ""
    session: str | None = None


AGENT = _Agent()


def _post(path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(AGENT.base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def agent_base(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-agent")
    (tmp / "fleet.key").write_bytes(b"fuzz-fleet-key-0123456789abcdef")
    # The hub's retained Directory names one staff member, so the maintenance
    # operations can be sent a live session (else every one of them is a 404).
    directory = m.Directory(rev=1, ts=int(time.time() * 1000),
                            policy=m.Policy(loan_hours=LOAN_HOURS),
                            staff=(m.StaffEntry(id=STAFF, name="李师傅",
                                                pin=hash_pin(STAFF_PIN)),))
    publish(broker, topic(SID, Kind.DIRECTORY), m.encode(directory), retain=True)
    cfg = write_yaml(tmp / "station.yaml", {
        "hardware": "sim",
        "station": {"id": SID, "name": "楚门镇先锋驿站"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp / "station"),
        "fleet_key_file": str(tmp / "fleet.key"),
        "local_api": {"host": "127.0.0.1", "port": 0},  # a free port, read from the log
        "lockers": {"slots": SLOTS, "poll_interval": "250ms"},
        "sim": QUIET_SIM,
    })
    procs = Procs(tmp)
    agent = procs.start("agent", "agent", "--config", str(cfg))
    try:
        found: list[str] = []

        def port_logged() -> bool:
            hit = re.search(r"local API for the kiosk on (http://127\.0\.0\.1:\d+)",
                            agent.tail(200))
            if hit:
                found.append(hit.group(1))
            return bool(hit)

        wait_until(port_logged, 20, "the agent's local API", on_fail=agent.tail)
        AGENT.base = found[0]
        wait_until(lambda: http_json(AGENT.base + "/v1/station")[1]
                   .get("online", {}).get("locker"), 20, "the board answers",
                   on_fail=agent.tail)
        wait_until(lambda: http_json(AGENT.base + "/v1/station")[1]["lending"]["loan_hours"]
                   == LOAN_HOURS, 20, "the directory applied", on_fail=agent.tail)
        yield AGENT.base
    finally:
        publish(broker, topic(SID, Kind.DIRECTORY), b"", retain=True)
        procs.close()
        log = agent.tail(5000)
        assert "local API failed" not in log, log
        assert "Traceback" not in log, log


def _live_session() -> str:
    """A maintenance session that is open: the one held, or a fresh login (a
    DELETE example ends it; a borrow test does not need it)."""
    if AGENT.session is not None:
        code, body = http_json(f"{AGENT.base}/v1/maintenance/{AGENT.session}")
        if code == 200 and body["session"]["active"]:
            return AGENT.session
    code, body = _post("/v1/maintenance", {"staff": STAFF, "pin": STAFF_PIN})
    assert code == 201, body
    AGENT.session = body["session"]["id"]
    return AGENT.session


def _no_session() -> None:
    """Borrowing is refused while staff are logged in: log them out first."""
    if AGENT.session is not None:
        req = urllib.request.Request(f"{AGENT.base}/v1/maintenance/{AGENT.session}",
                                     method="DELETE")
        with urllib.request.urlopen(req, timeout=10):
            AGENT.session = None


def _started(path: str, body: dict, key: str) -> str:
    """The id of an attempt or claim this station handed out (a rider who taps
    twice gets the one under way)."""
    code, answer = _post(path, body)
    assert code == 202, answer
    return answer[key]["id"]


def _whole(value: Any) -> Any:
    """5.0 as 5: JSON Schema calls 5.0 an integer; the agent takes integers written
    as integers only (a slot of 5.0 is refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


@SCHEMA.hook
def map_case(ctx: Any, case: Any) -> Any:
    if not case.meta.generation.mode.is_positive:
        return case
    if isinstance(case.body, dict):
        case.body = _whole(case.body)
    if "session_id" in (case.path_parameters or {}):
        case.path_parameters["session_id"] = _live_session()
    op = case.operation.definition.raw.get("operationId")
    if op in ("borrow", "getAttempt"):
        _no_session()
    if op == "getAttempt":
        case.path_parameters["attempt_id"] = _started("/v1/borrow", {"rider": RIDER}, "attempt")
    elif op == "getClaim":
        case.path_parameters["claim_id"] = _started("/v1/returns/claim", {"rider": RIDER},
                                                    "claim")
    elif op == "releaseSlots" and isinstance(case.body.get("slot"), int):
        # One of this cabinet's slots: the document says so in words.
        case.body["slot"] = 1 + (case.body["slot"] - 1) % SLOTS
    return case


def _run(label: str, mode: GenerationMode, examples: int) -> None:
    operation = OPERATIONS[label]

    # Schemathesis's own pytest plugin does not run on this pytest: drive Hypothesis here.
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(base_url=AGENT.base)

    answers_as_documented()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_valid_requests_are_accepted_as_documented(label: str, agent_base: str) -> None:
    """Every check, positive_data_acceptance too: a valid example answered 400 fails."""
    _run(label, GenerationMode.POSITIVE, MAX_EXAMPLES)


def _can_be_invalid(label: str) -> bool:
    """An operation with a body or a parameter; GET /v1/station and the document
    take nothing a request could get wrong."""
    raw = OPERATIONS[label].definition.raw
    return "requestBody" in raw or bool(raw.get("parameters"))


@pytest.mark.parametrize("label", sorted(filter(_can_be_invalid, OPERATIONS)))
def test_invalid_requests_are_refused_with_a_4xx(label: str, agent_base: str) -> None:
    """negative_data_rejection: never a 2xx for a request the document calls invalid,
    never a 5xx (not_a_server_error)."""
    _run(label, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)


def test_the_agent_serves_the_document(agent_base: str) -> None:
    code, served = http_json(agent_base + openapi.PATH)
    assert code == 200
    assert served == openapi.document()


def test_every_route_is_in_the_document_and_every_operation_is_a_route() -> None:
    app = create_local_api(None, dict, None)  # routes only: nothing is called
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path, method) for path, item in openapi.document()["paths"].items()
                 for method in item}
    assert routes == described
