"""What a matching rule that does not decide does: typed actions, applied
by the engine to the session state (no dispatch on the action's name).

Terminal actions (accept, reject, tempfail, disconnect) are not here: they
become a ``Decision``.  ``RunPlugin`` is not applied but returned, because a
plugin runs outside the pure evaluation (the engine pauses there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
class RunPlugin:
    """`run NAME`: the engine pauses and the caller runs the plugin."""

    name: str


Action = SetTag | Note | AddHeader | RunPlugin


def action_for(kind: str, arg: str | None, render: Render | None) -> Action | None:
    """The action of a non-terminal rule keyword (None for terminal ones)."""
    if kind == "tag":
        return SetTag(arg or "")
    if kind in ("log", "warn"):
        return Note(kind, render)
    if kind == "add_header":
        return AddHeader(arg or "", render)
    if kind == "run":
        return RunPlugin(arg or "")
    return None
