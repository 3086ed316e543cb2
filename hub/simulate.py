"""Simulated months of stations for the service report (``yizhan sim month``),
fed through the hub's ingest (``Fleet.apply_status`` / ``apply_event``: what
hub/mqtt/ingest.py calls for each decoded message) on a ManualClock, with a
fixed seed: the same seed gives the same months.

Each hour every online station counts visits at the door, lends and takes back
chargers, now and then runs low on water (and is refilled some hours later),
and now and then drops off the network for some hours. A station with a flow
meter (two in three: not the third, sixth, … configured) reports the cups
drawn (``water_drawn``), and every station sends a State whose ready chargers
wander, which the hub's alert engine judges (``chargers_low`` and its
resolution: the report's time to refill chargers). What was sent is kept
in ``Simulated`` (and written as JSON lines with ``--log``) so that a test can
work out the report's figures on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from protocol import messages as m
from protocol.topics import Kind

HOUR_MS = 3_600_000
FLUSH_S = 300.0
EPOCH = "9f2c01ab"


@dataclass
class Sent:
    sid: str
    type: str
    at_ms: int
    data: dict


@dataclass
class Simulated:
    sids: list[str]
    events: list[Sent] = field(default_factory=list)
    #: Each station's outages as [start, end) on the hub clock (end None: still down).
    offline: dict[str, list[list[int | None]]] = field(default_factory=dict)
    #: The stations with a flow meter (they send ``water_drawn``).
    metered: list[str] = field(default_factory=list)
    #: Each State sent: (sid, hub clock ms, chargers ready in it).
    ready: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class _Station:
    sid: str
    seq: int = 0
    birth: int = 5000
    water: str = "ok"
    back_at: int | None = None  # while offline: when it comes back
    out: list[str] = field(default_factory=list)  # banks lent here, not yet back
    rev: int = 5000
    metered: bool = False
    ready: int = 6  # chargers ready to lend, as the State shows them


def midnight_ms(day: dt.date, tz: dt.tzinfo) -> int:
    return int(dt.datetime.combine(day, dt.time(), tz).timestamp() * 1000)


def simulate(hub: Any, sids: list[str], seed: int, until_ms: int) -> Simulated:
    """Run the stations hour by hour from the hub clock's now to ``until_ms``."""
    rng = random.Random(seed)
    # Cups and chargers from their own stream: the visits, loans, water and
    # outages of a seed stay what they were before these were simulated.
    more = random.Random(f"{seed}/cups-chargers")
    sim = Simulated(list(sids), offline={sid: [] for sid in sids})
    stations = [_Station(sid, metered=i % 3 != 2) for i, sid in enumerate(sids)]
    sim.metered = [st.sid for st in stations if st.metered]
    for st in stations:
        _birth(hub, st)
    banks = 0
    while hub.clock.ms() < until_ms:
        now = hub.clock.ms()
        for st in stations:
            came_back = False
            if st.back_at is not None:
                if now < st.back_at:
                    continue
                st.back_at, came_back = None, True
                sim.offline[st.sid][-1][1] = now
                _birth(hub, st)
            _event(hub, sim, st, "visit", {"count": rng.randint(0, 9)})
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                banks += 1
                bank = f"PB{banks:06X}"
                st.out.append(bank)
                _event(hub, sim, st, "bank_borrowed", {
                    "slot": rng.randint(1, 12), "bank": bank, "charge": rng.randint(60, 100),
                    "rider": f"r:{rng.getrandbits(96):024x}"})
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                if not st.out:
                    break
                bank = st.out.pop(rng.randrange(len(st.out)))
                _event(hub, sim, st, "bank_returned", {
                    "slot": rng.randint(1, 12), "bank": bank, "charge": rng.randint(5, 60),
                    "rider": None})
            _water(hub, sim, st, rng)
            if st.metered and (draws := more.choice((0, 1, 2, 3, 5, 8))):
                _event(hub, sim, st, "water_drawn", {
                    "draws": draws, "ml": sum(more.randint(150, 350) for _ in range(draws))})
            st.ready = max(0, min(10, st.ready + more.choice((-2, -1, -1, 0, 0, 1, 1, 2))))
            _state(hub, sim, st)
            # About three outages a month a station; never in the hour it came back,
            # so that each outage is one the ledger sees apart.
            if not came_back and rng.random() < 0.004:
                hours = rng.randint(1, 12)
                st.back_at = now + hours * HOUR_MS
                sim.offline[st.sid].append([now, None])
                _death(hub, st)
        hub.clock.advance(3600)
        hub.ledger.hub_alive(hub.clock.ms())
    # Months of events are many commits: more than the writer's usual five seconds
    # on PostgreSQL on a busy machine.
    if not hub.writer.flush(timeout=FLUSH_S):
        raise RuntimeError(f"the hub's writer did not commit the simulation in {FLUSH_S} s")
    return sim


def _water(hub: Any, sim: Simulated, st: _Station, rng: random.Random) -> None:
    if st.water == "ok" and rng.random() < 0.03:
        st.water = "low"
    elif st.water == "low" and rng.random() < 0.15:
        st.water = "empty"
    elif st.water != "ok" and rng.random() < 0.25:
        st.water = "ok"
    else:
        return
    level = {"ok": 0.9, "low": 0.2, "empty": 0.02}[st.water]
    _event(hub, sim, st, "water_level", {"level_state": st.water, "level": level})


def _event(hub: Any, sim: Simulated, st: _Station, type_: str, data: dict) -> None:
    now = hub.clock.ms()
    st.seq += 1
    event = {"v": 1, "sid": st.sid, "epoch": EPOCH, "ts": now, "synced": True,
             "seq": st.seq, "type": type_, "data": data}
    hub.fleet.apply_event(m.from_dict(Kind.EVENT, event, topic_sid=st.sid), now)
    sim.events.append(Sent(st.sid, type_, now, data))


def _state(hub: Any, sim: Simulated, st: _Station) -> None:
    """A State with ``st.ready`` chargers ready (and two charging), judged by the
    alert engine at once (its thread is not running here)."""
    now = hub.clock.ms()
    st.rev += 1
    level = {"ok": 0.9, "low": 0.2, "empty": 0.02}[st.water]
    slots = []
    for n in range(1, 13):
        # Bank ids of their own: never one of the loans' PB…, whose return a
        # bank seen in a slot would confirm.
        bank = f"SB{n:02d}{st.sid[-2:]}" if n <= st.ready + 2 else None
        charge = None if bank is None else 96 if n <= st.ready else 30
        slots.append({"slot": n, "bank": bank, "charge": charge, "charging": charge == 30,
                      "locked": True, "fault": None, "temp_c": None, "cycles": None})
    state = {"v": 1, "sid": st.sid, "epoch": EPOCH, "ts": now, "synced": True,
             "rev": st.rev, "last_seq": st.seq,
             "lockers": {"online": True, "slots": slots},
             "dispenser": {"online": True, "level": level, "level_state": st.water,
                           "temp_c": 92.0, "heater": True, "heater_lockout": False,
                           "fault": None, "dispensed_ml": None},
             "doors": {"entrance": False},
             "health": {"kiosk": "ok"},
             "counters": {"visits": 0, "borrows": 0, "returns": 0}}
    hub.fleet.apply_state(m.from_dict(Kind.STATE, state, topic_sid=st.sid), now)
    hub.engine.evaluate(st.sid, now)
    sim.ready.append((st.sid, now, st.ready))


def _birth(hub: Any, st: _Station) -> None:
    now = hub.clock.ms()
    st.rev += 1
    st.birth = st.rev  # a birth's rev is its birth number; States count on from it
    status = {"v": 1, "sid": st.sid, "epoch": EPOCH, "ts": now, "synced": True,
              "rev": st.rev, "state": "online", "birth": st.birth, "last_seq": st.seq,
              "agent": {"version": "1.0.0"},
              "hw": {"slots": 12, "doors": ["entrance"], "dispenser": True}}
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=st.sid), now)


def _death(hub: Any, st: _Station) -> None:
    now = hub.clock.ms()
    status = {"v": 1, "sid": st.sid, "epoch": EPOCH, "state": "offline", "reason": "lost",
              "birth": st.birth, "last_seq": st.seq}
    hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=st.sid), now)


#: The most months one run simulates: a year and a quarter is 11 000 hours.
MOST_MONTHS = 15


def run(config_path: str, seed: int, first: str, months: int, log: str | None) -> int:
    """``yizhan sim month``: the hub's configured stations through ``months``
    calendar months from ``first`` (YYYY-MM), written to the hub's database.
    Refuses a database that holds any event: it is for a demo or a test hub,
    never one with real stations' history."""
    import sqlalchemy as sa

    from hub.config import load_hub_config
    from hub.console.uptime import timezone_of
    from hub.reports.period import BadPeriod, Period
    from hub.service import Hub
    from hub.storage.schema import events
    from yizhan.clock import ManualClock

    try:
        period = Period.parse(first)
        if period.kind != "month":
            raise BadPeriod("--from must be a month YYYY-MM")
    except BadPeriod as err:
        print(f"yizhan sim month: {err}", file=sys.stderr)
        return 2
    if not 1 <= months <= MOST_MONTHS:
        print(f"yizhan sim month: --months must be 1..{MOST_MONTHS}", file=sys.stderr)
        return 2
    config = load_hub_config(config_path)
    sids = [s.sid for s in config.stations]
    if not sids:
        print("yizhan sim month: the hub configuration names no stations", file=sys.stderr)
        return 2
    tz = timezone_of(SimpleNamespace(config=config))  # the hub's, before there is one
    start = midnight_ms(period.first, tz) - HOUR_MS  # online before the first month
    end_period = period
    for _ in range(months - 1):
        end_period = Period("month", end_period.after.year, end_period.after.month)
    until = midnight_ms(end_period.after, tz) + HOUR_MS
    hub = Hub(config, ManualClock(start / 1000))
    try:
        with hub.store.engine.connect() as conn:
            if conn.execute(sa.select(events.c.seq).limit(1)).first() is not None:
                print("yizhan sim month: the database already holds events; give it an "
                      "empty one", file=sys.stderr)
                return 1
        hub.ledger.hub_started(start)
        sim = simulate(hub, sids, seed, until)
        hub.ledger.hub_stopped(hub.clock.ms())
        hub.writer.flush(timeout=FLUSH_S)
    finally:
        hub.close()
    if log:
        with Path(log).open("w", encoding="utf-8") as f:
            for sent in sim.events:
                f.write(json.dumps(asdict(sent), ensure_ascii=False) + "\n")
            f.write(json.dumps({"offline": sim.offline, "metered": sim.metered,
                                "ready": sim.ready}) + "\n")
    outages = sum(len(v) for v in sim.offline.values())
    print(f"simulated {len(sids)} stations, {period.key} to {end_period.key}: "
          f"{len(sim.events)} events, {outages} outages (seed {seed})")
    return 0
