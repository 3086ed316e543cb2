"""Pi health from the kernel's files: CPU temperature, undervoltage, throttling, disk."""

from __future__ import annotations

from firmware.hardware.health import PiHealth
from yizhan.clock import ManualClock


def test_health_reads_the_pi_files(tmp_path):
    thermal = tmp_path / "temp"
    throttled = tmp_path / "get_throttled"
    thermal.write_text("51234\n")
    throttled.write_text("50005\n")  # under-voltage now (bit 0), throttled now (bit 2)
    clock = ManualClock()
    health = PiHealth(tmp_path, clock, thermal=thermal, throttled=throttled)
    clock.advance(90)
    h = health.read(outbox=3, kiosk="ok")
    assert h.cpu_temp_c == 51.2 and h.undervoltage is True and h.throttled is True
    assert h.uptime_s == 90 and h.outbox == 3 and h.kiosk == "ok"
    assert h.disk_free_mb is not None and h.disk_free_mb > 0

    throttled.write_text("50000\n")  # only the "has happened since boot" bits
    h = health.read()
    assert h.undervoltage is False and h.throttled is False


def test_a_missing_file_reads_as_unknown_not_as_healthy(tmp_path):
    health = PiHealth(tmp_path, ManualClock(), thermal=tmp_path / "none",
                      throttled=tmp_path / "none")
    h = health.read()
    assert h.cpu_temp_c is None and h.undervoltage is None and h.throttled is None
    assert "cpu_temp_c" not in h.to_dict()  # left out rather than reported as 0
