"""Pacing shared by several hub workers: one robot's pace in one database row.

With several ``yizhan hub`` workers (``mqtt.shared_group``, PostgreSQL), every
worker's outbox may send, and a robot's limit (WeCom 20 a minute, …) is the
robot's, not a worker's: three workers pacing themselves alone would send it
three times its rate. :class:`SharedPacer` keeps the same rules as
:class:`pacing.Pacer` (the windows, the quarter kept for what goes first, the
pause after a refusal for speed) but the record of each robot lives in a row of
``robot_pace``, read and changed under the row's lock (``SELECT … FOR UPDATE``)
by whichever worker sends:

* ``take`` writes the attempt *in flight* with a token and a deadline (twice the
  notifier's timeout, as the outbox's lease): until it is answered every worker
  counts it. A worker killed mid-request never answers: at its deadline the
  attempt counts as answered then, the latest the platform could have seen it.
* ``answered`` turns the token into the time the answer came, and a refusal
  for speed pauses the robot for every worker.
* ``free_at`` and ``capacity`` read the row without locking: a look ahead; the
  decision is ``take``'s, under the lock.

The clocks of the workers are compared (stamps from one, windows judged by
another): keep their hosts on NTP, as the hub's clock is anyway. Each call is a
short transaction of its own on the store's pool (not the writer's queue: a
send must not wait for the ingest's next batch).
"""

from __future__ import annotations

import bisect
import json
import logging
import secrets
import threading
from typing import Any

import sqlalchemy as sa

from hub.alerting.notify.base import DeliveryFailed, Notifier
from hub.alerting.notify.pacing import _KEEP, FOLD_HORIZON, Pacer, _free_at, _Robot
from hub.storage.schema import robot_pace as table
from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: Added to a flight's deadline beyond twice the notifier's timeout.
FLIGHT_SLACK_MS = 1000


class SharedPacer(Pacer):
    """A :class:`Pacer` whose robots' records live in ``robot_pace`` (see the module)."""

    def __init__(self, store: Any, clock: Clock) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self._lease_ms: dict[str, int] = {}  # notifier name → a flight's deadline
        self._mine: dict[str, list[str]] = {}  # notifier name → this process's tokens
        self._tokens = threading.Lock()

    def add(self, notifier: Notifier) -> str | None:
        key = super().add(notifier)
        self._lease_ms[notifier.name] = int(2 * notifier.timeout * 1000) + FLIGHT_SLACK_MS
        return key

    # -- the row --------------------------------------------------------------------------

    def _read(self, conn: sa.Connection, key: str, robot: _Robot, now_ms: int, *,
              lock: bool) -> tuple[_Robot, dict[str, int]]:
        """The robot as its row has it (flights past their deadline counted as
        answered then), and its flights."""
        if lock:
            # The row first, so that FOR UPDATE has something to lock.
            conn.execute(self.store.insert_ignore(table).values(
                robot=key, stamps="[]", flights="{}", paused_until_ms=0, refusals=0))
        q = sa.select(table).where(table.c.robot == key)
        row = conn.execute(q.with_for_update() if lock else q).first()
        if row is None:
            return _Robot(robot.rates, robot.pause), {}
        stamps = sorted(int(s) for s in json.loads(row.stamps))
        flights = {str(k): int(v) for k, v in json.loads(row.flights).items()}
        for token, until in list(flights.items()):
            if until <= now_ms:  # its worker never answered: counted as answered then
                bisect.insort(stamps, until)
                del flights[token]
        state = _Robot(robot.rates, robot.pause, stamps=stamps[-_KEEP:],
                       in_flight=len(flights), paused_until_ms=int(row.paused_until_ms),
                       refusals=int(row.refusals))
        return state, flights

    def _write(self, conn: sa.Connection, key: str, state: _Robot,
               flights: dict[str, int]) -> None:
        conn.execute(table.update().where(table.c.robot == key).values(
            stamps=json.dumps(state.stamps[-_KEEP:]), flights=json.dumps(flights),
            paused_until_ms=state.paused_until_ms, refusals=state.refusals))

    def _robot_of(self, name: str) -> tuple[str, _Robot] | None:
        key = self._of.get(name)
        robot = self._robots.get(key) if key is not None else None
        return (key, robot) if key is not None and robot is not None else None

    def _peek(self, name: str, now_ms: int) -> _Robot | None:
        found = self._robot_of(name)
        if found is None:
            return None
        with self.store.engine.connect() as conn:
            return self._read(conn, found[0], found[1], now_ms, lock=False)[0]

    # -- the Pacer's questions, answered from the row -------------------------------------

    def seed(self, name: str, answered_ms: Any) -> None:
        """Deliveries acknowledged in the last minute, merged into the row (the
        first worker to start after an upgrade fills it; the others add nothing
        new: the same deliveries, the same times)."""
        found = self._robot_of(name)
        if found is None:
            return
        key, robot = found
        seen = [int(ms) for ms in answered_ms]
        now_ms = self.clock.ms()
        with self.store.engine.begin() as conn:
            state, flights = self._read(conn, key, robot, now_ms, lock=True)
            merged = sorted(set(state.stamps) | set(seen))
            state.stamps = merged[-_KEEP:]
            self._write(conn, key, state, flights)

    def free_at(self, name: str, now_ms: int, first: bool = False) -> int:
        state = self._peek(name, now_ms)
        if state is None:
            return now_ms
        return _free_at(state, state.stamps, now_ms, first)

    def capacity(self, name: str, now_ms: int, horizon: float = FOLD_HORIZON,
                 most: int = 1000) -> int:
        state = self._peek(name, now_ms)
        if state is None:
            return most
        end = now_ms + int(horizon * 1000)
        stamps = list(state.stamps)
        n, t = 0, now_ms
        while n < most:
            t = _free_at(state, stamps, t, False)
            if t > end:
                break
            bisect.insort(stamps, t)
            n += 1
        return n

    def take(self, name: str, now_ms: int, first: bool = False) -> int | None:
        found = self._robot_of(name)
        if found is None:
            return None
        key, robot = found
        with self.store.engine.begin() as conn:
            state, flights = self._read(conn, key, robot, now_ms, lock=True)
            at = _free_at(state, state.stamps, now_ms, first)
            if at > now_ms:
                return at
            token = secrets.token_hex(6)
            flights[token] = now_ms + self._lease_ms.get(name, 60_000)
            self._write(conn, key, state, flights)
        with self._tokens:
            self._mine.setdefault(name, []).append(token)
        return None

    def answered(self, name: str, done_ms: int, err: DeliveryFailed | None = None) -> int | None:
        found = self._robot_of(name)
        if found is None:
            return None
        key, robot = found
        token = self._token(name)
        try:
            with self.store.engine.begin() as conn:
                state, flights = self._read(conn, key, robot, done_ms, lock=True)
                flights.pop(token, None)
                bisect.insort(state.stamps, done_ms)
                paused = None
                if err is not None and err.rate_limited:
                    state.refusals += 1
                    wait = err.retry_after if err.retry_after is not None else robot.pause
                    state.paused_until_ms = max(state.paused_until_ms,
                                                done_ms + int(wait * 1000))
                    paused = state.paused_until_ms
                self._write(conn, key, state, flights)
                return paused
        except sa.exc.SQLAlchemyError as err_db:
            # The attempt is over whatever the database says: the outbox must go
            # on to mark the row. Unrecorded, the flight counts at its deadline.
            log.warning("robot pace of %s not recorded (counted at its deadline): %s",
                        name, err_db)
            if err is not None and err.rate_limited:
                wait = err.retry_after if err.retry_after is not None else robot.pause
                return done_ms + int(wait * 1000)
            return None

    def release(self, name: str) -> None:
        found = self._robot_of(name)
        if found is None:
            return
        key, robot = found
        token = self._token(name)
        try:
            with self.store.engine.begin() as conn:
                state, flights = self._read(conn, key, robot, self.clock.ms(), lock=True)
                flights.pop(token, None)
                self._write(conn, key, state, flights)
        except sa.exc.SQLAlchemyError as err:
            log.warning("robot pace of %s: a flight not released (ends at its deadline): %s",
                        name, err)

    def refusals(self, name: str) -> int:
        state = self._peek(name, self.clock.ms())
        return state.refusals if state is not None else 0

    def _token(self, name: str) -> str:
        with self._tokens:
            mine = self._mine.get(name)
            return mine.pop(0) if mine else ""
