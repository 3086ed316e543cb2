"""Navigate links in the forms China's map apps open, and the shift they need.

A phone's GPS and the finder's station places are WGS-84. Amap (Gaode) and
Tencent Maps draw in GCJ-02, the offset datum China's maps are required to use;
Baidu draws in its own BD-09 but takes GCJ-02 when told (``coord_type=gcj02``).
A WGS-84 point given as GCJ-02 lands 100-700 m off in China — the wrong street
for a rider — so the hub shifts each place to GCJ-02 itself (the published
formula, good to a metre or two) and gives every app the shifted point, saying
so where the app asks: one conversion, checked once, rather than trusting three
apps' handling of a ``wgs84`` flag. Outside China GCJ-02 is WGS-84 unchanged.

The finder page builds its links in its own script (they were half its bytes
when sent for every station); ``navigate`` is the reference that script follows,
and tests/test_finder_browser.py checks that the two agree.
"""

from __future__ import annotations

import math
from urllib.parse import quote, urlencode

# Krasovsky 1940, the ellipsoid GCJ-02 is defined on.
_A = 6378245.0
_EE = 0.00669342162296594323
SOURCE = "yizhan"  # the app name the map APIs ask callers to give


def out_of_china(lat: float, lon: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _shift(x: float, y: float) -> tuple[float, float]:
    waves = (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += waves + (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2 / 3
    dlat += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2 / 3
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += waves + (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2 / 3
    dlon += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    if out_of_china(lat, lon):
        return lat, lon
    dlat, dlon = _shift(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad) ** 2
    dlat = dlat * 180.0 / ((_A * (1 - _EE)) / (magic * math.sqrt(magic)) * math.pi)
    dlon = dlon * 180.0 / (_A / math.sqrt(magic) * math.cos(rad) * math.pi)
    return lat + dlat, lon + dlon


def _iri(value: str, safe: str = "") -> str:
    """Percent-encoded as a URL query wants, except the non-ASCII characters: a
    browser encodes those itself when it follows the link (an IRI in ``href``),
    and left as they are, gzip finds them in the card's own name and address —
    the page stays small on a weak link."""
    return "".join(c if ord(c) > 127 else quote(c, safe=safe) for c in value)


def _query(params: dict[str, str]) -> str:
    return urlencode(params, quote_via=lambda v, safe, _enc, _err: _iri(v, safe))


def navigate(lat: float, lon: float, name: str, address: str | None) -> dict[str, str]:
    """The station's marker in Amap, Baidu and Tencent Maps (their URI APIs, which
    open the app when it is installed and the web map when not)."""
    glat, glon = wgs84_to_gcj02(lat, lon)
    g = f"{glat:.6f},{glon:.6f}"  # lat,lon
    return {
        "amap": "https://uri.amap.com/marker?" + _query({
            "position": f"{glon:.6f},{glat:.6f}", "name": name, "src": SOURCE,
            "coordinate": "gaode", "callnative": "1"}),
        "baidu": "https://api.map.baidu.com/marker?" + _query({
            "location": g, "title": name, "content": address or name, "output": "html",
            "coord_type": "gcj02", "src": f"webapp.{SOURCE}.finder"}),
        # Tencent's marker takes its fields in one parameter: coord, title, addr
        # separated by ";", so a name's own ";" or ":" is percent-encoded.
        "qq": "https://apis.map.qq.com/uri/v1/marker?marker=" + _iri(
            f"coord:{g};title:{_field(name)};addr:{_field(address or name)}",
            safe=":;,") + "&referer=" + SOURCE,
    }


def _field(value: str) -> str:
    return value.replace(";", "；").replace(":", "：")
