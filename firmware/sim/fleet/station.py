"""One simulated station: its counters (rev, seq, banks, water), the contract
payloads it publishes (protocol.messages), what a visit does, what a fault does,
and its answers to the hub's commands.

It keeps the events it created (the newest ``KEEP``) so that it can answer a
``replay`` as the agent does; older seqs are answered as ``missing``.
"""

from __future__ import annotations

import hashlib
from collections import deque

from protocol import messages as m
from protocol.topics import Kind, topic

KEEP = 1000
VERSION = "sim-fleet"
SLOTS = 8
DOORS = ["entrance", "locker_panel"]
HW = {"slots": SLOTS, "doors": DOORS, "dispenser": True}


def _hex(*parts: object, n: int) -> str:
    return hashlib.blake2s("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:n]


class FleetStation:
    """A healthy station until a fault says otherwise. Not thread-safe: one loop owns it."""

    __slots__ = (
        "banks",
        "birth",
        "birth_seq",
        "birth_ts",
        "charges",
        "counters",
        "dirty",
        "epoch",
        "faults",
        "index",
        "kept",
        "level",
        "level_state",
        "ml",
        "out",
        "outbox",
        "rev",
        "seq",
        "sid",
        "t_cmd",
        "t_event",
        "t_result",
        "t_state",
        "t_status",
    )

    def __init__(self, sid: str, index: int, seed: int) -> None:
        self.sid = sid
        self.index = index
        self.epoch = _hex(seed, sid, n=8)
        self.rev = 0
        self.birth = 0
        self.birth_ts = -1
        self.birth_seq = 0
        self.seq = 0
        self.banks: list[str | None] = [f"S{index:06d}{s}" if s % 4 else None
                                        for s in range(SLOTS)]
        self.charges = [100 if b else 0 for b in self.banks]
        self.out = [f"S{index:06d}{s}" for s, b in enumerate(self.banks) if b is None]
        self.level = 0.9
        self.level_state = "ok"
        self.ml = 0
        self.counters = [0, 0, 0]  # visits, borrows, returns
        self.faults: set[str] = set()
        self.kept: deque[bytes] = deque(maxlen=KEEP)  # seqs seq-len(kept)+1 .. seq
        self.outbox: list[bytes] = []  # events made while the link was down
        self.dirty = False
        self.t_status = topic(sid, Kind.STATUS)
        self.t_state = topic(sid, Kind.STATE)
        self.t_event = topic(sid, Kind.EVENT)
        self.t_cmd = topic(sid, Kind.CMD)
        self.t_result = topic(sid, Kind.CMD_RESULT)

    # -- status -----------------------------------------------------------

    def next_birth(self) -> bytes:
        """Take the rev of the next birth and return the will that goes with it."""
        self.rev += 1
        self.birth = self.rev
        self.birth_ts = -1
        return m.encode(m.Status.will(self.sid, self.epoch, self.birth), validate=False)

    def online(self, ts: int) -> bytes:
        """This connection's birth; a ``rebirth`` republishes it as it was (the agent's
        firmware/link.py does the same), so its will still matches."""
        if ts != self.birth_ts:
            self.birth_ts, self.birth_seq = ts, self.seq
        msg = m.Status.online(self.sid, self.epoch, self.birth_ts, True, self.birth,
                              self.birth_seq, VERSION, HW)
        return m.encode(msg, validate=False)

    def shutdown(self, ts: int) -> bytes:
        self.rev += 1
        msg = m.Status.shutdown(self.sid, self.epoch, ts, True, self.rev, self.birth, self.seq)
        return m.encode(msg, validate=False)

    def state(self, ts: int) -> bytes:
        self.rev += 1
        self.dirty = False
        jam = "board_jam" in self.faults
        slots = []
        for i, bank in enumerate(self.banks):
            fault = "lock_jammed" if jam and i == 0 else None
            if bank is not None:
                self.charges[i] = min(100, self.charges[i] + 1)
            slots.append(m.Slot(i + 1, bank, self.charges[i] if bank else None,
                                bank is not None and self.charges[i] < 100, True, fault,
                                27 if bank else None, 100 if bank else None))
        sensor = "sensor_failure" in self.faults
        msg = m.State(
            self.sid, self.epoch, ts, True, self.rev, self.seq,
            lockers=m.Lockers(True, tuple(slots)),
            dispenser=m.Dispenser(True, None if sensor else round(self.level, 3),
                                  "unknown" if sensor else self.level_state, 92.0, True,
                                  False, "sensor" if sensor else None, self.ml),
            doors={"entrance": False, "locker_panel": "tamper" in self.faults},
            health=m.Health(cpu_temp_c=52.0, undervoltage=False, throttled=False,
                            disk_free_mb=2100, uptime_s=3600, outbox=len(self.outbox),
                            kiosk="ok"),
            counters=m.Counters(*self.counters))
        return m.encode(msg, validate=False)

    # -- events -----------------------------------------------------------

    def event(self, ts: int, etype: str, data: dict | None) -> tuple[int, bytes]:
        """Create the next event (its seq is kept for replays)."""
        self.seq += 1
        self.dirty = True
        payload = m.encode(m.Event(self.sid, self.epoch, ts, True, self.seq, etype, data),
                           validate=False)
        self.kept.append(payload)
        return self.seq, payload

    def visit(self, rng, ml_per_visit: float) -> list[tuple[str, dict | None]]:
        """A rider comes in: a visit, maybe a borrow or a return, water drawn."""
        self.counters[0] += 1
        out: list[tuple[str, dict | None]] = [("visit", {"count": 1})]
        r = rng.random()
        rider = "r:" + _hex(self.sid, self.counters[0], n=24)
        if r < 0.25 and "board_jam" in self.faults:
            out.append(("unlock_failed", {"slot": 1, "reason": "jammed"}))
        elif r < 0.25:
            ready = [i for i, b in enumerate(self.banks) if b and self.charges[i] >= 80]
            if ready:
                i = rng.choice(ready)
                bank, self.banks[i] = self.banks[i], None
                self.out.append(bank)
                self.counters[1] += 1
                out.append(("bank_borrowed", {"slot": i + 1, "bank": bank,
                                              "charge": self.charges[i], "rider": rider}))
        elif r < 0.45 and self.out:
            empty = [i for i, b in enumerate(self.banks) if b is None]
            if empty:
                i = empty[0]
                bank = self.out.pop(0)
                self.banks[i], self.charges[i] = bank, rng.randrange(20, 60)
                self.counters[2] += 1
                out.append(("bank_returned", {"slot": i + 1, "bank": bank,
                                              "charge": self.charges[i], "rider": rider}))
        if "sensor_failure" not in self.faults:
            out.extend(self.draw_water(ml_per_visit))
        return out

    def draw_water(self, ml: float) -> list[tuple[str, dict | None]]:
        """``ml`` drawn from a 20 l tank; staff refill it when it runs low."""
        self.ml += int(ml)
        self.level = max(0.0, self.level - ml / 20_000)
        new = "ok" if self.level > 0.25 else "low" if self.level > 0.05 else "empty"
        out: list[tuple[str, dict | None]] = []
        if new != self.level_state:
            self.level_state = new
            out.append(("water_level", {"level_state": new, "level": round(self.level, 3)}))
        if new == "empty":
            self.level, self.level_state = 0.98, "ok"
            out.append(("refilled", {"what": "water", "staff": "sim"}))
            out.append(("water_level", {"level_state": "ok", "level": 0.98}))
        return out

    def fault_events(self, kind: str, start: bool) -> list[tuple[str, dict | None]]:
        """What the station records when a fault starts or ends (not the link faults)."""
        if start:
            self.faults.add(kind)
        else:
            self.faults.discard(kind)
        if kind == "board_jam":
            return [("slot_fault" if start else "slot_fault_cleared",
                     {"slot": 1, "fault": "lock_jammed"})]
        if kind == "sensor_failure":
            return [("dispenser_fault" if start else "dispenser_fault_cleared",
                     {"fault": "sensor"})]
        if kind == "tamper":
            door = {"door": "locker_panel"}
            if start:
                return [("door_opened", door), ("tamper", door)]
            return [("door_closed", door)]
        return []

    # -- commands ---------------------------------------------------------

    def answer(self, payload: bytes, now_ms: int) -> tuple[list[bytes], bytes | None, str]:
        """The events to re-send and the CommandResult for one ``cmd`` payload
        (None when it cannot be read as a command: nothing to answer)."""
        try:
            cmd = m.decode(Kind.CMD, payload)
        except Exception:  # a hostile or broken command: no id to answer
            return [], None, "unreadable"
        resend: list[bytes] = []
        data: dict | None = None
        error = cmd.check_args()
        if error is None and cmd.is_expired(now_ms):
            error = "expired"
        if error is None and cmd.cmd == "replay":
            resend, missing = self.replay(cmd.args["from_seq"], cmd.args["to_seq"])
            data = {"count": len(resend), "missing": missing}
        elif error is None and cmd.cmd == "unlock":
            slot = cmd.args["slot"]
            if slot > SLOTS:
                error = "bad_args"
            elif "board_jam" in self.faults and slot == 1:
                error = "jammed"
            else:
                data = {"slot": slot, "locked": False}
        self.rev += 1
        result = m.CommandResult(self.sid, self.epoch, now_ms, True, self.rev, cmd.id,
                                 error is None, error, data)
        return resend, m.encode(result, validate=False), cmd.cmd

    def replay(self, lo: int, hi: int) -> tuple[list[bytes], list[list[int]]]:
        first = self.seq - len(self.kept) + 1  # the oldest seq still kept
        hi_ = min(hi, self.seq)
        missing: list[list[int]] = []
        if lo < first:
            missing.append([lo, min(hi, first - 1)])
        if hi > self.seq:
            missing.append([max(lo, self.seq + 1), hi])
        start = max(lo, first)
        events = [self.kept[s - first] for s in range(start, hi_ + 1)] if start <= hi_ else []
        return events, missing
