"""`smtpfw docs [PAGE[#SECTION]]`: the documentation shipped with smtpfw.

Diagnostics point to ``docs/lint.md#e102`` and messages to
``docs/dry-run.md``; an installed smtpfw has no checkout to open them in,
so the pages are installed with the package (smtpfw/data/docs) and this
command prints them: a page, or one section of it by the anchor those
links use (``<a id="e102">`` or a heading's GitHub-style slug).
"""

from __future__ import annotations

import re
from pathlib import Path

from smtpfw import paths

_ANCHOR = re.compile(r'^<a id="([^"]+)"></a>\s*$')
_HEADING = re.compile(r"^(#{1,6}) +(.*)$")


def pages() -> dict[str, Path]:
    """Page name (file name without .md) -> file."""
    return {p.stem: p for p in sorted(paths.docs_dir().glob("*.md"))}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section(text: str, anchor: str) -> str | None:
    """The part of a page from the heading ``anchor`` names to the next
    heading of the same or a higher level; None if there is no such anchor."""
    lines = text.split("\n")
    headings: list[tuple[int, int]] = []      # (line index, level)
    anchors: dict[str, int] = {}
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            headings.append((i, len(m.group(1))))
            anchors.setdefault(slug(m.group(2)), i)
        elif not fenced and (m := _ANCHOR.match(line)):
            anchors.setdefault(m.group(1), i)
    anchor = anchor.lower()
    at = anchors.get(anchor)
    if at is None:      # "#ruleset-tests" for "## Ruleset tests: smtpfw test": a unique prefix will do
        near = [i for name, i in anchors.items() if name.startswith(anchor + "-")]
        at = near[0] if len(near) == 1 else None
    start = next(((i, level) for i, level in headings if i >= at), None) if at is not None else None
    if start is None:
        return None
    end = next((i for i, level in headings if i > start[0] and level <= start[1]), len(lines))
    body = lines[start[0]:end]
    while body and (not body[-1].strip() or _ANCHOR.match(body[-1])):
        body.pop()
    return "\n".join(body) + "\n"


class NoSuchPage(LookupError):
    """A page or section that is not there (the message names what is)."""


def listing() -> str:
    """The pages, one a line, with their titles."""
    lines = [f"Documentation in {paths.docs_dir()} (smtpfw docs PAGE, or PAGE#SECTION):"]
    lines += [f"  {name:<12} {_title(path)}" for name, path in pages().items()]
    return "\n".join(lines) + "\n"


def show(spec: str) -> str:
    """PAGE or PAGE#SECTION (docs/lint.md, lint.md and lint all work)."""
    available = pages()
    name, _, anchor = spec.partition("#")
    name = Path(name).name.removesuffix(".md")
    if name not in available:
        raise NoSuchPage(f"no page {name!r}; pages: {', '.join(available)}")
    text = available[name].read_text(encoding="utf-8")
    if not anchor:
        return text
    part = section(text, anchor)
    if part is None:
        raise NoSuchPage(f"{name}: no section #{anchor}")
    return part


def _title(path: Path) -> str:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    return first.lstrip("# ").strip()
