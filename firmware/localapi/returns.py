"""``GET /v1/returns?since=ms``: the banks put back since then, so the kiosk can
thank the rider who just returned one."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from firmware.localapi.context import local_api
from firmware.localapi.errors import ApiError
from yizhan.untrusted import MAX_DIGITS, decimal

bp = Blueprint("returns", __name__)


@bp.get("/v1/returns")
def recent():
    # Not int(): it takes "٣", " 5" and "1_0", and raises on 4 300 digits.
    since = decimal(request.args.get("since", "0"))
    if since is None:
        raise ApiError(400, "bad_since", f"since must be integer milliseconds >= 0: "
                       f"1 to {MAX_DIGITS} digits 0-9")
    returns = local_api().lending.recent_returns(since)
    return jsonify({"returns": [r.to_dict() for r in returns]})
