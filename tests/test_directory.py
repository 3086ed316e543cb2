"""DirectoryStore: the last Directory on disk, newer revs only, PINs and lockouts."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from firmware.directory import DirectoryStore, hash_pin, verify_pin
from protocol.errors import InvalidMessage
from protocol.messages import Policy
from tests.test_lending import RIDER, RIDER_2, directory
from yizhan.clock import ManualClock


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "directory.json"


@pytest.fixture
def store(path: Path, clock: ManualClock) -> DirectoryStore:
    return DirectoryStore(path, clock)


# -- PIN hashes ------------------------------------------------------------------------------


def test_hash_format_is_documented_and_reproducible() -> None:
    encoded = hash_pin("4821", salt="k9Qz", iterations=1000)
    algorithm, rounds, salt, digest = encoded.split("$")
    expected = hashlib.pbkdf2_hmac("sha256", b"4821", b"k9Qz", 1000)
    assert (algorithm, rounds, salt) == ("pbkdf2_sha256", "1000", "k9Qz")
    assert base64.b64decode(digest) == expected  # standard base64, as Django writes it
    assert verify_pin("4821", encoded) and not verify_pin("4812", encoded)


def test_default_hash_has_a_fresh_salt_and_200000_rounds() -> None:
    a, b = hash_pin("4821"), hash_pin("4821")
    assert a != b and a.split("$")[1] == "200000" and len(a.split("$")[2]) == 22
    assert verify_pin("4821", a)


@pytest.mark.parametrize("encoded", [
    "", "nonsense", "md5$1000$salt$abc", "pbkdf2_sha256$x$salt$abc",
    "pbkdf2_sha256$0$salt$abc", "pbkdf2_sha256$1000$$abc",
    "pbkdf2_sha256$99999999$salt$abc",  # more rounds than a kiosk should spend
    "pbkdf2_sha256$1000$salt$not-base64!",
])
def test_malformed_hashes_match_nothing(encoded: str) -> None:
    assert not verify_pin("4821", encoded)


def test_bad_salt_is_refused() -> None:
    with pytest.raises(ValueError):
        hash_pin("4821", salt="a$b")


# -- the directory ----------------------------------------------------------------------------


def test_default_policy_before_any_directory(store: DirectoryStore) -> None:
    assert store.directory is None and store.rev is None
    assert store.policy == Policy("open", 80, 1, 24)
    assert not store.is_denied(RIDER) and not store.is_registered(RIDER)


def test_newer_only_and_persisted(store: DirectoryStore, path: Path,
                                  clock: ManualClock) -> None:
    assert store.apply(directory(rev=5, lending="registered", riders=[(RIDER, "4821")]))
    assert not store.apply(directory(rev=5, denied=[RIDER]))  # equal: dropped
    assert not store.apply(directory(rev=4))  # older: dropped
    assert store.rev == 5 and store.policy.lending == "registered" and not store.is_denied(RIDER)

    again = DirectoryStore(path, clock)  # a restart
    assert again.rev == 5 and again.is_registered(RIDER)
    assert json.loads(path.read_text(encoding="utf-8"))["rev"] == 5
    assert again.apply(directory(rev=6, denied=[RIDER_2]))
    assert DirectoryStore(path, clock).is_denied(RIDER_2)
    assert not list(path.parent.glob(".directory.json.*"))  # no temp file left behind


def test_a_raw_payload_is_validated_and_changes_nothing(store: DirectoryStore,
                                                        path: Path) -> None:
    store.apply(directory(rev=1))
    bad = directory(rev=2).to_dict()
    bad["denied"] = ["13800138000"]  # a phone number where a rider id belongs
    with pytest.raises(InvalidMessage) as err:
        store.apply(bad)
    assert err.value.field == "denied[0]"
    assert store.rev == 1 and json.loads(path.read_text())["rev"] == 1
    assert store.apply(directory(rev=2).to_dict())


def test_a_corrupt_file_is_kept_aside(path: Path, clock: ManualClock) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    store = DirectoryStore(path, clock)
    assert store.directory is None and store.policy.lending == "open"
    assert path.with_name("directory.json.corrupt").read_text() == "{not json"


# -- PINs and lockouts --------------------------------------------------------------------------


def test_rider_pin_and_lockout(store: DirectoryStore, path: Path, clock: ManualClock) -> None:
    store.apply(directory(lending="registered", riders=[(RIDER, "4821")]))
    assert store.check_rider_pin(RIDER, "4821").ok
    assert store.check_rider_pin(RIDER_2, "4821").reason == "not_registered"
    checks = [store.check_rider_pin(RIDER, "1111") for _ in range(5)]
    assert [c.reason for c in checks] == ["bad_pin"] * 4 + ["locked_out"]
    assert checks[-1].locked_until == clock.ms() + 15 * 60_000

    restarted = DirectoryStore(path, clock)
    assert restarted.check_rider_pin(RIDER, "4821").reason == "locked_out"
    clock.advance(15 * 60 - 1)
    assert restarted.check_rider_pin(RIDER, "4821").reason == "locked_out"
    clock.advance(1)
    assert restarted.check_rider_pin(RIDER, "4821").ok
    # A fresh start: five more wrong tries before the next lockout.
    assert restarted.check_rider_pin(RIDER, "1111").tries_left == 4


def test_a_right_pin_resets_the_count(store: DirectoryStore) -> None:
    store.apply(directory(lending="registered", riders=[(RIDER, "4821")]))
    for _ in range(4):
        store.check_rider_pin(RIDER, "1111")
    assert store.check_rider_pin(RIDER, "4821").ok
    assert store.check_rider_pin(RIDER, "1111").tries_left == 4


def test_staff_pin_unknown_staff_counts_as_wrong(store: DirectoryStore) -> None:
    store.apply(directory())
    assert store.check_staff_pin("li", "2468").ok
    assert store.staff("li").name == "李师傅"
    unknown = store.check_staff_pin("zhao", "2468")
    assert (unknown.ok, unknown.reason, unknown.tries_left) == (False, "bad_pin", 4)
    for _ in range(4):
        store.check_staff_pin("zhao", "2468")
    assert store.check_staff_pin("zhao", "2468").reason == "locked_out"
    assert store.check_staff_pin("li", "2468").ok  # another id is not affected


def test_riders_and_staff_lock_out_separately(store: DirectoryStore) -> None:
    store.apply(directory(lending="registered", riders=[(RIDER, "4821")]))
    for _ in range(5):
        store.check_staff_pin("li", "0000")
    assert store.check_staff_pin("li", "2468").reason == "locked_out"
    assert store.check_rider_pin(RIDER, "4821").ok


def test_a_clock_jumping_back_cannot_stretch_a_lockout(store: DirectoryStore,
                                                       clock: ManualClock) -> None:
    store.apply(directory())
    for _ in range(5):
        store.check_staff_pin("li", "0000")
    clock.jump(clock.now() - 86_400)  # a Pi's boot before NTP
    check = store.check_staff_pin("li", "2468")
    assert check.reason == "locked_out" and check.locked_until == clock.ms() + 15 * 60_000
    clock.advance(15 * 60)
    assert store.check_staff_pin("li", "2468").ok


def test_a_corrupt_lockout_file_starts_clean(path: Path, clock: ManualClock) -> None:
    path.parent.mkdir(parents=True)
    path.with_name("directory.json.lockouts").write_text("[1, 2")
    store = DirectoryStore(path, clock)
    store.apply(directory())
    assert store.check_staff_pin("li", "2468").ok
