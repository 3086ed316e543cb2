"""Returns at a cabinet that cannot read bank ids: the rider says who they are.

A YZ-LB1 board names every bank it holds, so a bank pushed into any slot is
matched to its loan by its id and nobody has to say anything. A lock-control
board (锁控板, docs/hardware.md) knows only "locked" and, with a sensor,
"occupied": its slots are ``estimated`` (contract §5) and a bank coming back
has no name. The station then asks the rider, as a borrow does: the kiosk
sends the rider id, and :class:`ReturnDesk` opens one empty slot for them::

    claim = desk.expect("r:5e8f0c1d2e3f4a5b6c7d8e9f")   # state "opening"
    ...                                                # "open": slot 4, put it in
    desk.claim(claim.id).state                         # "returned" once a bank is
                                                       # in slot 4

The next bank that arrives in that slot while it is the rider's (from the
unlock until ``window`` seconds after it opened) is theirs: ``bank_returned``
carries ``bank: null`` and the rider, and the rider's oldest open loan of a
bank-less borrow here is closed (at another station, the hub closes it from
the event, hub/fleet/loans.py). A bank that arrives in a slot nobody claimed
is still a return (returns are facts): ``rider: null``, or a restock while
staff are at the cabinet.

The desk is Lending's: it shares its lock, its board calls and its journal
(:class:`firmware.lending.Lending` builds it and hands it every slot change).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from firmware.journal import SEQ
from firmware.kept import forget_finished
from protocol.frames import SlotRecord
from protocol.ids import check_rider_id

if TYPE_CHECKING:
    from firmware.lending import Lending

log = logging.getLogger(__name__)

__all__ = ["FAIL_REASONS", "ReturnClaim", "ReturnDesk", "bank_ids_readable"]

#: Why a return claim failed; each is a screen on the kiosk.
FAIL_REASONS = frozenset({
    "not_needed",     # this cabinet reads bank ids: push the bank into any slot
    "full",           # no empty slot to open
    "board_offline",  # the locker board does not answer
    "jammed",         # the chosen slot's lock is stuck (try again: another slot)
    "bad_slot",       # the board does not know the chosen slot
    "busy",           # the board was busy with that slot; try again
    "not_returned",   # the slot shut, or the window passed, with no bank in it
})

# Claim states.
OPENING, OPEN, RETURNED, FAILED = "opening", "open", "returned", "failed"
_WAITING = (OPENING, OPEN)


def bank_ids_readable(records: list[SlotRecord]) -> bool:
    """Whether the cabinet names its banks: False once any slot is ``estimated``
    (a lock-control cabinet marks every slot so), True for YZ-LB1 and before
    the board first answered."""
    return not any(getattr(r, "estimated", False) for r in records)


@dataclass(frozen=True, slots=True)
class ReturnClaim:
    """A rider's return as the kiosk follows it.

    ``state`` is ``opening`` (the board is opening ``slot``), ``open`` (put the
    bank into ``slot`` before ``open_until``, ms), ``returned`` (the bank is in;
    ``loan_closed`` says whether it closed a loan of this station) or ``failed``
    (``reason`` is one of :data:`FAIL_REASONS`).
    """

    id: str
    rider: str
    state: str
    reason: str | None
    slot: int | None
    created: int  # ms, station clock
    updated: int
    open_until: int | None = None
    returned_ts: int | None = None
    borrowed_ts: int | None = None
    duration_s: int | None = None
    charge: int | None = None
    loan_closed: bool = False

    @property
    def done(self) -> bool:
        return self.state in (RETURNED, FAILED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Claim:
    id: str
    rider: str
    state: str
    created: int
    updated: int
    reason: str | None = None
    slot: int | None = None
    opened_at: float | None = None  # monotonic
    finished_at: float | None = None  # monotonic
    open_until: int | None = None
    returned_ts: int | None = None
    borrowed_ts: int | None = None
    duration_s: int | None = None
    charge: int | None = None
    loan_closed: bool = False

    def snapshot(self) -> ReturnClaim:
        return ReturnClaim(self.id, self.rider, self.state, self.reason, self.slot,
                           self.created, self.updated, self.open_until, self.returned_ts,
                           self.borrowed_ts, self.duration_s, self.charge, self.loan_closed)


class ReturnDesk:
    """Return claims of one station. ``window`` (s): how long a slot opened for a
    return stays that rider's; ``keep`` (s): how long finished claims stay
    readable."""

    def __init__(self, lending: Lending, *, window: float = 120.0, keep: float = 600.0) -> None:
        self.lending = lending
        self.window = window
        self.keep = keep
        self._claims: dict[str, _Claim] = {}

    # -- what the kiosk asks ---------------------------------------------------------------

    @property
    def needed(self) -> bool:
        """True where a return must be claimed: the cabinet cannot read bank ids."""
        return not bank_ids_readable(self.lending._safe_slots())

    def expect(self, rider: str) -> ReturnClaim:
        """``rider`` is bringing a bank back: open an empty slot for them.

        Raises ValueError for a malformed rider id, before anything changes.
        Every refusal is a claim in state ``failed``; a rider who taps twice
        gets the claim already under way.
        """
        check_rider_id(rider)
        lending = self.lending
        online = lending.locker.online
        records = lending._safe_slots()
        with lending._lock:
            running = self._waiting(rider)
            if running is not None:
                return running.snapshot()
            now = lending.clock.ms()
            claim = _Claim(_new_id(), rider, OPENING, now, now)
            self._claims[claim.id] = claim
            self._prune()
            if bank_ids_readable(records):
                return self._fail(claim, "not_needed")
            if not online or lending._closed:
                return self._fail(claim, "board_offline")
            slot = self._empty_slot(records)
            if slot is None:
                return self._fail(claim, "full")
            claim.slot = slot
        log.info("opening slot %d for a return by %s", slot, rider)
        lending._releaser.submit(self._open_for, claim.id)
        return claim.snapshot()

    def claim(self, claim_id: str) -> ReturnClaim | None:
        """The claim as it stands now, or None when unknown (or long finished)."""
        with self.lending._lock:
            c = self._claims.get(claim_id)
            return None if c is None else c.snapshot()

    def _waiting(self, rider: str) -> _Claim | None:
        return next((c for c in self._claims.values()
                     if c.rider == rider and c.state in _WAITING), None)

    def _empty_slot(self, records: list[SlotRecord]) -> int | None:
        """The lowest empty, locked, fault-free slot no one else is using."""
        now = self.lending.clock.monotonic()
        taken = {c.slot for c in self._claims.values() if c.state in _WAITING}
        taken |= {a.slot for a in self.lending._attempts.values()
                  if a.state in ("releasing", "open")}
        free = [r.slot for r in records
                if not r.present and r.locked and r.fault is None and r.slot not in taken
                and self.lending._held.get(r.slot, 0.0) <= now]
        return min(free, default=None)

    def _open_for(self, claim_id: str) -> None:
        self.lending._open_slot(self._claims, claim_id, OPENING, self.window, self._not_opened)

    def _not_opened(self, c: _Claim, result: str) -> None:
        """The board did not open the claim's slot; lending's lock held."""
        lending, slot = self.lending, c.slot
        self._fail(c, result)
        if result in ("jammed", "bad_slot", "board_offline"):
            lending._write([("unlock_failed", {"slot": slot, "reason": result})])
        if result == "jammed":
            lending._held[slot] = lending.clock.monotonic() + lending.slot_hold

    def _fail(self, c: _Claim, reason: str) -> ReturnClaim:
        """Finish a claim as failed; lending's lock held."""
        c.state, c.reason = FAILED, reason
        c.updated = self.lending.clock.ms()
        c.finished_at = self.lending.clock.monotonic()
        log.info("return claim of %s (slot %s) failed: %s", c.rider, c.slot, reason)
        return c.snapshot()

    # -- what the locker says (lending's lock held) ---------------------------------------

    def rider_for(self, slot: int) -> _Claim | None:
        """The claim a bank arriving in ``slot`` now belongs to, if any."""
        return next((c for c in self._claims.values()
                     if c.slot == slot and c.state in _WAITING), None)

    def returned_without_id(self, slot: int, after: SlotRecord, in_maintenance: bool) -> None:
        """A bank with no id arrived in ``slot`` of an ``estimated`` cabinet."""
        lending = self.lending
        claim = self.rider_for(slot)
        if claim is None and in_maintenance:
            # Staff restocking: no return; counted for the session's refill.
            s = lending._session
            assert s is not None
            s.banks_in += 1
            lending._write([], ("UPDATE maintenance_sessions SET banks_in = ? WHERE id = ?",
                                (s.banks_in, s.id)))
            log.info("restock: a bank with no id into slot %d by %s", slot, s.staff)
            return
        rider = claim.rider if claim is not None else None
        ts = lending.clock.ms()
        key, loan = None, None
        if rider is not None:
            # The rider's oldest loan of a bank the board could not name.
            mine = sorted(((k, v) for k, v in lending._open.items()
                           if v.bank is None and v.rider == rider),
                          key=lambda kv: kv[1].borrowed_ts)
            if mine:
                key, loan = mine[0]
        # The board cannot measure it, and the estimate of a bank just back is
        # the station's floor (0 %), not the bank's charge: say nothing.
        charge = None
        data: dict[str, Any] = {"slot": slot, "bank": None, "charge": charge,
                                "rider": rider}
        duration = None
        rows = []
        if loan is not None:
            del lending._open[key]
            lent_at = lending._lent_at.pop(key, None)
            duration = (int(lending.clock.monotonic() - lent_at) if lent_at is not None
                        else max(0, (ts - loan.borrowed_ts) // 1000))
            data["borrowed_ts"] = loan.borrowed_ts
            data["duration_s"] = duration
            rows.append((
                "UPDATE loans SET returned_ts = ?, return_slot = ?, return_charge = ?,"
                " return_seq = ?, closed_by = 'returned' WHERE bank = ? AND returned_ts IS NULL",
                (ts, slot, charge, SEQ, key)))
        lending._write([("bank_returned", data)], *rows)
        from firmware.lending import Return  # lending imports this module

        lending._returns.append(Return(slot, None, charge, rider, ts,
                                       loan.borrowed_ts if loan else None, duration))
        if claim is not None:
            claim.state, claim.updated = RETURNED, ts
            claim.finished_at = lending.clock.monotonic()
            claim.returned_ts, claim.charge = ts, charge
            claim.borrowed_ts = loan.borrowed_ts if loan else None
            claim.duration_s, claim.loan_closed = duration, loan is not None
        log.info("a bank with no id returned to slot %d (%s)", slot,
                 f"by {rider}" + (f", loan of {duration} s" if loan else ", no loan here")
                 if rider else "nobody named")

    def slot_changed(self, slot: int, before: SlotRecord, after: SlotRecord) -> None:
        """A slot opened for a return shut again with nothing in it."""
        claim = self.rider_for(slot)
        if (claim is not None and claim.state == OPEN and not before.locked and after.locked
                and not after.present):
            self._fail(claim, "not_returned")

    def poll(self) -> None:
        """Move the window on; lending's lock held."""
        now = self.lending.clock.monotonic()
        for c in list(self._claims.values()):
            if (c.state == OPEN and c.opened_at is not None
                    and now - c.opened_at >= self.window):
                self._fail(c, "not_returned")
        self._prune()

    def _prune(self) -> None:
        # At most MAX_FINISHED kept: made-up riders cannot grow it (firmware/kept.py).
        forget_finished(self._claims, self.lending.clock.monotonic(), self.keep)


def _new_id() -> str:
    return f"t-{secrets.token_hex(8)}"
