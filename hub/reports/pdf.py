"""The report as a PDF a city office can file: A4, the fonts embedded (a CJK font
from the system: Debian's fonts-noto-cjk), the totals with the period before, the
charts, then every town and every station.

fpdf2 is pure Python: nothing to build on a hub, and it embeds only the glyphs
used, so a report stays small however large the font.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from hub.reports.charts import WIDTH, Rect, charts
from hub.reports.figures import Figures, Report
from hub.reports.words import change, duration, percent, points, words

#: CJK fonts tried in order: (path, index in a font collection). Noto Sans CJK's
#: collection holds JP, KR, SC, TC, HK in that order: SC (2) for Chinese.
FONTS = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
)
FONT_ENV = "YIZHAN_REPORT_FONT"  # a font file to use instead, e.g. on another OS
MARGIN = 15.0  # mm
#: Table headings shaded rather than bold: one regular CJK face is all a hub may have.
HEADING = FontFace(emphasis="", fill_color=(226, 232, 240))


class NoFont(RuntimeError):
    """No font that has Chinese characters: the PDF would show empty boxes."""


def font_file() -> tuple[str, int]:
    own = os.environ.get(FONT_ENV)
    if own:
        return own, 0
    for path, index in FONTS:
        if Path(path).is_file():
            return path, index
    raise NoFont("no CJK font found for the report's PDF: install fonts-noto-cjk "
                 f"(Debian) or set {FONT_ENV} to a TrueType or OpenType font file")


class _Doc(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("cjk", size=8)
        self.set_text_color(110, 110, 110)
        self.cell(0, 5, self.footer_text.format(n=self.page_no()), align="C")


def render(rep: Report, lang: str, tz: dt.tzinfo, made_ms: int) -> bytes:
    w = words(lang)
    path, index = font_file()
    doc = _Doc(format="A4")
    doc.set_margins(MARGIN, MARGIN, MARGIN)
    doc.set_auto_page_break(True, 18)
    doc.add_font("cjk", "", path, collection_font_number=index)
    label = rep.period.label(lang)
    doc.set_title(f"{w['title']} {label}")
    doc.set_creator("Yizhan hub")
    doc.footer_text = f"{w['title']} · {label} · {w['page']}"
    doc.add_page()
    doc.set_font("cjk", size=18)
    doc.cell(0, 10, w["title"], new_x="LMARGIN", new_y="NEXT")
    doc.set_font("cjk", size=10)
    made = dt.datetime.fromtimestamp(made_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")
    prev = rep.period.previous().label(lang)
    doc.cell(0, 6, f"{w['period']}: {label}  ({w['before']}: {prev})    {w['made']}: {made}",
             new_x="LMARGIN", new_y="NEXT")
    doc.ln(3)
    _summary(doc, rep, w, lang)
    doc.ln(2)
    doc.set_font("cjk", size=8)
    doc.set_text_color(90, 90, 90)
    doc.multi_cell(0, 4, w["note"], align="L", new_x="LMARGIN", new_y="NEXT")
    doc.set_text_color(0, 0, 0)
    for chart in charts(rep, lang):
        _chart(doc, chart)
    doc.add_page()
    _rows(doc, w["towns"], [*rep.groups, rep.fleet], rep, w, lang, town_names=True)
    doc.ln(4)
    _rows(doc, w["stations"], rep.stations, rep, w, lang, town_names=False)
    return bytes(doc.output())


def _summary(doc: FPDF, rep: Report, w: dict, lang: str) -> None:
    now, before = rep.fleet, rep.previous.fleet if rep.previous else None
    lines = [
        ("visits", now.visits, before and before.visits, f"{now.visits:,}"),
        ("lent", now.lent, before and before.lent, f"{now.lent:,}"),
        ("returned", now.returned, before and before.returned, f"{now.returned:,}"),
        ("cups", now.cups, before and before.cups,
         w["not_measured"] if now.cups is None else f"{now.cups:,}"),
        ("litres", now.litres, before and before.litres,
         w["not_measured"] if now.litres is None else f"{now.litres:,.1f}"),
        ("availability", now.availability, before and before.availability,
         percent(now.availability)),
        ("outages", now.outages, before and before.outages, str(now.outages)),
        ("mttr", now.mttr_s, before and before.mttr_s, duration(now.mttr_s, lang)),
        ("low_runs", now.low_runs, before and before.low_runs, str(now.low_runs)),
        ("refill_mean", now.refill_mean_s, before and before.refill_mean_s,
         duration(now.refill_mean_s, lang)),
        ("charger_low_runs", now.charger_low_runs, before and before.charger_low_runs,
         str(now.charger_low_runs)),
        ("charger_refill_mean", now.charger_refill_mean_s,
         before and before.charger_refill_mean_s, duration(now.charger_refill_mean_s, lang)),
    ]
    doc.set_font("cjk", size=10)
    with doc.table(col_widths=(50, 40, 40, 30), text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
                   width=160, align="LEFT", line_height=6,
                   headings_style=HEADING) as table:
        table.row([w["fleet"], rep.period.label(lang), w["before"], w["change"]])
        for key, value, prev_value, shown in lines:
            prev_shown = "—" if prev_value is None else _shown(key, prev_value, lang)
            moved = points(value, prev_value) if key == "availability" \
                else change(value, prev_value)
            table.row([w[key], shown, prev_shown, moved])


def _shown(key: str, value: float, lang: str) -> str:
    if key == "availability":
        return percent(value)
    if key in ("mttr", "refill_mean", "charger_refill_mean"):
        return duration(value, lang)
    if key == "litres":
        return f"{value:,.1f}"
    return f"{value:,}"


def _chart(doc: FPDF, chart) -> None:
    k = (doc.w - 2 * MARGIN) / WIDTH  # chart points to mm
    need = 8 + chart.height * k
    if doc.get_y() + need > doc.h - 20:
        doc.add_page()
    doc.ln(3)
    doc.set_font("cjk", size=11)
    doc.cell(0, 6, chart.title, new_x="LMARGIN", new_y="NEXT")
    x0, y0 = MARGIN, doc.get_y()
    for s in chart.shapes:
        if isinstance(s, Rect):
            if s.w > 0:
                doc.set_fill_color(*s.rgb)
                doc.rect(x0 + s.x * k, y0 + s.y * k, s.w * k, s.h * k, style="F")
        else:
            doc.set_font("cjk", size=s.size * 0.8)
            width = doc.get_string_width(s.text)
            x = x0 + s.x * k - (width if s.anchor == "end" else 0)
            doc.text(x, y0 + s.y * k, s.text)
    doc.set_y(y0 + chart.height * k)


def _rows(doc: FPDF, title: str, rows: list[Figures], rep: Report, w: dict, lang: str,
          town_names: bool) -> None:
    doc.set_fill_color(255, 255, 255)  # the charts' last bar colour would shade the rows
    doc.set_font("cjk", size=12)
    doc.cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
    doc.set_font("cjk", size=8)
    head = [w["town"] if town_names else w["station"], w["visits"], w["change"], w["lent"],
            w["returned"], w["cups"], w["availability"], w["outages"], w["down"],
            w["refill_mean"], w["charger_refill_mean"]]
    with doc.table(col_widths=(34, 15, 13, 15, 15, 15, 16, 12, 16, 19, 20), line_height=5,
                   text_align=("LEFT",) + ("RIGHT",) * 10, width=doc.w - 2 * MARGIN,
                   headings_style=HEADING) as table:
        table.row(head)
        for r in rows:
            prev = rep.previous_of(r)
            if r.kind == "fleet":
                name = w["fleet"]
            elif town_names:
                name = r.group or w["no_group"]
            else:
                name = f"{r.name or r.sid}\n{r.sid}  {r.group or ''}"
            cups = w["not_measured"] if r.cups is None else f"{r.cups:,}"
            table.row([name, f"{r.visits:,}", change(r.visits, prev and prev.visits),
                       f"{r.lent:,}", f"{r.returned:,}", cups, percent(r.availability),
                       str(r.outages), duration(r.down_ms / 1000, lang),
                       duration(r.refill_mean_s, lang),
                       duration(r.charger_refill_mean_s, lang)])
