"""What every notifier is: render once, send (again) the stored body.

A notifier turns (kind, alert, station, ack_url) into the exact body to store
(``render``, once, at enqueue) and later sends that stored body (``send``, on
every attempt). Whatever must be fresh on each attempt — DingTalk's and
Feishu's signed timestamps, which the platforms refuse after an hour — is added
by ``send``, never stored. ``send`` returns on success and raises
:class:`DeliveryFailed` otherwise, ``permanent`` when trying again cannot help
(a wrong robot key, a refused signature): the outbox then gives up and says so.
A refusal for sending too fast says so too (``rate_limited``), with how long
the receiver asked us to wait (``retry_after``, from its ``Retry-After`` header
or what the platform documents for that code), for the pacing to honour.

Logs and errors name the notifier and the receiver's host only: robot URLs
carry their key or token, and never appear whole.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import tzinfo
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from hub.alerting.notify.text import CST, Message, compose
from hub.config import NotifierSpec

_ACK_TOKEN = re.compile(r"/ack/[A-Za-z0-9_.=-]+")
#: The answer of a receiver that we read at most (their answers are tiny).
MAX_ANSWER = 64 * 1024
USER_AGENT = "yizhan-hub/1 (+notifications)"


class NotifyError(Exception):
    """Root of the errors of :mod:`hub.alerting.notify`."""


class UnknownNotifier(NotifyError, KeyError):
    def __str__(self) -> str:
        return f"no notifier named {self.args[0]!r} is configured"


class OutboxUnavailable(NotifyError, RuntimeError):
    """The delivery could not be stored (the database did not commit in time)."""


#: The longest ``Retry-After`` we honour: a receiver asking for more (or for 10**30
#: seconds) is waited on this long, then tried again.
MAX_RETRY_AFTER = 3600.0


class DeliveryFailed(NotifyError):
    """One attempt failed; ``permanent`` when another attempt cannot succeed.

    ``rate_limited`` when the receiver refused it for coming too fast (the robot
    is fine, the hub is early); ``retry_after`` is the seconds it asked us to
    wait, or None when it did not say.
    """

    def __init__(self, reason: str, *, permanent: bool = False, rate_limited: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.rate_limited = rate_limited
        self.retry_after = retry_after


class Notifier(ABC):
    """One configured receiver (``notifiers:`` entry)."""

    type: ClassVar[str]

    def __init__(self, spec: NotifierSpec, tz: tzinfo = CST) -> None:
        self.spec = spec
        self.name = spec.name
        self.language = spec.language
        self.timeout = spec.timeout
        self.tz = tz

    def compose(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
                ack_url: str | None, now_ms: int) -> Message:
        """The message in this notifier's language and time zone."""
        return compose(kind, alert, station, ack_url, language=self.language, now_ms=now_ms,
                       tz=self.tz)

    @abstractmethod
    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        """The body to store for this delivery (text; sent as its UTF-8 bytes)."""

    def shape(self, msg: Message, *, delivery_id: str, now_ms: int) -> str:
        """The stored body of a composed message (each platform shapes its own)."""
        raise NotImplementedError

    def render_digest(self, msg: Message, entries: Mapping[str, Any], *, delivery_id: str,
                      now_ms: int) -> str:
        """The body of a digest of held notifications (hub/alerting/notify/limits.py):
        ``msg`` for people, ``entries`` (the webhook's digest object) for machines."""
        return self.shape(msg, delivery_id=delivery_id, now_ms=now_ms)

    @abstractmethod
    def send(self, body: str, delivery_id: str, now: float) -> None:
        """Deliver ``body`` (as stored) once; raise :class:`DeliveryFailed` if not.
        ``now`` is the hub clock in seconds, for the platforms' signed timestamps."""

    def close(self) -> None:  # noqa: B027 - most notifiers hold nothing open
        """Release what the notifier holds; idempotent."""

    @property
    def where(self) -> str:
        """Where it sends, safe to log: ``https://qyapi.weixin.qq.com``."""
        url = self.spec.url
        if url:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port
                                                           else "")
        return f"smtp://{self.spec.host}:{self.spec.port}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} → {self.where}>"


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 left as is: the stored body."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be resent as a GET without its body, and its 200
    taken for a delivery: a redirect is an answer that failed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpNotifier(Notifier):
    """POST a JSON body; subclasses say what the request is and what success is."""

    def request(self, body: str, delivery_id: str, now: float) -> tuple[str, dict, bytes]:
        """(url, headers, data) of one attempt; by default the stored body as is."""
        return self.spec.url, self.headers(), body.encode()

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}

    @abstractmethod
    def check(self, status: int, answer: bytes) -> None:
        """Raise :class:`DeliveryFailed` unless the answer means delivered."""

    def send(self, body: str, delivery_id: str, now: float) -> None:
        url, headers, data = self.request(body, delivery_id, now)
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                status, answer = resp.status, resp.read(MAX_ANSWER)
                wait = resp.headers.get("Retry-After")
        except urllib.error.HTTPError as err:  # an answer, only not a 2xx one
            status = err.code
            wait = err.headers.get("Retry-After") if err.headers is not None else None
            try:
                answer = err.read(MAX_ANSWER)
            except (OSError, http.client.HTTPException):
                answer = b""
            finally:
                err.close()
        except urllib.error.URLError as err:
            raise DeliveryFailed(f"{self.where}: {_reason(err.reason)}") from None
        except TimeoutError:
            raise DeliveryFailed(f"{self.where}: no answer in {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise DeliveryFailed(f"{self.where}: {_reason(err)}") from None
        try:
            self.check(status, answer)
        except DeliveryFailed as err:
            asked = retry_after(wait, now)
            if asked is not None and not err.permanent:
                # The receiver's own word beats what its documentation says in general.
                err.retry_after = asked
            raise


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110: whole seconds or an
    HTTP date, read against the hub clock ``now``), at most :data:`MAX_RETRY_AFTER`;
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value[:8]), MAX_RETRY_AFTER)  # 10**30 is "a long time", not a crash
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is taken as such
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def _reason(err: Any) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def snippet(answer: bytes, n: int = 200) -> str:
    """The start of an answer, for an error message (an ack link a receiver
    echoed back is cut: errors are logged and shown by the API)."""
    text = answer[:n].decode("utf-8", errors="replace").strip()
    return _ACK_TOKEN.sub("/ack/…", " ".join(text.split()))


class ChatRobotNotifier(HttpNotifier):
    """WeCom, DingTalk, Feishu: a JSON answer whose code says what happened.

    The platform's code decides, whatever the HTTP status: Feishu answers some
    refusals with HTTP 400 and a code, and a proxy in between may change the
    status but not the body. Code 0 is sent — under a 2xx status only: a 5xx
    claiming success is not trusted, and a message sent twice beats one lost.
    ``PERMANENT`` codes are configuration or content errors that no retry mends
    (the outbox gives up and names the fix); ``RATE_LIMITED`` ones say the robot
    refused it for coming too fast, with ``RETRY_AFTER`` seconds to wait where
    the platform documents them; ``TEMPORARY`` ones and any code not listed are
    retried — a message is never dropped on a guess. Without a code, the HTTP
    status is all there is: 429 is a rate limit, a 4xx saying the address is
    wrong is permanent, anything else is retried.
    """

    PLATFORM: ClassVar[str]
    CODE_FIELDS: ClassVar[tuple[str, ...]] = ("errcode",)
    PERMANENT: ClassVar[dict[int, str]] = {}
    TEMPORARY: ClassVar[dict[int, str]] = {}
    RATE_LIMITED: ClassVar[frozenset[int]] = frozenset()
    RETRY_AFTER: ClassVar[dict[int, float]] = {}

    def code_of(self, answer: bytes) -> tuple[int | None, str]:
        """The platform's code in ``answer`` and its message; (None, "") without one."""
        try:
            data = json.loads(answer)
        except ValueError:
            return None, ""
        if not isinstance(data, dict):
            return None, ""
        code = next((data[f] for f in self.CODE_FIELDS if f in data), None)
        if isinstance(code, bool) or not isinstance(code, int):
            return None, ""  # true, 0.0, "0", null: not a platform's code
        message = next((data[f] for f in ("errmsg", "msg", "StatusMessage")
                        if isinstance(data.get(f), str) and data[f]), "")
        return code, snippet(message.encode(), 120)

    def check(self, status: int, answer: bytes) -> None:
        code, message = self.code_of(answer)
        ok_status = 200 <= status < 300
        if code is None:
            self._no_code(status, answer)
        if code == 0:
            if ok_status:
                return
            raise DeliveryFailed(f"{self.PLATFORM} answered HTTP {status} with code 0: not "
                                 "taken as sent; retrying")
        said = f"{self.PLATFORM} error {code}" + (f" {message}" if message else "") + (
            "" if ok_status else f" (HTTP {status})")
        if code in self.PERMANENT:
            raise DeliveryFailed(f"{said}: {self.PERMANENT[code]}; not retried",
                                 permanent=True)
        hint = self.TEMPORARY.get(code, "retrying")
        raise DeliveryFailed(f"{said}: {hint}", rate_limited=code in self.RATE_LIMITED,
                             retry_after=self.RETRY_AFTER.get(code))

    def _no_code(self, status: int, answer: bytes) -> None:
        if 200 <= status < 300:
            raise DeliveryFailed(f"{self.PLATFORM} answered HTTP {status} without a code: "
                                 f"{snippet(answer)!r}")
        if status == 429:
            raise DeliveryFailed(f"{self.PLATFORM} answered HTTP 429 (too many requests); "
                                 "retrying", rate_limited=True)
        # Without the platform's code, a 4xx like these is a proxy or a wrong path.
        permanent = status in (400, 401, 403, 404, 405, 410)
        raise DeliveryFailed(f"{self.PLATFORM} answered HTTP {status}"
                             + (" (is the robot address right?); not retried" if permanent
                                else ""),
                             permanent=permanent)
