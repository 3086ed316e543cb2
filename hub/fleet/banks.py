"""The power banks of a station's locker, by state (contract §12): one count for
``/metrics``, the API's ``chargers_ready``, the ``chargers_low`` rule and the
notifications' "bring n charged banks".

>>> bank_states({"lockers": {"slots": [{"bank": "PB1", "charge": 96, "fault": None}]}}, 80)
{'ready': 1, 'charging': 0, 'faulty': 0}

A lock-control cabinet cannot read its banks (contract §5, ``estimated``): such
a slot says ``bank: null`` with a bank inside, and ``charge`` (the station's
estimate, never more than the bank can have) is not null exactly then. Those
banks count like any other; :func:`estimated_banks` says how many of them the
station estimates rather than measures.
"""

from __future__ import annotations

from typing import Any


def bank_states(state: dict[str, Any] | None, threshold: int) -> dict[str, int] | None:
    """Present banks by state, each in exactly one: ``faulty`` when its slot reports
    a fault, else ``ready`` at ``threshold`` (the lending threshold, config
    ``policy.min_charge``) or above, else ``charging``; None without a locker."""
    lockers = (state or {}).get("lockers")
    if not lockers:
        return None
    out = {"ready": 0, "charging": 0, "faulty": 0}
    for slot in lockers.get("slots") or ():
        if not holds_bank(slot):
            continue
        if slot.get("fault"):
            out["faulty"] += 1
        elif (slot.get("charge") or 0) >= threshold:
            out["ready"] += 1
        else:
            out["charging"] += 1
    return out


def holds_bank(slot: dict[str, Any]) -> bool:
    """A bank is in ``slot``: its id is known, or the station estimates it."""
    if slot.get("bank"):
        return True
    return slot.get("estimated") is True and slot.get("charge") is not None


def estimated_banks(state: dict[str, Any] | None) -> int | None:
    """Banks whose charge is the station's estimate (no telemetry); None without
    a locker."""
    lockers = (state or {}).get("lockers")
    if not lockers:
        return None
    return sum(1 for slot in lockers.get("slots") or ()
               if slot.get("estimated") is True and holds_bank(slot))
