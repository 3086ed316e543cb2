"""The hub's paho client (hub/mqtt/bulk_client.py) on real sockets and a real Mosquitto.

It reads the broker's stream in chunks and sends what one write pass queued in
one call. What must still hold: every message of a backlog arrives, in order,
and is acknowledged (the broker re-sends none); a publish from another thread
while the network thread is busy still goes out; a clean disconnect still
reaches the broker (so no last will is published), even from a full socket.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub.mqtt import bulk_client
from hub.mqtt.bulk_client import BufferedSocket, BulkClient
from tests.harness.procs import wait_until


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_reads_come_from_one_chunk(pair) -> None:
    a, b = pair
    calls = []
    real_recv = b.recv

    class Counting:
        def recv(self, n):
            calls.append(n)
            return real_recv(n)

        def __getattr__(self, name):
            return getattr(b, name)

    sock = BufferedSocket(Counting())
    a.sendall(b"\x30\x05hello\x30\x03abc")
    got = [sock.recv(1), sock.recv(1), sock.recv(5)]
    assert got == [b"\x30", b"\x05", b"hello"]
    assert sock.pending() == 5 and calls == [bulk_client.CHUNK]
    assert sock.recv(100) == b"\x30\x03abc"  # no more than is buffered
    assert sock.pending() == 0 and len(calls) == 1
    b.setblocking(False)
    with pytest.raises(BlockingIOError):  # an empty buffer asks the socket again
        sock.recv(1)
    a.close()
    b.setblocking(True)
    assert sock.recv(1) == b""  # the peer closed


def test_writes_wait_for_flush_and_close_flushes(pair) -> None:
    a, b = pair
    sock = BufferedSocket(b)
    assert sock.send(b"\x40\x02\x00\x01") == 4 and sock.send(b"\x40\x02\x00\x02") == 4
    assert sock.unsent()
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(100)  # nothing went out yet
    sock.flush()
    assert not sock.unsent() and a.recv(100) == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    sock.send(b"\xe0\x00")  # DISCONNECT, then paho closes at once
    sock.close()
    a.setblocking(True)
    assert a.recv(100) == b"\xe0\x00"


def test_close_waits_a_moment_for_room_in_a_full_socket(pair) -> None:
    a, b = pair
    b.setblocking(False)
    sock = BufferedSocket(b)
    data = bytes(range(256)) * 12_000  # 3 MB: more than the kernel buffers hold
    sock.send(data)
    sock.flush()
    assert sock.unsent()  # the socket took what it could and would block
    received = bytearray()

    def read_later() -> None:
        while len(received) < len(data):
            chunk = a.recv(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_later)
    reader.start()
    sock.close()  # the rest goes out while the peer reads
    reader.join(10)
    assert bytes(received) == data


def _publish(topic: bytes, payload: bytes, qos: int, mid: int = 0, retain: bool = False,
             dup: bool = False) -> bytes:
    """One PUBLISH packet as a broker sends it (MQTT 3.1.1)."""
    body = len(topic).to_bytes(2, "big") + topic
    body += mid.to_bytes(2, "big") if qos else b""
    body += payload
    n, length = len(body), bytearray()
    while True:  # the remaining length, 7 bits a byte
        n, byte = n >> 7, n & 127
        length.append(byte | (128 if n else 0))
        if not n:
            break
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + bytes(length) + body


def test_take_publish_takes_only_a_whole_publish_of_qos_0_or_1(pair) -> None:
    a, b = pair
    sock = BufferedSocket(b)
    big = _publish(b"yizhan/v1/yh-01/state", b"x" * 20_000, 1, mid=7)  # 3 length bytes
    qos2 = _publish(b"t", b"two", 2, mid=8)
    ping = b"\xd0\x00"  # PINGRESP
    a.sendall(_publish(b"t", b"zero", 0, retain=True) + big + qos2 + ping)
    assert sock.recv(0) == b""  # fills the buffer
    assert sock.take_publish() == (0x31, b"\x00\x01tzero")
    command, body = sock.take_publish()
    assert command == 0x32 and body == big[4:]
    assert sock.take_publish() is None  # QoS 2: paho's own reading
    assert sock.recv(len(qos2)) == qos2
    assert sock.take_publish() is None  # not a PUBLISH
    assert sock.recv(2) == ping
    a.sendall(big[:100])
    assert sock.recv(0) == b""
    assert sock.take_publish() is None and sock.pending() == 100  # not all here: nothing taken
    a.sendall(b"\x32\xff\xff\xff\xff\x01")  # a remaining length of five bytes
    assert sock.recv(100) == big[:100] and sock.recv(0) == b""
    assert sock.take_publish() is None and sock.pending() == 6


# Packets as a broker may send them, and how they may be split across reads.
_STREAM = [
    _publish(b"yizhan/v1/yh-01/status", b'{"state":"online"}', 1, mid=1, retain=True),
    _publish(b"yizhan/v1/yh-01/event", "事件".encode() * 100, 1, mid=2),
    _publish(b"yizhan/v1/yh-01/state", b"s" * 300, 0),
    _publish(b"yizhan/v1/yh-02/event", b"{}", 1, mid=65535, dup=True),
    _publish(b"yizhan/v1/yh-02/state", b"", 1, mid=4),
    _publish(b"t/\xff", b"bad utf-8 topic", 1, mid=5),
    _publish(b"yizhan/v1/yh-03/event", b"x" * 20_000, 1, mid=6),
]


def _read_as(client: mqtt.Client, sock: socket.socket, peer: socket.socket,
             stream: bytes, cuts: list[int], filtered: bool = False) -> tuple[list[tuple], bytes]:
    """Feed ``stream`` to ``client`` in pieces cut at ``cuts``: what on_message
    (and, when ``filtered``, a callback for events) saw, and what the client
    wrote back."""
    seen: list[tuple] = []

    def saw(who: str):
        return lambda c, u, msg: seen.append(
            (who, msg._topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid, msg.info.mid))

    client.on_message = saw("on_message")
    if filtered:
        client.message_callback_add("yizhan/v1/+/event", saw("events"))
    # paho's debug log on: the line for a topic of invalid UTF-8 must not raise.
    client.on_log = lambda c, u, level, line: seen.append(("log", line)) if line.startswith(
        "Received PUBLISH") else None
    client._sock = BufferedSocket(sock) if isinstance(client, BulkClient) else sock
    client._thread = threading.current_thread()  # PUBACKs wait for loop_write, as in the hub
    sock.setblocking(False)
    edges = [0, *cuts, len(stream)]
    for lo, hi in itertools.pairwise(edges):
        peer.sendall(stream[lo:hi])  # a socket pair: readable at once
        for _ in range(len(_STREAM) + 1):  # bare paho reads a packet a call
            assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        client.loop_write()
    peer.setblocking(False)
    written = b""
    with contextlib.suppress(BlockingIOError):
        written = peer.recv(1 << 16)
    client._sock = None
    return seen, written


@pytest.mark.parametrize("filtered", [False, True], ids=["on_message", "per-topic"])
@pytest.mark.parametrize("cuts", [[], [3], [60], [1, 2, 700, 21_000], list(range(1, 400, 7))],
                         ids=["whole", "in-the-length", "in-a-body", "here-and-there", "dribbled"])
def test_publishes_read_and_acknowledged_as_paho_does(cuts, filtered) -> None:
    stream = b"".join(_STREAM)
    results = []
    for cls in (mqtt.Client, BulkClient):
        a, b = socket.socketpair()
        try:
            client = cls(CallbackAPIVersion.VERSION2, client_id="c", protocol=mqtt.MQTTv311)
            results.append(_read_as(client, b, a, stream, cuts, filtered))
        finally:
            a.close()
            b.close()
    (paho_seen, paho_wrote), (bulk_seen, bulk_wrote) = results
    assert len(bulk_seen) == 2 * len(_STREAM) and bulk_seen == paho_seen
    callbacks = [entry[0] for entry in bulk_seen if entry[0] != "log"]
    assert callbacks.count("events") == (3 if filtered else 0)
    assert ("log", "Received PUBLISH (d0, q1, r0, m5), 'TOPIC WITH INVALID UTF-8: "
                   "b't/\\xff'', ...  (15 bytes)") in bulk_seen
    # QoS 1 PUBACKs, each once and in the order of their PUBLISHes (MQTT 3.1.1 §4.6).
    assert bulk_wrote == paho_wrote == b"".join(
        b"\x40\x02" + mid.to_bytes(2, "big") for mid in (1, 2, 65535, 4, 5, 6))


def test_a_publish_without_a_topic_is_a_protocol_error_as_in_paho(pair) -> None:
    a, b = pair
    client = BulkClient(CallbackAPIVersion.VERSION2, client_id="c", protocol=mqtt.MQTTv311)
    client._sock = BufferedSocket(b)
    a.sendall(_publish(b"", b"payload", 1, mid=1))
    assert client._packet_read() == mqtt.MQTT_ERR_PROTOCOL
    client._sock = None


def test_a_protocol_error_among_buffered_publishes_ends_the_read_as_in_paho() -> None:
    # Read in a row from the buffer, a bad packet must still stop the reading,
    # close the connection and tell on_disconnect, as paho's loop_read does.
    stream = (_publish(b"yizhan/v1/yh-01/event", b"1", 1, mid=1)
              + _publish(b"", b"no topic", 1, mid=2)
              + _publish(b"yizhan/v1/yh-01/event", b"3", 1, mid=3))
    outcomes = []
    for cls in (mqtt.Client, BulkClient):
        a, b = socket.socketpair()
        try:
            client = cls(CallbackAPIVersion.VERSION2, client_id="c", protocol=mqtt.MQTTv311)
            seen: list = []
            client.on_message = lambda c, u, msg, seen=seen: seen.append(msg.payload)
            client.on_disconnect = lambda c, u, flags, rc, props, seen=seen: seen.append(
                ("disconnected", str(rc)))
            client._sock = BufferedSocket(b) if cls is BulkClient else b
            client._thread = threading.current_thread()
            client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
            b.setblocking(False)
            a.sendall(stream)
            rcs = [client.loop_read() for _ in range(3) if client._sock is not None]
            outcomes.append((seen, rcs[-1], client._sock is None))
        finally:
            a.close()
            b.close()
    assert outcomes[0][0] == [b"1", ("disconnected", "Protocol error")]
    assert outcomes[1] == outcomes[0]


def _client(client_id: str) -> BulkClient:
    return BulkClient(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                      protocol=mqtt.MQTTv311)


def _publish_all(broker, topic: str, n: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, str(i).encode(), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos), "the broker did not take them all"
    finally:
        pub.disconnect()
        pub.loop_stop()


def _backlog_arrives_once_in_order_and_is_acknowledged(broker, port: int,
                                                       tls_ca: str | None = None) -> None:
    cid = f"bulk-{uuid.uuid4().hex[:8]}"
    topic = f"test/bulk/{cid}"
    got: list[int] = []
    dups: list[int] = []  # the broker's re-sends of what it sent before and saw no PUBACK for
    subscribed = threading.Event()
    c = _client(cid)
    if tls_ca is not None:
        c.tls_set(ca_certs=tls_ca)

    def on_message(cl, ud, msg) -> None:
        got.append(int(msg.payload))
        if msg.dup:
            dups.append(int(msg.payload))

    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    c.connect(broker.host, port)
    c.loop_start()
    assert subscribed.wait(10)
    c.disconnect()
    c.loop_stop()

    n = 3000  # many chunks' worth, queued while the client is away
    _publish_all(broker, topic, n)
    c.connect(broker.host, port)
    c.loop_start()
    try:
        wait_until(lambda: len(set(got)) >= n, timeout=30, what=f"{n} messages")
        # The broker reads this connection in order: once it acknowledges this
        # publish, it has read every PUBACK before it. Without it, a reconnect
        # right after the disconnect can overtake PUBACKs the broker has not read
        # yet; Mosquitto then takes the session over and re-sends those messages
        # (as QoS 1 allows; the hub's Ingest.stop waits for its offline status
        # the same way).
        sync = c.publish(f"{topic}/sync", b"", qos=1)
        sync.wait_for_publish(10)
        assert sync.is_published()
    finally:
        c.disconnect()
        c.loop_stop()
    # In order; QoS 1 lets the publisher's side add copies (a publisher's
    # re-send arrives as a new message, without DUP), never lose one.
    firsts = list(dict.fromkeys(got))
    assert firsts == list(range(n)) and dups == []

    # Every one was acknowledged: back again, the broker re-sends (with DUP)
    # nothing it sent before. The marker is published after whatever it re-sends.
    seen = len(got)
    c.connect(broker.host, port)
    c.loop_start()
    try:
        _publish_all(broker, topic, 1)
        wait_until(lambda: 0 in got[seen:], timeout=10,
                   what="the marker")
    finally:
        c.disconnect()
        c.loop_stop()
    assert dups == [], f"re-sent for want of a PUBACK: {dups[:20]}… ({len(dups)})"


def test_a_queued_backlog_arrives_once_in_order_and_is_acknowledged(broker) -> None:
    _backlog_arrives_once_in_order_and_is_acknowledged(broker, broker.port)


def test_the_same_over_tls(tmp_path, broker_factory) -> None:
    # TLS records are read whole into the buffer; what OpenSSL still holds is
    # "pending" too, so paho does not wait in select while it is there.
    from tests.harness.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    broker = broker_factory(tls=tls)
    _backlog_arrives_once_in_order_and_is_acknowledged(broker, broker.tls_port,
                                                       str(tls.ca_file))


def test_a_publish_from_another_thread_goes_out_while_messages_pour_in(broker) -> None:
    cid = f"bulk-{uuid.uuid4().hex[:8]}"
    topic = f"test/bulk/{cid}"
    echoes: list[bytes] = []
    subscribed = threading.Event()
    c = _client(cid)
    c.on_connect = lambda cl, *a: cl.subscribe([(topic, 1), (topic + "/echo", 1)])
    c.on_subscribe = lambda *a: subscribed.set()
    counted = [0]

    def on_message(cl, ud, msg) -> None:
        if msg.topic.endswith("/echo"):
            echoes.append(msg.payload)
        else:
            counted[0] += 1

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        pouring = threading.Thread(target=_publish_all, args=(broker, topic, 2000))
        pouring.start()
        # Publishes from this thread while the network thread handles the flood:
        # each must reach the broker (and come back) without waiting for a timeout.
        for i in range(50):
            c.publish(topic + "/echo", f"e{i}".encode(), qos=1)
        pouring.join(30)
        wait_until(lambda: len(echoes) == 50 and counted[0] == 2000, timeout=15,
                   what="every echo and every message")
    finally:
        c.disconnect()
        c.loop_stop()
    assert sorted(echoes) == sorted(f"e{i}".encode() for i in range(50))


def test_a_clean_disconnect_reaches_the_broker_so_no_will_is_sent(broker) -> None:
    cid = f"bulk-{uuid.uuid4().hex[:8]}"
    will_topic = f"test/bulk/{cid}/will"
    wills: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{cid}")
    watching = threading.Event()
    watcher.on_connect = lambda cl, *a: cl.subscribe(will_topic, qos=1)
    watcher.on_subscribe = lambda *a: watching.set()
    watcher.on_message = lambda cl, ud, msg: wills.append(msg.payload)
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    try:
        assert watching.wait(10)
        for i, graceful in enumerate((True, False)):
            c = _client(f"{cid}-{i}")
            c.will_set(will_topic, f"gone-{i}".encode(), qos=1)
            c.connect(broker.host, broker.port)
            c.loop_start()
            wait_until(c.is_connected, timeout=10, what="connected")
            if graceful:
                c.disconnect()
                c.loop_stop()
            else:  # the socket dropped without DISCONNECT: the will must come
                c.loop_stop()
                c.socket().close()
        wait_until(lambda: wills, timeout=10, what="the second client's will")
        assert wills == [b"gone-1"]
    finally:
        watcher.disconnect()
        watcher.loop_stop()
