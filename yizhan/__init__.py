"""Yizhan (驿站): software for 24-hour rest stations for delivery riders.

The distribution holds three programs (``firmware`` — the station agent,
``kiosk``, ``hub``), the wire contract in code (``protocol``), and this small
package with what they share that is not part of the contract: the clock, the
configuration readers and the command line.
"""

__version__ = "0.1.0"
