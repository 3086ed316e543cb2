"""A station with a stolen certificate, at the fleet (issue 21, item 4): what it
can repeat without end costs the hub bounded memory and one log line an hour.

- ``Seqs.ahead`` (events held above a gap) stops at ``AHEAD_KEPT``: a station
  sending seqs 2, 4, 6, … has its lowest gaps given up instead of growing the
  hub, and its replay bookkeeping stays a handful of entries;
- a station alternating two epochs, and loan events naming made-up banks and
  riders, log their line once an hour per (station, what), each counted in
  ``yizhan_hub_station_notes_total{what}``;
- borrows of made-up banks (or bank-less ones for made-up riders) open at most
  ``OPEN_LOANS_KEPT`` loans per station, in memory and in the table.

Real SQLite or PostgreSQL store, writer, ledger and loans (tests/test_hub_fleet.py's
``Parts``); production bounds throughout.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub import log_once
from hub.fleet import loans as loans_module
from hub.fleet import view as view_module
from hub.fleet.loans import BANK_ID_MAX, OPEN_LOANS_KEPT, Loans
from hub.fleet.view import (
    AHEAD_KEPT,
    AHEAD_SHED,
    APPLIED,
    DUPLICATE,
    LOST_KEPT,
    OTHER_AHEAD_KEPT,
    Seqs,
)
from hub.log_once import LOG_WINDOW, LOGGED_KEPT
from hub.storage.schema import events, stations
from hub.storage.schema import loans as loans_table
from protocol import examples
from protocol import messages as m
from protocol.errors import InvalidMessage
from protocol.topics import Kind
from tests.test_hub_fleet import (
    EPOCH,
    NEW_EPOCH,
    OTHER,
    RIDER,
    SID,
    T0,
    Parts,
    birth,
    borrowed,
    event,
    returned,
)
from tests.test_hub_ingest import make_hub  # noqa: F401  (the fixture)
from yizhan.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def hub(database_url: str, clock: ManualClock) -> Iterator[Parts]:
    parts = Parts(database_url, clock)
    yield parts
    parts.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- Seqs.ahead has a cap ------------------------------------------------------------------


def test_every_other_seq_stops_at_the_cap_and_gives_up_the_lowest_gaps():
    seqs = Seqs()
    for i in range(1, AHEAD_KEPT + 1):
        assert seqs.add(2 * i) is True  # 1, 3, 5, … never come
    assert len(seqs.ahead) == AHEAD_KEPT and seqs.through == 0
    # One more: the gaps below the lowest AHEAD_SHED + 1 held (1, 3, …, 20 001)
    # are given up at once, AHEAD_KEPT - AHEAD_SHED left.
    assert seqs.add(2 * AHEAD_KEPT + 2) == (1, 2 * AHEAD_SHED + 1)
    assert seqs.through == 2 * AHEAD_SHED + 2
    assert len(seqs.ahead) == AHEAD_KEPT - AHEAD_SHED
    assert min(seqs.ahead) == 2 * AHEAD_SHED + 4
    # The highest LOST_KEPT of them are still welcome; 1 comes too late.
    assert seqs.lost == set(range(3, 2 * AHEAD_SHED + 2, 2))
    assert seqs.add(2 * AHEAD_SHED + 1) is True and not seqs.add(2 * AHEAD_SHED + 1)
    assert not seqs.add(1)
    # Then one give-up every AHEAD_SHED seqs, for ever, and never above the cap.
    gave_up = []
    for i in range(AHEAD_KEPT + 2, 3 * AHEAD_KEPT):
        taken = seqs.add(2 * i)
        assert taken
        if taken is not True:
            gave_up.append(taken)
        assert len(seqs.ahead) <= AHEAD_KEPT
    assert len(gave_up) == (2 * AHEAD_KEPT - 2) // (AHEAD_SHED + 1)
    assert len(seqs.lost) == LOST_KEPT  # the highest given up: bounded too
    assert max(seqs.lost) == seqs.through - 1 and seqs.through + 1 not in seqs.ahead


def test_a_hole_near_2_63_is_given_up_without_walking_it():
    """A gap 2**62 wide below the held seqs: the give-up looks at no more seqs
    than ``lost`` keeps (a walk of the gap would never end)."""
    seqs = Seqs()
    seqs.add(1)
    base = 2**62
    for i in range(AHEAD_KEPT + 1):
        seqs.add(base + 2 * i)
    assert seqs.through == base + 2 * AHEAD_SHED
    assert len(seqs.ahead) == AHEAD_KEPT - AHEAD_SHED
    assert len(seqs.lost) == LOST_KEPT and max(seqs.lost) == seqs.through - 1


def near_the_cap() -> Seqs:
    """A fresh Seqs holding 2, 4, …: one short of the cap (built once, copied)."""
    if not _NEAR:
        seqs = Seqs()
        for i in range(1, AHEAD_KEPT):
            seqs.add(2 * i)
        _NEAR.append(seqs)
    copy = Seqs(_NEAR[0].through)
    copy.ahead, copy.lost = set(_NEAR[0].ahead), set(_NEAR[0].lost)
    return copy


_NEAR: list[Seqs] = []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 3 * AHEAD_SHED), min_size=1, max_size=3 * AHEAD_SHED))
def test_whatever_the_order_ahead_stays_bounded_and_a_seq_is_new_once(more):
    """Near the cap, any seqs in any order: one held already is never new again,
    each new one is held (at or below ``through``, or in ``ahead``), one not
    taken was given up (below ``through``), and ``ahead`` never passes the cap."""
    seqs = near_the_cap()
    seen = set(seqs.ahead)
    for n in more:
        seq = 2 * AHEAD_KEPT - AHEAD_SHED + n
        taken = seqs.add(seq)
        if seq in seen:
            assert not taken
        elif not taken:
            assert seq <= seqs.through  # given up, and not among the lost kept
        seen.add(seq)
        assert seq <= seqs.through or seq in seqs.ahead
        assert len(seqs.ahead) <= AHEAD_KEPT
        assert seqs.through + 1 not in seqs.ahead and seqs.through + 1 not in seqs.lost
        assert not seqs.ahead or min(seqs.ahead) > seqs.through + 1


@pytest.mark.parametrize("seq", [10**30, 2**63, -1, 0])
def test_a_seq_out_of_range_is_refused_before_it_reaches_the_fleet(seq):
    """protocol's read_int: 1 <= seq <= 2**63 - 1; last_seq 0 <= … alike."""
    event_doc = {**examples.example("event"), "seq": seq}
    with pytest.raises(InvalidMessage, match="seq"):
        m.decode(Kind.EVENT, json.dumps(event_doc), topic_sid=examples.SID)
    if seq != 0:  # last_seq 0 is a station that made no event yet
        status_doc = {**examples.example("status"), "last_seq": seq}
        with pytest.raises(InvalidMessage, match="last_seq"):
            m.decode(Kind.STATUS, json.dumps(status_doc), topic_sid=examples.SID)


def fleet_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """What the fleet's own modules hold (Seqs, marks, notes)."""
    files = [tracemalloc.Filter(True, view_module.__file__),
             tracemalloc.Filter(True, log_once.__file__)]
    return sum(s.size for s in snapshot.filter_traces(files).statistics("filename"))


def test_a_station_sending_every_other_seq_costs_bounded_memory(tmp_path, clock, caplog):
    """A stolen certificate sends seqs 2, 4, 6, …, never the odd ones, past the
    cap and 50 000 more: the fleet's memory does not grow, the replays asked of
    it stay bounded, every event it sent is stored, and an honest station
    beside it is untouched. The line saying so comes once. On SQLite only:
    what is measured is the fleet's, and 160 000 events traced take 15 s."""
    hub = Parts(f"sqlite:///{tmp_path / 'hub.db'}", clock)
    try:
        run_every_other(hub, clock, caplog)
    finally:
        hub.close()


def run_every_other(hub: Parts, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    fleet = hub.fleet
    caplog.set_level(logging.WARNING, logger="hub.fleet.view")
    fleet.apply_status(birth(clock, 1), clock.ms())
    fleet.apply_status(birth(clock, 1, sid=OTHER), clock.ms())
    asked: list[tuple[str, int, int]] = []
    sent = 0
    honest = 0

    def send(count: int) -> None:
        nonlocal sent, honest
        for _ in range(count):
            sent += 1
            assert fleet.apply_event(event(clock, 2 * sent), clock.ms()) == APPLIED
            if sent % 100 == 0:
                clock.advance(1)
                honest += 1
                if honest != 7:  # its seq 7 is lost on the way, and replayed below
                    fleet.apply_event(event(clock, honest, sid=OTHER), clock.ms())
            if sent % 200 == 0:
                for due in fleet.gaps_due(clock.ms()):
                    asked.append(due)
                    if due[0] == OTHER:
                        for seq in range(due[1], due[2] + 1):
                            fleet.apply_event(event(clock, seq, sid=OTHER), clock.ms())
                st = fleet._stations[SID]
                assert len(st.marks) <= 15, st.marks  # a mark a second, merged when due
                assert len(st.seqs.ahead) <= AHEAD_KEPT

    # To the cap and a give-up, then a whole number of give-ups' worth: the two
    # snapshots see ahead at the same fill. Traced from the first event, so that
    # what the second part frees is counted against it.
    tracemalloc.start()
    try:
        send(AHEAD_KEPT + AHEAD_SHED)
        assert hub.writer.flush(60) and hub.writer.flush(60)
        start = tracemalloc.take_snapshot()
        send(5 * AHEAD_SHED)
        assert hub.writer.flush(60) and hub.writer.flush(60)
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = fleet_bytes(end) - fleet_bytes(start)
    # Unbounded, 50 000 more seqs held were ~3.7 MB of set and ints. Bounded,
    # the sets' tables may be another size at either snapshot (lost's 10 000
    # seqs: a table of 0.25 or 0.5 MB, as it was last made).
    assert grown < 1_000_000, f"the fleet grew {grown} bytes over {5 * AHEAD_SHED} events"
    assert fleet_bytes(end) < 12_000_000  # ~7.4 MB of ahead at the cap, 0.8 of lost
    seqs = fleet._stations[SID].seqs
    assert len(seqs.ahead) <= AHEAD_KEPT and len(seqs.lost) <= LOST_KEPT
    assert seqs.through >= 2 * (sent - AHEAD_KEPT)
    # The replays asked of it begin above what was given up, one range at a time.
    mine = [a for a in asked if a[0] == SID]
    assert mine and all(hi - lo < hub.config.replay_max for _, lo, hi in mine)
    assert fleet.get(SID).events_through == seqs.through
    # Every event it sent is stored; the honest station lost nothing.
    with hub.store.engine.connect() as conn:
        def stored(sid: str) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(events)
                                .where(events.c.sid == sid)).scalar_one()
        assert stored(SID) == sent
        assert stored(OTHER) == honest
    assert fleet.get(OTHER).events_through == honest
    assert any(a[0] == OTHER and a[1] == 7 for a in asked)
    # Said once, counted each time.
    said = lines(caplog, "events held above a gap")
    assert len(said) == 1 and "(logged once an hour per station)" in said[0], said
    # Each give-up of AHEAD_SHED counted (the ten-replay give-ups of 1 000 seqs
    # meanwhile made room too, so there may be fewer).
    assert 1 <= fleet.notes.value(log_once.EVENTS_GIVEN_UP) <= (sent - AHEAD_KEPT) // AHEAD_SHED


def test_other_epochs_hold_a_tenth_of_the_cap_each(hub, clock, caplog):
    """A wiped station cannot replay its old epoch: what is held above its gaps
    is cut to OTHER_AHEAD_KEPT when it stops being current and as its late
    events come, so four made-up epochs filled in turn do not hold 5 × the cap."""
    fleet = hub.fleet
    caplog.set_level(logging.WARNING, logger="hub.fleet.view")
    fleet.apply_status(birth(clock, 1), clock.ms())
    for i in range(1, 3 * OTHER_AHEAD_KEPT + 1):
        fleet.apply_event(event(clock, 2 * i), clock.ms())
    assert len(fleet._stations[SID].seqs.ahead) == 3 * OTHER_AHEAD_KEPT  # under AHEAD_KEPT
    fleet.apply_status(birth(clock, 1, epoch=NEW_EPOCH), clock.ms())
    old = fleet._stations[SID].others[EPOCH]
    assert len(old.ahead) <= OTHER_AHEAD_KEPT
    assert old.through == 2 * (3 * OTHER_AHEAD_KEPT - len(old.ahead))
    # Its events keep coming (in flight, or made up): still stored, still bounded.
    for i in range(3 * OTHER_AHEAD_KEPT + 1, 5 * OTHER_AHEAD_KEPT + 1):
        assert fleet.apply_event(event(clock, 2 * i), clock.ms()) == APPLIED
        assert len(old.ahead) <= OTHER_AHEAD_KEPT
    assert fleet.apply_event(event(clock, 2), clock.ms()) == DUPLICATE
    assert len(hub.rows(events, events.c.epoch == EPOCH)) == 5 * OTHER_AHEAD_KEPT
    said = lines(caplog, "events held above a gap")
    assert len(said) == 1 and f"more than {OTHER_AHEAD_KEPT} events" in said[0], said
    # Once on the switch, then once every OTHER_AHEAD_KEPT // 10 + 1 events.
    assert fleet.notes.value(log_once.EVENTS_GIVEN_UP) == 1 + 2 * OTHER_AHEAD_KEPT // (
        OTHER_AHEAD_KEPT // 10 + 1)


# -- a new epoch, again and again --------------------------------------------------------


def test_a_station_alternating_epochs_logs_once_an_hour_and_keeps_each_epochs_events(
        hub, clock, caplog):
    fleet = hub.fleet
    caplog.set_level(logging.WARNING, logger="hub.fleet.view")
    rev = {EPOCH: 0, NEW_EPOCH: 0}
    for i in range(1_001):
        epoch = EPOCH if i % 2 == 0 else NEW_EPOCH
        rev[epoch] += 1
        # The same rev each time in its epoch would be a duplicate: a new birth.
        assert fleet.apply_status(birth(clock, rev[epoch], epoch=epoch), clock.ms()) == APPLIED
        assert fleet.apply_event(event(clock, rev[epoch], epoch=epoch), clock.ms()) == APPLIED
        clock.advance(0.5)
    said = lines(caplog, "new epoch")
    assert len(said) == 1 and "(logged once an hour per station)" in said[0], said
    assert fleet.notes.value(log_once.NEW_EPOCH) == 1_000
    # Each epoch's events were kept across the switches: the current one's all
    # held, the other's remembered (a duplicate of it is still one).
    v = fleet.get(SID)
    assert v.epoch == EPOCH and v.events_through == rev[EPOCH] == 501
    assert fleet.apply_event(event(clock, 500, epoch=NEW_EPOCH), clock.ms()) == DUPLICATE
    row = hub.rows(stations, stations.c.sid == SID)[0]
    # Saved with the last birth, before its event (the row is written lazily).
    assert row["epoch"] == EPOCH and row["events_through"] == 500
    # An hour on, the next switch says so again, once.
    caplog.clear()
    clock.advance(LOG_WINDOW)
    for epoch in (NEW_EPOCH, EPOCH):
        rev[epoch] += 1
        fleet.apply_status(birth(clock, rev[epoch], epoch=epoch), clock.ms())
    assert len(lines(caplog, "new epoch")) == 1
    assert fleet.notes.value(log_once.NEW_EPOCH) == 1_002


def test_made_up_stations_log_up_to_the_bound_then_say_the_rest_are_counted(hub, clock, caplog):
    """Each (station, what) is a key: LOGGED_KEPT of them an hour, then one line."""
    fleet = hub.fleet
    caplog.set_level(logging.WARNING, logger="hub")
    n = LOGGED_KEPT + 300
    for i in range(n):
        sid = f"yh-made-{i}"
        fleet.apply_status(birth(clock, 1, sid=sid), clock.ms())
        fleet.apply_status(birth(clock, 1, sid=sid, epoch=NEW_EPOCH), clock.ms())
    assert len(lines(caplog, "new epoch")) == LOGGED_KEPT
    assert len(lines(caplog, "the rest are counted")) == 1
    assert fleet.notes.value(log_once.NEW_EPOCH) == n
    assert len(fleet.notes.once._logged) == LOGGED_KEPT
    caplog.clear()
    clock.advance(LOG_WINDOW)
    fleet.apply_status(birth(clock, 2, sid="yh-made-0"), clock.ms())
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "300 more station notes" in said[0], said
    assert "yh-made-0" in said[1]


# -- loans: made-up banks and riders ------------------------------------------------------


def bankless_returned(clock: ManualClock, seq: int, rider: str | None, *,
                      sid: str = SID) -> m.Event:
    return event(clock, seq, "bank_returned",
                 {"slot": 5, "bank": None, "charge": 40, "rider": rider}, sid=sid)


#: (what, the line's words, event i of station sid): made-up banks and riders.
LOAN_LINES: list[tuple[str, str, Callable[[ManualClock, int, str], m.Event]]] = [
    (log_once.RETURN_UNMATCHED, "matches no open loan; kept as an event",
     lambda clock, i, sid: returned(clock, i, f"PB{i:06X}", sid=sid)),
    (log_once.BANK_ID_TOO_LONG, "is longer than",
     lambda clock, i, sid: borrowed(clock, i, "X" * (BANK_ID_MAX + 1 + i % 7), sid=sid)),
    (log_once.BANKLESS_NO_RIDER, "with no rider named",
     lambda clock, i, sid: bankless_returned(clock, i, None, sid=sid)),
    (log_once.BANKLESS_UNMATCHED, "a bank with no id returned at",
     lambda clock, i, sid: bankless_returned(clock, i, f"r-{i}", sid=sid)),
]


@pytest.mark.parametrize(("what", "text", "make_event"), LOAN_LINES,
                         ids=[what for what, _, _ in LOAN_LINES])
def test_loan_lines_for_made_up_banks_and_riders_come_once_an_hour(
        hub, clock, caplog, what, text, make_event):
    fleet = hub.fleet
    caplog.set_level(logging.INFO, logger="hub.fleet.loans")
    fleet.apply_status(birth(clock, 1), clock.ms())
    for i in range(1, 1_001):
        assert fleet.apply_event(make_event(clock, i, SID), clock.ms()) == APPLIED
        clock.advance(1)
    said = lines(caplog, text)
    assert len(said) == 1 and "(logged once an hour per station)" in said[0], said
    assert fleet.notes.value(what) == 1_000
    # Another station's first says so: the key is (station, what).
    assert fleet.apply_event(make_event(clock, 1, OTHER), clock.ms()) == APPLIED
    assert len(lines(caplog, text)) == 2
    # An hour on, this station's says so again.
    clock.advance(LOG_WINDOW)
    assert fleet.apply_event(make_event(clock, 1_001, SID), clock.ms()) == APPLIED
    assert len(lines(caplog, text)) == 3 and fleet.notes.value(what) == 1_002
    # Loans still work: a borrow and its return at the lender close it.
    assert fleet.apply_event(borrowed(clock, 2_000, "PB0012AF"), clock.ms()) == APPLIED
    assert fleet.loans.open_loan("PB0012AF") is not None
    assert fleet.apply_event(returned(clock, 2_001, "PB0012AF"), clock.ms()) == APPLIED
    assert fleet.loans.open_loan("PB0012AF") is None


def test_a_bankless_loan_closed_again_and_again_is_said_once(hub, clock, caplog):
    fleet = hub.fleet
    caplog.set_level(logging.INFO, logger="hub.fleet.loans")
    for i in range(500):
        b = event(clock, 2 * i + 1, "bank_borrowed",
                  {"slot": 3, "bank": None, "charge": 96, "rider": RIDER})
        assert fleet.apply_event(b, clock.ms()) == APPLIED
        clock.advance(1)
        assert fleet.apply_event(bankless_returned(clock, 2 * i + 2, RIDER),
                                 clock.ms()) == APPLIED
    assert fleet.loans.open_count() == 0  # every one closed
    assert len(lines(caplog, "closed by a return")) == 1
    assert fleet.notes.value(log_once.BANKLESS_CLOSED) == 500


# -- loans: at most OPEN_LOANS_KEPT open per station ---------------------------------------


def loans_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """What the loans (and the notes) hold, wherever the fleet calls them from."""
    files = [tracemalloc.Filter(True, loans_module.__file__),
             tracemalloc.Filter(True, log_once.__file__)]
    return sum(s.size for s in snapshot.filter_traces(files).statistics("filename"))


def open_rows(hub: Parts, sid: str) -> int:
    return len(hub.rows(loans_table, loans_table.c.sid == sid,
                        loans_table.c.returned_ms.is_(None)))


def test_a_station_borrowing_made_up_banks_keeps_the_cap(tmp_path, clock, caplog):
    """A stolen certificate borrows 20 000 made-up banks, one after another: the
    hub keeps OPEN_LOANS_KEPT of its loans open, in memory and in the table,
    and no more memory past them; every borrow is stored as an event, the line
    comes once and the rest are counted. An honest station beside it lends and
    takes back as before; a bank returned at the full station makes room for
    one more; a restarted hub loads no more than the cap. On SQLite only: what
    is measured is the loans' memory."""
    hub = Parts(f"sqlite:///{tmp_path / 'hub.db'}", clock)
    try:
        run_made_up_borrows(hub, clock, caplog)
    finally:
        hub.close()


def run_made_up_borrows(hub: Parts, clock: ManualClock,
                        caplog: pytest.LogCaptureFixture) -> None:
    fleet, loans = hub.fleet, hub.fleet.loans
    caplog.set_level(logging.WARNING, logger="hub.fleet.loans")
    fleet.apply_status(birth(clock, 1), clock.ms())
    fleet.apply_status(birth(clock, 1, sid=OTHER), clock.ms())
    total = 20_000
    tracemalloc.start()
    try:
        for i in range(1, total + 1):
            assert fleet.apply_event(borrowed(clock, i, f"PB{i:06X}"), clock.ms()) == APPLIED
            if i % 100 == 0:
                clock.advance(1)
            if i == OPEN_LOANS_KEPT + 1_000:
                assert hub.writer.flush(60) and hub.writer.flush(60)
                start = tracemalloc.take_snapshot()
        assert hub.writer.flush(60) and hub.writer.flush(60)
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = loans_bytes(end) - loans_bytes(start)
    # Unbounded, the 14 000 borrows between the snapshots were 3.3 MB of loans.
    assert grown < 50_000, f"the loans grew {grown} bytes over {total - OPEN_LOANS_KEPT - 1_000}"
    assert loans_bytes(end) < OPEN_LOANS_KEPT * 1_000
    assert loans.open_count(SID) == OPEN_LOANS_KEPT == open_rows(hub, SID)
    assert loans.open_loan(f"PB{OPEN_LOANS_KEPT:06X}") is not None
    assert loans.open_loan(f"PB{OPEN_LOANS_KEPT + 1:06X}") is None
    assert len(loans.overdue(clock.ms() + 25 * 3_600_000)) == OPEN_LOANS_KEPT
    with hub.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)
                            .where(events.c.sid == SID)).scalar_one() == total
    said = lines(caplog, "the most kept per station")
    assert len(said) == 1 and "(logged once an hour per station)" in said[0], said
    assert fleet.notes.value(log_once.LOANS_FULL) == total - OPEN_LOANS_KEPT

    # The honest station lends and takes back as before.
    assert fleet.apply_event(borrowed(clock, 1, "PBF012AF", sid=OTHER), clock.ms()) == APPLIED
    assert loans.open_count(OTHER) == 1 and loans.open_loan("PBF012AF").sid == OTHER
    assert fleet.apply_event(returned(clock, 2, "PBF012AF", sid=OTHER), clock.ms()) == APPLIED
    assert loans.open_count(OTHER) == 0 == open_rows(hub, OTHER)

    # A bank back at the full station makes room for one more, and only one.
    seq = total
    for bank in ("PB000001", "PBFFFF01", "PBFFFF02"):
        seq += 1
        kind = returned if bank == "PB000001" else borrowed
        assert fleet.apply_event(kind(clock, seq, bank), clock.ms()) == APPLIED
    assert loans.open_loan("PB000001") is None
    assert loans.open_loan("PBFFFF01") is not None and loans.open_loan("PBFFFF02") is None
    assert loans.open_count(SID) == OPEN_LOANS_KEPT == open_rows(hub, SID)

    # A restart loads the cap, not what the table holds past it (rows written
    # before the cap was kept): the oldest, as the running hub kept them.
    with hub.store.engine.begin() as conn:
        conn.execute(loans_table.insert(), [
            {"sid": SID, "bank": f"PX{i:06X}", "rider": None, "slot": 1,
             "borrowed_ms": clock.ms() + i, "due_ms": clock.ms() + i + 1,
             "borrow_event": f"{SID}/{EPOCH}/{10**6 + i}"} for i in range(10)])
    again = Loans(hub.store)
    assert again.open_count(SID) == OPEN_LOANS_KEPT and again.open_count(OTHER) == 0
    assert again.open_loan("PB000002") is not None and again.open_loan("PX000000") is None
    assert lines(caplog, "10 open loans of yh-chumen-01 in the table past the")


def test_bankless_borrows_by_made_up_riders_share_the_cap(hub, clock, caplog):
    """A station lending with ``bank: null`` (loans kept by the borrow key)
    for made-up riders fills the same cap; a borrow by bank id is then refused
    too, and a bank-less return makes room."""
    fleet, loans = hub.fleet, hub.fleet.loans
    caplog.set_level(logging.WARNING, logger="hub.fleet.loans")
    fleet.apply_status(birth(clock, 1), clock.ms())

    def bankless(seq: int, rider: str) -> m.Event:
        return event(clock, seq, "bank_borrowed",
                     {"slot": 3, "bank": None, "charge": 96, "rider": rider})

    over = 50
    for i in range(1, OPEN_LOANS_KEPT + over + 1):
        assert fleet.apply_event(bankless(i, f"r-{i}"), clock.ms()) == APPLIED
    seq = OPEN_LOANS_KEPT + over
    assert fleet.apply_event(borrowed(clock, seq + 1, "PB0012AF"), clock.ms()) == APPLIED
    assert loans.open_count(SID) == OPEN_LOANS_KEPT == open_rows(hub, SID)
    assert loans.open_loan("PB0012AF") is None
    assert fleet.notes.value(log_once.LOANS_FULL) == over + 1
    assert len(lines(caplog, "the most kept per station")) == 1
    # Rider r-7 brings a bank back: room for one, which the next borrow takes.
    assert fleet.apply_event(bankless_returned(clock, seq + 2, "r-7"), clock.ms()) == APPLIED
    assert loans.open_count(SID) == OPEN_LOANS_KEPT - 1
    assert fleet.apply_event(borrowed(clock, seq + 3, "PB0012AF"), clock.ms()) == APPLIED
    assert loans.open_loan("PB0012AF") is not None
    assert loans.open_count(SID) == OPEN_LOANS_KEPT == open_rows(hub, SID)


# -- the count, on /metrics ------------------------------------------------------------------


def test_the_notes_are_a_metric_of_the_hub(make_hub):  # noqa: F811
    """The ingest registers the fleet's notes with its own metrics: every what
    from the start, at 0, then counted."""
    hub = make_hub(clock=ManualClock(T0))
    value = hub.registry.get_sample_value
    assert all(value("yizhan_hub_station_notes_total", {"what": what}) == 0
               for what in log_once.NOTES)
    clock = hub.clock
    for epoch in (EPOCH, NEW_EPOCH, EPOCH):
        hub.fleet.apply_status(birth(clock, 1, epoch=epoch), clock.ms())
    assert value("yizhan_hub_station_notes_total", {"what": log_once.NEW_EPOCH}) == 2
