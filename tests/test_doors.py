"""Doors: reed switches on MockFactory pins, debounced on the test's clock."""

from __future__ import annotations

import pytest

from firmware.doors import Doors, DoorSpec, parse_doors
from firmware.parts import RecordingReporter
from firmware.sim.doors import DoorSim
from firmware.sim.water import DrivenPin
from yizhan.config import ConfigError, Section

SPECS = {
    "entrance": DoorSpec(pin=17),
    "locker_panel": DoorSpec(pin=27, panel=True),
}


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def sim(pin_factory):
    # Built first: it holds each reed switch's pin where the magnet does (shut).
    return DoorSim(SPECS, pin_factory)


@pytest.fixture
def doors(sim, reporter, clock, pin_factory):
    d = Doors(SPECS, reporter, clock, pin_factory=pin_factory)
    yield d
    d.close()


def settle(doors, clock, seconds=0.1):
    clock.advance(seconds)
    doors.poll()


# -- what the station sees -------------------------------------------------------------


def test_starts_from_the_pins_without_events(pin_factory, reporter, clock):
    sim = DoorSim(SPECS, pin_factory)
    sim.open("entrance")
    doors = Doors(SPECS, reporter, clock, pin_factory=pin_factory)
    doors.poll()
    assert doors.section() == {"entrance": True, "locker_panel": False}
    assert doors["entrance"].is_open and doors.is_open("entrance")
    assert reporter.events == []
    doors.close()


def test_open_and_close_are_events(doors, sim, reporter, clock):
    sim.open("entrance")
    settle(doors, clock)
    assert doors.is_open("entrance")
    sim.close("entrance")
    settle(doors, clock)
    assert not doors.is_open("entrance")
    assert reporter.events == [("door_opened", {"door": "entrance"}),
                               ("door_closed", {"door": "entrance"})]


def test_a_change_counts_only_once_it_has_held_bounce_seconds(doors, sim, reporter, clock):
    sim.open("entrance")
    doors.poll()  # same instant: not yet
    clock.advance(0.04)
    doors.poll()  # 40 ms of a 50 ms bounce: not yet
    assert reporter.events == [] and not doors.is_open("entrance")
    clock.advance(0.02)
    doors.poll()
    assert reporter.types() == ["door_opened"]


def test_switch_bounce_yields_one_event(pin_factory, reporter, clock):
    pin = pin_factory.pin(17, pin_class=DrivenPin)
    pin.drive(False)  # the door is shut: the contact holds the pin low
    doors = Doors({"entrance": DoorSpec(pin=17)}, reporter, clock, pin_factory=pin_factory)
    for _ in range(6):  # the contact chatters as the door swings open
        pin.drive_high()
        pin.drive_low()
        clock.advance(0.005)
        doors.poll()
    pin.drive_high()
    settle(doors, clock)
    settle(doors, clock)
    assert reporter.events == [("door_opened", {"door": "entrance"})]
    doors.close()


def test_bounce_through_the_simulator_yields_one_event(doors, sim, reporter, clock):
    sim.bounce("entrance", opened=True, chatter=8)
    settle(doors, clock)
    sim.bounce("entrance", opened=False, chatter=8)
    settle(doors, clock)
    assert reporter.types() == ["door_opened", "door_closed"]


def test_an_opening_shorter_than_bounce_is_no_event(doors, sim, reporter, clock):
    sim.open("entrance")
    clock.advance(0.02)
    doors.poll()
    sim.close("entrance")
    settle(doors, clock)
    settle(doors, clock)
    assert reporter.events == []


def test_a_missed_edge_is_healed_by_the_reconciliation_read(doors, sim, reporter, clock):
    sim.move_unseen("entrance", opened=True)
    settle(doors, clock, 1.0)
    assert not doors.is_open("entrance")  # no edge: the station does not know yet
    clock.advance(4.0)  # reconcile_every (5 s) since the doors were built
    doors.poll()
    settle(doors, clock)
    assert doors.is_open("entrance")
    assert reporter.events == [("door_opened", {"door": "entrance"})]
    # and the other way
    sim.move_unseen("entrance", opened=False)
    for _ in range(60):
        settle(doors, clock)
    assert not doors.is_open("entrance")
    assert reporter.types() == ["door_opened", "door_closed"]


def test_a_lost_last_edge_of_a_bounce_is_caught_on_confirmation(doors, sim, reporter, clock):
    sim.open("entrance")
    sim.move_unseen("entrance", opened=False)  # the closing edge never arrives
    settle(doors, clock)
    settle(doors, clock)
    assert reporter.events == [] and not doors.is_open("entrance")


def test_tamper_is_a_panel_opened_outside_maintenance(doors, sim, reporter, clock):
    sim.open("locker_panel")
    settle(doors, clock)
    assert reporter.events == [("door_opened", {"door": "locker_panel"}),
                               ("tamper", {"door": "locker_panel"})]
    sim.close("locker_panel")
    settle(doors, clock)
    assert reporter.types()[-1] == "door_closed"


def test_no_tamper_during_maintenance_nor_for_the_entrance(doors, sim, reporter, clock):
    doors.maintenance = True
    sim.open("locker_panel")
    settle(doors, clock)
    doors.maintenance = False  # the session ends with the panel still open: no tamper
    settle(doors, clock)
    sim.open("entrance")
    settle(doors, clock)
    assert "tamper" not in reporter.types()
    assert reporter.types() == ["door_opened", "door_opened"]


def test_open_when_low(pin_factory, reporter, clock):
    specs = {"back": DoorSpec(pin=22, open_when="low")}
    sim = DoorSim(specs, pin_factory)
    doors = Doors(specs, reporter, clock, pin_factory=pin_factory)
    assert not doors.is_open("back")
    assert pin_factory.pin(22).state == 1  # shut: the contact to 3V3 holds it high
    sim.open("back")
    settle(doors, clock)
    assert doors.is_open("back") and reporter.types() == ["door_opened"]
    doors.close()


def test_names_and_describe(doors):
    assert doors.names == ("entrance", "locker_panel")
    assert doors.describe() == {"doors": ["entrance", "locker_panel"]}
    assert [d.name for d in doors] == ["entrance", "locker_panel"]


def test_close_is_idempotent_and_releases_the_pins(pin_factory, sim, reporter, clock):
    doors = Doors(SPECS, reporter, clock, pin_factory=pin_factory)
    doors.close()
    doors.close()
    doors.poll()  # harmless after close
    again = Doors(SPECS, reporter, clock, pin_factory=pin_factory)
    again.close()


def test_a_half_built_set_of_doors_releases_its_pins(pin_factory, reporter, clock):
    from gpiozero.exc import GPIOPinInUse

    clash = {"a": DoorSpec(pin=17), "b": DoorSpec(pin=17)}
    with pytest.raises(GPIOPinInUse):
        Doors(clash, reporter, clock, pin_factory=pin_factory)
    Doors({"a": DoorSpec(pin=17)}, reporter, clock, pin_factory=pin_factory).close()


# -- configuration ----------------------------------------------------------------------


def doors_section(data):
    return Section.of({"doors": data}, "doors")


def test_parse_doors():
    specs = parse_doors(doors_section({
        "entrance": {"pin": 17},
        "locker_panel": {"pin": 27, "panel": True, "open_when": "low", "bounce": "100ms"},
        "back": 22,
    }))
    assert specs == {
        "entrance": DoorSpec(pin=17),
        "locker_panel": DoorSpec(pin=27, panel=True, open_when="low", bounce=0.1),
        "back": DoorSpec(pin=22),
    }
    assert parse_doors(None) == {}


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"entrance": {}}, "doors.entrance.pin", "is required"),
    ({"entrance": {"pin": 40}}, "doors.entrance.pin", "from 2 to 27"),
    ({"entrance": {"pin": "17"}}, "doors.entrance.pin", "integer"),
    ({"entrance": {"pin": 17, "open_when": "open"}}, "doors.entrance.open_when", "high, low"),
    ({"entrance": {"pin": 17, "panel": "yes"}}, "doors.entrance.panel", "true or false"),
    ({"entrance": {"pin": 17, "bounse": "1s"}}, "doors.entrance.bounse", "unknown key"),
    ({"entrance": {"pin": 17, "bounce": "soon"}}, "doors.entrance.bounce", "duration"),
    ({"entrance": 17, "back": {"pin": 17}}, "doors.back.pin", "already the pin of door"),
    ({"Front Door": 17}, "doors.Front Door", "door name"),
    ({"entrance": [17]}, "doors.entrance", "mapping"),
])
def test_parse_doors_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as err:
        parse_doors(doors_section(data))
    assert err.value.key == key
    assert words in str(err.value)
