"""The poster a station's host pins up: its name, where it is, when it is open, and a
QR code that opens the rider finder centred on it (docs/finder.md, "Poster").

``GET /public/v1/stations/<sid>/poster`` answers a printable A4 page (zh, like the
riders who read it), no sign-in: it holds only what the finder shows anyway. The QR
code is inline SVG, so the page prints sharp at any size with nothing to fetch, and
points at ``<public_url>/find?near=<sid>`` — the address a phone on the street
reaches, from the hub's ``public_url:``. Without one, the page says so on screen
(never on paper) and uses the address it was opened on, which is right only when
that is already the public one.
"""

from __future__ import annotations

import functools
import urllib.parse
from pathlib import Path
from typing import Any

import segno
from flask import Blueprint, current_app, request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from werkzeug.exceptions import NotFound

from hub.public.web import allowance
from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid

bp = Blueprint("poster", __name__)
# The finder's allowance per client address (hub/public/limit.py): anyone may ask.
bp.before_request(allowance)

#: Level Q restores a quarter of the code: a poster outdoors gets rain, sun and tape.
ERROR_LEVEL = "q"

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def finder_url(base: str, sid: str) -> str:
    """The finder centred on ``sid``, under ``base`` (which may carry a path, like a
    hub behind ``https://city.example.cn/yizhan/``)."""
    return urllib.parse.urljoin(base.rstrip("/") + "/",
                                "find?" + urllib.parse.urlencode({"near": sid}))


@functools.lru_cache(maxsize=1024)
def qr_svg(url: str) -> str:
    """The QR code of ``url`` as an inline ``<svg>`` scaled by its viewBox (sized by
    the page's CSS), with the standard quiet zone of four modules."""
    return segno.make(url, error=ERROR_LEVEL, micro=False).svg_inline(
        scale=1, border=4, omitsize=True, dark="#000", svgclass="qr",
        title=url)


def _station(hub: Any, sid: str) -> dict[str, Any] | None:
    # The finder's own view of the station, so the poster and the finder agree on
    # name, address and hours, overrides from the console included.
    from hub.public.stations import public_stations

    for station in public_stations(hub, hub.clock.ms()):
        if station["sid"] == sid:
            return station
    return None


def hours_words(hours: str | None) -> str | None:
    if hours is None:
        return None
    return "24 小时开放" if hours == "24h" else f"每天 {hours.replace('-', '–')} 开放"


@bp.get("/public/v1/stations/<sid>/poster")
def poster(sid: str):
    try:
        check_sid(sid)
    except InvalidIdentifier:
        raise NotFound("no such station") from None
    hub = current_app.extensions["yizhan_hub"]
    station = _station(hub, sid)
    if station is None:
        raise NotFound("no such station")
    base = hub.config.public_url
    url = finder_url(base or request.host_url, sid)
    page = _templates.get_template("poster.html").render(
        station=station, hours=hours_words(station.get("hours")), url=url,
        qr=qr_svg(url), public_url=base)
    return page, 200, {"Content-Type": "text/html; charset=utf-8",
                       # Metadata edits show on the next print.
                       "Cache-Control": "no-cache"}
