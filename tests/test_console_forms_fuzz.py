"""The console's forms under schemathesis (issue 21, item 4c).

hub/console/openapi_forms.py describes every form the console posts. Schemathesis
derives examples from it, valid and not, and this test sends each one over real
HTTP, with the session's CSRF token, as an admin signed in with a real password
through the sign-in form, to a real hub's console: a Hub on a SQLite file whose
web waitress serves on a free port (``Hub.serve``, in a thread of this process,
so the hooks can make the alerts, staff and tokens valid examples name), the
session cookie kept by a ``requests.Session`` as a browser keeps it. Every answer
must be one the document lists and never a 5xx; a valid example must be taken
(303, or the token page) and change what the hub stores; an invalid one must be
refused (4xx, the form shown again) and leave every table of the database as it
was. The example counts are bounded (10 valid, 20 invalid per form): the file
took 37-58 s on the 2-core machine at load average 1-2 (24 s in-process).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from hub.console import openapi_forms
from hub.service import Hub
from hub.storage.schema import metadata
from tests.harness.console_app import PASSWORD, WebBrowser, bring_online, console_hub, serving
from yizhan.clock import ManualClock

T0 = 1_764_201_600.0  # 2025-11-27 08:00 CST
SID = "yh-chumen-01"
#: Examples per form: valid ones, and invalid ones. CI's; a longer run (the
#: figures in docs/benchmarks.md) sets YIZHAN_FUZZ_POSITIVE / YIZHAN_FUZZ_NEGATIVE.
POSITIVE_EXAMPLES = int(os.environ.get("YIZHAN_FUZZ_POSITIVE", "10"))
NEGATIVE_EXAMPLES = int(os.environ.get("YIZHAN_FUZZ_NEGATIVE", "20"))
#: No shrinking: a failing example is reported as it came (shrinking one costs minutes).
RUN = (Phase.explicit, Phase.generate)

SCHEMA = schemathesis.openapi.from_dict(openapi_forms.document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
# What the console answers, as the document says: taken is a redirect back to the
# page (the token form answers its page, with the secret); refused is a 4xx.
SCHEMA.config.checks.positive_data_acceptance.expected_statuses = ["200", "303"]
SCHEMA.config.checks.negative_data_rejection.expected_statuses = [
    "400", "401", "403", "404", "409", "429"]

#: The hub of the running module, for the hook that makes valid examples refer to
#: things that exist (an open alert, a staff member, a token made here).
_HUB: dict[str, Hub] = {}
#: (form, positive/negative, answer) → examples, written to $YIZHAN_FUZZ_COUNTS (a
#: JSON file) for docs/benchmarks.md's "Hostile input".
TALLY: Counter[tuple[str, str, str]] = Counter()
_SERIAL = iter(range(1, 10**9))
_STANDING: dict[str, str] = {}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = console_hub(tmp_path_factory.mktemp("console-fuzz"), ManualClock(T0),
                    http={"host": "127.0.0.1", "port": 0})
    bring_online(h, SID)  # a State with slots: the unlock form has slots to name
    _HUB["hub"] = h
    with serving(h):
        yield h
    _HUB.clear()
    _STANDING.clear()
    h.close()
    out = os.environ.get("YIZHAN_FUZZ_COUNTS")
    if out:
        Path(out).write_text(json.dumps(
            [{"form": k[0], "mode": k[1], "answer": k[2], "examples": n}
             for k, n in sorted(TALLY.items())], indent=1) + "\n")


@pytest.fixture(scope="module")
def base(hub: Hub) -> str:
    """The served hub's URL (``http://127.0.0.1:<free port>``)."""
    return f"http://127.0.0.1:{hub.http_port}"


@pytest.fixture(scope="module")
def boss(base: str) -> WebBrowser:
    """Signed in with the user's real password through the sign-in form, over
    HTTP; the CSRF token of a real page."""
    b = WebBrowser(base, "boss")
    b.get("/console/people")
    return b


def stored(hub: Hub) -> dict[str, list[tuple]]:
    """Every row of every table: what a refused form must leave as it was."""
    out = {}
    with hub.store.engine.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            out[name] = sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
    return out


# -- valid examples that refer to what exists --------------------------------------------
#
# A valid form names an alert that is open, a staff member, a rider or a token that
# exists, a name not taken yet: JSON Schema cannot say that, so valid examples are
# mapped onto things made for them. Invalid examples are left as generated.


def _serial() -> int:
    return next(_SERIAL)


def _fresh_alert(hub: Hub) -> str:
    for row in hub.alerts.list(state="firing", limit=100) + hub.alerts.list(state="acked",
                                                                              limit=100):
        hub.alerts.resolve(row["id"], by="test")
    return hub.alerts.fire("water_low", SID, "warning", "水位低 18%").alert["id"]


def _staff(hub: Hub) -> str:
    staff_id = f"fz-{_serial()}"
    hub.directory.add_staff({"id": staff_id, "name": "测试", "pin": "1234"}, by="test")
    return staff_id


def _rider(hub: Hub) -> str:
    phone = f"139{_serial():08d}"
    return hub.directory.register_rider({"phone": phone, "pin": "1234"}, by="test")[0]["id"]


def _unique(value: str, most: int = 64) -> str:
    """A name not given yet (made unique by a number, kept within the pattern)."""
    tail = f"-{_serial()}"
    return value.strip()[: most - len(tail)] + tail


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    return isinstance(value, str) and re.search(schema["pattern"], value) is not None


def _invalid_form_for_something_that_exists(case: Any) -> None:
    """An invalid form is sent about something that exists (when the path names it
    validly), so that it is the form that is refused, not the path with a 404."""
    raw = case.operation.definition.raw
    if "requestBody" not in raw:
        return  # only the path can be invalid: left as generated
    params = case.path_parameters or {}
    for p in raw.get("parameters", ()):
        if not _valid(params.get(p["name"]), p["schema"]):
            return
    if raw["operationId"] == "silenceAlert":
        alert = case.body.get("alert") if isinstance(case.body, dict) else None
        if _valid(alert, {"pattern": "^[A-Za-z0-9_-]{1,64}$"}):
            case.body["alert"] = _fresh_alert(_HUB["hub"])
        return
    op = raw["operationId"]
    if op == "changeStaff":
        # A refused form changes nothing: one staff member serves them all (making
        # one hashes a PIN, at the production cost).
        params["staff_id"] = _STANDING.get("staff") or _STANDING.setdefault(
            "staff", _staff(_HUB["hub"]))
        return
    _refer_to_what_exists(op, params, case.body)


def _refer_to_what_exists(op: str, params: dict[str, Any], body: Any) -> None:
    hub = _HUB["hub"]
    if op in ("ackAlert", "resolveAlert", "assignAlert"):
        params["alert_id"] = _fresh_alert(hub)
    elif op == "silenceAlert":
        body["alert"] = _fresh_alert(hub)
    elif op in ("changeStaff", "removeStaff"):
        params["staff_id"] = _staff(hub)
    elif op == "removeRider":
        params["rider"] = _rider(hub)
    elif op == "allowRider":
        rider = _rider(hub)
        hub.directory.deny({"rider": rider, "reason": "测试"}, by="test")
        params["rider"] = rider
    elif op == "revokeToken":
        params["name"] = name = f"fz-{_serial()}"
        from hub.http import stored_tokens
        stored_tokens.make(hub.store, hub.config.api_tokens, name, ["read"], hub.clock.ms(),
                           "test")
    elif op == "changeUser":
        params["name"] = "desk"
    elif op in ("placeStation", "unlockSlot"):
        params["sid"] = SID


@SCHEMA.hook
def map_case(ctx: Any, case: Any) -> Any:
    if not case.meta.generation.mode.is_positive:
        _invalid_form_for_something_that_exists(case)
        return case
    hub = _HUB["hub"]
    op = case.operation.definition.raw["operationId"]
    body = case.body
    _refer_to_what_exists(op, case.path_parameters or {}, body)
    if op == "addStaff":
        body["id"] = _unique(body["id"])
    elif op == "makeToken":
        body["name"] = _unique(body["name"])
    elif op == "addUser":
        body["name"] = _unique(body["name"].strip().lower())
        if body["role"] == "maintenance" and not any(
                g.strip() for g in re.split("[,，]", body.get("groups", ""))):
            body["groups"] = "chumen"
    elif op in ("registerRider", "denyRider"):
        body["phone"] = f"138{_serial():08d}"  # a rider not registered or denied yet
        if body.get("expires", "").strip():  # a day to come: the hub's clock is in 2025
            body["expires"] = "2030" + body["expires"].strip()[4:]
    elif op == "assignAlert" and body.get("staff", "").strip():
        body["staff"] = _staff(hub)
    elif op == "unlockSlot":
        body["slot"] = "1"  # a slot the State lists
    elif op == "placeStation":
        if not body["lat"].strip() or not body["lon"].strip():
            body["lat"] = body["lon"] = ""  # both given or neither
        hours = body["hours"].strip()
        if len(hours) == 11 and hours[:5] == hours[6:]:
            body["hours"] = "24h"  # open from a time to the same time says nothing
    return case


def _run(label: str, boss: WebBrowser, hub: Hub, mode: GenerationMode, examples: int) -> None:
    operation = OPERATIONS[label]

    # Schemathesis's own pytest plugin does not run on this pytest: drive Hypothesis here.
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=RUN)
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: Any) -> None:
        before = stored(hub)
        extra: dict[str, Any] = {}
        if isinstance(case.body, dict):
            case.body["csrf"] = boss.token
        elif "requestBody" not in operation.definition.raw:
            extra["data"] = {"csrf": boss.token}  # a form of only its button
        else:
            # An invalid body that is no form at all (a list, a number): no field to
            # carry the token in, refused as a form without it.
            TALLY[(label, mode.value, "no form")] += 1
        resp = case.call(base_url=boss.base, session=boss.session, **extra)
        case.validate_response(resp)
        after = stored(hub)
        page = resp.text if resp.status_code >= 400 else ""
        if isinstance(case.body, dict) or extra:
            # The token was sent: a refusal must be about the form's values.
            assert "This form has expired" not in page and "表单已过期" not in page
        TALLY[(label, mode.value, str(resp.status_code))] += 1
        if mode is GenerationMode.POSITIVE:
            assert after != before, f"taken but nothing stored: {resp.status_code}"
        elif resp.status_code >= 400:
            changed = [t for t in after if after[t] != before.get(t)]
            assert not changed, f"refused ({resp.status_code}) but stored in {changed}"
            # Shown again saying why (a 404 of a path that names nothing has no form).
            assert 'class="flash error"' in page or resp.status_code in (403, 404), page

    answers_as_documented()


FORMS = sorted(label for label in OPERATIONS if label != "POST /console/signin")


@pytest.mark.parametrize("label", FORMS)
def test_valid_forms_are_taken(label: str, boss: WebBrowser, hub: Hub, caplog) -> None:
    caplog.set_level(logging.ERROR)
    _run(label, boss, hub, GenerationMode.POSITIVE, POSITIVE_EXAMPLES)
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


def _can_be_invalid(label: str) -> bool:
    raw = OPERATIONS[label].definition.raw
    return "requestBody" in raw or bool(raw.get("parameters"))


@pytest.mark.parametrize("label", [x for x in FORMS if _can_be_invalid(x)])
def test_invalid_forms_are_refused_and_nothing_stored(label: str, boss: WebBrowser, hub: Hub,
                                                       caplog) -> None:
    caplog.set_level(logging.ERROR)
    _run(label, boss, hub, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


# -- what the fuzzing found, each pinned by name ------------------------------------------


def test_a_refused_form_answers_4xx_with_its_page_again_and_a_taken_one_303(
        boss: WebBrowser, hub: Hub) -> None:
    """A refusal was a 303 like a success: only the flash told them apart."""
    before = stored(hub)
    resp = boss.post("/console/people/staff", {"id": "s-li", "name": "李", "pin": "12a4"})
    page = resp.text
    assert resp.status_code == 400 and 'class="flash error"' in page and 'id="add-staff"' in page
    assert stored(hub) == before
    resp = boss.post("/console/people/staff", {"id": "s-li", "name": "李", "pin": "1234"})
    assert resp.status_code == 303 and hub.directory.get_staff("s-li")["name"] == "李"
    # Taken already: 409, the page again.
    resp = boss.post("/console/people/staff", {"id": "s-li", "name": "李", "pin": "1234"})
    assert resp.status_code == 409 and 'class="flash error"' in resp.text


def test_the_place_form_refuses_an_action_it_does_not_have(boss: WebBrowser, hub: Hub) -> None:
    """Any action but "reset" was taken as a save."""
    before = stored(hub)
    form = {"lat": "28.1", "lon": "121.2", "address": "x", "host": "", "hours": "24h"}
    for action in ("__not_in_enum__", "", "Save"):
        resp = boss.post(f"/console/stations/{SID}/place", {**form, "action": action})
        assert resp.status_code == 400, action
    resp = boss.post(f"/console/stations/{SID}/place", form)  # no button named
    assert resp.status_code == 400
    assert stored(hub) == before
    assert boss.post(f"/console/stations/{SID}/place",
                     {**form, "action": "save"}).status_code == 303
    assert stored(hub) != before


def test_a_user_change_with_an_unknown_action_is_refused(boss: WebBrowser, hub: Hub) -> None:
    """It was read as the role form's change (an admin's slip could demote a user)."""
    before = stored(hub)
    resp = boss.post("/console/users/desk", {"action": "delete", "role": "ops", "groups": ""})
    assert resp.status_code == 400 and stored(hub) == before
    resp = boss.post("/console/users/nobody", {"action": "password", "password": "x" * 12})
    assert resp.status_code == 404 and stored(hub) == before


def test_the_remove_phone_box_takes_only_its_tick(boss: WebBrowser, hub: Hub) -> None:
    """Any value of clear_phone removed the phone; the checkbox sends 1."""
    hub.directory.add_staff({"id": "s-zhao", "name": "赵", "phone": "13900001111",
                             "pin": "1234"}, by="test")
    before = stored(hub)
    resp = boss.post("/console/people/staff/s-zhao", {"name": "赵", "clear_phone": "yes"})
    assert resp.status_code == 400 and stored(hub) == before
    assert boss.post("/console/people/staff/s-zhao",
                     {"name": "赵", "clear_phone": "1"}).status_code == 303
    assert hub.directory.get_staff("s-zhao")["phone"] is None


# -- the filter forms (GET) ----------------------------------------------------------------

#: The pages whose forms are filters in the query string (uptime and report ranges,
#: a group, a page of the fleet).
FILTERED = ("/console/", "/console/uptime", "/console/uptime.csv", "/console/report",
            "/console/report.csv", "/console/refill", "/console/loans", "/console/alerts",
            f"/console/stations/{SID}")
_QUERY_VALUES = st.one_of(
    st.text(max_size=30), st.integers(-10**20, 10**20).map(str),
    st.from_regex(r"\A20[0-9]{2}-[0-9]{2}-[0-9]{2}\Z"),
    st.from_regex(r"\A20[0-9]{2}-(Q[0-9]|[0-9]{2})\Z"))


def test_filter_forms_answer_200_or_400_and_store_nothing(boss: WebBrowser, hub: Hub,
                                                          caplog) -> None:
    """Any query a filter form could send, and many it could not: the page (200) or
    the page saying the range is wrong (400), never a 5xx, nothing stored."""
    caplog.set_level(logging.ERROR)
    before = stored(hub)

    @settings(max_examples=NEGATIVE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=RUN)
    @given(path=st.sampled_from(FILTERED),
           query=st.dictionaries(st.sampled_from(["from", "to", "group", "page", "period"]),
                                 _QUERY_VALUES, max_size=4))
    def filtered(path: str, query: dict[str, str]) -> None:
        resp = boss.get(path, params=query)
        TALLY[(f"GET {path.replace(SID, '{sid}')}", "query", str(resp.status_code))] += 1
        assert resp.status_code in (200, 400), (path, query, resp.status_code)

    filtered()
    assert stored(hub) == before
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


# -- the sign-in form (public), last: its wrong passwords lock the address ---------------


@pytest.fixture(scope="module")
def stranger(base: str) -> WebBrowser:
    b = WebBrowser(base)
    b.get("/console/signin")
    return b


def test_signing_in_with_a_real_password_is_taken(stranger: WebBrowser, hub: Hub) -> None:
    """Whatever ``next`` says, a right password signs in and stays on this console."""
    operation = OPERATIONS["POST /console/signin"]

    @settings(max_examples=5, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=RUN)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def signs_in(case: Any) -> None:
        # "wang": "desk" had its password changed by the forms above.
        case.body.update(name="wang", password=PASSWORD, csrf=stranger.token)
        resp = case.call(base_url=stranger.base, session=stranger.session)
        case.validate_response(resp)
        assert resp.status_code == 303
        where = resp.headers["location"][0]  # schemathesis's headers: lower case, lists
        assert where.startswith("/console") and not where.startswith("//"), where
        stranger.get("/console/")  # signed in: a page with the new session's token
        assert stranger.post("/console/signout", {}).status_code == 303
        stranger.get("/console/signin")

    signs_in()


def test_hostile_sign_ins_are_refused_never_a_5xx(stranger: WebBrowser, hub: Hub, caplog) -> None:
    """Invalid sign-in forms: 400, 401 or (after fifty) 429, nothing stored."""
    caplog.set_level(logging.ERROR)
    operation = OPERATIONS["POST /console/signin"]

    @settings(max_examples=NEGATIVE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=RUN)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def refused(case: Any) -> None:
        before = stored(hub)
        if isinstance(case.body, dict):
            case.body["csrf"] = stranger.token
        resp = case.call(base_url=stranger.base, session=stranger.session)
        case.validate_response(resp)
        TALLY[("POST /console/signin", "negative", str(resp.status_code))] += 1
        assert resp.status_code in (400, 401, 429) and stored(hub) == before

    refused()
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


def test_a_staff_change_without_the_groups_box_keeps_the_groups(boss: WebBrowser,
                                                                 hub: Hub) -> None:
    """Read as an empty box, it gave the staff member every station."""
    hub.directory.add_staff({"id": "s-qian", "name": "钱", "groups": ["kanmen"],
                             "pin": "1234"}, by="test")
    assert boss.post("/console/people/staff/s-qian", {"name": "钱师傅"}).status_code == 303
    assert hub.directory.get_staff("s-qian")["groups"] == ["kanmen"]
    assert hub.directory.get_staff("s-qian")["name"] == "钱师傅"
    assert boss.post("/console/people/staff/s-qian",
                     {"name": "钱师傅", "groups": ""}).status_code == 303
    assert hub.directory.get_staff("s-qian")["groups"] == []  # typed empty: every station


def test_a_place_form_without_its_boxes_wipes_nothing(boss: WebBrowser, hub: Hub) -> None:
    """Its missing boxes were read as "not known" and saved over the place."""
    full = {"lat": "28.1", "lon": "121.2", "address": "楚门镇先锋路 18 号", "host": "x",
            "hours": "24h", "action": "save"}
    assert boss.post(f"/console/stations/{SID}/place", full).status_code == 303
    before = stored(hub)
    assert boss.post(f"/console/stations/{SID}/place", {"action": "save"}).status_code == 400
    assert boss.post(f"/console/stations/{SID}/place",
                     {k: v for k, v in full.items() if k != "hours"}).status_code == 400
    assert stored(hub) == before
