"""The generic webhook of contract §13, exactly.

``POST`` the stored JSON body with ``Content-Type: application/json``,
``X-Yizhan-Signature: sha256=<hex HMAC-SHA256 of the raw body with the
notifier's secret>`` and ``X-Yizhan-Delivery: <delivery id>`` — the same bytes,
signature and id on every retry, so a receiver can drop a repeat it already
took. Any 2xx is delivered; anything else is retried with backoff, never given
up (the contract says "until the receiver answers 2xx").

A receiver checks it so (Python)::

    expected = "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Yizhan-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from hub.alerting.notify.base import DeliveryFailed, HttpNotifier, dumps, snippet
from hub.alerting.notify.text import Message

#: The Alert object's keys (contract §11), in the contract's order.
ALERT_KEYS = ("id", "rule", "sid", "severity", "state", "summary", "value", "started_at",
              "acked_at", "resolved_at")


def signature(secret: str | bytes, body: bytes) -> str:
    """The ``X-Yizhan-Signature`` header value of ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def contract_body(kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
                  ack_url: str | None) -> str:
    """The contract §13 body: version, kind, the Alert object, the station's sid
    and name, the ack link."""
    return dumps({
        "version": 1,
        "kind": kind,
        "alert": {key: alert.get(key) for key in ALERT_KEYS},
        "station": {"sid": station.get("sid") or alert.get("sid"),
                    "name": station.get("name") or station.get("sid") or alert.get("sid")},
        "ack_url": ack_url,
    })


class WebhookNotifier(HttpNotifier):
    type = "webhook"

    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        return contract_body(kind, alert, station, ack_url)

    def render_digest(self, msg: Message, entries: Mapping[str, Any], *, delivery_id: str,
                      now_ms: int) -> str:
        return dumps(entries)  # limits.webhook_digest: the held alerts, for machines

    def request(self, body: str, delivery_id: str, now: float) -> tuple[str, dict, bytes]:
        data = body.encode()
        headers = self.headers()
        headers["Content-Type"] = "application/json"
        headers["X-Yizhan-Signature"] = signature(self.spec.secret or "", data)
        headers["X-Yizhan-Delivery"] = delivery_id
        return self.spec.url, headers, data

    def check(self, status: int, answer: bytes) -> None:
        if not 200 <= status < 300:
            detail = snippet(answer, 120)
            raise DeliveryFailed(f"receiver answered HTTP {status}"
                                 + (f": {detail!r}" if detail else ""))
