"""The power-bank cabinet as the station knows it.

A :class:`Locker` owns the :class:`~firmware.hardware.board.LockerBoard`: its own
thread polls STATUS every ``poll_interval`` and is the only thread that talks
to the serial port. Other threads (the kiosk's lending, the command worker) ask
it to release a slot and wait for the board's verdict::

    locker = Locker(LockerBoard("/dev/serial/by-id/usb-...-port0"), reporter, clock)
    locker.start()
    locker.release(3)          # UnlockResult.RELEASED, or raises BoardOffline
    locker.online              # False once 3 polls in a row went unanswered
    locker.section()           # contract §5 ``lockers``
    locker.close()

Events (contract §6): ``locker_offline`` / ``locker_online`` on the board's
silence and return, ``slot_fault`` / ``slot_fault_cleared`` as a slot's reported
fault comes and goes. A pulled USB adapter is reopened with jittered exponential
backoff (1 s doubling to 30 s), and the board is greeted with INFO on every
(re)connect. See docs/locker.md.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from firmware.hardware.board import BoardOffline, LockerBoard, LockerError
from firmware.parts import Reporter
from protocol.frames import ChargeResult, SlotRecord, UnlockResult
from protocol.messages import Lockers, Slot
from yizhan.backoff import Backoff
from yizhan.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["BoardOffline", "Listener", "Locker", "LockerError"]

#: ``fn(slot, before, after)``: a slot's record changed (``before`` is None the
#: first time the slot is seen). Called on the locker thread; keep it short.
Listener = Callable[[int, SlotRecord | None, SlotRecord], None]

T = TypeVar("T")

# How long a caller keeps waiting for a request the locker thread has already
# put on the wire: the board's answer (or its retries running out, < 1 s)
# decides, never the caller's patience, so "released" is never reported as failed.
_INFLIGHT_GRACE = 5.0


class _Job:
    """A request from another thread, run on the locker thread."""

    __slots__ = ("done", "error", "fn", "result", "state")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.state = "pending"  # -> running -> done, or pending -> cancelled
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Locker:
    """The cabinet: last known slot records, the board's health, releases.

    ``poll_interval`` seconds between STATUS polls (``watch_interval`` for
    ``watch_for`` seconds after a release, so a taken bank shows at once);
    ``offline_after`` failed polls in a row make it offline. Due times and the
    reconnect backoff run on ``clock`` (tests drive :meth:`poll_once` with a
    ManualClock); the serial timeouts are real time.
    """

    def __init__(
        self,
        board: LockerBoard,
        reporter: Reporter,
        clock: Clock,
        poll_interval: float = 2.0,
        offline_after: int = 3,
        *,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        watch_interval: float = 0.5,
        watch_for: float = 15.0,
        tick: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        if offline_after < 1:
            raise ValueError(f"offline_after must be >= 1, got {offline_after!r}")
        self.board = board
        self.reporter = reporter
        self.clock = clock
        self.poll_interval = poll_interval
        self.offline_after = offline_after
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.watch_interval = min(watch_interval, poll_interval)
        self.watch_for = watch_for
        self.tick = tick
        self._rng = rng or random.Random()
        # Each reopen wait lies in the upper quarter of 1 s, 2 s, 4 s … 30 s.
        self._reopen = Backoff(reconnect_min, reconnect_max, rand=self._rng.random, jitter=0.25)

        self._lock = threading.Lock()  # guards what other threads read
        self._io = threading.RLock()  # one round at a time; re-entered by listeners
        self._records: dict[int, SlotRecord] = {}
        self._n_slots: int | None = None
        self._firmware: str | None = None
        self._online: bool | None = None  # None: not heard from yet
        self._listeners: list[Listener] = []
        self._jobs: deque[_Job] = deque()

        self._greeted = False  # INFO answered since the last failure
        self._failures = 0  # consecutive failed rounds
        self._next_poll = float("-inf")
        self._watch_until = float("-inf")
        self._reconnect_at: float | None = None  # set while the port is gone
        self._reconnect_tries = 0
        self.last_error: str | None = None

        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False

        # Counters, for health and tests.
        self.polls = 0
        self.failed_polls = 0
        self.reconnects = 0
        self.listener_errors = 0

    # -- what the station reads --------------------------------------------------

    @property
    def online(self) -> bool:
        """True while the board answers (False before it first did)."""
        return self._online is True

    @property
    def n_slots(self) -> int | None:
        """Slots the board declared in its INFO answer (None before it answered)."""
        return self._n_slots

    @property
    def firmware(self) -> str | None:
        return self._firmware

    def slots(self) -> list[SlotRecord]:
        """The last known record of every slot, slot 1 first (kept while offline).

        >>> [r.slot for r in locker.slots() if r.present and not r.fault]
        [1, 2, 5]
        """
        with self._lock:
            return [self._records[n] for n in sorted(self._records)]

    def slot(self, n: int) -> SlotRecord | None:
        """The last known record of slot ``n``, None when the board never reported it."""
        with self._lock:
            return self._records.get(n)

    def section(self) -> Lockers:
        """Contract §5 ``lockers``: ``online`` and the last known slots."""
        with self._lock:
            records = [self._records[n] for n in sorted(self._records)]
            online = self._online is True
        return Lockers(online=online, slots=tuple(_contract_slot(r) for r in records))

    def describe(self) -> dict:
        """The locker's part of the birth ``hw``: ``{"slots": 12}`` (0 before the board
        first answered)."""
        with self._lock:
            return {"slots": self._n_slots or len(self._records)}

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(slot, before, after)`` on the locker thread for every changed record.

        Lending uses it to see a bank taken (``before.present and not after.present``)
        or returned.
        """
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.remove(fn)

    # -- what the station asks -----------------------------------------------------

    def release(self, slot: int, pulse_ms: int = 500, timeout: float = 2.0) -> UnlockResult:
        """Pulse ``slot``'s lock and return the board's verdict (RELEASED, JAMMED,
        BAD_SLOT, BUSY).

        Raises :class:`BoardOffline` when the board does not answer, its port is
        gone, or the locker thread cannot get to it within ``timeout``.
        A STATUS follows at once, so listeners see the lock open and the bank taken.

        >>> locker.release(3)
        <UnlockResult.RELEASED: 0>
        """
        return self._submit(lambda: self._release(slot, pulse_ms), timeout, f"release slot {slot}")

    def set_charging(self, slot: int, on: bool, timeout: float = 2.0) -> ChargeResult:
        """Switch ``slot``'s charger; raises :class:`BoardOffline` like :meth:`release`."""
        return self._submit(lambda: self._charge(slot, on), timeout, f"charge slot {slot}")

    def refresh(self, timeout: float = 1.0) -> list[SlotRecord]:
        """Poll STATUS now and return the fresh slots; raises :class:`BoardOffline`
        when that poll fails (the last known slots stay in :meth:`slots`)."""
        return self._submit(self._refresh, timeout, "refresh")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Locker:
        """Start the locker thread (idempotent). The port is opened there, not here."""
        if self._closed:
            raise LockerError("the locker is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="locker", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop and join the thread, fail waiting requests, close the port; idempotent.

        The board re-engages every lock by itself after its pulse: nothing is left open.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
            if thread.is_alive():
                log.error("locker thread did not stop within 5 s")
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
        for job in jobs:
            job.error = BoardOffline("the locker was closed before the request ran")
            job.state = "done"
            job.done.set()
        # A thread stuck in a listener must not keep the port open for ever.
        got = self._io.acquire(timeout=1.0)
        try:
            self.board.close()
        finally:
            if got:
                self._io.release()

    def __enter__(self) -> Locker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the locker thread -------------------------------------------------------------

    def poll_once(self) -> bool:
        """One round: run waiting requests, then poll STATUS if it is due by the clock
        (reopening a lost port when its backoff has run out). True if a poll ran.

        The thread does nothing else; tests call it directly with a ManualClock.
        """
        with self._io:
            self._run_jobs()
            if self.clock.monotonic() < self._next_poll:
                return False
            # A failure is logged (once per state change) and counted by _failed().
            with contextlib.suppress(LockerError):
                self._poll()
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.poll_once()
            except Exception:
                # A bug must show in the log, yet must not leave the station
                # without its locker for the rest of the day.
                log.exception("locker round failed")
                self.failed_polls += 1
            # Real time, short: with a ManualClock the test moves the clock and
            # the next due poll is seen within a tick.
            self._wake.wait(self.tick)

    def _submit(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        if self._closed:
            raise BoardOffline(f"the locker is closed; cannot {what}")
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            # No locker thread (a test driving poll_once) or a listener asking:
            # run here, still one round at a time.
            with self._io:
                return fn()
        job = _Job(fn)
        with self._lock:
            self._jobs.append(job)
        self._wake.set()
        if not job.done.wait(timeout):
            with self._lock:
                if job.state == "pending":
                    job.state = "cancelled"
                    self._jobs.remove(job)
                    raise BoardOffline(f"the locker could not {what} within {timeout} s; not sent")
            # Already on the wire: the board's answer decides.
            if not job.done.wait(_INFLIGHT_GRACE):
                raise BoardOffline(f"the locker did not finish {what}")
        if job.error is not None:
            raise job.error
        return job.result

    def _run_jobs(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                job.state = "running"
            try:
                job.result = job.fn()
            except BaseException as err:  # handed to the waiting caller, not swallowed
                job.error = err
            job.state = "done"
            job.done.set()

    # -- rounds ----------------------------------------------------------------------------

    def _reconnect_wait(self) -> float | None:
        """Seconds left before a lost port may be reopened, None when it may be now."""
        if self._reconnect_at is None or self.board.is_open:
            return None
        left = self._reconnect_at - self.clock.monotonic()
        return left if left > 0 else None

    def _poll(self) -> list[SlotRecord]:
        """One STATUS (after INFO when the board needs greeting); raises what failed."""
        now = self.clock.monotonic()
        interval = self.watch_interval if now < self._watch_until else self.poll_interval
        self._next_poll = now + interval
        wait = self._reconnect_wait()
        if wait is not None:
            self._next_poll = self._reconnect_at  # type: ignore[assignment]
            raise BoardOffline(
                f"locker board port {self.board.port} is gone; reopening in {wait:.1f} s "
                f"({self.last_error})"
            )
        self.polls += 1
        reopening = self._reconnect_at is not None
        try:
            if not self._greeted:
                self._greet()
            records = self.board.status()
        except LockerError as err:
            self._failed(err)
            raise
        if reopening:
            self.reconnects += 1
        self._succeeded(records)
        return records

    def _greet(self) -> None:
        n_slots, firmware = self.board.info()
        if self._n_slots is not None and n_slots != self._n_slots:
            log.warning("locker board now reports %d slots (was %d)", n_slots, self._n_slots)
        with self._lock:
            self._n_slots, self._firmware = n_slots, firmware
        self._greeted = True

    def _failed(self, err: LockerError) -> None:
        self.failed_polls += 1
        self._failures += 1
        self._greeted = False  # whatever answers next is greeted again
        self.last_error = str(err)
        if not self.board.is_open:
            # The port itself is gone (or cannot be opened): back off, jittered,
            # so a dead adapter is not hammered and a flapping one settles.
            delay = self._reopen.delay(self._reconnect_tries + 1)
            if self._reconnect_tries == 0:
                log.warning("locker board port lost: %s; reopening with backoff", err)
            self._reconnect_tries += 1
            self._reconnect_at = self.clock.monotonic() + delay
            self._next_poll = self._reconnect_at
        elif self._failures == 1:
            log.warning("locker board did not answer: %s", err)
        if self._failures >= self.offline_after and self._online is not False:
            with self._lock:
                self._online = False
            log.error("locker board offline after %d failed polls: %s", self._failures, err)
            self.reporter.event("locker_offline", {})
            self.reporter.changed()

    def _succeeded(self, records: list[SlotRecord]) -> None:
        if self._failures:
            log.info("locker board answers again after %d failed polls", self._failures)
        self._failures = 0
        self._reconnect_at = None
        self._reconnect_tries = 0
        was = self._online
        if was is not True:
            with self._lock:
                self._online = True
            log.info("locker board online: %s slots, firmware %s", self._n_slots, self._firmware)
            if was is False:
                self.reporter.event("locker_online", {})
            self.reporter.changed()
        self._update(records)

    def _update(self, records: list[SlotRecord]) -> None:
        fresh = {r.slot: r for r in records}
        with self._lock:
            old, self._records = self._records, fresh
            listeners = list(self._listeners)
        gone = sorted(set(old) - set(fresh))
        if gone:
            log.warning("locker board no longer reports slots %s", gone)
        changes = [(n, old.get(n), r) for n, r in sorted(fresh.items()) if old.get(n) != r]
        if not changes and not gone:
            return
        for n, before, after in changes:
            was_fault = before.fault if before is not None else None
            if was_fault != after.fault:
                if was_fault is not None:
                    self.reporter.event("slot_fault_cleared", {"slot": n, "fault": was_fault})
                if after.fault is not None:
                    self.reporter.event("slot_fault", {"slot": n, "fault": after.fault})
        self.reporter.changed()
        for n, before, after in changes:
            for fn in listeners:
                try:
                    fn(n, before, after)
                except Exception:
                    # One broken listener must not stop the others nor the polls.
                    self.listener_errors += 1
                    log.exception("locker listener %r failed on slot %d", fn, n)

    # -- requests, on the locker thread -------------------------------------------------------

    def _refresh(self) -> list[SlotRecord]:
        self._poll()
        return self.slots()

    def _check_port(self, what: str) -> None:
        wait = self._reconnect_wait()
        if wait is not None:
            raise BoardOffline(
                f"cannot {what}: locker board port {self.board.port} is gone "
                f"(reopening in {wait:.1f} s)"
            )

    def _release(self, slot: int, pulse_ms: int) -> UnlockResult:
        self._check_port(f"release slot {slot}")
        try:
            result = self.board.unlock(slot, pulse_ms)
        except BoardOffline as err:
            self._failed(err)
            raise
        if result is UnlockResult.RELEASED:
            # Watch closely for a while: the rider takes the bank within seconds.
            now = self.clock.monotonic()
            self._watch_until = now + self.watch_for
            self._next_poll = now
        else:
            log.info("slot %d not released: board says %s", slot, result.name)
        return result

    def _charge(self, slot: int, on: bool) -> ChargeResult:
        self._check_port(f"switch the charger of slot {slot}")
        try:
            result = self.board.charge(slot, on)
        except BoardOffline as err:
            self._failed(err)
            raise
        self._next_poll = self.clock.monotonic()
        return result


def _contract_slot(r: SlotRecord) -> Slot:
    """A board record in contract §5 words; bank facts are null in an empty slot."""
    return Slot(
        slot=r.slot,
        bank=r.bank_id if r.present else None,
        charge=r.charge if r.present else None,
        charging=r.charging,
        locked=r.locked,
        fault=r.fault,
        temp_c=r.temp_c,
        cycles=r.cycles if r.present else None,
        estimated=r.estimated,
    )
