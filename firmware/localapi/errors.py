"""Every refusal of the local API as ``{"error": {"code", "message", ...}}``.

A view raises :class:`ApiError`; Flask's own refusals (404, 405, 413) and any
crash get the same body, so the kiosk reads one shape whatever went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from firmware.localapi.context import local_api

log = logging.getLogger(__name__)

__all__ = ["ApiError", "error_response", "init_app"]


class ApiError(Exception):
    """A refusal with its HTTP status, error code and message (and extra fields)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra: Any):
    body = {"error": {"code": code, "message": message, **extra}}
    g.yizhan_refused = (status, code)  # counted once the answer is made (init_app)
    return jsonify(body), status


def refused_request(detail: str = "") -> str:
    """The refused request in a log line: its method and route (the path, trimmed
    and quoted, when no route matched: it is the caller's text)."""
    rule = request.url_rule.rule if request.url_rule is not None else repr(request.path[:80])
    return f"{request.method} {rule}{detail}"


def init_app(app: Flask) -> None:
    """Give every refusal and failure of ``app`` the error body."""

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return error_response(err.status, err.code, err.message, **err.extra)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(err.code or 0, "bad_request")
        return error_response(err.code or 400, code, err.description or code)

    @app.errorhandler(Exception)
    def crash(err: Exception):
        log.exception("local API failed on %s %s", request.method, request.path)
        return error_response(500, "internal", "the station could not answer; try again")

    @app.after_request
    def count_refusal(response):
        refused = g.pop("yizhan_refused", None)
        if refused is not None:
            status, code = refused
            local_api().refusals.refused(status, code,
                                         refused_request(g.pop("yizhan_refused_detail", "")),
                                         logged=code == "internal")
        return response
