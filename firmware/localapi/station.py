"""``GET /v1/station``: what the kiosk's home screen shows — chargers ready, slots,
hot water, whether the hub and the locker answer, whether lending is paused."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from firmware.lending import Lending
from firmware.localapi.context import local_api

bp = Blueprint("station", __name__)


@bp.get("/v1/station")
def station():
    api = local_api()
    lending = api.lending
    view = dict(api.state_provider() or {})
    policy = api.directory.policy
    readiness = lending.readiness()
    return jsonify({
        "station": {"sid": view.get("sid"), "name": view.get("name")},
        "ts": lending.clock.ms(),
        "online": {"hub": bool(view.get("hub_online", False)),
                   "locker": readiness.online},
        "lending": policy.to_dict(),
        "chargers": {
            "ready": [{"slot": s, "charge": c} for s, c in readiness.ready],
            "next_ready_at": readiness.next_ready_at,
        },
        "slots": slot_counts(lending, policy.min_charge),
        "water": water(view.get("dispenser")),
        "maintenance": lending.maintenance is not None,
        # "rider": the cabinet cannot read bank ids, so a return starts on the
        # kiosk with the rider's number (POST /v1/returns/claim); "bank": push
        # the bank into any empty slot.
        "return_by": "rider" if lending.return_desk.needed else "bank",
        # "storage": the journal cannot record a loan (SD card full or
        # read-only); borrowing is refused until it can, returns go on.
        "paused": lending.paused,
        "storage": lending.journal.fault,
    })


def slot_counts(lending: Lending, min_charge: int) -> dict[str, int]:
    """How many slots are empty, faulty, ready to lend or still charging."""
    counts = {"total": 0, "ready": 0, "charging": 0, "faulty": 0, "empty": 0}
    for r in lending.locker.slots():
        counts["total"] += 1
        if not r.present:
            counts["empty"] += 1
        elif r.fault is not None:
            counts["faulty"] += 1
        elif r.charge is not None and r.charge >= min_charge:
            counts["ready"] += 1
        else:
            counts["charging"] += 1
    return counts


def water(dispenser: Any) -> dict[str, Any] | None:
    """The hot water as the home screen shows it, from the State's ``dispenser``
    section (a protocol message or its dict); None at a station without one."""
    if dispenser is None:
        return None
    section = dispenser.to_dict() if hasattr(dispenser, "to_dict") else dict(dispenser)
    return {"level_state": section.get("level_state"), "level": section.get("level"),
            "temp_c": section.get("temp_c"), "fault": section.get("fault")}
