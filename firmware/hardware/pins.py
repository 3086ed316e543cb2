"""The Raspberry Pi's 40-pin header as the station's configuration names it.

GPIO numbers are BCM numbers, as gpiozero takes them. Every part's pins are
configuration; these are the facts of the header that hold whatever the wiring.
"""

from __future__ import annotations

from yizhan.config import Section

#: GPIO numbers a part may use on the 40-pin header (BCM numbering).
GPIO_RANGE = (2, 27)
#: GPIO4 carries the DS18B20's 1-wire bus (dtoverlay=w1-gpio) whenever there is one.
W1_PIN = 4
#: The SPI0 pins an MCP3008 takes: SCLK, MOSI, MISO, CE0, CE1.
SPI0_PINS = frozenset({7, 8, 9, 10, 11})


def gpio_pin(sec: Section, name: str, *, required: bool = False) -> int | None:
    """A BCM GPIO number from a section; the error names the key."""
    return sec.int(name, required=required, lo=GPIO_RANGE[0], hi=GPIO_RANGE[1])
