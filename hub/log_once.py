"""Lines a station can make the hub log, logged once an hour per station and what.

A station's credentials can be stolen from the roadside (docs/security.md): what
it sends may be repeated without end, and a line the hub logs per message is
then a line per message. :class:`LogOnce` says whether a line is to be logged
now: the first time its key, (station, what), comes up in a window of
``LOG_WINDOW`` seconds (hub clock), with at most ``LOGGED_KEPT`` keys
remembered per window, so a flood of made-up stations costs neither memory nor
lines without end; past them one line says the rest are only counted, and the
window's end says how many were not logged.

The ingest's refusals (hub/mqtt/ingest.py) use it as they are;
:class:`StationNotes` does the same for what the fleet and the loans note
about messages they take (a wiped station's new epoch, a return matching no
loan, …) and counts each in ``yizhan_hub_station_notes_total{what}``.

>>> once = LogOnce(clock, log, "invalid messages", "stations and reasons",
...                "sent invalid messages", "yizhan_hub_invalid_messages_total")
>>> key = ("yh-chumen-01", "event", "not_json")
>>> once.first(key), once.first(key)
(True, False)
>>> notes = StationNotes(clock, registry)
>>> notes.say(log, logging.WARNING, "yh-chumen-01", NEW_EPOCH, "station %s: …", "yh-chumen-01")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from yizhan.clock import Clock

#: How many keys are remembered as already logged in a window; past them, one
#: line says the rest are only counted.
LOGGED_KEPT = 1_000
#: Seconds (hub clock) after which what was logged may be logged again: a
#: station still sending the same thing an hour later says so once more.
LOG_WINDOW = 3600.0


class LogOnce:
    """Whether a key's line is to be logged now: once a window, keys bounded.

    ``noun``, ``keys``, ``verb`` and ``metric`` word the two lines it logs
    itself (the rest only counted; how many were not logged)."""

    def __init__(self, clock: Clock, log: logging.Logger, noun: str, keys: str, verb: str,
                 metric: str) -> None:
        self.clock, self.log = clock, log
        self.noun, self.keys, self.verb, self.metric = noun, keys, verb, metric
        self._lock = threading.Lock()  # the fleet's and the loans' callers may differ
        self._logged: set[Hashable] = set()
        self._window_since = clock.monotonic()
        #: Lines not logged this window because ``_logged`` was full.
        self._unlogged = 0

    def first(self, key: Hashable) -> bool:
        """Whether ``key`` is to be logged now: not yet this window, and room to
        remember it."""
        with self._lock:
            now = self.clock.monotonic()
            if now - self._window_since >= LOG_WINDOW or now < self._window_since:
                if self._unlogged:
                    self.log.warning("%d more %s in the last %.0f s were counted in %s but "
                                     "not logged (more than %d %s)", self._unlogged,
                                     self.noun, now - self._window_since, self.metric,
                                     LOGGED_KEPT, self.keys)
                self._logged.clear()
                self._window_since, self._unlogged = now, 0
            if key in self._logged:
                return False
            if len(self._logged) >= LOGGED_KEPT:
                if not self._unlogged:
                    self.log.warning("more than %d %s %s within %.0f s: the rest are counted "
                                     "(%s), not logged, until the hour is over", LOGGED_KEPT,
                                     self.keys, self.verb, LOG_WINDOW, self.metric)
                self._unlogged += 1
                return False
            self._logged.add(key)
            return True


#: What the fleet and the loans note about a station's message: the ``what``
#: label of ``yizhan_hub_station_notes_total``, and the second half of the
#: once-an-hour key. A fixed few words, never text a station sent.
NEW_EPOCH = "new_epoch"  # a new epoch: the station's storage was wiped (or it says so)
EVENTS_GIVEN_UP = "events_given_up"  # Seqs.AHEAD_KEPT events held above a gap
BANK_ID_TOO_LONG = "bank_id_too_long"
RETURN_UNMATCHED = "return_unmatched"  # a return matching no open loan
RETURN_ELSEWHERE = "return_elsewhere"  # a return of another station's loan: a claim
BORROW_ELSEWHERE = "borrow_elsewhere"  # a borrow of a bank lent elsewhere: a claim
BORROW_AGAIN = "borrow_again"  # a borrow of a bank on loan from here: that loan closed
CLOSED_BY_STATE = "closed_by_state"  # a State showed another station's lent bank
BANKLESS_NO_RIDER = "bankless_no_rider"  # a bank with no id back, no rider named
BANKLESS_UNMATCHED = "bankless_unmatched"  # a bank-less return matching no loan
BANKLESS_CLOSED = "bankless_closed"  # a bank-less loan closed by a return
LOANS_FULL = "loans_full"  # a borrow past the open loans kept per station: no loan
NOTES = (NEW_EPOCH, EVENTS_GIVEN_UP, BANK_ID_TOO_LONG, RETURN_UNMATCHED, RETURN_ELSEWHERE,
         BORROW_ELSEWHERE, BORROW_AGAIN, CLOSED_BY_STATE, BANKLESS_NO_RIDER,
         BANKLESS_UNMATCHED, BANKLESS_CLOSED, LOANS_FULL)


class StationNotes(Collector):
    """``yizhan_hub_station_notes_total{what}``: each note counted (every
    ``what`` from the start, at 0), and its line logged once an hour per
    (station, what). Registered by the ingest, with its own metrics."""

    NAME = "yizhan_hub_station_notes"
    HELP = ("Things the hub noted about station messages it took (a new epoch, a loan "
            "that does not add up, events given up), by what; each logged once an hour "
            "per station and what.")

    def __init__(self, clock: Clock, registry: CollectorRegistry | None = None) -> None:
        self.counts = dict.fromkeys(NOTES, 0)
        self._lock = threading.Lock()
        self.once = LogOnce(clock, logging.getLogger(__name__), "station notes",
                            "(station, what) pairs", "came up",
                            "yizhan_hub_station_notes_total")
        if registry is not None:
            registry.register(self)

    def say(self, log: logging.Logger, level: int, sid: str, what: str, msg: str,
            *args: object) -> None:
        """Count ``what`` of station ``sid``, and log ``msg % args`` on ``log`` if
        it is the first of its (station, what) this hour."""
        with self._lock:
            self.counts[what] += 1  # a KeyError for a what not in NOTES: a bug here
        if self.once.first((sid, what)):
            log.log(level, msg + " (logged once an hour per station)", *args)

    def value(self, what: str) -> int:
        return self.counts[what]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["what"])
        for what, n in list(self.counts.items()):
            family.add_metric([what], n)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["what"])
