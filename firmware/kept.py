"""How many finished borrow attempts and return claims the station keeps.

The kiosk follows an attempt (or a claim) for the seconds it takes a rider to
take or return a bank, and reads it once more when it shows the outcome; both
are kept ten minutes after they finish so a slow kiosk still finds them. A
script on the kiosk's machine sending borrows for made-up rider ids (each is
refused at once, and each refusal is a finished attempt) would otherwise grow
that memory for ten minutes at whatever rate it can send, and every request
scans what is kept. So at most ``MAX_FINISHED`` finished ones are kept, the
oldest forgotten first; one still under way is never forgotten (there are
never more of those than slots).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_FINISHED", "forget_finished"]

#: Finished attempts (or claims) kept at most, each ~0.5 KB: a busy station
#: finishes a few hundred a day.
MAX_FINISHED = 1000


def forget_finished(kept: dict[str, Any], now: float, keep_for: float,
                    at_most: int = MAX_FINISHED) -> None:
    """Drop from ``kept`` the oldest finished entries while there are more than
    ``at_most`` or they finished over ``keep_for`` seconds before ``now``.

    Values have ``finished_at`` (monotonic; None while under way, never dropped).
    The walk goes oldest first (insertion order) and stops at the first finished
    one it keeps, so a call costs what it drops, not what is kept: it runs on
    every request. One made earlier and finished later (a bank being taken) can
    hold back a younger refusal's end by the seconds it took; none is dropped early.
    """
    doomed: list[str] = []
    excess = len(kept) - at_most
    for key, value in kept.items():
        if value.finished_at is None:
            continue
        if len(doomed) < excess or now - value.finished_at > keep_for:
            doomed.append(key)
        else:
            break
    for key in doomed:
        del kept[key]
