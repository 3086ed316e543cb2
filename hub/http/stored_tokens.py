"""API tokens made from the console (issue 16), beside those of the configuration.

An admin makes one with a name and scopes; its secret (``secrets.token_urlsafe(32)``,
256 random bits) is shown once, in the page that made it, and the hub keeps only
its SHA-256 (``api_tokens``). A fast hash is enough for a random secret of that
size: nobody can guess back from the digest, and a slow one would cost every API
request. A bearer token the configuration does not know is looked up by its
digest; a revoked token answers as unknown. Revoked rows stay, so a name is never
reused (docs/console.md, docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any

import sqlalchemy as sa

from hub.config.tokens import NAME_PATTERN, SCOPES, ApiToken
from hub.storage.schema import api_tokens

_NAME = re.compile(NAME_PATTERN + r"\Z")
#: The longest bearer token looked up: a made one is 43 characters.
MAX_PRESENTED = 256


class TokenRefused(ValueError):
    """A token that cannot be made or revoked; the message says why (in English),
    ``code`` which words the console shows (hub/console/refusals.py)."""


    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def find(store: Any, presented: str) -> ApiToken | None:
    """The made, unrevoked token whose secret is ``presented``, or None."""
    if not presented or len(presented) > MAX_PRESENTED:
        return None
    t = api_tokens
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t.c.name, t.c.scopes).where(
            t.c.digest == digest(presented), t.c.revoked_ms.is_(None))).first()
    if row is None:
        return None
    # The secret is not kept: the token carries an empty one, never compared.
    return ApiToken(name=row.name, secret="", scopes=frozenset(json.loads(row.scopes)))


def made(store: Any) -> list[dict[str, Any]]:
    t = api_tokens
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.name, t.c.scopes, t.c.created_ms, t.c.created_by,
                                      t.c.revoked_ms).order_by(t.c.name)).all()
    return [{"name": r.name, "scopes": sorted(json.loads(r.scopes)), "created": r.created_ms,
             "created_by": r.created_by, "revoked": r.revoked_ms} for r in rows]


def make(store: Any, configured: Any, name: str, scopes: Any, now_ms: int,
         by: str) -> str:
    """Make a token; returns its secret (to be shown once, never stored)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise TokenRefused("a token's name is 1 to 64 of A-Z a-z 0-9 . _ -, starting "
                           "with a letter or digit", "bad_name")
    chosen = sorted(set(scopes)) if isinstance(scopes, (list, tuple, set)) else []
    if not chosen or any(s not in SCOPES for s in chosen):
        raise TokenRefused(f"choose at least one scope of {', '.join(SCOPES)}", "bad_scopes")
    if any(t.name == name for t in configured):
        raise TokenRefused(f"the configuration has a token named {name!r}", "configured")
    secret = secrets.token_urlsafe(32)
    try:
        with store.engine.begin() as conn:
            conn.execute(api_tokens.insert().values(
                name=name, digest=digest(secret), scopes=json.dumps(chosen),
                created_ms=now_ms, created_by=by[:64], revoked_ms=None))
    except sa.exc.IntegrityError as err:
        raise TokenRefused(f"there is already a token named {name!r} (a revoked "
                           "token's name is not given again)", "exists") from err
    return secret


def revoke(store: Any, name: str, now_ms: int) -> None:
    t = api_tokens
    with store.engine.begin() as conn:
        done = conn.execute(t.update().where(t.c.name == name, t.c.revoked_ms.is_(None))
                            .values(revoked_ms=now_ms)).rowcount
    if not done:
        raise TokenRefused(f"no token {name[:64]!r} to revoke", "not_found")
