"""The report's charts as shapes (bars, lines, text) that both the console page
(inline SVG) and the PDF draw: one layout, so the page and the paper agree.

Bars lie horizontally, one row a town or station, so that Chinese names read
across and a fleet of many stations only makes the chart longer. Where the
period before is known, a thin grey bar under each shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from hub.reports.figures import Report
from hub.reports.words import percent, words

WIDTH = 640.0
ROW = 26.0
LABEL_W = 170.0
VALUE_W = 70.0
TOP = 8.0
BLUE, GREY = (37, 99, 160), (170, 176, 184)
#: The most bars a chart of stations shows.
MOST_BARS = 24


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    before: float | None = None


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    anchor: str = "start"  # start, end
    size: float = 11.0


@dataclass(frozen=True)
class Chart:
    title: str
    height: float
    shapes: tuple[Rect | Text, ...]


def layout(title: str, bars: list[Bar], percent_scale: bool = False) -> Chart:
    """The shapes of one chart, in points from its top left, ``WIDTH`` wide."""
    top = max([b.value for b in bars] + [b.before or 0 for b in bars] + [0])
    scale_to = 1.0 if percent_scale else (top or 1)
    room = WIDTH - LABEL_W - VALUE_W
    shapes: list[Rect | Text] = []
    for i, b in enumerate(bars):
        y = TOP + i * ROW
        shapes.append(Text(LABEL_W - 6, y + 13, _clip(b.label), "end"))
        w = max(0.0, min(1.0, b.value / scale_to)) * room
        shapes.append(Rect(LABEL_W, y + 2, w, 13, BLUE))
        if b.before is not None:
            wb = max(0.0, min(1.0, b.before / scale_to)) * room
            shapes.append(Rect(LABEL_W, y + 17, wb, 4, GREY))
        shown = percent(b.value, 1) if percent_scale else f"{b.value:,.0f}"
        shapes.append(Text(LABEL_W + w + 4, y + 13, shown))
    return Chart(title, TOP + len(bars) * ROW + 4, tuple(shapes))


def _clip(label: str, most: int = 14) -> str:
    return label if len(label) <= most else label[:most - 1] + "…"


def charts(rep: Report, lang: str) -> list[Chart]:
    """Visits and chargers lent per town against the period before, and each
    station's availability."""
    w = words(lang)

    def town(g) -> str:
        return g.group or w["no_group"]

    def before(row, name: str) -> float | None:
        prev = rep.previous_of(row)
        return None if prev is None else float(getattr(prev, name))

    # Towns only: the total beside them would flatten every town's bar (it is in
    # the table above the charts).
    towns = rep.groups
    # A bar a station while they fit on a page; past that, the least available
    # ones (the rest are in the table), so a fleet of hundreds stays one chart.
    shown = sorted(rep.stations, key=lambda s: (s.availability is None, s.availability or 0))
    title = w["chart_availability"] if len(shown) <= MOST_BARS else w["chart_least_available"]
    availability = layout(title.format(n=MOST_BARS), [
        Bar(s.name or s.sid or "", s.availability or 0.0, _availability(rep.previous_of(s)))
        for s in (rep.stations if len(shown) <= MOST_BARS else shown[:MOST_BARS])],
        percent_scale=True)
    return [
        layout(w["chart_visits"], [Bar(town(g), g.visits, before(g, "visits")) for g in towns]),
        layout(w["chart_lent"], [Bar(town(g), g.lent, before(g, "lent"))
                                 for g in towns]),
        availability,
    ]


def _availability(row) -> float | None:
    return None if row is None else row.availability


def svg(chart: Chart) -> str:
    """The chart as an inline SVG element (no script, no external font)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {WIDTH:.0f} {chart.height:.0f}" '
             f'aria-label="{escape(chart.title)}">']
    for s in chart.shapes:
        if isinstance(s, Rect):
            parts.append(f'<rect x="{s.x:.1f}" y="{s.y:.1f}" width="{s.w:.1f}" '
                         f'height="{s.h:.1f}" fill="rgb{s.rgb}"/>')
        else:
            parts.append(f'<text x="{s.x:.1f}" y="{s.y:.1f}" font-size="{s.size:.0f}" '
                         f'text-anchor="{s.anchor}">{escape(s.text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
