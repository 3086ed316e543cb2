"""The `yizhan` command line (contract §14): help, exit codes, configuration errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from yizhan.cli import EXIT_CONFIG


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yizhan", *argv], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("argv", [[], ["hub"], ["agent"], ["kiosk"], ["sim"], ["sim", "board"],
                                  ["demo"]])
def test_every_subcommand_explains_itself(argv):
    out = run(*argv, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: yizhan" in out.stdout
    assert len(out.stdout.splitlines()) >= 4


@pytest.mark.parametrize(("program", "text", "key", "problem"), [
    ("agent", "station: {id: yh-a}\ndata_dir: d\nmqtt: {port: abc}\n", "mqtt.port",
     "must be an integer from 1 to 65535"),
    ("agent", "station: {id: 'Bad Id'}\ndata_dir: d\n", "station.id", "must be"),
    ("agent", "data_dir: d\n", "station", "is required"),
    ("agent", "station: {id: yh-a}\ndata_dir: d\nlockers: {baudrate: 9600}\n", "lockers.port",
     "is required"),
    ("agent", "station: {id: yh-a}\ndata_dir: d\ntiming: {heartbeat: 5m}\n",
     "timing.heartbeat", "at most 60s"),
    ("agent", "station: {id: hub}\ndata_dir: d\n", "station.id", "reserved"),
    ("hub", "database: mysql://x\n", "database", "sqlite:// or postgresql://"),
    ("hub", "database: sqlite:///h.db\napi_tokens: [short]\n", "api_tokens[0]",
     "at least 16 characters"),
    ("hub", "database: sqlite:///h.db\nstations: [{sid: yh-a}, {sid: yh-a}]\n",
     "stations[1].sid", "listed twice"),
    ("hub", "database: sqlite:///h.db\nmqtt: {keepalive: 1}\n", "mqtt.keepalive",
     "from 2 to 65535"),
])
def test_a_bad_configuration_exits_2_naming_file_key_and_problem(tmp_path, program, text,
                                                                  key, problem):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = run(program, "--config", str(cfg))
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert f"{cfg}: {key}: " in out.stderr
    assert problem in out.stderr


def test_unreadable_and_malformed_files(tmp_path):
    out = run("hub", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == EXIT_CONFIG and "missing.yaml: file not found" in out.stderr
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("mqtt: {host: [unclosed\n")
    out = run("hub", "--config", str(cfg))
    assert out.returncode == EXIT_CONFIG and "is not valid YAML at line" in out.stderr
    cfg.write_text("- a list\n- not a mapping\n")
    out = run("agent", "--config", str(cfg))
    assert out.returncode == EXIT_CONFIG and "must be a YAML mapping" in out.stderr


def test_a_database_the_hub_cannot_use_is_one_line_not_a_traceback(tmp_path, monkeypatch,
                                                                  capsys):
    import hub.service
    from hub.storage.writer import SQLAlchemyUnsupported
    from yizhan.cli import main

    def unusable(*args, **kwargs):
        raise SQLAlchemyUnsupported("SQLAlchemy 9.9 lacks Insert._post_values_clause; "
                                    "pip install 'SQLAlchemy>=2.1,<2.2'")

    monkeypatch.setattr(hub.service, "Hub", unusable)
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"database: sqlite:///{tmp_path / 'hub.db'}\n")
    assert main(["hub", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("yizhan hub: cannot use the database: SQLAlchemy 9.9 lacks")
    assert "Traceback" not in err


@pytest.mark.parametrize("where, said", [
    ("missing/hub.db", "its directory does not exist"),
    ("a-file/hub.db", "Not a directory"),
])
def test_hub_names_a_database_path_it_cannot_create(tmp_path, capsys, where, said):
    """A database directory the hub cannot use stops it with the path and the reason
    (it printed a traceback, or SQLite's bare "unable to open database file")."""
    from yizhan.cli import main

    (tmp_path / "a-file").write_text("not a directory\n")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"database: sqlite:///{tmp_path / where}\n")
    assert main(["hub", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"yizhan hub: cannot use the database: cannot create the database "
                          f"file {tmp_path / where}"), err
    assert said in err and "Traceback" not in err
