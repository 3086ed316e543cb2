"""Whether a request's ``Host`` names this machine: the kiosk and the agent's
local API answer only pages that believe they are talking to loopback.

Both listen on 127.0.0.1 alone, but a page opened on the Pi's browser can still
reach them by DNS rebinding: ``evil.example`` first resolves to the attacker's
server, then to 127.0.0.1, and the browser, same-origin all along, sends
``Host: evil.example:8700``. Checking the name the browser used defeats that.

    >>> loopback_host("127.0.0.1:8700", 8700), loopback_host("localhost", 8700)
    (True, True)
    >>> loopback_host("evil.example:8700", 8700), loopback_host("127.0.0.1:9", 8700)
    (False, False)
"""

from __future__ import annotations

__all__ = ["LOOPBACK_NAMES", "loopback_host"]

#: The names a browser or the kiosk uses for this machine (IPv6 in brackets).
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def loopback_host(host: str | None, port: int | None) -> bool:
    """True when ``host`` (a ``Host`` header) is a loopback name, with no port or
    with ``port`` (any port when ``port`` is None: a server on an ephemeral one)."""
    if not host:
        return False
    host = host.strip().lower()
    name, sep, given = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name, given = host, ""
    if name not in LOOPBACK_NAMES:
        return False
    if not given:
        return True
    if not given.isascii() or not given.isdigit() or len(given) > 5:
        return False
    return port is None or int(given) == port
