"""`smtpfw dry-run`: replay recorded sessions through a ruleset and compare."""

from __future__ import annotations

from smtpfw.commands.errors import CommandError
from smtpfw.commands.rulesets import compile_or_raise
from smtpfw.recording import RecordError
from smtpfw.replay.dryrun import Report, jobs_for, progress_for, replay_files
from smtpfw.replay.livedns import dns_source_factory
from smtpfw.replay.records import session_files
from smtpfw.settings import load_settings


def dry_run(sessions: list[str], *, rules: str | None = None, config: str | None = None,
            baseline: str | None = None, live_dns: bool = False, dns: str | None = None, examples: int = 3,
            jobs: int = 0, progress_stream=None, since: float | None = None) -> Report:
    """The dry-run report of ``sessions`` (files, folders, "-") against
    ``baseline`` (default: the verdicts recorded).  Progress goes to
    ``progress_stream`` when it is a terminal."""
    cfg, rules = load_settings(config, rules)
    ruleset = compile_or_raise(rules)
    base = compile_or_raise(baseline) if baseline else None
    live = bool(live_dns or dns)
    try:
        files = session_files(sessions)
        if not files:
            raise CommandError("no session files (.jsonl, .jsonl.gz) found")
        return replay_files(files, ruleset, rules, baseline=base, baseline_path=baseline, examples=examples,
                            jobs=jobs_for(files, jobs, live),
                            dns_factory=dns_source_factory(cfg.dns, dns) if live else None,
                            max_recipients=cfg.limits.max_recipients, progress=progress_for(progress_stream, files),
                            since=since)
    except RecordError as err:
        raise CommandError(str(err)) from None
