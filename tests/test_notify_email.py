"""E-mail's ``tls: implicit | starttls | none``, the login only over encryption,
and the Message-ID domain from the configuration.

The relay is a real SMTP server (aiosmtpd) on loopback speaking TLS from the
first byte with a throw-away certificate (as on port 465), or in the clear; it
records whether each login and each message came over TLS, read from its own
socket.
"""

from __future__ import annotations

import email
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from hub.alerting.notify import build_notifiers
from hub.config import NotifierSpec, parse_hub_config
from tests.test_notify_platforms import (
    MAIL_PASSWORD,
    MAIL_USER,
    STATION,
    T0_MS,
    Hub,
    an_alert,
    free_port,
)
from yizhan.config import ConfigError


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path)
    yield h
    h.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (the relay's own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("smtps")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


class Relay:
    """What the SMTP server received, the login it accepts, and whether each
    came over TLS."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, str | None]] = []
        self.logins: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @staticmethod
    def tls_of(server: Any) -> str | None:
        """The TLS version of the session, None when it is in the clear."""
        obj = server.transport.get_extra_info("ssl_object") if server.transport else None
        return obj.version() if obj is not None else None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content or envelope.content,
                                  self.tls_of(server)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = (getattr(auth_data, "login", b"") == MAIL_USER.encode()
              and getattr(auth_data, "password", b"") == MAIL_PASSWORD.encode())
        with self.lock:
            self.logins.append((MAIL_USER if ok else "refused", self.tls_of(server)))
        return AuthResult(success=ok, handled=False)


def start(relay: Relay, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=port,
                            authenticator=relay.authenticate, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def smtps(certificate: tuple[Path, Path]) -> Iterator[tuple[Relay, int]]:
    """A relay with implicit TLS (SMTPS, like port 465): TLS before the greeting.
    (aiosmtpd's auth_require_tls knows only STARTTLS; the handshake is the proof.)"""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = Relay()
    controller, port = start(relay, ssl_context=context, auth_require_tls=False)
    yield relay, port
    controller.stop()


@pytest.fixture
def plain_smtp() -> Iterator[tuple[Relay, int]]:
    """A relay in the clear that would even take a login in the clear."""
    relay = Relay()
    controller, port = start(relay, auth_require_tls=False)
    yield relay, port
    controller.stop()


def spec(port: int, cert: Path | None, **changes: Any) -> NotifierSpec:
    fields = {"name": "ops-mail", "type": "email", "host": "127.0.0.1", "port": port,
              "tls": "implicit", "username": MAIL_USER, "password": MAIL_PASSWORD,
              "sender": "驿站告警 <yizhan@example.cn>", "to": ("li@example.cn",),
              "ca_file": str(cert) if cert else None, "message_id_domain": "hub.example.cn",
              "timeout": 5.0}
    fields.update(changes)
    return NotifierSpec(**fields)


# -- over the wire ------------------------------------------------------------------------


def test_email_over_implicit_tls_logs_in_and_delivers(hub: Hub, smtps: tuple[Relay, int],
                                                      certificate: tuple[Path, Path]) -> None:
    relay, port = smtps
    outbox = hub.outbox(spec(port, certificate[0]))
    did = outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    assert outbox.pending() == [], outbox.deliveries("a-0123456789abcdef")
    ((who, login_tls),) = relay.logins
    assert who == MAIL_USER and login_tls in ("TLSv1.2", "TLSv1.3")
    ((sender, rcpts, raw, tls),) = relay.messages
    assert tls in ("TLSv1.2", "TLSv1.3")
    assert sender == "yizhan@example.cn" and rcpts == ["li@example.cn"]
    mail = email.message_from_bytes(raw, policy=default_policy)
    assert mail["Message-ID"] == f"<{did}@hub.example.cn>"
    assert mail["Subject"] == "【紧急】楚门镇先锋驿站：热水已空（水位 0%）"


def test_implicit_tls_to_a_relay_in_the_clear_fails_and_says_why(
        hub: Hub, plain_smtp: tuple[Relay, int], certificate: tuple[Path, Path]) -> None:
    relay, port = plain_smtp
    outbox = hub.outbox(spec(port, certificate[0]))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.pending()  # retried: the relay may be fixed, or the port
    assert "TLS failed" in d["last_error"] and "465" in d["last_error"], d["last_error"]
    assert relay.logins == [] and relay.messages == []


def test_implicit_tls_refuses_a_certificate_it_cannot_trust(hub: Hub,
                                                            smtps: tuple[Relay, int]) -> None:
    relay, port = smtps
    outbox = hub.outbox(spec(port, None))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.pending()
    assert "certificate not trusted" in d["last_error"], d["last_error"]
    assert relay.logins == [] and relay.messages == []


def test_no_tls_without_a_login_delivers_in_the_clear(hub: Hub,
                                                      plain_smtp: tuple[Relay, int]) -> None:
    relay, port = plain_smtp
    outbox = hub.outbox(spec(port, None, tls="none", username=None, password=None))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    ((_sender, _rcpts, _raw, tls),) = relay.messages
    assert tls is None and relay.logins == []


def test_a_login_is_never_sent_in_the_clear(hub: Hub, plain_smtp: tuple[Relay, int]) -> None:
    # The configuration refuses it (below); a spec made in code is refused at sending.
    relay, port = plain_smtp
    outbox = hub.outbox(spec(port, None, tls="none"))
    outbox.enqueue("ops-mail", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == "failed" and "login needs tls" in d["last_error"]
    assert relay.logins == [] and relay.messages == []


# -- the Message-ID ---------------------------------------------------------------------


def render(s: NotifierSpec) -> email.message.EmailMessage:
    (n,) = build_notifiers([s]).values()
    text = n.render("firing", an_alert(), STATION, None, delivery_id="d-1", now_ms=T0_MS)
    return email.message_from_string(text, policy=default_policy)


@pytest.mark.parametrize(("sender", "domain", "expect"), [
    ("yizhan@example.cn", "hub.example.cn", "<d-1@hub.example.cn>"),
    ("驿站告警 <yizhan@alerts.example.cn>", None, "<d-1@alerts.example.cn>"),
    ("yizhan@驿站.中国", None, "<d-1@xn--5tz216d.xn--fiqs8s>"),
    ("yizhan@localhost", None, "<d-1@yizhan.invalid>"),  # only from code: config refuses
])
def test_message_id_domain(sender: str, domain: str | None, expect: str) -> None:
    mail = render(spec(465, None, sender=sender, message_id_domain=domain))
    assert mail["Message-ID"] == expect


# -- the configuration ------------------------------------------------------------------

BASE = {"name": "ops-mail", "type": "email", "host": "smtp.example.cn",
        "from": "yizhan@example.cn", "to": ["li@example.cn"]}


def parse_mail(**changes: Any) -> NotifierSpec:
    entry = {**BASE, **changes}
    entry = {k: v for k, v in entry.items() if v is not None}
    config = parse_hub_config({"database": "sqlite:////tmp/yz-mail.db", "notifiers": [entry]})
    return config.notifier_specs[0]


@pytest.mark.parametrize(("changes", "tls", "port"), [
    ({}, "starttls", 587),
    ({"tls": "implicit"}, "implicit", 465),
    ({"tls": "starttls"}, "starttls", 587),
    ({"tls": "none"}, "none", 25),
    ({"tls": "implicit", "port": 2465}, "implicit", 2465),
    ({"tls": "starttls", "port": 2525}, "starttls", 2525),
    ({"starttls": True}, "starttls", 587),  # the old key, still read
    ({"starttls": False}, "none", 25),
])
def test_tls_and_its_default_port(changes: dict, tls: str, port: int) -> None:
    s = parse_mail(**changes)
    assert (s.tls, s.port) == (tls, port)
    assert s.redacted()["tls"] == tls


def test_the_old_starttls_key_is_read_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert parse_mail(starttls=False).tls == "none"
    assert "notifiers[0].starttls is deprecated: write tls: none" in caplog.text


def test_a_login_with_implicit_tls_parses_and_the_domain_comes_from_from() -> None:
    s = parse_mail(tls="implicit", username="hub", password="pw", message_id_domain=None)
    assert (s.tls, s.port, s.username, s.message_id_domain) == ("implicit", 465, "hub", None)
    assert render(s)["Message-ID"] == "<d-1@example.cn>"


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"tls": "ssl"}, "tls", "one of implicit, starttls, none"),
    ({"tls": 10**30}, "tls", "non-empty string"),
    ({"tls": "none", "username": "hub"}, "username", "encrypted connection"),
    ({"tls": "none", "username": "hub", "password": "pw"}, "username", "encrypted"),
    ({"starttls": False, "username": "hub"}, "username", "encrypted"),
    ({"tls": "implicit", "starttls": True}, "starttls", "old spelling of tls"),
    ({"starttls": "yes"}, "starttls", "true or false"),
    ({"port": 465}, "tls", "must be implicit for port 465"),
    ({"tls": "none", "port": 465}, "tls", "must be implicit"),
    ({"tls": "implicit", "port": 587}, "port", "use 465"),
    ({"tls": "implicit", "port": 25}, "port", "use 465"),
    ({"port": 10**30}, "port", "integer from 1 to 65535"),
    ({"message_id_domain": "hub example"}, "message_id_domain", "domain name"),
    ({"message_id_domain": "hub\r\nBcc: x@y.cn"}, "message_id_domain", "domain name"),
    ({"message_id_domain": "a" * 300 + ".cn"}, "message_id_domain", "domain name"),
    ({"message_id_domain": "localhost"}, "message_id_domain", "domain name"),
    ({"message_id_domain": 10**30}, "message_id_domain", "non-empty string"),
    ({"from": "yizhan@localhost"}, "message_id_domain", "is required"),
    ({"from": "yizhan@under_score.cn"}, "message_id_domain", "is required"),
])
def test_bad_email_settings_are_refused_naming_the_key(changes: dict, key: str,
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mail(**changes)
    assert err.value.key == f"notifiers[0].{key}", str(err.value)
    assert words in err.value.problem, str(err.value)
