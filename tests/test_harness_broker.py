"""The private broker harness, and the broker rules of contract §2 it enforces
with the ACL the deployment ships (deploy/mosquitto/acl)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import SECURE_USERS
from tests.harness.mosquitto import REPO, Broker, BrokerError, run_as_lines
from tests.harness.mqtt import ConnectRefused, Subscriber, connect, publish

STATION = "yh-chumen-01"
HUB = "_hub"


def creds(user: str) -> dict[str, str]:
    return {"username": user, "password": SECURE_USERS[user]}


# -- the plain broker --------------------------------------------------------------


def test_publish_subscribe_round_trip(broker: Broker) -> None:
    with Subscriber(broker, "harness/round-trip/#") as sub:
        publish(broker, "harness/round-trip/a", {"n": 1})
        msg = sub.wait_for("harness/round-trip/a")
    assert msg.json() == {"n": 1}
    assert msg.qos == 1


def test_wait_for_names_what_it_got_instead(broker: Broker) -> None:
    with Subscriber(broker, "harness/other/#") as sub:
        publish(broker, "harness/other/x", b"not-this")
        with pytest.raises(AssertionError, match="harness/other/x"):
            sub.wait_for("harness/other/y", timeout=0.3)


def test_restart_keeps_the_port_and_serves_again(broker_factory) -> None:
    b = broker_factory()
    port = b.port
    b.restart()
    assert b.port == port
    b.kill()  # a crash, then a start on the same port: what outage tests do
    assert not b.running
    b.start()
    assert b.port == port
    with Subscriber(b, "harness/after-restart") as sub:
        publish(b, "harness/after-restart", b"ok")
        assert sub.wait_for("harness/after-restart").payload == b"ok"


def test_retained_messages_survive_a_restart_with_persistence(broker_factory) -> None:
    b = broker_factory(persistence=True)
    publish(b, "harness/kept", b"still here", retain=True)
    b.restart()
    with Subscriber(b, "harness/kept") as sub:
        msg = sub.wait_for("harness/kept")
    assert (msg.payload, msg.retain) == (b"still here", True)


def test_start_failure_names_the_cause_from_the_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        b = Broker(tmp_path, port=squatter.getsockname()[1])  # an explicit port never moves
        started = time.monotonic()
        with pytest.raises(BrokerError, match="Address already in use"):
            b.start()
    assert time.monotonic() - started < 5
    assert not b.running


def test_deployed_broker_config_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    """deploy/mosquitto/yizhan.conf, with only its paths and port moved here."""

    class DeployedConfigBroker(Broker):
        def _write_config(self) -> None:
            self._write_passwd()
            text = (REPO / "deploy/mosquitto/yizhan.conf").read_text()
            text = re.sub(r"^listener 1883 .*$", f"listener {self.port} {self.host}", text,
                          flags=re.M)
            text = re.sub(r"^password_file .*$", f"password_file {self.passwd_path}", text,
                          flags=re.M)
            text = re.sub(r"^acl_file .*$", f"acl_file {self.acl_path}", text, flags=re.M)
            text += f"persistence_location {self.workdir}/\nlog_dest stdout\n"
            text += "".join(line + "\n" for line in run_as_lines())
            self.config_path.write_text(text)

    b = DeployedConfigBroker(tmp_path, users=SECURE_USERS, acl=True)
    try:
        b.start()
        with pytest.raises(ConnectRefused):
            connect(b)  # allow_anonymous false
        with Subscriber(b, "yizhan/v1/+/state", **creds(HUB)) as sub:
            publish(b, f"yizhan/v1/{STATION}/state", b"{}", **creds(STATION))
            sub.wait_for(f"yizhan/v1/{STATION}/state")
    finally:
        b.stop()


# -- the ACL of contract §2 ------------------------------------------------------------


def test_station_publishes_its_own_topics(secure_broker: Broker) -> None:
    topics = [f"yizhan/v1/{STATION}/{leaf}" for leaf in ("status", "state", "event", "cmd/result")]
    with Subscriber(secure_broker, "yizhan/v1/#", **creds(HUB)) as hub:
        for topic in topics:
            publish(secure_broker, topic, b"{}", **creds(STATION))
        for topic in topics:
            hub.wait_for(topic)


def test_station_cannot_publish_as_another_station(secure_broker: Broker) -> None:
    with Subscriber(secure_broker, "yizhan/v1/#", **creds(HUB)) as hub:
        # MQTT 3.1.1 has no way to say "denied": the broker acknowledges and drops.
        publish(secure_broker, "yizhan/v1/yh-other/state", b"forged", **creds(STATION))
        publish(secure_broker, f"yizhan/v1/{STATION}/cmd", b"forged", **creds(STATION))
        # Messages of one client arrive in order, so once this one is in, the
        # forged ones would have been too.
        publish(secure_broker, f"yizhan/v1/{STATION}/state", b"marker", **creds(STATION))
        hub.wait_for(f"yizhan/v1/{STATION}/state")
        assert [m.topic for m in hub.messages] == [f"yizhan/v1/{STATION}/state"]


def test_station_hears_only_its_own_cmd_and_directory(secure_broker: Broker) -> None:
    own = [f"yizhan/v1/{STATION}/cmd", f"yizhan/v1/{STATION}/directory", "yizhan/v1/hub/status"]
    foreign = ["yizhan/v1/yh-other/cmd", "yizhan/v1/#", f"yizhan/v1/{STATION}/state"]
    # Mosquitto 2.0 grants every SUBACK and applies the read ACL to each
    # delivery instead, so "cannot subscribe" shows as "never receives".
    with Subscriber(secure_broker, own + foreign, require_granted=False,
                    **creds(STATION)) as station:
        assert set(station.refused) <= set(foreign)
        forbidden = ["yizhan/v1/yh-other/cmd", "yizhan/v1/yh-other/directory",
                     f"yizhan/v1/{STATION}/state"]
        for topic in forbidden + own:  # in this order: the own ones are markers
            publish(secure_broker, topic, topic.encode(), **creds(HUB))
        for topic in own:
            station.wait_for(topic)
        assert {m.topic for m in station.messages} == set(own)


def test_wrong_password_and_anonymous_are_refused(secure_broker: Broker) -> None:
    with pytest.raises(ConnectRefused) as refused:
        connect(secure_broker, username=STATION, password="not-the-password")
    assert "authori" in str(refused.value.reason).lower()
    with pytest.raises(ConnectRefused):
        connect(secure_broker)


def test_an_account_named_hub_cannot_fake_the_hub(broker_factory) -> None:
    """"hub" passes the sid grammar; the ACL denies that account everything."""
    users = {**SECURE_USERS, "hub": "pw-impostor"}
    b = broker_factory(users=users, acl=True)
    impostor = {"username": "hub", "password": "pw-impostor"}
    with Subscriber(b, "yizhan/v1/#", **creds(HUB)) as hub:
        publish(b, "yizhan/v1/hub/status", b'{"v":1,"state":"offline"}', **impostor)
        publish(b, "yizhan/v1/hub/state", b"{}", **impostor)
        publish(b, f"yizhan/v1/{STATION}/state", b"marker", **creds(STATION))
        hub.wait_for(f"yizhan/v1/{STATION}/state")
        assert [m.topic for m in hub.messages] == [f"yizhan/v1/{STATION}/state"]


# -- the deployment's own configuration ------------------------------------------------


def test_the_deployed_mosquitto_configuration_starts_a_broker(tmp_path: Path) -> None:
    """deploy/mosquitto/yizhan.conf as shipped (its queue limits included), only
    the port, files and persistence moved into the test's folder."""
    import subprocess

    from yizhan.broker import find_mosquitto, free_port, wait_for_port

    port = free_port()
    (tmp_path / "passwd").write_text("")
    text = (REPO / "deploy" / "mosquitto" / "yizhan.conf").read_text()
    assert "max_queued_messages 300000" in text and "max_queued_bytes 536870912" in text
    text = (text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
            .replace("/etc/mosquitto/yizhan.passwd", str(tmp_path / "passwd"))
            .replace("/etc/mosquitto/yizhan.acl", str(REPO / "deploy" / "mosquitto" / "acl"))
            .replace("persistence true", "persistence false"))
    assert f"listener {port} " in text
    conf = tmp_path / "yizhan.conf"
    conf.write_text("\n".join([*run_as_lines(), text]))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_port(port, timeout=10), proc.stdout.read() if proc.poll() else ""
        assert proc.poll() is None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "Error" not in out, out
