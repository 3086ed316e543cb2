"""The outbox against a real Mosquitto: order, acknowledgement, outages, crashes, replay.

What is asserted about duplicates: QoS 1 may deliver a message twice when its
PUBACK is lost (a broker or station dying between receiving and acknowledging)
and the hub drops those by ``seq``. So every test asserts that no seq is
missing and that *first* arrivals come in seq order; where nothing is lost in
flight (a steady link, paho re-sending what it held) it also asserts that
nothing arrives twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from firmware.journal import Journal
from firmware.link import StationLink
from firmware.outbox import Outbox
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.delivery import SID
from tests.harness.mqtt import Received, Subscriber, close, connect
from tests.harness.procs import wait_until
from yizhan.config import MqttConfig

REPO = Path(__file__).resolve().parents[1]
EVENTS = topic(SID, Kind.EVENT)


def seqs(messages: list[Received]) -> list[int]:
    return [json.loads(x.payload)["seq"] for x in messages if x.topic.endswith("/event")]


def first_arrivals(arrived: list[int]) -> list[int]:
    seen: set[int] = set()
    return [s for s in arrived if not (s in seen or seen.add(s))]


def test_events_go_in_order_exactly_once_and_are_marked_sent(broker_factory, tmp_path,
                                                             stations):
    broker = broker_factory()
    with Subscriber(broker, EVENTS) as sub:
        st = stations(broker, tmp_path / "station").start()
        st.record(60)
        wait_until(lambda: len(sub.messages) >= 60, 5, "60 events")
        st.wait_drained()
        time.sleep(0.1)  # room for a duplicate to show up, if there were one
        assert seqs(sub.messages) == list(range(1, 61))
        first = m.decode(Kind.EVENT, sub.messages[0].payload, topic_sid=SID)
        stored = st.journal.events(1, 1)[0]
        assert (first.ts, first.synced, first.type, first.data) == (
            stored.ts, stored.synced, "visit", {"count": 1})
        assert first.epoch == st.journal.epoch
        assert st.journal.outbox_size() == 0 and st.outbox.acknowledged == 60


def test_the_window_bounds_unacknowledged_events(broker_factory, tmp_path, stations):
    broker = broker_factory()
    st = stations(broker, tmp_path / "station", window=5).start(pump=False)
    st.record(40)
    assert st.outbox.pump() == 5
    assert st.outbox.pump() == 0 or st.outbox.in_flight <= 5
    rounds = 0
    while st.journal.outbox_size() and rounds < 500:
        st.outbox.pump()
        assert st.outbox.in_flight <= 5
        rounds += 1
        time.sleep(0.005)
    assert st.journal.outbox_size() == 0


def test_a_broker_outage_loses_nothing(broker_factory, tmp_path, stations):
    """Broker stopped (sessions saved) while events keep coming; started again on
    the same port. A persistent-session subscriber gets every seq, first
    arrivals in order; a duplicate is possible only for a message whose PUBACK
    the stop cut off, so at most a window's worth."""
    broker = broker_factory(persistence=True)
    got: list[Received] = []
    lock = threading.Lock()

    def collect(msg: Received) -> None:
        with lock:
            got.append(msg)

    hub = connect(broker, client_id="hub-persistent", clean_session=False, on_message=collect)
    try:
        hub.subscribe(EVENTS, qos=1)
        time.sleep(0.1)  # SUBACK
        st = stations(broker, tmp_path / "station").start()
        st.record(30)
        wait_until(lambda: len(got) >= 10, 5, "events before the outage")
        broker.stop()  # events 1..30 partly delivered, partly in flight
        wait_until(lambda: not st.link.connected.is_set(), 5, "link down")
        st.record(30)  # recorded during the outage
        time.sleep(0.3)
        assert st.journal.outbox_size() >= 30
        broker.start()
        wait_until(lambda: len(set(seqs(list(got)))) >= 60, 10, "all 60 events after restart")
        st.wait_drained()
        with lock:
            arrived = seqs(got)
        assert sorted(set(arrived)) == list(range(1, 61))
        assert first_arrivals(arrived) == list(range(1, 61))
        assert len(arrived) - 60 <= st.outbox.window
        assert st.journal.outbox_size() == 0
    finally:
        close(hub)


def test_messages_paho_holds_across_a_reconnect_are_not_published_again(
        broker_factory, tmp_path, stations):
    """The broker freezes (SIGSTOP): events go out and no PUBACK comes. It dies and
    comes back: paho re-sends what it held, the pump publishes none of them a
    second time, and newer events wait until those are acknowledged."""
    broker = broker_factory()
    # A reconnect at least ~1 s after the drop, so the subscriber is back first;
    # the outbox pumps inside the connect callback, before paho's re-send.
    st = stations(broker, tmp_path / "station", reconnect_min=1.0, reconnect_max=1.0,
                  rand=lambda: 0.99, pump_on_birth=True).start(pump=False)
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        st.record(10)
        st.outbox.pump()
        assert st.outbox.in_flight == 10  # unacknowledged: the broker is frozen
    finally:
        broker.kill()  # SIGKILL ends a stopped process too
    wait_until(lambda: not st.link.connected.is_set(), 5, "link down")
    st.record(5)  # newer events, waiting while the link is down
    broker.start()
    with Subscriber(broker, EVENTS) as sub:
        # The pump in the connect callback must hold 11..15 back; later pumps send them.
        wait_until(lambda: st.births >= 2 and len(sub.messages) >= 10, 10, "the re-sent 10")
        while st.journal.outbox_size():
            st.outbox.pump()
            time.sleep(0.01)
        wait_until(lambda: len(sub.messages) >= 15, 10, "15 events after the reconnect")
        st.wait_drained()
        time.sleep(0.1)
        assert seqs(sub.messages) == list(range(1, 16))
    assert st.outbox.published == 15  # each handed to paho once
    assert st.journal.outbox_size() == 0


def test_a_sigkilled_station_process_loses_nothing(broker_factory, tmp_path):
    broker = broker_factory()
    data = tmp_path / "station"
    total = 300
    argv = [sys.executable, "-m", "tests.harness.delivery", "--data", str(data),
            "--port", str(broker.port), "--total", str(total)]

    def run(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    with Subscriber(broker, EVENTS) as sub:
        first = run("first")
        try:
            wait_until(lambda: len(sub.messages) >= 80, 15, "80 events from the first process",
                       on_fail=lambda: (tmp_path / "first.log").read_text())
            first.send_signal(signal.SIGKILL)
            first.wait(5)
        finally:
            if first.poll() is None:
                first.kill()
        j = Journal(data)
        killed_at = j.last_seq
        j.close()
        assert killed_at < total, "killed too late to prove anything"

        second = run("second")
        try:
            assert second.wait(30) == 0, (tmp_path / "second.log").read_text()
        finally:
            if second.poll() is None:
                second.kill()
        wait_until(lambda: len(set(seqs(sub.messages))) >= total, 5, "every event")
        arrived = seqs(sub.messages)
    assert sorted(set(arrived)) == list(range(1, total + 1))
    assert first_arrivals(arrived) == list(range(1, total + 1))
    j = Journal(data)
    assert j.outbox_size() == 0 and j.last_seq == total
    j.close()


def test_replay_resends_exactly_the_range_with_original_seq_and_ts(broker_factory, tmp_path,
                                                                   stations, clock):
    broker = broker_factory()
    st = stations(broker, tmp_path / "station", clock=clock)
    st.start()
    for _ in range(30):
        st.record(1)
        clock.advance(1.5)  # every event its own ts
    st.wait_drained()
    original = {e.seq: e.ts for e in st.journal.events(1, 30)}
    with Subscriber(broker, EVENTS) as sub:
        assert st.outbox.replay(10, 20) == 11
        wait_until(lambda: len(sub.messages) >= 11, 5, "the replayed range")
        assert st.outbox.replay(28, 35) == 3  # 31..35 do not exist
        wait_until(lambda: len(sub.messages) >= 14, 5, "the second range")
        time.sleep(0.1)
        events = [m.decode(Kind.EVENT, x.payload, topic_sid=SID) for x in sub.messages]
    assert [e.seq for e in events] == [*range(10, 21), 28, 29, 30]
    assert all(e.ts == original[e.seq] for e in events)
    assert st.journal.missing(28, 35) == [(31, 35)]


def test_nothing_is_published_while_the_link_is_down(broker_factory, tmp_path, stations):
    broker = broker_factory()
    st = stations(broker, tmp_path / "station").start(pump=False)
    broker.stop()
    wait_until(lambda: not st.link.connected.is_set(), 5, "link down")
    st.record(5)
    assert st.outbox.pump() == 0
    assert st.outbox.published == 0 and st.journal.outbox_size() == 5


def test_the_pump_prunes_on_schedule_and_trusts_only_a_synced_clock(tmp_path, clock):
    j = Journal(tmp_path, keep_events=0, keep_ms=1000)
    link = StationLink(SID, MqttConfig(), j.epoch, j.next_rev, lambda: (), lambda: None,
                       lambda msg: None)  # never started: the pump only prunes
    synced = [False]
    outbox = Outbox(j, link, clock, synced=lambda: synced[0], prune_every=60)
    j.append_event(clock.ms() - 5000, True, "visit", {"count": 1})
    j.mark_sent([1])
    outbox.pump()
    assert j.stored(1, 1) == 1  # the clock is not synced: nothing is aged by it
    synced[0] = True
    clock.advance(59)
    outbox.pump()
    assert j.stored(1, 1) == 1  # not due yet
    clock.advance(1)
    outbox.pump()
    assert j.stored(1, 1) == 0
    j.close()
