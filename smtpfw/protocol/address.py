"""Envelope addresses as SMTP writes them (RFC 5321 4.1.2, with RFC 6531's
UTF-8), not as mail headers do (RFC 5322 allows comments, folding and
phrases that have no place in MAIL FROM / RCPT TO).

``parse_path("<a@b.example> SIZE=10")`` gives ``("a@b.example", "SIZE=10")``;
anything that is not a path gives None.  Accepted besides the strict form:
a bare address without the angle brackets (``MAIL FROM:a@b.example``, which
real clients send and Postfix accepts unless strict_rfc821_envelopes), and
the obsolete source route (``<@relay.example:a@b.example>``), which is
dropped (RFC 5321 4.1.1.3: "SHOULD ignore"), and ``<Postmaster>`` without a
domain, which every server must take (RFC 5321 4.1.1.3).
"""

from __future__ import annotations

import re

# atext (RFC 5322 3.2.3) plus UTF-8 (RFC 6531 3.3)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010FFFF]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010FFFF]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010FFFF](?:[A-Za-z0-9\-\u0080-\U0010FFFF]*[A-Za-z0-9\u0080-\U0010FFFF])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"            # no trailing dot: RFC 5321 4.1.2
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_ANGLED = re.compile(rf"<(?:{_ROUTE})?({_MAILBOX}|[Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr])>(?=$|[ \t])")
_BARE = re.compile(rf"({_MAILBOX})(?=$|[ \t])")

LOCAL_PART_LIMIT = 0        # 0: no limit beyond the command's own (RFC 5321 says 64; real mail exceeds it)


def parse_path(text: str, local_part_limit: int = LOCAL_PART_LIMIT) -> tuple[str, str] | None:
    """(address, the parameters after it) of a MAIL/RCPT argument, or None."""
    text = text.lstrip(" \t")
    m = _ANGLED.match(text) or _BARE.match(text)
    if m is None:
        return None
    address = m.group(1)
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None
    return address, text[m.end():].lstrip(" \t")
