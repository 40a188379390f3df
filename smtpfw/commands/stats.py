"""`smtpfw stats`: what the rules do on real traffic — from recorded
sessions (replayed through the ruleset, so the numbers are the ones a
dry-run shows) or from a running server's metrics endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from smtpfw.commands.dryrun import dry_run
from smtpfw.commands.errors import CommandError
from smtpfw.commands.rulesets import compile_or_raise
from smtpfw.settings import load_settings


@dataclass
class Stats:
    source: str                                   # "recordings" or the metrics URL
    rules: str
    sessions: int = 0
    verdicts: dict = field(default_factory=dict)  # kind -> sessions
    hits: dict = field(default_factory=dict)      # rule id -> hits, in the ruleset's order
    monitored: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)   # "client" / "sender" / "sender domain" -> [(who, n)]
    days: float | None = None
    skipped: int = 0                              # records older than the window
    canary: dict = field(default_factory=dict)    # "live -> canary" -> sessions (metrics)
    unhealthy_zones: list = field(default_factory=list)   # DNS lists failing their test entries (metrics)

    @property
    def never_hit(self) -> list[str]:
        return [r for r, n in self.hits.items() if not n]

    def to_json(self) -> dict:
        return {"source": self.source, "rules": self.rules, "days": self.days, "sessions": self.sessions,
                "older_sessions_skipped": self.skipped, "verdicts": self.verdicts, "rule_hits": self.hits,
                "never_hit": self.never_hit, "monitored": self.monitored,
                "top_refused": {k: [list(p) for p in v] for k, v in self.refused.items()},
                "canary_divergences": self.canary, "unhealthy_dns_lists": self.unhealthy_zones}

    def to_text(self) -> str:
        out = [f"smtpfw stats: {self.source}, rules {self.rules}"
               + (f", last {self.days:g} days" if self.days else "")]
        if self.sessions or self.source == "recordings":
            out.append(f"sessions: {self.sessions:,}" + (f" ({self.skipped:,} older ones left out)" if self.skipped else ""))
        if self.verdicts:
            out.append("verdicts: " + ", ".join(f"{k} {n:,}" for k, n in self.verdicts.items() if n))
        width = max((len(r) for r in self.hits), default=4) + 2
        out.append("rule hits")
        for rule, n in sorted(self.hits.items(), key=lambda kv: -kv[1]):
            out.append(f"  {rule:<{width}}{n:>10,}")
        out.append("never hit: " + (", ".join(self.never_hit) or "(none)"))
        if self.monitored:
            out.append("monitor mode, would have refused: " + ", ".join(f"{r} {n:,}" for r, n in self.monitored.items()))
        if self.unhealthy_zones:
            out.append("unhealthy DNS lists (skipped or failing; see the log): " + ", ".join(self.unhealthy_zones))
        if self.canary:
            out.append("canary ruleset judged otherwise: " + ", ".join(f"{k} {n:,}" for k, n in self.canary.items()))
        for what, top in self.refused.items():
            out.append(f"top refused by {what}: " + (", ".join(f"{who} {n:,}" for who, n in top) or "(none)"))
        return "\n".join(out) + "\n"


def stats_from_recordings(sessions: list[str], *, rules: str | None = None, config: str | None = None,
                          days: float | None = None, top: int = 10, jobs: int = 0) -> Stats:
    since = time.time() - days * 86400 if days else None
    report = dry_run(sessions, rules=rules, config=config, jobs=jobs, since=since)
    return Stats("recordings", report.rules, report.sessions, {k: n for k, n in report.verdicts.items()},
                 {r: report.hits.get(r, 0) for r in report.rule_ids}, dict(report.monitored),
                 {what: counts.most_common(top) for what, counts in sorted(report.refused.items())},
                 days, report.skipped)


def stats_from_metrics(url: str, *, rules: str | None = None, config: str | None = None) -> Stats:
    """The running server's counters (since it started), against the rule
    ids of ``rules`` so that rules never hit are named too."""
    _cfg, rules_path = load_settings(config, rules)
    ruleset = compile_or_raise(rules_path)
    try:
        text = urllib.request.urlopen(url if url.endswith("/metrics") else url.rstrip("/") + "/metrics",
                                      timeout=10).read().decode()
    except (OSError, urllib.error.URLError) as err:
        raise CommandError(f"cannot read the metrics at {url}: {err}") from None
    from prometheus_client.parser import text_string_to_metric_families

    hits: Counter = Counter()
    monitored: Counter = Counter()
    decisions: Counter = Counter()
    canary: Counter = Counter()
    unhealthy: set[str] = set()
    sessions = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "smtpfw_rule_hits_total":
                hits[sample.labels["rule"]] += int(sample.value)
            elif sample.name == "smtpfw_rule_monitored_total":
                monitored[sample.labels["rule"]] += int(sample.value)
            elif sample.name == "smtpfw_sessions_total":
                sessions += int(sample.value)
            elif sample.name == "smtpfw_decisions_total":
                decisions[f"{sample.labels['hook']} {sample.labels['outcome']}"] += int(sample.value)
            elif sample.name == "smtpfw_dns_zone_healthy" and sample.value == 0:
                unhealthy.add(f"{sample.labels['kind']} {sample.labels['zone']}")
            elif sample.name == "smtpfw_canary_divergences_total":
                canary[f"{sample.labels['live']} -> {sample.labels['canary']}"] += int(sample.value)
    ids = list(dict.fromkeys(r.rule_id for r in ruleset.rules))
    return Stats(url, rules_path, sessions, dict(decisions), {r: hits.get(r, 0) for r in ids}, dict(monitored),
                 canary=dict(canary), unhealthy_zones=sorted(unhealthy))
