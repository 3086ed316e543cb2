"""Real program processes for end-to-end tests: ``python -m yizhan ...``.

Each process logs to a file in the test's tmp dir; a failure message includes
the tail of that log. Everything still running at teardown is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.name = name
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "yizhan", *argv], stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(5)

    def wait(self, timeout: float = 10) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.poll() is not None:
                self._out.close()


class Procs:
    """Starts and reaps the programs of one test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []

    def start(self, name: str, *argv: str, env: dict | None = None) -> Proc:
        proc = Proc(name, list(argv), self.tmp / f"{name}.log", env)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.alive():
                proc.signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def http_json(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, dict]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05, on_fail=None):
    """Poll ``predicate`` until it returns something truthy; bounded in wall time."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    extra = on_fail() if on_fail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{extra}")


def advance_until(clock, predicate, what: str, *, step: float = 1.0, limit: float = 3600.0,
                  timeout: float = 20.0, settle: float = 0.005):
    """Move a ManualClock on by ``step`` seconds at a time until ``predicate()``
    holds; returns the clock seconds it took. Fails after ``limit`` clock seconds
    or ``timeout`` real ones. ``settle`` real seconds after each step let the
    threads that wait on the clock (a backoff, a connect) run.

    How a test lives through a ten-minute outage at the settings that ship:
    the code waits on the clock, the test moves it."""
    started_mono = clock.monotonic()
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return clock.monotonic() - started_mono
        if clock.monotonic() - started_mono >= limit or time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not after {clock.monotonic() - started_mono:.1f} clock seconds "
                f"({limit} allowed)")
        clock.advance(step)
        time.sleep(settle)
