"""Reading what an HTTP client sent: numbers in a query string and JSON bodies.

Shared by the hub's API and the agent's local API so that both refuse the same
things the same way, before any of it reaches a view: ``str.isdigit()`` and
``int()`` take Unicode digits (``"²"``, ``"٣"``) and ``int()`` raises on 4 300
digits, and ``json.loads`` raises ``RecursionError`` on ~1 000 nested brackets.

    >>> decimal("25")
    25
    >>> decimal("٣") is None
    True
    >>> json_value(b'{"cmd": "rebirth"}')
    {'cmd': 'rebirth'}
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_DIGITS", "BadJson", "decimal", "json_value"]

#: Digits a query-string number may have: ms since the epoch need 13; a 64-bit
#: column takes 18, so 15 can never overflow anything downstream.
MAX_DIGITS = 15
_DECIMAL = re.compile(f"[0-9]{{1,{MAX_DIGITS}}}")
#: Nesting a JSON body may have. Commands and silences are two or three deep;
#: beyond this a body is an attack, and ``json``/``jsonify`` would recurse on it.
MAX_DEPTH = 32


class BadJson(ValueError):
    """A body that is not JSON, or nested deeper than MAX_DEPTH. The message is
    generic on purpose: the decoder's own text describes the parser, not the fix."""


def decimal(raw: str | None) -> int | None:
    """``raw`` as an int when it is 1 to MAX_DIGITS ASCII digits, else None."""
    if raw is None or not _DECIMAL.fullmatch(raw):
        return None
    return int(raw)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def json_value(raw: bytes | str) -> Any:
    """The JSON value of ``raw`` (UTF-8); :class:`BadJson` when it is not JSON,
    holds NaN or Infinity, or nests deeper than MAX_DEPTH."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadJson("the body is not valid JSON (UTF-8)") from err
    if _depth_over(value, MAX_DEPTH):
        raise BadJson(f"the body nests deeper than {MAX_DEPTH} levels")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    # Iterative, so the check itself cannot hit the recursion limit.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
