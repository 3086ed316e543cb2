"""The kiosk's client of the agent's local API (docs/agent-api.md) — its only backend.

The kiosk never talks to the hub: a rider must be able to borrow while the
station is offline. Every call opens one short HTTP connection to the agent on
loopback (or its Unix socket) and returns the decoded JSON body::

    agent = AgentClient("http://127.0.0.1:8701")
    agent.station()["chargers"]["ready"]          # [{"slot": 7, "charge": 98}, ...]
    attempt = agent.borrow("r:5e8f0c1d2e3f4a5b6c7d8e9f")

Only rider ids go out; the phone number never reaches this module.
:class:`AgentUnavailable` means the agent did not answer (starting, stopped,
crashed): the kiosk shows "out of service". :class:`AgentError` is a refusal
with the API's error code (``bad_pin``, ``locked_out``, ``session_ended`` ...).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["ATTEMPT_RE", "CLAIM_RE", "SESSION_RE", "AgentClient", "AgentError",
           "AgentUnavailable"]

#: Ids the agent hands out (``b-`` attempts, ``m-`` maintenance sessions, ``t-``
#: return claims).
ATTEMPT_RE = re.compile(r"^b-[0-9a-f]{16}\Z")
SESSION_RE = re.compile(r"^m-[0-9a-f]{16}\Z")
CLAIM_RE = re.compile(r"^t-[0-9a-f]{16}\Z")


class AgentUnavailable(Exception):
    """The agent's local API did not answer, or answered something unusable."""


class AgentError(Exception):
    """The agent refused a request: ``status``, ``code`` (``bad_pin`` ...) and extras
    such as ``tries_left`` or ``locked_until``."""

    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.extra = status, code, message, extra


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """Calls the agent at ``url`` (``http://127.0.0.1:8701``) or on ``unix_socket``."""

    def __init__(self, url: str = "http://127.0.0.1:8701", unix_socket: str | None = None,
                 timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the agent's URL must be http://host:port, not {url!r}")
        self.url = url
        self.unix_socket = unix_socket
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port or 80

    def __repr__(self) -> str:
        return f"AgentClient({self.unix_socket or self.url!r})"

    # -- the endpoints ---------------------------------------------------------------

    def station(self) -> dict[str, Any]:
        return self._call("GET", "/v1/station")

    def borrow(self, rider: str, pin: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"rider": rider}
        if pin is not None:
            body["pin"] = pin
        return self._call("POST", "/v1/borrow", body)["attempt"]

    def attempt(self, attempt_id: str) -> dict[str, Any]:
        _check(ATTEMPT_RE, attempt_id)
        return self._call("GET", f"/v1/borrow/{attempt_id}")["attempt"]

    def returns(self, since_ms: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/returns?since={int(since_ms)}")["returns"]

    def claim_return(self, rider: str) -> dict[str, Any]:
        """Where the cabinet cannot read bank ids: open a slot for ``rider``'s return."""
        return self._call("POST", "/v1/returns/claim", {"rider": rider})["claim"]

    def return_claim(self, claim_id: str) -> dict[str, Any]:
        _check(CLAIM_RE, claim_id)
        return self._call("GET", f"/v1/returns/claim/{claim_id}")["claim"]

    def start_maintenance(self, staff: str, pin: str) -> dict[str, Any]:
        return self._call("POST", "/v1/maintenance", {"staff": staff, "pin": pin})["session"]

    def maintenance(self, session_id: str) -> dict[str, Any]:
        _check(SESSION_RE, session_id)
        return self._call("GET", f"/v1/maintenance/{session_id}")

    def release(self, session_id: str, slot: int | str) -> list[dict[str, Any]]:
        _check(SESSION_RE, session_id)
        return self._call("POST", f"/v1/maintenance/{session_id}/release",
                          {"slot": slot})["released"]

    def refill(self, session_id: str, what: str) -> dict[str, Any]:
        _check(SESSION_RE, session_id)
        return self._call("POST", f"/v1/maintenance/{session_id}/refill", {"what": what})

    def end_maintenance(self, session_id: str) -> dict[str, Any]:
        _check(SESSION_RE, session_id)
        return self._call("DELETE", f"/v1/maintenance/{session_id}")["session"]

    # -- the wire --------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_socket:
            return _UnixConnection(self.unix_socket, self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, quote(path, safe="/?=&:"), body=data, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise AgentUnavailable(f"the agent at {self} does not answer: {err}") from err
        finally:
            conn.close()
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise AgentUnavailable(f"the agent answered {status} without JSON") from None
        if status < 400:
            if not isinstance(decoded, dict):
                raise AgentUnavailable(f"the agent answered {status} with a non-object")
            return decoded
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if not isinstance(error, dict) or (status >= 500 and error.get("code") != "board_offline"):
            # internal (500) or a proxy's page: nothing the rider can act on.
            raise AgentUnavailable(f"the agent failed: {status} {error}")
        extra = {k: v for k, v in error.items() if k not in ("code", "message")}
        raise AgentError(status, str(error.get("code")), str(error.get("message")), extra)

    def __str__(self) -> str:
        return self.unix_socket or self.url


def _check(pattern: re.Pattern[str], value: str) -> None:
    # Ids come from URLs the browser sends back: never let one reach the agent's path
    # unless it is exactly the form the agent hands out.
    if not isinstance(value, str) or not pattern.match(value):
        raise AgentError(404, "not_found", f"no such id {value!r}", {})
