"""The compiled hook chain and its evaluation.

Evaluation is pure and synchronous: it reads ``SessionState`` (whose DNS
answers were gathered before) and returns a ``Decision``.  The only place
it stops early is a ``run <plugin>`` step: it returns a ``PluginCall`` and
the caller (server, replay) runs the plugin and resumes at ``next_index``.

Within a hook, rules run in order and the first terminal action wins; with
no terminal action the hook continues.  A ``monitor`` rule (or a ruleset in
``option mode = monitor``) records what it would have refused and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from smtpfw.checks.dnsresult import Lookup
from smtpfw.session import SessionState
from smtpfw.verdict import CONTINUE, Decision, Outcome, Stage

Test = Callable[[SessionState], bool]
LookupMaker = Callable[[SessionState], "Lookup | None"]


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
    monitor: bool = False
    node: object = None                        # the ast.Rule, for trace and lint
    leaves: tuple = ()                         # (ast condition leaf, Test) for trace


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
    dns_needs: dict[Stage, tuple[LookupMaker, ...]]    # lookups a hook's rules test
    dns_starts: dict[Stage, tuple[LookupMaker, ...]]   # lookups whose input is known at a stage
    plugins: dict[str, object] = field(default_factory=dict)   # name -> plugin instance
    sources: dict[str, str] = field(default_factory=dict)      # file -> text (for messages)
    rules: tuple[CompiledRule, ...] = ()                        # all rules, in source order
    files: tuple[str, ...] = ()                                 # rule and list files read

    @property
    def monitor_all(self) -> bool:
        return self.options.get("mode") == "monitor"

    @property
    def delay_reject(self) -> bool:
        return bool(self.options.get("delay_reject"))

    def lookups(self, table: dict, stage: Stage, state: SessionState) -> list[Lookup]:
        out = []
        for make in table.get(stage, ()):
            lk = make(state)
            if lk is not None:
                out.append(lk)
        return out

    def evaluate(self, stage: Stage, state: SessionState, start: int = 0,
                 trace: list | None = None) -> Decision | PluginCall:
        rules = self.hooks.get(stage, ())
        monitor_all = self.monitor_all
        for index in range(start, len(rules)):
            rule = rules[index]
            test = rule.test
            if test is not None and not test(state):
                if trace is not None:
                    trace.append(TraceStep(stage, rule, False, "no match"))
                continue
            state.hits.append(rule.rule_id)
            kind = rule.kind
            if rule.outcome is not None:
                decision = Decision(
                    rule.outcome, rule.code, rule.enhanced,
                    rule.render_text(state) if rule.render_text is not None else None,
                    rule.rule_id)
                if (rule.monitor or monitor_all) and rule.outcome.refuses:
                    state.monitored.append((rule.rule_id, decision))
                    if trace is not None:
                        trace.append(TraceStep(stage, rule, True, f"monitor: would {kind}"))
                    continue
                if trace is not None:
                    trace.append(TraceStep(stage, rule, True, kind))
                return decision
            if trace is not None:
                trace.append(TraceStep(stage, rule, True, kind))
            if kind == "tag":
                state.tags.add(rule.arg)
            elif kind == "log" or kind == "warn":
                state.log_lines.append((kind, rule.rule_id, rule.render_arg(state)))
            elif kind == "add_header":
                state.add_headers.append((rule.arg, rule.render_arg(state)))
            elif kind == "run":
                return PluginCall(rule, index + 1)
        return CONTINUE


@dataclass(frozen=True, slots=True)
class TraceStep:
    stage: Stage
    rule: CompiledRule
    matched: bool
    note: str
