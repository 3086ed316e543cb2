"""The hub's HTTP side (contract §11): JSON API, health and metrics.

Built by ``create_app(hub)``; the hub object owns the fleet, the store and the
metrics registry, so tests build as many as they need side by side.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:
    from hub.service import Hub

api = Blueprint("api", __name__, url_prefix="/api/v1")


def create_app(hub: Hub) -> Flask:
    app = Flask(__name__)
    app.config["JSON_AS_ASCII"] = False
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.extensions["yizhan_hub"] = hub
    app.register_blueprint(api)

    @app.get("/healthz")
    def healthz():
        problems = hub.problems()
        if problems:
            return jsonify({"ok": False, "problems": problems}), 503
        return jsonify({"ok": True})

    @app.get("/metrics")
    def metrics():
        return generate_latest(hub.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 415: "unsupported_media_type",
                422: "invalid"}.get(err.code or 500, "error")
        return error(code, err.description or err.name, err.code or 500)

    return app


def error(code: str, message: str, status: int):
    return jsonify({"error": {"code": code, "message": message}}), status


def the_hub() -> Hub:
    return current_app.extensions["yizhan_hub"]


@api.before_request
def require_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error("unauthorized", "send Authorization: Bearer <token>", 401)
    for known in the_hub().config.api_tokens:
        if hmac.compare_digest(token.encode(), known.encode()):
            g.token = known
            return None
    return error("unauthorized", "unknown API token", 401)


def station_summary(view) -> dict:
    return {
        "sid": view.sid,
        "name": view.name,
        "online": view.online,
        "since": view.since_ms,
        "chargers_ready": view.chargers_ready(),
        "water": view.water(),
        "alerts_firing": 0,
    }


@api.get("/stations")
def list_stations():
    return jsonify({"stations": [station_summary(v) for v in the_hub().fleet.stations()]})


@api.get("/stations/<sid>")
def get_station(sid: str):
    view = the_hub().fleet.get(sid)
    if view is None:
        return error("not_found", f"no station {sid}", 404)
    body = station_summary(view)
    body.update({"group": view.group, "epoch": view.epoch, "last_seen": view.last_seen_ms,
                 "state": view.state})
    return jsonify(body)
