"""The notification outbox: durable deliveries, retried until delivered.

>>> outbox = Outbox(store, writer, clock, build_notifiers(config.notifier_specs),
...                 acklinks=AckLinks.from_config(config, clock)).start()
>>> outbox.enqueue("chumen-wecom", "firing", alert, station_info(view))
'd-019ac2f1e4c80001a3f9c2d1e0'
>>> outbox.close()

``enqueue`` renders the message once (the exact bytes to send), stores it as a
row of ``notifications`` — committed before it returns — and wakes the sender
of that notifier. Each notifier has its own sender thread, which sends its rows
one at a time, oldest first (a "resolved" never overtakes its "firing"), so a
receiver that fails or hangs holds back only its own queue.

An attempt is *claimed* before the request goes out: in one conditional
update the row's ``attempts`` goes up and its ``next_attempt_ms`` moves past the
request's timeouts plus the backoff. If the process dies mid-request the row is
simply due again then — same body, same delivery id — and two hub workers
sharing a PostgreSQL database never send the same row at once. After the
attempt the row is marked delivered, rescheduled with exponential backoff and
jitter (5 s, 10 s, … up to 10 min), or — for an error the platform calls
permanent, like a wrong robot key — given up, with the reason in
``last_error``. A receiver may therefore see one delivery more than once (a
crash between its 2xx and our commit), always with the same delivery id: it
keeps the ids it took and drops repeats.

A delivery given up has ``next_attempt_ms = NEVER``: the column is NOT NULL,
and "never" is what it means.

Each notifier's rate limits (``hub.alerting.notify.limits``) are applied as the
row is stored: one over a limit is stored *held* (``held_ms``), never sent
alone; the sender makes one ``digest`` delivery of what is held every
``digest_every`` and marks the held rows with its id (``digest_id``).

Chat robots are paced (``hub.alerting.notify.pacing``): before each attempt the
sender asks the robot's :class:`Pacer` whether the platform takes one more now,
and waits until it does. A notification that goes first (``goes_first``: a
tamper, a heater lockout, the station offline that was its group's last one
online — hub/alerting/notify/first.py, decided as the row is stored) is sent
before lesser ones waiting (never before an older notice of its own alert).
When more wait than the robot takes within ``pacing.FOLD_HORIZON``, the lesser
ones, with whatever is held, are *folded* at once into one digest (held and
digested in the same commit) instead of being sent late one by one.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import limits as lim
from hub.alerting.notify import pacing
from hub.alerting.notify.base import DeliveryFailed, Notifier, OutboxUnavailable, UnknownNotifier
from hub.alerting.notify.first import goes_first
from hub.alerting.notify.text import ASKS_FOR_ACK, KINDS, NO_ACK_RULES
from hub.config.rules import NOTIFY_TEST
from hub.storage.schema import notifications as table
from hub.storage.writer import NotCommitted, WriterClosed
from yizhan.backoff import Backoff
from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: ``next_attempt_ms`` of a delivery given up.
NEVER = 2**62
DEFAULT_BACKOFF = (5.0, 600.0)
DEFAULT_FAILING_AFTER = 600.0
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
HELD, DIGESTED = "held", "digested"  # over a rate limit; then carried by a digest
STATES = (PENDING, DELIVERED, FAILED, HELD, DIGESTED)
_MAX_PER_PUMP = 1000  # attempts of one notifier in one pass, so close() is heard
_MAX_LOOKED_AT = 1000  # pending rows the sender orders and folds at once

_ids = itertools.count()


def new_delivery_id(now_ms: int) -> str:
    """``d-`` + time, a counter and randomness: unique, and in creation order
    within one process (28 characters; the column takes 40)."""
    return f"d-{now_ms & 0xFFFF_FFFF_FFFF:012x}{next(_ids) & 0xFFFF:04x}{secrets.token_hex(5)}"


def to_delivery(row: Any) -> dict[str, Any]:
    """A row as the API shows it (never the body: it holds the ack link)."""
    if row.digest_id is not None:
        state = DIGESTED
    elif row.held_ms is not None:
        state = HELD
    elif row.delivered_ms is not None:
        state = DELIVERED
    elif row.next_attempt_ms >= NEVER:
        state = FAILED
    else:
        state = PENDING
    return {
        "id": row.id, "alert_id": row.alert_id, "notifier": row.notifier, "kind": row.kind,
        "state": state, "attempts": row.attempts, "created": row.created_ms,
        "next_attempt": row.next_attempt_ms if state == PENDING else None,
        "delivered": row.delivered_ms, "last_error": row.last_error,
        "held": row.held_ms, "digest": row.digest_id,
    }


def deliveries(store: Any, alert_id: str) -> list[dict[str, Any]]:
    """Every delivery of one alert, oldest first (for ``/alerts/{id}/deliveries``)."""
    q = (sa.select(table).where(table.c.alert_id == alert_id)
         .order_by(table.c.created_ms, table.c.id))
    with store.engine.connect() as conn:
        return [to_delivery(r) for r in conn.execute(q)]


@dataclass
class _Health:
    """How one notifier is doing, as this process saw it."""

    failing_since_ms: int | None = None
    gave_up: bool = False  # the last finished delivery was given up (a permanent error)
    last_error: str | None = None
    delivered_ms: int | None = None


class Outbox:
    """Deliveries of one hub process; see the module."""

    def __init__(self, store: Any, writer: Any, clock: Clock,
                 notifiers: Mapping[str, Notifier], *,
                 acklinks: AckLinks | None = None,
                 backoff: tuple[float, float] = DEFAULT_BACKOFF, jitter: float = 0.2,
                 failing_after: float = DEFAULT_FAILING_AFTER, flush_timeout: float = 5.0,
                 poll: float = 2.0, rng: random.Random | None = None,
                 registry: Any = None, pacer: pacing.Pacer | None = None,
                 pace: bool = True, shared: bool = False,
                 last_of_group_down: Callable[[str], bool] | None = None) -> None:
        if backoff[0] <= 0 or backoff[1] < backoff[0] or not 0 <= jitter < 1:
            raise ValueError("backoff must be (first > 0, max ≥ first) and 0 ≤ jitter < 1")
        self.store = store
        self.writer = writer
        self.clock = clock
        self.notifiers = dict(notifiers)
        self.acklinks = acklinks
        self.failing_after = failing_after
        # Several hub workers send (mqtt.shared_group): how a notifier is doing
        # is read from the rows, which every worker's attempts write, not from
        # what this worker's senders saw alone.
        self.shared = shared
        self.flush_timeout = flush_timeout
        self.poll = poll
        self.rng = rng or random.Random()
        self.backoff = Backoff(*backoff, rand=self.rng.random, jitter=jitter)
        self._lock = threading.Lock()
        self._health = {name: _Health() for name in self.notifiers}
        self._wake = {name: threading.Event() for name in self.notifiers}
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._held = Counter(
            "yizhan_notifications_held", "Notifications held back over a notifier's rate "
            "limits, to be summed up in its next digest.", ["notifier"],
            registry=registry)
        for name in self.notifiers:
            self._held.labels(name)  # every notifier from the start, at 0
        # `pace=False` sends as before issue 19 (bench/notify_pacing.py compares).
        self.pace = pace
        self.pacer = pacer or pacing.Pacer()
        # The fleet's live view (``Fleet.last_of_group_down``): which station_offline
        # goes first. Without it (tools, tests) none does.
        self.last_of_group_down = last_of_group_down
        if pace:
            for notifier in self.notifiers.values():
                self.pacer.add(notifier)
        self._load_health()
        self._seed_pacer()

    # -- enqueue (any thread) ------------------------------------------------------------

    def enqueue(self, notifier_name: str, kind: str, alert: Mapping[str, Any],
                station: Mapping[str, Any], *, delivery_id: str | None = None) -> str:
        """Store one delivery of ``alert`` (the contract's Alert object) to a
        notifier and wake its sender; the delivery id.

        The message is rendered now, with an ack link for firing, escalated and
        reminder notices. ``delivery_id`` makes the call idempotent: the same id
        again stores nothing new. Raises :class:`UnknownNotifier`, ``ValueError``
        (kind) or :class:`OutboxUnavailable` (not committed in time). Do not call
        it from inside a writer op.
        """
        notifier = self.notifiers.get(notifier_name)
        if notifier is None:
            raise UnknownNotifier(notifier_name)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        now_ms = self.clock.ms()
        did = delivery_id or new_delivery_id(now_ms)
        ack_url = None
        if (self.acklinks is not None and kind in ASKS_FOR_ACK and alert.get("id")
                and alert.get("rule") not in NO_ACK_RULES):
            ack_url = self.acklinks.url(str(alert["id"]), notifier_name, now_ms / 1000)
        body = notifier.render(kind, alert, station, ack_url, delivery_id=did, now_ms=now_ms)
        sid = str(station.get("sid") or alert.get("sid") or "")[:32] or None
        row = {"id": did, "alert_id": alert.get("id"), "notifier": notifier_name, "kind": kind,
               "body": body, "created_ms": now_ms, "attempts": 0, "next_attempt_ms": now_ms,
               "delivered_ms": None, "last_error": None, "sid": sid,
               "severity": str(alert.get("severity") or "")[:16] or None,
               "goes_first": self._goes_first(alert)}
        # What a digest says of it, kept with every row: one may be folded later.
        if alert.get("rule") != NOTIFY_TEST:
            row["about"] = lim.about(kind, alert, station, notifier.language)
        limits = notifier.spec.limits

        def store_row(conn: sa.Connection) -> str | None:
            # Counted and stored in one operation: the writer runs one at a time,
            # and other workers' writers wait for the notifier's lock.
            _one_at_a_time(conn, notifier_name)
            if conn.execute(sa.select(table.c.id).where(table.c.id == did)).first():
                return None  # already stored (same delivery_id): kept as it is
            why = lim.held_reason(conn, limits, notifier_name, kind, alert, sid, now_ms,
                                  first=row["goes_first"])
            held = {"held_ms": now_ms} if why else {}
            conn.execute(self.store.insert_ignore(table).values(**row, **held))
            return why

        why = self._write(store_row)
        if why:
            self._held.labels(notifier_name).inc()
            log.info("held %s %s of alert %s for %s (limit: %s) for the next digest",
                     did, kind, alert.get("id"), notifier_name, why)
            return did
        log.debug("queued %s %s of alert %s for %s", did, kind, alert.get("id"), notifier_name)
        self._wake[notifier_name].set()
        return did

    def _goes_first(self, alert: Mapping[str, Any]) -> bool:
        try:
            return goes_first(alert, self.last_of_group_down)
        except Exception:  # the fleet's bug must not lose the notification
            log.exception("could not tell whether alert %s goes first", alert.get("id"))
            return False

    # -- reading -------------------------------------------------------------------------

    def deliveries(self, alert_id: str) -> list[dict[str, Any]]:
        return deliveries(self.store, alert_id)

    def pending(self, notifier: str | None = None) -> list[dict[str, Any]]:
        """Deliveries not yet delivered nor given up (nor held), oldest first."""
        q = sa.select(table).where(table.c.delivered_ms.is_(None), table.c.held_ms.is_(None),
                                   table.c.next_attempt_ms < NEVER)
        if notifier is not None:
            q = q.where(table.c.notifier == notifier)
        q = q.order_by(table.c.created_ms, table.c.id)
        with self.store.engine.connect() as conn:
            return [to_delivery(r) for r in conn.execute(q)]

    def failing(self, now_ms: int | None = None) -> list[str]:
        """Notifiers failing for more than ``failing_after`` seconds, or whose last
        delivery was given up (a permanent error: a wrong key will not mend
        itself); for the hub's own "cannot notify" alert."""
        now_ms = self.clock.ms() if now_ms is None else now_ms
        limit = int(self.failing_after * 1000)
        if self.shared:
            health = self._health_from_rows()
        else:
            with self._lock:
                health = dict(self._health)
        return sorted(name for name, h in health.items()
                      if h.gave_up or (h.failing_since_ms is not None
                                       and now_ms - h.failing_since_ms >= limit))

    def held(self, notifier: str | None = None) -> list[dict[str, Any]]:
        """Deliveries held back over a rate limit, not yet in a digest, oldest first."""
        q = sa.select(table).where(table.c.held_ms.is_not(None), table.c.digest_id.is_(None))
        if notifier is not None:
            q = q.where(table.c.notifier == notifier)
        q = q.order_by(table.c.created_ms, table.c.id)
        with self.store.engine.connect() as conn:
            return [to_delivery(r) for r in conn.execute(q)]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per notifier: ``failing_since`` (ms or None), ``gave_up``, ``last_error``,
        ``last_delivered``, ``pending`` and ``held`` (counts)."""
        q = (sa.select(table.c.notifier, sa.func.count())
             .where(table.c.delivered_ms.is_(None), table.c.held_ms.is_(None),
                    table.c.next_attempt_ms < NEVER)
             .group_by(table.c.notifier))
        qh = (sa.select(table.c.notifier, sa.func.count())
              .where(table.c.held_ms.is_not(None), table.c.digest_id.is_(None))
              .group_by(table.c.notifier))
        with self.store.engine.connect() as conn:
            counts = dict(conn.execute(q).all())
            held = dict(conn.execute(qh).all())
        if self.shared:
            health = self._health_from_rows()
        else:
            with self._lock:
                health = dict(self._health)
        return {name: {"failing_since": h.failing_since_ms, "gave_up": h.gave_up,
                       "last_error": h.last_error, "last_delivered": h.delivered_ms,
                       "pending": counts.get(name, 0), "held": held.get(name, 0)}
                for name, h in sorted(health.items())}

    # -- sending -------------------------------------------------------------------------

    def send_due(self, now_ms: int | None = None) -> int:
        """Send what is due now, every notifier in turn, on the calling thread (for
        tests and tools; do not mix with ``start()``). The number of attempts."""
        return self.send_due_next(now_ms)[0]

    def send_due_next(self, now_ms: int | None = None) -> tuple[int, int | None]:
        """``send_due``, and when something is due next (ms; None: nothing waits
        on time) — for a tool that moves a ManualClock from one event to the next."""
        attempts, soonest = 0, None
        for name in self.notifiers:
            made, next_ms = self._pump(name, now_ms)
            attempts += made
            soonest = _sooner(soonest, next_ms)
        return attempts, soonest

    def _pump(self, name: str, now_ms: int | None = None) -> tuple[int, int | None]:
        """Send ``name``'s due rows, those that go first first, until one fails, none is
        due or its robot takes no more now. (attempts made, when to come back or
        None)."""
        notifier = self.notifiers[name]
        digest_ms = self._digest(notifier, self.clock.ms() if now_ms is None else now_ms)
        paced = self.pace and self.pacer.robot(name) is not None
        made = 0
        while made < _MAX_PER_PUMP and not self._closing.is_set():
            rows = self._waiting(name)
            if not rows:
                return made, digest_ms
            now = self.clock.ms() if now_ms is None else now_ms
            if paced and self._backlog(name, rows, now) and self._fold(notifier, rows, now):
                continue
            row, next_ms = self._next(name, rows, now, paced)
            if row is None:
                return made, _sooner(next_ms, digest_ms)
            if paced and (later := self.pacer.take(name, now, row.goes_first)) is not None:
                return made, _sooner(later, digest_ms)  # another notifier of the robot took it
            made += 1
            if not self._attempt(notifier, row, now):
                # Failed, or another worker has it: come back when it is due.
                rows = self._waiting(name)
                return made, _sooner(min((r.next_attempt_ms for r in rows), default=None),
                                     digest_ms)
        return made, self.clock.ms()

    def _next(self, name: str, rows: list[Any], now_ms: int,
              paced: bool) -> tuple[Any, int | None]:
        """(the row to send now, None) or (None, when to look again): the oldest
        that goes first and overtakes no notice of its own alert, else the
        oldest (``pace=False``: the oldest, as before issue 19)."""
        if not self.pace:
            head = rows[0]
            return (head, None) if head.next_attempt_ms <= now_ms else (None, head.next_attempt_ms)
        first = pacing.first_up(rows)
        lesser = next((r for r in rows if not r.goes_first), None)
        later: int | None = None
        for row in (first, lesser):
            if row is None:
                continue
            free_ms = self.pacer.free_at(name, now_ms, row.goes_first) if paced else now_ms
            at = max(row.next_attempt_ms, free_ms)
            if at <= now_ms:
                return row, None
            later = _sooner(later, at)
        return None, later

    def _backlog(self, name: str, rows: list[Any], now_ms: int) -> bool:
        """Whether lesser rows must be folded now: more wait than the robot takes
        within the horizon, or a digest not yet tried waits anyway (what would
        go after it goes in it)."""
        foldable = [r for r in rows if pacing.foldable(r)]
        untried = any(r.kind == lim.DIGEST and r.attempts == 0 for r in rows)
        if untried and (foldable or self._held_count(name)):
            return True
        if not foldable:
            return False
        lesser = sum(1 for r in rows if not r.goes_first)
        return lesser > max(1, self.pacer.capacity(name, now_ms))

    def _held_count(self, name: str) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.notifier == name, table.c.held_ms.is_not(None),
                       table.c.digest_id.is_(None))).scalar() or 0)

    def _waiting(self, name: str) -> list[Any]:
        """``name``'s rows to send (not delivered, given up nor held), oldest first,
        without their bodies."""
        cols = [table.c.id, table.c.alert_id, table.c.kind, table.c.goes_first,
                table.c.attempts, table.c.next_attempt_ms, table.c.created_ms,
                table.c.about.is_not(None).label("about")]
        q = (sa.select(*cols)
             .where(table.c.notifier == name, table.c.delivered_ms.is_(None),
                    table.c.held_ms.is_(None), table.c.next_attempt_ms < NEVER)
             .order_by(table.c.created_ms, table.c.id).limit(_MAX_LOOKED_AT))
        with self.store.engine.connect() as conn:
            return list(conn.execute(q))

    def _fold(self, notifier: Notifier, waiting: list[Any], now_ms: int) -> int:
        """Fold the foldable ``waiting`` rows and what is held into the digest not
        yet tried (its place in the queue kept), or into a new one due now: the
        robot cannot take them one by one in time. How many were folded."""
        name = notifier.name
        ids = [r.id for r in waiting if pacing.foldable(r)]
        rates = pacing.rates_of(notifier)
        new_id = new_delivery_id(now_ms)

        def fold(conn: sa.Connection) -> tuple[int, str]:
            _one_at_a_time(conn, name)
            # Read again in the writer: a row tried or sent since is left as it is.
            # Locked (PostgreSQL): another worker's claim of one waits for this
            # fold, then finds it folded; one claimed first is not read here.
            pending = conn.execute(
                sa.select(table)
                .where(table.c.id.in_(ids or [""]), table.c.attempts == 0,
                       table.c.delivered_ms.is_(None), table.c.held_ms.is_(None),
                       table.c.next_attempt_ms < NEVER)
                .order_by(table.c.created_ms, table.c.id).limit(lim.MAX_PER_DIGEST)
                .with_for_update()).all()
            held = conn.execute(
                sa.select(table)
                .where(table.c.notifier == name, table.c.held_ms.is_not(None),
                       table.c.digest_id.is_(None))
                .order_by(table.c.held_ms, table.c.id)
                .limit(max(0, lim.MAX_PER_DIGEST - len(pending)))).all()
            if not pending and not held:
                return 0, ""
            untried = conn.execute(
                sa.select(table.c.id, table.c.created_ms)
                .where(table.c.notifier == name, table.c.kind == lim.DIGEST,
                       table.c.attempts == 0, table.c.delivered_ms.is_(None),
                       table.c.next_attempt_ms < NEVER)
                .order_by(table.c.created_ms, table.c.id).limit(1)).first()
            carried = conn.execute(
                sa.select(table).where(table.c.digest_id == untried.id)).all() \
                if untried is not None else []
            if len(carried) + len(pending) + len(held) > lim.MAX_PER_DIGEST:
                untried, carried = None, []  # a digest is full: start another
            did = untried.id if untried is not None else new_id
            rows = sorted([*carried, *held, *pending], key=lambda r: (r.created_ms, r.id))
            digest = self._digest_row(notifier, did, rows, now_ms, rates[0] if rates else None)
            if untried is None or not conn.execute(
                    table.update().where(table.c.id == did, table.c.attempts == 0)
                    .values(body=digest["body"])
                    .execution_options(preserve_rowcount=True)).rowcount:
                # No digest waiting (or another worker took it since): a new one.
                if untried is not None:
                    did = new_id
                    digest = self._digest_row(notifier, did, [*held, *pending], now_ms,
                                              rates[0] if rates else None)
                conn.execute(table.insert().values(**digest))
            conn.execute(table.update()
                         .where(table.c.id.in_([r.id for r in pending] or [""]),
                                table.c.attempts == 0, table.c.delivered_ms.is_(None))
                         .values(held_ms=now_ms, digest_id=did))
            conn.execute(table.update()
                         .where(table.c.id.in_([r.id for r in held] or [""]),
                                table.c.digest_id.is_(None))
                         .values(digest_id=did))
            return len(pending) + len(held), did

        folded, did = self._write(fold)
        if folded:
            self._held.labels(name).inc(folded)
            log.info("folded %d notifications for %s into digest %s: more than its robot "
                     "takes in %.0f s", folded, name, did, pacing.FOLD_HORIZON)
        return folded

    def _digest_row(self, notifier: Notifier, did: str, rows: list[Any], now_ms: int,
                    paced: pacing.Rate | None = None) -> dict[str, Any]:
        entries = lim.digest_entries(rows)
        msg = lim.digest_message(entries, len(rows), notifier.spec.limits, notifier.language,
                                 did, paced=paced)
        body = notifier.render_digest(msg, lim.webhook_digest(entries, len(rows)),
                                      delivery_id=did, now_ms=now_ms)
        return {"id": did, "alert_id": None, "notifier": notifier.name, "kind": lim.DIGEST,
                "body": body, "created_ms": now_ms, "attempts": 0, "next_attempt_ms": now_ms,
                "delivered_ms": None, "last_error": None}

    def _digest(self, notifier: Notifier, now_ms: int) -> int | None:
        """Make the digest of ``notifier``'s held rows if it is due (the oldest held
        ``digest_every`` ago); when the next one is due, or None."""
        name = notifier.name
        every_ms = int(notifier.spec.limits.digest_every * 1000)
        q = (sa.select(table)
             .where(table.c.notifier == name, table.c.held_ms.is_not(None),
                    table.c.digest_id.is_(None))
             .order_by(table.c.held_ms, table.c.id).limit(lim.MAX_PER_DIGEST))
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
            held = conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.notifier == name, table.c.held_ms.is_not(None),
                       table.c.digest_id.is_(None))).scalar()
        if not rows:
            return None
        due_ms = rows[0].held_ms + every_ms
        if self.pace and self.pacer.robot(name) is not None:
            # A chat robot: the first digest of a burst half a minute after it
            # began to be held, then at most one every `digest_every`.
            with self.store.engine.connect() as conn:
                last = conn.execute(
                    sa.select(sa.func.max(table.c.created_ms))
                    .where(table.c.notifier == name, table.c.kind == lim.DIGEST)).scalar()
            due_ms = max(rows[0].held_ms + int(pacing.FOLD_HORIZON * 1000),
                         (last or 0) + every_ms)
        if due_ms > now_ms:
            return due_ms
        did = new_delivery_id(now_ms)
        ids = [r.id for r in rows]
        digest = self._digest_row(notifier, did, rows, now_ms)

        def store_digest(conn: sa.Connection) -> bool:
            _one_at_a_time(conn, name)
            # Another worker's digest may have carried some of them since they
            # were read: then none is stored now, and the next pass reads again.
            free = conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.id.in_(ids), table.c.digest_id.is_(None))).scalar()
            if free != len(ids):
                return False
            conn.execute(table.insert().values(**digest))
            conn.execute(table.update()
                         .where(table.c.id.in_(ids), table.c.digest_id.is_(None))
                         .values(digest_id=did))
            return True

        if not self._write(store_digest):
            return now_ms
        log.info("digest %s of %d held notifications for %s", did, len(rows), name)
        # More than one digest holds: the rest go in the next one, at once.
        return now_ms if held > len(rows) else None

    def delay(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt number ``attempt`` (1, 2, …):
        doubling from the first backoff up to the last, less up to ``jitter`` of it
        at random, so receivers coming back are not hit by every hub at once."""
        return self.backoff.delay(attempt)

    def _attempt(self, notifier: Notifier, row: Any, now_ms: int) -> bool:
        """One attempt at ``row``; True when it is finished (delivered or given up)."""
        attempt = row.attempts + 1
        # Long enough for the attempt to finish (the timeout is per network step,
        # and SMTP takes several), then the backoff: when a crash retries it.
        lease_ms = now_ms + int((2 * notifier.timeout + self.delay(attempt)) * 1000)
        taken = self.pace and self.pacer.robot(notifier.name) is not None
        try:
            # Read after the claim: a digest's body may take in more until then.
            body = self._body(row) if self._claim(row, lease_ms) else None
        except BaseException:
            if taken:
                self.pacer.release(notifier.name)
            raise
        if body is None:
            if taken:  # nothing went to the robot
                self.pacer.release(notifier.name)
            return False
        try:
            notifier.send(body, row.id, self.clock.now())
        except DeliveryFailed as err:
            paused_ms = self.pacer.answered(notifier.name, self.clock.ms(), err) \
                if taken else None
            if err.rate_limited and paused_ms is None and err.retry_after is not None:
                paused_ms = self.clock.ms() + int(err.retry_after * 1000)
            return self._failed(notifier.name, row, attempt, err.reason, err.permanent,
                                until_ms=paused_ms if err.rate_limited and self.pace
                                else None)
        except Exception as err:  # a notifier's bug must not stop its queue
            if taken:
                self.pacer.answered(notifier.name, self.clock.ms())
            log.exception("notifier %s crashed sending %s", notifier.name, row.id)
            return self._failed(notifier.name, row, attempt, f"internal error: {err!r}", False)
        done_ms = self.clock.ms()
        if taken:
            self.pacer.answered(notifier.name, done_ms)

        def mark(conn: sa.Connection) -> None:
            conn.execute(table.update()
                         .where(table.c.id == row.id, table.c.delivered_ms.is_(None))
                         .values(delivered_ms=done_ms, last_error=None))

        self._write_quietly(mark, row.id)
        with self._lock:
            self._health[notifier.name] = _Health(delivered_ms=done_ms)
        log.info("delivered %s (%s of alert %s) to %s%s", row.id, row.kind, row.alert_id,
                 notifier.name, f" after {attempt} attempts" if attempt > 1 else "")
        return True

    def _failed(self, name: str, row: Any, attempt: int, reason: str, permanent: bool,
                until_ms: int | None = None) -> bool:
        now_ms = self.clock.ms()
        if until_ms is not None and not permanent:
            # Refused for speed: the robot is fine and says when; not a failure.
            error = f"rate limited: {reason}"
            log.warning("delivery %s to %s refused for speed (attempt %d), again in %.0f s: %s",
                        row.id, name, attempt, (until_ms - now_ms) / 1000, reason)

            def later(conn: sa.Connection) -> None:
                conn.execute(table.update()
                             .where(table.c.id == row.id, table.c.delivered_ms.is_(None))
                             .values(next_attempt_ms=until_ms, last_error=error[:2000]))

            self._write_quietly(later, row.id)
            with self._lock:
                self._health[name].last_error = error
            return False
        if permanent:
            next_ms, error = NEVER, f"gave up: {reason}"
            log.error("gave up delivery %s (%s of alert %s) to %s after %d attempts: %s",
                      row.id, row.kind, row.alert_id, name, attempt, reason)
        else:
            wait = self.delay(attempt)
            next_ms, error = now_ms + int(wait * 1000), reason
            log.warning("delivery %s to %s failed (attempt %d), retrying in %.0f s: %s",
                        row.id, name, attempt, wait, reason)

        def reschedule(conn: sa.Connection) -> None:
            conn.execute(table.update()
                         .where(table.c.id == row.id, table.c.delivered_ms.is_(None))
                         .values(next_attempt_ms=next_ms, last_error=error[:2000]))

        self._write_quietly(reschedule, row.id)
        with self._lock:
            h = self._health[name]
            if h.failing_since_ms is None:
                h.failing_since_ms = now_ms
            h.gave_up = permanent
            h.last_error = error
        return permanent

    def _body(self, row: Any) -> str:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(table.c.body).where(table.c.id == row.id)).scalar_one()

    def _claim(self, row: Any, lease_ms: int) -> bool:
        """Take ``row`` for one attempt, unless someone else did since we read it.

        On PostgreSQL the row is locked ``FOR UPDATE SKIP LOCKED`` first: a
        worker whose claim meets another's in progress gives up at once instead
        of waiting for that transaction (and the writer's batch with it) to end.
        Either way the claim is the conditional update: the lease it writes is
        what keeps the row from every other worker until the attempt ends or,
        the worker killed, the lease runs out and another one retries it."""
        # Not folded into a digest since (another worker's fold) either.
        unchanged = (table.c.id == row.id, table.c.attempts == row.attempts,
                     table.c.next_attempt_ms == row.next_attempt_ms,
                     table.c.delivered_ms.is_(None), table.c.held_ms.is_(None))

        def claim(conn: sa.Connection) -> bool:
            where: tuple[Any, ...] = unchanged
            if conn.dialect.name == "postgresql":
                free = (sa.select(table.c.id).where(*unchanged)
                        .with_for_update(skip_locked=True).scalar_subquery())
                where = (table.c.id == free,)
            result = conn.execute(
                table.update().where(*where)
                .values(attempts=row.attempts + 1, next_attempt_ms=lease_ms)
                .execution_options(preserve_rowcount=True))
            return result.rowcount == 1

        return bool(self._write(claim))

    # -- writes through the hub's writer -------------------------------------------------

    def _write(self, op: Callable[[sa.Connection], Any]) -> Any:
        """``writer.call(op)``: committed now, its answer; failures as OutboxUnavailable."""
        try:
            return self.writer.call(op, self.flush_timeout)
        except WriterClosed as err:
            raise OutboxUnavailable("the hub's writer is closed") from err
        except NotCommitted as err:
            raise OutboxUnavailable("the notification outbox could not write; try again") \
                from err

    def _write_quietly(self, op: Callable[[sa.Connection], Any], delivery_id: str) -> None:
        """After an attempt: a slow commit is not a reason to stop. Still queued,
        the writer commits it when the database answers; meanwhile the claim keeps
        the row from being sent again."""
        try:
            self._write(op)
        except OutboxUnavailable:
            log.warning("delivery %s: its outcome is not committed yet", delivery_id)

    # -- life ----------------------------------------------------------------------------

    def _load_health(self) -> None:
        """What the rows say about each notifier, so a restart does not forget that
        one was failing (approximately: since its oldest waiting, tried row)."""
        self._health.update(self._health_from_rows())

    def _health_from_rows(self) -> dict[str, _Health]:
        out = {name: _Health() for name in self.notifiers}
        with self.store.engine.connect() as conn:
            for name, health in out.items():
                head = conn.execute(
                    sa.select(table.c.created_ms, table.c.last_error)
                    .where(table.c.notifier == name, table.c.delivered_ms.is_(None),
                           table.c.next_attempt_ms < NEVER, table.c.attempts > 0)
                    .order_by(table.c.created_ms).limit(1)).first()
                if head is not None:
                    health.failing_since_ms, health.last_error = head.created_ms, head.last_error
                last = conn.execute(
                    sa.select(table.c.delivered_ms, table.c.last_error)
                    .where(table.c.notifier == name,
                           sa.or_(table.c.delivered_ms.is_not(None),
                                  table.c.next_attempt_ms >= NEVER))
                    .order_by(table.c.created_ms.desc()).limit(1)).first()
                if last is not None and last.delivered_ms is None:
                    health.gave_up = True
                    health.last_error = health.last_error or last.last_error
                elif last is not None:
                    health.delivered_ms = last.delivered_ms
        return out

    def _seed_pacer(self) -> None:
        """Each paced robot's attempts answered in the last minute, from the rows:
        a restart must not send a robot a second minute's worth in one."""
        if not self.pace:
            return
        since = self.clock.ms() - 61_000
        with self.store.engine.connect() as conn:
            for name in self.notifiers:
                if self.pacer.robot(name) is None:
                    continue
                self.pacer.seed(name, conn.execute(
                    sa.select(table.c.delivered_ms)
                    .where(table.c.notifier == name, table.c.delivered_ms > since)).scalars())

    def start(self) -> Outbox:
        """Start one sender thread per notifier (once); returns the outbox."""
        if self._closed:
            raise RuntimeError("the outbox is closed")
        if self._threads:
            return self
        orphans = self._orphans()
        if orphans:
            log.warning("deliveries wait for notifiers no longer configured: %s",
                        ", ".join(f"{n} ({c})" for n, c in orphans.items()))
        for name in self.notifiers:
            t = threading.Thread(target=self._run, args=(name,), daemon=True,
                                 name=f"notify-{name}")
            self._threads.append(t)
            t.start()
        return self

    def _orphans(self) -> dict[str, int]:
        q = (sa.select(table.c.notifier, sa.func.count())
             .where(table.c.delivered_ms.is_(None), table.c.next_attempt_ms < NEVER,
                    table.c.held_ms.is_(None),
                    table.c.notifier.not_in(list(self.notifiers) or [""]))
             .group_by(table.c.notifier))
        with self.store.engine.connect() as conn:
            return dict(conn.execute(q).all())

    def _run(self, name: str) -> None:
        wake = self._wake[name]
        troubled = False
        while not self._closing.is_set():
            wake.clear()  # before looking: an enqueue from now on is not missed
            try:
                _made, next_ms = self._pump(name)
                if troubled:
                    log.info("notifier %s: the database answers again", name)
                troubled = False
            except (OutboxUnavailable, sa.exc.SQLAlchemyError) as err:
                # The database away: say so once, keep trying every poll.
                if not troubled:
                    log.warning("notifier %s: cannot read or write deliveries, retrying: %s",
                                name, err)
                troubled, next_ms = True, None
            except Exception:
                log.exception("notifier %s: sending failed; trying again", name)
                next_ms = None
            wait = self.poll
            if next_ms is not None:
                wait = min(wait, max(0.0, (next_ms - self.clock.ms()) / 1000))
            wake.wait(wait)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the senders (an attempt in flight finishes or times out; its row is
        retried by the next start if not marked). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        for event in self._wake.values():
            event.set()
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                log.warning("notifier thread %s still busy at close", t.name)
        for notifier in self.notifiers.values():
            notifier.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- housekeeping ----------------------------------------------------------------------

    def prune(self, before_ms: int) -> int:
        """Delete finished deliveries (delivered, given up or carried by a digest)
        created before ``before_ms``; the number deleted. Pending and held ones are
        never pruned."""
        def op(conn: sa.Connection) -> int:
            return conn.execute(
                table.delete()
                .where(table.c.created_ms < before_ms,
                       sa.or_(table.c.delivered_ms.is_not(None),
                              table.c.next_attempt_ms >= NEVER,
                              table.c.digest_id.is_not(None)))
                .execution_options(preserve_rowcount=True)).rowcount

        return int(self._write(op))


def _one_at_a_time(conn: sa.Connection, notifier: str) -> None:
    """Several hub workers on one PostgreSQL: what reads a notifier's rows to
    decide what to store (a limit counted, a digest made, rows folded) runs
    for one worker at a time, until its transaction ends (an advisory
    transaction lock per notifier). One process's writer is one thread: on
    SQLite nothing to do."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"yizhan-notifier:{notifier}".encode())
                             .digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _sooner(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
