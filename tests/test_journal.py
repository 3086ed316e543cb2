"""The journal: rev and seq across restarts, the outbox queries, retention and the cap.

Real SQLite files in tmp_path; a "crash" is a second Journal opened on the same
file while the first is never closed, so nothing the first held in memory counts.
"""

from __future__ import annotations

import logging

import pytest

from firmware.journal import REV_BLOCK, Journal
from protocol.errors import InvalidMessage

DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_764_196_800_000


def visit(j: Journal, ts: int = NOW_MS) -> int:
    return j.append_event(ts, True, "visit", {"count": 1})


def test_rev_rises_strictly_across_reopen_and_crash(tmp_path):
    j = Journal(tmp_path)
    first = [j.next_rev() for _ in range(5)]
    j.close()
    j2 = Journal(tmp_path)
    after_reopen = j2.next_rev()
    # A crash: j2 is never closed, its unused block is simply skipped.
    crashed = Journal(tmp_path)
    after_crash = crashed.next_rev()
    assert first == sorted(set(first))
    assert first[-1] < after_reopen < after_crash
    crashed.close()
    j2.close()


def test_rev_block_reserved_inside_a_failed_transaction_is_not_reused(tmp_path):
    j = Journal(tmp_path)
    while j.next_rev() % REV_BLOCK:
        pass  # use up the first block, so the next rev reserves a new one
    with pytest.raises(RuntimeError), j.transaction():
        inside = j.next_rev()  # reserves the next block in a transaction that rolls back
        raise RuntimeError("the caller's write failed")
    assert Journal(tmp_path).next_rev() > inside


def test_seq_is_gap_free_across_reopen_and_rollback(tmp_path):
    j = Journal(tmp_path)
    assert [visit(j) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RuntimeError), j.transaction() as tx:
        j.add_event(tx, NOW_MS, True, "visit", {"count": 1})
        raise RuntimeError("rolled back: seq 4 must be handed out again")
    assert j.last_seq == 3
    assert visit(j) == 4
    j.close()
    j2 = Journal(tmp_path)
    assert j2.last_seq == 4
    assert visit(j2) == 5
    assert [e.seq for e in j2.events(1, 10)] == [1, 2, 3, 4, 5]
    assert j2.counters()["visits"] == 5


def test_an_event_the_hub_would_reject_is_refused_and_changes_nothing(tmp_path):
    j = Journal(tmp_path)
    with pytest.raises(InvalidMessage) as err:
        j.append_event(NOW_MS, True, "bank_borrowed", {"slot": 3})
    assert err.value.field == "data.bank"
    assert j.last_seq == 0 and j.counters()["borrows"] == 0
    # Types the contract does not know are stored (readers accept them).
    assert j.append_event(NOW_MS, False, "future_thing", {"x": 1}) == 1


def test_pending_mark_sent_and_outbox_size(tmp_path):
    j = Journal(tmp_path)
    for i in range(10):
        j.append_event(NOW_MS + i, i % 2 == 0, "door_opened", {"door": "entrance"})
    assert j.outbox_size() == 10
    rows = j.pending(4)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert (rows[0].ts, rows[0].synced, rows[1].synced) == (NOW_MS, True, False)
    assert rows[0].data == {"door": "entrance"} and not rows[0].sent
    assert [r.seq for r in j.pending(3, after_seq=4)] == [5, 6, 7]
    j.mark_sent([1, 2, 3, 5])
    assert j.outbox_size() == 6
    assert [r.seq for r in j.pending(10)] == [4, 6, 7, 8, 9, 10]
    assert [r.sent for r in j.events(3, 6)] == [True, False, True, False]
    j.mark_sent([])  # nothing to do, no transaction
    j.mark_sent(range(1, 11))
    assert j.outbox_size() == 0 and j.pending(5) == []


def test_replay_queries_name_what_is_missing(tmp_path):
    j = Journal(tmp_path, keep_events=0, keep_ms=0)
    for _ in range(10):
        visit(j, ts=NOW_MS - 10 * DAY_MS)
    j.mark_sent([1, 2, 3, 6])
    j.prune(NOW_MS)  # removes 1, 2, 3 and 6: delivered and out of any window
    assert [e.seq for e in j.events(1, 8)] == [4, 5, 7, 8]
    assert j.stored(1, 12) == 6
    assert j.missing(1, 12) == [(1, 3), (6, 6), (11, 12)]
    assert j.missing(4, 5) == []


def test_delivered_events_stay_seven_days_or_the_newest_n(tmp_path):
    j = Journal(tmp_path, keep_events=5)
    old, recent = NOW_MS - 8 * DAY_MS, NOW_MS - 6 * DAY_MS
    for _ in range(10):
        visit(j, ts=old)
    for _ in range(10):
        visit(j, ts=recent)
    visit(j, ts=old)  # seq 21: old, but never delivered
    j.mark_sent(range(1, 21))
    pruned = j.prune(NOW_MS)
    # 1..10 are older than 7 days and outside the newest 5: they go. 11..20 are
    # younger than 7 days: they stay although they are not among the newest 5.
    assert pruned.expired == 10 and pruned.capped == 0
    assert [e.seq for e in j.events(1, 30)] == list(range(11, 22))

    # Once they age past 7 days the newest 5 (seq 17..21) still stay.
    pruned = j.prune(NOW_MS + 2 * DAY_MS)
    assert [e.seq for e in j.events(1, 30)] == [17, 18, 19, 20, 21]
    # Unsent events are never pruned by age, whatever the window.
    lean = Journal(tmp_path, keep_events=0, keep_ms=0)
    lean.prune(NOW_MS + 30 * DAY_MS)
    assert [e.seq for e in lean.events(1, 30)] == [21]


def test_the_hard_cap_drops_the_oldest_even_unsent_loudly(tmp_path, caplog):
    j = Journal(tmp_path, max_rows=10)
    for _ in range(15):
        visit(j)
    j.mark_sent([1, 2])
    with caplog.at_level(logging.ERROR, logger="firmware.journal"):
        pruned = j.prune(NOW_MS)
    assert (pruned.capped, pruned.capped_unsent) == (5, 3)
    assert [e.seq for e in j.events(1, 20)] == list(range(6, 16))
    assert j.dropped_unsent == 3
    assert "NEVER DELIVERED" in caplog.text
    # seq goes on from where it was; the counter survives a restart.
    j.close()
    j2 = Journal(tmp_path, max_rows=10)
    assert j2.dropped_unsent == 3
    assert visit(j2) == 16
    assert j2.prune(NOW_MS).capped == 1  # 11 rows over a cap of 10: the oldest (unsent) goes
    assert j2.dropped_unsent == 4


def test_under_the_cap_nothing_goes(tmp_path):
    j = Journal(tmp_path, max_rows=10)
    for _ in range(10):
        visit(j)
    assert j.prune(NOW_MS).capped == 0
    assert j.stored(1, 10) == 10


def test_prune_works_in_chunks(tmp_path):
    j = Journal(tmp_path, keep_events=0, max_rows=20)
    for _ in range(50):
        visit(j, ts=NOW_MS - 10 * DAY_MS)
    j.mark_sent(range(1, 26))
    first = j.prune(NOW_MS, limit=10)
    assert (first.expired, first.capped, first.more) == (10, 10, True)
    second = j.prune(NOW_MS, limit=10)
    # 5 delivered ones left to expire; 25 rows left, 5 over the cap, all unsent.
    assert (second.expired, second.capped, second.capped_unsent, second.more) == (5, 5, 5, False)
    assert [e.seq for e in j.events(1, 50)] == list(range(31, 51))
