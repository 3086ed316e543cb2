"""The Directory of contract §8, kept by the hub and published to each station.

Staff (who may sign in on a kiosk), registered riders, denied riders and the
lending policy live in the hub's database (hub/storage/schema.py); every change
publishes, retained on ``yizhan/v1/{sid}/directory``, the Directory of each
station it changed, with a new ``rev``. A station keeps the highest rev it got
(firmware/directory.py), and a station that was offline finds the retained copy
when it subscribes again.

    directory = Directory(store, clock, publish, stations, fleet_key=key)
    directory.add_staff({"id": "li", "name": "李师傅", "pin": "2468"}, by="desk")
    directory.deny({"phone": "13812345678", "reason": "..."}, by="desk")
    directory.tick()       # the scheduler: expiries, new stations, a broker that forgot

What is kept: PINs only as their ``pbkdf2_sha256`` hash (protocol/pins.py),
riders only by their rider id (contract §1) and masked number; the audit log
says who changed what, never a PIN nor a number (docs/security.md).

``rev`` is the hub's clock in ms when it is published, or one more than the
station's last rev when the clock stands behind it: strictly increasing across
restarts, and past what the stations hold even after the hub's database was
restored from an older backup.

A change that would make any station's Directory exceed the 64 KiB a payload
may have (contract §2) is refused as a whole (:class:`DirectoryTooLarge`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from hub.fleet import directory_fields as fields
from hub.fleet.directory_fields import BadField
from hub.storage.schema import denied, directory_audit, directory_revs, policies, riders, staff
from hub.storage.store import Store
from protocol import messages as m
from protocol.ids import mask_phone, rider_id
from protocol.pins import hash_pin
from protocol.topics import Kind, topic
from yizhan.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["BadField", "Directory", "DirectoryConflict", "DirectoryError", "DirectoryNotFound",
           "DirectoryTooLarge"]

#: Every Directory is one MQTT payload (contract §2; the broker's max_packet_size
#: 70000 in deploy/mosquitto/yizhan.conf leaves room for the topic and header).
MAX_DIRECTORY = m.MAX_PAYLOAD
#: The widest rev and ts a Directory can carry, for sizing one before it is sent.
_WIDEST = m.MAX_INT
AUDIT_MAX = 1000
#: Publish is a function like ``Ingest.publish(topic, payload, retain=...)``; it
#: raises (NotConnected) while the broker is away, and the tick tries again.
Publish = Callable[..., object]
#: (sid, group) of every station the hub knows.
Stations = Callable[[], Iterable[tuple[str, str | None]]]


class DirectoryError(Exception):
    """A change refused; ``status`` and ``code`` for the API's error body."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class DirectoryNotFound(DirectoryError):
    status = 404


class DirectoryConflict(DirectoryError):
    status = 409


class DirectoryTooLarge(DirectoryConflict):
    """The change would make a station's Directory exceed MAX_DIRECTORY bytes."""


class _Refused(Exception):
    """Rolls a change's transaction back, carrying the error to raise."""

    def __init__(self, error: DirectoryError) -> None:
        self.error = error


def _digest(content: dict[str, Any]) -> str:
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def contacts(store: Store, staff_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """How to reach staff members by notification: ``{id: {id, name, phone,
    feishu_open_id}}`` for those of ``staff_ids`` the Directory has, phone
    unmasked (the chat platforms @-mention by the number). Hub-side only: for the
    router's @-mentions (hub/alerting/routing.py), never published nor shown."""
    wanted = sorted({i for i in staff_ids if isinstance(i, str)})
    if not wanted:
        return {}
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(staff.c.id, staff.c.name, staff.c.phone,
                                      staff.c.feishu_open_id)
                            .where(staff.c.id.in_(wanted)))
        return {r.id: {"id": r.id, "name": r.name, "phone": r.phone,
                       "feishu_open_id": r.feishu_open_id} for r in rows}


class Directory:
    """Staff, riders, denied riders and policies; each change published at once.

    Thread-safe: changes and publishing are serialised by one lock (changes are
    rare; a rev must not be handed out twice).
    """

    def __init__(self, store: Store, clock: Clock, publish: Publish, stations: Stations, *,
                 fleet_key: bytes | None = None, rider_ids: str = "hmac",
                 min_charge: int = 80, loan_hours: float = 24.0,
                 fresh_sessions: Callable[[], int] | None = None) -> None:
        self.store = store
        self.clock = clock
        self._publish = publish
        self._stations = stations
        self.fleet_key = fleet_key
        self.rider_ids = rider_ids
        #: The fleet's policy (the hub's ``policy:``), under every override.
        self.fleet_policy = {"lending": "open", "min_charge": min_charge, "max_per_rider": 1,
                             "loan_hours": max(1, math.ceil(loan_hours))}
        self._fresh_sessions = fresh_sessions
        self._sessions_seen: int | None = None
        #: The stations directory_revs holds a row of (None: not read yet).
        self._sent_sids: set[str] | None = None
        self._lock = threading.RLock()
        self._next_expiry: int | None = None
        self._dirty = True  # the first tick compares everything with what was sent

    # -- reading -------------------------------------------------------------------

    def _rows(self, query: Any) -> list[Any]:
        with self.store.engine.connect() as conn:
            return list(conn.execute(query))

    @staticmethod
    def _staff_dict(r: Any) -> dict[str, Any]:
        return {"id": r.id, "name": r.name,
                "phone": mask_phone(r.phone) if r.phone else None,
                "feishu_open_id": r.feishu_open_id,
                "groups": json.loads(r.groups), "created_at": r.created_ms,
                "updated_at": r.updated_ms}

    def list_staff(self) -> list[dict[str, Any]]:
        return [self._staff_dict(r) for r in self._rows(sa.select(staff).order_by(staff.c.id))]

    def get_staff(self, staff_id: str) -> dict[str, Any]:
        rows = self._rows(sa.select(staff).where(staff.c.id == staff_id))
        if not rows:
            raise DirectoryNotFound("not_found", f"no staff member {staff_id[:64]!r}")
        return self._staff_dict(rows[0])

    @staticmethod
    def _rider_dict(r: Any) -> dict[str, Any]:
        return {"id": r.id, "masked": r.masked, "registered_at": r.registered_ms,
                "registered_by": r.registered_by}

    def list_riders(self, limit: int = AUDIT_MAX) -> list[dict[str, Any]]:
        q = sa.select(riders).order_by(riders.c.registered_ms.desc(), riders.c.id).limit(limit)
        return [self._rider_dict(r) for r in self._rows(q)]

    @staticmethod
    def _denied_dict(r: Any) -> dict[str, Any]:
        return {"rider": r.rider, "reason": r.reason, "expires_at": r.expires_ms,
                "created_at": r.created_ms, "created_by": r.created_by}

    def list_denied(self) -> list[dict[str, Any]]:
        now = self.clock.ms()
        q = (sa.select(denied)
             .where(sa.or_(denied.c.expires_ms.is_(None), denied.c.expires_ms > now))
             .order_by(denied.c.created_ms.desc(), denied.c.rider))
        return [self._denied_dict(r) for r in self._rows(q)]

    def policies(self) -> dict[str, Any]:
        rows = self._rows(sa.select(policies).order_by(policies.c.scope, policies.c.name))
        out: dict[str, Any] = {"fleet": dict(self.fleet_policy), "groups": [], "stations": []}
        for r in rows:
            key = "group" if r.scope == "group" else "sid"
            out[r.scope + "s"].append({key: r.name, **self._override(r),
                                       "updated_at": r.updated_ms, "updated_by": r.updated_by})
        return out

    @staticmethod
    def _override(r: Any) -> dict[str, Any]:
        return {f: getattr(r, f) for f in fields.POLICY_FIELDS if getattr(r, f) is not None}

    def station(self, sid: str) -> dict[str, Any]:
        """What the station was last sent: rev, ts, size, and its policy and counts."""
        with self.store.engine.connect() as conn:
            sent = conn.execute(sa.select(directory_revs)
                                .where(directory_revs.c.sid == sid)).first()
            content = self._contents(conn, self.clock.ms(), only=sid).get(sid)
        if content is None:
            raise DirectoryNotFound("not_found", f"no station {sid!r} is known to the hub")
        return {"sid": sid, "rev": sent.rev if sent else None, "ts": sent.ts if sent else None,
                "size": sent.size if sent else None,
                "current": sent is not None and sent.digest == _digest(content),
                "policy": content["policy"], "riders": len(content["riders"]),
                "staff": len(content["staff"]), "denied": len(content["denied"])}

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        t = directory_audit
        q = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        return [{"id": r.id, "at": r.at_ms, "by": r.actor, "action": r.action,
                 "entity": r.entity, "entity_id": r.entity_id,
                 "detail": json.loads(r.detail) if r.detail else None}
                for r in self._rows(q)]

    # -- changing ----------------------------------------------------------------------

    def _change(self, by: str | None, action: str, entity: str, entity_id: str,
                detail: dict[str, Any] | None, apply: Callable[[sa.Connection, int], Any]) -> Any:
        """Apply a change, audit it, check every station's size, commit, publish."""
        with self._lock:
            now = self.clock.ms()
            try:
                with self.store.engine.begin() as conn:
                    result = apply(conn, now)
                    conn.execute(directory_audit.insert().values(
                        at_ms=now, actor=by, action=action, entity=entity,
                        entity_id=entity_id,
                        detail=json.dumps(detail, ensure_ascii=False) if detail else None))
                    contents = self._contents(conn, now)
                    self._check_sizes(contents)
            except _Refused as refused:
                raise refused.error from None
            log.info("directory: %s %s %s by %s", action, entity, entity_id, by)
            self._send(contents, now)
            return result

    def _check_sizes(self, contents: dict[str, dict[str, Any]]) -> None:
        sizes: dict[int, int] = {}
        for sid, content in contents.items():
            key = id(content)  # shared by stations alike (_contents)
            if key not in sizes:
                sizes[key] = len(self._payload(content, _WIDEST, _WIDEST))
            if sizes[key] > MAX_DIRECTORY:
                raise _Refused(DirectoryTooLarge(
                    "directory_too_large",
                    f"refused: station {sid}'s Directory would be {sizes[key]} bytes, over "
                    f"the {MAX_DIRECTORY} bytes one MQTT message may carry (contract §2). "
                    "Remove riders or staff, or give staff groups, first"))

    def add_staff(self, body: Any, by: str | None) -> dict[str, Any]:
        body = self._object(body, ("id", "name", "phone", "pin", "groups", "feishu_open_id"))
        sid_ = fields.staff_id(body.get("id"))
        name = fields.text(body.get("name"), "name", fields.NAME_MAX)
        phone = None if body.get("phone") is None else fields.phone(body["phone"])
        open_id = (None if body.get("feishu_open_id") is None
                   else fields.feishu_open_id(body["feishu_open_id"]))
        pin_hash = hash_pin(fields.pin(body.get("pin")))
        groups = fields.groups(body.get("groups", []))

        def apply(conn: sa.Connection, now: int) -> None:
            if conn.execute(sa.select(staff.c.id).where(staff.c.id == sid_)).first():
                raise _Refused(DirectoryConflict("exists", f"staff member {sid_!r} exists; "
                                                 "PATCH changes them"))
            conn.execute(staff.insert().values(
                id=sid_, name=name, phone=phone, pin=pin_hash, groups=json.dumps(groups),
                feishu_open_id=open_id, created_ms=now, updated_ms=now))

        self._change(by, "staff.add", "staff", sid_,
                     {"name": name, "groups": groups, "phone": phone is not None,
                      "feishu_open_id": open_id is not None}, apply)
        return self.get_staff(sid_)

    def change_staff(self, staff_id: str, body: Any, by: str | None) -> dict[str, Any]:
        body = self._object(body, ("name", "phone", "pin", "groups", "feishu_open_id"))
        values: dict[str, Any] = {}
        if "name" in body:
            values["name"] = fields.text(body["name"], "name", fields.NAME_MAX)
        if "phone" in body:
            values["phone"] = None if body["phone"] is None else fields.phone(body["phone"])
        if "feishu_open_id" in body:
            values["feishu_open_id"] = (None if body["feishu_open_id"] is None
                                        else fields.feishu_open_id(body["feishu_open_id"]))
        if "groups" in body:
            values["groups"] = json.dumps(fields.groups(body["groups"]))
        if "pin" in body:
            values["pin"] = hash_pin(fields.pin(body["pin"]))
        if not values:
            raise BadField("bad_body", "give at least one of name, phone, pin, groups, "
                           "feishu_open_id")
        # What changed, said without the PIN or the number themselves.
        detail = {k: ("set" if k in ("pin", "phone", "feishu_open_id") and v is not None else
                      json.loads(v) if k == "groups" else v) for k, v in values.items()}

        def apply(conn: sa.Connection, now: int) -> None:
            done = conn.execute(staff.update().where(staff.c.id == staff_id)
                                .values(updated_ms=now, **values))
            if done.rowcount == 0:
                raise _Refused(DirectoryNotFound("not_found",
                                                 f"no staff member {staff_id[:64]!r}"))

        self._change(by, "staff.pin_reset" if list(values) == ["pin"] else "staff.change",
                     "staff", staff_id, detail, apply)
        return self.get_staff(staff_id)

    def remove_staff(self, staff_id: str, by: str | None) -> dict[str, Any]:
        found = self.get_staff(staff_id)

        def apply(conn: sa.Connection, now: int) -> None:
            conn.execute(staff.delete().where(staff.c.id == staff_id))

        self._change(by, "staff.remove", "staff", staff_id, None, apply)
        return found

    def rider_of(self, phone: str) -> str:
        if self.fleet_key is None:
            raise DirectoryConflict("no_fleet_key", "the hub has no fleet key "
                                    "(fleet_key_file: in its configuration), so it cannot "
                                    "turn a phone number into the stations' rider id")
        return rider_id(self.fleet_key, fields.phone(phone), self.rider_ids)

    def register_rider(self, body: Any, by: str | None) -> tuple[dict[str, Any], bool]:
        """Register a rider by phone and PIN (again: a new PIN); (rider, created)."""
        body = self._object(body, ("phone", "pin"))
        phone = fields.phone(body.get("phone"))
        pin = fields.pin(body.get("pin"))
        rid, masked = self.rider_of(phone), mask_phone(phone)
        pin_hash = hash_pin(pin)  # before the transaction: 200 000 rounds take a while

        def apply(conn: sa.Connection, now: int) -> bool:
            if conn.execute(riders.update().where(riders.c.id == rid)
                            .values(pin=pin_hash)).rowcount:
                return False
            conn.execute(riders.insert().values(id=rid, masked=masked, pin=pin_hash,
                                                registered_ms=now, registered_by=by))
            return True

        created = self._change(by, "rider.register", "rider", rid, {"masked": masked}, apply)
        row = self._rows(sa.select(riders).where(riders.c.id == rid))[0]
        return self._rider_dict(row), created

    def remove_rider(self, rid: str, by: str | None) -> dict[str, Any]:
        rid = fields.rider(rid)
        rows = self._rows(sa.select(riders).where(riders.c.id == rid))
        if not rows:
            raise DirectoryNotFound("not_found", f"no registered rider {rid}")

        def apply(conn: sa.Connection, now: int) -> None:
            conn.execute(riders.delete().where(riders.c.id == rid))

        self._change(by, "rider.remove", "rider", rid, None, apply)
        return self._rider_dict(rows[0])

    def deny(self, body: Any, by: str | None) -> dict[str, Any]:
        """Deny a rider (by ``rider`` id or ``phone``) with a ``reason``, until
        ``expires_at`` (ms, in the future) or until removed; again: replaces."""
        body = self._object(body, ("rider", "phone", "reason", "expires_at"))
        if ("rider" in body) == ("phone" in body):
            raise BadField("bad_body", "give the rider id (rider) or the phone number "
                           "(phone), one of the two")
        rid = fields.rider(body["rider"]) if "rider" in body else self.rider_of(body["phone"])
        reason = fields.text(body.get("reason"), "reason", fields.REASON_MAX)
        now = self.clock.ms()
        expires = body.get("expires_at")
        if expires is not None:
            expires = fields.whole(expires, "expires_at", 0, m.MAX_INT)
            if expires <= now:
                raise BadField("bad_time", "expires_at must be in the future (Unix ms)")

        def apply(conn: sa.Connection, at: int) -> None:
            conn.execute(denied.delete().where(denied.c.rider == rid))
            conn.execute(denied.insert().values(rider=rid, reason=reason, expires_ms=expires,
                                                created_ms=at, created_by=by))

        self._change(by, "denied.add", "rider", rid,
                     {"reason": reason, "expires_at": expires}, apply)
        with self._lock:
            if expires is not None and (self._next_expiry is None or expires < self._next_expiry):
                self._next_expiry = expires
        return {"rider": rid, "reason": reason, "expires_at": expires, "created_at": now,
                "created_by": by}

    def undeny(self, rid: str, by: str | None) -> dict[str, Any]:
        rid = fields.rider(rid)
        found = [d for d in self.list_denied() if d["rider"] == rid]
        if not found:
            raise DirectoryNotFound("not_found", f"rider {rid} is not denied")

        def apply(conn: sa.Connection, now: int) -> None:
            conn.execute(denied.delete().where(denied.c.rider == rid))

        self._change(by, "denied.remove", "rider", rid, None, apply)
        return found[0]

    def set_policy(self, scope: str, name: Any, body: Any, by: str | None) -> dict[str, Any]:
        """Set the override of a ``group`` or a ``station`` (the fields given)."""
        name = self._scope_name(scope, name)
        values = fields.policy(body)

        def apply(conn: sa.Connection, now: int) -> None:
            key = (policies.c.scope == scope) & (policies.c.name == name)
            row = dict.fromkeys(fields.POLICY_FIELDS) | values
            if not conn.execute(policies.update().where(key)
                                .values(updated_ms=now, updated_by=by, **row)).rowcount:
                conn.execute(policies.insert().values(scope=scope, name=name, updated_ms=now,
                                                      updated_by=by, **row))

        self._change(by, "policy.set", scope, name, values, apply)
        return self._policy_of(scope, name)

    def clear_policy(self, scope: str, name: Any, by: str | None) -> dict[str, Any]:
        name = self._scope_name(scope, name)
        found = self._policy_of(scope, name)

        def apply(conn: sa.Connection, now: int) -> None:
            conn.execute(policies.delete().where((policies.c.scope == scope)
                                                 & (policies.c.name == name)))

        self._change(by, "policy.clear", scope, name, None, apply)
        return found

    def _policy_of(self, scope: str, name: str) -> dict[str, Any]:
        key = "group" if scope == "group" else "sid"
        for entry in self.policies()[scope + "s"]:
            if entry[key] == name:
                return entry
        raise DirectoryNotFound("not_found", f"no policy override for {scope} {name[:64]!r}")

    @staticmethod
    def _scope_name(scope: str, name: Any) -> str:
        if scope == "group":
            return fields.text(name, "group", fields.GROUP_MAX)
        if scope == "station":
            return fields.sid(name)
        raise ValueError(f"scope must be group or station, not {scope!r}")

    @staticmethod
    def _object(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadField("bad_body", "the body must be a JSON object with "
                           + ", ".join(allowed))
        fields.known_only(body, allowed)
        return body

    # -- what each station gets ------------------------------------------------------------

    def _contents(self, conn: sa.Connection, now: int,
                  only: str | None = None) -> dict[str, dict[str, Any]]:
        """Each station's Directory without rev and ts, as of ``now``."""
        known = dict(self._stations())
        for (sid,) in conn.execute(sa.select(directory_revs.c.sid)):
            known.setdefault(sid, None)  # sent before: still kept up to date
        if only is not None:
            known = {only: known[only]} if only in known else {}
        rider_list = [{"id": r.id, "pin": r.pin} for r in
                      conn.execute(sa.select(riders.c.id, riders.c.pin).order_by(riders.c.id))]
        denied_list = [r.rider for r in conn.execute(
            sa.select(denied.c.rider)
            .where(sa.or_(denied.c.expires_ms.is_(None), denied.c.expires_ms > now))
            .order_by(denied.c.rider))]
        staff_rows = [(json.loads(r.groups), {"id": r.id, "name": r.name, "pin": r.pin})
                      for r in conn.execute(sa.select(staff).order_by(staff.c.id))]
        overrides = {(r.scope, r.name): self._override(r)
                     for r in conn.execute(sa.select(policies))}
        # Stations of one group and policy share one content object, so a fleet of
        # thousands is sized and digested once per kind of station, not per station.
        shared: dict[tuple, dict[str, Any]] = {}
        out = {}
        for sid, group in known.items():
            policy = {**self.fleet_policy, **overrides.get(("group", group), {}),
                      **overrides.get(("station", sid), {})}
            key = (group, tuple(policy.items()))
            if key not in shared:
                shared[key] = {
                    "policy": policy, "riders": rider_list,
                    "staff": [s for groups, s in staff_rows if not groups or group in groups],
                    "denied": denied_list}
            out[sid] = shared[key]
        return out

    @staticmethod
    def _payload(content: dict[str, Any], rev: int, ts: int) -> bytes:
        d = m.Directory(
            rev=rev, ts=ts, policy=m.Policy(**content["policy"]),
            riders=tuple(m.RiderEntry(**r) for r in content["riders"]),
            staff=tuple(m.StaffEntry(**s) for s in content["staff"]),
            denied=tuple(content["denied"]))
        # As m.encode writes it, without its size check: the caller sizes it.
        return json.dumps(d.to_dict(), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")

    # -- publishing --------------------------------------------------------------------------

    def _send(self, contents: dict[str, dict[str, Any]], now: int, force: bool = False) -> int:
        """Publish every station whose content differs from what it was sent (or
        all of them, with what they were sent, when ``force``); the count sent."""
        with self.store.engine.connect() as conn:
            sent = {r.sid: r for r in conn.execute(sa.select(directory_revs))}
        digests: dict[int, str] = {}
        payloads: dict[tuple[int, int, int], bytes] = {}
        done: list[dict[str, Any]] = []
        for sid, content in contents.items():
            if id(content) not in digests:  # shared by stations alike (_contents)
                digests[id(content)] = _digest(content)
            digest = digests[id(content)]
            last = sent.get(sid)
            if last is not None and last.digest == digest:
                if not force:
                    continue
                rev, ts = last.rev, last.ts  # the same message again: nothing new to apply
            else:
                rev, ts = max(now, last.rev + 1 if last else 1), now
            key = (id(content), rev, ts)
            if key not in payloads:  # most stations of a change share rev and ts too
                payloads[key] = self._payload(content, rev, ts)
            payload = payloads[key]
            if len(payload) > MAX_DIRECTORY:  # only a restored or hand-edited database
                log.error("directory of %s is %d bytes, over %d: not sent", sid, len(payload),
                          MAX_DIRECTORY)
                continue
            try:
                self._publish(topic(sid, Kind.DIRECTORY), payload, retain=True)
            except Exception as err:  # NotConnected and the like: the tick sends it again
                log.warning("directory rev %d for %s not sent (%s); sent when the broker "
                            "is back", rev, sid, err)
                self._dirty = True
                continue
            done.append({"sid": sid, "rev": rev, "ts": ts, "digest": digest,
                         "size": len(payload)})
            log.log(logging.INFO if len(contents) <= 10 else logging.DEBUG,
                    "directory rev %d published to %s (%d bytes)", rev, sid, len(payload))
        if done:
            # One transaction for all: were the hub to die before it, the next
            # start sends them again, with higher revs (the clock moved on).
            with self.store.engine.begin() as conn:
                for i in range(0, len(done), 500):  # within SQLite's bound parameters
                    conn.execute(directory_revs.delete().where(
                        directory_revs.c.sid.in_([d["sid"] for d in done[i:i + 500]])))
                conn.execute(directory_revs.insert(), done)
            if self._sent_sids is not None:
                self._sent_sids.update(d["sid"] for d in done)
            if len(contents) > 10:
                log.info("directory published to %d stations", len(done))
        return len(done)

    def _expire(self, now: int) -> None:
        """Drop the denials that ran out, audited as the hub's doing."""
        with self.store.engine.begin() as conn:
            gone = [r.rider for r in conn.execute(
                sa.select(denied.c.rider).where(denied.c.expires_ms <= now))]
            if gone:
                conn.execute(denied.delete().where(denied.c.expires_ms <= now))
                conn.execute(directory_audit.insert(), [
                    {"at_ms": now, "actor": "hub", "action": "denied.expire", "entity": "rider",
                     "entity_id": rid, "detail": None} for rid in gone])
            nxt = conn.execute(sa.select(sa.func.min(denied.c.expires_ms))).scalar()
        self._next_expiry = nxt

    def tick(self) -> int:
        """The scheduler's job: publish where what was sent is no longer right (a
        denial expired, a station is new, a publish failed, the first tick after
        start), and everything again when the broker began a fresh session (it
        lost its retained messages). Returns how many were published."""
        with self._lock:
            now = self.clock.ms()
            force = False
            if self._fresh_sessions is not None:
                sessions = self._fresh_sessions()
                force = sessions != self._sessions_seen and sessions > 0
                if force:
                    self._sessions_seen = sessions
            expired = self._next_expiry is not None and self._next_expiry <= now
            new = self._has_new_stations()
            if not (force or expired or new or self._dirty):
                return 0
            self._dirty = False
            self._expire(now)
            with self.store.engine.connect() as conn:
                contents = self._contents(conn, now)
            return self._send(contents, now, force=force)

    def _has_new_stations(self) -> bool:
        known = {sid for sid, _ in self._stations()}
        if self._sent_sids is None or not known <= self._sent_sids:
            # Read (again) when a station looks new: the worker that led before
            # this one may have sent it. Otherwise from memory: the table holds
            # a row a station, 100 000 rows to read every 5 s.
            with self.store.engine.connect() as conn:
                self._sent_sids = {r.sid for r in conn.execute(sa.select(directory_revs.c.sid))}
        return bool(known - self._sent_sids)
