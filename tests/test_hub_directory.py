"""The Directory from the hub's API to the station's kiosk sign-in (issue 16, item 1).

A real ``yizhan hub`` and a real ``yizhan agent`` (sim hardware) as processes, on
a broker of their own with the deployed ACL and passwords (the hub as ``_hub``,
the station as its sid). Through the hub's API: a staff member added with a PIN
signs in at the station's local API (what the kiosk calls), a denied rider's
borrow is refused there, a station offline during a change gets it on return,
``rev`` goes on increasing across a hub restart, a change that would make the
Directory exceed 64 KiB is refused, and a read token cannot write. Afterwards no
rider's phone number nor any PIN is in the hub's log, its SQLite files or any
answer of its API (the staff phone, kept for alerts, only in the database).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.fleet.directory import BadField, Directory
from hub.storage.store import Store
from protocol import messages as m
from protocol.ids import rider_id
from protocol.topics import Kind, topic
from tests.conftest import SECURE_USERS
from tests.harness.mqtt import Subscriber, close, connect
from tests.harness.procs import Procs, free_port, http_json, wait_until, write_yaml

pytestmark = pytest.mark.slow

SID = "yh-chumen-01"
FLEET_KEY = b"test-fleet-key-0123456789abcdef"
DESK = "desk-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"
QUIET_SIM = {"borrows_per_hour": 0, "riders_per_hour": 0, "draws_per_hour": 0, "seed": 7}
# Eight digits each, so a match in a file is not a coincidence of timestamps.
STAFF_PIN, STAFF2_PIN, RIDER_PIN = "73950281", "61827394", "52038416"
STAFF_PHONE = "13900001111"
RIDER_PHONE, DENIED_PHONE = "13812345678", "13912345670"


class Api:
    """The hub's API over HTTP; every answer body is kept, to grep afterwards."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.bodies: list[bytes] = []

    def __call__(self, method: str, path: str, body: Any = None,
                 token: str = DESK) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        self.bodies.append(raw)
        return status, json.loads(raw or b"null")


def local(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The agent's local API, as the kiosk calls it."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Site:
    """Broker, hub process, agent process and their files."""

    def __init__(self, tmp: Path, broker: Any) -> None:
        self.tmp, self.broker = tmp, broker
        self.procs = Procs(tmp)
        key = tmp / "fleet.key"
        key.write_bytes(FLEET_KEY)
        key.chmod(0o600)
        self.db = tmp / "hub.db"
        port = free_port()
        self.hub_cfg = write_yaml(tmp / "hub.yaml", {
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                     "username": "_hub", "password": SECURE_USERS["_hub"]},
            "database": f"sqlite:///{self.db}",
            "http": {"host": "127.0.0.1", "port": port},
            "api_tokens": [{"name": "desk", "token": DESK, "scopes": ["directory", "read"]},
                           {"name": "viewer", "token": VIEWER, "scopes": ["read"]}],
            "fleet_key_file": str(key),
            "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"}],
        })
        self.api = Api(f"http://127.0.0.1:{port}")
        self.local = f"http://127.0.0.1:{free_port()}"
        self.station_cfg = write_yaml(tmp / "station.yaml", {
            "hardware": "sim",
            "station": {"id": SID, "name": SID},
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                     "username": SID, "password": SECURE_USERS[SID]},
            "data_dir": str(tmp / "station"),
            "fleet_key_file": str(key),
            "local_api": {"host": "127.0.0.1", "port": int(self.local.rsplit(":", 1)[1])},
            "lockers": {"slots": 6, "poll_interval": "250ms"},
            "sim": QUIET_SIM,
        })
        self.hub = self.agent = None
        self.runs = 0

    def start_hub(self) -> None:
        self.runs += 1
        self.hub = self.procs.start(f"hub-{self.runs}", "hub", "--config", str(self.hub_cfg))
        wait_until(lambda: http_json(self.api.base + "/healthz")[0] == 200, 20, "hub healthz",
                   on_fail=self.hub.tail)

    def stop(self, proc: Any) -> None:
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.tail()

    def start_agent(self) -> None:
        self.runs += 1
        self.agent = self.procs.start(f"agent-{self.runs}", "agent", "--config",
                                      str(self.station_cfg))
        wait_until(lambda: local(self.local, "GET", "/v1/station")[0] == 200, 20,
                   "the agent's local API", on_fail=self.agent.tail)

    def held(self) -> dict[str, Any]:
        """The Directory the station keeps on its disk (firmware/directory.py)."""
        path = self.tmp / "station" / "directory.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def wait_held(self, predicate: Any, what: str) -> dict[str, Any]:
        held = wait_until(lambda: predicate(self.held()) and self.held(), 20, what,
                          on_fail=lambda: self.hub.tail() + "\n" + self.agent.tail())
        # The station writes the file before the new rules apply (firmware/directory.py):
        # the file alone does not say the rules are in force yet; the log line does.
        applied = f"directory rev {held['rev']} applied"
        wait_until(lambda: applied in self.agent.log.read_text(errors="replace"), 10,
                   f"{what}: rev {held['rev']} in force", on_fail=self.agent.tail)
        return held

    def sign_in(self, staff: str, pin: str) -> int:
        status, body = local(self.local, "POST", "/v1/maintenance", {"staff": staff, "pin": pin})
        if status == 201:
            local(self.local, "DELETE", f"/v1/maintenance/{body['session']['id']}")
        return status

    def borrow(self, phone: str) -> dict[str, Any]:
        status, body = local(self.local, "POST", "/v1/borrow",
                             {"rider": rider_id(FLEET_KEY, phone)})
        assert status == 202, body
        return body["attempt"]


@pytest.fixture
def site(tmp_path, broker_factory):
    s = Site(tmp_path, broker_factory(users=SECURE_USERS, acl=True, deployed=True))
    yield s
    s.procs.close()


def staff_ids(held: dict[str, Any]) -> set[str]:
    return {s["id"] for s in held.get("staff", ())}


def test_directory_travels_from_the_hub_api_to_the_station(site: Site) -> None:
    api = site.api
    site.start_hub()
    site.start_agent()

    # A staff member with a PIN: published, kept by the station, accepted at sign-in.
    status, staff = api("POST", "/api/v1/staff", {
        "id": "li", "name": "李师傅", "phone": STAFF_PHONE, "pin": STAFF_PIN,
        "groups": ["chumen"]})
    assert status == 201, staff
    assert staff["phone"] == "139****1111"
    held = site.wait_held(lambda h: "li" in staff_ids(h), "li in the station's directory")
    assert held["staff"][0]["pin"].startswith("pbkdf2_sha256$200000$")
    assert site.sign_in("li", STAFF_PIN) == 201
    assert site.sign_in("li", "00000000") == 403

    # A registered rider and a denied one: the denied rider's borrow is refused.
    status, rider = api("POST", "/api/v1/riders", {"phone": RIDER_PHONE, "pin": RIDER_PIN})
    assert status == 201, rider
    assert rider == {**rider, "id": rider_id(FLEET_KEY, RIDER_PHONE), "masked": "138****5678"}
    status, denial = api("POST", "/api/v1/denied", {"phone": DENIED_PHONE, "reason": "多次逾期"})
    assert status == 201, denial
    denied_id = rider_id(FLEET_KEY, DENIED_PHONE)
    site.wait_held(lambda h: denied_id in h.get("denied", ()), "the denial at the station")
    attempt = site.borrow(DENIED_PHONE)
    assert (attempt["state"], attempt["reason"]) == ("failed", "denied")
    assert site.borrow(RIDER_PHONE)["reason"] != "denied"

    # The station offline during a change gets it when it comes back.
    rev_before = site.held()["rev"]
    site.stop(site.agent)
    status, _ = api("POST", "/api/v1/staff", {"id": "wang", "name": "王师傅",
                                              "pin": STAFF2_PIN})
    assert status == 201
    site.start_agent()
    site.wait_held(lambda h: "wang" in staff_ids(h), "wang reaching the returning station")
    assert site.held()["rev"] > rev_before
    assert site.sign_in("wang", STAFF2_PIN) == 201

    # rev goes on increasing across a hub restart.
    rev_before = site.held()["rev"]
    site.stop(site.hub)
    site.start_hub()
    status, override = api("PUT", f"/api/v1/policies/stations/{SID}", {"min_charge": 85})
    assert status == 200, override
    held = site.wait_held(lambda h: h.get("policy", {}).get("min_charge") == 85,
                          "the station's override after the restart")
    assert held["rev"] > rev_before
    status, sent = api("GET", f"/api/v1/stations/{SID}/directory", token=VIEWER)
    assert (status, sent["rev"], sent["current"]) == (200, held["rev"], True)

    # A read token cannot write.
    status, body = api("POST", "/api/v1/staff", {"id": "zhao", "name": "赵", "pin": "1234"},
                       token=VIEWER)
    assert (status, body["error"]["code"]) == (403, "forbidden")

    # The 64 KiB cap: denials put in while the hub is stopped fill the Directory
    # to just under it; the hub sends that at start, and refuses any growth.
    site.stop(site.hub)
    fill = fill_denials(site.db, site.held())
    site.start_hub()
    site.wait_held(lambda h: len(h.get("denied", ())) == fill + 1, "the nearly full directory")
    rev_full = site.held()["rev"]
    status, body = api("POST", "/api/v1/staff", {"id": "zhao", "name": "赵" * 64,
                                                 "pin": "1234"})
    assert (status, body["error"]["code"]) == (409, "directory_too_large"), body
    assert "65536" in body["error"]["message"] and SID in body["error"]["message"]
    status, body = api("GET", "/api/v1/staff/zhao")
    assert status == 404  # refused as a whole
    assert site.held()["rev"] == rev_full

    # The audit says who changed what, by token name.
    status, audit = api("GET", "/api/v1/directory/audit", token=VIEWER)
    actions = [(a["by"], a["action"], a["entity_id"]) for a in audit["audit"]]
    assert ("token:desk", "staff.add", "li") in actions
    assert ("token:desk", "denied.add", denied_id) in actions
    assert not any(a[2] == "zhao" for a in actions)

    site.procs.close()
    secrets = [s.encode() for s in (STAFF_PIN, STAFF2_PIN, RIDER_PIN, RIDER_PHONE,
                                    DENIED_PHONE)]
    hub_log = b"".join(p.log.read_bytes() for p in site.procs.started if p.name.startswith("hub"))
    db_bytes = b"".join(p.read_bytes() for p in site.tmp.glob("hub.db*"))
    for secret in secrets:
        assert secret not in hub_log, secret
        assert secret not in db_bytes, secret
        assert not any(secret in b for b in api.bodies), secret
    # The staff phone is kept for alerts (docs/security.md), but never logged nor answered.
    assert STAFF_PHONE.encode() not in hub_log
    assert not any(STAFF_PHONE.encode() in b for b in api.bodies)


def fill_denials(db: Path, held: dict[str, Any]) -> int:
    """Insert denials until the Directory, sized as the hub sizes it (widest rev and
    ts), is within 150 bytes of the cap: room for none more staff with a long name."""
    d = m.Directory.from_dict(held)
    base = len(m.encode(m.Directory(m.MAX_INT, m.MAX_INT, d.policy, d.riders, d.staff,
                                    d.denied), validate=False))
    per = len(',"r:000000000000000000000000"')
    fill = (m.MAX_PAYLOAD - 150 - base) // per
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO denied (rider, reason, expires_ms, created_ms, created_by) "
            "VALUES (?, 'test fill', NULL, 0, 'test')",
            [(f"r:{i:024x}",) for i in range(fill)])
    return fill


# -- the Directory's timer and inputs, in process on a real broker and SQLite file ------


class Published:
    """The hub side of publishing: a real MQTT client, QoS 1 and retained as asked;
    ``down`` makes it raise like the ingest does while the broker is away."""

    def __init__(self, broker: Any) -> None:
        self.client = connect(broker)
        self.down = False

    def __call__(self, topic_: str, payload: bytes, retain: bool = False) -> Any:
        if self.down:
            raise ConnectionError("the hub is not connected to the MQTT broker")
        info = self.client.publish(topic_, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        return info


@pytest.fixture
def desk(tmp_path, broker_factory, clock):
    broker = broker_factory()
    publish = Published(broker)
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    sessions = [0]
    d = Directory(store, clock, publish, lambda: [(SID, "chumen"), ("yh-kanmen-01", None)],
                  fleet_key=FLEET_KEY, fresh_sessions=lambda: sessions[0])
    with Subscriber(broker, [topic(SID, Kind.DIRECTORY)]) as sub:
        yield d, sub, publish, sessions
    store.close()
    close(publish.client)


def last_directory(sub: Subscriber, after_rev: int = 0) -> dict[str, Any]:
    return sub.wait_for(lambda msg: msg.json()["rev"] > after_rev).json()


def test_an_expired_denial_drops_out_on_the_timer(desk, clock) -> None:
    d, sub, _publish, _sessions = desk
    d.tick()  # the first tick after start sends every station its Directory
    first = last_directory(sub)
    rider = rider_id(FLEET_KEY, DENIED_PHONE)
    d.deny({"rider": rider, "reason": "逾期", "expires_at": clock.ms() + 3600_000}, by="desk")
    denied = last_directory(sub, first["rev"])
    assert denied["denied"] == [rider]
    clock.advance(3599)
    assert d.tick() == 0  # not yet: nothing sent
    clock.advance(1)
    assert d.tick() == 2  # both stations
    after = last_directory(sub, denied["rev"])
    assert after["denied"] == [] and after["rev"] > denied["rev"]
    assert d.list_denied() == []
    assert d.audit(1)[0] | {"at": 0, "id": 0} == {
        "id": 0, "at": 0, "by": "hub", "action": "denied.expire", "entity": "rider",
        "entity_id": rider, "detail": None}


def test_a_change_made_while_the_broker_is_away_is_sent_by_the_timer(desk, clock) -> None:
    d, sub, publish, sessions = desk
    d.tick()
    first = last_directory(sub)
    publish.down = True
    d.add_staff({"id": "li", "name": "李师傅", "pin": STAFF_PIN}, by="desk")
    assert d.station(SID)["current"] is False
    publish.down = False
    clock.advance(5)
    assert d.tick() == 2
    sent = last_directory(sub, first["rev"])
    assert [s["id"] for s in sent["staff"]] == ["li"]
    assert d.station(SID) | {"ts": 0} == {
        "sid": SID, "rev": sent["rev"], "ts": 0, "size": len(json.dumps(
            sent, ensure_ascii=False, separators=(",", ":")).encode()),
        "current": True, "policy": sent["policy"], "riders": 0, "staff": 1, "denied": 0}
    # A broker that forgot its retained messages (a fresh session): everything again,
    # the same rev, since the content did not change.
    sub.clear()
    sessions[0] = 1
    assert d.tick() == 2
    assert last_directory(sub)["rev"] == sent["rev"]


@pytest.mark.parametrize(("call", "body", "code"), [
    ("register_rider", {"phone": "１３８１２３４５６７８", "pin": "4821"}, "bad_phone"),
    ("register_rider", {"phone": "+8613812345678", "pin": "4821"}, "bad_phone"),
    ("register_rider", {"phone": 13812345678, "pin": "4821"}, "bad_phone"),
    ("register_rider", {"phone": "13812345678", "pin": "４８２１"}, "bad_pin"),
    ("register_rider", {"phone": "13812345678", "pin": 4821}, "bad_pin"),
    ("add_staff", {"id": "li", "name": "\ud800", "pin": "2468"}, "bad_name"),
    ("add_staff", {"id": "li", "name": "a\nb", "pin": "2468"}, "bad_name"),
    ("add_staff", {"id": "Li", "name": "李", "pin": "2468"}, "bad_id"),
    ("add_staff", {"id": "li", "name": "李", "pin": "2468", "groups": [[["x"]]]}, "bad_groups"),
    ("add_staff", {"id": "li", "name": "李", "pin": "2468", "extra": 1}, "bad_body"),
    # null is not "every station": that is [] or leaving groups out.
    ("add_staff", {"id": "li", "name": "李", "pin": "2468", "groups": None}, "bad_groups"),
    ("deny", {"rider": "r:" + "0" * 24, "reason": "x", "expires_at": 2**70}, "bad_expires_at"),
    ("deny", {"rider": "r:" + "0" * 24, "reason": "x", "expires_at": 1}, "bad_time"),
    ("deny", {"rider": "r:" + "0" * 24, "phone": "13812345678", "reason": "x"}, "bad_body"),
])
def test_hostile_input_is_refused_naming_the_field(desk, call, body, code) -> None:
    d = desk[0]
    with pytest.raises(BadField) as refused:
        getattr(d, call)(body, by="desk")
    assert refused.value.code == code
    assert "4821" not in refused.value.message and "13812345678" not in refused.value.message
    assert d.audit() == []


@pytest.mark.parametrize("body", [{"min_charge": 2**70}, {"min_charge": True},
                                  {"min_charge": 80.0}, {"loan_hours": 0},
                                  {"max_per_rider": 11}, {"lending": "closed"}, {},
                                  # null is not "left out" (the fuzz test's find):
                                  {"max_per_rider": 5, "loan_hours": None},
                                  {"lending": None}, {"min_charge": None}])
def test_a_policy_out_of_bounds_is_refused(desk, body) -> None:
    d = desk[0]
    with pytest.raises(BadField):
        d.set_policy("station", SID, body, by="desk")
    assert d.policies()["stations"] == []


def test_a_null_never_takes_a_staff_members_groups_away(desk) -> None:
    """PATCH groups: null is refused; [] (every station) must be said as []."""
    d = desk[0]
    d.add_staff({"id": "li", "name": "李", "pin": "2468", "groups": ["chumen"]}, by="desk")
    with pytest.raises(BadField) as refused:
        d.change_staff("li", {"groups": None}, by="desk")
    assert refused.value.code == "bad_groups"
    assert d.get_staff("li")["groups"] == ["chumen"]
    assert d.change_staff("li", {"groups": []}, by="desk")["groups"] == []
