"""Invisible characters in rule and list files (lint W004).

A no-break space, a zero-width space or a bidi control pasted in from a web
page or a word processor looks like nothing, yet it is part of the text: an
entry `example.com<U+200B>` never matches example.com.  Lint names each one
with its line, column and Unicode name.
"""

from __future__ import annotations

import re
import unicodedata

from smtpfw.diagnostics import Code, Diagnostic, Span

# C1 controls, spaces other than " ", format characters (zero-width, bidi,
# soft hyphen, word joiner, BOM), fillers, variation selectors, tags.
_INVISIBLE = re.compile(
    "[\u0080-\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u2000-\u200f"
    "\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U000e0000-\U000e007f]")
MAX_PER_FILE = 10
HELP = ("delete it (it usually comes with text pasted from a web page, a mail or a word processor): "
        "it is part of the text, so a name or entry with it never matches what you see")


def is_invisible(ch: str) -> bool:
    return bool(_INVISIBLE.fullmatch(ch))


def describe(ch: str) -> str:
    """U+200B ZERO WIDTH SPACE"""
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'CONTROL CHARACTER')}"


def find_invisible(text: str, filename: str) -> list[Diagnostic]:
    """W004 for each invisible character (a leading byte-order mark is not
    one: readers strip it), at most MAX_PER_FILE per file."""
    text = text.removeprefix("\ufeff")
    if text.isascii():
        return []
    hits = list(_INVISIBLE.finditer(text))
    out: list[Diagnostic] = []
    for m in hits[:MAX_PER_FILE]:
        line = text.count("\n", 0, m.start()) + 1
        column = m.start() - text.rfind("\n", 0, m.start())
        more = len(hits) - MAX_PER_FILE
        tail = f" (and {more} more in this file)" if more > 0 and len(out) == MAX_PER_FILE - 1 else ""
        out.append(Diagnostic(Code.W004_INVISIBLE_CHARACTER, f"invisible character {describe(m.group())}{tail}",
                              Span.point(filename, line, column), help=HELP))
    return out
