"""Each station's rider-facing facts: the configuration's ``stations:`` values,
or the console's override of them (the ``station_meta`` table).

An override replaces all five values of its station at once (what the console's
form shows is what the station then has); ``reset`` gives the configuration's
back. Every value is checked by ``hub.config.station_meta`` before it is stored,
so a hostile form or a hand-edited row cannot reach a rider's page unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from hub.config.station_meta import BadMeta, coordinate, hours, text
from hub.storage.schema import station_meta

FIELDS = ("lat", "lon", "address", "host", "hours")


@dataclass(frozen=True)
class Whereabouts:
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    host: str | None = None
    hours: str | None = None
    overridden: bool = False  # set from the console, not the configuration


def check(values: dict[str, Any]) -> dict[str, Any]:
    """The five values checked (BadMeta naming the first wrong one); empty
    strings are "not known"."""
    raw = {k: (None if values.get(k) in (None, "") else values.get(k)) for k in FIELDS}
    out = {"lat": coordinate(raw["lat"], "lat"), "lon": coordinate(raw["lon"], "lon"),
           "address": text(raw["address"], "address"), "host": text(raw["host"], "host"),
           "hours": hours(raw["hours"])}
    if (out["lat"] is None) != (out["lon"] is None):
        raise BadMeta("give both lat and lon, or neither", "lat")
    return out


def of_config(meta: Any) -> Whereabouts:
    if meta is None:
        return Whereabouts()
    return Whereabouts(**{k: getattr(meta, k, None) for k in FIELDS})


def overrides(store: Any) -> dict[str, Whereabouts]:
    """Every console override, by sid; a row that no longer passes the checks
    (edited by hand) is left out rather than shown."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(station_meta)).mappings().all()
    out = {}
    for r in rows:
        try:
            out[r["sid"]] = Whereabouts(**check(dict(r)), overridden=True)
        except BadMeta:
            continue
    return out


def whereabouts(hub: Any, sid: str, found: dict[str, Whereabouts] | None = None) -> Whereabouts:
    """What the finder shows of ``sid``: the console's override, else the configuration's."""
    found = overrides(hub.store) if found is None else found
    return found.get(sid) or of_config(hub.config.station_meta(sid))


def save(hub: Any, sid: str, values: dict[str, Any], by: str | None) -> dict[str, Any]:
    """Store the console's values for ``sid`` (checked; BadMeta when wrong)."""
    row = {"sid": sid, **check(values), "updated_ms": hub.clock.ms(), "updated_by": by}
    with hub.store.engine.begin() as conn:
        conn.execute(sa.delete(station_meta).where(station_meta.c.sid == sid))
        conn.execute(sa.insert(station_meta).values(**row))
    return row


def reset(hub: Any, sid: str) -> bool:
    """Back to the configuration's values; True when there was an override."""
    with hub.store.engine.begin() as conn:
        return conn.execute(sa.delete(station_meta)
                            .where(station_meta.c.sid == sid)).rowcount > 0
