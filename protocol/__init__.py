"""The Yizhan wire contract in code (see /docs/protocol.md and the contract).

Topics, typed messages and their validation, identifiers, and the YZ-LB1 locker
board frame codec. Imported by the agent, the kiosk and the hub; imports none of them.

    >>> from protocol import topics, messages
    >>> topics.topic("yh-chumen-01", topics.Kind.STATE)
    'yizhan/v1/yh-chumen-01/state'
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from typing import Any

from protocol.errors import (
    BoardError,
    FrameError,
    InvalidIdentifier,
    InvalidMessage,
    InvalidPhone,
    ProtocolError,
    TopicError,
)

__all__ = [
    "SCHEMA_NAMES",
    "BoardError",
    "FrameError",
    "InvalidIdentifier",
    "InvalidMessage",
    "InvalidPhone",
    "ProtocolError",
    "TopicError",
    "load_schema",
    "schemas_dir",
]

CONTRACT_VERSION = 1

SCHEMA_NAMES = (
    "status",
    "state",
    "event",
    "command",
    "command_result",
    "directory",
    "hub_status",
    "hub_time",
)


def schemas_dir() -> Traversable:
    """The directory of the shipped JSON Schema files (draft 2020-12)."""
    return resources.files(__name__) / "schemas"


@cache
def _schema_text(name: str) -> str:
    if name.endswith(".json"):
        name = name[:-5]
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return (schemas_dir() / f"{name}.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """One payload's JSON Schema as a fresh dict, e.g. ``load_schema("state")``."""
    return json.loads(_schema_text(name))
