"""Commands from the hub (contract §7), each answered exactly once on ``cmd/result``.

Commands arrive on paho's network thread; they run one at a time on the
handler's own worker thread, because an ``unlock`` waits for the locker board
and the network thread must keep reading meanwhile.

    handler = CommandHandler(sid, journal, link, clock, synced, locker=locker,
                             outbox=outbox, on_reload=agent.reload)
    handler.start()            # its worker runs what the link routes to it
    ...
    handler.close()

Every command gets one CommandResult: refused (``expired``) when its ``expires``
has passed by the station clock while that clock is synced, or by the hub's
clock as its time beacons prove it (:meth:`CommandHandler.is_stale`), ``unknown_cmd``
or ``bad_args`` when it cannot run, else the outcome — ``ok`` only once the
effect is confirmed (the board reported the lock released). A payload that is
not a valid Command but still carries an ``id`` is answered ``bad_args``. A
command id seen again (the hub retrying) is answered again with the very same
result and not run twice.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from firmware.hardware.board import BoardOffline, LockerError
from firmware.journal import Journal
from firmware.link import StationLink
from firmware.outbox import ReplayQueueFull
from protocol import messages as m
from protocol.errors import BoardError
from protocol.frames import ErrorCode, UnlockResult
from protocol.topics import Kind
from yizhan.clock import Clock

log = logging.getLogger(__name__)

#: Results remembered for de-duplication (a hub retries within minutes).
REMEMBER = 1000
#: Commands that open something: never run unless provably fresh.
MOVES_HARDWARE = frozenset({"unlock"})
#: Commands waiting for the worker; beyond that the station answers ``busy``.
QUEUE_SIZE = 100
#: At most this many missing ranges are listed in a replay's result.
MAX_MISSING = 50
#: What a result says when a command's handler itself failed (a bug, not a refusal).
INTERNAL_MESSAGE = "the station failed to carry out the command; its log has the details"

_UNLOCK_ERRORS = {
    UnlockResult.JAMMED: "jammed",
    UnlockResult.BUSY: "busy",
    UnlockResult.BAD_SLOT: "bad_args",
}

Outcome = tuple[bool, str | None, dict[str, Any] | None]


class CommandHandler:
    """Runs the hub's commands on its own thread and answers each on ``cmd/result``.

    ``synced()`` says whether the station clock is NTP-synchronised (expiry is
    judged only then); ``on_rebirth`` defaults to ``link.rebirth``;
    ``on_reload()`` re-reads the configuration and raises (ConfigError) when
    the new one is bad. Constructing the handler routes the link's commands
    (valid and invalid) to it.
    """

    def __init__(self, sid: str, journal: Journal, link: StationLink, clock: Clock,
                 synced: Callable[[], bool], locker: Any = None, outbox: Any = None,
                 on_rebirth: Callable[[], object] | None = None,
                 on_reload: Callable[[], object] | None = None, *,
                 unlock_timeout: float = 2.0) -> None:
        self.sid = sid
        self.journal = journal
        self.link = link
        self.clock = clock
        self.synced = synced
        self.locker = locker
        self.outbox = outbox
        self.on_rebirth = on_rebirth or link.rebirth
        self.on_reload = on_reload
        self.unlock_timeout = unlock_timeout
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._results: OrderedDict[str, m.CommandResult] = OrderedDict()
        self._lock = threading.Lock()  # _results: the worker and the network thread
        self._thread: threading.Thread | None = None
        self.executed = 0  # commands actually run (not answered from memory)
        self.unanswerable = 0  # invalid payloads without an id
        link.on_command = self.submit
        link.on_bad_command = self.submit_invalid

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> CommandHandler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Finish the command in hand (an unlock waits for the board), then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.error("command worker did not stop within %s s", timeout)

    # -- what the link calls (network thread) -------------------------------------------

    def submit(self, command: m.Command) -> None:
        self._enqueue(("cmd", command), command.id)

    def submit_invalid(self, payload: bytes, error: Exception) -> None:
        """A ``cmd`` payload that did not decode: answer ``bad_args`` if it has an id."""
        cid = _lenient_id(payload)
        if cid is None:
            self.unanswerable += 1
            # The link has logged this payload once already (a WARNING) and counted it.
            log.debug("a command without a usable id cannot be answered: %s", error)
            return
        self._enqueue(("bad", (cid, str(error))), cid)

    def _enqueue(self, item: tuple[str, Any], cid: str) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Answered here, not dropped: the hub must hear about every command.
            log.warning("command %s refused: %d commands already waiting", cid, QUEUE_SIZE)
            # Not remembered: a retry with the same id may run once there is room.
            self._answer(cid, (False, "busy", {"message": "too many commands waiting"}),
                         remember=False)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, value = item
            try:
                if kind == "cmd":
                    self.handle(value)
                else:
                    cid, reason = value
                    self._once(cid, lambda reason=reason: (False, "bad_args", {"message": reason}))
            except Exception:
                # A failed publish must not stop the worker and leave every
                # later command unanswered.
                log.exception("answering %s failed", item)

    def handle(self, command: m.Command) -> m.CommandResult:
        """Run one command (on the caller's thread) and publish its result."""
        return self._once(command.id, lambda: self._execute(command),
                          failed="board_offline" if command.cmd == "unlock" else "bad_args")

    def _once(self, cid: str, run: Callable[[], Outcome],
              failed: str = "bad_args") -> m.CommandResult:
        with self._lock:
            known = self._results.get(cid)
        if known is not None:
            log.info("command %s seen again: answering with the same result", cid)
            self.link.publish(Kind.CMD_RESULT, known)
            return known
        self.executed += 1
        try:
            outcome = run()
        except Exception:
            # Still one answer: the contract has no "internal" error, so an
            # unlock that blew up reads as the board not confirming. The detail
            # (paths, SQL, rider data in a repr) stays in the station's log:
            # results are stored by the hub and shown to every API reader.
            log.exception("command %s failed", cid)
            outcome = (False, failed, {"message": INTERNAL_MESSAGE})
        return self._answer(cid, outcome)

    def _answer(self, cid: str, outcome: Outcome, remember: bool = True) -> m.CommandResult:
        ok, error, data = outcome
        result = m.CommandResult(
            sid=self.sid, epoch=self.journal.epoch, ts=self.clock.ms(), synced=self.synced(),
            rev=self.journal.next_rev(), id=cid, ok=ok, error=error, data=data)
        if remember:
            with self._lock:
                self._results[cid] = result
                while len(self._results) > REMEMBER:
                    self._results.popitem(last=False)
        self.link.publish(Kind.CMD_RESULT, result)
        log.info("command %s: %s", cid, "ok" if ok else error)
        return result

    def is_stale(self, c: m.Command) -> bool:
        """Whether ``c`` came too late to be carried out (docs/protocol.md,
        "Commands and the station's clock").

        By the station's clock while it is synced (contract §7); by the hub's
        clock as its beacons prove it (``link.hub_clock``) in any case; and a
        command that moves hardware, arriving while the station's clock is not
        synced and no hub time has been heard yet, cannot be proven fresh: refused.
        """
        synced = self.synced()
        if synced and c.is_expired(self.clock.ms()):
            return True
        hub_now = self.link.hub_clock.now_ms()
        if hub_now is not None:
            return c.is_expired(hub_now)
        return not synced and c.cmd in MOVES_HARDWARE

    def _execute(self, c: m.Command) -> Outcome:
        if self.is_stale(c):
            return False, "expired", None
        problem = c.check_args()
        if problem is not None:
            return False, problem, None
        if c.cmd == "unlock":
            return self._unlock(c.args["slot"])
        if c.cmd == "rebirth":
            self.on_rebirth()
            return True, None, None
        if c.cmd == "replay":
            return self._replay(c.args["from_seq"], c.args["to_seq"])
        if c.cmd == "reload":
            return self._reload()
        return False, "unknown_cmd", None  # check_args knows every command; belt and braces

    def _unlock(self, slot: int) -> Outcome:
        if self.locker is None:
            return False, "board_offline", {"slot": slot, "message": "this station has no locker"}
        try:
            result = self.locker.release(slot, timeout=self.unlock_timeout)
        except BoardOffline as err:
            return False, "board_offline", {"slot": slot, "message": str(err)}
        except BoardError as err:  # an error frame: only a bad slot is the hub's fault
            error = "bad_args" if err.code == ErrorCode.BAD_SLOT else "board_offline"
            return False, error, {"slot": slot, "message": str(err)}
        except LockerError as err:
            return False, "board_offline", {"slot": slot, "message": str(err)}
        if result is UnlockResult.RELEASED:
            return True, None, {"slot": slot, "locked": False}
        return False, _UNLOCK_ERRORS.get(result, "board_offline"), {"slot": slot}

    def _replay(self, from_seq: int, to_seq: int) -> Outcome:
        if self.outbox is None:
            return False, "bad_args", {"message": "this agent has no outbox to replay from"}
        try:
            count = self.outbox.replay(from_seq, to_seq)
        except ReplayQueueFull as err:
            return False, "busy", {"message": str(err)}
        missing = self.journal.missing(from_seq, to_seq)
        data: dict[str, Any] = {"count": count}
        if missing:
            data["missing"] = [list(r) for r in missing[:MAX_MISSING]]
        return True, None, data

    def _reload(self) -> Outcome:
        if self.on_reload is None:
            return False, "unknown_cmd", {"message": "this agent cannot reload"}
        try:
            self.on_reload()
        except ValueError as err:  # ConfigError: the new file is bad, the old one stays
            return False, "bad_args", {"message": str(err)}
        return True, None, None


def _lenient_id(payload: bytes) -> str | None:
    """The ``id`` of a payload that failed validation, if it has a usable one."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(cid, str) and 0 < len(cid) <= 128:
        return cid
    return None
