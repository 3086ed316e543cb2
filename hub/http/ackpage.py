"""The page an acknowledge link opens: ``GET``/``POST /ack/<token>`` (docs/notifications.md).

GET only shows what the link would acknowledge, with one button; the button's
form POSTs to the same URL and only that acknowledges. Mail gateways that scan
every link (Safe Links and the like) and chat apps that fetch a preview open
links with GET, so a GET that acknowledged would tell the team "someone is on
it" before anyone had read the message.

The page speaks the language of the notifier that sent the link; its words are
in ``templates/ack.html`` and the hub's catalogue (``hub.alerting.texts``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import zoneinfo
from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Response, request
from markupsafe import Markup

from hub.alerting.acklink import AckClaim, AckLinks, LinkExpired, LinkInvalid
from hub.alerting.alerts import AlertConflict, AlertNotFound, StoreUnavailable
from hub.alerting.notify.text import what_text
from hub.alerting.texts import CST, DEFAULT_LANGUAGE, Templates, clock_text, texts

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
_PAGES = Templates(TEMPLATES)
#: The one stylesheet of every ack page, inlined.
_STYLE = (TEMPLATES / "ack.css").read_text(encoding="utf-8")
# Nothing but that stylesheet (allowed by its hash) and a form posting back to this
# hub: no scripts, no images, no frames around the page, no other form target.
_CSP = ("default-src 'none'; style-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
        + "'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: What a browser's ``Sec-Fetch-Site`` may say of the page's own form (``none``: the
#: person's own action, such as resubmitting from history); absent on old browsers.
_OWN_FORM = ("same-origin", "none")
_DB_DOWN = (StoreUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError)


def ack_page(hub: Any, token: str) -> Response:
    """``GET`` (and ``HEAD``) ``/ack/<token>``: what the link would acknowledge — the
    station, the alert, since when, its state — and, while it fires, the button that
    acknowledges it. Changes nothing."""
    checked = _check_link(hub, token)
    if isinstance(checked, Response):
        return checked
    links, claim, lang = checked
    try:
        alert = hub.alerts.get(claim.alert_id)
    except _DB_DOWN as err:
        log.warning("ack page for alert %s: the store does not answer: %s", claim.alert_id, err)
        return _page(lang, 503, "busy")
    if alert is None:
        return _page(lang, 404, "missing")
    if alert["state"] == "firing":
        return _page(lang, 200, "ask", alert=_details(hub, alert, lang),
                     form={"token": token, "confirm": links.confirmation(token)})
    return _page(lang, 200, "acked" if alert["state"] == "acked" else "resolved",
                 alert=_details(hub, alert, lang))


def ack_by_link(hub: Any, token: str) -> Response:
    """``POST /ack/<token>``, the page's button: acknowledge the alert as
    ``link:<notifier>`` and say so. Acknowledging twice changes nothing."""
    checked = _check_link(hub, token)
    if isinstance(checked, Response):
        return checked
    links, claim, lang = checked
    # Forgery: there is no session or cookie for a forged request to ride on; the token
    # in the path is the whole authority. What is left to stop is a page elsewhere that
    # knows a link (from a forwarded message, say) making a browser that can reach the
    # hub — perhaps only from inside the operator's network — post it. So the form must
    # repeat a value derived from the token with the hub's key (links.confirmation),
    # which only a reader of this page learns: a cross-site page can send a request but
    # cannot read the answer. And where the browser says where the request comes from
    # (Sec-Fetch-Site, sent by every current browser and set by the browser itself, so
    # a reverse proxy's Host or Origin rewriting cannot confuse it), anything but the
    # page's own form is refused. Both checks need no state on the hub.
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in _OWN_FORM:
        log.warning("refused an ack of alert %s posted from another site (%s)",
                    claim.alert_id, site)
        return _page(lang, 403, "foreign")
    if not links.confirms(token, request.form.get("confirm", "")):
        log.info("refused an ack of alert %s without the page's confirmation", claim.alert_id)
        return _page(lang, 400, "form")
    try:
        before = hub.alerts.get(claim.alert_id)
        alert = hub.alerts.ack(claim.alert_id, by=claim.by)
    except AlertNotFound:
        return _page(lang, 404, "missing")
    except AlertConflict:
        return _page(lang, 409, "resolved")
    except _DB_DOWN as err:
        log.warning("ack of alert %s: the store does not answer: %s", claim.alert_id, err)
        return _page(lang, 503, "busy")
    again = before is not None and before["state"] != "firing"
    if not again:
        log.info("alert %s acknowledged through a link of %s", alert["id"], claim.notifier)
    return _page(lang, 200, "again" if again else "ok", alert=_details(hub, alert, lang))


def _check_link(hub: Any, token: str) -> tuple[AckLinks, AckClaim, str] | Response:
    """The hub's links, the token's claim and the page's language; or the error page
    (links off, a forged or expired token), the same for GET and POST."""
    links = getattr(hub, "acklinks", None)
    if links is None:
        return _page(DEFAULT_LANGUAGE, 503, "off")
    try:
        claim = links.verify(token)
    except LinkExpired as err:
        return _page(_lang(hub, err.claim.notifier), 403, "expired")
    except LinkInvalid:
        return _page(DEFAULT_LANGUAGE, 403, "invalid")
    return links, claim, _lang(hub, claim.notifier)


def _lang(hub: Any, notifier: str) -> str:
    spec_of = getattr(hub.config, "notifier_spec", None)
    spec = spec_of(notifier) if spec_of is not None else None
    return spec.language if spec is not None else DEFAULT_LANGUAGE


def _tz(hub: Any) -> tzinfo:
    """The hub's ``timezone:``, as its messages show times; China Standard Time without."""
    name = getattr(getattr(hub.config, "routing", None), "timezone", None)
    return zoneinfo.ZoneInfo(name) if name else CST


def _details(hub: Any, alert: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """What the page says of ``alert``: its station, what is wrong, how bad, since when
    (and how long ago, while it fires), its state and since when that is."""
    tz = _tz(hub)
    station = _station_for_page(hub, alert["sid"])
    started = alert.get("started_at")
    since = ago = None
    if isinstance(started, int):
        since = clock_text(started, tz)
        if alert["state"] == "firing":
            ago = texts(lang).duration((hub.clock.ms() - started) / 1000)
    at = {"acked": alert.get("acked_at"), "resolved": alert.get("resolved_at")}.get(
        alert["state"])
    severity = alert.get("severity")
    return {"name": station["name"], "sid": alert["sid"],
            "what": what_text(alert, station, lang),
            "severity": severity if severity in ("critical", "warning", "info") else None,
            "since": since, "ago": ago, "state": alert["state"],
            "state_at": clock_text(at, tz) if at else "—"}


def _station_for_page(hub: Any, sid: str) -> dict[str, Any]:
    fleet = getattr(hub, "fleet", None)
    view = fleet.get(sid) if fleet is not None else None
    if view is not None:
        return {"sid": sid, "name": view.name or sid, "group": view.group}
    meta = hub.config.station_meta(sid)
    return {"sid": sid, "name": meta.name if meta else sid}


def _page(lang: str, status: int, page: str, *, alert: dict[str, Any] | None = None,
          form: dict[str, str] | None = None) -> Response:
    """The small HTML page of an ack link (``templates/ack.html``): ``page`` names what
    it says (``ask``, ``ok``, ``expired``…); ``alert`` the alert's details, ``form`` the
    button's token and confirmation."""
    lang = texts(lang).lang  # the hub's default for a language it has no words in
    body = _PAGES.render(lang, "ack.html", page=page, status=status, alert=alert, form=form,
                         style=Markup(_STYLE), html_lang="zh-CN" if lang == "zh" else lang)
    resp = Response(body, status=status, mimetype="text/html")
    # The token is in the URL: keep it out of caches, referrers and search engines.
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Robots-Tag"] = "noindex"
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
