"""Identifiers of contract §1: station ids, epochs, phone numbers and rider ids.

>>> check_sid("yh-chumen-01")
'yh-chumen-01'
>>> normalise_phone("+86 138-0013-8000")
'13800138000'
>>> mask_phone("13800138000")
'138****8000'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata

from protocol.errors import InvalidIdentifier, InvalidPhone

__all__ = [
    "EPOCH_RE",
    "PHONE_RE",
    "RESERVED_SIDS",
    "RIDER_ID_SCHEMES",
    "RIDER_RE",
    "SID_PATTERN",
    "SID_RE",
    "check_epoch",
    "check_rider_id",
    "check_sid",
    "mask_phone",
    "new_epoch",
    "normalise_phone",
    "rider_id",
]

#: A station id, unanchored: the one spelling of the pattern. ``SID_RE`` and the
#: hub's OpenAPI document are built from it; the JSON Schemas, files that ship as
#: they are, are held to it by tests/test_protocol_ids.py.
SID_PATTERN = "[a-z0-9][a-z0-9-]{0,31}"
# \Z rather than $: "$" also matches before a trailing newline, "abc\n" is no sid.
SID_RE = re.compile(rf"^{SID_PATTERN}\Z")
EPOCH_RE = re.compile(r"^[0-9a-f]{8,32}\Z")
RIDER_RE = re.compile(r"^r:[0-9a-f]{24}\Z")
PHONE_RE = re.compile(r"^1[3-9][0-9]{9}\Z")

# "hub" would make yizhan/v1/hub/status both the hub's topic and a station's
# status topic, so no station may be called that (a clarification of contract §1).
RESERVED_SIDS = frozenset({"hub"})

_PHONE_PREFIXES = ("+86", "0086")


def check_sid(sid: str) -> str:
    """Return ``sid`` when it is a valid, unreserved station id, else raise InvalidIdentifier."""
    if not isinstance(sid, str):
        raise InvalidIdentifier(f"station id must be a string, got {type(sid).__name__}")
    if not SID_RE.match(sid):
        raise InvalidIdentifier(
            f"station id {sid!r} must be 1-32 chars of a-z, 0-9 and '-', not starting with '-'"
        )
    if sid in RESERVED_SIDS:
        raise InvalidIdentifier(f"station id {sid!r} is reserved")
    return sid


def check_epoch(e: str) -> str:
    """Return ``e`` when it is 8 to 32 lowercase hex chars, else raise InvalidIdentifier."""
    if not isinstance(e, str):
        raise InvalidIdentifier(f"epoch must be a string, got {type(e).__name__}")
    if not EPOCH_RE.match(e):
        raise InvalidIdentifier(f"epoch {e!r} must be 8 to 32 lowercase hex chars")
    return e


def new_epoch() -> str:
    """A fresh epoch for a newly initialised data directory: 16 random hex chars."""
    return secrets.token_hex(8)


def check_rider_id(rid: str) -> str:
    """Return ``rid`` when it has the ``r:`` + 24 hex form, else raise InvalidIdentifier."""
    if not isinstance(rid, str) or not RIDER_RE.match(rid):
        raise InvalidIdentifier(f"rider id {rid!r} must be 'r:' followed by 24 lowercase hex")
    return rid


def normalise_phone(raw: str) -> str:
    """The 11 digits of a mainland mobile number, or InvalidPhone saying what is wrong.

    Spaces, dashes and a ``+86``/``0086`` prefix are removed; full-width digits
    (typed with a Chinese input method) count as digits.
    """
    if not isinstance(raw, str):
        raise InvalidPhone(f"phone number must be text, got {type(raw).__name__}")
    s = unicodedata.normalize("NFKC", raw)
    s = "".join(s.split()).replace("-", "")
    for prefix in _PHONE_PREFIXES:
        if s.startswith(prefix):
            s = s[len(prefix) :]
            break
    if not s:
        raise InvalidPhone("phone number is empty")
    if not (s.isascii() and s.isdigit()):
        bad = next(c for c in s if not ("0" <= c <= "9"))
        raise InvalidPhone(f"phone number may contain only digits, found {bad!r}")
    if len(s) < 11:
        raise InvalidPhone(f"phone number too short: {len(s)} digits, need 11")
    if len(s) > 11:
        raise InvalidPhone(f"phone number too long: {len(s)} digits, need 11")
    if not PHONE_RE.match(s):
        raise InvalidPhone(f"not a mobile number: must start with 13 to 19, not {s[:2]}")
    return s


#: How a rider id is derived (docs/protocol.md §1, docs/security.md "Rider ids").
#: ``hmac``: contract §1, HMAC-SHA256(fleet key, phone). ``scrypt``: this project's
#: addition, the same HMAC stretched by scrypt, so that whoever holds the fleet key
#: (a stolen Pi) pays one scrypt per phone number tried. One fleet uses one scheme.
RIDER_ID_SCHEMES = ("hmac", "scrypt")
#: scrypt's cost: 16 MiB and ~0.1 s a number on a 2020s x86 core (more on a Pi),
#: once per borrow on the kiosk; ~20 core-years for the 7·10⁹ mainland numbers.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_SALT = b"yizhan/rider-id/scrypt/v1"
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def rider_id(fleet_key: bytes, phone: str, scheme: str = "hmac") -> str:
    """The rider id of contract §1: ``r:`` + 24 hex of HMAC-SHA256(fleet key, phone),
    or with ``scheme="scrypt"`` of scrypt(that HMAC) — the same form, another value.

    The phone is normalised first, so every spelling of one number gives one id.
    """
    if not isinstance(fleet_key, (bytes, bytearray)) or not fleet_key:
        raise ValueError("fleet key must be non-empty bytes")
    if scheme not in RIDER_ID_SCHEMES:
        raise ValueError(f"rider id scheme must be one of {', '.join(RIDER_ID_SCHEMES)}")
    keyed = hmac.new(bytes(fleet_key), normalise_phone(phone).encode("ascii"), hashlib.sha256)
    if scheme == "hmac":
        return "r:" + keyed.hexdigest()[:24]
    # Keyed first, so the output says nothing without the fleet key; stretched
    # after, so that with the key every candidate number still costs a scrypt.
    stretched = hashlib.scrypt(keyed.digest(), salt=_SCRYPT_SALT, n=SCRYPT_N, r=SCRYPT_R,
                               p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "r:" + stretched.hex()[:24]


def mask_phone(phone: str) -> str:
    """The number as shown on screen and in logs: ``138****1234``."""
    p = normalise_phone(phone)
    return f"{p[:3]}****{p[-4:]}"
