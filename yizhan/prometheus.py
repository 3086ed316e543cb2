"""A real Prometheus next to one hub, with the rules this repository ships.

``yizhan demo`` and the tests' live fixture (tests/harness/prometheus.py) both
start it the same way: the shipped ``deploy/prometheus/prometheus.yml`` with
only the scrape target changed (and, for a short test, the scrape and
evaluation interval), the shipped rule files used in place, unchanged.

>>> cfg = local_config("127.0.0.1:8080", interval="1s")      # doctest: +SKIP
>>> proc = start(write_config(cfg, run / "prometheus.yml"), run / "tsdb", 9090, log)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

#: deploy/prometheus of this checkout (absent from an installed wheel).
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
BINARY_PATHS = ("/usr/bin/prometheus", "/usr/local/bin/prometheus")


def find_binary() -> str | None:
    """``prometheus`` on PATH, else Debian's; None when neither is there."""
    found = shutil.which("prometheus")
    if found:
        return found
    for path in BINARY_PATHS:
        if Path(path).is_file():
            return path
    return None


def local_config(target: str, *, interval: str | None = None, deploy: Path = DEPLOY) -> dict:
    """The shipped configuration scraping ``target`` (host:port of a hub).

    Rule files are made absolute so the configuration can be written anywhere
    while the rules stay the shipped files. ``interval`` replaces the scrape and
    evaluation interval (a test needs data within seconds, not minutes)."""
    config = yaml.safe_load((deploy / "prometheus.yml").read_text(encoding="utf-8"))
    config["rule_files"] = [str((deploy / f).resolve()) for f in config.get("rule_files", [])]
    jobs = config["scrape_configs"]
    if len(jobs) != 1:
        raise ValueError("deploy/prometheus/prometheus.yml should scrape exactly one job")
    jobs[0]["static_configs"] = [{"targets": [target]}]
    if interval is not None:
        config.setdefault("global", {})
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
        jobs[0]["scrape_interval"] = interval
        # A timeout longer than the interval is refused; a small demo hub answers
        # well within any interval.
        jobs[0].pop("scrape_timeout", None)
    return config


def write_config(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start(config_path: Path, data_dir: Path, port: int, log_path: Path,
          binary: str | None = None) -> subprocess.Popen:
    """Start Prometheus on 127.0.0.1:``port``; its output goes to ``log_path``.
    The caller stops it with :func:`stop`."""
    binary = binary or find_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed below
    try:
        return subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop a Prometheus from :func:`start`: SIGTERM (it flushes its head block),
    SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ready(url: str, timeout: float = 20.0, alive=lambda: True) -> bool:
    """Wait until Prometheus at ``url`` answers ``/-/ready``; False after ``timeout``
    seconds or as soon as ``alive()`` says the process has gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def api(url: str, path: str, params: dict | None = None, timeout: float = 5.0) -> object:
    """GET ``url/api/v1/path`` and return its ``data``; raises on an error status."""
    query = "?" + urllib.parse.urlencode(params) if params else ""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        # 400/422/503 carry Prometheus's JSON error; anything else is said as it came.
        text = err.read()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"error": f"HTTP {err.code}: {text[:200]!r}"}
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", body) if isinstance(body, dict) else body
        raise RuntimeError(f"prometheus {path} {params}: {error}")
    return body["data"]
