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

__all__ = [
    "DRIVERS",
    "BadLock",
    "BoardDriver",
    "BoardOffline",
    "Capabilities",
    "Latch",
    "LockReading",
    "register",
]
