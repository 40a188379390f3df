"""A canary (shadow) ruleset: judged beside the live one on every live
session, never affecting a reply.

When a session ends, its record — the commands, and every fact the live
rules gathered (DNS answers, map lookups, SPF/DKIM/DMARC, scans) — is
replayed through the canary ruleset, as `smtpfw dry-run` would replay it,
and the two verdicts are compared.  A divergence is logged with both
verdicts and counted (metric ``smtpfw_canary_divergences_total``), so a
change can run on real traffic for a day before it is promoted (copy it
over the live rules and reload).  What the canary needs that the live
rules did not ask (a new DNS list) is "not in recording" for it, as in a
dry-run; limits and greylisting run on a store of the canary's own.
"""

from __future__ import annotations

import logging

from smtpfw import metrics
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.replay.session import Replayer, recorded_events, verdict_of

log = logging.getLogger("smtpfw.canary")


class Canary:
    def __init__(self, rules_path: str):
        self.rules_path = rules_path
        self.replayer: Replayer | None = None
        self.version = ""
        self.divergences = 0
        self.sessions = 0
        self.load()

    def load(self) -> bool:
        """(Re)compile the canary rules; a ruleset with errors keeps the one
        before (or none), and says so."""
        ruleset, diags = compile_ruleset(self.rules_path)
        if ruleset is None:
            errors = "; ".join(d.message for d in diags[:3])
            log.error("canary rules %s have errors, %s: %s", self.rules_path,
                      "keeping the ones before" if self.replayer else "no canary", errors)
            return False
        if self.replayer is not None:
            self.replayer.close()
        self.replayer = Replayer(ruleset, hostname="canary")
        self.version = ruleset.version
        log.info("canary rules %s: version %s", self.rules_path, ruleset.version)
        return True

    def judge(self, record: dict) -> None:
        """Compare the canary's verdict on ``record`` with the live one (as
        recorded).  Never raises."""
        if self.replayer is None:
            return
        try:
            live = verdict_of(*recorded_events(record))
            verdict = self.replayer.replay(record).verdict
        except Exception:                       # a canary must never cost a live session anything
            log.exception("canary: replaying session %s failed", record.get("id"))
            return
        self.sessions += 1
        if verdict.key() == live.key():
            return
        self.divergences += 1
        metrics.canary_divergence(live.kind, verdict.kind)
        log.warning('canary session=%s live="%s" canary="%s" canary_rules=%s', record.get("id"),
                    live.describe(), verdict.describe(), self.version)

    def close(self) -> None:
        if self.replayer is not None:
            self.replayer.close()
            self.replayer = None

