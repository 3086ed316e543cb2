"""systemd ``Type=notify`` and its watchdog, without a dependency (sd_notify(3)).

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``. The agent says
``READY=1`` once it runs, ``STOPPING=1`` on the way out, and pings
``WATCHDOG=1`` at half the interval — but only while it is healthy, so a wedged
station loop or a dead MQTT thread gets the agent restarted:

    notifier = Notifier.from_env()
    notifier.ready()
    dog = Watchdog(notifier, clock, checks={"mqtt": link.healthy})
    ...                            # in the station loop, every tick:
    dog.tick()
    notifier.stopping()

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from yizhan.clock import Clock

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to ``socket_path`` (None: not under systemd)."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec
        self.failures = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (a watchdog
        meant for another process of the unit is not ours)."""
        env = os.environ if env is None else env
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if raw and (not pid or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.error("ignoring WATCHDOG_USEC=%r: not an integer", raw)
            else:
                usec = usec if usec > 0 else None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    def interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
        advises; None when no watchdog is set."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """The one-line status ``systemctl status`` shows."""
        return self.notify("STATUS=" + text.replace("\n", " "))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def notify(self, message: str) -> bool:
        """Send one datagram; False when not under systemd or when it failed (logged)."""
        if self.socket_path is None:
            return False
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]  # Linux abstract namespace
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(address)
                s.sendall(message.encode())
        except OSError as err:
            self.failures += 1
            log.error("cannot notify systemd at %s (%s): %s", self.socket_path, message, err)
            return False
        return True


class Watchdog:
    """Pings the systemd watchdog while the station loop turns and every check passes.

    The station loop calls :meth:`tick` each step: a sign of life (``beat``)
    and a ping when one is due (``ping_if_due``). A stalled loop therefore stops
    the pings by itself; so does a failing check among ``checks``
    (``{"mqtt": link.healthy}``). The failure is logged once and shown as the
    unit's status, and systemd restarts the agent after ``WatchdogSec``.

    Pinging from another thread instead works too: the loop calls :meth:`beat`,
    the thread :meth:`ping_if_due`, and a loop silent for ``stall`` seconds
    (default: the ping interval) fails the built-in ``loop`` check.
    """

    def __init__(self, notifier: Notifier, clock: Clock,
                 checks: Mapping[str, Callable[[], bool]] | None = None,
                 interval: float | None = None, stall: float | None = None) -> None:
        self.notifier = notifier
        self.clock = clock
        self.interval = interval if interval is not None else notifier.interval()
        self.stall = stall if stall is not None else self.interval
        self.checks = {"loop": self._loop_alive, **(checks or {})}
        self._last_beat: float | None = None
        self._next_ping: float | None = None
        self.failing: list[str] = []
        self.pings = 0

    def beat(self) -> None:
        """The station loop is alive."""
        self._last_beat = self.clock.monotonic()

    def tick(self) -> bool:
        """``beat()`` then ``ping_if_due()``: what the station loop calls each step."""
        self.beat()
        return self.ping_if_due()

    def _loop_alive(self) -> bool:
        return (self._last_beat is not None and self.stall is not None
                and self.clock.monotonic() - self._last_beat <= self.stall)

    def healthy(self) -> list[str]:
        """The names of the checks that fail now (empty when all pass)."""
        failing = []
        for name, check in self.checks.items():
            try:
                ok = check()
            except Exception:
                log.exception("health check %s raised", name)
                ok = False
            if not ok:
                failing.append(name)
        return failing

    def ping_if_due(self) -> bool:
        """Ping if one is due and all checks pass; True when a ping went out."""
        if self.interval is None:
            return False
        now = self.clock.monotonic()
        if self._next_ping is not None and now < self._next_ping:
            return False
        failing = self.healthy()
        if failing != self.failing:
            if failing:
                log.error("unhealthy (%s): withholding the watchdog ping", ", ".join(failing))
                self.notifier.status("unhealthy: " + ", ".join(failing))
            else:
                log.info("healthy again: watchdog pings resume")
                self.notifier.status("running")
            self.failing = failing
        if failing:
            return False
        self._next_ping = now + self.interval
        sent = self.notifier.ping()
        self.pings += sent
        return sent
