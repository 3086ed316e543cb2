"""paho's MQTT client, paced by us: every client in Yizhan is one of these.

Two things paho 2.2 does not do the way a fleet needs:

**Where the reconnect wait happens.** paho's network loop (``loop_start`` /
``loop_forever``) calls ``_reconnect_wait()`` and then ``reconnect()``, which
resets the keep-alive clocks and calls ``on_pre_connect``. A wait spent inside
``on_pre_connect`` is therefore counted by the keep-alive check of the very
connection it precedes: once the wait reaches the keepalive, paho closes every
new socket before its CONNACK is read, and a station whose broker was gone for
two minutes never came back (issue 12). Here the wait is ``_reconnect_wait``
itself — before the reset — drawn from :class:`~yizhan.backoff.Backoff` (jitter,
so a fleet does not return in lock-step), measured on the injected clock (a
test moves time instead of sleeping) and ended at once by ``loop_stop()`` or
``disconnect()``.

**How fast a dead link is noticed.** A black-holed path (the half-open link a
mobile network makes) answers nothing and resets nothing. paho sends a
PINGREQ after a keepalive of silence and gives up a whole keepalive later: two
keepalives. Here a PINGREQ unanswered for half a keepalive (less the loop's
one-second granularity) drops the connection, so a dead link is noticed within
1.5 keepalives of the last byte heard — what the MQTT spec gives the broker.

It also counts what health checks need: ``sessions`` (CONNACKs of success)
and ``established_at`` (when the current one began, on the injected clock).

>>> client = PacedClient(CallbackAPIVersion.VERSION2, client_id="yizhan-yh-01")
>>> client.pace(Backoff(0.5, 60.0), clock)          # doctest: +SKIP
>>> client.connect_async(host, port, keepalive=30)  # doctest: +SKIP
>>> client.loop_start()                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from yizhan.backoff import Backoff
from yizhan.clock import SYSTEM_CLOCK, Clock

__all__ = ["DEFAULT_BACKOFF", "CallbackAPIVersion", "PacedClient", "dead_link_after"]

log = logging.getLogger(__name__)

#: Without ``pace()``: what paho's own default is, but with jitter.
DEFAULT_BACKOFF = Backoff(1.0, 120.0)
#: paho's network loop selects for at most this long: the granularity of its
#: keep-alive check and of ours.
LOOP_GRANULARITY = 1.0


def dead_link_after(keepalive: float) -> float:
    """Seconds an unanswered PINGREQ may wait before the link counts as dead.

    paho sends the PINGREQ within a keepalive (plus one loop) of the last byte
    heard; this leaves room for the check's own loop, so the verdict comes
    within 1.5 keepalives of the last byte.
    """
    return max(1.0, keepalive / 2 - 2 * LOOP_GRANULARITY)


class PacedClient(mqtt.Client):
    """``paho.mqtt.client.Client`` with our reconnect pacing and dead-link check."""

    _backoff: Backoff = DEFAULT_BACKOFF
    _clock: Clock = SYSTEM_CLOCK
    _stable_after: float = DEFAULT_BACKOFF.maximum

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._halt = threading.Event()
        #: Attempts in a row without a session that lasted (the backoff's count).
        self.retry = 0
        #: Sessions established (CONNACK of success) by this client object.
        self.sessions = 0
        #: When the last session began (``clock.monotonic()``); cleared when the
        #: wait before the next attempt starts.
        self.established_at: float | None = None
        #: When the next attempt is due while waiting out a backoff, else None.
        self.next_attempt_at: float | None = None
        #: Links dropped because a PINGREQ went unanswered (see dead_link_after).
        self.dead_links = 0

    def pace(self, backoff: Backoff, clock: Clock = SYSTEM_CLOCK,
             stable_after: float | None = None) -> None:
        """Wait ``backoff.delay(n)`` before the n-th attempt in a row, on ``clock``.

        The count starts again after a session that lasted ``stable_after``
        seconds (default: the backoff's ceiling); one accepted and dropped at
        once (a duplicate client id, an ACL kick) keeps backing off instead of
        turning into a tight loop.
        """
        self._backoff = backoff
        self._clock = clock
        self._stable_after = backoff.maximum if stable_after is None else stable_after

    # -- what paho's network loop calls -----------------------------------------------

    def _reconnect_wait(self) -> None:
        now = self._clock.monotonic()
        began = self.established_at
        if began is not None and now - began >= self._stable_after:
            self.retry = 0
        self.established_at = None
        self.retry += 1
        delay = self._backoff.delay(self.retry)
        self.next_attempt_at = now + delay
        log.debug("%s: attempt %d in %.2f s", self._client_id.decode(errors="replace"),
                  self.retry, delay)
        try:
            self._clock.wait(self._halt, delay)
        finally:
            self.next_attempt_at = None

    def _handle_connack(self) -> mqtt.MQTTErrorCode:
        rc = super()._handle_connack()
        if self._state == mqtt._ConnectionState.MQTT_CS_CONNECTED and self.established_at is None:
            self.established_at = self._clock.monotonic()
            self.sessions += 1
        return rc

    def loop_misc(self) -> mqtt.MQTTErrorCode:
        rc = super().loop_misc()
        if rc != mqtt.MQTT_ERR_SUCCESS or self._sock is None:
            return rc
        ping_t = self._ping_t
        if (ping_t and self._state == mqtt._ConnectionState.MQTT_CS_CONNECTED
                and mqtt.time_func() - ping_t >= dead_link_after(self._keepalive)):
            # As paho's own keep-alive verdict, only sooner.
            self.dead_links += 1
            log.warning("%s: no answer to a PINGREQ in %.0f s: the link is dead",
                        self._client_id.decode(errors="replace"), mqtt.time_func() - ping_t)
            self._sock_close()
            self._state = mqtt._ConnectionState.MQTT_CS_CONNECTION_LOST
            self._do_on_disconnect(packet_from_broker=False, v1_rc=mqtt.MQTT_ERR_KEEPALIVE)
            return mqtt.MQTT_ERR_CONN_LOST
        return rc

    def loop_alive(self) -> bool:
        """Whether the network thread of ``loop_start()`` is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- lifecycle: a stop ends a backoff wait at once ----------------------------------

    def connect_async(self, *args: object, **kwargs: object) -> None:
        self._halt.clear()
        return super().connect_async(*args, **kwargs)

    def disconnect(self, *args: object, **kwargs: object) -> mqtt.MQTTErrorCode:
        self._halt.set()
        return super().disconnect(*args, **kwargs)

    def loop_stop(self) -> mqtt.MQTTErrorCode:
        self._halt.set()
        return super().loop_stop()
