"""Recorded sessions -> ruleset -> verdicts: replay, dry-run, trace,
ruleset tests and log import (docs/dry-run.md)."""

from smtpfw.replay.session import (ReplayResult, Replayer, Verdict, recorded_verdict, replay_record,
                                   verdict_of)

__all__ = ["ReplayResult", "Replayer", "Verdict", "recorded_verdict", "replay_record", "verdict_of"]
