"""Diagnostic formatters: concise+context text (ruff/rustc style) and JSON.

    rules/site.rules:12:40: error[E102] unknown field `sender.domian`
       |
    12 |     reject if sender.domian in badmailfrom
       |               ^^^^^^^^^^^^^ 
       = help: did you mean `sender.domain`?
"""

from __future__ import annotations

import json
import os

from smtpfw.diagnostics import Code, Diagnostic, Severity

DOCS_URL = "docs/lint.md#{code}"
_COLORS = {Severity.ERROR: "\033[1;31m", Severity.WARNING: "\033[1;33m", Severity.HINT: "\033[1;36m"}
_BOLD, _BLUE, _RESET = "\033[1m", "\033[1;34m", "\033[0m"


def _source_line(d: Diagnostic, sources: dict[str, str] | None, cache: dict) -> str | None:
    span = d.span
    if span is None:
        return None
    lines = cache.get(span.file)
    if lines is None:
        text = (sources or {}).get(span.file)
        if text is None:
            try:
                with open(span.file, "rb") as fh:
                    text = fh.read(4 * 1024 * 1024).decode("utf-8", "replace")
            except OSError:
                text = None
        # line numbers count "\n" only, as the parser does (not str.splitlines);
        # columns do not count a byte-order mark, which readers strip
        lines = cache[span.file] = text.removeprefix("\ufeff").split("\n") if text is not None else []
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1].rstrip("\r")
    return None


def format_text(diags: list[Diagnostic], sources: dict[str, str] | None = None,
                color: bool = False, summary: bool = False) -> str:
    out: list[str] = []
    cache: dict[str, list[str]] = {}
    for d in diags:
        c = (lambda code, s: f"{code}{s}{_RESET}") if color else (lambda code, s: s)
        level = d.level
        where = f"{d.span}: " if d.span else ""
        out.append(f"{c(_BOLD, where)}{c(_COLORS[level], f'{level.value}[{d.code}]')} {_shown(d.message)}")
        line = _source_line(d, sources, cache) if d.code != Code.E001_IO_ERROR else None   # E001: cannot be read
        if line is not None and d.span is not None:
            line = _shown(line[:300])
            num = str(d.span.line)
            pad = " " * len(num)
            width = (d.span.end_column - d.span.column) if d.span.end_line == d.span.line else len(line) - d.span.column + 1
            width = max(1, min(width, max(1, len(line) - d.span.column + 1)))
            out.append(f"{pad} {c(_BLUE, '|')}")
            out.append(f"{c(_BLUE, num)} {c(_BLUE, '|')} {line}")
            out.append(f"{pad} {c(_BLUE, '|')} {' ' * (d.span.column - 1)}{c(_COLORS[level], '^' * width)}")
        if d.help:
            out.append(f"{' ' * (len(str(d.span.line)) if d.span else 0)} = help: {_shown(d.help)}")
    if summary:
        out.append(summary_line(diags))
    return "\n".join(out) + ("\n" if out else "")


def _shown(text: str) -> str:
    """Text from rule and list files as a terminal shows it safely: a control,
    bidi or zero-width character becomes a visible \ufffd (a tab a space)."""
    return "".join(ch if ch.isprintable() else ("\ufffd" if ch != "\t" else " ") for ch in text)


def summary_line(diags: list[Diagnostic]) -> str:
    counts = {s: sum(1 for d in diags if d.level is s) for s in Severity}
    if not diags:
        return "no problems found"
    parts = [f"{n} {s.value}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
    return "found " + ", ".join(parts)


def format_json(diags: list[Diagnostic], files: list[str] | None = None) -> str:
    """Schema version 1, documented in docs/lint.md."""
    items = []
    for d in diags:
        item = d.to_json()
        item["url"] = DOCS_URL.format(code=d.code.lower())
        items.append(item)
    return json.dumps({
        "version": 1,
        "files": files or [],
        "diagnostics": items,
        "summary": {s.value: sum(1 for d in diags if d.level is s) for s in Severity},
    }, indent=2) + "\n"


def use_color(choice: str, stream) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()
