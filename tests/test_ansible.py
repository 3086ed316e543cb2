"""deploy/ansible (issue 17): linted, checked, and applied for real to Debian 12 roots.

The real apply needs a Debian 12 (bookworm) root with the packages the roles install:
debootstrap (minbase) plus the station's browser, about two minutes to build from
Debian's mirror, kept in ``/var/cache/yizhan-debootstrap`` (``YIZHAN_DEBIAN_ROOT_CACHE``)
under a name that changes with the package list, and built here when missing. Each
run copies it, so the cache stays as debootstrap left it. Applying is offline (the
packages are already in the root, the yizhan package comes as a wheelhouse); only the
build reaches the mirror, and a mirror out of reach fails the test, never skips it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from yizhan.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "deploy" / "ansible"
BIN = Path(sys.executable).parent

SUITE = "bookworm"
MIRROR = os.environ.get("YIZHAN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("YIZHAN_DEBIAN_ROOT_CACHE", "/var/cache/yizhan-debootstrap"))
# What the roles common, yizhan_package, hub (SQLite) and station install, and what
# Ansible needs on the target. A role that gains a package must gain it here: the
# apply is offline and apt would otherwise go to the mirror's lists the root holds.
DEBOOTSTRAP_INCLUDE = [
    "python3", "python3-venv", "python3-packaging", "systemd", "systemd-sysv", "dbus",
    "udev", "chrony", "nftables", "netbase", "unattended-upgrades", "sqlite3", "curl",
    "ca-certificates", "mosquitto",
]
# debootstrap's own resolver cannot configure Chromium's dependencies: apt does it.
APT_AFTER = ["cage", "chromium", "fonts-noto-cjk"]

FLEET_KEY = "a-fleet-key-of-the-tests-0123456789"  # the --check run's, by hand
SID = "yh-test-01"
HUB_HOST = "hub.yizhan.test"
GRAFANA_TOKEN = "a-grafana-token-0123456789"
PI_CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
              "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot")
STATION = {
    "station_id": SID,
    "station_name": "测试驿站",
    "station_group": "test",
    "station_mqtt_cert": "-----BEGIN CERTIFICATE-----\nstation\n-----END CERTIFICATE-----\n",
    "station_mqtt_key": "-----BEGIN PRIVATE KEY-----\nstation\n-----END PRIVATE KEY-----\n",
    "station_thermometer": "28-0316a2795a1f",
    "station_locker_serial": "A10K1234",
}


# The applied station's cabinet (the --check run against localhost keeps the YZ-LB1
# variables): two 8A boards on one FTDI adapter, the charging relay modules on a
# CH340 adapter without a serial number, named by the USB port it sits in.
CABINET = {
    "driver": "lock8a",
    "buses": [{"serial": "A10K1ABC",
               "boards": [{"address": 1, "locks": 24},
                          {"address": 2, "locks": 8, "locked_when": "open"}]}],
    "charging": {"driver": "modbus-io", "vendor": "1a86", "product": "7523",
                 "usb_path": "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0",
                 "modules": [{"address": 1, "channels": 16}, {"address": 2, "channels": 16}],
                 "charge_time": "3h", "occupancy": "inputs"},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["NO_COLOR"] = "1"
    env["ANSIBLE_CONFIG"] = str(ANSIBLE / "ansible.cfg")
    return env


def _run(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ANSIBLE, env=_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{proc.args!r} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{what} needs root under CI", pytrace=False)
        pytest.skip(f"{what} needs root")


def test_yamllint_clean():
    _ok(_run([str(BIN / "yamllint"), "--strict", "."], timeout=60))


@pytest.mark.timeout(300)
def test_ansible_lint_production_profile_passes():
    out = _ok(_run([str(BIN / "ansible-lint"), "--offline"], timeout=280))
    assert "Profile 'production' was required, and it passed" in out, out[-3000:]


def test_syntax_check_with_the_example_inventory():
    out = _ok(_run([str(BIN / "ansible-playbook"), "-i", "inventory/example",
                    "--syntax-check", "site.yml"], timeout=90))
    assert "playbook: site.yml" in out


def _render_station(tmp: Path, host_vars: dict) -> tuple[subprocess.CompletedProcess, Path]:
    """The station role's cabinet checks (tasks/cabinet.yml), then its two templates
    rendered into ``tmp``, with its defaults and vars: what an apply would check and
    write, in a second and without a target. Returns the run and the output dir."""
    role = ANSIBLE / "roles" / "station"
    out = tmp / "out"
    out.mkdir()
    play = [{
        "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
        "vars": {"station_id": SID, "yizhan_broker_host": HUB_HOST, "yizhan_broker_port": 8883,
                 "ansible_python_interpreter": sys.executable},
        "tasks": [
            {"ansible.builtin.include_tasks": str(role / "tasks" / "cabinet.yml")},
            *({"ansible.builtin.template": {"src": str(role / "templates" / src),
                                            "dest": str(out / dest), "mode": "0600"}}
              for src, dest in (("station.yaml.j2", "station.yaml"),
                                ("99-yizhan-locker.rules.j2", "99-yizhan-locker.rules"))),
        ],
    }]
    (tmp / "play.yml").write_text(yaml.safe_dump(play), encoding="utf-8")
    (tmp / "vars.yml").write_text(yaml.safe_dump(host_vars, allow_unicode=True),
                                  encoding="utf-8")
    proc = _run([str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,",
                 str(tmp / "play.yml"), "-e", f"@{tmp / 'vars.yml'}"], timeout=120)
    return proc, out


def _load_rendered(tmp: Path, out: Path):
    """The rendered station.yaml through the station's loader, its /etc/yizhan files
    (fleet key, CA) made in ``tmp``."""
    from firmware.config import load_station_config

    etc = tmp / "etc"
    etc.mkdir()
    (etc / "fleet.key").write_text(FLEET_KEY)
    (etc / "fleet.key").chmod(0o600)
    (etc / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n")
    text = (out / "station.yaml").read_text(encoding="utf-8")
    (out / "here.yaml").write_text(text.replace("/etc/yizhan/", f"{etc}/"), encoding="utf-8")
    return load_station_config(out / "here.yaml")


def test_yz_lb1_variables_render_a_station_file_the_loader_accepts(tmp_path):
    proc, out = _render_station(tmp_path, STATION)
    _ok(proc)
    lockers = _load_rendered(tmp_path, out).lockers
    assert (lockers.driver, lockers.port, lockers.baudrate, lockers.address) == (
        "yz-lb1", "/dev/yizhan-locker", 115200, 1)
    rules = (out / "99-yizhan-locker.rules").read_text()
    assert ('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", '
            'ATTRS{serial}=="A10K1234", SYMLINK+="yizhan-locker", GROUP="dialout", '
            'MODE="0660"') in rules


def test_a_cabinet_on_a_hat_and_a_shared_line_renders_for_the_loader(tmp_path):
    """A Kerong chain on an RS485 HAT (a fixed port, no USB adapter) with its relay
    module on the same line (``bus: 1``): no udev rule, one port."""
    cabinet = {"driver": "kerong-cu16",
               "buses": [{"port": "/dev/ttySC0", "boards": [{"address": 0, "locks": 16}]}],
               "charging": {"driver": "modbus-io", "bus": 1, "baudrate": 19200,
                            "channels": 16}}
    proc, out = _render_station(tmp_path, {**STATION, "station_lockers": cabinet})
    _ok(proc)
    lockers = _load_rendered(tmp_path, out).lockers
    assert [b.port for b in lockers.buses] == ["/dev/ttySC0"]
    assert (lockers.charging.port, lockers.charging.baudrate) == ("/dev/ttySC0", 19200)
    assert "SUBSYSTEM" not in (out / "99-yizhan-locker.rules").read_text()


def test_the_example_inventorys_cabinet_renders_for_the_loader(tmp_path):
    """yh-chumen-03 of inventory/example, as an installer would copy it."""
    hosts = yaml.safe_load((ANSIBLE / "inventory/example/hosts.yml").read_text(encoding="utf-8"))
    host = hosts["all"]["children"]["stations"]["hosts"]["yh-chumen-03"]
    proc, out = _render_station(tmp_path, host)
    _ok(proc)
    lockers = _load_rendered(tmp_path, out).lockers
    assert (lockers.driver, lockers.n_slots, lockers.charging.port) == (
        "lock8a", 48, "/dev/yizhan-charging")
    rules = (out / "99-yizhan-locker.rules").read_text()
    assert 'ATTRS{serial}=="A10K1ABC", SYMLINK+="yizhan-bus-1"' in rules
    assert 'ATTRS{serial}=="A10K2DEF", SYMLINK+="yizhan-charging"' in rules


def _cabinet(**change) -> dict:
    cabinet = yaml.safe_load(yaml.safe_dump(CABINET))
    for key, value in change.items():
        where, _, name = key.rpartition("__")
        node = cabinet
        for step in where.split("__") if where else []:
            node = node[int(step)] if step.isdigit() else node[step]
        node[name] = value
    return cabinet


@pytest.mark.parametrize(("cabinet", "said"), [
    # A quote would end the udev rule's match and start a key of its own (RUN+=).
    (_cabinet(buses__0__serial='A1", RUN+="/bin/sh -c reboot'), "bus 1: vendor and product"),
    (_cabinet(buses__0__serial="A10K1ABC\nSUBSYSTEM"), "bus 1: vendor and product"),
    (_cabinet(charging__vendor=403), "the charging relay module: vendor and product"),
    (_cabinet(buses__0__serial=None), "every line with its USB adapter's serial"),
    (_cabinet(buses__0__port="/dev/../etc/shadow\n"), "every line with its USB adapter's"),
    (_cabinet(driver="yz-lb1"), "a YZ-LB1 board is station_locker_serial"),
    ({"driver": "lock8a"}, "station_lockers: a driver (lock8a, kerong-cu16;"),
    (_cabinet(charging__bus=1), "station_lockers.charging: a modbus-io module needs exactly"),
    (_cabinet(charging__bus=10**30, charging__usb_path=None),
     "station_lockers.charging: a modbus-io module"),
    (_cabinet(charging__serial="A10K1ABC", charging__vendor="0403", charging__product="6001",
              charging__usb_path=None), "two lines match the same adapter"),
])
def test_role_refuses_a_cabinet_it_cannot_name_before_writing(tmp_path, cabinet, said):
    proc, out = _render_station(tmp_path, {**STATION, "station_lockers": cabinet})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and said in text, text[-3000:]
    assert not (out / "station.yaml").exists() and not (out / "99-yizhan-locker.rules").exists()


def test_loader_names_the_key_of_a_cabinet_the_role_renders(tmp_path):
    """Addresses, locks and channels are the loader's to judge (the role's template
    task runs it as its validate): a board at address 10**30 is named."""
    cabinet = _cabinet()
    cabinet["buses"][0]["boards"][0]["address"] = 10**30
    proc, out = _render_station(tmp_path, {**STATION, "station_lockers": cabinet})
    _ok(proc)
    with pytest.raises(ConfigError, match=r"lockers\.buses\[0\]\.boards\[0\]\.address"):
        _load_rendered(tmp_path, out)


def _inventory(tmp: Path, common: dict, hub_host: str, station_host: str) -> Path:
    hub_vars = {
        "hub_mqtt_password": "hub-secret-of-the-tests",
        # The broker's files as `yizhan provision --vault` names them (content is
        # only copied here; tests/test_deploy_mosquitto.py runs a broker on real ones).
        "mosquitto_ca_cert": "{{ yizhan_ca_cert }}",
        "mosquitto_crl": "-----BEGIN X509 CRL-----\ncrl\n-----END X509 CRL-----\n",
        "mosquitto_server_cert": "-----BEGIN CERTIFICATE-----\nbroker\n-----END CERTIFICATE-----\n",
        "mosquitto_server_key": "-----BEGIN PRIVATE KEY-----\nbroker\n-----END PRIVATE KEY-----\n",
        "mosquitto_passwd": "_hub:$7$101$c2FsdA==$aGFzaA==\n",
        "mosquitto_service": False,
        "hub_api_tokens": [{"name": "grafana", "token": GRAFANA_TOKEN,
                            "scopes": ["read"]}],
    }
    inventory = {"all": {
        "vars": {
            "ansible_python_interpreter": "/usr/bin/python3",
            "yizhan_broker_host": "hub.yizhan.test",
            "yizhan_broker_port": 8883,
            "yizhan_ca_cert": "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n",
            "yizhan_fleet_key": FLEET_KEY,
            **common,
        },
        "children": {
            "hub": {"hosts": {hub_host: hub_vars}},
            "stations": {"hosts": {station_host: {**STATION,
                                                  "common_journal_storage": "volatile"}}},
        },
    }}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.timeout(300)
def test_check_diff_against_localhost_changes_nothing(tmp_path):
    """The whole site.yml (monitoring too) in --check --diff on this machine.

    This machine runs no systemd as PID 1 (a container): yizhan_offline, as for an image.
    """
    inventory = _inventory(tmp_path, {"ansible_connection": "local", "yizhan_offline": True},
                           "hub-local", "station-local")
    watched = [Path("/etc/yizhan/hub.yaml"), Path("/etc/yizhan/station.yaml"),
               Path("/opt/yizhan/venv"), Path("/etc/nftables.conf"),
               Path("/etc/systemd/journald.conf.d/yizhan.conf")]
    before = {p: p.exists() and p.stat().st_mtime_ns for p in watched}
    out = _ok(_run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml",
                    "--check", "--diff"], timeout=280))
    assert "failed=0" in out
    # The diff shows what would be written, rendered from the inventory.
    assert "/etc/yizhan/hub.yaml" in out and 'sid: "yh-test-01"' in out, out[-4000:]
    assert 'id: "yh-test-01"' in out  # station.yaml
    # The YZ-LB1 variables (no station_lockers): the one board on the one adapter.
    assert "port: /dev/yizhan-locker" in out
    assert ('ATTRS{serial}=="A10K1234", SYMLINK+="yizhan-locker", GROUP="dialout", '
            'MODE="0660"') in out
    assert "Storage=volatile" in out  # the station's journal
    assert "policy drop" in out  # the firewall
    # ...and nothing was: a check changes nothing.
    assert {p: p.exists() and p.stat().st_mtime_ns for p in watched} == before


def _cache_key() -> str:
    spec = f"{SUITE} minbase {','.join(DEBOOTSTRAP_INCLUDE)} then {','.join(APT_AFTER)}"
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _build_root(dest: Path) -> None:
    """debootstrap, then apt for the browser; any failure (the mirror out of reach
    included) fails the test with what the tool said."""
    steps = [
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
         SUITE, str(dest), MIRROR],
        ["chroot", str(dest), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install",
         "-y", "-q", "--no-install-recommends", *APT_AFTER],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"building the Debian {SUITE} root failed ({MIRROR} out of reach?): "
                        f"{' '.join(step[:3])}... exited {proc.returncode}:\n"
                        f"{(proc.stdout + proc.stderr)[-3000:]}", pytrace=False)


@pytest.fixture(scope="module")
def debian_root() -> Path:
    """The cached Debian 12 root, built (about two minutes) when missing."""
    _need_root("debootstrap and chroot")
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        pytest.fail("debootstrap is missing: `make system-deps` installs it", pytrace=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / f"{SUITE}-{_cache_key()}"
    # Two runs at once build it once.
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            partial = CACHE / f"{root.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            _build_root(partial)
            (partial / ".complete").touch()
            partial.rename(root)
            # A root of an older package list is 1.4 GB nobody uses any more.
            for stale in CACHE.glob(f"{SUITE}-*"):
                if stale != root:
                    shutil.rmtree(stale, ignore_errors=True)
    return root


def _copy_root(cached: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(dest)], check=True,
                   timeout=300)
    return dest


def _in(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command inside ``root``; leading ``--userspec=...`` goes to chroot itself."""
    opts = [a for a in args if a.startswith("--userspec=")]
    rest = [a for a in args if not a.startswith("--userspec=")]
    proc = subprocess.run(["chroot", *opts, str(root), *rest], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"{args!r} in {root}: {proc.stdout}{proc.stderr}"
    return proc


def _is_enabled(root: Path, *units: str) -> list[str]:
    proc = subprocess.run(["systemctl", f"--root={root}", "is-enabled", *units],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.split()


def _mode_owner(root: Path, path: str) -> tuple[int, str]:
    st = (root / path.lstrip("/")).stat()
    users = {line.split(":")[2]: line.split(":")[0]
             for line in (root / "etc/passwd").read_text().splitlines()}
    return st.st_mode & 0o7777, users[str(st.st_uid)]


@dataclass(frozen=True)
class Applied:
    """The two roots after the apply, and what the installer's path left on the laptop."""

    hub: Path
    station: Path
    out: str  # what ansible-playbook said
    secrets: Path  # `yizhan provision --secrets`
    inventory: Path
    vault_password_file: Path


def _playbook(inventory: Path, vault_password_file: Path) -> subprocess.CompletedProcess:
    """site.yml as the installer runs it, without Grafana's repository (out of reach)."""
    return _run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml",
                 "--vault-password-file", str(vault_password_file),
                 "--skip-tags", "monitoring"], timeout=600)


def _provisioned_inventory(work: Path, hub: Path, station: Path,
                           wheels: Path) -> tuple[Path, Path, Path]:
    """The inventory as docs/deploy.md makes it: the example's group_vars, then
    `yizhan provision` (the real command) for the secrets, the vault and the station's
    entry, then the installer's own hosts file and the station's hardware keys.

    Returns (inventory, secrets, vault password file), all outside the checkout.
    """
    inventory, secrets_dir = work / "inventory", work / "secrets"
    # As `cp -r inventory/example` leaves them, vault.yml.example included (Ansible
    # does not load it: no placeholder may stand in for a secret the vault lacks).
    shutil.copytree(ANSIBLE / "inventory" / "example" / "group_vars", inventory / "group_vars")
    password_file = work / "vault.pass"
    password_file.touch(mode=0o600)
    password_file.write_text("a-vault-password-of-the-tests\n")
    vault = inventory / "group_vars" / "all" / "vault.yml"
    proc = subprocess.run(
        [str(BIN / "yizhan"), "provision", "--secrets", str(secrets_dir),
         "--broker-host", HUB_HOST, "--inventory", str(inventory), "--vault", str(vault),
         "--vault-password-file", str(password_file), "--name", STATION["station_name"],
         "--group", STATION["station_group"], SID],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The hub's API tokens are the installer's own (provision rewrites vault.yml
    # whole): a vault file of their own beside it, as vault.yml.example says.
    tokens = yaml.safe_dump({"vault_hub_api_tokens": [
        {"name": "grafana", "token": GRAFANA_TOKEN, "scopes": ["read"]}]})
    proc = subprocess.run(
        [str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password_file),
         "--output", str(vault.parent / "vault_tokens.yml"), "-"],
        input=tokens, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # What the installer adds by hand: the station's address and hardware beside what
    # provision wrote (kept when provision runs again), and hosts.yml with the hub.
    host_vars = inventory / "host_vars" / f"{SID}.yml"
    entry = yaml.safe_load(host_vars.read_text(encoding="utf-8"))
    entry.update(ansible_host=str(station), station_lockers=CABINET,
                 station_thermometer=STATION["station_thermometer"])
    host_vars.write_text(yaml.safe_dump(entry, allow_unicode=True), encoding="utf-8")
    hosts = {"all": {
        "vars": {
            # A chroot is reached by its path, has every package already (the apply
            # never goes out) and runs no systemd.
            "ansible_connection": "community.general.chroot",
            "ansible_python_interpreter": "/usr/bin/python3",
            "yizhan_offline": True,
            "common_apt_update_cache": False,
            "mosquitto_install": False,
            "yizhan_package_wheelhouse": str(wheels),
        },
        "children": {"hub": {"hosts": {HUB_HOST: {"ansible_host": str(hub)}}}},
    }}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts), encoding="utf-8")
    return inventory, secrets_dir, password_file


@pytest.fixture(scope="module")
def applied(debian_root, tmp_path_factory) -> Applied:
    """site.yml applied with the chroot connection to a hub root and a station root,
    from an inventory and a vault made the installer's way (docs/deploy.md)."""
    work = tmp_path_factory.mktemp("debian")
    wheels = work / "wheels"
    # The checkout as wheels, with the extras the two roles name: installed with no index.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels),
                           f"{ROOT}[postgres,pi]"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hub = _copy_root(debian_root, work / "hub")
    station = _copy_root(debian_root, work / "station")
    # A Pi's kernel command line as Raspberry Pi OS Bookworm writes it: one line.
    (station / "boot/firmware").mkdir(parents=True, exist_ok=True)
    (station / "boot/firmware/cmdline.txt").write_text(PI_CMDLINE + "\n")
    inventory, secrets_dir, password_file = _provisioned_inventory(work, hub, station, wheels)
    out = _ok(_playbook(inventory, password_file))
    yield Applied(hub, station, out, secrets_dir, inventory, password_file)
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(1500)
def test_hub_root_has_user_venv_config_secrets_and_enabled_units(applied):
    hub, out = applied.hub, applied.out
    assert "failed=0" in out
    passwd = (hub / "etc/passwd").read_text()
    assert any(line.startswith("yizhan:") and line.endswith(":/usr/sbin/nologin")
               for line in passwd.splitlines())
    assert "yizhan 0.1.0" in _in(hub, "/opt/yizhan/venv/bin/yizhan", "--version").stdout
    # The broker's configuration (role mosquitto) is on the same server.
    assert (hub / "etc/mosquitto/conf.d").is_dir()
    # The hub's own loader accepts what the role wrote (it also refuses secrets others
    # can read), with the inventory's station named.
    loaded = _in(hub, "/opt/yizhan/venv/bin/python", "-c",
                 "from hub.config import load_hub_config as l;"
                 "c = l('/etc/yizhan/hub.yaml'); print(c.database, c.stations)").stdout
    assert "sqlite:////var/lib/yizhan/hub.db" in loaded
    assert "sid='yh-test-01'" in loaded and "name='测试驿站'" in loaded
    for secret in ("/etc/yizhan/mqtt.password", "/etc/yizhan/fleet.key"):
        assert _mode_owner(hub, secret) == (0o600, "yizhan"), secret
    assert _mode_owner(hub, "/etc/yizhan/tokens/grafana") == (0o600, "yizhan")
    # The secrets are the ones `yizhan provision` made, through the vault.
    provisioned = applied.secrets
    assert (hub / "etc/yizhan/fleet.key").read_text() == _fleet_key(provisioned)
    assert ((hub / "etc/yizhan/mqtt.password").read_text().strip()
            == (provisioned / "hub.password").read_text().strip())
    assert (hub / "etc/yizhan/tokens/grafana").read_text() == GRAFANA_TOKEN
    # ...and the broker's: the fleet CA, its CRL, the broker's identity, the password
    # file with the hub's account (tests/test_deploy_mosquitto.py runs a broker on them).
    certs = hub / "etc/mosquitto/certs"
    for installed, made in (("ca.crt", "ca/ca.crt"), ("crl.pem", "ca/crl.pem"),
                            ("broker.crt", "broker/broker.crt"),
                            ("broker.key", "broker/broker.key")):
        assert (certs / installed).read_text() == (provisioned / made).read_text(), installed
    passwd_file = (hub / "etc/mosquitto/yizhan.passwd").read_text()
    assert passwd_file == (provisioned / "mosquitto.passwd").read_text()
    assert passwd_file.startswith("_hub:$7$")
    _openssl("crl", "-in", str(certs / "crl.pem"), "-CAfile", str(certs / "ca.crt"),
             "-noout")
    assert _mode_owner(hub, "/var/lib/yizhan") == (0o700, "yizhan")
    assert _is_enabled(hub, "yizhan-hub.service", "yizhan-hub-backup.timer",
                       "chrony.service", "nftables.service") == ["enabled"] * 4
    assert "Storage=persistent" in (hub / "etc/systemd/journald.conf.d/yizhan.conf").read_text()
    auto = (hub / "etc/apt/apt.conf.d/20auto-upgrades").read_text()
    assert 'Unattended-Upgrade "1"' in auto


@pytest.mark.timeout(1500)
def test_hub_backup_restores_and_a_bad_backup_fails_the_restore_test(applied):
    hub = applied.hub
    # The database as the hub makes it at start: its own migrations, run by the
    # installed package as the hub's user inside the target.
    _in(hub, "--userspec=yizhan:yizhan", "/opt/yizhan/venv/bin/python", "-c",
        "import sqlalchemy as sa; from hub.storage.store import upgrade_schema;"
        "upgrade_schema(sa.create_engine('sqlite:////var/lib/yizhan/hub.db'))")
    db = hub / "var/lib/yizhan/hub.db"
    with sqlite3.connect(db) as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    assert revision
    made = _in(hub, "/usr/local/sbin/yizhan-hub-backup").stdout.strip()
    assert made.startswith("/var/backups/yizhan/hub-") and made.endswith(".db")
    assert _mode_owner(hub, made)[0] == 0o600
    assert "restores" in _in(hub, "/usr/local/sbin/yizhan-hub-restore-test").stdout
    with sqlite3.connect(hub / made.lstrip("/")) as copy:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == revision
    copy.close()
    # A backup cut short is caught.
    bad = hub / "var/backups/yizhan/hub-broken.db"
    bad.write_bytes((hub / made.lstrip("/")).read_bytes()[:1024] + b"\0" * 100)
    proc = _in(hub, "/usr/local/sbin/yizhan-hub-restore-test", "/var/backups/yizhan/hub-broken.db",
               check=False)
    assert proc.returncode != 0, proc.stdout


@pytest.mark.timeout(1500)
def test_station_root_has_hardware_access_config_and_enabled_units(applied):
    station = applied.station
    groups = _in(station, "id", "-nG", "yizhan").stdout.split()
    assert {"gpio", "dialout"} <= set(groups)
    assert "yizhan-screen" in (station / "etc/passwd").read_text()
    loaded = _in(station, "/opt/yizhan/venv/bin/python", "-c",
                 "from firmware.config import load_station_config as l;"
                 "c = l('/etc/yizhan/station.yaml'); print(c.sid, c.name)").stdout
    assert loaded.strip() == "yh-test-01 测试驿站"
    # The cabinet of station_lockers, as the installed package's loader reads it: the
    # boards on bus 1's udev name, the relay modules on the charging adapter's.
    lockers = _in(station, "/opt/yizhan/venv/bin/python", "-c",
                  "from firmware.config import load_station_config as l;"
                  "k = l('/etc/yizhan/station.yaml').lockers; c = k.charging;"
                  "print(k.driver, k.n_slots, [(b.port, b.baudrate, [(x.address, x.locks,"
                  " x.locked_when) for x in b.boards]) for b in k.buses]);"
                  "print(c.driver, c.port, c.units, c.charge_time, c.occupancy)").stdout
    assert lockers.splitlines() == [
        "lock8a 32 [('/dev/yizhan-bus-1', 9600, [(1, 24, 'closed'), (2, 8, 'open')])]",
        "modbus-io /dev/yizhan-charging ((1, 16), (2, 16)) 10800.0 inputs",
    ], lockers
    # Its broker identity is its certificate (CN = sid), its key readable by it alone.
    for secret in ("/etc/yizhan/mqtt.key", "/etc/yizhan/fleet.key"):
        assert _mode_owner(station, secret) == (0o600, "yizhan"), secret
    # The identity provision made for it: signed by the fleet CA installed beside it,
    # CN = sid, and the installed key is the certificate's.
    etc = station / "etc/yizhan"
    _openssl("verify", "-CAfile", str(etc / "ca.crt"), str(etc / "mqtt.crt"))
    subject = _openssl("x509", "-in", str(etc / "mqtt.crt"), "-noout", "-subject",
                       "-nameopt", "multiline")
    assert re.search(r"^\s*commonName\s*=\s*yh-test-01$", subject, re.M), subject
    assert (_openssl("x509", "-in", str(etc / "mqtt.crt"), "-noout", "-pubkey")
            == _openssl("pkey", "-in", str(etc / "mqtt.key"), "-pubout"))
    assert (etc / "mqtt.crt").read_text() == (
        applied.secrets / "stations" / SID / f"{SID}.crt").read_text()
    assert (etc / "ca.crt").read_text() == (applied.secrets / "ca/ca.crt").read_text()
    assert (etc / "fleet.key").read_text() == _fleet_key(applied.secrets)
    assert not (station / "etc/yizhan/mqtt.password").exists()
    assert _is_enabled(station, "yizhan-agent.service", "yizhan-kiosk.service",
                       "yizhan-kiosk-browser.service", "chrony-wait.service",
                       "chrony.service", "nftables.service") == ["enabled"] * 6
    assert os.readlink(station / "etc/systemd/system/default.target").endswith(
        "graphical.target")
    # One rule for each adapter, naming it for the agent's group.
    rules = [line for line in (station / "etc/udev/rules.d/99-yizhan-locker.rules")
             .read_text().splitlines() if line.startswith("SUBSYSTEM")]
    assert rules == [
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", '
        'ATTRS{serial}=="A10K1ABC", SYMLINK+="yizhan-bus-1", GROUP="dialout", MODE="0660"',
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="7523", '
        'ENV{ID_PATH}=="platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0", '
        'SYMLINK+="yizhan-charging", GROUP="dialout", MODE="0660"',
    ], rules
    assert "dtoverlay=w1-gpio,gpiopin=4" in (station / "boot/firmware/config.txt").read_text()
    assert "Storage=volatile" in (
        station / "etc/systemd/journald.conf.d/yizhan.conf").read_text()
    assert "After=time-sync.target" in (
        station / "etc/systemd/system/yizhan-agent.service.d/time-sync.conf").read_text()
    assert (station / "usr/bin/chromium").exists() and (station / "usr/bin/cage").exists()
    # The kiosk's screen: the console never blanks (the command line stays one line,
    # everything it said kept), and cage sees no pointer in the HDMI CEC inputs.
    cmdline = (station / "boot/firmware/cmdline.txt").read_text()
    assert cmdline == PI_CMDLINE + " consoleblank=0\n"
    screen = (station / "etc/udev/rules.d/98-yizhan-screen.rules").read_text()
    assert ('SUBSYSTEM=="input", ATTRS{name}=="vc4-hdmi*", ENV{LIBINPUT_IGNORE_DEVICE}="1"'
            in screen)


def _openssl(*args: str) -> str:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"openssl {args!r}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _fleet_key(secrets_dir: Path) -> str:
    """The fleet key as the roles install it: the vault's value, without the newline."""
    return (secrets_dir / "fleet.key").read_text().strip()


def _changed(out: str) -> list[str]:
    """The task headers under which ansible-playbook said `changed:`, with the host."""
    said, header = [], ""
    for line in out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            header = line.rstrip(" *")
        elif line.startswith("changed: "):
            said.append(f"{header} {line}")
    return said


def _task(out: str, header: str) -> str:
    """What ansible-playbook said under one task or handler header, up to the next."""
    start = out.index(header)
    end = out.find("\n\n", start + len(header) + 1)
    return out[start:end if end != -1 else len(out)]


@pytest.mark.timeout(1500)
def test_a_second_apply_changes_only_the_new_package_and_restarts_the_services(applied):
    """The whole site.yml again on the applied roots, after `pip uninstall yizhan` in
    each venv: the package is the one change on each root (every other task is
    idempotent: the screen's set once), and the hub's and the station's restart
    handlers are notified (and skipped, yizhan_offline: no systemd in a chroot)."""
    hub, station = applied.hub, applied.station
    hosts = {hub: HUB_HOST, station: SID}  # the inventory's names for the roots
    # Last in this file: what it changes it puts back as it was.
    for root in (hub, station):
        _in(root, "/opt/yizhan/venv/bin/python", "-m", "pip", "uninstall", "-y", "-q", "yizhan")
    out = _ok(_playbook(applied.inventory, applied.vault_password_file))
    for root in (hub, station):
        assert "yizhan 0.1.0" in _in(root, "/opt/yizhan/venv/bin/yizhan", "--version").stdout
    install = out.split("TASK [yizhan_package : Install the package into its virtual environment]")
    assert len(install) == 3, out[-4000:]  # the hub's play and the stations'
    assert all(f"changed: [{hosts[root]}]" in part.split("TASK [")[0]
               for part, root in zip(install[1:], (hub, station), strict=True)), out[-4000:]
    for handler, units in (("hub : Restart the hub", ["yizhan-hub.service"]),
                           ("station : Restart the station",
                            ["yizhan-agent.service", "yizhan-kiosk.service",
                             "yizhan-kiosk-browser.service"])):
        said = _task(out, f"RUNNING HANDLER [{handler}]")
        assert "changed:" not in said, said
        if len(units) == 1:
            assert "skipping:" in said, said
        else:
            assert all(f"(item={unit})" in said and "skipping:" in said for unit in units), said
    # Idempotent: the second run leaves the command line and the rule as they were.
    assert f"ok: [{SID}]" in _task(out, "TASK [station : Keep the console from blanking]")
    assert (station / "boot/firmware/cmdline.txt").read_text() == PI_CMDLINE + " consoleblank=0\n"
    assert f"ok: [{SID}]" in _task(
        out, "TASK [station : Keep the HDMI CEC inputs away from the kiosk browser]")
    # Nothing but the package changed on either root: every other task is idempotent.
    recap = out.split("PLAY RECAP")[1]
    for root in (hub, station):
        line = next(row for row in recap.splitlines() if row.startswith(f"{hosts[root]} "))
        assert re.search(r"\bchanged=1\b", line) and re.search(r"\bfailed=0\b", line), (
            line, _changed(out))
