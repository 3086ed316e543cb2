"""The public routes (docs/finder.md): no sign-in, nothing personal, small answers.

``GET /find`` is the riders' finder page, ``GET /public/v1/stations.geojson`` the
feed; ``register(app)`` adds them to the hub's Flask app. Both carry an ETag
(a phone on a weak link revalidates for a 304 of a few bytes) and are gzipped
for a client that accepts it; every client address has an allowance
(``limit.py``). Unknown query parameters are ignored, not refused: chat apps
append their own to the links riders open (WeChat's ``from=singlemessage``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

from hub.public import finder
from hub.public.limit import Allowance
from hub.public.stations import hub_tz, public_stations

bp = Blueprint("public", __name__, template_folder="templates")

#: How long a cache may keep the feed: the fleet's view changes by the minute.
FEED_MAX_AGE = 30
PAGE_MAX_AGE = 15
#: Answers smaller than this are sent as they are: gzip would not pay its header.
GZIP_FROM = 512


def register(app: Any) -> None:
    app.extensions["yizhan_public"] = Allowance(app.extensions["yizhan_hub"].clock)
    app.register_blueprint(bp)


def _hub() -> Any:
    return current_app.extensions["yizhan_hub"]


@bp.before_request
def allowance():
    wait = current_app.extensions["yizhan_public"].take(request.remote_addr or "?")
    if wait > 0:
        resp = Response("too many requests; try again shortly\n", 429,
                        {"Retry-After": str(int(wait) + 1), "Content-Type": "text/plain"})
        return resp
    return None


def _answer(body: bytes, content_type: str, max_age: int) -> Response:
    """``body`` with its ETag, 304 when the client has it, gzipped when accepted."""
    tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": tag, "Cache-Control": f"public, max-age={max_age}",
               "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return Response(status=304, headers=headers)
    resp = Response(body, 200, headers, content_type=content_type)
    if len(body) >= GZIP_FROM and "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.set_data(gzip.compress(body, 6, mtime=0))
        resp.headers["Content-Encoding"] = "gzip"
    return resp


@bp.get("/find")
def find():
    hub = _hub()
    now = hub.clock.ms()
    words = finder.words_of(request.args.get("lang"))
    page = finder.page(public_stations(hub, now), request.args.get("near"), words)
    at = datetime.fromtimestamp(now / 1000, UTC).astimezone(hub_tz(hub)).strftime("%H:%M")
    tiles = hub.config.finder
    html = render_template("public/find.html", w=words, at=at, tiles=tiles, **page)
    resp = _answer(html.encode(), "text/html; charset=utf-8", PAGE_MAX_AGE)
    # The page's own script and style only, and the map's tiles when there is a
    # tile server: nothing else may run or load in it.
    images = " ".join(filter(None, ("'self' data:", tiles.tile_origin)))
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        f"img-src {images}; base-uri 'none'; form-action 'none'")
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def feed(stations: list[dict[str, Any]]) -> dict[str, Any]:
    """The stations as an RFC 7946 FeatureCollection: [lon, lat] in WGS-84, a
    station without a place has a null geometry."""
    features = []
    for s in stations:
        geometry = None
        if s["lat"] is not None and s["lon"] is not None:
            geometry = {"type": "Point", "coordinates": [s["lon"], s["lat"]]}
        properties = {k: v for k, v in s.items() if k not in ("lat", "lon")}
        features.append({"type": "Feature", "id": s["sid"], "geometry": geometry,
                         "properties": properties})
    # No timestamp in the body: the same fleet gives the same bytes, so the ETag
    # holds and a poller's revalidation is a 304.
    return {"type": "FeatureCollection", "features": features}


@bp.get("/public/v1/stations.geojson")
def stations_geojson():
    hub = _hub()
    now = hub.clock.ms()
    body = json.dumps(feed(public_stations(hub, now)), ensure_ascii=False,
                      separators=(",", ":")).encode()
    resp = _answer(body, "application/geo+json", FEED_MAX_AGE)
    # A rider app or a city's map on another origin may read it from a browser.
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp
