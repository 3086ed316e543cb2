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

The fleet decides on the MQTT thread, with the event it has just found new
(``Loans.on_event``), and the rows are written in the very transaction that
stores the event (``Writer`` op), only when that insert inserted:

>>> loans = Loans(store, loan_hours=24)
>>> rows = loans.on_event(sid, epoch, event, at_ms)     # [] for other event types
>>> writer.submit(Guarded(insert_event, event_row, rows))  # written if the event is new
>>> writer.submit(*loans.on_state(sid, state, at_ms))    # returns elsewhere confirmed
>>> loans.overdue(clock.ms())                           # open loans past due

The open loans are also kept in memory, loaded at start, for ``open_count`` and
``overdue`` without a query per scrape.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import sqlalchemy as sa

from hub.storage.schema import loans as table
from hub.storage.writer import Rows
from protocol import messages as m

log = logging.getLogger(__name__)

#: Returns that matched no loan, kept so that a borrow arriving late (its
#: station was offline) is recorded as already returned rather than overdue.
UNMATCHED_KEPT = 10_000

#: How long a return at another station than the lending one waits for that
#: station's State to show the bank (a State comes at least once a minute,
#: contract §5) before the loan counts as overdue.
RETURN_CONFIRM_MS = 10 * 60_000

#: The writes a borrow or return causes, in the transaction that stores its event.
Effect = list[Rows]
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
    bank: str
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
        self._lock = threading.Lock()
        self._open: dict[str, Loan] = {}  # by bank: a bank is out on one loan at a time
        self._unmatched: dict[str, tuple[str, int]] = {}  # bank -> (sid, returned_ms)
        self._claims: dict[str, Claim] = {}  # by bank: returns elsewhere, unconfirmed
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
        self._load()

    def _load(self) -> None:
        q = sa.select(table).where(table.c.returned_ms.is_(None)).order_by(table.c.borrowed_ms)
        with self.store.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                self._open[row["bank"]] = Loan(
                    key=row["borrow_event"], sid=row["sid"], bank=row["bank"],
                    rider=row["rider"], slot=row["slot"], borrowed_ms=row["borrowed_ms"],
                    due_ms=row["due_ms"])

    # -- reading ------------------------------------------------------------------------

    def open_count(self, sid: str | None = None) -> int:
        """Open loans borrowed at ``sid`` (or in the whole fleet)."""
        with self._lock:
            if sid is None:
                return len(self._open)
            return sum(1 for loan in self._open.values() if loan.sid == sid)

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
        if len(bank) > BANK_ID_MAX:
            # YZ-LB1 bank ids are 8 characters; a longer one is a station's bug and
            # must not cost the event itself (it is stored, in the same transaction).
            log.warning("%s from %s: bank id %r is longer than %d characters; no loan kept",
                        event.type, sid, bank[:40], BANK_ID_MAX)
            return []
        if event.type == "bank_borrowed":
            return self._borrowed(sid, epoch, event, at_ms)
        if event.type == "bank_returned":
            return self._returned(sid, epoch, event, at_ms,
                                  at_ms if now_ms is None else max(now_ms, at_ms))
        return []

    def on_state(self, sid: str, state: m.State) -> Effect:
        """A new State of ``sid``: the loans whose return there it confirms (the
        bank is in one of its slots) closed; the writes to run for that."""
        if not self._claims or state.lockers is None:
            return []
        shown = {slot.bank for slot in state.lockers.slots if slot.bank is not None}
        out: Effect = []
        with self._lock:
            for bank in [b for b, c in self._claims.items() if c.sid == sid and b in shown]:
                claim = self._claims.pop(bank)
                self._open.pop(bank, None)
                log.info("bank %s confirmed back at %s", bank, sid)
                out.append(Rows(self._give_back, {"b_bank": bank, "b_at": claim.returned_ms,
                                                  "b_sid": sid}, order=(ORDER, bank)))
        return out

    def _borrowed(self, sid: str, epoch: str, event: m.Event, at_ms: int) -> Effect:
        data = event.data
        loan = Loan(key=borrow_key(sid, epoch, event.seq), sid=sid, bank=data["bank"],
                    rider=data.get("rider"), slot=data.get("slot"), borrowed_ms=at_ms,
                    due_ms=at_ms + self.loan_ms)
        returned: tuple[str | None, int] | None = None
        with self._lock:
            earlier = self._unmatched.get(loan.bank)
            if earlier is not None and earlier[1] >= at_ms and earlier[0] != sid:
                # Its return elsewhere was heard first: a claim, until that
                # station's State shows the bank.
                self._unmatched.pop(loan.bank)
                self._open[loan.bank] = loan
                self._claims[loan.bank] = Claim(earlier[0], earlier[1],
                                                earlier[1] + RETURN_CONFIRM_MS)
            elif earlier is not None and earlier[1] >= at_ms:
                # Its return was heard first (the borrowing station was offline).
                returned = self._unmatched.pop(loan.bank)
            else:
                previous = self._open.get(loan.bank)
                if previous is not None and previous.key != loan.key:
                    if previous.borrowed_ms > at_ms:
                        # A late borrow of an earlier round: the bank came back
                        # before it was taken again, where is not known.
                        returned = (None, previous.borrowed_ms)
                    else:
                        # Taken again, so it came back meanwhile; that return was
                        # never heard (a wiped station). The old loan ends here.
                        log.warning("bank %s borrowed at %s while its loan from %s was "
                                    "open; closing that loan", loan.bank, sid, previous.sid)
                if returned is None:
                    self._claims.pop(loan.bank, None)  # taken again: any claim is moot
                    self._open[loan.bank] = loan
        values = {"sid": sid, "bank": loan.bank, "rider": loan.rider, "slot": loan.slot,
                  "charge": data.get("charge"), "borrowed_ms": at_ms, "due_ms": loan.due_ms,
                  "borrow_event": loan.key,
                  "returned_ms": returned[1] if returned else None,
                  "returned_sid": returned[0] if returned else None}
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
                self._claims[bank] = Claim(sid, at_ms, now_ms + RETURN_CONFIRM_MS)
                log.info("bank %s lent at %s returned at %s; open until a State of %s "
                         "shows it", bank, loan.sid, sid, sid)
                return []
            if loan is not None and _earlier_here(loan, sid, epoch, event.seq):
                # Borrowed here before, by the station's own count: whatever the
                # dates say. A borrow made before the Pi's clock was synced is dated
                # by its receipt, which can be later than a synced return's own ts
                # (both held back by an outage); the return is never before it.
                at_ms = max(at_ms, loan.borrowed_ms)
            if loan is not None and loan.borrowed_ms <= at_ms:
                del self._open[bank]
            else:
                if len(self._unmatched) >= UNMATCHED_KEPT:
                    self._unmatched.pop(next(iter(self._unmatched)))
                self._unmatched[bank] = (sid, at_ms)
                log.info("bank %s returned at %s matches no open loan; kept as an event",
                         bank, sid)

        # Decided again from the table: the op may run twice after a rollback.
        return [Rows(self._give_back, {"b_bank": bank, "b_at": at_ms, "b_sid": sid},
                     order=(ORDER, bank))]
