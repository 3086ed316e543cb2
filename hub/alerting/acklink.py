"""Signed, expiring acknowledge links: ``{public_url}/ack/{token}``.

A maintenance worker taps the link in a WeCom, DingTalk, Feishu or e-mail
message, sees what it is about and taps the button there, without logging in:
the token is the authority (opening the link changes nothing, only the page's
form acknowledges; see ``hub/http/web.py``). It names the alert, the notifier that
carried it (recorded as ``acked_by = "link:<notifier>"``) and when it stops
working, and is signed with the hub's ack-link key (HMAC-SHA256):

    token = base64url(alert_id "\\n" notifier "\\n" expires_s) "." base64url(hmac)

>>> links = AckLinks(b"k" * 32, "https://hub.example.cn", ttl=86400, clock=clock)
>>> url = links.url("a-1f2e3d4c5b6a7980", "chumen-wecom")
>>> links.verify(url.rsplit("/", 1)[1]).alert_id
'a-1f2e3d4c5b6a7980'

The key (``AckLinks.from_config``): ``ack_secret_file`` when configured (required
on PostgreSQL, where several hub workers must share it); otherwise, on SQLite,
32 random bytes generated once into ``ack-link.key`` beside the database file,
so links survive restarts. Changing the key voids every link sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from yizhan.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

KEY_FILE = "ack-link.key"
_CONTEXT = b"yizhan ack link v1\n"  # the key signs nothing else with this prefix
_CONFIRM = b"yizhan ack confirm v1\n"  # nor this: a confirmation is never a token's signature
MAX_TOKEN = 512


class AckLinkError(Exception):
    """Root of the errors of :mod:`hub.alerting.acklink`."""


class LinkInvalid(AckLinkError, ValueError):
    """Not a token this hub signed (forged, truncated, or signed with another key)."""


class LinkExpired(AckLinkError, ValueError):
    """Signed by this hub, but past its time."""

    def __init__(self, claim: AckClaim) -> None:
        super().__init__(f"the link for alert {claim.alert_id} expired")
        self.claim = claim


@dataclass(frozen=True, slots=True)
class AckClaim:
    """What a valid token says."""

    alert_id: str
    notifier: str
    expires: int  # Unix seconds

    @property
    def by(self) -> str:
        """The ``acked_by`` of an acknowledgement through this link."""
        return f"link:{self.notifier}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AckLinks:
    """Makes and checks ack-link tokens with one key."""

    def __init__(self, key: bytes, public_url: str | None, ttl: float = 86400.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if len(key) < 16:
            raise ValueError("the ack-link key must be at least 16 bytes")
        self._key = key
        self.public_url = public_url.rstrip("/") if public_url else None
        self.ttl = ttl
        self.clock = clock

    @classmethod
    def from_config(cls, config: Any, clock: Clock = SYSTEM_CLOCK) -> AckLinks:
        """The hub's links: its ``public_url``, ``ack_link_ttl`` and key (see the module)."""
        return cls(ack_key(config), config.public_url, config.ack_link_ttl, clock)

    def token(self, alert_id: str, notifier: str, now: float | None = None) -> str:
        now = self.clock.now() if now is None else now
        if "\n" in alert_id or "\n" in notifier:
            raise ValueError("alert ids and notifier names have no line breaks")
        payload = f"{alert_id}\n{notifier}\n{int(now + self.ttl)}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def url(self, alert_id: str, notifier: str, now: float | None = None) -> str | None:
        """The link to put in a message; None without ``public_url`` (no link is
        better than one to 127.0.0.1 that no phone can open)."""
        if self.public_url is None:
            return None
        return f"{self.public_url}/ack/{self.token(alert_id, notifier, now)}"

    def verify(self, token: str, now: float | None = None) -> AckClaim:
        """The claim of a token this hub signed; :class:`LinkInvalid` or
        :class:`LinkExpired` otherwise. The signature is compared in constant time."""
        if not token or len(token) > MAX_TOKEN or token.count(".") != 1:
            raise LinkInvalid("not an ack link token")
        body, _, sig = token.partition(".")
        try:
            payload, given = _unb64(body), _unb64(sig)
        except (ValueError, TypeError) as err:
            raise LinkInvalid("not an ack link token") from err
        if not hmac.compare_digest(given, self._sign(payload)):
            raise LinkInvalid("the link's signature does not match")
        try:
            alert_id, notifier, expires = payload.decode().split("\n")
            claim = AckClaim(alert_id, notifier, int(expires))
        except ValueError as err:  # signed by us, so only a change of format gets here
            raise LinkInvalid("unknown ack link format") from err
        if (self.clock.now() if now is None else now) >= claim.expires:
            raise LinkExpired(claim)
        return claim

    def confirmation(self, token: str) -> str:
        """The value the ack page's form sends back with its POST: derived from the
        token with the key, so only who has read the page (not a page elsewhere that
        merely knows the link) can send it. No state is kept."""
        mac = hmac.new(self._key, _CONFIRM + token.encode(), hashlib.sha256).digest()
        return _b64(mac[:16])

    def confirms(self, token: str, value: str) -> bool:
        """Whether ``value`` is :meth:`confirmation` of ``token`` (constant time)."""
        return hmac.compare_digest(self.confirmation(token).encode(),
                                   value.encode("utf-8", "replace"))

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()


def ack_key(config: Any) -> bytes:
    """``ack_secret_file`` if configured, else the key kept beside the SQLite
    database (made on first use), else — for an in-memory database or a hub
    without notifiers — a key for this process only."""
    if config.ack_secret:
        return config.ack_secret
    url = sa.make_url(config.database)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return load_or_create_key(Path(url.database).resolve().parent / KEY_FILE)
    if config.notifier_specs:
        log.warning("no ack_secret_file and no database directory: ack links will stop "
                    "working when the hub restarts")
    return secrets.token_bytes(32)


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``, made (32 random bytes as hex, mode 0600) if it does not exist.

    Written to a temporary file and linked into place, so a reader never sees a
    half-written key and two hubs starting at once on a new directory agree.
    """
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.hex().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return load_or_create_key(path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("made a new ack-link key in %s", path)
        return key
    try:
        key = bytes.fromhex(text.decode())
    except ValueError:
        key = text  # a key written by hand
    if len(key) < 16:
        raise AckLinkError(f"{path} holds no usable ack-link key (at least 16 bytes); "
                           "delete it to make a new one")
    return key
