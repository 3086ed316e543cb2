"""deploy/prometheus checked by Debian's promtool: the configuration and rules are
clean, the unit tests in deploy/prometheus/tests pass, every alerting rule has a
case where it fires and one where it stays silent, and the tests fail when a rule
is broken (so they test something)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
UNIT_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
#: The recording rules of issue 15's team plan (dashboards rely on these names).
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
PLANNED_RECORDS = {
    "group:yizhan_stations:count",
    "group:yizhan_station_up:sum",
    "group:yizhan_power_banks_ready:sum",
    *(f"group_state:yizhan_station_seconds:rate{w}" for w in WINDOWS),
    *(f"group:yizhan_station_errors:ratio_rate{w}" for w in WINDOWS),
    "station:yizhan_station_errors:ratio_rate1h",
    "station:yizhan_station_errors:ratio_rate1d",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists()
                                         else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required under CI (Debian package prometheus)",
                        pytrace=False)
        pytest.skip("promtool is not installed (make system-deps installs prometheus)")
    return found


def run(promtool: str, *args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def rules(kind: str) -> list[dict]:
    return [r for path in RULES for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"] if kind in r]


def test_check_config_is_clean(promtool):
    out = run(promtool, "check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stdout + out.stderr
    assert "SUCCESS: 2 rule files found" in out.stdout  # both rule files, by the shipped paths


def test_check_rules_is_clean(promtool):
    out = run(promtool, "check", "rules", *map(str, RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stdout + out.stderr


def test_unit_tests_pass(promtool):
    assert UNIT_TESTS, "no unit tests in deploy/prometheus/tests"
    out = run(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_recording_rules_are_the_planned_ones():
    assert {r["record"] for r in rules("record")} == PLANNED_RECORDS


def test_every_alert_says_how_bad_and_what_to_do():
    alerts = rules("alert")
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for a in alerts:
        assert a["labels"]["severity"] in ("critical", "warning"), a["alert"]
        assert a["annotations"]["summary"].strip(), a["alert"]
        # "what to do": an instruction, not only a restatement of the expression.
        assert len(a["annotations"]["description"].split()) >= 30, a["alert"]


def test_every_alert_has_a_firing_and_a_silent_case():
    cases: dict[str, dict[str, int]] = {}
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                seen = cases.setdefault(case["alertname"], {"fires": 0, "silent": 0})
                seen["fires" if case.get("exp_alerts") else "silent"] += 1
    for a in rules("alert"):
        seen = cases.get(a["alert"], {"fires": 0, "silent": 0})
        assert seen["fires"] >= 1, f"{a['alert']}: no case where it fires"
        assert seen["silent"] >= 1, f"{a['alert']}: no case where it stays silent"
    assert set(cases) <= {a["alert"] for a in rules("alert")}, "a test of no rule"


# A broken rule must fail the unit tests: each mutation is (file, text, replacement,
# the unit-test file that should catch it).
MUTATIONS = {
    "page without its short window (pages long after recovery)": (
        "alerts.yml", "and group:yizhan_station_errors:ratio_rate5m > (14.4 * 0.005)", "",
        "slo_fast.yml"),
    "page on 1h alone at 6x (a blip pages)": (
        "alerts.yml", "group:yizhan_station_errors:ratio_rate1h > (14.4 * 0.005)",
        "group:yizhan_station_errors:ratio_rate1h > (1 * 0.005)", "slo_fast.yml"),
    "ticket without its 6h window (a fixed burn keeps ticketing for days)": (
        "alerts.yml", "and group:yizhan_station_errors:ratio_rate6h > (1 * 0.005)", "",
        "slo_slow.yml"),
    "hub down without its 2 minutes": (
        "alerts.yml", "up{job=\"yizhan-hub\"} == 0\n        for: 2m",
        "up{job=\"yizhan-hub\"} == 0\n        for: 0m", "hub.yml"),
    "error ratio without the or-0 (a healthy group absent)": (
        "recording.yml", 'or sum by (group) (group_state:yizhan_station_seconds:rate5m'
        '{state="up"}) * 0', "", "slo_fast.yml"),
    "dropped messages counted by value, not increase": (
        "alerts.yml", "increase(yizhan_broker_messages_dropped_total[10m]) > 0",
        "yizhan_broker_messages_dropped_total > 0", "hub.yml"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_broken_rule_fails_the_unit_tests(promtool, tmp_path, name):
    rules_file, text, replacement, unit = MUTATIONS[name]
    copy = tmp_path / "prometheus"
    shutil.copytree(DEPLOY, copy)
    path = copy / "rules" / rules_file
    source = path.read_text()
    assert text in source, f"mutation {name!r} no longer applies"
    path.write_text(source.replace(text, replacement, 1))
    assert run(promtool, "check", "rules", str(path)).returncode == 0  # still valid rules
    out = run(promtool, "test", "rules", str(copy / "tests" / unit))
    assert out.returncode != 0, f"the unit tests did not notice: {name}\n{out.stdout}"
