"""The service report for the city (docs/report.md): a month's or a quarter's
figures per town, per station and in total, against the period before, as a
page with charts, as CSV and as a PDF to file. The figures are
``hub.reports.figures``; this module only asks for them and shows them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request, session
from markupsafe import Markup

from hub.alerting.texts import DEFAULT_LANGUAGE, LANGUAGES
from hub.console.audit import groups_seen
from hub.console.auth import requires
from hub.console.uptime import timezone_of
from hub.reports import charts as report_charts
from hub.reports.figures import Report, compute
from hub.reports.period import BadPeriod, Period
from hub.reports.table import to_csv

bp = Blueprint("console_report", __name__, url_prefix="/console")


def _hub() -> Any:
    return current_app.extensions["yizhan_console"].hub


def _lang() -> str:
    asked = request.args.get("lang") or session.get("lang")
    return asked if asked in LANGUAGES else DEFAULT_LANGUAGE


def default_period(now_ms: int, tz: dt.tzinfo, kind: str = "month") -> Period:
    """The last whole month (or quarter): what a city office asks for."""
    today = dt.datetime.fromtimestamp(now_ms / 1000, tz).date()
    return Period.containing(today, kind).previous()


def _query(hub: Any) -> tuple[Report | None, str, str | None]:
    """(the report, the period as asked, what is wrong with the ask)."""
    tz = timezone_of(hub)
    raw = request.args.get("period")
    if not raw:
        period = default_period(hub.clock.ms(), tz)
    else:
        try:
            period = Period.parse(raw[:16])
        except BadPeriod:
            return None, raw[:16], "bad_period"
    return compute(hub, period, tz, groups=groups_seen()), period.key, None


@bp.get("/report")
@requires("ops")
def report():
    hub = _hub()
    rep, key, problem = _query(hub)
    lang = _lang()
    svgs = [] if rep is None else [
        (c.title, Markup(report_charts.svg(c)))  # the SVG escapes every text it holds
        for c in report_charts.charts(rep, lang)]
    return render_template("console/report.html", rep=rep, key=key, problem=problem,
                           svgs=svgs, lang=lang), 400 if problem else 200


def _download(body: bytes, mimetype: str, name: str) -> Response:
    return Response(body, 200, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/report.csv")
@requires("ops")
def report_csv():
    hub = _hub()
    rep, _key, _problem = _query(hub)
    if rep is None:
        return Response("period must be a month YYYY-MM or a quarter YYYY-Qn", 400,
                        mimetype="text/plain")
    body = to_csv(rep, timezone_of(hub)).encode("utf-8")
    return _download(body, "text/csv", f"yizhan-report-{rep.period.key}.csv")


@bp.get("/report.pdf")
@requires("ops")
def report_pdf():
    from hub.reports.pdf import NoFont, render  # fpdf2 loaded only for a PDF

    hub = _hub()
    rep, _key, _problem = _query(hub)
    if rep is None:
        return Response("period must be a month YYYY-MM or a quarter YYYY-Qn", 400,
                        mimetype="text/plain")
    try:
        body = render(rep, _lang(), timezone_of(hub), hub.clock.ms())
    except NoFont as err:
        return Response(str(err), 503, mimetype="text/plain")
    return _download(body, "application/pdf", f"yizhan-report-{rep.period.key}.pdf")
