"""Delivery of journalled events to the broker, in order, acknowledged (contract §3, §6).

The journal holds every event before anything is published; the outbox only
moves them on. ``pump()`` (the station loop calls it every tick, and again when
the outbox wakes it) publishes unsent events by ``seq`` while the link is up,
keeping at most ``window`` unacknowledged. An event is marked sent only once
the broker's PUBACK for it arrived, and those marks are written in one
transaction per pump: an fsync costs 1–20 ms on an SD card.

Across a reconnect paho keeps the unacknowledged messages and re-sends them
itself (with the DUP flag), so the outbox does not publish them again; it holds
back newer events until those are acknowledged, which keeps first arrivals in
``seq`` order. A new process re-sends everything still unsent: the few the
broker got before the crash arrive twice, and the hub drops them by ``seq``.

    outbox = Outbox(journal, link, clock, on_wake=loop_wake.set)
    outbox.pump()                      # each tick of the station loop
    outbox.replay(120, 180)            # a `replay` command: 61 stored events re-sent

A card that refuses writes (full, read-only) stops nothing here: the
acknowledgements wait in memory and pruning waits, and every ``retry_every``
seconds the pump asks the journal to write what it holds (``Journal.retry``),
so delivery and lending resume by themselves once the card takes writes again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from firmware.journal import Journal, Pruned, StorageFault, StoredEvent
from firmware.link import StationLink
from protocol.errors import InvalidMessage
from protocol.messages import MAX_REPLAY_SPAN
from protocol.topics import Kind
from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: Seconds between prunes of the journal (its bounds, not delivery, need this).
PRUNE_EVERY = 600.0
#: Seconds between tries to write what the journal holds while the card refuses
#: writes (one failed try costs a millisecond; a success resumes lending).
RETRY_EVERY = 5.0
#: Transactions of held writes one pump writes at most (the loop also keeps
#: the heater safe: a backlog goes a few hundred writes per tick).
RETRY_BATCHES = 2
#: Seqs that queued replays may span in all (two of the largest replay the
#: contract allows, MAX_REPLAY_SPAN): past it a replay is refused ``busy``, so
#: a flood of commands cannot keep the uplink re-sending history for ever.
MAX_QUEUED_REPLAY = 2 * MAX_REPLAY_SPAN
#: Replays queued at once, whatever their spans (the hub asks one per station
#: every ``replay_every``, 30 s): a flood of one-seq replays stays small too.
MAX_QUEUED_REPLAYS = 64


class ReplayQueueFull(RuntimeError):
    """A replay past MAX_QUEUED_REPLAYS, or that would take the queued span past
    MAX_QUEUED_REPLAY seqs; it is not queued."""

# What paho answers publish() with when it has kept the message: sent now, or
# held for the next connection.
_KEPT = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


@dataclass(slots=True)
class _Flight:
    seq: int
    session: int  # link.session when handed to paho
    info: mqtt.MQTTMessageInfo
    replay: bool


class Outbox:
    """Publishes the journal's unsent events in order, marks them sent on PUBACK.

    ``window`` bounds unacknowledged events; ``on_wake`` is called (from the
    network thread) when half the window has been acknowledged, so the loop
    pumps again at once while there is a backlog; ``synced`` says whether the
    station clock can be trusted to age events for pruning.
    """

    def __init__(self, journal: Journal, link: StationLink, clock: Clock, window: int = 20, *,
                 on_wake: Callable[[], None] | None = None,
                 synced: Callable[[], bool] | None = None,
                 prune_every: float = PRUNE_EVERY, retry_every: float = RETRY_EVERY) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.journal = journal
        self.link = link
        self.clock = clock
        self.window = window
        self.on_wake = on_wake
        self.synced = synced
        self.prune_every = prune_every
        self.retry_every = retry_every
        self._next_retry = clock.monotonic()
        self._lock = threading.Lock()
        # One pump at a time: two reading the same cursor would publish twice.
        self._pump_lock = threading.Lock()
        self._inflight: dict[int, _Flight] = {}  # mid -> flight
        self._acked: list[int] = []  # seqs acknowledged, not yet marked in the journal
        self._cursor = 0  # highest seq handed to paho in order (replays aside)
        self._replays: deque[list[int]] = deque()  # [next_seq, to_seq] still to re-send
        self._next_prune = clock.monotonic()
        self.published = 0
        self.acknowledged = 0
        link.add_publish_listener(self._on_puback)
        link.add_reset_listener(self._client_replaced)

    # -- what the station loop calls ---------------------------------------------

    def pump(self) -> int:
        """Record acknowledgements, prune when due, publish what the window allows.

        Returns how many events were handed to the link.
        """
        with self._pump_lock:
            return self._pump()

    def _pump(self) -> int:
        self._sweep()
        self._heal()
        self._flush()
        if self.clock.monotonic() >= self._next_prune:
            try:
                more = self.prune().more
            except StorageFault as err:
                log.warning("journal not pruned: %s", err)
                more = False
            # A big backlog of deletions goes a chunk per tick, not all at once.
            self._next_prune = self.clock.monotonic() + (0 if more else self.prune_every)
        if not self.link.connected.is_set():
            return 0
        session = self.link.session
        with self._lock:
            if any(f.session != session for f in self._inflight.values()):
                # paho is re-sending what the last connection left unacknowledged;
                # anything newer now would overtake it.
                return 0
            room = self.window - len(self._inflight)
        sent = 0
        while room > sent:
            rows, replay = self._next_rows(room - sent)
            if not rows:
                break
            for row in rows:
                if not self._publish(row, session, replay):
                    return sent
                sent += 1
        return sent

    def replay(self, from_seq: int, to_seq: int) -> int:
        """Re-send the stored events ``from_seq..to_seq`` in order, with their
        original ``seq`` and ``ts``; returns how many are stored (and will go).

        Missing ones (pruned past the retention, or never created) are logged;
        :meth:`Journal.missing` names them. The events go out through the
        window on the next pumps, so a replay of 100 000 does not flood memory.
        Raises :class:`ReplayQueueFull` when the spans already queued and this one
        would exceed MAX_QUEUED_REPLAY seqs.
        """
        with self._lock:
            spans, queued = len(self._replays), self._queued_span()
        if spans >= MAX_QUEUED_REPLAYS or queued + to_seq - from_seq + 1 > MAX_QUEUED_REPLAY:
            log.warning("replay %d..%d refused: %d replays of %d seqs already queued "
                        "(at most %d of %d seqs)", from_seq, to_seq, spans, queued,
                        MAX_QUEUED_REPLAYS, MAX_QUEUED_REPLAY)
            raise ReplayQueueFull(f"{spans} replays of {queued} events are queued already "
                                  f"(at most {MAX_QUEUED_REPLAYS} of {MAX_QUEUED_REPLAY}): "
                                  "try again later")
        count = self.journal.stored(from_seq, to_seq)
        missing = self.journal.missing(from_seq, to_seq)
        if missing:
            log.warning("replay %d..%d: %d stored, missing %s", from_seq, to_seq, count, missing)
        if count:
            with self._lock:
                self._replays.append([from_seq, to_seq])
        return count

    @property
    def replays_queued(self) -> tuple[int, int]:
        """(replays, seqs they still span) waiting to be re-sent."""
        with self._lock:
            return len(self._replays), self._queued_span()

    def _queued_span(self) -> int:
        """Seqs the queued replays still span (the caller holds ``_lock``)."""
        return sum(hi - lo + 1 for lo, hi in self._replays)

    def prune(self) -> Pruned:
        """Bound the journal (contract §3 retention, then the hard cap)."""
        trusted = self.synced is None or self.synced()
        # An unsynced clock may be years ahead: then age nothing by it, only cap.
        return self.journal.prune(self.clock.ms() if trusted else 0)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def size(self) -> int:
        """Events not yet acknowledged (contract §5 ``health.outbox``)."""
        return self.journal.outbox_size()

    # -- internals -----------------------------------------------------------------

    def _next_rows(self, limit: int) -> tuple[list[StoredEvent], bool]:
        # Replays first: the hub is waiting on that gap. The journal is read
        # outside the lock so a PUBACK never waits on the disk.
        while True:
            with self._lock:
                span = self._replays[0] if self._replays else None
                cursor = self._cursor
            if span is None:
                return self.journal.pending(limit, after_seq=cursor), False
            rows = self.journal.events(span[0], span[1], limit)
            with self._lock:
                if rows:
                    span[0] = rows[-1].seq + 1
                if not rows or span[0] > span[1]:
                    self._replays.popleft()
            if rows:
                return rows, True

    def _publish(self, row: StoredEvent, session: int, replay: bool) -> bool:
        event = row.to_event(self.link.sid, self.journal.epoch)
        try:
            info = self.link.publish(Kind.EVENT, event)
        except InvalidMessage as err:
            # Recorded before the journal checked events: send it as it is, so
            # the seq is not a hole the hub asks to replay for ever.
            log.error("event %d does not fit the contract (%s); sending it anyway", row.seq, err)
            info = self.link.publish(Kind.EVENT, event, validate=False)
        if info.rc not in _KEPT:
            log.error("the MQTT client refused event %d: %s", row.seq, mqtt.error_string(info.rc))
            return False
        with self._lock:
            self._inflight[info.mid] = _Flight(row.seq, session, info, replay)
            if not replay:
                self._cursor = max(self._cursor, row.seq)
        self.published += 1
        return True

    def _on_puback(self, mid: int, ok: bool) -> None:
        """Network thread: the broker acknowledged ``mid``."""
        wake = False
        with self._lock:
            flight = self._inflight.pop(mid, None)
            if flight is None:
                return  # a State or result, or an event not registered yet (_sweep)
            self._settle(flight, ok)
            wake = len(self._inflight) <= self.window // 2
        if wake and self.on_wake is not None:
            self.on_wake()

    def _client_replaced(self) -> None:
        """The link threw its client away: what it held will be neither
        acknowledged nor re-sent, so send those events again from the oldest."""
        with self._lock:
            for flight in self._inflight.values():
                if not flight.replay:
                    self._cursor = min(self._cursor, flight.seq - 1)
            self._inflight.clear()

    def _sweep(self) -> None:
        # paho may process the PUBACK between publish() returning and the mid
        # being registered above; its info object still says so.
        with self._lock:
            done = [mid for mid, f in self._inflight.items() if f.info.is_published()]
            for mid in done:
                self._settle(self._inflight.pop(mid), ok=True)

    def _settle(self, flight: _Flight, ok: bool) -> None:
        if ok:
            self._acked.append(flight.seq)
            self.acknowledged += 1
        elif not flight.replay:
            # Refused by the broker (an MQTT 5 reason code): send it again from there.
            self._cursor = min(self._cursor, flight.seq - 1)

    def _heal(self) -> None:
        """While the card refuses writes, ask the journal to retry now and then."""
        if self.journal.writable:
            return
        now = self.clock.monotonic()
        if now < self._next_retry:
            return
        held = self.journal.held
        self.journal.retry(batches=RETRY_BATCHES)
        if 0 < self.journal.held < held:
            self._next_retry = now  # a backlog going down: more on the next tick
        else:
            self._next_retry = now + self.retry_every

    def _flush(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        if acked:
            try:
                self.journal.mark_sent(acked)
            except BaseException as err:
                with self._lock:
                    self._acked[:0] = acked  # marked next time; never forgotten
                if isinstance(err, StorageFault):
                    # Delivered all the same: the cursor is past them, so they
                    # are not sent again by this process (a restart would, and
                    # the hub drops the duplicates by seq).
                    return
                raise
