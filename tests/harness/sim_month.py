"""The simulated months of the service report's tests: ``hub.simulate``,
which ``yizhan sim month`` runs too."""

from hub.simulate import HOUR_MS, Sent, Simulated, midnight_ms, simulate

__all__ = ["HOUR_MS", "Sent", "Simulated", "midnight_ms", "simulate"]
