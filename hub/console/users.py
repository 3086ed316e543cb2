"""The users page (admin only): who may sign in to the console, with which role
and, for maintenance workers, which groups.

Users are kept by ``hub.console.auth.Users`` (passwords only as werkzeug's
salted hash); changing a role, the groups or the password, or disabling a user,
ends that user's sessions. Each change is audited as ``console:<admin>``; no
password is ever shown, logged or audited. An admin cannot disable themself,
so the console always keeps one admin who can sign in.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from hub.alerting.texts import N_
from hub.console.audit import record
from hub.console.auth import (
    MAX_NAME,
    MAX_PASSWORD,
    MIN_PASSWORD,
    ROLES,
    UserError,
    current_user,
    requires,
)
from hub.console.refusals import USER_WORDS, refusal

bp = Blueprint("console_users", __name__, url_prefix="/console")


def _console() -> Any:
    return current_app.extensions["yizhan_console"]


def _groups(raw: str) -> list[str]:
    return [g.strip() for g in raw.replace("，", ",").split(",") if g.strip()]


def _back():
    return redirect(url_for("console_users.users"), 303)


def _refused(err: UserError):
    """The users page again (400; 404 for a user that is not there; 409 for a
    name taken), its flash saying why: nothing was changed."""
    status = {"not_found": 404, "exists": 409}.get(getattr(err, "code", ""), 400)
    return users(), status


@bp.get("/users")
@requires("admin")
def users():
    return render_template("console/users.html", users=_console().users.list(), roles=ROLES)


@bp.post("/users")
@requires("admin")
def add_user():
    console = _console()
    form = request.form
    name = form.get("name", "").strip().lower()
    role = form.get("role", "")
    groups = _groups(form.get("groups", ""))
    try:
        console.users.add(name, form.get("password", ""), role, groups)
    except UserError as err:
        flash(refusal(err, USER_WORDS, MAX_PASSWORD, least=MIN_PASSWORD, longest=MAX_NAME),
              "error")
        return _refused(err)
    record(console.hub, "user.add", "console_user", name, {"role": role, "groups": groups})
    flash(N_("User added."), "ok")
    return _back()


@bp.post("/users/<name>")
@requires("admin")
def change_user(name: str):
    """Role and groups, a new password, or disabled / enabled: what the form sends."""
    console = _console()
    form = request.form
    name = name[:64]
    detail: dict[str, Any] = {}
    if form.get("action") not in (None, "password", "disable", "enable"):
        # Not one of the page's three forms: refused, rather than read as a role change.
        flash(N_("The form had a value the hub cannot take."), "error")
        return users(), 400
    try:
        if form.get("action") == "password":
            console.users.set_password(name, form.get("password", ""))
            detail["password"] = "reset"
        elif form.get("action") in ("disable", "enable"):
            disable = form["action"] == "disable"
            me = current_user()
            if disable and me is not None and me.name == name:
                flash(N_("You cannot disable yourself."), "error")
                return users(), 400
            console.users.change(name, disabled=disable)
            detail["disabled"] = disable
        else:
            role = form.get("role", "")
            groups = _groups(form.get("groups", ""))
            if role == "maintenance" and not groups:
                raise UserError("a maintenance user needs groups", "needs_groups")
            console.users.change(name, role=role, groups=groups)
            detail.update(role=role, groups=groups)
    except UserError as err:
        flash(refusal(err, USER_WORDS, MAX_PASSWORD, least=MIN_PASSWORD, longest=MAX_NAME),
              "error")
        return _refused(err)
    record(console.hub, "user.change", "console_user", name, detail)
    flash(N_("User changed."), "ok")
    return _back()
