"""Lint checks beyond what the compiler rejects.  (Grown by the lint issue.)"""

from __future__ import annotations

from smtpfw.diagnostics import Diagnostic
from smtpfw.lang.compiler import compile_ruleset


def check_ruleset(path: str) -> tuple[list[Diagnostic], dict[str, str]]:
    """Diagnostics for one ruleset file, and the sources read (for context)."""
    try:
        ruleset, diags = compile_ruleset(path, load_plugins=True)
    except Exception as err:  # lint must never crash
        return [Diagnostic("E002", f"internal error while checking: {err!r}")], {}
    sources = dict(ruleset.sources) if ruleset is not None else {}
    return list(diags), sources
