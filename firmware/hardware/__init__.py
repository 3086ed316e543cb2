"""The station's hardware edge.

Each part of the station sits behind a small interface with a real and a
simulated implementation side by side (design principle 1).
``firmware.hardware.station.build_hardware`` picks them by the configuration's
words, never by a silent fallback.
"""
