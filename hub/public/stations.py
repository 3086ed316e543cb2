"""Every station as a rider may see it: where, who hosts it, its hours, and
whether it is open and working **now** (docs/finder.md).

>>> public_stations(hub, hub.clock.ms())
[{"sid": "yh-chumen-01", ..., "open_now": True, "online": True, "water": "ok",
  "chargers_ready": 6, "working": True}, ...]

Nothing personal: no rider, no staff, no event, no alert text — only the
station's own facts and the fleet's live view of it. The finder page, the
GeoJSON feed and the poster all read this one list.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hub.config.station_meta import open_at
from hub.public.meta import overrides, whereabouts

CST = timezone(timedelta(hours=8), "CST")
#: The water words of the feed: the dispenser's level_state (contract §5), or
#: "unknown" for a station without a dispenser or whose State has not come yet.
WATER = ("ok", "low", "empty", "unknown")


def hub_of(app_or_hub: Any) -> Any:
    """The hub, given it or its Flask app."""
    extensions = getattr(app_or_hub, "extensions", None)
    if isinstance(extensions, dict) and "yizhan_hub" in extensions:
        return extensions["yizhan_hub"]
    return app_or_hub


def hub_tz(hub: Any) -> Any:
    """The hub's time zone (``timezone:``), China Standard Time by default."""
    name = hub.config.routing.timezone
    return zoneinfo.ZoneInfo(name) if name else CST


def public_stations(app_or_hub: Any, now_ms: int) -> list[dict[str, Any]]:
    """Each station the hub knows, by sid; see the module's doc for the keys."""
    hub = hub_of(app_or_hub)
    local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(hub_tz(hub)).time()
    found = overrides(hub.store)
    threshold = int(hub.config.min_charge)
    out = []
    for view in sorted(hub.fleet.stations(), key=lambda v: v.sid):
        where = whereabouts(hub, view.sid, found)
        water = view.water()
        water = water if water in WATER else "unknown"
        ready = view.chargers_ready(threshold)
        if not view.online:
            # Its last State says what was, not what is: a rider is not sent to
            # the water an offline station had.
            water, ready = "unknown", None
        # Hours not known: the station is taken as open (most are 24 h) and the
        # page says the hours are not known.
        open_now = open_at(where.hours, local)
        open_now = True if open_now is None else open_now
        out.append({
            "sid": view.sid, "name": view.name, "group": view.group,
            "lat": where.lat, "lon": where.lon, "address": where.address,
            "host": where.host, "hours": where.hours,
            "open_now": open_now, "online": bool(view.online), "water": water,
            "chargers_ready": ready,
            "working": bool(open_now and view.online and water != "empty"
                            and ready is not None and ready > 0),
        })
    return out
