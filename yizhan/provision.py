"""``yizhan provision``: the fleet's secrets and one broker identity per station.

    yizhan provision --secrets ~/yizhan-secrets --broker-host hub.example.cn \\
        --inventory deploy/ansible/inventory yh-chumen-01 yh-chumen-02
    yizhan provision --secrets ~/yizhan-secrets --revoke yh-chumen-02

The first run makes the fleet key (rider ids are HMACs with it), the fleet CA
and the broker's certificate; every SID then gets a key and a certificate whose
CN is the SID (the broker takes the CN as the username, so the ACL's ``%u``
is the station) and, with ``--password``, a password whose hash goes into the
broker's password file. Each SID also gets its inventory entry
(``host_vars/<sid>.yml``, nothing secret in it). Secrets are written only into
the ``--secrets`` directory, which must lie outside any git checkout: a key
committed by mistake is a key for the whole fleet.

The CA is the ``openssl ca`` command's own (index.txt, serial, crl.pem), so an
operator can inspect or repair it with the tool everyone knows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol.ids import InvalidIdentifier, check_sid

#: The hub's own broker account: not a valid sid, so no station can be it (see
#: deploy/mosquitto/acl).
HUB_USER = "_hub"
#: Years are long for a Pi that may stay in a station for a decade; a station's
#: certificate is revoked, not left to expire, when it is retired or stolen.
CA_DAYS = 7300
CERT_DAYS = 3650
#: A CRL carries its own "next update": past it, Mosquitto refuses every client.
#: Re-run ``--crl`` (or any ``--revoke``) and the playbook within this time.
CRL_DAYS = 180

_CA_CONF = """\
# The fleet CA of yizhan provision; paths are relative to this directory.
[ ca ]
default_ca = fleet

[ fleet ]
dir = .
database = ./index.txt
new_certs_dir = ./issued
certificate = ./ca.crt
private_key = ./ca.key
serial = ./serial
crlnumber = ./crlnumber
default_md = sha256
default_days = {cert_days}
default_crl_days = {crl_days}
policy = any_name
# A station re-provisioned after its revocation gets a new certificate, same CN.
unique_subject = no
copy_extensions = none

[ any_name ]
commonName = supplied

[ station ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth

[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


class ProvisionError(RuntimeError):
    """Refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    sid: str
    key_file: Path
    cert_file: Path
    password: str | None = None


def inside_git_checkout(path: Path) -> Path | None:
    """The checkout ``path`` would be inside (a parent holding ``.git``), or None."""
    p = path.resolve()
    for parent in (p, *p.parents):
        if (parent / ".git").exists():
            return parent
    return None


def _openssl(*args: str, cwd: Path, stdin: str | None = None) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise ProvisionError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _private(path: Path) -> None:
    path.chmod(0o600)


class Fleet:
    """The secrets directory: fleet key, CA, broker certificate, station identities."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory).expanduser().resolve()
        checkout = inside_git_checkout(self.dir)
        if checkout is not None:
            raise ProvisionError(
                f"{self.dir} is inside the git checkout {checkout}: secrets go into a "
                "directory outside any repository (e.g. ~/yizhan-secrets)")
        self.ca_dir = self.dir / "ca"
        self.ca_cert = self.ca_dir / "ca.crt"
        self.ca_key = self.ca_dir / "ca.key"
        self.crl = self.ca_dir / "crl.pem"
        self.fleet_key = self.dir / "fleet.key"
        self.broker_dir = self.dir / "broker"
        self.passwd = self.dir / "mosquitto.passwd"

    # -- the fleet ---------------------------------------------------------

    def ensure_ca(self) -> None:
        """The fleet key, the CA and an empty CRL, each made once."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.fleet_key.exists():
            # 256 random bits as hex: the hub and the kiosk want >= 16 characters.
            self.fleet_key.write_text(secrets.token_hex(32) + "\n")
            _private(self.fleet_key)
        if self.ca_cert.exists():
            return
        (self.ca_dir / "issued").mkdir(parents=True, exist_ok=True)
        (self.ca_dir / "openssl.cnf").write_text(
            _CA_CONF.format(cert_days=CERT_DAYS, crl_days=CRL_DAYS))
        (self.ca_dir / "index.txt").write_text("")
        (self.ca_dir / "serial").write_text(secrets.token_hex(8).upper() + "\n")
        (self.ca_dir / "crlnumber").write_text("01\n")
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key",
                 cwd=self.ca_dir)
        _private(self.ca_key)
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-days", str(CA_DAYS),
                 "-subj", "/O=Yizhan/CN=yizhan-fleet-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-out", "ca.crt", cwd=self.ca_dir)
        self.write_crl()

    def write_crl(self) -> Path:
        """(Re)issue the CRL: every revoked certificate, valid for CRL_DAYS."""
        _openssl("ca", "-config", "openssl.cnf", "-gencrl", "-crlexts", "crl_ext",
                 "-out", "crl.pem", cwd=self.ca_dir)
        self.crl.chmod(0o644)
        return self.crl

    def ensure_broker(self, hosts: list[str]) -> Path:
        """The broker's key and certificate for ``hosts`` (names or IP addresses)."""
        self._need_ca()
        cert = self.broker_dir / "broker.crt"
        if cert.exists():
            return cert
        if not hosts:
            raise ProvisionError("the broker's certificate needs --broker-host NAME "
                                 "(the name or address stations connect to)")
        san = ",".join(("IP:" if _is_ip(h) else "DNS:") + _checked_host(h) for h in hosts)
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self._issue(self.broker_dir, "broker", hosts[0],
                    ["basicConstraints=critical,CA:FALSE",
                     "keyUsage=critical,digitalSignature",
                     "extendedKeyUsage=serverAuth", f"subjectAltName={san}"])
        return cert

    def ensure_hub_password(self) -> str:
        """The hub's broker password (account ``_hub``), made once."""
        return self._password(HUB_USER, self.dir / "hub.password")

    # -- stations ----------------------------------------------------------

    def station(self, sid: str, *, password: bool = False, reissue: bool = False) -> Identity:
        """Station ``sid``'s key and certificate (CN = sid), made once; and a password.

        A revoked station stays revoked when the same list of SIDs is provisioned
        again; only ``reissue`` (a replaced Pi) gives it a new identity.
        """
        sid = _checked_sid(sid)
        self._need_ca()
        d = self.dir / "stations" / sid
        cert = d / f"{sid}.crt"
        revoked = cert.exists() and self._revoked(cert)
        if revoked and not reissue:
            raise ProvisionError(f"station {sid} was revoked; --reissue gives it a new "
                                 "key and certificate")
        if not cert.exists() or revoked:
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob(f"{sid}.*"):
                old.unlink()
            self._issue(d, sid, sid, None)
        pw = self._password(sid, d / "password") if password else None
        return Identity(sid, d / f"{sid}.key", cert, pw)

    def revoke(self, sid: str) -> Path:
        """Put station ``sid``'s certificate on the CRL and drop its password."""
        sid = _checked_sid(sid)
        self._need_ca()
        cert = self.dir / "stations" / sid / f"{sid}.crt"
        if not cert.exists():
            raise ProvisionError(f"no certificate for station {sid} in {self.dir}")
        if not self._revoked(cert):
            _openssl("ca", "-config", "openssl.cnf", "-revoke", str(cert),
                     "-crl_reason", "keyCompromise", cwd=self.ca_dir)
        self._drop_password(sid)
        (self.dir / "stations" / sid / "password").unlink(missing_ok=True)
        return self.write_crl()

    # -- the vault ---------------------------------------------------------

    def vault_data(self) -> dict:
        """Every secret the playbook installs, under the inventory's vault names.

        Stations revoked (or whose files are gone) are left out: the vault then
        holds nothing a retired Pi's identity could be re-installed from.
        """
        self._need_ca()

        def text(path: Path) -> str:
            return path.read_text()

        tls: dict[str, dict[str, str]] = {}
        passwords: dict[str, str] = {}
        for d in sorted((self.dir / "stations").glob("*")):
            cert, key = d / f"{d.name}.crt", d / f"{d.name}.key"
            if not cert.exists() or not key.exists() or self._revoked(cert):
                continue
            tls[d.name] = {"cert": text(cert), "key": text(key)}
            if (d / "password").exists():
                passwords[d.name] = text(d / "password").strip()
        return {
            "vault_yizhan_fleet_key": text(self.fleet_key).strip(),
            "vault_yizhan_ca_cert": text(self.ca_cert),
            "vault_yizhan_crl": text(self.crl),
            "vault_broker_cert": text(self.broker_dir / "broker.crt"),
            "vault_broker_key": text(self.broker_dir / "broker.key"),
            "vault_broker_passwd": text(self.passwd) if self.passwd.exists() else "",
            "vault_hub_mqtt_password": text(self.dir / "hub.password").strip(),
            "vault_station_tls": tls,
            "vault_station_mqtt_passwords": passwords,
        }

    def write_vault(self, vault: Path | str, password_file: Path | str) -> Path:
        """The secrets as an ansible-vault file, encrypted with ``password_file``.

        The plain text exists only in the secrets directory, for the moment
        ansible-vault takes to encrypt it.
        """
        vault = Path(vault).resolve()
        tool = shutil.which("ansible-vault") or str(Path(sys.executable).parent
                                                    / "ansible-vault")
        if not os.access(tool, os.X_OK):
            raise ProvisionError("--vault needs ansible-vault (pip install ansible-core)")
        plain = self.dir / ".vault.tmp.yml"
        plain.touch(mode=0o600)
        plain.write_text("---\n" + yaml.dump(self.vault_data(), Dumper=_BlockDumper,
                                              sort_keys=True, allow_unicode=True))
        try:
            vault.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [tool, "encrypt", "--vault-password-file", str(password_file),
                 "--output", str(vault), str(plain)],
                capture_output=True, text=True, timeout=120)
        finally:
            plain.unlink(missing_ok=True)
        if done.returncode != 0:
            raise ProvisionError(f"ansible-vault failed: {done.stderr.strip()}")
        return vault

    # -- internals ---------------------------------------------------------

    def _need_ca(self) -> None:
        if not self.ca_cert.exists():
            raise ProvisionError(f"no fleet CA in {self.dir}: run yizhan provision there "
                                 "without --revoke first")

    def _issue(self, d: Path, name: str, cn: str, extensions: list[str] | None) -> None:
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key),
                 cwd=d)
        _private(key)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/O=Yizhan/CN={cn}",
                 "-out", str(csr), cwd=d)
        args = ["ca", "-config", "openssl.cnf", "-batch", "-notext", "-in", str(csr),
                "-out", str(cert)]
        if extensions is None:
            args += ["-extensions", "station"]
        else:
            ext = d / f"{name}.ext"
            ext.write_text("[ server ]\n" + "\n".join(extensions) + "\n")
            args += ["-extfile", str(ext), "-extensions", "server"]
        _openssl(*args, cwd=self.ca_dir)
        csr.unlink()

    def _revoked(self, cert: Path) -> bool:
        """Whether openssl's index marks ``cert``'s serial revoked ("R")."""
        done = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
                              capture_output=True, text=True, timeout=60, check=True)
        serial = done.stdout.strip().split("=", 1)[1].upper()
        for line in (self.ca_dir / "index.txt").read_text().splitlines():
            fields = line.split("\t")
            if len(fields) > 3 and fields[3].upper() == serial:
                return fields[0] == "R"
        return False

    def _password(self, user: str, file: Path) -> str:
        if file.exists():
            pw = file.read_text().strip()
        else:
            file.parent.mkdir(parents=True, exist_ok=True)
            pw = secrets.token_urlsafe(32)
            file.write_text(pw + "\n")
            _private(file)
        self._set_password(user, pw)
        return pw

    def _lines(self) -> list[str]:
        return self.passwd.read_text().splitlines() if self.passwd.exists() else []

    def _set_password(self, user: str, pw: str) -> None:
        """One hashed line for ``user`` in the broker's password file."""
        if any(line.startswith(f"{user}:") for line in self._lines()):
            return
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(tool, os.X_OK):
            raise ProvisionError("passwords need mosquitto_passwd (apt-get install "
                                 "mosquitto-clients or mosquitto)")
        plain = self.dir / ".passwd.tmp"
        plain.write_text(f"{user}:{pw}\n")
        _private(plain)
        try:
            done = subprocess.run([tool, "-U", str(plain)], capture_output=True, text=True,
                                  timeout=60)
            if done.returncode != 0:
                raise ProvisionError(f"mosquitto_passwd failed: {done.stderr.strip()}")
            hashed = plain.read_text().strip()
        finally:
            plain.unlink(missing_ok=True)
        self.passwd.write_text("\n".join([*self._lines(), hashed]) + "\n")
        _private(self.passwd)

    def _drop_password(self, user: str) -> None:
        if self.passwd.exists():
            kept = [line for line in self._lines() if not line.startswith(f"{user}:")]
            self.passwd.write_text("".join(line + "\n" for line in kept))


class _BlockDumper(yaml.SafeDumper):
    """PEM blocks as YAML literal blocks, as a person would paste them."""


_BlockDumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                         style="|" if "\n" in v else None))


def _checked_sid(sid: str) -> str:
    try:
        return check_sid(sid)
    except InvalidIdentifier as err:
        raise ProvisionError(str(err)) from None


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _checked_host(host: str) -> str:
    """A DNS name or an IP address, nothing that could smuggle openssl config syntax."""
    import re

    if _is_ip(host) or re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        return host
    raise ProvisionError(f"--broker-host {host!r} is neither a host name nor an IP address")


def write_inventory_entry(inventory: Path, sid: str, name: str | None,
                          group: str | None) -> Path:
    """The station in ``inventory``'s ``stations`` group, its variables beside it.

    ``host_vars/<sid>.yml`` holds its id, name and group (no secrets); an
    existing file keeps what the installer wrote there (pins, address), only
    missing keys are filled in. ``provisioned.yml``, a file of this command's
    own, puts the host in the ``stations`` group: Ansible reads every file of
    an inventory directory, so the installer's hosts.yml is never rewritten.
    """
    sid = _checked_sid(sid)
    inventory = Path(inventory)
    path = inventory / "host_vars" / f"{sid}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError as err:
        raise ProvisionError(f"{path} is not YAML Ansible can read: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        # Never replace what the installer wrote, even when it makes no sense here.
        raise ProvisionError(f"{path} holds a {type(data).__name__}, not the station's "
                             "variables; fix or remove it")
    data.setdefault("station_id", sid)
    data.setdefault("station_name", name or sid)
    data.setdefault("station_group", group or "default")
    path.write_text("---\n" + yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    listed = inventory / "provisioned.yml"
    hosts: dict = {}
    if listed.exists():
        try:
            old = yaml.safe_load(listed.read_text()) or {}
            hosts = dict(((old.get("stations") or {}).get("hosts")) or {})
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            raise ProvisionError(f"{listed} was not written by yizhan provision; "
                                 "move it away") from None
    hosts.setdefault(sid, None)
    listed.write_text("---\n# Written by yizhan provision: the stations it made.\n"
                      + yaml.safe_dump({"stations": {"hosts": hosts}}, sort_keys=True))
    return path


def provision(secrets_dir: Path | str, sids: list[str], *, broker_hosts: list[str],
              inventory: Path | str | None = None, password: bool = False,
              name: str | None = None, group: str | None = None,
              reissue: bool = False) -> list[Identity]:
    """The fleet (made once) and one identity per sid; their inventory entries."""
    fleet = Fleet(secrets_dir)
    for sid in sids:
        _checked_sid(sid)  # all refused before anything is written
    for host in broker_hosts:
        _checked_host(host)
    fleet.ensure_ca()
    fleet.ensure_broker(broker_hosts)
    fleet.ensure_hub_password()
    made = [fleet.station(sid, password=password, reissue=reissue) for sid in sids]
    if inventory is not None:
        for sid in sids:
            write_inventory_entry(Path(inventory), sid, name, group)
    return made
