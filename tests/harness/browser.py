"""Real Chromium for the kiosk's pages, and a whole station to point it at.

The kiosk runs in Chromium on the station's touchscreen, so its tests drive
Debian's Chromium (``/usr/bin/chromium``) headless through Playwright's sync
API — never a browser Playwright downloads — at the screen's size::

    with Chromium() as chromium:
        page = chromium.page(800, 480)
        page.goto(station.kiosk_url)
        page.tap("#borrow")

:class:`KioskStation` is what the page talks to: a real Mosquitto (from
``broker_factory``), the agent in this process on ``hardware: sim`` (so the test
holds the board simulator on its pseudo-terminal), the real ``yizhan kiosk``
process reading the same station file, and a Subscriber on the agent's events::

    st = KioskStation(tmp_path, broker_factory())
    st.board.wait_for_frame(Cmd.UNLOCK, timeout=5)
    st.wait_event("bank_borrowed")
    st.close()

Without the browser the tests are skipped with the reason, except under CI
(env ``CI`` set), where they fail instead of passing unseen.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from protocol import messages as m
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.harness.mqtt import Received, Subscriber, publish
from tests.harness.procs import Procs, free_port, wait_until, write_yaml

CHROMIUM = os.environ.get("YIZHAN_CHROMIUM", "/usr/bin/chromium")
#: Nothing in the background talks to the network, nothing asks a first-run question.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: The station's touchscreen (7-inch official Pi display); 1024×600 is the other common one.
SCREEN = (800, 480)

SID = "yh-chumen-01"
STATION_NAME = "楚门镇先锋驿站"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
#: A station with no simulated riders, visitors or cups: only the test moves things.
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}


class BrowserMissing(RuntimeError):
    """Debian's Chromium or the playwright package is not installed."""


def chromium_path() -> str:
    """The browser to drive, or :class:`BrowserMissing` saying what to install."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise BrowserMissing("the playwright package is missing: pip install -e '.[dev]'") \
            from err
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise BrowserMissing(f"{CHROMIUM} is missing: apt-get install chromium "
                             "(or set YIZHAN_CHROMIUM); never `playwright install`")
    return CHROMIUM


def require_chromium() -> str:
    """For a fixture: the browser's path; skip without it, but fail under CI."""
    import pytest

    try:
        return chromium_path()
    except BrowserMissing as err:
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is required under CI: {err}", pytrace=False)
        pytest.skip(str(err))


class Chromium:
    """One headless Chromium; :meth:`page` gives a fresh page in its own context
    (no cookies or storage shared between pages). :meth:`close` closes all."""

    def __init__(self, executable: str | None = None) -> None:
        from playwright.sync_api import sync_playwright

        executable = executable or chromium_path()
        self._profile = tempfile.mkdtemp(prefix="yizhan-chromium-")
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=executable, headless=True, args=list(CHROMIUM_ARGS),
                env={**os.environ, "HOME": self._profile})
        except BaseException:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self._contexts: list[Any] = []

    def page(self, width: int = SCREEN[0], height: int = SCREEN[1], **context: Any):
        """A new page at ``width``×``height`` CSS px, touch enabled like the kiosk's
        screen; ``context`` goes to ``browser.new_context`` (``locale``...)."""
        ctx = self.browser.new_context(
            viewport={"width": width, "height": height}, has_touch=True,
            locale=context.pop("locale", "zh-CN"), **context)
        ctx.set_default_timeout(10_000)  # every wait in a test is bounded
        self._contexts.append(ctx)
        return ctx.new_page()

    def close(self) -> None:
        for ctx in self._contexts:
            with contextlib.suppress(Exception):
                ctx.close()
        self._contexts.clear()
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._pw.stop()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def browser_page(width: int = SCREEN[0], height: int = SCREEN[1], **context: Any):
    """``with browser_page() as page:`` — Chromium and one page, closed after."""
    with Chromium() as chromium:
        yield chromium.page(width, height, **context)


# -- the station the kiosk talks to ------------------------------------------------------


def station_data(tmp_path: Path, broker: Any, *, api_port: int, kiosk_port: int,
                 slots: int = 6, kiosk: dict | None = None, **extra: Any) -> dict:
    """The station YAML both the agent and ``yizhan kiosk`` read; ``kiosk`` adds keys
    to its ``kiosk`` section (``borrow_rate``, ``idle``...), ``extra`` top-level keys."""
    (tmp_path / "fleet.key").write_bytes(FLEET_KEY)
    return {
        "hardware": "sim",
        "station": {"id": SID, "name": STATION_NAME},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
        "data_dir": str(tmp_path / "station"),
        "fleet_key_file": str(tmp_path / "fleet.key"),
        # The kiosk finds the agent through this file, so the port is fixed up front.
        "local_api": {"host": "127.0.0.1", "port": api_port},
        "kiosk": {"host": "127.0.0.1", "port": kiosk_port, **(kiosk or {})},
        "lockers": {"slots": slots, "poll_interval": "250ms"},
        "sim": dict(QUIET_SIM),
        **extra,
    }


def staff_directory(staff_id: str = "li", pin: str = "2468", *, rev: int = 1,
                    **policy: Any) -> m.Directory:
    """A Directory with one staff member (a cheap PIN hash: tests, not security)."""
    from firmware.directory import hash_pin

    return m.Directory(
        rev=rev, ts=int(time.time() * 1000), policy=m.Policy(**policy), riders=(),
        staff=(m.StaffEntry(id=staff_id, name="李师傅", pin=hash_pin(pin, iterations=1000)),),
        denied=())


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _kiosk_app(config_file: Path) -> Any:
    from kiosk import create_app
    from kiosk.config import load_kiosk_config

    return create_app(load_kiosk_config(config_file))


class KioskStation:
    """Broker, in-process agent on sim hardware, the kiosk, and an event Subscriber.

    ``kiosk="process"`` runs the real ``yizhan kiosk --config station.yaml``;
    ``kiosk="thread"`` serves ``kiosk.create_app(config)`` with waitress on a
    thread of this process (for debugging the kiosk under pytest); a callable
    ``factory(station_file) -> WSGI app`` is served the same way.
    """

    def __init__(self, tmp_path: Path, broker: Any, *, directory: m.Directory | None = None,
                 kiosk: Any = "process", kiosk_options: dict | None = None,
                 slots: int = 6, **extra: Any) -> None:
        from firmware.agent import Agent
        from firmware.config import load_station_config
        from firmware.hardware.station import build_hardware
        from yizhan.clock import SYSTEM_CLOCK
        from yizhan.watchdog import Notifier

        self.tmp_path = tmp_path
        self.broker = broker
        self.api_port = free_port()
        self.kiosk_port = free_port()
        self.config_file = write_yaml(tmp_path / "station.yaml", station_data(
            tmp_path, broker, api_port=self.api_port, kiosk_port=self.kiosk_port,
            slots=slots, kiosk=kiosk_options, **extra))
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.kiosk_url = f"http://127.0.0.1:{self.kiosk_port}"
        self.procs = Procs(tmp_path)
        self.kiosk_proc = None
        self._kiosk_server = None
        self.agent = None
        self.thread: threading.Thread | None = None
        if directory is not None:  # retained, so the agent finds it when it subscribes
            publish(broker, topic(SID, Kind.DIRECTORY), m.encode(directory), retain=True)
        self.events = Subscriber(broker, [topic(SID, Kind.EVENT)])
        try:
            self.config = load_station_config(self.config_file)
            self.hardware = build_hardware(self.config, SYSTEM_CLOCK)
            try:
                self.agent = Agent(self.config, SYSTEM_CLOCK, self.hardware,
                                   notifier=Notifier(None))
            except BaseException:
                self.hardware.close()  # the agent closes it once it runs, not before
                raise
            self.thread = threading.Thread(target=self.agent.run, name="agent", daemon=True)
            self.thread.start()
            wait_until(lambda: self.agent.local_api_port, 10, "the agent's local API")
            wait_until(self.agent.link.connected.is_set, 10, "the agent connected")
            if directory is not None:
                wait_until(lambda: self.agent.directory.rev == directory.rev, 10,
                           "the directory applied")
            self.board = self.hardware.simulation.board
            self._start_kiosk(kiosk)
        except BaseException:
            self.close()
            raise

    # -- the kiosk ------------------------------------------------------------------------

    def _start_kiosk(self, how: Any) -> None:
        if how == "process":
            self.kiosk_proc = self.procs.start("kiosk", "kiosk", "--config",
                                               str(self.config_file))

            def up() -> bool:
                if not self.kiosk_proc.alive():
                    raise AssertionError(f"yizhan kiosk exited {self.kiosk_proc.popen.returncode}:"
                                         f"\n{self.kiosk_proc.tail()}")
                return http_get(self.kiosk_url + "/", timeout=2)[0] == 200

            wait_until(up, 10, "yizhan kiosk answering GET /", on_fail=self.kiosk_proc.tail)
        elif how == "thread" or callable(how):
            from waitress.server import create_server

            app = how(self.config_file) if callable(how) else _kiosk_app(self.config_file)
            self._kiosk_server = create_server(app, host="127.0.0.1", port=self.kiosk_port,
                                               threads=4)
            threading.Thread(target=self._kiosk_server.run, name="kiosk", daemon=True).start()
            wait_until(lambda: http_get(self.kiosk_url + "/", timeout=2)[0] == 200, 10,
                       "the kiosk answering GET /")
        else:
            raise ValueError(f"kiosk must be 'process' or 'thread', not {how!r}")

    def kiosk_log(self) -> str:
        return self.kiosk_proc.tail() if self.kiosk_proc is not None else "(kiosk in-process)"

    # -- what the test looks at ---------------------------------------------------------

    @staticmethod
    def rider(phone: str) -> str:
        """The rider id the kiosk must send for ``phone`` (contract §1)."""
        return rider_id(FLEET_KEY, phone)

    def api(self, path: str) -> Any:
        """GET the agent's local API, as JSON."""
        status, body = http_get(self.api_url + path)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)

    def wait_event(self, type_: str, timeout: float = 10.0, **data: Any) -> dict:
        """The first event of ``type_`` on the broker whose data has ``data``."""
        def match(x: Received) -> bool:
            e = x.json()
            return e.get("type") == type_ and all(
                e.get("data", {}).get(k) == v for k, v in data.items())

        return self.events.wait_for(match, timeout=timeout).json()

    def event_types(self) -> list[str]:
        return [x.json().get("type") for x in self.events.messages]

    def unlocks(self, after: int = 0) -> list[int]:
        """Slots the board was asked to unlock in ``frames_received[after:]``."""
        from protocol.frames import Cmd

        return [f.payload[0] for f in self.board.frames_received[after:]
                if f.cmd == Cmd.UNLOCK]

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[BaseException] = []
        for step in (self.procs.close, self._stop_kiosk_thread, self._stop_agent,
                     self.events.close):
            try:
                step()
            except BaseException as err:  # every step runs, the first failure is raised
                errors.append(err)
        if errors:
            raise errors[0]

    def _stop_kiosk_thread(self) -> None:
        if self._kiosk_server is not None:
            self._kiosk_server.close()
            self._kiosk_server = None

    def _stop_agent(self) -> None:
        if self.agent is None:
            return
        self.agent.stop()
        if self.thread is not None:
            self.thread.join(15)
            assert not self.thread.is_alive(), "the agent did not stop within 15 s"
        self.agent = None

    def __enter__(self) -> KioskStation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
