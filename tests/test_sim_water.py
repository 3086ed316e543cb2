"""The simulated tank, doors and riders: what they put on the pins and in the files."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from firmware.dispenser import DispenserSpec
from firmware.doors import Doors, DoorSpec
from firmware.hardware.flow import FlowSpec
from firmware.hardware.level import AdcLevelSpec, FloatLevelSpec, open_mcp3008
from firmware.hardware.thermometer import ThermometerSpec, parse_w1_slave
from firmware.occupancy import Occupancy, OccupancySpec
from firmware.parts import RecordingReporter
from firmware.sim.doors import DoorSim, PirSim, Traffic
from firmware.sim.model import SimulatorError
from firmware.sim.water import (
    MockMCP3008,
    WaterSim,
    dallas_crc8,
    sim_spec,
    w1_slave_text,
)
from yizhan.clock import Clock


@pytest.fixture
def spec(tmp_path):
    return sim_spec(tmp_path)


@pytest.fixture
def make_sim(pin_factory, clock):
    made: list[WaterSim] = []

    def make(spec, **kw):
        made.append(WaterSim(spec, pin_factory, clock, **kw))
        return made[-1]

    yield make
    for sim in made:
        sim.close()


def w1_temperature(spec: DispenserSpec) -> float:
    return parse_w1_slave(spec.thermometer.path.read_text())


# -- the floats ------------------------------------------------------------------------------


def test_floats_follow_the_level(spec, make_sim, pin_factory):
    sim = make_sim(spec, litres=18.0)
    low, empty = pin_factory.pin(5), pin_factory.pin(6)
    assert (low.state, empty.state) == (0, 0)  # both floats buoyed
    sim.draw(18_000 - 4_000)  # down to 20 %
    sim.tick(600)
    assert sim.level == pytest.approx(0.2)
    assert (low.state, empty.state) == (1, 0)  # tripped reads high: the safe way round
    sim.drain()
    assert (low.state, empty.state) == (1, 1)
    sim.refill()
    assert sim.level == 1.0 and (low.state, empty.state) == (0, 0)


def test_floats_active_low(tmp_path, make_sim, pin_factory):
    spec = replace(sim_spec(tmp_path), level=FloatLevelSpec(5, 6, active="low"))
    sim = make_sim(spec, litres=18.0)
    assert (pin_factory.pin(5).state, pin_factory.pin(6).state) == (1, 1)
    sim.drain()
    assert (pin_factory.pin(5).state, pin_factory.pin(6).state) == (0, 0)


def test_pull_ups_do_not_move_a_driven_pin(spec, make_sim, pin_factory):
    from gpiozero import DigitalInputDevice

    make_sim(spec, litres=18.0)
    # What the dispenser does: an input with its pull-up, on a pin the float holds low.
    device = DigitalInputDevice(5, pull_up=True, pin_factory=pin_factory)
    assert pin_factory.pin(5).state == 0 and device.is_active
    device.close()


def test_stuck_float_and_a_cut_wire(spec, make_sim, pin_factory):
    sim = make_sim(spec, litres=18.0)
    sim.stuck_float("low")  # stuck where it is: buoyed
    sim.drain()
    assert (pin_factory.pin(5).state, pin_factory.pin(6).state) == (0, 1)
    sim.free_float("low")
    assert pin_factory.pin(5).state == 1
    sim.refill()
    sim.stuck_float("empty", tripped=True)
    assert pin_factory.pin(6).state == 1
    sim.free_float()
    assert pin_factory.pin(6).state == 0
    with pytest.raises(ValueError):
        sim.stuck_float("middle")


# -- heat ---------------------------------------------------------------------------------------


def test_the_relay_pin_heats_the_water(spec, make_sim, pin_factory):
    from gpiozero import OutputDevice

    sim = make_sim(spec, litres=10.0, temp_c=20.0)
    relay = OutputDevice(23, initial_value=False, pin_factory=pin_factory)
    sim.tick(60)
    assert sim.temp_c == pytest.approx(20.0, abs=0.2)  # it only drifts toward the room
    relay.on()
    assert sim.heater_on
    sim.tick(600)  # 2.5 kW into 10 L for 10 minutes: about +36 °C
    assert 50.0 < sim.temp_c < 60.0
    relay.off()
    hot = sim.temp_c
    sim.tick(3600)
    assert sim.ambient_c < sim.temp_c < hot  # cooling, slowly
    relay.close()


def test_water_boils_at_100_and_a_dry_tank_overheats(spec, make_sim, pin_factory):
    from gpiozero import OutputDevice

    sim = make_sim(spec, litres=2.0, temp_c=90.0)
    relay = OutputDevice(23, initial_value=True, pin_factory=pin_factory)
    sim.tick(600)
    assert sim.temp_c == 100.0
    sim.drain()
    sim.tick(60)
    assert sim.temp_c > 110.0  # the element's own mass, with no water to take the heat
    relay.close()


def test_an_unconfigured_relay_pin_is_not_energised(tmp_path, make_sim):
    sim = make_sim(replace(sim_spec(tmp_path), heater_active="low"))
    assert not sim.heater_on  # an input pin reading low does not switch an active-low relay


def test_refill_mixes_cold_water(spec, make_sim):
    sim = make_sim(spec, litres=10.0, temp_c=95.0, inlet_c=15.0, capacity_l=20.0)
    sim.refill()
    assert sim.litres == 20.0 and sim.temp_c == pytest.approx(55.0)


def test_staff_refill_a_low_tank_after_auto_refill_seconds(spec, make_sim):
    sim = make_sim(spec, litres=4.0, auto_refill=1800.0)
    sim.tick(1799)
    assert sim.litres == 4.0
    sim.tick(2)
    assert sim.litres == sim.capacity_l


# -- the thermometer's file ---------------------------------------------------------------------


def test_w1_slave_is_the_kernels_format(spec, make_sim):
    sim = make_sim(spec, temp_c=92.53)
    text = spec.thermometer.path.read_text()
    first, second = text.splitlines()
    assert first.endswith("YES") and second.split(" t=")[0] == first.split(" :")[0]
    scratch = bytes.fromhex(first.split(" :")[0].replace(" ", ""))
    assert dallas_crc8(scratch[:8]) == scratch[8]
    assert w1_temperature(spec) == 92.5  # 12 bits: sixteenths of a degree
    sim.set_temperature(-0.5)
    assert w1_temperature(spec) == -0.5


def test_w1_slave_text_matches_a_real_sensor():
    # Captured from a DS18B20 at 23.125 °C.
    assert w1_slave_text(23.125) == ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n"
                                     "72 01 4b 46 7f ff 0e 10 57 t=23125\n")


def test_silence_and_restore_the_thermometer(spec, make_sim):
    sim = make_sim(spec, temp_c=40.0)
    sim.silence_thermometer("crc")
    assert "NO" in spec.thermometer.path.read_text()
    sim.silence_thermometer("gone")
    assert not spec.thermometer.path.parent.exists()
    sim.tick(10)
    assert not spec.thermometer.path.parent.exists()
    sim.restore_thermometer()
    assert w1_temperature(spec) == pytest.approx(40.0, abs=0.1)
    with pytest.raises(ValueError):
        sim.silence_thermometer("loud")


def test_never_writes_into_the_real_sysfs(pin_factory, clock):
    spec = DispenserSpec(level=FloatLevelSpec(5, 6), thermometer=ThermometerSpec("28-000000000001"))
    with pytest.raises(SimulatorError, match="sim_spec"):
        WaterSim(spec, pin_factory, clock)


def test_sim_spec(tmp_path):
    default = sim_spec(tmp_path)
    assert default.thermometer.base == tmp_path / "sim" / "w1"
    assert default.heater_pin == 23 and default.flow == FlowSpec(pin=24)
    configured = DispenserSpec(level=AdcLevelSpec(channel=3),
                               thermometer=ThermometerSpec("28-0316a2795a1f"), heater_pin=17)
    moved = sim_spec(tmp_path, configured)
    assert moved.thermometer.base == tmp_path / "sim" / "w1"
    assert moved.level == configured.level and moved.heater_pin == 17


# -- the tap and the flow meter ----------------------------------------------------------------


def test_draws_pulse_the_flow_meter(spec, make_sim, pin_factory):
    sim = make_sim(spec, litres=10.0)
    pin = pin_factory.pin(24)
    assert pin.state == 1  # idle high
    pin.clear_states()
    sim.draw(225)
    sim.tick(10)
    assert sim.pulses == 100
    assert sum(1 for s in pin.states[1:] if not s.state) == 100  # one low per pulse
    assert sim.litres == pytest.approx(9.775)


def test_cannot_draw_more_than_the_tank_holds(spec, make_sim):
    sim = make_sim(spec, litres=0.5)
    sim.draw(2000)
    sim.tick(120)
    assert sim.litres == 0.0 and sim.drawn_ml == pytest.approx(500.0)


def test_random_riders_are_the_same_for_the_same_seed(tmp_path, pin_factory, clock):
    runs = []
    for seed in (7, 7, 8):
        spec = sim_spec(tmp_path / str(seed))
        from gpiozero.pins.mock import MockFactory

        factory = MockFactory()
        sim = WaterSim(spec, factory, clock, draws_per_hour=30.0, seed=seed)
        sim.tick(3600)
        runs.append(round(sim.drawn_ml, 3))
        sim.close()
        factory.close()
    assert runs[0] == runs[1] != runs[2]
    assert runs[0] > 0


# -- time ---------------------------------------------------------------------------------------


def test_follows_the_injected_clock(spec, make_sim, clock):
    sim = make_sim(spec)
    clock.advance(90)
    assert sim.time == 90
    sim.tick(10)  # on its own: the clock stays
    assert sim.time == 100
    with pytest.raises(ValueError):
        sim.tick(-1)


def test_background_ticker_on_a_real_clock(spec, pin_factory):
    sim = WaterSim(spec, pin_factory, Clock(), time_scale=600.0).start(interval=0.01)
    try:
        deadline = time.monotonic() + 5
        while sim.time < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sim.time >= 60
    finally:
        sim.close()


# -- the MCP3008 ----------------------------------------------------------------------------------


def test_mock_mcp3008_answers_gpiozero(pin_factory):
    chip = MockMCP3008(pin_factory)
    adc = open_mcp3008(channel=4, pin_factory=pin_factory)
    try:
        chip.channels[4] = 3.3
        assert adc.value == pytest.approx(1.0, abs=0.002)
        chip.channels[4] = 0.825
        assert adc.value == pytest.approx(0.25, abs=0.002)
    finally:
        adc.close()
        chip.close()


def test_open_mcp3008_without_a_global_factory(pin_factory):
    # gpiozero's software SPI bus looks for Device.pin_factory; the simulation
    # of `hardware: sim` must not depend on one being set.
    from gpiozero import Device

    previous, Device.pin_factory = Device.pin_factory, None
    try:
        chip = MockMCP3008(pin_factory)
        adc = open_mcp3008(channel=0, pin_factory=pin_factory)
        chip.channels[0] = 1.65
        assert adc.value == pytest.approx(0.5, abs=0.002)
        assert Device.pin_factory is None
        adc.close()
        chip.close()
    finally:
        Device.pin_factory = previous


def test_the_tank_level_on_the_adc(tmp_path, make_sim, pin_factory):
    spec = replace(sim_spec(tmp_path), level=AdcLevelSpec(channel=1, zero=0.1, full=0.9))
    sim = make_sim(spec, litres=10.0)
    adc = open_mcp3008(channel=1, pin_factory=pin_factory)
    assert adc.value == pytest.approx(0.1 + 0.5 * 0.8, abs=0.002)
    sim.cut_level_wire()
    assert adc.value == pytest.approx(0.0, abs=0.002)
    adc.close()


def test_building_after_the_reader_is_refused(pin_factory, tmp_path, clock):
    from gpiozero import DigitalInputDevice

    device = DigitalInputDevice(5, pull_up=True, pin_factory=pin_factory)
    with pytest.raises(SimulatorError, match="GPIO5"):
        WaterSim(sim_spec(tmp_path), pin_factory, clock)
    device.close()
    adc = open_mcp3008(channel=0, pin_factory=pin_factory)
    with pytest.raises(SimulatorError, match="GPIO11"):
        MockMCP3008(pin_factory)
    adc.close()


# -- doors, the PIR and riders --------------------------------------------------------------------

DOORS = {"entrance": DoorSpec(pin=17), "locker_panel": DoorSpec(pin=27, panel=True)}
PIR = OccupancySpec(pin=22, sample_rate=100.0)


def test_door_sim_drives_the_reed_pins(pin_factory):
    doors = DoorSim(DOORS, pin_factory)
    assert pin_factory.pin(17).state == 0  # shut: the contact holds the pin low
    doors.open("entrance")
    assert pin_factory.pin(17).state == 1 and doors.is_open("entrance")
    doors.close("entrance")
    assert pin_factory.pin(17).state == 0
    pin = pin_factory.pin(27)
    pin.clear_states()
    doors.bounce("locker_panel", opened=True, chatter=3)
    assert len(pin.states) == 1 + 7 and pin.state == 1


def test_traffic_opens_the_entrance_and_moves_the_pir(pin_factory, clock):
    doors_sim = DoorSim(DOORS, pin_factory)
    pir = PirSim(PIR, pin_factory)
    reporter = RecordingReporter()
    doors = Doors(DOORS, reporter, clock, pin_factory=pin_factory)
    traffic = Traffic(clock, doors=doors_sim, pir=pir, riders_per_hour=20.0, seed=1)
    try:
        saw_motion = False
        for _ in range(2 * 3600):  # two hours, a poll a second
            clock.advance(1.0)
            traffic.sync()
            doors.poll()
            saw_motion = saw_motion or pir.motion
            assert pir.motion == (traffic.inside > 0)
        assert traffic.arrivals > 10 and saw_motion
        opened, closed = reporter.types().count("door_opened"), reporter.types().count(
            "door_closed")
        assert opened >= traffic.arrivals and opened - closed in (0, 1)
        assert {d["door"] for _, d in reporter.events} == {"entrance"}  # never the panel
    finally:
        doors.close()


def test_traffic_seen_by_the_occupancy_part(pin_factory, clock):
    pir = PirSim(PIR, pin_factory)
    reporter = RecordingReporter()
    occupancy = Occupancy(PIR, reporter, clock, pin_factory=pin_factory)
    assert occupancy.sensor.wait_for_no_motion(timeout=5)
    traffic = Traffic(clock, pir=pir, riders_per_hour=6.0, stay=(60.0, 120.0), seed=2)
    try:
        for _ in range(60):  # an hour in one-minute steps; wait for the sampler at each
            clock.advance(60)
            traffic.sync()
            expected = traffic.inside > 0
            deadline = time.monotonic() + 5
            while occupancy.motion != expected and time.monotonic() < deadline:
                time.sleep(0.002)
        assert 0 < occupancy.pending <= traffic.arrivals
    finally:
        occupancy.close()
