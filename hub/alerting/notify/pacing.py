"""Pacing per robot: never send a chat robot more than its platform takes.

Each chat platform limits what one robot (one webhook address) takes, and says
so in its documentation: WeCom 20 messages a minute (more are refused with
45009), DingTalk 20 a minute (more block the robot for 10 minutes: 130101),
Feishu 100 a minute and 5 a second (11232). A burst of alerts sent as it comes
is refused, retried with backoff and arrives late; on DingTalk one message too
many silences the robot for ten minutes. So before each attempt the outbox asks
the :class:`Pacer` when the robot may take the next message, and waits until
then; every attempt (sent or refused: the platform counts both) is recorded.

* The robot is the webhook address without the signature parts a notifier adds
  on each attempt (``timestamp``, ``sign``): notifiers pointing at the same robot
  (a Chinese and an English one, two routes' notifiers) share one pace.
* A sliding window on the hub's clock per documented rate, each attempt counted
  from when its answer came back (the platform saw it no later than that) and
  the next one allowed from when it would start: so the platform, counting
  arrivals, never sees more than the limit in any of its windows, whatever the
  network did in between. Each window is taken 1 % and 100 ms longer, for
  the platform's own clock and rounding.
* A quarter of each rate (at least one) is kept for the notifications that go
  first (hub/alerting/notify/first.py: a tamper, a heater lockout, the station
  offline that was its group's last one online): lesser ones never use the
  whole minute, so a tamper alert in the middle of a storm goes out at once
  instead of waiting for the window to pass. Severity does not decide: a town's
  power cut makes twenty critical station_offline alerts, which would use up
  that quarter themselves.
* A refusal for sending too fast (``DeliveryFailed.rate_limited``) pauses the
  robot for what the answer asked (``Retry-After``), else what the platform
  documents for it (``PAUSE``: DingTalk's 10 minutes), for every notifier of it.
* A restart does not burst: the outbox seeds each robot's window from the
  deliveries acknowledged in the last minute (the rows are the record).

The webhook and e-mail notifiers are not paced (no documented limit; the
receiver's own 429 and ``Retry-After`` still hold back that notifier's row).

With a backlog the outbox folds (:func:`foldable`): what the robot cannot take
within ``FOLD_HORIZON`` is folded into one digest rather than sent late one by
one; the notifications that go first (:func:`first_up`) are never folded.

Robot keys are hashes: the address carries the robot's key or token and must
not appear in a log or a metric.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from hub.alerting.notify.base import DeliveryFailed, Notifier


@dataclass(frozen=True)
class Rate:
    """At most ``count`` messages in any ``window`` seconds; lesser notifications
    use all but ``reserved`` of them, kept for those that go first."""

    count: int
    window: float

    @property
    def reserved(self) -> int:
        return max(1, self.count // 4)

    def limit(self, first: bool) -> int:
        return self.count if first else self.count - self.reserved

    @property
    def window_ms(self) -> int:
        # The platform's clock and rounding are not ours: 1 % and 100 ms more.
        return int(self.window * 1010) + 100

    def __str__(self) -> str:
        return f"{self.count} per {self.window:g} s"


#: The documented limits per notifier type (docs/notifications.md, "Pacing").
RATES: dict[str, tuple[Rate, ...]] = {
    "wecom": (Rate(20, 60.0),),
    "dingtalk": (Rate(20, 60.0),),
    "feishu": (Rate(100, 60.0), Rate(5, 1.0)),
}
#: How long a robot that refused us for speed is left alone when its answer did
#: not say (DingTalk blocks the robot for 10 minutes after 20 a minute).
PAUSE: dict[str, float] = {"wecom": 60.0, "dingtalk": 600.0, "feishu": 60.0}
#: A backlog the robot cannot send within this many seconds is folded into a digest.
FOLD_HORIZON = 30.0
#: Attempts kept per robot (enough for any window above).
_KEEP = 256
#: When only attempts in flight fill the window: look again this soon.
_IN_FLIGHT_MS = 100

#: Query parameters a notifier adds per attempt: not part of the robot's address.
_PER_ATTEMPT = frozenset({"timestamp", "sign"})


def robot_key(url: str) -> str:
    """The robot an address points at, as an opaque key: the same for two
    notifiers on the same robot, whatever the order of the query or signature
    parts; never the key or token itself."""
    parts = urlsplit(url.strip())
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if k not in _PER_ATTEMPT)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a port: the address as written is the robot
        port = parts.netloc.rpartition(":")[2]
    canon = f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}" \
            f"{parts.path or '/'}?{urlencode(query)}"
    return "robot-" + hashlib.sha256(canon.encode()).hexdigest()[:16]


def rates_of(notifier: Notifier) -> tuple[Rate, ...]:
    """The documented rates of ``notifier``'s platform; () when not paced."""
    return RATES.get(notifier.type, ()) if notifier.spec.url else ()


@dataclass
class _Robot:
    rates: tuple[Rate, ...]
    pause: float
    stamps: list[int] = field(default_factory=list)  # answers, sorted, ms
    in_flight: int = 0
    paused_until_ms: int = 0
    refusals: int = 0


class Pacer:
    """The pace of every robot of one hub process (thread-safe; see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._robots: dict[str, _Robot] = {}
        self._of: dict[str, str | None] = {}  # notifier name → robot key

    def add(self, notifier: Notifier) -> str | None:
        """Pace ``notifier`` with its robot's other notifiers; its robot key, or
        None when its platform has no documented limit."""
        rates = rates_of(notifier)
        key = robot_key(notifier.spec.url) if rates else None
        with self._lock:
            self._of[notifier.name] = key
            if key is not None and key not in self._robots:
                self._robots[key] = _Robot(rates, PAUSE.get(notifier.type, 60.0))
        return key

    def robot(self, name: str) -> str | None:
        return self._of.get(name)

    def sharing(self, name: str) -> list[str]:
        """The notifiers on ``name``'s robot (itself included)."""
        key = self._of.get(name)
        return sorted(n for n, k in self._of.items() if k is not None and k == key) \
            if key is not None else [name]

    def seed(self, name: str, answered_ms: Iterable[int]) -> None:
        """Attempts answered before this process started (from the outbox's rows)."""
        robot = self._get(name)
        if robot is None:
            return
        with self._lock:
            for ms in answered_ms:
                bisect.insort(robot.stamps, int(ms))
            del robot.stamps[:-_KEEP]

    def free_at(self, name: str, now_ms: int, first: bool = False) -> int:
        """When ``name``'s robot may take the next message (``now_ms`` if now)."""
        robot = self._get(name)
        if robot is None:
            return now_ms
        with self._lock:
            return _free_at(robot, robot.stamps, now_ms, first)

    def capacity(self, name: str, now_ms: int, horizon: float = FOLD_HORIZON,
                 most: int = 1000) -> int:
        """How many lesser messages the robot may take from now until ``horizon``
        seconds from now (at most ``most``)."""
        robot = self._get(name)
        if robot is None:
            return most
        end = now_ms + int(horizon * 1000)
        with self._lock:
            stamps = list(robot.stamps)
            n, t = 0, now_ms
            while n < most:
                t = _free_at(robot, stamps, t, False)
                if t > end:
                    break
                bisect.insort(stamps, t)  # as if answered at once: the earliest case
                n += 1
            return n

    def take(self, name: str, now_ms: int, first: bool = False) -> int | None:
        """Reserve the robot for one attempt now: None when taken, else when to
        come back (ms). Every taken attempt must be :meth:`answered`."""
        robot = self._get(name)
        if robot is None:
            return None
        with self._lock:
            at = _free_at(robot, robot.stamps, now_ms, first)
            if at > now_ms:
                return at
            robot.in_flight += 1
            return None

    def answered(self, name: str, done_ms: int, err: DeliveryFailed | None = None) -> int | None:
        """The attempt taken is over (``done_ms``); if the robot refused it for
        speed, it is paused: until when (ms), else None."""
        robot = self._get(name)
        if robot is None:
            return None
        with self._lock:
            robot.in_flight = max(0, robot.in_flight - 1)
            bisect.insort(robot.stamps, done_ms)
            del robot.stamps[:-_KEEP]
            if err is None or not err.rate_limited:
                return None
            robot.refusals += 1
            wait = err.retry_after if err.retry_after is not None else robot.pause
            robot.paused_until_ms = max(robot.paused_until_ms, done_ms + int(wait * 1000))
            return robot.paused_until_ms

    def release(self, name: str) -> None:
        """The attempt taken did not go out after all (another worker had the row)."""
        robot = self._get(name)
        if robot is not None:
            with self._lock:
                robot.in_flight = max(0, robot.in_flight - 1)

    def refusals(self, name: str) -> int:
        """Refusals for speed of ``name``'s robot this process saw (0 is the aim)."""
        robot = self._get(name)
        return robot.refusals if robot is not None else 0

    def _get(self, name: str) -> _Robot | None:
        key = self._of.get(name)
        return self._robots.get(key) if key is not None else None


def _free_at(robot: _Robot, stamps: list[int], now_ms: int, first: bool) -> int:
    at = max(now_ms, robot.paused_until_ms)
    for rate in robot.rates:
        window = rate.window_ms
        # Attempts still counted by the platform at `at`: answered after at - window.
        recent = stamps[bisect.bisect_right(stamps, at - window):]
        over = len(recent) + robot.in_flight - rate.limit(first)
        if over < 0:
            continue
        if over >= len(recent):  # only attempts in flight fill it: their answers decide
            at = max(at, now_ms + _IN_FLIGHT_MS)
            continue
        at = max(at, recent[over] + window)
    return at


def first_up(rows: list) -> Any:
    """The oldest row that goes first (``goes_first``) whose alert has nothing
    older waiting (a resolved never overtakes its firing), or None; ``rows``
    oldest first."""
    waiting: set[str] = set()
    for row in rows:
        if row.goes_first and row.alert_id not in waiting:
            return row
        if row.alert_id:
            waiting.add(row.alert_id)
    return None


def foldable(row: Any) -> bool:
    """Whether a waiting row may be folded into a digest: a notice that does not
    go first (whatever its severity: a critical station_offline or water_empty
    folds), never tried (a tried one may be in flight elsewhere), with what a
    digest says of it; never a digest or a route test."""
    return (row.attempts == 0 and not row.goes_first and bool(row.about)
            and row.kind != "digest" and row.alert_id is not None)
