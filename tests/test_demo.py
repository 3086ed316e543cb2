"""`yizhan demo` (what `make demo` runs): three stations online within 30 s, and
Ctrl-C stops every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.harness.procs import free_port, http_json, wait_until
from yizhan import prometheus
from yizhan.demo import start_prometheus


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def _page(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return ""


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _check_prometheus(log_text: str, hub_port: int) -> None:
    """With Prometheus installed the demo runs one with the shipped rules, scraping
    its hub, and prints its URL; without, it says so in one line."""
    if prometheus.find_binary() is None:
        assert "prometheus: not installed" in log_text
        return
    [url] = [line.split()[1] for line in log_text.splitlines()
             if line.split()[:1] == ["prometheus"]]
    groups = {g["name"] for g in prometheus.api(url, "rules")["groups"]}
    assert {"yizhan-fleet", "yizhan-slo", "yizhan-hub", "yizhan-slo-alerts"} <= groups

    def hub_scraped() -> list:
        return [t for t in prometheus.api(url, "targets")["activeTargets"]
                if t["scrapeUrl"] == f"http://127.0.0.1:{hub_port}/metrics"
                and t["health"] == "up"]

    # The shipped 15 s interval: the first scrape comes within one.
    wait_until(hub_scraped, 20, "the demo's hub scraped by its Prometheus", interval=0.5)


def _check_console(log_text: str, hub_port: int, workdir) -> None:
    """The banner's console URL and one sign-in per role, each signing in for real
    (cookie jar, CSRF field) and seeing the pages of its role; the passwords'
    file is the owner's alone."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    lines = [line.split() for line in log_text.splitlines()]
    console = [w[1] for w in lines if w[:1] == ["console"]]
    assert console == [f"http://127.0.0.1:{hub_port}/"]
    signins = {w[4].strip("()"): (w[1], w[3]) for w in lines if w[:1] == ["sign-in"]}
    assert set(signins) == {"admin", "ops", "maintenance"}
    assert (workdir / "console-users").stat().st_mode & 0o077 == 0
    for role, (name, password) in signins.items():
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        page = opener.open(console[0], timeout=10).read().decode()  # / → the sign-in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"name": name, "password": password, "csrf": csrf})
        fleet = opener.open(f"{console[0]}console/signin", form.encode(), timeout=10)
        page = fleet.read().decode()
        assert fleet.url.endswith("/console/"), (role, fleet.url)
        assert "楚门镇先锋驿站" in page  # the fleet, with the demo's stations
        assert ('href="/console/users"' in page) == (role == "admin"), role


def test_demo_without_prometheus_says_so_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prometheus, "find_binary", lambda: None)
    assert start_prometheus(tmp_path, free_port(), tmp_path) == (None, None)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "prometheus: not installed" in out
    assert not (tmp_path / "prometheus").exists()


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_brings_three_stations_online_and_stops_cleanly(tmp_path, broker):
    port = free_port()
    workdir = tmp_path / "demo"
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115
    demo = subprocess.Popen(
        [sys.executable, "-m", "yizhan", "demo", "--dir", str(workdir),
         "--http-port", str(port), "--broker", broker,
         # Free ports only: a test in another worker may hold the kiosk's 8700/8701.
         "--station-ports", "0"],
        stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        token_file = workdir / "api-token"
        wait_until(token_file.exists, 10, "the demo's API token")
        token = token_file.read_text().strip()

        def all_online():
            status, body = http_json(f"http://127.0.0.1:{port}/api/v1/stations", token)
            return status == 200 and len(body["stations"]) == 3 and all(
                s["online"] for s in body["stations"])

        wait_until(all_online, 30, "three stations online",
                   interval=0.25, on_fail=lambda: (tmp_path / "demo.log").read_text())
        assert time.monotonic() - started < 30
        children = _children_of(demo.pid)
        assert len(children) >= 8  # broker, hub, three agents, three kiosks
        wait_until(lambda: "Press Ctrl-C" in (tmp_path / "demo.log").read_text(), 10,
                   "the demo's banner")
        kiosks = [line.split()[1] for line in (tmp_path / "demo.log").read_text().splitlines()
                  if line.strip().startswith("kiosk ")]
        assert len(kiosks) == 3
        for url in kiosks:  # every station's touchscreen answers, in Chinese
            wait_until(lambda url=url: _page(url), 15, f"the kiosk at {url}")
            assert "借充电宝" in _page(url)
        _check_prometheus((tmp_path / "demo.log").read_text(), port)
        _check_console((tmp_path / "demo.log").read_text(), port, workdir)

        demo.send_signal(signal.SIGINT)
        assert demo.wait(20) == 0
        for pid in children:
            wait_until(lambda pid=pid: _gone(pid), 5, f"child {pid} gone")
        assert "stopped." in (tmp_path / "demo.log").read_text()
    finally:
        if demo.poll() is None:
            # A failed test must not leave the demo's processes behind: they run in
            # sessions of their own, so killing the demo alone would orphan them.
            for pid in _children_of(demo.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            demo.kill()
            demo.wait()
        log.close()


@pytest.mark.parametrize("ports", ["80", "70000", "-1", "65530"])
def test_demo_refuses_station_ports_out_of_range(tmp_path, capsys, ports):
    from yizhan.cli import main

    assert main(["demo", "--dir", str(tmp_path / "demo"), "--station-ports", ports]) == 2
    assert "--station-ports must be 0 or 1024..65504 for 3 stations" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # refused before anything was written
