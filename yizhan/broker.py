"""A private MQTT broker for the demo: Mosquitto when installed, else amqtt.

The demo must run on a fresh machine in one command. Mosquitto is what the
fleet runs; when its binary is missing (and cannot be installed) the demo uses
amqtt, a pure-Python broker from the ``broker`` extra — slower (about 2.4 k
msg/s here), but ample for a few simulated stations.

``python -m yizhan.broker --port N`` runs the embedded broker in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in MOSQUITTO_PATHS:
        if Path(path).exists():
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_broker(kind: str, port: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    """Start a broker process on 127.0.0.1:port; returns the process and its name."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary = find_mosquitto() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and binary is None:
        raise RuntimeError("Mosquitto is not installed: apt-get install mosquitto")
    log = open(workdir / "broker.log", "ab")  # noqa: SIM115 - owned by the child
    if binary is not None:
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The default 1000 overflows when a hub restarts (design.md).
            "max_queued_messages 100000\n"
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        name = f"mosquitto ({binary})"
    else:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "no MQTT broker: install Mosquitto (apt-get install mosquitto) or the "
                "embedded one (pip install 'yizhan[broker]')") from None
        proc = subprocess.Popen([sys.executable, "-m", "yizhan.broker", "--port", str(port)],
                                stdout=log, stderr=log)
        name = "embedded amqtt broker"
    if not wait_for_port(port):
        proc.terminate()
        raise RuntimeError(f"the broker did not start; see {workdir / 'broker.log'}")
    return proc, name


def _run_embedded(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="embedded pure-Python MQTT broker (amqtt)")
    parser.add_argument("--port", type=int, default=1883)
    _run_embedded(parser.parse_args().port)
