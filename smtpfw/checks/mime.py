"""What rules can read of a message beyond single header fields: every
header line (Postfix header_checks), the body's lines (body_checks) and the
MIME structure (attachment names and types).

Costs are bounded: ``body_lines`` reads at most ``BODY_LIMIT`` bytes of the
body (Postfix's body_checks_size_limit is 50 KB a part) and ``mime_summary``
looks at most at ``MAX_PARTS`` parts.  Archives are not opened.
"""

from __future__ import annotations

import email.parser
import email.policy
import functools
from dataclasses import dataclass

BODY_LIMIT = 64 * 1024
MAX_PARTS = 100
MAX_LINE = 998                      # RFC 5322's line limit: longer lines are cut for matching


def _split(message: bytes) -> tuple[bytes, bytes]:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end], message[end + 4:]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.lru_cache(maxsize=2)       # several rules read them of one message (a bytes object's hash is kept)
def header_lines(message: bytes) -> tuple[str, ...]:
    """Every header field as one logical line, ``Name: value``, unfolded
    (continuation lines joined with their white space), as Postfix gives
    them to header_checks."""
    head, _body = _split(message)
    out: list[str] = []
    for raw in head.split(b"\r\n"):
        if raw[:1] in (b" ", b"\t") and out:
            out[-1] += _text(raw)[:MAX_LINE]
        elif raw:
            out.append(_text(raw)[:MAX_LINE])
    return tuple(out)


@functools.lru_cache(maxsize=2)
def body_lines(message: bytes, limit: int = BODY_LIMIT) -> tuple[str, ...]:
    """The body's lines as sent (MIME part headers and encoded content
    included, as Postfix's body_checks sees them), the first ``limit`` bytes."""
    _head, body = _split(message)
    return tuple(_text(line)[:MAX_LINE] for line in body[:limit].split(b"\r\n"))


def forget_lines() -> None:
    """Drop the cached lines (and the messages they hold) once a message is decided."""
    header_lines.cache_clear()
    body_lines.cache_clear()


@dataclass(frozen=True, slots=True)
class MimeSummary:
    """The attachment file names and the content types of a message's parts."""

    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    error: str = ""

    def to_json(self) -> dict:
        d: dict = {"names": list(self.names), "types": list(self.types)}
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_json(cls, d: dict) -> "MimeSummary":
        return cls(tuple(d.get("names", ())), tuple(d.get("types", ())), d.get("error", ""))


def mime_summary(message: bytes) -> MimeSummary:
    """Content types of every part (lower case, the multipart containers
    included) and the file names parts carry (Content-Disposition filename
    or Content-Type name, RFC 2231 decoded)."""
    try:
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(message)
    except Exception as exc:                 # the email package is lenient; this is the backstop
        return MimeSummary(error=f"cannot parse the MIME structure: {exc}")
    names: list[str] = []
    types: list[str] = []
    for count, part in enumerate(msg.walk()):
        if count >= MAX_PARTS:
            break
        types.append(part.get_content_type().lower())
        try:
            name = part.get_filename()
        except Exception:
            name = None
        if name:
            names.append(str(name)[:255])
    return MimeSummary(tuple(names), tuple(types))


def unavailable(why: str) -> MimeSummary:
    return MimeSummary(error=why)
