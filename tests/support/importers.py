"""What the importer tests share: the golden manifest of written files, a
lint of the written ruleset, and `smtpfw test` expectations run against it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from smtpfw.importers import ImportResult
from smtpfw.lint import lint_file
from smtpfw.replay.rulestests import format_suite, run_suites


def manifest(files: dict[str, str]) -> str:
    return "".join(f"{rel}  {len(text.splitlines())} lines  sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}\n"
                   for rel, text in sorted(files.items()))


def lint_clean(result: ImportResult, where: Path) -> list[str]:
    """The errors and warnings of the written ruleset."""
    result.write(str(where))
    diags, _sources = lint_file(str(where / "imported.rules"))
    return [f"{d.code} {d.span}: {d.message}" for d in diags if d.level.value in ("error", "warning")]


def run_ruleset_tests(rules: Path, tests: str) -> int:
    """Run `smtpfw test` expectations against an imported ruleset; the number
    of cases run (a failure fails the test, with smtpfw's own account of it)."""
    path = rules.with_suffix(".tests")
    path.write_text(tests, encoding="utf-8")
    (suite,) = run_suites([(str(rules), str(path))], []).suites
    assert suite.loaded, suite.ruleset_diags or suite.read_error
    assert not suite.found and suite.passed == len(suite.outcomes), format_suite(suite)
    return len(suite.outcomes)
