"""The station page: its slots, dispenser, doors, recent events and commands, the
90-day uptime bar, and the remote unlock of a slot with a reason (audited).

The unlock goes out as the API's does (``hub.commands``, contract §7), by
``console:<user>``; a maintenance worker may send it only to a station of their
own groups (``may_act_on``). The reason is written to the audit log before the
command is sent, so no unlock leaves the hub unaccounted for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from hub.alerting.texts import N_
from hub.config.station_meta import MAX_TEXT, BadMeta
from hub.console.audit import actor, record
from hub.console.auth import current_user, may_act_on, requires
from hub.console.event_words import command_words, door, event_details, fault
from hub.console.fleet import severities_by_station
from hub.console.health import CONDITIONS, LABELS, WATER, condition
from hub.fleet.banks import bank_states, holds_bank
from hub.fleet.commands import BadCommand, CommandNotSent, TooManyReplays
from hub.fleet.directory_fields import BadField, text
from hub.public import meta
from hub.storage.schema import commands, events, ledger
from yizhan.untrusted import decimal

bp = Blueprint("console_station", __name__, url_prefix="/console")

DAYS = 90
EVENTS_SHOWN = 30
COMMANDS_SHOWN = 10
MAX_REASON = 200
#: No locker has more slots than this (the board's slot is a u8, contract §9).
MAX_SLOT = 255
DAY_MS = 86_400_000

#: Event types (contract §6) in words; an unknown type is shown as it came.
EVENT_WORDS = {
    "door_opened": N_("Door opened"), "door_closed": N_("Door closed"),
    "bank_borrowed": N_("Bank borrowed"), "bank_returned": N_("Bank returned"),
    "unlock_failed": N_("Unlock failed"), "slot_fault": N_("Slot fault"),
    "slot_fault_cleared": N_("Slot fault cleared"), "locker_offline": N_("Locker offline"),
    "locker_online": N_("Locker online"), "water_level": N_("Water level"),
    "dispenser_fault": N_("Dispenser fault"),
    "dispenser_fault_cleared": N_("Dispenser fault cleared"),
    "heater_lockout": N_("Heater lockout"), "heater_lockout_cleared": N_("Heater lockout cleared"),
    "refilled": N_("Refilled"), "maintenance_started": N_("Maintenance started"),
    "maintenance_ended": N_("Maintenance ended"), "tamper": N_("Tamper"), "visit": N_("Visits"),
}


def _hub() -> Any:
    return current_app.extensions["yizhan_console"].hub


def _tz() -> Any:
    return current_app.extensions["yizhan_console"].tz


def recent_events(hub: Any, sid: str) -> list[dict[str, Any]]:
    q = (sa.select(events.c.type, events.c.at_ms, events.c.data)
         .where(events.c.sid == sid)
         .order_by(events.c.at_ms.desc(), events.c.seq.desc()).limit(EVENTS_SHOWN))
    with hub.store.engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for r in rows:
        try:
            data = json.loads(r.data)
        except ValueError:
            data = {}
        out.append({"type": r.type, "words": EVENT_WORDS.get(r.type), "at": r.at_ms,
                    "data": event_details(r.type, data)})
    return out


def recent_commands(hub: Any, sid: str, sent: list[str]) -> list[dict[str, Any]]:
    """The station's latest commands: the stored ones, each as the hub knows it now
    (an answer may not be written yet), and those this session just sent, which
    the writer may not have committed yet."""
    q = (sa.select(commands.c.id).where(commands.c.sid == sid)
         .order_by(commands.c.created_ms.desc()).limit(COMMANDS_SHOWN))
    with hub.store.engine.connect() as conn:
        ids = [r.id for r in conn.execute(q)]
    found = {}
    for command_id in (*sent, *ids):
        command = hub.commands.get(sid, command_id)
        if command is not None:
            found[command_id] = command
    latest = sorted(found.values(), key=lambda c: c["created"], reverse=True)[:COMMANDS_SHOWN]
    out = []
    for c in latest:
        cmd, state, error = command_words(c["cmd"], c["state"], c["error"])
        out.append({"id": c["id"], "cmd": cmd, "args": json.dumps(c["args"], ensure_ascii=False),
                    "by": c["by"], "at": c["created"], "state": state, "error": error})
    return out


def uptime_days(hub: Any, sid: str, tz: Any) -> list[dict[str, Any]]:
    """The last DAYS local days, each with the share of it the station was down.

    One ledger read over the whole window (its outages cut at day boundaries),
    not one per day; days before the station's first mark have no data.
    """
    now_ms = hub.clock.ms()
    today = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(tz).replace(
        hour=0, minute=0, second=0, microsecond=0)
    starts = [int((today - timedelta(days=DAYS - 1 - i)).timestamp() * 1000)
              for i in range(DAYS)]
    uptime = hub.ledger.uptime(sid, starts[0], now_ms)
    with hub.store.engine.connect() as conn:
        first = conn.execute(sa.select(sa.func.min(ledger.c.at_ms)).where(
            ledger.c.sid == sid, ledger.c.component == "station")).scalar()
    days = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < DAYS else now_ms
        day = {"start": start, "label": datetime.fromtimestamp(start / 1000, UTC)
               .astimezone(tz).strftime("%m-%d")}
        if first is None or end <= first or end <= start:
            day.update(share=None, css="s-off")
            days.append(day)
            continue
        seen_from = max(start, first)
        down = 0
        for o in uptime.outages:
            o_end = o.end_ms if o.end_ms is not None else now_ms
            down += max(0, min(o_end, end) - max(o.start_ms, seen_from))
        share = down / (end - seen_from) if end > seen_from else 0.0
        day.update(share=share, css="s-ok" if share == 0 else "s-warn" if share < 0.05
                   else "s-bad")
        days.append(day)
    return days


@bp.get("/stations/<sid>")
@requires("maintenance")
def station(sid: str):
    hub = _hub()
    view = hub.fleet.get(sid)
    if view is None:
        abort(404)
    threshold = int(hub.config.min_charge)
    banks = bank_states(view.state, threshold)
    open_alerts = severities_by_station(hub).get(view.sid, {})
    word = condition(view, banks, open_alerts)
    state = view.state or {}
    slots = []
    for s in (state.get("lockers") or {}).get("slots") or ():
        if s.get("fault"):
            css = "s-bad"
        elif not holds_bank(s):
            css = "s-off"
        elif (s.get("charge") or 0) >= threshold:
            css = "s-ok"
        else:
            css = "s-warn"
        words = fault(s["fault"]) if s.get("fault") else None
        # has_bank: an estimated slot has a bank without an id (contract §5).
        slots.append({**s, "css": css, "fault_words": words, "has_bank": holds_bank(s)})
    days = uptime_days(hub, view.sid, _tz())
    return render_template(
        "console/station.html", view=view, word=word, label=LABELS[word],
        css=CONDITIONS[word][0], banks=banks, alerts=sum(open_alerts.values()),
        slots=slots, lockers=state.get("lockers"), dispenser=state.get("dispenser"),
        doors=_doors(state.get("doors")), health=state.get("health"),
        dispenser_fault=_dispenser_fault(state.get("dispenser")),
        events=recent_events(hub, view.sid),
        commands=recent_commands(hub, view.sid, _sent()),
        days=days, water_words=WATER, may_act=may_act_on(view.sid),
        max_reason=MAX_REASON, place=meta.whereabouts(hub, view.sid),
        may_place=_may_place(), max_text=MAX_TEXT)


def _may_place() -> bool:
    """Ops and admin set where riders find a station (docs/finder.md)."""
    user = current_user()
    return user is not None and user.role in ("ops", "admin")


@bp.post("/stations/<sid>/place")
@requires("ops")
def place(sid: str):
    """The station's place, address, host and hours for riders: saved over the
    configuration's (``reset``: back to them), audited."""
    hub = _hub()
    view = hub.fleet.get(sid)
    if view is None:
        abort(404)
    back = redirect(url_for("console_station.station", sid=view.sid) + "#place", 303)
    action = request.form.get("action")
    if action not in ("save", "reset"):
        # The form's two buttons say which; anything else is not this form (it was
        # taken as a save: a stray field must not overwrite what riders see).
        flash(N_("The form had a value the hub cannot take."), "error")
        return station(view.sid), 400
    if action == "reset":
        if meta.reset(hub, view.sid):
            record(hub, "station_place_reset", "station", view.sid)
        flash(N_("Back to the configuration's place, address, host and hours."), "ok")
        return back
    if any(k not in request.form for k in meta.FIELDS):
        # The page's form sends all five boxes (empty: not known); a post without
        # some is not that form, and must not wipe what riders see.
        flash(N_("The form had a value the hub cannot take."), "error")
        return station(view.sid), 400
    values = {k: request.form[k] for k in meta.FIELDS}
    try:
        row = meta.save(hub, view.sid, values, actor())
    except BadMeta as err:
        if err.field in ("lat", "lon"):
            flash(N_("Not saved: latitude and longitude are WGS-84 degrees (-90 to 90, "
                     "-180 to 180), both given or neither."), "error")
        elif err.field in ("address", "host"):
            flash(N_("Not saved: the address and the host are text of up to 120 "
                     "characters on one line."), "error")
        else:
            flash(N_("Not saved: opening hours are 24h or HH:MM-HH:MM, like 07:00-22:00 "
                     "or 20:00-08:00."), "error")
        return station(view.sid), 400
    record(hub, "station_place", "station", view.sid,
           {k: row[k] for k in meta.FIELDS})
    flash(N_("Saved: riders see it in the finder now."), "ok")
    return back


def _doors(doors: Any) -> list[tuple[str, bool]] | None:
    """(the door in words, open) of each door the State reports."""
    if not isinstance(doors, dict):
        return None
    return [(door(name), bool(is_open)) for name, is_open in doors.items()]


def _dispenser_fault(dispenser: Any) -> str | None:
    code = dispenser.get("fault") if isinstance(dispenser, dict) else None
    return fault(code, dispenser=True) if code else None


def _sent() -> list[str]:
    """The ids of the commands this session sent last (shown before they are stored)."""
    sent = session.get("sent")
    return [c for c in sent if isinstance(c, str)] if isinstance(sent, list) else []


def _slot(raw: str | None, view: Any) -> int | None:
    """The slot asked for: digits 0-9 only, and a slot the station has when its
    State lists them."""
    value = decimal(raw or "")
    if value is None or not 1 <= value <= MAX_SLOT:
        return None
    listed = [s.get("slot") for s in ((view.state or {}).get("lockers") or {}).get("slots") or ()]
    if listed and value not in listed:
        return None
    return value


@bp.post("/stations/<sid>/unlock")
@requires("maintenance")
def unlock(sid: str):
    hub = _hub()
    view = hub.fleet.get(sid)
    if view is None:
        abort(404)
    if not may_act_on(view.sid):
        abort(403)
    back = redirect(url_for("console_station.station", sid=view.sid), 303)
    slot = _slot(request.form.get("slot"), view)
    if slot is None:
        flash(N_("Choose a slot this station has."), "error")
        return station(view.sid), 400
    try:
        reason = text(request.form.get("reason", "").strip(), "reason", MAX_REASON)
    except BadField:
        flash(N_("Give a reason for the unlock (up to 200 characters)."), "error")
        return station(view.sid), 400
    # Audited before it is sent: an unlock that went out is never missing from the log.
    record(hub, "unlock", "station", view.sid, {"slot": slot, "reason": reason})
    try:
        command_id = hub.commands.send(view.sid, "unlock", {"slot": slot}, by=actor(),
                                       paced=True)
    except (BadCommand, TooManyReplays, CommandNotSent) as err:
        record(hub, "unlock_not_sent", "station", view.sid, {"slot": slot, "error": str(err)})
        flash(N_("The unlock could not be sent: the hub has no connection to the broker."),
              "error")
        return back
    session["sent"] = [command_id, *_sent()][:COMMANDS_SHOWN]
    flash(N_("Unlock sent. Its result appears under Commands."), "ok")
    return back
