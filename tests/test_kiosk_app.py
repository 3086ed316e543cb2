"""The kiosk without an agent: its configuration, the command, the session secret,
the Chinese catalogue, the touch-first rules its pages and stylesheet keep, and
the transport to the agent on a Unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from flask import Flask

from kiosk import create_app
from kiosk.agent import AgentClient, AgentError, AgentUnavailable
from kiosk.config import BorrowRate, KioskConfig, load_kiosk_config
from kiosk.ratelimit import RateLimiter
from kiosk.security import PhoneRedactor, load_secret
from tests.harness.catalogues import assert_translated, read_catalogue
from tests.harness.procs import free_port, wait_until, write_yaml
from yizhan.clock import ManualClock
from yizhan.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KIOSK = ROOT / "kiosk"
EXAMPLES = ROOT / "deploy" / "examples"
KEY = b"test-fleet-key-0123456789abcdef"


def station_file(tmp_path: Path, **kiosk) -> Path:
    (tmp_path / "fleet.key").write_bytes(KEY)
    data = {"station": {"id": "yh-k-01", "name": "测试驿站"}, "data_dir": "data",
            "fleet_key_file": "fleet.key",
            "local_api": {"port": 8711}, "kiosk": {"port": 8710, **kiosk}}
    return write_yaml(tmp_path / "station.yaml", data)


# -- configuration -------------------------------------------------------------------------


def test_the_sim_example_runs_a_kiosk():
    config = load_kiosk_config(EXAMPLES / "station-sim.yaml")
    assert (config.host, config.port, config.api_url) == ("127.0.0.1", 8700,
                                                          "http://127.0.0.1:8701")
    assert config.fleet_key == b"yizhan-demo-fleet-key"  # hardware: sim, no key: the demo's
    assert config.borrow_rate == BorrowRate(6, 30) and config.idle == 60
    assert config.language == "zh" and config.station_name == "模拟驿站"


def test_the_kiosk_keys(tmp_path):
    config = load_kiosk_config(station_file(
        tmp_path, borrow_rate={"per_minute": 3, "per_hour": 10}, idle="90s",
        staff_idle="5m", done_idle="10s", language="en"))
    assert config.fleet_key == KEY and config.data_dir == tmp_path / "data"
    assert config.borrow_rate == BorrowRate(3, 10)
    assert (config.idle, config.staff_idle, config.done_idle) == (90, 300, 10)
    assert config.language == "en" and config.api_url == "http://127.0.0.1:8711"
    assert config.rider_ids == "hmac"  # contract §1 unless the fleet chose scrypt
    assert load_kiosk_config(station_file(tmp_path, rider_ids="scrypt")).rider_ids == "scrypt"


@pytest.mark.parametrize(("kiosk", "key", "problem"), [
    ({"host": "0.0.0.0"}, "kiosk.host", "loopback"),
    ({"borrow_rate": {"per_minute": 0}}, "kiosk.borrow_rate.per_minute", "from 1 to 1000"),
    ({"borrow_rate": {"per_minute": 10, "per_hour": 5}}, "kiosk.borrow_rate.per_hour",
     "at least"),
    ({"borrow_rate": {"per_second": 1}}, "kiosk.borrow_rate.per_second", "unknown key"),
    ({"idle": "5s"}, "kiosk.idle", "at least 10s"),
    ({"idle": "soon"}, "kiosk.idle", "duration"),
    ({"language": "fr"}, "kiosk.language", "one of zh, en"),
    ({"rider_ids": "md5"}, "kiosk.rider_ids", "one of hmac, scrypt"),
    ({"colour": "blue"}, "kiosk.colour", "unknown key"),
])
def test_a_bad_kiosk_key_is_named(tmp_path, kiosk, key, problem):
    path = station_file(tmp_path, **kiosk)
    with pytest.raises(ConfigError) as err:
        load_kiosk_config(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and problem in str(err.value)


def test_a_real_station_needs_the_fleet_key(tmp_path):
    path = station_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["fleet_key_file"]
    write_yaml(path, data)
    with pytest.raises(ConfigError, match="fleet_key_file: is required"):
        load_kiosk_config(path)


# -- the command ------------------------------------------------------------------------------


def test_yizhan_kiosk_serves_with_waitress_and_stops_on_sigterm(tmp_path):
    port = free_port()
    path = station_file(tmp_path, port=port)
    data = yaml.safe_load(path.read_text())
    data["local_api"] = {"port": free_port()}  # no agent there: "out of service"
    write_yaml(path, data)
    proc = subprocess.Popen([sys.executable, "-m", "yizhan", "kiosk", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def get(url: str) -> tuple[int, str, dict]:
            try:
                with urllib.request.urlopen(base + url, timeout=2) as r:
                    return r.status, r.read().decode(), dict(r.headers)
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode(), dict(err.headers)

        status, _, _ = wait_until(lambda: get("/healthz"), 10, "the kiosk answering")
        assert status == 200
        status, body, headers = get("/")
        assert status == 503 and "驿站正在启动或暂停服务" in body and "测试驿站" in body
        assert headers.get("Server") == "yizhan-kiosk"  # waitress, with the kiosk's ident
        assert get("/static/kiosk.css")[0] == 200
        assert get("/static/kiosk.js")[0] == 200
        secret = tmp_path / "data" / "kiosk.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    out = proc.stdout.read()
    assert f"kiosk for yh-k-01 on http://127.0.0.1:{port}" in out


def test_yizhan_kiosk_with_a_bad_file_exits_2(tmp_path):
    path = station_file(tmp_path, host="0.0.0.0")
    out = subprocess.run([sys.executable, "-m", "yizhan", "kiosk", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{path}: kiosk.host: " in out.stderr


# -- the session secret -------------------------------------------------------------------------


def test_the_secret_is_made_once_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "kiosk.secret"
    first = load_secret(path)
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == first
    # A restarted kiosk signs with the same secret: the screen a rider is on still works.
    a = create_app(KioskConfig(fleet_key=KEY, data_dir=tmp_path / "data"))
    assert a.config["SECRET_KEY"] == first
    assert [p.name for p in path.parent.iterdir()] == ["kiosk.secret"]  # no temp file left


def test_a_loose_or_empty_secret_is_repaired(tmp_path, caplog):
    path = tmp_path / "kiosk.secret"
    path.write_text("x" * 64)
    os.chmod(path, 0o644)
    assert load_secret(path) == "x" * 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "readable by others" in caplog.text
    path.write_text("")
    fresh = load_secret(path)
    assert len(fresh) == 64 and fresh != "x" * 64


def test_kiosks_starting_together_agree_on_one_secret(tmp_path):
    path = tmp_path / "kiosk.secret"
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(load_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8


# -- the Chinese catalogue ----------------------------------------------------------------------


def _catalogue(lang: str):
    return read_catalogue(KIOSK / "translations", lang)


def _extracted() -> set:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    return {msg[2] for msg in extract_from_dir(str(KIOSK), method_map,
                                               options_map={"templates/**.html": {}})}


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\([a-z_]+\)[sd]|%%|\{n\}", text))


def test_every_message_on_the_screens_is_in_the_chinese_catalogue():
    zh = _catalogue("zh")
    have = {m.id for m in zh if m.id}
    extracted = _extracted()
    missing = extracted - have
    assert not missing, f"run pybabel extract/update (docs/kiosk-design.md): {missing}"
    assert not have - extracted, "obsolete messages in the catalogue"
    pot = KIOSK / "translations" / "messages.pot"
    with pot.open("rb") as f:
        assert {m.id for m in read_po(f) if m.id} == extracted


def test_every_chinese_translation_is_complete_and_keeps_its_placeholders():
    def no_english_left(msg, text):
        # Translated, not copied: no English word left outside the placeholders.
        assert not re.search(r"[A-Za-z]{3,}", re.sub(r"%\([a-z_]+\)[sd]", "", text)), text

    assert_translated(_catalogue("zh"), _placeholders, also=no_english_left)


# -- touch first: pages and stylesheet ------------------------------------------------------------


def _css() -> str:
    return (KIOSK / "static" / "kiosk.css").read_text()


def _rule(selector: str) -> str:
    found = re.search(r"(?m)^" + re.escape(selector) + r"\s*\{([^}]*)\}", _css())
    assert found, selector
    return found.group(1)


def _px(rule: str, prop: str) -> int:
    found = re.search(r"(?<![-\w])" + prop + r":\s*(\d+)px", rule)
    assert found, (prop, rule)
    return int(found.group(1))


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_colours_meet_wcag_aa():
    colours = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-f]{6})", _css()))
    text_pairs = [("fg", "bg"), ("fg", "surface"), ("fg", "surface-2"), ("muted", "bg"),
                  ("muted", "surface"), ("muted", "surface-2"), ("on-accent", "accent"),
                  ("ok", "bg"), ("ok", "surface"), ("warn", "bg"), ("warn", "surface"),
                  ("bad", "bg"), ("bad", "surface"), ("accent", "bg"), ("bg", "fg")]
    for fg, bg in text_pairs:
        ratio = _contrast(colours[fg], colours[bg])
        assert ratio >= 4.5, f"{fg} on {bg}: {ratio:.2f}"
    for edge, bg in [("line", "bg"), ("line", "surface"), ("line", "surface-2")]:
        assert _contrast(colours[edge], colours[bg]) >= 3.0, (edge, bg)  # UI components


def test_sizes_for_fingers_and_arms_length():
    assert _px(_rule("body"), "font-size") >= 24
    assert _px(_rule(".btn"), "min-height") >= 56 and _px(_rule(".btn"), "min-width") >= 56
    key = _rule(".key")
    assert _px(key, "min-height") >= 72 and _px(key, "min-width") >= 72
    assert _px(key, "font-size") >= 32
    assert _px(_rule(".keyboard .key"), "min-height") >= 56  # the staff id keyboard
    assert "Noto Sans CJK SC" in _rule(":root") and "sans-serif" in _rule(":root")
    assert ":hover" not in _css()  # nothing that only a mouse can reach


def test_everything_is_local():
    for path in [*KIOSK.glob("templates/*.html"), *KIOSK.glob("static/*")]:
        text = path.read_text()
        assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), path
        assert "@import" not in text and "@font-face" not in text, path


def test_every_text_field_is_filled_by_an_on_screen_keypad():
    for path in KIOSK.glob("templates/*.html"):
        for tag in re.findall(r"<input\b[^>]*>", path.read_text(), flags=re.S):
            if 'type="hidden"' in tag:
                continue
            assert "readonly" in tag and 'inputmode="none"' in tag, (path.name, tag)
            assert 'autocomplete="off"' in tag, (path.name, tag)
        assert "<textarea" not in path.read_text() and "<select" not in path.read_text()


def test_every_form_posts_with_the_csrf_token():
    for path in KIOSK.glob("templates/*.html"):
        text = path.read_text()
        for form in re.findall(r"<form\b.*?</form>", text, flags=re.S):
            assert 'method="post"' in form, (path.name, form[:80])
            assert "csrf()" in form, (path.name, form[:80])


# -- small parts -------------------------------------------------------------------------------


def test_the_rate_limiter_windows_and_refund():
    clock = ManualClock()
    limiter = RateLimiter([(2, 60.0), (3, 3600.0)], clock)
    assert limiter.acquire() == 0 and limiter.acquire() == 0
    assert limiter.acquire() == pytest.approx(60)
    limiter.refund()
    assert limiter.acquire() == 0 and limiter.acquire() == pytest.approx(60)
    clock.advance(61)
    assert limiter.acquire() == 0
    assert limiter.acquire() == pytest.approx(3600 - 61)  # the hour is full
    with pytest.raises(ValueError):
        RateLimiter([(0, 60.0)], clock)


def test_the_log_redactor():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "number %s at %d", ("13812345678",
                               1764196800123), None)
    assert PhoneRedactor().filter(record)
    assert record.getMessage() == "number 1********** at 1764196800123"


def test_the_agent_client_on_a_unix_socket(tmp_path):
    """The transport the Pi may use (``local_api.unix_socket``), served by waitress."""
    from waitress.server import create_server

    agent = Flask("agent")

    @agent.get("/v1/station")
    def station():
        return {"station": {"sid": "yh-k-01", "name": "测试驿站"}}

    @agent.get("/v1/borrow/<attempt>")
    def missing(attempt):
        return {"error": {"code": "unknown_attempt", "message": "no such attempt"}}, 404

    sock = tmp_path / "agent.sock"
    server = create_server(agent, unix_socket=str(sock), unix_socket_perms="600",
                           asyncore_loop_timeout=0.05)

    def serve() -> None:
        # waitress has no thread-safe stop: close() ends select() with EBADF.
        with contextlib.suppress(OSError, ValueError):
            server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = AgentClient(unix_socket=str(sock), timeout=2)
        assert client.station()["station"]["name"] == "测试驿站"
        with pytest.raises(AgentError) as err:
            client.attempt("b-0123456789abcdef")
        assert (err.value.status, err.value.code) == (404, "unknown_attempt")
        with pytest.raises(AgentError):
            client.attempt("../v1/station")  # never sent
    finally:
        server.close()
        thread.join(5)
    with pytest.raises(AgentUnavailable):
        AgentClient(unix_socket=str(tmp_path / "nobody.sock"), timeout=1).station()
