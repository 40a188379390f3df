"""Which fields a front end can never give (for lint's W604).

One ruleset runs in every place smtpfw sits (docs/policy.md): inline
(smtp), as a Postfix policy service (policy) and as a milter (milter).  A
field a mode never has leaves its rules silently never matching there:
Postfix sends a policy service no message, and behind Postfix neither mode
sees the client's own bytes (the greeting, its pipelining, its bare LFs).
"""

from __future__ import annotations

from smtpfw.diagnostics import Code, Diagnostic
from smtpfw.engine import Ruleset

MODES = ("smtp", "policy", "milter")
_BEHIND_POSTFIX = "the MTA in front talks to the client, not smtpfw"
# mode -> (field name or prefix ending in "." or "_", why it is never known there)
NEVER = {
    "policy": (("header.", "Postfix sends a policy service no message (use the milter mode)"),
               ("message.size", "Postfix sends a policy service no message (use the milter mode)"),
               ("client.pregreet", _BEHIND_POSTFIX), ("session.unauth_pipelining", _BEHIND_POSTFIX),
               ("session.bare_newline", _BEHIND_POSTFIX), ("session.unrecognized", _BEHIND_POSTFIX)),
    "milter": (("client.pregreet", _BEHIND_POSTFIX), ("session.unauth_pipelining", _BEHIND_POSTFIX),
               ("session.bare_newline", _BEHIND_POSTFIX), ("session.unrecognized", _BEHIND_POSTFIX)),
}


def _why_never(mode: str, field: str) -> str | None:
    for name, why in NEVER.get(mode, ()):
        if field == name or (field.startswith(name) and name[-1] in "._") or field.startswith(name + "_"):
            return why
    return None


def mode_diagnostics(ruleset: Ruleset, modes) -> list[Diagnostic]:
    """W604 for each field a rule tests that one of ``modes`` never has."""
    out = []
    rules = [rule for hook in ruleset.hooks.values() for rule in hook]
    for rule in rules:
        for leaf, _test in rule.leaves:
            field = getattr(leaf, "field", None)
            if field is None:
                continue
            for mode in modes:
                why = _why_never(mode, field.name)
                if why:
                    out.append(Diagnostic(
                        Code.W604_FIELD_NOT_IN_MODE,
                        f"`{field.name}` is never known when smtpfw runs in {mode} mode: {why}",
                        field.span,
                        help=f"in {mode} mode the field is always empty (false, 0 or \"\"); "
                             "the rule is fine for the modes that have it"))
    return out
