"""Kerong KR-CU16: sixteen locks with latch feedback and an infrared occupancy
sensor per slot.

RS-485 at 19200 8N1, boards 0..9 on one chain (the address switch). Frames
``02 ADDR CMD 03 SUM``, SUM the low byte of the sum of the bytes before it,
ADDR ``(board << 4) | lock`` with locks from 0 on the wire::

    >>> unlock_request(0, 1).hex(" ")   # board 0, lock 1 (0 on the wire)
    '02 00 31 03 36'
    >>> read_request(0).hex(" ")
    '02 00 30 03 35'

Both are answered with the board's state, nine bytes
``02 ADDR 35 L1-8 L9-16 IR1-8 IR9-16 03 SUM``: a lock bit per latch, an IR bit
per slot (set = something in the slot). Implementations disagree on the lock
bit's polarity, so it is ``locked_when``; "closed" (a set bit is locked) is
the default here. The answer to an unlock comes after the pulse and shows the
latch as it is then.

Everything above the :class:`KerongCU16` driver is pure and shared with the
simulator.
"""

from __future__ import annotations

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

__all__ = [
    "KerongCU16",
    "Request",
    "State",
    "checksum",
    "find_request",
    "find_state",
    "read_request",
    "state_answer",
    "unlock_request",
]

STX = 0x02
ETX = 0x03
CMD_READ = 0x30
CMD_UNLOCK = 0x31
CMD_STATE = 0x35  # the answer to both
LOCKS = 16
STATE_LEN = 9

UNLOCK_TIMEOUT = 1.0  # the answer follows the pulse
READ_TIMEOUT = 0.3
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class Request:
    """A request as the board reads it: ``lock`` from 0, as on the wire."""

    board: int
    lock: int
    cmd: int


@dataclass(frozen=True)
class State:
    """A board's state answer: raw bits, lock 1 first."""

    board: int
    latches: tuple[bool, ...]  # lock bit set
    infrared: tuple[bool, ...]  # IR bit set: something in the slot


def checksum(data: bytes | Sequence[int]) -> int:
    return sum(data) & 0xFF


def _request(board: int, lock0: int, cmd: int) -> bytes:
    if isinstance(board, bool) or not isinstance(board, int) or not 0 <= board <= 0x0F:
        raise ValueError(f"a KR-CU16 board is 0..15 on the wire, got {board!r}")
    if isinstance(lock0, bool) or not isinstance(lock0, int) or not 0 <= lock0 < LOCKS:
        raise ValueError(f"a KR-CU16 lock is 1..16, got {lock0 + 1!r}")
    body = bytes((STX, board << 4 | lock0, cmd, ETX))
    return body + bytes((checksum(body),))


def unlock_request(board: int, lock: int) -> bytes:
    """Pulse ``lock`` (1..16) of ``board``."""
    if isinstance(lock, bool) or not isinstance(lock, int):
        raise ValueError(f"a KR-CU16 lock is 1..16, got {lock!r}")
    return _request(board, lock - 1, CMD_UNLOCK)


def read_request(board: int) -> bytes:
    return _request(board, 0, CMD_READ)


def _bits(value: int) -> list[bool]:
    return [bool(value >> b & 1) for b in range(8)]


def _byte(bits: Sequence[bool]) -> int:
    return sum(1 << i for i, on in enumerate(bits) if on)


def state_answer(board: int, latches: Sequence[bool], infrared: Sequence[bool]) -> bytes:
    """The nine-byte state of ``board`` (16 bits each, lock 1 first; fewer are padded)."""
    if len(latches) > LOCKS or len(infrared) > LOCKS:
        raise ValueError("a KR-CU16 has 16 locks")
    la = list(latches) + [False] * (LOCKS - len(latches))
    ir = list(infrared) + [False] * (LOCKS - len(infrared))
    body = bytes((
        STX, (board & 0x0F) << 4, CMD_STATE,
        _byte(la[:8]), _byte(la[8:]), _byte(ir[:8]), _byte(ir[8:]), ETX,
    ))
    return body + bytes((checksum(body),))


def find_state(buf: bytes, board: int) -> Found[State] | None:
    """The first valid state answer of ``board`` in ``buf``.

    Only ADDR's high nibble (the board) is matched: whether the answer echoes
    the lock in the low nibble is not known, and it does not matter here.
    """
    for i in range(len(buf) - STATE_LEN + 1):
        f = buf[i : i + STATE_LEN]
        if (
            f[0] == STX and f[1] >> 4 == board and f[2] == CMD_STATE and f[7] == ETX
            and f[8] == checksum(f[:8])
        ):
            state = State(board, tuple(_bits(f[3]) + _bits(f[4])), tuple(_bits(f[5]) + _bits(f[6])))
            return Found(state, i, i + STATE_LEN)
    return None


def find_request(buf: bytes) -> Found[Request] | None:
    """The first read or unlock request in ``buf`` (the board's side)."""
    for i in range(len(buf) - 4):
        f = buf[i : i + 5]
        framed = f[0] == STX and f[3] == ETX and f[4] == checksum(f[:4])
        if framed and f[2] in (CMD_READ, CMD_UNLOCK):
            return Found(Request(f[1] >> 4, f[1] & 0x0F, f[2]), i, i + 5)
    return None


@register
class KerongCU16(BoardDriver):
    """A KR-CU16 at chain ``address`` 0..9 with ``locks`` of its 16 locks in use."""

    name = "kerong-cu16"
    caps = Capabilities(
        unlock=True, door_feedback=True, occupancy=True,
        charge_power=False, bank_telemetry=False, unsolicited=False,
    )
    baudrate = 19200
    addresses = range(0, 10)
    max_locks = LOCKS
    default_locked_when = "closed"

    def unlock(self, lock: int) -> Latch:
        if not self._has_lock(lock):
            return Latch.BAD_LOCK
        state = self._send_unlock(
            lock, unlock_request(self.address, lock),
            lambda buf: find_state(buf, self.address), timeout=UNLOCK_TIMEOUT,
        )
        return Latch.STILL_LOCKED if self._is_locked(state.latches[lock - 1]) else Latch.RELEASED

    def read(self) -> list[LockReading]:
        state = self._send_read(
            read_request(self.address), lambda buf: find_state(buf, self.address),
            timeout=READ_TIMEOUT, attempts=READ_ATTEMPTS,
        )
        return [
            LockReading(n, self._is_locked(state.latches[n - 1]), state.infrared[n - 1])
            for n in range(1, self.locks + 1)
        ]
