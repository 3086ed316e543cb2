"""A fresh PostgreSQL database per test on the machine's server (design principle 2).

The server is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless the
environment variable ``YIZHAN_TEST_PG`` names another (any database on it; the
user must be allowed to create databases). Each test gets ``yz_test_<random>``,
dropped afterwards even if the test left connections open.

>>> server = PostgresServer()
>>> server.check()                       # raises PostgresUnavailable(reason)
>>> with server.database() as url:      # postgresql://postgres@127.0.0.1:5432/yz_test_…
...     Store(url)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from psycopg import sql

ENV_VAR = "YIZHAN_TEST_PG"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "yz_test_"


class PostgresUnavailable(RuntimeError):
    """The test server cannot be reached or used; the message says why."""


class PostgresServer:
    """The PostgreSQL server the tests run against, and databases made on it."""

    def __init__(self, url: str | None = None, connect_timeout: int = 3) -> None:
        self.url = url or os.environ.get(ENV_VAR) or DEFAULT_SERVER
        self.connect_timeout = connect_timeout

    def _admin(self) -> psycopg.Connection:
        # CREATE/DROP DATABASE refuse to run inside a transaction.
        return psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout)

    def check(self) -> None:
        """Raise PostgresUnavailable unless the server answers and lets us create databases."""
        try:
            with self._admin() as conn:
                row = conn.execute(
                    "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
        except psycopg.Error as err:
            raise PostgresUnavailable(
                f"cannot connect to {self.url} ({ENV_VAR} overrides it): {err}".strip()
            ) from err
        if not row or not row[0]:
            raise PostgresUnavailable(f"the user of {self.url} may not CREATE DATABASE")

    def url_for(self, name: str) -> str:
        """The URL of database ``name`` on this server, in the same ``postgresql://`` form."""
        return sa.make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """Create an empty ``yz_test_<random>`` database; returns its name."""
        name = PREFIX + secrets.token_hex(6)
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, first ending whatever connections to it are still open."""
        if not name.startswith(PREFIX):  # never anything these tests did not make
            raise ValueError(f"refusing to drop {name!r}: not a test database")
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name),
                                                                        force))

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database's URL for the duration of the block."""
        name = self.create_database()
        try:
            yield self.url_for(name)
        finally:
            self.drop_database(name)

    def terminate(self, url: str, pid: int | None = None) -> int:
        """End the backends connected to ``url``'s database, or only ``pid``, as a
        server restart or failover would from the client's side; waits until they
        are gone. Returns how many were ended."""
        name = sa.make_url(url).database
        with self._admin() as conn:
            # PostgreSQL 14+ can wait for the backend to exit, so the client's
            # next statement surely fails instead of racing the signal.
            wait = ", 5000" if conn.info.server_version >= 140000 else ""
            rows = conn.execute(
                f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND (%s::int IS NULL OR pid = %s)", (name, pid, pid)).fetchall()
        return sum(1 for (ok,) in rows if ok)
