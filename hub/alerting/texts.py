"""The hub's words: one gettext catalogue, Chinese by default, English by configuration.

Every text a person reads from the hub — an alert's summary, a notification, the
ack page — is written in English in the code (``texts.gettext("Station offline")``)
or a Jinja template (``{{ _("Acknowledge this alert?") }}``) and translated by
``hub/translations/<lang>/LC_MESSAGES/messages.po``, compiled at start as the
kiosk's is (``yizhan.i18n``). English is the msgid language and needs no
catalogue. docs/alerting-internals.md ("Texts") says how to add or change a text.

>>> zh = texts("zh")
>>> zh.gettext("Slot %(slot)s fault: %(fault)s", slot=2, fault="comm")
'2 号仓故障：comm'
>>> zh.duration(3600 + 7 * 60), texts("en").duration(3600 + 7 * 60)
('1 小时 7 分钟', '1 h 7 min')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import jinja2
from babel.support import NullTranslations

from hub.config import LANGUAGES
from yizhan.i18n import gettext_noop, load_catalogues

__all__ = ["CST", "DEFAULT_LANGUAGE", "LANGUAGES", "N_", "Templates", "Texts", "clock_text",
           "texts"]

DEFAULT_LANGUAGE = "zh"
TRANSLATIONS = Path(__file__).resolve().parents[1] / "translations"
#: Marks a text that is only named here and translated where it is shown.
N_ = gettext_noop
#: Times are shown in China Standard Time (UTC+8, no daylight saving) unless the
#: hub's ``timezone:`` says otherwise.
CST = timezone(timedelta(hours=8), "CST")


@functools.cache
def _catalogues() -> dict[str, NullTranslations]:
    # Read once per process: the files ship with the code and never change under it.
    return load_catalogues(TRANSLATIONS, LANGUAGES)


class Texts:
    """The hub's words in one language (``texts(lang)``)."""

    def __init__(self, lang: str, translations: NullTranslations) -> None:
        self.lang = lang
        self.translations = translations

    def gettext(self, message: str, **variables: Any) -> str:
        """``message`` in this language, ``%(name)s`` filled from ``variables``."""
        text = self.translations.gettext(message)
        return text % variables if variables else text

    def pgettext(self, context: str, message: str, **variables: Any) -> str:
        """``message`` as meant in ``context``, where one English text has two
        translations (``Acknowledged``: a field's label 确认, a page's title 已确认)."""
        text = self.translations.pgettext(context, message)
        return text % variables if variables else text

    def ngettext(self, singular: str, plural: str, n: int, **variables: Any) -> str:
        """The form for ``n`` (also ``%(num)d``) of a message that has a plural."""
        variables.setdefault("num", n)
        return self.translations.ngettext(singular, plural, n) % variables

    def duration(self, seconds: float) -> str:
        """``35 分钟``, ``1 小时 7 分钟``, ``2 天 3 小时``; ``35 min``, ``1 h 7 min``."""
        minutes = int(max(0, seconds) // 60)
        if minutes < 1:
            return self.gettext("under 1 min")
        days, rest = divmod(minutes, 24 * 60)
        hours, mins = divmod(rest, 60)
        if days:
            parts = [self.gettext("%(num)d d", num=days),
                     self.gettext("%(num)d h", num=hours) if hours else ""]
        elif hours:
            parts = [self.gettext("%(num)d h", num=hours),
                     self.gettext("%(num)d min", num=mins) if mins else ""]
        else:
            parts = [self.gettext("%(num)d min", num=mins)]
        return " ".join(p for p in parts if p)


@functools.cache
def texts(language: str | None = None) -> Texts:
    """The hub's words in ``language`` (``zh``, ``en``); Chinese for any other."""
    lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
    return Texts(lang, _catalogues()[lang])


def clock_text(ms: int, tz: tzinfo = CST) -> str:
    """``11-27 02:13``, in China Standard Time unless told otherwise."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).strftime("%m-%d %H:%M")


class Templates:
    """The Jinja templates of one folder, rendered in any of the hub's languages
    with the catalogue's ``_``/``gettext``/``ngettext`` (new style: ``_("%(n)s",
    n=1)``). ``.html`` templates escape what they are given; text and markdown
    templates do not (their callers make user text inert with a filter)."""

    def __init__(self, folder: Path, filters: Mapping[str, Callable[..., Any]] | None = None
                 ) -> None:
        self.folder = folder
        self.filters = dict(filters or {})
        self._envs: dict[str, jinja2.Environment] = {}

    def environment(self, language: str | None) -> jinja2.Environment:
        words = texts(language)
        env = self._envs.get(words.lang)
        if env is None:
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(self.folder),
                autoescape=jinja2.select_autoescape(("html",), default=False),
                undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not ""
                trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                extensions=["jinja2.ext.i18n"])
            env.install_gettext_translations(words.translations, newstyle=True)
            env.filters.update(self.filters)
            # Built twice at worst by two threads at once: the same environment.
            env = self._envs.setdefault(words.lang, env)
        return env

    def render(self, language: str | None, name: str, **context: Any) -> str:
        """Template ``name`` in ``language`` (the hub's default for an unknown one)."""
        return self.environment(language).get_template(name).render(**context)
