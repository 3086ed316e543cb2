"""File modes (issue 14, finding 8): what the programs write is theirs alone (0600),
and a secret file that other accounts can read is refused, naming the file and the fix.

Each test runs under the umask most shells give (022), which would make a plain
``open`` 0644: the modes proved here are the programs' doing, not the test's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from firmware.journal import Journal
from hub.storage.store import Store
from tests.harness.procs import Procs
from yizhan.config import ConfigError, Section, check_secret_file
from yizhan.demo import write_configs

SID = "yh-chumen-01"


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def station_file(tmp_path: Path, key_mode: int) -> Path:
    key = tmp_path / "fleet.key"
    key.write_text("k" * 32 + "\n")
    key.chmod(key_mode)
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump({
        "hardware": "sim", "station": {"id": SID}, "data_dir": str(tmp_path / "data"),
        "fleet_key_file": str(key), "mqtt": {"host": "127.0.0.1", "port": 1},
        # A free port: another test worker's agent may hold the default 8701.
        "local_api": {"host": "127.0.0.1", "port": 0}}))
    return config


def test_the_hubs_sqlite_database_and_its_wal_are_private(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    store = Store(f"sqlite:///{db}")
    try:
        with store.engine.connect() as conn:  # an open connection keeps -wal and -shm
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            conn.commit()
            files = [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm"))]
            assert all(f.exists() for f in files)
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_a_hub_database_left_readable_by_others_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    Store(f"sqlite:///{db}").close()
    db.chmod(0o644)
    Store(f"sqlite:///{db}").close()
    assert mode(db) == 0o600


def test_the_station_journal_and_its_wal_are_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "data")
    try:
        journal.record(1_000, True, [("visit", {"count": 1})])
        db = tmp_path / "data" / "station.db"
        wal = db.with_name("station.db-wal")
        assert db.exists() and wal.exists()
        assert (mode(db), mode(wal)) == (0o600, 0o600)
    finally:
        journal.close()


def test_a_fleet_key_others_can_read_stops_the_agent_naming_file_and_fix(
        tmp_path: Path) -> None:
    config = station_file(tmp_path, 0o644)
    procs = Procs(tmp_path)
    try:
        agent = procs.start("agent", "agent", "--config", str(config))
        assert agent.wait(30) == 2
        said = agent.tail()
    finally:
        procs.close()
    key = tmp_path / "fleet.key"
    assert f"{key} can be read by other accounts (mode 0644)" in said
    assert f"chmod 600 {key}" in said
    assert "fleet_key_file" in said


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660], ids=lambda m: f"{m:04o}")
def test_a_secret_readable_by_group_or_others_is_refused(tmp_path: Path, loose: int) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret-password\n")
    secret.chmod(loose)
    sec = Section({"password_file": str(secret)}, "mqtt")
    with pytest.raises(ConfigError, match=rf"mqtt\.password_file: .*mode {loose:04o}.*"
                                          rf"chmod 600 {secret}"):
        sec.secret("password")
    secret.chmod(0o600)
    assert sec.secret("password") == "s3cret-password"
    secret.chmod(0o400)
    check_secret_file(secret, "mqtt.password_file")  # read-only by its owner is fine


def test_a_tls_client_key_others_can_read_is_refused(tmp_path: Path) -> None:
    from yizhan.config import MqttConfig

    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    sec = Section({"tls": {"ca_file": "ca.pem", "key_file": str(key)}}, "mqtt")
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.key_file: .*chmod 600"):
        MqttConfig.from_section(sec)
    key.chmod(0o600)
    assert MqttConfig.from_section(sec).tls.key_file == str(key)


def test_the_demo_writes_its_token_key_and_configs_private(tmp_path: Path) -> None:
    hub, stations = write_configs(tmp_path / "demo", 2, 1883, 8080)
    files = [hub, tmp_path / "demo" / "api-token", tmp_path / "demo" / "fleet.key",
             *(cfg for _sid, cfg in stations)]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    token = (tmp_path / "demo" / "api-token").read_text().strip()
    assert token in hub.read_text()  # the file that needed it most


def test_a_demo_directory_from_before_is_made_private(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    write_configs(workdir, 1, 1883, 8080)
    for name in ("api-token", "fleet.key", "hub.yaml"):
        (workdir / name).chmod(0o644)
    write_configs(workdir, 1, 1883, 8080)
    assert [mode(workdir / n) for n in ("api-token", "fleet.key", "hub.yaml")] == [0o600] * 3


def test_a_secret_file_of_raw_bytes_is_a_named_error_not_a_crash(tmp_path: Path) -> None:
    key = tmp_path / "fleet.key"
    key.write_bytes(bytes(range(128, 160)))
    key.chmod(0o600)
    with pytest.raises(ConfigError, match=rf"fleet_key_file: {key} is not UTF-8 text"):
        Section({"fleet_key_file": str(key)}).secret("fleet_key")
