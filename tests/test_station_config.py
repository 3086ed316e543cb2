"""The station configuration: the shipped examples load, and mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firmware.config import load_station_config, parse_station_config
from yizhan.config import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def test_the_pi_example_loads_with_its_secrets_from_files(tmp_path):
    data = example("station.yaml")
    (tmp_path / "mqtt.password").write_text("s3cret\n")
    (tmp_path / "fleet.key").write_text("k" * 32)
    data["mqtt"]["password_file"] = str(tmp_path / "mqtt.password")
    data["mqtt"]["tls"] = None
    data["fleet_key_file"] = str(tmp_path / "fleet.key")
    cfg = parse_station_config(data)
    assert cfg.sid == "yh-chumen-01" and not cfg.sim
    assert cfg.mqtt.password == "s3cret" and cfg.fleet_key == b"k" * 32
    assert cfg.lockers.port.startswith("/dev/serial/by-id/")
    assert set(cfg.doors) == {"entrance", "locker_panel"} and cfg.doors["locker_panel"].panel
    assert cfg.dispenser.heater_pin == 23 and cfg.occupancy.pin == 22
    assert "s3cret" not in str(cfg.mqtt.redacted())


def test_the_sim_example_loads(tmp_path):
    cfg = load_station_config(EXAMPLES / "station-sim.yaml")
    assert cfg.sim and cfg.lockers.slots == 12 and cfg.simulation.borrows_per_hour == 20


BASE = {"station": {"id": "yh-a"}, "data_dir": "d"}


@pytest.mark.parametrize(("extra", "key", "problem"), [
    ({"doors": {"entrance": {"pin": 17}}, "occupancy": {"pin": 17}}, "occupancy.pin",
     "GPIO17 is already used by doors.entrance.pin"),
    ({"dispenser": {"level": {"type": "floats", "low_pin": 5, "empty_pin": 6},
                    "thermometer": {"device": "28-0316a2795a1f"}},
      "doors": {"entrance": 4}}, "doors.entrance.pin", "1-wire"),
    ({"sim": {"seed": 1}}, "sim", "only means something with hardware: sim"),
    ({"local_api": {"host": "0.0.0.0"}}, "local_api.host", "loopback"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"timing": {"coalesce": "5s"}}, "timing.coalesce", "at most 2s"),
    ({"lockers": {"port": "/dev/ttyUSB0", "slots": 16}}, "lockers.slots", "from 1 to 15"),
    ({"fleet_key_file": "/nonexistent/fleet.key"}, "fleet_key_file", "cannot read"),
])
def test_mistakes_are_named(extra, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_station_config({**BASE, **extra})
    assert err.value.key == key
    assert problem in err.value.problem


def test_a_station_without_some_hardware_runs_with_the_rest():
    cfg = parse_station_config({**BASE, "doors": {"entrance": 17}})
    assert cfg.lockers is None and cfg.dispenser is None and cfg.occupancy is None
    assert set(cfg.doors) == {"entrance"}
