"""Frozen AST nodes.  Every node carries the ``Span`` it came from, so the
compiler, lint, trace and dry-run can point at the exact source text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar, Union

from smtpfw.diagnostics import Span

T = TypeVar("T")


# ---- values -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Value:
    """A literal.  ``kind`` is "string", "number", "address" or "boolean"."""

    kind: str
    value: object
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class InlineList:
    items: tuple[Value, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListRef:
    name: str
    span: Span


SetRef = Union[InlineList, ListRef, Value, "Field"]     # a Field: the items of a map value


@dataclass(frozen=True, slots=True)
class CodeFilter:
    """Accepted DNSBL return codes: exact addresses, ranges and bitmasks."""

    exact: tuple[str, ...]
    ranges: tuple[tuple[str, str], ...]
    masks: tuple[int, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ZoneRef:
    name: str | None          # a declared zone
    kind: str | None          # or an inline zone: "dnsbl"/"rhsbl" + domain
    domain: str | None
    span: Span


# ---- conditions -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """A field (``sender.domain``), or a map lookup (``access(sender)``:
    ``name`` is the map, ``key`` the field whose value is looked up)."""

    name: str
    span: Span
    key: "Field | None" = None

    @property
    def text(self) -> str:
        return f"{self.name}({self.key.name})" if self.key is not None else self.name


@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: str                   # "=", "!=", "<", "<=", ">", ">="
    value: "Value | Field"    # a Field: compare two fields
    span: Span


@dataclass(frozen=True, slots=True)
class Member:
    """field in set / field within set (domain or subdomain of)."""

    field: Field
    target: SetRef
    within: bool
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Pattern:
    field: Field
    kind: str                 # "regex" or "glob"
    pattern: Value
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Listed:
    field: Field
    zone: ZoneRef
    codes: CodeFilter | None
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class LookupFailed:
    field: Field
    zone: ZoneRef
    span: Span


@dataclass(frozen=True, slots=True)
class Tagged:
    tag: str
    span: Span


@dataclass(frozen=True, slots=True)
class Truthy:
    field: Field
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: "Condition"
    span: Span


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple["Condition", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple["Condition", ...]
    span: Span


Condition = Union[Compare, Member, Pattern, Listed, LookupFailed, Tagged, Truthy, Not, And, Or]
LEAVES = (Compare, Member, Pattern, Listed, LookupFailed, Tagged, Truthy)


def children(cond: "Condition | None") -> tuple:
    """The conditions directly inside ``cond`` (none for a leaf)."""
    if type(cond) is And or type(cond) is Or:
        return cond.operands                       # type: ignore[union-attr]
    if type(cond) is Not:
        return (cond.operand,)                     # type: ignore[union-attr]
    return ()


def leaves(cond: "Condition | None") -> Iterator["Condition"]:
    """The leaf tests of ``cond``, in source order."""
    stack = [cond]
    while stack:
        node = stack.pop()
        inner = children(node)
        if inner:
            stack.extend(reversed(inner))
        elif node is not None:
            yield node


class ConditionVisitor(Generic[T]):
    """One method per kind of condition node (``visit_compare``,
    ``visit_member``, ... ``visit_and``): ``visit`` picks it by the node's
    class, so a walk over conditions is a class with those methods rather
    than a chain of isinstance tests, and a new kind of node is one new
    method wherever conditions are walked (a missing one fails loudly)."""

    def visit(self, node: "Condition", *args: Any) -> T:
        method = _VISIT.get(type(node))
        if method is None:
            raise TypeError(f"not a condition node: {node!r}")
        return getattr(self, method)(node, *args)


_VISIT = {kind: "visit_" + kind.__name__.lower() for kind in LEAVES + (Not, And, Or)}
_VISIT[LookupFailed] = "visit_lookup_failed"


# ---- actions and rules ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None
    enhanced: str | None
    text: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class Action:
    """``kind`` is accept, reject, tempfail, disconnect (terminal) or tag,
    log, warn, add_header, run (not terminal)."""

    kind: str
    span: Span
    reply: Reply | None = None
    arg: str | None = None        # tag name, log text, plugin name, header name
    arg2: str | None = None       # header value
    arg_span: Span | None = None
    weight: int | None = None     # score: what it adds
    field: Field | None = None    # apply: the map lookup whose value is the action

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_ACTIONS


TERMINAL_ACTIONS = frozenset({"accept", "reject", "tempfail", "disconnect"})
ACTIONS = ("accept", "reject", "tempfail", "disconnect", "tag", "log", "warn",
           "add_header", "run", "score", "use", "apply", "count", "tarpit", "stutter")


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    label_given: bool
    hook: str
    action: Action
    condition: Condition | None
    monitor: bool
    span: Span
    klass: str | None = None      # the restriction class it belongs to (then ``hook`` is "")


# ---- declarations -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListDecl:
    name: str
    file: str | None              # path as written
    items: InlineList | None
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class MapDecl:
    """A table whose entries carry a value: ``fmt`` "access" (Postfix
    access(5) keys), "regexp" or "pcre" (Postfix regexp/pcre tables)."""

    name: str
    fmt: str
    file: str | None              # path as written
    pairs: tuple[tuple[str, str, Span], ...]   # inline entries: key, value, span
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class LimitDecl:
    """`limit NAME = N per SPAN, ... by FIELD, ... [counting WHAT]`: a rate
    limit in the state store, keyed by the fields' values."""

    name: str
    rates: tuple[tuple[int, float, Span], ...]    # (limit, window seconds, where); window 0: concurrent sessions
    keys: tuple["Field | Value", ...]             # fields (or a constant text: one global key)
    counting: str | None
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class CounterDecl:
    """`counter NAME = SPAN by FIELD, ...`: a number per key in the state
    store that outlives sessions, kept ``keep`` seconds after its last change."""

    name: str
    keep: float
    keys: tuple["Field | Value", ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class ZoneDecl:
    name: str
    kind: str                     # "dnsbl" or "rhsbl"
    domain: str
    codes: CodeFilter | None
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class PluginDecl:
    name: str
    target: str                   # "package.module:Class"
    args: tuple[tuple[str, object], ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class OptionDecl:
    name: str
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class HookHeader:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class ClassHeader:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Include:
    path: str
    span: Span


Statement = Union[Rule, ListDecl, MapDecl, LimitDecl, CounterDecl, ZoneDecl, PluginDecl, OptionDecl, HookHeader, ClassHeader, Include]


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    statements: tuple[Statement, ...]
