"""The station's hardware edge: drivers only.

What is here reads and drives the wires and nothing more: the Pi's header
(``pins``), the locker board on its serial line (``board``), the tank's level
sensors (``level``), the DS18B20 on 1-wire (``thermometer``), the flow meter
(``flow``), the Pi's own health and clock sync (``health``, ``clocksync``).
The parts that turn readings into contract events — ``firmware/doors.py``,
``dispenser.py``, ``occupancy.py``, ``locker.py`` — stand on these.

Each sits behind a small interface with a real and a simulated implementation
side by side (design principle 1). ``firmware.hardware.station.build_hardware``
picks them by the configuration's words, never by a silent fallback.
"""
