"""Power-bank loans: a ``bank_borrowed`` event opens one, a ``bank_returned`` closes it.

A rider may take a bank at one station and bring it back at any other, so a
return closes the open loan of that *bank* wherever it was borrowed, and records
the station it came back to. A return that matches no open loan (the borrow was
before the hub kept loans, or its event has not arrived yet) stays an event only.

A return at another station than the one that lent the bank is only a claim
until that station's next State shows the bank in a slot (``Loans.on_state``):
a stolen station identity must not close other stations' loans with made-up
``bank_returned`` events. Until then the loan stays open; past
``RETURN_CONFIRM_MS`` it counts as overdue (``bank_overdue`` at the lending
station, docs/alerts.md). A return at the lending station closes at once.

A borrow at another station of a bank still on loan is the same kind of word:
the bank must have come back there unheard (a lost ``bank_returned``), and the
corroboration is that station's State showing the bank in a slot. A State of
any station but the lender that shows a bank on loan closes that loan there
(the return whose event was lost), so a borrow that still finds the loan open
was never corroborated: it is a claim of that station, as a return there would
be, and opens no loan of its own (a bank is on one loan at a time).

Claims are kept in the ``loans`` row (``claim_sid``, ``claim_ms``,
``confirm_by_ms``), written with the event that makes them, and loaded at
start with the open loans: a hub restart neither closes nor forgets one.

The fleet decides on the MQTT thread, with the event it has just found new
(``Loans.on_event``), and the rows are written in the very transaction that
stores the event (``Writer`` op), only when that insert inserted:

>>> loans = Loans(store, loan_hours=24)
>>> rows = loans.on_event(sid, epoch, event, at_ms)     # [] for other event types
>>> writer.submit(Guarded(insert_event, event_row, rows))  # written if the event is new
>>> writer.submit(*loans.on_state(sid, state, now_ms))   # returns elsewhere confirmed
>>> loans.overdue(clock.ms())                           # open loans past due

The open loans are also kept in memory, loaded at start, for ``open_count`` and
``overdue`` without a query per scrape. At most ``OPEN_LOANS_KEPT`` of them were
lent by one station: a borrow past it is only its event (a stolen certificate
borrowing made-up banks must not grow the hub, docs/security.md).

Loans without a bank id: a station whose cabinet cannot read bank ids (a
lock-control board, docs/hardware.md) lends with ``bank: null``; the loan is
then the rider's. Its ``bank_returned`` carries ``bank: null`` and the rider who
said, on the kiosk, that they were bringing a bank back (docs/protocol.md §6);
it closes that rider's oldest open bank-less loan, at whatever station. No
State can show a bank that has no id, so such a return is the returning
station's word alone and closes at once (docs/protocol.md §6 says what that
trusts). A bank-less return with no rider, or one that matches no loan, stays an
event (kept a while, like a return by bank id, for a borrow heard late).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import sqlalchemy as sa

from hub.log_once import (
    BANK_ID_TOO_LONG,
    BANKLESS_CLOSED,
    BANKLESS_NO_RIDER,
    BANKLESS_UNMATCHED,
    BORROW_AGAIN,
    BORROW_ELSEWHERE,
    CLOSED_BY_STATE,
    LOANS_FULL,
    RETURN_ELSEWHERE,
    RETURN_UNMATCHED,
    StationNotes,
)
from hub.storage.schema import loans as table
from hub.storage.writer import Rows, execute_row
from protocol import messages as m
from yizhan.clock import SYSTEM_CLOCK

log = logging.getLogger(__name__)

#: Returns that matched no loan, kept so that a borrow arriving late (its
#: station was offline) is recorded as already returned rather than overdue.
UNMATCHED_KEPT = 10_000

#: How long a return at another station than the lending one waits for that
#: station's State to show the bank (a State comes at least once a minute,
#: contract §5) before the loan counts as overdue.
RETURN_CONFIRM_MS = 10 * 60_000

#: The most open loans kept lent by one station (by bank id and bank-less
#: together). A loan opens when a bank leaves one of the station's slots (12
#: in a typical locker) and stays open until that bank comes back anywhere, or
#: for ever if it never does (overdue, not closed). A busy station lends a few
#: hundred banks a day at most (docs/forecast.md: 3 an hour at noon), so its
#: open loans are a day's borrows plus the banks never brought back: 5 000 is
#: weeks of borrows with none returned, or a lost bank a day for over a decade.
#: Only a stolen certificate naming made-up banks or riders gets there; past it
#: a borrow is still stored (the event is history) but opens no loan, so hub
#: memory (~230 bytes a loan), the ``loans`` table's open rows and the walks over
#: them (``overdue`` each tick, the console's loans page) stay bounded per station.
OPEN_LOANS_KEPT = 5_000

#: The writes a borrow or return causes, in the transaction that stores its event.
Effect = list[Rows]


class InOrder:
    """One loan row written where it was submitted, after everything before it.

    For a State's writes (``on_state``). The writer runs a batch's plain ``Rows``
    first in their stretch, and the rows an event causes (its ``Guarded`` then)
    after them (hub/storage/writer.py): as a ``Rows``, a State showing a bank
    whose borrow is in the same batch (a backlog after the hub was away, replays)
    would close a loan not yet inserted, and the borrow's rows would then leave
    it open in the table while it is closed in memory: overdue after a restart.
    An op of no batched kind runs in place and sees the rows before it.
    """

    __slots__ = ("params", "statement")

    def __init__(self, statement: sa.Executable, params: dict) -> None:
        self.statement, self.params = statement, params

    def __call__(self, conn: sa.Connection) -> None:
        execute_row(conn, self.statement, self.params)
#: The ``order`` of a loan's rows (``Rows.order``): one bank's in the order they
#: come, different banks' in any order.
ORDER = "loan"
#: The longest bank id the ``loans`` table holds.
BANK_ID_MAX = table.c.bank.type.length


@dataclass(frozen=True, slots=True)
class Loan:
    """One open loan: ``bank`` taken at ``sid`` and due back by ``due_ms``."""

    key: str  # "sid/epoch/seq" of the borrow event, unique per loan
    sid: str
    bank: str | None  # None: lent by a cabinet that cannot read bank ids
    rider: str | None
    slot: int | None
    borrowed_ms: int
    due_ms: int

    def to_dict(self) -> dict:
        return {"sid": self.sid, "bank": self.bank, "rider": self.rider, "slot": self.slot,
                "borrowed_at": self.borrowed_ms, "due_at": self.due_ms}


@dataclass(frozen=True, slots=True)
class Claim:
    """A return of an open loan's bank at ``sid``, another station than the one
    that lent it, not yet shown by a State of ``sid``."""

    sid: str
    returned_ms: int  # when the return says it happened
    confirm_by_ms: int  # hub time: overdue from then on, unless confirmed


def borrow_key(sid: str, epoch: str, seq: int) -> str:
    return f"{sid}/{epoch}/{seq}"


def _earlier_here(loan: Loan, sid: str, epoch: str, seq: int) -> bool:
    """Whether ``loan`` was borrowed at (sid, epoch) before event ``seq`` of it."""
    parts = loan.key.split("/")
    return (len(parts) == 3 and parts[0] == sid and parts[1] == epoch
            and parts[2].isdigit() and int(parts[2]) < seq)


class Loans:
    """The open loans of the fleet, with the writes that keep the ``loans`` table."""

    def __init__(self, store, loan_hours: float = 24.0) -> None:
        self.store = store
        self.loan_ms = int(loan_hours * 3600_000)
        #: Each line below is the word of one station, which may be a stolen
        #: certificate repeating it without end (made-up banks, made-up riders):
        #: counted, logged once an hour per (station, what). The fleet hands
        #: its own (its clock, the one count the ingest registers).
        self.notes = StationNotes(SYSTEM_CLOCK)
        self._lock = threading.Lock()
        self._open: dict[str, Loan] = {}  # by bank: a bank is out on one loan at a time
        self._unmatched: dict[str, tuple[str, int]] = {}  # bank -> (sid, returned_ms)
        self._claims: dict[str, Claim] = {}  # by bank: returns elsewhere, unconfirmed
        self._bankless: dict[str, Loan] = {}  # by borrow key: loans without a bank id
        self._unmatched_riders: dict[str, tuple[str, int]] = {}  # bank-less returns, by rider
        #: Open loans (both kinds) by the station that lent them, at most
        #: OPEN_LOANS_KEPT each; a station with none has no entry.
        self._lent: dict[str, int] = {}
        # Built once: a statement built per event costs SQLAlchemy a new cache key
        # on every execute, on the ingest's hot path (bench/hub_ingest.py).
        self._insert = store.insert_ignore(table)
        self._end_earlier = (
            table.update()
            .where(table.c.bank == sa.bindparam("b_bank"), table.c.returned_ms.is_(None),
                   table.c.borrowed_ms <= sa.bindparam("b_at"),
                   table.c.borrow_event != sa.bindparam("b_key"))
            .values(returned_ms=sa.bindparam("b_at"), returned_sid=sa.null()))
        self._give_back = (
            table.update()
            .where(table.c.bank == sa.bindparam("b_bank"), table.c.returned_ms.is_(None),
                   table.c.borrowed_ms <= sa.bindparam("b_at"))
            .values(returned_ms=sa.bindparam("b_at"), returned_sid=sa.bindparam("b_sid")))
        self._close = (
            table.update()
            .where(table.c.borrow_event == sa.bindparam("b_key"), table.c.returned_ms.is_(None))
            .values(returned_ms=sa.bindparam("b_at"), returned_sid=sa.bindparam("b_sid")))
        self._claim = (
            table.update()
            .where(table.c.borrow_event == sa.bindparam("b_key"), table.c.returned_ms.is_(None))
            .values(claim_sid=sa.bindparam("b_sid"), claim_ms=sa.bindparam("b_at"),
                    confirm_by_ms=sa.bindparam("b_by")))
        self._load()

    def _load(self) -> None:
        # In the order they were lent (the id, for the same ms): past the cap, the
        # running hub kept the first.
        q = (sa.select(table).where(table.c.returned_ms.is_(None))
             .order_by(table.c.borrowed_ms, table.c.id))
        skipped: dict[str, int] = {}
        with self.store.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                bank = row["bank"]
                loan = Loan(
                    key=row["borrow_event"], sid=row["sid"], bank=bank,
                    rider=row["rider"], slot=row["slot"], borrowed_ms=row["borrowed_ms"],
                    due_ms=row["due_ms"])
                if self._full(loan.sid, None if bank is None else self._open.get(bank)):
                    # Rows past the cap (written before it was kept, or by a
                    # hub with a larger one): the oldest are kept, as a running
                    # hub would have; the rest stay rows, not in memory.
                    skipped[loan.sid] = skipped.get(loan.sid, 0) + 1
                    continue
                if bank is None:
                    self._put_bankless(loan)
                    continue
                self._put(loan)
                if row["claim_sid"] is not None and row["confirm_by_ms"] is not None:
                    self._claims[bank] = Claim(row["claim_sid"], row["claim_ms"],
                                               row["confirm_by_ms"])
                else:
                    self._claims.pop(bank, None)  # an older row's claim is not this loan's
        for sid, n in skipped.items():  # one line per station, once per start
            log.warning("%d open loans of %s in the table past the %d kept per station: "
                        "not loaded (they stay open rows)", n, sid, OPEN_LOANS_KEPT)

    # -- reading ------------------------------------------------------------------------

    def open_count(self, sid: str | None = None) -> int:
        """Open loans borrowed at ``sid`` (or in the whole fleet)."""
        with self._lock:
            if sid is None:
                return len(self._open) + len(self._bankless)
            return self._lent.get(sid, 0)

    def open_loan(self, bank: str) -> Loan | None:
        with self._lock:
            return self._open.get(bank)

    def claimed(self, bank: str) -> Claim | None:
        """The unconfirmed return of ``bank`` at another station, if any."""
        with self._lock:
            return self._claims.get(bank)

    def overdue(self, now_ms: int) -> list[Loan]:
        """Open loans past their due time, the longest overdue first. A loan whose
        return elsewhere no State confirmed in ``RETURN_CONFIRM_MS`` is one,
        due since then (or since its own due time, when that came first)."""
        with self._lock:
            late = []
            for loan in self._open.values():
                claim = self._claims.get(loan.bank)
                if claim is not None and claim.confirm_by_ms < loan.due_ms:
                    loan = replace(loan, due_ms=claim.confirm_by_ms)
                if loan.due_ms < now_ms:
                    late.append(loan)
            late.extend(loan for loan in self._bankless.values() if loan.due_ms < now_ms)
        return sorted(late, key=lambda loan: loan.due_ms)

    # -- what events do ---------------------------------------------------------------------

    def on_event(self, sid: str, epoch: str, event: m.Event, at_ms: int,
                 now_ms: int | None = None) -> Effect:
        """Apply a new borrow or return to the open loans; the writes to run in the
        event's transaction (none when the event is not about loans). ``now_ms``,
        the hub's time of receipt, starts the wait for a return elsewhere to be
        confirmed (``at_ms`` when not given)."""
        if event.type not in ("bank_borrowed", "bank_returned"):
            return []
        bank = event.data["bank"]
        if bank is None:
            return self._without_bank(sid, epoch, event, at_ms)
        if len(bank) > BANK_ID_MAX:
            # YZ-LB1 bank ids are 8 characters; a longer one is a station's bug and
            # must not cost the event itself (it is stored, in the same transaction).
            self.notes.say(log, logging.WARNING, sid, BANK_ID_TOO_LONG,
                           "%s from %s: bank id %r is longer than %d characters; no loan kept",
                           event.type, sid, bank[:40], BANK_ID_MAX)
            return []
        now_ms = at_ms if now_ms is None else max(now_ms, at_ms)
        if event.type == "bank_borrowed":
            return self._borrowed(sid, epoch, event, at_ms, now_ms)
        if event.type == "bank_returned":
            return self._returned(sid, epoch, event, at_ms, now_ms)
        return []

    def on_state(self, sid: str, state: m.State, now_ms: int | None = None) -> list[InOrder]:
        """A new State of ``sid``: the loans of other stations whose bank it shows
        in a slot closed there, at the time the claim of ``sid`` says or else
        at ``now_ms`` (the hub's receipt; ``state.ts`` when not given); the
        writes to run for that."""
        if state.lockers is None or not self._open:
            return []
        shown = {slot.bank for slot in state.lockers.slots if slot.bank is not None}
        seen_ms = state.ts if now_ms is None else now_ms
        out: list[InOrder] = []
        with self._lock:
            for bank in shown:
                loan = self._open.get(bank)
                if loan is None or loan.sid == sid:
                    # The lender's own State: its return there closes the loan,
                    # and a State that raced the borrow must not.
                    continue
                claim = self._claims.pop(bank, None)
                self._drop(bank)
                if claim is not None and claim.sid == sid:
                    back_ms = claim.returned_ms
                    self.notes.say(log, logging.INFO, sid, CLOSED_BY_STATE,
                                   "bank %s confirmed back at %s", bank, sid)
                else:
                    # Back here with no return heard from here (a lost event).
                    back_ms = max(loan.borrowed_ms, seen_ms)
                    self.notes.say(log, logging.INFO, sid, CLOSED_BY_STATE,
                                   "bank %s lent at %s is in a slot at %s; loan closed",
                                   bank, loan.sid, sid)
                out.append(InOrder(self._give_back, {"b_bank": bank, "b_at": back_ms,
                                                     "b_sid": sid}))
        return out

    def _claimed(self, loan: Loan, sid: str, at_ms: int, now_ms: int) -> Effect:
        """``sid`` says ``loan``'s bank came back there at ``at_ms``: the claim,
        and its write. Caller holds the lock. A claim made over another keeps
        the earlier deadline: claiming again must not put the alert off."""
        by_ms = now_ms + RETURN_CONFIRM_MS
        earlier = self._claims.get(loan.bank)
        if earlier is not None:
            by_ms = min(by_ms, earlier.confirm_by_ms)
        self._claims[loan.bank] = Claim(sid, at_ms, by_ms)
        return [Rows(self._claim, {"b_key": loan.key, "b_sid": sid, "b_at": at_ms,
                                   "b_by": by_ms}, order=(ORDER, loan.bank))]

    def _borrowed(self, sid: str, epoch: str, event: m.Event, at_ms: int,
                  now_ms: int) -> Effect:
        data = event.data
        loan = Loan(key=borrow_key(sid, epoch, event.seq), sid=sid, bank=data["bank"],
                    rider=data.get("rider"), slot=data.get("slot"), borrowed_ms=at_ms,
                    due_ms=at_ms + self.loan_ms)
        returned: tuple[str | None, int] | None = None
        claim: Claim | None = None
        with self._lock:
            earlier = self._unmatched.get(loan.bank)
            previous = self._open.get(loan.bank)
            heard_back = earlier is not None and earlier[1] >= at_ms
            if (not heard_back and previous is not None and previous.key != loan.key
                    and previous.sid != sid and previous.borrowed_ms <= at_ms):
                # Lent by another station and never seen here since (a State of
                # this station showing it would have closed that loan, on_state):
                # only this station says the bank came back. Its claim, as a
                # return here would be; the loan stays open meanwhile.
                self.notes.say(log, logging.WARNING, sid, BORROW_ELSEWHERE,
                               "bank %s borrowed at %s while its loan from %s is open, and "
                               "no State of %s showed it; a claim until one does",
                               loan.bank, sid, previous.sid, sid)
                return self._claimed(previous, sid, at_ms, now_ms)
            late_round = (previous is not None and previous.key != loan.key
                          and previous.borrowed_ms > at_ms)
            opens = earlier[0] != sid if heard_back else not late_round
            if opens and self._full(sid, previous):
                self._say_full(sid, f"bank {loan.bank!r}")
                return []
            if heard_back and earlier[0] != sid:
                # Its return elsewhere was heard first: a claim, until that
                # station's State shows the bank.
                self._unmatched.pop(loan.bank)
                self._put(loan)
                claim = Claim(earlier[0], earlier[1], earlier[1] + RETURN_CONFIRM_MS)
                self._claims[loan.bank] = claim
            elif heard_back:
                # Its return was heard first (the borrowing station was offline).
                returned = self._unmatched.pop(loan.bank)
            else:
                if previous is not None and previous.key != loan.key:
                    if previous.borrowed_ms > at_ms:
                        # A late borrow of an earlier round: the bank came back
                        # before it was taken again, where is not known.
                        returned = (None, previous.borrowed_ms)
                    else:
                        # Taken again where it was lent, so it came back there
                        # meanwhile; that return was never heard (a wiped
                        # station). The old loan ends here.
                        self.notes.say(log, logging.WARNING, sid, BORROW_AGAIN,
                                       "bank %s borrowed at %s while its loan from %s was "
                                       "open; closing that loan", loan.bank, sid, previous.sid)
                if returned is None:
                    self._claims.pop(loan.bank, None)  # taken again: any claim is moot
                    self._put(loan)
        values = {"sid": sid, "bank": loan.bank, "rider": loan.rider, "slot": loan.slot,
                  "charge": data.get("charge"), "borrowed_ms": at_ms, "due_ms": loan.due_ms,
                  "borrow_event": loan.key,
                  "returned_ms": returned[1] if returned else None,
                  "returned_sid": returned[0] if returned else None,
                  "claim_sid": claim.sid if claim else None,
                  "claim_ms": claim.returned_ms if claim else None,
                  "confirm_by_ms": claim.confirm_by_ms if claim else None}
        earlier = {"b_bank": loan.bank, "b_at": at_ms, "b_key": loan.key}

        # An open loan of an earlier borrow of this bank ended before this one.
        return [Rows(self._end_earlier, earlier, order=(ORDER, loan.bank)),
                Rows(self._insert, values, order=(ORDER, loan.bank))]

    def _returned(self, sid: str, epoch: str, event: m.Event, at_ms: int,
                  now_ms: int) -> Effect:
        bank = event.data["bank"]
        with self._lock:
            loan = self._open.get(bank)
            if loan is not None and loan.sid != sid and loan.borrowed_ms <= at_ms:
                # Back at another station: only that station says so. Closed when
                # its next State shows the bank (on_state), overdue if none does.
                self.notes.say(log, logging.INFO, sid, RETURN_ELSEWHERE,
                               "bank %s lent at %s returned at %s; open until a State of %s "
                               "shows it", bank, loan.sid, sid, sid)
                return self._claimed(loan, sid, at_ms, now_ms)
            if loan is not None and _earlier_here(loan, sid, epoch, event.seq):
                # Borrowed here before, by the station's own count: whatever the
                # dates say. A borrow made before the Pi's clock was synced is dated
                # by its receipt, which can be later than a synced return's own ts
                # (both held back by an outage); the return is never before it.
                at_ms = max(at_ms, loan.borrowed_ms)
            if loan is not None and loan.borrowed_ms <= at_ms:
                self._drop(bank)
            else:
                if len(self._unmatched) >= UNMATCHED_KEPT:
                    self._unmatched.pop(next(iter(self._unmatched)))
                self._unmatched[bank] = (sid, at_ms)
                self.notes.say(log, logging.INFO, sid, RETURN_UNMATCHED,
                               "bank %s returned at %s matches no open loan; kept as an event",
                               bank, sid)

        # Decided again from the table: the op may run twice after a rollback.
        return [Rows(self._give_back, {"b_bank": bank, "b_at": at_ms, "b_sid": sid},
                     order=(ORDER, bank))]

    # -- loans without a bank id ------------------------------------------------------------

    def _without_bank(self, sid: str, epoch: str, event: m.Event, at_ms: int) -> Effect:
        """A borrow or return of a cabinet that cannot read bank ids: the rider's."""
        rider = event.data.get("rider")
        if rider is None:
            # A bank came back and nobody said whose (the rider skipped the
            # kiosk): a fact for the station's counts, no loan to close.
            self.notes.say(log, logging.INFO, sid, BANKLESS_NO_RIDER,
                           "a bank with no id came back at %s with no rider named; kept as "
                           "an event", sid)
            return []
        if event.type == "bank_borrowed":
            return self._borrowed_without_bank(sid, epoch, event, rider, at_ms)
        with self._lock:
            mine = sorted((loan for loan in self._bankless.values() if loan.rider == rider
                           and (loan.borrowed_ms <= at_ms
                                or _earlier_here(loan, sid, epoch, event.seq))),
                          key=lambda loan: loan.borrowed_ms)
            if not mine:
                self._keep_unmatched(self._unmatched_riders, rider, (sid, at_ms))
                self.notes.say(log, logging.INFO, sid, BANKLESS_UNMATCHED,
                               "a bank with no id returned at %s by %s matches no open loan; "
                               "kept as an event", sid, rider)
                return []
            loan = mine[0]
            del self._bankless[loan.key]
            self._less(loan.sid)
        back_ms = max(at_ms, loan.borrowed_ms)
        self.notes.say(log, logging.INFO, sid, BANKLESS_CLOSED,
                       "bank-less loan %s of %s closed by a return at %s", loan.key, rider, sid)
        return [Rows(self._close, {"b_key": loan.key, "b_at": back_ms, "b_sid": sid},
                     order=(ORDER, rider))]

    def _borrowed_without_bank(self, sid: str, epoch: str, event: m.Event, rider: str,
                               at_ms: int) -> Effect:
        data = event.data
        loan = Loan(key=borrow_key(sid, epoch, event.seq), sid=sid, bank=None, rider=rider,
                    slot=data.get("slot"), borrowed_ms=at_ms, due_ms=at_ms + self.loan_ms)
        returned: tuple[str, int] | None = None
        with self._lock:
            earlier = self._unmatched_riders.get(rider)
            if earlier is not None and earlier[1] >= at_ms:
                # Its return was heard first (the lending station was offline).
                returned = self._unmatched_riders.pop(rider)
            elif self._full(sid, None):
                self._say_full(sid, f"a bank with no id (rider {rider[:40]!r})")
                return []
            else:
                self._put_bankless(loan)
        values = {"sid": sid, "bank": None, "rider": rider, "slot": loan.slot,
                  "charge": data.get("charge"), "borrowed_ms": at_ms, "due_ms": loan.due_ms,
                  "borrow_event": loan.key,
                  "returned_ms": returned[1] if returned else None,
                  "returned_sid": returned[0] if returned else None,
                  "claim_sid": None, "claim_ms": None, "confirm_by_ms": None}
        return [Rows(self._insert, values, order=(ORDER, rider))]

    # -- how many each station has lent -------------------------------------------------------
    # Callers hold the lock (or are _load, before anyone else can).

    def _full(self, sid: str, replaced: Loan | None) -> bool:
        """Whether a new loan of ``sid`` would pass the cap: not when it takes
        the place of one ``sid`` lent (the same bank, borrowed there again)."""
        return (self._lent.get(sid, 0) >= OPEN_LOANS_KEPT
                and (replaced is None or replaced.sid != sid))

    def _say_full(self, sid: str, what: str) -> None:
        self.notes.say(log, logging.WARNING, sid, LOANS_FULL,
                       "%s borrowed at %s while %d loans from %s are open, the most kept "
                       "per station; stored as an event, no loan opened",
                       what, sid, OPEN_LOANS_KEPT, sid)

    def _put(self, loan: Loan) -> None:
        previous = self._open.get(loan.bank)
        if previous is not None:
            self._less(previous.sid)
        self._open[loan.bank] = loan
        self._lent[loan.sid] = self._lent.get(loan.sid, 0) + 1

    def _drop(self, bank: str) -> None:
        self._less(self._open.pop(bank).sid)

    def _put_bankless(self, loan: Loan) -> None:
        self._bankless[loan.key] = loan
        self._lent[loan.sid] = self._lent.get(loan.sid, 0) + 1

    def _less(self, sid: str) -> None:
        n = self._lent[sid] - 1
        if n:
            self._lent[sid] = n
        else:
            del self._lent[sid]

    @staticmethod
    def _keep_unmatched(kept: dict, key: str, value: tuple[str, int]) -> None:
        if key not in kept and len(kept) >= UNMATCHED_KEPT:
            kept.pop(next(iter(kept)))
        kept[key] = value
