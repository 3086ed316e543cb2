"""Who may borrow and who may maintain, kept on the station's disk (contract §8).

The hub publishes the Directory retained; the station keeps the last one it got
so that lending follows the same rules while the hub is unreachable. PINs are
checked here, against the hashes the directory carries, with a lockout after
five wrong tries that survives a restart.

    store = DirectoryStore(data_dir / "directory.json", clock)
    store.apply(directory)                 # only when its rev is newer
    store.policy.lending                   # "open" before any directory arrived
    store.check_rider_pin("r:5e8f...", "4821").ok

PIN hashes are Django's ``pbkdf2_sha256`` format (:mod:`protocol.pins`, shared
with the hub that makes them); :func:`hash_pin` and :func:`verify_pin` are
re-exported here.

Both files are replaced atomically (temporary file, fsync, rename), so a power
cut leaves the old or the new one. A card that refuses the write (full,
read-only) does not stop the station: the new rules apply from memory, and
the file is written again with the next directory or wrong PIN.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from firmware.storage import remove_stale_temporaries, storage_fault, write_atomically
from protocol.errors import InvalidMessage
from protocol.messages import Directory, Policy, RiderEntry, StaffEntry
from protocol.pins import DEFAULT_ITERATIONS, MAX_ITERATIONS, hash_pin, verify_pin
from yizhan.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ITERATIONS",
    "LOCKOUT_AFTER",
    "LOCKOUT_SECONDS",
    "DirectoryStore",
    "PinCheck",
    "hash_pin",
    "verify_pin",
]

LOCKOUT_AFTER = 5  # wrong PINs in a row
LOCKOUT_SECONDS = 15 * 60
# Lockout entries kept at most; a kiosk typing random ids cannot grow the file forever.
MAX_LOCKOUT_ENTRIES = 10_000


@functools.lru_cache(maxsize=4)
def _dummy_hash(iterations: int) -> str:
    """Hashed against when the id is unknown, so that "no such staff" costs as
    long as "wrong PIN" and the kiosk's timing does not tell which ids exist."""
    return hash_pin("0000", salt="yizhan-dummy", iterations=iterations)


def _iterations(encoded: str) -> int:
    try:
        n = int(encoded.split("$")[1])
    except (IndexError, ValueError):
        return DEFAULT_ITERATIONS
    return n if 1 <= n <= MAX_ITERATIONS else DEFAULT_ITERATIONS


@dataclass(frozen=True, slots=True)
class PinCheck:
    """The verdict on one PIN.

    ``reason`` is None when ``ok``, else ``bad_pin``, ``locked_out`` or
    ``not_registered``; ``tries_left`` counts wrong PINs before a lockout;
    ``locked_until`` is the end of a lockout in ms (station clock).
    """

    ok: bool
    reason: str | None = None
    tries_left: int | None = None
    locked_until: int | None = None


# -- the store --------------------------------------------------------------------


def _save(path: Path, data: bytes, what: str) -> bool:
    """Write ``path`` atomically; False (logged) when the card refuses it."""
    try:
        write_atomically(path, data)
    except OSError as err:
        fault = storage_fault(err)
        if fault is None:
            raise
        log.error("the %s could not be saved to %s (%s: %s); it applies from memory and is "
                  "saved again with the next change", what, path, fault, err)
        return False
    return True


class DirectoryStore:
    """The last Directory the hub sent, on disk at ``path``, and the PIN lockouts.

    Before any directory arrived the policy is the contract default (open
    lending, ``min_charge`` 80, one bank a rider, 24 h). Lockouts live beside
    the directory in ``<path>.lockouts`` (wall-clock ends, so a restart keeps
    them; a clock jumping backwards at boot cannot stretch one past 15 min).
    While the agent runs a lockout is timed on the monotonic clock: NTP stepping
    a Pi's clock forward by a day (it booted on yesterday's time) must not end
    one early, nor a step back make one last a day.
    """

    def __init__(self, path: str | os.PathLike[str], clock: Clock = SYSTEM_CLOCK,
                 lockout_after: int = LOCKOUT_AFTER,
                 lockout_seconds: float = LOCKOUT_SECONDS) -> None:
        self.path = Path(path)
        self.lockout_path = self.path.with_name(self.path.name + ".lockouts")
        self.clock = clock
        self.lockout_after = lockout_after
        self.lockout_seconds = lockout_seconds
        with contextlib.suppress(OSError):  # a read-only card: read what is there
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._directory: Directory | None = None
        self._riders: dict[str, RiderEntry] = {}
        self._staff: dict[str, StaffEntry] = {}
        self._denied: frozenset[str] = frozenset()
        # key ("rider:<id>" / "staff:<id>") -> {"wrong": n, "until": wall seconds}
        self._lockouts: dict[str, dict] = {}
        # key -> monotonic end of its lockout, what decides while we run
        self._ends: dict[str, float] = {}
        self._unsaved = False  # the directory held is newer than the file
        self._load()

    # -- the directory ------------------------------------------------------------

    def _load(self) -> None:
        for path in (self.path, self.lockout_path):
            # A power cut mid-write leaves the temporary beside the file.
            if remove_stale_temporaries(path):
                log.warning("removed a half-written copy of %s", path)
        if self.path.exists():
            try:
                d = Directory.from_dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:  # InvalidMessage and bad JSON are ValueErrors
                # Keep the evidence, run on the defaults until the hub resends
                # (the directory topic is retained, so it does on connect).
                aside = self.path.with_name(self.path.name + ".corrupt")
                log.error("directory file %s is unreadable (%s); moved to %s, using defaults",
                          self.path, err, aside)
                with contextlib.suppress(OSError):
                    os.replace(self.path, aside)
            else:
                self._install(d)
        if self.lockout_path.exists():
            try:
                raw = json.loads(self.lockout_path.read_text(encoding="utf-8"))
                self._lockouts = {
                    str(k): {"wrong": int(v["wrong"]), "until": float(v["until"])}
                    for k, v in raw.items()
                }
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
                log.error("lockout file %s is unreadable (%s); starting without lockouts",
                          self.lockout_path, err)

    def _install(self, d: Directory) -> None:
        self._directory = d
        self._riders = {r.id: r for r in d.riders}
        self._staff = {s.id: s for s in d.staff}
        self._denied = frozenset(d.denied)

    def apply(self, directory: Directory | dict) -> bool:
        """Keep ``directory`` when its ``rev`` is newer than the one held; True if kept.

        A dict is validated first (InvalidMessage names the bad field, and
        nothing changes). The file is written before the new rules apply, so
        what the station enforces is what it would reload — unless the card
        refuses the write: then the rules apply from memory (logged), and the
        file is written when the hub sends the directory again.
        """
        d = Directory.from_dict(directory) if isinstance(directory, dict) else directory
        if not isinstance(d, Directory):
            raise InvalidMessage("", f"not a Directory: {type(directory).__name__}")
        with self._lock:
            held = self._directory
            if held is not None and d.rev <= held.rev:
                if self._unsaved and d.rev == held.rev:  # the hub resent it: save it now
                    self._unsaved = not _save(self.path, self._encode(held), "directory")
                log.info("directory rev %d ignored: holding rev %d", d.rev, held.rev)
                return False
            # Written before the new rules apply; when the card refuses, the new
            # rules apply anyway (a rider just denied must be refused now).
            self._unsaved = not _save(self.path, self._encode(d), "directory")
            self._install(d)
        log.info("directory rev %d applied (%s lending, %d riders, %d staff, %d denied)",
                 d.rev, d.policy.lending, len(d.riders), len(d.staff), len(d.denied))
        return True

    @staticmethod
    def _encode(d: Directory) -> bytes:
        return json.dumps(d.to_dict(), ensure_ascii=False, indent=1).encode("utf-8")

    @property
    def directory(self) -> Directory | None:
        """The directory held, or None before the hub ever sent one."""
        return self._directory

    @property
    def rev(self) -> int | None:
        d = self._directory
        return None if d is None else d.rev

    @property
    def policy(self) -> Policy:
        d = self._directory
        return Policy() if d is None else d.policy

    def is_denied(self, rider: str) -> bool:
        return rider in self._denied

    def is_registered(self, rider: str) -> bool:
        return rider in self._riders

    def staff(self, staff_id: str) -> StaffEntry | None:
        return self._staff.get(staff_id)

    # -- PINs ---------------------------------------------------------------------

    def check_rider_pin(self, rider: str, pin: str | None) -> PinCheck:
        """Check a listed rider's PIN; ``not_registered`` when the rider is not listed."""
        entry = self._riders.get(rider)
        if entry is None:
            return PinCheck(False, "not_registered")
        return self._check(f"rider:{rider}", pin, entry.pin)

    def check_staff_pin(self, staff_id: str, pin: str | None) -> PinCheck:
        """Check a staff member's PIN; an unknown id is a wrong PIN (and counts as one)."""
        entry = self._staff.get(staff_id)
        if entry is None:
            # As costly as a real check, and counted, so guessing ids shows nothing.
            some = next(iter(self._staff.values()), None)
            dummy = _dummy_hash(_iterations(some.pin) if some else DEFAULT_ITERATIONS)
            return self._check(f"staff:{staff_id}", pin, dummy, known=False)
        return self._check(f"staff:{staff_id}", pin, entry.pin)

    def locked_until(self, key: str) -> int | None:
        """End of the lockout of ``rider:<id>`` or ``staff:<id>`` in ms, or None."""
        with self._lock:
            until = self._until(key, self.clock.now())
        return None if until is None else int(until * 1000)

    def _until(self, key: str, now: float) -> float | None:
        """The wall-clock end of ``key``'s lockout as seen ``now``, or None when
        it has none (or it is over). Called with the lock held."""
        entry = self._lockouts.get(key)
        if entry is None or not entry["until"]:
            return None
        mono = self.clock.monotonic()
        end = self._ends.get(key)
        if end is None:
            # From the file (set before a restart): its wall-clock end is all there
            # is. One reaching further than a lockout's length means the wall clock
            # went back (a Pi's boot before NTP): at most a full lockout from now.
            left = min(entry["until"] - now, self.lockout_seconds)
            if left <= 0:
                return None
            end = self._ends[key] = mono + left
        left = end - mono
        if left <= 0:
            return None
        # The wall-clock end as the kiosk shows it, and as a restart will read it.
        entry["until"] = now + left
        return entry["until"]

    def _check(self, key: str, pin: str | None, encoded: str, known: bool = True) -> PinCheck:
        now = self.clock.now()
        with self._lock:
            until = self._until(key, now)
            if until is not None:
                return PinCheck(False, "locked_out", 0, int(until * 1000))
            # Counted as wrong before the hash, under the lock: guesses sent at
            # once would otherwise all pass the check above while the first is
            # still hashing, and more than ``lockout_after`` would be tried.
            counted_before = key in self._lockouts
            entry = self._count_wrong(key, now)
        # Hash outside the lock: 200 000 rounds take a while on a Pi.
        good = isinstance(pin, str) and verify_pin(pin, encoded) and known
        with self._lock:
            if good:
                # The right PIN undoes the count (and a lockout its own try began).
                self._lockouts.pop(key, None)
                self._ends.pop(key, None)
                if counted_before:  # else nothing on disk to undo
                    self._save_lockouts()
                return PinCheck(True)
            self._save_lockouts()
            if entry["until"]:
                return PinCheck(False, "locked_out", 0, int(entry["until"] * 1000))
            return PinCheck(False, "bad_pin", self.lockout_after - entry["wrong"])

    def _count_wrong(self, key: str, now: float) -> dict:
        """Count one more wrong PIN for ``key``, starting its lockout at the limit;
        the entry as it stands after this try. Called with the lock held."""
        entry = self._lockouts.get(key)
        if entry is None or (entry["until"] and self._until(key, now) is None):
            entry = {"wrong": 0, "until": 0.0}  # none yet, or its lockout is over
            self._ends.pop(key, None)
        entry = {"wrong": entry["wrong"] + 1, "until": entry["until"]}
        if entry["wrong"] >= self.lockout_after:
            entry = {"wrong": 0, "until": now + self.lockout_seconds}
            self._ends[key] = self.clock.monotonic() + self.lockout_seconds
        self._lockouts[key] = entry
        self._prune(now)
        return entry

    def _prune(self, now: float) -> None:
        if len(self._lockouts) <= MAX_LOCKOUT_ENTRIES:
            return
        # Drop expired lockouts first, then the oldest counts of wrong tries.
        for key in [k for k, v in self._lockouts.items()
                    if v["until"] and self._until(k, now) is None]:
            del self._lockouts[key]
            self._ends.pop(key, None)
        excess = len(self._lockouts) - MAX_LOCKOUT_ENTRIES
        for key in [k for k, v in self._lockouts.items() if not v["until"]][:max(0, excess)]:
            del self._lockouts[key]

    def _save_lockouts(self) -> None:
        data = json.dumps(self._lockouts, separators=(",", ":")).encode("utf-8")
        _save(self.lockout_path, data, "PIN lockouts")
