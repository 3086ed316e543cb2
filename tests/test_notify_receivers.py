"""Receivers the notification tests deliver to: real HTTP servers on loopback.

``Receiver`` is an ``http.server`` in a thread that records every request as
it arrived (method, path, query, headers, raw body) and answers from a script:
``answer(503, 503)`` makes the next two requests fail, then it goes back to its
default answer. For the generic webhook it checks ``X-Yizhan-Signature`` with
the notifier's secret (a wrong one gets 401) and records the delivery ids it
answers 2xx to, so a test can say "delivered exactly once". ``hold()`` keeps
the next request waiting until ``release()`` — a receiver that hangs.

The tests here check the receiver itself; the others import it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

SECRET = "webhook-secret-0123456789"


@dataclass
class Seen:
    """One request as the receiver got it."""

    method: str
    target: str  # path and query, as sent
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    status: int | None = None  # what it was answered

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery(self) -> str | None:
        return self.headers.get("x-yizhan-delivery")


class Receiver:
    """A real HTTP server on 127.0.0.1 (see the module)."""

    def __init__(self, *, secret: str | None = None,
                 default: tuple[int, bytes] = (200, b"ok")) -> None:
        self.secret = secret
        self.default = default
        self.requests: list[Seen] = []
        self.accepted: list[str] = []  # delivery ids answered 2xx
        self._script: deque[tuple[int, bytes]] = deque()
        self._lock = threading.Condition()
        self._hold = threading.Event()
        self._hold.set()
        self.held = threading.Event()  # set while a request waits in hold()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                seen = Seen("POST", self.path, parts.path, parse_qs(parts.query),
                            {k.lower(): v for k, v in self.headers.items()}, body)
                receiver._record(seen)
                if not receiver._hold.is_set():
                    receiver.held.set()
                    receiver._hold.wait(30)
                status, answer = receiver._answer_for(seen)
                # Recorded before it is sent, so a test that saw the sender finish
                # sees it too. (Whether the sender got it is the sender's to say.)
                receiver._answered(seen, status)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender is gone (killed, or timed out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True,
                                        name="test-receiver")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, *statuses: int | tuple[int, bytes]) -> None:
        """Answer the next requests so, in order (a bare status gets an empty body)."""
        with self._lock:
            for s in statuses:
                self._script.append(s if isinstance(s, tuple) else (s, b""))

    def hold(self) -> None:
        """Keep the next requests waiting (unanswered) until ``release()``."""
        self.held.clear()
        self._hold.clear()

    def release(self) -> None:
        self._hold.set()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Seen]:
        """Wait until ``n`` requests arrived; all of them."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"{len(self.requests)} requests arrived, not {n}")
            return list(self.requests)

    def wait_accepted(self, n: int, timeout: float = 5.0) -> list[str]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.accepted) >= n, timeout):
                raise AssertionError(f"{len(self.accepted)} deliveries accepted, not {n}")
            return list(self.accepted)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    # -- the server's threads --------------------------------------------------------------

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)
            self._lock.notify_all()

    def _answer_for(self, seen: Seen) -> tuple[int, bytes]:
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), seen.body,
                                            hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, seen.headers.get("x-yizhan-signature", "")):
                return 401, b'{"error":"bad signature"}'
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _answered(self, seen: Seen, status: int) -> None:
        with self._lock:
            seen.status = status
            if 200 <= status < 300 and seen.delivery:
                self.accepted.append(seen.delivery)
            self._lock.notify_all()


def receiver_factory() -> Iterator[Any]:
    """The ``receivers`` fixture: ``receivers(**Receiver options) -> Receiver``, all
    closed after the test. Other modules make it theirs with
    ``receivers = pytest.fixture(receiver_factory, name="receivers")``."""
    made: list[Receiver] = []

    def make(**options: Any) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for r in made:
        r.close()


receivers = pytest.fixture(receiver_factory, name="receivers")


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_receiver_checks_the_signature_and_records_accepted_ids(receivers) -> None:
    r = receivers(secret=SECRET)
    body = b'{"version":1}'
    good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert post(r.url + "/hook", body, {"X-Yizhan-Signature": "sha256=00",
                                        "X-Yizhan-Delivery": "d-1"}) == 401
    assert post(r.url + "/hook", body, {"X-Yizhan-Signature": good,
                                        "X-Yizhan-Delivery": "d-1"}) == 200
    r.wait_accepted(1)
    assert r.accepted == ["d-1"]
    assert [s.status for s in r.requests] == [401, 200]


def test_the_receiver_follows_its_script_then_its_default(receivers) -> None:
    r = receivers()
    r.answer(503, (500, b"x"))
    assert [post(r.url, b"{}") for _ in range(3)] == [503, 500, 200]
    assert r.requests[1].path == "/" and r.requests[1].body == b"{}"
