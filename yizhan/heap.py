"""Giving freed memory back to the system (glibc's ``malloc_trim``).

A burst the hub absorbs — a reconnect storm of 100 000 stations, the writer's
queue 70 000 ops deep for a few seconds — is freed as soon as it is written,
but glibc keeps the pages it freed inside its heap: the hub's resident memory
stays at the burst's peak (~100 MB above its steady state at 100 000
stations, docs/benchmarks.md) until the next burst reuses them. ``give_back``
asks glibc to return every whole free page; the hub calls it after its
scheduled garbage collections (once a minute). On another C library (musl)
it does nothing.

>>> give_back() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _trim():  # -> the C function, or None where there is none
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def give_back() -> bool:
    """Return the heap's free pages to the system; whether any were."""
    trim = _trim()
    return bool(trim(0)) if trim is not None else False
