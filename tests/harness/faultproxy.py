"""A TCP proxy that breaks the network on the test's word (issue 12, long faults).

Put it between any client and a server (the broker, the hub's PostgreSQL) and the
test decides what the path does: pass, refuse, reset, black-hole, throttle, restore.

>>> with FaultProxy(broker.host, broker.port) as proxy:     # doctest: +SKIP
...     client = connect(proxy)              # tests.harness.mqtt, through the proxy
...     proxy.blackhole()                    # the 4G link goes half-open
...     proxy.restore()                      # the path returns: held bytes flow on
>>> proxy.url_for("postgresql://postgres@127.0.0.1:5432/yz")   # doctest: +SKIP
'postgresql://postgres@127.0.0.1:40213/yz'

One thread runs a ``selectors`` loop over every socket; the test's commands are
handed to that thread and return once applied, so a test never races the proxy
(after ``refuse()`` returns, a connect *is* refused).
"""

from __future__ import annotations

import contextlib
import errno
import math
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

HOST = "127.0.0.1"
#: Bytes the proxy holds per direction of one connection. Past it the proxy stops
#: reading, so TCP's flow control holds the sender back instead of memory growing.
BUFFER_LIMIT = 64 * 1024
#: How long a command, or ``stop()``, may wait for the proxy's thread.
COMMAND_TIMEOUT = 2.0
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# SO_LINGER on with 0 s: close() then sends RST instead of FIN.
_LINGER_ZERO = struct.pack("ii", 1, 0)

Mode = Literal["pass", "refuse", "reset", "blackhole"]
Held = Literal["resume", "reset"]


class FaultProxyError(RuntimeError):
    """The proxy could not do what the test asked: not started, port taken, thread dead."""


def _abort(sock: socket.socket) -> None:
    """Close with RST, as a crashed host or a middlebox that lost the flow does."""
    # A socket its peer already reset refuses the option: a plain close is all that is left.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


class _Flow:
    """One direction of a relayed connection and the bytes the proxy holds for it."""

    __slots__ = ("blocked", "chunks", "eof", "refilled", "shut", "size", "tokens")

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, memoryview]] = deque()  # (due, bytes)
        self.size = 0
        self.eof = False  # the sender closed; pass the close on once its bytes are out
        self.shut = False  # the close was passed on (shutdown SHUT_WR)
        self.blocked = False  # the receiver's socket buffer is full: wait until writable
        self.tokens = 0.0  # throttle's token bucket, in bytes
        self.refilled = 0.0

    @property
    def can_read(self) -> bool:
        return not self.eof and self.size < BUFFER_LIMIT


class _Pair:
    """A client's connection and the proxy's own connection to the server for it."""

    __slots__ = ("client", "closed", "connecting", "down", "held", "up", "upstream")

    def __init__(self, client: socket.socket, held: bool) -> None:
        self.client = client
        self.upstream: socket.socket | None = None  # None until the path lets the SYN through
        self.connecting = False
        self.up = _Flow()  # client → server
        self.down = _Flow()  # server → client
        self.held = held  # in the black hole: nothing read, nothing written
        self.closed = False


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_host:target_port``.

    Modes (each method returns once the proxy has applied it):

    - pass (the start, and after ``restore()``): bytes flow both ways as they come.
    - ``refuse()``: the port is closed, a new connect gets ECONNREFUSED; the
      connections already open are closed as a stopped server closes them (FIN).
      The proxy keeps the port bound (not listening), so it is the same port on
      ``restore()`` and no other program can take it meanwhile.
    - ``reset(keep=False)``: every open connection gets RST on both sides, as
      from a router that lost its state; then traffic passes again.
      ``keep=True``: every new connection is reset too, until ``restore()``.
    - ``blackhole()``: the half-open link a mobile network makes. Every socket
      stays open and new connections are accepted, but nothing is forwarded in
      either direction and nothing is closed; the server does not even see a new
      client's connection until the path returns. The proxy reads nothing while the
      hole lasts, so what the ends send waits in the kernel's buffers (where a real
      sender keeps its unacknowledged bytes), and a sender stalls once they fill.
    - ``throttle(bytes_per_s, latency)``: shapes whatever passes, each direction
      on its own: at most ``bytes_per_s`` (a burst of 1/20 s) and ``latency``
      seconds of one-way delay. It combines with the modes above; ``restore()``
      lifts it.
    - ``restore(held="resume")``: back to pass. Connections held in a black hole
      resume and deliver what was waiting, then any close an end made meanwhile:
      what TCP does when a path returns within its retransmission limit (about 15
      minutes on Linux). ``held="reset"`` resets them instead: what a carrier-grade
      NAT that forgot the flow during the outage answers.

    Counters: ``accepted`` (connections ever accepted), ``open`` (open now),
    ``relayed_to_server``/``relayed_to_client`` (bytes delivered) and ``buffered``
    (bytes the proxy holds now, at most ``BUFFER_LIMIT`` per direction).
    ``host``/``port``/``url`` make the proxy usable wherever a test passes a broker.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_port: int | None = None,
        *,
        scheme: str = "tcp",
    ) -> None:
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be a TCP port (1-65535), got {target_port!r}")
        if listen_port is not None and (not isinstance(listen_port, int)
                                        or not 0 < listen_port < 65536):
            raise ValueError(f"listen_port must be a TCP port or None, got {listen_port!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.host = HOST
        self.port = listen_port or 0
        self.scheme = scheme
        self._mode: Mode = "pass"
        self._rate: float | None = None
        self._burst = 0.0
        self._latency = 0.0
        self._pairs: list[_Pair] = []
        self._events: dict[socket.socket, int] = {}
        self._listener: socket.socket | None = None
        self._port_hold: socket.socket | None = None
        self._target: tuple[int, tuple] | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        self._cond = threading.Condition()
        self._accepted = 0
        self._open = 0
        self._relayed = [0, 0]  # to the server, to the client
        self._buffered = 0

    # -- what tests read ------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url_for(self, url: str) -> str:
        """``url`` (a database or broker URL) with its host and port swapped for the
        proxy's, keeping scheme, credentials, path and query."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{self.host}:{self.port}"))

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def open(self) -> int:
        return self._open

    @property
    def relayed_to_server(self) -> int:
        return self._relayed[0]

    @property
    def relayed_to_client(self) -> int:
        return self._relayed[1]

    @property
    def buffered(self) -> int:
        return self._buffered

    def wait_connections(self, n: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n`` connections are open through the proxy; returns
        how many are. Raises AssertionError saying how many there were."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._open >= n, timeout):
                raise AssertionError(
                    f"{self._open} of {n} connections open through {self.url} after "
                    f"{timeout} s ({self._accepted} accepted, mode {self._mode})")
            return self._open

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise FaultProxyError(f"the proxy on {self.url} was already started")
        info = socket.getaddrinfo(self.target_host, self.target_port, type=socket.SOCK_STREAM)
        self._target = (info[0][0], info[0][4])
        self._listener = self._listen(None)
        self.port = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._sel.register(self._wake_r, _READ, "wake")
        self._watch(self._listener, _READ, "listener")
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the port, and join the thread (idempotent)."""
        thread = self._thread
        if thread is None or self._stopping:
            return
        self._stopping = True
        self._wake()
        thread.join(COMMAND_TIMEOUT)
        if thread.is_alive():
            raise FaultProxyError(f"the proxy on {self.url} did not stop within "
                                  f"{COMMAND_TIMEOUT} s")
        self._wake_r.close()
        self._wake_w.close()
        if self._failure is not None:
            raise FaultProxyError(f"the proxy on {self.url} failed: {self._failure!r}") \
                from self._failure

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands -----------------------------------------------------------------

    def refuse(self) -> None:
        """New connections are refused; open ones are closed (FIN)."""
        def apply() -> None:
            self._mode = "refuse"
            for pair in list(self._pairs):
                self._drop(pair, reset=False)
            self._unlisten()
        self._command("refuse", apply)

    def reset(self, keep: bool = False) -> None:
        """RST every open connection; with ``keep``, every new one too until ``restore()``."""
        def apply() -> None:
            for pair in list(self._pairs):
                self._drop(pair, reset=True)
            self._relisten()
            self._mode = "reset" if keep else "pass"
        self._command("reset", apply)

    def blackhole(self) -> None:
        """Forward nothing either way, close nothing, keep accepting."""
        def apply() -> None:
            self._relisten()
            self._mode = "blackhole"
            for pair in self._pairs:
                pair.held = True
        self._command("blackhole", apply)

    def throttle(self, bytes_per_s: float | None = None, latency: float | None = None) -> None:
        """Limit each direction to ``bytes_per_s`` and delay it by ``latency`` seconds
        (None: no limit, no delay)."""
        if bytes_per_s is not None and (isinstance(bytes_per_s, bool)
                                        or not isinstance(bytes_per_s, int | float)
                                        or not math.isfinite(bytes_per_s) or bytes_per_s <= 0):
            raise ValueError(f"bytes_per_s must be a positive number of bytes per second "
                             f"or None, got {bytes_per_s!r}")
        if latency is not None and (isinstance(latency, bool)
                                    or not isinstance(latency, int | float)
                                    or not math.isfinite(latency) or latency < 0):
            raise ValueError(f"latency must be seconds (0 or more) or None, got {latency!r}")

        def apply() -> None:
            self._shape(bytes_per_s, latency or 0.0)
        self._command("throttle", apply)

    def restore(self, held: Held = "resume") -> None:
        """Back to passing everything, unshaped; ``held`` says what becomes of the
        connections held in a black hole: ``"resume"`` them or ``"reset"`` them."""
        if held not in ("resume", "reset"):
            raise ValueError(f"held must be 'resume' or 'reset', got {held!r}")

        def apply() -> None:
            self._relisten()
            self._mode = "pass"
            self._shape(None, 0.0)
            for pair in list(self._pairs):
                for flow in (pair.up, pair.down):
                    # Bytes delayed by a lifted latency are due now.
                    flow.chunks = deque((0.0, data) for _, data in flow.chunks)
                if not pair.held:
                    continue
                if held == "reset":
                    self._drop(pair, reset=True)
                    continue
                pair.held = False
                if pair.upstream is None:
                    self._connect_upstream(pair)
        self._command("restore", apply)

    def _command(self, name: str, apply: Callable[[], None]) -> None:
        thread = self._thread
        if thread is None or self._stopping or not thread.is_alive():
            raise FaultProxyError(
                f"{name}(): the proxy is not running (start() it first"
                + (f"; it failed: {self._failure!r})" if self._failure else ")"))
        done = threading.Event()
        errors: list[BaseException] = []
        self._commands.put((apply, done, errors))
        self._wake()
        if not done.wait(COMMAND_TIMEOUT):
            raise FaultProxyError(f"{name}() was not applied within {COMMAND_TIMEOUT} s"
                                  f" (thread failure: {self._failure!r})")
        if errors:
            raise FaultProxyError(f"{name}() failed: {errors[0]}") from errors[0]

    def _wake(self) -> None:
        # A full pipe holds wake-ups enough already: the thread will wake.
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    # -- the proxy's thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._run_commands()
                if self._stopping:
                    break
                now = time.monotonic()
                wake_at = self._service(now)
                timeout = None if wake_at is None else max(0.0, wake_at - now)
                for key, mask in self._sel.select(timeout):
                    self._dispatch(key.data, mask)
        except BaseException as err:  # kept and raised by stop(), so a test cannot miss it
            self._failure = err
        finally:
            self._close_all()
            self._run_commands()  # nobody waits forever on a command sent at the end

    def _run_commands(self) -> None:
        while True:
            try:
                apply, done, errors = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if self._failure is not None or self._stopping:
                    raise FaultProxyError("the proxy is stopping")
                apply()
            except Exception as err:  # handed to the caller, who raises it
                errors.append(err)
            finally:
                done.set()

    def _dispatch(self, data: object, mask: int) -> None:
        if data == "wake":
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass  # drained
            return
        if data == "listener":
            self._accept_all()
            return
        pair, side = data
        if pair.closed:
            return  # dropped by an earlier event of this same round
        if side == "client":
            if mask & _WRITE:
                pair.down.blocked = False
            if mask & _READ:
                self._read(pair, pair.client, pair.up)
        elif pair.connecting:
            err = pair.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                # The server refused or is unreachable: reset the client, as a
                # connection to a closed port looks through any middlebox that has
                # already accepted it.
                self._drop(pair, reset=True)
            else:
                pair.connecting = False
        else:
            if mask & _WRITE:
                pair.up.blocked = False
            if mask & _READ:
                self._read(pair, pair.upstream, pair.down)

    def _accept_all(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we took it
            sock.setblocking(False)
            with self._cond:
                self._accepted += 1
            if self._mode == "reset":
                _abort(sock)
                continue
            # The proxy must not add Nagle's delay to small MQTT packets.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(sock, held=self._mode == "blackhole")
            self._pairs.append(pair)
            with self._cond:
                self._open += 1
                self._cond.notify_all()
            if not pair.held:
                self._connect_upstream(pair)

    def _connect_upstream(self, pair: _Pair) -> None:
        family, address = self._target
        up = socket.socket(family, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.upstream = up
        err = up.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            pair.connecting = True
        elif err:
            self._drop(pair, reset=True)

    def _read(self, pair: _Pair, src: socket.socket, flow: _Flow) -> None:
        if pair.held or not flow.can_read:
            return
        try:
            data = src.recv(BUFFER_LIMIT - flow.size)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer: pass the reset on
            self._drop(pair, reset=True)
            return
        if not data:
            flow.eof = True
            return
        flow.chunks.append((time.monotonic() + self._latency, memoryview(data)))
        flow.size += len(data)
        self._buffered += len(data)

    def _service(self, now: float) -> float | None:
        """Deliver what is due on every connection, close what is finished, and set
        what each socket waits for; returns when a timer (latency, throttle) is due."""
        wake_at: float | None = None
        for pair in list(self._pairs):
            if pair.closed:
                continue
            if not pair.held and pair.upstream is not None and not pair.connecting:
                for flow, dst, index in ((pair.up, pair.upstream, 0),
                                         (pair.down, pair.client, 1)):
                    try:
                        due = self._flush(flow, dst, index, now)
                    except OSError:  # the receiver is gone: reset the sender
                        self._drop(pair, reset=True)
                        break
                    if due is not None and (wake_at is None or due < wake_at):
                        wake_at = due
            if pair.closed:
                continue
            if pair.up.shut and pair.down.shut:
                self._drop(pair, reset=False)
                continue
            self._set_interest(pair)
        return wake_at

    def _flush(self, flow: _Flow, dst: socket.socket, index: int, now: float) -> float | None:
        while flow.chunks and not flow.blocked:
            due, data = flow.chunks[0]
            if due > now:
                return due
            n = len(data)
            if self._rate is not None:
                flow.tokens = min(self._burst, flow.tokens + (now - flow.refilled) * self._rate)
                flow.refilled = now
                want = min(n, int(self._burst))
                if flow.tokens < want:
                    # A small margin so float rounding cannot wake the loop just short.
                    return now + (want - flow.tokens) / self._rate + 0.001
                n = min(n, int(flow.tokens))
            try:
                sent = dst.send(data[:n])
            except BlockingIOError:
                flow.blocked = True
                return None
            if self._rate is not None:
                flow.tokens -= sent
            flow.size -= sent
            self._buffered -= sent
            self._relayed[index] += sent
            if sent < len(data):
                flow.chunks[0] = (due, data[sent:])
                if sent < n:
                    flow.blocked = True  # the kernel took less than offered: its buffer is full
            else:
                flow.chunks.popleft()
        if flow.eof and not flow.chunks and not flow.shut:
            dst.shutdown(socket.SHUT_WR)
            flow.shut = True
        return None

    def _set_interest(self, pair: _Pair) -> None:
        client = upstream = 0
        if not pair.held:
            if pair.up.can_read:
                client |= _READ
            if pair.down.blocked:
                client |= _WRITE
            if pair.upstream is not None and not pair.connecting:
                if pair.down.can_read:
                    upstream |= _READ
                if pair.up.blocked:
                    upstream |= _WRITE
        if pair.connecting:
            upstream |= _WRITE
        self._watch(pair.client, client, (pair, "client"))
        if pair.upstream is not None:
            self._watch(pair.upstream, upstream, (pair, "upstream"))

    def _watch(self, sock: socket.socket, events: int, data: object) -> None:
        """Register exactly ``events`` for ``sock``: a socket is never watched for what
        the proxy will not act on, which is what keeps the loop from spinning."""
        old = self._events.get(sock, 0)
        if events == old:
            return
        if not events:
            self._sel.unregister(sock)
            del self._events[sock]
            return
        if old:
            self._sel.modify(sock, events, data)
        else:
            self._sel.register(sock, events, data)
        self._events[sock] = events

    def _forget(self, sock: socket.socket) -> None:
        if self._events.pop(sock, 0):
            self._sel.unregister(sock)

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        if pair.closed:
            return
        pair.closed = True
        self._pairs.remove(pair)
        self._buffered -= pair.up.size + pair.down.size
        # Counted before the sockets close, so a test that sees the close reads
        # counters that already show it.
        with self._cond:
            self._open -= 1
            self._cond.notify_all()
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            self._forget(sock)
            if reset:
                _abort(sock)
            else:
                sock.close()

    def _shape(self, rate: float | None, latency: float) -> None:
        self._rate = float(rate) if rate is not None else None
        # A burst of 1/20 s: small enough that the limit holds over any second.
        self._burst = max(1.0, self._rate / 20) if self._rate is not None else 0.0
        self._latency = latency
        now = time.monotonic()
        for pair in self._pairs:
            for flow in (pair.up, pair.down):
                flow.tokens, flow.refilled = self._burst, now

    # -- the listening port -------------------------------------------------------

    def _listen(self, sock: socket.socket | None) -> socket.socket:
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # The same port again after refuse() or a stop(), whatever TIME_WAIT remains.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as err:
                sock.close()
                raise FaultProxyError(f"cannot listen on {self.host}:{self.port}: {err}") \
                    from err
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        self._forget(self._listener)
        self._listener.close()  # pending, unaccepted connections get RST with it
        self._listener = None
        # Hold the port with a socket that is bound but not listening: the kernel
        # answers a SYN to it with RST (connection refused) and nobody else can
        # take the port before restore() listens on it again.
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            hold.bind((self.host, self.port))
        except OSError:
            hold.close()  # taken in this instant: restore() will try to bind again
            hold = None
        self._port_hold = hold

    def _relisten(self) -> None:
        if self._listener is not None:
            return
        hold, self._port_hold = self._port_hold, None
        self._listener = self._listen(hold)
        self._watch(self._listener, _READ, "listener")

    def _close_all(self) -> None:
        for pair in list(self._pairs):
            self._drop(pair, reset=False)
        for sock in (self._listener, self._port_hold):
            if sock is not None:
                self._forget(sock)
                sock.close()
        self._listener = self._port_hold = None
        self._sel.close()
