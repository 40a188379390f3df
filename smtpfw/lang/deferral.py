"""Which hooks may be decided after their reply: smtpd_delay_reject's timing.

With `option delay_reject`, a refusal at connect, HELO or MAIL is held
until RCPT (or DATA): whatever such a hook decides, the client hears 220 or
250 at its own command.  Postfix goes one step further and evaluates the
client, HELO and sender restrictions only at RCPT time.  smtpfw does the
same where it cannot be told apart: the SMTP front end answers at once and
the hook is decided in the background, its DNS lookups running while the
client goes on; the hooks are decided in order before the next command
that needs them (RCPT, RSET, STARTTLS, a new HELO, the end of the session).
A connect-time DNSBL lookup and a MAIL-time RHSBL lookup are then waited
for together, once, instead of one after the other (docs/performance.md,
workload e).

A hook qualifies only when nothing it can do is heard before RCPT:

- every rule refuses (held) or adds a score, a tag, a log or warn line;
  never accept, disconnect, tarpit, stutter, run, use, apply or count;
- no rule tests or writes a field that changes later in the session
  without passing a point where hooks are decided (``session.*``, the
  clock's ``time.*``);
- the ruleset keeps no state and runs no plugin (a limit counts when it
  is asked; a plugin may read anything).
"""

from __future__ import annotations

import re

from smtpfw.lang import ast
from smtpfw.verdict import Outcome, Stage

EARLY = (Stage.CONNECT, Stage.HELO, Stage.MAIL)
_HEARD_LATE = frozenset({Outcome.REJECT, Outcome.TEMPFAIL})          # held by delay_reject
_QUIET_ACTIONS = frozenset({"score", "tag", "log", "warn"})
_CHANGING = ("session.", "time.")
_CHANGING_TEXT = re.compile(r"\{\s*(?:session|time)\.")


def decided_late(hooks: dict, options: dict, stateful: bool, plugins: dict) -> frozenset[Stage]:
    """The early hooks the SMTP front end may answer before deciding."""
    if not options.get("delay_reject") or stateful or plugins:
        return frozenset()
    return frozenset(stage for stage in EARLY if all(_quiet(rule) for rule in hooks.get(stage, ())))


def _quiet(rule) -> bool:
    """The rule's effect cannot be heard before RCPT, nor depend on when it runs."""
    if rule.outcome is not None:
        if rule.outcome not in _HEARD_LATE:
            return False
    elif rule.kind not in _QUIET_ACTIONS:
        return False
    for leaf, _test in rule.leaves:
        field = getattr(leaf, "field", None)
        while field is not None:
            if field.name.startswith(_CHANGING):
                return False
            field = field.key
    node = rule.node
    if isinstance(node, ast.Rule):
        action = node.action
        texts = (action.reply.text if action.reply is not None else None, action.arg, action.arg2)
        if any(text and _CHANGING_TEXT.search(text) for text in texts):
            return False
    return True
