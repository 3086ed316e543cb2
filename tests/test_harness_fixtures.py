"""The fixtures themselves: what one test does to pins or time stays in it."""

from __future__ import annotations

from gpiozero import Button, Device


def test_pin_factory_gives_working_mock_pins(pin_factory) -> None:
    assert Device.pin_factory is pin_factory
    button = Button(17)
    pin_factory.pin(17).drive_low()  # pull-up: low is pressed
    assert button.is_pressed
    # The device is left open on purpose: the next test reuses the pin.


def test_pins_are_fresh_in_every_test(pin_factory) -> None:
    button = Button(17)  # would raise GPIOPinInUse if the last test's pin survived
    assert not button.is_pressed
    button.close()


def test_the_clock_moves_only_when_told(clock) -> None:
    before = clock.now()
    clock.advance(45)
    assert clock.now() - before == 45
