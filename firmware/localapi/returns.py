"""Returns: ``GET /v1/returns?since=ms``, the banks put back since then, so the
kiosk can thank the rider who just returned one; and, where the cabinet cannot
read bank ids, ``POST /v1/returns/claim`` (the rider says who they are and a
slot opens for them) with ``GET /v1/returns/claim/<id>`` to follow it
(firmware/returning.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from firmware.localapi import fields
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


@bp.post("/v1/returns/claim")
def claim():
    data = fields.body()
    rider = fields.rider(data)
    claim = local_api().lending.return_desk.expect(rider)
    return jsonify({"claim": claim.to_dict()}), 202


@bp.get("/v1/returns/claim/<claim_id>")
def progress(claim_id: str):
    claim = local_api().lending.return_desk.claim(claim_id)
    if claim is None:
        raise ApiError(404, "unknown_claim", f"no return claim {claim_id[:40]!r}")
    return jsonify({"claim": claim.to_dict()})
