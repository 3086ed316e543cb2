"""What a borrow and a return share between their screens.

Both serve one rider across several pages: the rider id and masked number stay
in the kiosk's memory (:mod:`kiosk.riders`), the session cookie holds only a
ticket to them, under the flow's own key. Both then show a slot the board
opened and count down the time left to use it.
"""

from __future__ import annotations

from typing import Any

from flask import session

from kiosk.context import kiosk
from kiosk.riders import Pending

__all__ = ["RiderTicket", "slot_progress"]


class RiderTicket:
    """The rider a flow is serving, by the ticket in the cookie under ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def get(self) -> Pending | None:
        """The rider this screen is serving, or None (never begun, or gone stale:
        the browser's idle timer normally sends the screen home long before)."""
        p = kiosk().riders.get(session.get(self.key))
        if p is None:
            session.pop(self.key, None)
        return p

    def keep(self, rider: str, mask: str, attempt: str | None = None) -> None:
        """Keep the rider (and the borrow attempt or return claim started for them)."""
        ticket = session.get(self.key)
        session[self.key] = kiosk().riders.keep(
            ticket if isinstance(ticket, str) else None, rider, mask, attempt)

    def forget(self) -> None:
        kiosk().riders.forget(session.pop(self.key, None))


def slot_progress(x: dict[str, Any]) -> dict[str, Any]:
    """A borrow attempt or return claim as its page and poller see it (never the
    rider id): the state, and while the slot is open the ms left of how many."""
    left = total = None
    if x.get("state") == "open" and x.get("open_until"):
        left = max(0, int(x["open_until"]) - kiosk().clock.ms())
        total = max(1, int(x["open_until"]) - int(x.get("updated") or x["open_until"]))
    return {"state": x.get("state"), "reason": x.get("reason") or "", "slot": x.get("slot"),
            "open_ms_left": left, "open_ms_total": total}
