"""``finder:``: the riders' finder's optional map (docs/finder.md).

Without ``tile_url`` the finder is a list and loads nothing but itself. With
it, the page draws a small map of the stations near the rider from that tile
server (``{z}/{x}/{y}``, Web Mercator, 256 px tiles), whose datum must be said:
China's tile servers draw GCJ-02 (``tile_datum: gcj02``), OpenStreetMap's WGS-84.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from hub.config.station_meta import BadMeta, text
from yizhan.config import ConfigError, Section, known_keys

DATUMS = ("wgs84", "gcj02")


@dataclass(frozen=True)
class FinderConfig:
    tile_url: str | None = None
    tile_datum: str = "wgs84"
    tile_attribution: str | None = None

    @property
    def tile_origin(self) -> str | None:
        """The tile server's origin, which the page's Content-Security-Policy allows."""
        if self.tile_url is None:
            return None
        parts = urlsplit(self.tile_url)
        return f"{parts.scheme}://{parts.netloc}"


def parse_finder(root: Section) -> FinderConfig:
    sec = root.section("finder")
    if sec is None:
        return FinderConfig()
    known_keys(sec, ("tile_url", "tile_datum", "tile_attribution"))
    url = sec.str("tile_url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc \
                or not all(k in url for k in ("{z}", "{x}", "{y}")) \
                or not re.fullmatch(r"[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%{}-]+", url):
            raise ConfigError(sec.key("tile_url"), "must be an http(s) URL with {z}, {x} "
                              "and {y}, like https://tiles.example.cn/{z}/{x}/{y}.png")
    try:
        attribution = text(sec.raw("tile_attribution"), "tile_attribution")
    except BadMeta as err:
        raise ConfigError(sec.key("tile_attribution"), str(err)) from None
    return FinderConfig(tile_url=url, tile_datum=sec.str("tile_datum", "wgs84", choices=DATUMS),
                        tile_attribution=attribution)
