"""What a chat platform's answer means: sent, try again (and when), or give up.

Each notifier sends to a real HTTP server on loopback that answers with the
status, headers and body a platform (or a proxy in front of it) would: the
platform's JSON code decides whatever the HTTP status, a rate limit says so
and how long to wait, a ``Retry-After`` header is read as seconds or as an
HTTP date against the hub clock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hub.alerting.notify import build_notifiers
from hub.alerting.notify.base import MAX_RETRY_AFTER, DeliveryFailed, Notifier, retry_after
from hub.config import NotifierSpec
from tests.test_notify_platforms import STATION, Hub, an_alert

NOW = 1_764_196_800.0
BODY = '{"msgtype":"markdown","markdown":{"content":"驿站"}}'


class Platform:
    """A real HTTP server answering each POST with the next scripted
    (status, headers, body), or the default."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, dict[str, str], bytes]] = deque()
        self.default = (200, {}, b'{"errcode":0,"errmsg":"ok"}')
        self.posts = 0
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                platform.posts += 1
                status, headers, body = (platform.script.popleft() if platform.script
                                         else platform.default)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True, name="test-platform")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, status: int, body: bytes, **headers: str) -> None:
        self.script.append((status, {k.replace("_", "-"): v for k, v in headers.items()},
                            body))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform() -> Iterator[Platform]:
    p = Platform()
    yield p
    p.close()


def notifier(kind: str, p: Platform) -> Notifier:
    url = {"wecom": f"{p.url}/cgi-bin/webhook/send?key=k-1",
           "dingtalk": f"{p.url}/robot/send?access_token=t-1",
           "feishu": f"{p.url}/open-apis/bot/v2/hook/xyz"}[kind]
    (n,) = build_notifiers([NotifierSpec(name=f"n-{kind}", type=kind, url=url,
                                         timeout=5.0)]).values()
    return n


def outcome(n: Notifier) -> DeliveryFailed | None:
    try:
        n.send(BODY, "d-1", NOW)
    except DeliveryFailed as err:
        return err
    return None


# -- the code decides -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status", "answer", "expect"), [
    # Feishu answers refusals with HTTP 400 and a code: the code decides.
    ("feishu", 400, b'{"code":9499,"msg":"Bad Request","data":{}}', "permanent"),
    ("feishu", 400, b'{"code":19021,"msg":"sign match fail"}', "permanent"),
    ("feishu", 400, b'{"code":11232,"msg":"frequency limited psm"}', "rate_limited"),
    ("feishu", 400, b'{"code":12345,"msg":"new"}', "retry"),  # unknown: never dropped
    ("feishu", 200, b'{"code":0,"msg":"success","data":{}}', "sent"),
    ("feishu", 200, b'{"StatusCode":0,"StatusMessage":"success"}', "sent"),
    # DingTalk: a token that does not exist, a message too long: no retry mends them.
    ("dingtalk", 200, b'{"errcode":300005,"errmsg":"token is not exist"}', "permanent"),
    ("dingtalk", 400, b'{"errcode":300005,"errmsg":"token is not exist"}', "permanent"),
    ("dingtalk", 200, b'{"errcode":460101,"errmsg":"message too long, exceed 20000 bytes"}',
     "permanent"),
    ("dingtalk", 200, b'{"errcode":130101,"errmsg":"send too fast"}', "rate_limited"),
    ("dingtalk", 200, b'{"errcode":-1,"errmsg":"busy"}', "retry"),
    ("wecom", 200, b'{"errcode":45009,"errmsg":"api freq out of limit"}', "rate_limited"),
    ("wecom", 200, b'{"errcode":93000,"errmsg":"invalid webhook url"}', "permanent"),
    # A proxy's 503 around a platform's "ok" is not taken as sent.
    ("wecom", 503, b'{"errcode":0,"errmsg":"ok"}', "retry"),
    # No code at all: the status is all there is.
    ("wecom", 404, b"<html>not found</html>", "permanent"),
    ("wecom", 502, b"<html>bad gateway</html>", "retry"),
    ("wecom", 429, b"", "rate_limited"),
    ("wecom", 200, b"<html>captive portal</html>", "retry"),
    # Hostile or odd codes are no codes: true is not 0, "0" is not 0, nor is 0.0.
    ("wecom", 200, b'{"errcode":true}', "retry"),
    ("wecom", 200, b'{"errcode":"0"}', "retry"),
    ("wecom", 200, b'{"errcode":0.0}', "retry"),
    ("wecom", 200, b'{"errcode":1000000000000000000000000000000,"errmsg":"x"}', "retry"),
    ("wecom", 400, b'{"errcode":null}', "permanent"),
])
def test_the_platforms_code_decides_whatever_the_status(platform: Platform, kind: str,
                                                         status: int, answer: bytes,
                                                         expect: str) -> None:
    platform.answer(status, answer)
    err = outcome(notifier(kind, platform))
    assert platform.posts == 1
    if expect == "sent":
        assert err is None
        return
    assert err is not None
    assert err.permanent == (expect == "permanent"), err.reason
    assert err.rate_limited == (expect == "rate_limited"), err.reason
    if expect == "permanent":
        assert "not retried" in err.reason


def test_a_permanent_refusal_names_the_code_the_message_and_the_fix(platform: Platform) -> None:
    platform.answer(400, b'{"errcode":300005,"errmsg":"token is not exist"}')
    err = outcome(notifier("dingtalk", platform))
    assert err is not None and err.permanent
    for part in ("DingTalk error 300005", "token is not exist", "(HTTP 400)",
                 "copy its webhook address again"):
        assert part in err.reason, err.reason


def test_a_huge_or_hostile_errmsg_is_cut_and_keeps_no_ack_link(platform: Platform) -> None:
    msg = "x" * 50_000 + "/ack/SECRET-TOKEN"
    platform.answer(200, ('{"errcode":40058,"errmsg":"/ack/SECRET-TOKEN ' + msg + '"}').encode())
    err = outcome(notifier("wecom", platform))
    assert err is not None and err.permanent
    assert "SECRET-TOKEN" not in err.reason and len(err.reason) < 400


# -- how long to wait ---------------------------------------------------------------------


def test_dingtalk_over_its_rate_says_the_robot_is_blocked_for_ten_minutes(
        platform: Platform) -> None:
    platform.answer(200, b'{"errcode":130101,"errmsg":"send too fast, exceed 20 times per '
                         b'minute"}')
    err = outcome(notifier("dingtalk", platform))
    assert err is not None and err.rate_limited and not err.permanent
    assert err.retry_after == 600.0


def test_wecom_over_its_rate_waits_out_the_minute(platform: Platform) -> None:
    platform.answer(200, b'{"errcode":45009,"errmsg":"api freq out of limit"}')
    err = outcome(notifier("wecom", platform))
    assert err is not None and err.rate_limited and err.retry_after == 60.0


def test_retry_after_in_seconds_beats_the_documented_wait(platform: Platform) -> None:
    platform.answer(200, b'{"errcode":130101,"errmsg":"send too fast"}', Retry_After="42")
    err = outcome(notifier("dingtalk", platform))
    assert err is not None and err.rate_limited and err.retry_after == 42.0


def test_retry_after_as_an_http_date_is_read_against_the_hub_clock(platform: Platform) -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    platform.answer(400, b'{"code":11232,"msg":"frequency limited"}', Retry_After=when)
    err = outcome(notifier("feishu", platform))
    assert err is not None and err.rate_limited and err.retry_after == 90.0


def test_a_429_with_retry_after_and_no_code(platform: Platform) -> None:
    platform.answer(429, b"", Retry_After="7")
    err = outcome(notifier("feishu", platform))
    assert err is not None and err.rate_limited and err.retry_after == 7.0


def test_a_permanent_refusal_carries_no_wait(platform: Platform) -> None:
    platform.answer(200, b'{"errcode":300005,"errmsg":"token is not exist"}', Retry_After="5")
    err = outcome(notifier("dingtalk", platform))
    assert err is not None and err.permanent and err.retry_after is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("0", 0.0), ("120", 120.0), (" 3 ", 3.0),
    ("1" + "0" * 30, MAX_RETRY_AFTER),  # 10**30 seconds: a long time, not a crash
    (format_datetime(datetime.fromtimestamp(NOW - 50, UTC), usegmt=True), 0.0),  # past
    (format_datetime(datetime.fromtimestamp(NOW + 10**6, UTC), usegmt=True), MAX_RETRY_AFTER),
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    ("-5", None), ("1.5", None), ("soon", None), ("", None), ("٣", None),  # Arabic-Indic 3
    ("Sun, 06 Nov 99999 08:49:37 GMT", None), (None, None),
])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, NOW) == seconds


# -- in the hub's outbox ------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "state", "words"), [
    (b'{"code":9499,"msg":"Bad Request","data":{}}', "failed", "9499"),
    (b'{"code":11232,"msg":"frequency limited psm"}', "pending", "11232"),
])
def test_feishu_http_400_in_the_outbox(tmp_path: Path, platform: Platform, answer: bytes,
                                       state: str, words: str) -> None:
    """What the delivery row says after Feishu's HTTP 400: given up, or waiting."""
    hub = Hub(tmp_path)
    try:
        outbox = hub.outbox(NotifierSpec(name="chumen-feishu", type="feishu",
                                         url=f"{platform.url}/open-apis/bot/v2/hook/x"))
        platform.answer(400, answer)
        outbox.enqueue("chumen-feishu", "firing", an_alert(), STATION)
        outbox.send_due()
        (d,) = outbox.deliveries("a-0123456789abcdef")
        assert d["state"] == state and words in d["last_error"], d
        assert platform.posts == 1
    finally:
        hub.close()
