"""The dispenser against the simulated tank: pins, the w1_slave file, the clock."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from firmware.dispenser import Dispenser, DispenserSpec, parse_dispenser
from firmware.hardware.flow import FlowSpec
from firmware.hardware.level import AdcLevelSpec, FloatLevelSpec
from firmware.hardware.thermometer import (
    DS18B20,
    BadReading,
    ThermometerMissing,
    ThermometerSpec,
    parse_w1_slave,
)
from firmware.parts import RecordingReporter
from firmware.safety import SafetyLimits
from firmware.sim.water import WaterSim, sim_spec, w1_slave_text
from protocol.messages import Dispenser as DispenserSection
from protocol.messages import Event
from yizhan.config import ConfigError, Section

HEATER, LOW, EMPTY, FLOW = 23, 5, 6, 24


def make_spec(tmp_path: Path, **thermometer) -> DispenserSpec:
    spec = sim_spec(tmp_path)  # floats on 5/6, heater 23, flow 24, DS18B20 under tmp_path
    assert spec.thermometer is not None
    # Read in the poller, as the simulated file answers at once.
    return replace(spec, thermometer=replace(spec.thermometer, background=False, **thermometer))


class Rig:
    """A simulated tank and the dispenser reading it, on one ManualClock."""

    def __init__(self, spec, pin_factory, clock, *, dispensed_ml=0, **tank):
        self.clock = clock
        self.reporter = RecordingReporter()
        tank.setdefault("temp_c", 60.0)
        self.sim = WaterSim(spec, pin_factory, clock, **tank)  # first: it owns the pins
        self.dispenser = Dispenser(spec, self.reporter, clock, pin_factory=pin_factory,
                                   dispensed_ml=dispensed_ml)
        self.heater_pin = pin_factory.pin(spec.heater_pin) if spec.heater_pin else None

    def run(self, seconds: float, step: float = 0.25) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.monotonic()))
            self.sim.sync()
            self.dispenser.poll()

    def events(self, *types: str) -> list[tuple[str, dict]]:
        return [(t, d) for t, d in self.reporter.events if not types or t in types]

    @property
    def heating(self) -> bool:
        return bool(self.heater_pin.state)

    def close(self) -> None:
        self.dispenser.close()
        self.sim.close()


@pytest.fixture
def make_rig(pin_factory, clock):
    """``make_rig(spec, **tank)``: rigs on the test's pins and clock, closed after
    the test even when it fails (a leaked MCP3008 would haunt the next test)."""
    made: list[Rig] = []

    def make(spec, **kw):
        made.append(Rig(spec, pin_factory, clock, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def rig(tmp_path, make_rig):
    return make_rig(make_spec(tmp_path))


# -- the heater relay --------------------------------------------------------------------


def test_heater_pin_is_low_at_construction(rig):
    assert rig.heater_pin.function == "output"
    assert not rig.heating and not rig.dispenser.heater


def test_active_low_relay_is_off_at_construction(tmp_path, make_rig):
    spec = replace(make_spec(tmp_path), heater_active="low")
    r = make_rig(spec)
    assert r.heater_pin.state == 1  # an active-low relay is off with its input high
    r.run(1.0)
    assert r.heater_pin.state == 0 and r.dispenser.heater and r.sim.heater_on
    r.dispenser.safe()
    assert r.heater_pin.state == 1 and not r.sim.heater_on
    r.close()


def test_heats_once_readings_are_sane_and_holds_the_target(rig):
    rig.run(0.25)
    assert rig.heating and rig.sim.heater_on
    rig.run(20 * 60, step=2.0)  # 20 L from 60 °C with 2.5 kW: well within 20 minutes
    assert 90.0 < rig.sim.temp_c < 96.0
    assert rig.events("heater_lockout", "dispenser_fault") == []


def test_safe_and_close_leave_the_heater_off(rig):
    rig.run(0.25)
    assert rig.heating
    rig.dispenser.safe()
    assert not rig.heating
    rig.run(0.25)
    assert rig.heating  # safe() is a moment, not a lockout: the loop may heat again
    rig.dispenser.close()
    assert not rig.heating
    rig.dispenser.close()  # idempotent
    rig.dispenser.poll()  # and polling a closed dispenser does nothing
    assert not rig.heating


def test_no_heat_before_the_first_temperature(tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path))
    r.sim.silence_thermometer("gone")
    r.run(5.0)
    assert not r.heating
    assert r.events() == []  # still within the start-up grace: waiting, not a fault
    r.run(6.0)  # past sensor_timeout with nothing read
    assert not r.heating
    assert r.events("heater_lockout") == [("heater_lockout", {"reason": "sensor_silent"})]
    r.close()


# -- the level ------------------------------------------------------------------------------


def test_low_water_is_reported_and_still_heats(rig):
    rig.run(0.25)
    rig.sim.draw(rig.sim.litres * 1000 - 0.2 * rig.sim.capacity_l * 1000)  # down to 20 %
    rig.run(600.0, step=2.0)  # 14 L at 30 ml/s
    assert rig.dispenser.level_state == "low"
    assert rig.events("water_level") == [("water_level", {"level_state": "low", "level": None})]
    assert not rig.dispenser.heater_lockout


def test_empty_cuts_the_heater_and_refill_brings_it_back(rig):
    rig.run(0.25)
    assert rig.heating
    rig.sim.drain()
    rig.run(1.0)
    assert rig.heating  # the floats must settle (2 s) before it counts
    rig.run(1.5)
    assert not rig.heating
    assert rig.dispenser.level_state == "empty"
    assert rig.events() == [
        ("water_level", {"level_state": "empty", "level": None}),
        ("dispenser_fault", {"fault": "dry_boil"}),  # the element was on as it ran dry
        ("heater_lockout", {"reason": "empty"}),
    ]
    section = rig.dispenser.section()
    assert section.heater_lockout and not section.heater and section.fault == "dry_boil"

    rig.sim.refill()
    rig.run(3.0)
    assert rig.heating and rig.dispenser.level_state == "ok"
    assert rig.events()[3:] == [
        ("water_level", {"level_state": "ok", "level": None}),
        ("dispenser_fault_cleared", {"fault": "dry_boil"}),
        ("heater_lockout_cleared", {"reason": "empty"}),
    ]


def test_sloshing_float_does_not_flap(rig):
    rig.run(0.25)
    for _ in range(5):
        rig.sim.stuck_float("empty", tripped=True)
        rig.sim.stuck_float("low", tripped=True)
        rig.run(1.0)
        rig.sim.free_float()
        rig.run(1.0)
    assert rig.events() == [] and rig.heating


def test_a_stuck_float_reads_unknown_and_locks_out(rig):
    rig.run(0.25)
    rig.sim.stuck_float("low", tripped=False)  # stuck up: never says low
    rig.sim.drain()
    rig.run(12.0)  # past the start-up grace, in which an unknown level is "not yet"
    assert rig.dispenser.level_state == "unknown"
    assert not rig.heating
    types = [t for t, _ in rig.events()]
    assert types[0] == "water_level" and rig.events()[0][1]["level_state"] == "unknown"
    assert ("heater_lockout", {"reason": "level_unknown"}) in rig.events()
    assert ("dispenser_fault", {"fault": "sensor"}) in rig.events()
    assert rig.dispenser.section().online is False


# -- the thermometer ---------------------------------------------------------------------------


def test_silent_thermometer_cuts_the_heater_after_sensor_timeout(tmp_path, make_rig):
    # Failures alone never silence it here: only the age of the last good reading.
    r = make_rig(make_spec(tmp_path, max_failures=100))
    r.run(1.0)
    assert r.heating
    r.sim.silence_thermometer("crc")  # the file now fails the kernel's CRC check
    r.run(9.0)  # the last good reading is 9-10 s old
    assert r.heating
    r.run(2.0)
    assert not r.heating
    assert r.events() == [("dispenser_fault", {"fault": "sensor"}),
                          ("heater_lockout", {"reason": "sensor_silent"})]
    section = r.dispenser.section()
    assert section.temp_c is None and section.fault == "sensor" and not section.online

    r.sim.restore_thermometer()
    r.run(2.5)
    assert r.heating
    assert r.events()[2:] == [("dispenser_fault_cleared", {"fault": "sensor"}),
                              ("heater_lockout_cleared", {"reason": "sensor_silent"})]
    r.close()


def test_repeated_failures_silence_the_thermometer_at_once(rig):
    rig.run(1.0)
    rig.sim.silence_thermometer("gone")  # unplugged: the sysfs directory disappears
    rig.run(4.5)  # reads at 2 s and 4 s fail; the third, at 6 s, makes it silent
    assert rig.heating
    rig.run(1.0)
    assert not rig.heating
    assert ("heater_lockout", {"reason": "sensor_silent"}) in rig.events()


def test_over_temperature(rig):
    rig.run(1.0)
    rig.sim.set_temperature(99.0)
    rig.run(2.0)
    assert not rig.heating
    assert rig.events() == [("dispenser_fault", {"fault": "overtemp"}),
                            ("heater_lockout", {"reason": "overtemp"})]
    rig.sim.set_temperature(95.0)
    rig.run(2.0)
    assert rig.dispenser.heater_lockout  # not yet 5 °C below the limit
    rig.sim.set_temperature(92.0)
    rig.run(2.0)
    assert not rig.dispenser.heater_lockout and rig.heating
    assert [t for t, _ in rig.events()][2:] == ["dispenser_fault_cleared",
                                               "heater_lockout_cleared"]


def test_a_jump_to_the_power_on_reset_value_is_not_believed(rig):
    rig.run(1.0)
    rig.sim.silence_thermometer("reset")  # 85.000 °C, 60 °C a moment ago: a brown-out
    rig.run(2.0)
    assert rig.dispenser.temp_c == pytest.approx(60.0, abs=0.1)
    rig.run(6.0)  # three reads in a row of the same: the sensor is failing
    assert rig.dispenser.temp_c is None and not rig.heating
    assert ("heater_lockout", {"reason": "sensor_silent"}) in rig.events()


def test_out_of_range_reading(rig):
    rig.run(1.0)
    rig.sim.set_temperature(-20.0)  # no water station sits in a freezer: a broken sensor
    rig.run(2.0)
    assert not rig.heating
    assert ("heater_lockout", {"reason": "sensor_range"}) in rig.events()


def test_max_on_time_then_cool_down(tmp_path, make_rig):
    # A heater too weak for its tank never reaches the target: it must not run forever.
    r = make_rig(make_spec(tmp_path), heater_w=300.0, temp_c=20.0)
    r.run(29 * 60, step=5.0)
    assert r.heating
    r.run(70, step=5.0)
    assert not r.heating
    assert r.events() == [("dispenser_fault", {"fault": "heater"}),
                          ("heater_lockout", {"reason": "max_on_time"})]
    r.run(9 * 60, step=5.0)
    assert not r.heating  # the cool-down is 10 minutes
    r.run(90, step=5.0)
    assert r.heating
    assert [t for t, _ in r.events()][2:] == ["dispenser_fault_cleared",
                                             "heater_lockout_cleared"]
    r.close()


def test_recovery_only_when_everything_is_clear(rig):
    rig.run(1.0)
    rig.sim.drain()
    rig.sim.silence_thermometer("crc")
    rig.run(12.0)
    assert rig.events("heater_lockout") == [("heater_lockout", {"reason": "empty"})]
    rig.sim.refill()
    rig.run(5.0)
    assert rig.dispenser.level_state == "ok"
    assert not rig.heating and rig.dispenser.heater_lockout  # the thermometer is still silent
    rig.sim.restore_thermometer()
    rig.run(2.5)
    assert rig.heating and not rig.dispenser.heater_lockout
    assert rig.events("heater_lockout_cleared") == [
        ("heater_lockout_cleared", {"reason": "empty"})]


def test_background_reads(tmp_path, make_rig):
    spec = replace(make_spec(tmp_path),
                   thermometer=replace(make_spec(tmp_path).thermometer, background=True))
    r = make_rig(spec)
    r.dispenser.poll()  # asks the reader thread for a reading
    deadline = time.monotonic() + 5
    while r.dispenser.temp_c is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.dispenser.temp_c == pytest.approx(60.0, abs=0.1)
    r.close()


def test_a_hung_read_cuts_the_heater(tmp_path, pin_factory, clock):
    """The 1-wire bus can hang a read in the kernel; the loop must not wait
    for it, and the reading it never got ages into silence."""
    spec = ThermometerSpec(device="28-00000000beef", base=tmp_path, background=True)
    path = spec.path
    path.parent.mkdir(parents=True)
    path.write_text(w1_slave_text(60.0))
    full = DispenserSpec(level=FloatLevelSpec(LOW, EMPTY), thermometer=spec, heater_pin=HEATER)
    sim = WaterSim(replace(full, thermometer=None), pin_factory, clock)  # the floats only
    reporter = RecordingReporter()
    d = Dispenser(full, reporter, clock, pin_factory=pin_factory)
    d.poll()
    deadline = time.monotonic() + 5
    while d.temp_c is None and time.monotonic() < deadline:
        time.sleep(0.01)
    d.poll()
    assert d.heater
    path.unlink()
    os.mkfifo(path)  # opening it for reading blocks until someone writes: a hung read
    try:
        for _ in range(12):
            clock.advance(1.0)
            d.poll()
        assert not d.heater and not pin_factory.pin(HEATER).state
        assert ("heater_lockout", {"reason": "sensor_silent"}) in reporter.events
        assert not d._thermometer.settled  # the read asked for is still hanging
        # The reader is stuck in open(): a writer can join it (with no reader this
        # would fail with ENXIO); that lets the hung read go.
        deadline = time.monotonic() + 5
        while True:
            try:
                writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.monotonic() < deadline, "the reader never tried the sensor"
                time.sleep(0.01)
        # The sensor answers again (a read after the hung one finds it), then the
        # hung read is let go (an empty file: a failure). Every request the polls
        # made while it hung is answered: the reader is settled.
        good = path.with_name("w1_slave.good")
        good.write_text(w1_slave_text(60.0))
        os.replace(good, path)
        os.close(writer)
        deadline = time.monotonic() + 5
        while not d._thermometer.settled:
            assert time.monotonic() < deadline, "the let-go read never settled"
            time.sleep(0.01)
    finally:
        d.close()
        sim.close()


def test_parse_w1_slave():
    assert parse_w1_slave(w1_slave_text(92.5)) == 92.5
    assert parse_w1_slave(w1_slave_text(-10.125)) == -10.125
    with pytest.raises(BadReading, match="CRC"):
        parse_w1_slave(w1_slave_text(None))
    with pytest.raises(BadReading):
        parse_w1_slave("")
    with pytest.raises(BadReading):
        parse_w1_slave("00 : crc=00 YES\n00 t=\n")


def test_ds18b20_read_errors(tmp_path):
    sensor = DS18B20("28-000000000001", tmp_path)
    with pytest.raises(ThermometerMissing):
        sensor.read()
    sensor.path.parent.mkdir()
    sensor.path.write_text(w1_slave_text(None))
    with pytest.raises(BadReading):
        sensor.read()
    sensor.path.write_text(w1_slave_text(21.5))
    assert sensor.read() == 21.5


# -- the flow meter ------------------------------------------------------------------------------


def test_flow_pulses_add_up_to_dispensed_ml(tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path), dispensed_ml=123_400)
    r.run(0.25)
    r.sim.draw(450)  # 200 pulses of 2.25 ml
    r.run(20.0, step=1.0)
    assert r.sim.pulses == 200
    assert r.dispenser.dispensed_ml == 123_400 + 450
    assert r.dispenser.section().dispensed_ml == 123_850
    r.close()


def test_random_riders_draw_through_the_meter(tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path), draws_per_hour=60.0, seed=3)
    r.run(30 * 60, step=10.0)
    assert r.sim.drawn_ml > 0
    assert r.dispenser.dispensed_ml == pytest.approx(r.sim.drawn_ml, abs=2.25)
    r.close()


def test_each_cup_is_a_draw_and_water_drawn_reports_them_every_report_every(
        tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path))
    r.run(0.25)
    r.sim.draw(450)  # 200 pulses of 2.25 ml
    r.run(20.0, step=0.25)
    r.sim.draw(225)  # 100 pulses
    r.run(20.0, step=0.25)
    assert r.events("water_drawn") == []  # not before report_every
    assert r.dispenser.draws_pending == (2, 300)
    r.run(15 * 60.0, step=5.0)
    assert r.events("water_drawn") == [("water_drawn", {"draws": 2, "ml": 675})]
    r.run(15 * 60.0, step=5.0)  # nothing drawn: no event with draws 0
    assert len(r.events("water_drawn")) == 1
    r.close()


def test_random_riders_water_drawn_adds_up_to_what_they_drew(tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path), draws_per_hour=30.0, seed=5)
    r.run(2 * 3600, step=0.5)
    r.dispenser.close()  # the draws since the last report, and one running, go out now
    drawn = r.events("water_drawn")
    assert len(drawn) >= 4
    assert sum(d["ml"] for _, d in drawn) == pytest.approx(r.sim.pulses * 2.25, abs=len(drawn))
    # Each event is a valid contract §6 water_drawn.
    for _, d in drawn:
        ev = Event.from_dict({"v": 1, "sid": "yh-01", "epoch": "9f2c01ab", "ts": 1,
                              "synced": True, "seq": 1, "type": "water_drawn", "data": d})
        assert ev.data == d
    r.close()


def test_a_draw_running_at_close_is_reported(tmp_path, make_rig):
    r = make_rig(make_spec(tmp_path))
    r.run(0.25)
    r.sim.draw(2250)  # 1 000 pulses, longer than the steps below
    r.run(1.0, step=0.25)
    r.dispenser.close()
    (_, data), = r.events("water_drawn")
    assert data["draws"] == 1 and 0 < data["ml"] <= 2250
    assert data["ml"] == round(r.sim.pulses * 2.25)
    r.close()


def test_without_a_flow_meter_nothing_is_drawn(tmp_path, make_rig):
    r = make_rig(replace(make_spec(tmp_path), flow=None))
    r.run(20 * 60.0, step=5.0)
    r.dispenser.close()
    assert r.events("water_drawn") == []
    r.close()


# -- the State section -------------------------------------------------------------------------


def test_section_is_a_valid_contract_dispenser(rig):
    rig.run(2.5)
    section = rig.dispenser.section()
    assert isinstance(section, DispenserSection)
    assert DispenserSection.from_dict(section.to_dict(), "dispenser.") == section
    assert section.online and section.level is None and section.level_state == "ok"
    assert section.temp_c == pytest.approx(rig.sim.temp_c, abs=0.1)
    assert section.heater and not section.heater_lockout and section.fault is None
    assert section.dispensed_ml == 0
    assert rig.dispenser.describe() == {"dispenser": True}


def test_changes_ask_for_a_state(rig):
    rig.run(0.25)
    before = rig.reporter.changes
    rig.sim.set_temperature(80.0)  # a big move of the temperature
    rig.run(2.5)
    assert rig.reporter.changes > before


def test_without_heater_or_flow(tmp_path, make_rig):
    spec = replace(make_spec(tmp_path), heater_pin=None, flow=None)
    r = make_rig(spec)
    r.run(2.5)
    section = r.dispenser.section()
    assert not section.heater and not section.heater_lockout and section.dispensed_ml is None
    r.sim.drain()
    r.run(3.0)
    assert [t for t, _ in r.events()] == ["water_level"]  # no heater: no lockout to report
    r.close()


# -- an MCP3008 level sensor ----------------------------------------------------------------------


def test_mcp3008_level(tmp_path, make_rig):
    spec = replace(make_spec(tmp_path), level=AdcLevelSpec(channel=2))
    r = make_rig(spec, litres=18.0)
    r.run(0.5)
    assert r.dispenser.level == pytest.approx(0.9, abs=0.002)
    assert r.dispenser.level_state == "ok"
    # Draw down to 24 %: low; then 23 %..29 % ripples do not bring it back (clear_margin 5 %).
    r.sim.draw((18.0 - 0.24 * 20) * 1000)
    r.run(500, step=1.0)
    assert r.dispenser.level_state == "low"
    r.sim.refill(1.0)  # 29 %
    r.run(5.0)
    assert r.dispenser.level_state == "low"
    r.sim.refill(1.0)  # 34 %
    r.run(5.0)
    assert r.dispenser.level_state == "ok"
    r.sim.drain()
    r.run(5.0)
    assert r.dispenser.level_state == "empty" and not r.heating
    reported = r.events("water_level")
    assert [d["level_state"] for _, d in reported] == ["low", "ok", "empty"]
    assert [d["level"] for _, d in reported] == pytest.approx([0.25, 0.34, 0.0], abs=0.006)
    r.close()


def test_mcp3008_sensor_out_of_its_range_reads_unknown(tmp_path, make_rig):
    # A 0.5-4.5 V sensor reads 0.15..0.85 of vref; 0 V is a cut wire, not an empty tank.
    spec = replace(make_spec(tmp_path), level=AdcLevelSpec(channel=0, zero=0.15, full=0.85))
    r = make_rig(spec)
    r.run(0.5)
    assert r.dispenser.level_state == "ok" and r.heating
    r.sim.cut_level_wire()
    r.run(12.0)
    assert r.dispenser.level_state == "unknown" and r.dispenser.level is None
    assert not r.heating
    assert ("heater_lockout", {"reason": "level_unknown"}) in r.events()
    r.close()


def test_a_cut_float_wire_reads_empty(rig):
    # Fail-safe wiring: with the contact gone, the pull-ups say "tripped".
    rig.run(0.5)
    rig.sim.cut_level_wire()
    rig.run(3.0)
    assert rig.dispenser.level_state == "empty" and not rig.heating


def test_a_half_built_dispenser_leaves_the_heater_off_and_its_pins_free(
        tmp_path, pin_factory, clock):
    from gpiozero.exc import GPIOPinInUse

    spec = make_spec(tmp_path)
    clash = replace(spec, flow=FlowSpec(pin=HEATER))  # refused by the configuration, not here
    with pytest.raises(GPIOPinInUse):
        Dispenser(clash, RecordingReporter(), clock, pin_factory=pin_factory)
    assert pin_factory.pin(HEATER).state == 0
    Dispenser(spec, RecordingReporter(), clock, pin_factory=pin_factory).close()


def test_building_the_simulation_after_the_dispenser_is_refused(tmp_path, pin_factory, clock):
    from firmware.sim.model import SimulatorError

    spec = make_spec(tmp_path)
    d = Dispenser(spec, RecordingReporter(), clock, pin_factory=pin_factory)
    with pytest.raises(SimulatorError, match="build the simulated hardware first"):
        WaterSim(spec, pin_factory, clock)
    d.close()


# -- configuration --------------------------------------------------------------------------------

FULL = {
    "level": {"type": "floats", "low_pin": 5, "empty_pin": 6},
    "thermometer": {"type": "ds18b20", "device": "28-0316a2795a1f"},
    "heater_pin": 23,
    "flow": {"pin": 24},
}


def section(data):
    return Section.of({"dispenser": data}, "dispenser")


def test_parse_dispenser():
    spec = parse_dispenser(section(FULL))
    assert spec == DispenserSpec(
        level=FloatLevelSpec(low_pin=5, empty_pin=6),
        thermometer=ThermometerSpec(device="28-0316a2795a1f"),
        heater_pin=23,
        flow=FlowSpec(pin=24, ml_per_pulse=2.25, report_every=900.0),
    )
    assert spec.pins() == {5: "dispenser.level.low_pin", 6: "dispenser.level.empty_pin",
                           23: "dispenser.heater_pin", 24: "dispenser.flow.pin"}
    assert parse_dispenser(None) is None


def test_parse_dispenser_mcp3008_and_safety():
    spec = parse_dispenser(section({
        "level": {"type": "mcp3008", "channel": 1, "low": 0.3, "empty": 0.1, "settle": "5s"},
        "thermometer": {"device": "28-0316a2795a1f", "base": "/tmp/w1", "sensor_timeout": "20s",
                        "read_every": "1s"},
        "heater_pin": 23, "heater_active": "low",
        "safety": {"target_c": 90, "max_temp_c": 96, "max_on": "20m", "cooldown": "5m"},
    }))
    assert spec.level == AdcLevelSpec(channel=1, low=0.3, empty=0.1, settle=5.0)
    assert spec.thermometer.base == Path("/tmp/w1") and spec.thermometer.read_every == 1.0
    assert spec.heater_active == "low"
    assert spec.safety == SafetyLimits(target_c=90.0, max_temp_c=96.0, max_on=1200.0,
                                       cooldown=300.0, sensor_timeout=20.0)


def drop(d, *path):
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    inner = d
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return d


def with_(d, **changes):
    return {**d, **changes}


@pytest.mark.parametrize(("data", "key", "words"), [
    (drop(FULL, "level"), "dispenser.level", "is required"),
    (drop(FULL, "level", "low_pin"), "dispenser.level.low_pin", "is required"),
    (with_(FULL, level={"type": "sonar"}), "dispenser.level.type", "floats, mcp3008"),
    (with_(FULL, level={"type": "floats", "low_pin": 5, "empty_pin": 5}),
     "dispenser.level.empty_pin", "already used"),
    (with_(FULL, heater_pin=6), "dispenser.heater_pin", "already used"),
    (drop(FULL, "thermometer"), "dispenser.thermometer", "heater_pin is set"),
    (with_(FULL, thermometer={"device": "temp0"}), "dispenser.thermometer.device", "match"),
    (with_(FULL, thermometer={"device": "28-0316a2795a1f", "sensor_timeout": "0s"}),
     "dispenser.thermometer.sensor_timeout", "longer than zero"),
    (with_(FULL, level={"type": "mcp3008", "channel": 8}), "dispenser.level.channel", "0 to 7"),
    (with_(FULL, level={"type": "mcp3008", "channel": 0, "low": 0.1, "empty": 0.2}),
     "dispenser.level.empty", "below low"),
    (with_(FULL, level={"type": "mcp3008", "channel": 0}, heater_pin=10),
     "dispenser.heater_pin", "SPI0"),
    (with_(FULL, flow={"ml_per_pulse": 2}), "dispenser.flow.pin", "is required"),
    (with_(FULL, flow={"pin": 24, "report_every": 0}), "dispenser.flow.report_every",
     "longer than zero"),
    (with_(FULL, flow={"pin": 24, "report_every": 10**30}), "dispenser.flow.report_every",
     "at most 1 day"),
    (with_(FULL, safety={"target_c": 99}), "dispenser.safety", "max_temp_c"),
    (with_(FULL, safety={"max_on": "0s"}), "dispenser.safety.max_on", "longer than zero"),
    (with_(FULL, heater="on"), "dispenser.heater", "unknown key"),
])
def test_parse_dispenser_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as err:
        parse_dispenser(section(data))
    assert err.value.key == key
    assert words in str(err.value)


def test_thread_safe_close_while_polling(rig):
    # The agent may close from a signal path while the loop polls.
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            rig.dispenser.poll()

    t = threading.Thread(target=loop)
    t.start()
    rig.dispenser.close()
    stop.set()
    t.join(5)
    assert not rig.heating
