"""Alert latency: from a station's event to the maintenance webhook hearing of it.

The real ``yizhan hub`` (SQLite in a temp dir, one webhook notifier, one route)
against a private Mosquitto. A fake station client — a plain paho client that
speaks the contract with ``protocol.messages`` — brings ``--samples`` stations
online (birth and State), then, one station at a time, publishes a ``tamper``
event (a locker panel opened outside maintenance: critical, no ``for``) with
``ts`` = now. A webhook receiver in this process checks each delivery's
``X-Yizhan-Signature`` and notes when the ``firing`` arrived. Latency = arrival −
publish, on this machine's one clock: ingest, the event stored, the engine's
evaluation, the alert row, the route, the outbox row, the signed POST.

Baseline in the same run: the same event payload published to a plain topic and
received by a bare paho-mqtt subscriber (the broker round trip alone).

    .venv/bin/python bench/alert_latency.py                 # 200 samples, ~1 minute
    .venv/bin/python bench/alert_latency.py --samples 50

Target (issue 6): p99 < 1 s from the event to the webhook.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from protocol import examples  # noqa: E402
from protocol import messages as m  # noqa: E402
from protocol.topics import Kind, topic  # noqa: E402
from yizhan.broker import free_port, start_broker  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"
TOKEN = "bench-api-token-0123456789"
TARGET_P99_S = 1.0


def progress(text: str) -> None:
    print(f"\r{text:<60}", end="", file=sys.stderr, flush=True)


class Receiver:
    """The maintenance webhook: verifies the signature, notes when each firing came."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # sid -> time.time() of its firing
        self.bad = 0
        self.ready = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(SECRET.encode(), body,
                                                hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, self.headers.get("X-Yizhan-Signature", "")):
                    receiver.bad += 1
                    self.send_response(401)
                else:
                    msg = json.loads(body)
                    if msg["kind"] == "firing" and msg["alert"]["rule"] == "tamper":
                        with receiver.ready:
                            receiver.arrived.setdefault(msg["alert"]["sid"], at)
                            receiver.ready.notify_all()
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait(self, sid: str, timeout: float) -> float | None:
        with self.ready:
            self.ready.wait_for(lambda: sid in self.arrived, timeout)
            return self.arrived.get(sid)


def client(port: int, name: str, on_message: Any = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{secrets.token_hex(3)}")
    if on_message is not None:
        c.on_message = on_message
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    return c


def payloads(sid: str, epoch: str, now_ms: int) -> tuple[bytes, bytes, bytes]:
    """A station's birth, its State, and a tamper event with ts = now (seq 1)."""
    status = examples.example("status")
    status.update(sid=sid, epoch=epoch, ts=now_ms, rev=1, birth=1, last_seq=0)
    state = examples.example("state")
    state.update(sid=sid, epoch=epoch, ts=now_ms, rev=2, last_seq=0)
    event = {"v": 1, "sid": sid, "epoch": epoch, "ts": now_ms, "synced": True, "seq": 1,
             "type": "tamper", "data": {"door": "locker_panel"}}
    return tuple(m.encode(m.from_dict(kind, obj, topic_sid=sid)) for kind, obj in (
        (Kind.STATUS, status), (Kind.STATE, state), (Kind.EVENT, event)))


def tamper(sid: str, epoch: str) -> bytes:
    return payloads(sid, epoch, int(time.time() * 1000))[2]


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"p50": statistics.median(xs), "p90": q[89], "p99": q[98], "max": xs[-1]}


def baseline(port: int, n: int, epoch: str) -> list[float]:
    """The same event payload through the broker to a bare subscriber, QoS 1."""
    got: dict[int, float] = {}
    cond = threading.Condition()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        at = time.time()
        with cond:
            got[int(msg.topic.rsplit("/", 1)[1])] = at
            cond.notify_all()

    sub = client(port, "bench-sub", on_message)
    sub.subscribe("bench/roundtrip/#", qos=1)
    pub = client(port, "bench-pub")
    time.sleep(0.5)
    out = []
    try:
        for i in range(n):
            payload = tamper(f"bench-{i:04d}", epoch)
            t0 = time.time()
            pub.publish(f"bench/roundtrip/{i}", payload, qos=1)
            with cond:
                cond.wait_for(lambda i=i: i in got, 5)
            if i in got:
                out.append(got[i] - t0)
            time.sleep(0.01)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--gap", type=float, default=0.05, help="seconds between samples")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="yizhan-bench-alert-"))
    port, http_port = free_port(), free_port()
    broker, broker_name = start_broker("mosquitto", port, work / "broker")
    receiver = Receiver()
    sids = [f"bench-{i:04d}" for i in range(args.samples)]
    cfg = work / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 30},
        "database": f"sqlite:///{work / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": http_port},
        "public_url": f"http://127.0.0.1:{http_port}",
        "api_tokens": [TOKEN],
        "notifiers": [{"name": "ops", "type": "webhook", "secret": SECRET,
                       "url": f"http://127.0.0.1:{receiver.port}/hook"}],
        "routes": [{"match": {}, "notify": ["ops"], "test_every": "off"}],
    }))
    log = open(work / "hub.log", "wb")  # noqa: SIM115
    hub = subprocess.Popen([sys.executable, "-m", "yizhan", "--log-level", "warning",
                            "hub", "--config", str(cfg)], stdout=log, stderr=log)
    epoch = secrets.token_hex(4)
    station = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz",
                                            timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or hub.poll() is not None:
                print(f"the hub did not start; see {work / 'hub.log'}", file=sys.stderr)
                return 1
            time.sleep(0.1)

        # The fake stations come online (a station the hub has not seen online is
        # held back: one page for a dead link, not one per part).
        station = client(port, "bench-station")
        now = int(time.time() * 1000)
        for sid in sids:
            status, state, _ = payloads(sid, epoch, now)
            station.publish(topic(sid, Kind.STATUS), status, qos=1, retain=True)
            station.publish(topic(sid, Kind.STATE), state, qos=1, retain=True)
        time.sleep(2.0)  # applied and evaluated

        hub_lat: list[float] = []
        lost = 0
        for i, sid in enumerate(sids):
            payload = tamper(sid, epoch)
            t0 = time.time()
            station.publish(topic(sid, Kind.EVENT), payload, qos=1)
            at = receiver.wait(sid, 5.0)
            if at is None:
                lost += 1
            else:
                hub_lat.append(at - t0)
            progress(f"hub: {i + 1}/{len(sids)}")
            time.sleep(args.gap)
        print(file=sys.stderr)
        base_lat = baseline(port, args.samples, epoch)
        progress(f"baseline: {len(base_lat)} samples")
        print(file=sys.stderr)
    finally:
        if station is not None:
            station.disconnect()
            station.loop_stop()
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(15)
        except subprocess.TimeoutExpired:
            hub.kill()
        broker.terminate()
        broker.wait()
        log.close()
        receiver.server.shutdown()

    if not hub_lat or not base_lat:
        print(f"no samples; see {work / 'hub.log'}", file=sys.stderr)
        return 1
    h, b = percentiles(hub_lat), percentiles(base_lat)
    print(f"alert latency, {len(hub_lat)} samples ({lost} lost, {receiver.bad} badly signed), "
          f"broker: {broker_name}")
    print("| path | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    print(f"| tamper event → webhook `firing` (hub) | {h['p50'] * 1000:.1f} | "
          f"{h['p90'] * 1000:.1f} | {h['p99'] * 1000:.1f} | {h['max'] * 1000:.1f} |")
    print(f"| same payload, broker round trip (baseline) | {b['p50'] * 1000:.1f} | "
          f"{b['p90'] * 1000:.1f} | {b['p99'] * 1000:.1f} | {b['max'] * 1000:.1f} |")
    print(f"ratios hub/baseline: p50 {h['p50'] / b['p50']:.0f}, p99 {h['p99'] / b['p99']:.0f}")
    ok = lost == 0 and receiver.bad == 0 and h["p99"] < TARGET_P99_S
    print(f"target (p99 < {TARGET_P99_S:g} s, none lost): {'met' if ok else 'NOT met'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
