"""Notifications (contract §13, docs/notifications.md): the outbox and the notifiers.

>>> notifiers = build_notifiers(config.notifier_specs)
>>> outbox = Outbox(store, writer, clock, notifiers,
...                 acklinks=AckLinks.from_config(config, clock)).start()
>>> outbox.enqueue("ops-webhook", "firing", alert, station_info(view, config.min_charge))

One module per notifier type (``webhook``, ``wecom``, ``dingtalk``, ``feishu``,
``email``) beside ``base`` (what they share), ``text`` (the message) and
``outbox`` (durable delivery with retries).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from datetime import tzinfo

from hub.alerting.notify.base import (
    DeliveryFailed,
    Notifier,
    NotifyError,
    OutboxUnavailable,
    UnknownNotifier,
)
from hub.alerting.notify.dingtalk import DingTalkNotifier
from hub.alerting.notify.email import EmailNotifier
from hub.alerting.notify.feishu import FeishuNotifier
from hub.alerting.notify.outbox import NEVER, Outbox, deliveries
from hub.alerting.notify.text import CST, station_info
from hub.alerting.notify.webhook import WebhookNotifier
from hub.alerting.notify.wecom import WeComNotifier
from hub.config import NotifierSpec

__all__ = [
    "NEVER", "NOTIFIER_CLASSES", "DeliveryFailed", "Notifier", "NotifyError", "Outbox",
    "OutboxUnavailable", "UnknownNotifier", "build_notifier", "build_notifiers",
    "deliveries", "station_info",
]

#: ``type:`` in the configuration → the class that sends it.
NOTIFIER_CLASSES: dict[str, type[Notifier]] = {
    cls.type: cls for cls in (WebhookNotifier, WeComNotifier, DingTalkNotifier,
                              FeishuNotifier, EmailNotifier)
}


def build_notifier(spec: NotifierSpec, tz: tzinfo = CST) -> Notifier:
    return NOTIFIER_CLASSES[spec.type](spec, tz)


def build_notifiers(specs: Iterable[NotifierSpec],
                    timezone: str | tzinfo | None = None) -> dict[str, Notifier]:
    """``{name: Notifier}`` for ``Outbox``, from ``HubConfig.notifier_specs``;
    messages show times in ``timezone`` (a name like ``Asia/Shanghai``, the hub's
    ``timezone:``), China Standard Time when None."""
    tz = zoneinfo.ZoneInfo(timezone) if isinstance(timezone, str) else (timezone or CST)
    return {spec.name: build_notifier(spec, tz) for spec in specs}
