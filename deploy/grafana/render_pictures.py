"""Draw what each Yizhan dashboard's panels query, from a real Prometheus run.

    make grafana-pictures          # or: .venv/bin/python deploy/grafana/render_pictures.py

Grafana itself is not packaged for Debian, so docs/grafana.md cannot show
screenshots. This starts the run the live dashboard test uses (a real hub, four
simulated stations, one outage, water refills, a real Prometheus with the shipped
rules: tests/harness/dashboards.py), runs every panel's queries with the
variables substituted as Grafana would, and draws one picture per dashboard into
docs/img/grafana/: a graph where the panel graphs, bars where it shows a number
per series, a table where it shows a table. Needs matplotlib (the ``docs`` extra).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from tests.harness import dashboards as harness  # noqa: E402

BOARDS = ROOT / "deploy" / "grafana" / "dashboards"
OUT = ROOT / "docs" / "img" / "grafana"
#: Station names are Chinese: a CJK font, else every name is a row of boxes.
CJK_FONTS = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
             "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
COLUMNS = 3


def use_cjk_font() -> None:
    for path in CJK_FONTS:
        if Path(path).is_file():
            font_manager.fontManager.addfont(path)
            name = font_manager.FontProperties(fname=path).get_name()
            plt.rcParams["font.family"] = [name, "DejaVu Sans"]
            return
    print("no Noto CJK font (apt-get install fonts-noto-cjk): Chinese names will not show",
          file=sys.stderr)


def fmt(value: float, unit: str | None) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.2f} %"
    if unit == "s":
        return f"{value / 60:.1f} min" if abs(value) >= 120 else f"{value:.1f} s"
    if unit == "celsius":
        return f"{value:.1f} °C"
    return f"{value:.3g}"


def panel_unit(panel: dict, name: str | None = None) -> str | None:
    for o in panel["fieldConfig"]["overrides"]:
        if name is not None and o["matcher"].get("options") == name:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    return prop["value"]
    return panel["fieldConfig"]["defaults"].get("unit")


def renames(panel: dict) -> dict[str, str]:
    for tr in panel.get("transformations", []):
        if tr["id"] == "organize":
            return tr["options"].get("renameByName", {})
    return {}


def draw_range(ax, panel: dict, results: list[tuple[dict, list[dict]]], t0: float) -> None:
    unit = panel_unit(panel)
    drawn = [(t, s) for t, series in results for s in series]
    if len(drawn) > 6:  # many series (every kind and outcome): the ones that moved
        drawn = [(t, s) for t, s in drawn if any(float(v) for _, v in s["values"])]
    for target, series in ((t, [s]) for t, s in drawn):
        for s in series:
            xs = [float(t) - t0 for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            if unit == "percentunit":
                ys = [y * 100 for y in ys]
            label = harness.legend(target.get("legendFormat", ""), s["metric"]) or \
                ",".join(f"{k}={v}" for k, v in s["metric"].items() if k != "__name__")
            step = panel["type"] == "state-timeline"
            ax.plot(xs, ys, label=label, drawstyle="steps-post" if step else "default",
                    linewidth=1.4)
    ax.set_xlabel("seconds into the run")
    if unit == "percentunit":
        ax.set_ylabel("%")
    elif unit:
        ax.set_ylabel(unit)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def draw_stat(ax, panel: dict, results: list[tuple[dict, list[dict]]]) -> None:
    """Big numbers, as Grafana's stat panel (value mappings applied: 1 is "up")."""
    unit = panel_unit(panel)
    mapping = {}
    for m in panel["fieldConfig"]["defaults"].get("mappings", []):
        mapping.update({float(k): v["text"] for k, v in m.get("options", {}).items()})
    shown = []
    for target, series in results:
        for s in series:
            v = float(s["value"][1])
            text = mapping.get(v) or fmt(v, unit)
            label = harness.legend(target.get("legendFormat", ""), s["metric"])
            shown.append(f"{label}: {text}" if label else text)
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(shown) or "no data", ha="center", va="center",
            fontsize=22 if len(shown) == 1 else 14, color="#3274d9", weight="bold")


def draw_bars(ax, panel: dict, results: list[tuple[dict, list[dict]]]) -> None:
    unit = panel_unit(panel)
    labels, values = [], []
    for target, series in results:
        for s in series:
            labels.append(harness.legend(target.get("legendFormat", ""), s["metric"])
                          or target["refId"])
            values.append(float(s["value"][1]))
    shown = [0.0 if math.isnan(v) else v for v in values]
    bars = ax.barh(range(len(shown)), shown, color="#3274d9")
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + fmt(v, unit),
                va="center", fontsize=8)
    ax.margins(x=0.35)
    ax.set_xticks([])


def draw_table(ax, panel: dict, results: list[tuple[dict, list[dict]]]) -> None:
    names = renames(panel)
    keys = ("station", "name", "group", "rule", "severity")
    rows: dict[tuple, dict[str, str]] = {}
    columns: list[str] = []
    for target, series in results:
        column = names.get(f"Value #{target['refId']}") or names.get("Value") or target["refId"]
        columns.append(column)
        for s in series:
            key = tuple((k, s["metric"][k]) for k in keys if k in s["metric"])
            rows.setdefault(key, {})[column] = fmt(float(s["value"][1]),
                                                   panel_unit(panel, column))
    label_cols = [k for k in keys if any(k in dict(key) for key in rows)]
    header = label_cols + columns
    cells = [[dict(key).get(k, "") for k in label_cols] + [vals.get(c, "") for c in columns]
             for key, vals in sorted(rows.items())][:10]
    ax.axis("off")
    if not cells:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center")
        return
    table = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.3)


def render(run, name: str, board: dict, start: float, end: float) -> Path:
    station_var = next(v for v in board["templating"]["list"] if v["name"] == "station")
    station = None if station_var["multi"] else harness.KEEPS_LOW
    values = harness.grafana_values(start, end, None, station)
    shown = [p for p in board["panels"] if p["type"] != "row"]
    rows = math.ceil(len(shown) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(6 * COLUMNS, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, shown, strict=False):
        results = [(t, harness.run_target(run, t, values, start, end))
                   for t in panel["targets"]]
        ax.set_title(panel["title"], fontsize=10, loc="left")
        if all(t.get("instant") for t in panel["targets"]):
            if panel["type"] == "table":
                draw_table(ax, panel, results)
            elif panel["type"] == "stat":
                draw_stat(ax, panel, results)
            else:
                draw_bars(ax, panel, results)
        else:
            draw_range(ax, panel, results, start)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    chosen = f"station {station}" if station else "all groups, all stations"
    fig.suptitle(f"{board['title']} ({chosen}; outage of {run.outage_station} at "
                 f"{run.outage[0] - start:.0f}–{run.outage[1] - start:.0f} s)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name.replace(".json", ".png")
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def main() -> int:
    use_cjk_font()
    with tempfile.TemporaryDirectory(prefix="yizhan-grafana-") as tmp, \
            harness.dashboard_run(Path(tmp)) as run:
        end = time.time()
        for path in sorted(BOARDS.glob("*.json")):
            board = json.loads(path.read_text(encoding="utf-8"))
            print(render(run, path.name, board, run.started, end).relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
