"""The alerts page: what is firing and what is acknowledged, and what a person
does about it (ack, resolve, silence, give it to a staff member).

The changes go through the alert store (``hub.alerts``), the only writer of
alert rows, as the API's do; the console's actor is ``console:<user>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from hub.alerting.alerts import (
    ACKED,
    FIRING,
    MAX_COMMENT,
    SILENCE,
    AlertConflict,
    AlertNotFound,
    BadMute,
    StoreUnavailable,
)
from hub.alerting.summaries import summary
from hub.alerting.texts import N_
from hub.console import reader_language
from hub.console.audit import actor, groups_seen, record
from hub.console.auth import may_act_on, requires
from hub.console.refusals import SILENCE_WORDS, refusal
from hub.fleet.directory import DirectoryNotFound

bp = Blueprint("console_alerts", __name__, url_prefix="/console")

#: The most alerts of one state the page lists: a fleet-wide storm shows its
#: newest, and the count says how many there are.
PAGE_LIMIT = 500
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
#: The severities as the page says them (``_(alert.severity)`` in the template).
SEVERITY_WORDS = (N_("critical"), N_("warning"), N_("info"))


def _stations(hub: Any) -> dict[str, Any]:
    return {v.sid: v for v in hub.fleet.stations()}


def visible(alert: dict[str, Any], views: dict[str, Any], groups: Iterable[str] | None) -> bool:
    """Whether a user limited to ``groups`` (None: every group) sees this alert.
    The hub's own alerts (sid ``hub``) belong to no group: only unlimited users."""
    if groups is None:
        return True
    view = views.get(alert["sid"])
    return view is not None and view.group in set(groups)


def open_alerts(hub: Any, groups: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """``{"firing": [...], "acked": [...]}``, critical first then oldest first,
    each alert with its station's ``name`` and ``group`` and the ``assignee``'s
    name (None when given to nobody or to someone since removed)."""
    views = _stations(hub)
    staff = {s["id"]: s["name"] for s in hub.directory.list_staff()}
    allowed = None if groups is None else set(groups)
    out: dict[str, list[dict]] = {}
    for state in (FIRING, ACKED):
        rows = [a for a in hub.alerts.list(state=state, limit=PAGE_LIMIT)
                if visible(a, views, allowed)]
        for a in rows:
            view = views.get(a["sid"])
            a["station_name"] = view.name if view is not None else None
            a["group"] = view.group if view is not None else None
            a["assignee_name"] = staff.get(a.get("assigned_to") or "")
        rows.sort(key=lambda a: (SEVERITY_ORDER.get(a["severity"], 9), a["started_at"]))
        out[state] = rows
    return out


def silence_body(form: dict[str, str], alert: dict[str, Any]) -> dict[str, Any]:
    """The API body of a silence of this alert's rule at its station, for the
    form's ``duration`` (like ``2h``) and ``comment``; ``Mutes.add`` checks it."""
    body: dict[str, Any] = {"sid": alert["sid"], "rule": alert["rule"],
                            "duration": form.get("duration", "")}
    typed = form.get("comment", "")
    # Judged as typed (the form's maxlength, the API's): 501 characters ending
    # in a space are refused, not taken once stripped.
    comment = typed if len(typed) > MAX_COMMENT else typed.strip()
    if comment:
        body["comment"] = comment
    return body


def add_silence(hub: Any, form: dict[str, str], alert: dict[str, Any], by: str) -> dict:
    return hub.alerts.mutes.add(SILENCE, silence_body(form, alert), by=by)


# -- views -------------------------------------------------------------------------------


def _hub() -> Any:
    return current_app.extensions["yizhan_console"].hub


def _alert_to_act_on(alert_id: str) -> dict[str, Any]:
    """The alert, if the user may act on its station (404 / 403 otherwise)."""
    alert = _hub().alerts.get(alert_id[:64])
    if alert is None:
        abort(404)
    if not may_act_on(alert["sid"]):
        abort(403)
    return alert


def _back():
    """Taken: back to the list (303). A refusal shows the list again with a 4xx
    (409: resolved already), a store that cannot write with a 503."""
    return redirect(url_for("console_alerts.alerts"), 303)


@bp.get("/alerts")
@requires("maintenance")
def alerts():
    hub = _hub()
    lists = open_alerts(hub, groups_seen())
    lang = reader_language()
    for a in (*lists[FIRING], *lists[ACKED]):
        # Stored in the hub's language when it fired: said again in the reader's,
        # from the rule and value, as the notifications do (the stored one if not).
        a["summary"] = summary(a["rule"], a.get("value"), lang) or a["summary"]
    return render_template("console/alerts.html", firing=lists[FIRING], acked=lists[ACKED],
                           staff=hub.directory.list_staff(), limit=PAGE_LIMIT)


def _change(alert_id: str, change: str, done: str):
    alert = _alert_to_act_on(alert_id)
    try:
        getattr(_hub().alerts, change)(alert["id"], by=actor())
    except AlertConflict:
        flash(N_("That alert is resolved already."), "error")
        return alerts(), 409
    except (AlertNotFound, StoreUnavailable):
        flash(N_("The hub could not save that; try again."), "error")
        return alerts(), 503
    record(_hub(), f"alert.{change}", "alert", alert["id"], {"sid": alert["sid"]})
    flash(done, "ok")
    return _back()


@bp.post("/alerts/<alert_id>/ack")
@requires("maintenance")
def ack(alert_id: str):
    return _change(alert_id, "ack", N_("Alert acknowledged."))


@bp.post("/alerts/<alert_id>/resolve")
@requires("maintenance")
def resolve(alert_id: str):
    return _change(alert_id, "resolve", N_("Alert resolved."))


@bp.post("/alerts/<alert_id>/assign")
@requires("maintenance")
def assign(alert_id: str):
    hub = _hub()
    alert = _alert_to_act_on(alert_id)
    staff_id = request.form.get("staff", "").strip() or None
    if staff_id is not None:
        try:
            hub.directory.get_staff(staff_id[:64])
        except DirectoryNotFound:
            flash(N_("No such staff member."), "error")
            return alerts(), 400
    try:
        hub.alerts.assign(alert["id"], staff_id, by=actor())
    except AlertConflict:
        flash(N_("That alert is resolved already."), "error")
        return alerts(), 409
    except (AlertNotFound, StoreUnavailable):
        flash(N_("The hub could not save that; try again."), "error")
        return alerts(), 503
    record(hub, "alert.assign", "alert", alert["id"], {"sid": alert["sid"], "to": staff_id})
    flash(N_("Alert assigned.") if staff_id else N_("Alert given to nobody."), "ok")
    return _back()


@bp.post("/silences")
@requires("maintenance")
def silence():
    hub = _hub()
    alert = _alert_to_act_on(request.form.get("alert", ""))
    try:
        made = add_silence(hub, request.form, alert, actor())
    except BadMute as err:
        flash(refusal(err, SILENCE_WORDS, MAX_COMMENT), "error")
        return alerts(), 400
    except StoreUnavailable:
        flash(N_("The hub could not save that; try again."), "error")
        return alerts(), 503
    record(hub, "silence.add", "silence", made.get("id", ""),
           {"sid": alert["sid"], "rule": alert["rule"], "ends_at": made.get("ends_at")})
    flash(N_("Silenced."), "ok")
    return _back()
