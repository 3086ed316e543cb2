"""The simulated months of the service report's tests: ``hub.reports.simulate``,
which ``yizhan sim month`` runs too."""

from hub.reports.simulate import HOUR_MS, Sent, Simulated, midnight_ms, simulate

__all__ = ["HOUR_MS", "Sent", "Simulated", "midnight_ms", "simulate"]
