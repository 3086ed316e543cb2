"""Fake chat robots: a real HTTP server per platform, enforcing its documented limits.

Each is an ``http.server`` on loopback answering as the platform's robot does,
on the *injected* clock the hub's outbox uses (a ManualClock in tests and in
bench/notify_pacing.py), so a test moves time and the robot counts it:

* :class:`WeComRobot` — ``POST /cgi-bin/webhook/send?key=…``; at most 20
  messages in any 60 s, more refused with ``45009`` "api freq out of limit";
  an unknown key ``93000``; ``{"errcode": 0, "errmsg": "ok"}`` when sent.
* :class:`DingTalkRobot` — ``POST /robot/send?access_token=…&timestamp=…&sign=…``;
  at most 20 in any 60 s: the 21st is refused with ``130101`` "send too fast"
  and the robot then refuses *everything* for 10 minutes; an unknown token
  ``300005``; a signature not matching the secret, or a timestamp more than
  an hour off, ``310000``.
* :class:`FeishuRobot` — ``POST /open-apis/bot/v2/hook/…``; at most 100 in any
  60 s and 5 in any second, more refused with ``11232`` "frequency limited";
  an unknown hook ``19001``; a bad signature or a stale timestamp ``19021``.
  Feishu answers refusals with HTTP 400 and the JSON code (the code decides);
  ``{"code": 0, "msg": "success"}`` when sent.

The windows are sliding, the strictest reading of "N a minute": a pace that
passes here passes a platform counting calendar minutes too. Every request is
kept as :class:`Heard` (when, on the robot's clock, its body, its code), so a
test can say "no refusal", "the urgent ones first", and when the last one landed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from bisect import bisect_right
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote_plus, urlsplit

from yizhan.clock import Clock

#: The most a robot reads of one request (the platforms cap theirs at 20 KB).
MAX_REQUEST = 64 * 1024


@dataclass
class Heard:
    """One request as the robot got it."""

    at: float  # the robot's clock, seconds
    body: Any  # the JSON it carried (None when not JSON)
    code: int  # what the robot answered: 0 is sent
    status: int = 200

    @property
    def accepted(self) -> bool:
        return self.code == 0

    @property
    def text(self) -> str:
        """Everything a person would read in it, as one string."""
        return json.dumps(self.body, ensure_ascii=False)


class FakeRobot:
    """One platform's robot (see the module); ``url`` is what a notifier points at."""

    PLATFORM: ClassVar[str]
    CODE: ClassVar[str] = "errcode"
    MESSAGE: ClassVar[str] = "errmsg"
    #: (count, window seconds) — each enforced as a sliding window.
    LIMITS: ClassVar[tuple[tuple[int, float], ...]]
    TOO_FAST: ClassVar[tuple[int, str]]
    #: Seconds the robot refuses everything after one message too many.
    BLOCK: ClassVar[float] = 0.0
    REFUSAL_STATUS: ClassVar[int] = 200

    def __init__(self, clock: Clock, *, token: str = "robot-token-0123",
                 secret: str | None = None) -> None:
        self.clock = clock
        self.token = token
        self.secret = secret
        self.heard: list[Heard] = []
        self._arrivals: list[float] = []  # of requests counted against the limits
        self._blocked_until = 0.0
        self._lock = threading.Condition()
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_REQUEST)
                raw = self.rfile.read(length)
                status, answer = robot._serve(urlsplit(self.path), raw)
                data = json.dumps(answer, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True, name=f"fake-{self.PLATFORM}")
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- what the tests read -------------------------------------------------------------

    @property
    def accepted(self) -> list[Heard]:
        with self._lock:
            return [h for h in self.heard if h.accepted]

    @property
    def refused(self) -> list[Heard]:
        with self._lock:
            return [h for h in self.heard if not h.accepted]

    def wait_heard(self, n: int, timeout: float = 5.0) -> list[Heard]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.heard) >= n, timeout):
                raise AssertionError(f"{self.PLATFORM}: {len(self.heard)} requests, not {n}")
            return list(self.heard)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the platform ----------------------------------------------------------------------

    def _serve(self, target: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        now = self.clock.now()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        code, message = self._check(target, body, now)
        if code == 0:
            code, message = self._count(now)
        with self._lock:
            status = 200 if code == 0 else self.REFUSAL_STATUS
            self.heard.append(Heard(now, body, code, status))
            self._lock.notify_all()
        return status, {self.CODE: code, self.MESSAGE: message}

    def _count(self, now: float) -> tuple[int, str]:
        """The platform's limits: one more now, or refused (and maybe blocked)."""
        with self._lock:
            if now < self._blocked_until:
                return self.TOO_FAST
            for count, window in self.LIMITS:
                recent = len(self._arrivals) - bisect_right(self._arrivals, now - window)
                if recent >= count:
                    if self.BLOCK:
                        self._blocked_until = now + self.BLOCK
                    return self.TOO_FAST
            self._arrivals.append(now)
            return 0, self.ok_message

    ok_message = "ok"

    def _check(self, target: Any, body: Any, now: float) -> tuple[int, str]:
        """The address, the signature and the body: (0, "") when all is right."""
        raise NotImplementedError


class WeComRobot(FakeRobot):
    PLATFORM = "wecom"
    LIMITS = ((20, 60.0),)
    TOO_FAST = (45009, "api freq out of limit")

    @property
    def url(self) -> str:
        return f"{self.base}/cgi-bin/webhook/send?key={self.token}"

    def _check(self, target: Any, body: Any, now: float) -> tuple[int, str]:
        key = parse_qs(target.query).get("key", [""])[0]
        if target.path != "/cgi-bin/webhook/send" or key != self.token:
            return 93000, "invalid webhook url"
        if not isinstance(body, dict) or body.get("msgtype") not in ("text", "markdown"):
            return 40008, "invalid message type"
        content = (body.get(body["msgtype"]) or {}).get("content")
        if not content:
            return 44004, "empty content"
        return 0, ""


class DingTalkRobot(FakeRobot):
    PLATFORM = "dingtalk"
    LIMITS = ((20, 60.0),)
    TOO_FAST = (130101, "send too fast, exceed 20 times per minute")
    BLOCK = 600.0

    @property
    def url(self) -> str:
        return f"{self.base}/robot/send?access_token={self.token}"

    def _check(self, target: Any, body: Any, now: float) -> tuple[int, str]:
        query = parse_qs(target.query)
        if target.path != "/robot/send" or query.get("access_token", [""])[0] != self.token:
            return 300005, "token is not exist"
        if self.secret:
            timestamp = query.get("timestamp", [""])[0]
            sign = query.get("sign", [""])[0]
            if not timestamp.isdigit() or abs(int(timestamp[:16]) / 1000 - now) > 3600:
                return 310000, "sign not match, more: [timestamp is invalid]"
            to_sign = f"{timestamp}\n{self.secret}".encode()
            want = base64.b64encode(hmac.new(self.secret.encode(), to_sign,
                                             hashlib.sha256).digest()).decode()
            # parse_qs has already undone the URL-encoding of the sign.
            if not hmac.compare_digest(want, sign) and quote_plus(want) != sign:
                return 310000, "sign not match"
        if not isinstance(body, dict) or body.get("msgtype") not in ("text", "markdown"):
            return 400105, "unsupported msgtype"
        return 0, ""


class FeishuRobot(FakeRobot):
    PLATFORM = "feishu"
    CODE = "code"
    MESSAGE = "msg"
    LIMITS = ((100, 60.0), (5, 1.0))
    TOO_FAST = (11232, "frequency limited")
    REFUSAL_STATUS = 400
    ok_message = "success"

    @property
    def url(self) -> str:
        return f"{self.base}/open-apis/bot/v2/hook/{self.token}"

    def _check(self, target: Any, body: Any, now: float) -> tuple[int, str]:
        if target.path != f"/open-apis/bot/v2/hook/{self.token}":
            return 19001, "param invalid: incoming webhook access token invalid"
        if not isinstance(body, dict):
            return 9499, "Bad Request"
        if self.secret:
            timestamp = str(body.get("timestamp") or "")
            if not timestamp.isdigit() or abs(int(timestamp[:12]) - now) > 3600:
                return 19021, "sign match fail or timestamp is not within one hour"
            key = f"{timestamp}\n{self.secret}".encode()
            want = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
            if not hmac.compare_digest(want, str(body.get("sign") or "")):
                return 19021, "sign match fail or timestamp is not within one hour"
        if body.get("msg_type") not in ("text", "interactive", "post"):
            return 9499, "Bad Request"
        return 0, ""


ROBOTS: dict[str, type[FakeRobot]] = {
    cls.PLATFORM: cls for cls in (WeComRobot, DingTalkRobot, FeishuRobot)}
