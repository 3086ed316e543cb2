"""A generic Modbus RTU relay/IO module: it switches each slot's charging supply.

Neither lock board switches charging power, so a slot's charger hangs on a
relay of a cheap "8 relays + 8 inputs" module on the same or its own RS-485
line. Coils (relays) and discrete inputs at 0x0000.. (``channels`` of each),
function codes 01 (read coils), 02 (read inputs) and 05 (write one coil),
CRC-16/MODBUS low byte first::

    >>> write_coil_request(1, 0, True).hex(" ")
    '01 05 00 00 ff 00 8c 3a'
    >>> read_bits_request(1, READ_COILS, 0, 8).hex(" ")
    '01 01 00 00 00 08 3d cc'

    switch = ChargeSwitch(bus, address=1, channels=8)
    switch.set(3, True)        # slot 3's charger on (coil 0x0002)
    switch.coils()             # [False, False, True, False, ...]

Channels are numbered from 1, coils and inputs from 0 on the wire. Writing a
coil is idempotent, so unlike an unlock it may be retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from firmware.hardware.board import LockerError
from firmware.hardware.lockboards.base import Found
from firmware.hardware.lockboards.bus import Bus
from protocol.frames import crc16_modbus

__all__ = [
    "CHARGE_SWITCHES",
    "ChargeSwitch",
    "ModuleRefused",
    "Request",
    "bits_answer",
    "exception_answer",
    "find_answer",
    "find_request",
    "read_bits_request",
    "write_coil_answer",
    "write_coil_request",
]

READ_COILS = 0x01
READ_INPUTS = 0x02
WRITE_COIL = 0x05
EXCEPTION_BIT = 0x80
COIL_ON = 0xFF00
COIL_OFF = 0x0000
MAX_CHANNELS = 64

EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
              4: "server device failure", 6: "server device busy"}

TIMEOUT = 0.3
ATTEMPTS = 3


class ModuleRefused(LockerError):
    """The module answered with a Modbus exception (``function``, ``code``)."""

    def __init__(self, address: int, function: int, code: int) -> None:
        reason = EXCEPTIONS.get(code, f"exception {code}")
        super().__init__(f"modbus-io module {address} refused function {function:02X}: {reason}")
        self.function = function
        self.code = code


@dataclass(frozen=True)
class Request:
    """A request as the module reads it: ``value`` is the count (01/02) or the
    coil value (05)."""

    unit: int
    function: int
    start: int
    value: int


@dataclass(frozen=True)
class _Refusal:
    code: int


def _unit(unit: int) -> int:
    # 0 is the broadcast address: nobody answers it, so it is never ours.
    if isinstance(unit, bool) or not isinstance(unit, int) or not 1 <= unit <= 247:
        raise ValueError(f"a Modbus unit must be 1..247, got {unit!r}")
    return unit


def _crc(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


def _u(name: str, value: int, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{name} must be 0..{top}, got {value!r}")
    return value


def read_bits_request(unit: int, function: int, start: int, count: int) -> bytes:
    if function not in (READ_COILS, READ_INPUTS):
        raise ValueError(f"not a bit read: function {function!r}")
    _u("count", count, 2000)
    return _crc(bytes((_unit(unit), function))
                + _u("start", start, 0xFFFF).to_bytes(2, "big") + count.to_bytes(2, "big"))


def write_coil_request(unit: int, coil: int, on: bool) -> bytes:
    value = COIL_ON if on else COIL_OFF
    return _crc(bytes((_unit(unit), WRITE_COIL))
                + _u("coil", coil, 0xFFFF).to_bytes(2, "big") + value.to_bytes(2, "big"))


def write_coil_answer(unit: int, coil: int, on: bool) -> bytes:
    return write_coil_request(unit, coil, on)  # the module echoes the request


def bits_answer(unit: int, function: int, bits: Sequence[bool]) -> bytes:
    data = bytearray((len(bits) + 7) // 8)
    for i, on in enumerate(bits):
        if on:
            data[i // 8] |= 1 << (i % 8)
    return _crc(bytes((_unit(unit), function, len(data))) + bytes(data))


def exception_answer(unit: int, function: int, code: int) -> bytes:
    return _crc(bytes((_unit(unit), function | EXCEPTION_BIT, _u("code", code, 255))))


def _crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16_modbus(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def find_answer(
    buf: bytes, unit: int, function: int, count: int = 0
) -> Found[list[bool] | bytes | _Refusal] | None:
    """The module's answer to ``function``: the bits (01/02; ``count`` of them),
    the echoed frame (05), or a refusal (an exception answer)."""
    for i in range(len(buf) - 4):
        if buf[i] != unit:
            continue
        fn = buf[i + 1]
        if fn == function | EXCEPTION_BIT and _crc_ok(buf[i : i + 5]):
            return Found(_Refusal(buf[i + 2]), i, i + 5)
        if fn != function:
            continue
        if function == WRITE_COIL:
            if i + 8 <= len(buf) and _crc_ok(buf[i : i + 8]):
                return Found(bytes(buf[i : i + 8]), i, i + 8)
            continue
        n = buf[i + 2]
        end = i + 3 + n + 2
        if n == (count + 7) // 8 and end <= len(buf) and _crc_ok(buf[i:end]):
            data = buf[i + 3 : i + 3 + n]
            return Found([bool(data[k // 8] >> (k % 8) & 1) for k in range(count)], i, end)
    return None


def find_request(buf: bytes) -> Found[Request] | None:
    """The first eight-byte request in ``buf`` (any function; the module's side)."""
    for i in range(len(buf) - 7):
        frame = buf[i : i + 8]
        if 1 <= frame[0] <= 247 and not frame[1] & EXCEPTION_BIT and _crc_ok(frame):
            start = int.from_bytes(frame[2:4], "big")
            value = int.from_bytes(frame[4:6], "big")
            return Found(Request(frame[0], frame[1], start, value), i, i + 8)
    return None


class ChargeSwitch:
    """The relay/IO module at Modbus ``address`` whose first ``channels`` coils
    switch the chargers (and whose inputs read extra sensors)."""

    name: ClassVar[str] = "modbus-io"
    baudrate: ClassVar[int] = 9600
    addresses: ClassVar[range] = range(1, 248)

    def __init__(self, bus: Bus, address: int = 1, channels: int = 8) -> None:
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
            raise ValueError(f"a Modbus address is 1..247, got {address!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or not (
            1 <= channels <= MAX_CHANNELS
        ):
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels!r}")
        self.bus = bus
        self.address = address
        self.channels = channels

    def __repr__(self) -> str:
        return f"<ChargeSwitch {self.describe()} on {self.bus.port}>"

    def describe(self) -> str:
        return f"modbus-io module {self.address} ({self.channels} channels)"

    def set(self, channel: int, on: bool) -> None:
        """Switch ``channel`` (1..channels) on or off; raises BoardOffline,
        ModuleRefused, or ValueError for a channel the module does not have."""
        if isinstance(channel, bool) or not isinstance(channel, int) or not (
            1 <= channel <= self.channels
        ):
            raise ValueError(f"{self.describe()} has channels 1..{self.channels}, got {channel!r}")
        request = write_coil_request(self.address, channel - 1, bool(on))
        got = self._ask(request, WRITE_COIL, 0, f"switch channel {channel} {'on' if on else 'off'}")
        if got != request:
            raise ModuleRefused(self.address, WRITE_COIL, 3)  # echoed another value

    def coils(self) -> list[bool]:
        """The relays, channel 1 first."""
        request = read_bits_request(self.address, READ_COILS, 0, self.channels)
        return self._ask(request, READ_COILS, self.channels, "read coils")

    def inputs(self) -> list[bool]:
        """The discrete inputs, channel 1 first."""
        request = read_bits_request(self.address, READ_INPUTS, 0, self.channels)
        return self._ask(request, READ_INPUTS, self.channels, "read inputs")

    def _ask(self, request: bytes, function: int, count: int, what: str):
        got = self.bus.transact(
            request, lambda buf: find_answer(buf, self.address, function, count),
            what=f"{self.describe()}: {what}", timeout=TIMEOUT, attempts=ATTEMPTS,
        )
        if isinstance(got, _Refusal):
            raise ModuleRefused(self.address, function, got.code)
        return got


# Charging drivers by the name ``lockers.charging.driver`` uses.
CHARGE_SWITCHES: dict[str, type[ChargeSwitch]] = {ChargeSwitch.name: ChargeSwitch}
