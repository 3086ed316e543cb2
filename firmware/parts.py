"""What every part of the station agent shares: how it reports, how it is polled.

The agent (``firmware/agent.py``) owns one station loop. Each part — doors,
dispenser, occupancy, locker, lending — is built with a ``Reporter`` and the
agent's clock, reports through it, and is polled by the loop. Parts never
publish MQTT themselves and never touch each other's hardware.

A part's ``poll()`` is one look at the hardware, about every 0.25 s, and must
not block for long (target under 50 ms): a part that talks to slow hardware
(the locker board) does so on its own thread. Its ``close()`` leaves outputs in
their safe state and releases the hardware, and is idempotent.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """The agent's side of a part's reports."""

    def event(self, type_: str, data: dict) -> int:
        """Record a contract §6 event durably (journal first) and return its seq.

        Also marks the State changed. Safe from any thread.
        """

    def changed(self) -> None:
        """The part's State section changed: a State goes out within 2 s."""


class RecordingReporter:
    """A Reporter that keeps what it is told, for a part's own unit tests.

    The agent's real reporter is the journal; this one lets a test of one part
    look at the events that part produced without a broker.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.events: list[tuple[str, dict]] = []
        self.changes = 0

    def event(self, type_: str, data: dict) -> int:
        with self._lock:
            self.events.append((type_, dict(data)))
            self.changes += 1
            return len(self.events)

    def changed(self) -> None:
        with self._lock:
            self.changes += 1

    def types(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.events]

    def of(self, type_: str) -> list[dict]:
        with self._lock:
            return [d for t, d in self.events if t == type_]
