"""Test harness: real components started and stopped by the tests themselves.

``mosquitto`` runs private brokers; ``mqtt`` is a small paho client for tests.
The board simulator is production code (``firmware.sim``), used here too.
"""
