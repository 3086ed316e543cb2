"""The fleet keeps each station's last State as compact JSON, packed
(hub/fleet/packed.py) by ``pack_states`` a moment after it came: readers still
get the very dict the State the ingest applied gives, whatever the payload
looked like, before and after packing, and the fleet's memory a station stays
small (issue 21: 100 000 stations on one hub). Real SQLite or PostgreSQL store,
writer and ledger."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from hub.fleet import view as view_module
from hub.fleet.view import APPLIED
from protocol import messages as m
from protocol.topics import Kind
from tests.test_hub_fleet import SID, T0, Parts, birth, state
from yizhan.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def make(database_url: str, clock: ManualClock) -> Iterator[Callable[[], Parts]]:
    """Fleets on this test's database; a second one is the hub after a restart."""
    made: list[Parts] = []

    def build() -> Parts:
        if made:
            made[-1].close()
        made.append(Parts(database_url, clock))
        return made[-1]

    yield build
    for p in made:
        p.close()


def as_sent(s: m.State) -> str:
    """The State as a station might send it: not compact, keys in another order,
    a key the contract does not know, a door named in Chinese."""
    d = s.to_dict()
    d["doors"] = {**(d.get("doors") or {}), "后门": True}
    d["firmware_extra"] = {"nested": [1, 2.5, None]}
    return json.dumps(dict(reversed(list(d.items()))), ensure_ascii=False, indent=2)


def test_readers_get_the_dict_of_the_state_the_ingest_applied(
        make: Callable[[], Parts], clock: ManualClock) -> None:
    hub = make()
    fleet = hub.fleet
    assert fleet.apply_status(birth(clock, 1), clock.ms()) == APPLIED
    raw = as_sent(state(clock, 2, last_seq=0))
    applied = m.decode(Kind.STATE, raw, topic_sid=SID)
    assert fleet.apply_state(applied, clock.ms(), raw=raw) == APPLIED
    expected = applied.to_dict()
    assert "firmware_extra" not in expected and expected["doors"]["后门"] is True
    first = fleet.get(SID)  # still text: not packed yet
    assert isinstance(first.doc, str) and first.state == expected
    # A reader's changes to its dict are its own: each read is a fresh dict.
    first.state["lockers"]["slots"].clear()
    assert first.state == expected
    assert fleet.pack_states() == 1 and fleet.pack_states() == 0
    listed = {v.sid: v for v in fleet.stations()}[SID]
    assert isinstance(listed.doc, bytes) and len(listed.doc) < len(first.doc) / 4
    assert listed.state == expected and fleet.get(SID).state == expected
    assert listed.water() == expected["dispenser"]["level_state"]
    # A copy keeps the State of its moment; the next State is the next copy's.
    newer = state(clock, 3, last_seq=0, change=lambda d: d["dispenser"].update(
        level_state="low", level=0.2))
    assert fleet.apply_state(newer, clock.ms()) == APPLIED  # no raw: the same
    assert listed.state == expected
    assert fleet.get(SID).state == newer.to_dict()
    fleet.pack_states()
    assert fleet.get(SID).state == newer.to_dict()
    # A restart reads the stored payload back: the same dict.
    again = make()
    assert again.fleet.get(SID).state == newer.to_dict()


def test_a_state_newer_than_the_one_being_packed_is_kept(
        make: Callable[[], Parts], clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """pack_states packs outside the fleet's lock: a State applied meanwhile
    is not replaced by the packed older one, and is packed at the next call."""
    hub = make()
    fleet = hub.fleet
    fleet.apply_status(birth(clock, 1), clock.ms())
    fleet.apply_state(state(clock, 2), clock.ms())
    newer = state(clock, 3, change=lambda d: d["dispenser"].update(level=0.1))
    real_pack = view_module.pack

    def pack_while_a_state_comes(text: str) -> bytes:
        fleet.apply_state(newer, clock.ms())  # the ingest, between the two locks
        return real_pack(text)

    monkeypatch.setattr(view_module, "pack", pack_while_a_state_comes)
    assert fleet.pack_states() == 1
    monkeypatch.setattr(view_module, "pack", real_pack)
    assert fleet.get(SID).state == newer.to_dict()
    assert isinstance(fleet.get(SID).doc, str)
    assert fleet.pack_states() == 1
    got = fleet.get(SID)
    assert isinstance(got.doc, bytes) and got.state == newer.to_dict()


def test_a_state_set_on_a_view_is_kept_as_given(make: Callable[[], Parts],
                                                clock: ManualClock) -> None:
    hub = make()
    hub.fleet.apply_status(birth(clock, 1), clock.ms())
    hub.fleet.apply_state(state(clock, 2), clock.ms())
    view = hub.fleet.get(SID)
    view.state = {"lockers": None}
    assert view.state == {"lockers": None} and view.doc is None
    view.state = None
    assert view.state is None


def test_the_fleet_keeps_a_station_in_little_memory(make: Callable[[], Parts],
                                                    clock: ManualClock) -> None:
    """2 000 stations, each a birth and two States of ~1.4 kB: the fleet's own
    memory a station (tracemalloc, everything the fleet and its writer's queue
    still hold once flushed). Kept decoded, a State alone was 2.7 kB and its dict
    3.9 kB: a bound of 1.5 kB fails if either comes back."""
    hub = make()
    fleet, n = hub.fleet, 2_000
    sids = [f"yh-mem-{i:05d}" for i in range(n)]
    payloads = []
    for rev in (2, 3):
        for sid in sids:
            s = state(clock, rev, sid=sid)
            payloads.append((s, m.encode(s).decode()))
    for sid in sids:  # the records exist before the measure: their States are measured
        fleet.apply_status(birth(clock, 1, sid=sid), clock.ms())
    assert hub.writer.flush(30) and hub.writer.flush(30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for s, raw in payloads:
            assert fleet.apply_state(s, clock.ms(), raw=raw) == APPLIED
        del s, raw, payloads
        assert hub.writer.flush(30) and hub.writer.flush(30)
        fleet.pack_states()  # the scheduler's job: the States packed
        held = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert held < 1_500, f"{held:.0f} bytes a station kept for its State"
    assert fleet.get(sids[-1]).state["rev"] == 3
