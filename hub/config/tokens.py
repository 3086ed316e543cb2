"""``api_tokens:``: the API's bearer tokens, each with a name and scopes (contract §11, §14).

>>> tokens = parse_api_tokens(Section({"api_tokens": [
...     {"name": "grafana", "token": "s3cret-s3cret-s3cret", "scopes": ["read"]}]}), None)
>>> tokens[0].name, tokens[0].allows("command")
('grafana', False)

A token is only ever logged or shown by its name: the secret stays out of
``repr`` and no name is ever derived from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yizhan.config import ConfigError, Section, known_keys

log = logging.getLogger(__name__)

#: What a token may do. ``read``: every GET; ``ack``: acknowledge and resolve alerts;
#: ``silence``: silences and maintenance windows; ``command``: station commands;
#: ``directory``: staff, riders, the denied list and the policy; ``admin``: everything.
SCOPES = ("read", "ack", "silence", "command", "directory", "admin")
#: What an entry without ``scopes`` gets: a dashboard's token must not open lockers.
DEFAULT_SCOPES = ("read",)
MIN_LENGTH = 16
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ENTRY_KEYS = ("name", "token", "token_file", "scopes")


@dataclass(frozen=True)
class ApiToken:
    """One bearer token of the API: its name (what records and logs show), its
    secret and its scopes. ``legacy``: given as a bare string, so it has every scope."""

    name: str
    secret: str = field(repr=False)
    scopes: frozenset[str] = frozenset(DEFAULT_SCOPES)
    legacy: bool = False

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def actor(self) -> str:
        """Who did something, in an alert's, a silence's or a command's ``by``."""
        return f"token:{self.name}"


def legacy_token(secret: str, name: str) -> ApiToken:
    """A bare-string token (the first form): every scope, named by where it is configured."""
    return ApiToken(name=name, secret=secret, scopes=frozenset(SCOPES), legacy=True)


def parse_api_tokens(root: Section, base: Path | None) -> tuple[ApiToken, ...]:
    """``api_tokens:`` entries ``{name, token | token_file, scopes}`` or bare strings
    (deprecated, every scope), and the bare tokens of ``api_tokens_file:`` (one a
    line, deprecated too). Names and secrets unique; token files read once, here."""
    tokens: list[ApiToken] = []
    for i, entry in enumerate(root.list("api_tokens")):
        key = f"api_tokens[{i}]"
        if isinstance(entry, str):
            tokens.append(legacy_token(_checked_secret(entry, key), key))
        elif isinstance(entry, dict):
            tokens.append(_entry(Section(entry, key), base))
        else:
            raise ConfigError(key, "must be {name: ..., token: ... (or token_file: ...), "
                                   "scopes: [...]}")
    if root.has("api_tokens_file"):
        text = root.secret("api_tokens", base) or ""
        for i, secret in enumerate(text.split()):
            key = f"api_tokens_file[{i}]"
            tokens.append(legacy_token(_checked_secret(secret, key), key))
    _check_unique(tokens)
    for token in tokens:
        if token.legacy:
            log.warning("%s is a bare token: it has every scope (admin included). Bare "
                        "tokens are deprecated: give it a name and scopes, e.g. "
                        "{name: grafana, token_file: ..., scopes: [read]}", token.name)
    return tuple(tokens)


def _entry(sec: Section, base: Path | None) -> ApiToken:
    known_keys(sec, _ENTRY_KEYS)
    name = sec.str("name", required=True, pattern=NAME_PATTERN)
    if sec.has("token") == sec.has("token_file"):
        raise ConfigError(sec.key("token"), "give token or token_file (one of them)")
    # Inline, the value is taken raw: Section.str would echo a wrong one in its message.
    secret = sec.secret("token", base) if sec.has("token_file") else sec.raw("token")
    secret = _checked_secret(secret, sec.key("token_file" if sec.has("token_file") else "token"))
    return ApiToken(name=name, secret=secret, scopes=_scopes(sec))


def _scopes(sec: Section) -> frozenset[str]:
    if not sec.has("scopes"):
        return frozenset(DEFAULT_SCOPES)
    scopes = sec.raw("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(sec.key("scopes"), f"must be a list of scopes: {', '.join(SCOPES)}")
    for j, scope in enumerate(scopes):
        if scope not in SCOPES:
            raise ConfigError(f"{sec.key('scopes')}[{j}]",
                              f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    return frozenset(scopes)


def _checked_secret(secret: Any, key: str) -> str:
    # Never the value itself in the message: it is a secret, and logs are not.
    if not isinstance(secret, str) or len(secret) < MIN_LENGTH or any(c.isspace() for c in secret):
        raise ConfigError(key, f"must be a token of at least {MIN_LENGTH} characters, "
                               "without spaces")
    return secret


def _check_unique(tokens: list[ApiToken]) -> None:
    names: set[str] = set()
    secrets: dict[str, str] = {}
    for token in tokens:
        if token.name in names:
            raise ConfigError("api_tokens", f"the name {token.name!r} is given twice")
        names.add(token.name)
        if token.secret in secrets:
            raise ConfigError("api_tokens", f"{token.name} has the same token as "
                                            f"{secrets[token.secret]}: give each its own")
        secrets[token.secret] = token.name
