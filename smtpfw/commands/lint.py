"""`smtpfw lint`: check rule files; the report holds every diagnostic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpfw.commands.errors import CommandError
from smtpfw.diagnostics import Diagnostic, Severity
from smtpfw.lint import collect_files, lint_files


@dataclass
class LintReport:
    files: list[str]                  # the rulesets checked
    diagnostics: list[Diagnostic]
    sources: dict[str, str]           # file -> text read (for the context lines)

    def fails(self, fail_on: Severity) -> bool:
        """True if a diagnostic is at least as severe as ``fail_on``."""
        return any(d.level.rank >= fail_on.rank for d in self.diagnostics)


def lint(paths: list[str], modes: Sequence[str] = (), nameservers: Sequence[str] = ()) -> LintReport:
    """Lint the rule files named or found under the folders named; ``modes``
    are the front ends the rules will run behind (W604), ``nameservers`` the
    resolvers the config names (W705)."""
    files, walked, missing = collect_files(paths)
    if missing:
        raise CommandError(*(f"{m}: no such file or folder" for m in missing))
    if not files:
        raise CommandError("no .rules files found")
    diags, sources, linted = lint_files(files, walked, modes, nameservers)
    return LintReport(linted, diags, sources)
