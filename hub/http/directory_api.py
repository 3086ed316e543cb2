"""The Directory's routes under /api/v1 (docs/hub-api.md, "Directory").

Staff, registered riders, denied riders, lending policy overrides and the audit
log; the work is :class:`hub.fleet.directory.Directory`'s, this only reads the
request and answers. Writes need the ``directory`` scope, reads ``read``
(hub/http/openapi_directory.py). A PIN or phone number in a request is never
logged nor answered: a rider is answered by id and masked number.
"""

from __future__ import annotations

from flask import g, jsonify, request

from hub.fleet.directory import AUDIT_MAX, BadField, DirectoryError
from hub.http.web import ApiError, _body_json, api, error, the_hub
from yizhan.untrusted import decimal

RIDERS_MAX = 10_000


@api.errorhandler(DirectoryError)
def directory_error(err: DirectoryError):
    return error(err.code, err.message, err.status)


@api.errorhandler(BadField)
def bad_field(err: BadField):
    return error(err.code, err.message, 400)


def _limit(default: int, most: int) -> int:
    limit = decimal(request.args.get("limit", str(default)))
    if limit is None or not 1 <= limit <= most:
        raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {most} "
                       "(digits 0-9)")
    return limit


def _directory():
    return the_hub().directory


# -- staff -----------------------------------------------------------------------------


@api.get("/staff")
def list_staff():
    return jsonify({"staff": _directory().list_staff()})


@api.post("/staff")
def add_staff():
    return jsonify(_directory().add_staff(_body_json(), by=g.token_name)), 201


@api.get("/staff/<staff_id>")
def get_staff(staff_id: str):
    return jsonify(_directory().get_staff(staff_id))


@api.patch("/staff/<staff_id>")
def change_staff(staff_id: str):
    return jsonify(_directory().change_staff(staff_id, _body_json(), by=g.token_name))


@api.delete("/staff/<staff_id>")
def remove_staff(staff_id: str):
    return jsonify(_directory().remove_staff(staff_id, by=g.token_name))


# -- riders ----------------------------------------------------------------------------


@api.get("/riders")
def list_riders():
    return jsonify({"riders": _directory().list_riders(_limit(1000, RIDERS_MAX))})


@api.post("/riders")
def register_rider():
    rider, created = _directory().register_rider(_body_json(), by=g.token_name)
    return jsonify(rider), 201 if created else 200


@api.delete("/riders/<rider_id>")
def remove_rider(rider_id: str):
    return jsonify(_directory().remove_rider(rider_id, by=g.token_name))


# -- denied riders ---------------------------------------------------------------------


@api.get("/denied")
def list_denied():
    return jsonify({"denied": _directory().list_denied()})


@api.post("/denied")
def deny_rider():
    return jsonify(_directory().deny(_body_json(), by=g.token_name)), 201


@api.delete("/denied/<rider_id>")
def undeny_rider(rider_id: str):
    return jsonify(_directory().undeny(rider_id, by=g.token_name))


# -- lending policy ------------------------------------------------------------------------


@api.get("/policies")
def get_policies():
    return jsonify(_directory().policies())


@api.put("/policies/groups")
def set_group_policy():
    body = _body_json()
    if not isinstance(body, dict) or "group" not in body:
        raise BadField("bad_body", "the body must be a JSON object with group and the "
                       "policy fields to set")
    rest = {k: v for k, v in body.items() if k != "group"}
    return jsonify(_directory().set_policy("group", body["group"], rest, by=g.token_name))


@api.delete("/policies/groups")
def clear_group_policy():
    group = request.args.get("group")
    if group is None:
        raise BadField("bad_group", "say which group: ?group=<name>")
    return jsonify(_directory().clear_policy("group", group, by=g.token_name))


@api.put("/policies/stations/<sid>")
def set_station_policy(sid: str):
    return jsonify(_directory().set_policy("station", sid, _body_json(), by=g.token_name))


@api.delete("/policies/stations/<sid>")
def clear_station_policy(sid: str):
    return jsonify(_directory().clear_policy("station", sid, by=g.token_name))


# -- what a station was sent, and who changed what ------------------------------------------


@api.get("/stations/<sid>/directory")
def station_directory(sid: str):
    return jsonify(_directory().station(sid))


@api.get("/directory/audit")
def directory_audit():
    return jsonify({"audit": _directory().audit(_limit(100, AUDIT_MAX))})
