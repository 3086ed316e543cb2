"""Occupancy: PIR bursts counted into visits on the test's clock.

gpiozero's MotionSensor samples its pin on a thread of its own, in real time;
the tests wait (bounded) for it to see each change, while every rule about
time — re-arming, flushing — runs on the ManualClock.
"""

from __future__ import annotations

import time

import pytest

from firmware.occupancy import Occupancy, OccupancySpec, parse_occupancy
from firmware.parts import RecordingReporter
from firmware.sim.doors import PirSim
from yizhan.config import ConfigError, Section

# Sampled at 100 Hz so that each wait for the sampling thread is short.
SPEC = OccupancySpec(pin=22, sample_rate=100.0)


def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def pir(pin_factory):
    return PirSim(SPEC, pin_factory)  # built first: it drives the sensor's output pin


@pytest.fixture
def occupancy(pir, reporter, clock, pin_factory):
    occ = Occupancy(SPEC, reporter, clock, pin_factory=pin_factory)
    # The sensor's first sample is its starting point, never an edge: let it take one.
    assert occ.sensor.wait_for_no_motion(timeout=5)
    yield occ
    occ.close()


def burst(occ: Occupancy, pir: PirSim) -> None:
    """Someone moves, then is still; wait until the sensor has seen both."""
    pir.set(True)
    wait_until(lambda: occ.motion, "motion")
    pir.set(False)
    wait_until(lambda: not occ.motion, "the end of motion")


def test_one_visit_per_burst_rearmed_after_30_s(occupancy, pir, clock):
    burst(occupancy, pir)
    assert occupancy.pending == 1
    clock.advance(10)  # the same rider moves again 10 s later: the same visit
    burst(occupancy, pir)
    assert occupancy.pending == 1
    clock.advance(29)  # 29 s of stillness since the last motion: still the same visit
    burst(occupancy, pir)
    assert occupancy.pending == 1
    clock.advance(30)  # quiet for the whole re-arm time: a new visit
    burst(occupancy, pir)
    assert occupancy.pending == 2


def test_long_continuous_motion_is_one_visit(occupancy, pir, clock):
    pir.set(True)
    wait_until(lambda: occupancy.motion, "motion")
    clock.advance(600)  # a rider sits ten minutes, the PIR never lets go
    pir.set(False)
    wait_until(lambda: not occupancy.motion, "the end of motion")
    assert occupancy.pending == 1


def test_poll_reports_visits_every_flush_every(occupancy, pir, reporter, clock):
    burst(occupancy, pir)
    clock.advance(60)
    burst(occupancy, pir)
    clock.advance(14 * 60 - 60)
    occupancy.poll()
    assert reporter.events == []  # 14 minutes: not yet
    clock.advance(60)
    occupancy.poll()
    assert reporter.events == [("visit", {"count": 2})]
    assert occupancy.pending == 0
    clock.advance(15 * 60)
    occupancy.poll()  # nobody came: no event with a zero count
    assert reporter.events == [("visit", {"count": 2})]


def test_flush_and_close_report_what_is_counted(occupancy, pir, reporter, clock):
    burst(occupancy, pir)
    occupancy.flush()
    assert reporter.events == [("visit", {"count": 1})]
    occupancy.flush()  # nothing new
    clock.advance(60)
    burst(occupancy, pir)
    occupancy.close()  # shutdown: the last count is not lost
    occupancy.close()
    assert reporter.events == [("visit", {"count": 1}), ("visit", {"count": 1})]
    occupancy.poll()  # harmless after close


def test_describe_is_empty(occupancy):
    assert occupancy.describe() == {}


def test_parse_occupancy():
    sec = Section.of({"occupancy": {"pin": 22, "rearm": "45s", "flush_every": "5m"}},
                     "occupancy")
    assert parse_occupancy(sec) == OccupancySpec(pin=22, rearm=45.0, flush_every=300.0)
    assert parse_occupancy(None) is None


@pytest.mark.parametrize(("data", "key"), [
    ({}, "occupancy.pin"),
    ({"pin": 1}, "occupancy.pin"),
    ({"pin": 22, "flush_every": "0s"}, "occupancy.flush_every"),
    ({"pin": 22, "rearm": "later"}, "occupancy.rearm"),
    ({"pin": 22, "pir": True}, "occupancy.pir"),
])
def test_parse_occupancy_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_occupancy(Section.of({"occupancy": data}, "occupancy"))
    assert err.value.key == key
