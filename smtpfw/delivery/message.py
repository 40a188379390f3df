"""The hand-over between the SMTP front end and a delivery back end.

The front end accepts a message from a client, then calls
``Delivery.deliver(Message)`` *before* answering the client's final DATA
reply; the ``DeliveryResult`` it gets back is what the client sees.  A back
end therefore answers 250 only when the message is really taken (fsync'ed to a
Maildir, or acknowledged by the downstream MTA), and a 4xx whenever it is not
sure, so the client retries rather than losing mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Message:
    """One accepted message.

    ``data`` is the message as received after de-transparency (dot-unstuffed),
    with CRLF line endings, ending with CRLF.  ``recipients`` holds only the
    recipients the front end answered 250.  ``mail_options`` are the client's
    MAIL FROM parameters worth passing on (``BODY=8BITMIME``, ``SMTPUTF8``);
    a back end passes them only where it can honour them; ``SIZE`` is always
    recomputed.  ``dot_lines``: whether a line of ``data`` starts with a
    dot, when the front end knows it from reading the data (a back end
    that stuffs dots then need not look: a pass over the message); None:
    not known.
    """

    sender: str                       # "" for the null sender <>
    recipients: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    dot_lines: bool | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What the front end answers the client at the end of DATA."""

    code: int        # 250 = taken; 4xx; 5xx
    enhanced: str    # RFC 3463 enhanced status code, e.g. "2.0.0", "4.4.1"
    text: str        # human text, no CR/LF

    @property
    def ok(self) -> bool:
        return self.code == 250


@runtime_checkable
class Delivery(Protocol):
    """A delivery back end.  ``deliver`` never raises (except
    ``asyncio.CancelledError``): every failure is a ``DeliveryResult``."""

    async def deliver(self, msg: Message) -> DeliveryResult: ...

    async def close(self) -> None: ...
