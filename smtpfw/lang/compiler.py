"""AST -> compiled hook chain: the one definition of what a ruleset means.

``compile_ruleset`` is called by serve (load and reload), lint, test,
dry-run and trace.  It reads every file it needs (rules, includes, lists)
once, so evaluating a session does no parsing and no file I/O.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

from smtpfw.checks.dnsresult import Lookup, LookupKind
from smtpfw.actions import action_for
from smtpfw.checks.lists import Entry, build_matcher, read_list_file
from smtpfw.diagnostics import Code, Diagnostic, Span, did_you_mean, has_errors
from smtpfw.engine import CompiledRule, Ruleset
from smtpfw.lang import ast
from smtpfw.lang.fields import (ADDRESS, BOOL, DOMAIN, EXTRA_PLACEHOLDERS, FIELDS, INT, IP, LIST,
                                STRING, FieldSpec, fold, lookup_field)
from smtpfw.lang.parser import MAX_SOURCE_BYTES, NOT_RUN_HOOKS, RUN_HOOKS, parse
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome, Stage

OPTIONS = {
    "mode": ("string", ("enforce", "monitor")),
    "delay_reject": ("boolean", ()),
    "reply_rule_id": ("boolean", ()),
}
MAX_INCLUDE_DEPTH = 16
# A `matches` or `like` test reads at most this many characters of the value:
# every envelope value fits (an SMTP command line is at most 512 octets), and a
# pattern whose cost grows with the square of its subject (`.*viagra` on a
# 60 KB folded Subject: 13 s) stays in milliseconds.  Exponential shapes are
# W403's job: 30 characters are enough for those.  (docs/rules.md, "Patterns")
MAX_PATTERN_SUBJECT = 4096

_OUTCOMES = {"accept": Outcome.ACCEPT, "reject": Outcome.REJECT,
             "tempfail": Outcome.TEMPFAIL, "disconnect": Outcome.DISCONNECT}
# Hook names the parser knows but the server never runs (parser.NOT_RUN_HOOKS)
# are refused (E109) so that no rule silently does nothing.
# Actions a hook can take (add_header only where there is a message).
_HOOK_ACTIONS = {"data": set(ast.ACTIONS)}


def _localnames() -> list[str]:
    import socket

    names = ["localhost", "localhost.localdomain", socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(n.lower().rstrip(".") for n in names if n))


# Lists every ruleset has without declaring them (a declaration of the same
# name takes precedence).
BUILTIN_LISTS: dict[str, Callable[[], list[str]]] = {"localnames": _localnames}

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass
class Program:
    """Everything read from disk for one ruleset, before compiling."""

    root: str
    rules: list[ast.Rule] = field(default_factory=list)
    lists: dict[str, tuple[ast.ListDecl, str]] = field(default_factory=dict)   # name -> (decl, base dir)
    zones: dict[str, ast.ZoneDecl] = field(default_factory=dict)
    plugins: dict[str, ast.PluginDecl] = field(default_factory=dict)
    options: dict[str, ast.OptionDecl] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def load_program(path: str | os.PathLike, text: str | None = None) -> tuple[Program, list[Diagnostic]]:
    """Read a ruleset and its includes, and collect its declarations."""
    prog = Program(root=str(path))
    diags: list[Diagnostic] = []
    _load_file(prog, str(path), text, diags, stack=[])
    return prog, diags


def _load_file(prog: Program, path: str, text: str | None, diags: list, stack: list[str],
               include_span: Span | None = None) -> None:
    real = os.path.realpath(path)
    if real in stack:
        diags.append(Diagnostic(Code.E003_INCLUDE_ERROR, f"{path} includes itself (through {' -> '.join(stack)})",
                                include_span, help="remove the include that closes the loop"))
        return
    if len(stack) >= MAX_INCLUDE_DEPTH:
        diags.append(Diagnostic(Code.E003_INCLUDE_ERROR,
                                f"includes nested deeper than {MAX_INCLUDE_DEPTH}", include_span))
        return
    if text is None:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):    # a FIFO would block, a device never end
                raise OSError(0, "not a regular file")
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SOURCE_BYTES + 1)     # not all of /dev/zero or a stray log
        except OSError as err:
            code = Code.E003_INCLUDE_ERROR if include_span else Code.E001_IO_ERROR
            diags.append(Diagnostic(code, f"cannot read {path}: {err.strerror or err}",
                                    include_span or Span.point(path, 1, 1)))
            return
        if len(raw) > MAX_SOURCE_BYTES:
            diags.append(Diagnostic(Code.E003_INCLUDE_ERROR if include_span else Code.E001_IO_ERROR,
                                    f"{path} is larger than {MAX_SOURCE_BYTES // 2**20} MiB: is it a rule file?",
                                    include_span or Span.point(path, 1, 1)))
            return
        text = raw.decode("utf-8", errors="replace")
    prog.sources[path] = text
    prog.files.append(path)
    tree, parse_diags = parse(text, path)
    diags.extend(parse_diags)
    if tree is None:
        return
    base = os.path.dirname(path)
    for st in tree.statements:
        if isinstance(st, ast.HookHeader) and st.name in NOT_RUN_HOOKS:
            diags.append(_hook_not_run(st))
        elif isinstance(st, ast.Include):
            _load_file(prog, os.path.join(base, st.path), None, diags, stack + [real], st.span)
        elif isinstance(st, ast.Rule):
            prog.rules.append(st)
        elif isinstance(st, ast.ListDecl):
            _declare(prog.lists, st.name, (st, base), st.name_span, "list", diags)
        elif isinstance(st, ast.ZoneDecl):
            _declare(prog.zones, st.name, st, st.name_span, "zone", diags)
        elif isinstance(st, ast.PluginDecl):
            _declare(prog.plugins, st.name, st, st.name_span, "plugin", diags)
        elif isinstance(st, ast.OptionDecl):
            prog.options[st.name] = st


def _hook_not_run(header: ast.HookHeader) -> Diagnostic:
    """`on disconnect:` parses, but the server never runs it: say so, once per header."""
    return Diagnostic(
        Code.E109_HOOK_NEVER_RUNS, f"`on {header.name}:` rules never run: smtpfw has no {header.name} hook",
        header.span,
        help="the hooks that run are " + ", ".join(RUN_HOOKS) + "; the session log line already records "
             "how each session ended, and a `log` or `tag` rule in one of those hooks can note more")


def _declare(table: dict, name: str, value, span: Span, what: str, diags: list) -> None:
    if name in table:
        first = table[name][0] if isinstance(table[name], tuple) else table[name]
        diags.append(Diagnostic(Code.E107_DUPLICATE_NAME,
                                f"{what} `{name}` is declared twice (first at {first.span})", span,
                                help="rename one of them or remove the duplicate"))
        return
    table[name] = value


def compile_ruleset(path: str | os.PathLike, text: str | None = None,
                    plugins: str = "construct") -> tuple[Ruleset | None, list[Diagnostic]]:
    """Compile a ruleset file.  Returns (None, diagnostics) if any error.
    ``plugins``: "construct" (to run them), "inspect" (import the class and
    read its fields: a check opens nothing) or "skip"."""
    try:
        prog, diags = load_program(path, text)
    except RecursionError:
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, "rules nested too deeply", Span.point(str(path), 1, 1))]
    return compile_program(prog, diags, plugins)


def compile_program(prog: Program, diags: list[Diagnostic],
                    plugins: str = "construct") -> tuple[Ruleset | None, list[Diagnostic]]:
    """Compile what ``load_program`` read (lint uses the Program as well)."""
    diags = list(diags)
    try:
        ruleset = _Compiler(prog, diags, plugins).compile()
    except RecursionError:
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, "rules nested too deeply", Span.point(prog.root, 1, 1))]
    diags = dedupe(diags)
    if has_errors(diags):
        return None, diags
    return ruleset, diags


def dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    """Each problem once, in file order."""
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return sorted(out, key=Diagnostic.sort_key)


class _Compiler:
    def __init__(self, prog: Program, diags: list[Diagnostic], plugins: str):
        self.prog = prog
        self.diags = diags
        self.plugins = plugins                  # construct | inspect | skip (see compile_ruleset)
        self.list_entries: dict[str, Sequence[Entry] | None] = {}
        self.matchers: dict[tuple, Callable | None] = {}
        self.plugin_objects: dict[str, object] = {}
        self.plugin_fields: dict[str, FieldSpec] = {}
        self.fact_needs: dict[Stage, dict] = {}
        self.fact_starts: dict[Stage, dict] = {}
        self.used_lists: set[str] = set()
        self.used_zones: set[str] = set()
        self.zones_used: set = set()            # (LookupKind, zone) the rules look up: health-checked
        self.used_plugins: set[str] = set()
        self.version_parts: list[bytes] = []
        self.list_files: list[str] = []

    def error(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self.diags.append(Diagnostic(code, message, span, help=help))

    # ---- top level ----------------------------------------------------------

    def compile(self) -> Ruleset:
        options = self._options()
        self._plugins()
        rules: list[CompiledRule] = []
        ids: dict[str, ast.Rule] = {}
        for rule in self.prog.rules:
            if rule.label_given:
                if rule.rule_id in ids:
                    self.error(Code.E107_DUPLICATE_NAME,
                               f"rule id `{rule.rule_id}` is used twice (first at {ids[rule.rule_id].span})",
                               rule.span, help="give each rule its own id")
                ids[rule.rule_id] = rule
            if rule.hook not in RUN_HOOKS:
                continue
            compiled = self._rule(rule, options)
            if compiled is not None:
                rules.append(compiled)
        hooks = {stage: tuple(r for r in rules if r.stage is stage) for stage in Stage}
        for path in self.prog.files:
            self.version_parts.insert(0, self.prog.sources[path].encode("utf-8", "replace"))
        version = hashlib.sha256(b"\0".join(self.version_parts)).hexdigest()[:12]
        return Ruleset(
            version=version,
            hooks=hooks,
            options=options,
            fact_needs={s: tuple(v.values()) for s, v in self.fact_needs.items()},
            fact_starts={s: tuple(v.values()) for s, v in self.fact_starts.items()},
            plugins=self.plugin_objects,
            sources=dict(self.prog.sources),
            rules=tuple(rules),
            files=tuple(self.prog.files) + tuple(self.list_files),
            zones=tuple(sorted(self.zones_used)),
        )

    def _options(self) -> dict[str, object]:
        out: dict[str, object] = {"mode": "enforce", "delay_reject": False, "reply_rule_id": False}
        for name, decl in self.prog.options.items():
            if name not in OPTIONS:
                guess = did_you_mean(name, OPTIONS)
                self.error(Code.E106_UNKNOWN_OPTION, f"unknown option `{name}`", decl.span,
                           help=(f"did you mean `{guess}`? " if guess else "") + "options are: " + ", ".join(OPTIONS))
                continue
            kind, choices = OPTIONS[name]
            v = decl.value
            if v.kind != kind or (choices and v.value not in choices):
                want = " or ".join(f'"{c}"' for c in choices) if choices else "yes or no"
                self.error(Code.E106_UNKNOWN_OPTION, f"option `{name}` takes {want}, not {v.text}", v.span)
                continue
            out[name] = v.value
        return out

    def _plugins(self) -> None:
        from smtpfw.plugins import PluginError, load_plugin, plugin_class

        for name, decl in self.prog.plugins.items():
            if self.plugins == "skip":
                continue
            try:
                if self.plugins == "inspect":
                    obj: object = plugin_class(decl.target)
                else:
                    obj = load_plugin(decl.target, dict(decl.args))
            except PluginError as err:
                self.error(Code.E801_PLUGIN_LOAD_ERROR, f"plugin `{name}`: {err}", decl.span,
                           help="a plugin is named as \"package.module:ClassName\"")
                continue
            if self.plugins == "construct":          # a checked ruleset holds no plugin to run
                self.plugin_objects[name] = obj
            for fname, ftype in getattr(obj, "fields", {}).items():
                full = f"{name}.{fname}"
                self.plugin_fields[full] = FieldSpec(full, ftype, Stage.CONNECT,
                                                     _plugin_field(full, 0 if ftype == INT else ""),
                                                     f"set by plugin {name}")

    # ---- rules --------------------------------------------------------------

    def _rule(self, rule: ast.Rule, options: dict) -> CompiledRule | None:
        stage = Stage(rule.hook)
        action = rule.action
        allowed = _HOOK_ACTIONS.get(rule.hook, set(ast.ACTIONS) - {"add_header"})
        ok = True
        if action.kind not in allowed:
            self.error(Code.E203_ACTION_NOT_ALLOWED,
                       f"`{action.kind}` cannot be used in `on {rule.hook}:`", action.span,
                       help="add_header works only in `on data:`")
            ok = False
        leaves: list = []
        listings: list = []
        test = None
        if rule.condition is not None:
            test = self._cond(rule.condition, stage, leaves, listings)
            if test is None:
                ok = False
        code = enhanced = None
        render_text = render_arg = None
        outcome = _OUTCOMES.get(action.kind)
        if action.reply is not None:
            code, enhanced = self._reply_codes(action.kind, action.reply)
            if action.reply.text is not None:
                text = action.reply.text
                if options.get("reply_rule_id"):
                    text += f" ({rule.rule_id})"
                render_text = self._template(text, action.reply.span, stage, listings, rule.rule_id)
                if render_text is None:
                    ok = False
        if action.kind in ("log", "warn", "add_header"):
            value = action.arg2 if action.kind == "add_header" else action.arg
            render_arg = self._template(value or "", action.arg_span, stage, listings, rule.rule_id)
            if render_arg is None:
                ok = False
            if action.kind == "add_header" and not re.fullmatch(r"[!-9;-~]+", action.arg or ""):
                self.error(Code.E202_TYPE_MISMATCH, f"`{action.arg}` is not a valid header name", action.arg_span)
                ok = False
        if action.kind == "run":
            plugin = action.arg or ""
            self.used_plugins.add(plugin)
            if plugin not in self.prog.plugins:
                guess = did_you_mean(plugin, self.prog.plugins)
                self.error(Code.E105_UNKNOWN_PLUGIN, f"unknown plugin `{action.arg}`", action.arg_span,
                           help=f"did you mean `{guess}`?" if guess else
                           "declare it first: plugin NAME = \"package.module:Class\"")
                ok = False
        if not ok:
            return None
        return CompiledRule(
            rule_id=rule.rule_id, stage=stage, kind=action.kind, outcome=outcome, test=test,
            code=code, enhanced=enhanced, render_text=render_text, render_arg=render_arg,
            arg=action.arg, action=action_for(action.kind, action.arg, render_arg), monitor=rule.monitor,
            node=rule, leaves=tuple(leaves), equality=getattr(test, "equality", None))

    def _reply_codes(self, kind: str, reply: ast.Reply) -> tuple[int | None, str | None]:
        code, enhanced = reply.code, reply.enhanced
        want = {"reject": "5", "tempfail": "4", "disconnect": "45", "accept": "2"}.get(kind, "")
        if code is not None:
            if not (200 <= code <= 599) or str(code)[0] not in want:
                fix = {"reject": "a 5xx code such as 550 or 554", "tempfail": "a 4xx code such as 450 or 451",
                       "disconnect": "421 (or a 5xx code)"}.get(kind, "")
                other = {"4": "tempfail", "5": "reject"}.get(str(code)[0])
                self.error(Code.E501_REPLY_CODE_CONTRADICTS_ACTION,
                           f"`{kind} {code}`: {code} does not fit `{kind}`", reply.span,
                           help=f"use {fix}" + (f", or write `{other}` if {code} is what you mean" if other and other != kind else ""))
                return None, None
        if enhanced is not None:
            klass = enhanced.split(".")[0]
            parts = [int(p) for p in enhanced.split(".")]
            if parts[1] > 999 or parts[2] > 999:
                self.error(Code.E502_BAD_ENHANCED_CODE, f"enhanced status code {enhanced} is malformed", reply.span,
                           help="write class.subject.detail, e.g. 5.7.1 (RFC 3463)")
            elif code is not None and str(code)[0] != klass:
                self.error(Code.E502_BAD_ENHANCED_CODE,
                           f"enhanced status code {enhanced} contradicts reply code {code}", reply.span,
                           help=f"use {str(code)[0]}.{parts[1]}.{parts[2]}")
            elif code is None and klass not in want:
                self.error(Code.E502_BAD_ENHANCED_CODE,
                           f"enhanced status code {enhanced} does not fit `{kind}`", reply.span,
                           help=f"a {kind} takes a {want[0]}.x.x code")
        return code, enhanced

    def _template(self, text: str, span: Span | None, stage: Stage, listings: list,
                  rule_id: str) -> Callable[[SessionState], str] | None:
        """Compile "{placeholder}" text; unknown or not-yet-known fields are errors."""
        parts: list = []
        pos = 0
        ok = True
        escaped = text.replace("{{", "\0").replace("}}", "\1")
        for m in _PLACEHOLDER.finditer(escaped):
            parts.append(escaped[pos:m.start()].replace("\0", "{").replace("\1", "}"))
            pos = m.end()
            name = m.group(1).strip()
            getter = self._placeholder(name, span, stage, listings, rule_id)
            if getter is None:
                ok = False
            parts.append(getter)
        parts.append(escaped[pos:].replace("\0", "{").replace("\1", "}"))
        if not ok:
            return None
        parts = [p for p in parts if p != ""]
        if all(isinstance(p, str) for p in parts):
            constant = "".join(parts)
            return lambda s: constant

        def render(s: SessionState, parts=tuple(parts)) -> str:
            return "".join(p if isinstance(p, str) else _safe_text(p(s)) for p in parts)
        return render

    def _placeholder(self, name: str, span, stage: Stage, listings: list, rule_id: str):
        if name == "rule":
            return lambda s: rule_id
        if name == "session":
            return lambda s: s.session_id
        if name in EXTRA_PLACEHOLDERS:
            kind, _, attr = name.partition(".")
            mine = [(make, zone) for (k, make, zone) in listings if k == kind]
            if not mine:
                self.error(Code.E503_UNKNOWN_PLACEHOLDER,
                           f"{{{name}}} needs a `listed in` {kind} test in the same rule", span,
                           help=f"add `... listed in <{kind} zone>` to this rule's condition")
                return None

            def listing(s, mine=tuple(mine), attr=attr):
                for make, zone in mine:
                    lk = make(s)
                    a = s.facts.get(lk) if lk is not None else None
                    if a is not None and a.status == "listed":
                        return {"zone": zone, "code": ",".join(a.codes), "txt": a.txt}[attr]
                return ""
            return listing
        spec = lookup_field(name, self.plugin_fields)
        if spec is None:
            guess = did_you_mean(name, list(FIELDS) + list(EXTRA_PLACEHOLDERS) + list(self.plugin_fields))
            self.error(Code.E503_UNKNOWN_PLACEHOLDER, f"unknown placeholder {{{name}}}", span,
                       help=f"did you mean {{{guess}}}?" if guess else "placeholders are field names, e.g. {client.ip}")
            return None
        if not self._available(spec, stage, span):
            return None
        if spec.lookup is not None:
            self._need_lookup(spec.name, spec.lookup, spec.stage, stage)
        return spec.get

    # ---- conditions ---------------------------------------------------------

    def _field(self, f: ast.Field, stage: Stage) -> FieldSpec | None:
        spec = lookup_field(f.name, self.plugin_fields)
        if spec is None:
            cands = list(FIELDS) + list(self.plugin_fields)
            guess = did_you_mean(f.name, cands)
            if f.name in self.prog.lists:
                hint = f"`{f.name}` is a list: write `<field> in {f.name}`"
            else:
                hint = (f"did you mean `{guess}`?" if guess else
                        "fields are e.g. client.ip, helo, sender, sender.domain, rcpt, rcpt.domain")
            self.error(Code.E102_UNKNOWN_FIELD, f"unknown field `{f.name}`", f.span, help=hint)
            return None
        if not self._available(spec, stage, f.span):
            return None
        if spec.lookup is not None:
            self._need_lookup(spec.name, spec.lookup, spec.stage, stage)
        return spec

    def _available(self, spec: FieldSpec, stage: Stage, span) -> bool:
        if spec.stage.order > stage.order:
            self.error(Code.E201_FIELD_NOT_AVAILABLE, f"`{spec.name}` is not known yet in `on {stage.value}:`", span,
                       help=f"`{spec.name}` is known from `on {spec.stage.value}:` on; move the rule there")
            return False
        return True

    def _need_lookup(self, key: str, make, input_stage: Stage, stage: Stage) -> None:
        self.fact_needs.setdefault(stage, {})[key] = make
        self.fact_starts.setdefault(input_stage, {})[key] = make

    def _cond(self, node, stage: Stage, leaves: list, listings: list):
        if isinstance(node, ast.And):
            tests = [self._cond(n, stage, leaves, listings) for n in node.operands]
            if any(t is None for t in tests):
                return None
            return _all(tests)
        if isinstance(node, ast.Or):
            tests = [self._cond(n, stage, leaves, listings) for n in node.operands]
            if any(t is None for t in tests):
                return None
            return _any(tests)
        if isinstance(node, ast.Not):
            inner = self._cond(node.operand, stage, leaves, listings)
            return None if inner is None else (lambda s, t=inner: not t(s))
        test = self._leaf(node, stage, listings)
        if test is not None:
            leaves.append((node, test))
        return test

    def _leaf(self, node, stage: Stage, listings: list):
        if isinstance(node, ast.Tagged):
            tag = node.tag
            return lambda s: tag in s.tags
        spec = self._field(node.field, stage)
        if spec is None:
            return None
        get = spec.get
        if isinstance(node, ast.Truthy):
            if spec.type == LIST:
                return lambda s: bool(get(s))
            if spec.type != BOOL:
                self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is {_tname(spec.type)}, not yes/no", node.span,
                           help=f"compare it, e.g. `{spec.name} = \"...\"` or `{spec.name} in <list>`")
                return None
            return lambda s: bool(get(s))
        if isinstance(node, ast.Compare):
            return self._compare(spec, node)
        if isinstance(node, ast.Member):
            return self._member(spec, node)
        if isinstance(node, ast.Pattern):
            return self._pattern(spec, node)
        if isinstance(node, (ast.Listed, ast.LookupFailed)):
            return self._listed(spec, node, stage, listings)
        raise AssertionError(f"unknown condition node {node!r}")

    def _compare(self, spec: FieldSpec, node: ast.Compare):
        v, op, get = node.value, node.op, spec.get
        if op in ("<", "<=", ">", ">="):
            if spec.type != INT:
                self.error(Code.E202_TYPE_MISMATCH,
                           f"`{op}` compares numbers, but `{spec.name}` is {_tname(spec.type)}", node.span,
                           help="use = or != for text; numeric fields are e.g. message.size, rcpt.count")
                return None
            if v.kind != "number":
                self.error(Code.E202_TYPE_MISMATCH, f"`{op}` compares numbers, but {v.text} is not a number", v.span,
                           help="write a number, optionally with K, M or G: `message.size > 10M`")
                return None
            n = v.value
            return {"<": lambda s: get(s) < n, "<=": lambda s: get(s) <= n,
                    ">": lambda s: get(s) > n, ">=": lambda s: get(s) >= n}[op]
        value = self._coerce(spec, v)
        if value is _BAD:
            return None
        get = spec.compared
        if spec.type == LIST:
            return (lambda s: value in get(s)) if op == "=" else (lambda s: value not in get(s))
        if op != "=":
            return lambda s: get(s) != value

        def equals(s):
            return get(s) == value
        equals.equality = (get, value)  # type: ignore[attr-defined]  # lets the engine index `field = value` rules
        return equals

    def _coerce(self, spec: FieldSpec, v: ast.Value):
        t = spec.type
        if t == INT:
            if v.kind != "number":
                self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is a number; {v.text} is not", v.span)
                return _BAD
            return v.value
        if t == BOOL:
            if v.kind != "boolean":
                self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is yes or no; {v.text} is not", v.span,
                           help=f"write `{spec.name}` or `not {spec.name}`")
                return _BAD
            return v.value
        if t == IP:
            try:
                return str(ipaddress.ip_address(str(v.value)))
            except ValueError:
                self.error(Code.E202_TYPE_MISMATCH, f"{v.text} is not an IP address", v.span,
                           help="to test a network, write `client.ip in 10.0.0.0/8`" if "/" in str(v.value) else None)
                return _BAD
        if v.kind != "string" and not (v.kind == "address" and t in (STRING, DOMAIN)):
            self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is {_tname(t)}; write the value in quotes", v.span)
            return _BAD
        text = fold(t, str(v.value))
        if spec.choices and text not in spec.choices:
            guess = did_you_mean(text, spec.choices)
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`{spec.name}` is one of {', '.join(spec.choices)}; not {v.text}", v.span,
                       help=f"did you mean \"{guess}\"?" if guess else None)
            return _BAD
        return text

    def _member(self, spec: FieldSpec, node: ast.Member):
        if node.within and spec.type != DOMAIN:
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`within` tests domains; `{spec.name}` is {_tname(spec.type)}", node.span,
                       help="use a domain field such as sender.domain or rcpt.domain")
            return None
        if spec.type == BOOL:
            self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is yes or no; it cannot be `in` a list", node.span)
            return None
        element_type = ADDRESS if spec.type == LIST else spec.type
        matcher = self._matcher(node.target, element_type, node.within)
        if matcher is None:
            return None
        get = spec.compared
        if spec.type == LIST:
            test = lambda s: any(matcher(x) for x in get(s))
        else:
            test = lambda s: matcher(get(s))
        return (lambda s: not test(s)) if node.negated else test

    def _matcher(self, target, ftype: str, within: bool):
        if isinstance(target, ast.ListRef):
            name = target.name
            self.used_lists.add(name)
            if name not in self.prog.lists and name not in BUILTIN_LISTS:
                guess = did_you_mean(name, list(self.prog.lists) + list(BUILTIN_LISTS))
                self.error(Code.E103_UNKNOWN_LIST, f"unknown list `{name}`", target.span,
                           help=f"did you mean `{guess}`?" if guess else
                           f"declare it: list {name} = file \"lists/{name}\"")
                return None
            key = (name, ftype, within)
            if key not in self.matchers:
                entries = self._list_entries(name)
                if entries is None:
                    self.matchers[key] = None
                else:
                    m, diags = build_matcher(entries, ftype, within)
                    self.diags.extend(diags)
                    self.matchers[key] = m
            return self.matchers[key]
        if isinstance(target, ast.InlineList):
            entries = [Entry(str(v.value), v.span) for v in target.items]
        else:
            entries = [Entry(str(target.value), target.span)]
        m, diags = build_matcher(entries, ftype, within)
        self.diags.extend(diags)
        return None if any(d.code == Code.E302_LIST_ENTRY_MALFORMED for d in diags) else m

    def _list_entries(self, name: str) -> Sequence[Entry] | None:
        if name in self.list_entries:
            return self.list_entries[name]
        if name not in self.prog.lists and name in BUILTIN_LISTS:
            span = Span.point("<built-in>", 1, 1)
            return [Entry(text, span) for text in BUILTIN_LISTS[name]()]
        decl, base = self.prog.lists[name]
        entries: Sequence[Entry] | None
        if decl.items is not None:
            entries = [Entry(str(v.value), v.span) for v in decl.items.items]
        else:
            path = os.path.join(base, decl.file or "")
            entries, diags = read_list_file(path, _shown(path))
            for d in diags:
                self.error(d.code, d.message, decl.span,
                           help=f"the path is relative to the rule file's folder ({base or '.'})")
            if entries is not None:
                self.list_files.append(path)
                try:
                    self.version_parts.append(Path(path).read_bytes())
                except OSError:
                    pass
        self.list_entries[name] = entries
        return entries

    def _pattern(self, spec: FieldSpec, node: ast.Pattern):
        if spec.type in (BOOL, LIST, INT):
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`{node.kind}` tests text; `{spec.name}` is {_tname(spec.type)}", node.span)
            return None
        source = str(node.pattern.value)
        if node.kind == "glob":
            source = fnmatch.translate(source)
        try:
            rx = re.compile(source, re.IGNORECASE)
        except re.error as err:
            self.error(Code.E401_BAD_REGEX, f"invalid regular expression: {err.msg}", node.pattern.span,
                       help="regular expressions use Python syntax; write \\. for a literal dot")
            return None
        search = rx.search if node.kind == "regex" else rx.match
        get, end = spec.compared, MAX_PATTERN_SUBJECT
        if node.negated:
            return lambda s: search(str(get(s)), 0, end) is None
        return lambda s: search(str(get(s)), 0, end) is not None

    def _listed(self, spec: FieldSpec, node, stage: Stage, listings: list):
        zref = node.zone
        if zref.name is not None:
            self.used_zones.add(zref.name)
            decl = self.prog.zones.get(zref.name)
            if decl is None:
                guess = did_you_mean(zref.name, self.prog.zones)
                self.error(Code.E104_UNKNOWN_ZONE, f"unknown zone `{zref.name}`", zref.span,
                           help=f"did you mean `{guess}`?" if guess else
                           f"declare it: zone {zref.name} = dnsbl \"zone.example\"")
                return None
            kind, domain, zone_codes = decl.kind, decl.domain, decl.codes
        else:
            kind, domain, zone_codes = zref.kind, zref.domain, None
        want = IP if kind == "dnsbl" else DOMAIN
        if spec.type != want:
            hint = ("a dnsbl zone is looked up by IP: use client.ip" if kind == "dnsbl"
                    else "an rhsbl zone is looked up by domain: use sender.domain, helo or rcpt.domain")
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`{spec.name}` is {_tname(spec.type)}; a {kind} zone needs a{'n IP' if want == IP else ' domain'}",
                       node.field.span, help=hint)
            return None
        lk_kind = LookupKind.DNSBL if kind == "dnsbl" else LookupKind.RHSBL
        self.zones_used.add((lk_kind, domain.strip(".").lower()))
        get = spec.get

        def make(s, get=get, lk_kind=lk_kind, domain=domain):
            value = get(s)
            return Lookup(lk_kind, value, domain) if value else None

        self._need_lookup(f"{kind}:{domain}:{spec.name}", make, spec.stage, stage)
        if isinstance(node, ast.LookupFailed):
            def failed(s):
                lk = make(s)
                a = s.facts.get(lk) if lk is not None else None
                return lk is not None and (a is None or a.status == "failed")
            return failed
        codes_ok = _code_filter([f for f in (zone_codes, node.codes) if f is not None])
        listings.append((kind, make, domain))

        def listed(s):
            lk = make(s)
            if lk is None:
                return False
            a = s.facts.get(lk)
            return a is not None and a.status == "listed" and codes_ok(a.codes)
        if node.negated:
            return lambda s: not listed(s)
        return listed


_TYPE_NAMES = {"int": "number", "ip": "IP address", "domain": "domain", "address": "address",
               "string": "text", "bool": "yes/no value", "list": "list of addresses"}


def _tname(ftype: str) -> str:
    name = _TYPE_NAMES.get(ftype, ftype)
    return ("an " if name[0] in "aeiouAEIOU" else "a ") + name


class _Bad:
    pass


_BAD = _Bad()


def _all(tests):
    if len(tests) == 2:
        a, b = tests
        return lambda s: a(s) and b(s)
    return lambda s: all(t(s) for t in tests)


def _any(tests):
    if len(tests) == 2:
        a, b = tests
        return lambda s: a(s) or b(s)
    return lambda s: any(t(s) for t in tests)


def _code_filter(filters: list[ast.CodeFilter]):
    """A test over a listing's A records: every filter must accept some code."""
    if not filters:
        return lambda codes: True

    def accepts(f: ast.CodeFilter, code: str) -> bool:
        try:
            ip = ipaddress.ip_address(code)
        except ValueError:
            return False
        if code in f.exact:
            return True
        for lo, hi in f.ranges:
            if ipaddress.ip_address(lo) <= ip <= ipaddress.ip_address(hi):  # type: ignore[operator]  # IPv4 A records
                return True
        last = int(ip) & 0xFF
        return any(last & m for m in f.masks)

    return lambda codes: all(any(accepts(f, c) for c in codes) for f in filters)


def _safe_text(value) -> str:
    """Values go into SMTP replies and logs: no line breaks, printable."""
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:400]


def _plugin_field(key: str, default: object) -> Callable[[SessionState], Any]:
    """The getter of a field a plugin sets (``default`` until it does)."""
    return lambda s: s.plugin_fields.get(key, default)


def _shown(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("../../..") else path
    except ValueError:
        return path
