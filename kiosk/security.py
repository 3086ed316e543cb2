"""The session secret, CSRF tokens and the log filter that keeps phone numbers out.

The session secret is made once per station and kept in ``data_dir/kiosk.secret``
(mode 0600), so a restart of the kiosk does not void the screen a rider is on.
Every form carries the session's CSRF token (a hidden ``csrf`` field); a POST
without the right one is refused with a friendly 400 page.
"""

from __future__ import annotations

import logging
import re

# Shared with the hub's console (yizhan/sessions.py); re-exported for the kiosk.
from yizhan.sessions import CSRF_FIELD, CsrfRefused, check_csrf, csrf_token, load_secret

__all__ = ["CSRF_FIELD", "CsrfRefused", "PhoneRedactor", "check_csrf", "csrf_token",
           "load_secret"]


class PhoneRedactor(logging.Filter):
    """Belt and braces for the running kiosk: blanks anything shaped like a mainland
    mobile number in a log line. The code never logs one (a test proves it); this
    catches the day a library does."""

    PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if self.PHONE.search(text):
            record.msg, record.args = self.PHONE.sub("1**********", text), None
        return True
