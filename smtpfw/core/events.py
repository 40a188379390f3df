"""Session events: what a conversation did, one frozen value per command
that reached the firewall's state.

An event is made when its command is finished (decision and reply known)
and never changed after; the recording writes ``to_json()`` of each, in
the shape of recording format version 1 (docs/recording.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from smtpfw.verdict import Decision, Stage


@dataclass(frozen=True, slots=True)
class Helo:
    name: str
    esmtp: bool
    decision: Decision
    reply: str

    def to_json(self) -> dict:
        return {"cmd": "ehlo" if self.esmtp else "helo", "arg": self.name,
                "decision": self.decision.to_json(), "reply": self.reply}


@dataclass(frozen=True, slots=True)
class Mail:
    address: str
    params: dict
    decision: Decision
    reply: str

    def to_json(self) -> dict:
        return {"cmd": "mail", "addr": self.address, "params": self.params,
                "decision": self.decision.to_json(), "reply": self.reply}


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: str
    decision: Decision
    reply: str

    def to_json(self) -> dict:
        return {"cmd": "rcpt", "addr": self.address, "decision": self.decision.to_json(), "reply": self.reply}


@dataclass(frozen=True, slots=True)
class Data:
    size: int
    headers: dict                     # the recorded header fields (recording.headers)
    decision: Decision                # the data hook's
    queue: Decision | None            # the queue hook's (None: data refused)
    reply: str

    def to_json(self) -> dict:
        out = {"cmd": "data", "size": self.size, "headers": self.headers, "decision": self.decision.to_json()}
        if self.queue is not None:
            out["queue"] = self.queue.to_json()
        out["reply"] = self.reply
        return out


@dataclass(frozen=True, slots=True)
class Rset:
    def to_json(self) -> dict:
        return {"cmd": "rset"}


@dataclass(frozen=True, slots=True)
class StartTls:
    def to_json(self) -> dict:
        return {"cmd": "starttls"}


@dataclass(frozen=True, slots=True)
class Auth:
    user: str

    def to_json(self) -> dict:
        return {"cmd": "auth", "user": self.user}


@dataclass(frozen=True, slots=True)
class Unrecognized:
    def to_json(self) -> dict:
        return {"cmd": "unrecognized"}


Event = Helo | Mail | Rcpt | Data | Rset | StartTls | Auth | Unrecognized


class Step(NamedTuple):
    """What the front end does after one command.

    ``reply`` goes to the client (a front end may decorate an EHLO reply
    with its extensions), then ``after`` if set (the 421 that follows the
    error over the limit), then the connection is closed if ``close``.
    ``reached`` is False when the command's hook did not run (a sequence
    error, a limit); ``decision`` and ``stage`` are the hook's when it did.
    ``deliver``: the rules accepted the message; deliver it, then report
    the outcome with ``Conversation.delivered``.  (A NamedTuple: immutable
    like the events, and made on every command, where a frozen dataclass
    costs three times as much.)
    """

    reply: str
    close: bool = False
    after: str = ""
    reached: bool = True
    decision: Decision | None = None
    stage: Stage | None = None
    note: str = ""
    deliver: bool = False
