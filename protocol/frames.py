"""YZ-LB1, the locker board serial protocol (contract §10), byte for byte.

Used on both sides of the wire: the agent builds requests and parses answers, the
board simulator parses requests and builds answers. Nothing here opens a port.

    >>> status_request(1).hex(" ")
    'a5 5a 01 02 00 21 60'
    >>> dec = FrameDecoder()
    >>> [f.request_cmd for f in dec.feed(b"noise" + info_response(1, 2, "ACC-1.0"))]
    [1]
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import BoardError, FrameError

__all__ = [
    "HEADER_LEN",
    "MAX_PAYLOAD",
    "MAX_STATUS_SLOTS",
    "RECORD_LEN",
    "RESPONSE_BIT",
    "SLOT_STATUS",
    "SLOT_STATUS_CODE",
    "SYNC",
    "ChargeResult",
    "Cmd",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "SlotRecord",
    "UnlockResult",
    "charge_request",
    "charge_response",
    "crc16_modbus",
    "decode_frame",
    "encode_frame",
    "error_response",
    "info_request",
    "info_response",
    "parse_charge",
    "parse_info",
    "parse_status",
    "parse_unlock",
    "status_request",
    "status_response",
    "unlock_request",
    "unlock_response",
]

SYNC = b"\xa5\x5a"
RESPONSE_BIT = 0x80
MAX_PAYLOAD = 255
HEADER_LEN = 5  # sync(2) addr cmd len
_CRC_LEN = 2
RECORD_LEN = 16
# A STATUS answer is n_slots:u8 + 16 bytes a slot inside a 255-byte payload.
MAX_STATUS_SLOTS = (MAX_PAYLOAD - 1) // RECORD_LEN


class Cmd(IntEnum):
    """Request command codes; a response carries ``cmd | RESPONSE_BIT``."""

    INFO = 0x01
    STATUS = 0x02
    UNLOCK = 0x03
    CHARGE = 0x04
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Second byte of an error response (cmd 0xFF)."""

    BAD_CRC = 1
    UNKNOWN_COMMAND = 2
    BAD_LENGTH = 3
    BAD_SLOT = 4


class UnlockResult(IntEnum):
    RELEASED = 0
    BAD_SLOT = 1
    JAMMED = 2
    BUSY = 3


class ChargeResult(IntEnum):
    OK = 0
    BAD_SLOT = 1


# Board status byte -> the slot fault names of contract §5 ("comm" is the agent's
# own verdict when the board is silent, so it has no code on the wire).
SLOT_STATUS: dict[int, str | None] = {
    0: None,
    1: "lock_jammed",
    2: "charger_fault",
    3: "sensor_fault",
    4: "overheat",
}
SLOT_STATUS_CODE: dict[str | None, int] = {v: k for k, v in SLOT_STATUS.items()}


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF).

    >>> hex(crc16_modbus(b"123456789"))
    '0x4b37'
    """
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def _u8(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise FrameError(f"{name} must be an int 0..255, got {value!r}")
    return value


def encode_frame(addr: int, cmd: int, payload: bytes = b"") -> bytes:
    """Build one complete frame: sync, header, payload and CRC.

    >>> encode_frame(1, Cmd.STATUS).hex()
    'a55a0102002160'
    """
    _u8("addr", addr)
    _u8("cmd", cmd)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise FrameError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes((addr, cmd, len(payload))) + bytes(payload)
    return SYNC + body + crc16_modbus(body).to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame (the CRC already checked)."""

    addr: int
    cmd: int
    payload: bytes

    @property
    def is_error(self) -> bool:
        return self.cmd == Cmd.ERROR

    @property
    def is_response(self) -> bool:
        """True for a normal answer (``cmd | 0x80``); an error frame is not one."""
        return bool(self.cmd & RESPONSE_BIT) and self.cmd != Cmd.ERROR

    @property
    def request_cmd(self) -> int:
        """The request this frame is about: its own cmd, the answered cmd, or the
        cmd named in an error payload."""
        if self.cmd == Cmd.ERROR:
            if not self.payload:
                raise FrameError("error frame without payload")
            return self.payload[0]
        return self.cmd & ~RESPONSE_BIT & 0xFF

    @property
    def error_code(self) -> ErrorCode | int | None:
        """The error code of an error frame (an unknown code stays an int), else None."""
        if self.cmd != Cmd.ERROR:
            return None
        if len(self.payload) != 2:
            raise FrameError(f"error frame payload must be 2 bytes, got {len(self.payload)}")
        code = self.payload[1]
        try:
            return ErrorCode(code)
        except ValueError:
            return code

    def encode(self) -> bytes:
        return encode_frame(self.addr, self.cmd, self.payload)


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one complete frame (no garbage around it)."""
    dec = FrameDecoder()
    frames = dec.feed(data)
    if len(frames) != 1 or dec.garbage_bytes or dec.pending:
        raise FrameError(f"not exactly one valid frame: {bytes(data).hex(' ')}")
    return frames[0]


class FrameDecoder:
    """Streaming decoder: bytes in any slicing go in, whole frames come out.

    Garbage before, between or after frames is skipped. On a bad CRC only the
    first sync byte is dropped and the buffer rescanned, so a valid frame that
    starts inside a corrupt one is still found.

    Counters: ``frames`` decoded, ``bad_crc`` frames rejected, ``garbage_bytes``
    discarded (every byte that ended up in no valid frame, the bytes of corrupt
    frames included).
    """

    __slots__ = ("_buf", "bad_crc", "frames", "garbage_bytes")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.bad_crc = 0
        self.garbage_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes buffered waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial frame (the host calls this after a timeout);
        the counters are kept."""
        self.garbage_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # Keep a trailing 0xA5: it may be the first half of a split sync.
                keep_from = n - 1 if n > pos and buf[n - 1] == SYNC[0] else n
                self.garbage_bytes += keep_from - pos
                pos = keep_from
                break
            self.garbage_bytes += start - pos
            pos = start
            if n - pos < HEADER_LEN:
                break
            length = buf[pos + 4]
            end = pos + HEADER_LEN + length + _CRC_LEN
            if end > n:
                break
            body = bytes(buf[pos + 2 : end - _CRC_LEN])
            crc = buf[end - 2] | (buf[end - 1] << 8)
            if crc16_modbus(body) != crc:
                self.bad_crc += 1
                self.garbage_bytes += 1
                pos += 1
                continue
            out.append(Frame(body[0], body[1], body[3:]))
            self.frames += 1
            pos = end
        del buf[:pos]
        return out


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One 16-byte slot record of a STATUS answer, in contract terms.

    ``None`` stands for the board's "unknown" markers; ``fault`` uses the names of
    contract §5; ``bank_id`` is None when the slot reports no bank id.

    ``estimated`` is never on the wire of §10: the station sets it on the
    records of a lock-control board without bank telemetry
    (:class:`firmware.hardware.cabinet.Cabinet`), whose ``charge`` is then its
    own estimate and ``bank_id`` None with a bank inside.
    """

    slot: int
    present: bool
    locked: bool
    charging: bool
    charge: int | None
    temp_c: int | None
    cycles: int | None
    fault: str | None
    bank_id: str | None
    estimated: bool = False

    def pack(self) -> bytes:
        """The 16 bytes of contract §10 (raises FrameError on out-of-range values)."""
        _u8("slot", self.slot)
        flags = (1 if self.present else 0) | (2 if self.locked else 0) | (4 if self.charging else 0)
        if self.charge is None:
            charge = 0xFF
        elif isinstance(self.charge, int) and 0 <= self.charge <= 100:
            charge = self.charge
        else:
            raise FrameError(f"charge must be 0..100 or None, got {self.charge!r}")
        if self.temp_c is None:
            temp = 0x7F
        elif isinstance(self.temp_c, int) and -128 <= self.temp_c <= 126:
            temp = self.temp_c
        else:
            raise FrameError(f"temp_c must be -128..126 or None, got {self.temp_c!r}")
        if self.cycles is None:
            cycles = 0xFFFF
        elif isinstance(self.cycles, int) and 0 <= self.cycles <= 0xFFFE:
            cycles = self.cycles
        else:
            raise FrameError(f"cycles must be 0..65534 or None, got {self.cycles!r}")
        try:
            status = SLOT_STATUS_CODE[self.fault]
        except KeyError:
            raise FrameError(f"fault {self.fault!r} has no board status code") from None
        if self.bank_id is None:
            bank = bytes(8)
        else:
            try:
                raw = self.bank_id.encode("ascii")
            except UnicodeEncodeError:
                raise FrameError(f"bank_id {self.bank_id!r} is not ASCII") from None
            if not 1 <= len(raw) <= 8 or not raw.isascii() or not _printable(raw):
                raise FrameError(f"bank_id must be 1..8 printable ASCII chars: {self.bank_id!r}")
            bank = raw.ljust(8, b"\x00")
        return struct.pack("<BBBbHBB8s", self.slot, flags, charge, temp, cycles, status, 0, bank)

    @classmethod
    def unpack(cls, b: bytes) -> SlotRecord:
        """Parse 16 bytes; raises FrameError on a wrong length or a bad value."""
        if len(b) != RECORD_LEN:
            raise FrameError(f"slot record must be {RECORD_LEN} bytes, got {len(b)}")
        slot, flags, charge, temp, cycles, status, _reserved, bank = struct.unpack("<BBBbHBB8s", b)
        if status not in SLOT_STATUS:
            raise FrameError(f"slot {slot}: unknown status code {status}")
        if charge != 0xFF and charge > 100:
            raise FrameError(f"slot {slot}: charge {charge} out of 0..100")
        raw = bank.rstrip(b"\x00")
        if not raw:
            bank_id = None
        elif b"\x00" in raw or not _printable(raw):
            raise FrameError(f"slot {slot}: bank id is not printable ASCII: {bank.hex()}")
        else:
            bank_id = raw.decode("ascii")
        return cls(
            slot=slot,
            present=bool(flags & 1),
            locked=bool(flags & 2),
            charging=bool(flags & 4),
            charge=None if charge == 0xFF else charge,
            temp_c=None if temp == 0x7F else temp,
            cycles=None if cycles == 0xFFFF else cycles,
            fault=SLOT_STATUS[status],
            bank_id=bank_id,
        )


def _printable(raw: bytes) -> bool:
    return all(0x20 <= c <= 0x7E for c in raw)


# -- requests (host -> board) -------------------------------------------------


def info_request(addr: int) -> bytes:
    return encode_frame(addr, Cmd.INFO)


def status_request(addr: int) -> bytes:
    return encode_frame(addr, Cmd.STATUS)


def unlock_request(addr: int, slot: int, pulse_ms: int = 500) -> bytes:
    """Ask the board to pulse a slot's lock for ``pulse_ms`` milliseconds."""
    _u8("slot", slot)
    if isinstance(pulse_ms, bool) or not isinstance(pulse_ms, int) or not 0 <= pulse_ms <= 0xFFFF:
        raise FrameError(f"pulse_ms must be 0..65535, got {pulse_ms!r}")
    return encode_frame(addr, Cmd.UNLOCK, struct.pack("<BH", slot, pulse_ms))


def charge_request(addr: int, slot: int, on: bool) -> bytes:
    _u8("slot", slot)
    return encode_frame(addr, Cmd.CHARGE, bytes((slot, 1 if on else 0)))


# -- responses (board -> host; the simulator builds these) ---------------------


def info_response(addr: int, n_slots: int, firmware: str) -> bytes:
    _u8("n_slots", n_slots)
    try:
        fw = firmware.encode("ascii")
    except UnicodeEncodeError:
        raise FrameError(f"firmware {firmware!r} is not ASCII") from None
    return encode_frame(addr, Cmd.INFO | RESPONSE_BIT, bytes((n_slots,)) + fw)


def status_response(addr: int, records: Sequence[SlotRecord]) -> bytes:
    if len(records) > MAX_STATUS_SLOTS:
        raise FrameError(f"{len(records)} slot records do not fit one frame")
    payload = bytes((len(records),)) + b"".join(r.pack() for r in records)
    return encode_frame(addr, Cmd.STATUS | RESPONSE_BIT, payload)


def unlock_response(addr: int, slot: int, result: UnlockResult | int) -> bytes:
    payload = bytes((_u8("slot", slot), _u8("result", result)))
    return encode_frame(addr, Cmd.UNLOCK | RESPONSE_BIT, payload)


def charge_response(addr: int, slot: int, result: ChargeResult | int) -> bytes:
    payload = bytes((_u8("slot", slot), _u8("result", result)))
    return encode_frame(addr, Cmd.CHARGE | RESPONSE_BIT, payload)


def error_response(addr: int, request_cmd: int, code: ErrorCode | int) -> bytes:
    payload = bytes((_u8("request_cmd", request_cmd), _u8("code", code)))
    return encode_frame(addr, Cmd.ERROR, payload)


# -- parsers of answers ----------------------------------------------------------


def _expect(frame: Frame, cmd: Cmd) -> bytes:
    if frame.cmd == Cmd.ERROR:
        raise BoardError(frame.request_cmd, frame.error_code)
    if frame.cmd != cmd | RESPONSE_BIT:
        raise FrameError(f"expected a {cmd.name} response, got cmd 0x{frame.cmd:02X}")
    return frame.payload


def parse_info(frame: Frame) -> tuple[int, str]:
    """``(n_slots, firmware)`` of an INFO answer."""
    p = _expect(frame, Cmd.INFO)
    if not p:
        raise FrameError("INFO response without n_slots")
    fw = p[1:]
    if not _printable(fw):
        raise FrameError(f"INFO firmware is not printable ASCII: {fw.hex()}")
    return p[0], fw.decode("ascii")


def parse_status(frame: Frame) -> list[SlotRecord]:
    """The slot records of a STATUS answer."""
    p = _expect(frame, Cmd.STATUS)
    if not p:
        raise FrameError("STATUS response without n_slots")
    n = p[0]
    if len(p) != 1 + n * RECORD_LEN:
        raise FrameError(f"STATUS response for {n} slots has {len(p)} bytes, not {1 + n * 16}")
    return [SlotRecord.unpack(p[1 + i * 16 : 17 + i * 16]) for i in range(n)]


def parse_unlock(frame: Frame) -> tuple[int, UnlockResult]:
    p = _expect(frame, Cmd.UNLOCK)
    if len(p) != 2:
        raise FrameError(f"UNLOCK response must be 2 bytes, got {len(p)}")
    try:
        return p[0], UnlockResult(p[1])
    except ValueError:
        raise FrameError(f"UNLOCK response: unknown result {p[1]}") from None


def parse_charge(frame: Frame) -> tuple[int, ChargeResult]:
    p = _expect(frame, Cmd.CHARGE)
    if len(p) != 2:
        raise FrameError(f"CHARGE response must be 2 bytes, got {len(p)}")
    try:
        return p[0], ChargeResult(p[1])
    except ValueError:
        raise FrameError(f"CHARGE response: unknown result {p[1]}") from None
