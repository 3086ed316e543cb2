"""The hub's HTTP side (contract §11): JSON API, health and metrics.

Built by ``create_app(hub)``; the hub object owns the fleet, the store and the
metrics registry, so tests build as many as they need side by side. Every
error, whatever its status, is ``{"error": {"code": ..., "message": ...}}``.
The API is described by ``/api/v1/openapi.json`` (``hub/http/openapi.py``).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, current_app, g, jsonify, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from hub.alerting.alerts import (
    SILENCE,
    WINDOW,
    AlertConflict,
    AlertNotFound,
    BadMute,
    StoreUnavailable,
)
from hub.alerting.alerts import STATES as ALERT_STATES
from hub.alerting.notify.outbox import deliveries as alert_deliveries
from hub.fleet.banks import bank_states
from hub.fleet.commands import BadCommand, CommandNotSent, TooManyReplays
from hub.http import openapi, stored_tokens
from hub.http.ackpage import ack_by_link, ack_page
from hub.http.exposition import exposition
from hub.http.health import problems_of
from hub.http.metrics import min_charge
from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid
from yizhan.untrusted import MAX_DIGITS, BadJson, decimal, json_value

#: The Hub (hub/service.py) that builds this app and passes itself in: typed
#: loosely, since hub.http sits below hub.service (docs/hub-internals.md).
Hub = Any

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/api/v1")

WINDOWS_MS = {"24h": 24 * 3600_000, "7d": 7 * 24 * 3600_000, "30d": 30 * 24 * 3600_000}
COMPONENTS = ("station", "lockers", "dispenser", "kiosk")
MAX_LIMIT = 10_000
#: The largest request body: a command is far smaller (MQTT payloads are ≤ 64 KiB).
MAX_BODY = 64 * 1024

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid", 429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by a view's helpers; answered as the JSON error of contract §11."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def create_app(hub: Hub) -> Flask:
    """The Flask app of one hub; serve it with waitress (``Hub.serve``)."""
    app = Flask(__name__, static_folder=None)  # every route is an API route, documented
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["yizhan_hub"] = hub
    # The Directory's routes join the api blueprint (and its token check) on import.
    from hub.http import directory_api  # noqa: F401

    app.register_blueprint(api)
    # The riders' finder and the stations' feed: public, no token (hub/public).
    from hub.public.web import register as register_public

    register_public(app)
    # The public pages need no token (hub/public, docs/finder.md).
    from hub.public.poster import bp as poster

    app.register_blueprint(poster)

    @app.get("/healthz")
    def healthz():
        problems = problems_of(hub)  # yizhan_hub_healthy judges the same way
        if problems:
            return jsonify({"ok": False, "problems": problems}), 503
        return jsonify({"ok": True})

    @app.get("/metrics")
    def metrics():
        # The bytes generate_latest would give, written without an object per
        # line (hub/http/exposition.py: 2.4 million lines at 100 000 stations).
        return exposition(hub.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    # No bearer token: the signed, expiring token in the link is the authority
    # (hub/alerting/acklink.py). A phone opens it from a chat message, so the answer is a page;
    # opening it only shows the alert, its button's POST acknowledges (hub/http/ackpage.py).
    @app.get("/ack/<token>")
    def ack_link(token: str):
        return ack_page(hub, token)

    @app.post("/ack/<token>")
    def ack_link_post(token: str):
        return ack_by_link(hub, token)

    @app.before_request
    def openapi_query():
        # The blueprint's routes check their query after the token (require_token).
        # /healthz, /metrics and /ack/<token> ignore theirs: chat apps append their
        # own parameters to the links they open (WeChat's from=singlemessage).
        if request.blueprint != "api" and request.path.startswith("/api/"):
            return known_query()
        return None

    # The description is public (it holds no data), so tools can read it without a token.
    @app.get("/api/v1/openapi.json")
    def openapi_json():
        return jsonify(openapi.document())

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return error(err.code, err.message, err.status)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        status = err.code or 500
        resp, status = error(_HTTP_CODES.get(status, "error"), err.description or err.name,
                             status)
        if status == 405 and getattr(err, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(err.valid_methods)
        return resp, status

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    def database_down(err: Exception):
        log.error("database error serving %s: %s", request.path, err)
        return error("database_unavailable", "the hub's database does not answer", 503)

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error("internal", "internal error; the hub log has the details", 500)

    return app


def error(code: str, message: str, status: int):
    resp = jsonify({"error": {"code": code, "message": message}})
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="yizhan-hub"'
    return resp, status


def the_hub() -> Hub:
    return current_app.extensions["yizhan_hub"]


# -- authentication ------------------------------------------------------------------


def _document_path(rule: str) -> str:
    """A Flask rule as the OpenAPI document writes its path: ``<sid>`` → ``{sid}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@api.before_request
def require_token():
    """401 without a known bearer token, 403 when the token lacks the route's scope
    (the scope the OpenAPI document gives the operation)."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return error("unauthorized", "send Authorization: Bearer <token>", 401)
    found = None
    for token in the_hub().config.api_tokens:
        # Compare against every token, so the time taken does not tell which matched.
        if hmac.compare_digest(presented.encode(), token.secret.encode()):
            found = token
    if found is None:
        # One made from the console: looked up by the SHA-256 of what was presented.
        found = stored_tokens.find(the_hub().store, presented)
    if found is None:
        return error("unauthorized", "unknown API token", 401)
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    # HEAD and OPTIONS read what GET reads.
    method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
    needed = openapi.scope(_document_path(rule), method)
    if needed is not None and not found.allows(needed):
        log.info("token %s refused %s %s: it lacks the scope %s", found.name,
                 request.method, request.path, needed)
        return error("forbidden", f"the token {found.name!r} lacks the scope {needed!r} "
                     f"this needs", 403)
    g.token_name = found.actor
    return known_query()


def known_query():
    """400 ``unknown_param`` for a query parameter the operation's OpenAPI entry does
    not list: a misspelt filter (``?stat=firing``) would otherwise answer everything,
    and a client could not tell. The document is the list (docs/hub-api.md)."""
    if request.url_rule is None or not request.args:
        return None
    method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
    known = openapi.query_names(_document_path(request.url_rule.rule), method)
    unknown = sorted(set(request.args) - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        return error("unknown_param", f"unknown query parameter {unknown[0][:40]!r}; "
                     f"this takes: {listed}", 400)
    return None


# -- stations ------------------------------------------------------------------------


def _alerts_by_station() -> dict[str, int]:
    out: dict[str, int] = {}
    for (sid, _rule, _severity), n in the_hub().alerts.firing_counts().items():
        out[sid] = out.get(sid, 0) + n
    return out


def station_summary(view: Any, alerts: Mapping[str, int], threshold: int) -> dict[str, Any]:
    banks = bank_states(view.state, threshold)
    return {
        "sid": view.sid,
        "name": view.name,
        "online": view.online,
        "since": view.since_ms,
        "chargers_ready": banks["ready"] if banks is not None else None,
        "water": view.water(),
        "alerts_firing": alerts.get(view.sid, 0),
    }


def _station_or_404(sid: str) -> Any:
    view = the_hub().fleet.get(sid)
    if view is None:
        raise ApiError(404, "not_found", f"no station {sid!r} is known to the hub")
    return view


@api.get("/stations")
def list_stations():
    hub = the_hub()
    alerts = _alerts_by_station()
    threshold = min_charge(hub)
    return jsonify({"stations": [station_summary(v, alerts, threshold)
                                 for v in hub.fleet.stations()]})


@api.get("/stations/<sid>")
def get_station(sid: str):
    view = _station_or_404(sid)
    body = station_summary(view, _alerts_by_station(), min_charge(the_hub()))
    body.update({"group": view.group, "epoch": view.epoch, "last_seen": view.last_seen_ms,
                 "state": view.state})
    return jsonify(body)


def _ms_arg(name: str) -> int:
    raw = request.args.get(name)
    if raw is None:
        raise ApiError(400, "bad_range", "from and to go together")
    value = decimal(raw)
    if value is None:
        raise ApiError(400, "bad_range", f"{name} must be a time in integer milliseconds "
                       f"since the Unix epoch: 1 to {MAX_DIGITS} digits 0-9")
    return value


def _uptime_range(now_ms: int) -> tuple[int, int, str | None]:
    """(from, to, window) from the query: a window ending now (24h by default),
    or from and to."""
    window = request.args.get("window")
    if "from" in request.args or "to" in request.args:
        if window is not None:
            raise ApiError(400, "bad_range", "give window or from and to, not both")
        start, end = _ms_arg("from"), _ms_arg("to")
        if start >= end:
            raise ApiError(400, "bad_range", "from must be before to")
        return start, end, None
    window = "24h" if window is None else window
    if window not in WINDOWS_MS:
        raise ApiError(400, "bad_window", f"window must be one of {', '.join(WINDOWS_MS)}")
    return now_ms - WINDOWS_MS[window], now_ms, window


@api.get("/stations/<sid>/uptime")
def station_uptime(sid: str):
    view = _station_or_404(sid)
    hub = the_hub()
    component = request.args.get("component", "station")
    if component not in COMPONENTS:
        raise ApiError(400, "bad_component", f"component must be one of {', '.join(COMPONENTS)}")
    start, end, window = _uptime_range(hub.clock.ms())
    uptime = hub.ledger.uptime(view.sid, start, end, component).to_dict()
    body = {"sid": view.sid, "component": component, "window": window, "from": start,
            "to": end}
    body.update(uptime)
    return jsonify(body)


# -- alerts --------------------------------------------------------------------------


@api.get("/alerts")
def list_alerts():
    # An empty value is refused, not read as absent: "sid=" from a template whose
    # variable was unset must not list the whole fleet's alerts.
    state = request.args.get("state")
    sid = request.args.get("sid")
    if state is not None and state not in ALERT_STATES:
        return error("bad_state", f"state must be one of {', '.join(ALERT_STATES)}", 400)
    if sid is not None:
        try:
            check_sid(sid)
        except InvalidIdentifier as err:
            return error("bad_sid", str(err), 400)
    limit = decimal(request.args.get("limit", "1000"))
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        return error("bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT} "
                     "(digits 0-9)", 400)
    alerts = the_hub().alerts.list(state=state, sid=sid, limit=limit)
    return jsonify({"alerts": alerts})


def _change_alert(alert_id: str, change: str):
    store = the_hub().alerts
    try:
        alert = getattr(store, change)(alert_id, by=g.token_name)
    except AlertNotFound:
        return error("not_found", f"no alert {alert_id!r}", 404)
    except AlertConflict as err:
        return error("conflict", str(err), 409)
    except StoreUnavailable as err:
        return error("database_unavailable", str(err), 503)
    return jsonify(alert)


@api.post("/alerts/<alert_id>/ack")
def ack_alert(alert_id: str):
    return _change_alert(alert_id, "ack")


@api.post("/alerts/<alert_id>/resolve")
def resolve_alert(alert_id: str):
    return _change_alert(alert_id, "resolve")


@api.get("/alerts/<alert_id>/deliveries")
def list_deliveries(alert_id: str):
    hub = the_hub()
    found = alert_deliveries(hub.store, alert_id)
    # A route test's synthetic alert has deliveries and no row: show those too.
    if not found and hub.alerts.get(alert_id) is None:
        return error("not_found", f"no alert {alert_id!r}", 404)
    return jsonify({"alert_id": alert_id, "deliveries": found})


# -- commands ------------------------------------------------------------------------


def _body_json() -> Any:
    """The request body's JSON value (None when empty), or a 400 ``bad_json``. The
    decoder's own text stays out of the answer: it describes the parser, not the fix."""
    raw = request.get_data(cache=True)
    if not raw:
        return None
    try:
        return json_value(raw)
    except BadJson as err:
        raise ApiError(400, "bad_json", str(err)) from err


def _json_body() -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type claims (curl's
    ``-d`` sends form encoding by default)."""
    body = _body_json()
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", 'the body must be a JSON object {"cmd": ..., "args": {}}')
    return body


@api.post("/stations/<sid>/commands")
def send_command(sid: str):
    # The hub accepts stations it has never heard of, but a command to one is
    # almost certainly a typo: nothing would ever answer it.
    view = _station_or_404(sid)
    body = _json_body()
    cmd, args = body.get("cmd"), body.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        return error("bad_body", 'the body needs "cmd", a command name', 400)
    try:
        command_id = the_hub().commands.send(view.sid, cmd, args, by=g.token_name,
                                             paced=True)
    except BadCommand as exc:
        return error(exc.code, exc.message, 400)
    except TooManyReplays as exc:
        resp, status = error("too_many_replays", str(exc), 429)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp, status
    except CommandNotSent as exc:
        return error("broker_unavailable", str(exc), 503)
    location = url_for("api.get_command", sid=view.sid, command_id=command_id)
    return jsonify({"id": command_id}), 202, {"Location": location}


@api.get("/stations/<sid>/commands/<command_id>")
def get_command(sid: str, command_id: str):
    command = the_hub().commands.get(sid, command_id)
    if command is None:
        return error("not_found", f"no command {command_id!r} for station {sid!r}", 404)
    return jsonify(command)


# -- silences and maintenance windows (docs/alerts.md) ----------------------------------


def _mute_json() -> Any:
    """The body as JSON (any value: ``Mutes.add`` says what a good one is)."""
    return _body_json()


def _list_mutes(kind: str):
    include = request.args.get("include", "active")
    if include not in ("active", "all"):
        return error("bad_include", "include must be active (not over yet, the default) "
                     "or all", 400)
    items = the_hub().alerts.mutes.list(kind, include_ended=include == "all")
    return jsonify({"silences" if kind == SILENCE else "maintenance_windows": items})


def _add_mute(kind: str):
    try:
        item = the_hub().alerts.mutes.add(kind, _mute_json(), by=g.token_name)
    except BadMute as err:
        return error(err.code, err.message, 400)
    except StoreUnavailable as err:
        return error("database_unavailable", str(err), 503)
    return jsonify(item), 201


def _end_mute(kind: str, mute_id: str):
    try:
        return jsonify(the_hub().alerts.mutes.end(kind, mute_id))
    except AlertNotFound:
        what = "silence" if kind == SILENCE else "maintenance window"
        return error("not_found", f"no {what} {mute_id!r}", 404)
    except StoreUnavailable as err:
        return error("database_unavailable", str(err), 503)


@api.get("/silences")
def list_silences():
    return _list_mutes(SILENCE)


@api.post("/silences")
def add_silence():
    return _add_mute(SILENCE)


@api.delete("/silences/<silence_id>")
def end_silence(silence_id: str):
    return _end_mute(SILENCE, silence_id)


@api.get("/maintenance-windows")
def list_maintenance_windows():
    return _list_mutes(WINDOW)


@api.post("/maintenance-windows")
def add_maintenance_window():
    return _add_mute(WINDOW)


@api.delete("/maintenance-windows/<window_id>")
def end_maintenance_window(window_id: str):
    return _end_mute(WINDOW, window_id)
