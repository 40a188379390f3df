"""Stages, outcomes and decisions: the typed vocabulary shared by the rule
engine, the SMTP front end, recording and dry-run.

The engine never produces reply strings; it produces a ``Decision``.  Only
``smtpfw.replies`` turns a (stage, decision) into the text a client sees.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Stage(str, enum.Enum):
    """SMTP stages, in the order a session meets them (the hook names)."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    QUEUE = "queue"
    DISCONNECT = "disconnect"

    @property
    def order(self) -> int:
        return _ORDER[self]


_ORDER = {stage: i for i, stage in enumerate(Stage)}


class Outcome(str, enum.Enum):
    """The closed set of hook results (qpsmtpd/Haraka: DECLINED, OK, DENY,
    DENYSOFT, DENY_DISCONNECT)."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCONNECT = "disconnect"

    # Plain attributes of each member, set below: asked several times per
    # command, where a property comparing members costs four times as much.
    terminal: bool                    # the hook's chain stops here
    refuses: bool                     # the client hears a 4xx/5xx


for _outcome in Outcome:
    _outcome.terminal = _outcome is not Outcome.CONTINUE
    _outcome.refuses = _outcome in (Outcome.REJECT, Outcome.TEMPFAIL, Outcome.DISCONNECT)
del _outcome


@dataclass(frozen=True, slots=True)
class Decision:
    """What one hook decided, and which rule decided it.

    ``code``/``enhanced``/``text`` are None when the rule gave none; the
    reply table fills in the defaults for the stage.
    """

    outcome: Outcome
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    rule_id: str | None = None

    def to_json(self) -> dict:
        return {
            "outcome": self.outcome.value,
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "rule": self.rule_id,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Decision":
        return cls(
            Outcome(data["outcome"]),
            data.get("code"),
            data.get("enhanced"),
            data.get("text"),
            data.get("rule"),
        )


CONTINUE = Decision(Outcome.CONTINUE)
