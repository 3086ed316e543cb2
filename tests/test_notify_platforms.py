"""Each chat platform's request against its documented format, and e-mail over SMTP.

The robots are stood in for by real HTTP servers on loopback that answer the
way the platforms do (HTTP 200 with a JSON code); the test then reads the
request as the platform would: the URL, the field names, the signature —
recomputed here from the platform's documentation with the fixed timestamp of
a ManualClock. E-mail goes through a real SMTP server (aiosmtpd) with STARTTLS
and a login.
"""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import json
import random
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import Outbox, build_notifiers
from hub.config import NotifierSpec
from hub.storage.store import Store
from hub.storage.writer import Writer
from tests.test_notify_receivers import Receiver, receiver_factory
from yizhan.clock import ManualClock

receivers = pytest.fixture(receiver_factory, name="receivers")

SID = "yh-chumen-01"
T0 = 1_764_196_800.0
T0_MS = int(T0 * 1000)
PUBLIC = "https://hub.example.cn"
STATION = {"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen", "slots": 12, "ready": 1,
           "faulty": 0}
OK_WECOM = (200, b'{"errcode":0,"errmsg":"ok"}')
OK_DING = (200, b'{"errcode":0,"errmsg":"ok"}')
OK_FEISHU = (200, b'{"code":0,"msg":"success","data":{}}')


def an_alert(**changes: Any) -> dict[str, Any]:
    alert = {"id": "a-0123456789abcdef", "rule": "water_empty", "sid": SID,
             "severity": "critical", "state": "firing", "summary": "水位空",
             "value": {"level": 0.0, "level_state": "empty"}, "started_at": T0_MS - 35 * 60_000,
             "acked_at": None, "resolved_at": None}
    alert.update(changes)
    return alert


class Hub:
    """Just what an outbox needs: a SQLite store, its writer, a ManualClock."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
        self.writer = Writer(self.store).start()
        self.clock = ManualClock(T0)
        self.links = AckLinks(b"k" * 32, PUBLIC, clock=self.clock)
        self.outboxes: list[Outbox] = []

    def outbox(self, *specs: NotifierSpec) -> Outbox:
        self.outboxes.append(Outbox(self.store, self.writer, self.clock, build_notifiers(specs),
                                    acklinks=self.links, rng=random.Random(1)))
        return self.outboxes[-1]

    def close(self) -> None:
        for o in self.outboxes:
            o.close()
        self.writer.close()
        self.store.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path)
    yield h
    h.close()


def ack_link_of(hub: Hub, notifier: str) -> str:
    return hub.links.url("a-0123456789abcdef", notifier, T0)


# -- WeCom ---------------------------------------------------------------------------------


def wecom(r: Receiver) -> NotifierSpec:
    return NotifierSpec(name="chumen-wecom", type="wecom",
                        url=f"{r.url}/cgi-bin/webhook/send?key=693a91f6-7xxx")


def test_wecom_posts_markdown_to_the_robot_address(hub: Hub, receivers) -> None:
    r = receivers(default=OK_WECOM)
    outbox = hub.outbox(wecom(r))
    outbox.enqueue("chumen-wecom", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    (seen,) = r.requests
    assert seen.path == "/cgi-bin/webhook/send" and seen.query == {"key": ["693a91f6-7xxx"]}
    assert seen.headers["content-type"].startswith("application/json")
    body = seen.json()
    assert list(body) == ["msgtype", "markdown"] and body["msgtype"] == "markdown"
    assert list(body["markdown"]) == ["content"]
    content = body["markdown"]["content"]
    assert len(content.encode()) <= 4096
    for part in ("【紧急】楚门镇先锋驿站：热水已空", "yh-chumen-01 · chumen", "热水已空（水位 0%）",
                 "请带桶装水/检查进水", "已 35 分钟", ack_link_of(hub, "chumen-wecom")):
        assert part in content, part
    assert '<font color="warning">' in content  # WeCom's own colour markup
    assert outbox.pending() == [] and outbox.deliveries("a-0123456789abcdef")[0]["state"] == \
        "delivered"


def test_a_wecom_message_stays_under_4096_bytes_and_keeps_its_link(hub: Hub,
                                                                   receivers) -> None:
    r = receivers(default=OK_WECOM)
    outbox = hub.outbox(wecom(r))
    outbox.enqueue("chumen-wecom", "firing", an_alert(summary="很长的说明" * 1500),
                   {**STATION, "name": "驿站" * 200})
    outbox.send_due()
    content = r.requests[0].json()["markdown"]["content"]
    assert len(content.encode()) <= 4096
    assert ack_link_of(hub, "chumen-wecom") in content


# -- DingTalk ------------------------------------------------------------------------------

DING_SECRET = "SEC0123456789abcdef0123456789abcdef"


def dingtalk(r: Receiver, secret: str | None = DING_SECRET) -> NotifierSpec:
    return NotifierSpec(name="chumen-ding", type="dingtalk",
                        url=f"{r.url}/robot/send?access_token=ding-token-1", secret=secret)


def documented_dingtalk_sign(timestamp: int, secret: str) -> str:
    # open.dingtalk.com, 自定义机器人 加签: HmacSHA256 of "timestamp\nsecret" with the
    # secret as key, Base64, then urlEncode.
    string_to_sign = f"{timestamp}\n{secret}".encode()
    code = hmac.new(secret.encode(), string_to_sign, digestmod=hashlib.sha256).digest()
    return quote_plus(base64.b64encode(code))


def test_dingtalk_signs_each_attempt_with_a_fresh_timestamp(hub: Hub, receivers) -> None:
    r = receivers(default=OK_DING)
    r.answer((200, b'{"errcode":130101,"errmsg":"send too fast"}'))
    outbox = hub.outbox(dingtalk(r))
    outbox.enqueue("chumen-ding", "firing", an_alert(), STATION)
    outbox.send_due()
    hub.clock.advance(600)  # 130101: DingTalk blocks the robot for ten minutes
    outbox.send_due()
    first, second = r.requests
    for seen, ts in ((first, T0_MS), (second, T0_MS + 600_000)):
        assert seen.path == "/robot/send"
        assert seen.query["access_token"] == ["ding-token-1"]
        assert seen.query["timestamp"] == [str(ts)]
        sign = documented_dingtalk_sign(ts, DING_SECRET)
        assert f"&sign={sign}" in seen.target  # URL-encoded once, as documented
    assert first.body == second.body  # the message itself is the stored bytes
    body = first.json()
    assert list(body) == ["msgtype", "markdown"] and body["msgtype"] == "markdown"
    assert list(body["markdown"]) == ["title", "text"]
    assert body["markdown"]["title"] == "【紧急】楚门镇先锋驿站：热水已空（水位 0%）"
    text = body["markdown"]["text"]
    assert "### 【紧急】" in text and "请带桶装水/检查进水" in text and "驿站" in text
    assert f"]({ack_link_of(hub, 'chumen-ding')})" in text
    assert outbox.pending() == []


def test_dingtalk_without_a_secret_sends_no_signature(hub: Hub, receivers) -> None:
    r = receivers(default=OK_DING)
    outbox = hub.outbox(dingtalk(r, secret=None))
    outbox.enqueue("chumen-ding", "firing", an_alert(), STATION)
    outbox.send_due()
    assert r.requests[0].query == {"access_token": ["ding-token-1"]}


def test_dingtalk_sign_mismatch_is_given_up_and_says_why(hub: Hub, receivers) -> None:
    r = receivers(default=(200, b'{"errcode":310000,"errmsg":"sign not match"}'))
    outbox = hub.outbox(dingtalk(r))
    outbox.enqueue("chumen-ding", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == "failed" and "310000" in d["last_error"]
    assert "secret" in d["last_error"] and outbox.failing() == ["chumen-ding"]


# -- Feishu --------------------------------------------------------------------------------

FEISHU_SECRET = "feishu-secret-abc123"


def feishu(r: Receiver, **changes: Any) -> NotifierSpec:
    spec = {"name": "chumen-feishu", "type": "feishu", "url": f"{r.url}/open-apis/bot/v2/hook/xyz",
            "secret": FEISHU_SECRET}
    spec.update(changes)
    return NotifierSpec(**spec)


def documented_feishu_sign(timestamp: int, secret: str) -> str:
    # open.feishu.cn, 自定义机器人 签名校验: HmacSHA256 with "timestamp\nsecret" as the
    # key over an empty message, then Base64.
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", digestmod=hashlib.sha256).digest()).decode()


def test_feishu_sends_a_signed_card_with_an_ack_button(hub: Hub, receivers) -> None:
    r = receivers(default=OK_FEISHU)
    outbox = hub.outbox(feishu(r))
    outbox.enqueue("chumen-feishu", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    (seen,) = r.requests
    assert seen.path == "/open-apis/bot/v2/hook/xyz"
    body = seen.json()
    assert list(body) == ["timestamp", "sign", "msg_type", "card"]
    assert body["timestamp"] == str(int(T0))
    assert body["sign"] == documented_feishu_sign(int(T0), FEISHU_SECRET)
    assert body["msg_type"] == "interactive"
    card = body["card"]
    assert card["header"]["template"] == "red"
    assert card["header"]["title"] == {"tag": "plain_text",
                                       "content": "【紧急】楚门镇先锋驿站：热水已空（水位 0%）"}
    div, action, note = card["elements"]
    assert div["tag"] == "div" and div["text"]["tag"] == "lark_md"
    assert "请带桶装水/检查进水" in div["text"]["content"]
    (button,) = action["actions"]
    assert button["tag"] == "button" and button["url"] == ack_link_of(hub, "chumen-feishu")
    assert note["elements"][0]["content"].startswith("驿站告警")
    assert len(seen.body) <= 20_000


def test_feishu_text_format_and_no_secret(hub: Hub, receivers) -> None:
    r = receivers(default=(200, b'{"StatusCode":0,"StatusMessage":"success"}'))  # older answer
    outbox = hub.outbox(feishu(r, secret=None, format="text"))
    outbox.enqueue("chumen-feishu", "resolved",
                   an_alert(state="resolved", resolved_at=T0_MS), STATION)
    outbox.send_due()
    body = r.requests[0].json()
    assert body == {"msg_type": "text", "content": {"text": body["content"]["text"]}}
    assert body["content"]["text"].startswith("【已恢复】楚门镇先锋驿站：热水已空")
    assert "/ack/" not in body["content"]["text"]
    assert outbox.pending() == []


def test_feishu_retries_later_with_a_fresh_signature(hub: Hub, receivers) -> None:
    r = receivers(default=OK_FEISHU)
    r.answer((200, b'{"code":11232,"msg":"frequency limited"}'))
    outbox = hub.outbox(feishu(r))
    outbox.enqueue("chumen-feishu", "firing", an_alert(), STATION)
    outbox.send_due()
    hub.clock.advance(7200)  # two hours: the first timestamp would be refused now
    outbox.send_due()
    first, second = (s.json() for s in r.requests)
    assert second["timestamp"] == str(int(T0) + 7200)
    assert second["sign"] == documented_feishu_sign(int(T0) + 7200, FEISHU_SECRET)
    assert first["card"] == second["card"]
    assert outbox.pending() == []


@pytest.mark.parametrize(("answer", "permanent"), [
    (b'{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}', True),
    (b'{"code":19024,"msg":"Key Words Not Found"}', True),
    (b'{"code":9499,"msg":"Bad Request"}', True),
    (b'{"code":11232,"msg":"frequency limited"}', False),
    (b'{"code":12345,"msg":"something new"}', False),  # unknown codes are retried
    (b'<html>gateway</html>', False),
])
def test_feishu_errors_are_retried_or_given_up(hub: Hub, receivers, answer: bytes,
                                               permanent: bool) -> None:
    r = receivers(default=(200, answer))
    outbox = hub.outbox(feishu(r))
    outbox.enqueue("chumen-feishu", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == ("failed" if permanent else "pending"), d


@pytest.mark.parametrize(("status", "state"), [(404, "failed"), (502, "pending"),
                                                (429, "pending")])
def test_http_errors_of_a_chat_platform(hub: Hub, receivers, status: int, state: str) -> None:
    r = receivers(default=(status, b""))
    outbox = hub.outbox(wecom(r))
    outbox.enqueue("chumen-wecom", "firing", an_alert(), STATION)
    outbox.send_due()
    assert outbox.deliveries("a-0123456789abcdef")[0]["state"] == state


# -- e-mail --------------------------------------------------------------------------------

MAIL_USER, MAIL_PASSWORD = "hub@example.cn", "mail-password-1"


class Mailbox:
    """What the SMTP server received, and the login it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content or envelope.content))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = (getattr(auth_data, "login", b"") == MAIL_USER.encode()
              and getattr(auth_data, "password", b"") == MAIL_PASSWORD.encode())
        if ok:
            self.logins.append(MAIL_USER)
        return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the relay's own CA, as in ca_file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp(certificate: tuple[Path, Path]) -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on loopback: STARTTLS required before AUTH, one login."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port,
                                     tls_context=context, require_starttls=True,
                                     authenticator=box.authenticate, auth_require_tls=True)
    controller.start()
    yield box, port
    controller.stop()


def mail_spec(port: int, cert: Path, **changes: Any) -> NotifierSpec:
    spec = {"name": "ops-mail", "type": "email", "host": "127.0.0.1", "port": port,
            "tls": "starttls", "username": MAIL_USER, "password": MAIL_PASSWORD,
            "sender": "yizhan@example.cn", "to": ("li@example.cn", "wang@example.cn"),
            "ca_file": str(cert), "timeout": 5.0}
    spec.update(changes)
    return NotifierSpec(**spec)


def test_email_over_starttls_with_a_chinese_subject_text_and_html(
        hub: Hub, smtp: tuple[Mailbox, int], certificate: tuple[Path, Path]) -> None:
    box, port = smtp
    outbox = hub.outbox(mail_spec(port, certificate[0]))
    did = outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    assert outbox.pending() == [], outbox.deliveries("a-0123456789abcdef")
    assert box.logins == [MAIL_USER]
    ((sender, rcpts, raw),) = box.messages
    assert sender == "yizhan@example.cn" and rcpts == ["li@example.cn", "wang@example.cn"]
    mail = email.message_from_bytes(raw, policy=default_policy)
    assert mail["Subject"] == "【紧急】楚门镇先锋驿站：热水已空（水位 0%）"
    # No message_id_domain: the from address's domain.
    assert mail["Message-ID"] == f"<{did}@example.cn>" and mail["X-Yizhan-Delivery"] == did
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",)).get_content()
    page = mail.get_body(("html",)).get_content()
    for part in ("站点：楚门镇先锋驿站（yh-chumen-01 · chumen）", "带什么：请带桶装水/检查进水",
                 ack_link_of(hub, "ops-mail")):
        assert part in text, part
    assert "<table>" in page and f'href="{ack_link_of(hub, "ops-mail")}"' in page


def test_email_with_a_wrong_password_is_given_up(hub: Hub, smtp: tuple[Mailbox, int],
                                                 certificate: tuple[Path, Path]) -> None:
    box, port = smtp
    outbox = hub.outbox(mail_spec(port, certificate[0], password="wrong"))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == "failed" and "login refused" in d["last_error"]
    assert box.messages == []


def test_email_to_a_server_that_is_down_is_retried(hub: Hub,
                                                   certificate: tuple[Path, Path]) -> None:
    outbox = hub.outbox(mail_spec(free_port(), certificate[0]))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.pending()
    assert d["attempts"] == 1 and "127.0.0.1" in d["last_error"]


def test_email_refuses_a_certificate_it_cannot_trust(hub: Hub, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    outbox = hub.outbox(mail_spec(port, Path("/nonexistent"), ca_file=None))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.pending()
    assert "certificate" in d["last_error"] and box.messages == []


def test_an_email_is_rendered_the_same_from_the_same_input_in_ascii(hub: Hub) -> None:
    spec = mail_spec(25, Path("/x"))
    (notifier,) = build_notifiers([spec]).values()
    one = notifier.render("firing", an_alert(), STATION, None, delivery_id="d-1", now_ms=T0_MS)
    two = notifier.render("firing", an_alert(), STATION, None, delivery_id="d-1", now_ms=T0_MS)
    assert one == two and one.isascii()  # headers and parts encoded for any relay
    assert json.dumps(one)  # stored as text
