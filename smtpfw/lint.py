"""`smtpfw lint`: compile each ruleset, run the semantic checks, print."""

from __future__ import annotations

import os
import sys

from smtpfw.diagnostics import Diagnostic, Severity
from smtpfw.lint_output import format_json, format_text, use_color


def collect_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """Rule files named or found under folders; and paths that do not exist."""
    files, missing = [], []
    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, names in os.walk(path):
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".rules")]
        elif os.path.exists(path):
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def lint_file(path: str) -> tuple[list[Diagnostic], dict[str, str]]:
    """All diagnostics for one ruleset: compile errors plus lint checks."""
    from smtpfw.lang.check import check_ruleset

    return check_ruleset(path)


def run_lint(args) -> int:
    from smtpfw.cli import load_settings

    paths = args.paths
    if not paths:
        _cfg, rules = load_settings(args)
        paths = [rules]
    files, missing = collect_files(paths)
    if missing:
        for m in missing:
            print(f"smtpfw lint: {m}: no such file or folder", file=sys.stderr)
        return 2
    if not files:
        print("smtpfw lint: no .rules files found", file=sys.stderr)
        return 2
    diags: list[Diagnostic] = []
    sources: dict[str, str] = {}
    for path in files:
        found, srcs = lint_file(path)
        diags += found
        sources.update(srcs)
    threshold = Severity(args.fail_on).rank
    if args.format == "json":
        sys.stdout.write(format_json(diags, files))
    else:
        sys.stdout.write(format_text(diags, sources, color=use_color(args.color, sys.stdout), summary=True))
    return 1 if any(d.level.rank >= threshold for d in diags) else 0
