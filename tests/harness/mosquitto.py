"""A private Mosquitto for one test or one session.

Tests talk to a real broker (design principle 2): each ``Broker`` runs its own
``mosquitto`` on a free loopback port with a config generated in its own
directory, so tests never touch the system broker on 1883 nor each other.

>>> broker = Broker(tmp_path)            # doctest: +SKIP
>>> broker.start()                        # returns once a CONNACK comes back
>>> broker.url
'mqtt://127.0.0.1:41733'
>>> broker.restart()                      # same port, for outage tests
>>> broker.stop()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The ACL the deployment ships; secure brokers use this very file.
CANONICAL_ACL = REPO / "deploy" / "mosquitto" / "acl"
#: The broker configuration the deployment ships.
DEPLOYED_CONF = REPO / "deploy" / "mosquitto" / "yizhan.conf"
#: What ``deployed=True`` takes from DEPLOYED_CONF, line for line: who may be
#: which client (issue 14, finding 1), the largest packet (finding 5) and how
#: often $SYS is published (issue 15). The rest of that file names system
#: paths and ports, which a test broker moves.
DEPLOYED_KEYS = ("use_username_as_clientid", "max_packet_size", "sys_interval")

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be started, or died; the message carries its log tail."""


def find_mosquitto() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if path is None:
        raise BrokerError(
            "no mosquitto binary on PATH or at /usr/sbin/mosquitto; "
            "install it (apt-get install mosquitto) — the tests need a real broker"
        )
    return path


def free_port() -> int:
    """A port nobody listens on right now (the broker binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _connack(host: str, port: int, timeout: float) -> int:
    """Send a bare MQTT 3.1.1 CONNECT and return the CONNACK return code.

    Any CONNACK, even "not authorised" from a broker without anonymous access,
    proves the broker is serving; a socket that merely accepts does not.
    """
    client_id = b"yizhan-harness-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, 10 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(packet)
        answer = b""
        while len(answer) < 4:
            chunk = s.recv(4 - len(answer))
            if not chunk:
                raise ConnectionError("broker closed the connection before CONNACK")
            answer += chunk
        if answer[0] != 0x20:
            raise ConnectionError(f"expected CONNACK, got {answer.hex()}")
        if answer[3] == 0:
            s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return answer[3]


def deployed_lines(path: Path = DEPLOYED_CONF) -> list[str]:
    """The ``DEPLOYED_KEYS`` lines of the deployment's broker configuration, as written."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    found = [line for line in lines if line.split(" ", 1)[0] in DEPLOYED_KEYS]
    missing = set(DEPLOYED_KEYS) - {line.split(" ", 1)[0] for line in found}
    if missing:
        raise BrokerError(f"{path} no longer sets {', '.join(sorted(missing))}")
    return found


def run_as_lines() -> list[str]:
    """Config lines that keep the broker running as us.

    Mosquitto 2 started as root drops to the "mosquitto" user, which cannot read
    or write a test's private directory; so as root, stay root.
    """
    if os.geteuid() != 0:
        return []
    return [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]


class Broker:
    """One private Mosquitto process in ``workdir``.

    ``users`` (username → password) turns on password authentication and
    disables anonymous access; ``acl=True`` applies the canonical ACL from
    ``deploy/mosquitto/acl`` (or pass a path to another ACL file).
    ``deployed=True`` adds the deployment's client-id and packet-size settings
    (``DEPLOYED_KEYS`` of ``deploy/mosquitto/yizhan.conf``); ``secure_broker``
    has them.
    ``persistence=True`` keeps retained messages and persistent sessions in
    ``workdir`` across ``stop()``/``start()``; ``autosave_interval`` also saves
    them periodically so a ``kill()`` loses at most that much.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        acl: bool | Path | str = False,
        persistence: bool = False,
        autosave_interval: int | None = None,
        start_timeout: float = 10.0,
        tls: object | None = None,
        deployed: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        # A port picked here may be taken by someone else before the broker
        # binds it; only such a port may be swapped for another on first start.
        self._may_move = port is None
        self.users = dict(users or {})
        if acl is True:
            self.acl_path: Path | None = CANONICAL_ACL
        elif acl:
            self.acl_path = Path(acl)
        else:
            self.acl_path = None
        self.persistence = persistence
        self.deployed = deployed
        self.autosave_interval = autosave_interval
        self.start_timeout = start_timeout
        # A second listener with TLS (tests.harness.tls.TlsFiles); the plain one
        # stays for the readiness check and for test clients.
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.passwd_path = self.workdir / "passwd"
        self._binary = find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    def start(self) -> Broker:
        """Start on ``self.port`` (the same port every time) and wait until it serves."""
        if self.running:
            raise BrokerError(f"broker on port {self.port} is already running")
        for attempt in range(3):
            try:
                self._launch()
                break
            except BrokerError as err:
                taken = "Address already in use" in str(err)
                if not (taken and self._may_move and attempt < 2):
                    raise
                self.port = free_port()
        self._may_move = False  # from now on the port is this broker's address
        return self

    def _launch(self) -> None:
        self._write_config()
        # Append, so the log of a restarted broker keeps its earlier life too.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the test run is for pytest,
                # whose teardown then stops the broker in order.
                start_new_session=True,
            )
        self._wait_ready()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (Mosquitto saves its persistence file on the way out)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        self._end(signal.SIGKILL, 5.0)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
            raise BrokerError(
                f"mosquitto on port {self.port} ignored {sig.name} for {timeout} s; killed\n"
                + self.log_tail()
            ) from None

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(
                    f"mosquitto exited with status {code} while starting on port "
                    f"{self.port} (config {self.config_path}); log:\n{self.log_tail()}"
                )
            try:
                _connack(self.host, self.port, timeout=0.5)
                return
            except OSError as err:  # refused while binding, reset, timeout
                last_error = err
                time.sleep(0.02)
        self._end(signal.SIGKILL, 5.0)
        raise BrokerError(
            f"mosquitto did not answer on {self.url} within {self.start_timeout} s "
            f"(last error: {last_error}); log:\n{self.log_tail()}"
        )

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            # Contract: the hub raises the default 1000, see deploy/mosquitto/yizhan.conf.
            "max_queued_messages 100000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "tls_version tlsv1.2",
            ]
        lines += run_as_lines()
        if self.deployed:
            lines += deployed_lines()
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
            ]
            if self.autosave_interval is not None:
                lines.append(f"autosave_interval {self.autosave_interval}")
        else:
            lines.append("persistence false")
        if self.users:
            self._write_passwd()
            lines += ["allow_anonymous false", f"password_file {self.passwd_path}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_path is not None:
            if not self.acl_path.is_file():
                raise BrokerError(f"ACL file {self.acl_path} does not exist")
            lines.append(f"acl_file {self.acl_path}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_passwd(self) -> None:
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for name in self.users:
            if ":" in name or "\n" in name:
                raise BrokerError(f"username {name!r} cannot go into a password file")
        self.passwd_path.write_text(
            "".join(f"{name}:{password}\n" for name, password in self.users.items())
        )
        self.passwd_path.chmod(0o600)
        # -U hashes a plain "user:password" file in place, all users in one run.
        done = subprocess.run(
            [tool, "-U", str(self.passwd_path)], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_passwd -U failed: {done.stderr or done.stdout}")
