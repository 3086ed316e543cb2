"""A station's last State, packed small for the hub's memory.

The fleet keeps each station's last State (hub/fleet/view.py) and 100 000
stations are one hub's load: as decoded objects a State took ~2.7 kB of small
objects the garbage collector walked, as its dict ~3.9 kB, as JSON ~1.4 kB.
Deflated against a preset dictionary — a State as the contract shapes it
(docs/protocol.md §5), whose key names, enums and layout every State repeats —
it takes ~130 bytes, one object the collector never walks. Packing costs
~10 µs, unpacking ~3 µs alone; zlib gives up the GIL for each call, so the
fleet packs on the scheduler's thread (``Fleet.pack_states``), never on the
ingest's (docs/hub-internals.md, "Memory and the garbage collector").

The packed bytes live only in this process's memory: the dictionary may change
between versions without any migration.

>>> text = _PRESET.decode()
>>> unpack(pack(text)) == _PRESET
True
>>> len(pack(text)) < 40
True
"""

from __future__ import annotations

import zlib

from protocol import messages as m


def _preset() -> bytes:
    """A typical State's compact JSON: the slots of a twelve-slot locker (one
    empty, one estimated), the dispenser, two doors, the Pi's health, the
    counters, in the order ``State.to_dict`` and the agent write them. The
    most frequent strings go last, where deflate finds them nearest."""
    slots = tuple(
        m.Slot(n, None if n == 12 else f"B0001{n:03d}", None if n == 12 else 100 - n,
               n % 3 == 0, True, "charger_fault" if n == 7 else None, 26 + n % 5,
               100 + 37 * n, estimated=n == 11)
        for n in range(1, 13))
    state = m.State(
        "yh-chumen-01", "9f2c01ab", 1_760_000_000_000, True, 1000, 1000,
        lockers=m.Lockers(True, slots),
        dispenser=m.Dispenser(True, 0.75, "ok", 92.5, True, False, None, 123456),
        doors={"entrance": False, "locker_panel": False},
        health=m.Health(cpu_temp_c=51.5, undervoltage=False, throttled=False,
                        disk_free_mb=2100, uptime_s=86400, outbox=0, kiosk="ok"),
        counters=m.Counters(1234, 567, 560))
    return m.encode(state, validate=False)


_PRESET = _preset()
LEVEL = 6


def pack(text: str | bytes) -> bytes:
    """``text`` (JSON) deflated against the preset State."""
    if isinstance(text, str):
        text = text.encode()
    z = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=_PRESET)
    return z.compress(text) + z.flush()


def unpack(data: bytes) -> bytes:
    """What :func:`pack` was given, as UTF-8."""
    z = zlib.decompressobj(-zlib.MAX_WBITS, zdict=_PRESET)
    return z.decompress(data) + z.flush()
