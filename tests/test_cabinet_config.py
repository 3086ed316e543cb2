"""``lockers`` for lock-control boards: the forms the station file takes, and a
clear ConfigError naming the key for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firmware.config import BoardConfig, BusConfig, ChargingConfig, parse_station_config
from yizhan.config import ConfigError

PORT = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"
PORT_2 = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"
RELAYS = {"driver": "modbus-io", "port": "/dev/serial/by-id/usb-relays-if00-port0"}


def lockers(section: dict, *, sim: bool = False):
    data = {"station": {"id": "yh-a"}, "data_dir": "d", "lockers": section}
    if sim:
        data["hardware"] = "sim"
    return parse_station_config(data).lockers


def test_the_yz_lb1_board_is_still_the_default_and_reads_as_before() -> None:
    got = lockers({"port": PORT, "slots": 6})
    assert (got.driver, got.port, got.baudrate, got.address, got.slots) == (
        "yz-lb1", PORT, 115200, 1, 6)
    assert got.buses == () and got.charging is None
    assert lockers({"driver": "yz-lb1", "port": PORT}).driver == "yz-lb1"


def test_one_board_as_the_contract_writes_it() -> None:
    got = lockers({"driver": "lock8a", "port": PORT, "charging": {"driver": "always-on"}})
    assert got.buses == (BusConfig(PORT, 9600, (BoardConfig(1, 12, "closed"),)),)
    assert got.charging == ChargingConfig(driver="always-on", charge_time=3 * 3600.0)
    assert got.n_slots == 12
    cu = lockers({"driver": "kerong-cu16", "port": PORT, "slots": 16, "locked_when": "open",
                  "charging": {**RELAYS, "channels": 16, "charge_time": "150m"}})
    assert cu.buses == (BusConfig(PORT, 19200, (BoardConfig(0, 16, "open"),)),)
    assert cu.charging.charge_time == 9000.0 and cu.charging.channels == 16


@pytest.mark.parametrize(("driver", "baudrate", "address"), [
    ("lock8a", 9600, 1), ("kerong-cu16", 19200, 0)])
def test_the_contracts_minimal_lockers_section_loads(driver, baudrate, address, caplog) -> None:
    """Contract §14: `driver` and `port`, the rest by default. Without a charging
    section the chargers are taken as always powered, and the log says so."""
    got = lockers({"driver": driver, "port": PORT})
    assert got.buses == (BusConfig(PORT, baudrate, (BoardConfig(address, 12, "closed"),)),)
    assert got.charging == ChargingConfig(driver="always-on", charge_time=3 * 3600.0)
    assert "assumes the chargers are always powered" in caplog.text


def test_several_buses_and_boards_in_slot_order() -> None:
    got = lockers({"driver": "lock8a", "buses": [
        {"port": PORT, "boards": [{"address": 3, "locks": 24}, {"address": 1, "locks": 8}]},
        {"port": PORT_2, "baudrate": 19200, "boards": [{"address": 1, "locks": 4}]},
    ], "charging": {"driver": "modbus-io", "port": PORT, "channels": 36, "address": 9,
                    "occupancy": "inputs"}})
    assert [b.port for b in got.buses] == [PORT, PORT_2] and got.buses[1].baudrate == 19200
    assert [(b.address, b.locks) for bus in got.buses for b in bus.boards] == [
        (3, 24), (1, 8), (1, 4)]
    assert got.n_slots == 36
    # The relay module on the first boards' line, at their speed.
    assert got.charging.port == PORT and got.charging.baudrate == 9600


def test_the_shipped_lock_board_example_loads(tmp_path) -> None:
    path = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "station-lockboards.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    (tmp_path / "mqtt.password").write_text("s3cret\n")
    (tmp_path / "fleet.key").write_text("k" * 32)
    data["mqtt"].update(password_file=str(tmp_path / "mqtt.password"), tls=None)
    data["fleet_key_file"] = str(tmp_path / "fleet.key")
    got = parse_station_config(data).lockers
    assert got.driver == "lock8a" and got.n_slots == 48
    assert got.charging.units == ((1, 16), (2, 16), (3, 16))
    assert got.charging.occupancy == "inputs" and got.charging.charge_time == 3 * 3600


def test_several_relay_modules_share_the_slots_in_order() -> None:
    got = lockers({"driver": "lock8a", "port": PORT, "slots": 24, "charging": {
        **RELAYS, "modules": [{"address": 1}, {"address": 2}, {"address": 5, "channels": 16}]}})
    assert got.charging.units == ((1, 8), (2, 8), (5, 16))
    one = lockers({"driver": "lock8a", "port": PORT, "slots": 4, "charging": RELAYS})
    assert one.charging.units == ((1, 8),)


def test_a_simulated_cabinet_needs_no_ports() -> None:
    got = lockers({"driver": "kerong-cu16", "slots": 6}, sim=True)
    assert got.buses == (BusConfig("sim", 19200, (BoardConfig(0, 6, "closed"),)),)
    assert got.charging.driver == "modbus-io" and got.charging.occupancy == "none"
    # An 8A board senses no banks: the simulated relay module's inputs do.
    assert lockers({"driver": "lock8a"}, sim=True).charging.occupancy == "inputs"
    fast = lockers({"driver": "lock8a", "charging": {"driver": "modbus-io",
                                                     "charge_time": "5s"}}, sim=True)
    assert fast.charging.charge_time == 5.0


BUS = {"port": PORT, "boards": [{"address": 1, "locks": 4}]}


def eight(**over) -> dict:
    return {"driver": "lock8a", "buses": [BUS], "charging": RELAYS, **over}


def board(**over) -> dict:
    return eight(buses=[{"port": PORT, "boards": [{"address": 1, "locks": 4, **over}]}])


HUGE = 10**30


@pytest.mark.parametrize(("section", "key", "problem"), [
    ({"driver": "lock9x", "port": PORT}, "lockers.driver", "must be one of"),
    ({"driver": HUGE, "port": PORT}, "lockers.driver", "non-empty string"),
    ({"driver": "lock8a", "charging": RELAYS}, "lockers.port", "is required"),
    ({"driver": "lock8a", "port": PORT, "address": 33, "charging": RELAYS},
     "lockers.address", "1 to 32"),
    ({"driver": "lock8a", "port": PORT, "slots": 25, "charging": RELAYS},
     "lockers.slots", "1 to 24"),
    ({"driver": "kerong-cu16", "port": PORT, "address": 10, "charging": RELAYS},
     "lockers.address", "0 to 9"),
    ({"driver": "kerong-cu16", "port": PORT, "slots": 17, "charging": RELAYS},
     "lockers.slots", "1 to 16"),
    ({"driver": "lock8a", "port": PORT, "baudrate": HUGE, "charging": RELAYS},
     "lockers.baudrate", "integer"),
    ({"driver": "lock8a", "port": PORT, "bogus": 1, "charging": RELAYS},
     "lockers.bogus", "unknown key"),
    ({"port": PORT, "buses": [BUS]}, "lockers.buses", "unknown key"),
    (eight(buses=[]), "lockers.buses", "must list"),
    (eight(buses="ttyUSB0"), "lockers.buses", "must be a list"),
    (eight(buses=[5]), "lockers.buses[0]", "must be a mapping"),
    (eight(buses=[{"port": PORT}]), "lockers.buses[0].boards", "is required"),
    (eight(buses=[{"port": PORT, "boards": [7]}]), "lockers.buses[0].boards[0]", "mapping"),
    (eight(buses=[{"boards": [{"address": 1, "locks": 2}]}]), "lockers.buses[0].port",
     "is required"),
    (eight(buses=[{"port": PORT, "boards": [{"address": 1}]}]),
     "lockers.buses[0].boards[0].locks", "is required"),
    (eight(slots=4), "lockers.slots", "each board says its locks"),
    (eight(port=PORT), "lockers.port", "unknown key"),
    (board(address=0), "lockers.buses[0].boards[0].address", "1 to 32"),
    (board(address=HUGE), "lockers.buses[0].boards[0].address", "1 to 32"),
    (board(address=None), "lockers.buses[0].boards[0].address", "is required"),
    (board(address="1"), "lockers.buses[0].boards[0].address", "integer"),
    (board(locks=25), "lockers.buses[0].boards[0].locks", "1 to 24"),
    (board(locks=True), "lockers.buses[0].boards[0].locks", "1 to 24"),
    (board(locks=HUGE), "lockers.buses[0].boards[0].locks", "1 to 24"),
    (board(locked_when="maybe"), "lockers.buses[0].boards[0].locked_when", "closed, open"),
    (board(pins=3), "lockers.buses[0].boards[0].pins", "unknown key"),
    (eight(buses=[{"port": PORT, "boards": [{"address": 2, "locks": 1},
                                            {"address": 2, "locks": 1}]}]),
     "lockers.buses[0].boards[1].address", "already a board"),
    (eight(buses=[BUS, BUS]), "lockers.buses[1].port", "already bus 0"),
    (eight(buses=[{"port": f"/dev/ttyUSB{i}", "boards": [{"address": 1, "locks": 24}]}
                  for i in range(11)]), "lockers.buses", "at most 255"),
    (eight(charging={"driver": "solar"}), "lockers.charging.driver", "must be one of"),
    (eight(charging={"port": PORT}), "lockers.charging.driver", "is required"),
    (eight(charging={**RELAYS, "charge_time": "30s"}), "lockers.charging.charge_time",
     "1m to 24h"),
    (eight(charging={**RELAYS, "charge_time": "25h"}), "lockers.charging.charge_time",
     "1m to 24h"),
    (eight(charging={**RELAYS, "charge_time": HUGE}), "lockers.charging.charge_time",
     "1m to 24h"),
    (eight(charging={**RELAYS, "charge_time": "soon"}), "lockers.charging.charge_time",
     "duration"),
    (eight(charging={**RELAYS, "channels": 2}), "lockers.charging.channels",
     "4 slots"),
    (eight(charging={**RELAYS, "channels": HUGE}), "lockers.charging.channels", "1 to 64"),
    (eight(charging={**RELAYS, "address": 248}), "lockers.charging.address", "1 to 247"),
    (eight(charging={**RELAYS, "modules": []}), "lockers.charging.modules", "must list"),
    (eight(charging={**RELAYS, "modules": [3]}), "lockers.charging.modules[0]", "mapping"),
    (eight(charging={**RELAYS, "modules": [{"channels": 8}]}),
     "lockers.charging.modules[0].address", "is required"),
    (eight(charging={**RELAYS, "modules": [{"address": 1}, {"address": 1}]}),
     "lockers.charging.modules[1].address", "already a module"),
    (eight(charging={**RELAYS, "modules": [{"address": 1, "channels": HUGE}]}),
     "lockers.charging.modules[0].channels", "1 to 64"),
    (eight(charging={**RELAYS, "modules": [{"address": 1, "channels": 2},
                                           {"address": 2, "channels": 1}]}),
     "lockers.charging.modules", "3 channels but the cabinet has 4 slots"),
    (eight(charging={**RELAYS, "address": 1, "modules": [{"address": 2}]}),
     "lockers.charging.address", "goes with one module"),
    (eight(charging={**RELAYS, "occupancy": "camera"}), "lockers.charging.occupancy",
     "none, inputs"),
    (eight(charging={"driver": "modbus-io"}), "lockers.charging.port", "is required"),
    (eight(charging={"driver": "always-on", "port": PORT}), "lockers.charging.port",
     "unknown key"),
    (eight(charging={**RELAYS, "port": PORT, "baudrate": 19200}),
     "lockers.charging.baudrate", "one line has one speed"),
])
def test_bad_values_are_refused_naming_the_key(section: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        lockers(section)
    assert info.value.key == key, str(info.value)
    assert problem in str(info.value)


# -- yz-lb1 is a registered driver, and still the LockerBoard ------------------------------


def test_yz_lb1_stays_the_locker_board_with_bank_telemetry(tmp_path) -> None:
    # The YZLB1 driver is registered (the conformance suite runs it), yet a
    # station that says yz-lb1, or nothing, gets the LockerBoard on its port:
    # bank ids and measured charge, no Cabinet, no estimates file.
    from firmware.config import lock_drivers
    from firmware.hardware.board import LockerBoard
    from firmware.hardware.cabinet import Cabinet, build_cabinet
    from firmware.hardware.lockboards import DRIVERS, YZLB1
    from firmware.hardware.station import build_hardware
    from firmware.sim import BoardSimulator
    from yizhan.clock import ManualClock

    assert DRIVERS["yz-lb1"] is YZLB1
    assert lock_drivers() == ("yz-lb1", "kerong-cu16", "lock8a")  # each name once
    sim = BoardSimulator(n_slots=3, banks={2: ("PB0012AF", 96)},
                         link_path=tmp_path / "ttyYZ").start()
    try:
        for section in ({"port": sim.port, "slots": 3},
                        {"driver": "yz-lb1", "port": sim.port, "slots": 3}):
            data = {"station": {"id": "yh-a"}, "data_dir": str(tmp_path / "d"),
                    "lockers": section}
            config = parse_station_config(data)
            hardware = build_hardware(config, ManualClock())
            try:
                board = hardware.board
                assert isinstance(board, LockerBoard) and not isinstance(board, Cabinet)
                assert board.info() == (3, "YZ-SIM-1.0")
                record = board.status()[1]
                assert (record.bank_id, record.charge, record.estimated) == ("PB0012AF", 96, False)
            finally:
                hardware.close()
        assert not (tmp_path / "d" / "charge_estimates.json").exists()
        with pytest.raises(ValueError, match="yz-lb1 is the LockerBoard"):
            build_cabinet(config.lockers, tmp_path / "d", ManualClock())
    finally:
        sim.stop()


def test_a_simulated_yz_lb1_station_is_the_board_simulator(tmp_path) -> None:
    from firmware.hardware.board import LockerBoard
    from firmware.hardware.station import build_hardware
    from yizhan.clock import ManualClock

    data = {"station": {"id": "yh-a"}, "data_dir": str(tmp_path / "d"), "hardware": "sim",
            "lockers": {"driver": "yz-lb1", "slots": 2}}
    hardware = build_hardware(parse_station_config(data), ManualClock())
    try:
        assert isinstance(hardware.board, LockerBoard)
        assert hardware.simulation.cabinet is None  # no lock-board line simulators
        records = hardware.board.status()
        assert all(r.bank_id and not r.estimated for r in records)
    finally:
        hardware.close()
