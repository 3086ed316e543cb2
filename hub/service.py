"""One hub process: ingest, scheduler and web, built from a configuration.

>>> hub = Hub(load_hub_config("hub.yaml"))
>>> hub.run()          # until SIGTERM / Ctrl-C
"""

from __future__ import annotations

import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from waitress.server import create_server

from hub.config import HubConfig
from hub.fleet import Fleet
from hub.ingest import Ingest
from hub.store import Store
from hub.web import create_app
from yizhan.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, config: HubConfig, clock: Clock = SYSTEM_CLOCK,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store = Store(config.database)
        self.fleet = Fleet(config, self.store)
        self.ingest = Ingest(config, self.fleet, clock, self.registry)
        self.app = create_app(self)
        self.scheduler: BackgroundScheduler | None = None
        self._server = None
        self._stopped = threading.Event()

    def problems(self) -> list[str]:
        out = []
        if not self.ingest.connected.is_set():
            out.append("not connected to the MQTT broker")
        if not self.store.ping():
            out.append("database unreachable")
        return out

    def sweep(self) -> None:
        for sid in self.fleet.sweep_silent(self.clock.ms()):
            log.warning("station %s is silent past %d heartbeats: down", sid,
                        self.config.missed_heartbeats)

    def start(self) -> None:
        """Start ingest and the scheduler (once per process); the web is ``serve()``."""
        self.ingest.start()
        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.add_job(self.sweep, "interval", seconds=5, id="sweep",
                               max_instances=1, coalesce=True)
        self.scheduler.start()

    def serve(self) -> None:
        self._server = create_server(self.app, host=self.config.http_host,
                                     port=self.config.http_port, threads=8,
                                     ident="yizhan-hub")
        log.info("hub web on http://%s:%s", self.config.http_host, self.http_port)
        try:
            self._server.run()
        except OSError:
            if not self._stopped.is_set():
                raise

    @property
    def http_port(self) -> int:
        if self._server is not None:
            return self._server.effective_port
        return self.config.http_port

    def run(self) -> None:
        self.start()
        try:
            self.serve()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask ``run()`` to return; safe from a signal handler."""
        self._stopped.set()
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.ingest.stop()
        self.store.close()
