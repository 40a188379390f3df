"""Authentication-Results (RFC 8601): write our own, remove forged ones.

``authentication_results`` builds the header field's value for authserv-id
``X`` from the SPF, DKIM, DMARC and ARC results of smtpfw.checks.spf, .dkim
and .dmarc.  It is built here rather than with the ``authres`` package: the
grammar we write is small (method=result, an optional reason="...", and the
registered properties: smtp.mailfrom, smtp.helo, header.d, header.s,
header.i, header.a, header.b, header.from, smtp.remote-ip), and every value
that came from the message or from DNS is quoted or cleaned here, which is
the part that matters.  The tests parse the result with ``authres`` to check
it is valid RFC 8601.

``strip_forged`` removes incoming Authentication-Results fields whose
authserv-id is ours (compared case-insensitively), as RFC 8601 section 5
requires of a border MTA before it adds its own: otherwise a sender could
write "dkim=pass" in our name.  Every other byte of the message is kept.
"""

from __future__ import annotations

import re
from typing import Iterable

from .dkim import ArcResult, DkimSignature
from .dmarc import DmarcResult
from .spf import SpfResult

__all__ = ["authentication_results", "strip_forged", "authserv_id_of", "HEADER_NAME"]

HEADER_NAME = "Authentication-Results"
MAX_REASON = 120          # characters of a reason="..." kept

# RFC 2045 token: printable US-ASCII except SPACE and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
_DOT_ATOM = re.compile(r"^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*$")
_DOMAIN = re.compile(r"^[0-9A-Za-z_]([0-9A-Za-z_-]*[0-9A-Za-z_])?(\.[0-9A-Za-z_]([0-9A-Za-z_-]*[0-9A-Za-z_])?)*$")


def _clean(text: str, limit: int = MAX_REASON) -> str:
    """Printable US-ASCII on one line, at most ``limit`` characters."""
    text = re.sub(r"[^\x20-\x7e]+", " ", text).strip()
    text = re.sub(r" {2,}", " ", text)
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _quoted(text: str) -> str:
    return '"' + _clean(text, 400).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(text: str) -> str:
    """An RFC 2045 value: the token as is, else a quoted-string."""
    return text if text and _TOKEN.match(text) else _quoted(text)


def _domain_value(text: str) -> str:
    text = text.strip().rstrip(".")
    return text if text and _DOMAIN.match(text) else _quoted(text)


def _mailbox_value(address: str) -> str:
    """pvalue for smtp.mailfrom (RFC 8601 2.2): local-part@domain, quoted when needed."""
    local, at, domain = address.rpartition("@")
    if at and (not local or _DOT_ATOM.match(local)) and _DOMAIN.match(domain.rstrip(".")):
        return f"{local}@{domain.rstrip('.')}"
    if not at and _DOMAIN.match(address.rstrip(".")):
        return address.rstrip(".")
    return _quoted(address)


def _comment(text: str) -> str:
    return "(" + re.sub(r"([()\\])", r"\\\1", _clean(text)) + ")"


def _resinfo(method: str, result: str, reason: str = "", comment: str = "",
             props: Iterable[tuple[str, str]] = ()) -> str:
    parts = [f"{method}={result}"]
    if comment:
        parts.append(_comment(comment))
    if reason:
        parts.append(f"reason={_quoted(_clean(reason))}")
    parts.extend(f"{name}={value}" for name, value in props if value)
    return " ".join(parts)


def _spf(spf: SpfResult) -> str:
    props: list[tuple[str, str]] = []
    if spf.identity == "mailfrom":
        props.append(("smtp.mailfrom", _mailbox_value(spf.sender or spf.domain)))
    elif spf.domain:
        props.append(("smtp.helo", _domain_value(spf.domain)))
    # The explanation of a fail is the sender domain's text: not repeated in our header.
    reason = spf.explanation if spf.result in ("temperror", "permerror") else ""
    return _resinfo("spf", spf.result, reason, props=props)


def _dkim(sig: DkimSignature) -> str:
    props = [("header.d", _domain_value(sig.domain) if sig.domain else ""),
             ("header.i", _mailbox_value(sig.identity) if sig.identity else ""),
             ("header.s", _value(sig.selector) if sig.selector else ""),
             ("header.a", _value(sig.algorithm) if sig.algorithm else ""),
             ("header.b", _value(sig.header_b) if sig.header_b else "")]
    return _resinfo("dkim", sig.result, sig.reason if sig.result != "pass" else "", props=props)


def _dmarc(dmarc: DmarcResult) -> str:
    comment = ""
    if dmarc.p:
        comment = f"p={dmarc.p}" + (f" sp={dmarc.sp}" if dmarc.sp else "") + (
            f" pct={dmarc.pct}" if dmarc.pct != 100 else "")
    reason = dmarc.reason if dmarc.result in ("temperror", "permerror") else ""
    props = [("header.from", _domain_value(dmarc.from_domain) if dmarc.from_domain else "")]
    return _resinfo("dmarc", dmarc.result, reason, comment, props)


def _arc(arc: ArcResult, client_ip: str) -> str:
    comment = ""
    if arc.instances:
        comment = f"i={arc.instances}" + (f" d={arc.domain}" if arc.domain else "")
    reason = arc.reason if arc.result == "fail" else ""
    props = [("smtp.remote-ip", _value(client_ip.strip()))] if client_ip.strip() else []
    return _resinfo("arc", arc.result, reason, comment, props)


def authentication_results(authserv_id: str, *, spf: SpfResult | None = None,
                           spf_helo: SpfResult | None = None,
                           dkim: Iterable[DkimSignature] | None = None,
                           dmarc: DmarcResult | None = None, arc: ArcResult | None = None,
                           client_ip: str = "", fold: str | None = None) -> str:
    """The value of an Authentication-Results field (without the name).

    Each result given becomes one resinfo, in the order SPF (MAIL FROM),
    SPF (HELO), DKIM (one per signature; ``dkim=none`` for an empty
    tuple), DMARC, ARC.  Nothing given: ``<id>; none``.  ``client_ip`` adds
    smtp.remote-ip to the ARC result (RFC 8617 section 10.2).  ``fold``
    (e.g. ``"\\r\\n\\t"``) is put before each resinfo so that long values
    stay within line limits; by default the value is one line.
    """
    resinfos: list[str] = []
    if spf is not None:
        resinfos.append(_spf(spf))
    if spf_helo is not None:
        resinfos.append(_spf(spf_helo))
    if dkim is not None:
        sigs = tuple(dkim)
        if sigs:
            resinfos.extend(_dkim(s) for s in sigs)
        else:
            resinfos.append("dkim=none")
    if dmarc is not None:
        resinfos.append(_dmarc(dmarc))
    if arc is not None:
        resinfos.append(_arc(arc, client_ip))
    head = _value(authserv_id.strip())
    if not resinfos:
        return f"{head}; none"
    sep = ";" + (fold if fold is not None else " ")
    return head + sep + sep.join(resinfos)


# -- forged headers ------------------------------------------------------------------

_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")


def _skip_cfws(text: bytes, i: int) -> int:
    """Index after folding white space and (nested) comments from ``i``."""
    n = len(text)
    while i < n:
        c = text[i:i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            depth = 0
            while i < n:
                c = text[i:i + 1]
                if c == b"\\":
                    i += 2
                    continue
                if c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def authserv_id_of(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value ("" if none can be read)."""
    i = _skip_cfws(value, 0)
    if value[i:i + 1] == b'"':
        out = bytearray()
        i += 1
        while i < len(value) and value[i:i + 1] != b'"':
            if value[i:i + 1] == b"\\":
                i += 1
            out += value[i:i + 1]
            i += 1
        return out.decode("utf-8", "replace")
    m = re.match(rb"[^\s;()\"]+", value[i:])
    return m.group(0).decode("utf-8", "replace") if m else ""


def strip_forged(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results fields whose authserv-id
    is ``authserv_id`` (case-insensitive, RFC 8601 section 5); the body and
    every other header field are kept byte for byte."""
    ours = authserv_id.strip().lower()
    fields: list[list[bytes]] = []          # each: the raw lines of one field
    end = 0
    for m in _LINE.finditer(message):
        line = m.group(0)
        if line in (b"\r\n", b"\n"):         # the blank line: the body follows
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
        end = m.end()
    else:
        end = len(message)
    kept: list[bytes] = []
    removed = False
    for lines in fields:
        raw = b"".join(lines)
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() == b"authentication-results" and \
                authserv_id_of(value).lower() == ours:
            removed = True
            continue
        kept.append(raw)
    if not removed:
        return message
    return b"".join(kept) + message[end:]
