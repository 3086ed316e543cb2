"""What every view of one local API app shares: the agent's Lending, its PIN
directory and its view of the station (one per app, never a module global)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from firmware.directory import DirectoryStore
from firmware.lending import Lending
from firmware.localapi.refusals import Refusals

__all__ = ["LocalApi", "StateProvider", "local_api"]

#: ``state_provider()`` returns what the API cannot know from Lending: a mapping
#: with ``sid`` and ``name`` (the station), ``hub_online`` (the MQTT link is up)
#: and ``dispenser`` (a protocol.messages.Dispenser, its dict, or None).
StateProvider = Callable[[], Mapping[str, Any]]

_KEY = "yizhan_local_api"


@dataclass(frozen=True)
class LocalApi:
    lending: Lending
    state_provider: StateProvider
    directory: DirectoryStore
    #: What the API refused, by error code (firmware/localapi/refusals.py).
    refusals: Refusals = field(default_factory=Refusals)

    def install(self, app: Flask) -> None:
        app.extensions[_KEY] = self


def local_api() -> LocalApi:
    """The current app's LocalApi (inside a request)."""
    return current_app.extensions[_KEY]
