"""Fixtures shared by every test: a real broker, a simulated board, pins, a clock.

Each mirrors how the programs are built (design principle 6): tests make what
they need side by side and nothing leaks into the next test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware.sim import BoardSimulator
from tests.harness.mosquitto import Broker
from yizhan.clock import ManualClock

#: Accounts of the ``secure_broker``: two stations and the hub (see deploy/mosquitto/acl).
SECURE_USERS = {
    "yh-chumen-01": "pw-chumen-01",
    "yh-other": "pw-other",
    "_hub": "pw-hub",
}

# The programs run with UMask=0077 (systemd/*.service) and refuse a secret file
# others can read (yizhan.config.check_secret_file): the files tests write for
# them are made so too. tests/test_file_modes.py sets 022 where it proves a mode.
os.umask(0o077)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One plain broker for the whole session. Tests that stop, kill or restart
    a broker must use ``broker_factory`` instead, or they break their neighbours."""
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """``broker_factory(**Broker options, start=True) -> Broker``: fresh brokers,
    each in its own directory, all stopped at teardown."""
    made: list[Broker] = []

    def make(*, start: bool = True, **options: object) -> Broker:
        b = Broker(tmp_path / f"broker-{len(made)}", **options)
        made.append(b)
        return b.start() if start else b

    yield make
    errors = []
    for b in made:  # every one, even when an earlier stop fails
        try:
            b.stop()
        except Exception as err:
            errors.append(err)
    if errors:
        raise errors[0]


@pytest.fixture
def secure_broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A broker with passwords (``SECURE_USERS``, also on ``.users``), the
    canonical ACL of contract §2 and the deployment's client-id and packet-size
    settings (tests/harness/mosquitto.py ``DEPLOYED_KEYS``)."""
    return broker_factory(users=SECURE_USERS, acl=True, deployed=True)


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock()


@pytest.fixture
def board(clock: ManualClock, tmp_path: Path) -> Iterator[BoardSimulator]:
    """A started 12-slot board at address 1 on a pty, reachable at ``board.port``
    (a symlink in tmp_path), on the test's ``clock``."""
    sim = BoardSimulator(clock=clock, link_path=tmp_path / "ttyYZ-board").start()
    yield sim
    sim.stop()


@pytest.fixture
def pin_factory() -> Iterator[object]:
    """A fresh gpiozero MockFactory for this test only; pins are closed after."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.close()  # closes every pin a device left behind
        factory.reset()  # and forgets reservations, so nothing carries over
        Device.pin_factory = previous


@pytest.fixture
def stations() -> Iterator[Callable[..., object]]:
    """``stations(...)``: in-process DeliveryStations (journal, link, outbox), closed
    after the test, which fails if any pump raised."""
    from tests.harness.delivery import DeliveryStation

    made: list[DeliveryStation] = []

    def make(*args: object, **kwargs: object) -> DeliveryStation:
        made.append(DeliveryStation(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()
        assert not s.pump_errors


# -- databases (hub store and writer) -------------------------------------------------

import os  # noqa: E402 - this section was appended on its own

from tests.harness.postgres import PostgresServer, PostgresUnavailable  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    """The machine's PostgreSQL (``YIZHAN_TEST_PG`` overrides the default URL).

    Unreachable: skipped with the reason, except under CI (env ``CI`` set), where
    a test that needs PostgreSQL fails instead of passing unseen.
    """
    server = PostgresServer()
    try:
        server.check()
    except PostgresUnavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI: {err}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {err}")
    return server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (``postgresql://…/yz_test_…``),
    dropped after it. Tests using it directly should be ``@pytest.mark.postgres``."""
    with pg_server.database() as url:
        yield url


@pytest.fixture(params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test twice: on a fresh SQLite file in tmp_path and on a fresh
    PostgreSQL database. The URL is empty (``Store(url)`` migrates it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(database_url: str) -> Iterator[object]:
    """The hub's ``Store`` on ``database_url`` (both stores), migrated, closed after."""
    from hub.storage.store import Store

    s = Store(database_url)
    yield s
    s.close()


# -- a private PostgreSQL server (tests that restart the database) ---------------------

from tests.harness.pgcluster import PgCluster, PgClusterUnavailable  # noqa: E402


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A started PostgreSQL server of this test's own (``.url``, ``.stop(mode)``,
    ``.start()``, ``.restart(mode, down_for)``), removed after it.

    Unavailable (no PostgreSQL binaries, cannot start): skipped with the reason,
    except under CI (env ``CI`` set), where the test fails instead.
    """
    try:
        cluster = PgCluster()
    except PgClusterUnavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"a private PostgreSQL is required under CI: {err}", pytrace=False)
        pytest.skip(f"private PostgreSQL unavailable: {err}")
    try:
        try:
            cluster.start()
        except PgClusterUnavailable as err:
            if os.environ.get("CI"):
                pytest.fail(f"a private PostgreSQL is required under CI: {err}", pytrace=False)
            pytest.skip(f"private PostgreSQL unavailable: {err}")
        yield cluster
    finally:
        cluster.remove()


# -- systemd's notify socket ---------------------------------------------------------------

import socket  # noqa: E402 - this section was appended on its own


@pytest.fixture
def systemd(tmp_path):
    """A datagram socket bound where NOTIFY_SOCKET points; ``read()`` drains it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)

    class Systemd:
        address = str(path)

        @staticmethod
        def read() -> list[str]:
            got = []
            while True:
                try:
                    got.append(sock.recv(4096).decode())
                except BlockingIOError:
                    return got

    yield Systemd
    sock.close()
