"""Simulated riders: they borrow through the real Lending and handle the banks
of the simulated board, for ``hardware: sim`` and ``yizhan demo``.

Only the rider's hands are faked: a rider asks :meth:`Lending.borrow` exactly
as the kiosk does, and pulls the bank out of the board simulator
(``board.take``) once the slot is open; hours later they push it back into
an empty slot (``board.insert``). The locker, the loans and the events in
between are the station's real code.

    riders = SimRiders(lending, board, clock, rng=random.Random(7))
    riders.tick()                 # from a loop or a test, after moving the clock
    riders.start(interval=1.0)    # or its own thread (the demo); riders.stop()

Timing is on ``clock`` (monotonic) and choices on ``rng``, so a test with a
ManualClock and a seeded Random replays the same day.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from firmware.sim.board import BoardSimulator
from firmware.sim.model import SlotError
from protocol.ids import rider_id
from yizhan.clock import Clock
from yizhan.config import DEMO_FLEET_KEY

if TYPE_CHECKING:
    from firmware.lending import Lending

log = logging.getLogger(__name__)

__all__ = ["SimRiders"]


@dataclass(slots=True)
class _Waiting:
    """A rider at the kiosk who has asked for a bank."""

    rider: str
    attempt: str
    take_at: float | None = None  # monotonic; set once the slot is open
    walks_off: bool = False  # never takes it (the not_taken path)


@dataclass(slots=True)
class _Holding:
    """A rider out on the road with a bank."""

    rider: str
    bank: str
    return_at: float


class SimRiders:
    """A fleet of ``fleet_size`` riders who come by every ``mean_interval``
    seconds on average (exponential gaps), take their bank after
    ``take_delay`` seconds (``walk_off`` of them never do), keep it about
    ``mean_loan`` seconds and bring it back drained.
    """

    def __init__(
        self,
        lending: Lending,
        board: BoardSimulator,
        clock: Clock,
        *,
        fleet_key: bytes = DEMO_FLEET_KEY,
        rng: random.Random | None = None,
        fleet_size: int = 40,
        mean_interval: float = 300.0,
        mean_loan: float = 2 * 3600.0,
        take_delay: float = 3.0,
        walk_off: float = 0.03,
    ) -> None:
        self.lending = lending
        self.board = board
        self.clock = clock
        self.rng = rng or random.Random()
        self.mean_interval = mean_interval
        self.mean_loan = mean_loan
        self.take_delay = take_delay
        self.walk_off = walk_off
        phones = {f"1{self.rng.choice('3456789')}{self.rng.randrange(10**9):09d}"
                  for _ in range(fleet_size)}
        self.riders = sorted(rider_id(fleet_key, p) for p in phones)
        self._waiting: list[_Waiting] = []
        self._holding: list[_Holding] = []
        self._next_visit = clock.monotonic() + self._gap()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # What happened, for the demo's log and for tests.
        self.borrowed = 0
        self.returned = 0
        self.refused: dict[str, int] = {}

    def _gap(self) -> float:
        return self.rng.expovariate(1.0 / self.mean_interval)

    @property
    def waiting(self) -> int:
        """Riders at the kiosk waiting for their slot to open (or about to take)."""
        with self._lock:
            return len(self._waiting)

    @property
    def out(self) -> int:
        """Banks out on the road right now."""
        with self._lock:
            return len(self._holding)

    # -- one step ------------------------------------------------------------------

    def tick(self) -> None:
        """Do whatever is due by the clock: a rider arrives, takes, or returns."""
        with self._lock:
            now = self.clock.monotonic()
            if now >= self._next_visit:
                self._next_visit = now + self._gap()
                self._visit()
            self._take_due(now)
            self._return_due(now)

    def _visit(self) -> None:
        busy = {w.rider for w in self._waiting} | {h.rider for h in self._holding}
        free = [r for r in self.riders if r not in busy]
        if not free:
            return
        rider = self.rng.choice(free)
        attempt = self.lending.borrow(rider)
        if attempt.state == "failed":
            self.refused[attempt.reason] = self.refused.get(attempt.reason, 0) + 1
            log.info("sim rider %s: no bank (%s)", rider, attempt.reason)
            return
        self._waiting.append(_Waiting(rider, attempt.id,
                                      walks_off=self.rng.random() < self.walk_off))

    def _take_due(self, now: float) -> None:
        for w in list(self._waiting):
            attempt = self.lending.attempt(w.attempt)
            if attempt is None or attempt.state == "failed":
                self._waiting.remove(w)
                continue
            if attempt.state == "taken":
                self._waiting.remove(w)
                self.borrowed += 1
                loan = self.rng.expovariate(1.0 / self.mean_loan)
                self._holding.append(_Holding(w.rider, attempt.bank or "", now + loan))
                continue
            if attempt.state != "open" or w.walks_off:
                continue
            if w.take_at is None:
                w.take_at = now + self.take_delay
            if now >= w.take_at:
                try:
                    self.board.take(attempt.slot)
                except SlotError as err:  # the latch closed before the rider got there
                    log.info("sim rider %s missed slot %s: %s", w.rider, attempt.slot, err)
                    w.walks_off = True

    def _return_due(self, now: float) -> None:
        for h in [h for h in self._holding if now >= h.return_at]:
            empty = [n for n in range(1, self.board.n_slots + 1)
                     if not self.board.slot(n).present and self.board.slot(n).fault is None]
            if not empty:
                h.return_at = now + 60.0  # cabinet full: come back later
                continue
            slot = self.rng.choice(empty)
            try:
                self.board.insert(slot, h.bank, charge=self.rng.randint(5, 60))
            except SlotError as err:
                log.info("sim rider %s could not return %s: %s", h.rider, h.bank, err)
                h.return_at = now + 60.0
                continue
            self._holding.remove(h)
            self.returned += 1

    # -- its own thread (the demo) --------------------------------------------------------

    def start(self, interval: float = 1.0) -> SimRiders:
        """Tick every ``interval`` real seconds on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(interval,),
                                            name="sim-riders", daemon=True)
            self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.tick()
            except Exception:
                log.exception("simulated riders failed a tick")

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)
