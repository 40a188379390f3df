"""Lint, tests, trace and "add a test" on the text being edited, through the
very functions `smtpfw lint`, `smtpfw test` and `smtpfw trace` run
(smtpfw.commands): the workbench has no engine of its own.  Unsaved text
reaches them through a shadow of the workspace (smtpfw.workbench.files).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from smtpfw.commands.errors import CommandError, RulesetError
from smtpfw.commands.lint import lint as run_lint
from smtpfw.commands.ruleset_tests import run_tests as run_ruleset_tests
from smtpfw.commands.trace import SessionSpec
from smtpfw.commands.trace import trace as run_trace
from smtpfw.diagnostics import Diagnostic
from smtpfw.lang.compiler import compile_ruleset, load_program
from smtpfw.lint_output import DOCS_URL
from smtpfw.recording import RecordError
from smtpfw.replay.rulestests import parse_tests, run_file
from smtpfw.replay.session import ACCEPTED, NO_MAIL
from smtpfw.replay.trace import load_session
from smtpfw.workbench.files import Shadow, Workspace, shadow

_DID_YOU_MEAN = re.compile(r"did you mean `([^`\s]+)`\?")
_WORD = re.compile(r"[\w.@<>:\-\[\]/+]+")


@dataclass(frozen=True)
class Settings:
    """What the workbench was started with (smtpfw.commands.workbench)."""

    rules: str                    # the ruleset file
    config: str | None = None     # the YAML config (DNS servers, limits, pid file)
    recordings: str | None = None  # the folder of recorded sessions
    pid_file: str | None = None
    server_log: str | None = None
    nameservers: tuple[str, ...] = ()


# ---- the files -----------------------------------------------------------------------

def ruleset_files(ws: Workspace, edits: dict[str, str]) -> list[dict]:
    """The ruleset, its tests, the files it includes and the list and map
    files it names, as the edited text has them: ``{name, kind, editable}``
    (a file outside the folder is listed by path, not editable)."""
    out: dict[str, dict] = {}

    def add(path: str, kind: str, sh: Shadow) -> None:
        real = sh.real(path) or path
        name = ws.name_of(real)
        key = name or real
        if key not in out:
            out[key] = {"name": key, "kind": kind, "editable": name is not None,
                        "exists": os.path.exists(real) or (name in edits)}

    with shadow(ws, edits) as sh:
        prog, _diags = load_program(sh.rules)
        add(sh.rules, "rules", sh)
        out[ws.tests_name] = {"name": ws.tests_name, "kind": "tests", "editable": True,
                              "exists": os.path.exists(ws.resolve(ws.tests_name)) or ws.tests_name in edits}
        for path in prog.files[1:]:
            add(path, "include", sh)
        for table, kind in ((prog.lists, "list"), (prog.maps, "map")):
            for decl, base in table.values():
                if decl.file:
                    add(os.path.normpath(os.path.join(base, decl.file)), kind, sh)
    return list(out.values())


# ---- lint ------------------------------------------------------------------------------

def lint(ws: Workspace, edits: dict[str, str], settings: Settings) -> dict:
    """`smtpfw lint --format json` of the edited ruleset, each diagnostic's
    file as a workspace name, with a one-click ``fix`` where it is certain."""
    with shadow(ws, edits) as sh:
        report = run_lint([sh.rules], (), settings.nameservers)
        sources = {sh.real(path) or path: text for path, text in report.sources.items()}
        diags = [_diagnostic_json(d, ws, sh, sources) for d in report.diagnostics]
    counts = {level: sum(1 for d in diags if d["severity"] == level) for level in ("error", "warning", "hint")}
    return {"diagnostics": diags, "summary": counts}


def _diagnostic_json(d: Diagnostic, ws: Workspace, sh: Shadow, sources: dict[str, str]) -> dict:
    item = d.to_json()
    item["url"] = DOCS_URL.format(code=d.code.lower())
    item["message"] = sh.unshadow(item["message"])
    item["help"] = sh.unshadow(item["help"]) if item["help"] else None
    real = sh.real(item["file"])
    name = ws.name_of(real) if real else None
    item["file"] = name or real
    item["editable"] = name is not None
    item["fix"] = certain_fix(d, sources.get(real or "")) if name else None
    return item


def certain_fix(d: Diagnostic, text: str | None) -> dict | None:
    """The did-you-mean of ``d`` as an edit, when it is certain: the help
    names exactly one word, and the diagnostic's span is one word on one line
    that differs from it.  ``{line, column, end_column, insert}`` (1-based)."""
    span = d.span
    if span is None or text is None or not d.help or span.line != span.end_line:
        return None
    m = _DID_YOU_MEAN.match(d.help)
    if m is None:
        return None
    lines = text.split("\n")
    if not 1 <= span.line <= len(lines):
        return None
    found = lines[span.line - 1][span.column - 1:span.end_column - 1]
    if not found or not _WORD.fullmatch(found) or found == m.group(1):
        return None
    return {"line": span.line, "column": span.column, "end_column": span.end_column, "from": found,
            "insert": m.group(1)}


# ---- ruleset tests ------------------------------------------------------------------------

def tests(ws: Workspace, edits: dict[str, str]) -> dict:
    """`smtpfw test` of the edited ruleset and its edited .tests file."""
    with shadow(ws, edits) as sh:
        if not os.path.exists(sh.base + ws.resolve(ws.tests_name)):
            return {"error": f"no tests file {ws.tests_name} beside the ruleset: add one (a line per test)",
                    "cases": [], "failures": []}
        try:
            report = run_ruleset_tests([sh.rules])
        except CommandError as err:
            return {"error": sh.unshadow("; ".join(err.problems)), "cases": [], "failures": []}
        suite = report.suites[0]
        if suite.ruleset_diags:
            return {"error": "the ruleset has errors: see the editor", "cases": [], "failures": [],
                    "diagnostics": [_diagnostic_json(d, ws, sh, {}) for d in suite.ruleset_diags]}
        if suite.read_error:
            return {"error": sh.unshadow(suite.read_error), "cases": [], "failures": []}
        cases = [{"line": o.case.line, "text": o.case.text, "passed": o.passed,
                  "got": o.verdict.describe()} for o in suite.outcomes]
        failures = [{**_diagnostic_json(d, ws, sh, {}), "trace": sh.unshadow(trace) if trace else None}
                    for d, trace in suite.found]
    return {"summary": {"tests": len(cases), "passed": sum(c["passed"] for c in cases),
                        "failed": sum(not c["passed"] for c in cases), "unreadable": suite.unreadable},
            "cases": cases, "failures": failures}


def session_words(record: dict) -> str:
    """A recorded session as the words of a ruleset test (its first
    transaction: tests have one MAIL)."""
    client = record.get("client") or {}
    words = [f"client {client.get('ip') or '192.0.2.1'}"]
    port = (record.get("listener") or {}).get("port")
    if port and port != 25:
        words.append(f"port {port}")
    if record.get("tls"):
        words.append("tls")
    if record.get("auth") and record.get("auth_user"):
        words.append(f"auth {_quoted(record['auth_user'])}")
    helo = sender = None
    rcpts: list[str] = []
    data = False
    for ev in record.get("events") or ():
        cmd = ev.get("cmd")
        if cmd in ("helo", "ehlo") and helo is None:
            helo = (cmd, ev.get("arg") or "")
        elif cmd == "mail":
            if sender is not None:
                break
            sender = ev.get("addr") or ""
        elif cmd == "rcpt" and sender is not None:
            rcpts.append(ev.get("addr") or "")
        elif cmd == "data" and sender is not None:
            data = True
    if helo is not None:
        words.append(f"{helo[0]} {_quoted(helo[1])}")
        if sender is not None:
            words.append(f"from {_quoted(sender) if sender else '<>'}")
            words += [f"rcpt {_quoted(r)}" for r in rcpts]
            if rcpts and not data:
                words.append("nodata")
    return " ".join(words)


def _quoted(text: str) -> str:
    return text if text and re.fullmatch(r"[^\s\"\\]+", text) and text != "->" else (
        '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def test_line(ws: Workspace, edits: dict[str, str], record: dict) -> dict:
    """A test line for ``record`` whose expectation is what the edited
    ruleset decides now, with the DNS the .tests file declares (so the
    test passes as it is added, and fails when a later edit changes it)."""
    words = session_words(record)
    tests_text = edits.get(ws.tests_name)
    if tests_text is None:
        tests_text = ws.read(ws.tests_name)
    with shadow(ws, edits) as sh:
        ruleset, diags = compile_ruleset(sh.rules, plugins="inspect")
        if ruleset is None:
            raise RulesetError(ws.rules, list(diags))
        probe = tests_text.rstrip("\n") + ("\n" if tests_text.strip() else "") + words + " -> accept\n"
        suite = parse_tests(sh.base + ws.resolve(ws.tests_name), probe, None)
        outcomes, _failures = run_file(suite, ruleset)
    if not outcomes or outcomes[-1].case.line != len(probe.rstrip("\n").split("\n")):
        problems = [d.message for d in suite.diags]
        raise CommandError("the session cannot be written as a test" + (f": {problems[-1]}" if problems else ""))
    v = outcomes[-1].verdict
    if v.kind == ACCEPTED:
        expect = "accept"
    elif v.kind == NO_MAIL:
        expect = "no-mail"
    else:
        expect = {"rejected": "reject", "tempfailed": "tempfail", "disconnected": "disconnect"}.get(v.kind, v.kind)
        expect += f" at {v.stage}" if v.stage else ""
        expect += f" by {v.rule}" if v.rule else ""
        expect += f" code {v.code}" if v.code else ""
    return {"line": f"{words} -> {expect}", "tests": ws.tests_name}


# ---- trace -------------------------------------------------------------------------------

def spec_of_form(form: object) -> SessionSpec:
    """The trace form (ip, helo, sender, rcpts) as `smtpfw trace`'s flags:
    an empty sender is no MAIL at all, `<>` the null sender."""
    if not isinstance(form, dict):
        raise CommandError("`form` is an object: ip, helo, sender, rcpts")
    rcpts = form.get("rcpts") or []
    if isinstance(rcpts, str):
        rcpts = [r for r in re.split(r"[\s,]+", rcpts) if r]
    elif not isinstance(rcpts, list):
        raise CommandError("`rcpts` is a list of addresses")
    sender = str(form.get("sender") or "").strip()
    return SessionSpec(ip=str(form.get("ip") or "").strip() or None, helo=str(form.get("helo") or "").strip() or None,
                       sender=sender or None, rcpts=[str(r) for r in rcpts])


def find_session(settings: Settings, session_id: str) -> dict:
    if not settings.recordings:
        raise CommandError("no recordings: start the workbench with --recordings DIR")
    try:
        return load_session(f"{settings.recordings}:{session_id}")
    except RecordError as err:
        raise CommandError(str(err)) from None


def trace(ws: Workspace, edits: dict[str, str], settings: Settings, *, form: dict | None = None,
          session_id: str | None = None, which: str = "edited", dns: str = "default") -> dict:
    """`smtpfw trace` of a recorded session (its recorded DNS answers) or of
    the session a form describes (live DNS from the config's servers, or
    none), through the edited or the saved ruleset."""
    if session_id is not None:
        session = f"{settings.recordings}:{session_id}" if settings.recordings else None
        if session is None:
            raise CommandError("no recordings: start the workbench with --recordings DIR")
        spec = SessionSpec()
    else:
        spec = spec_of_form(form or {})
        session = None
    with shadow(ws, edits if which == "edited" else {}) as sh:
        rules = sh.rules if which == "edited" else ws.rules
        report = run_trace(spec, session=session, rules=rules, config=settings.config,
                           no_dns=dns == "none", live_dns=dns == "live" and session is not None)
        text = report.to_text().replace(os.path.relpath(sh.base + ws.root) + "/", "")   # trace's rule locations
        text = sh.unshadow(text).replace(os.path.relpath(ws.root) + "/", "")
        data = report.to_json()
    return {"text": text, "verdict": data["verdict"], "hits": data["hits"], "ruleset": data["ruleset"],
            "dns": [d for step in data["steps"] for d in step["dns"]], "which": which}
