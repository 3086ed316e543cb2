"""Every request the local API refuses, counted by error code and logged so that a
flood cannot fill the SD card.

A refusal's line is written when its code's count reaches 1, 2, 4, 8, … (with the
count so far): the first of each kind shows at once with its details, and a
script sending a million bad requests writes twenty lines, not a million. The
counts are the agent's (``Refusals.counts``), kept per code; codes are the
API's own fixed words, never text from the request, so the table stays small.
"""

from __future__ import annotations

import collections
import logging
import threading

log = logging.getLogger("firmware.localapi")

__all__ = ["Refusals"]


class Refusals:
    """Refused requests of one local API app, by error code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # waitress answers on several threads
        self.counts: collections.Counter[str] = collections.Counter()

    def refused(self, status: int, code: str, what: str, *, logged: bool = False) -> None:
        """Count one refusal; log it when the count of ``code`` is a power of two
        (unless it was ``logged`` already: a crash has its traceback).

        ``what`` says which request (its method and route, and a detail such as
        the caller's address), already trimmed by the caller."""
        with self._lock:
            self.counts[code] += 1
            n = self.counts[code]
        if not logged and n & (n - 1) == 0:
            log.log(logging.ERROR if status >= 500 else logging.WARNING,
                    "local API refused %s: %d %s (%d so far)", what, status, code, n)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())
