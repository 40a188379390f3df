"""The compiled hook chain and its evaluation.

Evaluation is pure and synchronous: it reads ``SessionState`` (whose facts,
DNS answers among them, were gathered before) and returns a ``Decision``.  The only place
it stops early is a ``run <plugin>`` step: it returns a ``PluginCall`` and
the caller (server, replay) runs the plugin and resumes at ``next_index``.

Within a hook, rules run in order and the first terminal action wins; with
no terminal action the hook continues.  A ``monitor`` rule (or a ruleset in
``option mode = monitor``) records what it would have refused and goes on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from smtpfw.actions import Action, AddScore, ApplyMap, RunPlugin, Stutter, Tarpit, UseClass
from smtpfw.checks.dnsresult import Lookup
from smtpfw.facts.base import FactMissing, LookupFailed
from smtpfw.session import SessionState
from smtpfw.verdict import CONTINUE, Decision, Outcome, Stage

Test = Callable[[SessionState], bool]
FactKeyMaker = Callable[[SessionState], "Lookup | None"]      # a fact key (smtpfw.facts) or None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: str
    stage: Stage
    kind: str                                  # the action keyword
    outcome: Outcome | None                    # for terminal actions
    test: Test | None                          # None = unconditional
    code: int | None = None
    enhanced: str | None = None
    render_text: Callable[[SessionState], str] | None = None
    render_arg: Callable[[SessionState], str] | None = None   # tag/log/warn/add_header value
    arg: str | None = None                     # tag name, header name, plugin name
    action: Action | None = None               # what a non-terminal rule does (smtpfw.actions)
    monitor: bool = False
    node: object = None                        # the ast.Rule, for trace and lint
    leaves: tuple = ()                         # (ast condition leaf, Test) for trace
    equality: tuple | None = None              # (getter, value) when the condition is `field = value`
    pattern: tuple | None = None               # (getter, RE2 pattern, length read) when it is `field matches "re"`
    klass: str | None = None                   # the restriction class the rule belongs to


@dataclass(frozen=True, slots=True)
class NeedFacts:
    """Evaluation paused at a rule that reached a lazy fact (a rate limit,
    greylisting): the caller asks for ``key`` and resumes at ``index``."""

    key: Any
    index: int


@dataclass(frozen=True, slots=True)
class PluginCall:
    """Evaluation paused at a `run` step."""

    rule: CompiledRule
    next_index: int


@dataclass(frozen=True)
class Ruleset:
    version: str                                       # content hash of the sources
    hooks: dict[Stage, tuple[CompiledRule, ...]]
    options: dict[str, object]
    fact_needs: dict[Stage, tuple[FactKeyMaker, ...]]   # facts a hook's rules test
    fact_starts: dict[Stage, tuple[FactKeyMaker, ...]]  # facts whose input is known at a stage
    plugins: dict[str, object] = field(default_factory=dict)   # name -> plugin instance
    sources: dict[str, str] = field(default_factory=dict)      # file -> text (for messages)
    rules: tuple[CompiledRule, ...] = ()                        # all rules, in source order
    files: tuple[str, ...] = ()                                 # rule and list files read
    zones: tuple = ()                                           # (LookupKind, zone) of every DNS list used
    stateful: bool = False                                      # rules test limits or greylisting (a state store)
    fields: dict = field(default_factory=dict)                  # specs made for this ruleset (maps, limits, time)
    tables: dict = field(default_factory=dict)                  # name -> database/directory map (smtpfw.maps.tables)
    decided_late: frozenset = frozenset()                       # early hooks answered before decided (smtpfw.lang.deferral)
    _groups: dict = field(default_factory=dict, init=False, repr=False, compare=False)   # set in __post_init__

    @property
    def monitor_all(self) -> bool:
        return self.options.get("mode") == "monitor"

    @property
    def delay_reject(self) -> bool:
        return bool(self.options.get("delay_reject"))

    @property
    def delay_until(self) -> Stage | None:
        """Where held refusals are given: RCPT (`delay_reject = yes`), the
        DATA command (`= "data"`), or None (not held)."""
        until = self.options.get("delay_reject")
        return Stage.DATA if until == "data" else Stage.RCPT if until else None

    def fact_keys(self, table: dict, stage: Stage, state: SessionState) -> list:
        """The keys of ``table`` (fact_needs or fact_starts) at ``stage``."""
        out = []
        for make in table.get(stage, ()):
            key = make(state)
            if type(key) is list:               # several: the inputs of a fact made from facts (DMARC)
                out.extend(key)
            elif key is not None:
                out.append(key)
        return out

    def __post_init__(self) -> None:
        object.__setattr__(self, "_groups", {stage: _groups(rules, self.monitor_all)
                                             for stage, rules in self.hooks.items()})

    def evaluate(self, stage: Stage, state: SessionState, start: int = 0,
                 trace: list | None = None) -> Decision | PluginCall | NeedFacts:
        rules = self.hooks.get(stage, ())
        monitor_all = self.monitor_all
        groups = self._groups.get(stage) if trace is None else None
        if not groups:
            result = self._run(stage, rules, start, len(rules), state, trace, monitor_all)
            return CONTINUE if result is None else result
        # A run of `<terminal action> if <field> = <value>` rules is one dict
        # lookup per field, a run of `... if <field> matches "re"` rules one
        # pass of an RE2 set: the first rule of the run that the lookup finds
        # is the only one that can match first; if none, none match.
        index = start
        for lo, hi, find in groups:
            if hi <= index:
                continue
            if lo > index:
                result = self._run(stage, rules, index, lo, state, None, monitor_all)
                if result is not None:
                    return result
                index = lo
            hit: Any = find(state) if index == lo else _UNKNOWN
            if hit is _UNKNOWN:
                result = self._run(stage, rules, index, hi, state, None, monitor_all)
            elif hit is not None:
                result = self._run(stage, rules, hit, hit + 1, state, None, monitor_all)
            else:
                result = None
            if result is not None:
                return result
            index = hi
        result = self._run(stage, rules, index, len(rules), state, None, monitor_all)
        return CONTINUE if result is None else result

    @staticmethod
    def _run(stage: Stage, rules, lo: int, hi: int, state: SessionState, trace: list | None,
             monitor_all: bool) -> Decision | PluginCall | NeedFacts | None:
        """Evaluate rules[lo:hi] in order; None = no terminal action among them."""
        for index in range(lo, hi):
            rule = rules[index]
            test = rule.test
            try:
                if test is not None and not test(state):
                    if trace is not None:
                        trace.append(TraceStep(stage, rule, False, "no match"))
                    continue
                text = rule.render_text(state) if rule.render_text is not None else None
            except FactMissing as missing:           # nothing of this rule has happened yet
                return NeedFacts(missing.key, index)
            except LookupFailed as failed:
                result = _lookup_failed(stage, rule, failed, state, trace, monitor_all)
                if result is None:
                    continue
                return result
            state.hits.append(rule.rule_id)
            kind = rule.kind
            if rule.outcome is not None:
                decision = Decision(rule.outcome, rule.code, rule.enhanced, text, rule.rule_id)
                if (rule.monitor or monitor_all) and rule.outcome.refuses:
                    state.monitored.append((rule.rule_id, decision))
                    if trace is not None:
                        trace.append(TraceStep(stage, rule, True, f"monitor: would {kind}"))
                    continue
                if trace is not None:
                    trace.append(TraceStep(stage, rule, True, kind))
                return decision
            action = rule.action
            kind_of = type(action)
            if kind_of is UseClass or kind_of is ApplyMap:
                try:
                    chosen = action.choose(state)            # type: ignore[union-attr]
                except LookupFailed as failed:
                    state.hits.pop()
                    result = _lookup_failed(stage, rule, failed, state, trace, monitor_all)
                    if result is None:
                        continue
                    return result
                result = Ruleset._chosen(stage, rule, chosen, state, trace, monitor_all)
                if result is not None:
                    return result
                continue
            if (kind_of is Tarpit or kind_of is Stutter) and (rule.monitor or monitor_all):
                state.monitored.append((rule.rule_id, Decision(Outcome.CONTINUE, None, None,
                                                               f"would {kind} {action.seconds:g}s", rule.rule_id)))  # type: ignore[union-attr]
                if trace is not None:
                    trace.append(TraceStep(stage, rule, True, f"monitor: would {kind}"))
                continue
            if trace is not None:
                trace.append(TraceStep(stage, rule, True, _done(rule, state)))
            if kind_of is RunPlugin:
                return PluginCall(rule, index + 1)
            if action is not None:
                try:
                    action.apply(state, rule.rule_id)   # type: ignore[union-attr]
                except FactMissing as missing:          # its text names a fact not asked yet
                    state.hits.pop()
                    if trace is not None:
                        trace.pop()
                    return NeedFacts(missing.key, index)
                except LookupFailed as failed:          # its text names a map that could not answer
                    state.hits.pop()
                    if trace is not None:
                        trace.pop()
                    result = _lookup_failed(stage, rule, failed, state, trace, monitor_all)
                    if result is not None:
                        return result
        return None

    @staticmethod
    def _chosen(stage: Stage, rule: CompiledRule, chosen, state: SessionState, trace: list | None,
                monitor_all: bool) -> Decision | None:
        """What a `use` or `apply` rule chose: rules to run (a class), a
        decision, a plain action, or nothing."""
        if chosen is None:
            if trace is not None:
                trace.append(TraceStep(stage, rule, True, f"{rule.kind}: no entry" if rule.kind == "apply"
                                       else f"{rule.kind}: nothing decided"))
            return None
        if isinstance(chosen, tuple):
            if trace is not None:
                trace.append(TraceStep(stage, rule, True, f"{rule.kind}: class {_class_name(rule, chosen)}"))
            result = Ruleset._run(stage, chosen, 0, len(chosen), state, trace, monitor_all)
            if isinstance(result, Decision) and rule.monitor and result.outcome.refuses:
                state.monitored.append((rule.rule_id, result))
                return None
            return result          # type: ignore[return-value]  # classes hold no `run` (the compiler refuses it)
        if isinstance(chosen, Decision):
            decision = Decision(chosen.outcome, chosen.code, chosen.enhanced, chosen.text, rule.rule_id)
            if (rule.monitor or monitor_all) and decision.outcome.refuses:
                state.monitored.append((rule.rule_id, decision))
                if trace is not None:
                    trace.append(TraceStep(stage, rule, True, f"monitor: would {decision.outcome.value}"))
                return None
            if trace is not None:
                trace.append(TraceStep(stage, rule, True, f"apply: {decision.outcome.value}"))
            return decision
        chosen.apply(state, rule.rule_id)
        if trace is not None:
            trace.append(TraceStep(stage, rule, True, "apply: " + type(chosen).__name__.lower()))
        return None


# ---- equality groups ------------------------------------------------------------

_SCALARS = (str, int, bool)
MIN_GROUP = 3


def _equality(rule: CompiledRule):
    """(getter, value) when ``rule`` is `<terminal action> if <field> = <value>`."""
    if rule.outcome is None or rule.monitor or rule.equality is None:
        return None
    if type(rule.equality[1]) not in _SCALARS:
        return None
    return rule.equality


def _pattern(rule: CompiledRule):
    """(getter, pattern, length) when ``rule`` is `<terminal action> if <field> matches "re"`."""
    if rule.outcome is None or rule.monitor:
        return None
    return rule.pattern


def _groups(rules: tuple[CompiledRule, ...], monitor_all: bool) -> list[tuple]:
    """[(lo, hi, find)] for each run of at least MIN_GROUP consecutive
    equality rules (on any fields) or MIN_PATTERN_GROUP pattern rules on one
    field: ``find(state)`` is the index of the only rule of the run that can
    match first, None when none can, _UNKNOWN when the rules must decide."""
    if monitor_all:
        return []
    groups = []
    lo = 0
    while lo < len(rules):
        hi = lo
        tables: dict = {}
        while hi < len(rules):
            eq = _equality(rules[hi])
            if eq is None:
                break
            tables.setdefault(eq[0], {}).setdefault(eq[1], hi)
            hi += 1
        if hi - lo >= MIN_GROUP:
            groups.append((lo, hi, functools.partial(_first_hit, tuple(tables.items()))))
            lo = hi
            continue
        hi = lo
        first = _pattern(rules[lo])
        while hi < len(rules):
            pat = _pattern(rules[hi])
            if pat is None or pat[0] is not first[0] or pat[2] != first[2]:   # type: ignore[index]
                break
            hi += 1
        if hi - lo >= MIN_PATTERN_GROUP:
            finder = _pattern_finder(lo, rules[lo:hi])
            if finder is not None:
                groups.append((lo, hi, finder))
                lo = hi
                continue
        lo += 1
    return groups


MIN_PATTERN_GROUP = 4


def _pattern_finder(lo: int, rules: tuple[CompiledRule, ...]):
    """One RE2 set for the rules' patterns (on one field); None when RE2
    will not build it (then the rules run one by one, as always)."""
    from smtpfw.maps.regex import set_matcher

    get, _pattern_text, length = rules[0].pattern             # type: ignore[misc]
    try:
        match = set_matcher([r.pattern[1] for r in rules])   # type: ignore[index]
    except Exception:                                         # re2.error: too large, say
        return None

    def find(state: SessionState) -> Any:
        try:
            value = get(state)
        except (FactMissing, LookupFailed):                   # the rules themselves say what happens
            return _UNKNOWN
        hits = match(str(value)[:length].encode("utf-8", "surrogatepass"))
        return lo + min(hits) if hits else None
    return find


_UNKNOWN = object()

LOOKUP_FAILURE = (451, "4.3.0", "Temporary lookup failure")     # Postfix's words for a table that failed


def _lookup_failed(stage: Stage, rule: CompiledRule, failed: LookupFailed, state: SessionState,
                   trace: list | None, monitor_all: bool) -> Decision | None:
    """A rule reached a map that could not answer and fails closed: the hook
    is answered 451 4.3.0, as Postfix answers when a table lookup fails (the
    client retries; nothing is refused for good on a database outage).  A
    monitor rule only notes it."""
    code, enhanced, text = LOOKUP_FAILURE
    decision = Decision(Outcome.TEMPFAIL, code, enhanced, text, rule.rule_id)
    state.log_lines.append(("warn", rule.rule_id, f"lookup failed: {failed.reason}"))
    if rule.monitor or monitor_all:
        state.monitored.append((rule.rule_id, decision))
        if trace is not None:
            trace.append(TraceStep(stage, rule, True, f"monitor: would tempfail (lookup failed: {failed.reason})"))
        return None
    if trace is not None:
        trace.append(TraceStep(stage, rule, True, f"tempfail: lookup failed: {failed.reason}"))
    return decision


def _first_hit(tables, state: SessionState) -> Any:
    """Index of the first rule of a group that matches ``state``, None if
    none does, _UNKNOWN if a field's value cannot be looked up."""
    best = None
    for get, first in tables:
        try:
            value = get(state)
        except (FactMissing, LookupFailed):        # the rules themselves say what happens
            return _UNKNOWN
        if type(value) not in _SCALARS:
            return _UNKNOWN
        hit = first.get(value)
        if hit is not None and (best is None or hit < best):
            best = hit
    return best


def _done(rule: CompiledRule, state: SessionState) -> str:
    """The trace note of a matching non-terminal rule."""
    action = rule.action
    if type(action) is AddScore:
        return f"score {action.name} {action.weight:+d} (now {state.scores.get(action.name, 0) + action.weight})"
    return rule.kind


def _class_name(rule: CompiledRule, rules: tuple) -> str:
    action = rule.action
    if type(action) is UseClass:
        return action.name
    return rules[0].klass if rules and rules[0].klass else "?"


@dataclass(frozen=True, slots=True)
class TraceStep:
    stage: Stage
    rule: CompiledRule
    matched: bool
    note: str
