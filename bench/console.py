"""Console render time at 5 000 stations: the fleet page and a station page against
a static file from the same server, in the same run (issue 16).

An in-process hub (SQLite file, not started: its fleet is handed each station's
birth and State as the ingest would, then a day of the hub's clock with 2 % of
the stations down once and 3 % with an open alert) served by waitress on a free
port, the console signed in through its real form. One keep-alive HTTP client
asks, in turn, the fleet page (every station sorted and counted, worst 200
shown), the fleet page of one group (100 stations), a station page (a random
station: slots, 90-day bar, events, commands), the console's stylesheet, and
every tenth round the uptime report (30 days, every station), ``--rounds``
times; the latency is the client's, to the last byte.
The garbage collector is tuned as the running hub tunes it (``Hub.run``).

    .venv/bin/python bench/console.py                 # 5 000 stations, 200 rounds
    .venv/bin/python bench/console.py --stations 50000 --rounds 30
"""

from __future__ import annotations

import argparse
import gc
import http.client
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hub.config import parse_hub_config  # noqa: E402
from hub.service import GC_GEN2_THRESHOLD, Hub  # noqa: E402
from protocol import examples  # noqa: E402
from protocol import messages as m  # noqa: E402
from protocol.topics import Kind  # noqa: E402
from yizhan.clock import ManualClock  # noqa: E402

T0 = 1_764_201_600.0
PASSWORD = "bench password 0123"
GROUPS = 50


def build(tmp: Path, n: int, seed: int) -> Hub:
    rng = random.Random(seed)
    stations = [{"sid": f"yh-g{i % GROUPS:02d}-{i:05d}", "name": f"驿站 {i}",
                 "group": f"g{i % GROUPS:02d}"} for i in range(n)]
    config = parse_hub_config({
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "database": f"sqlite:///{tmp / 'hub.db'}",
        "http": {"host": "127.0.0.1", "port": 0},
        "stations": stations,
        "console": {"secret_key_file": str(tmp / "console.key")},
    })
    clock = ManualClock(T0)
    hub = Hub(config, clock)
    hub.ledger.hub_started(clock.ms())
    users = hub.app.extensions["yizhan_console"].users
    users.add("desk", PASSWORD, "ops")
    base_status, base_state = examples.example("status"), examples.example("state")
    slots = [dict(base_state["lockers"]["slots"][0], slot=i + 1, bank=f"PB{i:04X}",
                  charge=rng.choice((15, 40, 85, 96, 100))) for i in range(12)]
    for st in stations:
        now = clock.ms()
        status = dict(base_status, sid=st["sid"], ts=now)
        hub.fleet.apply_status(m.from_dict(Kind.STATUS, status, topic_sid=st["sid"]), now)
        state = dict(base_state, sid=st["sid"], ts=now, rev=1,
                     lockers={"online": True, "slots": rng.sample(slots, 12)})
        hub.fleet.apply_state(m.from_dict(Kind.STATE, state, topic_sid=st["sid"]), now)
    clock.advance(12 * 3600)
    hub.ledger.hub_alive(clock.ms())
    down = rng.sample(stations, n // 50)
    for st in down:
        now = clock.ms()
        offline = {"v": 1, "sid": st["sid"], "epoch": base_status["epoch"], "state": "offline",
                   "reason": "lost", "birth": base_status["birth"]}
        hub.fleet.apply_status(m.from_dict(Kind.STATUS, offline, topic_sid=st["sid"]), now)
    for st in rng.sample(stations, 3 * n // 100):
        hub.alerts.fire("chargers_low", st["sid"], "warning", "可借充电宝不足")
    clock.advance(12 * 3600)
    hub.ledger.hub_alive(clock.ms())
    hub.writer.flush(60)
    return hub


class Client:
    """One keep-alive connection with the console's session cookie."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        cookie = resp.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return resp.status, data

    def sign_in(self) -> None:
        _, page = self.request("GET", "/console/signin")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        form = urllib.parse.urlencode({"name": "desk", "password": PASSWORD, "csrf": csrf})
        status, _ = self.request("POST", "/console/signin", form)
        assert status == 303, status

    def timed(self, path: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        status, data = self.request("GET", path)
        took = time.perf_counter() - t0
        assert status == 200, (path, status)
        return took, len(data)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--no-uptime", dest="uptime", action="store_false",
                   help="leave out the 30-day uptime report")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hub = build(Path(tmp), args.stations, args.seed)
        print(f"hub of {args.stations} stations built in {time.perf_counter() - t0:.1f} s")
        # As the running hub does (Hub.run → start(tune_gc=True)): the fleet as loaded
        # frozen out of the collector's way, full collections on the scheduler's time.
        gc.set_threshold(*gc.get_threshold()[:2], GC_GEN2_THRESHOLD)
        hub.collect_all_garbage()
        web = threading.Thread(target=hub.serve, daemon=True)
        web.start()
        while hub._server is None:
            time.sleep(0.01)
        try:
            client = Client(hub.http_port)
            client.sign_in()
            sids = hub.fleet.sids()
            rng = random.Random(args.seed)
            pages: dict[str, list[float]] = {"fleet": [], "group": [], "station": [],
                                             "uptime": [], "static": []}
            sizes: dict[str, int] = {}
            # The uptime report (30 days, every station) is slow enough to ask
            # only every tenth round; --no-uptime leaves it out.
            uptime = False
            for _ in range(3):  # warm: templates compiled, caches filled
                client.timed("/console/")
                client.timed(f"/console/stations/{sids[0]}")
                client.timed("/console/static/console.css")
            if args.uptime:
                client.timed("/console/uptime")
            for i in range(args.rounds):
                uptime = args.uptime and i % 10 == 0
                for name, path in (("fleet", "/console/"),
                                   ("static", "/console/static/console.css"),
                                   ("group", f"/console/?group=g{rng.randrange(GROUPS):02d}"),
                                   ("station", f"/console/stations/{rng.choice(sids)}"),
                                   ("static", "/console/static/console.css"),
                                   *((("uptime", "/console/uptime"),) if uptime else ())):
                    took, size = client.timed(path)
                    pages[name].append(took)
                    sizes[name] = size
        finally:
            hub.stop()
            web.join(10)
            hub.close()
    static95 = pct(pages["static"], 0.95)
    print(f"{'page':8} {'n':>4} {'bytes':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'p95 ÷ static p95':>17}")
    for name, values in pages.items():
        p95 = pct(values, 0.95)
        print(f"{name:8} {len(values):4d} {sizes[name]:9d} "
              f"{statistics.median(values) * 1000:8.1f} {p95 * 1000:8.1f} "
              f"{max(values) * 1000:8.1f} {p95 / static95:17.1f}")
    fleet95 = pct(pages["fleet"], 0.95) * 1000
    print(f"fleet page p95 {fleet95:.1f} ms: {'within' if fleet95 < 150 else 'OVER'} the "
          f"150 ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
