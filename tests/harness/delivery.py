"""A station's delivery path — Journal, StationLink, Outbox — without the rest of the agent.

In-process, :class:`DeliveryStation` runs the outbox's pump on a thread as the
station loop would. As a program (``python -m tests.harness.delivery``) it is a
station process that records ``--total`` events one by one while delivering
them, then drains its outbox and exits 0: a test SIGKILLs it half-way and
starts it again on the same data directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from firmware.journal import Journal
from firmware.link import StationLink
from firmware.outbox import Outbox
from yizhan.clock import SYSTEM_CLOCK, Clock
from yizhan.config import MqttConfig

SID = "yh-chumen-01"


class DeliveryStation:
    """Journal + link + outbox on ``broker``, the pump on its own thread every ``tick``."""

    def __init__(self, broker: Any, data_dir: Path | str, sid: str = SID, *,
                 clock: Clock = SYSTEM_CLOCK, window: int = 20, tick: float = 0.02,
                 keepalive: int = 5, pump_on_birth: bool = False,
                 username: str | None = None, password: str | None = None,
                 **link_options: Any) -> None:
        self.clock = clock
        # The worst case for ordering: a pump inside the connect callback, before
        # paho re-sends what it held from the last connection.
        self.pump_on_birth = pump_on_birth
        self.tick = tick
        self.journal = Journal(data_dir)
        self.births: int = 0
        self.inbound: list[object] = []
        link_options.setdefault("reconnect_min", 0.1)
        link_options.setdefault("reconnect_max", 0.5)
        self.link = StationLink(
            sid, MqttConfig(host=broker.host, port=broker.port, keepalive=keepalive,
                            username=username, password=password),
            self.journal.epoch, self.journal.next_rev, self._birth_info,
            on_birth=self._on_birth, on_inbound=self.inbound.append, clock=clock,
            **link_options)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.outbox = Outbox(self.journal, self.link, clock, window, on_wake=self._wake.set)
        self._pump: threading.Thread | None = None
        self.pump_errors: list[BaseException] = []

    def _birth_info(self) -> tuple:
        return (self.clock.ms(), True, self.journal.last_seq, "test", {})

    def _on_birth(self) -> None:
        self.births += 1
        if self.pump_on_birth:
            self.outbox.pump()

    def start(self, pump: bool = True, timeout: float = 5.0) -> DeliveryStation:
        self.link.start()
        if not self.link.connected.wait(timeout):
            raise AssertionError(f"the link did not connect within {timeout} s")
        if pump:
            self.start_pump()
        return self

    def start_pump(self) -> None:
        """Run the pump on its own thread (``start(pump=False)`` leaves it held)."""
        self._pump = threading.Thread(target=self._run, name="pump", daemon=True)
        self._pump.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.outbox.pump()
            except BaseException as err:  # the test asserts there were none
                self.pump_errors.append(err)
                raise
            self._wake.wait(self.tick)
            self._wake.clear()

    def record(self, n: int, type_: str = "visit") -> list[int]:
        """Record ``n`` events (as parts would, journal first) and wake the pump."""
        seqs = [self.journal.append_event(self.clock.ms(), True, type_, {"count": 1})
                for _ in range(n)]
        self._wake.set()
        return seqs

    def wait_drained(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.outbox.size() or self.outbox.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"outbox not drained: {self.outbox.size()} unsent")
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(5)
        self.link.stop()
        self.journal.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--total", type=int, required=True, help="record events up to this seq")
    p.add_argument("--interval", type=float, default=0.005, help="seconds between events")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    class _Broker:
        host, port = "127.0.0.1", args.port

    station = DeliveryStation(_Broker, args.data).start()
    while station.journal.last_seq < args.total:
        station.record(1)
        print(station.journal.last_seq, flush=True)
        time.sleep(args.interval)
    station.wait_drained(timeout=20)
    station.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
