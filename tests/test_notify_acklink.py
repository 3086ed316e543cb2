"""Signed, expiring acknowledge links, the page they open, its button, and the
deliveries API.

Opening a link (GET, HEAD) only shows the alert; the page's form POSTs back and
only that acknowledges, so mail scanners and link previews acknowledge nothing.
The hub's web app is the real one (``create_app``) over the real store, fleet
and alert rows (``tests/test_hub_api.py``'s stand-in hub), with the hub's
``acklinks`` and ``outbox`` beside them as ``hub.service`` holds them.
"""

from __future__ import annotations

import base64
import os
import random
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hub.alerting.acklink import KEY_FILE, AckLinks, LinkExpired, LinkInvalid, load_or_create_key
from hub.alerting.notify import Outbox, build_notifiers
from hub.config import parse_hub_config
from hub.storage.schema import alerts as table
from tests.harness.browser import Chromium, require_chromium
from tests.harness.procs import free_port
from tests.test_hub_api import TOKEN, Api, StandInHub
from tests.test_notify_receivers import SECRET, receiver_factory
from yizhan.clock import ManualClock
from yizhan.config import ConfigError

receivers = pytest.fixture(receiver_factory, name="receivers")

SID = "yh-chumen-01"
T0 = 1_764_196_800.0
PUBLIC = "https://hub.example.cn"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- tokens --------------------------------------------------------------------------------


def links(clock: ManualClock, key: bytes = b"k" * 32, ttl: float = 86400) -> AckLinks:
    return AckLinks(key, PUBLIC, ttl=ttl, clock=clock)


def test_a_link_names_the_alert_and_the_notifier_until_it_expires() -> None:
    clock = ManualClock(T0)
    url = links(clock).url("a-1f2e3d4c5b6a7980", "chumen-wecom")
    assert url.startswith(f"{PUBLIC}/ack/")
    token = url.rsplit("/", 1)[1]
    assert len(url) < 200  # fits any chat message comfortably
    claim = links(clock).verify(token)
    assert (claim.alert_id, claim.notifier, claim.by) == ("a-1f2e3d4c5b6a7980", "chumen-wecom",
                                                          "link:chumen-wecom")
    assert claim.expires == int(T0) + 86400
    clock.advance(86400 - 1)
    links(clock).verify(token)
    clock.advance(1)
    with pytest.raises(LinkExpired) as err:
        links(clock).verify(token)
    assert err.value.claim.alert_id == "a-1f2e3d4c5b6a7980"


def test_forged_and_mangled_tokens_are_refused() -> None:
    clock = ManualClock(T0)
    token = links(clock).token("a-1f2e3d4c5b6a7980", "chumen-wecom")
    body, sig = token.split(".")
    other_body = base64.urlsafe_b64encode(b"a-0000000000000000\nchumen-wecom\n9999999999")
    forged = [
        other_body.rstrip(b"=").decode() + "." + sig,  # another alert, same signature
        body + "." + sig[:-2] + ("AA" if not sig.endswith("AA") else "BB"),
        links(clock, key=b"x" * 32).token("a-1f2e3d4c5b6a7980", "chumen-wecom"),  # other key
        "", "nodot", "a.b.c", "%%%.%%%", body, "." + sig, "x" * 600,
    ]
    for bad in forged:
        with pytest.raises(LinkInvalid):
            links(clock).verify(bad)


def test_no_public_url_means_no_link() -> None:
    assert AckLinks(b"k" * 32, None).url("a-1", "n") is None


def test_the_generated_key_is_kept_beside_the_database(tmp_path: Path) -> None:
    config = parse_hub_config({"database": f"sqlite:///{tmp_path / 'hub.db'}",
                               "public_url": PUBLIC + "/"})
    clock = ManualClock(T0)
    first = AckLinks.from_config(config, clock)
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    token = first.token("a-1", "n")
    after_restart = AckLinks.from_config(config, clock)
    assert after_restart.verify(token).alert_id == "a-1"
    assert after_restart.public_url == PUBLIC
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    key_file.write_text("short")
    with pytest.raises(Exception, match="usable"):
        load_or_create_key(key_file)


def test_a_configured_secret_is_used(tmp_path: Path) -> None:
    (tmp_path / "ack.secret").write_text("a-very-long-ack-link-secret\n")
    config = parse_hub_config({"database": "postgresql://x@127.0.0.1/hub",
                               "ack_secret_file": "ack.secret", "public_url": PUBLIC},
                              base=tmp_path)
    assert config.ack_secret == b"a-very-long-ack-link-secret"
    clock = ManualClock(T0)
    token = AckLinks(b"a-very-long-ack-link-secret", PUBLIC, clock=clock).token("a-1", "n")
    assert AckLinks.from_config(config, clock).verify(token).alert_id == "a-1"
    assert not (tmp_path / KEY_FILE).exists()


# -- the page ------------------------------------------------------------------------------


class Hub(StandInHub):
    """The API tests' stand-in hub, with the notification parts ``hub.service`` adds."""

    def __init__(self, url: str, receiver_url: str, clock: ManualClock) -> None:
        config = parse_hub_config({
            "database": url,
            "api_tokens": [TOKEN],
            "stations": [{"sid": SID, "name": "楚门镇先锋驿站", "group": "chumen"}],
            "public_url": PUBLIC,
            "ack_secret": "ack-secret-for-the-tests",
            "notifiers": [
                {"name": "ops-webhook", "type": "webhook", "url": receiver_url + "/hook",
                 "secret": SECRET},
                {"name": "intl-webhook", "type": "webhook", "url": receiver_url + "/intl",
                 "secret": SECRET, "language": "en"},
            ],
        })
        super().__init__(config, clock, lambda topic, payload: None)
        self.acklinks = AckLinks.from_config(config, clock)
        self.outbox = Outbox(self.store, self.writer, clock,
                             build_notifiers(config.notifier_specs), acklinks=self.acklinks,
                             rng=random.Random(1))

    def close(self) -> None:
        self.outbox.close()
        super().close()


@pytest.fixture
def hub(database_url: str, receivers) -> Iterator[Hub]:
    h = Hub(database_url, receivers(secret=SECRET).url, ManualClock(T0))
    yield h
    h.close()


def token_of(hub: Hub, alert_id: str, notifier: str = "ops-webhook") -> str:
    return hub.acklinks.token(alert_id, notifier)


def page(resp: Any) -> str:
    assert resp.content_type == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Robots-Tag"] == "noindex"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "script" not in csp
    return resp.get_data(as_text=True)


def confirmation(text: str) -> str:
    """The hidden field the page's form sends back."""
    found = re.search(r'<input type="hidden" name="confirm" value="([^"]+)">', text)
    assert found, "the page has no form with the confirm field"
    return found.group(1)


def state_of(hub: Hub, alert_id: str) -> str:
    """The alert's state as the API lists it (and the store agrees)."""
    api = Api(hub.app)
    states = {a["id"]: a["state"] for a in api.get("/api/v1/alerts").get_json()["alerts"]}
    assert states[alert_id] == hub.alerts.get(alert_id)["state"]
    return states[alert_id]


def tap(client: Any, token: str, confirm: str | None, **headers: str) -> Any:
    """The page's button: a form POST to the link."""
    data = {} if confirm is None else {"confirm": confirm}
    return client.post(f"/ack/{token}", data=data, headers=headers)


@SQLITE_ONLY
def test_opening_a_link_shows_the_alert_and_its_button_and_changes_nothing(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空", value={"level": 0.0})
    hub.clock.advance(120)
    token = token_of(hub, alert["id"])
    client = hub.app.test_client()
    resp = client.get(f"/ack/{token}")
    assert resp.status_code == 200
    text = page(resp)
    assert "<h1>确认这条告警？</h1>" in text and 'lang="zh-CN"' in text
    assert "楚门镇先锋驿站（yh-chumen-01）" in text and "热水已空（水位 0%）" in text
    assert "11-27 06:40（已 2 分钟）" in text  # started at T0, China Standard Time
    assert "未处理，还没有人确认" in text and "紧急" in text
    assert f'<form method="post" action="{token}">' in text and "我来处理（确认）" in text
    assert confirmation(text) == hub.acklinks.confirmation(token)
    assert "<script" not in text and 'name="viewport"' in text
    head = client.head(f"/ack/{token}")  # what link checkers send
    assert head.status_code == 200 and head.get_data() == b""
    assert state_of(hub, alert["id"]) == "firing"
    with hub.store.engine.connect() as conn:
        row = conn.execute(sa.select(table.c.acked_ms, table.c.acked_by)
                           .where(table.c.id == alert["id"])).one()
    assert tuple(row) == (None, None)


@SQLITE_ONLY
def test_the_button_acknowledges_once(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空", value={"level": 0.0})
    hub.clock.advance(120)
    token = token_of(hub, alert["id"])
    client = hub.app.test_client()
    confirm = confirmation(page(client.get(f"/ack/{token}")))
    resp = tap(client, token, confirm, **{"Sec-Fetch-Site": "same-origin"})
    assert resp.status_code == 200
    text = page(resp)
    assert "<h1>✅ 已确认</h1>" in text and "楚门镇先锋驿站（yh-chumen-01）" in text
    assert "已确认（11-27 06:42）" in text and "谢谢" in text and "<form" not in text
    assert state_of(hub, alert["id"]) == "acked"
    after = hub.alerts.get(alert["id"])
    assert after["acked_at"] == hub.clock.ms()
    with hub.store.engine.connect() as conn:
        by = conn.execute(sa.select(table.c.acked_by).where(table.c.id == alert["id"])).scalar()
    assert by == "link:ops-webhook"

    hub.clock.advance(60)
    again = tap(client, token, confirm)  # a double tap, or an old browser (no Sec-Fetch-*)
    assert again.status_code == 200 and "已确认（之前已有人确认）" in page(again)
    assert hub.alerts.get(alert["id"])["acked_at"] == after["acked_at"]  # unchanged
    shown = page(client.get(f"/ack/{token}"))
    assert "<h1>✅ 已有人确认</h1>" in shown and "已确认（11-27 06:42）" in shown
    assert "<form" not in shown


@SQLITE_ONLY
def test_a_post_that_did_not_come_from_the_page_changes_nothing(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空")
    token = token_of(hub, alert["id"])
    other = token_of(hub, alert["id"], "intl-webhook")
    client = hub.app.test_client()
    confirm = confirmation(page(client.get(f"/ack/{token}")))
    for bad in (None, "", "x" * 22, hub.acklinks.confirmation(other), confirm + "A", "确认"):
        resp = tap(client, token, bad)
        assert resp.status_code == 400, bad
        assert "请在确认页面上点按钮" in page(resp) and "没有确认任何告警" in page(resp)
    as_json = client.post(f"/ack/{token}", json={"confirm": confirm})
    assert as_json.status_code == 400
    for site in ("cross-site", "same-site"):  # a page elsewhere that knows the link
        resp = tap(client, token, confirm, **{"Sec-Fetch-Site": site})
        assert resp.status_code == 403 and "请求来自其他网站" in page(resp)
    assert state_of(hub, alert["id"]) == "firing"


@SQLITE_ONLY
def test_expired_and_forged_links_get_a_403_page_and_change_nothing(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空")
    token = token_of(hub, alert["id"])
    confirm = hub.acklinks.confirmation(token)
    client = hub.app.test_client()
    forged = f"{token[:-3]}abc"
    other_key = AckLinks(b"z" * 32, PUBLIC, clock=hub.clock).token(alert["id"], "ops-webhook")
    for bad in (forged, other_key):
        shown = client.get(f"/ack/{bad}")
        assert shown.status_code == 403 and "链接无效" in page(shown) and "<form" not in page(
            shown)
        assert client.head(f"/ack/{bad}").status_code == 403
        posted = tap(client, bad, hub.acklinks.confirmation(bad))
        assert posted.status_code == 403 and "链接无效" in page(posted)
    hub.clock.advance(24 * 3600)
    expired = client.get(f"/ack/{token}")
    assert expired.status_code == 403 and "链接已过期" in page(expired)
    posted = tap(client, token, confirm)
    assert posted.status_code == 403 and "链接已过期" in page(posted)
    assert state_of(hub, alert["id"]) == "firing"


@SQLITE_ONLY
def test_a_resolved_or_unknown_alert_says_so(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空")
    hub.clock.advance(600)
    hub.alerts.resolve(alert["id"], by="auto")
    token = token_of(hub, alert["id"])
    client = hub.app.test_client()
    shown = client.get(f"/ack/{token}")
    assert shown.status_code == 200
    text = page(shown)
    assert "<h1>✅ 告警已恢复</h1>" in text and "已恢复（11-27 06:50）" in text
    assert "楚门镇先锋驿站" in text and "<form" not in text
    resolved = tap(client, token, hub.acklinks.confirmation(token))
    assert resolved.status_code == 409 and "无需确认" in page(resolved)
    assert state_of(hub, alert["id"]) == "resolved"
    gone = token_of(hub, "a-ffffffffffffffff")
    missing = client.get(f"/ack/{gone}")
    assert missing.status_code == 404 and "找不到" in page(missing)
    posted = tap(client, gone, hub.acklinks.confirmation(gone))
    assert posted.status_code == 404 and "找不到" in page(posted)


@SQLITE_ONLY
def test_the_page_speaks_the_notifier_s_language(hub: Hub) -> None:
    alert = hub.alerts.raise_alert("chargers_low", SID, "warning", "1 left", value=1)
    token = token_of(hub, alert["id"], "intl-webhook")
    client = hub.app.test_client()
    text = page(client.get(f"/ack/{token}"))
    assert 'lang="en"' in text and "Acknowledge this alert?" in text
    assert "Only 1 power bank left to lend" in text and "楚门镇先锋驿站 (yh-chumen-01)" in text
    assert "I'm on it (acknowledge)" in text and "Open, nobody has acknowledged" in text
    done = page(tap(client, token, confirmation(text)))
    assert "Acknowledged" in done and "someone is on it" in done
    with hub.store.engine.connect() as conn:
        by = conn.execute(sa.select(table.c.acked_by).where(table.c.id == alert["id"])).scalar()
    assert by == "link:intl-webhook"


@SQLITE_ONLY
def test_without_ack_links_configured_the_page_says_so(hub: Hub) -> None:
    hub.acklinks = None
    client = hub.app.test_client()
    resp = client.get("/ack/anything")
    assert resp.status_code == 503 and "未启用" in page(resp)
    assert tap(client, "anything", "x").status_code == 503


@SQLITE_ONLY
def test_a_phone_opens_the_link_and_taps_the_button(hub: Hub, tmp_path: Path) -> None:
    """Real Chromium at a phone's width: the page reads, the stylesheet passes the
    Content-Security-Policy, the button is big, and tapping it acknowledges."""
    require_chromium()
    from waitress.server import create_server

    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空", value={"level": 0.0})
    hub.clock.advance(120)
    server = create_server(hub.app, host="127.0.0.1", port=free_port(), threads=2)
    threading.Thread(target=server.run, name="hub-web", daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}/ack/{token_of(hub, alert['id'])}"
    try:
        with Chromium() as chromium:
            for width, height in ((800, 600), (360, 740)):
                phone = chromium.page(width, height)
                refused: list[str] = []
                phone.on("console", lambda msg, refused=refused: refused.append(msg.text)
                         if "Content Security Policy" in msg.text else None)
                phone.goto(url)
                assert phone.text_content("h1") == "确认这条告警？"
                assert "楚门镇先锋驿站（yh-chumen-01）" in phone.text_content("dl")
                button = phone.locator("button").bounding_box()
                assert button["height"] >= 48  # a thumb's target
                assert button["width"] >= width * 0.85 or button["width"] >= 500
                fits = phone.evaluate("document.documentElement.scrollWidth")
                assert fits <= width, f"the page scrolls sideways at {width} px"
                assert phone.evaluate(  # the stylesheet was allowed: the button is green
                    "getComputedStyle(document.querySelector('button')).backgroundColor"
                ) == "rgb(26, 127, 55)"
                phone.screenshot(path=str(tmp_path / f"ack-{width}.png"), full_page=True)
                assert refused == []
                assert state_of(hub, alert["id"]) == "firing"
            phone.tap("button")
            phone.wait_for_selector("text=已确认")
            assert phone.text_content("h1") == "✅ 已确认"
            phone.screenshot(path=str(tmp_path / "acked-360.png"), full_page=True)
    finally:
        server.close()
    assert state_of(hub, alert["id"]) == "acked"
    with hub.store.engine.connect() as conn:
        by = conn.execute(sa.select(table.c.acked_by).where(table.c.id == alert["id"])).scalar()
    assert by == "link:ops-webhook"


# -- deliveries --------------------------------------------------------------------------


def test_the_deliveries_of_an_alert(hub: Hub, receivers) -> None:
    api = Api(hub.app)
    alert = hub.alerts.raise_alert("water_empty", SID, "critical", "水位空")
    station = {"sid": SID, "name": "楚门镇先锋驿站"}
    first = hub.outbox.enqueue("ops-webhook", "firing", alert, station)
    hub.clock.advance(1)
    second = hub.outbox.enqueue("intl-webhook", "firing", alert, station)
    hub.outbox.send_due()

    resp = api.get(f"/api/v1/alerts/{alert['id']}/deliveries")  # checked against OpenAPI
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["alert_id"] == alert["id"]
    assert [(d["id"], d["notifier"], d["kind"], d["state"]) for d in body["deliveries"]] == [
        (first, "ops-webhook", "firing", "delivered"),
        (second, "intl-webhook", "firing", "delivered")]
    assert all("body" not in d for d in body["deliveries"])  # it holds the ack link

    assert api.get(f"/api/v1/alerts/{alert['id']}/deliveries", token=None).status_code == 401
    assert api.get("/api/v1/alerts/a-nothing/deliveries").status_code == 404


@SQLITE_ONLY
def test_a_route_test_s_deliveries_are_shown_though_it_has_no_alert_row(hub: Hub) -> None:
    test_alert = {"id": "t-route-chumen-1", "rule": "notify_test", "sid": "hub",
                  "severity": "info", "state": "firing", "summary": "通知测试",
                  "value": None, "started_at": hub.clock.ms(), "acked_at": None,
                  "resolved_at": None}
    hub.outbox.enqueue("ops-webhook", "firing", test_alert, {"sid": "hub", "name": "通知测试"})
    resp = Api(hub.app).get("/api/v1/alerts/t-route-chumen-1/deliveries")
    assert resp.status_code == 200
    (d,) = resp.get_json()["deliveries"]
    assert d["state"] == "pending" and d["attempts"] == 0


def test_key_file_is_not_world_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / KEY_FILE)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_a_postgresql_hub_with_notifiers_needs_a_shared_ack_secret() -> None:
    data = {"database": "postgresql://x@127.0.0.1/hub",
            "notifiers": [{"name": "w", "type": "webhook", "url": "https://example.cn/h",
                           "secret": SECRET}]}
    with pytest.raises(ConfigError, match="ack_secret_file: is required"):
        parse_hub_config(data)
    assert parse_hub_config({**data, "ack_secret": "x" * 20}).ack_secret == b"x" * 20
