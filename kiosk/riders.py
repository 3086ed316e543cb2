"""The riders the kiosk is serving between two screens, kept in its memory.

The session cookie is signed, not encrypted: whoever reads it (a browser
profile on a stolen Pi, a screenshot of the developer tools) would read what
it holds. So it holds only a random ticket; the rider id and the masked number
(``138****1234``, 10⁴ candidates once the rider id is known) stay here, for at
most ``ttl`` seconds, and are gone with a restart of the kiosk (the rider types
the number again).

    >>> riders = PendingRiders(clock, ttl=120)
    >>> ticket = riders.keep(None, "r:5e8f0c1d2e3f4a5b6c7d8e9f", "138****1234")
    >>> riders.get(ticket).mask
    '138****1234'
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, replace

from yizhan.clock import Clock

__all__ = ["MAX_PENDING", "Pending", "PendingRiders"]

#: Riders kept at most: one screen serves one rider at a time; a few more are
#: tabs and abandoned screens. The oldest goes first.
MAX_PENDING = 16


@dataclass(frozen=True, slots=True)
class Pending:
    """One rider between screens: who, the number as the PIN screen shows it, the
    attempt started for them, and when this was last kept (monotonic)."""

    rider: str
    mask: str
    attempt: str | None
    at: float


class PendingRiders:
    """Rider ids by ticket, for ``ttl`` seconds each; the cookie carries the ticket."""

    def __init__(self, clock: Clock, ttl: float) -> None:
        self.clock, self.ttl = clock, ttl
        self._lock = threading.Lock()
        self._by_ticket: dict[str, Pending] = {}

    def keep(self, ticket: str | None, rider: str, mask: str,
             attempt: str | None = None) -> str:
        """Keep ``rider`` under ``ticket`` (a new ticket when None); the ticket."""
        now = self.clock.monotonic()
        with self._lock:
            if ticket is None or ticket not in self._by_ticket:
                ticket = secrets.token_urlsafe(18)
            self._by_ticket.pop(ticket, None)  # re-inserted: the newest last
            self._by_ticket[ticket] = Pending(rider, mask, attempt, now)
            self._expire(now)
            while len(self._by_ticket) > MAX_PENDING:
                self._by_ticket.pop(next(iter(self._by_ticket)))
        return ticket

    def started(self, ticket: str, attempt: str) -> None:
        """Note the attempt started for the rider under ``ticket``."""
        with self._lock:
            p = self._by_ticket.get(ticket)
            if p is not None:
                self._by_ticket[ticket] = replace(p, attempt=attempt,
                                                  at=self.clock.monotonic())

    def get(self, ticket: object) -> Pending | None:
        """The rider under ``ticket``, or None (unknown, or older than ``ttl``)."""
        if not isinstance(ticket, str):
            return None
        now = self.clock.monotonic()
        with self._lock:
            self._expire(now)
            return self._by_ticket.get(ticket)

    def forget(self, ticket: object) -> None:
        if isinstance(ticket, str):
            with self._lock:
                self._by_ticket.pop(ticket, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_ticket)

    def _expire(self, now: float) -> None:
        # A stamp from the future was made before a reboot of the clock: stale too.
        for ticket in [t for t, p in self._by_ticket.items()
                       if not 0.0 <= now - p.at <= self.ttl]:
            del self._by_ticket[ticket]
