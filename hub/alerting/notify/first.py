"""Which notifications go first: sent before lesser ones waiting, never folded.

Issue 19 names them: a **tamper** (someone is in the lockers), a **heater
lockout** (the agent cut the heater: no hot water until someone comes), and a
**station offline that was the last of its group online** (the riders of that
area have no station left). Severity is not the test: every ``station_offline``
is critical, so a town's power cut would make twenty notices that all jump the
queue and use the pace kept for urgent ones, while the one that says "the whole
area is dark" waits behind them; ``water_empty`` is critical too, yet a digest
line says it as well ("12 stations: water empty — …"); and ``heater_lockout`` is
a warning. A route's routing, escalation and reminders still go by severity
(docs/routing.md); this only orders and folds what a robot is sent.

Decided once, as the delivery is stored (``Outbox.enqueue``), from the fleet's
live view of that moment (``Fleet.last_of_group_down``), and kept on the row
(``notifications.goes_first``): a restarted hub, a digest being folded and the
sender all judge the row alike, whatever the fleet did since.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: Rules whose every notice goes first, whatever the fleet.
ALWAYS_FIRST = frozenset({"tamper", "heater_lockout"})
#: The rule that goes first only for the last station of its group online.
OFFLINE = "station_offline"


def goes_first(alert: Mapping[str, Any],
               last_of_group_down: Callable[[str], bool] | None) -> bool:
    """Whether notices of ``alert`` (the contract's Alert object) go first now;
    ``last_of_group_down(sid)``: the fleet's judgement (None: no fleet, and no
    station_offline goes first)."""
    rule = alert.get("rule")
    if not isinstance(rule, str):
        return False
    if rule in ALWAYS_FIRST:
        return True
    if rule != OFFLINE or last_of_group_down is None:
        return False
    sid = alert.get("sid")
    return isinstance(sid, str) and 0 < len(sid) <= 32 and bool(last_of_group_down(sid))
