"""``console:`` of the hub's file: the web console (hub/console, docs/console.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yizhan.config import ConfigError, Section, known_keys

__all__ = ["ConsoleConfig", "parse_console"]

_KEYS = ("enabled", "secret_key_file", "secure_cookies", "idle_minutes")


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = True
    # Signs the session cookies; made (0600) the first time. None: a new secret at
    # every start (everyone signs in again after a restart).
    secret_key_file: Path | None = None
    # Secure cookies: only sent over HTTPS (set it behind a TLS proxy).
    secure_cookies: bool = False
    # A session unused this long is signed out.
    idle_minutes: int = 30


def parse_console(root: Section, base: Path | None) -> ConsoleConfig:
    sec = root.section("console")
    if sec is None:
        return ConsoleConfig()
    known_keys(sec, _KEYS)
    secret = None
    if sec.has("secret_key_file"):
        secret = Path(sec.str("secret_key_file"))
        if base is not None and not secret.is_absolute():
            secret = base / secret
        if secret.is_dir():
            raise ConfigError(sec.key("secret_key_file"), f"{secret} is a directory")
    return ConsoleConfig(enabled=sec.bool("enabled", True), secret_key_file=secret,
                         secure_cookies=sec.bool("secure_cookies", False),
                         idle_minutes=sec.int("idle_minutes", 30, lo=1, hi=7 * 24 * 60))
