"""Identifiers of contract §1: sids, epochs, phone numbers, rider ids."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ids
from protocol.errors import InvalidIdentifier, InvalidPhone

KEY = b"fleet-secret"


@pytest.mark.parametrize("sid", ["yh-chumen-01", "a", "0", "a" * 32, "x-", "9-9"])
def test_valid_sids(sid):
    assert ids.check_sid(sid) == sid


@pytest.mark.parametrize(
    "sid",
    ["", "-a", "A", "yh_chumen", "a" * 33, "yh/01", "yh+", "#", "yh-01\n", "hub", None, 7],
)
def test_invalid_sids(sid):
    with pytest.raises(InvalidIdentifier):
        ids.check_sid(sid)


def test_hub_is_reserved_and_says_so():
    with pytest.raises(InvalidIdentifier, match="reserved"):
        ids.check_sid("hub")
    assert ids.check_sid("hub-1") == "hub-1"


@pytest.mark.parametrize("epoch", ["9f2c01ab", "0" * 32, "abcdef0123"])
def test_valid_epochs(epoch):
    assert ids.check_epoch(epoch) == epoch


@pytest.mark.parametrize("epoch", ["9f2c01a", "0" * 33, "9F2C01AB", "9f2c01ag", "", None])
def test_invalid_epochs(epoch):
    with pytest.raises(InvalidIdentifier):
        ids.check_epoch(epoch)


def test_new_epoch_is_16_lowercase_hex_and_fresh():
    seen = {ids.new_epoch() for _ in range(100)}
    assert len(seen) == 100
    for e in seen:
        assert len(e) == 16 and ids.check_epoch(e) == e


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "+8613800138000",
        "+86 138 0013 8000",
        "0086 13800138000",
        "138-0013-8000",
        " 13800138000 ",
        "１３８００１３８０００",  # full-width digits from a Chinese input method
    ],
)
def test_normalise_phone(raw):
    assert ids.normalise_phone(raw) == "13800138000"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("1380013800", "too short"),
        ("+86 1380013800", "too short"),
        ("138001380001", "too long"),
        ("8613800138000", "too long"),  # "86" without + or 00 is no country prefix
        ("12800138000", "13 to 19"),
        ("10000000000", "13 to 19"),
        ("23800138000", "13 to 19"),
        ("1380013800a", "only digits"),
        ("138.0013.8000", "only digits"),
        ("phone", "only digits"),
        ("", "empty"),
        ("+86", "empty"),
    ],
)
def test_bad_phones_say_what_is_wrong(raw, reason):
    with pytest.raises(InvalidPhone, match=reason):
        ids.normalise_phone(raw)


def test_invalid_phone_is_a_value_error():
    with pytest.raises(ValueError):
        ids.normalise_phone("123")


def test_rider_id_form_and_value():
    rid = ids.rider_id(KEY, "+86 138 0013 8000")
    expected = hmac.new(KEY, b"13800138000", hashlib.sha256).hexdigest()[:24]
    assert rid == "r:" + expected
    assert ids.RIDER_RE.match(rid)
    assert ids.check_rider_id(rid) == rid


def test_rider_id_depends_on_key_and_number():
    a = ids.rider_id(KEY, "13800138000")
    assert ids.rider_id(KEY, "0086-138-0013-8000") == a
    assert ids.rider_id(b"other", "13800138000") != a
    assert ids.rider_id(KEY, "13800138001") != a


def test_scrypt_rider_ids_keep_the_form_and_stretch_the_keyed_hash():
    # docs/protocol.md §1, "rider_ids: scrypt": scrypt(HMAC-SHA256(key, phone)), with
    # N=2^14, r=8, p=1, salt "yizhan/rider-id/scrypt/v1", 32 bytes; the first 24 hex.
    rid = ids.rider_id(KEY, "+86 138 0013 8000", "scrypt")
    keyed = hmac.new(KEY, b"13800138000", hashlib.sha256).digest()
    stretched = hashlib.scrypt(keyed, salt=b"yizhan/rider-id/scrypt/v1", n=2**14, r=8, p=1,
                               maxmem=64 * 1024 * 1024, dklen=32)
    assert rid == "r:" + stretched.hex()[:24] and ids.check_rider_id(rid) == rid
    assert rid != ids.rider_id(KEY, "13800138000")  # another scheme, another rider id
    assert ids.rider_id(b"other", "13800138000", "scrypt") != rid
    with pytest.raises(ValueError, match="one of hmac, scrypt"):
        ids.rider_id(KEY, "13800138000", "md5")


def test_rider_id_rejects_bad_phone_and_key():
    with pytest.raises(InvalidPhone):
        ids.rider_id(KEY, "12345")
    with pytest.raises(ValueError):
        ids.rider_id(b"", "13800138000")


@pytest.mark.parametrize("rid", ["r:5e8f0c...", "r:" + "A" * 24, "5e8f0c" * 4, "r:" + "0" * 25])
def test_check_rider_id_rejects(rid):
    with pytest.raises(InvalidIdentifier):
        ids.check_rider_id(rid)


def test_mask_phone():
    assert ids.mask_phone("13812341234") == "138****1234"
    assert ids.mask_phone("+86 138 0013 8000") == "138****8000"


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A1[3-9][0-9]{9}\Z"), st.sampled_from(["", "+86", "0086", "+86 "]))
def test_any_mobile_number_normalises_and_hashes(number, prefix):
    spaced = prefix + " ".join([number[:3], number[3:7], number[7:]])
    assert ids.normalise_phone(spaced) == number
    assert ids.RIDER_RE.match(ids.rider_id(KEY, spaced))
    masked = ids.mask_phone(spaced)
    assert masked[:3] == number[:3] and masked[-4:] == number[-4:] and "****" in masked


def test_the_published_schemas_spell_the_sid_as_ids_does():
    """The JSON Schemas ship as files and cannot import ``SID_PATTERN``: each sid
    pattern in them is it, anchored (the hub's OpenAPI document imports it)."""
    import protocol

    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            sid = node.get("sid")
            if isinstance(sid, dict) and "pattern" in sid:
                found.append(sid["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in protocol.SCHEMA_NAMES:
        walk(protocol.load_schema(name))
    assert len(found) >= 6
    assert set(found) == {f"^{ids.SID_PATTERN}$"}
