"""``yizhan demo``: the whole system on one machine, stopped cleanly by Ctrl-C.

It writes its configurations into ``--dir`` (``run/demo``), starts a private
broker, the hub and the simulated stations as separate processes — exactly as
they run in a fleet — waits until every station shows online in the hub's API,
prints the URLs, and on Ctrl-C stops the stations, the hub and the broker in
that order.

When Prometheus is installed (Debian's package, or ``prometheus`` on PATH) it
also runs one with the shipped deploy/prometheus rules scraping the demo hub,
its data under ``--dir``/prometheus, so the recording rules and SLO alerts can be
seen without Grafana; without it the demo says so in one line and goes on.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from yizhan import prometheus
from yizhan.broker import free_port, port_is_free, start_broker

DEMO_STATIONS = [
    ("yh-chumen-01", "楚门镇先锋驿站", "chumen"),
    ("yh-chumen-02", "楚门镇东街驿站", "chumen"),
    ("yh-kanmen-01", "坎门街道海港驿站", "kanmen"),
    ("yh-kanmen-02", "坎门街道渔港驿站", "kanmen"),
    ("yh-qinggang-01", "清港镇文化礼堂驿站", "qinggang"),
]
#: One console user per role (docs/console.md); maint acts on every demo group.
DEMO_USERS = (("admin", "admin"), ("ops", "ops"), ("maint", "maintenance"))


def _private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable by its owner only (0600) from the first byte:
    the demo's files hold the API token and the fleet key, and the programs refuse
    a secret file that others can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older demo keeps its mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _write(path: Path, data: dict) -> Path:
    return _private(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


def _token(workdir: Path) -> str:
    """One API token per demo directory, kept so bookmarks keep working."""
    path = workdir / "api-token"
    if path.exists():
        path.chmod(0o600)
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    _private(path, token + "\n")
    return token


def write_configs(workdir: Path, n: int, mqtt_port: int, http_port: int,
                  station_ports: int = 8700) -> tuple[Path, list]:
    """The hub's and ``n`` stations' configuration files. Station ``i`` gets its kiosk
    on ``station_ports + 10 i`` and its local API on the next port, or other free
    ones when those are taken; ``station_ports`` 0: free ports only (nothing fixed
    another program on this machine may be about to take)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = _token(workdir)
    key = workdir / "fleet.key"
    if key.exists():
        key.chmod(0o600)  # made by an older demo, before its files were private
    else:
        _private(key, secrets.token_hex(32) + "\n")
    stations = [DEMO_STATIONS[i % len(DEMO_STATIONS)] for i in range(n)]
    if n > len(DEMO_STATIONS):
        stations = [(f"yh-sim-{i + 1:02d}", f"模拟驿站 {i + 1}", "sim") for i in range(n)]
    mqtt = {"host": "127.0.0.1", "port": mqtt_port, "keepalive": 10}
    hub = _write(workdir / "hub.yaml", {
        "mqtt": mqtt,
        "database": f"sqlite:///{(workdir / 'hub.db').resolve()}",
        "http": {"host": "127.0.0.1", "port": http_port},
        # The demo's operator may do what an operator does (not admin: no tokens to manage).
        "api_tokens": [{"name": "demo", "token": token,
                        "scopes": ["read", "ack", "silence", "command"]}],
        "fleet_key_file": str(key.resolve()),
        "stations": [{"sid": s, "name": name, "group": g} for s, name, g in stations],
        "console": {"secret_key_file": str((workdir / "console.key").resolve())},
    })
    configs = []
    for i, (sid, name, _group) in enumerate(stations):
        # Each station on this one machine needs its own kiosk and local API ports.
        if station_ports:
            kiosk_port = _port_near(station_ports + 10 * i)
            api_port = _port_near(station_ports + 1 + 10 * i, avoid={kiosk_port})
        else:
            kiosk_port = free_port()
            api_port = _port_near(free_port(), avoid={kiosk_port})
        cfg = _write(workdir / f"{sid}.yaml", {
            "hardware": "sim",
            "station": {"id": sid, "name": name},
            "mqtt": mqtt,
            "data_dir": str((workdir / sid).resolve()),
            "fleet_key_file": str(key.resolve()),
            "kiosk": {"host": "127.0.0.1", "port": kiosk_port},
            "local_api": {"host": "127.0.0.1", "port": api_port},
            # Busier than life, so the demo shows borrowing within minutes.
            "sim": {"borrows_per_hour": 30, "riders_per_hour": 60, "mean_loan": "20m"},
        })
        configs.append((sid, cfg))
    return hub, configs


def console_users(workdir: Path, hub_cfg: Path) -> list[tuple[str, str, str]]:
    """(name, role, password) of the demo's console users, made in the hub's
    database before the hub starts. The passwords are random, kept 0600 in
    ``console-users`` so a second run signs in the same way."""
    from hub.config import load_hub_config
    from hub.console.auth import UserError, Users
    from hub.storage.store import Store
    from yizhan.clock import SYSTEM_CLOCK

    path = workdir / "console-users"
    kept = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, _, password = line.partition(" ")
            kept[name] = password.split(" ", 1)[-1]
    config = load_hub_config(hub_cfg)
    groups = sorted({s.group for s in config.stations if s.group})
    store = Store(config.database)
    out = []
    try:
        users = Users(store, SYSTEM_CLOCK)
        for name, role in DEMO_USERS:
            password = kept.get(name) or secrets.token_urlsafe(12)
            try:
                users.add(name, password, role, groups if role == "maintenance" else ())
            except UserError:  # made by an earlier run: its password is the file's
                users.set_password(name, password)
                users.change(name, role=role,
                             groups=groups if role == "maintenance" else (), disabled=False)
            out.append((name, role, password))
    finally:
        store.close()
    _private(path, "".join(f"{n} {r} {p}\n" for n, r, p in out))
    return out


def _port_near(port: int, avoid: set[int] | frozenset = frozenset()) -> int:
    """``port`` when it is free (stable URLs across runs), else any free one."""
    if port not in avoid and port_is_free(port):
        return port
    return free_port()


def _get(url: str, token: str | None = None, timeout: float = 2.0) -> dict | None:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def run_demo(args) -> int:
    workdir = Path(args.dir)
    if args.station_ports and not 1024 <= args.station_ports <= 65534 - 10 * args.stations:
        print(f"yizhan demo: --station-ports must be 0 or 1024..{65534 - 10 * args.stations} "
              f"for {args.stations} stations", file=sys.stderr)
        return 2
    mqtt_port = args.mqtt_port or free_port()
    http_port = args.http_port
    if not port_is_free(http_port):
        http_port = free_port()
        print(f"port {args.http_port} is taken; the hub uses {http_port}", flush=True)
    hub_cfg, station_cfgs = write_configs(workdir, args.stations, mqtt_port, http_port,
                                          args.station_ports)
    token = (workdir / "api-token").read_text().strip()
    signins = console_users(workdir, hub_cfg)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)

    children: list[tuple[str, subprocess.Popen]] = []
    stopping = []

    def spawn(name: str, argv: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen([sys.executable, "-m", "yizhan", *argv], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        children.append((name, proc))

    def on_signal(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker = None
    prom: subprocess.Popen | None = None
    try:
        broker, broker_name = start_broker(args.broker, mqtt_port, workdir)
        print(f"broker: {broker_name} on 127.0.0.1:{mqtt_port}", flush=True)
        spawn("hub", ["hub", "--config", str(hub_cfg)])
        prom, prom_url = start_prometheus(workdir, http_port, logs)
        kiosks = []
        for sid, cfg in station_cfgs:
            spawn(sid, ["agent", "--config", str(cfg)])
            # Each station's touchscreen: the kiosk reads the same station file.
            spawn(f"{sid}-kiosk", ["kiosk", "--config", str(cfg)])
            kiosk = yaml.safe_load(cfg.read_text(encoding="utf-8"))["kiosk"]
            kiosks.append((sid, f"http://{kiosk['host']}:{kiosk['port']}/"))

        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        online = 0
        while not stopping and time.monotonic() < deadline:
            _check_children(children)
            body = _get(f"{base}/api/v1/stations", token)
            if body is not None:
                online = sum(1 for s in body["stations"] if s["online"])
            print(f"\rwaiting for stations: {online}/{len(station_cfgs)} online ", end="",
                  flush=True)
            if online >= len(station_cfgs):
                break
            time.sleep(0.5)
        print(flush=True)
        if stopping:
            return 0
        if online < len(station_cfgs):
            print(f"only {online} of {len(station_cfgs)} stations came online; "
                  f"see the logs in {logs}", file=sys.stderr)
            return 1
        if prom is not None and not prometheus.ready(prom_url, 20,
                                                     alive=lambda: prom.poll() is None):
            # The demo is about the stations: a Prometheus that fails is reported, not fatal.
            print(f"prometheus did not start; see {logs / 'prometheus.log'}", flush=True)
            prom_url = None
        print(_banner(base, token, workdir, kiosks, prom_url, signins), flush=True)
        while not stopping:
            _check_children(children)
            time.sleep(0.5)
        return 0
    except RuntimeError as err:
        print(f"\nyizhan demo: {err}", file=sys.stderr)
        return 1
    finally:
        prometheus.stop(prom)
        _stop_all(children, broker)


def start_prometheus(workdir: Path, http_port: int, logs: Path
                     ) -> tuple[subprocess.Popen | None, str | None]:
    """A real Prometheus on the shipped configuration and rules, scraping the demo
    hub at the shipped interval; (None, None) with one line said when there is none."""
    binary = prometheus.find_binary()
    if binary is None:
        print("prometheus: not installed (apt install prometheus); "
              "the demo runs without it", flush=True)
        return None, None
    if not (prometheus.DEPLOY / "prometheus.yml").is_file():
        print(f"prometheus: no {prometheus.DEPLOY} next to this program; "
              "the demo runs without it", flush=True)
        return None, None
    port = _port_near(9090)
    config = prometheus.write_config(prometheus.local_config(f"127.0.0.1:{http_port}"),
                                     workdir / "prometheus.yml")
    proc = prometheus.start(config, workdir / "prometheus", port, logs / "prometheus.log",
                            binary)
    print(f"prometheus: on 127.0.0.1:{port} (data in {workdir / 'prometheus'})", flush=True)
    return proc, f"http://127.0.0.1:{port}"


def _check_children(children) -> None:
    for name, proc in children:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}; "
                               f"see its log in the demo's logs/ folder")


def _stop_all(children, broker) -> None:
    print("stopping…", flush=True)
    # Stations first (each publishes its clean offline), then the hub, then the broker.
    for _name, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in reversed(children):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in 10 s; killing it", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if broker is not None and broker.poll() is None:
        broker.terminate()
        try:
            broker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.kill()
    print("stopped.", flush=True)


def _banner(base: str, token: str, workdir: Path, kiosks: list[tuple[str, str]],
            prom_url: str | None = None, signins: list[tuple[str, str, str]] = ()) -> str:
    prom = [f"  prometheus  {prom_url}   (alerts {prom_url}/alerts, rules {prom_url}/rules)"
            ] if prom_url else []
    return "\n".join([
        "",
        "Yizhan demo is running.",
        f"  console     {base}/   (sign in below; also in {workdir / 'console-users'})",
        *[f"  sign-in     {name} / {password}   ({role})" for name, role, password in signins],
        f"  hub API     {base}/api/v1/stations",
        f"  API token   {token}   (also in {workdir / 'api-token'})",
        f"  try         curl -H 'Authorization: Bearer {token}' {base}/api/v1/stations",
        f"  health      {base}/healthz",
        f"  metrics     {base}/metrics",
        *[f"  kiosk       {url}   ({sid}; open at 800x480 — a touchscreen)"
          for sid, url in kiosks],
        *prom,
        f"  logs        {workdir / 'logs'}",
        "Press Ctrl-C to stop everything.",
    ])
