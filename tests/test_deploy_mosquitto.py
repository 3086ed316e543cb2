"""The playbook's mosquitto role, rendered by Ansible and run as a real Mosquitto.

``yizhan provision`` makes the fleet CA, the broker's certificate and one
identity per station in a secrets directory and puts them into an
ansible-vault file; ``ansible-playbook`` applies deploy/ansible/roles/mosquitto
(connection local) with that vault into a temporary configuration directory;
a real Mosquitto then runs that configuration (the Debian main file's part,
include_dir, is the test's). Only
the ports, the paths and the files' owner differ from production.

A station with its own certificate connects and reports as itself; it cannot
publish to another station's topics or the hub's, nor read another station's
commands or directory, and ``#`` brings it nothing of anyone else's. Without
TLS, without a certificate, with another CA's certificate or revoked, it
cannot connect at all.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness.mosquitto import CANONICAL_ACL, DEPLOYED_CONF, Broker, free_port
from tests.harness.mqtt import ConnectRefused, Subscriber, close, connect
from yizhan.provision import Fleet, provision

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "deploy" / "ansible" / "roles"
BIN = Path(sys.executable).parent

A, B, GONE = "yh-a-01", "yh-b-01", "yh-gone-01"
SIMULATED = ["yh-sim-00001", "yh-sim-00002"]  # yizhan sim fleet --prefix yh-sim-
V1 = "yizhan/v1"

PLAY = """\
---
- name: The mosquitto role into a test directory
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: mosquitto
"""


def vault_of(fleet: Fleet) -> tuple[Path, Path]:
    """The fleet's ansible-vault file and its password file, beside its secrets."""
    return fleet.dir.parent / "vault.yml", fleet.dir.parent / "vault.pass"


def apply_role(fleet: Fleet, conf_dir: Path, local_port: int, tls_port: int,
               **extra: object) -> None:
    """ansible-playbook with the role, its secrets from the fleet's vault."""
    vault, vault_pass = vault_of(fleet)
    variables = {
        "ansible_python_interpreter": sys.executable,
        "mosquitto_install": False,   # the test's Mosquitto is the one installed
        "mosquitto_service": False,   # and the test starts it, not systemd
        "mosquitto_conf_dir": str(conf_dir),
        "mosquitto_owner": pwd.getpwuid(os.getuid()).pw_name,
        "mosquitto_group": grp.getgrgid(os.getgid()).gr_name,
        "mosquitto_local_port": local_port,
        "mosquitto_tls_port": tls_port,
        "mosquitto_tls_bind": "127.0.0.1",
        # As the hub's group_vars name them (docs/deploy.md).
        "mosquitto_ca_cert": "{{ vault_yizhan_ca_cert }}",
        "mosquitto_crl": "{{ vault_yizhan_crl }}",
        "mosquitto_server_cert": "{{ vault_broker_cert }}",
        "mosquitto_server_key": "{{ vault_broker_key }}",
        "mosquitto_passwd": "{{ vault_broker_passwd }}",
        **extra,
    }
    play = conf_dir.parent / "play.yml"
    play.write_text(PLAY)
    extra_vars = conf_dir.parent / "vars.json"
    extra_vars.write_text(json.dumps(variables))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOME": str(conf_dir.parent / ".ansible")}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(play),
                           "-e", f"@{vault}", "--vault-password-file", str(vault_pass),
                           "-e", f"@{extra_vars}"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


class RoleBroker(Broker):
    """Mosquitto on the role's rendered conf.d, as Debian's mosquitto.conf includes it."""

    def __init__(self, workdir: Path, conf_dir: Path, local_port: int, tls_port: int) -> None:
        super().__init__(workdir, port=local_port)
        self.conf_dir = conf_dir
        self.tls_port = tls_port

    def _write_config(self) -> None:
        run_as = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []
        self.config_path.write_text("\n".join([
            *run_as,  # as root, stay root: the test's directory is ours only
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type all",
            "connection_messages true",
            f"include_dir {self.conf_dir}/conf.d",
        ]) + "\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    secrets_dir = tmp_path_factory.mktemp("secrets")
    # With passwords too, for the role's password mode (the last test).
    provision(secrets_dir, [A, B, GONE, *SIMULATED], broker_hosts=["127.0.0.1", "localhost"],
              password=True)
    f = Fleet(secrets_dir)
    f.revoke(GONE)
    vault, vault_pass = vault_of(f)
    vault_pass.write_text("a demo vault password\n")
    f.write_vault(vault, vault_pass)
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    return f


@pytest.fixture(scope="module")
def deployed(fleet: Fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("broker")
    conf_dir = work / "etc"
    local_port, tls_port = free_port(), free_port()
    apply_role(fleet, conf_dir, local_port, tls_port)
    broker = RoleBroker(work, conf_dir, local_port, tls_port)
    broker.start()
    yield broker
    broker.stop()


def hub_password(fleet: Fleet) -> str:
    return (fleet.dir / "hub.password").read_text().strip()


def station(fleet: Fleet, sid: str) -> tuple[Path, Path]:
    d = fleet.dir / "stations" / sid
    return d / f"{sid}.crt", d / f"{sid}.key"


def tls_client(broker: RoleBroker, ca: Path, cert: tuple[Path, Path] | None,
               messages: list | None = None, timeout: float = 5.0,
               login: tuple[str, str] | None = None) -> mqtt.Client:
    """A station's client on the TLS listener; raises ConnectionRefused or OSError."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="whatever",
                         protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca), certfile=str(cert[0]) if cert else None,
                   keyfile=str(cert[1]) if cert else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    answered = threading.Event()
    outcome: list = []

    def on_connect(c, _u, _f, reason, _p):
        outcome.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: answered.set()  # refused without a CONNACK
    if login is not None:
        client.username_pw_set(*login)
    if messages is not None:
        client.on_message = lambda _c, _u, m: messages.append((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", broker.tls_port, keepalive=30)  # the handshake is here
    client.loop_start()
    if not answered.wait(timeout) or not outcome or outcome[0].is_failure:
        close(client)
        raise ConnectRefused(outcome[0] if outcome else "no CONNACK")
    return client


def handshake_refused(broker: RoleBroker, ca: Path, cert: tuple[Path, Path] | None) -> str:
    """The TLS alert a station's attempt ends with; fails the test if it gets a CONNACK.

    A raw handshake and a bare MQTT CONNECT rather than paho: with TLS 1.3 the
    broker's verdict on the client's certificate arrives after the client's side
    of the handshake is done, as an alert on the first read, and the alert is
    what tells a revoked certificate from an unknown CA.
    """
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connect_packet = bytes([0x10, 14]) + b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x02ab"
    try:
        with (socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
              context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
                # Read first: a CONNECT sent into a connection the broker is
            # closing turns its alert into a reset.
            tls.settimeout(1.0)
            try:
                answer = tls.recv(4)
            except TimeoutError:  # the broker waits for our CONNECT: accepted
                tls.settimeout(5.0)
                tls.sendall(connect_packet)
                answer = tls.recv(4)
    except ssl.SSLEOFError:
        return "EOF"  # closed without saying why, still before any CONNACK
    except ssl.SSLError as err:
        return err.reason or str(err)
    raise AssertionError(f"the broker answered {answer.hex()} instead of refusing")


def sync(client: mqtt.Client, topic: str) -> None:
    """Publish at QoS 1 and wait for PUBACK: what the client sent before is through."""
    info = client.publish(topic, b"marker", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()


# -- the rendered files ------------------------------------------------------------


def test_role_installs_the_contracts_acl_and_the_deployed_settings(deployed) -> None:
    etc = deployed.conf_dir
    assert (etc / "yizhan.acl").read_bytes() == CANONICAL_ACL.read_bytes()
    assert f"include_dir {etc}/conf.d" in (etc / "mosquitto.conf").read_text().splitlines()

    def settings(path: Path) -> dict[str, str]:
        pairs = [line.split(" ", 1) for line in path.read_text().splitlines()
                 if line and not line.startswith("#") and " " in line]
        return dict(pairs)

    rendered, shipped = settings(etc / "conf.d" / "yizhan.conf"), settings(DEPLOYED_CONF)
    for key in ("per_listener_settings", "allow_anonymous", "use_username_as_clientid",
                "max_packet_size", "max_queued_messages", "max_queued_bytes", "sys_interval",
                "persistence", "autosave_interval"):
        assert rendered[key] == shipped[key], key
    # The hub's queue holds a 50 000-station reconnect storm (93 k measured) with room.
    assert int(rendered["max_queued_messages"]) >= 2 * 93_000
    assert int(rendered["autosave_interval"]) <= 60
    assert rendered["require_certificate"] == "true"
    assert rendered["use_identity_as_username"] == "true"
    assert rendered["crlfile"] == f"{etc}/certs/crl.pem"
    for secret in ("certs/broker.key", "yizhan.passwd"):
        assert (etc / secret).stat().st_mode & 0o777 == 0o640, secret


# -- a station's identity and the ACL ----------------------------------------------


@pytest.fixture
def hub(deployed, fleet):
    with Subscriber(deployed, f"{V1}/#", username="_hub", password=hub_password(fleet)) as sub:
        yield sub


def test_station_reports_as_itself(deployed, fleet, hub) -> None:
    a = tls_client(deployed, fleet.ca_cert, station(fleet, A))
    try:
        a.publish(f"{V1}/{A}/status", b'{"online":true}', qos=1).wait_for_publish(5)
        got = hub.wait_for(lambda m: m.topic == f"{V1}/{A}/status")
        assert got.payload == b'{"online":true}'
    finally:
        close(a)


def test_station_cannot_publish_as_another_station_or_the_hub(deployed, fleet, hub) -> None:
    a = tls_client(deployed, fleet.ca_cert, station(fleet, A))
    try:
        forged = [f"{V1}/{B}/status", f"{V1}/{B}/state", f"{V1}/{B}/event",
                  f"{V1}/{B}/cmd/result", f"{V1}/{B}/cmd", f"{V1}/{B}/directory",
                  f"{V1}/hub/status", f"{V1}/hub/time"]
        for topic in forged:
            a.publish(topic, b"forged", qos=1).wait_for_publish(5)
        # QoS 1 from one client arrives in order: once A's own report is at the
        # hub, every forged one before it would have been too.
        sync(a, f"{V1}/{A}/event")
        hub.wait_for(lambda m: m.topic == f"{V1}/{A}/event")
        assert [m.topic for m in hub.messages if m.payload == b"forged"] == []
    finally:
        close(a)


def test_station_cannot_read_another_stations_commands_nor_everything(
        deployed, fleet) -> None:
    got: list[tuple[str, bytes]] = []
    a = tls_client(deployed, fleet.ca_cert, station(fleet, A), messages=got)
    hub_client = connect(deployed, username="_hub", password=hub_password(fleet))
    b = tls_client(deployed, fleet.ca_cert, station(fleet, B))
    try:
        for topic in (f"{V1}/{B}/cmd", f"{V1}/{B}/directory", "#", f"{V1}/#", "$SYS/#"):
            a.subscribe(topic, qos=1)
        sync(a, f"{V1}/{A}/status")  # the subscriptions are in place
        for topic in (f"{V1}/{B}/cmd", f"{V1}/{B}/directory"):
            hub_client.publish(topic, b"for-b", qos=1).wait_for_publish(5)
        for topic in (f"{V1}/{B}/status", f"{V1}/{B}/event"):
            b.publish(topic, b"from-b", qos=1).wait_for_publish(5)
        hub_client.publish(f"{V1}/{A}/cmd", b"for-a", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while (f"{V1}/{A}/cmd", b"for-a") not in got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (f"{V1}/{A}/cmd", b"for-a") in got  # A's own command reaches it...
        # ...and nothing of B's, nor the broker's counters, came before it.
        others = [(t, p) for t, p in got if B in t or t.startswith("$SYS") or
                  p in (b"for-b", b"from-b")]
        assert others == []
    finally:
        close(a)
        close(b)
        close(hub_client)


# -- who cannot connect at all -----------------------------------------------------


def test_no_plain_mqtt_to_the_stations_listener_nor_anonymous(deployed, fleet) -> None:
    class Plain:  # the TLS port spoken to without TLS
        host, port, url = "127.0.0.1", deployed.tls_port, f"mqtt://127.0.0.1:{deployed.tls_port}"

    with pytest.raises((ConnectRefused, AssertionError, OSError)):
        close(connect(Plain, username=A, timeout=3))
    with pytest.raises(ConnectRefused):  # the loopback listener wants the hub's password
        close(connect(deployed, username=A, password="guess"))
    with pytest.raises(ConnectRefused):
        close(connect(deployed))


def test_tls_without_a_certificate_is_refused(deployed, fleet) -> None:
    assert handshake_refused(deployed, fleet.ca_cert, None) == \
        "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_another_cas_certificate_is_refused(deployed, fleet, tmp_path) -> None:
    rogue = Fleet(tmp_path / "rogue")
    rogue.ensure_ca()
    rogue_a = rogue.station(A)  # the same CN, signed by a CA the broker does not know
    error = handshake_refused(deployed, fleet.ca_cert, (rogue_a.cert_file, rogue_a.key_file))
    assert error == "TLSV1_ALERT_UNKNOWN_CA"


def test_revoked_station_is_refused(deployed, fleet) -> None:
    assert handshake_refused(deployed, fleet.ca_cert, station(fleet, GONE)) == \
        "SSLV3_ALERT_CERTIFICATE_REVOKED"
    # The same handshake with a certificate still valid goes through (the control).
    close(tls_client(deployed, fleet.ca_cert, station(fleet, A)))


def test_revocation_reaches_a_running_fleet(fleet, tmp_path) -> None:
    """Provisioned, connects; revoked with the CLI, the role re-applied: refused."""
    late = "yh-late-01"
    provision(fleet.dir, [late], broker_hosts=[])
    fleet.write_vault(*vault_of(fleet))
    conf_dir = tmp_path / "etc"
    local_port, tls_port = free_port(), free_port()
    apply_role(fleet, conf_dir, local_port, tls_port)
    broker = RoleBroker(tmp_path, conf_dir, local_port, tls_port)
    broker.start()
    try:
        close(tls_client(broker, fleet.ca_cert, station(fleet, late)))
        vault, vault_pass = vault_of(fleet)
        done = subprocess.run([str(BIN / "yizhan"), "provision", "--secrets", str(fleet.dir),
                               "--revoke", late, "--vault", str(vault),
                               "--vault-password-file", str(vault_pass)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        apply_role(fleet, conf_dir, local_port, tls_port)
        broker.restart()  # the role's handler: Mosquitto reads the CRL at start
        assert handshake_refused(broker, fleet.ca_cert, station(fleet, late)) == \
            "SSLV3_ALERT_CERTIFICATE_REVOKED"
        close(tls_client(broker, fleet.ca_cert, station(fleet, A)))  # the others stay
    finally:
        broker.stop()


def test_password_mode_names_the_station_by_its_password(fleet, tmp_path) -> None:
    """mosquitto_station_auth: password: the fleet's certificate and the sid's password."""
    conf_dir = tmp_path / "etc"
    local_port, tls_port = free_port(), free_port()
    apply_role(fleet, conf_dir, local_port, tls_port, mosquitto_station_auth="password")
    rendered = (conf_dir / "conf.d" / "yizhan.conf").read_text().splitlines()
    assert "use_identity_as_username false" in rendered
    assert "require_certificate true" in rendered
    broker = RoleBroker(tmp_path, conf_dir, local_port, tls_port)
    broker.start()
    own = (fleet.dir / "stations" / A / "password").read_text().strip()
    try:
        with Subscriber(broker, f"{V1}/#", username="_hub",
                        password=hub_password(fleet)) as hub:
            a = tls_client(broker, fleet.ca_cert, station(fleet, A), login=(A, own))
            try:
                a.publish(f"{V1}/{A}/status", b"mine", qos=1).wait_for_publish(5)
                a.publish(f"{V1}/{B}/status", b"forged", qos=1).wait_for_publish(5)
                sync(a, f"{V1}/{A}/event")
                hub.wait_for(f"{V1}/{A}/event")
                assert [(m.topic, m.payload) for m in hub.messages] == [
                    (f"{V1}/{A}/status", b"mine"), (f"{V1}/{A}/event", b"marker")]
            finally:
                close(a)
        for login in ((A, "a guess"), (B, own), (A, "")):
            with pytest.raises(ConnectRefused):
                close(tls_client(broker, fleet.ca_cert, station(fleet, A), login=login))
        with pytest.raises(ConnectRefused):  # the password without a certificate
            close(tls_client(broker, fleet.ca_cert, None, login=(A, own)))
    finally:
        broker.stop()


def test_fleet_simulator_connects_each_station_as_its_own_identity(deployed, fleet, hub):
    """``yizhan sim fleet --identities`` against the deployed broker: each simulated
    station presents the certificate provision made for it (CN = sid), so the
    broker's ACL lets it publish its own birth; a station without one is named
    before anything connects."""
    argv = [sys.executable, "-m", "yizhan", "sim", "fleet", "--quiet",
            "--host", "127.0.0.1", "--port", str(deployed.tls_port),
            "--cafile", str(fleet.ca_cert), "--identities", str(fleet.dir),
            "--prefix", "yh-sim-", "--duration", "3"]
    done = subprocess.run([*argv, "--stations", "2"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["connects"] == 2 and summary["connect_errors"] == 0, summary
    for sid in SIMULATED:
        birth = hub.wait_for(lambda m, sid=sid: m.topic == f"{V1}/{sid}/status"
                             and json.loads(m.payload)["state"] == "online")
        assert json.loads(birth.payload)["sid"] == sid
    missing = subprocess.run([*argv, "--stations", "3"], capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode != 0
    assert "no certificate and key for 1 of 3 stations, the first yh-sim-00003" in \
        missing.stderr, missing.stderr


def test_argument_specs_say_what_the_role_does() -> None:
    """Every default the role uses is declared in meta/argument_specs.yml, with the
    same value, and every secret there is no_log."""
    role = ROLES / "mosquitto"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    assert set(defaults) <= set(options)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name
    required = {n for n, o in options.items() if o.get("required")}
    assert required == {"mosquitto_ca_cert", "mosquitto_crl", "mosquitto_server_cert",
                        "mosquitto_server_key", "mosquitto_passwd"}
    assert options["mosquitto_server_key"]["no_log"] and options["mosquitto_passwd"]["no_log"]
