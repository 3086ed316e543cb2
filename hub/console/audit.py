"""Who did what through the console: the actor's name and the audit rows.

The console writes its changes to the Directory's audit table
(``directory_audit``, hub/storage/schema.py), one log of who changed what for
the whole hub. Directory changes are audited by ``hub.directory`` itself (it is
given the actor); the others (alerts, silences, console users) here. ``detail``
never holds a PIN, a password or a phone number.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hub.console.auth import current_user
from hub.storage.schema import directory_audit

log = logging.getLogger(__name__)


def actor() -> str:
    """``console:<user name>``, as alerts, silences and audit rows record it."""
    user = current_user()
    return f"console:{user.name}" if user is not None else "console:-"


def groups_seen() -> tuple[str, ...] | None:
    """The groups the signed-in user's lists are limited to: a maintenance
    worker's own; None (every station) for ops and admin."""
    user = current_user()
    if user is None or user.has("ops"):
        return None
    return user.groups


def record(hub: Any, action: str, entity: str, entity_id: str,
           detail: dict[str, Any] | None = None) -> None:
    """One audit row, by the signed-in user, at the hub's time."""
    by = actor()
    with hub.store.engine.begin() as conn:
        conn.execute(directory_audit.insert().values(
            at_ms=hub.clock.ms(), actor=by[:64], action=action[:32], entity=entity[:16],
            entity_id=entity_id[:64],
            detail=json.dumps(detail, ensure_ascii=False) if detail else None))
    log.info("console: %s %s %s by %s", action, entity, entity_id, by)
