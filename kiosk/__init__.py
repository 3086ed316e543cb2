"""The station's touchscreen kiosk: borrow and return a power bank, staff restock.

A Flask app built by :func:`create_app` from the station file's settings, one
blueprint per screen, served by waitress on loopback and shown by Chromium in
kiosk mode. It talks only to the agent's local API (docs/agent-api.md)::

    from kiosk import create_app
    from kiosk.config import load_kiosk_config

    app = create_app(load_kiosk_config("/etc/yizhan/station.yaml"))
    waitress.serve(app, host="127.0.0.1", port=8700)      # `yizhan kiosk --config ...`

Phone numbers live only in the body of the one POST that carries them: the
kiosk turns them into rider ids at once (contract §1) and never stores, logs or
redirects with them. docs/kiosk-design.md has the screens and the rules.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, render_template, request, session
from werkzeug.exceptions import HTTPException

from kiosk import i18n
from kiosk.agent import AgentClient, AgentError, AgentUnavailable
from kiosk.config import KioskConfig
from kiosk.context import Kiosk
from kiosk.ratelimit import RateLimiter
from kiosk.security import CsrfRefused, check_csrf, csrf_token, load_secret
from yizhan import __version__
from yizhan.clock import SYSTEM_CLOCK, Clock
from yizhan.hosts import loopback_host

__all__ = ["create_app"]

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(config: KioskConfig, *, clock: Clock | None = None,
               agent: AgentClient | None = None) -> Flask:
    """The kiosk for one station. ``clock`` (tests move a ManualClock) drives the
    rate limit and the idle expiry; ``agent`` defaults to the configured local API."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=load_secret(config.data_dir / "kiosk.secret"),
        SESSION_COOKIE_NAME="yizhan_kiosk",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=16 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.json.ensure_ascii = False
    clock = clock or SYSTEM_CLOCK
    rate = config.borrow_rate
    Kiosk(
        config=config,
        agent=agent or AgentClient(config.api_url, config.api_socket, config.api_timeout),
        clock=clock,
        limiter=RateLimiter([(rate.per_minute, 60.0), (rate.per_hour, 3600.0)], clock),
    ).install(app)
    translations = i18n.load_translations()
    i18n.init_app(app, translations)

    @app.before_request
    def only_loopback_names():
        # DNS rebinding: a page opened on the Pi's browser whose name comes to
        # resolve to 127.0.0.1 reaches us same-origin, but under its own name.
        if not loopback_host(request.host, config.port):
            log.warning("kiosk refused a request for host %r", request.host[:80])
            return render_template("error.html", status=421), 421
        return None

    @app.before_request
    def language_and_csrf() -> None:
        lang = session.get("lang")
        if lang not in i18n.LANGUAGES:
            lang = config.language
        g.lang = lang
        g.translations = translations[lang]
        check_csrf()

    @app.context_processor
    def page_globals() -> dict[str, Any]:
        return {
            "csrf_token": csrf_token,
            "lang": g.get("lang", config.language),
            "languages": i18n.LANGUAGES,
            "station_name": config.station_name,
            "now_ms": clock.ms(),
            "idle": config.idle,
            "version": __version__,
        }

    @app.after_request
    def headers(response):
        # Pages hold a masked number or a staff session: never cached, never framed,
        # nothing loaded from anywhere but here.
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    _error_pages(app)

    from kiosk import borrow, home, returns, staff

    app.register_blueprint(home.bp)
    app.register_blueprint(borrow.bp)
    app.register_blueprint(returns.bp)
    app.register_blueprint(staff.bp)
    return app


def _wants_json() -> bool:
    return request.path.endswith(".json")


def _error_pages(app: Flask) -> None:
    """Every failure is a calm page with a way home (JSON for the pollers); none of
    them echoes what was posted."""

    @app.errorhandler(AgentUnavailable)
    def agent_unavailable(err: AgentUnavailable):
        log.warning("agent unavailable on %s %s: %s", request.method, request.path, err)
        if _wants_json():
            return {"error": "agent_unavailable"}, 503
        return render_template("unavailable.html", idle=0), 503

    @app.errorhandler(AgentError)
    def agent_refused(err: AgentError):
        # Refusals a view expects are handled there; this is what nobody expected.
        status = err.status if 400 <= err.status < 600 else 500
        if err.code in ("not_found", "unknown_attempt", "unknown_session", "unknown_claim"):
            status = 404
        else:
            log.warning("agent refused %s %s: %s", request.method, request.path, err.code)
        if _wants_json():
            return {"error": err.code}, status
        return render_template("error.html", status=status), status

    @app.errorhandler(CsrfRefused)
    def csrf_refused(err: CsrfRefused):
        log.warning("form without a valid CSRF token refused on %s", request.path)
        return render_template("error.html", status=400, expired=True), 400

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        status = err.code or 500
        if _wants_json():
            return {"error": err.name}, status
        return render_template("error.html", status=status), status

    @app.errorhandler(Exception)
    def crash(err: Exception):
        log.exception("kiosk failed on %s %s", request.method, request.path)
        if _wants_json():
            return {"error": "internal"}, 500
        return render_template("error.html", status=500), 500

