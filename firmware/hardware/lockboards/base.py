"""What a lock-control board (锁控板) can do, in the station's words.

A :class:`BoardDriver` speaks one board's protocol over a shared
:class:`~firmware.hardware.lockboards.bus.Bus` (one RS-485 line, several boards
by address). Drivers register by name, so the station configuration picks them
(``lockers.driver: lock8a``) and a third board is one new file::

    @register
    class Lock16X(BoardDriver):
        name = "lock16x"
        caps = Capabilities(unlock=True, door_feedback=True, occupancy=False,
                            charge_power=False, bank_telemetry=False, unsolicited=False)
        ...

    board = DRIVERS["lock8a"](bus, address=3, locks=24)
    board.unlock(5)        # Latch.RELEASED: the feedback contact says open
    board.read()           # [LockReading(lock=1, locked=True, occupied=None), ...]

Locks are numbered from 1 on each board, whatever the wire uses. ``None`` in a
reading means "this board cannot tell", never "false".

Additions to the interface of the team plan (nothing in it changed):
``BoardDriver.baudrate``, ``addresses``, ``max_locks`` and ``default_locked_when``
(class constants a configuration checks against), ``BoardDriver.events()``
(the readings the board sent by itself since the last call; ``[]`` for boards
that send none), :class:`BadLock` (``unlock`` of a lock number outside
``1..locks`` sends nothing and answers :attr:`Latch.BAD_LOCK`; a lock that is
not an int raises ``BadLock``, a ``ValueError``), and :class:`Found`, what the
pure frame scanners of each protocol return to the bus.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from firmware.hardware.board import BoardOffline, LockerError

if TYPE_CHECKING:  # the bus imports nothing from here at run time either
    from firmware.hardware.lockboards.bus import Bus, Scanner

__all__ = [
    "DRIVERS",
    "LOCKED_WHEN",
    "BadLock",
    "BoardDriver",
    "BoardOffline",
    "Capabilities",
    "Found",
    "Latch",
    "LockReading",
    "register",
]

# Which raw contact value means "locked": "closed" = a set bit (contact made),
# "open" = a clear bit. Wiring (NO/NC feedback) decides it, so it is configuration.
LOCKED_WHEN = ("closed", "open")


@dataclass(frozen=True)
class Capabilities:
    """What a board type can do and report; the cabinet decides from this what it
    measures and what it must estimate."""

    unlock: bool  # it can pulse a lock open
    door_feedback: bool  # it reads each lock's latch/door contact
    occupancy: bool  # it senses whether something is in the slot
    charge_power: bool  # it switches the slot's charging supply
    bank_telemetry: bool  # it reads a bank's id and charge
    unsolicited: bool  # it sends frames by itself when a contact changes


@dataclass(frozen=True)
class LockReading:
    """One lock of one board: ``lock`` from 1; ``locked``/``occupied`` None when
    the board has no sensor for it."""

    lock: int
    locked: bool | None
    occupied: bool | None


class Latch(enum.Enum):
    """What became of an unlock, as far as the board can tell."""

    RELEASED = "released"  # the feedback says open, or the board confirmed the release
    STILL_LOCKED = "still_locked"  # jammed: the feedback still says locked after the pulse
    UNCONFIRMED = "unconfirmed"  # the frame went out; nothing on this board can tell
    BAD_LOCK = "bad_lock"  # the board says it has no such lock


class BadLock(LockerError, ValueError):
    """A lock "number" that is no number at all (never sent)."""


V = TypeVar("V")


@dataclass(frozen=True)
class Found(Generic[V]):
    """A frame a scanner found in received bytes: ``buf[start:end]`` decoded to
    ``value``. What lies before ``start`` was garbage or someone else's frame."""

    value: V
    start: int
    end: int


class BoardDriver(abc.ABC):
    """One board at ``address`` on ``bus`` with ``locks`` locks.

    ``locked_when`` ("closed" or "open") says which raw feedback value means
    locked; each driver has the default its common wiring needs.

    :meth:`unlock` is sent ONCE: these protocols carry no transaction id, so a
    lost answer cannot tell "not heard" from "heard and pulsed", and a second
    pulse may open a door a rider already shut. :meth:`read` is idempotent and
    may be retried by the bus. Both raise :class:`BoardOffline` when nothing
    (valid) answered.
    """

    name: ClassVar[str]
    caps: ClassVar[Capabilities]
    baudrate: ClassVar[int]  # the board's fixed line speed (8N1)
    addresses: ClassVar[range]  # the addresses its DIP switch / chain position allows
    max_locks: ClassVar[int]
    default_locked_when: ClassVar[str] = "closed"

    def __init__(
        self, bus: Bus, address: int, locks: int, *, locked_when: str | None = None
    ) -> None:
        if not _is_int(address) or address not in self.addresses:
            raise ValueError(
                f"{self.name} board address must be {self.addresses.start}.."
                f"{self.addresses.stop - 1}, got {address!r}"
            )
        if not _is_int(locks) or not 1 <= locks <= self.max_locks:
            raise ValueError(f"{self.name} board has 1..{self.max_locks} locks, got {locks!r}")
        locked_when = self.default_locked_when if locked_when is None else locked_when
        if locked_when not in LOCKED_WHEN:
            raise ValueError(f"locked_when must be 'closed' or 'open', got {locked_when!r}")
        self.bus = bus
        self.address = address
        self.locks = locks
        self.locked_when = locked_when

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} on {self.bus.port}>"

    @abc.abstractmethod
    def unlock(self, lock: int) -> Latch:
        """Pulse ``lock`` open once and say what became of it."""

    @abc.abstractmethod
    def read(self) -> list[LockReading]:
        """Every lock of this board, lock 1 first."""

    def events(self) -> list[LockReading]:
        """Readings the board sent unasked since the last call (change frames)."""
        return []

    def describe(self) -> str:
        return f"{self.name} board {self.address} ({self.locks} locks)"

    # -- helpers for drivers ----------------------------------------------------------

    def _has_lock(self, lock: int) -> bool:
        """Whether ``lock`` is one of this board's; raises BadLock for a non-int."""
        if not _is_int(lock):
            raise BadLock(f"a lock is an int 1..{self.locks}, got {lock!r}")
        return 1 <= lock <= self.locks

    def _is_locked(self, bit: bool) -> bool:
        """The raw contact bit (True = closed/set) in the station's words."""
        return bit if self.locked_when == "closed" else not bit

    def _send_unlock(
        self, lock: int, request: bytes, scan: Scanner, *, timeout: float
    ) -> Any:
        """Send the unlock of ``lock`` ONCE (see above), ahead of any poll waiting
        for the line; what ``scan`` found in the answer."""
        return self.bus.transact(
            request, scan, what=f"{self.describe()}: unlock of lock {lock}",
            timeout=timeout, attempts=1, urgent=True,
        )

    def _send_read(
        self, request: bytes, scan: Scanner, *, timeout: float, attempts: int
    ) -> Any:
        """Send an idempotent status read, up to ``attempts`` times; what ``scan``
        found in the answer."""
        return self.bus.transact(
            request, scan, what=f"{self.describe()}: read", timeout=timeout, attempts=attempts
        )


DRIVERS: dict[str, type[BoardDriver]] = {}

D = TypeVar("D", bound=type[BoardDriver])


def register(cls: D) -> D:
    """Class decorator: make ``cls`` available as ``lockers.driver: <cls.name>``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute name")
    if name in DRIVERS and DRIVERS[name] is not cls:
        raise ValueError(f"a lock board driver named {name!r} is already registered")
    DRIVERS[name] = cls
    return cls



def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
