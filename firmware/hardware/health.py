"""Pi health: CPU temperature, undervoltage and throttling, free disk.

On a Pi these come from sysfs and the firmware's ``get_throttled`` bits; the
simulated Pi reports a healthy board with the real free disk of the data dir.

``disk_free_mb`` is the space the station can still write in its data
directory: the file system's free space, and 0 while the journal's writes
fail (a full card, a read-only file system), so the hub's ``disk_low`` alert
fires whatever the cause (docs/agent-internals.md, "Storage faults").
"""

from __future__ import annotations

from pathlib import Path

from firmware.storage import free_mb
from protocol.messages import Health
from yizhan.clock import Clock

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
# The kernel exposes the firmware's throttled bits here on Bookworm.
THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


class PiHealth:
    """Reads the real Pi's health files; a missing file reads as unknown (None)."""

    def __init__(self, data_dir: Path, clock: Clock, thermal: Path = THERMAL_ZONE,
                 throttled: Path = THROTTLED) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.thermal = thermal
        self.throttled_path = throttled
        self._started = clock.monotonic()

    def cpu_temp_c(self) -> float | None:
        try:
            return round(int(self.thermal.read_text().strip()) / 1000, 1)
        except (OSError, ValueError):
            return None

    def throttle_bits(self) -> int | None:
        try:
            return int(self.throttled_path.read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def read(self, outbox: int = 0, kiosk: str | None = None,
             storage: str | None = None) -> Health:
        """The health section; ``storage`` is the journal's fault (``full``,
        ``read_only``, ``failing``) or None."""
        bits = self.throttle_bits()
        return Health(
            cpu_temp_c=self.cpu_temp_c(),
            # bit 0: under-voltage now; bit 2: throttled now
            undervoltage=None if bits is None else bool(bits & 0x1),
            throttled=None if bits is None else bool(bits & 0x4),
            disk_free_mb=0 if storage is not None else disk_free_mb(self.data_dir),
            uptime_s=int(self.clock.monotonic() - self._started),
            outbox=outbox,
            kiosk=kiosk,
        )


class SimHealth(PiHealth):
    """A healthy simulated Pi: 48 °C, no undervoltage, real free disk."""

    def cpu_temp_c(self) -> float | None:
        return 48.0

    def throttle_bits(self) -> int | None:
        return 0


def disk_free_mb(path: Path) -> int | None:
    """MB free in ``path``'s file system; None when it cannot be read."""
    return free_mb(path)
