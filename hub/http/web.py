"""The hub's HTTP side (contract §11): JSON API, health and metrics.

Built by ``create_app(hub)``; the hub object owns the fleet, the store and the
metrics registry, so tests build as many as they need side by side. Every
error, whatever its status, is ``{"error": {"code": ..., "message": ...}}``.
The API is described by ``/api/v1/openapi.json`` (``hub/http/openapi.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import zoneinfo
from collections.abc import Iterator, Mapping
from datetime import tzinfo
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from hub.alerting.acklink import AckClaim, AckLinks, LinkExpired, LinkInvalid
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
from hub.alerting.notify.text import CST, clock_text, duration_text, what_text
from hub.fleet.banks import bank_states
from hub.fleet.commands import BadCommand, CommandNotSent
from hub.http import openapi
from hub.http.metrics import min_charge
from protocol.errors import InvalidIdentifier
from protocol.ids import check_sid

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
    415: "unsupported_media_type", 422: "invalid", 503: "unavailable",
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
    app.register_blueprint(api)

    @app.get("/healthz")
    def healthz():
        try:
            problems = list(hub.problems())
        except Exception as err:  # the check itself failing is a problem too
            log.exception("health check failed")
            problems = [f"health check failed: {err}"]
        if problems:
            return jsonify({"ok": False, "problems": problems}), 503
        return jsonify({"ok": True})

    @app.get("/metrics")
    def metrics():
        return generate_latest(hub.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    # No bearer token: the signed, expiring token in the link is the authority
    # (hub/alerting/acklink.py). A phone opens it from a chat message, so the answer is a page;
    # opening it only shows the alert, its button's POST acknowledges (see ack_page).
    @app.get("/ack/<token>")
    def ack_link(token: str):
        return ack_page(hub, token)

    @app.post("/ack/<token>")
    def ack_link_post(token: str):
        return ack_by_link(hub, token)

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


def api_tokens(config: Any) -> Iterator[tuple[str, str]]:
    """``(name, token)`` for each configured token. A bare string is named
    ``token:`` + its first 6 characters (enough to tell tokens apart in the
    records, too little to use one); ``{name, token}`` entries keep their name."""
    for entry in config.api_tokens:
        if isinstance(entry, str):
            yield f"token:{entry[:6]}", entry
        elif isinstance(entry, Mapping):
            yield str(entry["name"]), str(entry["token"])
        else:
            yield str(entry.name), str(entry.token)


@api.before_request
def require_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return error("unauthorized", "send Authorization: Bearer <token>", 401)
    found = None
    for name, known in api_tokens(the_hub().config):
        # Compare against every token, so the time taken does not tell which matched.
        if hmac.compare_digest(token.encode(), known.encode()):
            found = name
    if found is None:
        return error("unauthorized", "unknown API token", 401)
    g.token_name = found
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
    if not raw.isdigit() or len(raw) > 15:
        raise ApiError(400, "bad_range",
                       f"{name} must be a time in integer milliseconds since the Unix epoch")
    return int(raw)


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
    state = request.args.get("state") or None
    sid = request.args.get("sid") or None
    if state is not None and state not in ALERT_STATES:
        return error("bad_state", f"state must be one of {', '.join(ALERT_STATES)}", 400)
    if sid is not None:
        try:
            check_sid(sid)
        except InvalidIdentifier as err:
            return error("bad_sid", str(err), 400)
    raw_limit = request.args.get("limit", "1000")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return error("bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}", 400)
    alerts = the_hub().alerts.list(state=state, sid=sid, limit=int(raw_limit))
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


# -- acknowledge links -----------------------------------------------------------------
#
# GET /ack/<token> only shows what the link would acknowledge, with one button; the
# button's form POSTs to the same URL and only that acknowledges. Mail gateways that
# scan every link (Safe Links and the like) and chat apps that fetch a preview open
# links with GET, so a GET that acknowledged would tell the team "someone is on it"
# before anyone had read the message.

_PAGE = {
    "zh": {
        "ask": "确认这条告警？",
        "ask_text": "确认后，值班同事会看到已有人处理。",
        "button": "✅ 我来处理（确认）",
        "ok": "已确认",
        "again": "已确认（之前已有人确认）",
        "thanks": "谢谢！值班同事会看到已有人处理。",
        "acked": "已有人确认",
        "acked_text": "这条告警已经有人确认，无需再点。",
        "station": "站点",
        "what": "情况",
        "severity": "级别",
        "since": "开始",
        "state": "状态",
        "ago": "{at}（已 {d}）",
        "state_firing": "未处理，还没有人确认",
        "state_acked": "已确认（{at}）",
        "state_resolved": "已恢复（{at}）",
        "critical": "紧急",
        "warning": "警告",
        "info": "提示",
        "expired": "链接已过期",
        "expired_text": "这个确认链接已经过期。请在群里回复，或登录后台确认。",
        "invalid": "链接无效",
        "invalid_text": "这个确认链接不完整或不是本系统发出的。请从原消息重新打开。",
        "missing": "找不到这条告警",
        "missing_text": "告警可能已被清理。",
        "resolved": "告警已恢复",
        "resolved_text": "这条告警已经恢复，无需确认。",
        "busy": "暂时无法确认",
        "busy_text": "系统忙，请稍后再点一次链接。",
        "off": "确认链接未启用",
        "off_text": "本系统未配置确认链接。",
        "form": "请在确认页面上点按钮",
        "form_text": "这次提交缺少确认页面的内容，没有确认任何告警。请重新打开链接，再点按钮。",
        "foreign": "请求来自其他网站",
        "foreign_text": "只能在本系统的确认页面上点按钮确认，没有确认任何告警。"
                        "请从原消息重新打开链接。",
    },
    "en": {
        "ask": "Acknowledge this alert?",
        "ask_text": "Once you acknowledge, the others can see that someone is on it.",
        "button": "✅ I'm on it (acknowledge)",
        "ok": "Acknowledged",
        "again": "Acknowledged (already, earlier)",
        "thanks": "Thank you! The others can see someone is on it.",
        "acked": "Already acknowledged",
        "acked_text": "Someone has acknowledged this alert; nothing more to do here.",
        "station": "Station",
        "what": "What",
        "severity": "Severity",
        "since": "Since",
        "state": "State",
        "ago": "{at} ({d} ago)",
        "state_firing": "Open, nobody has acknowledged it yet",
        "state_acked": "Acknowledged ({at})",
        "state_resolved": "Resolved ({at})",
        "critical": "Critical",
        "warning": "Warning",
        "info": "Info",
        "expired": "Link expired",
        "expired_text": "This acknowledge link has expired. Reply in the group, or "
                        "acknowledge in the console.",
        "invalid": "Invalid link",
        "invalid_text": "This link is incomplete or was not sent by this hub. Open it again "
                        "from the message.",
        "missing": "Alert not found",
        "missing_text": "It may have been cleaned up.",
        "resolved": "Already resolved",
        "resolved_text": "This alert has resolved; nothing to acknowledge.",
        "busy": "Cannot acknowledge now",
        "busy_text": "Please tap the link again shortly.",
        "off": "Acknowledge links are off",
        "off_text": "This hub has no ack links.",
        "form": "Please use the button on the page",
        "form_text": "This request did not come from the acknowledge page; nothing was "
                     "acknowledged. Open the link again and tap the button.",
        "foreign": "Request from another site",
        "foreign_text": "Alerts are acknowledged only with the button on this hub's page; "
                        "nothing was acknowledged. Open the link again from the message.",
    },
}

#: The one stylesheet of every ack page: phone first, readable from 320 px up.
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34em;margin:0 auto;"
    "padding:1.6em 1.1em 2.4em;font-size:18px;line-height:1.5;color:#222;background:#fff}"
    "h1{font-size:1.5em;line-height:1.3;margin:0 0 .8em}p{margin:.5em 0}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.4em 1em;margin:0 0 1em}"
    "dt{color:#666}dd{margin:0;overflow-wrap:anywhere}.critical{color:#b42318;font-weight:600}"
    "button{display:block;width:100%;min-height:3.2em;margin:1.4em 0 1em;padding:.6em 1em;"
    "font:inherit;font-size:1.2em;font-weight:600;color:#fff;background:#1a7f37;border:0;"
    "border-radius:.5em;cursor:pointer}button:active{background:#116329}.note{color:#555}"
)
# Nothing but that stylesheet (allowed by its hash) and a form posting back to this
# hub: no scripts, no images, no frames around the page, no other form target.
_CSP = ("default-src 'none'; style-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
        + "'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: What a browser's ``Sec-Fetch-Site`` may say of the page's own form (``none``: the
#: person's own action, such as resubmitting from history); absent on old browsers.
_OWN_FORM = ("same-origin", "none")
_DB_DOWN = (StoreUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError)


def _check_link(hub: Any, token: str) -> tuple[AckLinks, AckClaim, str] | Response:
    """The hub's links, the token's claim and the page's language; or the error page
    (links off, a forged or expired token), the same for GET and POST."""
    links = getattr(hub, "acklinks", None)
    if links is None:
        return _page("zh", 503, "off")
    try:
        claim = links.verify(token)
    except LinkExpired as err:
        return _page(_lang(hub, err.claim.notifier), 403, "expired")
    except LinkInvalid:
        return _page("zh", 403, "invalid")
    return links, claim, _lang(hub, claim.notifier)


def ack_page(hub: Any, token: str):
    """``GET`` (and ``HEAD``) ``/ack/<token>``: what the link would acknowledge — the
    station, the alert, since when, its state — and, while it fires, the button that
    acknowledges it. Changes nothing."""
    checked = _check_link(hub, token)
    if isinstance(checked, Response):
        return checked
    links, claim, lang = checked
    try:
        alert = hub.alerts.get(claim.alert_id)
    except _DB_DOWN as err:
        log.warning("ack page for alert %s: the store does not answer: %s", claim.alert_id, err)
        return _page(lang, 503, "busy")
    if alert is None:
        return _page(lang, 404, "missing")
    words = _PAGE[lang]
    details = _details(hub, alert, lang)
    if alert["state"] == "firing":
        form = (f'<form method="post" action="{html.escape(token)}">'
                '<input type="hidden" name="confirm" '
                f'value="{html.escape(links.confirmation(token))}">'
                f'<button type="submit">{html.escape(words["button"])}</button></form>')
        return _page(lang, 200, "ask", details=details, form=form, note=words["ask_text"])
    what = "acked" if alert["state"] == "acked" else "resolved"
    return _page(lang, 200, what, details=details, note=words[f"{what}_text"])


def ack_by_link(hub: Any, token: str):
    """``POST /ack/<token>``, the page's button: acknowledge the alert as
    ``link:<notifier>`` and say so. Acknowledging twice changes nothing."""
    checked = _check_link(hub, token)
    if isinstance(checked, Response):
        return checked
    links, claim, lang = checked
    # Forgery: there is no session or cookie for a forged request to ride on; the token
    # in the path is the whole authority. What is left to stop is a page elsewhere that
    # knows a link (from a forwarded message, say) making a browser that can reach the
    # hub — perhaps only from inside the operator's network — post it. So the form must
    # repeat a value derived from the token with the hub's key (links.confirmation),
    # which only a reader of this page learns: a cross-site page can send a request but
    # cannot read the answer. And where the browser says where the request comes from
    # (Sec-Fetch-Site, sent by every current browser and set by the browser itself, so
    # a reverse proxy's Host or Origin rewriting cannot confuse it), anything but the
    # page's own form is refused. Both checks need no state on the hub.
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in _OWN_FORM:
        log.warning("refused an ack of alert %s posted from another site (%s)",
                    claim.alert_id, site)
        return _page(lang, 403, "foreign")
    if not links.confirms(token, request.form.get("confirm", "")):
        log.info("refused an ack of alert %s without the page's confirmation", claim.alert_id)
        return _page(lang, 400, "form")
    try:
        before = hub.alerts.get(claim.alert_id)
        alert = hub.alerts.ack(claim.alert_id, by=claim.by)
    except AlertNotFound:
        return _page(lang, 404, "missing")
    except AlertConflict:
        return _page(lang, 409, "resolved")
    except _DB_DOWN as err:
        log.warning("ack of alert %s: the store does not answer: %s", claim.alert_id, err)
        return _page(lang, 503, "busy")
    again = before is not None and before["state"] != "firing"
    if not again:
        log.info("alert %s acknowledged through a link of %s", alert["id"], claim.notifier)
    return _page(lang, 200, "again" if again else "ok", details=_details(hub, alert, lang),
                 note=_PAGE[lang]["thanks"])


def _lang(hub: Any, notifier: str) -> str:
    spec_of = getattr(hub.config, "notifier_spec", None)
    spec = spec_of(notifier) if spec_of is not None else None
    return spec.language if spec is not None else "zh"


def _tz(hub: Any) -> tzinfo:
    """The hub's ``timezone:``, as its messages show times; China Standard Time without."""
    name = getattr(getattr(hub.config, "routing", None), "timezone", None)
    return zoneinfo.ZoneInfo(name) if name else CST


def _details(hub: Any, alert: Mapping[str, Any], lang: str) -> list[tuple[str, str, str]]:
    """(label, value, class) rows: the station, what is wrong, how bad, since when, and
    its state."""
    words, tz = _PAGE[lang], _tz(hub)
    station = _station_for_page(hub, alert["sid"])
    name = station["name"]
    where = f"{name}（{alert['sid']}）" if lang == "zh" else f"{name} ({alert['sid']})"
    rows = [(words["station"], where, ""), (words["what"], what_text(alert, station, lang), "")]
    severity = alert.get("severity")
    if severity in ("critical", "warning", "info"):
        rows.append((words["severity"], words[severity], severity))
    started = alert.get("started_at")
    if isinstance(started, int):
        since = clock_text(started, tz)
        if alert["state"] == "firing":
            ago = duration_text((hub.clock.ms() - started) / 1000, lang)
            since = words["ago"].format(at=since, d=ago)
        rows.append((words["since"], since, ""))
    at = {"acked": alert.get("acked_at"), "resolved": alert.get("resolved_at")}.get(
        alert["state"])
    state = words.get(f"state_{alert['state']}", alert["state"])
    rows.append((words["state"], state.format(at=clock_text(at, tz) if at else "—"), ""))
    return rows


def _station_for_page(hub: Any, sid: str) -> dict[str, Any]:
    fleet = getattr(hub, "fleet", None)
    view = fleet.get(sid) if fleet is not None else None
    if view is not None:
        return {"sid": sid, "name": view.name or sid, "group": view.group}
    meta = hub.config.station_meta(sid)
    return {"sid": sid, "name": meta.name if meta else sid}


def _page(lang: str, status: int, what: str, *,
          details: list[tuple[str, str, str]] | None = None, form: str = "",
          note: str = "") -> Response:
    """The small HTML page of an ack link: a heading, the alert's ``details`` (or, on
    an error page, what went wrong), the button's ``form`` (markup made by the caller)
    and a closing ``note``."""
    words = _PAGE[lang]
    title = words[what]
    # A question gets no mark: ✅ would read as done before the button is tapped.
    mark = "" if what == "ask" else "✅ " if status == 200 else "⚠️ "
    if details is None:
        main = f"<p>{html.escape(words.get(f'{what}_text', ''))}</p>"
    else:
        main = "<dl>" + "".join(
            f'<dt>{html.escape(label)}</dt><dd{f" class={cls}" if cls else ""}>'
            f"{html.escape(value)}</dd>" for label, value, cls in details) + "</dl>"
    tail = f'<p class="note">{html.escape(note)}</p>' if note else ""
    page = (f"<!doctype html><html lang=\"{'zh-CN' if lang == 'zh' else 'en'}\"><head>"
            "<meta charset=\"utf-8\"><meta name=\"viewport\" "
            "content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{mark}{html.escape(title)}</h1>{main}{form}{tail}</body></html>")
    resp = Response(page, status=status, mimetype="text/html")
    # The token is in the URL: keep it out of caches, referrers and search engines.
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Robots-Tag"] = "noindex"
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# -- commands ------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type claims (curl's
    ``-d`` sends form encoding by default)."""
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw) if raw else None
    except ValueError as err:
        raise ApiError(400, "bad_json", f"the body is not JSON: {err}") from err
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
        command_id = the_hub().commands.send(view.sid, cmd, args, by=g.token_name)
    except BadCommand as exc:
        return error(exc.code, exc.message, 400)
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
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw) if raw else None
    except ValueError as err:
        raise ApiError(400, "bad_json", f"the body is not JSON: {err}") from err


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
