"""Lint checks that depend on where a ruleset runs: the front end it runs
behind (``--mode``: W604) and the resolver it asks (``--config``: W705).

One ruleset runs in every place smtpfw sits (docs/policy.md): inline
(smtp), as a Postfix policy service (policy) and as a milter (milter).  A
field a mode never has leaves its rules silently never matching there:
Postfix sends a policy service no message, and behind Postfix neither mode
sees the client's own bytes (the greeting, its pipelining, its bare LFs).
"""

from __future__ import annotations

from smtpfw.checks.health import public_resolvers
from smtpfw.diagnostics import Code, Diagnostic
from smtpfw.engine import Ruleset

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


def resolver_diagnostics(zone_decls, nameservers) -> list[Diagnostic]:
    """W705 for each DNS list declared when the configured resolvers include
    a public one: the big lists refuse those (or answer 127.255.255.x), so
    every lookup fails and the rule quietly stops working."""
    public = public_resolvers(nameservers)
    if not public:
        return []
    via = ", ".join(public)
    return [Diagnostic(Code.W705_PUBLIC_RESOLVER,
                       f"zone `{decl.name}` ({decl.domain}) would be asked through {via}, a public resolver: "
                       "the big DNS lists refuse those or answer 127.255.255.x, so its lookups fail",
                       decl.name_span, help="set dns.nameservers in the config to a resolver of your own "
                                            "(a local unbound or the site's resolver)")
            for decl in zone_decls]
