"""The Grafana dashboards and provisioning of deploy/grafana, linted (issue 15).

What a Grafana import would not tell us until an ops lead opened a blank panel:
the files are raw dashboard JSON with fixed uids (not "export for sharing"), every
query goes through the ``$datasource`` variable, every ``rate()`` spans
``$__rate_interval``, every metric a query names is one the hub exports (read from
a real ``hub.service.Hub``'s collectors) or a recording rule Prometheus computes,
and every expression parses (``promtool check rules``). Whether each one returns
data is tests/test_grafana_live.py's business.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DOCS = ROOT / "docs" / "grafana.md"

#: file -> uid. Stable: bookmarks, the fleet table's links and alert notifications
#: point at these, so changing one is a breaking change, not a refactor.
UIDS = {
    "yizhan-fleet.json": "yizhan-fleet",
    "yizhan-station.json": "yizhan-station",
    "yizhan-slo.json": "yizhan-slo",
    "yizhan-refill.json": "yizhan-refill",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DATASOURCE_UID = "yizhan-prometheus"
INSTALL_PATH = "/var/lib/grafana/dashboards/yizhan"
#: Series Prometheus makes itself, not the hub.
PROMETHEUS_MADE = {"up"}
RANGE_FUNCTIONS = ("rate", "irate", "increase")
#: Window ranges a panel may use instead of $__rate_interval: only when the panel is
#: about that window (its title names it: "Outages in the last 24 h"), and never
#: shorter than a day (a short fixed range is exactly the mistake the rule catches).
LONG_WINDOWS = {"24h": 86400, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400,
                "90d": 90 * 86400}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan"}


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))


def boards() -> Iterator[tuple[str, dict]]:
    for name in sorted(UIDS):
        yield name, load(name)


def panels(board: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows too; rows themselves are not panels."""
    for p in board["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def targets() -> Iterator[tuple[str, dict, dict]]:
    for name, board in boards():
        for p in panels(board):
            for t in p.get("targets", []):
                yield name, p, t


def where(name: str, panel: dict, target: dict | None = None) -> str:
    ref = f" target {target['refId']}" if target else ""
    return f"{name}: panel {panel['title']!r}{ref}"


# -- PromQL, read just well enough -------------------------------------------------------

#: What Grafana substitutes, with values for a syntax check (the live test uses its own).
SUBSTITUTE = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s",
              "${__range}": "1h", "$group": ".*", "$station": "yh-x-01"}


def substitute(expr: str, values: dict[str, str] = SUBSTITUTE) -> str:
    # Longest first: $__range must not eat the start of $__rate_interval.
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    return expr


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def call_arguments(expr: str, functions: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(function, its argument text) for every call of ``functions`` in ``expr``."""
    text = strip_strings(expr)
    for m in re.finditer(rf"(?<![\w:])({'|'.join(functions)})\s*\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        assert depth == 0, f"unbalanced parentheses after {m.group(1)}( in {expr}"
        yield m.group(1), text[m.end():i - 1]


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (not functions, labels or keywords)."""
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)           # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)          # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)                               # label lists
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        word = m.group(1)
        if word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
    parts = re.findall(r"(\d+)([smhdwy])", text)
    assert parts and "".join(a + b for a, b in parts) == text, f"not a duration: {text}"
    return sum(int(n) * units[u] for n, u in parts)


# -- what exists: the hub's metrics and the recording rules -------------------------------


class RecordingRegistry(CollectorRegistry):
    """A registry that remembers every collector the hub registers on it."""

    def __init__(self) -> None:
        super().__init__()
        self.collectors: list = []

    def register(self, collector) -> None:
        self.collectors.append(collector)
        super().register(collector)


def exposed(name: str, kind: str) -> set[str]:
    """The sample names a family of ``kind`` puts on /metrics."""
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "info":
        return {f"{name}_info"}
    return {name}


@pytest.fixture(scope="module")
def hub_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a real hub exports, from its collectors' describe(): the
    families absent until their first data (broker $SYS, forecasts) included."""
    from hub.config import parse_hub_config
    from hub.service import Hub

    tmp = tmp_path_factory.mktemp("grafana-hub")
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "stations": [{"sid": "yh-x-01", "name": "X", "group": "x"}],
    })
    registry = RecordingRegistry()
    hub = Hub(config, registry=registry)  # built, not started: nothing connects
    try:
        names = set()
        for collector in registry.collectors:
            for family in collector.describe():
                names |= exposed(family.name, family.type)
    finally:
        hub.close()
    assert "yizhan_station_up" in names  # the reading works at all
    return names


@pytest.fixture(scope="module")
def recording_rules() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "recording.yml").read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


# -- the dashboards ----------------------------------------------------------------------


def test_every_file_is_raw_dashboard_json_with_its_fixed_uid() -> None:
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(UIDS)
    seen = []
    for name, board in boards():
        text = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert board["uid"] == UIDS[name], name
        assert board["id"] is None, f"{name}: id must be null (Grafana assigns it)"
        # "Export for sharing" output needs an import dialog; provisioning cannot fill it.
        assert "__inputs" not in board and "__requires" not in board, name
        assert "${DS_" not in text, name
        assert board["title"].startswith("Yizhan: ") and board["schemaVersion"] >= 36, name
        assert "yizhan" in board["tags"], name  # the dashboards' link bar finds them by tag
        seen.append(board["uid"])
    assert len(seen) == len(set(seen))


def test_panel_ids_and_ref_ids_are_unique_and_panels_fit_the_grid() -> None:
    for name, board in boards():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in panels(board):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, where(name, p)
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), where(name, p)
            assert p.get("title") and p.get("description"), where(name, p)


def test_the_template_variables() -> None:
    for name, board in boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables)[:3] == ["datasource", "group", "station"], name
        ds = variables["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus"), name
        assert ds["current"].get("value") == DATASOURCE_UID, name
        group, station = variables["group"], variables["station"]
        for v in (group, station):
            assert v["type"] == "query" and v["datasource"] == DATASOURCE, (name, v["name"])
        assert group["query"]["query"] == group["definition"] == \
            "label_values(yizhan_station_info, group)"
        assert group["multi"] and group["includeAll"], name
        # All is the regex .*, so a station without a group ("") is in "All" too.
        assert group["allValue"] == ".*", name
        assert station["query"]["query"] == station["definition"] == \
            'label_values(yizhan_station_info{group=~"$group"}, station)'
        if station["multi"]:
            assert station["includeAll"] and station["allValue"] == ".*", name


def test_every_query_goes_through_the_datasource_variable() -> None:
    for name, board in boards():
        for p in panels(board):
            assert p["datasource"] == DATASOURCE, where(name, p)
            for t in p["targets"]:
                assert t["datasource"] == DATASOURCE, where(name, p, t)
        for a in board["annotations"]["list"]:
            assert a.get("builtIn") == 1 or a["datasource"] == DATASOURCE, name


def test_rates_span_the_rate_interval_or_the_window_the_panel_is_about() -> None:
    checked = 0
    for name, p, t in targets():
        title = re.sub(r"\s+", "", p["title"]).lower()
        for fn, arg in call_arguments(t["expr"], RANGE_FUNCTIONS):
            ranges = re.findall(r"\[([^\]]*)\]", arg)
            assert len(ranges) == 1, f"{where(name, p, t)}: {fn}({arg}) needs one range"
            window = ranges[0].strip()
            checked += 1
            assert ":" not in window, f"{where(name, p, t)}: no subquery inside {fn}()"
            if window in ("$__rate_interval", "$__range"):
                continue
            assert window in LONG_WINDOWS and duration_seconds(window) >= 86400, (
                f"{where(name, p, t)}: {fn}() over [{window}]: use $__rate_interval "
                "(a fixed range is only for a panel about a day or longer)")
            assert window in title, (
                f"{where(name, p, t)}: {fn}() over the fixed [{window}] but the title "
                f"does not name that window")
    assert checked > 20


def test_the_rate_rule_itself() -> None:
    # The linter's reading of PromQL, on the mistakes it exists to catch.
    args = list(call_arguments('sum(rate(a_total{x="rate("}[5m])) / increase(b[1d])',
                               RANGE_FUNCTIONS))
    assert args == [("rate", 'a_total{x=""}[5m]'), ("increase", "b[1d]")]
    assert metric_names('sum by (station) (rate(yizhan_x_total{state="up"}[5m])) * on(station)'
                        ' group_left(name) max(yizhan_station_info) > 0.5e3 or vector(0)') == \
        {"yizhan_x_total", "yizhan_station_info"}
    assert metric_names("group:yizhan_station_errors:ratio_rate1h / 0.005") == \
        {"group:yizhan_station_errors:ratio_rate1h"}
    assert substitute("x[$__range] y[$__rate_interval]") == "x[1h] y[1m]"


def test_every_metric_is_the_hubs_or_a_recording_rule(hub_metrics: set[str],
                                                       recording_rules: set[str]) -> None:
    known = hub_metrics | recording_rules | PROMETHEUS_MADE
    missing = {}
    for name, p, t in targets():
        for metric in metric_names(t["expr"]) - known:
            missing.setdefault(metric, []).append(where(name, p, t))
    assert not missing, f"not on the hub's /metrics nor a recording rule: {missing}"
    # The variables' queries too.
    for _name, board in boards():
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                # label_values(<selector>, <label>): the label is no series.
                selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
                assert selector, v["definition"]
                assert metric_names(selector.group(1)) <= known, v["definition"]


def test_the_hub_job_named_is_the_scraped_job() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    for name, p, t in targets():
        for job in re.findall(r'job="([^"]*)"', t["expr"]):
            assert job in jobs, where(name, p, t)


def test_every_expression_parses(tmp_path: Path) -> None:
    """Each query, variables substituted, as a recording rule for promtool's parser."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).is_file():
        pytest.skip("promtool is not installed (make system-deps installs prometheus)")
    rules = [{"record": f"dashboard:check:{i}", "expr": substitute(t["expr"])}
             for i, (_n, _p, t) in enumerate(targets())]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(rules)} rules found" in run.stdout


def station_links(board: dict) -> Iterator[tuple[dict, dict]]:
    for p in panels(board):
        for override in p["fieldConfig"]["overrides"]:
            if override["matcher"] == {"id": "byName", "options": "station"}:
                for prop in override["properties"]:
                    if prop["id"] == "links":
                        for link in prop["value"]:
                            yield p, link


def test_station_tables_link_to_the_station_dashboard() -> None:
    station = load("yizhan-station.json")
    fleet = load("yizhan-fleet.json")
    linked = {p["title"] for p, _ in station_links(fleet)}
    assert "Every station" in linked  # the status table of every station
    for name, board in boards():
        for p, link in station_links(board):
            url = link["url"]
            assert url.startswith(f"/d/{station['uid']}/"), where(name, p)
            assert "var-station=${__value.raw}" in url, where(name, p)
            assert "var-datasource=${datasource}" in url, where(name, p)


def test_the_station_dashboard_is_about_one_station() -> None:
    board = load("yizhan-station.json")
    station = next(v for v in board["templating"]["list"] if v["name"] == "station")
    assert not station["multi"] and not station["includeAll"]
    for p in panels(board):
        for t in p["targets"]:
            assert 'station="$station"' in t["expr"], where("yizhan-station.json", p, t)


# -- provisioning ------------------------------------------------------------------------


def test_the_datasource_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "yizhan.yaml").read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert (ds["type"], ds["uid"], ds["url"]) == ("prometheus", DATASOURCE_UID,
                                                  "http://127.0.0.1:9090")
    # $__rate_interval is at least four scrape intervals: Grafana must know Prometheus's.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def test_the_dashboard_provider_reads_where_the_docs_install() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "yizhan.yaml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == INSTALL_PATH
    for guide in (DOCS, GRAFANA / "README.md"):
        lines = guide.read_text(encoding="utf-8").splitlines()
        installs = [line for line in lines
                    if "deploy/grafana/dashboards/" in line and INSTALL_PATH in line]
        assert installs, f"{guide.name} does not install the dashboards into {INSTALL_PATH}"
