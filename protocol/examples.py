"""The contract's example payloads as fresh dicts, for tests, docs and demos.

Each is valid as it stands (the contract's elided rider ids ``r:5e8f0c...`` are
filled out to full length), so a test can break one field and see it rejected::

    >>> from protocol import examples, messages
    >>> d = examples.example("state")
    >>> messages.from_dict(examples.KINDS["state"], d).rev
    5013
"""

from __future__ import annotations

import copy
from typing import Any

from protocol.topics import Kind

SID = "yh-chumen-01"
EPOCH = "9f2c01ab"
RIDER = "r:5e8f0c1d2e3f4a5b6c7d8e9f"

_ENV = {"v": 1, "sid": SID, "epoch": EPOCH}

_EXAMPLES: dict[str, dict[str, Any]] = {
    "status": {
        **_ENV,
        "ts": 1764196800123,
        "synced": True,
        "rev": 5012,
        "state": "online",
        "birth": 5012,
        "last_seq": 88120,
        "agent": {"version": "1.0.0"},
        "hw": {"slots": 12, "doors": ["entrance", "locker_panel"], "dispenser": True},
    },
    "will": {**_ENV, "state": "offline", "reason": "lost", "birth": 5012},
    "shutdown": {
        **_ENV,
        "ts": 1764200000000,
        "synced": True,
        "rev": 5020,
        "state": "offline",
        "reason": "shutdown",
        "birth": 5012,
    },
    "state": {
        **_ENV,
        "ts": 1764196800123,
        "synced": True,
        "rev": 5013,
        "last_seq": 88120,
        "lockers": {
            "online": True,
            "slots": [
                {
                    "slot": 1,
                    "bank": "PB0012AF",
                    "charge": 96,
                    "charging": False,
                    "locked": True,
                    "fault": None,
                    "temp_c": 29,
                    "cycles": 212,
                },
                {
                    "slot": 2,
                    "bank": None,
                    "charge": None,
                    "charging": False,
                    "locked": True,
                    "fault": None,
                    "temp_c": None,
                    "cycles": None,
                },
            ],
        },
        "dispenser": {
            "online": True,
            "level": 0.62,
            "level_state": "ok",
            "temp_c": 92.5,
            "heater": True,
            "heater_lockout": False,
            "fault": None,
            "dispensed_ml": 123400,
        },
        "doors": {"entrance": False, "locker_panel": False},
        "health": {
            "cpu_temp_c": 51.2,
            "undervoltage": False,
            "throttled": False,
            "disk_free_mb": 2100,
            "uptime_s": 86400,
            "outbox": 0,
            "kiosk": "ok",
        },
        "counters": {"visits": 1234, "borrows": 560, "returns": 555},
    },
    "event": {
        **_ENV,
        "ts": 1764196800456,
        "synced": True,
        "seq": 88121,
        "type": "bank_borrowed",
        "data": {"slot": 3, "bank": "PB0013B0", "charge": 96, "rider": RIDER},
    },
    "command": {
        "v": 1,
        "id": "c-7f3a9e",
        "cmd": "unlock",
        "args": {"slot": 3},
        "ts": 1764196801000,
        "expires": 1764196831000,
        "by": "staff:li",
    },
    "command_result": {
        **_ENV,
        "ts": 1764196801100,
        "synced": True,
        "rev": 5014,
        "id": "c-7f3a9e",
        "ok": True,
        "error": None,
        "data": {"slot": 3, "locked": False},
    },
    "directory": {
        "v": 1,
        "rev": 17,
        "ts": 1764196700000,
        "policy": {"lending": "open", "min_charge": 80, "max_per_rider": 1, "loan_hours": 24},
        "riders": [{"id": RIDER, "pin": "pbkdf2_sha256$200000$salt$hash"}],
        "staff": [{"id": "li", "name": "李师傅", "pin": "pbkdf2_sha256$200000$salt$hash"}],
        "denied": ["r:0a9b000000000000000000ff"],
    },
    "hub_status": {"v": 1, "state": "online", "ts": 1764196700000},
    "hub_status_offline": {"v": 1, "state": "offline"},
    "hub_time": {"v": 1, "ts": 1764196830000},
}

# Which message kind (and so which topic and schema) each example belongs to.
KINDS: dict[str, Kind] = {
    "status": Kind.STATUS,
    "will": Kind.STATUS,
    "shutdown": Kind.STATUS,
    "state": Kind.STATE,
    "event": Kind.EVENT,
    "command": Kind.CMD,
    "command_result": Kind.CMD_RESULT,
    "directory": Kind.DIRECTORY,
    "hub_status": Kind.HUB_STATUS,
    "hub_status_offline": Kind.HUB_STATUS,
    "hub_time": Kind.HUB_TIME,
}

# Schema file name (see :func:`protocol.load_schema`) of each kind.
SCHEMA_OF: dict[Kind, str] = {
    Kind.STATUS: "status",
    Kind.STATE: "state",
    Kind.EVENT: "event",
    Kind.CMD: "command",
    Kind.CMD_RESULT: "command_result",
    Kind.DIRECTORY: "directory",
    Kind.HUB_STATUS: "hub_status",
    Kind.HUB_TIME: "hub_time",
}


def names() -> list[str]:
    return list(_EXAMPLES)


def example(name: str) -> dict[str, Any]:
    """A deep copy of the named example payload (free to modify)."""
    return copy.deepcopy(_EXAMPLES[name])
