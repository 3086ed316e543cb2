"""Whether the Pi's clock is NTP-synchronised (contract §2 ``synced``).

A Raspberry Pi has no battery clock: until NTP syncs after boot its time can be
days off, and the hub must date such events by its own receive time. The kernel
knows: ``adjtimex(2)`` returns ``TIME_ERROR`` while the clock is unsynchronised
(the STA_UNSYNC status bit), which is what ``timedatectl``'s
``NTPSynchronized`` reports too. Read with ctypes, no dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields matter here, the
    # padding keeps the kernel from writing past the end of our buffer.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


class KernelClockSync:
    """``synced()`` is True while the kernel says the clock is synchronised."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(name, use_errno=True)
        self._warned = False

    def synced(self) -> bool:
        tx = _Timex()  # modes = 0: read only
        state = self._libc.adjtimex(ctypes.byref(tx))
        if state < 0:
            if not self._warned:
                self._warned = True
                log.warning("adjtimex failed (errno %d); reporting the clock unsynced",
                            ctypes.get_errno())
            return False
        return state != TIME_ERROR


class AssumedSynced:
    """The simulation runs on the host's clock, which is taken as synchronised.

    ``is_synced`` is the kernel's flag of a simulated Pi: set it False to play one
    that booted on yesterday's time (fake-hwclock) before NTP stepped it.
    """

    def __init__(self) -> None:
        self.is_synced = True

    def synced(self) -> bool:
        return self.is_synced
