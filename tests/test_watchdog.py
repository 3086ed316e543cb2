"""sd_notify datagrams to a real AF_UNIX socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import uuid

from yizhan.watchdog import Notifier, Watchdog


def test_ready_status_stopping_and_ping(systemd):
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert n.ready() and n.status("connected\nto the hub") and n.ping() and n.stopping()
    assert systemd.read() == ["READY=1", "STATUS=connected to the hub", "WATCHDOG=1",
                              "STOPPING=1"]


def test_abstract_namespace_socket():
    name = f"yizhan-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_outside_systemd_everything_is_a_quiet_no_op():
    n = Notifier.from_env({})
    assert not n.ready() and not n.ping() and n.interval() is None and n.failures == 0


def test_a_vanished_socket_is_logged_and_counted(tmp_path, caplog):
    n = Notifier(str(tmp_path / "gone"))
    assert not n.ping()
    assert n.failures == 1 and "cannot notify systemd" in caplog.text


def test_interval_is_half_of_watchdog_usec_and_only_for_this_process():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).interval() == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).interval() == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": "1"}).interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "soon"}).interval() is None


def test_pings_at_the_interval_only_while_healthy(systemd, clock):
    link_ok = [True]
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "10000000"})
    dog = Watchdog(n, clock, checks={"mqtt": lambda: link_ok[0]})
    assert dog.interval == 5.0
    assert dog.tick()  # the first tick pings at once
    assert not dog.tick()  # not due yet
    clock.advance(5.0)
    assert dog.tick()
    assert systemd.read() == ["WATCHDOG=1", "WATCHDOG=1"]

    link_ok[0] = False
    clock.advance(5.0)
    assert not dog.tick() and not dog.tick()
    assert systemd.read() == ["STATUS=unhealthy: mqtt"]  # said once, no ping

    link_ok[0] = True
    assert dog.tick()
    assert systemd.read() == ["STATUS=running", "WATCHDOG=1"]


def test_a_check_that_raises_counts_as_failing(systemd, clock):
    def broken() -> bool:
        raise RuntimeError("bug")

    n = Notifier(systemd.address, watchdog_usec=2_000_000)
    dog = Watchdog(n, clock, checks={"loop": lambda: True, "broken": broken})
    assert not dog.tick()
    assert dog.failing == ["broken"]  # "loop" passes: tick() is the loop's beat
    assert systemd.read() == ["STATUS=unhealthy: broken"]


def test_without_a_watchdog_tick_does_nothing(systemd, clock):
    dog = Watchdog(Notifier(systemd.address), clock)
    assert not dog.tick()
    assert systemd.read() == []


def test_a_stalled_loop_stops_the_pings_of_a_pinging_thread(systemd, clock):
    n = Notifier(systemd.address, watchdog_usec=10_000_000)
    dog = Watchdog(n, clock)  # stall defaults to the interval, 5 s
    assert not dog.ping_if_due()  # the loop has not beaten yet
    dog.beat()
    assert dog.ping_if_due()
    clock.advance(5.0)
    assert dog.ping_if_due()  # last beat exactly 5 s ago: still alive
    clock.advance(5.0)
    assert not dog.ping_if_due()
    assert systemd.read() == ["STATUS=unhealthy: loop", "STATUS=running", "WATCHDOG=1",
                              "WATCHDOG=1", "STATUS=unhealthy: loop"]
