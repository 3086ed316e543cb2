"""The units of systemd/ as systemd itself reads them: ``systemd-analyze verify``
in a root of their own (the executables they name exist there, as on a station
or a hub), ``systemd-analyze security --offline`` against the exposure recorded
in docs/deploy.md, and what the agent needs from its sandbox (docs/deploy.md,
"Service hardening")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SYSTEM_UNITS = ("/usr/lib/systemd/system", "/lib/systemd/system")


def analyze() -> str:
    """systemd-analyze's path; skipped without it, failed under CI."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("systemd-analyze is required under CI (Debian package systemd)",
                    pytrace=False)
    pytest.skip("systemd-analyze is not installed (Debian package systemd)")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given, in order (keys repeat in units;
    a backslash at the end of a line continues it)."""
    settings: dict[str, list[str]] = {}
    section = ""
    logical = ""
    for raw in path.read_text().splitlines():
        line = logical + raw.strip()
        if line.endswith("\\"):
            logical = line[:-1] + " "
            continue
        logical = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def executables(path: Path) -> set[str]:
    """The programs the unit starts: the first word of each Exec*= line, without
    systemd's prefixes (``-``, ``@``, ``:``, ``+``, ``!``)."""
    found = set()
    for key, values in unit_settings(path).items():
        if key.startswith("Service.Exec"):
            for value in values:
                found.add(value.split()[0].lstrip("-@:+!"))
    return found


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root with systemd's own units (the targets ours are ordered against),
    ours in /etc/systemd/system, and a stub at every path our units execute."""
    analyze()
    root = tmp_path_factory.mktemp("root")
    system = next((Path(d) for d in SYSTEM_UNITS if Path(d, "sysinit.target").exists()),
                  None)
    if system is None:
        pytest.fail("systemd's units (sysinit.target) are not installed", pytrace=False)
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for program in executables(unit):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


def verify(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([analyze(), "verify", f"--root={root}",
                           f"/etc/systemd/system/{name}"],
                          capture_output=True, text=True, timeout=60, cwd=root)


def test_the_four_units_are_there():
    assert {u.name for u in UNITS} >= {"yizhan-agent.service", "yizhan-hub.service",
                                       "yizhan-kiosk.service",
                                       "yizhan-kiosk-browser.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_verify_says_nothing(unit_root, unit):
    done = verify(unit_root, unit.name)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_verify_would_tell(unit_root):
    """The check above can fail: a misspelt key and a program that is not there
    both reach stderr."""
    agent = (ROOT / "systemd/yizhan-agent.service").read_text()
    broken = unit_root / "etc/systemd/system/broken.service"
    broken.write_text(agent.replace("NoNewPrivileges=", "NoNewPrivilege=")
                      .replace("/opt/yizhan/venv/bin/yizhan", "/opt/yizhan/venv/bin/nothere"))
    try:
        done = verify(unit_root, "broken.service")
    finally:
        broken.unlink()
    assert "Unknown key 'NoNewPrivilege'" in done.stderr
    assert "/opt/yizhan/venv/bin/nothere is not executable" in done.stderr


def recorded_exposure() -> dict[str, float]:
    """The table of docs/deploy.md: | `unit` | exposure | ..."""
    rows = re.findall(r"^\| `(yizhan-[a-z-]+\.service)` \| (\d+\.\d) \|",
                      DEPLOY_DOC.read_text(), re.MULTILINE)
    return {name: float(score) for name, score in rows}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_is_no_worse_than_recorded(unit):
    """The score docs/deploy.md records is the bar: a change that loosens a unit
    fails here; one that tightens it may lower the figure in the docs."""
    recorded = recorded_exposure()
    assert unit.name in recorded, f"docs/deploy.md records no exposure for {unit.name}"
    done = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found, done.stdout[-500:]
    assert float(found.group(1)) <= recorded[unit.name], done.stdout


def test_agent_and_hub_are_watched():
    for name in ("yizhan-agent.service", "yizhan-hub.service"):
        s = unit_settings(ROOT / "systemd" / name)
        assert s["Service.Type"] == ["notify"] and s["Service.NotifyAccess"] == ["main"]
        assert int(s["Service.WatchdogSec"][-1]) > 0
    for unit in UNITS:
        s = unit_settings(unit)
        assert s["Service.Restart"] == ["always"], unit.name
        assert "Unit.StartLimitIntervalSec" in s and "Unit.StartLimitBurst" in s, unit.name


def syscall_group(name: str) -> set[str]:
    out = subprocess.run([analyze(), "syscall-filter", "--no-pager", name],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        names |= syscall_group(word) if word.startswith("@") else {word}
    return names


def test_the_agent_keeps_its_hardware_and_its_clock_flag():
    """The agent's sandbox still lets it at GPIO, the locker board's serial port
    and SPI (by the kernel drivers' names, which DeviceAllow= takes), with the
    groups that own those devices, and lets clocksync call adjtimex(2)."""
    s = unit_settings(ROOT / "systemd/yizhan-agent.service")
    assert s["Service.DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in s["Service.DeviceAllow"] if "rw" in v.split()[1:]}
    # /dev/gpiochipN, USB serial (FTDI, CH340), CDC-ACM, the Pi's PL011 and mini
    # UARTs, /dev/spidevB.C
    assert allowed >= {"char-gpiochip", "char-ttyUSB", "char-ttyACM", "char-ttyAMA",
                       "char-ttyS", "char-spi"}
    assert set(" ".join(s["Service.SupplementaryGroups"]).split()) >= {"gpio", "dialout"}
    assert s.get("Service.PrivateDevices", ["no"])[-1] == "no"
    assert s.get("Service.ProtectClock", ["no"])[-1] == "no"
    permitted: set[str] = set()
    for value in s["Service.SystemCallFilter"]:
        assert not value.startswith("~")
        for word in value.split():
            permitted |= syscall_group(word) if word.startswith("@") else {word}
    assert {"adjtimex", "ioctl", "flock", "openat", "poll"} <= permitted
    assert "LG_WD=/run/yizhan-agent" in " ".join(s["Service.Environment"])
    assert s["Service.RuntimeDirectory"] == ["yizhan-agent"]
