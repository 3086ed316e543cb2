"""Checks shared by the kiosk's and the hub's gettext catalogues (tests only)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from babel.messages.catalog import Message
from babel.messages.pofile import read_po


def read_catalogue(translations: Path, lang: str):
    """``translations/<lang>/LC_MESSAGES/messages.po`` as a babel Catalog."""
    with (translations / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=lang)


def assert_translated(catalogue: Iterable[Message], placeholders: Callable[[str], list[str]],
                      also: Callable[[Message, str], None] | None = None) -> None:
    """Every message translated, none fuzzy, each translation keeping the
    placeholders of its msgid (the plural's for plural forms); ``also(msg, text)``
    adds a catalogue's own check on each translated text."""
    for msg in catalogue:
        if not msg.id:
            continue
        assert "fuzzy" not in msg.flags, msg.id
        ids = msg.id if isinstance(msg.id, tuple) else (msg.id,)
        strings = msg.string if isinstance(msg.string, tuple) else (msg.string,)
        assert all(strings), f"untranslated: {msg.id}"
        for text in strings:
            assert placeholders(text) == placeholders(ids[-1]), (msg.id, text)
            if also is not None:
                also(msg, text)
