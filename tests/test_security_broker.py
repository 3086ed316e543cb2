"""The broker as an attacker with a stolen station's credentials finds it (issue 14).

Real Mosquitto with the deployment's settings (``secure_broker``: the canonical
ACL and the ``DEPLOYED_KEYS`` lines of deploy/mosquitto/yizhan.conf):

* finding 1: a station's credentials with another station's client id, or the
  hub's, no longer disconnect that station or the hub (the hub's ``/healthz``
  stays 200); the same attempt against a broker without the setting does
  disconnect the victim, which is what the setting is for;
* finding 5: a retained publish of megabytes is refused (the publisher is
  disconnected), nothing is retained and the broker's memory stays put; a
  Directory of the contract's full 64 KiB still goes through.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol.messages import MAX_PAYLOAD
from tests.conftest import SECURE_USERS
from tests.harness.mosquitto import Broker
from tests.harness.mqtt import Subscriber, close, connect
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

ATTACKER = "yh-chumen-01"  # the station whose Pi was taken
VICTIM = "yh-other"
HUB = "_hub"


def creds(user: str) -> dict[str, str]:
    return {"username": user, "password": SECURE_USERS[user]}


class Watched:
    """A connected client that notes when the broker drops it."""

    def __init__(self, broker: Broker, user: str, client_id: str,
                 clean_session: bool = True) -> None:
        self.dropped = threading.Event()
        self.client = connect(broker, client_id=client_id, clean_session=clean_session,
                              **creds(user))
        self.client.on_disconnect = lambda *_a: self.dropped.set()

    def close(self) -> None:
        close(self.client)


def attack(broker: Broker, client_id: str) -> None:
    """Connect with the stolen credentials and the victim's client id, then leave."""
    intruder = connect(broker, client_id=client_id, **creds(ATTACKER))
    time.sleep(0.3)  # long enough for a takeover to reach the victim's socket
    close(intruder)


# -- finding 1: client-id takeover --------------------------------------------------


def test_another_stations_client_id_does_not_disconnect_it(secure_broker: Broker) -> None:
    victim = Watched(secure_broker, VICTIM, f"yizhan-{VICTIM}")
    try:
        attack(secure_broker, f"yizhan-{VICTIM}")
        attack(secure_broker, VICTIM)  # the id the broker itself now gives the victim
        assert not victim.dropped.wait(0.5), "the other station was disconnected"
        assert victim.client.is_connected()
    finally:
        victim.close()


def test_without_the_setting_the_takeover_works(broker_factory) -> None:
    """The control: the canonical ACL alone lets a station kick another off."""
    broker = broker_factory(users=SECURE_USERS, acl=True)
    victim = Watched(broker, VICTIM, f"yizhan-{VICTIM}")
    try:
        attack(broker, f"yizhan-{VICTIM}")
        assert victim.dropped.wait(3), "expected the old configuration to allow the takeover"
    finally:
        victim.close()


def test_the_hubs_client_id_does_not_disconnect_the_hub(secure_broker: Broker,
                                                        tmp_path: Path) -> None:
    """The real hub program, with its persistent session under ``yizhan-hub``."""
    procs = Procs(tmp_path)
    try:
        (tmp_path / "mqtt.password").write_text(SECURE_USERS[HUB] + "\n")
        port = free_port()
        cfg = write_yaml(tmp_path / "hub.yaml", {
            "mqtt": {"host": secure_broker.host, "port": secure_broker.port, "keepalive": 5,
                     "username": HUB, "password_file": str(tmp_path / "mqtt.password")},
            "database": f"sqlite:///{tmp_path / 'hub.db'}",
            "http": {"host": "127.0.0.1", "port": port},
            "api_tokens": ["security-test-token-0123456789"],
        })
        hub = procs.start("hub", "hub", "--config", str(cfg))
        health = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_json(health)[0] == 200, 20, "hub healthz", on_fail=hub.tail)
        polls = []
        for _ in range(5):
            attack(secure_broker, "yizhan-hub")
            attack(secure_broker, HUB)
            polls.append(http_json(health)[0])
        assert polls == [200] * 5, hub.tail()
    finally:
        procs.close()


# -- finding 5: the largest packet ----------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def publish_huge(broker: Broker, topic: str, size: int) -> bool:
    """Publish ``size`` bytes retained as the attacker; True if the broker dropped us."""
    dropped = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="huge",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(ATTACKER, SECURE_USERS[ATTACKER])
    client.on_disconnect = lambda *_a: dropped.set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        wait_until(client.is_connected, 5, "the attacker's connection")
        client.publish(topic, b"x" * size, qos=1, retain=True)
        return dropped.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("size", [64 * 1024 * 1024])
def test_a_huge_retained_publish_is_refused_and_not_kept(secure_broker: Broker,
                                                         size: int) -> None:
    topic = f"yizhan/v1/{ATTACKER}/state"
    before = rss_kib(secure_broker.pid)
    assert publish_huge(secure_broker, topic, size), "the broker kept the connection"
    with Subscriber(secure_broker, topic, **creds(HUB)) as fresh:
        time.sleep(0.5)  # a retained message arrives right after SUBACK
        assert fresh.messages == []
    grown = rss_kib(secure_broker.pid) - before
    assert grown < 4096, f"the broker grew by {grown} KiB"


def test_without_the_limit_the_broker_keeps_it(broker_factory) -> None:
    """The control, at a few MB: the old configuration stores it and grows."""
    broker = broker_factory(users=SECURE_USERS, acl=True)
    topic = f"yizhan/v1/{ATTACKER}/state"
    before = rss_kib(broker.pid)
    publish_huge(broker, topic, 8 * 1024 * 1024)
    with Subscriber(broker, topic, **creds(HUB)) as fresh:
        msg = fresh.wait_for(topic, timeout=10)
    assert len(msg.payload) == 8 * 1024 * 1024 and msg.retain
    assert rss_kib(broker.pid) - before > 4096


def test_a_full_size_message_still_goes_through(broker_factory) -> None:
    """The contract's largest payload (64 KiB, the Directory's bound) on the longest
    topic there is (a 32-character sid's cmd/result) fits under max_packet_size."""
    longest = "y" * 32
    broker = broker_factory(users={**SECURE_USERS, longest: "pw-longest"}, acl=True,
                            deployed=True)
    topic = f"yizhan/v1/{longest}/cmd/result"
    payload = b"{" + b" " * (MAX_PAYLOAD - 2) + b"}"
    with Subscriber(broker, topic, **creds(HUB)) as sub:
        station = connect(broker, username=longest, password="pw-longest")
        try:
            station.publish(topic, payload, qos=1).wait_for_publish(5)
        finally:
            close(station)
        assert len(sub.wait_for(topic).payload) == MAX_PAYLOAD
