"""Commands the hub sends to stations (contract §7), and what became of each.

>>> cid = commands.send("yh-chumen-01", "unlock", {"slot": 3}, by="token:abc123")
>>> commands.get("yh-chumen-01", cid)["state"]
'sent'

A command is published once (QoS 1, not retained: contract §2) and ends in one
of ``ok``, ``failed`` (the station's answer) or ``expired`` (no answer within
``expires`` plus a grace). Open commands live in memory, so ``result()`` — called
on the MQTT network thread for every ``cmd/result`` — never waits on the
database; every change is also written through the ``Writer``.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from hub.storage.schema import commands as table
from protocol import messages as m
from protocol.errors import InvalidIdentifier, InvalidMessage
from protocol.ids import check_sid
from protocol.topics import Kind, topic
from yizhan.clock import Clock

log = logging.getLogger(__name__)

APPLIED, DUPLICATE, STALE = "applied", "duplicate", "stale"
SENT, OK, FAILED, EXPIRED = "sent", "ok", "failed", "expired"
STATES = (SENT, OK, FAILED, EXPIRED)

#: A result may still be on its way when ``expires`` passes on the hub's clock
#: (station and hub clocks differ, the broker queues): wait this long before
#: calling a command expired.
GRACE_MS = 5_000
#: Closed commands stay in memory this long, so a repeated result is known as a
#: duplicate and a GET right after the answer needs no database read.
KEEP_CLOSED_MS = 10 * 60_000
#: Replays asked through the API: this many per station within the window
#: (docs/hub-api.md#commands). The hub's own gap repair is paced by ``replay_every``.
REPLAYS_PER_WINDOW = 5
REPLAY_WINDOW_MS = 60_000


class CommandError(Exception):
    """Root of the errors of :mod:`hub.fleet.commands`."""


class BadCommand(CommandError, ValueError):
    """A command the hub refuses to send; ``code`` is ``bad_sid``, ``unknown_cmd``
    or ``bad_args`` (the latter two as a station would answer, contract §7)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandNotSent(CommandError, RuntimeError):
    """The MQTT client would not take the command (no broker); it is recorded failed."""


class TooManyReplays(CommandError, RuntimeError):
    """A ``replay`` asked through the API past the per-station limit; nothing was
    sent. ``retry_after`` is whole seconds until one more would be taken."""

    def __init__(self, sid: str, retry_after: int) -> None:
        super().__init__(f"at most {REPLAYS_PER_WINDOW} replay commands to {sid} every "
                         f"{REPLAY_WINDOW_MS // 1000} s; try again in {retry_after} s")
        self.retry_after = retry_after


class ReplayPace:
    """At most REPLAYS_PER_WINDOW replays a station within any REPLAY_WINDOW_MS.

    Each replay makes a station re-read and re-send up to 100 000 events over its
    uplink: a script looping on the API must not keep a station doing only that.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, deque[int]] = {}  # sid -> times of its recent replays

    def take(self, sid: str) -> None:
        """Count one replay to ``sid`` now, or raise :class:`TooManyReplays`."""
        now = self.clock.ms()
        with self._lock:
            times = self._sent.setdefault(sid, deque())
            while times and now - times[0] >= REPLAY_WINDOW_MS:
                times.popleft()
            if len(times) >= REPLAYS_PER_WINDOW:
                wait_ms = times[0] + REPLAY_WINDOW_MS - now
                raise TooManyReplays(sid, max(1, -(-wait_ms // 1000)))
            times.append(now)
            # Forget quiet stations, so the map holds only the recently busy.
            for quiet in [s for s, t in self._sent.items() if now - t[-1] >= REPLAY_WINDOW_MS]:
                del self._sent[quiet]


@dataclass(frozen=True, slots=True)
class _Record:
    id: str
    sid: str
    cmd: str
    args: dict[str, Any]
    by: str | None
    created_ms: int
    expires_ms: int
    state: str = SENT
    error: str | None = None
    result: dict[str, Any] | None = None
    answered_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "sid": self.sid, "cmd": self.cmd, "args": self.args,
            "state": self.state, "error": self.error, "result": self.result,
            "by": self.by, "created": self.created_ms, "expires": self.expires_ms,
            "answered": self.answered_ms,
        }

    @classmethod
    def from_row(cls, row: Any) -> _Record:
        return cls(
            id=row.id, sid=row.sid, cmd=row.cmd, args=json.loads(row.args), by=row.by,
            created_ms=row.created_ms, expires_ms=row.expires_ms, state=row.state,
            error=row.error, result=json.loads(row.result) if row.result else None,
            answered_ms=row.answered_ms,
        )


def new_id() -> str:
    """``c-`` and 16 random hex digits: unguessable, unique without a database round trip."""
    return "c-" + secrets.token_hex(8)


class Commands:
    """Send commands, take their results, expire the unanswered.

    ``publish(topic, payload: bytes)`` hands a message to the MQTT client at
    QoS 1, not retained, and raises when it cannot.
    """

    def __init__(self, store: Any, writer: Any, publish: Callable[[str, bytes], Any],
                 clock: Clock, ttl: float = 30.0) -> None:
        self.store = store
        self.writer = writer
        self.publish = publish
        self.clock = clock
        self.ttl_ms = int(ttl * 1000)
        self._lock = threading.Lock()
        self._open: dict[str, _Record] = {}
        self._closed: dict[str, _Record] = {}  # by id, in closing order
        self.replay_pace = ReplayPace(clock)
        #: Several hub workers (docs/scaling.md): a result may reach a worker that
        #: did not send the command; it closes the stored row, and the sender
        #: reads the row before it reports or expires a command of its own.
        self.shared = False
        self._load()

    def _load(self) -> None:
        """Take up what a previous run left: open commands, so their results still
        count, and recently closed ones, so a repeated answer is a duplicate."""
        since = self.clock.ms() - KEEP_CLOSED_MS
        q = (sa.select(table)
             .where(sa.or_(table.c.state == SENT, table.c.created_ms >= since))
             .order_by(table.c.created_ms))
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        for row in rows:
            rec = _Record.from_row(row)
            (self._open if rec.state == SENT else self._closed)[rec.id] = rec

    # -- sending -----------------------------------------------------------------------

    def send(self, sid: str, cmd: str, args: dict[str, Any] | None, by: str | None,
             *, paced: bool = False) -> str:
        """Validate, record and publish one command; its id. Raises :class:`BadCommand`,
        and with ``paced`` (a command from the API) :class:`TooManyReplays`."""
        try:
            check_sid(sid)
        except InvalidIdentifier as err:
            raise BadCommand("bad_sid", str(err)) from err
        if not isinstance(cmd, str) or not cmd:
            raise BadCommand("unknown_cmd", "cmd must be a non-empty string")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise BadCommand("bad_args", "args must be a JSON object")
        if by is not None:
            by = by[:64]  # the column's width; a name, not a message
        now = self.clock.ms()
        command = m.Command(new_id(), cmd, args, ts=now, expires=now + self.ttl_ms, by=by)
        problem = command.check_args()
        if problem == "unknown_cmd":
            raise BadCommand(problem, f"unknown command {cmd!r}; one of {sorted(m.COMMANDS)}")
        if problem is not None:
            raise BadCommand(problem, _args_help(cmd))
        try:
            payload = m.encode(command)
        except InvalidMessage as err:  # e.g. args too big for one payload
            raise BadCommand("bad_args", str(err)) from err
        if paced and cmd == "replay":
            self.replay_pace.take(sid)  # counted only once the command is good

        rec = _Record(id=command.id, sid=sid, cmd=cmd, args=args, by=by,
                      created_ms=now, expires_ms=command.expires)
        with self._lock:
            self._open[rec.id] = rec
        if self.shared and not (cmd == "replay" and by == "hub"):
            # The answer may reach another worker, which closes the stored row:
            # the row must be there before the station can answer. (Not for the
            # hub's own replays, hundreds a tick after a worker dies: what they
            # ask for comes back as events whoever takes the answer.)
            try:
                self.writer.call(_insert(rec))
            except Exception as err:
                self._close(rec.id, FAILED, "not_sent", None, now)
                raise CommandNotSent(f"the command could not be stored: {err}") from err
        else:
            self.writer.submit(_insert(rec))
        try:
            self.publish(topic(sid, Kind.CMD), payload)
        except Exception as err:
            self._close(rec.id, FAILED, "not_sent", None, now)
            raise CommandNotSent(f"the command could not be handed to the broker: {err}") from err
        log.info("command %s %s %s to %s by %s", rec.id, cmd, args, sid, by)
        return rec.id

    # -- reading -----------------------------------------------------------------------

    def get(self, sid: str, command_id: str) -> dict[str, Any] | None:
        """The command ``command_id`` of station ``sid`` as the API shows it, or None."""
        with self._lock:
            rec = self._open.get(command_id) or self._closed.get(command_id)
        if rec is not None and self.shared and rec.state in (SENT, EXPIRED):
            rec = self._answered_elsewhere([rec]).get(rec.id, rec)
        if rec is None:
            with self.store.engine.connect() as conn:
                row = conn.execute(sa.select(table).where(table.c.id == command_id)).first()
            rec = _Record.from_row(row) if row is not None else None
        if rec is None or rec.sid != sid:
            return None
        return rec.to_dict()

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    # -- answers and expiry ----------------------------------------------------------------

    def result(self, result: m.CommandResult, now_ms: int) -> str:
        """Apply a station's answer: ``applied``, ``duplicate`` (answered already) or
        ``stale`` (unknown id, another station's command, or expired)."""
        with self._lock:
            rec = self._open.get(result.id)
            if rec is None:
                closed = self._closed.get(result.id)
                if closed is not None and closed.sid == result.sid and closed.state in (OK, FAILED):
                    return DUPLICATE
                if self.shared:
                    # Perhaps another worker's command: its row is closed if it is
                    # open, this station's and not expired (counted stale here).
                    self.writer.submit(_answer(result, now_ms))
                return STALE
            if rec.sid != result.sid:
                return STALE  # another station must not close this station's command
            if now_ms > rec.expires_ms + GRACE_MS:
                # The sweep has not run yet; the outcome must not depend on when it does.
                outcome = STALE
                done = self._close_locked(rec, EXPIRED, None, None, None)
            elif result.ok:
                outcome = APPLIED
                done = self._close_locked(rec, OK, None, result.data, now_ms)
            else:
                outcome = APPLIED
                done = self._close_locked(rec, FAILED, result.error, result.data, now_ms)
        # Outside the lock: submit blocks while the writer's queue is full.
        self.writer.submit(_update(done))
        return outcome

    def expire(self, now_ms: int) -> int:
        """Mark every command unanswered past ``expires`` + grace ``expired``; how many."""
        with self._lock:
            due = [r for r in self._open.values() if now_ms > r.expires_ms + GRACE_MS]
        answered = self._answered_elsewhere(due) if self.shared and due else {}
        with self._lock:
            done = [self._close_locked(rec, EXPIRED, None, None, None) for rec in due
                    if rec.id in self._open and rec.id not in answered]
            self._forget_closed(now_ms)
        for rec in done:
            self.writer.submit(_update(rec))
            log.warning("command %s (%s) to %s expired unanswered", rec.id, rec.cmd, rec.sid)
        return len(done)

    def _answered_elsewhere(self, recs: list[_Record]) -> dict[str, _Record]:
        """Of ``recs``, those another worker closed with the station's answer, as
        stored (and now closed here too)."""
        q = sa.select(table).where(table.c.id.in_([r.id for r in recs]),
                                   table.c.state.in_((OK, FAILED)))
        with self.store.engine.connect() as conn:
            found = {row.id: _Record.from_row(row) for row in conn.execute(q)}
        with self._lock:
            for cid, rec in found.items():
                self._open.pop(cid, None)
                self._closed[cid] = rec
        return found

    def _close(self, command_id: str, state: str, error: str | None,
               data: dict | None, now_ms: int) -> None:
        with self._lock:
            rec = self._open.get(command_id)
            done = self._close_locked(rec, state, error, data, now_ms) if rec else None
        if done is not None:
            self.writer.submit(_update(done))

    def _close_locked(self, rec: _Record, state: str, error: str | None, data: dict | None,
                      answered_ms: int | None) -> _Record:
        """Move ``rec`` from open to closed; the closed record, for the caller to write."""
        done = replace(rec, state=state, error=error, result=data, answered_ms=answered_ms)
        del self._open[rec.id]
        self._closed[rec.id] = done
        return done

    def _forget_closed(self, now_ms: int) -> None:
        # Dicts keep insertion order, which is closing order: drop from the front.
        while self._closed:
            cid, rec = next(iter(self._closed.items()))
            closed_at = rec.answered_ms or rec.expires_ms + GRACE_MS
            if now_ms - closed_at <= KEEP_CLOSED_MS:
                break
            del self._closed[cid]


def _args_help(cmd: str) -> str:
    if cmd == "unlock":
        return f"unlock needs args {{\"slot\": n}} with an integer slot 1..{m.MAX_SLOT}"
    if cmd == "replay":
        return ("replay needs args {\"from_seq\": a, \"to_seq\": b} with integers "
                f"1 <= a <= b, at most {m.MAX_REPLAY_SPAN} events (b - a + 1)")
    return f"bad args for {cmd}"


def _insert(rec: _Record) -> Callable[[sa.Connection], None]:
    values = {
        "id": rec.id, "sid": rec.sid, "cmd": rec.cmd,
        "args": json.dumps(rec.args, ensure_ascii=False), "by": rec.by,
        "created_ms": rec.created_ms, "expires_ms": rec.expires_ms, "state": rec.state,
    }

    def op(conn: sa.Connection) -> None:
        conn.execute(table.insert().values(**values))

    return op


def _answer(result: m.CommandResult, now_ms: int) -> Callable[[sa.Connection], None]:
    """A station's answer to a command this worker did not send (several workers)."""
    values = {
        "state": OK if result.ok else FAILED, "error": None if result.ok else result.error,
        "answered_ms": now_ms,
        "result": json.dumps(result.data, ensure_ascii=False)
        if result.data is not None else None,
    }

    def op(conn: sa.Connection) -> None:
        conn.execute(table.update().where(
            table.c.id == result.id, table.c.sid == result.sid, table.c.state == SENT,
            table.c.expires_ms + GRACE_MS >= now_ms).values(**values))

    return op


def _update(rec: _Record) -> Callable[[sa.Connection], None]:
    values = {
        "state": rec.state, "error": rec.error, "answered_ms": rec.answered_ms,
        "result": json.dumps(rec.result, ensure_ascii=False) if rec.result is not None else None,
    }

    def op(conn: sa.Connection) -> None:
        # Only an open row changes: a second hub worker may have closed it first.
        conn.execute(table.update().where(table.c.id == rec.id, table.c.state == SENT)
                     .values(**values))

    return op
