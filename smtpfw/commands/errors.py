"""Why a command could not run (kept free of heavy imports: the CLI loads
it at start)."""

from __future__ import annotations

from smtpfw.diagnostics import Diagnostic


class CommandError(Exception):
    """The command cannot run: one line per problem (usage, input, I/O)."""

    def __init__(self, *problems: str):
        super().__init__(*problems)
        self.problems = list(problems)


class RulesetError(CommandError):
    """A ruleset the command needs does not compile; ``diags`` say why."""

    def __init__(self, path: str, diags: list[Diagnostic]):
        super().__init__(f"{path}: the ruleset has errors")
        self.path, self.diags = path, diags
