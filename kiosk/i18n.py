"""The screen's languages: 中文 (the default) and English, through gettext.

Messages are written in English in the templates and the code (``_("Borrow")``,
``gettext("Slot %(slot)s opened", slot=3)``) and translated by the gettext
catalogue ``kiosk/translations/<lang>/LC_MESSAGES/messages.po``. The ``.po`` files
are compiled when the app is built (``yizhan.i18n``, shared with the hub): there
is no ``.mo`` to forget to rebuild. English is the msgid language and needs no
catalogue. docs/kiosk-design.md shows how to add one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from babel.support import NullTranslations
from flask import Flask, g

from yizhan.i18n import load_catalogues

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "duration_text", "gettext", "hhmm",
           "init_app", "load_translations", "ngettext"]

#: Language code -> its name written in itself (what the switch shows).
LANGUAGES = {"zh": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh"
TRANSLATIONS = Path(__file__).resolve().parent / "translations"


def load_translations(directory: Path = TRANSLATIONS) -> dict[str, NullTranslations]:
    """Every language's compiled catalogue; English (the msgids) needs none."""
    return load_catalogues(directory, LANGUAGES)


def _current() -> NullTranslations:
    return getattr(g, "translations", None) or _NULL


_NULL = NullTranslations()


def _raw_gettext(message: str) -> str:
    return _current().gettext(message)


def _raw_ngettext(singular: str, plural: str, n: int) -> str:
    return _current().ngettext(singular, plural, n)


def gettext(message: str, **variables: Any) -> str:
    """``message`` in the screen's language, ``%(name)s`` filled from ``variables``."""
    text = _raw_gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    variables.setdefault("num", n)
    return _raw_ngettext(singular, plural, n) % variables


def hhmm(ms: int | float | None) -> str:
    """Station-clock milliseconds as the local time of day, ``02:35``."""
    if ms is None:
        return ""
    return time.strftime("%H:%M", time.localtime(ms / 1000))


def duration_text(seconds: int | float | None) -> str:
    """A loan's length for people: ``2 h 05 min`` / ``2 小时 5 分钟``."""
    if seconds is None:
        return ""
    minutes = int(seconds) // 60
    if minutes < 1:
        return gettext("less than a minute")
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return ngettext("%(num)d minute", "%(num)d minutes", minutes)
    if hours < 48:
        return gettext("%(h)d h %(m)d min", h=hours, m=minutes)
    return ngettext("%(num)d day", "%(num)d days", hours // 24)


def init_app(app: Flask, translations: dict[str, NullTranslations]) -> None:
    """Jinja's i18n extension with ``_``/``gettext``/``ngettext`` of the request's
    language (``g.translations``, set by the app before each request)."""
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(_raw_gettext, _raw_ngettext, newstyle=True)
    app.jinja_env.filters["hhmm"] = hhmm
    app.jinja_env.filters["duration"] = duration_text
    app.extensions["yizhan_kiosk_translations"] = translations
