"""``GET /v1/returns?since=ms``: the banks put back since then, so the kiosk can
thank the rider who just returned one."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from firmware.localapi.context import local_api
from firmware.localapi.errors import ApiError

bp = Blueprint("returns", __name__)


@bp.get("/v1/returns")
def recent():
    raw = request.args.get("since", "0")
    try:
        since = int(raw)
    except ValueError:
        raise ApiError(400, "bad_since", "since must be integer milliseconds") from None
    if since < 0:
        raise ApiError(400, "bad_since", "since must be >= 0")
    returns = local_api().lending.recent_returns(since)
    return jsonify({"returns": [r.to_dict() for r in returns]})
