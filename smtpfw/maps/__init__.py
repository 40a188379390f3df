"""Maps: tables whose entries carry a value, for the rule language.

Three formats, loaded at ruleset compile time (the only I/O) and looked up
per session without I/O:

``access``
    Postfix access(5) tables and qpsmtpd list files (``key [value...]``):
    exact keys, parent domains, ``user@``, truncated IPs and CIDR networks
    (``smtpfw.maps.access``).
``regexp`` / ``pcre``
    Postfix regexp_table(5) / pcre_table(5): ``/pattern/flags result``,
    ``!/pattern/``, ``if``/``endif``, ``$1`` substitution, all patterns in
    one RE2 set (``smtpfw.maps.regexp``).

Rule regexes get the same linear-time engine from ``compile_regex``
(``smtpfw.maps.regex``).
"""

from __future__ import annotations

from collections.abc import Sequence

from smtpfw.diagnostics import Diagnostic, Span
from smtpfw.maps.access import AccessMap, access_map_from_pairs, parse_access_lines
from smtpfw.maps.base import LogicalLine, Map, MapHit, logical_lines, read_map_text
from smtpfw.maps.regex import DIALECTS, Regex, RegexError, compile_pattern, compile_regex
from smtpfw.maps.regexp import RegexpMap, parse_regexp_lines, regexp_map_from_pairs

FORMATS = ("access", "regexp", "pcre")

__all__ = [
    "FORMATS", "DIALECTS", "AccessMap", "LogicalLine", "Map", "MapHit", "Regex", "RegexError", "RegexpMap",
    "compile_pattern", "compile_regex", "load_map", "logical_lines", "map_from_pairs",
]


def load_map(path: str, shown_name: str, fmt: str, *,
             recipient_delimiter: str = "") -> tuple[Map | None, list[Diagnostic]]:
    """Read a map file.  ``fmt`` is "access", "regexp" or "pcre";
    ``shown_name`` is how diagnostics name the file.  None (with E301) only
    when the file cannot be read at all; a bad line is reported (E304, or
    E401/E404 for a pattern, W303 for a duplicate) with its line and skipped.
    ``recipient_delimiter`` (access maps: "+", say) makes ``user+ext@domain``
    also look up ``user@domain`` and ``user@``, as Postfix does when its
    recipient_delimiter is set."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown map format {fmt!r}: one of {', '.join(FORMATS)}")
    text, diags = read_map_text(path, shown_name)
    if text is None:
        return None, diags
    lines, line_diags = logical_lines(text, shown_name)
    diags.extend(line_diags)
    amap: Map
    if fmt == "access":
        amap, more = parse_access_lines(lines, shown_name, recipient_delimiter=recipient_delimiter)
    else:
        amap, more = parse_regexp_lines(lines, shown_name, fmt)
    diags.extend(more)
    return amap, diags


def map_from_pairs(pairs: Sequence[tuple[str, str, Span]], fmt: str = "access", *,
                   recipient_delimiter: str = "") -> tuple[Map, list[Diagnostic]]:
    """A map written inline in a rule file: (key, value, span of the entry)
    each; a hit's ``line`` is the entry's index + 1.  For "regexp" and
    "pcre" each key is one `/pattern/flags` (no `if`/`endif` inline)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown map format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "access":
        return access_map_from_pairs(pairs, recipient_delimiter=recipient_delimiter)
    return regexp_map_from_pairs(pairs, fmt)
