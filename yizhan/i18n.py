"""gettext catalogues compiled from their ``.po`` files at start, for the kiosk and the hub.

Each program keeps its catalogue beside its code (``kiosk/translations/``,
``hub/translations/``: ``<lang>/LC_MESSAGES/messages.po`` and the ``messages.pot``
they are updated from). The ``.po`` files are compiled in memory when they are
loaded (Babel's ``read_po`` + ``write_mo``), so there is no ``.mo`` to forget to
rebuild; an entry marked fuzzy is a guess and never shown. Messages are written
in English in the code and the templates, so English needs no catalogue:

>>> catalogues = load_catalogues(Path("kiosk/translations"), ("zh", "en"))
>>> catalogues["zh"].gettext("less than a minute"), catalogues["en"].gettext("less than a minute")
('不到 1 分钟', 'less than a minute')

docs/kiosk-design.md and docs/alerting-internals.md ("Texts") say how to update them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

__all__ = ["gettext_noop", "load_catalogue", "load_catalogues"]


def load_catalogue(po: Path, lang: str, domain: str = "messages") -> NullTranslations:
    """The compiled catalogue of one ``.po`` file; none (the msgids) if there is no file."""
    if not po.is_file():
        return NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=lang, domain=domain)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)  # a fuzzy guess is never shown
    buf.seek(0)
    return Translations(buf, domain=domain)


def load_catalogues(directory: Path, languages: Iterable[str],
                    domain: str = "messages") -> dict[str, NullTranslations]:
    """Every language's compiled catalogue from ``directory/<lang>/LC_MESSAGES/<domain>.po``."""
    return {lang: load_catalogue(directory / lang / "LC_MESSAGES" / f"{domain}.po", lang, domain)
            for lang in languages}


def gettext_noop(message: str) -> str:
    """Marks ``message`` for extraction (``pybabel extract -k N_``) where it is only
    named, to be translated later (a table of codes to words)."""
    return message
