"""What every view of one kiosk app shares: its settings, the agent client, the
clock and the borrow rate limiter (one per app, never a module global)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app, flash, redirect, url_for

from kiosk.agent import AgentClient
from kiosk.config import KioskConfig
from kiosk.ratelimit import RateLimiter
from kiosk.riders import PendingRiders
from yizhan.clock import Clock

__all__ = ["Kiosk", "go_home", "kiosk"]

_KEY = "yizhan_kiosk"


@dataclass
class Kiosk:
    config: KioskConfig
    agent: AgentClient
    clock: Clock
    limiter: RateLimiter
    #: Riders between screens, server-side (never in the cookie); built by install.
    riders: PendingRiders = field(init=False)

    def install(self, app) -> None:
        # Kept as long as a borrow's session may be: twice the idle time.
        self.riders = PendingRiders(self.clock, 2 * self.config.idle)
        app.extensions[_KEY] = self

    def stamp(self) -> float:
        """Now, as a session cookie keeps it for :meth:`within`: the monotonic
        clock, so that NTP stepping the Pi's clock (it boots on yesterday's time)
        neither ends a screen's session at once nor keeps it a day."""
        return self.clock.monotonic()

    def within(self, stamp: Any, seconds: float) -> bool:
        """Whether ``stamp`` (from :meth:`stamp`) is at most ``seconds`` old. A
        stamp from the future was made before a reboot (monotonic time starts
        again at boot), and a missing or foreign one is no stamp: stale."""
        try:
            age = self.clock.monotonic() - float(stamp)
        except (TypeError, ValueError):
            return False
        return 0.0 <= age <= seconds


def kiosk() -> Kiosk:
    """The current app's Kiosk (inside a request)."""
    return current_app.extensions[_KEY]


def go_home(message: str | None = None, category: str = "info"):
    """Redirect to the home screen, with a note shown there."""
    if message:
        flash(message, category)
    return redirect(url_for("home.index"))
