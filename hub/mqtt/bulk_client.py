"""The hub's paho client, made to read a backlog in bulk.

A hub that comes back to a queued session, or meets a reconnect storm, takes in
tens of thousands of messages as fast as the broker sends them. Bare paho spends
more on the socket than on a message: it reads a packet in three or four
``recv`` calls (the command byte, each length byte, the rest), selects again
before every packet, wakes its own select through a socket pair for every
PUBACK it queues, and sends each PUBACK alone. That is seven system calls a
message, each one dropping the GIL, which the hub's writer and alert engine
threads then hold for up to a switch interval (``bench/hub_ingest.py``).

``BulkClient`` keeps paho's protocol handling and changes only the calls:

- the socket is read in chunks of ``CHUNK`` bytes, and the packets already
  read are handled without another select;
- a packet queued from the network thread itself does not wake that thread;
- what one ``loop_write`` sends goes out in one ``send``;
- a PUBLISH of QoS 0 or 1 already read whole (nearly every packet the hub gets)
  is taken from the buffer at once and its PUBACK written straight into the
  send buffer: paho's generic reading of a packet — a byte, the length, the
  rest, each its own call, then a struct format built per packet and a PUBACK
  through its locked queue — was a third of the hub's time per message. The
  message is paho's ``MQTTMessage`` given to paho's ``_handle_on_message``, so
  callbacks see no difference; anything else (QoS 2, MQTT 5, a packet cut by
  the end of the buffer, manual acks) is paho's own reading.

The message is a ``Received``, an ``MQTTMessage`` whose ``info`` is made only
when asked for, and until a per-topic callback is added it goes straight to
``on_message`` (paho matches its topic against the callbacks under a lock).

It overrides three of paho's private methods (``_create_socket``,
``_packet_queue``, ``_packet_read``), does ``_handle_publish``'s and
``_handle_on_message``'s work for the common case, and calls others
(``_loop_rc_handle``, ``_handle_on_message``, ``_send_puback``);
``pyproject.toml`` pins paho-mqtt to the release series this was written
against, every hub test's messages go through it, and
``tests/test_hub_bulk_client.py`` holds it to what bare paho reads and answers.
"""

from __future__ import annotations

import contextlib
import threading
import time

import paho.mqtt.client as mqtt

from yizhan.mqtt_client import PacedClient

#: Bytes asked of the socket at once: a few hundred station messages.
CHUNK = 256 * 1024
#: Packets handled from one read before paho gets to write (PUBACKs) again.
READ_BUDGET = 1000
#: On close, how long what is still buffered may wait for room in the socket.
CLOSE_WAIT_S = 1.0


class BufferedSocket:
    """A socket whose reads come from a buffer filled ``CHUNK`` bytes at a time,
    and whose writes wait in a buffer until ``flush``."""

    def __init__(self, sock) -> None:
        self._sock = sock
        # TLS: what OpenSSL decrypted and still holds (looked up once: a failing
        # hasattr per packet costs an exception).
        self._inner_pending = getattr(sock, "pending", None)
        self._in = b""
        self._pos = 0
        self._out = bytearray()

    def recv(self, n: int) -> bytes:
        buf, pos = self._in, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(CHUNK)  # BlockingIOError etc. go to paho as before
            if not buf:
                return buf  # the broker closed the connection
            self._in, pos = buf, 0
        end = pos + n
        self._pos = end if end < len(buf) else len(buf)
        return buf[pos:end]

    def pending(self) -> int:
        """Bytes read but not yet handed to paho (and, under TLS, the record's)."""
        inner = self._inner_pending() if self._inner_pending is not None else 0
        return len(self._in) - self._pos + inner

    def take_publish(self) -> tuple[int, bytes] | None:
        """The next packet, if it is a PUBLISH of QoS 0 or 1 read whole already:
        its first byte and the rest (taken from the buffer); else None, and
        nothing is taken."""
        buf, pos = self._in, self._pos
        end = len(buf)
        if end - pos < 2 or buf[pos] & 0xF4 != 0x30:  # PUBLISH, QoS bit 2 clear
            return None
        length, shift, i = 0, 0, pos + 1
        while True:  # the remaining length, 1 to 4 bytes of 7 bits
            if i >= end or shift > 21:
                return None  # not all here yet, or malformed: paho's own reading says
            byte = buf[i]
            i += 1
            length |= (byte & 127) << shift
            if byte < 128:
                break
            shift += 7
        if i + length > end:
            return None
        self._pos = i + length
        return buf[pos], buf[i:i + length]

    def send(self, data) -> int:
        self._out += data
        return len(data)

    def unsent(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        """Send what is buffered; what the socket will not take now stays."""
        out = self._out
        while out:
            try:
                sent = self._sock.send(out)
            except BlockingIOError:
                return
            del out[:sent]

    def close(self) -> None:
        # paho closes right after writing DISCONNECT: it must still reach the
        # broker, or the broker would publish our last will.
        with contextlib.suppress(OSError):
            self.flush()
            if self._out:  # the socket's own buffer is full: wait a moment for room
                self._sock.settimeout(CLOSE_WAIT_S)
                self._sock.sendall(self._out)
                self._out.clear()
        self._sock.close()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)  # fileno, setblocking, settimeout, …


class Received(mqtt.MQTTMessage):
    """paho's ``MQTTMessage`` whose ``info`` is made when first asked for: paho
    makes one per message received (with a ``threading.Condition``), which
    only a publish needs, and the hub's callback never asks."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes) -> None:  # paho's, less the info
        self.timestamp = 0.0
        self.state = mqtt.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    @property
    def info(self) -> mqtt.MQTTMessageInfo:
        try:
            return _INFO_SLOT.__get__(self)
        except AttributeError:
            info = mqtt.MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, info)
            return info

    @info.setter
    def info(self, value: mqtt.MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)


_INFO_SLOT = mqtt.MQTTMessage.__dict__["info"]  # the slot under the property


class BulkClient(PacedClient):
    """``paho.mqtt.client.Client`` with ``BufferedSocket`` under it."""

    #: Whether a per-topic callback was ever added: until then every message
    #: goes to ``on_message``, without paho's topic matching and its lock.
    _filtered = False

    def message_callback_add(self, sub: str, callback) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _create_socket(self):
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock  # paho's own wrapper already buffers frames
        return BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        budget = READ_BUDGET
        while rc == mqtt.MQTT_ERR_SUCCESS and budget > 0 and self._buffered():
            taken, rc = self._publishes_read(budget)
            if taken:
                budget -= taken
                continue
            rc = super().loop_read(max_packets)
            budget -= 1
        return rc

    def _publishes_read(self, budget: int) -> tuple[int, mqtt.MQTTErrorCode]:
        """The whole PUBLISHes of QoS 0 or 1 at the head of the buffer, up to
        ``budget``, one after the other without paho's loop_read and packet
        dispatch around each: how many, and the result as loop_read gives it."""
        sock = self._sock
        if not self._may_take(sock):
            return 0, mqtt.MQTT_ERR_SUCCESS
        on_thread = self._thread is threading.current_thread()
        taken, rc = 0, mqtt.MQTT_ERR_SUCCESS
        while taken < budget:
            packet = sock.take_publish()
            if packet is None:
                break
            taken += 1
            rc = self._publish_read(*packet, on_thread=on_thread)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return taken, self._loop_rc_handle(rc)  # as paho's loop_read
            if self._sock is not sock:
                break  # a callback disconnected
        return taken, rc

    def _may_take(self, sock) -> bool:
        """Whether the next packet may be read here rather than by paho."""
        return (isinstance(sock, BufferedSocket) and self._in_packet["command"] == 0
                and self._protocol != mqtt.MQTTv5 and not self._manual_ack)

    def loop_write(self) -> mqtt.MQTTErrorCode:
        rc = super().loop_write()
        sock = self._sock
        if isinstance(sock, BufferedSocket):
            try:
                sock.flush()
            except OSError:
                return self._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)  # as paho's own send
        return rc

    def want_write(self) -> bool:
        sock = self._sock
        return super().want_write() or (isinstance(sock, BufferedSocket) and sock.unsent())

    def _buffered(self) -> bool:
        sock = self._sock
        return isinstance(sock, BufferedSocket) and sock.pending() > 0

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        sock = self._sock
        if self._may_take(sock):
            packet = sock.take_publish()
            if packet is not None:
                return self._publish_read(*packet)
        return super()._packet_read()

    def _publish_read(self, command: int, body: bytes,
                      on_thread: bool | None = None) -> mqtt.MQTTErrorCode:
        """paho's ``_handle_publish`` for a PUBLISH of QoS 0 or 1 under MQTT 3.1.1,
        without its generic packet reading. ``on_thread``: whether this is the
        network thread, when the caller knows."""
        qos = (command >> 1) & 3
        n = len(body)
        topic_end = 2 + ((body[0] << 8) | body[1]) if n >= 2 else n + 1
        start = topic_end + 2 if qos else topic_end
        if topic_end == 2 or start > n:
            return mqtt.MQTT_ERR_PROTOCOL  # no topic, or cut short: as paho says of it
        mid = (body[topic_end] << 8) | body[topic_end + 1] if qos else 0
        message = Received(mid, body[2:topic_end])
        message.dup = bool(command & 0x08)
        message.qos = qos
        message.retain = bool(command & 0x01)
        message.payload = body[start:]
        message.timestamp = now = time.monotonic()
        if self.on_log is not None or self._logger is not None:
            topic = body[2:topic_end]
            try:
                shown = topic.decode("utf-8")
            except UnicodeDecodeError:  # as paho shows it; the callback's access raises
                shown = f"TOPIC WITH INVALID UTF-8: {topic!r}"
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d%d, q%d, r%d, m%d), "
                           "'%s', ...  (%d bytes)", message.dup, qos, message.retain, mid,
                           shown, len(message.payload))
        with self._msgtime_mutex:
            self._last_bytes_received = now
        if self._filtered:
            self._handle_on_message(message)
        else:
            self._on_message_only(message)
        if not qos:
            return mqtt.MQTT_ERR_SUCCESS
        if on_thread is None:
            return self._send_puback(mid)
        return self._puback(mid, on_thread)

    def _on_message_only(self, message: mqtt.MQTTMessage) -> None:
        """paho's ``_handle_on_message`` when no per-topic callback exists."""
        on_message = self._on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _send_puback(self, mid: int) -> mqtt.MQTTErrorCode:
        return self._puback(mid, self._thread is threading.current_thread())

    def _puback(self, mid: int, on_thread: bool) -> mqtt.MQTTErrorCode:
        """A PUBACK from the network thread goes straight into the send buffer,
        unless paho has packets of its own queued: then behind them, so PUBACKs
        keep the order of their PUBLISHes (MQTT 3.1.1 §4.6)."""
        sock = self._sock
        if not on_thread or self._out_packet or not isinstance(sock, BufferedSocket):
            return super()._send_puback(mid)
        if self.on_log is not None or self._logger is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Sending PUBACK (Mid: %d)", mid)
        sock.send(bytes((0x40, 2, mid >> 8, mid & 0xFF)))
        with self._msgtime_mutex:
            self._last_msg_out = time.monotonic()
        return mqtt.MQTT_ERR_SUCCESS

    def _packet_queue(self, *args, **kwargs) -> mqtt.MQTTErrorCode:
        if self._thread is not threading.current_thread():
            return super()._packet_queue(*args, **kwargs)
        # Queued by the network thread (a PUBACK, a publish from a callback): it
        # writes before it selects again, so the wake-up byte would only cost a
        # system call. Another thread's publish meanwhile still sees the socket
        # pair put back before this thread's next select.
        wake, self._sockpairW = self._sockpairW, None
        try:
            return super()._packet_queue(*args, **kwargs)
        finally:
            self._sockpairW = wake
