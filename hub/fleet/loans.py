"""Power-bank loans: a ``bank_borrowed`` event opens one, a ``bank_returned`` closes it.

A rider may take a bank at one station and bring it back at any other, so a
return closes the open loan of that *bank* wherever it was borrowed, and records
the station it came back to. A return that matches no open loan (the borrow was
before the hub kept loans, or its event has not arrived yet) stays an event only.

The fleet decides on the MQTT thread, with the event it has just found new
(``Loans.on_event``), and the rows are written in the very transaction that
stores the event (``Writer`` op), only when that insert inserted:

>>> loans = Loans(store, loan_hours=24)
>>> rows = loans.on_event(sid, epoch, event, at_ms)     # [] for other event types
>>> writer.submit(Guarded(insert_event, event_row, rows))  # written if the event is new
>>> loans.overdue(clock.ms())                           # open loans past due

The open loans are also kept in memory, loaded at start, for ``open_count`` and
``overdue`` without a query per scrape.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa

from hub.storage.schema import loans as table
from hub.storage.writer import Rows
from protocol import messages as m

log = logging.getLogger(__name__)

#: Returns that matched no loan, kept so that a borrow arriving late (its
#: station was offline) is recorded as already returned rather than overdue.
UNMATCHED_KEPT = 10_000

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

    def overdue(self, now_ms: int) -> list[Loan]:
        """Open loans past their due time, the longest overdue first."""
        with self._lock:
            late = [loan for loan in self._open.values() if loan.due_ms < now_ms]
        return sorted(late, key=lambda loan: loan.due_ms)

    # -- what events do ---------------------------------------------------------------------

    def on_event(self, sid: str, epoch: str, event: m.Event, at_ms: int) -> Effect:
        """Apply a new borrow or return to the open loans; the writes to run in the
        event's transaction (none when the event is not about loans)."""
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
            return self._returned(sid, epoch, event, at_ms)
        return []

    def _borrowed(self, sid: str, epoch: str, event: m.Event, at_ms: int) -> Effect:
        data = event.data
        loan = Loan(key=borrow_key(sid, epoch, event.seq), sid=sid, bank=data["bank"],
                    rider=data.get("rider"), slot=data.get("slot"), borrowed_ms=at_ms,
                    due_ms=at_ms + self.loan_ms)
        returned: tuple[str | None, int] | None = None
        with self._lock:
            earlier = self._unmatched.get(loan.bank)
            if earlier is not None and earlier[1] >= at_ms:
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

    def _returned(self, sid: str, epoch: str, event: m.Event, at_ms: int) -> Effect:
        bank = event.data["bank"]
        with self._lock:
            loan = self._open.get(bank)
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
