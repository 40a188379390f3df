"""What every map shares: the hit, the protocol, and reading a map file into
logical lines the way Postfix does.

Logical lines follow Postfix's ``readlline()`` (the postmap(1) "INPUT FILE
FORMAT", also used by regexp_table(5) and pcre_table(5)):

- empty and whitespace-only lines are ignored, and so are lines whose first
  non-whitespace character is ``#`` (a ``#`` later in a line is text:
  ``example.com REJECT see ticket #12`` has that whole value);
- a logical line starts with non-whitespace text; a line that starts with
  whitespace continues it, appended *with* its leading whitespace and
  without the line break (so a long reply text or pattern can be split);
  an empty line, or a line that starts with text or ``#`` in its first
  column, ends it; an indented comment line does not;
- a continuation line with nothing to continue is reported (E304) and
  ignored, where Postfix logs a warning and ignores it;
- trailing whitespace is removed.

The file is read as smtpfw list files are (``smtpfw.checks.lists``): a
regular file of at most 64 MiB, UTF-8 (bad bytes replaced), a byte-order
mark ignored.  Line numbers count ``\\n`` only, as editors do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from smtpfw.checks.lists import _read_capped
from smtpfw.diagnostics import Code, Diagnostic, Span


@dataclass(frozen=True, slots=True)
class MapHit:
    """One lookup's answer."""

    value: str      # the right-hand side; for regexp/pcre tables with $1..$9, ${n}, $$ substituted
    key: str        # the key or pattern that matched, as written ("/^foo/i", ".example.com")
    line: int       # 1-based line in the map file (index + 1 for an inline map)


class Map(Protocol):
    def lookup(self, value: str, ftype: str) -> MapHit | None:
        """``value`` already folded (smtpfw.lang.fields.fold); ``ftype`` one of
        the field types "ip", "domain", "address", "string", "int"."""
        ...

    def __len__(self) -> int: ...

    def entries(self) -> Iterator[tuple[str, str, Span]]:
        """(key or pattern as written, value as written, span of the value):
        for lint (W305) to read every value once."""
        ...


@dataclass(frozen=True, slots=True)
class LogicalLine:
    """A logical line: its text and where each of its physical pieces starts,
    so that an offset in the text gives back a line and column."""

    text: str
    line: int                                   # 1-based number of its first physical line
    pieces: tuple[tuple[int, int], ...] = ()    # (offset in text, line number) of each continuation

    def position(self, offset: int) -> tuple[int, int]:
        """(line, 1-based column) of ``text[offset]``."""
        line, start = self.line, 0
        for piece_offset, piece_line in self.pieces:
            if offset < piece_offset:
                break
            line, start = piece_line, piece_offset
        return line, offset - start + 1

    def span(self, file: str, offset: int = 0, width: int | None = None) -> Span:
        line, col = self.position(offset)
        end = len(self.text) if width is None else offset + max(width, 1)
        end_line, end_col = self.position(max(end - 1, offset))
        return Span(file, line, col, end_line, end_col + 1)


def logical_lines(text: str, file: str) -> tuple[list[LogicalLine], list[Diagnostic]]:
    """The logical lines of a map file's text (see the module docstring)."""
    out: list[LogicalLine] = []
    diags: list[Diagnostic] = []
    current: list[str] = []
    first = 0
    length = 0
    pieces: list[tuple[int, int]] = []

    def flush() -> None:
        nonlocal current, pieces, length
        if current:
            out.append(LogicalLine("".join(current).rstrip(), first, tuple(pieces)))
        current, pieces, length = [], [], 0

    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        stripped = line.lstrip()
        if not stripped:
            flush()                         # an empty line ends a logical line
            continue
        if line[0].isspace():
            if stripped[0] == "#":
                continue                    # an indented comment does not end it
            if not current:
                diags.append(Diagnostic(
                    Code.E304_MAP_ENTRY_MALFORMED,
                    "this line starts with whitespace, so it continues the line before it, but there is none",
                    Span.point(file, number, 1, len(line)),
                    help="remove the leading whitespace (a line that starts with a space or tab "
                         "continues the previous entry)"))
                continue
            pieces.append((length, number))
            current.append(line)
            length += len(line)
            continue
        flush()
        if stripped[0] == "#":
            continue
        first = number
        current.append(line)
        length = len(line)
    flush()
    return out, diags


def read_map_text(path: str, shown_name: str) -> tuple[str | None, list[Diagnostic]]:
    """A map file's text, or None and E301 (missing, unreadable, not a regular
    file, larger than the list size cap), with a did-you-mean for a misspelt
    name (from ``smtpfw.checks.lists``)."""
    raw, problem = _read_capped(path, shown_name)
    if raw is None:
        return None, [Diagnostic(Code.E301_LIST_FILE_MISSING, problem.replace("list file", "map file", 1))]
    return raw.decode("utf-8", errors="replace").removeprefix("\ufeff"), []
