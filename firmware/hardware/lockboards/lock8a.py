"""The "8A/80" lock-control board, the most cloned locker board there is.

RS-485 at 9600 8N1, a DIP address 1..32, up to 24 locks, one feedback contact
per lock (door or latch; whether a closed contact means locked depends on the
lock, hence ``locked_when``). Five-byte frames ``header board channel function
BCC``, BCC the XOR of the bytes before it, channels from 1 on the wire::

    >>> unlock_request(1, 1).hex(" ")
    '8a 01 01 11 9b'
    >>> query_request(1).hex(" ")
    '80 01 00 33 b2'
    >>> find_query_answer(bytes.fromhex("80 01 00 00 01 33 b3"), 1, 1).value[:2]
    [True, False]

The unlock answer ``8A board channel status BCC`` comes after the pulse
(about 500 ms) with the contact it then reads: ``11`` made, ``00`` open. The
query answer carries the status bytes highest group first
(``80 board s24-17 s16-9 s8-1 33 BCC`` on a 24-lock board), bit 0 the
group's lowest lock; its length is read from the frame. Some boards send
``82 board channel status BCC`` by themselves when a contact changes (the
format of that frame is assumed: see docs/hardware.md).

Everything above the :class:`Lock8A` driver is pure: bytes in, bytes out, the
same code on the agent's side and in the simulator's.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from firmware.hardware.lockboards.base import (
    BoardDriver,
    Capabilities,
    Found,
    Latch,
    LockReading,
    register,
)
from firmware.hardware.lockboards.bus import Bus

__all__ = [
    "Lock8A",
    "Request",
    "bcc",
    "event_frame",
    "find_events",
    "find_query_answer",
    "find_request",
    "find_unlock_answer",
    "query_answer",
    "query_request",
    "unlock_answer",
    "unlock_request",
]

UNLOCK = 0x8A  # header of an unlock and of its answer
QUERY = 0x80  # header of a query-all and of its answer
EVENT = 0x82  # header of a change frame a board sends unasked
FN_UNLOCK = 0x11
FN_QUERY = 0x33
CONTACT_MADE = 0x11  # status byte of an unlock answer / change frame
CONTACT_OPEN = 0x00
MAX_GROUPS = 4  # status bytes a query answer may carry (32 contacts)

# The board answers an unlock once the pulse is over, about 500 ms later
# (Open-Locker, ADR-0067); a query at once.
UNLOCK_TIMEOUT = 1.5
READ_TIMEOUT = 0.3
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class Request:
    """A frame as the board reads it (the simulator's side)."""

    header: int
    board: int
    channel: int
    function: int


def bcc(data: bytes | Sequence[int]) -> int:
    """XOR of ``data``."""
    out = 0
    for byte in data:
        out ^= byte
    return out


def _frame(*body: int) -> bytes:
    for b in body:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 0xFF:
            raise ValueError(f"a frame byte must be 0..255, got {b!r}")
    return bytes((*body, bcc(body)))


def unlock_request(board: int, lock: int) -> bytes:
    """Pulse ``lock`` (1..255; 0 opens every lock, which the driver never sends)."""
    return _frame(UNLOCK, board, lock, FN_UNLOCK)


def query_request(board: int) -> bytes:
    return _frame(QUERY, board, 0x00, FN_QUERY)


def unlock_answer(board: int, lock: int, contact: bool) -> bytes:
    return _frame(UNLOCK, board, lock, CONTACT_MADE if contact else CONTACT_OPEN)


def event_frame(board: int, lock: int, contact: bool) -> bytes:
    return _frame(EVENT, board, lock, CONTACT_MADE if contact else CONTACT_OPEN)


def query_answer(board: int, contacts: Sequence[bool], groups: int = 3) -> bytes:
    """``contacts[0]`` is lock 1; ``groups`` status bytes (3 on a 24-lock board)."""
    if not 1 <= groups <= MAX_GROUPS or len(contacts) > groups * 8:
        raise ValueError(f"{len(contacts)} contacts do not fit {groups} status bytes")
    status = [0] * groups
    for i, made in enumerate(contacts):
        if made:
            status[i // 8] |= 1 << (i % 8)
    return _frame(QUERY, board, *reversed(status), FN_QUERY)


def _five(buf: bytes, i: int) -> bool:
    return i + 5 <= len(buf) and buf[i + 4] == bcc(buf[i : i + 4])


def find_unlock_answer(buf: bytes, board: int, lock: int) -> Found[bool] | None:
    """The contact (made?) the answer to unlocking ``board``'s ``lock`` reports."""
    for i in range(len(buf) - 4):
        if buf[i] == UNLOCK and buf[i + 1] == board and buf[i + 2] == lock and _five(buf, i):
            status = buf[i + 3]
            if status in (CONTACT_MADE, CONTACT_OPEN):
                return Found(status == CONTACT_MADE, i, i + 5)
    return None


def find_query_answer(buf: bytes, board: int, min_groups: int = 1) -> Found[list[bool]] | None:
    """Every contact a query answer of ``board`` reports, lock 1 first.

    The answer has no length byte: a frame ends where ``33 BCC`` fits. Shorter
    than ``min_groups`` status bytes is not tried, and the longest frame that
    fits wins, so a status byte that happens to be 0x33 cannot cut an answer
    short once it is all there.
    """
    for i in range(len(buf) - 4):
        if buf[i] != QUERY or buf[i + 1] != board:
            continue
        for groups in range(MAX_GROUPS, max(1, min_groups) - 1, -1):
            end = i + 2 + groups + 2
            if end > len(buf):
                continue
            if buf[end - 2] == FN_QUERY and buf[end - 1] == bcc(buf[i : end - 1]):
                status = buf[i + 2 : i + 2 + groups][::-1]  # lowest group first
                return Found([bool(s >> bit & 1) for s in status for bit in range(8)], i, end)
    return None


def find_events(buf: bytes) -> list[Found[tuple[int, int, bool]]]:
    """Every change frame in ``buf``: (board, lock, contact made)."""
    out = []
    i = 0
    while i + 5 <= len(buf):
        if buf[i] == EVENT and _five(buf, i) and buf[i + 3] in (CONTACT_MADE, CONTACT_OPEN):
            out.append(Found((buf[i + 1], buf[i + 2], buf[i + 3] == CONTACT_MADE), i, i + 5))
            i += 5
        else:
            i += 1
    return out


def find_request(buf: bytes) -> Found[Request] | None:
    """The first unlock or query request in ``buf`` (the board's side)."""
    for i in range(len(buf) - 4):
        if buf[i] in (UNLOCK, QUERY) and _five(buf, i):
            h, board, chan, fn = buf[i : i + 4]
            if (h, fn) in ((UNLOCK, FN_UNLOCK), (QUERY, FN_QUERY)):
                return Found(Request(h, board, chan, fn), i, i + 5)
    return None


@register
class Lock8A(BoardDriver):
    """An 8A/80 board at DIP ``address`` with ``locks`` locks wired from channel 1.

    ``locked_when="closed"`` (the default) reads a made contact as locked: the
    common latch with a door-closing switch. Boards with the opposite switch
    take ``"open"``; a state that is always inverted at commissioning is this.
    """

    name = "lock8a"
    caps = Capabilities(
        unlock=True, door_feedback=True, occupancy=False,
        charge_power=False, bank_telemetry=False, unsolicited=True,
    )
    baudrate = 9600
    addresses = range(1, 33)
    max_locks = 24
    default_locked_when = "closed"

    def __init__(
        self, bus: Bus, address: int, locks: int, *, locked_when: str | None = None
    ) -> None:
        super().__init__(bus, address, locks, locked_when=locked_when)
        self._heard = b""
        self._events: collections.deque[LockReading] = collections.deque(maxlen=256)
        bus.listen(self._hear)

    def unlock(self, lock: int) -> Latch:
        if not self._has_lock(lock):
            return Latch.BAD_LOCK
        contact = self._send_unlock(
            lock, unlock_request(self.address, lock),
            lambda buf: find_unlock_answer(buf, self.address, lock), timeout=UNLOCK_TIMEOUT,
        )
        return Latch.STILL_LOCKED if self._is_locked(contact) else Latch.RELEASED

    def read(self) -> list[LockReading]:
        groups = (self.locks + 7) // 8
        contacts = self._send_read(
            query_request(self.address),
            lambda buf: find_query_answer(buf, self.address, groups),
            timeout=READ_TIMEOUT, attempts=READ_ATTEMPTS,
        )
        return [
            LockReading(n, self._is_locked(contacts[n - 1]), None)
            for n in range(1, self.locks + 1)
        ]

    def events(self) -> list[LockReading]:
        self.bus.drain()
        out = list(self._events)
        self._events.clear()
        return out

    def _hear(self, data: bytes) -> None:
        buf = self._heard + data
        found = find_events(buf)
        for f in found:
            board, lock, contact = f.value
            if board == self.address and 1 <= lock <= self.locks:
                self._events.append(LockReading(lock, self._is_locked(contact), None))
        # Keep a tail that may be the start of a frame split across reads.
        keep_from = max(found[-1].end if found else 0, len(buf) - 4)
        self._heard = buf[keep_from:]
