"""Compiling the ruleset a command needs."""

from __future__ import annotations

from smtpfw.commands.errors import RulesetError
from smtpfw.lang.compiler import compile_ruleset


def compile_or_raise(path: str):
    """The compiled ruleset, or RulesetError with its diagnostics."""
    ruleset, diags = compile_ruleset(path)
    if ruleset is None:
        raise RulesetError(path, list(diags))
    return ruleset
