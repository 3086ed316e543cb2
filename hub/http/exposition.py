"""``/metrics`` as text, written directly (issue 21: 100 000 stations on one hub).

prometheus_client's ``generate_latest`` makes a ``Sample`` (a named tuple with
a dict of labels) for every line, then validates and escapes each label name
and value again: about 10 µs a line, and a hub of 100 000 stations exposes
2.4 million lines. A collector with a ``text(scrape)`` method writes its
families' lines itself, the same bytes ``generate_latest`` would write from
its ``collect()`` (tests/test_hub_exposition.py holds them equal); every
other collector (the ingest's, the alert durations', the broker's) goes
through ``generate_latest`` as before.

>>> exposition(hub.registry) == generate_latest(hub.registry)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

#: Whole numbers 0..9999 as the text format writes them ("3.0"): counts of banks,
#: doors, ratios of 0 and 1 — a dict lookup where floatToGoString costs 0.4 µs.
#: (A float equal to an int hashes as it, so 1.0 and True find "1.0" too; past
#: 999 999 Go writes an exponent, which the cache never reaches.)
WHOLE = {n: f"{n}.0" for n in range(10_000)}


def num(value: Any) -> str:
    """``value`` as ``generate_latest`` writes a sample's value."""
    text = WHOLE.get(value)
    return floatToGoString(value) if text is None else text


def esc(value: str) -> str:
    """A label value escaped as ``generate_latest`` escapes it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def sample_name(family: Metric) -> str:
    """The name a family's samples carry on the text format (a counter's ``_total``)."""
    return family.name + "_total" if family.type == "counter" else family.name


def header(family: Metric) -> str:
    """A family's ``# HELP`` and ``# TYPE`` lines (names here are all legacy-valid)."""
    name = sample_name(family)
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"


class Scrape:
    """What the collectors of one scrape share: the fleet's views, copied once."""

    def __init__(self) -> None:
        self._views: list[Any] | None = None

    def views(self, hub: Any) -> list[Any]:
        if self._views is None:
            self._views = station_views(hub)
        return self._views


def station_views(hub: Any) -> list[Any]:
    """A copy of every station's view, by sid: ``Fleet.stations()`` copies
    ``COPY_SHARE`` (2 000) of them per hold of the fleet's lock, ~3 ms, so the
    ingest, which waits on that lock for every message, is never held up long
    (all 100 000 in one hold took a quarter of a second; one ``get`` a station
    costs more CPU)."""
    return hub.fleet.stations()


def exposition(registry: CollectorRegistry) -> bytes:
    """What ``generate_latest(registry)`` returns, family for family, in the
    registry's order."""
    if registry._target_info:  # never set by the hub; the library knows how
        return generate_latest(registry)
    with registry._lock:
        collectors = list(registry._collector_to_names)
    scrape = Scrape()
    parts: list[bytes] = []
    for collector in collectors:
        text = getattr(collector, "text", None)
        if text is None:
            parts.append(generate_latest(collector))
        else:
            # A family at a time: joining and encoding all 140 MB at once held
            # the GIL, and so the ingest, for a quarter of a second.
            parts.extend("".join(chunk).encode() for chunk in text(scrape))
    return b"".join(parts)


def families_text(families: dict[str, Metric], lines: dict[str, Iterable[str]]) -> list:
    """Each family's header and then its lines, in the families' order."""
    out: list = []
    for key, family in families.items():
        out.append((header(family),))
        out.append(lines.get(key, ()))
    return out
