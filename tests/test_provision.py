"""``yizhan provision``: the fleet's secrets, one identity per station, revocation.

Run as the installer runs it (the ``yizhan`` command); certificates are checked
with ``openssl verify`` against the CA and its CRL, the vault with
``ansible-vault view``. The broker side of the same files is
tests/test_deploy_mosquitto.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def yizhan(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "yizhan"), "provision", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def verify(secrets: Path, cert: Path) -> subprocess.CompletedProcess:
    """openssl's verdict on ``cert`` with the fleet CA and its CRL, for a TLS client."""
    return subprocess.run(["openssl", "verify", "-CAfile", str(secrets / "ca" / "ca.crt"),
                           "-crl_check", "-CRLfile", str(secrets / "ca" / "crl.pem"),
                           "-purpose", "sslclient", str(cert)],
                          capture_output=True, text=True, timeout=60)


def subject(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "sep_multiline",
                           "-in", str(cert)], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


def test_fleet_and_stations_are_made_once(secrets: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    done = yizhan("--secrets", secrets, "--broker-host", "hub.example.cn", "--broker-host",
                  "192.0.2.10", "--inventory", inventory, "--name", "楚门镇先锋驿站",
                  "--group", "wenling", "yh-chumen-01", "yh-chumen-02")
    assert done.returncode == 0, done.stderr
    cert = secrets / "stations" / "yh-chumen-01" / "yh-chumen-01.crt"
    assert verify(secrets, cert).returncode == 0
    assert "CN=yh-chumen-01" in subject(cert)
    broker = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage",
                             "-in", str(secrets / "broker" / "broker.crt")],
                            capture_output=True, text=True, check=True).stdout
    assert "DNS:hub.example.cn" in broker and "IP Address:192.0.2.10" in broker
    assert "TLS Web Server Authentication" in broker
    # Only the owner reads the secrets.
    assert secrets.stat().st_mode & 0o777 == 0o700
    for secret in ("fleet.key", "ca/ca.key", "broker/broker.key", "hub.password",
                   "stations/yh-chumen-01/yh-chumen-01.key"):
        assert (secrets / secret).stat().st_mode & 0o777 == 0o600, secret
    assert len((secrets / "fleet.key").read_text().strip()) >= 16

    before = {p: p.read_bytes() for p in secrets.rglob("*") if p.is_file()}
    assert yizhan("--secrets", secrets, "yh-chumen-01", "yh-chumen-02").returncode == 0
    after = {p: p.read_bytes() for p in secrets.rglob("*") if p.is_file()}
    assert after == before  # a second run changes nothing: no new CA, no new keys

    entry = yaml.safe_load((inventory / "host_vars" / "yh-chumen-01.yml").read_text())
    assert entry == {"station_id": "yh-chumen-01", "station_name": "楚门镇先锋驿站",
                     "station_group": "wenling"}
    listed = yaml.safe_load((inventory / "provisioned.yml").read_text())
    assert set(listed["stations"]["hosts"]) == {"yh-chumen-01", "yh-chumen-02"}
    # Nothing secret in the inventory.
    secret_texts = [(secrets / f).read_text().strip() for f in ("fleet.key", "hub.password")]
    secret_texts.append((secrets / "stations/yh-chumen-01/yh-chumen-01.key").read_text())
    for path in inventory.rglob("*"):
        if path.is_file():
            assert not any(s in path.read_text() for s in secret_texts), path
            assert "PRIVATE KEY" not in path.read_text()


def test_inventory_entry_keeps_what_the_installer_wrote(secrets: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "host_vars" / "yh-a.yml").write_text(
        "station_name: 渔港\nansible_host: 192.0.2.21\nstation_pins: {heater: 23}\n")
    assert yizhan("--secrets", secrets, "--broker-host", "hub", "--inventory", inventory,
                  "yh-a").returncode == 0
    entry = yaml.safe_load((inventory / "host_vars" / "yh-a.yml").read_text())
    assert entry == {"station_name": "渔港", "ansible_host": "192.0.2.21",
                     "station_pins": {"heater": 23}, "station_id": "yh-a",
                     "station_group": "default"}


def test_secrets_never_inside_a_checkout(tmp_path: Path) -> None:
    inside = REPO / "provision-secrets-test"
    done = yizhan("--secrets", inside, "--broker-host", "hub", "yh-a")
    assert done.returncode == 2
    assert "inside the git checkout" in done.stderr
    assert not inside.exists()
    other = tmp_path / "checkout"
    (other / ".git").mkdir(parents=True)
    done = yizhan("--secrets", other / "deep" / "secrets", "--broker-host", "hub", "yh-a")
    assert done.returncode == 2 and not (other / "deep").exists()


@pytest.mark.parametrize("sid", ["hub", "YH-A", "yh-\u0663", "-yh", "a" * 33, "yh\n", "yh/../x",
                                 "", "yh a", "_hub", "yh:a"])
def test_hostile_station_ids_are_refused_before_anything_is_written(secrets: Path,
                                                                    sid: str) -> None:
    done = yizhan("--secrets", secrets, "--broker-host", "hub", "--", "yh-fine", sid)
    assert done.returncode == 2, done.stdout
    assert "station id" in done.stderr
    assert not secrets.exists()


@pytest.mark.parametrize("host", ["hub,DNS:evil.example", "hub\n[ server ]", "*.example.cn",
                                  "", "a" * 300])
def test_hostile_broker_hosts_are_refused(secrets: Path, host: str) -> None:
    done = yizhan("--secrets", secrets, "--broker-host", host, "yh-a")
    assert done.returncode == 2 and "--broker-host" in done.stderr
    assert not secrets.exists()


def test_revoke_then_reissue(secrets: Path) -> None:
    assert yizhan("--secrets", secrets, "--broker-host", "hub", "--password", "yh-a",
                  "yh-b").returncode == 0
    old = secrets / "stations" / "yh-a" / "yh-a.crt"
    old_pem = old.read_bytes()
    passwd = (secrets / "mosquitto.passwd").read_text()
    plain = (secrets / "stations" / "yh-a" / "password").read_text().strip()
    assert "yh-a:$7$" in passwd and plain not in passwd  # a hash, never the password

    done = yizhan("--secrets", secrets, "--revoke", "yh-a")
    assert done.returncode == 0, done.stderr
    refused = verify(secrets, old)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    assert verify(secrets, secrets / "stations" / "yh-b" / "yh-b.crt").returncode == 0
    assert "yh-a:" not in (secrets / "mosquitto.passwd").read_text()
    assert "yh-b:" in (secrets / "mosquitto.passwd").read_text()

    # The same list provisioned again does not bring the stolen Pi's station back.
    again = yizhan("--secrets", secrets, "yh-a", "yh-b")
    assert again.returncode == 2 and "--reissue" in again.stderr
    assert yizhan("--secrets", secrets, "--reissue", "yh-a").returncode == 0
    assert old.read_bytes() != old_pem  # a new certificate, same name
    assert verify(secrets, old).returncode == 0
    assert "CN=yh-a" in subject(old)

    unknown = yizhan("--secrets", secrets, "--revoke", "yh-never")
    assert unknown.returncode == 2 and "no certificate" in unknown.stderr
    assert yizhan("--secrets", secrets, "--revoke", "YH\u0663").returncode == 2


def test_vault_holds_the_secrets_encrypted(secrets: Path, tmp_path: Path) -> None:
    vault, password = tmp_path / "vault.yml", tmp_path / "vault.pass"
    password.write_text("a demo vault password\n")
    assert yizhan("--secrets", secrets, "--broker-host", "hub", "--password", "--vault", vault,
                  "--vault-password-file", password, "yh-a", "yh-b").returncode == 0
    text = vault.read_text()
    assert text.startswith("$ANSIBLE_VAULT;1.1;AES256")
    key = (secrets / "stations" / "yh-a" / "yh-a.key").read_text()
    fleet_key = (secrets / "fleet.key").read_text().strip()
    assert "PRIVATE KEY" not in text and fleet_key not in text

    def opened() -> dict:
        shown = subprocess.run([str(BIN / "ansible-vault"), "view", "--vault-password-file",
                                str(password), str(vault)], capture_output=True, text=True,
                               timeout=60, check=True)
        return yaml.safe_load(shown.stdout)

    data = opened()
    assert data["vault_yizhan_fleet_key"] == fleet_key
    assert data["vault_station_tls"]["yh-a"]["key"] == key
    assert set(data["vault_station_mqtt_passwords"]) == {"yh-a", "yh-b"}
    assert data["vault_hub_mqtt_password"] == (secrets / "hub.password").read_text().strip()
    assert not list(secrets.glob(".vault*"))  # the plain text did not outlive the run

    assert yizhan("--secrets", secrets, "--revoke", "yh-b", "--vault", vault,
                  "--vault-password-file", password).returncode == 0
    data = opened()
    assert set(data["vault_station_tls"]) == {"yh-a"}  # a revoked station leaves the vault
    assert set(data["vault_station_mqtt_passwords"]) == {"yh-a"}
    assert yizhan("--secrets", secrets, "--vault", vault, "yh-a").returncode == 2


@pytest.mark.parametrize("content", ["- a list\n", "!!python/object:os.system {}\n",
                                     "station_name: [unclosed\n"])
def test_a_strange_inventory_entry_is_left_alone(secrets: Path, tmp_path: Path,
                                                 content: str) -> None:
    entry = tmp_path / "inventory" / "host_vars" / "yh-a.yml"
    entry.parent.mkdir(parents=True)
    entry.write_text(content)
    done = yizhan("--secrets", secrets, "--broker-host", "hub", "--inventory",
                  tmp_path / "inventory", "yh-a")
    assert done.returncode == 2 and "host_vars/yh-a.yml" in done.stderr
    assert entry.read_text() == content


def test_ansible_reads_the_entry_in_the_example_inventory(secrets: Path,
                                                          tmp_path: Path) -> None:
    """Provisioned into a copy of deploy/ansible/inventory/example: a station of the
    stations group with the group's variables and its own."""
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "deploy" / "ansible" / "inventory" / "example", inventory)
    assert yizhan("--secrets", secrets, "--broker-host", "hub", "--inventory", inventory,
                  "--name", "新站", "--group", "wenling", "yh-new-01").returncode == 0
    shown = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory), "--list"],
                           capture_output=True, text=True, timeout=120, check=True)
    listed = json.loads(shown.stdout)
    assert "yh-new-01" in listed["stations"]["hosts"]
    assert "yh-chumen-01" in listed["stations"]["hosts"]  # the example's own, untouched
    host = listed["_meta"]["hostvars"]["yh-new-01"]
    assert (host["station_id"], host["station_name"], host["station_group"]) == \
        ("yh-new-01", "新站", "wenling")
    assert "station_pins" in host  # the stations group's defaults apply to it
