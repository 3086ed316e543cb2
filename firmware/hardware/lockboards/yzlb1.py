"""YZ-LB1, our own open board (contract §10), as a :class:`BoardDriver`.

The station itself drives YZ-LB1 through :class:`~firmware.hardware.board.LockerBoard`
(``lockers.driver: yz-lb1`` builds that, never a Cabinet: the board reads each
bank's id and charge, so nothing is estimated). This driver is the same board
seen through the lock-board interface, so the one conformance suite holds the
reference board to the rules every bought board meets, and it is the worked
example of docs/hardware.md "Adding a driver".

It is built from the pure codecs of :mod:`protocol.frames`; the only thing
added here is :func:`find_answer`, a pure scanner that says where in the
received bytes the answer lies (the bus hands the rest to its listeners)::

    >>> from protocol.frames import status_request, unlock_response
    >>> status_request(1).hex(" ")
    'a5 5a 01 02 00 21 60'
    >>> found = find_answer(b"noise" + unlock_response(1, 3, 0), 1, Cmd.UNLOCK)
    >>> (found.value.payload.hex(" "), found.start, found.end)
    ('03 00', 5, 14)

Unlike LockerBoard, :meth:`YZLB1.unlock` goes out ONCE, as for every driver
(docs/locker.md, "Unlock retries"): a lost answer is :class:`BoardOffline` and
the caller reads the latch to learn whether it pulsed.
"""

from __future__ import annotations

from collections.abc import Callable

from firmware.hardware.board import BoardRefused
from firmware.hardware.lockboards.base import (
    BoardDriver,
    Capabilities,
    Found,
    Latch,
    LockReading,
    register,
)
from protocol.errors import FrameError
from protocol.frames import (
    HEADER_LEN,
    MAX_STATUS_SLOTS,
    RESPONSE_BIT,
    SYNC,
    Cmd,
    ErrorCode,
    Frame,
    SlotRecord,
    UnlockResult,
    crc16_modbus,
    parse_status,
    parse_unlock,
    status_request,
    unlock_request,
)

__all__ = ["YZLB1", "find_answer"]

# The board answers within 50 ms (§10); a poll waits 200 ms and is sent three
# times, as LockerBoard does. An unlock is sent once, so it may wait longer:
# a late answer to it is worth more than a poll's.
READ_TIMEOUT = 0.2
READ_ATTEMPTS = 3
UNLOCK_TIMEOUT = 1.0
PULSE_MS = 500

_UNLOCK_LATCH = {
    UnlockResult.RELEASED: Latch.RELEASED,
    UnlockResult.JAMMED: Latch.STILL_LOCKED,
    # Busy: the board did not pulse, so the latch is still locked; the Latch
    # words have no "try later", and the caller must not read it as open.
    UnlockResult.BUSY: Latch.STILL_LOCKED,
    UnlockResult.BAD_SLOT: Latch.BAD_LOCK,
}


def find_answer(
    buf: bytes, address: int, cmd: Cmd, accept: Callable[[Frame], bool] | None = None
) -> Found[Frame] | None:
    """The first frame in ``buf`` that answers ``cmd`` from board ``address``:
    its response (``cmd | 0x80``) or an error frame about ``cmd``, and that
    ``accept`` (if given) takes.

    Pure; garbage, corrupt frames (bad CRC), other boards' frames and our own
    echo are stepped over, as :class:`~protocol.frames.FrameDecoder` does.
    """
    pos = buf.find(SYNC)
    while pos >= 0 and pos + HEADER_LEN <= len(buf):
        end = pos + HEADER_LEN + buf[pos + 4] + 2
        body = buf[pos + 2 : end - 2]
        # A stray A5 5A claiming more than arrived is looked past too: a real
        # answer may start inside it.
        if end <= len(buf) and crc16_modbus(body) == int.from_bytes(buf[end - 2 : end], "little"):
            frame = Frame(body[0], body[1], bytes(body[3:]))
            if frame.addr == address and _answers(frame, cmd) and (
                accept is None or accept(frame)
            ):
                return Found(frame, pos, end)
        pos = buf.find(SYNC, pos + 1)
    return None


def _answers(frame: Frame, cmd: Cmd) -> bool:
    if frame.cmd == cmd | RESPONSE_BIT:
        return True
    return frame.cmd == Cmd.ERROR and len(frame.payload) == 2 and frame.payload[0] == cmd


@register
class YZLB1(BoardDriver):
    """A YZ-LB1 board at ``address`` 1..15 with ``locks`` of its slots.

    ``locked_when`` is "closed" (the contract's flag: bit 1 set = locked). The
    board's firmware sets that flag, so "open" is only for a board whose
    firmware passes a reversed (NC) feedback contact straight through; the
    board's own UNLOCK verdict (released/jammed) is taken as it comes.
    """

    name = "yz-lb1"
    caps = Capabilities(
        unlock=True, door_feedback=True, occupancy=True,
        charge_power=True, bank_telemetry=True, unsolicited=False,
    )
    baudrate = 115200
    addresses = range(1, 16)
    max_locks = MAX_STATUS_SLOTS
    default_locked_when = "closed"

    def unlock(self, lock: int) -> Latch:
        if not self._has_lock(lock):
            return Latch.BAD_LOCK
        frame = self._send_unlock(
            lock, unlock_request(self.address, lock, PULSE_MS),
            lambda buf: find_answer(buf, self.address, Cmd.UNLOCK, _about(lock)),
            timeout=UNLOCK_TIMEOUT,
        )
        if frame.cmd == Cmd.ERROR:
            # The board refused the request (it heard it corrupt, or has no
            # such slot): it did not pulse.
            if frame.payload[1] == ErrorCode.BAD_SLOT:
                return Latch.BAD_LOCK
            raise BoardRefused(frame.payload[0], _code(frame.payload[1]))
        return _UNLOCK_LATCH[parse_unlock(frame)[1]]

    def read(self) -> list[LockReading]:
        records = self.records()
        by_slot = {r.slot: r for r in records}
        out = []
        for n in range(1, self.locks + 1):
            r = by_slot.get(n)
            if r is None:  # configured, but the board reports no such slot
                out.append(LockReading(n, None, None))
            else:
                out.append(LockReading(n, self._is_locked(r.locked), r.present))
        return out

    def records(self) -> list[SlotRecord]:
        """The board's own slot records (bank id, charge, faults): what
        ``bank_telemetry`` means. The ``locked`` flag is as the wire has it."""
        frame = self._send_read(
            status_request(self.address),
            lambda buf: find_answer(buf, self.address, Cmd.STATUS, _readable),
            timeout=READ_TIMEOUT, attempts=READ_ATTEMPTS,
        )
        if frame.cmd == Cmd.ERROR:
            raise BoardRefused(frame.payload[0], _code(frame.payload[1]))
        return parse_status(frame)


def _about(lock: int) -> Callable[[Frame], bool]:
    """Takes an UNLOCK answer about ``lock`` that parses, or an error frame;
    anything else is stepped over (a firmware fault reads as no answer)."""

    def accept(frame: Frame) -> bool:
        if frame.cmd == Cmd.ERROR:
            return True
        try:
            return parse_unlock(frame)[0] == lock
        except FrameError:
            return False

    return accept


def _readable(frame: Frame) -> bool:
    """A STATUS answer that parses, or an error frame other than "bad CRC"
    (our request was hit by noise: the attempt times out and goes again)."""
    if frame.cmd == Cmd.ERROR:
        return frame.payload[1] != ErrorCode.BAD_CRC
    try:
        parse_status(frame)
    except FrameError:
        return False
    return True


def _code(raw: int) -> ErrorCode | int:
    try:
        return ErrorCode(raw)
    except ValueError:
        return raw
