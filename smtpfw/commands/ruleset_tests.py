"""`smtpfw test`: run the ruleset tests beside rule files (RULES.tests)."""

from __future__ import annotations

from smtpfw.commands.errors import CommandError
from smtpfw.replay.rulestests import RulesetTestsReport, collect, run_suites


def run_tests(paths: list[str]) -> RulesetTestsReport:
    """Run the tests of the rule files, .tests files and folders named."""
    pairs, problems, untested = collect(paths)
    if problems:
        raise CommandError(*problems)
    if not pairs:
        raise CommandError("no rulesets with a .tests file found")
    return run_suites(pairs, untested)
