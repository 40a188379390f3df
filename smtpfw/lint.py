"""The lint engine: find the rule files, check each ruleset, and report a
file that another ruleset includes as part of it (smtpfw.commands.lint
runs it for `smtpfw lint`)."""

from __future__ import annotations

import os
from collections.abc import Sequence, Set as AbstractSet

from smtpfw.diagnostics import Diagnostic
from smtpfw.lang.check import check_ruleset


def collect_files(paths: list[str]) -> tuple[list[str], set[str], list[str]]:
    """Rule files named or found under folders, those found by walking a
    folder, and the paths that do not exist."""
    files: list[str] = []
    found: set[str] = set()       # files found by walking a folder (not named)
    missing: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                walked = [os.path.join(root, n) for n in sorted(names) if n.endswith(".rules")]
                files += walked
                found.update(walked)
        elif os.path.exists(path):
            files.append(path)
        else:
            missing.append(path)
    return files, found, missing


def lint_file(path: str, modes: Sequence[str] = (), nameservers: Sequence[str] = ()
              ) -> tuple[list[Diagnostic], dict[str, str]]:
    """All diagnostics for one ruleset: compile errors plus lint checks."""
    return check_ruleset(path, modes, nameservers)


def lint_files(files: list[str], walked: AbstractSet[str] = frozenset(), modes: Sequence[str] = (),
               nameservers: Sequence[str] = ()) -> tuple[list[Diagnostic], dict[str, str], list[str]]:
    """Lint each ruleset.  A file found in a folder that another ruleset
    includes is checked as part of that ruleset, not on its own (alone it
    would look like a ruleset without rcpt rules, with unknown lists...)."""
    results = []
    reads: dict[str, set[str]] = {}    # ruleset -> the other files it read
    for path in files:
        found, srcs = lint_file(path, modes, nameservers)
        results.append((path, found, srcs))
        root = os.path.realpath(path)
        reads[root] = {os.path.realpath(f) for f in srcs} - {root}

    def part_of_another(path: str) -> bool:
        me = os.path.realpath(path)
        return any(me in others and root not in reads.get(me, ())   # (an include loop: keep both)
                   for root, others in reads.items() if root != me)
    diags: list[Diagnostic] = []
    sources: dict[str, str] = {}
    seen: set = set()
    linted: list[str] = []
    for path, found, srcs in results:
        if path in walked and part_of_another(path):
            continue
        linted.append(path)
        sources.update(srcs)
        for d in found:
            key = (d.code, d.message, d.span)
            if key not in seen:     # a file included by two rulesets is reported once
                seen.add(key)
                diags.append(d)
    return diags, sources, linted
