"""``POST /v1/borrow`` and ``GET /v1/borrow/<id>``: a rider asks for a bank, and the
kiosk follows the attempt until the bank is taken (or not)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from firmware.localapi import fields
from firmware.localapi.context import local_api
from firmware.localapi.errors import ApiError

bp = Blueprint("borrow", __name__)


@bp.post("/v1/borrow")
def borrow():
    data = fields.body()
    rider = fields.rider(data)
    pin = fields.pin(data, required=False)
    attempt = local_api().lending.borrow(rider, pin)
    return jsonify({"attempt": attempt.to_dict()}), 202


@bp.get("/v1/borrow/<attempt_id>")
def progress(attempt_id: str):
    attempt = local_api().lending.attempt(attempt_id)
    if attempt is None:
        raise ApiError(404, "unknown_attempt", f"no borrow attempt {attempt_id}")
    return jsonify({"attempt": attempt.to_dict()})
