"""The riders' finder on a slow phone link: bytes transferred and time to first
render of ``GET /find`` in real Chromium on DevTools' "Slow 3G" profile, against a
static file of the same size from the same server, in the same run (issue 20).

An in-process hub (SQLite file, ManualClock, not started: its fleet is handed each
station's birth and State as the ingest would) with ``--stations`` stations around
Yuhuan, each with a place, an address, a host and hours; a few offline, out of
water or out of chargers. Served by waitress on a free port. Debian's Chromium
(``/usr/bin/chromium``, through Playwright as the tests drive it) loads, in
alternating rounds, each in a fresh browser context with the cache off:

* the finder, ``/find``, on a phone (390×844, touch, zh-CN, geolocation granted at
  a fixed position, so the page sorts the stations as it would on the road);
* the baseline: a static HTML file exactly as many bytes as the finder's whole load
  transferred (document and whatever it fetched), served from the same waitress and
  Flask app with ``send_file`` — its first words at the top, the rest of its bytes a
  hidden filler, no script. What the finder costs over it is its own doing:
  rendering the page at the hub, and its script (feed, sort, drawing the list).

The network is Chromium's own throttling (CDP ``Network.emulateNetworkConditions``)
at DevTools' "Slow 3G" preset: 2 000 ms latency, 50 000 bytes/s each way
(500 kbit/s × 0.8, as DevTools sets it). Measured per load, from the navigation's
start: bytes transferred (the sum of ``Network.loadingFinished.encodedDataLength``,
headers included), first contentful paint (the Paint Timing API), and — for the
finder — when its list is sorted by the phone's position (its script has the
position, has re-sorted the list and says so in ``#where``).

    .venv/bin/python bench/finder.py                    # 40 stations, 5 rounds, ~2 min
    .venv/bin/python bench/finder.py --rounds 2 --stations 200
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flask import send_file  # noqa: E402
from waitress.server import create_server  # noqa: E402

from tests.harness.browser import Chromium  # noqa: E402
from tests.harness.console_app import (  # noqa: E402
    advance,
    bring_online,
    console_hub,
    go_offline,
)
from yizhan.clock import ManualClock  # noqa: E402

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
#: DevTools' "Slow 3G" (front_end/core/sdk/NetworkManager.ts): 500 kbit/s × 0.8, 400 ms × 5.
SLOW_3G = {"offline": False, "latency": 2000, "downloadThroughput": 50_000,
           "uploadThroughput": 50_000, "connectionType": "cellular3g"}
PHONE = {"width": 390, "height": 844}
#: Where the rider stands: central Chumen.
HERE = {"latitude": 28.1405, "longitude": 121.2447}
STATIC = "/bench/static.html"
#: True (the time, ms) once the finder's script has sorted the list by the position.
SORTED = """() => {
    const words = JSON.parse(document.getElementById('w').textContent);
    return document.getElementById('where').textContent === words.located
        && performance.now();
}"""


def build(tmp: Path, n: int, seed: int):
    rng = random.Random(seed)
    stations = []
    for i in range(n):
        stations.append({
            "sid": f"yh-t{i % 8}-{i:04d}", "name": f"玉环第{i + 1}驿站", "group": f"t{i % 8}",
            "lat": round(28.08 + rng.random() * 0.14, 6),
            "lon": round(121.18 + rng.random() * 0.14, 6),
            "address": f"玉环市楚门镇第{i + 1}路 {rng.randint(1, 200)} 号",
            "host": rng.choice(("村便民服务中心", "农商银行网点", "便利店", "加油站")),
            "hours": rng.choice(("24h", "24h", "07:00-22:00", "20:00-08:00"))})
    hub = console_hub(tmp, ManualClock(T0), stations=stations,
                      public_url="https://yizhan.example.cn/")

    def water(level: float, word: str):
        def change(state: dict) -> None:
            state["dispenser"].update(level=level, level_state=word)
        return change

    def chargers(charge: int):
        def change(state: dict) -> None:
            for s in state["lockers"]["slots"]:
                s.update(charge=charge, charging=charge < 80)
        return change

    for i, st in enumerate(stations):
        change = (water(0.0, "empty") if i % 11 == 3 else water(0.12, "low") if i % 7 == 2
                  else chargers(20) if i % 9 == 5 else None)
        bring_online(hub, st["sid"], change)
    advance(hub, 3600)
    for st in stations[1::10]:
        go_offline(hub, st["sid"])
    hub.writer.flush(60)
    return hub


class Server:
    """The hub's app on waitress, plus one route serving the baseline file."""

    def __init__(self, hub, static_file: Path) -> None:
        # Registered before the first request, as Flask requires; the file's bytes are
        # written once the finder's size is known.
        hub.app.add_url_rule(STATIC, "bench_static",
                             lambda: send_file(static_file, mimetype="text/html",
                                               max_age=0, conditional=False))
        self.server = create_server(hub.app, host="127.0.0.1", port=0, threads=8)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.effective_port}"

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)


def load(chromium: Chromium, url: str, ready: str | None) -> dict:
    """One cold load of ``url`` on the slow link: bytes, requests and timings (ms);
    ``ready`` a script true once the page is ready for the rider."""
    page = chromium.page(PHONE["width"], PHONE["height"], geolocation=HERE,
                         permissions=["geolocation"], is_mobile=True,
                         device_scale_factor=3)
    page.set_default_timeout(120_000)  # 2 s a round trip: a load takes several
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", SLOW_3G)
    received: dict[str, int] = {}
    cdp.on("Network.loadingFinished",
           lambda e: received.__setitem__(e["requestId"], int(e["encodedDataLength"])))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, (url, response)
    drawn = None
    if ready:
        drawn = page.wait_for_function(ready, polling="raf").json_value()
    page.wait_for_load_state("networkidle")
    timings = page.evaluate("""() => {
        const paint = name => (performance.getEntriesByName(name)[0] || {}).startTime;
        const nav = performance.getEntriesByType('navigation')[0];
        return {fcp: paint('first-contentful-paint'), fp: paint('first-paint'),
                response: nav.responseEnd, load: nav.loadEventEnd};
    }""")
    page.context.close()
    return {"bytes": sum(received.values()), "requests": len(received), "ready": drawn,
            **timings}


def baseline_file(path: Path, size: int) -> None:
    """An HTML file of exactly ``size`` bytes: words first, a hidden filler after."""
    head = ('<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            '<title>驿站</title></head><body><h1>附近的驿站</h1><p>静态文件</p>'
            '<div hidden>').encode()
    tail = b"</div></body></html>\n"
    filler = size - len(head) - len(tail)
    if filler < 0:
        raise SystemExit(f"the finder transferred only {size} bytes: no baseline that small")
    rng = random.Random(size)  # text that would not compress away, were it compressed
    body = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(filler))
    path.write_bytes(head + body + tail)


def med(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="yizhan-bench-finder-") as tmp_name:
        tmp = Path(tmp_name)
        hub = build(tmp, args.stations, args.seed)
        static_file = tmp / "static.html"
        server = Server(hub, static_file)
        try:
            with Chromium() as chromium:
                # Unmeasured loads size the baseline (and warm the hub's code): the
                # finder's bytes, less what the static answer's own headers take.
                first = load(chromium, server.base + "/find", SORTED)
                baseline_file(static_file, first["bytes"])
                headers = load(chromium, server.base + STATIC, None)["bytes"] - first["bytes"]
                baseline_file(static_file, first["bytes"] - headers)
                finder, static = [], []
                for _ in range(args.rounds):
                    # The public pages' allowance refills on the hub's clock (1 a second).
                    hub.clock.advance(1)
                    finder.append(load(chromium, server.base + "/find", SORTED))
                    static.append(load(chromium, server.base + STATIC, None))
        finally:
            server.close()
            hub.close()
    f_bytes, s_bytes = med(finder, "bytes"), med(static, "bytes")
    print(f"\nFinder bench, {time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s, "
          f"{args.stations} stations, {args.rounds} rounds, Slow 3G (2 000 ms, 50 000 B/s)")
    print("| load | requests | bytes transferred | first contentful paint ms "
          "| list sorted ms | load event ms |")
    print("|---|---|---|---|---|---|")
    for name, rows in (("finder `/find`", finder), ("static file, same size", static)):
        print(f"| {name} | {med(rows, 'requests'):.0f} | {med(rows, 'bytes'):.0f} "
              f"| {med(rows, 'fcp'):.0f} | "
              f"{med(rows, 'ready'):.0f} | {med(rows, 'load'):.0f} |".replace("| nan |", "| — |"))
    print(f"\nRatios (medians), finder / static: bytes {f_bytes / s_bytes:.3f}, "
          f"first contentful paint {med(finder, 'fcp') / med(static, 'fcp'):.2f}, "
          f"load event {med(finder, 'load') / med(static, 'load'):.2f}; "
          f"list sorted / static paint {med(finder, 'ready') / med(static, 'fcp'):.2f}")
    print(f"Target: under 30 KB transferred: {f_bytes:.0f} B, "
          f"{'met' if f_bytes < 30 * 1024 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
