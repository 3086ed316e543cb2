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
- what one ``loop_write`` sends goes out in one ``send``.

It overrides two of paho's private methods (``_create_socket``,
``_packet_queue``) and calls a third (``_loop_rc_handle``); ``pyproject.toml``
pins paho-mqtt to the release series this was written against, and every hub
test's messages go through it.
"""

from __future__ import annotations

import contextlib
import threading

import paho.mqtt.client as mqtt

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


class BulkClient(mqtt.Client):
    """``paho.mqtt.client.Client`` with ``BufferedSocket`` under it."""

    def _create_socket(self):
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock  # paho's own wrapper already buffers frames
        return BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        budget = READ_BUDGET
        while rc == mqtt.MQTT_ERR_SUCCESS and budget and self._buffered():
            rc = super().loop_read(max_packets)
            budget -= 1
        return rc

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
