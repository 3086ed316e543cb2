"""The console's people, tokens and users pages on a real hub (SQLite file,
Directory, console users), driven through Flask's test client with real
sign-in and CSRF.

Staff are added and changed with a PIN that is stored only as its hash and
never shown, riders are shown by their masked number, a rider is denied by
phone or id until a date; API tokens are listed without their secrets (admin
only), console users added, changed, disabled and given new passwords (admin
only). Every change is audited as ``console:<user>``; afterwards no PIN, phone
number or password is in any page, log line or audit row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from hub.alerting.texts import CST
from hub.service import Hub
from hub.storage.schema import api_tokens, directory_audit, staff
from protocol.pins import verify_pin
from tests.harness.console_app import PASSWORD, Browser, console_hub
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
# Eight digits each, so a match in a page or a log is not a coincidence.
PIN, NEW_PIN, RIDER_PIN = "73950281", "61827394", "52038416"
STAFF_PHONE, RIDER_PHONE, DENIED_PHONE = "13900001111", "13812345678", "13912345670"
NEW_PASSWORD = "a new long password 42"
SECRETS = (PIN, NEW_PIN, RIDER_PIN, STAFF_PHONE, RIDER_PHONE, DENIED_PHONE, NEW_PASSWORD,
           PASSWORD, "desk-secret-0123456789abcdef")


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    h = console_hub(tmp_path, ManualClock(T0))
    yield h
    h.close()


def audit(hub: Hub) -> list[dict]:
    with hub.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(directory_audit).order_by(directory_audit.c.id))]


def pin_hash(hub: Hub, staff_id: str) -> str:
    with hub.store.engine.connect() as conn:
        return conn.execute(sa.select(staff.c.pin).where(staff.c.id == staff_id)).scalar_one()


def assert_nothing_secret(texts: list[str]) -> None:
    for secret in SECRETS:
        for text in texts:
            assert secret not in text, f"{secret!r} shown: …{text[text.find(secret)-80:][:160]}…"


def test_staff_added_and_changed_with_a_pin_never_shown(hub: Hub, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    desk = Browser(hub, "desk")
    desk.get("/console/people")
    # Without the form's CSRF token: refused, nothing added.
    assert desk.post("/console/people/staff", {"id": "s-wang", "name": "王师傅", "pin": PIN},
                     csrf=False).status_code == 400
    assert hub.directory.list_staff() == []

    page = desk.follow(desk.post("/console/people/staff", {
        "id": "s-wang", "name": "王师傅", "phone": STAFF_PHONE, "groups": "chumen， kanmen",
        "pin": PIN}))
    assert "王师傅" in page and "139****1111" in page and "chumen, kanmen" in page
    assert verify_pin(PIN, pin_hash(hub, "s-wang"))
    first = pin_hash(hub, "s-wang")

    # Editing without a PIN keeps it; with one, resets it.
    desk.follow(desk.post("/console/people/staff/s-wang", {"name": "王建国", "groups": "chumen",
                                                            "pin": ""}))
    assert hub.directory.get_staff("s-wang")["name"] == "王建国"
    assert hub.directory.get_staff("s-wang")["groups"] == ["chumen"]
    assert pin_hash(hub, "s-wang") == first
    desk.follow(desk.post("/console/people/staff/s-wang", {"name": "王建国", "groups": "chumen",
                                                            "pin": NEW_PIN}))
    assert verify_pin(NEW_PIN, pin_hash(hub, "s-wang"))
    assert hub.directory.get_staff("s-wang")["phone"] == "139****1111"

    # A refused PIN: said so, not echoed, nothing changed.
    page = desk.follow(desk.post("/console/people/staff", {"id": "s-li", "name": "李",
                                                            "pin": "12a4567"}))
    assert 'class="flash error"' in page and "12a4567" not in page
    assert [s["id"] for s in hub.directory.list_staff()] == ["s-wang"]

    desk.follow(desk.post("/console/people/staff/s-wang/remove", {}))
    assert hub.directory.list_staff() == []
    assert [(r["actor"], r["action"]) for r in audit(hub)] == [
        ("console:desk", "staff.add"), ("console:desk", "staff.change"),
        ("console:desk", "staff.change"), ("console:desk", "staff.remove")]
    assert_nothing_secret(desk.pages + [r.getMessage() for r in caplog.records]
                          + [str(r["detail"]) for r in audit(hub)])


def test_riders_by_masked_number_denied_until_a_date_and_allowed_again(hub: Hub, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    desk = Browser(hub, "desk")
    desk.get("/console/people")
    page = desk.follow(desk.post("/console/people/riders", {"phone": RIDER_PHONE,
                                                             "pin": RIDER_PIN}))
    rider = hub.directory.rider_of(RIDER_PHONE)
    assert "138****5678" in page and rider in page

    page = desk.follow(desk.post("/console/people/denied", {
        "phone": DENIED_PHONE, "reason": "多次逾期不还", "expires": "2025-12-01"}))
    denied = hub.directory.list_denied()
    assert [d["rider"] for d in denied] == [hub.directory.rider_of(DENIED_PHONE)]
    end = dt.datetime(2025, 12, 2, tzinfo=CST)  # to the end of that day where the stations are
    assert denied[0]["expires_at"] == int(end.timestamp() * 1000)
    assert denied[0]["created_by"] == "console:desk" and "多次逾期不还" in page

    # By rider id, until removed; then allowed again.
    desk.follow(desk.post("/console/people/denied", {"rider": rider, "reason": "损坏充电宝"}))
    assert {d["rider"]: d["expires_at"] for d in hub.directory.list_denied()}[rider] is None
    desk.follow(desk.post(f"/console/people/denied/{rider}/remove", {}))
    assert rider not in {d["rider"] for d in hub.directory.list_denied()}

    # Hostile forms: refused with a message, nothing denied.
    before = hub.directory.list_denied()
    for form in ({"reason": "x"}, {"phone": DENIED_PHONE, "rider": rider, "reason": "x"},
                 {"phone": "１３９１２３４５６７０", "reason": "x"},
                 {"rider": rider, "reason": "x", "expires": "2025-11-01"},
                 {"rider": rider, "reason": "x", "expires": "9" * 400},
                 {"rider": rider, "reason": ""}):
        page = desk.follow(desk.post("/console/people/denied", form))
        assert 'class="flash error"' in page, form
    assert hub.directory.list_denied() == before
    actions = [(r["actor"], r["action"]) for r in audit(hub)]
    assert actions == [("console:desk", "rider.register"), ("console:desk", "denied.add"),
                       ("console:desk", "denied.add"), ("console:desk", "denied.remove")]
    assert_nothing_secret(desk.pages + [r.getMessage() for r in caplog.records]
                          + [str(r["detail"]) for r in audit(hub)])


def test_tokens_listed_without_secrets_made_shown_once_and_revoked_by_admin_only(
        hub: Hub, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    boss = Browser(hub, "boss")
    page = boss.get("/console/tokens").get_data(as_text=True)
    assert "desk-app" in page and ">directory<" in page and ">read<" in page
    assert "desk-secret" not in page

    resp = boss.post("/console/tokens", {"name": "grafana", "scopes": ["read", "ack"]})
    made = resp.get_data(as_text=True)
    secret = re.search(r'<code id="new-secret">([^<]+)</code>', made).group(1)
    assert len(secret) >= 40 and "no-store" in resp.headers["Cache-Control"]
    # Shown once: the list afterwards has the name and scopes, not the secret.
    again = boss.get("/console/tokens").get_data(as_text=True)
    assert "grafana" in again and secret not in again
    # Kept only as its hash.
    with hub.store.engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens)).one()
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(dict(row._mapping))

    # The API takes it, with its scopes and no more, by its name.
    api = hub.app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    assert api.get("/api/v1/stations", headers=auth).status_code == 200
    assert api.post("/api/v1/staff", json={"id": "x", "name": "x", "pin": "1234"},
                    headers=auth).status_code == 403
    fired = hub.alerts.fire("water_low", "yh-chumen-01", "warning", "水位低").alert["id"]
    assert api.post(f"/api/v1/alerts/{fired}/ack", headers=auth).status_code == 200
    assert hub.alerts.get(fired)["state"] == "acked"
    assert api.get("/api/v1/stations", headers={
        "Authorization": f"Bearer {secret[:-1]}x"}).status_code == 401

    # A name taken (by the configuration, or a token made before), no scope: refused.
    for form in ({"name": "desk-app", "scopes": ["read"]}, {"name": "grafana",
                 "scopes": ["read"]}, {"name": "x y", "scopes": ["read"]},
                 {"name": "nothing"}, {"name": "odd", "scopes": ["root"]}):
        assert 'class="flash error"' in boss.follow(boss.post("/console/tokens", form)), form

    boss.follow(boss.post("/console/tokens/grafana/revoke", {}))
    assert api.get("/api/v1/stations", headers=auth).status_code == 401
    assert "grafana" in boss.get("/console/tokens").get_data(as_text=True)  # listed, revoked

    for who in ("desk", "wang"):
        other = Browser(hub, who)
        assert other.get("/console/tokens").status_code == 403
        assert other.post("/console/tokens", {"name": "mine", "scopes": ["admin"]}
                          ).status_code == 403
    assert [(r["actor"], r["action"], r["entity_id"]) for r in audit(hub)] == [
        ("console:boss", "token.add", "grafana"), ("console:boss", "token.revoke", "grafana")]
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logs and "grafana" in logs


def test_admin_adds_changes_disables_users_and_resets_passwords(hub: Hub, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    boss = Browser(hub, "boss")
    boss.get("/console/users")
    boss.follow(boss.post("/console/users", {"name": "zhao", "role": "maintenance",
                                              "groups": "kanmen", "password": PASSWORD}))
    zhao = Browser(hub, "zhao")
    assert zhao.get("/console/refill").status_code == 200
    assert zhao.get("/console/users").status_code == 403

    # A maintenance user without groups: refused.
    page = boss.follow(boss.post("/console/users", {"name": "qian", "role": "maintenance",
                                                     "groups": "", "password": PASSWORD}))
    assert 'class="flash error"' in page
    assert "qian" not in {u["name"] for u in hub.app.extensions["yizhan_console"].users.list()}

    boss.follow(boss.post("/console/users/zhao", {"action": "password",
                                                   "password": NEW_PASSWORD}))
    # The new password ends the sessions signed in with the old one.
    assert zhao.get("/console/refill").status_code == 303
    again = Browser(hub)
    again.get("/console/signin")
    assert again.post("/console/signin", {"name": "zhao", "password": NEW_PASSWORD}
                      ).status_code == 303

    boss.follow(boss.post("/console/users/zhao", {"role": "ops", "groups": ""}))
    assert again.get("/console/loans").status_code == 303  # role changed: signed out
    boss.follow(boss.post("/console/users/zhao", {"action": "disable"}))
    gone = Browser(hub)
    gone.get("/console/signin")
    assert gone.post("/console/signin", {"name": "zhao", "password": NEW_PASSWORD}
                     ).status_code == 401
    page = boss.follow(boss.post("/console/users/boss", {"action": "disable"}))
    assert 'class="flash error"' in page and boss.get("/console/users").status_code == 200

    desk = Browser(hub, "desk")
    assert desk.get("/console/users").status_code == 403
    assert desk.post("/console/users", {"name": "evil", "role": "admin",
                                        "password": PASSWORD}).status_code == 403
    assert [(r["actor"], r["action"], r["entity_id"]) for r in audit(hub)] == [
        ("console:boss", "user.add", "zhao"), ("console:boss", "user.change", "zhao"),
        ("console:boss", "user.change", "zhao"), ("console:boss", "user.change", "zhao")]
    assert_nothing_secret(boss.pages + [r.getMessage() for r in caplog.records]
                          + [str(r["detail"]) for r in audit(hub)])


@pytest.mark.parametrize("name", ["x" * 5000, "１２", "<script>", "%00", "../../tokens"])
def test_hostile_names_in_paths_change_nothing(hub: Hub, name: str) -> None:
    hub.directory.add_staff({"id": "s-wang", "name": "王", "pin": "4821"}, by="test")
    desk = Browser(hub, "desk")
    desk.get("/console/people")
    before = (hub.directory.list_staff(), hub.directory.list_denied(), audit(hub))
    for path, form in ((f"/console/people/staff/{name}", {"name": "x", "pin": "1234"}),
                       (f"/console/people/staff/{name}/remove", {}),
                       (f"/console/people/riders/{name}/remove", {}),
                       (f"/console/people/denied/{name}/remove", {}),
                       (f"/console/alerts/{name}/ack", {}),
                       (f"/console/alerts/{name}/assign", {"staff": "s-wang"})):
        resp = desk.post(path, form)
        # Refused: the page again saying why (400), or no such thing (404).
        assert resp.status_code in (400, 404), (path[:60], resp.status_code)
        if resp.status_code == 400:
            assert 'class="flash error"' in desk.follow(resp), path[:60]
    assert (hub.directory.list_staff(), hub.directory.list_denied(), audit(hub)) == before
    assert desk.get(f"/console/uptime?group={name}").status_code in (200, 400)
    assert desk.get(f"/console/refill?group={name}").status_code == 200
