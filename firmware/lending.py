"""Lending power banks: borrow, return, restock, with the board as the witness.

A rider types a phone number on the kiosk; the kiosk hashes it to a rider id
and asks the local API, which asks :class:`Lending`::

    attempt = lending.borrow("r:5e8f0c1d2e3f4a5b6c7d8e9f")   # state "releasing"
    ...                                                     # the slot opens: "open"
    lending.attempt(attempt.id).state                       # "taken" once the board
                                                            # reports the bank gone

A bank counts as borrowed only when the board reports its slot empty (design
principle 4): then the loan row and the ``bank_borrowed`` event are written in
one journal transaction. A lock that re-engages with the bank still inside, or
no take within ``take_timeout``, is ``unlock_failed``/``not_taken``. A bank
pushed into a slot is matched to its open loan by bank id (``bank_returned``);
where the cabinet cannot read bank ids, by the rider who claimed the slot on the
kiosk (:class:`firmware.returning.ReturnDesk`, ``lending.return_desk``).

Maintenance staff log in with their PIN; while their session is open the locker
panel is no tamper, they may release slots (``session.release_empty()`` to
restock), and banks they put in are restocks, not returns.

No lock opens for a loan the station could not record: before the board is
asked, a ``borrow_intents`` row must reach the card, and while the journal
cannot write (a full or read-only SD card) every borrow fails ``paused`` at
once (docs/agent-internals.md, "Storage faults"). Returns are facts and are
never refused: the journal holds them until the card takes them.

Everything works from the station's own tables and the last directory, so a
station lends while the hub is unreachable. Slot changes arrive on the locker's
thread (:meth:`Lending._on_slot`); timeouts move on :meth:`poll`, which the
station loop calls every tick.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from firmware.directory import DirectoryStore, PinCheck
from firmware.hardware.board import BoardOffline, BoardRefused
from firmware.journal import SEQ, Journal, StorageFault
from firmware.kept import forget_finished
from firmware.parts import Reporter
from firmware.returning import ReturnDesk
from protocol.frames import ErrorCode, SlotRecord, UnlockResult
from protocol.ids import check_rider_id
from protocol.messages import REFILL_WHAT
from yizhan.clock import Clock

log = logging.getLogger(__name__)

__all__ = [
    "FAIL_REASONS",
    "PIN_RE",
    "BorrowAttempt",
    "Lending",
    "LendingError",
    "Loan",
    "MaintenanceSession",
    "PinRefused",
    "Readiness",
    "ReleaseOutcome",
    "Return",
    "SessionEnded",
    "UnknownSession",
]

#: A PIN as riders and staff type it.
PIN_RE = re.compile(r"^[0-9]{4,8}\Z")

#: Why a borrow attempt failed; each is a screen on the kiosk.
FAIL_REASONS = frozenset({
    "denied",          # the rider is on the directory's denied list
    "not_registered",  # registered lending and the rider is not listed
    "pin_required",    # registered lending and no PIN given (ask for it; not a wrong try)
    "bad_pin",         # wrong PIN (tries_left says how many before a lockout)
    "locked_out",      # five wrong PINs: until locked_until
    "limit",           # the rider already holds max_per_rider banks
    "maintenance",     # staff are working on the cabinet
    "board_offline",   # the locker board does not answer
    "no_ready",        # no charged bank (ready_at estimates when one will be)
    "jammed",          # the chosen slot's lock is stuck
    "bad_slot",        # the board does not know the chosen slot
    "busy",            # the board was busy with that slot; try again
    "not_taken",       # the slot opened and the bank was not taken
    "paused",          # the journal cannot record a loan now (SD card full or
                       # read-only): no slot opens until it can
})

#: Why lending is paused (``Lending.paused``), besides maintenance.
PAUSED_STORAGE = "storage"

# Attempt states.
RELEASING, OPEN, TAKEN, FAILED = "releasing", "open", "taken", "failed"
_IN_FLIGHT = (RELEASING, OPEN)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS loans (
        id INTEGER PRIMARY KEY,
        rider TEXT NOT NULL,
        bank TEXT NOT NULL,
        slot INTEGER NOT NULL,
        charge INTEGER,
        borrowed_ts INTEGER NOT NULL,
        due_ts INTEGER NOT NULL,
        borrow_seq INTEGER NOT NULL,
        returned_ts INTEGER,
        return_slot INTEGER,
        return_charge INTEGER,
        return_seq INTEGER,
        closed_by TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS loans_open ON loans (bank) WHERE returned_ts IS NULL",
    # A slot about to open for a borrow, written before the board is asked:
    # the write proves the card can record the loan, and a row left at start
    # says a slot opened while the agent stopped.
    """CREATE TABLE IF NOT EXISTS borrow_intents (
        id TEXT PRIMARY KEY,
        rider TEXT NOT NULL,
        slot INTEGER NOT NULL,
        bank TEXT,
        ts INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS maintenance_sessions (
        id TEXT PRIMARY KEY,
        staff TEXT NOT NULL,
        started_ts INTEGER NOT NULL,
        ended_ts INTEGER,
        end_reason TEXT,
        banks_in INTEGER NOT NULL DEFAULT 0,
        banks_out INTEGER NOT NULL DEFAULT 0,
        banks_confirmed INTEGER NOT NULL DEFAULT 0
    )""",
)


# -- errors --------------------------------------------------------------------------------


class LendingError(Exception):
    """Root of what Lending refuses (other than a borrow, which fails as an attempt)."""


class PinRefused(LendingError):
    """A staff login refused: ``reason`` is ``bad_pin`` or ``locked_out``."""

    def __init__(self, check: PinCheck) -> None:
        super().__init__(check.reason)
        self.reason = check.reason
        self.tries_left = check.tries_left
        self.locked_until = check.locked_until


class UnknownSession(LendingError, KeyError):
    """No maintenance session has that id (or it ended long ago)."""

    def __str__(self) -> str:  # KeyError would quote it
        return str(self.args[0]) if self.args else "unknown session"


class SessionEnded(LendingError):
    """The maintenance session has ended (logged out, idle, replaced)."""


# -- what Lending hands out (immutable snapshots) ------------------------------------------


@dataclass(frozen=True, slots=True)
class BorrowAttempt:
    """One rider's try at borrowing, as the kiosk follows it.

    ``state`` is ``releasing`` (the board is opening ``slot``), ``open`` (take
    your bank from ``slot``), ``taken`` (the loan is recorded) or ``failed``
    (``reason`` is one of :data:`FAIL_REASONS`). For ``no_ready``,
    ``ready_at`` (ms) estimates when a bank will be charged enough; for
    ``bad_pin``/``locked_out``, ``tries_left`` and ``locked_until`` (ms).
    """

    id: str
    rider: str
    state: str
    reason: str | None
    slot: int | None
    bank: str | None
    charge: int | None
    created: int  # ms, station clock
    updated: int
    open_until: int | None = None  # ms: take the bank before this
    ready_at: int | None = None
    tries_left: int | None = None
    locked_until: int | None = None

    @property
    def done(self) -> bool:
        return self.state in (TAKEN, FAILED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Loan:
    """An open loan: ``rider`` took ``bank`` from ``slot`` at ``borrowed_ts`` (ms).

    ``bank`` is None for a bank the board could not name (an ``estimated``
    slot of a lock-control cabinet, contract §5).
    """

    rider: str
    bank: str | None
    slot: int
    charge: int | None
    borrowed_ts: int
    due_ts: int  # borrowed_ts + the policy's loan_hours at borrow time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Return:
    """A bank that came back (``rider`` None when it was no loan of this station;
    ``bank`` None where the cabinet cannot read bank ids)."""

    slot: int
    bank: str | None
    charge: int | None
    rider: str | None
    returned_ts: int
    borrowed_ts: int | None
    duration_s: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Which banks a rider could have now, and when the next one will be ready.

    ``ready`` lists ``(slot, charge)``, best first; ``next_ready_at`` (ms) is
    None when a bank is ready now or none is charging.
    """

    online: bool
    ready: tuple[tuple[int, int], ...]
    next_ready_at: int | None


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """What the board did for a staff release: ``result`` is ``released``,
    ``jammed``, ``busy``, ``bad_slot`` or ``board_offline``."""

    slot: int
    result: str

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "result": self.result}


# -- internal mutable records --------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    id: str
    rider: str
    state: str
    created: int
    updated: int
    reason: str | None = None
    slot: int | None = None
    bank: str | None = None
    charge: int | None = None
    opened_at: float | None = None  # monotonic
    finished_at: float | None = None  # monotonic
    open_until: int | None = None
    ready_at: int | None = None
    tries_left: int | None = None
    locked_until: int | None = None
    intent: bool = False  # a borrow_intents row is on the card for it

    def snapshot(self) -> BorrowAttempt:
        return BorrowAttempt(
            self.id, self.rider, self.state, self.reason, self.slot, self.bank, self.charge,
            self.created, self.updated, self.open_until, self.ready_at, self.tries_left,
            self.locked_until,
        )


@dataclass(slots=True)
class _Session:
    id: str
    staff: str
    started_ts: int
    last_activity: float  # monotonic
    banks_in: int = 0
    banks_out: int = 0
    banks_confirmed: bool = False
    ended_ts: int | None = None
    end_reason: str | None = None


class MaintenanceSession:
    """A staff member's session at the cabinet, as the kiosk holds it.

        session = lending.start_maintenance("li", "2468")
        session.release_empty()            # open every empty slot to restock
        session.confirm_refill("water")
        session.end()
    """

    def __init__(self, lending: Lending, record: _Session) -> None:
        self._lending = lending
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def staff(self) -> str:
        return self._record.staff

    @property
    def active(self) -> bool:
        return self._record.ended_ts is None

    @property
    def banks_in(self) -> int:
        return self._record.banks_in

    @property
    def banks_out(self) -> int:
        return self._record.banks_out

    def release_slot(self, slot: int) -> ReleaseOutcome:
        return self._lending.release_slot(self.id, slot)

    def release_empty(self) -> list[ReleaseOutcome]:
        return self._lending.release_empty(self.id)

    def confirm_refill(self, what: str) -> None:
        self._lending.confirm_refill(self.id, what)

    def end(self) -> None:
        self._lending.end_maintenance(self.id)

    def to_dict(self) -> dict[str, Any]:
        r = self._record
        return {
            "id": r.id, "staff": r.staff, "active": r.ended_ts is None,
            "started": r.started_ts, "ended": r.ended_ts, "end_reason": r.end_reason,
            "banks_in": r.banks_in, "banks_out": r.banks_out,
            "banks_confirmed": r.banks_confirmed,
        }


class Lending:
    """Loans and maintenance sessions of one station's power-bank locker.

    Build it before ``locker.start()`` (it listens to the locker's slot changes
    from its constructor) and call :meth:`poll` from the station loop.

    ``locker`` is a :class:`firmware.locker.Locker`; ``journal`` holds the
    ``loans`` and ``maintenance_sessions`` tables and every event Lending
    makes, each written with its rows in one transaction (``reporter`` is then
    told the State changed); ``directory`` is the :class:`DirectoryStore`;
    ``doors`` (optional) has a ``maintenance`` flag that Lending raises while a
    session is open; ``synced()`` says whether the clock is NTP-synchronised.

    Tunables: ``take_timeout`` (30 s from the slot opening to the bank
    leaving), ``maintenance_idle`` (600 s without activity ends a session),
    ``charge_rate`` (% per minute, for the ``no_ready`` estimate),
    ``slot_hold`` (300 s: a slot that jammed or whose bank was not taken is
    passed over for this long), ``pulse_ms`` and ``release_timeout`` for the
    board, ``keep_attempts`` (600 s: how long finished attempts stay readable).
    """

    def __init__(
        self,
        locker: Any,
        journal: Journal,
        reporter: Reporter,
        clock: Clock,
        directory: DirectoryStore,
        doors: Any = None,
        synced: Callable[[], bool] = lambda: True,
        *,
        take_timeout: float = 30.0,
        maintenance_idle: float = 600.0,
        charge_rate: float = 1.0,
        slot_hold: float = 300.0,
        pulse_ms: int = 500,
        release_timeout: float = 2.0,
        keep_attempts: float = 600.0,
        keep_returns: int = 50,
        return_window: float = 120.0,
    ) -> None:
        self.locker = locker
        self.journal = journal
        self.reporter = reporter
        self.clock = clock
        self.directory = directory
        self.doors = doors
        self.synced = synced
        self.take_timeout = take_timeout
        self.maintenance_idle = maintenance_idle
        self.charge_rate = charge_rate
        self.slot_hold = slot_hold
        self.pulse_ms = pulse_ms
        self.release_timeout = release_timeout
        self.keep_attempts = keep_attempts
        # One lock for the in-memory picture. Never held while calling the
        # locker: its thread calls our listener, possibly under its own lock.
        self._lock = threading.RLock()
        self._attempts: dict[str, _Attempt] = {}
        self._held: dict[int, float] = {}  # slot -> monotonic end of its hold
        self._open: dict[str, Loan] = {}  # bank -> its open loan
        self._returns: collections.deque[Return] = collections.deque(maxlen=keep_returns)
        self._lent_at: dict[str, float] = {}  # bank -> monotonic start of a loan of this run
        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None
        self._closed = False
        # Releases wait for the board (up to release_timeout); the kiosk must
        # not, so they run here, one at a time as the board serves them anyway.
        self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lending-release")
        self.return_desk = ReturnDesk(self, window=return_window)
        self._init_tables()
        self._end_stale_sessions()
        locker.add_listener(self._on_slot)
        # A bank pushed in while the agent was down: settle it against the
        # picture the locker already has (if it has one yet).
        for record in self._safe_slots():
            self._on_slot(record.slot, None, record)

    # -- tables ----------------------------------------------------------------------------

    def _init_tables(self) -> None:
        self.journal.ensure_schema(_SCHEMA)
        for row in self._read("SELECT rider, bank, slot, charge, borrowed_ts, due_ts FROM loans"
                              " WHERE returned_ts IS NULL ORDER BY id"):
            key = row[1]
            loan = Loan(*row)
            if is_stand_in(key):
                loan = Loan(loan.rider, None, *row[2:])
            self._open[key] = loan
        intents = self._read("SELECT id, rider, slot, bank, ts FROM borrow_intents ORDER BY ts")
        for iid, rider, slot, bank, ts in intents:
            # The agent stopped between opening a slot and hearing how it went.
            log.warning("slot %d was being opened for %s (bank %s, ts %d) when the agent "
                        "stopped; if that bank is gone, it left without a loan record",
                        slot, rider, bank, ts)
            self.journal.record(self.clock.ms(), bool(self.synced()), rows=[
                ("DELETE FROM borrow_intents WHERE id = ?", (iid,))])

    def _read(self, sql: str) -> list[tuple]:
        """Rows of one of our tables; none when the table could not be made (a
        station that started on a full card, before it had lent anything)."""
        with self.journal.read() as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError as err:
                if "no such table" not in str(err):
                    raise
                log.warning("lending's tables are not in the journal yet (%s)", err)
                return []

    def _end_stale_sessions(self) -> None:
        # A session open when the agent stopped: the panel doors forgot it
        # (doors.maintenance starts False), so the hub must learn it ended.
        rows = self._read("SELECT id, staff, started_ts, banks_in, banks_out, banks_confirmed"
                          " FROM maintenance_sessions WHERE ended_ts IS NULL")
        for sid, staff, started, banks_in, banks_out, confirmed in rows:
            record = _Session(sid, staff, started, self.clock.monotonic(), banks_in, banks_out,
                              bool(confirmed))
            self._sessions[sid] = record
            self._session = record
            self._end(record, "restart")

    def _write(self, events: list[tuple[str, dict]], *rows: tuple[str, tuple]) -> int | None:
        """Events and rows in one transaction; returns the last event's seq.

        A row's arguments may contain :data:`firmware.journal.SEQ`, replaced by
        that seq. What happened has happened (a bank came back, a slot jammed):
        when the card refuses the write, the journal holds it in memory and
        writes it later, and None is returned.
        """
        seq = self.journal.record(self.clock.ms(), bool(self.synced()), events, rows)
        if events:
            self.reporter.changed()
        return seq

    # -- borrowing -------------------------------------------------------------------------

    def borrow(self, rider: str, pin: str | None = None) -> BorrowAttempt:
        """Start lending a bank to ``rider``; the attempt moves on by itself.

        Raises ValueError (InvalidIdentifier) for a malformed rider id or PIN,
        before anything changes. Every refusal is an attempt in state
        ``failed`` with its reason. A rider who taps twice gets the attempt
        already under way.
        """
        check_rider_id(rider)
        if pin is not None and (not isinstance(pin, str) or not PIN_RE.match(pin)):
            raise ValueError("pin must be 4 to 8 digits")
        with self._lock:
            running = self._in_flight(rider)
            if running is not None:
                return running.snapshot()
            if self._session is not None:
                return self._refuse(rider, "maintenance")
        if self.paused is not None:
            return self._refuse(rider, "paused")
        if self.directory.is_denied(rider):
            return self._refuse(rider, "denied")
        policy = self.directory.policy
        if policy.lending == "registered":
            if not self.directory.is_registered(rider):
                return self._refuse(rider, "not_registered")
            if pin is None:
                return self._refuse(rider, "pin_required")
            check = self.directory.check_rider_pin(rider, pin)
            if not check.ok:
                return self._refuse(rider, check.reason or "bad_pin",
                                    tries_left=check.tries_left,
                                    locked_until=check.locked_until)
        # Ask the locker before taking our lock (see __init__).
        online = self.locker.online
        records = self._safe_slots()
        with self._lock:
            running = self._in_flight(rider)  # a second tap raced us through the PIN
            if running is not None:
                return running.snapshot()
            held = sum(1 for loan in self._open.values() if loan.rider == rider)
            if held >= policy.max_per_rider:
                return self._refuse(rider, "limit")
            if not online or self._closed:
                return self._refuse(rider, "board_offline")
            ready = self._ready(records, policy.min_charge)
            if not ready:
                return self._refuse(rider, "no_ready",
                                    ready_at=self._next_ready_at(records, policy.min_charge))
            best = ready[0]
            now = self.clock.ms()
            attempt = _Attempt(_new_id("b"), rider, RELEASING, now, now, slot=best.slot,
                               bank=best.bank_id, charge=best.charge)
            self._attempts[attempt.id] = attempt
            self._prune()
        if not self._intend(attempt):
            return attempt.snapshot()
        log.info("lending slot %d (%s, %s%%) to %s", best.slot, best.bank_id, best.charge, rider)
        self._releaser.submit(self._release_for, attempt.id)
        return attempt.snapshot()

    @property
    def paused(self) -> str | None:
        """Why borrowing is paused, besides maintenance: ``storage`` while the
        journal cannot write (a loan could not be recorded), else None."""
        return None if self.journal.writable else PAUSED_STORAGE

    def _intend(self, a: _Attempt) -> bool:
        """Write the borrow's intent before any lock opens; False (the attempt
        failed ``paused``, nothing sent to the board) when the card refuses it."""
        try:
            self.journal.commit(a.created, bool(self.synced()), rows=[(
                "INSERT INTO borrow_intents (id, rider, slot, bank, ts) VALUES (?, ?, ?, ?, ?)",
                (a.id, a.rider, a.slot, a.bank, a.created))])
        except StorageFault as err:
            log.error("borrow by %s refused before slot %s opened: the journal cannot "
                      "record it (%s)", a.rider, a.slot, err)
            with self._lock:
                a.state, a.reason = FAILED, "paused"
                a.updated, a.finished_at = self.clock.ms(), self.clock.monotonic()
            self.reporter.changed()
            return False
        with self._lock:
            a.intent = True
        return True

    def _forget_intent(self, a: _Attempt) -> list[tuple[str, tuple]]:
        """The row that drops ``a``'s intent, for the write that settles it."""
        if not a.intent:
            return []
        a.intent = False
        return [("DELETE FROM borrow_intents WHERE id = ?", (a.id,))]

    def attempt(self, attempt_id: str) -> BorrowAttempt | None:
        """The attempt as it stands now, or None when unknown (or long finished)."""
        with self._lock:
            a = self._attempts.get(attempt_id)
            return None if a is None else a.snapshot()

    def _in_flight(self, rider: str) -> _Attempt | None:
        return next((a for a in self._attempts.values()
                     if a.rider == rider and a.state in _IN_FLIGHT), None)

    def _refuse(self, rider: str, reason: str, **extra: Any) -> BorrowAttempt:
        now = self.clock.ms()
        a = _Attempt(_new_id("b"), rider, FAILED, now, now, reason=reason,
                     finished_at=self.clock.monotonic(), **extra)
        with self._lock:
            self._attempts[a.id] = a
            self._prune()
        log.info("borrow by %s refused: %s", rider, reason)
        return a.snapshot()

    def _release_for(self, attempt_id: str) -> None:
        self._open_slot(self._attempts, attempt_id, RELEASING, self.take_timeout, self._fail)

    def _open_slot(
        self, pending: dict[str, Any], key: str, waiting: str, window: float,
        fail: Callable[[Any, str], object],
    ) -> None:
        """Open the slot of ``pending[key]`` (a borrow or a return) for its rider.

        The board is asked without the lock held. Once released, the rider has
        ``window`` seconds (state ``open``); any other verdict goes to ``fail``
        with the lock held. Nothing happens when it left ``waiting`` meanwhile:
        the board already reported the bank gone or arrived.
        """
        with self._lock:
            x = pending.get(key)
            if x is None or x.state != waiting or self._closed:
                return
            slot = x.slot
        assert slot is not None
        result = self._release(slot)
        with self._lock:
            if x.state != waiting:
                return
            if result == "released":
                x.state = OPEN
                x.opened_at = self.clock.monotonic()
                x.updated = self.clock.ms()
                x.open_until = x.updated + int(window * 1000)
                return
            fail(x, result)

    def _release(self, slot: int) -> str:
        """Ask the board to open ``slot``; ``released`` or the reason it did not."""
        try:
            outcome = self.locker.release(slot, pulse_ms=self.pulse_ms,
                                          timeout=self.release_timeout)
        except BoardOffline as err:
            log.warning("release of slot %d: board offline: %s", slot, err)
            return "board_offline"
        except BoardRefused as err:
            log.warning("release of slot %d refused by the board: %s", slot, err)
            return "bad_slot" if err.code == ErrorCode.BAD_SLOT else "board_offline"
        except Exception:
            # Not a board verdict; the station must still answer the rider.
            log.exception("release of slot %d failed", slot)
            return "board_offline"
        return {
            UnlockResult.RELEASED: "released",
            UnlockResult.JAMMED: "jammed",
            UnlockResult.BAD_SLOT: "bad_slot",
            UnlockResult.BUSY: "busy",
        }.get(outcome, "board_offline")

    def _fail(self, a: _Attempt, reason: str) -> None:
        """Finish an in-flight attempt as failed; called with the lock held."""
        a.state, a.reason = FAILED, reason
        a.updated = self.clock.ms()
        a.finished_at = self.clock.monotonic()
        if a.slot is not None and reason in ("jammed", "not_taken"):
            self._held[a.slot] = self.clock.monotonic() + self.slot_hold
        log.warning("borrow of slot %s by %s failed: %s", a.slot, a.rider, reason)
        rows = self._forget_intent(a)
        if reason != "busy" and a.slot is not None:
            # busy is no failure of the lock: the board asks us to come back.
            self._write([("unlock_failed", {"slot": a.slot, "reason": reason})], *rows)
        elif rows:
            self._write([], *rows)

    def _taken(self, a: _Attempt, before: SlotRecord) -> None:
        """The board reports ``a``'s bank gone: the loan begins. Lock held."""
        bank = before.bank_id or a.bank
        charge = before.charge if before.charge is not None else a.charge
        assert a.slot is not None
        # A bank the board cannot name (an estimated slot) is lent all the
        # same: the event says bank null, the loans table keys it by the attempt.
        key = bank if bank is not None else stand_in(a.id)
        ts = self.clock.ms()
        due = ts + self.directory.policy.loan_hours * 3_600_000
        data = {"slot": a.slot, "bank": bank, "charge": charge, "rider": a.rider}
        self._open[key] = Loan(a.rider, bank, a.slot, charge, ts, due)
        self._lent_at[key] = self.clock.monotonic()
        a.state, a.bank, a.charge, a.updated = TAKEN, bank, charge, ts
        a.finished_at = self.clock.monotonic()
        self._write(
            [("bank_borrowed", data)],
            # A bank still on an open loan came back unseen: close that loan
            # before its bank starts a new one.
            ("UPDATE loans SET returned_ts = ?, closed_by = 'superseded'"
             " WHERE bank = ? AND returned_ts IS NULL", (ts, key)),
            ("INSERT INTO loans (rider, bank, slot, charge, borrowed_ts, due_ts, borrow_seq)"
             " VALUES (?, ?, ?, ?, ?, ?, ?)", (a.rider, key, a.slot, charge, ts, due, SEQ)),
            *self._forget_intent(a),
        )
        log.info("%s took %s from slot %d", a.rider, bank or "a bank (no id)", a.slot)

    # -- what a rider could have -----------------------------------------------------------

    def readiness(self) -> Readiness:
        """Banks ready now (best first) and the estimate of the next one."""
        online = self.locker.online
        records = self._safe_slots()
        min_charge = self.directory.policy.min_charge
        with self._lock:
            ready = self._ready(records, min_charge)
        next_at = None if ready else self._next_ready_at(records, min_charge)
        return Readiness(online, tuple((r.slot, r.charge or 0) for r in ready), next_at)

    def _ready(self, records: list[SlotRecord], min_charge: int) -> list[SlotRecord]:
        """Slots a rider may be given, best first: highest charge, then the bank
        with the fewest cycles (the most life left), then the lowest slot.

        A bank needs its id, except in an ``estimated`` slot (a board that cannot
        read ids), where the station's estimate of its charge decides: a bank
        never seen on charging power counts 0 % and is never lent.
        """
        now = self.clock.monotonic()
        busy = {a.slot for a in self._attempts.values() if a.state in _IN_FLIGHT}
        ready = [
            r for r in records
            if r.present and r.locked and r.fault is None
            and (r.bank_id is not None or r.estimated)
            and r.charge is not None and r.charge >= min_charge
            and r.slot not in busy and self._held.get(r.slot, 0.0) <= now
        ]
        ready.sort(key=lambda r: (-(r.charge or 0), 1 << 20 if r.cycles is None else r.cycles,
                                  r.slot))
        return ready

    def _next_ready_at(self, records: list[SlotRecord], min_charge: int) -> int | None:
        """When the charging bank nearest ``min_charge`` will reach it (ms), at
        ``charge_rate`` % a minute; None when nothing is charging."""
        waits = [
            (min_charge - r.charge) / self.charge_rate * 60.0
            for r in records
            if r.present and r.charging and r.fault is None and r.charge is not None
            and r.charge < min_charge
        ]
        if not waits or self.charge_rate <= 0:
            return None
        return self.clock.ms() + int(min(waits) * 1000)

    def _safe_slots(self) -> list[SlotRecord]:
        try:
            return list(self.locker.slots())
        except Exception:
            log.exception("reading the locker's slots failed")
            return []

    # -- loans and returns -----------------------------------------------------------------

    def open_loans(self, rider: str | None = None) -> list[Loan]:
        """Loans not yet returned (all, or ``rider``'s), oldest first; the hub
        decides what is overdue."""
        with self._lock:
            loans = [loan for loan in self._open.values() if rider in (None, loan.rider)]
        return sorted(loans, key=lambda loan: loan.borrowed_ts)

    def recent_returns(self, since_ms: int) -> list[Return]:
        """Banks returned at or after ``since_ms`` (the kiosk's thank-you screen)."""
        with self._lock:
            return [r for r in self._returns if r.returned_ts >= since_ms]

    def _returned(self, slot: int, after: SlotRecord, in_maintenance: bool) -> None:
        """A bank appeared in ``slot``. Lock held."""
        bank = after.bank_id
        if bank is None and after.estimated:
            # A cabinet that cannot read ids: the rider who claimed the slot.
            self.return_desk.returned_without_id(slot, after, in_maintenance)
            return
        if bank is None:
            log.warning("a bank was pushed into slot %d but its id cannot be read", slot)
            return
        loan = self._open.pop(bank, None)
        lent_at = self._lent_at.pop(bank, None)
        if loan is None and in_maintenance:
            # Staff restocking: no return; counted for the session's refill.
            s = self._session
            assert s is not None
            s.banks_in += 1
            self._write([], ("UPDATE maintenance_sessions SET banks_in = ? WHERE id = ?",
                             (s.banks_in, s.id)))
            log.info("restock: %s into slot %d by %s", bank, slot, s.staff)
            return
        # A bank on loan counts as returned even when staff push it in: the
        # rider gave it back, and the hub must close the loan.
        ts = self.clock.ms()
        data: dict[str, Any] = {"slot": slot, "bank": bank, "charge": after.charge,
                                "rider": loan.rider if loan else None}
        duration = None
        if loan is not None:
            # Monotonic when the loan began in this run: NTP stepping the Pi's
            # clock meanwhile (it booted on yesterday's time) must not add a day.
            duration = (int(self.clock.monotonic() - lent_at) if lent_at is not None
                        else max(0, (ts - loan.borrowed_ts) // 1000))
            data["borrowed_ts"] = loan.borrowed_ts
            data["duration_s"] = duration
        rows = []
        if loan is not None:
            rows.append((
                "UPDATE loans SET returned_ts = ?, return_slot = ?, return_charge = ?,"
                " return_seq = ?, closed_by = 'returned' WHERE bank = ? AND returned_ts IS NULL",
                (ts, slot, after.charge, SEQ, bank)))
        self._write([("bank_returned", data)], *rows)
        self._returns.append(Return(slot, bank, after.charge, data["rider"], ts,
                                    loan.borrowed_ts if loan else None, duration))
        log.info("%s returned to slot %d (%s)", bank, slot,
                 f"loan of {loan.rider}, {duration} s" if loan else "no loan here")

    # -- the locker's news -----------------------------------------------------------------

    def _on_slot(self, slot: int, before: SlotRecord | None, after: SlotRecord) -> None:
        """Listener for the locker: one slot's record changed (locker thread)."""
        try:
            with self._lock:
                self._slot_changed(slot, before, after)
        except Exception:
            # Never let our bug kill the locker's thread; it must keep polling.
            log.exception("lending could not handle slot %d change", slot)

    def _slot_changed(self, slot: int, before: SlotRecord | None, after: SlotRecord) -> None:
        session = self._session
        if session is not None and (before is None or before.present != after.present
                                    or before.locked != after.locked):
            # Staff hands at the cabinet; a charge creeping up is not activity.
            session.last_activity = self.clock.monotonic()
        if before is None:
            # The locker's first picture: only a bank on loan found in a slot
            # means something (it came back while the agent was away).
            if after.present and after.bank_id in self._open:
                self._returned(slot, after, in_maintenance=False)
            return
        attempt = next((a for a in self._attempts.values()
                        if a.slot == slot and a.state in _IN_FLIGHT), None)
        if before.present and not after.present:
            if attempt is not None:
                self._taken(attempt, before)
            elif session is not None:
                session.banks_out += 1
                self._write([], ("UPDATE maintenance_sessions SET banks_out = ? WHERE id = ?",
                                 (session.banks_out, session.id)))
            else:
                # A staff remote unlock (hub command) or force: no rider to name.
                log.warning("bank %s left slot %d without a borrow", before.bank_id, slot)
            return
        if not before.present and after.present:
            self._returned(slot, after, in_maintenance=session is not None)
            return
        if (attempt is not None and attempt.state == OPEN and not before.locked
                and after.locked and after.present):
            self._fail(attempt, "not_taken")
            return
        self.return_desk.slot_changed(slot, before, after)
        if before.fault == "lock_jammed" and after.fault is None:
            self._held.pop(slot, None)  # fixed: offer it again

    # -- the station loop ------------------------------------------------------------------

    def poll(self) -> None:
        """Move timeouts on: untaken banks, idle maintenance, old attempts."""
        now = self.clock.monotonic()
        idle: _Session | None = None
        with self._lock:
            for a in list(self._attempts.values()):
                if (a.state == OPEN and a.opened_at is not None
                        and now - a.opened_at >= self.take_timeout):
                    self._fail(a, "not_taken")
            s = self._session
            if s is not None and now - s.last_activity >= self.maintenance_idle:
                idle = s
            for slot in [n for n, until in self._held.items() if until <= now]:
                del self._held[slot]
            self._prune()
            self.return_desk.poll()
        if idle is not None:
            log.info("maintenance by %s ended after %.0f s idle", idle.staff,
                     self.maintenance_idle)
            self._end(idle, "idle")

    def _prune(self) -> None:
        now = self.clock.monotonic()
        # At most MAX_FINISHED kept: made-up riders cannot grow it (firmware/kept.py).
        forget_finished(self._attempts, now, self.keep_attempts)
        # Ended sessions stay readable for an hour (the kiosk shows "logged out"),
        # an hour of the monotonic clock (_end's last_activity), whatever NTP does.
        for key in [k for k, r in self._sessions.items()
                    if r.ended_ts is not None and now - r.last_activity > 3600.0]:
            del self._sessions[key]

    # -- maintenance -----------------------------------------------------------------------

    def start_maintenance(self, staff: str, pin: str) -> MaintenanceSession:
        """Log ``staff`` in with ``pin``; raises PinRefused (bad_pin, locked_out).

        The same staff logging in again gets their open session back; another
        staff member takes over (the earlier session ends, ``replaced``).
        """
        if not isinstance(staff, str) or not 1 <= len(staff) <= 64:
            raise ValueError("staff must be an id of 1 to 64 chars")
        if not isinstance(pin, str) or not PIN_RE.match(pin):
            raise ValueError("pin must be 4 to 8 digits")
        check = self.directory.check_staff_pin(staff, pin)
        if not check.ok:
            log.warning("maintenance login of %r refused: %s", staff, check.reason)
            raise PinRefused(check)
        with self._lock:
            current = self._session
            if current is not None and current.staff == staff:
                current.last_activity = self.clock.monotonic()
                return MaintenanceSession(self, current)
        if current is not None:
            self._end(current, "replaced")
        ts = self.clock.ms()
        record = _Session(_new_id("m"), staff, ts, self.clock.monotonic())
        with self._lock:
            self._sessions[record.id] = record
            self._session = record
            self._write([("maintenance_started", {"staff": staff})],
                        ("INSERT INTO maintenance_sessions (id, staff, started_ts)"
                         " VALUES (?, ?, ?)", (record.id, staff, ts)))
        self._set_doors(True)
        log.info("maintenance by %s started", staff)
        return MaintenanceSession(self, record)

    def session(self, session_id: str) -> MaintenanceSession:
        """The session with that id (ended ones too, while remembered)."""
        with self._lock:
            record = self._sessions.get(session_id)
        if record is None:
            raise UnknownSession(session_id)
        return MaintenanceSession(self, record)

    @property
    def maintenance(self) -> MaintenanceSession | None:
        """The open session, if any."""
        with self._lock:
            s = self._session
        return None if s is None else MaintenanceSession(self, s)

    def end_maintenance(self, session_id: str) -> MaintenanceSession:
        """Log out; ending an ended session again changes nothing."""
        s = self._active_or_ended(session_id)
        if s.ended_ts is None:
            self._end(s, "ended")
        return MaintenanceSession(self, s)

    def _active_or_ended(self, session_id: str) -> _Session:
        with self._lock:
            s = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if s is None:
            raise UnknownSession(session_id)
        return s

    def _active(self, session_id: str) -> _Session:
        s = self._active_or_ended(session_id)
        if s.ended_ts is not None:
            raise SessionEnded(f"maintenance session {session_id} has ended ({s.end_reason})")
        with self._lock:
            s.last_activity = self.clock.monotonic()
        return s

    def _end(self, s: _Session, reason: str) -> None:
        with self._lock:
            if s.ended_ts is not None:
                return
            s.ended_ts, s.end_reason = self.clock.ms(), reason
            s.last_activity = self.clock.monotonic()  # its end, for _prune
            if self._session is s:
                self._session = None
            events: list[tuple[str, dict]] = []
            if s.banks_in and not s.banks_confirmed:
                # Staff put banks in and did not say so: the inserts say it.
                events.append(("refilled", {"what": "banks", "staff": s.staff,
                                            "count": s.banks_in}))
            events.append(("maintenance_ended", {"staff": s.staff, "reason": reason}))
            self._write(events, ("UPDATE maintenance_sessions SET ended_ts = ?, end_reason = ?"
                                 " WHERE id = ?", (s.ended_ts, reason, s.id)))
            still_open = self._session is not None
        if not still_open:
            self._set_doors(False)
        log.info("maintenance by %s ended (%s)", s.staff, reason)

    def _set_doors(self, on: bool) -> None:
        if self.doors is not None:
            self.doors.maintenance = on

    def release_slot(self, session_id: str, slot: int) -> ReleaseOutcome:
        """Open one slot for staff (a faulty bank out, a stuck one freed).

        ValueError for a slot the cabinet does not have (nothing is sent).
        """
        self._active(session_id)
        numbers = {r.slot for r in self._safe_slots()}
        if isinstance(slot, bool) or not isinstance(slot, int) or (
                numbers and slot not in numbers):
            raise ValueError(f"no slot {slot!r} in this cabinet")
        return self._staff_release(slot)

    def release_empty(self, session_id: str) -> list[ReleaseOutcome]:
        """Open every empty slot so staff can restock; one outcome per slot.

        Raises BoardOffline (nothing sent) while the locker is offline, and
        stops at the first ``board_offline``: the rest would fail alike.
        """
        self._active(session_id)
        if not self.locker.online:
            raise BoardOffline("the locker board is offline; no slot can be opened")
        out = []
        for r in self._safe_slots():
            if r.present or r.fault is not None:
                continue
            outcome = self._staff_release(r.slot)
            out.append(outcome)
            if outcome.result == "board_offline":
                break
        return out

    def _staff_release(self, slot: int) -> ReleaseOutcome:
        result = self._release(slot)
        if result not in ("released", "busy"):
            self._write([("unlock_failed", {"slot": slot, "reason": result})])
        with self._lock:
            if self._session is not None:
                self._session.last_activity = self.clock.monotonic()
        return ReleaseOutcome(slot, result)

    def confirm_refill(self, session_id: str, what: str) -> None:
        """Staff say they refilled ``what`` (``water``, ``banks``, ``cups``): ``refilled``."""
        if what not in REFILL_WHAT:
            raise ValueError(f"what must be one of {', '.join(sorted(REFILL_WHAT))}")
        s = self._active(session_id)
        with self._lock:
            data: dict[str, Any] = {"what": what, "staff": s.staff}
            rows = []
            if what == "banks":
                s.banks_confirmed = True
                data["count"] = s.banks_in
                rows.append(("UPDATE maintenance_sessions SET banks_confirmed = 1 WHERE id = ?",
                             (s.id,)))
            self._write([("refilled", data)], *rows)
        log.info("%s refilled %s", s.staff, what)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop taking releases; waits for the one under way. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(ValueError, AttributeError):
            self.locker.remove_listener(self._on_slot)
        self._releaser.shutdown(wait=True, cancel_futures=True)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


# The loans table's bank for a bank the board cannot name: "?" and the borrow
# attempt's id, a form no bank id of the fleet takes (docs/locker.md). Only the
# table and Lending's own map see it; events and Loan carry None.
_STAND_IN = "?"


def stand_in(attempt_id: str) -> str:
    return _STAND_IN + attempt_id


def is_stand_in(bank: str | None) -> bool:
    return isinstance(bank, str) and bank.startswith(_STAND_IN)
