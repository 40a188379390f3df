"""`smtpfw test`: ruleset tests that live beside the rules.

``rules/site.rules`` is tested by ``rules/site.tests``, one test a line::

    # DNS the tests see (every test in the file; undeclared lookups: empty DNS)
    dns bl.test 192.0.2.66 = listed 127.0.0.2 "Listed in bl.test"
    dns dbl.test spam.example = listed
    dns ptr 192.0.2.7 = found mail.example.org
    dns resolvable example.org = yes
    dns addresses mx.example = found 192.0.2.1 2001:db8::1
    # database or directory map answers (undeclared keys: no entry)
    map mailboxes alice@example.org = found "example.org/alice/"
    map mailboxes bob@example.org = none
    map mailboxes carol@example.org = failed "the database is down"

    client 192.0.2.66 ehlo mx.example from a@b.example rcpt c@example.net -> reject at rcpt by dnsbl code 554
    ehlo mx.example from <> rcpt postmaster@example.net -> accept

The session words are ``client IP``, ``port N`` (listener), ``tls``,
``auth USER``, ``unrecognized N`` (unknown commands before HELO),
``helo NAME`` / ``ehlo NAME``, ``from ADDR`` (``<>``: null
sender), ``rcpt ADDR`` (repeatable), ``header "Name: value"``, ``size N``
and ``nodata``.  The expectation after ``->`` is ``accept``, ``no-mail``, or
``reject``/``tempfail``/``disconnect`` with optional ``at STAGE``,
``by RULE``, ``code N`` and ``text "part of the reply"``.  A line ending in
``\\`` continues on the next.  docs/dry-run.md has the details.

Failures are diagnostics in the lint format (E901 expectation-failed, E902
expectation-syntax) followed by the session's trace.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.checks.tableresult import NOT_FOUND, TableAnswer, TableQuery, unavailable
from smtpfw.diagnostics import Code, Diagnostic, Span, did_you_mean
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.lint_output import format_text
from smtpfw.replay.build import DeclaredDns, make_record, null_sender, parse_header
from smtpfw.replay.session import ACCEPTED, NO_MAIL, Replayer, Verdict
from smtpfw.replay.trace import format_trace
from smtpfw.verdict import Stage

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_VERDICTS = {"accept": ACCEPTED, "no-mail": NO_MAIL, "reject": "rejected", "tempfail": "tempfailed",
             "disconnect": "disconnected"}
_STAGES = [s.value for s in Stage if s is not Stage.DISCONNECT]     # the hooks that run
_STATUSES = {
    LookupKind.DNSBL: ("listed", "clear", "failed"),
    LookupKind.RHSBL: ("listed", "clear", "failed"),
    LookupKind.PTR: ("found", "none", "failed"),
    LookupKind.RESOLVABLE: ("yes", "no", "nullmx", "failed"),
    LookupKind.ADDRESSES: ("found", "none", "failed"),
}
_NAMED_KINDS = {"ptr": LookupKind.PTR, "resolvable": LookupKind.RESOLVABLE, "addresses": LookupKind.ADDRESSES}
_SESSION_WORDS = ("client", "port", "tls", "auth", "unrecognized", "helo", "ehlo", "from", "rcpt", "header", "size",
                  "nodata", "at")


class SyntaxProblem(Exception):
    def __init__(self, message: str, column: int, width: int = 1, help: str | None = None):
        super().__init__(message)
        self.column, self.width, self.help = column, width, help


@dataclass
class Token:
    text: str
    column: int           # 1-based
    quoted: bool = False

    @property
    def value(self) -> str:
        if self.quoted:
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        return self.text


@dataclass
class Expectation:
    kind: str                       # a Verdict kind
    stage: str | None = None
    rule: str | None = None
    code: int | None = None
    text: str | None = None
    rule_token: Token | None = None

    def describe(self) -> str:
        words = {ACCEPTED: "accept", NO_MAIL: "no-mail", "rejected": "reject", "tempfailed": "tempfail",
                 "disconnected": "disconnect"}[self.kind]
        if self.stage:
            words += f" at {self.stage}"
        if self.rule:
            words += f" by {self.rule}"
        if self.code:
            words += f" code {self.code}"
        if self.text:
            words += f' text "{self.text}"'
        return words

    def holds(self, v: Verdict) -> bool:
        return (v.kind == self.kind
                and (self.stage is None or v.stage == self.stage)
                and (self.rule is None or v.rule == self.rule)
                and (self.code is None or v.code == self.code)
                and (self.text is None or self.text.lower() in (v.reply or "").lower()))


@dataclass
class Case:
    line: int
    end_line: int
    text: str                        # the test, as written (continuations joined)
    record: dict
    expect: Expectation
    expect_column: int
    expect_width: int


@dataclass
class SuiteFile:
    path: str
    rules: str
    cases: list = field(default_factory=list)
    dns: dict = field(default_factory=dict)
    diags: list = field(default_factory=list)


def tests_path_for(rules: str) -> str:
    return os.path.splitext(rules)[0] + ".tests"


def rules_path_for(tests: str) -> str:
    return os.path.splitext(tests)[0] + ".rules"


# ---- parsing -------------------------------------------------------------------

def _tokens(text: str) -> list[Token]:
    out = []
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t.startswith("#"):
            break
        if t.startswith('"') and (len(t) < 2 or not t.endswith('"')):
            raise SyntaxProblem("unterminated quoted text", m.start() + 1, len(t))
        out.append(Token(t, m.start() + 1, t.startswith('"') and len(t) >= 2))
    return out


def _logical_lines(text: str):
    """(first line number, last line number, text) with `\\` continuations
    joined; columns stay right for the first physical line."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        buf = lines[i]
        while buf.rstrip().endswith("\\") and i + 1 < len(lines):
            buf = buf.rstrip()[:-1] + " " + lines[i + 1]
            i += 1
        yield start + 1, i + 1, buf
        i += 1


def parse_tests(path: str, text: str, rule_ids: list[str] | None = None) -> SuiteFile:
    tf = SuiteFile(path, rules_path_for(path))
    dns_spans: dict = {}
    pending: list = []
    for first, last, line in _logical_lines(text):
        try:
            tokens = _tokens(line)
            if not tokens:
                continue
            if tokens[0].text in ("dns", "map"):
                lk, answer = (_parse_dns if tokens[0].text == "dns" else _parse_map)(tokens)
                if lk in tf.dns:
                    what = (f"map answer for {lk.key} in {lk.map}" if isinstance(lk, TableQuery) else
                            f"DNS answer for {lk.kind.value} {lk.name}{' in ' + lk.zone if lk.zone else ''}")
                    raise SyntaxProblem(f"{what} declared twice "
                                        f"(first on line {dns_spans[lk]})", tokens[0].column, len(line.rstrip()))
                tf.dns[lk], dns_spans[lk] = answer, first
                continue
            pending.append((first, last, line, tokens))
        except SyntaxProblem as p:
            tf.diags.append(_syntax(path, first, p, line))
    for first, last, line, tokens in pending:
        try:
            tf.cases.append(_parse_case(first, last, line, tokens, tf.dns, rule_ids))
        except SyntaxProblem as p:
            tf.diags.append(_syntax(path, first, p, line))
    return tf


def _syntax(path: str, line_no: int, p: SyntaxProblem, line: str) -> Diagnostic:
    width = max(1, min(p.width, len(line) - p.column + 1))
    return Diagnostic(Code.E902_EXPECTATION_SYNTAX,
                      str(p), Span(path, line_no, p.column, line_no, p.column + width), help=p.help)


def _ip(tok: Token, what: str) -> str:
    try:
        return str(ipaddress.ip_address(tok.value))
    except ValueError:
        raise SyntaxProblem(f"{what}: `{tok.value}` is not an IP address", tok.column, len(tok.text)) from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_dns(tokens: list[Token]) -> tuple[Lookup, DnsAnswer]:
    head = tokens[0]
    usage = ('write `dns ZONE NAME = listed|clear|failed ...`, `dns ptr IP = found NAME...|none|failed`, '
             '`dns resolvable DOMAIN = yes|no|nullmx|failed` or `dns addresses NAME = found IP...|none|failed`')
    try:
        eq = next(i for i, t in enumerate(tokens) if t.text == "=")
    except StopIteration:
        raise SyntaxProblem("a dns line needs `=` before the answer", head.column, 3, usage) from None
    left, right = tokens[1:eq], tokens[eq + 1:]
    if not right:
        raise SyntaxProblem("the answer is missing after `=`", tokens[eq].column, 1, usage)
    if len(left) != 2:
        raise SyntaxProblem("expected a zone (or ptr/resolvable/addresses) and a name before `=`",
                            head.column, 3, usage)
    what, name = left
    if what.value in _NAMED_KINDS:
        kind = _NAMED_KINDS[what.value]
        zone = ""
        key = _ip(name, "dns ptr") if kind is LookupKind.PTR else name.value.lower().rstrip(".")
        if kind is LookupKind.ADDRESSES and _is_ip(name.value.strip("[]")):
            raise SyntaxProblem(f"dns addresses: `{name.value}` is an address, not a host name",
                                name.column, len(name.text), usage)
    else:
        zone = what.value.lower().rstrip(".")
        try:
            key, kind = str(ipaddress.ip_address(name.value)), LookupKind.DNSBL
        except ValueError:
            key, kind = name.value.lower().rstrip("."), LookupKind.RHSBL
    status_tok = right[0]
    status = status_tok.value
    if status not in _STATUSES[kind]:
        article = "an" if kind.value[0] in "aeiou" else "a"
        raise SyntaxProblem(f"{article} {kind.value} answer is {', '.join(_STATUSES[kind])}; not `{status}`",
                            status_tok.column, len(status_tok.text))
    words = [t for t in right[1:] if not t.quoted]
    texts = [t.value for t in right[1:] if t.quoted]
    if len(texts) > 1:
        raise SyntaxProblem("only one quoted text per answer", right[-1].column, len(right[-1].text))
    text = texts[0] if texts else ""
    if status == "listed":
        codes = tuple(_ip(w, "return code") for w in words) or ("127.0.0.2",)
        return Lookup(kind, key, zone), DnsAnswer("listed", codes, text)
    if status == "found" and kind is LookupKind.ADDRESSES:
        if texts:
            raise SyntaxProblem("`found` takes addresses, not a quoted text", right[-1].column, len(right[-1].text))
        ips = {ipaddress.ip_address(_ip(w, "dns addresses")) for w in words}
        if not ips:
            raise SyntaxProblem("`found` needs at least one address", status_tok.column, len(status_tok.text))
        # as a live lookup answers: IPv4 then IPv6, each sorted
        codes = tuple(str(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip))))
        return Lookup(kind, key, zone), DnsAnswer("found", codes=codes)
    if status == "found":
        confirmed = True
        names = []
        for w in words:
            if w.value in ("confirmed", "unconfirmed"):
                confirmed = w.value == "confirmed"
            else:
                names.append(w.value.lower().rstrip("."))
        if not names:
            raise SyntaxProblem("`found` needs at least one host name", status_tok.column, len(status_tok.text))
        return Lookup(kind, key, zone), DnsAnswer("found", names=tuple(names), confirmed=confirmed)
    if words:
        raise SyntaxProblem(f"`{status}` takes no values", words[0].column, len(words[0].text))
    if status == "failed":
        return Lookup(kind, key, zone), DnsAnswer("failed", error=text or "declared failed")
    return Lookup(kind, key, zone), DnsAnswer(status)


def _parse_map(tokens: list[Token]) -> tuple[TableQuery, TableAnswer]:
    """`map NAME KEY = found "VALUE" | none | failed ["why"]`."""
    head = tokens[0]
    usage = 'write `map NAME KEY = found "VALUE"`, `map NAME KEY = none` or `map NAME KEY = failed "why"`'
    if len(tokens) < 5 or tokens[3].text != "=":
        raise SyntaxProblem("a map line is `map NAME KEY = ANSWER`", head.column, len(tokens[-1].text), usage)
    name, key, status = tokens[1], tokens[2], tokens[4]
    rest = tokens[5:]
    if status.value not in ("found", "none", "failed"):
        raise SyntaxProblem(f"a map answer is found, none or failed; not `{status.value}`", status.column,
                            len(status.text), usage)
    if len(rest) > 1 or rest and not rest[0].quoted:
        bad = rest[1] if len(rest) > 1 else rest[0]
        raise SyntaxProblem("the answer takes one quoted text", bad.column, len(bad.text), usage)
    text = rest[0].value if rest else ""
    query = TableQuery(name.value, key.value.lower())
    if status.value == "found":
        if not text:
            raise SyntaxProblem('`found` needs the value: found "VALUE"', status.column, len(status.text), usage)
        return query, TableAnswer("found", text)
    if status.value == "none":
        if rest:
            raise SyntaxProblem("`none` takes no value", rest[0].column, len(rest[0].text), usage)
        return query, NOT_FOUND
    return query, unavailable(text or "declared failed")


def _parse_case(first: int, last: int, line: str, tokens: list[Token], dns: dict,
                rule_ids: list[str] | None) -> Case:
    try:
        arrow = next(i for i, t in enumerate(tokens) if t.text == "->")
    except StopIteration:
        raise SyntaxProblem("a test needs `-> EXPECTED` (accept, reject at rcpt by RULE, ...)",
                            tokens[0].column, len(line.rstrip()) - tokens[0].column + 1) from None
    session, expect = tokens[:arrow], tokens[arrow + 1:]
    args: dict = {"rcpts": [], "headers": []}
    i = 0
    while i < len(session):
        t = session[i]
        word = t.value
        if word in ("tls", "nodata"):
            args["tls" if word == "tls" else "nodata"] = True
            i += 1
            continue
        if word not in _SESSION_WORDS:
            guess = did_you_mean(word, _SESSION_WORDS)
            raise SyntaxProblem(f"unknown word `{word}` in a test", t.column, len(t.text),
                                f"did you mean `{guess}`?" if guess else
                                "a test is made of: " + ", ".join(_SESSION_WORDS) + ", then -> and the verdict")
        if i + 1 >= len(session):
            raise SyntaxProblem(f"`{word}` needs a value", t.column, len(t.text))
        v = session[i + 1]
        if word == "client":
            args["ip"] = _ip(v, "client")
        elif word in ("port", "size", "unrecognized"):
            if not v.value.isdigit():
                raise SyntaxProblem(f"`{word}` takes a number, not `{v.value}`", v.column, len(v.text))
            args[word] = int(v.value)
        elif word == "auth":
            args["auth"] = v.value
        elif word == "at":
            args["at"] = _when(v)
        elif word in ("helo", "ehlo"):
            if "helo" in args:
                raise SyntaxProblem("one helo/ehlo per test", t.column, len(t.text))
            args["helo"], args["esmtp"] = v.value, word == "ehlo"
        elif word == "from":
            if "from" in args:
                raise SyntaxProblem("one `from` per test", t.column, len(t.text))
            args["from"] = null_sender(v.value)
        elif word == "rcpt":
            args["rcpts"].append(null_sender(v.value))
        elif word == "header":
            try:
                args["headers"].append(parse_header(v.value))
            except ValueError as err:
                raise SyntaxProblem(f"header: {err}", v.column, len(v.text)) from None
        i += 2
    if "from" in args and "helo" not in args:
        raise SyntaxProblem("`from` needs `helo NAME` or `ehlo NAME` first (a client greets before MAIL)",
                            tokens[0].column, 1)
    if args["rcpts"] and "from" not in args:
        raise SyntaxProblem("`rcpt` needs `from ADDR` (MAIL comes before RCPT)", tokens[0].column, 1)
    arrow_tok = tokens[arrow]
    exp = _parse_expectation(expect, arrow_tok, rule_ids)
    record = make_record(ip=args.get("ip", "192.0.2.1"), listener_port=args.get("port", 25),
                         helo=args.get("helo"), esmtp=args.get("esmtp", True), tls=args.get("tls", False),
                         auth_user=args.get("auth"), sender=args.get("from"), rcpts=args["rcpts"],
                         headers=args["headers"], size=args.get("size"), data=not args.get("nodata"),
                         session_id=f"test:{first}", dns=dns, unrecognized=args.get("unrecognized", 0),
                         started=args.get("at"))
    width = len(line.rstrip()) - arrow_tok.column + 1
    return Case(first, last, " ".join(t.text for t in tokens), record, exp, arrow_tok.column, width)


def _when(tok: Token) -> float:
    """`at 2026-11-30T14:05` (UTC) or with an offset (`...T14:05+01:00`):
    when the session began, for the time.* fields."""
    try:
        when = datetime.fromisoformat(tok.value.replace("Z", "+00:00"))
    except ValueError:
        raise SyntaxProblem(f"`at` takes a date and time like 2026-11-30T14:05, not `{tok.value}`",
                            tok.column, len(tok.text)) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _parse_expectation(tokens: list[Token], arrow: Token, rule_ids: list[str] | None) -> Expectation:
    if not tokens:
        raise SyntaxProblem("the expected verdict is missing after `->`", arrow.column, 2,
                            "write accept, no-mail, or reject/tempfail/disconnect [at STAGE] [by RULE] [code N]")
    head = tokens[0]
    kind = _VERDICTS.get(head.value)
    if kind is None:
        guess = did_you_mean(head.value, _VERDICTS)
        raise SyntaxProblem(f"unknown verdict `{head.value}`", head.column, len(head.text),
                            f"did you mean `{guess}`?" if guess else "verdicts: " + ", ".join(_VERDICTS))
    exp = Expectation(kind)
    rest = tokens[1:]
    if rest and kind in (ACCEPTED, NO_MAIL):
        raise SyntaxProblem(f"`{head.value}` takes no details", rest[0].column, len(rest[0].text))
    i = 0
    while i < len(rest):
        t = rest[i]
        if t.value not in ("at", "by", "code", "text"):
            raise SyntaxProblem(f"unexpected `{t.value}` in the verdict", t.column, len(t.text),
                                "after reject/tempfail/disconnect: at STAGE, by RULE, code N, text \"...\"")
        if i + 1 >= len(rest):
            raise SyntaxProblem(f"`{t.value}` needs a value", t.column, len(t.text))
        v = rest[i + 1]
        if t.value == "at":
            if v.value not in _STAGES:
                raise SyntaxProblem(f"unknown stage `{v.value}`", v.column, len(v.text),
                                    "stages: " + ", ".join(_STAGES))
            exp.stage = v.value
        elif t.value == "by":
            if rule_ids is not None and v.value not in rule_ids:
                guess = did_you_mean(v.value, rule_ids)
                raise SyntaxProblem(f"the ruleset has no rule `{v.value}`", v.column, len(v.text),
                                    f"did you mean `{guess}`?" if guess else
                                    "rule ids: " + ", ".join(rule_ids[:12]))
            exp.rule, exp.rule_token = v.value, v
        elif t.value == "code":
            if not (v.value.isdigit() and len(v.value) == 3):
                raise SyntaxProblem(f"`code` takes a 3-digit reply code, not `{v.value}`", v.column, len(v.text))
            exp.code = int(v.value)
        else:
            exp.text = v.value
        i += 2
    return exp


# ---- running -------------------------------------------------------------------

@dataclass
class CaseResult:
    case: Case
    verdict: Verdict
    passed: bool


def run_file(tf: SuiteFile, ruleset) -> tuple[list, list]:
    """(outcomes, diagnostics with traces) for one tests file."""
    dns = DeclaredDns(tf.dns)
    tracer = Replayer(ruleset, lambda rec: dns, synchronous_dns=True, trace=True, hostname="mx.test")
    # State carries from one test to the next (a limit, greylisting): then
    # every test runs traced, so a failure's trace shows the state it met.
    replayer = tracer if ruleset.stateful else Replayer(ruleset, lambda rec: dns, synchronous_dns=True,
                                                        hostname="mx.test")
    outcomes: list[CaseResult] = []
    failures: list[tuple[Diagnostic, str | None]] = []
    try:
        for case in tf.cases:
            try:
                result = replayer.replay(case.record)
            except Exception as err:        # a ruleset or plugin bug: report it on this test
                d = Diagnostic(Code.E901_EXPECTATION_FAILED,
                               f"the ruleset raised {type(err).__name__} on this test: {err}",
                               Span(tf.path, case.line, case.expect_column, case.line,
                                    case.expect_column + case.expect_width),
                               help="this is a bug in the rules engine or a plugin, not in the test")
                outcomes.append(CaseResult(case, Verdict("error"), False))
                failures.append((d, None))
                continue
            ok = case.expect.holds(result.verdict)
            outcomes.append(CaseResult(case, result.verdict, ok))
            if not ok:
                got = _describe_verdict(result.verdict)
                d = Diagnostic(Code.E901_EXPECTATION_FAILED, f"expected {case.expect.describe()}; got {got}",
                               Span(tf.path, case.line, case.expect_column, case.line,
                                    case.expect_column + case.expect_width),
                               help=_hint(case.expect, result.verdict))
                traced = result if replayer is tracer else tracer.replay(case.record)
                trace = format_trace(ruleset, tf.rules, traced,
                                     "declared in the tests file (undeclared lookups: empty DNS)")
                failures.append((d, trace))
    finally:
        replayer.close()
        if tracer is not replayer:
            tracer.close()
    return outcomes, failures


def _describe_verdict(v: Verdict) -> str:
    if v.kind in (ACCEPTED, NO_MAIL):
        return v.kind
    return f"{v.describe()}: {v.reply}"


def _hint(exp: Expectation, v: Verdict) -> str | None:
    if exp.kind == ACCEPTED and v.kind == NO_MAIL:
        return "the session never reached a recipient: give `from` and `rcpt`"
    if exp.kind not in (ACCEPTED, NO_MAIL) and v.kind == exp.kind and exp.rule and v.rule != exp.rule:
        return f"refused by `{v.rule}` first; rules run in order within a hook"
    return "the trace below shows how each rule decided"


def collect(paths: list[str]) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """([(rules, tests)], problems, rules without tests) from the arguments."""
    pairs, problems, untested = [], [], []
    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, names in os.walk(path):
                for n in sorted(names):
                    if n.endswith(".rules"):
                        rules = os.path.join(root, n)
                        tests = tests_path_for(rules)
                        (pairs.append((rules, tests)) if os.path.exists(tests) else untested.append(rules))
        elif path.endswith(".tests"):
            rules = rules_path_for(path)
            if not os.path.exists(path):
                problems.append(f"{path}: no such file")
            elif not os.path.exists(rules):
                problems.append(f"{path}: no ruleset {rules} beside it")
            else:
                pairs.append((rules, path))
        elif os.path.exists(path):
            tests = tests_path_for(path)
            if os.path.exists(tests):
                pairs.append((path, tests))
            else:
                problems.append(f"{path}: no tests file {tests} (see `smtpfw docs dry-run#ruleset-tests`)")
        else:
            problems.append(f"{path}: no such file or folder")
    return list(dict.fromkeys(pairs)), problems, untested


@dataclass
class SuiteRun:
    """One ruleset's tests file, run (or why it could not be)."""

    rules: str
    tests: str
    ruleset_diags: list = field(default_factory=list)   # the ruleset does not compile
    read_error: str | None = None                      # the tests file cannot be read
    text: str = ""
    outcomes: list = field(default_factory=list)
    found: list = field(default_factory=list)          # (Diagnostic, trace or None), by line
    unreadable: int = 0

    @property
    def loaded(self) -> bool:
        return not self.ruleset_diags and self.read_error is None

    @property
    def passed(self) -> int:
        return sum(1 for o in self.outcomes if o.passed)

    def summary(self) -> dict:
        return {"rules": self.rules, "tests": self.tests, "cases": len(self.outcomes), "passed": self.passed,
                "failed": len(self.outcomes) - self.passed, "unreadable": self.unreadable}


@dataclass
class RulesetTestsReport:
    """Every tests file `smtpfw test` ran; ``status`` is its exit code."""

    suites: list
    untested: list

    @property
    def loaded(self) -> list:
        return [s for s in self.suites if s.loaded]

    @property
    def status(self) -> int:
        if any(not s.loaded for s in self.suites):
            return 2
        return 1 if any(s.passed != len(s.outcomes) or s.unreadable for s in self.suites) else 0

    def to_json(self) -> dict:
        loaded = self.loaded
        total, passed = sum(len(s.outcomes) for s in loaded), sum(s.passed for s in loaded)
        return {"version": 1, "rulesets": [s.summary() for s in loaded], "untested": self.untested,
                "diagnostics": [{**d.to_json(), "trace": trace} for s in loaded for d, trace in s.found],
                "summary": {"tests": total, "passed": passed, "failed": total - passed,
                            "unreadable": sum(s.unreadable for s in loaded)}}


def run_suites(pairs: list[tuple[str, str]], untested: list[str]) -> RulesetTestsReport:
    """Run each (rules, tests) pair."""
    return RulesetTestsReport([_run_suite(rules, tests) for rules, tests in pairs], untested)


def _run_suite(rules: str, tests: str) -> SuiteRun:
    ruleset, diags = compile_ruleset(rules)
    if ruleset is None:
        return SuiteRun(rules, tests, ruleset_diags=list(diags))
    try:
        with open(tests, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        return SuiteRun(rules, tests, read_error=f"{tests}: cannot read: {getattr(e, 'strerror', None) or e}")
    rule_ids = list(dict.fromkeys(r.rule_id for r in ruleset.rules))
    tf = parse_tests(tests, text, rule_ids)
    outcomes, failures = run_file(tf, ruleset)
    found = sorted([(d, None) for d in tf.diags] + failures, key=lambda item: item[0].span.line)
    return SuiteRun(rules, tests, text=text, outcomes=outcomes, found=found, unreadable=len(tf.diags))


def format_suite(suite: SuiteRun, color: bool = False, verbose: bool = False) -> str:
    """A loaded suite's failures (lint format, each with its trace) and, verbose, every test."""
    out = []
    for d, trace in suite.found:
        out.append(format_text([d], {suite.tests: suite.text}, color=color))
        if trace:
            out.append("".join(f"   | {ln}\n" if ln else "   |\n" for ln in trace.rstrip("\n").split("\n")))
            out.append("\n")
    if verbose:
        out += [f"{'ok  ' if o.passed else 'FAIL'} {suite.tests}:{o.case.line}  {o.case.text}\n"
                for o in suite.outcomes]
    return "".join(out)


def format_summary(report: RulesetTestsReport, verbose: bool = False) -> str:
    """A line per loaded suite, then ok or FAILED."""
    out = []
    for s in report.loaded:
        line = f"{s.tests}: {len(s.outcomes)} test{'s' if len(s.outcomes) != 1 else ''}, {s.passed} passed"
        failed = len(s.outcomes) - s.passed
        if failed:
            line += f", {failed} failed"
        if s.unreadable:
            line += f", {s.unreadable} unreadable line{'s' if s.unreadable != 1 else ''}"
        out.append(line + "\n")
    if report.untested and verbose:
        out.append("no tests for: " + ", ".join(report.untested) + "\n")
    totals = report.to_json()["summary"]
    total, failed, broken = totals["tests"], totals["failed"], totals["unreadable"]
    if report.status == 0:
        n = len(report.loaded)
        out.append(f"ok: {total} test{'s' if total != 1 else ''} passed in {n} ruleset{'s' if n != 1 else ''}\n")
    else:
        parts = []
        if failed:
            parts.append(f"{failed} of {total} tests failed")
        if broken:
            parts.append(f"{broken} unreadable line{'s' if broken != 1 else ''}")
        if report.status == 2:
            parts.append("some rulesets could not be loaded")
        out.append("FAILED: " + ", ".join(parts) + "\n")
    return "".join(out)
