"""What a slot means without telemetry: the station's estimate of a bank's charge.

A lock-control board (锁控板) knows whether a slot is locked and, with a sensor,
whether something is in it; it cannot read a bank's id or its charge. The
station then counts for itself:

- a bank that arrives (a return, a restock) is taken to be **empty**;
- it gains charge only while the station **knows** its slot's charging supply
  is on (the relay's coil read back on, or a supply wired always on), at the
  rate of a full charge in ``charge_time``;
- so the estimate is the least charge the bank can have, and a bank never seen
  on charging power stays at 0 and is never lent.

Power off pauses the count (a bank sitting in a slot keeps its charge); a bank
leaving forgets it; a new one starts again from 0. Time the agent was stopped
never counts: nobody watched the supply.

    est = ChargeEstimates(data_dir / "charge_estimates.json", clock, charge_time=3 * 3600)
    est.arrived(4)               # a bank came back into slot 4: 0 %
    est.tick({4: True})          # every poll: which held slots have power now
    est.charge(4)                # 0 .. 100, None when slot 4 holds no bank

The file is replaced atomically (:func:`firmware.storage.write_atomically`) in
the poll that saw a bank arrive or leave or become full (one write for all the
banks found at start), and otherwise
every ``checkpoint`` seconds: a crash loses at most that much counted charge,
which only makes the estimate lower. A file that cannot be read (torn by a
dying card, edited by hand, hostile) is ignored with a warning: every slot then
counts as never seen charged, the safe side.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from firmware.storage import remove_stale_temporaries, write_atomically
from protocol.messages import MAX_SLOT
from yizhan.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["ChargeEstimates"]

_VERSION = 1
_MOST_CHARGE_TIME = 86400.0
_RETRY = 60.0  # seconds between tries while the card refuses writes


class ChargeEstimates:
    """Per station slot: is a bank in it, and how long it has had charging power.

    ``charge_time`` (s) is how long the cabinet's charger takes to fill an empty
    bank; ``checkpoint`` (s) how often counted progress is written.
    Counters: ``saves``, ``save_errors``. Not thread-safe: the locker thread
    (through :class:`firmware.hardware.cabinet.Cabinet`) is its only user.
    """

    def __init__(self, path: Path, clock: Clock, charge_time: float,
                 checkpoint: float = 300.0) -> None:
        if not (isinstance(charge_time, int | float) and math.isfinite(charge_time)
                and charge_time > 0):
            raise ValueError(f"charge_time must be a positive number of seconds, "
                             f"got {charge_time!r}")
        self.path = Path(path)
        self.clock = clock
        self.charge_time = float(charge_time)
        self.checkpoint = checkpoint
        self._charged: dict[int, float] = {}  # slot -> seconds on power; key = a bank is in
        self._since: dict[int, int] = {}  # slot -> ms the bank arrived (for people)
        self._powered: dict[int, bool] = {}  # at the last tick
        self._last_tick: float | None = None
        self._saved_at = clock.monotonic()
        self._dirty = False
        self._urgent = False  # a bank came or went: write at the next tick
        self._retry_at: float | None = None  # after a refused write: not before then
        self.saves = 0
        self.save_errors = 0
        self._load()

    # -- what the cabinet asks -------------------------------------------------------

    def held(self, slot: int) -> bool:
        """True while the station counts a bank in ``slot``."""
        return slot in self._charged

    def slots(self) -> list[int]:
        """The slots holding a bank, lowest first."""
        return sorted(self._charged)

    def charge(self, slot: int) -> int | None:
        """The least charge (%) the bank in ``slot`` can have; None when empty."""
        seconds = self._charged.get(slot)
        if seconds is None:
            return None
        return min(100, int(100 * seconds / self.charge_time))

    def seconds_to(self, slot: int, percent: int) -> float | None:
        """Charging time ``slot``'s bank still needs to count ``percent``; None
        when the slot is empty."""
        seconds = self._charged.get(slot)
        if seconds is None:
            return None
        return max(0.0, percent / 100 * self.charge_time - seconds)

    # -- what the cabinet tells --------------------------------------------------------

    def arrived(self, slot: int) -> None:
        """A bank came into ``slot``: it counts as empty from now (written by the
        next :meth:`tick`, the same poll's)."""
        self._check(slot)
        self._charged[slot] = 0.0
        self._since[slot] = self.clock.ms()
        self._powered[slot] = False  # its power counts from the next tick on
        self._urgent = True

    def left(self, slot: int) -> None:
        """The bank in ``slot`` is gone; what was counted for it goes with it."""
        self._check(slot)
        if self._charged.pop(slot, None) is None:
            return
        self._since.pop(slot, None)
        self._powered.pop(slot, None)
        self._urgent = True

    def tick(self, powered: Mapping[int, bool]) -> None:
        """One look at the supply: ``powered[slot]`` True when the station knows
        ``slot``'s charging power is on now (missing: off or unknown).

        The time since the last tick counts for a bank only when its power was
        on at both looks.
        """
        now = self.clock.monotonic()
        last, self._last_tick = self._last_tick, now
        elapsed = 0.0 if last is None else max(0.0, now - last)
        became_full = False
        for slot, seconds in self._charged.items():
            on = bool(powered.get(slot, False))
            if on and self._powered.get(slot, False) and elapsed > 0 and (
                    seconds < self.charge_time):
                grown = min(self.charge_time, seconds + elapsed)
                self._charged[slot] = grown
                self._dirty = True
                became_full |= grown >= self.charge_time
            self._powered[slot] = on
        if self._retry_at is not None and now < self._retry_at:
            return  # the card refused the last write; do not hammer it every poll
        if self._urgent or became_full or (
                self._dirty and now - self._saved_at >= self.checkpoint):
            self.save()

    def flush(self) -> None:
        """Write what was counted since the last write, if anything (a clean stop)."""
        if self._dirty or self._urgent:
            self.save()

    def save(self) -> bool:
        """Write the file now; False (kept in memory, logged) when the card refuses."""
        data = {
            "v": _VERSION,
            "charge_time": self.charge_time,
            "slots": {str(slot): {"charged_s": round(seconds, 3), "since": self._since.get(slot)}
                      for slot, seconds in sorted(self._charged.items())},
        }
        self._saved_at = self.clock.monotonic()
        try:
            write_atomically(self.path, json.dumps(data, sort_keys=True).encode())
        except OSError as err:
            if self._retry_at is None:
                log.warning("cannot write the charge estimates to %s: %s; kept in memory, "
                            "retried every %.0f s", self.path, err, _RETRY)
            self.save_errors += 1
            self._retry_at = self.clock.monotonic() + _RETRY
            return False
        if self._retry_at is not None:
            log.info("charge estimates written to %s again", self.path)
            self._retry_at = None
        self.saves += 1
        self._dirty = self._urgent = False
        return True

    # -- the file ---------------------------------------------------------------------------

    def _load(self) -> None:
        remove_stale_temporaries(self.path)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("cannot read the charge estimates %s (%s); every bank counts as "
                        "never charged", self.path, err)
            return
        try:
            data = json.loads(raw)
            slots = data["slots"] if isinstance(data, dict) and data.get("v") == _VERSION \
                else None
            written_for = data.get("charge_time") if isinstance(data, dict) else None
            # charge_time is 1 s to 24 h in any station file we ever ran under.
            if (not isinstance(slots, dict) or not _seconds(written_for)
                    or not 0 < written_for <= _MOST_CHARGE_TIME):
                raise ValueError("not a charge estimates file")
        except (ValueError, KeyError, RecursionError) as err:
            log.warning("charge estimates %s unreadable (%s); every bank counts as never "
                        "charged", self.path, err)
            return
        for key, entry in slots.items():
            slot = _slot_key(key)
            seconds = entry.get("charged_s") if isinstance(entry, dict) else None
            # More than the charge_time it was counted against: not ours to believe.
            if slot is None or not _seconds(seconds) or seconds > written_for:
                log.warning("charge estimates %s: entry %r ignored", self.path, key)
                continue
            # A shorter charge_time since: a bank counted full stays full, no more.
            self._charged[slot] = min(float(seconds), self.charge_time)
            since = entry.get("since")
            if isinstance(since, int) and not isinstance(since, bool) and 0 <= since < 1 << 63:
                self._since[slot] = since

    @staticmethod
    def _check(slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= MAX_SLOT:
            raise ValueError(f"slot must be 1..{MAX_SLOT}, got {slot!r}")


def _seconds(value: object) -> bool:
    """A finite, non-negative number of seconds (JSON gives int, float, or worse)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _slot_key(key: object) -> int | None:
    if not isinstance(key, str) or not (key.isascii() and key.isdigit()) or len(key) > 3:
        return None
    slot = int(key)
    return slot if 1 <= slot <= MAX_SLOT else None
