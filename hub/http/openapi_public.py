"""The public routes' part of the OpenAPI document (hub/http/openapi.py merges it in).

No token, and no query parameter refused: chat apps append their own to the
links riders open.
"""

from __future__ import annotations

from typing import Any

from hub.http.openapi import SID, _html_responses, _param
from hub.public.stations import WATER

_NULLABLE_TEXT = {"type": ["string", "null"]}
STATION_PROPERTIES = {
    "type": "object",
    "required": ["sid", "name", "group", "address", "host", "hours", "open_now", "online",
                 "water", "chargers_ready", "working"],
    "additionalProperties": False,
    "properties": {
        "sid": SID, "name": {"type": "string"}, "group": _NULLABLE_TEXT,
        "address": _NULLABLE_TEXT, "host": _NULLABLE_TEXT,
        "hours": {"type": ["string", "null"], "description": "24h or HH:MM-HH:MM (may "
                  "cross midnight), in the hub's time zone; null: not known"},
        "open_now": {"type": "boolean"}, "online": {"type": "boolean"},
        "water": {"enum": list(WATER)},
        "chargers_ready": {"type": ["integer", "null"], "minimum": 0},
        "working": {"type": "boolean", "description": "open now, online, water not empty "
                    "and at least one charger ready"},
    },
}
_CACHED = {"ETag": {"schema": {"type": "string"}},
           "Cache-Control": {"schema": {"type": "string"}}}

PATHS: dict[str, Any] = {
    "/find": {"get": {
        "operationId": "finder",
        "summary": "The riders' station finder: a small HTML page for a phone.",
        "description": "Every station, open and working now or not, sorted on the phone "
                       "by distance from it (the position never leaves the phone), each "
                       "broken one pointing at the nearest working one; navigate links "
                       "for Amap, Baidu and Tencent Maps. See docs/finder.md.",
        "security": [],
        "parameters": [
            # Any value is taken: another language is zh, an unknown sid centres nothing
            # (a rider's link is never refused over them).
            _param("lang", "query", {"type": "string"}, "zh (the default) or en",
                   required=False),
            _param("near", "query", {"type": "string"}, "a sid: centre the list on that "
                   "station (its poster's QR code)", required=False)],
        "responses": {
            **_html_responses([("200", "The page.")]),
            "304": {"description": "Not modified (If-None-Match)."},
            "429": {"description": "Too many requests from this address (Retry-After)."},
        },
    }},
    "/public/v1/stations.geojson": {"get": {
        "operationId": "stationsGeoJSON",
        "summary": "Every station as RFC 7946 GeoJSON, for rider apps and city maps.",
        "description": "A FeatureCollection; each Feature's id is the sid, its geometry a "
                       "WGS-84 Point [lon, lat] (null when the place is not registered), "
                       "its properties the station's public facts and state now. Nothing "
                       "personal. Cache-Control max-age 30 and an ETag (304 on "
                       "If-None-Match); gzipped when accepted.",
        "security": [],
        "responses": {
            "200": {"description": "The stations.", "headers": _CACHED, "content": {
                "application/geo+json": {"schema": {
                    "type": "object", "required": ["type", "features"],
                    "properties": {"type": {"const": "FeatureCollection"}, "features": {
                        "type": "array", "items": {
                            "type": "object", "required": ["type", "id", "geometry",
                                                           "properties"],
                            "properties": {"properties": STATION_PROPERTIES}}}}}}}},
            "304": {"description": "Not modified (If-None-Match)."},
            "429": {"description": "Too many requests from this address (Retry-After)."},
        },
    }},
    # The poster is hub/public/poster.py's; described here with the other public routes.
    "/public/v1/stations/{sid}/poster": {"get": {
        "operationId": "stationPoster",
        "summary": "A station's printable A4 poster, its QR code opening /find?near=<sid>.",
        "security": [],
        "parameters": [_param("sid", "path", SID, "station id")],
        "responses": {
            **_html_responses([("200", "The poster (zh).")]),
            "404": {"description": "No such station."},
            "429": {"description": "Too many requests from this address (Retry-After)."},
        },
    }},
}
