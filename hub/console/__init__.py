"""The hub's web console (docs/console.md): server-rendered pages under ``/console``
for the people who run the fleet, on a desk screen or a maintenance worker's phone.

``register(app, hub)`` adds every page's blueprint to the hub's Flask app (the
hub calls it when ``console.enabled``), the ``/`` redirect, the session and CSRF
checks and the Jinja globals. Pages are modules of this package, each with a
Blueprint ``bp`` whose views declare their roles with ``@requires``
(hub/console/auth.py); the nav shows a page to the roles its view allows.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import secrets
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from hub.alerting.texts import CST, DEFAULT_LANGUAGE, LANGUAGES, Texts, texts
from hub.console import auth
from hub.console.auth import ROUTE_ROLES, Failures, Users, current_user, public
from yizhan.sessions import CSRF_FIELD, CsrfRefused, check_csrf, csrf_token, load_secret

__all__ = ["NAV", "PAGES", "register"]

log = logging.getLogger(__name__)

#: The page modules, in nav order; one not (yet) written is skipped.
PAGES = ("fleet", "station", "alerts", "uptime", "report", "loans", "refill", "people",
         "users")
#: (endpoint, label) of the nav, shown to the roles the endpoint's view allows.
NAV = (
    ("console_fleet.fleet", "Fleet"),
    ("console_alerts.alerts", "Alerts"),
    ("console_uptime.uptime", "Uptime"),
    ("console_report.report", "Service report"),
    ("console_loans.loans", "Loans"),
    ("console_refill.refill", "Refill round"),
    ("console_people.people", "People"),
    ("console_people.tokens", "API tokens"),
    ("console_users.users", "Users"),
)
#: The language switch shows each in its own words.
LANGUAGE_NAMES = {"zh": "中文", "en": "English"}

shell = Blueprint("console", __name__, url_prefix="/console", static_folder="static",
                  static_url_path="/static", template_folder="templates")


@shell.get("/lang/<code>")
@public
def language(code: str):
    """The language switch: remembered in the session, back to the page it was on."""
    if code in LANGUAGES:
        session["lang"] = code
    return redirect(auth.safe_next(request.args.get("next")), 303)


@dataclass
class Console:
    """What the console's views share, in ``app.extensions["yizhan_console"]``."""

    hub: Any
    users: Users
    failures: Failures
    idle_ms: int
    tz: Any


def register(app: Flask, hub: Any) -> None:
    """Every console page on ``app``, and ``/`` leading to it."""
    config = hub.config.console
    secret_file = config.secret_key_file
    if secret_file is not None:
        app.secret_key = load_secret(secret_file)
    else:
        log.warning("console.secret_key_file is not set: sessions end when the hub restarts")
        app.secret_key = secrets.token_hex(32)
    app.config.update(
        SESSION_COOKIE_NAME="yizhan_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        SESSION_COOKIE_PATH="/",
    )
    tz_name = hub.config.routing.timezone
    app.extensions["yizhan_console"] = Console(
        hub=hub, users=Users(hub.store, hub.clock), failures=Failures(hub.clock),
        idle_ms=config.idle_minutes * 60_000,
        tz=zoneinfo.ZoneInfo(tz_name) if tz_name else CST)

    app.register_blueprint(shell)
    app.register_blueprint(auth.bp)
    for page in PAGES:
        name = f"{__name__}.{page}"
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if not hasattr(module, "bp"):
            log.error("console page %s has no blueprint bp: not served", name)
            continue
        app.register_blueprint(module.bp)
    auth.record_roles(app)
    ROUTE_ROLES["console.static"] = auth.PUBLIC

    @app.get("/")
    @public
    def console_root():
        if current_user() is None:
            return redirect(url_for("console_auth.signin"), 303)
        return redirect(url_for("console_fleet.fleet"), 303)

    ROUTE_ROLES["console_root"] = auth.PUBLIC
    _requests(app)
    _templates(app)
    _errors(app)


def _is_console() -> bool:
    return request.path.startswith("/console") or request.endpoint == "console_root"


def _requests(app: Flask) -> None:
    @app.before_request
    def console_request():
        if not _is_console():
            return None
        auth.check_declared()
        lang = session.get("lang")
        g.console_texts = texts(lang if lang in LANGUAGES else DEFAULT_LANGUAGE)
        check_csrf()  # raises CsrfRefused: a 400 page
        return None

    @app.after_request
    def console_headers(resp):
        if _is_console():
            # No external assets at all: the page may load only from this hub.
            resp.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "same-origin")
            if resp.mimetype == "text/html":
                resp.headers.setdefault("Cache-Control", "no-store")
        return resp


def _words() -> Texts:
    return g.get("console_texts") or texts(DEFAULT_LANGUAGE)


# Jinja's new-style gettext fills %(name)s itself (escaping the values): these
# only translate.
def _gettext(message: str) -> str:
    return _words().translations.gettext(message)


def _ngettext(singular: str, plural: str, n: int) -> str:
    return _words().translations.ngettext(singular, plural, n)


#: The request's language's word for ``message`` (for views that translate a table once).
gettext = _gettext
ngettext = _ngettext


def reader_language() -> str:
    """The request's language (``zh``, ``en``)."""
    return _words().lang


def when(ms: int | None) -> str:
    """Hub milliseconds as the local date and time, ``12-07 14:05``."""
    if ms is None:
        return "—"
    from flask import current_app
    tz = current_app.extensions["yizhan_console"].tz
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).strftime("%m-%d %H:%M")


def nav() -> list[tuple[str, str, bool]]:
    """(url, label, current) of the pages the signed-in user may open."""
    user = current_user()
    if user is None:
        return []
    from flask import current_app
    out = []
    for endpoint, label in NAV:
        roles = ROUTE_ROLES.get(endpoint)
        if endpoint in current_app.view_functions and roles and user.role in roles:
            out.append((url_for(endpoint), _gettext(label),
                        request.endpoint == endpoint))
    return out


def _templates(app: Flask) -> None:
    env = app.jinja_env
    if "jinja2.ext.InternationalizationExtension" not in env.extensions:
        env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)
    env.filters["when"] = when
    env.filters["duration"] = lambda s: _words().duration(s) if s is not None else "—"

    @app.context_processor
    def console_globals() -> dict[str, Any]:
        if not _is_console():
            return {}
        return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD,
                "current_user": current_user, "nav": nav, "lang": _words().lang,
                "languages": LANGUAGE_NAMES,
                "flashes": lambda: get_flashed_messages(with_categories=True)}


def _errors(app: Flask) -> None:
    previous = app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)

    def console_error(err: HTTPException):
        if not _is_console() and previous is not None:
            return previous(err)
        status = err.code or 500
        return render_template("console/error.html", status=status), status

    app.register_error_handler(HTTPException, console_error)
    crashed = app.error_handler_spec.get(None, {}).get(None, {}).get(Exception)

    def console_crash(err: Exception):
        if not _is_console() and crashed is not None:
            return crashed(err)
        log.exception("console: unhandled error serving %s %s", request.method, request.path)
        return render_template("console/error.html", status=500), 500

    app.register_error_handler(Exception, console_crash)

    @app.errorhandler(CsrfRefused)
    def csrf_refused(err: CsrfRefused):
        log.info("console: %s %s refused without the form's CSRF token", request.method,
                 request.path)
        return render_template("console/error.html", status=400, csrf=True), 400
