"""What a matching rule that does not decide does: typed actions, applied
by the engine to the session state (no dispatch on the action's name).

Terminal actions (accept, reject, tempfail, disconnect) are not here: they
become a ``Decision``.  ``RunPlugin`` is not applied but returned, because a
plugin runs outside the pure evaluation (the engine pauses there).
``UseClass`` and ``ApplyMap`` may decide: the engine asks them to ``choose``
what happens (rules to run, a decision, or a plain action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from smtpfw.session import SessionState

Render = Callable[[SessionState], str]


@dataclass(frozen=True, slots=True)
class SetTag:
    """`tag NAME`: later rules can test `tagged NAME`."""

    name: str

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.tags.add(self.name)


@dataclass(frozen=True, slots=True)
class Note:
    """`log "..."` / `warn "..."`: a line for the server's log, as it happens."""

    level: str                   # "log" | "warn"
    render: Render

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.log_lines.append((self.level, rule_id, self.render(state)))


@dataclass(frozen=True, slots=True)
class AddHeader:
    """`add_header NAME "..."`: a header field put on the message if it is accepted."""

    name: str
    render: Render

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.add_headers.append((self.name, self.render(state)))


@dataclass(frozen=True, slots=True)
class AddScore:
    """`score NAME +N`: adds N (which may be negative) to the session's score
    NAME; `score.NAME` tests the total.  Each addition is kept, with its
    rule, for trace, dry-run and the session log."""

    name: str
    weight: int

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.scores[self.name] = state.scores.get(self.name, 0) + self.weight
        state.score_hits.append((self.name, self.weight, rule_id, state.stage))


@dataclass(frozen=True, slots=True)
class AddCount:
    """`count NAME [+N]`: adds N to counter NAME of this session's key in
    the state store, once the hook is decided (an effect: rules in the same
    hook read the value from before)."""

    name: str
    amount: int
    keep: float
    key: Callable[[SessionState], str]          # the counter's store key for this session

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.effects.append((self.key(state), float(self.amount), self.keep))


@dataclass(frozen=True, slots=True)
class Tarpit:
    """`tarpit 5s`: every reply to this client from now on is sent that much
    later (OpenBSD spamd's tarpit; the SMTP front end waits on a timer, not
    a thread, and only for as many clients as `limits.max_tarpitted`)."""

    seconds: float

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.tarpit = max(state.tarpit, self.seconds)


@dataclass(frozen=True, slots=True)
class Stutter:
    """`stutter 10s`: for that long from the next reply on, replies to this
    client go out one byte a second (OpenBSD spamd's stutter: a bot that
    waits for whole lines wastes its time), then whole again.  Bounded like
    `tarpit`, by `limits.max_tarpitted`."""

    seconds: float

    def apply(self, state: SessionState, rule_id: str) -> None:
        state.stutter = max(state.stutter, self.seconds)


@dataclass(frozen=True, slots=True)
class UseClass:
    """`use NAME`: the rules of restriction class NAME run here; the first
    that decides decides for this rule."""

    name: str
    rules: tuple          # CompiledRule, compiled for the hook that uses them

    def choose(self, state: SessionState) -> Any:
        return self.rules


@dataclass(frozen=True, slots=True)
class ApplyMap:
    """`apply MAP(field)`: the map's value for the field is the action
    (Postfix access(5)): a ``Decision``, the rules of a class, a plain
    action (WARN, PREPEND), or None (no entry, DUNNO)."""

    map_name: str
    choose: Callable[[SessionState], Any]


@dataclass(frozen=True, slots=True)
class RunPlugin:
    """`run NAME`: the engine pauses and the caller runs the plugin."""

    name: str


Action = SetTag | Note | AddHeader | AddScore | AddCount | Tarpit | Stutter | UseClass | ApplyMap | RunPlugin


def action_for(kind: str, arg: str | None, render: Render | None, weight: int | None = None) -> Action | None:
    """The action of a non-terminal rule keyword (None for terminal ones;
    `use` and `apply` are built by the compiler, which knows their rules)."""
    if kind == "score":
        return AddScore(arg or "", weight or 0)
    if kind == "tarpit":
        return Tarpit(float(weight or 0))
    if kind == "stutter":
        return Stutter(float(weight or 0))
    if kind == "tag":
        return SetTag(arg or "")
    if kind in ("log", "warn"):
        return Note(kind, render)
    if kind == "add_header":
        return AddHeader(arg or "", render)
    if kind == "run":
        return RunPlugin(arg or "")
    return None
