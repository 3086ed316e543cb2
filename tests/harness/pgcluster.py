"""A private PostgreSQL server that a test may stop, crash and start again.

The machine's server (``tests/harness/postgres.py``) is shared by every test;
one that restarts it breaks its neighbours. This is a cluster of its own: made
with the machine's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``,
or the directory ``YIZHAN_PG_BIN`` names) in a fresh directory, listening on
127.0.0.1 on a free port with trust authentication, and deleted at ``remove()``.
It keeps its port across restarts, as a rebooted database host does.

initdb and postgres refuse to run as root: as root (CI) they run as the
``postgres`` system user, in a directory that user owns.

>>> cluster = PgCluster().start()          # raises PgClusterUnavailable(reason)
>>> Store(cluster.url)                     # postgresql://postgres@127.0.0.1:<port>/postgres
>>> cluster.stop("immediate")              # a crash: recovery from the WAL at the next start
>>> cluster.start()
>>> cluster.remove()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.harness.procs import free_port

ENV_BIN = "YIZHAN_PG_BIN"
SYSTEM_USER = "postgres"
#: How the server is stopped: ``fast`` ends every session and checkpoints (a
#: clean restart); ``immediate`` kills everything at once (a crash).
MODES = ("smart", "fast", "immediate")


class PgClusterUnavailable(RuntimeError):
    """No private cluster can be made or started here; the message says why."""


def find_bin_dir() -> Path:
    """The newest PostgreSQL ``bin`` directory with initdb and pg_ctl."""
    named = os.environ.get(ENV_BIN)
    candidates = [Path(named)] if named else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0],
        reverse=True)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    where = named or "/usr/lib/postgresql/*/bin"
    raise PgClusterUnavailable(f"no initdb and pg_ctl in {where} (install the postgresql "
                               f"package, `make system-deps`, or set {ENV_BIN})")


class PgCluster:
    """One private PostgreSQL server; ``url`` is its ``postgres`` database."""

    def __init__(self, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._as_user: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError as err:
                raise PgClusterUnavailable(
                    f"running as root, and there is no {SYSTEM_USER!r} user to run "
                    "PostgreSQL as (the postgresql package creates it)") from err
            self._as_user = ["runuser", "-u", SYSTEM_USER, "--"]
        # Not under pytest's tmp_path: as root that is a 0700 directory the
        # postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="yz-pgcluster-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    # -- life ---------------------------------------------------------------------------

    def init(self) -> PgCluster:
        """initdb (once): trust on loopback only, the socket in our own directory."""
        if self._initialised:
            return self
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            # A test server: the OS's page cache is durable enough (a stop, even
            # an immediate one, is a crash of the server, not of the machine), so
            # a commit's WAL still survives it. synchronous_commit stays on: an
            # acknowledged commit must outlive an immediate stop.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "16MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/harness/pgcluster.py\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._initialised = True
        return self

    def start(self, timeout: float = 20.0) -> PgCluster:
        """Start the server (initdb first if needed) and wait until it accepts
        connections on its port."""
        self.init()
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", str(int(timeout)), timeout=timeout + 5)
        self.wait_ready(timeout)
        return self

    def stop(self, mode: str = "fast", timeout: float = 20.0) -> None:
        """Stop the server: ``fast`` (sessions ended, clean) or ``immediate`` (a crash)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w",
                  "-t", str(int(timeout)), timeout=timeout + 5)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stop (``mode``), stay down ``down_for`` seconds, start on the same port."""
        self.stop(mode)
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def running(self) -> bool:
        if not self._initialised:
            return False
        done = subprocess.run([*self._as_user, str(self.bin_dir / "pg_ctl"), "status",
                               "-D", str(self.data)], capture_output=True, timeout=10)
        return done.returncode == 0

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until a session over TCP works (pg_ctl -w watches the socket file)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as err:
                if time.monotonic() > deadline:
                    raise PgClusterUnavailable(
                        f"the private PostgreSQL on port {self.port} does not accept "
                        f"connections after {timeout} s: {err}\n{self.log_tail()}") from err
                time.sleep(0.05)

    def remove(self) -> None:
        """Stop the server (immediately) and delete its directory; idempotent."""
        if self.root.exists():
            with contextlib.suppress(Exception):
                if self.running():
                    self.stop("immediate")
            shutil.rmtree(self.root, ignore_errors=True)

    # -- use ----------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        argv = [*self._as_user, str(self.bin_dir / program), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  cwd=self.root)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise PgClusterUnavailable(f"{program} did not run: {err}") from err
        if done.returncode != 0:
            raise PgClusterUnavailable(
                f"{' '.join(argv)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}\n{self.log_tail()}")
