"""The notification keys of the hub configuration (docs/notifications.md):
``notifiers:``, ``public_url:``, ``ack_link_ttl:`` and ``ack_secret_file:``,
checked once at start, each problem naming its key. Secrets are read from
their ``*_file`` and kept out of ``repr``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from yizhan.config import ConfigError, Section

log = logging.getLogger(__name__)

#: Notifier types (docs/notifications.md); each is a module of ``hub.alerting.notify``.
NOTIFIER_TYPES = ("webhook", "wecom", "dingtalk", "feishu", "email")
#: Message languages: Chinese by default.
LANGUAGES = ("zh", "en")
NOTIFIER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={}"
DINGTALK_URL = "https://oapi.dingtalk.com/robot/send?access_token={}"
DEFAULT_ACK_LINK_TTL = 24 * 3600.0
#: How an e-mail notifier talks to its relay: TLS from the first byte (port 465,
#: "SMTPS", what many providers and cloud hosts require), STARTTLS (port 587), or
#: in the clear (port 25, only towards a relay on a trusted network).
SMTP_TLS = ("implicit", "starttls", "none")
SMTP_PORTS = {"implicit": 465, "starttls": 587, "none": 25}
#: A DNS name (RFC 1123 labels), as the right side of a Message-ID.
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


@dataclass(frozen=True)
class NotifyLimits:
    """How many notifications one notifier sends before it holds the rest back
    for a digest (``limits:`` of a notifier; docs/alerts.md, "Rate limits").

    ``per_station`` notifications of one station in ``station_window`` seconds;
    ``per_minute`` of all stations in any 60 s (WeCom and DingTalk robots take 20
    a minute); what is over either waits, stored, for one digest message every
    ``digest_every`` seconds. A critical alert skips the per-station limit and
    is counted per minute against critical ones only (lesser ones never hold it).
    """

    per_station: int = 6
    station_window: float = 600.0
    per_minute: int = 20
    digest_every: float = 300.0


@dataclass(frozen=True)
class NotifierSpec:
    """One entry of ``notifiers:``, checked. Secrets (``secret``, ``password`` and
    ``url``, which carries the robot's key or token) stay out of ``repr``; log
    ``redacted()``.
    """

    name: str
    type: str
    url: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    language: str = "zh"
    timeout: float = 10.0
    # feishu: "card" (interactive message card with a button) or "text"
    format: str = "card"
    # email
    host: str | None = None
    port: int | None = None
    tls: str = "starttls"  # one of SMTP_TLS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str | None = None
    to: tuple[str, ...] = ()
    ca_file: str | None = None
    message_id_domain: str | None = None  # None: the domain of ``sender``
    limits: NotifyLimits = NotifyLimits()

    def redacted(self) -> dict[str, Any]:
        """For logs: where it goes, never a key, token, secret or password."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "language": self.language}
        if self.url:
            parts = urlsplit(self.url)
            out["url"] = f"{parts.scheme}://{parts.netloc}{parts.path}" + (
                "?***" if parts.query else "")
        if self.type == "email":
            out.update(host=self.host, port=self.port, tls=self.tls,
                       username=self.username, sender=self.sender, to=list(self.to),
                       message_id_domain=self.message_id_domain)
        out["secret"] = "***" if (self.secret or self.password) else None
        return out


def parse_notify(root: Section, base: Path | None, database: str) -> dict[str, Any]:
    """``notifiers``, ``public_url``, ``ack_link_ttl`` and ``ack_secret_file``."""
    specs = []
    seen: set[str] = set()
    for i, entry in enumerate(root.list("notifiers")):
        if not isinstance(entry, dict):
            raise ConfigError(f"notifiers[{i}]", "must be a mapping like {name: ..., type: ...}")
        spec = parse_notifier(Section(entry, f"notifiers[{i}]"), base)
        if spec.name in seen:
            raise ConfigError(f"notifiers[{i}].name", f"{spec.name} is listed twice")
        seen.add(spec.name)
        specs.append(spec)

    public_url = root.str("public_url")
    if public_url is not None:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError("public_url", "must be the hub's address as a phone reaches it, "
                              f"like https://hub.example.cn, not {public_url!r}")
        public_url = public_url.rstrip("/")
    ttl = root.duration("ack_link_ttl", DEFAULT_ACK_LINK_TTL)
    if ttl < 60:
        raise ConfigError("ack_link_ttl", "must be at least 1m")

    ack_secret = None
    if root.has("ack_secret_file") or root.has("ack_secret"):
        text = root.secret("ack_secret", base) or ""
        key = "ack_secret_file" if root.has("ack_secret_file") else "ack_secret"
        if len(text) < 16:
            raise ConfigError(key, "the ack link secret must be at least 16 characters")
        ack_secret = text.encode()
    elif specs and database.startswith("postgresql"):
        # On SQLite the hub keeps a generated key beside its database file; a
        # PostgreSQL deployment may run several workers, which must share it.
        raise ConfigError("ack_secret_file", "is required when notifiers are configured on "
                          "PostgreSQL: every hub worker must sign ack links with the same key")
    return {"notifier_specs": tuple(specs), "public_url": public_url,
            "ack_link_ttl": ttl, "ack_secret": ack_secret}


def _http_url(sec: Section, base: Path | None, key: str = "url") -> str | None:
    url = sec.secret(key, base)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # Not the value itself: it may carry the robot's key.
        raise ConfigError(sec.key(key), "must be an http:// or https:// URL")
    return url


def _query_has(url: str, name: str) -> bool:
    return bool(parse_qs(urlsplit(url).query).get(name, [""])[0])


def _robot_url(sec: Section, base: Path | None, param: str, template: str,
               what: str) -> str:
    """A chat robot's webhook: the whole ``url`` (ending in ``?param=…``), or just
    ``param`` (or ``param_file``) put into the platform's address ``template``."""
    url = _http_url(sec, base)
    token = sec.secret(param, base)
    if url is None and token is None:
        raise ConfigError(sec.key("url"), f"is required: {what} "
                          f"{template.format('…')} (or url_file, or {param}/{param}_file)")
    if url is None:
        return template.format(token)
    if not _query_has(url, param):
        raise ConfigError(sec.key("url"), f"must end in ?{param}=… (copy the whole "
                          "webhook address)")
    return url


def parse_limits(notifier: Section) -> NotifyLimits:
    """A notifier's ``limits:`` (every key optional, the defaults of NotifyLimits)."""
    sec = notifier.section("limits")
    if sec is None:
        return NotifyLimits()
    d = NotifyLimits()
    limits = NotifyLimits(
        per_station=sec.int("per_station", d.per_station, lo=1, hi=10_000),
        station_window=sec.duration("station_window", d.station_window),
        per_minute=sec.int("per_minute", d.per_minute, lo=1, hi=10_000),
        digest_every=sec.duration("digest_every", d.digest_every))
    if not 60 <= limits.station_window <= 86_400:
        raise ConfigError(sec.key("station_window"), "must be at least 1m and at most 24h")
    if not 60 <= limits.digest_every <= 86_400:
        raise ConfigError(sec.key("digest_every"), "must be at least 1m and at most 24h")
    return limits


def parse_notifier(sec: Section, base: Path | None = None) -> NotifierSpec:
    """One ``notifiers:`` entry; every problem names its key."""
    name = sec.str("name", required=True)
    if not re.fullmatch(NOTIFIER_NAME, name):
        raise ConfigError(sec.key("name"), f"{name!r} must be 1–64 letters, digits, "
                          "'_', '.' or '-'")
    kind = sec.str("type", required=True, choices=NOTIFIER_TYPES)
    common: dict[str, Any] = {
        "name": name, "type": kind,
        "language": sec.str("language", "zh", choices=LANGUAGES),
        "timeout": sec.duration("timeout", 10.0),
    }
    if not 0 < common["timeout"] <= 120:
        raise ConfigError(sec.key("timeout"), "must be more than 0s and at most 2m")
    common["limits"] = parse_limits(sec)

    if kind == "webhook":
        url = _http_url(sec, base)
        if url is None:
            raise ConfigError(sec.key("url"), "is required (or url_file)")
        secret = sec.secret("secret", base)
        if not secret or len(secret) < 16:
            raise ConfigError(sec.key("secret"), "is required (or secret_file), at least 16 "
                              "characters: the receiver checks X-Yizhan-Signature with it")
        return NotifierSpec(url=url, secret=secret, **common)

    if kind == "wecom":
        url = _robot_url(sec, base, "key", WECOM_URL, "the group robot's webhook address")
        return NotifierSpec(url=url, **common)

    if kind == "dingtalk":
        url = _robot_url(sec, base, "access_token", DINGTALK_URL,
                         "the robot's webhook address")
        secret = sec.secret("secret", base)
        if secret is not None and not secret.startswith("SEC"):
            raise ConfigError(sec.key("secret"), "must be the robot's 加签 secret, which "
                              "starts with SEC")
        return NotifierSpec(url=url, secret=secret, **common)

    if kind == "feishu":
        url = _http_url(sec, base) or _http_url(sec, base, "webhook")
        if url is None:
            raise ConfigError(sec.key("url"), "is required: the custom bot's webhook address "
                              "https://open.feishu.cn/open-apis/bot/v2/hook/… (or url_file)")
        return NotifierSpec(url=url, secret=sec.secret("secret", base),
                            format=sec.str("format", "card", choices=("card", "text")),
                            **common)

    return _email(sec, base, common)


def sender_domain(sender: str | None) -> str | None:
    """The domain of an address (``驿站 <yizhan@example.cn>`` → ``example.cn``), in
    ASCII (an internationalised one as its ``xn--`` form); None when it is no DNS name."""
    addr = parseaddr(sender or "")[1]
    if "@" not in addr:
        return None
    domain = addr.rpartition("@")[2]
    try:
        domain = domain.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    return domain if _HOSTNAME.match(domain) and "." in domain else None


def _smtp_tls(sec: Section) -> str:
    """``tls:``, or the deprecated ``starttls: true|false`` it replaces."""
    if not sec.has("starttls"):
        return sec.str("tls", "starttls", choices=SMTP_TLS)
    if sec.has("tls"):
        raise ConfigError(sec.key("starttls"), "is the old spelling of tls: give tls only "
                          "(implicit, starttls or none)")
    tls = "starttls" if sec.bool("starttls", True) else "none"
    log.warning("%s is deprecated: write tls: %s", sec.key("starttls"), tls)
    return tls


def _email(sec: Section, base: Path | None, common: dict[str, Any]) -> NotifierSpec:
    host = sec.str("host", required=True)
    tls = _smtp_tls(sec)
    port = sec.int("port", SMTP_PORTS[tls], lo=1, hi=65535)
    # The usual ports with the other kind of TLS only ever time out or fail the
    # handshake at the first alert; say so now.
    if port == 465 and tls != "implicit":
        raise ConfigError(sec.key("tls"), "must be implicit for port 465 (TLS from the "
                          f"first byte), not {tls}")
    if port in (25, 587) and tls == "implicit":
        raise ConfigError(sec.key("port"), f"{port} speaks plain SMTP first: use 465 with "
                          "tls: implicit, or tls: starttls")
    sender = sec.str("from", required=True)
    to = sec.list("to")
    if not to:
        raise ConfigError(sec.key("to"), "must list at least one address")
    for i, addr in enumerate([sender, *to]):
        if not isinstance(addr, str) or "@" not in addr or any(c in addr for c in "\r\n"):
            key = sec.key("from") if i == 0 else f"{sec.key('to')}[{i - 1}]"
            raise ConfigError(key, f"must be an e-mail address, not {addr!r}")
    username = sec.str("username")
    password = sec.secret("password", base)
    if password is not None and username is None:
        raise ConfigError(sec.key("username"), "is required with a password")
    if username is not None and tls == "none":
        # The login would cross the network readable by anyone on the way.
        raise ConfigError(sec.key("username"), "is refused with tls: none: a login needs an "
                          "encrypted connection (tls: implicit or starttls)")
    ca_file = sec.str("ca_file")
    if ca_file is not None and base is not None and not Path(ca_file).is_absolute():
        ca_file = str(base / ca_file)
    domain = sec.str("message_id_domain")
    if domain is not None:
        if not _HOSTNAME.match(domain) or "." not in domain:
            raise ConfigError(sec.key("message_id_domain"), "must be a domain name like "
                              f"hub.example.cn, not {domain[:80]!r}")
    elif sender_domain(sender) is None:
        raise ConfigError(sec.key("message_id_domain"), "is required: the from address has "
                          "no domain to put in Message-ID")
    return NotifierSpec(host=host, port=port, tls=tls, username=username, password=password,
                        sender=sender, to=tuple(to), ca_file=ca_file,
                        message_id_domain=domain, **common)
