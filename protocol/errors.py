"""One exception tree for everything that comes off the wire.

Every leaf also inherits :class:`ValueError`, so callers that only know the
standard type still catch it::

    try:
        msg = decode(Kind.STATE, payload, topic_sid="yh-chumen-01")
    except InvalidMessage as err:
        log.warning("dropped state: %s", err)   # "lockers.slots[1].charge: not an int"
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""


class InvalidMessage(ProtocolError, ValueError):
    """A payload that does not follow the contract.

    ``field`` is a dotted path into the payload (``"lockers.slots[1].charge"``),
    or ``""`` when the payload as a whole is wrong (not JSON, too big, not an object).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else f"(payload): {self.reason}"


class TopicError(ProtocolError, ValueError):
    """A topic string outside the ``yizhan/v1/...`` grammar of contract §2."""


class FrameError(ProtocolError, ValueError):
    """A YZ-LB1 frame or payload that cannot be built or understood (contract §10)."""


class InvalidPhone(ProtocolError, ValueError):
    """A phone number that is not an 11-digit mainland mobile number."""


class InvalidIdentifier(ProtocolError, ValueError):
    """A station id, epoch or rider id that breaks the forms of contract §1."""


class BoardError(FrameError):
    """The board answered a request with an error frame (cmd 0xFF).

    ``request_cmd`` is the command it refused, ``code`` an
    :class:`~protocol.frames.ErrorCode` (or the raw int when unknown).
    """

    def __init__(self, request_cmd: int, code: int | None) -> None:
        name = getattr(code, "name", code)
        super().__init__(f"board refused cmd 0x{request_cmd:02X}: {name}")
        self.request_cmd = request_cmd
        self.code = code
