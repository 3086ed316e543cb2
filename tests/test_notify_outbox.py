"""The notification outbox against real receivers on loopback (contract §13).

Deliveries go to real HTTP servers (``tests/test_notify_receivers.py``) that
check the webhook signature and record delivery ids; the rows live in a real
SQLite file or PostgreSQL database. Backoff is driven by a ManualClock and
``send_due()``; the tests of latency, blocking and crashes run the sender
threads (and, for SIGKILL, a second process) on the real clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hub.alerting.acklink import AckLinks
from hub.alerting.notify import (
    NEVER,
    Outbox,
    OutboxUnavailable,
    UnknownNotifier,
    build_notifiers,
)
from hub.alerting.notify.base import Notifier
from hub.config import NotifierSpec
from hub.storage.schema import notifications
from hub.storage.store import Store
from hub.storage.writer import Writer
from tests.test_notify_receivers import SECRET, Receiver, receiver_factory
from yizhan.clock import Clock, ManualClock

receivers = pytest.fixture(receiver_factory, name="receivers")

SID = "yh-chumen-01"
STATION = {"sid": SID, "name": "楚门镇先锋驿站"}
T0 = 1_764_196_800.0
PUBLIC = "https://hub.example.cn"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def an_alert(alert_id: str = "a-0123456789abcdef", **changes: Any) -> dict[str, Any]:
    alert = {"id": alert_id, "rule": "water_empty", "sid": SID, "severity": "critical",
             "state": "firing", "summary": "水位空", "value": {"level": 0.0},
             "started_at": int(T0 * 1000) - 120_000, "acked_at": None, "resolved_at": None}
    alert.update(changes)
    return alert


def webhook(r: Receiver, name: str = "ops-webhook", timeout: float = 2.0) -> NotifierSpec:
    return NotifierSpec(name=name, type="webhook", url=f"{r.url}/hook/{name}", secret=SECRET,
                        timeout=timeout)


class Db:
    """A store and its writer on one database URL; ``reopen()`` is a hub restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = Store(url)
        self.writer = Writer(self.store).start()

    def reopen(self) -> None:
        self.close()
        self.store = Store(self.url)
        self.writer = Writer(self.store).start()

    def rows(self) -> list[Any]:
        with self.store.engine.connect() as conn:
            return list(conn.execute(sa.select(notifications)
                                     .order_by(notifications.c.created_ms)))

    def close(self) -> None:
        self.writer.close()
        self.store.close()


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    d = Db(database_url)
    yield d
    d.close()


@pytest.fixture
def outboxes(db: Db) -> Iterator[Any]:
    """``outboxes(specs, clock=None, **Outbox options)``: outboxes on ``db``, closed after."""
    made: list[Outbox] = []

    def make(specs: list[NotifierSpec], clock: Clock | None = None, **options: Any) -> Outbox:
        clock = clock or ManualClock(T0)
        options.setdefault("rng", random.Random(7))
        options.setdefault("acklinks", AckLinks(b"k" * 32, PUBLIC, clock=clock))
        made.append(Outbox(db.store, db.writer, clock, build_notifiers(specs), **options))
        return made[-1]

    yield make
    for o in made:
        o.close()


# -- the webhook of contract §13, exactly -------------------------------------------------


def test_a_webhook_delivery_is_the_contract_body_signed_with_a_delivery_id(
        db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock)
    alert = an_alert()
    did = outbox.enqueue("ops-webhook", "firing", alert, {**STATION, "group": "chumen"})
    assert outbox.send_due() == 1

    (seen,) = r.requests
    assert seen.path == "/hook/ops-webhook"
    assert seen.headers["content-type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["x-yizhan-signature"] == expected
    assert seen.headers["x-yizhan-delivery"] == did
    body = json.loads(seen.body)
    assert list(body) == ["version", "kind", "alert", "station", "ack_url"]
    assert body["version"] == 1 and body["kind"] == "firing"
    assert body["alert"] == alert  # the Alert object of contract §11, as given
    assert body["station"] == STATION  # sid and name, exactly
    assert body["ack_url"].startswith(f"{PUBLIC}/ack/")
    claim = outbox.acklinks.verify(body["ack_url"].rsplit("/", 1)[1])
    assert (claim.alert_id, claim.notifier) == (alert["id"], "ops-webhook")
    assert r.accepted == [did]
    (d,) = outbox.deliveries(alert["id"])
    assert d["state"] == "delivered" and d["attempts"] == 1 and d["delivered"] == clock.ms()
    assert outbox.pending() == [] and outbox.failing() == []


@SQLITE_ONLY
def test_resolved_and_acked_notices_carry_no_ack_link(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    outbox = outboxes([webhook(r)])
    outbox.enqueue("ops-webhook", "resolved", an_alert(state="resolved"), STATION)
    outbox.enqueue("ops-webhook", "acked", an_alert(state="acked"), STATION)
    outbox.send_due()
    assert [s.json()["ack_url"] for s in r.requests] == [None, None]


# -- retries ------------------------------------------------------------------------------


def test_a_failing_receiver_gets_the_same_bytes_and_id_until_it_answers_2xx(
        db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    r.answer(503, 503, 500, 429)
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock)
    did = outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)

    waits = []
    for _ in range(4):
        assert outbox.send_due() == 1
        assert outbox.send_due() == 0  # not due again before its backoff
        (row,) = db.rows()
        waits.append((row.next_attempt_ms - clock.ms()) / 1000)
        assert row.delivered_ms is None and row.last_error.startswith("receiver answered HTTP")
        clock.advance(waits[-1])
    assert outbox.send_due() == 1
    # Exponential: 5, 10, 20, 40 s, each less up to 20 % jitter.
    for wait, base in zip(waits, (5, 10, 20, 40), strict=True):
        assert 0.8 * base <= wait <= base
    assert len(r.requests) == 5
    assert {s.delivery for s in r.requests} == {did}
    assert len({s.body for s in r.requests}) == 1  # the same bytes every time
    assert [s.status for s in r.requests] == [503, 503, 500, 429, 200]
    assert r.accepted == [did]  # delivered once
    clock.advance(3600)
    assert outbox.send_due() == 0 and len(r.requests) == 5  # and never again
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == "delivered" and d["attempts"] == 5 and d["last_error"] is None


@SQLITE_ONLY
def test_backoff_stops_growing_at_its_maximum(db: Db, outboxes) -> None:
    outbox = outboxes([], backoff=(5.0, 600.0), rng=random.Random(3))
    delays = [outbox.delay(n) for n in range(1, 15)]
    assert all(0.8 * min(600, 5 * 2 ** (n - 1)) <= d <= min(600, 5 * 2 ** (n - 1))
               for n, d in enumerate(delays, 1))
    assert max(delays) <= 600 and delays[-1] >= 480


@SQLITE_ONLY
def test_a_redirect_is_not_a_delivery(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    r.answer(302)
    outbox = outboxes([webhook(r)])
    outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)
    outbox.send_due()
    assert len(r.requests) == 1 and r.accepted == []
    (d,) = outbox.pending()
    assert "302" in d["last_error"]


@SQLITE_ONLY
def test_one_notifier_sends_in_order(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    r.answer(503)
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock)
    first = outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)
    clock.advance(0.001)
    then = outbox.enqueue("ops-webhook", "resolved", an_alert(state="resolved"), STATION)
    assert outbox.send_due() == 1  # the firing fails: the resolved waits behind it
    clock.advance(10)
    assert outbox.send_due() == 2
    assert [s.delivery for s in r.requests] == [first, first, then]
    assert r.accepted == [first, then]


@SQLITE_ONLY
def test_a_failing_receiver_does_not_hold_back_the_others(db: Db, outboxes,
                                                          receivers) -> None:
    hanging, fine = receivers(secret=SECRET), receivers(secret=SECRET)
    hanging.hold()
    outbox = outboxes([webhook(hanging, "slow", timeout=3.0), webhook(fine, "fast")],
                      Clock()).start()
    outbox.enqueue("slow", "firing", an_alert(), STATION)
    assert hanging.held.wait(2)
    started = time.monotonic()
    did = outbox.enqueue("fast", "firing", an_alert(), STATION)
    assert fine.wait_accepted(1, timeout=2) == [did]
    assert time.monotonic() - started < 1.0  # not after the 3 s timeout of "slow"
    hanging.release()


@SQLITE_ONLY
def test_an_enqueued_delivery_wakes_the_idle_sender(db: Db, outboxes, receivers) -> None:
    """Each delivery goes out on enqueue, not at the next 5 s retry round; how fast
    is bench/alert_latency.py's to say."""
    r = receivers(secret=SECRET)
    outbox = outboxes([webhook(r)], Clock()).start()
    for i in range(3):
        time.sleep(0.15)  # idle: the sender waits
        outbox.enqueue("ops-webhook", "firing", an_alert(f"a-{i:016x}"), STATION)
        assert len(r.wait_for(i + 1, timeout=2)) == i + 1


# -- restarts and crashes --------------------------------------------------------------


def test_a_restart_mid_retry_delivers_once_with_the_same_id(db: Db, outboxes,
                                                            receivers) -> None:
    r = receivers(secret=SECRET)
    r.answer(503, 503)
    clock = ManualClock(T0)
    first = outboxes([webhook(r)], clock)
    did = first.enqueue("ops-webhook", "firing", an_alert(), STATION)
    first.send_due()
    first.close()
    db.reopen()  # the hub stops and starts: a new store, writer and outbox

    clock.advance(10)
    second = outboxes([webhook(r)], clock)
    assert second.send_due() == 1  # still 503
    clock.advance(20)
    assert second.send_due() == 1
    assert [s.delivery for s in r.requests] == [did] * 3
    assert r.accepted == [did]
    (row,) = db.rows()
    assert row.attempts == 3 and row.delivered_ms is not None


class Crash(BaseException):
    """The process dying mid-request, as far as the outbox can tell."""


class DyingNotifier(Notifier):
    type = "webhook"

    def render(self, kind, alert, station, ack_url, *, delivery_id, now_ms) -> str:
        return "{}"

    def send(self, body: str, delivery_id: str, now: float) -> None:
        raise Crash


@SQLITE_ONLY
def test_a_delivery_being_sent_when_the_process_died_is_sent_again(db: Db, outboxes,
                                                                   receivers) -> None:
    r = receivers(secret=SECRET)
    clock = ManualClock(T0)
    spec = webhook(r)
    dying = Outbox(db.store, db.writer, clock, {"ops-webhook": DyingNotifier(spec)},
                   rng=random.Random(1))
    did = dying.enqueue("ops-webhook", "firing", an_alert(), STATION)
    with pytest.raises(Crash):
        dying.send_due()  # claimed, then "killed" before any outcome
    (row,) = db.rows()
    assert row.attempts == 1 and row.delivered_ms is None
    db.reopen()

    after = outboxes([spec], clock)
    assert after.send_due() == 0  # the claim holds it for timeout + backoff
    clock.advance(2 * spec.timeout + 5)
    assert after.send_due() == 1
    assert r.accepted == [did]


CHILD = textwrap.dedent("""
    import sys, time
    from hub.config import NotifierSpec
    from hub.alerting.notify import Outbox, build_notifiers
    from hub.storage.store import Store
    from hub.storage.writer import Writer
    from yizhan.clock import Clock

    url, hook, secret = sys.argv[1:4]
    store = Store(url)
    writer = Writer(store).start()
    spec = NotifierSpec(name="ops-webhook", type="webhook", url=hook, secret=secret,
                        timeout=1.0)
    Outbox(store, writer, Clock(), build_notifiers([spec]), backoff=(0.05, 0.2)).start()
    print("started", flush=True)
    time.sleep(60)
""")


@SQLITE_ONLY
@pytest.mark.slow
def test_sigkill_while_sending_still_delivers_exactly_once(db: Db, outboxes, receivers,
                                                           tmp_path: Path) -> None:
    r = receivers(secret=SECRET)
    spec = webhook(r, timeout=1.0)
    outbox = outboxes([spec], Clock())
    did = outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)
    r.answer(503)  # (what the hung request gets, if anything reads it)
    r.hold()  # the child's request hangs at the receiver ...
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", CHILD, db.url, spec.url, SECRET],
                             cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert r.held.wait(15), child.stderr.read1().decode() if child.poll() else "no request"
        os.kill(child.pid, signal.SIGKILL)  # ... when the hub dies
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    r.release()

    started = time.monotonic()
    outbox.start()  # the hub comes back: the row is retried once its claim runs out
    assert r.wait_accepted(1, timeout=10) == [did]
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert {s.delivery for s in r.requests} == {did}
    assert r.accepted == [did]  # answered 2xx once: the killed attempt got none
    (row,) = db.rows()
    assert row.delivered_ms is not None and row.attempts == 2


def test_two_hub_workers_never_send_the_same_delivery_at_once(db: Db, outboxes,
                                                              receivers) -> None:
    r = receivers(secret=SECRET)
    clock = ManualClock(T0)
    a, b = outboxes([webhook(r)], clock), outboxes([webhook(r)], clock)
    for i in range(6):
        a.enqueue("ops-webhook", "firing", an_alert(f"a-{i:016x}"), STATION)
    threads = [threading.Thread(target=o.send_due) for o in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.accepted) == sorted(row.id for row in db.rows())
    assert len(r.requests) == 6  # each once, whichever worker sent it


# -- giving up, failing ----------------------------------------------------------------


def wecom(r: Receiver, name: str = "chumen-wecom") -> NotifierSpec:
    return NotifierSpec(name=name, type="wecom",
                        url=f"{r.url}/cgi-bin/webhook/send?key=test-key-123", timeout=2.0)


@SQLITE_ONLY
def test_a_permanent_error_is_given_up_at_once_and_reported(db: Db, outboxes,
                                                            receivers) -> None:
    r = receivers(default=(200, b'{"errcode":0,"errmsg":"ok"}'))
    r.answer((200, b'{"errcode":93000,"errmsg":"invalid webhook url"}'))
    clock = ManualClock(T0)
    outbox = outboxes([wecom(r)], clock)
    outbox.enqueue("chumen-wecom", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    (d,) = outbox.deliveries("a-0123456789abcdef")
    assert d["state"] == "failed" and d["next_attempt"] is None
    assert d["last_error"].startswith("gave up: WeCom error 93000")
    assert "key" in d["last_error"]
    (row,) = db.rows()
    assert row.next_attempt_ms == NEVER
    assert outbox.failing() == ["chumen-wecom"]  # a wrong key does not mend itself
    assert outbox.pending() == []
    clock.advance(3600)
    assert outbox.send_due() == 0  # never tried again

    # The next delivery to it still goes out; when it works, the notifier is fine again.
    outbox.enqueue("chumen-wecom", "firing", an_alert("a-1111111111111111"), STATION)
    assert outbox.send_due() == 1
    assert outbox.failing() == []
    assert [s.query["key"] for s in r.requests] == [["test-key-123"]] * 2


@SQLITE_ONLY
def test_rate_limits_are_retried(db: Db, outboxes, receivers) -> None:
    r = receivers(default=(200, b'{"errcode":0,"errmsg":"ok"}'))
    r.answer((200, b'{"errcode":45009,"errmsg":"api freq out of limit"}'))
    clock = ManualClock(T0)
    outbox = outboxes([wecom(r)], clock)
    outbox.enqueue("chumen-wecom", "firing", an_alert(), STATION)
    outbox.send_due()
    (d,) = outbox.pending()
    assert "45009" in d["last_error"] and "rate limited" in d["last_error"]
    # Refused for speed: the robot is left alone for a minute (pacing.PAUSE), the
    # notifier is not "failing", and nothing is asked of the robot meanwhile.
    clock.advance(30)
    assert outbox.send_due() == 0 and len(r.requests) == 1 and outbox.failing() == []
    clock.advance(30)
    assert outbox.send_due() == 1 and outbox.pending() == []


@SQLITE_ONLY
def test_a_notifier_is_failing_after_failing_for_long_enough(db: Db, outboxes,
                                                             receivers) -> None:
    r = receivers(secret=SECRET, default=(503, b""))
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock, failing_after=600)
    outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)
    for _ in range(30):
        outbox.send_due()
        assert outbox.failing() == [] or clock.ms() - int(T0 * 1000) >= 600_000
        clock.advance(60)
    assert outbox.failing() == ["ops-webhook"]
    status = outbox.status()["ops-webhook"]
    assert status["failing_since"] == int(T0 * 1000) and status["pending"] == 1
    assert "503" in status["last_error"]

    # A hub restarted meanwhile knows it too (from the rows).
    db.reopen()
    again = outboxes([webhook(r)], clock, failing_after=600)
    assert again.failing() == ["ops-webhook"]
    r.default = (200, b"ok")
    clock.advance(600)
    assert again.send_due() == 1
    assert again.failing() == []


# -- enqueue ------------------------------------------------------------------------------


@SQLITE_ONLY
def test_enqueue_refuses_unknown_notifiers_and_kinds_and_stores_nothing(
        db: Db, outboxes, receivers) -> None:
    outbox = outboxes([webhook(receivers())])
    with pytest.raises(UnknownNotifier, match="nobody"):
        outbox.enqueue("nobody", "firing", an_alert(), STATION)
    with pytest.raises(ValueError, match="kind"):
        outbox.enqueue("ops-webhook", "exploded", an_alert(), STATION)
    assert db.rows() == []


@SQLITE_ONLY
def test_enqueue_with_a_delivery_id_is_idempotent(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    outbox = outboxes([webhook(r)])
    for _ in range(2):
        assert outbox.enqueue("ops-webhook", "firing", an_alert(), STATION,
                              delivery_id="d-fixed-1") == "d-fixed-1"
    assert outbox.send_due() == 1
    assert r.accepted == ["d-fixed-1"] and len(db.rows()) == 1


@SQLITE_ONLY
def test_enqueue_says_so_when_the_database_does_not_commit(db: Db, outboxes,
                                                           receivers) -> None:
    outbox = outboxes([webhook(receivers())], flush_timeout=0.2)
    db.writer.close()  # nothing is committed any more
    with pytest.raises(OutboxUnavailable):
        outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)


@SQLITE_ONLY
def test_pending_lists_what_waits_oldest_first(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET, default=(503, b""))
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock)
    ids = []
    for i in range(3):
        ids.append(outbox.enqueue("ops-webhook", "firing", an_alert(f"a-{i:016x}"), STATION))
        clock.advance(1)
    outbox.send_due()
    assert [d["id"] for d in outbox.pending()] == ids
    assert [d["attempts"] for d in outbox.pending()] == [1, 0, 0]
    assert outbox.pending("someone-else") == []


@SQLITE_ONLY
def test_prune_keeps_what_is_pending(db: Db, outboxes, receivers) -> None:
    r = receivers(secret=SECRET)
    clock = ManualClock(T0)
    outbox = outboxes([webhook(r)], clock)
    outbox.enqueue("ops-webhook", "firing", an_alert(), STATION)
    outbox.send_due()
    r.default = (503, b"")
    outbox.enqueue("ops-webhook", "firing", an_alert("a-2222222222222222"), STATION)
    outbox.send_due()
    assert outbox.prune(clock.ms() + 1) == 1
    assert [row.alert_id for row in db.rows()] == ["a-2222222222222222"]


# -- secrets stay out of the logs ----------------------------------------------------------


@SQLITE_ONLY
def test_errors_and_logs_never_show_keys_secrets_or_signed_urls(
        db: Db, outboxes, receivers, caplog: pytest.LogCaptureFixture) -> None:
    r = receivers(default=(503, b"down"))
    clock = ManualClock(T0)
    specs = [
        NotifierSpec(name="w", type="wecom", url=f"{r.url}/send?key=WECOMKEY123"),
        NotifierSpec(name="d", type="dingtalk",
                     url=f"{r.url}/robot/send?access_token=DINGTOKEN123", secret="SECDING456"),
        NotifierSpec(name="f", type="feishu", url=f"{r.url}/hook/FEISHUHOOK789",
                     secret="FEISHUSECRET"),
        # Nothing listens here: a connection error, whose message must not show the URL.
        NotifierSpec(name="x", type="wecom", url="http://127.0.0.1:9/send?key=DEADKEY000"),
    ]
    outbox = outboxes(specs, clock)
    caplog.set_level(logging.DEBUG)
    for name in ("w", "d", "f", "x"):
        outbox.enqueue(name, "firing", an_alert(), STATION)
    outbox.send_due()
    text = caplog.text + json.dumps(outbox.pending()) + json.dumps(outbox.status())
    for secret in ("WECOMKEY123", "DINGTOKEN123", "SECDING456", "FEISHUHOOK789",
                   "FEISHUSECRET", "DEADKEY000", "sign=", "/ack/"):
        assert secret not in text
    assert all(d["attempts"] == 1 for d in outbox.pending())


@SQLITE_ONLY
def test_a_notifier_that_raises_is_retried_not_stuck(db: Db, outboxes) -> None:
    class Broken(Notifier):
        type = "webhook"

        def render(self, *a, **k) -> str:
            return "{}"

        def send(self, body: str, delivery_id: str, now: float) -> None:
            raise ValueError("bug")

    clock = ManualClock(T0)
    spec = NotifierSpec(name="b", type="webhook", url="http://127.0.0.1:9/", secret=SECRET)
    outbox = Outbox(db.store, db.writer, clock, {"b": Broken(spec)}, rng=random.Random(1))
    outbox.enqueue("b", "firing", an_alert(), STATION)
    assert outbox.send_due() == 1
    (d,) = outbox.pending()
    assert d["last_error"].startswith("internal error: ValueError")
    outbox.close()
