"""The fleet as the hub sees it: each station's birth, liveness and last State.

The ordering rules of contract §3 and §4 live here and nowhere else:

* an ``online`` Status makes its ``birth`` the current one (an older birth of the
  same epoch is stale);
* an ``offline`` Status counts only for the current (epoch, birth), or when no
  birth is known yet — a stale last will never marks a reconnected station down;
* a State is applied only when its (epoch, rev) is newer; a new epoch resets;
* an outage starts at the hub receive time of the last message seen;
* a station that stops talking without a will (the broker restarted and left
  a retained "online" behind) is down after ``missed`` heartbeats.

All times are the hub's own clock, in integer milliseconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from hub.config import HubConfig
from hub.store import Store
from protocol import messages as m

APPLIED, DUPLICATE, STALE, INVALID = "applied", "duplicate", "stale", "invalid"


@dataclass
class StationView:
    sid: str
    name: str
    group: str | None = None
    epoch: str | None = None
    birth: int | None = None
    online: bool = False
    since_ms: int | None = None
    last_seen_ms: int | None = None
    offline_reason: str | None = None
    state_rev: int | None = None
    state: dict[str, Any] | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "sid": self.sid, "name": self.name, "grp": self.group, "epoch": self.epoch,
            "birth": self.birth, "online": self.online, "since_ms": self.since_ms,
            "last_seen_ms": self.last_seen_ms, "offline_reason": self.offline_reason,
            "state_rev": self.state_rev, "state": self.state,
        }

    def chargers_ready(self, min_charge: int = 80) -> int | None:
        lockers = (self.state or {}).get("lockers")
        if not lockers:
            return None
        return sum(1 for s in lockers.get("slots", ())
                   if s.get("bank") and not s.get("fault") and (s.get("charge") or 0) >= min_charge)

    def water(self) -> str | None:
        dispenser = (self.state or {}).get("dispenser")
        return dispenser.get("level_state") if dispenser else None


class Fleet:
    """Live view of every station, persisted through ``Store`` on each change."""

    def __init__(self, config: HubConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.RLock()
        self._stations: dict[str, StationView] = {}
        for row in store.load_stations():
            view = StationView(
                sid=row["sid"], name=row["name"] or row["sid"], group=row["grp"],
                epoch=row["epoch"], birth=row["birth"], online=bool(row["online"]),
                since_ms=row["since_ms"], last_seen_ms=row["last_seen_ms"],
                offline_reason=row["offline_reason"], state_rev=row["state_rev"],
                state=row["state"],
            )
            self._stations[view.sid] = view
        for meta in config.stations:
            view = self._view(meta.sid)
            view.name, view.group = meta.name, meta.group

    def _view(self, sid: str) -> StationView:
        view = self._stations.get(sid)
        if view is None:
            meta = self.config.station_meta(sid)
            view = StationView(sid=sid, name=meta.name if meta else sid,
                               group=meta.group if meta else None)
            self._stations[sid] = view
        return view

    def stations(self) -> list[StationView]:
        with self._lock:
            return sorted(self._stations.values(), key=lambda v: v.sid)

    def get(self, sid: str) -> StationView | None:
        with self._lock:
            return self._stations.get(sid)

    # -- applying what the stations say ----------------------------------------------

    def apply_status(self, status: m.Status, now_ms: int) -> str:
        with self._lock:
            view = self._view(status.sid)
            if status.state == "online":
                if (view.epoch == status.epoch and view.birth is not None
                        and status.birth < view.birth):
                    return STALE
                was_online = view.online
                new_epoch = view.epoch != status.epoch
                view.epoch, view.birth = status.epoch, status.birth
                if new_epoch:
                    view.state_rev, view.state = None, None
                view.last_seen_ms = now_ms
                view.offline_reason = None
                transition = None
                if not was_online:
                    view.online, view.since_ms = True, now_ms
                    transition = self._transition(view, now_ms, "birth")
                self.store.save_station(view.row(), transition)
                return APPLIED
            # offline: a will or a clean shutdown
            if view.birth is not None and (status.epoch, status.birth) != (view.epoch, view.birth):
                return STALE
            if view.birth is None:
                view.epoch, view.birth = status.epoch, status.birth
            if not view.online and view.offline_reason is not None:
                return DUPLICATE
            self._go_offline(view, status.reason or "lost", now_ms)
            return APPLIED

    def apply_state(self, state: m.State, now_ms: int) -> str:
        with self._lock:
            view = self._view(state.sid)
            if view.epoch == state.epoch and view.state_rev is not None:
                if state.rev == view.state_rev:
                    return DUPLICATE
                if state.rev < view.state_rev:
                    return STALE
            if view.epoch != state.epoch:
                # A new epoch: the station's storage was wiped; start afresh.
                view.epoch, view.birth = state.epoch, None
            view.state_rev = state.rev
            view.state = state.to_dict()
            self._seen(view, now_ms)
            self.store.save_station(view.row())
            return APPLIED

    def seen(self, sid: str, epoch: str, now_ms: int) -> None:
        """Any other message from the station proves it alive."""
        with self._lock:
            view = self._view(sid)
            if view.epoch == epoch:
                self._seen(view, now_ms)

    def _seen(self, view: StationView, now_ms: int) -> None:
        view.last_seen_ms = now_ms
        if not view.online and view.offline_reason == "silent":
            # It was only presumed down for silence; it is talking again.
            view.online, view.since_ms, view.offline_reason = True, now_ms, None
            self.store.save_station(view.row(), self._transition(view, now_ms, "heard"))

    def sweep_silent(self, now_ms: int) -> list[str]:
        """Mark down every online station not heard for ``missed`` heartbeats."""
        limit = int(self.config.heartbeat * self.config.missed_heartbeats * 1000)
        gone = []
        with self._lock:
            for view in self._stations.values():
                if view.online and view.last_seen_ms is not None \
                        and now_ms - view.last_seen_ms > limit:
                    self._go_offline(view, "silent", now_ms)
                    gone.append(view.sid)
        return gone

    def _go_offline(self, view: StationView, reason: str, now_ms: int) -> None:
        was_online = view.online
        view.online, view.offline_reason = False, reason
        transition = None
        if was_online:
            # The outage began when the station was last heard, not now.
            view.since_ms = view.last_seen_ms if view.last_seen_ms is not None else now_ms
            transition = self._transition(view, view.since_ms, reason)
        self.store.save_station(view.row(), transition)

    @staticmethod
    def _transition(view: StationView, at_ms: int, reason: str) -> dict[str, Any]:
        return {"sid": view.sid, "at_ms": at_ms, "online": view.online, "reason": reason,
                "epoch": view.epoch, "birth": view.birth}
