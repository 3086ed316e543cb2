"""The hub's judgement of its own health, shared by ``/healthz`` and
``yizhan_hub_healthy`` so that a probe and a dashboard never disagree.

>>> problems_of(hub)
[]
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def problems_of(hub: Any) -> list[str]:
    """What keeps the hub from doing its job now (``Hub.problems``); the check
    itself failing is a problem too. Empty when healthy."""
    try:
        return list(hub.problems())
    except Exception as err:
        log.exception("health check failed")
        return [f"health check failed: {err}"]
