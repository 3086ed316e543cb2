"""``accept_unknown_stations: false`` (issue 14, finding 12): messages from a sid
not under ``stations:`` are counted invalid and never reach the fleet.

The hub in process on a broker with the deployment's settings and ACL
(``secure_broker``), logged in as ``_hub``; the stations publish with their own
credentials, as a stolen or made-up station would.
"""

from __future__ import annotations

import json

import pytest

from hub.config import ConfigError, parse_hub_config
from protocol import examples
from tests.conftest import SECURE_USERS
from tests.harness.mqtt import close, connect
from tests.test_hub_ingest import count, example, make_hub, wait_count  # noqa: F401

KNOWN = examples.SID  # yh-chumen-01, listed
STRANGER = "yh-other"  # has broker credentials, not listed in the hub's stations:
HUB_MQTT = {"username": "_hub", "password": SECURE_USERS["_hub"]}


def publish_status(broker, sid: str) -> None:
    client = connect(broker, username=sid, password=SECURE_USERS[sid])
    try:
        payload = example("status", sid=sid)
        client.publish(f"yizhan/v1/{sid}/status", json.dumps(payload).encode(),
                       qos=1).wait_for_publish(5)
    finally:
        close(client)


def test_unknown_stations_are_refused_when_told(make_hub, secure_broker) -> None:  # noqa: F811
    hub = make_hub(secure_broker, mqtt=HUB_MQTT, accept_unknown_stations=False,
                   stations=[{"sid": KNOWN, "name": "known"}])
    publish_status(secure_broker, STRANGER)
    publish_status(secure_broker, KNOWN)
    wait_count(hub, "status", "applied", 1)
    wait_count(hub, "status", "invalid", 1)
    assert hub.fleet.get(STRANGER) is None
    assert hub.fleet.get(KNOWN) is not None
    assert STRANGER not in hub.fleet.sids()


def test_by_default_unknown_stations_are_accepted(make_hub, secure_broker) -> None:  # noqa: F811
    """The contract's default (§14: "unknown stations are accepted")."""
    hub = make_hub(secure_broker, mqtt=HUB_MQTT, stations=[{"sid": KNOWN, "name": "known"}])
    publish_status(secure_broker, STRANGER)
    wait_count(hub, "status", "applied", 1)
    assert count(hub, "status", "invalid") == 0
    assert hub.fleet.get(STRANGER) is not None


def test_refusing_unknown_stations_needs_a_list_of_stations() -> None:
    with pytest.raises(ConfigError, match="accept_unknown_stations"):
        parse_hub_config({"database": "sqlite:///x.db", "accept_unknown_stations": False})
