"""The fleet's rules (contract §3, §4), in process, on a clock the test moves.

Real parts behind it — Store and Writer on a SQLite file and on PostgreSQL
(``database_url``), the uptime Ledger, the Loans — and messages built as the
ingest decodes them. Each test says a rule in its name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from hub.config import HubConfig, parse_hub_config
from hub.fleet.commands import Commands
from hub.fleet.ledger import Ledger
from hub.fleet.loans import Loans
from hub.fleet.view import APPLIED, DUPLICATE, STALE, Fleet
from hub.storage.schema import events, ledger, loans, station_state, stations, status_log
from hub.storage.store import Store
from hub.storage.writer import Writer
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind
from tests.harness.mqtt import Subscriber, close, connect
from yizhan.clock import ManualClock

SID = "yh-chumen-01"
OTHER = "yh-kanmen-01"
EPOCH = "9f2c01ab"
NEW_EPOCH = "0badcafe"
RIDER = examples.RIDER
T0 = 1_764_196_800.0


def hub_config(database_url: str, **changes: Any) -> HubConfig:
    config = parse_hub_config({"mqtt": {"host": "127.0.0.1", "port": 1883},
                               "database": database_url})
    return dataclasses.replace(config, **changes)


class Parts:
    """A fleet with the real store, writer and ledger behind it."""

    def __init__(self, database_url: str, clock: ManualClock, commands_publish=None,
                 **changes: Any) -> None:
        self.clock = clock
        self.config = hub_config(database_url, **changes)
        self.store = Store(database_url)
        self.writer = Writer(self.store).start()
        self.ledger = Ledger(self.store, self.writer, clock)
        self.ledger.hub_started(clock.ms())
        self.commands = None
        if commands_publish is not None:
            self.commands = Commands(self.store, self.writer, commands_publish, clock)
        self.fleet = Fleet(self.config, self.store, self.writer, self.ledger, clock,
                           commands=self.commands)
        self.fleet.broker_up(clock.ms())

    def rows(self, table: sa.Table, *where: Any) -> list[dict]:
        # Twice: the ledger queues its rows from inside the fleet's ops.
        assert self.writer.flush(5) and self.writer.flush(5), "the writer is stuck"
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).where(*where)).mappings()]

    def close(self) -> None:
        self.writer.close()
        self.store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def make(database_url: str, clock: ManualClock) -> Iterator[Callable[..., Parts]]:
    """``make(**config changes)``: fleets on this test's database (a second one on
    the same database is the hub after a restart)."""
    made: list[Parts] = []

    def build(**changes: Any) -> Parts:
        if made:
            made[-1].close()  # the previous "process" is gone
        made.append(Parts(database_url, clock, **changes))
        return made[-1]

    yield build
    for p in made:
        p.close()


@pytest.fixture
def hub(make: Callable[..., Parts]) -> Parts:
    return make()


# -- messages as the station sends them -----------------------------------------------


def birth(clock: ManualClock, rev: int, *, epoch: str = EPOCH, last_seq: int = 0,
          sid: str = SID) -> m.Status:
    return m.Status.online(sid, epoch, clock.ms(), True, rev, last_seq, "1.0.0", {})


def will(rev: int, *, epoch: str = EPOCH, sid: str = SID) -> m.Status:
    return m.Status.will(sid, epoch, rev)


def state(clock: ManualClock, rev: int, *, epoch: str = EPOCH, last_seq: int = 0,
          sid: str = SID, change: Callable[[dict], None] | None = None) -> m.State:
    d = examples.example("state")
    d.update(sid=sid, epoch=epoch, ts=clock.ms(), rev=rev, last_seq=last_seq)
    if change is not None:
        change(d)
    return m.from_dict(Kind.STATE, d, topic_sid=sid)


def event(clock: ManualClock, seq: int, type_: str = "visit", data: dict | None = None, *,
          epoch: str = EPOCH, sid: str = SID, synced: bool = True,
          ts: int | None = None) -> m.Event:
    if data is None:
        data = {"count": 1} if type_ == "visit" else {}
    return m.Event(sid, epoch, clock.ms() if ts is None else ts, synced, seq, type_, data)


def borrowed(clock: ManualClock, seq: int, bank: str, *, sid: str = SID, **kw: Any) -> m.Event:
    return event(clock, seq, "bank_borrowed",
                 {"slot": 3, "bank": bank, "charge": 96, "rider": RIDER}, sid=sid, **kw)


def returned(clock: ManualClock, seq: int, bank: str, *, sid: str = SID, **kw: Any) -> m.Event:
    return event(clock, seq, "bank_returned",
                 {"slot": 5, "bank": bank, "charge": 40, "rider": None}, sid=sid, **kw)


def ledger_points(hub: Parts, component: str = "station", sid: str = SID) -> list[tuple]:
    rows = hub.rows(ledger, ledger.c.sid == sid, ledger.c.component == component)
    return [(r["at_ms"], r["state"]) for r in sorted(rows, key=lambda r: (r["at_ms"], r["id"]))]


# -- Status: birth and death (contract §4) ------------------------------------------------


def test_a_birth_brings_the_station_online_and_is_stored(hub, clock):
    assert hub.fleet.apply_status(birth(clock, 10), clock.ms()) == APPLIED
    view = hub.fleet.get(SID)
    assert view.online and view.birth == 10 and view.since_ms == clock.ms()
    row = hub.rows(stations, stations.c.sid == SID)[0]
    assert row["online"] and row["birth"] == 10 and row["epoch"] == EPOCH
    assert [r["reason"] for r in hub.rows(status_log)] == ["birth"]
    assert ledger_points(hub) == [(clock.ms(), "up")]


def test_an_older_birth_is_stale_and_the_same_birth_a_duplicate(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    assert hub.fleet.apply_status(birth(clock, 9), clock.ms()) == STALE
    assert hub.fleet.apply_status(birth(clock, 10), clock.ms()) == DUPLICATE
    assert hub.fleet.get(SID).birth == 10


def test_a_stale_will_does_not_mark_a_reborn_station_down(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    clock.advance(5)
    hub.fleet.apply_status(birth(clock, 20), clock.ms())  # reconnected; old will comes late
    assert hub.fleet.apply_status(will(10), clock.ms()) == STALE
    assert hub.fleet.get(SID).online


def test_the_current_will_marks_down_from_the_last_message_seen(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    clock.advance(30)
    hub.fleet.apply_state(state(clock, 11), clock.ms())
    last_heard = clock.ms()
    clock.advance(45)  # the broker notices the dead link 1.5 keepalives later
    assert hub.fleet.apply_status(will(10), clock.ms()) == APPLIED
    view = hub.fleet.get(SID)
    assert not view.online and view.offline_reason == "lost" and view.since_ms == last_heard
    assert ledger_points(hub)[-1] == (last_heard, "down")
    assert hub.fleet.apply_status(will(10), clock.ms()) == DUPLICATE


def test_a_will_counts_when_no_birth_is_known(hub, clock):
    assert hub.fleet.apply_status(will(7), clock.ms(), live=False) == APPLIED
    view = hub.fleet.get(SID)
    assert not view.online and view.birth == 7


def test_a_clean_shutdown_is_an_outage_from_the_goodbye(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    clock.advance(60)
    bye = m.Status.shutdown(SID, EPOCH, clock.ms(), True, 30, 10)
    assert hub.fleet.apply_status(bye, clock.ms()) == APPLIED
    view = hub.fleet.get(SID)
    assert view.offline_reason == "shutdown" and view.since_ms == clock.ms()


# -- State ordering (contract §3, §5) -----------------------------------------------------


def test_states_apply_only_when_newer(hub, clock):
    assert hub.fleet.apply_state(state(clock, 10), clock.ms()) == APPLIED
    assert hub.fleet.apply_state(state(clock, 12), clock.ms()) == APPLIED
    assert hub.fleet.apply_state(state(clock, 11), clock.ms()) == STALE
    assert hub.fleet.apply_state(state(clock, 12), clock.ms()) == DUPLICATE
    assert hub.fleet.get(SID).state_rev == 12
    (row,) = hub.rows(station_state)
    assert row["rev"] == 12 and json.loads(row["state"])["rev"] == 12


def test_a_states_dict_is_made_when_read_and_is_the_newest(hub, clock):
    """The fleet keeps the newest State as it was decoded and makes its dict only
    for a reader (the ingest would otherwise make one for every State)."""
    def turned(rev: int) -> Callable[[dict], None]:
        return lambda d: d["dispenser"].update(level=rev / 100)

    def dict_of(rev: int) -> dict:
        return state(clock, rev, change=turned(rev)).to_dict()

    for rev in (10, 11, 12):
        hub.fleet.apply_state(state(clock, rev, change=turned(rev)), clock.ms())
    assert hub.fleet.get(SID).state == dict_of(12)
    hub.fleet.apply_state(state(clock, 13, change=turned(13)), clock.ms())
    (view,) = hub.fleet.stations()
    assert view.state == dict_of(13) and hub.fleet.get(SID).state == dict_of(13)
    # A copy a reader holds does not change with the next State.
    hub.fleet.apply_state(state(clock, 14, change=turned(14)), clock.ms())
    assert view.state == dict_of(13) and hub.fleet.get(SID).state == dict_of(14)
    assert [v.state for v in hub.fleet.stations()] == [dict_of(14)]


def test_a_new_epoch_is_newer_whatever_its_rev_and_resets_the_station(hub, clock):
    hub.fleet.apply_status(birth(clock, 5000, last_seq=3), clock.ms())
    for seq in (1, 2, 3):
        hub.fleet.apply_event(event(clock, seq), clock.ms())
    hub.fleet.apply_state(state(clock, 5001, last_seq=3), clock.ms())
    # The station's storage was wiped: a new epoch counts from the start again.
    assert hub.fleet.apply_status(birth(clock, 1, epoch=NEW_EPOCH), clock.ms()) == APPLIED
    view = hub.fleet.get(SID)
    assert view.epoch == NEW_EPOCH and view.state is None and view.events_through == 0
    assert hub.fleet.apply_state(state(clock, 2, epoch=NEW_EPOCH), clock.ms()) == APPLIED
    assert hub.fleet.get(SID).state["counters"]["visits"] == 1234
    # Seq 1 of the new epoch is another event than seq 1 of the old one.
    assert hub.fleet.apply_event(event(clock, 1, epoch=NEW_EPOCH), clock.ms()) == APPLIED
    assert hub.fleet.apply_event(event(clock, 1, epoch=EPOCH), clock.ms()) == DUPLICATE
    assert len(hub.rows(events)) == 4
    (row,) = hub.rows(station_state)
    assert (row["epoch"], row["rev"]) == (NEW_EPOCH, 2)


# -- Events: once per (sid, epoch, seq) (contract §3, §6) -------------------------------------


def test_each_event_is_stored_once(hub, clock):
    results = [hub.fleet.apply_event(event(clock, seq), clock.ms()) for seq in (1, 2, 2, 4, 3, 4)]
    assert results == [APPLIED, APPLIED, DUPLICATE, APPLIED, APPLIED, DUPLICATE]
    assert sorted(r["seq"] for r in hub.rows(events)) == [1, 2, 3, 4]
    assert hub.fleet.get(SID).events_through == 4


def test_event_dedupe_survives_a_restart(make, clock):
    first = make()
    first.fleet.apply_status(birth(clock, 10, last_seq=5), clock.ms())
    for seq in (1, 2, 5):  # 3 and 4 still on their way
        first.fleet.apply_event(event(clock, seq), clock.ms())
    second = make()  # a new hub process on the same database
    fleet = second.fleet
    assert fleet.get(SID).events_through == 2
    assert [fleet.apply_event(event(clock, s), clock.ms()) for s in (5, 3, 4, 2)] == [
        DUPLICATE, APPLIED, APPLIED, DUPLICATE]
    assert fleet.get(SID).events_through == 5
    assert sorted(r["seq"] for r in second.rows(events)) == [1, 2, 3, 4, 5]


def test_unknown_event_types_are_stored_not_acted_on(hub, clock):
    ev = event(clock, 1, "confetti_cannon_fired", {"bank": "PB1", "slot": 2})
    assert hub.fleet.apply_event(ev, clock.ms()) == APPLIED
    (row,) = hub.rows(events)
    assert row["type"] == "confetti_cannon_fired" and json.loads(row["data"])["slot"] == 2
    assert hub.rows(loans) == [] and hub.rows(ledger, ledger.c.component != "station") == []


def test_an_unsynced_event_is_dated_by_receipt_and_marked(hub, clock):
    ev = event(clock, 1, synced=False, ts=946_684_800_000)  # a Pi that booted in 2000
    clock.advance(2)
    hub.fleet.apply_event(ev, clock.ms())
    (row,) = hub.rows(events)
    assert row["synced"] is False or row["synced"] == 0
    assert row["ts"] == 946_684_800_000 and row["at_ms"] == row["received_ms"] == clock.ms()


def test_a_synced_event_is_dated_by_the_station(hub, clock):
    ev = event(clock, 1, ts=clock.ms() - 5000)
    hub.fleet.apply_event(ev, clock.ms())
    (row,) = hub.rows(events)
    assert row["at_ms"] == clock.ms() - 5000 and row["received_ms"] == clock.ms()


# -- Gaps and replay (contract §3) ---------------------------------------------------------


def test_a_gap_is_due_after_ten_seconds(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    for seq in (1, 2):
        hub.fleet.apply_event(event(clock, seq), clock.ms())
    hub.fleet.apply_state(state(clock, 11, last_seq=6), clock.ms())
    hub.fleet.apply_event(event(clock, 5), clock.ms())
    clock.advance(9.9)
    assert hub.fleet.gaps_due(clock.ms()) == []
    clock.advance(0.1)
    assert hub.fleet.gaps_due(clock.ms()) == [(SID, 3, 6)]


def test_a_gap_filled_in_time_asks_for_nothing(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    hub.fleet.apply_state(state(clock, 11, last_seq=3), clock.ms())  # State before events
    clock.advance(1)
    for seq in (1, 2, 3):
        hub.fleet.apply_event(event(clock, seq), clock.ms())
    clock.advance(60)
    assert hub.fleet.gaps_due(clock.ms()) == []


def test_replays_are_rate_limited_and_bounded(hub, clock):
    hub.fleet.apply_status(birth(clock, 10, last_seq=5000), clock.ms())
    clock.advance(10)
    assert hub.fleet.gaps_due(clock.ms()) == [(SID, 1, 1000)]
    clock.advance(29)
    assert hub.fleet.gaps_due(clock.ms()) == []  # one replay per station per 30 s
    for seq in range(1, 1001):
        hub.fleet.apply_event(event(clock, seq), clock.ms())
    clock.advance(1)
    assert hub.fleet.gaps_due(clock.ms()) == [(SID, 1001, 2000)]


def test_gaps_of_an_offline_station_wait_until_it_is_back(hub, clock):
    hub.fleet.apply_status(birth(clock, 10, last_seq=4), clock.ms())
    hub.fleet.apply_status(will(10), clock.ms())
    clock.advance(60)
    assert hub.fleet.gaps_due(clock.ms()) == []  # a command to it now would be lost
    hub.fleet.apply_status(birth(clock, 11, last_seq=4), clock.ms())
    assert hub.fleet.gaps_due(clock.ms()) == [(SID, 1, 4)]


def test_gaps_are_looked_for_only_at_stations_missing_events(hub, clock, monkeypatch):
    # gaps_due runs every 2 s under the fleet's lock: at 50 000 stations a pass
    # over all of them held the ingest up. It looks only where events are missing.
    sids = [f"yh-town-{i:03d}" for i in range(200)]
    for n, sid in enumerate(sids):
        hub.fleet.apply_status(birth(clock, 10, sid=sid, last_seq=1), clock.ms())
        hub.fleet.apply_event(event(clock, 1, sid=sid), clock.ms())
        if n in (7, 150):  # these two are told of events 2..4 they never sent
            hub.fleet.apply_state(state(clock, 11, sid=sid, last_seq=4), clock.ms())
    # Each birth told of event 1 before it came: a pass forgets the stations
    # whose missing events have all arrived since.
    assert hub.fleet.gaps_due(clock.ms()) == []
    looked: list[str] = []
    gap_due = type(hub.fleet)._gap_due

    def counting(self, st, now_ms, grace):
        looked.append(st.view.sid)
        return gap_due(self, st, now_ms, grace)

    monkeypatch.setattr(type(hub.fleet), "_gap_due", counting)
    clock.advance(10)
    assert hub.fleet.gaps_due(clock.ms()) == [(sids[7], 2, 4), (sids[150], 2, 4)]
    assert sorted(looked) == [sids[7], sids[150]]
    for seq in (2, 3, 4):
        hub.fleet.apply_event(event(clock, seq, sid=sids[7]), clock.ms())
    looked.clear()
    clock.advance(40)
    assert hub.fleet.gaps_due(clock.ms()) == [(sids[150], 2, 4)]  # asked again after 30 s
    looked.clear()
    clock.advance(40)
    hub.fleet.gaps_due(clock.ms())
    assert looked == [sids[150]]  # the filled one is no longer looked at


def test_events_the_station_no_longer_has_are_given_up(make, clock, broker):
    client = connect(broker)
    try:
        def publish(topic, payload):
            return client.publish(topic, payload, qos=1)

        hub = make()
        hub.close()
        hub = Parts(hub.config.database, clock, commands_publish=publish)
        with Subscriber(broker, f"yizhan/v1/{SID}/cmd") as sub:
            hub.fleet.apply_status(birth(clock, 10, last_seq=8), clock.ms())
            for seq in (5, 6, 7, 8):
                hub.fleet.apply_event(event(clock, seq), clock.ms())
            clock.advance(10)
            ((sid, lo, hi),) = hub.fleet.gaps_due(clock.ms())
            cid = hub.commands.send(sid, "replay", {"from_seq": lo, "to_seq": hi}, by="hub")
            hub.fleet.replay_sent(sid, cid, lo, hi)
            cmd = sub.wait_for(lambda x: True, timeout=5).json()
            assert cmd["cmd"] == "replay" and cmd["args"] == {"from_seq": 1, "to_seq": 4}
        # The station pruned 1..3 and still has 4.
        hub.fleet.apply_event(event(clock, 4), clock.ms())
        answer = m.CommandResult(SID, EPOCH, clock.ms(), True, 12, cid, True, None,
                                 {"count": 1, "missing": [[1, 3]]})
        assert hub.fleet.apply_result(answer, clock.ms()) == APPLIED
        assert hub.fleet.get(SID).events_through == 8
        clock.advance(60)
        assert hub.fleet.gaps_due(clock.ms()) == []
        # Should one turn up after all, it is kept.
        assert hub.fleet.apply_event(event(clock, 2), clock.ms()) == APPLIED
        hub.close()
    finally:
        close(client)


# -- Silence (contract §4: a stale retained "online") ---------------------------------------


def test_a_silent_station_goes_down_from_when_it_was_last_heard(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    last_heard = clock.ms()
    clock.advance(180)
    assert hub.fleet.sweep_silent(clock.ms()) == []  # 3 × 60 s not yet past
    clock.advance(1)
    assert hub.fleet.sweep_silent(clock.ms()) == [SID]
    view = hub.fleet.get(SID)
    assert not view.online and view.offline_reason == "silent" and view.since_ms == last_heard
    clock.advance(100)
    hub.fleet.apply_state(state(clock, 11), clock.ms())  # heard again
    assert hub.fleet.get(SID).online
    assert ledger_points(hub) == [(last_heard, "up"), (last_heard + 1, "down"),
                                  (clock.ms(), "up")]


def test_retained_copies_do_not_prove_a_station_alive(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    hub.fleet.apply_state(state(clock, 11), clock.ms())
    last_heard = clock.ms()
    clock.advance(120)
    # The hub resubscribes: the broker hands out the retained birth and State again.
    assert hub.fleet.apply_status(birth(clock, 10), clock.ms(), live=False) == DUPLICATE
    assert hub.fleet.apply_state(state(clock, 11), clock.ms(), live=False) == DUPLICATE
    clock.advance(61)
    assert hub.fleet.sweep_silent(clock.ms()) == [SID]
    assert hub.fleet.get(SID).since_ms == last_heard


def test_no_station_is_judged_silent_while_the_hub_cannot_hear(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    hub.fleet.broker_down()
    clock.advance(600)
    assert hub.fleet.sweep_silent(clock.ms()) == []
    hub.fleet.broker_up(clock.ms())  # the stations republish within 10 s of this
    clock.advance(170)
    assert hub.fleet.sweep_silent(clock.ms()) == []
    clock.advance(11)
    assert hub.fleet.sweep_silent(clock.ms()) == [SID]


# -- Parts and maintenance in the ledger --------------------------------------------------------


def test_parts_follow_the_state_and_newer_events(hub, clock):
    def kiosk_stale(d):
        d["health"]["kiosk"] = "stale"
        d["lockers"]["online"] = False

    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    hub.fleet.apply_state(state(clock, 11, last_seq=0), clock.ms())
    t1 = clock.ms()
    clock.advance(1)
    hub.fleet.apply_state(state(clock, 12, change=kiosk_stale), clock.ms())
    t2 = clock.ms()
    clock.advance(1)
    hub.fleet.apply_event(event(clock, 1, "locker_online"), clock.ms())
    t3 = clock.ms()
    clock.advance(1)
    hub.fleet.apply_state(state(clock, 13, change=lambda d: d.pop("health")), clock.ms())
    assert ledger_points(hub, "kiosk") == [(t1, "up"), (t2, "down"), (clock.ms(), "unknown")]
    assert ledger_points(hub, "lockers") == [(t1, "up"), (t2, "down"), (t3, "up")]
    assert ledger_points(hub, "dispenser") == [(t1, "up")]


def test_a_replayed_old_event_does_not_undo_a_newer_state(hub, clock):
    hub.fleet.apply_status(birth(clock, 10), clock.ms())
    hub.fleet.apply_state(state(clock, 11, last_seq=2), clock.ms())  # lockers online
    hub.fleet.apply_event(event(clock, 2, "locker_online"), clock.ms())
    hub.fleet.apply_event(event(clock, 1, "locker_offline"), clock.ms())  # replayed, older
    assert [s for _, s in ledger_points(hub, "lockers")] == ["up"]


def test_maintenance_events_switch_maintenance(hub, clock):
    start = clock.ms()
    hub.fleet.apply_event(event(clock, 1, "maintenance_started", {"staff": "li"}), start)
    clock.advance(600)
    hub.fleet.apply_event(event(clock, 2, "maintenance_ended", {"staff": "li"}), clock.ms())
    hub.fleet.apply_event(event(clock, 2, "maintenance_ended", {"staff": "li"}), clock.ms())
    assert ledger_points(hub, "maintenance") == [(start, "on"), (clock.ms(), "off")]


# -- Loans ---------------------------------------------------------------------------------------


def test_a_loan_opens_on_borrow_and_closes_on_return_at_another_station(hub, clock):
    hub.fleet.apply_event(borrowed(clock, 1, "PB0012AF"), clock.ms())
    assert hub.fleet.loans.open_count(SID) == 1
    (loan,) = hub.rows(loans)
    assert loan["returned_ms"] is None and loan["due_ms"] == clock.ms() + 24 * 3600_000
    clock.advance(3600)
    back = clock.ms()
    hub.fleet.apply_event(returned(clock, 1, "PB0012AF", sid=OTHER), clock.ms())
    # Only the other station says so: open until its State shows the bank.
    assert hub.fleet.loans.open_count(SID) == 1
    assert hub.rows(loans)[0]["returned_ms"] is None
    clock.advance(30)

    def in_slot_5(d: dict) -> None:
        d["lockers"]["slots"][0].update(slot=5, bank="PB0012AF")

    hub.fleet.apply_state(state(clock, 1, sid=OTHER, last_seq=1, change=in_slot_5),
                          clock.ms())
    (loan,) = hub.rows(loans)
    assert loan["returned_ms"] == back and loan["returned_sid"] == OTHER
    assert loan["sid"] == SID and loan["rider"] == RIDER
    assert hub.fleet.loans.open_count(SID) == 0


def test_an_unmatched_return_is_an_event_only(hub, clock):
    hub.fleet.apply_event(returned(clock, 1, "PB9999ZZ"), clock.ms())
    assert hub.rows(loans) == [] and len(hub.rows(events)) == 1


def test_a_borrow_heard_after_its_return_is_no_open_loan(hub, clock):
    # The borrowing station was offline; the bank came back elsewhere first.
    borrow = borrowed(clock, 1, "PB0012AF")
    clock.advance(3600)
    hub.fleet.apply_event(returned(clock, 1, "PB0012AF", sid=OTHER), clock.ms())
    back = clock.ms()
    hub.fleet.apply_event(borrow, clock.ms())
    # A claim of the other station until its State shows the bank.
    assert hub.fleet.loans.claimed("PB0012AF").sid == OTHER
    assert hub.rows(loans)[0]["returned_ms"] is None

    def in_a_slot(d: dict) -> None:
        d["lockers"]["slots"][0].update(bank="PB0012AF")

    hub.fleet.apply_state(state(clock, 1, sid=OTHER, last_seq=1, change=in_a_slot),
                          clock.ms())
    (loan,) = hub.rows(loans)
    assert loan["returned_sid"] == OTHER and loan["returned_ms"] == back
    assert hub.fleet.loans.overdue(clock.ms() + 48 * 3600_000) == []


def test_loans_overdue_after_loan_hours(make, clock):
    hub = make(loan_hours=2.0)
    hub.fleet.apply_event(borrowed(clock, 1, "PB0012AF"), clock.ms())
    hub.fleet.apply_event(borrowed(clock, 2, "PB0013B0"), clock.ms())
    clock.advance(1800)
    hub.fleet.apply_event(returned(clock, 3, "PB0013B0"), clock.ms())
    clock.advance(5400)
    assert hub.fleet.loans.overdue(clock.ms()) == []  # due at 2 h, not after
    clock.advance(1)
    (late,) = hub.fleet.loans.overdue(clock.ms())
    assert late.bank == "PB0012AF" and late.sid == SID
    # Known again after a restart.
    assert hub.writer.flush(5)
    assert [x.bank for x in Loans(hub.store).overdue(clock.ms())] == ["PB0012AF"]


def test_a_borrow_replayed_after_a_restart_opens_no_second_loan(make, clock):
    first = make()
    first.fleet.apply_event(borrowed(clock, 1, "PB0012AF"), clock.ms())
    second = make()
    assert second.fleet.apply_event(borrowed(clock, 1, "PB0012AF"), clock.ms()) == DUPLICATE
    assert len(second.rows(loans)) == 1 and second.fleet.loans.open_count() == 1


def test_an_event_type_of_64_chars_is_stored(hub, clock):
    long_type = "x" * 64  # the longest the protocol allows
    assert hub.fleet.apply_event(event(clock, 1, long_type, {}), clock.ms()) == APPLIED
    assert [r["type"] for r in hub.rows(events)] == [long_type]


def test_a_bank_id_too_long_for_a_loan_still_stores_its_event(hub, clock):
    ev = borrowed(clock, 1, "PB" + "0" * 30)
    assert hub.fleet.apply_event(ev, clock.ms()) == APPLIED
    assert len(hub.rows(events)) == 1 and hub.rows(loans) == []
