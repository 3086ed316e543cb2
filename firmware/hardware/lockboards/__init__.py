"""Lock-control boards (锁控板) on RS-485: one driver a protocol, several boards
on one bus, drivers registered by name (see ``base`` and docs/hardware.md).

Importing the package registers every driver in :data:`DRIVERS`.
"""

from firmware.hardware.lockboards.base import (
    DRIVERS,
    BadLock,
    BoardDriver,
    BoardOffline,
    Capabilities,
    Latch,
    LockReading,
    register,
)
from firmware.hardware.lockboards.bus import Bus
from firmware.hardware.lockboards.kerong import KerongCU16
from firmware.hardware.lockboards.lock8a import Lock8A
from firmware.hardware.lockboards.modbus_io import CHARGE_SWITCHES, ChargeSwitch, ModuleRefused
from firmware.hardware.lockboards.yzlb1 import YZLB1

__all__ = [
    "CHARGE_SWITCHES",
    "DRIVERS",
    "YZLB1",
    "BadLock",
    "BoardDriver",
    "BoardOffline",
    "Bus",
    "Capabilities",
    "ChargeSwitch",
    "KerongCU16",
    "Latch",
    "Lock8A",
    "LockReading",
    "ModuleRefused",
    "register",
]
