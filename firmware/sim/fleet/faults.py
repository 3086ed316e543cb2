"""Faults: scripted on the command line, or drawn at random.

    --fault power_cut:sim-00007@30+60    # at 30 s (after the fleet is up), for 60 s
    --fault tamper:sim-00002@5           # at 5 s, until the end

Times are seconds of the simulator's clock (wall seconds; ``--speed`` scales the
riders and the random faults, not these). ``power_cut``: the station vanishes
without a DISCONNECT (its socket is shut), so the broker sends its will at once.
``network_cut``: its link goes silent (nothing read or written, no FIN), so the
broker sends its will after 1.5 keepalives; events made meanwhile wait in its
outbox. ``board_jam``, ``sensor_failure``, ``tamper``: events and State.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("power_cut", "network_cut", "board_jam", "sensor_failure", "tamper")
LINK = ("power_cut", "network_cut")
#: Simulated seconds a random fault lasts: 1 to 30 minutes.
RANDOM_SPAN = (60.0, 1800.0)
_SPEC = re.compile(r"^([a-z_]{1,20}):([a-z0-9][a-z0-9-]{0,31})@([0-9]{1,7}(?:\.[0-9]{1,3})?)"
                   r"(?:\+([0-9]{1,7}(?:\.[0-9]{1,3})?))?$")


class FaultError(ValueError):
    """A --fault that cannot be read."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    sid: str
    at: float  # seconds after the fleet is up
    lasts: float | None  # None: until the end


def parse_fault(text: str) -> Fault:
    match = _SPEC.match(text)
    if not match:
        raise FaultError(f"--fault {text[:80]!r}: expected KIND:SID@SECONDS[+SECONDS], "
                         "e.g. power_cut:sim-00007@30+60")
    kind, sid, at, lasts = match.groups()
    if kind not in KINDS:
        raise FaultError(f"--fault {text!r}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if sid == "hub":
        raise FaultError("--fault: 'hub' is not a station id")
    return Fault(kind, sid, float(at), None if lasts is None else float(lasts))
