"""AST -> compiled hook chain: the one definition of what a ruleset means.

``compile_ruleset`` is called by serve (load and reload), lint, test,
dry-run and trace.  It reads every file it needs (rules, includes, lists)
once, so evaluating a session does no parsing and no file I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import math
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
from smtpfw.checks.lists import Entry, build_matcher, prefetch, read_list_file
from smtpfw.diagnostics import Code, Diagnostic, Span, did_you_mean, has_errors
from smtpfw.engine import CompiledRule, Ruleset
from smtpfw.lang import ast
from smtpfw.actions import AddCount, ApplyMap, UseClass
from smtpfw.lang.deferral import decided_late
from smtpfw.lang.access_values import AccessValues
from smtpfw.lang.fields import (ADDRESS, BOOL, DOMAIN, EXTRA_PLACEHOLDERS, FIELDS, FORMS, INT, IP, LIST, ORDERED,
                                SCORE_PREFIX, STRING, FieldSpec, fold, lazy_answer, lookup_field)
from smtpfw.facts.base import LookupFailed
from smtpfw.maps.regex import compile_regex
from smtpfw.maps.regexp import RegexpMap
from smtpfw.maps.tables import KINDS as TABLE_KINDS, Table, TableQuery, load_table, unavailable as table_unavailable
from smtpfw.state.facts import CounterKey, RateKey, SlotKey, counter_store_key
from smtpfw.lang.parser import MAX_SOURCE_BYTES, NOT_RUN_HOOKS, RUN_HOOKS, parse
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome, Stage

LIMIT_PREFIX = "limit."
COUNTER_PREFIX = "counter."
MAX_TARPIT = 300
SLOT_TTL = 3600.0      # a concurrency slot of a session that never ended (a crash) is free after this
LIMIT_ATTRS = ("exceeded", "count", "percent", "retry")
OPTIONS = {
    "mode": ("string", ("enforce", "monitor")),
    "delay_reject": ("boolean", ("rcpt", "data")),     # yes = "rcpt"
    "reply_rule_id": ("boolean", ()),
    "timezone": ("string", ()),                       # for time.* fields; default UTC
    "authentication_results": ("string", ()),         # authserv-id: SPF, DKIM, DMARC, ARC asked, the header added
}
MAX_INCLUDE_DEPTH = 16
# A `matches` or `like` test reads at most this many characters of the value:
# every envelope value fits (an SMTP command line is at most 512 octets), and
# the cost of a test is bounded by it.  Patterns run on RE2 (linear time, no
# backtracking, smtpfw.maps.regex), so no pattern shape can stall a worker.
# (docs/rules.md, "Patterns")
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
    maps: dict[str, tuple[ast.MapDecl, str]] = field(default_factory=dict)     # name -> (decl, base dir)
    limits: dict[str, ast.LimitDecl] = field(default_factory=dict)
    counters: dict[str, ast.CounterDecl] = field(default_factory=dict)
    classes: dict[str, list[ast.Rule]] = field(default_factory=dict)           # restriction classes
    class_headers: dict[str, ast.ClassHeader] = field(default_factory=dict)   # first header of each class
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
            if st.klass is not None:
                prog.classes.setdefault(st.klass, []).append(st)
            else:
                prog.rules.append(st)
        elif isinstance(st, ast.ClassHeader):
            prog.class_headers.setdefault(st.name, st)
            prog.classes.setdefault(st.name, [])
        elif type(st) in _DECLARATIONS:
            table, what, with_base = _DECLARATIONS[type(st)]
            _declare(getattr(prog, table), st.name, (st, base) if with_base else st,
                     st.name_span, what, diags)                                        # type: ignore[union-attr]
            if table in ("lists", "maps"):
                _not_both(prog, st.name, st.name_span, diags)                          # type: ignore[union-attr]
        elif isinstance(st, ast.OptionDecl):
            prog.options[st.name] = st


# declaration -> (the Program's table, what it is called, kept with its folder
# (files named in it are relative to that))
_DECLARATIONS: dict[type, tuple[str, str, bool]] = {
    ast.ListDecl: ("lists", "list", True), ast.MapDecl: ("maps", "map", True),
    ast.LimitDecl: ("limits", "limit", False), ast.CounterDecl: ("counters", "counter", False),
    ast.ZoneDecl: ("zones", "zone", False), ast.PluginDecl: ("plugins", "plugin", False),
}


def _hook_not_run(header: ast.HookHeader) -> Diagnostic:
    """`on disconnect:` parses, but the server never runs it: say so, once per header."""
    return Diagnostic(
        Code.E109_HOOK_NEVER_RUNS, f"`on {header.name}:` rules never run: smtpfw has no {header.name} hook",
        header.span,
        help="the hooks that run are " + ", ".join(RUN_HOOKS) + "; the session log line already records "
             "how each session ended, and a `log` or `tag` rule in one of those hooks can note more")


def _not_both(prog: Program, name: str, span: Span, diags: list) -> None:
    """A list and a map share one namespace (`field in NAME` takes either)."""
    if name in prog.lists and name in prog.maps:
        diags.append(Diagnostic(Code.E107_DUPLICATE_NAME, f"`{name}` is declared as a list and as a map", span,
                                help="rename one of them"))


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
        self.list_files: list[str] = []
        self.maps: dict[str, object | None] = {}              # name -> loaded map (smtpfw.maps)
        self.tables: dict[str, Table] = {}                     # the maps in a database or directory, by name
        self.used_maps: set[str] = set()
        self.used_classes: set[str] = set()
        self.class_rules: dict[tuple[str, Stage], tuple[CompiledRule, ...] | None] = {}
        self.compiling_classes: list[str] = []
        self.used_limits: set[str] = set()
        self.used_counters: set[str] = set()
        self.stateful = False                                 # a rule tests a limit or greylisting
        self.made_fields: dict[str, FieldSpec] = {}           # specs made here, for trace: maps, limits, time
        self.limit_keys: dict[tuple[str, Stage], Any] = {}
        self.score_adds: dict[str, list[tuple[int, Stage]]] = {}   # score name -> (weight, hook) added by rules
        self.score_tests: list[tuple[str, str, int, Span]] = []   # (score, op, threshold, span)
        self.zone: Any = None                                 # option timezone (a tzinfo), None = UTC

    def error(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self.diags.append(Diagnostic(code, message, span, help=help))

    # ---- top level ----------------------------------------------------------

    def compile(self) -> Ruleset:
        # the big list files start building in other processes (the server's compile only)
        prefetch([os.path.join(base, d.file) for d, base in self.prog.lists.values() if d.items is None and d.file])
        options = self._options()
        self.options = options
        self._plugins()
        rules: list[CompiledRule] = []
        ids: dict[str, ast.Rule] = {}
        class_rules = [r for rules_of_class in self.prog.classes.values() for r in rules_of_class]
        for rule in self.prog.rules + class_rules:           # one id per rule, hooks and classes alike
            if rule.label_given:
                if rule.rule_id in ids:
                    self.error(Code.E107_DUPLICATE_NAME,
                               f"rule id `{rule.rule_id}` is used twice (first at {ids[rule.rule_id].span})",
                               rule.span, help="give each rule its own id")
                ids[rule.rule_id] = rule
        for rule in self.prog.rules:
            if rule.hook not in RUN_HOOKS:
                continue
            compiled = self._rule(rule, options, Stage(rule.hook))
            if compiled is not None:
                rules.append(compiled)
        if options.get("authentication_results"):
            self._authentication_results(self.prog.options["authentication_results"])
        self._check_scores()
        seen = {r.rule_id for r in rules}
        for compiled_class in self.class_rules.values():    # class rules count as rules (ids, hits)
            for r in compiled_class or ():
                if r.rule_id not in seen:
                    seen.add(r.rule_id)
                    rules.append(r)
        hooks = {stage: tuple(r for r in rules if r.stage is stage and r.klass is None) for stage in Stage}
        version = self._version()
        self.list_entries = {}          # a million-line list's texts are not kept once it is a matcher
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
            stateful=self.stateful,
            fields=dict(self.made_fields),
            tables=dict(self.tables),
            decided_late=decided_late(hooks, options, self.stateful, self.plugin_objects),
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
            if name == "delay_reject":           # yes/no, or until "rcpt" / "data"
                if v.kind == "boolean" or (v.kind == "string" and v.value in choices):
                    out[name] = "rcpt" if v.value is True else v.value
                    continue
                self.error(Code.E106_UNKNOWN_OPTION, f'option `delay_reject` takes yes, no, "rcpt" or "data", '
                           f"not {v.text}", v.span)
                continue
            if name == "timezone":
                self.zone = self._timezone(v)
                if self.zone is not None:
                    out[name] = v.value
                continue
            if v.kind != kind or (choices and v.value not in choices):
                want = " or ".join(f'"{c}"' for c in choices) if choices else "yes or no"
                self.error(Code.E106_UNKNOWN_OPTION, f"option `{name}` takes {want}, not {v.text}", v.span)
                continue
            out[name] = v.value
        return out

    def _authentication_results(self, decl) -> None:
        """`option authentication_results = "mx.example.org"`: every message's
        SPF, DKIM, DMARC and ARC results are asked at DATA (as if a rule tested
        them) and an Authentication-Results header with that authserv-id is
        added to accepted mail (smtpfw.checks.content.header_for)."""
        value = str(decl.value.value)
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
            self.error(Code.E106_UNKNOWN_OPTION, f"option `authentication_results` takes this server's name "
                       f"(the authserv-id, e.g. \"mx.example.org\"), not {decl.value.text}", decl.value.span)
            return
        for name in ("spf", "dkim", "dmarc"):
            self._field(ast.Field(name, decl.span), Stage.DATA)

    def _timezone(self, v: ast.Value):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if v.kind == "string":
            try:
                return ZoneInfo(str(v.value))
            except (ZoneInfoNotFoundError, ValueError):
                pass
        self.error(Code.E106_UNKNOWN_OPTION, f"option `timezone` takes a time zone name, not {v.text}", v.span,
                   help='write an IANA name such as "Europe/Berlin" or "UTC"')
        return None

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

    def _rule(self, rule: ast.Rule, options: dict, stage: Stage) -> CompiledRule | None:
        action = rule.action
        allowed = _HOOK_ACTIONS.get(stage.value, set(ast.ACTIONS) - {"add_header"})
        ok = True
        if action.kind not in allowed:
            where = f"`on {stage.value}:`" + (f" (class {rule.klass} is used there)" if rule.klass else "")
            self.error(Code.E203_ACTION_NOT_ALLOWED,
                       f"`{action.kind}` cannot be used in {where}", action.span,
                       help="add_header works only in `on data:`")
            ok = False
        if rule.klass is not None and action.kind == "run":
            self.error(Code.E203_ACTION_NOT_ALLOWED, f"`run` cannot be used in a class (class {rule.klass})",
                       action.span, help="run the plugin in the hook, before the `use` rule")
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
        compiled_action = action_for(action.kind, action.arg, render_arg, action.weight)
        if action.kind == "score":
            self.score_adds.setdefault(action.arg or "", []).append((action.weight or 0, stage))
        elif action.kind == "use":
            rules = self._class(action.arg or "", action.arg_span, stage)
            compiled_action = None if rules is None else UseClass(action.arg or "", rules)
        elif action.kind == "apply":
            compiled_action = self._apply(action, stage)
        elif action.kind in ("tarpit", "stutter") and (action.weight or 0) > MAX_TARPIT:
            self.error(Code.E202_TYPE_MISMATCH, f"`{action.kind} {action.arg}` is longer than {MAX_TARPIT} s",
                       action.arg_span, help=f"a client may give up on a reply after 5 minutes (RFC 5321 4.5.3.2); "
                                             f"{action.kind} for at most {MAX_TARPIT}s")
            ok = False
        elif action.kind == "count":
            found = self._counter(action.arg or "", action.arg_span, stage)
            if found is None:
                ok = False
            else:
                cdecl, key, _known = found
                self.stateful = True
                cname = cdecl.name
                compiled_action = AddCount(cname, action.weight or 1, cdecl.keep,
                                           lambda s: counter_store_key(cname, key(s)))
        if compiled_action is None and action.kind in ("use", "apply", "count"):
            ok = False
        if not ok:
            return None
        return CompiledRule(
            rule_id=rule.rule_id, stage=stage, kind=action.kind, outcome=outcome, test=test,
            code=code, enhanced=enhanced, render_text=render_text, render_arg=render_arg,
            arg=action.arg, action=compiled_action, monitor=rule.monitor,
            node=rule, leaves=tuple(leaves), equality=getattr(test, "equality", None),
            pattern=getattr(test, "pattern", None), klass=rule.klass)

    # ---- restriction classes, maps as actions, scores -------------------------------

    def _class(self, name: str, span: Span | None, stage: Stage) -> tuple[CompiledRule, ...] | None:
        """The rules of class ``name`` compiled for ``stage`` (once per stage)."""
        self.used_classes.add(name)
        if name not in self.prog.classes:
            guess = did_you_mean(name, self.prog.classes)
            self.error(Code.E110_UNKNOWN_CLASS, f"unknown class `{name}`", span,
                       help=f"did you mean `{guess}`?" if guess else f"declare it: `class {name}:` and its rules")
            return None
        if name in self.compiling_classes:
            self.error(Code.E110_UNKNOWN_CLASS,
                       f"class `{name}` uses itself (through {' -> '.join(self.compiling_classes + [name])})", span,
                       help="a class cannot use itself, directly or through another class")
            return None
        key = (name, stage)
        if key not in self.class_rules:
            self.compiling_classes.append(name)
            try:
                compiled = [self._rule(r, self.options, stage) for r in self.prog.classes[name]]
            finally:
                self.compiling_classes.pop()
            self.class_rules[key] = (None if any(c is None for c in compiled)
                                     else tuple(c for c in compiled if c is not None))
        return self.class_rules[key]

    def _apply(self, action: ast.Action, stage: Stage):
        """`apply MAP(field)`: the map's value is the action (Postfix access(5)).
        Every value in the map is read once here and checked (W305)."""
        f = action.field
        assert f is not None and f.key is not None
        spec = self._field(f, stage)
        if spec is None:
            return None
        values = AccessValues(set(self.prog.classes), lambda name: self._class(name, action.span, stage), f.name)
        for value, span in map_values(self.maps.get(f.name)):
            problem = values.problem(value, stage)
            if problem:
                shown = f"`{value}` " if value.strip() else "an entry "
                self.error(Code.W305_MAP_VALUE_NOT_ACTION, f"map `{f.name}`: {shown}{problem}", span,
                           help="an access map value is OK, REJECT [text], DEFER [text], DUNNO, 4NN/5NN text, "
                                "WARN text, PREPEND name: value, or the name of a class")
        get = spec.get
        return ApplyMap(f.name, lambda s: values.choose(get(s)))

    def _check_scores(self) -> None:
        """W605: a threshold the rules that add to a score cannot reach (the
        sum of all positive weights, or of all negative ones)."""
        for name, op, n, span in self.score_tests:
            weights = self.score_adds.get(name)
            if not weights:
                self.error(Code.W605_SCORE_UNREACHABLE, f"no rule adds to score `{name}`: it is always 0", span,
                           help=f"add weights with `score {name} +N if ...`" +
                           (f"; did you mean `score.{did_you_mean(name, self.score_adds)}`?"
                            if did_you_mean(name, self.score_adds) else ""))
                continue
            # connect runs once a session; every other hook may run again
            # (each recipient, message, HELO): its weights add up without bound
            high = math.inf if any(w > 0 and st is not Stage.CONNECT for w, st in weights) else \
                sum(w for w, _st in weights if w > 0)
            low = -math.inf if any(w < 0 and st is not Stage.CONNECT for w, st in weights) else \
                sum(w for w, _st in weights if w < 0)
            if (op in (">", ">=", "=") and (n > high or (op == ">" and n == high))) or \
                    (op in ("<", "<=") and (n < low or (op == "<" and n == low))):
                reach = f"at most {high}" if op in (">", ">=", "=") else f"at least {low}"
                self.error(Code.W605_SCORE_UNREACHABLE,
                           f"`score.{name} {op} {n}` can never hold: the rules make score `{name}` {reach}", span,
                           help="lower the threshold or add weight to the rules that score it")

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
        if "(" in name and name.endswith(")"):             # {MAP(field)}: a map's value
            mname, _, key = name[:-1].partition("(")
            f = ast.Field(mname.strip(), span, ast.Field(key.strip(), span))
            spec = self._field(f, stage)
            return None if spec is None else spec.get
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
        spec = lookup_field(name, self.plugin_fields, self.zone)
        if spec is not None and spec.lazy or spec is None and name.startswith((LIMIT_PREFIX, COUNTER_PREFIX)):
            spec = self._field(ast.Field(name, span), stage)     # the state checks: a store, not in a class
            return None if spec is None else spec.get
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
        if f.key is not None:
            made = self._map_field(f, stage)
            if made is not None:
                self.made_fields[f.text] = made
            return made
        spec = lookup_field(f.name, self.plugin_fields, self.zone)
        if spec is not None and f.name not in FIELDS:
            self.made_fields[f.name] = spec
        if spec is None and f.name.startswith(LIMIT_PREFIX):
            spec = self._limit_field(f, stage)
            if spec is None:
                return None
            self.made_fields[f.name] = spec
        if spec is None and f.name.startswith(COUNTER_PREFIX):
            spec = self._counter_field(f, stage)
            if spec is None:
                return None
            self.made_fields[f.name] = spec
        if spec is not None and spec.lazy:
            self.stateful = True
        if spec is not None and spec.lazy and self.compiling_classes:
            self.error(Code.E201_FIELD_NOT_AVAILABLE, f"`{spec.name}` cannot be tested in a class (class "
                       f"{self.compiling_classes[-1]}): it counts in the state store", f.span,
                       help="test it in the hook itself, before or after the `use` rule")
            return None
        if spec is None:
            cands = list(FIELDS) + list(self.plugin_fields)
            guess = did_you_mean(f.name, cands)
            if f.name in self.prog.lists or f.name in self.prog.maps:
                what = "list" if f.name in self.prog.lists else "map"
                hint = f"`{f.name}` is a {what}: write `<field> in {f.name}`" + (
                    f" or `{f.name}(<field>)` for its value" if what == "map" else "")
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

    def _limit_field(self, f: ast.Field, stage: Stage) -> FieldSpec | None:
        """`limit.NAME.exceeded|count|percent|retry`: one count on limit NAME
        in this hook run (the state store), asked when a rule reaches it."""
        name, _, attr = f.name[len(LIMIT_PREFIX):].rpartition(".")
        decl = self.prog.limits.get(name)
        if decl is None or attr not in LIMIT_ATTRS:
            if decl is None:
                guess = did_you_mean(name, self.prog.limits)
                self.error(Code.E102_UNKNOWN_FIELD, f"unknown limit `{name}` in `{f.name}`", f.span,
                           help=f"did you mean `limit.{guess}.{attr or 'exceeded'}`?" if guess else
                           f"declare it: limit {name} = 20 per 1m by client.ip")
            else:
                self.error(Code.E102_UNKNOWN_FIELD, f"`{f.name}`: a limit has no `{attr}`", f.span,
                           help="a limit's fields are " + ", ".join(f"limit.{name}.{a}" for a in LIMIT_ATTRS))
            return None
        self.used_limits.add(name)
        make = self._limit_key(decl, stage)
        if make is None:
            return None
        stage_known = make.stage
        answer = lazy_answer(make)
        ftype, get, doc = {
            "exceeded": (BOOL, lambda s: answer(s).exceeded, "this count does not fit the limit"),
            "count": (INT, lambda s: answer(s).count, "the fullest bucket's count, this one included"),
            "percent": (INT, lambda s: answer(s).percent, "the fullest bucket's count in % of its limit"),
            "retry": (INT, lambda s: answer(s).retry, "seconds until a count would fit again"),
        }[attr]
        return FieldSpec(f.name, ftype, stage_known, get, f"limit {name}: {doc}", lazy=True)

    def _counter(self, name: str, span: Span | None, stage: Stage):
        """(decl, the store key maker, the stage its keys are known) of counter ``name``."""
        decl = self.prog.counters.get(name)
        if decl is None:
            guess = did_you_mean(name, self.prog.counters)
            self.error(Code.E102_UNKNOWN_FIELD, f"unknown counter `{name}`", span,
                       help=f"did you mean `{guess}`?" if guess else f"declare it: counter {name} = 1d by client.net")
            return None
        self.used_counters.add(name)
        getters: list[Callable[[SessionState], Any]] = []
        known = Stage.CONNECT
        for k in decl.keys:
            if isinstance(k, ast.Value):
                getters.append(_constant_text(str(k.value)))
                continue
            spec = self._field(k, stage)
            if spec is None:
                return None
            if spec.lazy or spec.type == LIST:
                self.error(Code.E202_TYPE_MISMATCH, f"a counter cannot be keyed by `{spec.name}`", k.span)
                return None
            if spec.stage.order > known.order:
                known = spec.stage
            getters.append(spec.compared)
        joined = tuple(getters)

        def key(s: SessionState) -> str:
            return "|".join(str(g(s)) for g in joined)
        return decl, key, known

    def _counter_field(self, f: ast.Field, stage: Stage) -> FieldSpec | None:
        """`counter.NAME`: the counter's value for this session's key, read
        from the state store when a rule reaches it."""
        name = f.name[len(COUNTER_PREFIX):]
        found = self._counter(name, f.span, stage)
        if found is None:
            return None
        _decl, key, known = found
        answer = lazy_answer(lambda s: CounterKey(name, key(s), f"{s.session_id}.{s.hook_runs}"))
        return FieldSpec(f.name, INT, known, lambda s: answer(s).value, f"counter {name}'s value", lazy=True)

    def _limit_key(self, decl: ast.LimitDecl, stage: Stage):
        """The fact key maker of limit ``decl`` in ``stage`` (checked once per stage)."""
        cache_key = (decl.name, stage)
        if cache_key in self.limit_keys:
            return self.limit_keys[cache_key]
        counting = decl.counting
        concurrent = [r for r in decl.rates if r[1] == 0.0]
        if concurrent and (len(decl.rates) > 1 or counting not in (None, "connections")):
            self.error(Code.E202_TYPE_MISMATCH, f"limit `{decl.name}` mixes `concurrent` with other rates or "
                       "counts", concurrent[0][2], help="declare a concurrency limit on its own: "
                       f"limit {decl.name} = 10 concurrent by client.net")
            self.limit_keys[cache_key] = None
            return None
        where = {"connections": (Stage.CONNECT,), "messages": (Stage.MAIL, Stage.DATA),
                 "recipients": (Stage.RCPT,), "bytes": (Stage.DATA,), None: tuple(Stage)}.get(counting)
        make = None
        if where is None:
            self.error(Code.E202_TYPE_MISMATCH, f"limit `{decl.name}` counts `{counting}`, which is not a thing "
                       "smtpfw counts", decl.span, help="count connections, messages, recipients or bytes")
        elif stage not in where:
            hooks = " or ".join(f"`on {w.value}:`" for w in where)
            self.error(Code.E201_FIELD_NOT_AVAILABLE, f"limit `{decl.name}` counts {counting}: test it in {hooks}, "
                       f"not `on {stage.value}:`", decl.name_span,
                       help="a limit counts the event of the hook that tests it (docs/state.md)")
        else:
            getters: list[Callable[[SessionState], Any]] = []
            known = Stage.DATA if counting == "bytes" else Stage.CONNECT
            ok = True
            for k in decl.keys:
                if isinstance(k, ast.Value):
                    text = str(k.value)
                    getters.append(_constant_text(text))
                    continue
                spec = self._field(k, stage)
                if spec is None:
                    ok = False
                    continue
                if spec.lazy or spec.type == LIST:
                    self.error(Code.E202_TYPE_MISMATCH, f"a limit cannot be keyed by `{spec.name}`", k.span,
                               help="key a limit by the client (client.ip, client.net), sender, sender.domain, "
                                    "auth.user, rcpt, rcpt.domain, listener.name or a constant text")
                    ok = False
                    continue
                if spec.stage.order > known.order:
                    known = spec.stage
                getters.append(spec.compared)
            if ok and concurrent:
                slots, name, joined = concurrent[0][0], decl.name, tuple(getters)

                def make(s: SessionState) -> Any:
                    return SlotKey(name, "|".join(str(g(s)) for g in joined), slots, s.session_id or "-",
                                   SLOT_TTL, f"{s.session_id}.{s.hook_runs}")
                make.stage = known            # type: ignore[attr-defined]
            elif ok:
                buckets = tuple((limit, window) for limit, window, _span in decl.rates)
                name, bytes_ = decl.name, counting == "bytes"
                joined = tuple(getters)

                def make(s: SessionState) -> Any:
                    return RateKey(name, "|".join(str(g(s)) for g in joined), buckets,
                                   float(s.message_size) if bytes_ else 1.0, f"{s.session_id}.{s.hook_runs}")
                make.stage = known            # type: ignore[attr-defined]
        self.limit_keys[cache_key] = make
        return make

    def _map_field(self, f: ast.Field, stage: Stage) -> FieldSpec | None:
        """`MAP(field)`: the map's value for the field's value ("" if no entry)."""
        assert f.key is not None
        key = self._field(f.key, stage)
        table = self._map(f.name, f.span)
        if key is None or table is None:
            return None
        if key.type == BOOL or key.lazy or key.type == LIST and not isinstance(table, RegexpMap):
            self.error(Code.E202_TYPE_MISMATCH, f"`{key.name}` is {_tname(key.type)}; a map is looked up by "
                       "an address, domain, IP or text" + (" (a list, line by line, only in a regexp or pcre map)"
                                                           if key.type == LIST else ""), f.key.span)
            return None
        if isinstance(table, Table):
            return self._table_field(f, key, table, stage)
        if key.type == LIST:
            return self._map_over_list(f, key, table)
        get_key, ftype, lookup = key.compared, key.type, table.lookup

        def value(s: SessionState) -> str:
            k = get_key(s)
            if k == "" or k is None:
                return ""
            hit = lookup(str(k), ftype)
            return hit.value if hit is not None else ""
        return FieldSpec(f.text, STRING, key.stage, value, f"the value of map {f.name} for {key.name}")

    def _map_over_list(self, f: ast.Field, key: FieldSpec, table) -> FieldSpec:
        """`MAP(list field)`: the value of the first item that has an entry,
        as Postfix's header_checks and body_checks take the first line that
        matches (`apply header_checks(header.lines)`)."""
        get_items, lookup = key.get, table.lookup

        def value(s: SessionState) -> str:
            for item in get_items(s):
                hit = lookup(str(item), STRING)
                if hit is not None:
                    return hit.value
            return ""
        return FieldSpec(f.text, STRING, key.stage, value, f"the value of map {f.name} for the first of {key.name} "
                         "that has an entry")

    def _table_query(self, name: str, key: FieldSpec, stage: Stage):
        """The fact key maker of map ``name`` looked up by ``key``'s value,
        gathered before ``stage``'s rules run (and started once the key is known)."""
        get_key = key.compared

        def make(s: SessionState) -> TableQuery | None:
            k = get_key(s)
            return TableQuery(name, str(k)) if k != "" and k is not None else None
        self._need_lookup(f"map:{name}:{key.name}", make, key.stage, stage)
        return make

    def _table_answer(self, table: Table, make):
        """A getter of the answer's value: "" for no entry; for a store that
        could not answer, "" when the map fails open, else LookupFailed (the
        hook answers 451 4.3.0)."""
        fail_open = table.fail_open

        def answer(s: SessionState) -> str | None:
            q = make(s)
            if q is None:
                return None
            a = s.facts.get(q)
            if a is None:
                a = table_unavailable("not asked (a replay without this lookup recorded)")
            if a.status == "error":
                if fail_open:
                    return None
                raise LookupFailed(q, a.reason)
            return a.value if a.status == "found" else None
        return answer

    def _table_field(self, f: ast.Field, key: FieldSpec, table: Table, stage: Stage) -> FieldSpec:
        """`MAP(field)` of a database or directory map: a fact."""
        make = self._table_query(f.name, key, stage)
        answer = self._table_answer(table, make)

        def value(s: SessionState) -> str:
            v = answer(s)
            return v if v is not None else ""
        return FieldSpec(f.text, STRING, key.stage, value, f"the value of {table.kind} map {f.name} for {key.name}",
                         lookup=make)

    def _map(self, name: str, span: Span):
        """The loaded map ``name`` (once), or None after reporting why not."""
        self.used_maps.add(name)
        if name not in self.prog.maps:
            if name in self.prog.lists:
                self.error(Code.E202_TYPE_MISMATCH, f"`{name}` is a list, not a map: it has no values", span,
                           help=f"test membership with `<field> in {name}`, or declare it with `map {name} = file ...`")
            else:
                guess = did_you_mean(name, self.prog.maps)
                self.error(Code.E103_UNKNOWN_LIST, f"unknown map `{name}`", span,
                           help=f"did you mean `{guess}`?" if guess else
                           f"declare it: map {name} = file \"maps/{name}\"")
            return None
        if name not in self.maps:
            from smtpfw.maps import Map, load_map, map_from_pairs

            decl, base = self.prog.maps[name]
            table: Map | Table | None
            if decl.file is None:
                table, diags = map_from_pairs(decl.pairs)
                self.diags.extend(diags)
            else:
                path = os.path.join(base, decl.file)
                if decl.fmt in TABLE_KINDS:          # a database or directory: its settings file
                    table, diags = load_table(name, path, _shown(path), decl.fmt)
                    if isinstance(table, Table):
                        self.tables[name] = table
                else:
                    table, diags = load_map(path, _shown(path), decl.fmt)
                for d in diags:
                    if d.code == Code.E301_LIST_FILE_MISSING:
                        self.error(d.code, d.message, decl.span,
                                   help=f"the path is relative to the rule file's folder ({base or '.'})")
                    else:
                        self.diags.append(d)
                if table is not None:
                    self._read_file(path)
            self.maps[name] = table
        return self.maps[name]

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
        """A rule's condition as one test (None after reporting why it cannot be)."""
        return _ConditionCompiler(self, stage, leaves, listings).visit(node)

    def _compare(self, spec: FieldSpec, node: ast.Compare):
        v, op, get = node.value, node.op, spec.get
        assert isinstance(v, ast.Value)
        if spec.name.startswith(SCORE_PREFIX) and v.kind == "number":
            self.score_tests.append((spec.name[len(SCORE_PREFIX):], op, int(v.value), node.span))  # type: ignore[call-overload]
        if op in ("<", "<=", ">", ">="):
            if spec.type not in ORDERED:
                self.error(Code.E202_TYPE_MISMATCH,
                           f"`{op}` compares numbers, but `{spec.name}` is {_tname(spec.type)}", node.span,
                           help="use = or != for text; numeric fields are e.g. message.size, rcpt.count")
                return None
            if spec.type == INT and v.kind != "number":
                self.error(Code.E202_TYPE_MISMATCH, f"`{op}` compares numbers, but {v.text} is not a number", v.span,
                           help="write a number, optionally with K, M or G: `message.size > 10M`")
                return None
            n = self._coerce(spec, v)
            if n is _BAD:
                return None
            return _ordered(op, get, n)
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
        if not spec.lazy:                  # a lazy fact is asked for only when a rule reaches it
            equals.equality = (get, value)  # type: ignore[attr-defined]  # lets the engine index `field = value` rules
        return equals

    def _compare_fields(self, spec: FieldSpec, node: ast.Compare, stage: Stage):
        """`helo = sender.domain`: both values in the form their types compare in."""
        assert isinstance(node.value, ast.Field)
        if self._unquoted_text(node.value):
            return None
        other = self._field(node.value, stage)
        if other is None:
            return None
        op = node.op
        if LIST in (spec.type, other.type) or BOOL in (spec.type, other.type) and spec.type != other.type:
            self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` ({_tname(spec.type)[2:].lstrip()}) cannot be compared "
                       f"with `{other.name}` ({_tname(other.type)[2:].lstrip()})", node.span,
                       help="a list of addresses is tested with `in`" if LIST in (spec.type, other.type) else None)
            return None
        if op in ("<", "<=", ">", ">="):
            if spec.type not in ORDERED or other.type != spec.type:
                self.error(Code.E202_TYPE_MISMATCH, f"`{op}` compares two numbers (or two times or dates), not "
                           f"`{spec.name}` and `{other.name}`", node.span)
                return None
            a, b = spec.get, other.get
            return {"<": lambda s: a(s) < b(s), "<=": lambda s: a(s) <= b(s),
                    ">": lambda s: a(s) > b(s), ">=": lambda s: a(s) >= b(s)}[op]
        a, b = _text_of(spec), _text_of(other)
        if op == "=":
            return lambda s: a(s) == b(s)
        return lambda s: a(s) != b(s)

    def _unquoted_text(self, f: ast.Field) -> bool:
        """`helo = mx.example.org`: a word that is no field and not close to
        one, where a value goes, is text without its quotes (reported so)."""
        if f.key is not None or lookup_field(f.name, self.plugin_fields, self.zone) is not None:
            return False
        if did_you_mean(f.name, list(FIELDS) + list(self.plugin_fields)):
            return False
        self.error(Code.E102_UNKNOWN_FIELD, f"`{f.name}` is not a field: text values are written in double quotes",
                   f.span, help=f'write "{f.name}"')
        return True

    def _compare_template(self, spec: FieldSpec, node: ast.Compare, stage: Stage, listings: list):
        """`helo = "[{client.ip}]"`: the text with the fields' values put in."""
        v = node.value
        assert isinstance(v, ast.Value)
        if spec.type in (INT, BOOL, LIST) or node.op not in ("=", "!="):
            self.error(Code.E202_TYPE_MISMATCH, f"{v.text} holds a {{placeholder}}: compare it with = or != to a "
                       f"text field, not `{spec.name}` ({_tname(spec.type)})", v.span)
            return None
        render = self._template(str(v.value), v.span, stage, listings, "")
        if render is None:
            return None
        get, ftype = spec.compared, spec.type
        if ftype == IP:
            def want(s: SessionState) -> str:
                text = render(s)
                try:
                    return str(ipaddress.ip_address(text))
                except ValueError:
                    return text
        else:
            def want(s: SessionState) -> str:
                return fold(ftype, render(s))
        if node.op == "=":
            return lambda s: get(s) == want(s)
        return lambda s: get(s) != want(s)

    def _coerce(self, spec: FieldSpec, v: ast.Value):
        t = spec.type
        if t in FORMS:
            form, example = FORMS[t]
            if v.kind != "string" or not re.fullmatch(form, str(v.value)):
                self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is compared with {example}; not {v.text}", v.span)
                return _BAD
            return str(v.value)
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
            if v.kind == "string" and v.value == "":
                return ""                     # no address (helo.literal of a name)
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

    def _member(self, spec: FieldSpec, node: ast.Member, stage: Stage):
        if node.within and spec.type != DOMAIN:
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`within` tests domains; `{spec.name}` is {_tname(spec.type)}", node.span,
                       help="use a domain field such as sender.domain or rcpt.domain")
            return None
        if spec.type == BOOL:
            self.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is yes or no; it cannot be `in` a list", node.span)
            return None
        element_type = ADDRESS if spec.type == LIST else spec.type
        get = spec.compared
        target = node.target
        if isinstance(target, ast.ListRef) and self._names_a_field(target.name):
            target = ast.Field(target.name, target.span)      # `client.rdns within sender.domain`
        if isinstance(target, ast.Field):
            items = self._value_items(target, element_type, node, stage)
            if items is None:
                return None
            if node.within:
                found = lambda s: _within_any(get(s), items(s))          # noqa: E731
            elif spec.type == LIST:
                found = lambda s: any(x in items(s) for x in get(s))   # noqa: E731
            else:
                found = lambda s: get(s) in items(s)                   # noqa: E731
            return (lambda s: not found(s)) if node.negated else found
        if isinstance(target, ast.ListRef) and target.name in self.prog.maps:
            table = self._map(target.name, target.span)
            if isinstance(table, Table):
                return self._table_member(spec, node, table, stage)
        matcher = self._matcher(node.target, element_type, node.within)
        if matcher is None:
            return None
        if spec.type == LIST:
            test = lambda s: any(matcher(x) for x in get(s))
        else:
            test = lambda s: matcher(get(s))
        return (lambda s: not test(s)) if node.negated else test

    def _table_member(self, spec: FieldSpec, node: ast.Member, table: Table, stage: Stage):
        """`field in MAP` of a database or directory map: the key has an entry."""
        if node.within or spec.type in (LIST, INT) or spec.lazy:
            self.error(Code.E202_TYPE_MISMATCH, f"a {table.kind} map is asked for one address, domain, IP or "
                       f"text; `{spec.name}` is {_tname(spec.type)}" if not node.within else
                       f"`within` takes a list; `{table.name}` is a {table.kind} map", node.span,
                       help=f"ask it with `<field> in {table.name}`, e.g. `rcpt in {table.name}`")
            return None
        answer = self._table_answer(table, self._table_query(table.name, spec, stage))
        if node.negated:
            return lambda s: answer(s) is None
        return lambda s: answer(s) is not None

    def _names_a_field(self, name: str) -> bool:
        """A name after `in`/`within` that is no list or map but a field."""
        return (name not in self.prog.lists and name not in self.prog.maps and name not in BUILTIN_LISTS
                and lookup_field(name, self.plugin_fields, self.zone) is not None)

    def _value_items(self, target: ast.Field, ftype: str, node: ast.Member, stage: Stage):
        """The items another field's value holds: a map's value read as a
        list (separated by commas or spaces, as Postfix's
        smtpd_sender_login_maps values are: `auth.user in owners(sender)`),
        a list field's addresses, or a field's one value
        (`client.rdns within sender.domain`)."""
        tspec = self._field(target, stage)
        if tspec is None:
            return None
        if tspec.type in (BOOL, INT):
            self.error(Code.E202_TYPE_MISMATCH, f"`{tspec.name}` is {_tname(tspec.type)}; it holds no items",
                       target.span)
            return None
        get = tspec.get
        if tspec.type == LIST:
            return lambda s: {fold(ftype, str(item)) for item in get(s)}

        def items(s: SessionState) -> set[str]:
            return {fold(ftype, item) for item in _ITEMS.split(str(get(s))) if item}
        return items

    def _matcher(self, target, ftype: str, within: bool):
        if isinstance(target, ast.ListRef) and target.name in self.prog.maps:
            table = self._map(target.name, target.span)
            if table is None:
                return None
            if within:
                self.error(Code.E202_TYPE_MISMATCH, f"`within` takes a list; `{target.name}` is a map",
                           target.span, help=f"`in {target.name}` looks a domain and its parents up in the map")
                return None
            lookup = table.lookup
            return lambda value: lookup(str(value), ftype) is not None
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
                self._read_file(path)
        self.list_entries[name] = entries
        return entries

    def _read_file(self, path: str) -> None:
        """A list or map file the ruleset read: reload watches it, and its
        bytes are part of the ruleset's version."""
        self.list_files.append(path)

    def _version(self) -> str:
        """The ruleset's version: a hash of its rule files (the last read
        first) and then the list and map files, "\\0" between them; the files
        are read again here, one at a time, rather than kept in memory."""
        digest = hashlib.sha256()
        parts = [self.prog.sources[path].encode("utf-8", "replace") for path in reversed(self.prog.files)]
        first = True
        for part in itertools.chain(parts, map(_file_bytes, self.list_files)):
            if part is None:
                continue
            if not first:
                digest.update(b"\0")
            digest.update(part)
            first = False
        return digest.hexdigest()[:12]

    def _pattern(self, spec: FieldSpec, node: ast.Pattern):
        if spec.type in (BOOL, INT):
            self.error(Code.E202_TYPE_MISMATCH,
                       f"`{node.kind}` tests text; `{spec.name}` is {_tname(spec.type)}", node.span)
            return None
        source = str(node.pattern.value)
        if node.kind == "glob":
            source = glob_regex(source)
        rx, err = compile_regex(source, ignore_case=True)
        if rx is None:
            assert err is not None
            d = err.diagnostic(node.pattern.span)
            self.diags.append(d if d.help else Diagnostic(
                d.code, d.message, d.span, help="regular expressions use Python syntax; write \\. for a literal dot"))
            return None
        search = rx.tester()
        get, end = spec.compared, MAX_PATTERN_SUBJECT
        if spec.type == LIST:                       # any item matches (an attachment name, a header line)
            items = spec.get

            def found(s: SessionState) -> bool:
                return any(search(str(x)[:end]) for x in items(s))
            return (lambda s: not found(s)) if node.negated else found
        if node.negated:
            return lambda s: not search(str(get(s))[:end])

        def matches(s: SessionState) -> bool:
            return search(str(get(s))[:end])
        if not spec.lazy:                   # lets the engine run many `field matches` rules as one RE2 set
            matches.pattern = (get, rx.pattern, end)   # type: ignore[attr-defined]
        return matches

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

        filtered = zone_codes is not None or node.codes is not None

        def listed(s):
            lk = make(s)
            if lk is None:
                return False
            a = s.facts.get(lk)
            if a is None or a.status != "listed":
                return False
            if filtered and not a.codes:
                # A listing without its A records (a session imported from a mail
                # log): no filter can accept it.  Dry-run reports these.
                s.uncoded.add(domain)
                return False
            return codes_ok(a.codes)
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


_ITEMS = re.compile(r"[\s,]+")


def glob_regex(pattern: str) -> str:
    """A glob (`*`, `?`, `[...]`, `[!...]`) as a whole-value regex, as
    ``fnmatch.translate`` reads it but without the atomic groups Python
    3.11's version writes, which RE2 does not have."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(c))
    return "\\A(?s:" + "".join(out) + ")\\Z"


def _constant_text(text: str) -> Callable[[SessionState], str]:
    return lambda s: text


def _file_bytes(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _within_any(value: str, domains: set[str]) -> bool:
    """``value`` is one of ``domains`` or below one of them."""
    return any(value == d or value.endswith("." + d) for d in domains if d)


def _ordered(op: str, get: Callable[[SessionState], Any], n: Any) -> Callable[[SessionState], bool]:
    return {"<": lambda s: get(s) < n, "<=": lambda s: get(s) <= n,
            ">": lambda s: get(s) > n, ">=": lambda s: get(s) >= n}[op]


def _text_of(spec: FieldSpec) -> Callable[[SessionState], str]:
    """A field's value as comparable text: folded by its own type, so
    `helo = sender.domain` ignores case and a trailing dot."""
    get = spec.compared
    if spec.type in (INT, BOOL):
        return lambda s: str(get(s)).lower()
    return lambda s: str(get(s))


class _ConditionCompiler(ast.ConditionVisitor):
    """Compiles one condition into a test over SessionState: `and`/`or`/`not`
    combine their operands' tests, each leaf goes to the compiler's method
    for its kind; every leaf's test is noted in ``leaves`` (for trace) and
    every DNS listing in ``listings`` (for `{dnsbl.*}` placeholders)."""

    def __init__(self, compiler: "_Compiler", stage: Stage, leaves: list, listings: list):
        self.c, self.stage, self.leaves, self.listings = compiler, stage, leaves, listings

    def visit_and(self, node: ast.And):
        tests = [self.visit(n) for n in node.operands]
        return None if any(t is None for t in tests) else _all(tests)

    def visit_or(self, node: ast.Or):
        tests = [self.visit(n) for n in node.operands]
        return None if any(t is None for t in tests) else _any(tests)

    def visit_not(self, node: ast.Not):
        inner = self.visit(node.operand)
        return None if inner is None else (lambda s, t=inner: not t(s))

    def _noted(self, node, test):
        if test is not None:
            self.leaves.append((node, test))
        return test

    def _spec(self, node) -> FieldSpec | None:
        return self.c._field(node.field, self.stage)

    def visit_tagged(self, node: ast.Tagged):
        tag = node.tag
        return self._noted(node, lambda s: tag in s.tags)

    def visit_truthy(self, node: ast.Truthy):
        spec = self._spec(node)
        if spec is None:
            return None
        get = spec.get
        if spec.type not in (LIST, BOOL):
            self.c.error(Code.E202_TYPE_MISMATCH, f"`{spec.name}` is {_tname(spec.type)}, not yes/no", node.span,
                         help=f"compare it, e.g. `{spec.name} = \"...\"` or `{spec.name} in <list>`")
            return None
        return self._noted(node, lambda s: bool(get(s)))

    def visit_compare(self, node: ast.Compare):
        spec = self._spec(node)
        if spec is None:
            return None
        if isinstance(node.value, ast.Field):
            return self._noted(node, self.c._compare_fields(spec, node, self.stage))
        if node.value.kind == "string" and ("{" in str(node.value.value) or "}" in str(node.value.value)):
            return self._noted(node, self.c._compare_template(spec, node, self.stage, self.listings))
        return self._noted(node, self.c._compare(spec, node))

    def visit_member(self, node: ast.Member):
        spec = self._spec(node)
        return None if spec is None else self._noted(node, self.c._member(spec, node, self.stage))

    def visit_pattern(self, node: ast.Pattern):
        spec = self._spec(node)
        return None if spec is None else self._noted(node, self.c._pattern(spec, node))

    def visit_listed(self, node: ast.Listed | ast.LookupFailed):
        spec = self._spec(node)
        return None if spec is None else self._noted(node, self.c._listed(spec, node, self.stage, self.listings))

    visit_lookup_failed = visit_listed


def map_values(table) -> list[tuple[str, Span]]:
    """Every value of a loaded map with where it is written (for W305)."""
    if table is None:
        return []
    return [(value, span) for _key, value, span in table.entries()]


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
    if value is None:
        text = ""
    elif isinstance(value, (list, tuple)):            # a list field: its items, as a header or reply lists them
        text = ", ".join(map(str, value))
    else:
        text = str(value)
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
