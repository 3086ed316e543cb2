"""The people page: staff who sign in at the kiosks (PIN set and reset), riders
by their masked number, the denied list, and (admin) the API tokens.

Every change goes through the Directory (``hub.directory``), which checks the
fields, hashes the PIN, audits the change and publishes the stations'
Directory; the forms here only turn form fields into the bodies it takes. A
PIN or a phone number is never put back into a page, a flash message or a log
line: a form that is refused is shown again without them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from hub.alerting.texts import N_
from hub.config.tokens import SCOPES
from hub.console.audit import actor, record
from hub.console.auth import requires
from hub.console.refusals import DIRECTORY_WORDS, TOKEN_WORDS, refusal
from hub.console.uptime import BadRange, parse_date, timezone_of
from hub.fleet.directory import DirectoryError
from hub.fleet.directory_fields import BadField
from hub.http import stored_tokens

bp = Blueprint("console_people", __name__, url_prefix="/console")

#: The riders listed: the newest registered (the Directory lists at most this many).
RIDERS_SHOWN = 200


def _groups(raw: str) -> list[str]:
    """``"chumen, kanmen"`` → ``["chumen", "kanmen"]``; empty: every station's."""
    return [g.strip() for g in raw.replace("，", ",").split(",") if g.strip()]


def staff_body(form: Mapping[str, str], new: bool) -> dict[str, Any]:
    """The Directory's body from the staff form. Adding takes every field; editing
    changes name and groups as shown (groups only when the form has the box), and
    the phone and PIN only when typed (an empty PIN box keeps the PIN; the page
    never has it to show)."""
    body: dict[str, Any] = {}
    if new:
        body["id"] = form.get("id", "").strip()
    body["name"] = form.get("name", "").strip()
    if new or "groups" in form:
        # Editing, a form without the groups box keeps them: read as empty, it
        # gave the staff member every station.
        body["groups"] = _groups(form.get("groups", ""))
    phone = form.get("phone", "").strip()
    clear = form.get("clear_phone")
    if clear not in (None, "", "1"):
        # The checkbox sends "1": any other value is no tick the page made.
        raise BadField("bad_clear_phone", "clear_phone is the checkbox's 1, or absent")
    if phone:
        body["phone"] = phone
    elif clear:
        body["phone"] = None
    pin = form.get("pin", "")
    if pin or new:
        body["pin"] = pin
    return body


def deny_body(hub: Any, form: Mapping[str, str]) -> dict[str, Any]:
    """The Directory's deny body: ``phone`` or ``rider`` (one of them), ``reason``,
    and ``expires`` a date (YYYY-MM-DD: denied to the end of that day in the hub's
    time zone) or empty (until removed)."""
    body: dict[str, Any] = {"reason": form.get("reason", "").strip()}
    phone, rider = form.get("phone", "").strip(), form.get("rider", "").strip()
    if phone:
        body["phone"] = phone
    if rider:
        body["rider"] = rider
    day = parse_date(form.get("expires", "").strip() or None, "expires")
    if day is not None:
        tz = timezone_of(hub)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
        body["expires_at"] = int(end.timestamp() * 1000)
    return body


def rider_body(form: Mapping[str, str]) -> dict[str, Any]:
    return {"phone": form.get("phone", "").strip(), "pin": form.get("pin", "")}


def token_list(hub: Any) -> list[dict[str, Any]]:
    """The API tokens: the configuration's (names and scopes, never secrets) and
    those made here (their secrets are not kept at all)."""
    listed = [{"name": t.name, "scopes": sorted(t.scopes), "legacy": t.legacy,
               "source": "config"} for t in hub.config.api_tokens]
    return listed + [{**t, "source": "console", "legacy": False}
                     for t in stored_tokens.made(hub.store)]


# -- views -------------------------------------------------------------------------------


def _hub() -> Any:
    return current_app.extensions["yizhan_console"].hub


def _back():
    return redirect(url_for("console_people.people"), 303)


def _status(err: Exception) -> int:
    """A refusal's HTTP status, as the API's: 404 for what is not there, 409 for a
    clash with what is stored, else 400 (the form is wrong). Either way the page
    is shown again, saying why."""
    status = getattr(err, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    return 404 if getattr(err, "code", None) == "not_found" else 400


def _directory(change: Any, done: str):
    """Run a Directory change: taken, back to the list (303); refused, the list
    shown again (400, 404) with the reader's words for why (they name the box,
    never the value typed)."""
    try:
        change()
    except (BadField, DirectoryError, BadRange) as err:
        flash(refusal(err, DIRECTORY_WORDS), "error")
        return people(), _status(err)
    flash(done, "ok")
    return _back()


@bp.get("/people")
@requires("ops")
def people():
    hub = _hub()
    d = hub.directory
    return render_template("console/people.html", staff=d.list_staff(),
                           riders=d.list_riders(RIDERS_SHOWN), denied=d.list_denied(),
                           riders_shown=RIDERS_SHOWN, has_fleet_key=d.fleet_key is not None)


@bp.post("/people/staff")
@requires("ops")
def add_staff():
    d = _hub().directory
    return _directory(lambda: d.add_staff(staff_body(request.form, new=True), by=actor()),
                      N_("Staff member added; the stations get them now."))


@bp.post("/people/staff/<staff_id>")
@requires("ops")
def change_staff(staff_id: str):
    d = _hub().directory
    return _directory(lambda: d.change_staff(staff_id[:64], staff_body(request.form, new=False),
                                             by=actor()),
                      N_("Staff member changed; the stations get it now."))


@bp.post("/people/staff/<staff_id>/remove")
@requires("ops")
def remove_staff(staff_id: str):
    d = _hub().directory
    return _directory(lambda: d.remove_staff(staff_id[:64], by=actor()),
                      N_("Staff member removed."))


@bp.post("/people/riders")
@requires("ops")
def register_rider():
    d = _hub().directory
    return _directory(lambda: d.register_rider(rider_body(request.form), by=actor()),
                      N_("Rider registered."))


@bp.post("/people/riders/<rider>/remove")
@requires("ops")
def remove_rider(rider: str):
    d = _hub().directory
    return _directory(lambda: d.remove_rider(rider[:64], by=actor()), N_("Rider removed."))


@bp.post("/people/denied")
@requires("ops")
def deny():
    hub = _hub()
    return _directory(lambda: hub.directory.deny(deny_body(hub, request.form), by=actor()),
                      N_("Rider denied; the stations refuse their borrows now."))


@bp.post("/people/denied/<rider>/remove")
@requires("ops")
def undeny(rider: str):
    d = _hub().directory
    return _directory(lambda: d.undeny(rider[:64], by=actor()), N_("Rider may borrow again."))


@bp.get("/tokens")
@requires("admin")
def tokens():
    return render_template("console/tokens.html", tokens=token_list(_hub()), scopes=SCOPES)


@bp.post("/tokens")
@requires("admin")
def make_token():
    """Make a token; the page that answers shows its secret this once."""
    hub = _hub()
    name = request.form.get("name", "").strip()
    chosen = request.form.getlist("scopes")
    try:
        secret = stored_tokens.make(hub.store, hub.config.api_tokens, name, chosen,
                                    hub.clock.ms(), actor())
    except stored_tokens.TokenRefused as err:
        flash(refusal(err, TOKEN_WORDS), "error")
        return tokens(), _status(err)
    record(hub, "token.add", "api_token", name, {"scopes": sorted(set(chosen))})
    return render_template("console/tokens.html", tokens=token_list(hub), scopes=SCOPES,
                           new_name=name, new_secret=secret)


@bp.post("/tokens/<name>/revoke")
@requires("admin")
def revoke_token(name: str):
    hub = _hub()
    try:
        stored_tokens.revoke(hub.store, name[:64], hub.clock.ms())
    except stored_tokens.TokenRefused as err:
        flash(refusal(err, TOKEN_WORDS), "error")
        return tokens(), _status(err)
    record(hub, "token.revoke", "api_token", name[:64])
    flash(N_("Token revoked: the API refuses it from now on."), "ok")
    return redirect(url_for("console_people.tokens"), 303)
