"""Hub commands (contract §7) end to end: API → real broker → station → result → API.

The station side is a plain MQTT client that answers as an agent would; its
CommandResult travels through the real broker and is handed to
``Commands.result`` by a subscriber standing where the hub's ingest will (that
wiring belongs to the ingest). Expiry runs on a ManualClock. Store and Writer
are real, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from hub.fleet.commands import GRACE_MS, BadCommand, CommandNotSent, Commands
from hub.storage.schema import commands as commands_table
from hub.storage.store import Store
from hub.storage.writer import Writer
from protocol import examples
from protocol import messages as m
from protocol.topics import Kind, topic
from tests.harness.mqtt import Subscriber, publish
from tests.test_hub_api import (
    SID,
    SQLITE_ONLY,
    TOKEN_NAME,
    Api,
    StandInHub,
    bring_online,
    hub_factory,
    mqtt_publisher,
)
from yizhan.clock import ManualClock

OTHER = "yh-other"


@pytest.fixture
def make_hub(database_url: str, broker: Any) -> Iterator[Callable[..., StandInHub]]:
    with hub_factory(database_url, broker) as make:
        yield make


@pytest.fixture
def parts(database_url: str, broker: Any) -> Iterator[tuple[Store, Writer]]:
    store = Store(database_url)
    writer = Writer(store).start()
    yield store, writer
    writer.close()
    store.close()


@pytest.fixture
def publisher(broker: Any) -> Iterator[Callable[[str, bytes], Any]]:
    publish_, stop = mqtt_publisher(broker)
    yield publish_
    stop()


@pytest.fixture
def commands(parts: tuple[Store, Writer], publisher: Callable, clock: ManualClock) -> Commands:
    store, writer = parts
    return Commands(store, writer, publisher, clock)


def result_for(command_id: str, ok: bool = True, error: str | None = None,
               data: dict | None = None, sid: str = SID, rev: int = 6000) -> m.CommandResult:
    d = examples.example("command_result")
    d.update(sid=sid, id=command_id, ok=ok, error=error, rev=rev)
    d["data"] = data if data is not None else {"slot": 3, "locked": False}
    return m.from_dict(Kind.CMD_RESULT, d, topic_sid=sid)


def row(store: Store, writer: Writer, command_id: str) -> Any:
    assert writer.flush()
    with store.engine.connect() as conn:
        return conn.execute(sa.select(commands_table)
                            .where(commands_table.c.id == command_id)).one()


# -- end to end through the API and a real broker ----------------------------------------


def station_answers(broker: Any, ok: bool, error: str | None = None) -> Callable[[Any], None]:
    """What an agent does with a command: answer it on cmd/result."""
    def answer(received: Any) -> None:
        cmd = m.decode(Kind.CMD, received.payload)
        d = examples.example("command_result")
        d.update(id=cmd.id, ok=ok, error=error, data={"slot": cmd.args.get("slot"),
                                                      "locked": not ok})
        publish(broker, topic(SID, Kind.CMD_RESULT), d)
    return answer


@pytest.mark.parametrize(("ok", "error", "state"), [(True, None, "ok"),
                                                    (False, "jammed", "failed")])
def test_command_round_trip(make_hub: Callable[..., StandInHub], broker: Any, ok: bool,
                            error: str | None, state: str) -> None:
    hub = make_hub()
    bring_online(hub)
    api = Api(hub.app)
    with Subscriber(broker, topic(SID, Kind.CMD)) as station, \
            Subscriber(broker, topic(SID, Kind.CMD_RESULT)) as ingest:
        resp = api.post(f"/api/v1/stations/{SID}/commands",
                        json={"cmd": "unlock", "args": {"slot": 3}})
        assert resp.status_code == 202
        command_id = resp.get_json()["id"]
        got = station.wait_for(topic(SID, Kind.CMD))
        now = hub.clock.ms()
        assert m.decode(Kind.CMD, got.payload) == m.Command(
            command_id, "unlock", {"slot": 3}, ts=now, expires=now + 30_000, by=TOKEN_NAME)
        station_answers(broker, ok, error)(got)
        answer = ingest.wait_for(topic(SID, Kind.CMD_RESULT))
    _, result = m.parse(answer.topic, answer.payload)
    hub.clock.advance(0.2)
    assert hub.commands.result(result, hub.clock.ms()) == "applied"

    body = api.get(f"/api/v1/stations/{SID}/commands/{command_id}").get_json()
    assert {k: body[k] for k in ("id", "cmd", "state", "error")} == \
        {"id": command_id, "cmd": "unlock", "state": state, "error": error}
    assert body["result"] == {"slot": 3, "locked": not ok}
    assert body["answered"] == hub.clock.ms()
    # The broker may deliver a QoS 1 message twice: the second is a duplicate.
    assert hub.commands.result(result, hub.clock.ms()) == "duplicate"
    saved = row(hub.store, hub.writer, command_id)
    assert (saved.state, saved.error, json.loads(saved.result)) == \
        (state, error, {"slot": 3, "locked": not ok})


# -- Commands itself ---------------------------------------------------------------------


def test_send_records_and_publishes_the_exact_command(commands: Commands,
                                                      parts: tuple[Store, Writer],
                                                      broker: Any, clock: ManualClock) -> None:
    with Subscriber(broker, topic(SID, Kind.CMD)) as station:
        command_id = commands.send(SID, "replay", {"from_seq": 5, "to_seq": 9}, by="staff:li")
        got = station.wait_for(topic(SID, Kind.CMD))
    now = clock.ms()
    assert command_id.startswith("c-") and len(command_id) == 18
    assert got.json() == {"v": 1, "id": command_id, "cmd": "replay",
                          "args": {"from_seq": 5, "to_seq": 9}, "ts": now,
                          "expires": now + 30_000, "by": "staff:li"}
    assert (got.qos, got.retain) == (1, False)
    saved = row(*parts, command_id)
    assert (saved.sid, saved.cmd, json.loads(saved.args), saved.by, saved.state) == \
        (SID, "replay", {"from_seq": 5, "to_seq": 9}, "staff:li", "sent")
    assert (saved.created_ms, saved.expires_ms, saved.answered_ms) == (now, now + 30_000, None)
    assert commands.get(SID, command_id)["state"] == "sent"


@SQLITE_ONLY
def test_ids_are_unique(commands: Commands) -> None:
    ids = {commands.send(SID, "rebirth", {}, by=None) for _ in range(50)}
    assert len(ids) == 50


BAD_COMMANDS = [
    ("Bad Sid", "rebirth", {}, "bad_sid"),
    ("hub", "rebirth", {}, "bad_sid"),
    (SID, "selfdestruct", {}, "unknown_cmd"),
    (SID, "", {}, "unknown_cmd"),
    (SID, "unlock", {}, "bad_args"),
    (SID, "unlock", {"slot": -1}, "bad_args"),
    (SID, "unlock", {"slot": True}, "bad_args"),
    (SID, "unlock", [1], "bad_args"),
    (SID, "replay", {"from_seq": 0, "to_seq": 3}, "bad_args"),
    (SID, "replay", {"from_seq": 1}, "bad_args"),
    (SID, "reload", {"blob": "x" * 70_000}, "bad_args"),  # over the 64 KiB payload limit
]


@SQLITE_ONLY
def test_send_refuses_a_bad_command(commands: Commands) -> None:
    for sid, cmd, args, code in BAD_COMMANDS:
        with pytest.raises(BadCommand) as caught:
            commands.send(sid, cmd, args, by=None)
        assert (caught.value.code, bool(caught.value.message)) == (code, True), (sid, cmd, args)
    assert commands.open_count() == 0


@SQLITE_ONLY
def test_a_command_not_handed_to_the_broker_is_failed(parts: tuple[Store, Writer],
                                                      clock: ManualClock) -> None:
    sent: list[str] = []

    def refuse(topic_: str, payload: bytes) -> None:
        sent.append(json.loads(payload)["id"])
        raise OSError("no connection")

    commands = Commands(*parts, refuse, clock)
    with pytest.raises(CommandNotSent):
        commands.send(SID, "rebirth", {}, by=None)
    got = commands.get(SID, sent[0])
    assert (got["state"], got["error"]) == ("failed", "not_sent")
    assert row(*parts, sent[0]).state == "failed"
    assert commands.open_count() == 0


def test_results_that_do_not_apply_are_stale(commands: Commands, clock: ManualClock) -> None:
    command_id = commands.send(SID, "unlock", {"slot": 3}, by=None)
    assert commands.result(result_for("c-unknown"), clock.ms()) == "stale"
    # Another station must not close this station's command.
    assert commands.result(result_for(command_id, sid=OTHER), clock.ms()) == "stale"
    assert commands.get(SID, command_id)["state"] == "sent"
    assert commands.get(OTHER, command_id) is None
    assert commands.result(result_for(command_id), clock.ms()) == "applied"


def test_expiry_waits_for_the_grace(commands: Commands, parts: tuple[Store, Writer],
                                    clock: ManualClock) -> None:
    command_id = commands.send(SID, "unlock", {"slot": 3}, by=None)
    clock.advance(30)
    assert commands.expire(clock.ms()) == 0  # expires has passed, the answer may be on its way
    clock.advance(GRACE_MS / 1000)
    assert commands.expire(clock.ms()) == 0  # exactly at the end of the grace: still open
    clock.advance(0.001)
    assert commands.expire(clock.ms()) == 1
    assert commands.expire(clock.ms()) == 0
    got = commands.get(SID, command_id)
    assert (got["state"], got["error"], got["answered"]) == ("expired", None, None)
    saved = row(*parts, command_id)
    assert (saved.state, saved.answered_ms) == ("expired", None)
    # Too late: the answer no longer counts, and the command stays expired.
    assert commands.result(result_for(command_id), clock.ms()) == "stale"
    assert commands.get(SID, command_id)["state"] == "expired"


def test_an_answer_inside_the_grace_still_counts(commands: Commands, clock: ManualClock) -> None:
    command_id = commands.send(SID, "unlock", {"slot": 3}, by=None)
    clock.advance(30 + GRACE_MS / 1000 - 1)
    assert commands.result(result_for(command_id), clock.ms()) == "applied"
    assert commands.get(SID, command_id)["state"] == "ok"
    clock.advance(60)
    assert commands.expire(clock.ms()) == 0


def test_a_late_answer_before_the_sweep_is_stale_too(commands: Commands,
                                                     clock: ManualClock) -> None:
    """The outcome must not depend on when the expiry sweep happens to run."""
    command_id = commands.send(SID, "unlock", {"slot": 3}, by=None)
    clock.advance(31 + GRACE_MS / 1000)
    assert commands.result(result_for(command_id), clock.ms()) == "stale"
    assert commands.get(SID, command_id)["state"] == "expired"
    assert commands.expire(clock.ms()) == 0


def test_ttl_is_configurable(parts: tuple[Store, Writer], publisher: Callable,
                             clock: ManualClock) -> None:
    commands = Commands(*parts, publisher, clock, ttl=5.0)
    command_id = commands.send(SID, "rebirth", {}, by=None)
    assert commands.get(SID, command_id)["expires"] == clock.ms() + 5_000
    clock.advance(5 + GRACE_MS / 1000 + 0.001)
    assert commands.expire(clock.ms()) == 1


def test_a_restarted_hub_takes_up_open_commands(parts: tuple[Store, Writer],
                                                publisher: Callable,
                                                clock: ManualClock) -> None:
    first = Commands(*parts, publisher, clock)
    open_id = first.send(SID, "unlock", {"slot": 3}, by=None)
    answered_id = first.send(SID, "unlock", {"slot": 4}, by=None)
    assert first.result(result_for(answered_id), clock.ms()) == "applied"
    assert parts[1].flush()

    second = Commands(*parts, publisher, clock)
    assert second.open_count() == 1
    assert second.result(result_for(answered_id), clock.ms()) == "duplicate"
    assert second.result(result_for(open_id, ok=False, error="busy"), clock.ms()) == "applied"
    got = second.get(SID, open_id)
    assert (got["state"], got["error"]) == ("failed", "busy")


def test_closed_commands_are_read_back_from_the_database(parts: tuple[Store, Writer],
                                                         publisher: Callable,
                                                         clock: ManualClock) -> None:
    commands = Commands(*parts, publisher, clock)
    command_id = commands.send(SID, "reload", {}, by="token:abcdef")
    assert commands.result(result_for(command_id, data={}), clock.ms()) == "applied"
    clock.advance(3600)
    commands.expire(clock.ms())  # also forgets closed commands kept in memory
    assert parts[1].flush()
    got = commands.get(SID, command_id)  # now from the database
    assert (got["state"], got["by"], got["result"]) == ("ok", "token:abcdef", {})
    # Long forgotten in memory, so a repeat cannot be told from a stray: stale.
    assert commands.result(result_for(command_id), clock.ms()) == "stale"
