"""PIN guesses sent all at once through the kiosk's local API (issue 14, finding 9).

Guesses that arrive together must not all be checked while the first is still
hashing: the lockout allows five wrong PINs per 15 minutes, however they come.
The staff PIN is hashed at the rounds that ship, so each check takes as long as
on a station and the guesses really overlap.
"""

from __future__ import annotations

import threading
from typing import Any

import firmware.directory as directory_module
from firmware.directory import DEFAULT_ITERATIONS, LOCKOUT_AFTER, hash_pin
from firmware.localapi import create_local_api
from protocol.messages import Directory, Policy, StaffEntry
from tests.test_lending import StationFactory, stations  # noqa: F401  (fixture)

GUESSES = 12


def test_guesses_at_once_are_checked_no_more_than_the_lockout_allows(
        stations: StationFactory, monkeypatch: Any) -> None:  # noqa: F811
    station = stations.make()
    station.directory.apply(Directory(
        rev=1, ts=1_764_196_700_000, policy=Policy("open", 80, 1, 24), riders=(),
        staff=(StaffEntry("li", "李师傅", hash_pin("2468", iterations=DEFAULT_ITERATIONS)),),
        denied=()))
    checked: list[str] = []
    real_verify = directory_module.verify_pin

    def counting_verify(pin: str, encoded: str) -> bool:
        checked.append(pin)  # the real check still runs: only counted
        return real_verify(pin, encoded)

    monkeypatch.setattr(directory_module, "verify_pin", counting_verify)
    app = create_local_api(station.lending, lambda: {"name": "x"}, station.directory)
    start = threading.Barrier(GUESSES)
    answers: list[tuple[int, str]] = []

    def guess(n: int) -> None:
        client = app.test_client()
        start.wait(5)
        r = client.post("/v1/maintenance", json={"staff": "li", "pin": f"{1000 + n}"})
        answers.append((r.status_code, r.get_json()["error"]["code"]))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(GUESSES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == GUESSES
    assert len(checked) <= LOCKOUT_AFTER
    codes = sorted(code for _, code in answers)
    assert codes.count("bad_pin") <= LOCKOUT_AFTER - 1
    assert codes.count("locked_out") == GUESSES - codes.count("bad_pin")
    # Locked out now: even the right PIN is not checked.
    r = app.test_client().post("/v1/maintenance", json={"staff": "li", "pin": "2468"})
    assert r.status_code == 429 and len(checked) <= LOCKOUT_AFTER
