"""The ground-truth log: one JSON object a line, what really happened, for a test
(or a person) to hold against the hub's uptime and events.

Every line has ``t`` (Unix ms on the simulator's clock), ``sid`` and ``what``:

- ``online``: the broker accepted the connection and the birth was sent (``birth``);
- ``offline``: ``reason`` ``power_cut`` (the broker sends the will at once),
  ``network_cut`` (the will comes 1.5 keepalives later), ``lost`` (the broker or
  the network dropped us), ``shutdown`` (a clean stop); ``last_sent``: the time of
  the last message the station published before, where the hub starts the outage;
- ``event``: ``epoch``, ``seq``, ``type`` of every event the station created;
- ``fault`` / ``fault_cleared``: ``kind``;
- ``replay``: a replay answered (``count``, ``missing``);
- and a last line ``what: summary`` (no ``sid``) with the run's totals.
"""

from __future__ import annotations

import json
from typing import IO


class Truth:
    def __init__(self, out: IO[str] | None) -> None:
        self.out = out
        self.lines = 0

    def write(self, t_ms: int, sid: str | None, what: str, **data: object) -> None:
        if self.out is None:
            return
        rec = {"t": t_ms, "what": what, **data}
        if sid is not None:
            rec["sid"] = sid
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self.out is not None:
            self.out.flush()
            self.out.close()
