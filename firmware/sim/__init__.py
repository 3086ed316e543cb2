"""Simulated station hardware: what ``hardware: sim`` and ``yizhan sim`` run on.

Faked only at the lowest layer (design principle 1): the locker board is a
byte-exact YZ-LB1 peer on a pseudo-terminal, so the agent's serial code is the
one that runs on a Pi.
"""

from firmware.sim.board import BoardSimulator, ReceivedFrame
from firmware.sim.model import Cabinet, SimulatorError, SlotError, Taken

__all__ = ["BoardSimulator", "Cabinet", "ReceivedFrame", "SimulatorError", "SlotError", "Taken"]
