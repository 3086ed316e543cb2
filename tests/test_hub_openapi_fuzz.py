"""The hub's OpenAPI document and its code agree (issue 14, finding 13).

Schemathesis reads the document the real ``yizhan hub`` serves and sends each
operation examples it derives from it, valid and not, over HTTP; every answer must
be one the document lists, match its schema, and never be a 5xx. A valid example
the hub refuses fails (positive_data_acceptance), and so does an invalid one it
takes (negative_data_rejection). The example count is bounded so CI runs this in
well under a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from hub.alerting.alerts import MAX_MUTE_MS
from hub.http import openapi
from protocol.messages import MAX_REPLAY_SPAN
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml
from yizhan.config import parse_duration

SID = "yh-chumen-01"
ADMIN = "fuzz-admin-token-0123456789"
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def hub_base(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-hub")
    port = free_port()
    key = tmp / "fleet.key"  # riders register by phone: the hub needs the fleet key
    key.write_bytes(b"fuzz-fleet-key-0123456789abcdef")
    key.chmod(0o600)
    cfg = write_yaml(tmp / "hub.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": port},
        "api_tokens": [{"name": "fuzz", "token": ADMIN, "scopes": ["admin"]}],
        "fleet_key_file": str(key),
        "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"}],
    })
    base = f"http://127.0.0.1:{port}"
    procs = Procs(tmp)
    hub = procs.start("hub", "hub", "--config", str(cfg))
    try:
        wait_until(lambda: http_json(f"{base}/healthz")[0] == 200, 20, "hub healthz",
                   on_fail=hub.tail)
        yield base
    finally:
        procs.close()
        log = hub.tail(2000)
        # A 5xx is also caught by the checks; the log says why, for whoever reads a failure.
        assert "unhandled error" not in log, log


#: The document as the hub serves it (hub/http/openapi.py), loaded once: the examples
#: are derived from it, the answers come from the real hub over HTTP.
SCHEMA = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


#: Examples per operation: valid ones, and invalid ones (each must be a 4xx).
NEGATIVE_EXAMPLES = 25
DAY_MS = 24 * 3600_000
#: Room for the request's way to the hub: a start or end made "now + slack" is still
#: in the future when the hub reads it.
SLACK_MS = 60_000


# -- relations JSON Schema cannot state ----------------------------------------------------
#
# The document says them in words (from before to, a silence's end after its start, in
# the future and at most 30 days on, a replay spanning at most 100 000 seqs); the hub
# answers 400 to a request that breaks them. Valid examples are mapped to keep them,
# so a valid example the hub refuses fails positive_data_acceptance. Invalid examples
# are left as generated.


def _uptime_range(query: dict[str, Any]) -> None:
    if "from" not in query and "to" not in query:
        return
    query.pop("window", None)  # window or from..to, not both
    start = query.get("from", 0)
    end = query.get("to", start + 1)
    start, end = min(start, end), max(start, end)
    if start == end:
        start, end = (start - 1, end) if start > 0 else (start, end + 1)
    query["from"], query["to"] = start, end


def _replay_span(args: dict[str, Any]) -> None:
    low, high = sorted((args["from_seq"], args["to_seq"]))
    args["from_seq"], args["to_seq"] = low, low + (high - low) % MAX_REPLAY_SPAN


def _mute_times(body: dict[str, Any]) -> None:
    now = int(time.time() * 1000)
    starts = body.get("starts_at")
    if starts is not None:
        body["starts_at"] = starts = now + SLACK_MS + starts % (7 * DAY_MS)
    if "ends_at" in body:
        body["ends_at"] = (max(starts or now, now) + SLACK_MS
                           + body["ends_at"] % (MAX_MUTE_MS - 2 * SLACK_MS))
    else:
        ms = int(parse_duration(body["duration"], "duration") * 1000)
        if not 0 < ms <= MAX_MUTE_MS:
            body["duration"] = f"{1 + ms % MAX_MUTE_MS}ms"


def _denial_expiry(body: dict[str, Any]) -> None:
    if body.get("expires_at") is not None:
        body["expires_at"] = (int(time.time() * 1000) + SLACK_MS
                              + body["expires_at"] % (365 * DAY_MS))


def _whole(value: Any) -> Any:
    """5.0 as 5: JSON Schema calls 5.0 an integer, the hub (and the document's words)
    take integers written as integers only."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


@SCHEMA.hook
def map_case(ctx: Any, case: Any) -> Any:
    if not case.meta.generation.mode.is_positive:
        return case
    if case.query:
        case.query = _whole(case.query)
    if isinstance(case.body, dict):
        case.body = _whole(case.body)
    if "sid" in (case.path_parameters or {}):
        case.path_parameters["sid"] = SID  # the configured station, not a 404
    op = case.operation.definition.raw.get("operationId")
    if op == "getUptime":
        _uptime_range(case.query)
    elif op == "sendCommand" and case.body.get("cmd") == "replay":
        _replay_span(case.body["args"])
    elif op in ("addSilence", "addMaintenanceWindow"):
        _mute_times(case.body)
    elif op == "denyRider":
        _denial_expiry(case.body)
    return case


def _run(label: str, hub_base: str, mode: GenerationMode, examples: int) -> None:
    operation = OPERATIONS[label]

    # Schemathesis's own pytest plugin does not run on this pytest: drive Hypothesis here.
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    # The token is given to the generator, not added on sending: an invalid example
    # must be invalid in what it sends (a dropped Authorization header the test then
    # put back would be "invalid" and answered 200). Tokens: tests/test_hub_tokens.py.
    @given(case=operation.as_strategy(generation_mode=mode,
                                      headers={"Authorization": f"Bearer {ADMIN}"}))
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(base_url=hub_base)

    answers_as_documented()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_valid_requests_are_accepted_as_documented(label: str, hub_base: str) -> None:
    """Every check, positive_data_acceptance too: a valid example answered 400 fails."""
    _run(label, hub_base, GenerationMode.POSITIVE, MAX_EXAMPLES)


def _can_be_invalid(label: str) -> bool:
    """An operation with a body, or a parameter more specific than any string. The
    others (/healthz, /metrics, the document, GET /ack/{token}) take nothing that a
    request could get wrong, so there is no invalid example to send."""
    raw = OPERATIONS[label].definition.raw
    return "requestBody" in raw or any(
        set(p["schema"]) - {"type"} or p["schema"].get("type") != "string"
        for p in raw.get("parameters", []))


@pytest.mark.parametrize("label", sorted(filter(_can_be_invalid, OPERATIONS)))
def test_invalid_requests_are_refused_with_a_4xx(label: str, hub_base: str) -> None:
    """negative_data_rejection: never a 2xx for a request the document calls invalid,
    never a 5xx (not_a_server_error)."""
    _run(label, hub_base, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
