"""PIN hashes of the Directory (contract §8): what the hub makes and the station checks.

Django's ``pbkdf2_sha256`` format, so a hub (or any Django install) can make them::

    pbkdf2_sha256$<iterations>$<salt>$<base64 of the 32-byte PBKDF2-HMAC-SHA256>

where the salt is the text between the ``$`` signs, used as its UTF-8 bytes.
Here rather than in ``firmware`` or ``hub`` because both need the one definition:
the hub hashes a PIN set at the desk, the station verifies it at the kiosk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string

__all__ = ["DEFAULT_ITERATIONS", "MAX_ITERATIONS", "hash_pin", "verify_pin"]

DEFAULT_ITERATIONS = 200_000
# A hash asking for more work than this is refused rather than run: a bad
# directory must not be able to freeze the kiosk for minutes per PIN.
MAX_ITERATIONS = 2_000_000

_SALT_ALPHABET = string.ascii_letters + string.digits
_ALGORITHM = "pbkdf2_sha256"


def hash_pin(pin: str, salt: str | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The directory form of ``pin``: what the hub puts in ``riders[].pin``.

    >>> h = hash_pin("4821", salt="yizhan", iterations=1000)
    >>> h.split("$")[:3]
    ['pbkdf2_sha256', '1000', 'yizhan']
    >>> verify_pin("4821", h), verify_pin("4822", h)
    (True, False)
    """
    if salt is None:
        salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(22))
    if not salt or "$" in salt:
        raise ValueError("salt must be non-empty text without '$'")
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{MAX_ITERATIONS}")
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt.encode("utf-8"), iterations)
    return f"{_ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def verify_pin(pin: str, encoded: str) -> bool:
    """True when ``pin`` matches ``encoded``; a malformed hash matches nothing.

    The digests are compared in constant time.
    """
    try:
        algorithm, iterations_text, salt, expected_b64 = encoded.split("$")
        iterations = int(iterations_text)
        expected = base64.b64decode(expected_b64, validate=True)
    except (AttributeError, ValueError):
        return False
    if algorithm != _ALGORITHM or not salt or not 1 <= iterations <= MAX_ITERATIONS:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt.encode("utf-8"), iterations)
    return hmac.compare_digest(digest, expected)
