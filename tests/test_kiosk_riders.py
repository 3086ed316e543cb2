"""The kiosk's riders between screens (kiosk/riders.py): kept in its memory for a
while, the cookie carrying only a ticket (issue 14, finding 7)."""

from __future__ import annotations

from kiosk.riders import MAX_PENDING, PendingRiders
from yizhan.clock import ManualClock

RIDER = "r:5e8f0c1d2e3f4a5b6c7d8e9f"


def test_a_ticket_finds_its_rider_until_the_ttl_passes() -> None:
    clock = ManualClock(1_764_196_800.0)
    riders = PendingRiders(clock, ttl=120)
    ticket = riders.keep(None, RIDER, "138****1234")
    assert RIDER not in ticket and len(ticket) >= 24
    riders.started(ticket, "b-1f2e3d4c5b6a7988")
    got = riders.get(ticket)
    assert (got.rider, got.mask, got.attempt) == (RIDER, "138****1234", "b-1f2e3d4c5b6a7988")
    assert riders.keep(ticket, RIDER, "138****1234") == ticket  # the same screen, kept
    clock.advance(120)
    assert riders.get(ticket) is not None
    clock.advance(1)
    assert riders.get(ticket) is None and len(riders) == 0


def test_unknown_tickets_and_forgetting() -> None:
    riders = PendingRiders(ManualClock(0.0), ttl=120)
    assert riders.get(None) is None and riders.get(7) is None and riders.get("nope") is None
    ticket = riders.keep("made-up", RIDER, "138****1234")
    assert ticket != "made-up"  # a ticket is only ever one the kiosk made
    riders.forget(ticket)
    assert riders.get(ticket) is None


def test_at_most_max_pending_are_kept_the_oldest_dropped() -> None:
    riders = PendingRiders(ManualClock(0.0), ttl=120)
    tickets = [riders.keep(None, f"r:{n:024x}", "138****1234") for n in range(MAX_PENDING + 3)]
    assert len(riders) == MAX_PENDING
    assert [riders.get(t) is None for t in tickets[:3]] == [True] * 3
    assert riders.get(tickets[-1]).rider == f"r:{MAX_PENDING + 2:024x}"
