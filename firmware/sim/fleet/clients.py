"""The fleet's loop: one paho-mqtt client per station, every socket on one selector.

paho's external-loop interface (``on_socket_open``/``close``/``register_write``,
``loop_read``/``loop_write``/``loop_misc``) lets one thread serve all the
stations: no thread and no socket pair per client. Everything a station does is
an entry on one heap (connect, visit, heartbeat, coalesced State, fault), so the
CPU a station costs is what it sends, not a poll per station.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import selectors
import socket
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware.sim.fleet import traffic
from firmware.sim.fleet.faults import KINDS, LINK, RANDOM_SPAN, Fault
from firmware.sim.fleet.station import FleetStation
from firmware.sim.fleet.truth import Truth

COALESCE = 2.0  # a State within 2 s of a change (contract §5)
MISC_EVERY = 1.0  # loop_misc (keepalive pings) for a slice of the clients each second
MISC_SLICES = 5


def station_ids(prefix: str, n: int, first: int = 1, count: int | None = None) -> list[str]:
    """The simulated stations' sids: the prefix and a number, zero-padded to one width
    (the whole fleet's, ``n``); ``first`` and ``count``: one process's shard of them."""
    width = max(5, len(str(n)))
    last = n if count is None else first + count - 1
    return [f"{prefix}{i:0{width}d}" for i in range(first, last + 1)]


def check_faults(faults: list[Fault], sids: list[str]) -> None:
    """A scripted fault must name one of the simulated stations."""
    known = set(sids)
    for f in faults:
        if f.sid not in known:
            raise ValueError(f"--fault names {f.sid}, not one of the simulated stations "
                             f"({sids[0]} .. {sids[-1]})")


def identity(secrets: str | Path, sid: str) -> tuple[Path, Path]:
    """A station's certificate and key where ``yizhan provision`` writes them."""
    d = Path(secrets) / "stations" / sid
    return d / f"{sid}.crt", d / f"{sid}.key"


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 1883
    stations: int = 10
    prefix: str = "sim-"
    keepalive: int = 60
    heartbeat: float = 60.0
    visits_per_hour: float = 6.0
    ml_per_visit: float = 300.0
    speed: float = 1.0
    fault_rate: float = 0.0  # random faults per station per simulated day
    faults: list[Fault] = field(default_factory=list)
    connect_rate: float = 200.0  # new connections a second
    username: str = "{sid}"
    password: str | None = None
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    identities: str | None = None  # yizhan provision's secrets directory: a pair a station
    insecure: bool = False
    bind: list[str] = field(default_factory=list)  # source addresses, round robin
    seed: int = 1
    # One process's shard of a larger fleet (--processes): its first station's
    # index (1-based) and the fleet's size, which fixes the sids' width.
    first: int = 1
    total: int = 0  # 0: ``stations``, a fleet of one process


class Fleet:
    def __init__(self, opts: Options, clock, truth: Truth) -> None:
        self.o = opts
        self.clock = clock
        self.truth = truth
        # One generator for the riders and random faults of every station here, drawn
        # in the order things fall due; a shard after the first seeds its own, so
        # that shards do not repeat each other's draws.
        self.rng = random.Random(opts.seed if opts.first == 1 else f"{opts.seed}/{opts.first}")
        self.sim = traffic.SimTime(clock, opts.speed)
        self.sel = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, str, int, object]] = []
        self._n = itertools.count()
        ids = station_ids(opts.prefix, opts.total or opts.stations, opts.first, opts.stations)
        self.stations = [FleetStation(sid, i, opts.seed)
                         for i, sid in enumerate(ids, start=opts.first)]
        self.by_sid = {s.sid: n for n, s in enumerate(self.stations)}
        self.mode = ["new"] * opts.stations  # new, connecting, online, off, cut
        self.last_sent = [0] * opts.stations
        self.retries = [0] * opts.stations
        self.clients = [self._client(n, s) for n, s in enumerate(self.stations)]
        self.stats = {"connects": 0, "connect_errors": 0, "published": 0, "events": 0,
                      "commands": 0, "replays": 0, "lost": 0, "faults": 0}
        self.active_faults = 0
        self._misc_slice = 0
        self._misc_at = 0.0
        self.t0 = clock.monotonic()

    # -- clients ----------------------------------------------------------

    def _client(self, n: int, st: FleetStation) -> mqtt.Client:
        o = self.o
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=st.sid, clean_session=True,
                        userdata=n, protocol=mqtt.MQTTv311)
        c.username_pw_set(o.username.replace("{sid}", st.sid), o.password)
        if o.identities or o.tls or o.cafile:
            # --identities: the station's own pair; else the one given for all.
            cert, key = ((str(f) for f in identity(o.identities, st.sid)) if o.identities
                         else (o.certfile, o.keyfile))
            c.tls_set(ca_certs=o.cafile, certfile=cert, keyfile=key)
            if o.insecure:
                c.tls_insecure_set(True)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._done_write
        return c

    def _sock_open(self, client, i, sock) -> None:
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _sock_close(self, client, i, sock) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _want_write(self, client, i, sock) -> None:
        # A silent (network_cut) socket stays out of the loop.
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _done_write(self, client, i, sock) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, client)

    def _connected(self, client, i, flags, reason_code, properties) -> None:
        st = self.stations[i]
        if reason_code.is_failure:
            self.stats["connect_errors"] += 1
            self.truth.write(self.clock.ms(), st.sid, "refused", reason=str(reason_code))
            return  # paho closes; _disconnected schedules the retry
        self.mode[i] = "online"
        self.retries[i] = 0
        self.stats["connects"] += 1
        now = self.clock.ms()
        client.subscribe(st.t_cmd, qos=1)
        self._publish(i, st.t_status, st.online(now), True)
        self._publish(i, st.t_state, st.state(now), True)
        self.truth.write(now, st.sid, "online", epoch=st.epoch, birth=st.birth,
                         last_seq=st.seq)
        for payload in st.outbox:  # events made while the link was down, in order
            self._publish(i, st.t_event, payload, False)
        st.outbox.clear()

    def _disconnected(self, client, i, flags, reason_code, properties) -> None:
        if self.mode[i] in ("off", "cut", "stopped"):
            return  # our own doing, already in the log
        st = self.stations[i]
        if self.mode[i] == "online":
            self.stats["lost"] += 1
            self.truth.write(self.clock.ms(), st.sid, "offline", reason="lost",
                             last_sent=self.last_sent[i])
        self.mode[i] = "connecting"
        self.retries[i] += 1
        self._at(min(60.0, 2.0 ** min(self.retries[i], 6)) * self.rng.uniform(0.5, 1.0),
                 "connect", i)

    def _message(self, client, i, msg) -> None:
        st = self.stations[i]
        self.stats["commands"] += 1
        now = self.clock.ms()
        resend, result, cmd = st.answer(msg.payload, now)
        for payload in resend:
            self._publish(i, st.t_event, payload, False)
        if cmd == "replay" and result is not None:
            self.stats["replays"] += 1
            self.truth.write(now, st.sid, "replay", count=len(resend))
        if cmd == "rebirth" and result is not None:
            self._publish(i, st.t_status, st.online(st.birth_ts), True)
            self._publish(i, st.t_state, st.state(now), True)
        if result is not None:
            self._publish(i, st.t_result, result, False)

    def _publish(self, i: int, t: str, payload: bytes, retain: bool) -> None:
        self.clients[i].publish(t, payload, qos=1, retain=retain)
        self.last_sent[i] = self.clock.ms()
        self.stats["published"] += 1

    def _connect(self, i: int) -> None:
        st, c, o = self.stations[i], self.clients[i], self.o
        if self.mode[i] in ("off", "cut", "stopped"):
            return  # a retry that came due while dark or cut: the fault's end connects
        c.will_set(st.t_status, st.next_birth(), qos=1, retain=True)
        self.mode[i] = "connecting"
        # By the fleet-wide index: each address takes every len(bind)-th station,
        # however the fleet is split into processes.
        bind = o.bind[(st.index - 1) % len(o.bind)] if o.bind else ""
        try:
            c.connect(o.host, o.port, o.keepalive, bind_address=bind)
        except (OSError, ValueError) as err:
            self.stats["connect_errors"] += 1
            self.truth.write(self.clock.ms(), st.sid, "connect_failed", error=str(err)[:200])
            self.retries[i] += 1
            self._at(min(60.0, 2.0 ** min(self.retries[i], 6)) * self.rng.uniform(0.5, 1.0),
                     "connect", i)

    def _drop(self, i: int) -> None:
        """Shut the socket without a DISCONNECT (the will fires) and let paho see it."""
        c = self.clients[i]
        sock = c.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        c.loop_read()  # reads the end of the stream: paho closes and forgets the socket

    # -- the heap ---------------------------------------------------------

    def _at(self, after_s: float, what: str, i: int, arg: object = None) -> None:
        heapq.heappush(self.heap, (self.clock.monotonic() + after_s, next(self._n), what, i, arg))

    def start(self) -> None:
        o = self.o
        gap = 1.0 / o.connect_rate if o.connect_rate > 0 else 0.0
        for i in range(len(self.stations)):
            self._at(i * gap, "connect", i)
            self._at(i * gap + self.rng.uniform(0, o.heartbeat), "heartbeat", i)
            self._schedule_visit(i)
            self._schedule_random_fault(i)
        check_faults(o.faults, [s.sid for s in self.stations])
        for f in o.faults:
            self._at(f.at, "fault", self.by_sid[f.sid], (f.kind, f.lasts))

    def _schedule_visit(self, i: int) -> None:
        gap = traffic.next_gap(self.rng, self.o.visits_per_hour, self.sim.now())
        if gap != float("inf"):
            self._at(gap / self.o.speed, "visit", i)

    def _schedule_random_fault(self, i: int) -> None:
        if self.o.fault_rate > 0:
            gap = self.rng.expovariate(self.o.fault_rate / 86400.0) / self.o.speed
            lasts = self.rng.uniform(*RANDOM_SPAN) / self.o.speed
            self._at(gap, "fault", i, (self.rng.choice(KINDS), lasts, True))

    def step(self, timeout: float = 0.2) -> None:
        """Run what is due, then wait at most ``timeout`` for the sockets."""
        now = self.clock.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, what, i, arg = heapq.heappop(self.heap)
            getattr(self, "_do_" + what)(i, arg)
        if self.heap:
            timeout = max(0.0, min(timeout, self.heap[0][0] - self.clock.monotonic()))
        for key, mask in self.sel.select(timeout):
            c = key.data
            if mask & selectors.EVENT_READ:
                c.loop_read()
            if mask & selectors.EVENT_WRITE and c.socket() is not None:
                c.loop_write()
        now = self.clock.monotonic()
        if now >= self._misc_at:
            self._misc_at = now + MISC_EVERY / MISC_SLICES
            s = self._misc_slice = (self._misc_slice + 1) % MISC_SLICES
            for i in range(s, len(self.clients), MISC_SLICES):
                if self.mode[i] in ("online", "connecting"):
                    self.clients[i].loop_misc()

    # -- what is due ------------------------------------------------------

    def _do_connect(self, i: int, _arg: object) -> None:
        self._connect(i)

    def _do_heartbeat(self, i: int, _arg: object) -> None:
        if self.mode[i] == "online":
            st = self.stations[i]
            self._publish(i, st.t_state, st.state(self.clock.ms()), True)
        self._at(self.o.heartbeat, "heartbeat", i)

    def _do_state(self, i: int, _arg: object) -> None:
        st = self.stations[i]
        if st.dirty and self.mode[i] == "online":
            self._publish(i, st.t_state, st.state(self.clock.ms()), True)

    def _do_visit(self, i: int, _arg: object) -> None:
        if self.mode[i] != "off":  # nobody is let in at a dark station
            self._record(i, self.stations[i].visit(self.rng, self.o.ml_per_visit))
        self._schedule_visit(i)

    def _record(self, i: int, made: list[tuple[str, dict | None]]) -> None:
        st = self.stations[i]
        now = self.clock.ms()
        for etype, data in made:
            seq, payload = st.event(now, etype, data)
            self.stats["events"] += 1
            self.truth.write(now, st.sid, "event", epoch=st.epoch, seq=seq, type=etype)
            if self.mode[i] == "online":
                self._publish(i, st.t_event, payload, False)
            else:
                st.outbox.append(payload)
        if made:
            self._at(COALESCE, "state", i)

    def _do_fault(self, i: int, arg) -> None:
        kind, lasts, *rand = arg
        st = self.stations[i]
        if kind in st.faults or self.mode[i] == "off" or (kind in LINK and self.mode[i] == "cut"):
            if rand:
                self._schedule_random_fault(i)
            return  # already in that fault, or dark: nothing happens at a dark station
        self.stats["faults"] += 1
        self.active_faults += 1
        now = self.clock.ms()
        self.truth.write(now, st.sid, "fault", kind=kind, lasts_s=lasts)
        if kind == "power_cut":
            prev, self.mode[i] = self.mode[i], "off"
            if prev == "online":
                self.truth.write(now, st.sid, "offline", reason="power_cut",
                                 last_sent=self.last_sent[i])
            self._drop(i)
        elif kind == "network_cut":
            prev, self.mode[i] = self.mode[i], "cut"
            sock = self.clients[i].socket()
            if sock is not None:
                self._sock_close(self.clients[i], i, sock)  # nothing read or written
            if prev == "online":
                self.truth.write(now, st.sid, "offline", reason="network_cut",
                                 last_sent=self.last_sent[i],
                                 will_by=now + int(1500 * self.o.keepalive))
        else:
            self._record(i, st.fault_events(kind, True))
        if lasts is not None:
            self._at(lasts, "fault_end", i, kind)
        if rand:
            self._schedule_random_fault(i)

    def _do_fault_end(self, i: int, kind: str) -> None:
        st = self.stations[i]
        self.active_faults -= 1
        self.truth.write(self.clock.ms(), st.sid, "fault_cleared", kind=kind)
        if kind in LINK:
            if self.mode[i] == "cut":
                self.mode[i] = "off"  # so that the drop below is not a "lost"
                self._drop(i)
            if self.mode[i] != "stopped":
                self.mode[i] = "connecting"
                self.retries[i] = 0
                self._connect(i)
        else:
            self._record(i, st.fault_events(kind, False))

    # -- the end ----------------------------------------------------------

    def stop(self, goodbye: bool = True, timeout: float = 10.0) -> None:
        """A clean shutdown of every connected station (``shutdown`` Status)."""
        now = self.clock.ms()
        for i, st in enumerate(self.stations):
            mode, self.mode[i] = self.mode[i], "stopped"
            if mode == "online" and goodbye:
                self._publish(i, st.t_status, st.shutdown(now), True)
                self.truth.write(now, st.sid, "offline", reason="shutdown",
                                 last_sent=self.last_sent[i])
                self.clients[i].disconnect()
            elif mode == "cut":
                self._drop(i)
        end = self.clock.monotonic() + timeout
        while self.sel.get_map() and self.clock.monotonic() < end:
            for key, mask in self.sel.select(0.2):
                c = key.data
                if mask & selectors.EVENT_READ:
                    c.loop_read()
                if mask & selectors.EVENT_WRITE and c.socket() is not None:
                    c.loop_write()

    def counts(self) -> dict[str, int]:
        out = {"online": 0, "connecting": 0, "off": 0, "cut": 0, "new": 0, "stopped": 0}
        for mode in self.mode:
            out[mode] += 1
        return out
