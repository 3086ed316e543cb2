"""Staff mode: a staff id and PIN open a maintenance session on the agent; staff
release slots to restock, confirm refills and see faults; the session ends on
"exit", on the idle timer, or when the agent ends it.

    GET  /staff, POST               staff id (an on-screen a-z/0-9 keyboard)
    GET  /staff/pin, POST           PIN keypad -> POST /v1/maintenance
    GET  /staff/panel               slots, faults, water; release / refill / exit
    GET  /staff/status.json         what the panel polls (ended? something moved?)
    POST /staff/release             slot=N or slot=empty
    POST /staff/refill              what=water|banks|cups
    POST /staff/exit                DELETE /v1/maintenance/<id>

The kiosk's session keeps the staff id and the agent's session id (no PIN).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from kiosk.agent import SESSION_RE, AgentError, AgentUnavailable
from kiosk.context import go_home, kiosk
from kiosk.i18n import gettext

log = logging.getLogger(__name__)

bp = Blueprint("staff", __name__, url_prefix="/staff")

#: Staff ids as the on-screen keyboard types them (the directory allows 1-64 chars;
#: give staff ids of lowercase letters, digits, '.', '_' or '-').
STAFF_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
PIN_RE = re.compile(r"^[0-9]{4,8}\Z")
REFILLS = ("water", "banks", "cups")
_LOGIN, _STAFF = "staff_login", "staff"


# -- the session -----------------------------------------------------------------------


def _fresh(entry: Any, idle: float) -> bool:
    return isinstance(entry, dict) and kiosk().within(entry.get("t"), idle)


def _current() -> dict[str, Any] | None:
    """The logged-in staff member, or None. The browser's idle timer sends the screen
    home after ``staff_idle``; past twice that the server ends the session itself."""
    s = session.get(_STAFF)
    if not isinstance(s, dict) or not SESSION_RE.match(str(s.get("session", ""))):
        return None
    if not _fresh(s, 2 * kiosk().config.staff_idle):
        end_session()
        flash(gettext("Maintenance ended: no one touched the screen for a while."), "info")
        return None
    return s


def _touch(s: dict[str, Any]) -> None:
    s["t"] = kiosk().stamp()
    session[_STAFF] = s


def end_session() -> None:
    """End this screen's maintenance session on the agent (if any) and forget it."""
    s = session.pop(_STAFF, None)
    session.pop(_LOGIN, None)
    if not isinstance(s, dict) or not SESSION_RE.match(str(s.get("session", ""))):
        return
    try:
        kiosk().agent.end_maintenance(s["session"])
    except AgentError:
        pass  # already gone (the agent forgot it): nothing to end
    except AgentUnavailable as err:
        # The agent ends idle sessions by itself (10 min) and at restart.
        log.warning("could not end maintenance session: %s", err)


def _ended(reason: str | None = None):
    session.pop(_STAFF, None)
    text = {
        "idle": gettext("Maintenance ended: the station saw no activity for a while."),
        "replaced": gettext("Maintenance ended: another staff member logged in."),
        "restart": gettext("Maintenance ended: the station restarted."),
    }.get(reason or "", gettext("Maintenance ended."))
    return go_home(text)


# -- logging in ------------------------------------------------------------------------


@bp.get("")
def login():
    if _current() is not None:
        return redirect(url_for(".panel"))
    session.pop(_LOGIN, None)
    return render_template("staff_id.html", idle=kiosk().config.staff_idle)


@bp.post("")
def submit_id():
    staff_id = request.form.get("staff_id", "").strip()
    if not STAFF_RE.match(staff_id):
        return render_template("staff_id.html", error=True,
                               idle=kiosk().config.staff_idle), 400
    session[_LOGIN] = {"id": staff_id, "t": kiosk().stamp()}
    return redirect(url_for(".pin"))


@bp.get("/pin")
def pin():
    entry = session.get(_LOGIN)
    if not _fresh(entry, 2 * kiosk().config.staff_idle):
        return redirect(url_for(".login"))
    return render_template("staff_pin.html", staff_id=entry["id"],
                           idle=kiosk().config.staff_idle)


@bp.post("/pin")
def submit_pin():
    k = kiosk()
    entry = session.get(_LOGIN)
    if not _fresh(entry, 2 * k.config.staff_idle):
        return redirect(url_for(".login"))
    staff_id, value = entry["id"], request.form.get("pin", "")
    page = {"staff_id": staff_id, "idle": k.config.staff_idle}
    if not PIN_RE.match(value):
        return render_template("staff_pin.html", error="pin_format", **page), 400
    try:
        started = k.agent.start_maintenance(staff_id, value)
    except AgentError as err:
        if err.code == "bad_pin":
            return render_template("staff_pin.html", error="bad_pin",
                                   tries_left=err.extra.get("tries_left"), **page), 403
        if err.code == "locked_out":
            return render_template("staff_pin.html", error="locked_out",
                                   locked_until=err.extra.get("locked_until"), **page), 429
        if err.status == 400:
            return render_template("staff_id.html", error=True, idle=k.config.staff_idle), 400
        raise
    session.pop(_LOGIN, None)
    session[_STAFF] = {"id": staff_id, "session": started["id"], "t": k.stamp()}
    return redirect(url_for(".panel"))


# -- the panel -------------------------------------------------------------------------


def _view(s: dict[str, Any]) -> dict[str, Any] | None:
    try:
        view = kiosk().agent.maintenance(s["session"])
    except AgentError as err:
        if err.status == 404:
            return None
        raise
    return view if view["session"].get("active") else None


@bp.get("/panel")
def panel():
    k = kiosk()
    s = _current()
    if s is None:
        return go_home()
    view = _view(s)
    if view is None:
        return _ended(_end_reason(s))
    _touch(s)
    water = k.agent.station().get("water")
    return render_template("staff_panel.html", staff_id=s["id"], view=view, water=water,
                           mark=_mark(view), idle=k.config.staff_idle)


def _end_reason(s: dict[str, Any]) -> str | None:
    with contextlib.suppress(AgentError):
        return kiosk().agent.maintenance(s["session"])["session"].get("end_reason")
    return None


def _mark(view: dict[str, Any]) -> str:
    """Changes when a bank or lock moves, so the panel knows to redraw."""
    parts = [f"{x['slot']}:{x.get('bank') or '-'}:{int(bool(x.get('locked')))}:"
             f"{x.get('fault') or '-'}" for x in view.get("slots", [])]
    return f"{int(bool(view.get('online')))}|" + ",".join(parts)


@bp.get("/status.json")
def status():
    s = session.get(_STAFF)
    if not isinstance(s, dict) or not SESSION_RE.match(str(s.get("session", ""))):
        return {"active": False}
    try:
        view = kiosk().agent.maintenance(s["session"])
    except AgentError:
        return {"active": False}
    return {"active": bool(view["session"].get("active")), "mark": _mark(view)}


def _action(run):
    """Run a staff action on the agent; flash what happened; back to the panel."""
    s = _current()
    if s is None:
        return go_home()
    try:
        run(s["session"])
    except AgentError as err:
        if err.code in ("session_ended", "unknown_session"):
            return _ended(_end_reason(s))
        if err.code == "board_offline":
            flash(gettext("The locker board does not answer: no slot was opened."), "bad")
        elif err.code == "bad_slot":
            flash(gettext("There is no such slot."), "bad")
        else:
            raise
    _touch(s)
    return redirect(url_for(".panel"))


def _release_text(result: str, slot: int) -> str:
    if result == "released":
        return gettext("Slot %(slot)s is open.", slot=slot)
    if result == "jammed":
        return gettext("Slot %(slot)s is jammed: its lock did not open.", slot=slot)
    if result == "busy":
        return gettext("Slot %(slot)s is busy: try again.", slot=slot)
    if result == "bad_slot":
        return gettext("Slot %(slot)s does not exist on the board.", slot=slot)
    return gettext("Slot %(slot)s: the locker board does not answer.", slot=slot)


@bp.post("/release")
def release():
    raw = request.form.get("slot", "")
    if raw == "empty":
        slot: int | str = "empty"
    # The length first: int() raises on 4 300 digits, and no slot has more than 3.
    elif len(raw) <= 3 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 255:
        slot = int(raw)
    else:
        flash(gettext("There is no such slot."), "bad")
        return redirect(url_for(".panel"))

    def run(session_id: str) -> None:
        outcomes = kiosk().agent.release(session_id, slot)
        if not outcomes:
            flash(gettext("No empty slot to open."), "info")
        opened = [o["slot"] for o in outcomes if o["result"] == "released"]
        if slot == "empty" and opened:
            flash(gettext("Opened empty slots: %(slots)s", slots=", ".join(map(str, opened))),
                  "ok")
        for o in outcomes:
            if slot == "empty" and o["result"] == "released":
                continue
            flash(_release_text(o["result"], o["slot"]),
                  "ok" if o["result"] == "released" else "bad")

    return _action(run)


def _refill_text(what: str) -> str:
    if what == "water":
        return gettext("Water refill recorded. Thank you!")
    if what == "banks":
        return gettext("Power bank restock recorded. Thank you!")
    return gettext("Cup refill recorded. Thank you!")


@bp.post("/refill")
def refill():
    what = request.form.get("what", "")
    if what not in REFILLS:
        flash(gettext("Unknown refill."), "bad")
        return redirect(url_for(".panel"))

    def run(session_id: str) -> None:
        kiosk().agent.refill(session_id, what)
        flash(_refill_text(what), "ok")

    return _action(run)


@bp.post("/exit")
def leave():
    if session.get(_STAFF) is None:
        return go_home()
    end_session()
    return go_home(gettext("Maintenance ended. Thank you!"), "ok")
