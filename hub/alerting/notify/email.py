"""E-mail over SMTP: plain text plus a small HTML part, subject in Chinese.

The whole message (headers included) is built once and stored; every retry
sends the same bytes, with ``Message-ID: <delivery id@domain>`` (the domain
from ``message_id_domain``, else the ``from`` address's) and
``X-Yizhan-Delivery``, so a mail client shows a repeat as the same message.

``tls`` says how the connection is protected: ``implicit`` is TLS from the
first byte (port 465, what many providers and cloud hosts require),
``starttls`` (the default, port 587) upgrades a plain connection before
anything else is said, ``none`` only towards a relay on a trusted network — and
never with a login. Either way the server's certificate is verified, against
``ca_file`` when the relay has a private CA.

A refused login, sender or recipient (SMTP 5xx) is permanent: the outbox gives
up and says why. 4xx answers and connection trouble are retried.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from hub.alerting.notify.base import DeliveryFailed, Notifier
from hub.alerting.notify.text import Message
from hub.config.notifiers import sender_domain

log = logging.getLogger(__name__)


class EmailNotifier(Notifier):
    type = "email"

    def render(self, kind: str, alert: Mapping[str, Any], station: Mapping[str, Any],
               ack_url: str | None, *, delivery_id: str, now_ms: int) -> str:
        return self.shape(self.compose(kind, alert, station, ack_url, now_ms),
                          delivery_id=delivery_id, now_ms=now_ms)

    def shape(self, msg: Message, *, delivery_id: str, now_ms: int) -> str:
        mail = EmailMessage(policy=SMTP)
        mail["Subject"] = msg.title
        mail["From"] = self.spec.sender
        mail["To"] = ", ".join(self.spec.to)
        mail["Date"] = format_datetime(datetime.fromtimestamp(now_ms / 1000, UTC))
        mail["Message-ID"] = f"<{delivery_id}@{self.message_id_domain}>"
        mail["X-Yizhan-Delivery"] = delivery_id
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        mail.set_content(msg.plain())
        mail.add_alternative(msg.html(), subtype="html")
        mail.set_boundary(f"=_yizhan_{delivery_id}")  # deterministic, like the rest
        return mail.as_string()

    @property
    def message_id_domain(self) -> str:
        """The right side of Message-ID: configured, else the sender's domain."""
        return (self.spec.message_id_domain or sender_domain(self.spec.sender)
                or "yizhan.invalid")  # RFC 2606: a name that is nobody's

    def connect(self) -> smtplib.SMTP:
        """An SMTP session, encrypted as ``tls`` says, greeted (EHLO), not logged in."""
        spec = self.spec
        if spec.tls == "implicit":
            context = ssl.create_default_context(cafile=spec.ca_file)
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(spec.host, spec.port, timeout=self.timeout,
                                                  context=context)
        else:
            smtp = smtplib.SMTP(spec.host, spec.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if spec.tls == "starttls":
                smtp.starttls(context=ssl.create_default_context(cafile=spec.ca_file))
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, body: str, delivery_id: str, now: float) -> None:
        spec = self.spec
        if spec.username and spec.tls not in ("implicit", "starttls"):
            # The configuration refuses it; a spec made in code must not leak it either.
            raise DeliveryFailed(f"{self.where}: a login needs tls: implicit or starttls; "
                                 "not retried", permanent=True)
        try:
            with self.connect() as smtp:
                if spec.username:
                    smtp.login(spec.username, spec.password or "")
                refused = smtp.sendmail(spec.sender, list(spec.to), body.encode())
        except smtplib.SMTPNotSupportedError as err:
            raise DeliveryFailed(f"{self.where}: {err} (STARTTLS or AUTH not offered); "
                                 "not retried", permanent=True) from None
        except smtplib.SMTPAuthenticationError as err:
            raise DeliveryFailed(f"{self.where}: login refused ({err.smtp_code}); check "
                                 "username and password; not retried", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as err:
            codes = [code for code, _msg in err.recipients.values()]
            permanent = all(code >= 500 for code in codes)
            raise DeliveryFailed(f"{self.where}: every recipient refused ({codes})"
                                 + ("; not retried" if permanent else ""),
                                 permanent=permanent) from None
        except smtplib.SMTPResponseException as err:  # sender refused, data refused, ...
            permanent = err.smtp_code >= 500
            text = err.smtp_error.decode(errors="replace") if isinstance(
                err.smtp_error, bytes) else str(err.smtp_error)
            raise DeliveryFailed(f"{self.where}: {err.smtp_code} {text}"
                                 + ("; not retried" if permanent else ""),
                                 permanent=permanent) from None
        except ssl.SSLCertVerificationError as err:
            raise DeliveryFailed(f"{self.where}: certificate not trusted ({err.verify_message});"
                                 " set ca_file for a private CA") from None
        except ssl.SSLError as err:
            hint = (" (does this port speak TLS from the first byte? 465 does; else "
                    "tls: starttls)") if spec.tls == "implicit" else ""
            raise DeliveryFailed(f"{self.where}: TLS failed ({err.reason or err}){hint}") from None
        except TimeoutError:
            raise DeliveryFailed(f"{self.where}: no answer in {self.timeout:g} s") from None
        except (smtplib.SMTPException, OSError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise DeliveryFailed(f"{self.where}: {reason or type(err).__name__}") from None
        if refused:
            # Delivered to the others: a retry would send them a second copy.
            log.warning("notifier %s: delivery %s refused for %s", self.name, delivery_id,
                        ", ".join(sorted(refused)))
