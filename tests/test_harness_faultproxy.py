"""The fault proxy of the test harness, through real edges: a real Mosquitto with
paho clients, the machine's PostgreSQL with psycopg, and plain sockets."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness.faultproxy import BUFFER_LIMIT, FaultProxy, FaultProxyError
from tests.harness.mosquitto import Broker
from tests.harness.mqtt import Subscriber, close, connect, publish

PROMPT = 2.0  # seconds: what "at once" means for a drop the proxy caused


@pytest.fixture
def proxy(broker: Broker) -> Iterator[FaultProxy]:
    """A proxy in front of the session's broker, which the proxy never harms."""
    with FaultProxy(broker.host, broker.port, scheme="mqtt") as p:
        yield p


class Watched:
    """A paho client through ``via`` that records its connects and disconnects."""

    def __init__(self, via: object) -> None:
        self.connects = 1
        self.drops: list[float] = []
        self.changed = threading.Condition()
        self.client = connect(via)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c, _u, _flags, reason, _props) -> None:
        with self.changed:
            self.connects += 0 if reason.is_failure else 1
            self.changed.notify_all()

    def _on_disconnect(self, _c, _u, _flags, _reason, _props) -> None:
        with self.changed:
            self.drops.append(time.monotonic())
            self.changed.notify_all()

    def wait(self, what: str, predicate, timeout: float = PROMPT) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError(f"{what} within {timeout} s: {self.connects} connects,"
                                     f" {len(self.drops)} drops")

    def close(self) -> None:
        close(self.client)


def raw_mqtt_connect(sock: socket.socket) -> None:
    """Send a bare MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s)."""
    client_id = b"faultproxy-raw"
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(bytes([0x10, len(body)]) + body)


def push_until_stalled(sock: socket.socket, most: int = 64 * 2**20) -> int:
    """Send as fast as the socket takes it; returns the bytes sent once it has taken
    nothing for 0.3 s. Fails if more than ``most`` bytes went without a stall."""
    sock.setblocking(False)
    chunk = b"y" * 65536
    sent = 0
    while sent < most:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            if not select.select([], [sock], [], 0.3)[1]:
                return sent
    raise AssertionError(f"{sent} bytes went into the proxy without back-pressure")


def closed_by_peer(sock: socket.socket) -> bool:
    """The peer closed (FIN) or reset the connection: either way it is gone."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- pass -----------------------------------------------------------------------------


def test_pass_relays_mqtt_both_ways_and_counts(proxy: FaultProxy, broker: Broker) -> None:
    assert proxy.url == f"mqtt://127.0.0.1:{proxy.port}" and proxy.port != broker.port
    with Subscriber(proxy, "harness/proxy/pass") as sub:
        assert proxy.wait_connections(1) == 1
        publish(proxy, "harness/proxy/pass", {"n": 1})  # a second client, also through
        assert sub.wait_for("harness/proxy/pass").json() == {"n": 1}
    assert proxy.accepted == 2
    assert proxy.relayed_to_server > 0 and proxy.relayed_to_client > 0
    deadline = time.monotonic() + PROMPT
    while proxy.open and time.monotonic() < deadline:  # both said goodbye; so does the proxy
        time.sleep(0.02)
    assert proxy.open == 0 and proxy.buffered == 0


def test_url_for_swaps_only_host_and_port() -> None:
    p = FaultProxy("127.0.0.1", 5432, listen_port=40213)
    assert p.url_for("postgresql://postgres:pw@127.0.0.1:5432/yz?sslmode=disable") == \
        "postgresql://postgres:pw@127.0.0.1:40213/yz?sslmode=disable"
    assert p.url_for("mqtt://localhost:1883") == "mqtt://127.0.0.1:40213"


def test_a_server_that_is_down_resets_the_client(broker_factory) -> None:
    down = broker_factory(start=False)  # its port, with nothing listening on it
    with FaultProxy(down.host, down.port) as p:
        # The RST may beat the end of connect() itself on loopback, or come at the first read.
        with pytest.raises(ConnectionResetError), \
                socket.create_connection((p.host, p.port), timeout=PROMPT) as s:
            s.recv(1)
        assert p.accepted == 1 and p.open == 0


# -- refuse -------------------------------------------------------------------------


def test_refuse_cuts_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    link = Watched(proxy)
    try:
        proxy.refuse()
        link.wait("the open connection cut", lambda: link.drops)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=PROMPT).close()
        paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="faultproxy-refused")
        with pytest.raises(ConnectionRefusedError):
            paho.connect(proxy.host, proxy.port)
        assert proxy.open == 0 and proxy.mode == "refuse"

        port = proxy.port
        proxy.restore()
        assert proxy.port == port
        close(connect(proxy))  # a new session through the same port
        link.wait("paho's own reconnect after the restore", lambda: link.connects >= 2,
                  timeout=5.0)
    finally:
        link.close()


# -- reset ------------------------------------------------------------------------------


def test_reset_drops_the_client_at_once_then_passes_again(proxy: FaultProxy) -> None:
    link = Watched(proxy)
    try:
        proxy.wait_connections(1)
        before = time.monotonic()
        proxy.reset()
        link.wait("on_disconnect after the reset", lambda: link.drops)
        assert link.drops[0] - before < PROMPT
        # keep=False: the path is back at once, and paho's reconnect gets through.
        link.wait("a reconnect", lambda: link.connects >= 2, timeout=5.0)
        assert proxy.accepted == 2 and proxy.open == 1
    finally:
        link.close()


def test_reset_keep_resets_new_connections_until_restored(proxy: FaultProxy) -> None:
    proxy.reset(keep=True)
    # The RST may beat the end of connect() itself on loopback, or come at the first read.
    with pytest.raises(ConnectionResetError), \
            socket.create_connection((proxy.host, proxy.port), timeout=PROMPT) as s:
            raw_mqtt_connect(s)
            s.recv(4)
    assert proxy.accepted == 1 and proxy.open == 0
    proxy.restore()
    close(connect(proxy))


# -- black hole --------------------------------------------------------------------------


def test_blackhole_keeps_the_link_open_and_forwards_nothing(
        proxy: FaultProxy, broker: Broker) -> None:
    link = Watched(proxy)
    try:
        with Subscriber(broker, "harness/proxy/hole") as sub:
            proxy.blackhole()
            info = link.client.publish("harness/proxy/hole", b"held", qos=1)
            info.wait_for_publish(1.0)
            assert not info.is_published()  # no PUBACK
            with pytest.raises(AssertionError, match="no matching message"):
                sub.wait_for("harness/proxy/hole", timeout=0.5)
            assert link.client.is_connected() and not link.drops
            assert proxy.open == 1

            # A new connection is accepted, and hears nothing either.
            with socket.create_connection((proxy.host, proxy.port), timeout=0.5) as late:
                raw_mqtt_connect(late)
                with pytest.raises(TimeoutError):
                    late.recv(4)
                assert proxy.wait_connections(2) == 2

                proxy.restore()  # held="resume": what waited is delivered
                info.wait_for_publish(PROMPT)
                assert info.is_published()
                assert sub.wait_for("harness/proxy/hole", timeout=PROMPT).payload == b"held"
                late.settimeout(PROMPT)
                assert late.recv(4)[:1] == b"\x20"  # its CONNACK, once the path is back
            assert not link.drops
    finally:
        link.close()


def test_restore_can_reset_what_the_hole_held(proxy: FaultProxy) -> None:
    link = Watched(proxy)
    try:
        proxy.wait_connections(1)
        proxy.blackhole()
        proxy.restore(held="reset")
        link.wait("on_disconnect of the held connection", lambda: link.drops)
    finally:
        link.close()


def test_blackhole_holds_nothing_in_the_proxy_and_stalls_the_sender(proxy: FaultProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=PROMPT) as s:
        proxy.wait_connections(1)
        proxy.blackhole()
        sent = push_until_stalled(s)
        assert sent > 0 and proxy.buffered == 0 and proxy.relayed_to_server == 0


def test_a_stalled_receiver_bounds_the_proxy_buffer() -> None:
    # A server that accepts (the kernel does) and never reads.
    with socket.create_server(("127.0.0.1", 0)) as stalled, \
            FaultProxy("127.0.0.1", stalled.getsockname()[1]) as p, \
            socket.create_connection((p.host, p.port), timeout=PROMPT) as s:
        sent = push_until_stalled(s)
        assert 0 < p.buffered <= BUFFER_LIMIT
        assert p.relayed_to_server + p.buffered <= sent


# -- throttle -------------------------------------------------------------------------------


def test_throttle_slows_a_large_publish_to_the_broker(proxy: FaultProxy, broker: Broker) -> None:
    payload = bytes(range(256)) * 400  # 102 400 bytes
    link = Watched(proxy)
    try:
        with Subscriber(broker, "harness/proxy/slow") as sub:
            proxy.throttle(bytes_per_s=40_000)
            started = time.monotonic()
            info = link.client.publish("harness/proxy/slow", payload, qos=1)
            info.wait_for_publish(15)
            took = time.monotonic() - started
            assert info.is_published()
            # 102 kB at 40 kB/s is 2.5 s; the bound leaves room for the burst.
            assert 2.0 <= took < 15, took
            assert sub.wait_for("harness/proxy/slow", timeout=PROMPT).payload == payload
        assert proxy.relayed_to_server >= len(payload)
    finally:
        link.close()


def test_throttle_slows_what_a_subscriber_receives(proxy: FaultProxy, broker: Broker) -> None:
    payload = b"z" * 102_400
    with Subscriber(proxy, "harness/proxy/slow-down") as sub:
        proxy.throttle(bytes_per_s=40_000)
        started = time.monotonic()
        publish(broker, "harness/proxy/slow-down", payload)  # straight to the broker
        got = sub.wait_for("harness/proxy/slow-down", timeout=15)
        assert got.payload == payload
        assert 2.0 <= got.at - started < 15, got.at - started
        assert proxy.buffered <= 2 * BUFFER_LIMIT


def test_latency_delays_each_way_and_restore_lifts_it(proxy: FaultProxy) -> None:
    link = Watched(proxy)

    def round_trip() -> float:
        started = time.monotonic()
        info = link.client.publish("harness/proxy/latency", b"x", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
        return time.monotonic() - started

    try:
        proxy.throttle(latency=0.5)
        assert round_trip() >= 0.95  # PUBLISH one way, PUBACK the other
        proxy.restore()
        assert round_trip() < 0.5  # a loopback round trip, with room for a busy machine
    finally:
        link.close()


# -- lifecycle and bad input ------------------------------------------------------------------


def test_stop_closes_everything_within_a_second_or_two(broker: Broker) -> None:
    p = FaultProxy(broker.host, broker.port).start()
    port = p.port
    clients = [socket.create_connection((p.host, port), timeout=PROMPT) for _ in range(3)]
    try:
        p.wait_connections(3)
        p.blackhole()
        started = time.monotonic()
        p.stop()
        assert time.monotonic() - started < PROMPT
        for c in clients:
            assert closed_by_peer(c)
        p.stop()  # idempotent
    finally:
        for c in clients:
            c.close()
    with FaultProxy(broker.host, broker.port, listen_port=port) as again:
        assert again.port == port  # the port is free again at once


def test_bad_commands_get_clear_errors(broker: Broker) -> None:
    p = FaultProxy(broker.host, broker.port)
    with pytest.raises(FaultProxyError, match="start"):
        p.blackhole()
    with pytest.raises(ValueError, match="target_port"):
        FaultProxy("127.0.0.1", 0)
    with p:
        for bad in (0, -5, float("inf"), True, "fast"):
            with pytest.raises(ValueError, match="bytes_per_s"):
                p.throttle(bytes_per_s=bad)
        with pytest.raises(ValueError, match="latency"):
            p.throttle(latency=-0.1)
        with pytest.raises(ValueError, match="held"):
            p.restore(held="cut")
        assert p.mode == "pass"
        with pytest.raises(FaultProxyError, match="already started"):
            p.start()
        with pytest.raises(FaultProxyError, match="cannot listen"):
            FaultProxy(broker.host, broker.port, listen_port=p.port).start()


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_proxy(pg_server) -> Iterator[tuple[FaultProxy, str]]:
    """A proxy in front of the machine's PostgreSQL, and the server's URL through it."""
    server = urlsplit(pg_server.url)
    with FaultProxy(server.hostname, server.port or 5432, scheme="postgresql") as p:
        yield p, p.url_for(pg_server.url)


@pytest.mark.postgres
def test_postgres_reset_fails_the_next_query_and_restore_lets_a_new_connection_in(
        pg_proxy) -> None:
    p, url = pg_proxy
    with psycopg.connect(url, connect_timeout=3) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        p.reset(keep=True)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    p.restore()
    with psycopg.connect(url, connect_timeout=3) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.postgres
def test_postgres_query_waits_out_a_black_hole_and_completes_on_restore(pg_proxy) -> None:
    p, url = pg_proxy
    with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
        p.blackhole()
        result: list[object] = []
        query = threading.Thread(
            target=lambda: result.append(conn.execute("SELECT 42").fetchone()))
        query.start()
        query.join(0.5)
        assert query.is_alive() and not result  # the query hangs, as over a dead 4G link
        p.restore()
        query.join(5)
        assert result == [(42,)]


@pytest.mark.postgres
def test_postgres_connect_into_a_black_hole_times_out(pg_proxy) -> None:
    p, url = pg_proxy
    p.blackhole()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)  # libpq's least
    assert time.monotonic() - started < 5
    assert p.accepted >= 1
