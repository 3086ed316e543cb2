"""Browser sessions shared by the kiosk and the hub's console: the secret that signs
their cookies, and the CSRF token every form carries.

The secret is made once and kept in a file (mode 0600), so a restart does not void
the sessions of the people using the screen. Every form carries the session's CSRF
token (a hidden ``csrf`` field); a POST without the right one raises
:class:`CsrfRefused`, which each app answers with its own 400 page.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from flask import request, session

log = logging.getLogger(__name__)

__all__ = ["CSRF_FIELD", "CsrfRefused", "check_csrf", "csrf_token", "load_secret"]

CSRF_FIELD = "csrf"
_SESSION_KEY = "csrf"
_MIN_SECRET = 32  # hex chars
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CsrfRefused(Exception):
    """A form came without this session's CSRF token."""


def load_secret(path: Path) -> str:
    """The session secret kept at ``path`` (0600), created there the first time.

    Creation is atomic and exclusive (a temp file hard-linked into place), so two
    processes starting at once agree on one secret and a crash leaves no half file.
    A file readable by others is tightened to 0600 (and said so).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            return _read_secret(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): set to 0600", path, mode)
        os.chmod(path, 0o600)
    value = path.read_text(encoding="ascii").strip()
    if len(value) < _MIN_SECRET:
        # Empty or truncated (written by hand?): replace it rather than sign with it.
        log.warning("%s holds no usable secret: making a new one", path)
        path.unlink()
        raise FileNotFoundError(path)
    return value


def csrf_token() -> str:
    """This session's CSRF token (made on first use); templates put it in every form."""
    token = session.get(_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[_SESSION_KEY] = token
    return token


def check_csrf() -> None:
    """Before every request: a state-changing one must carry the session's token."""
    if request.method not in _UNSAFE:
        return
    expected = session.get(_SESSION_KEY)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(
            expected.encode(), given.encode()):
        raise CsrfRefused(request.path)
