"""Dry-run diffs in the background: the recordings replayed through the
saved ruleset (the baseline) and the edited one, by the same code as
`smtpfw dry-run --baseline` (smtpfw.replay.dryrun.replay_files), in a
thread of their own.  The page polls ``Job.status`` for progress (bytes of
the recordings read, sessions replayed) and the report when it is done; a
job can be cancelled, and a new one cancels the one before it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field

from smtpfw.commands.errors import CommandError, RulesetError
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import RecordError
from smtpfw.replay.dryrun import Progress, format_text, replay_files
from smtpfw.replay.records import session_files
from smtpfw.settings import load_settings
from smtpfw.workbench.files import Workspace, shadow

EXAMPLES = 25            # changed sessions listed per group


class Cancelled(Exception):
    pass


class _Progress(Progress):
    """dry-run's progress, kept for the page instead of drawn on a terminal."""

    def __init__(self, job: Job, files: list[str], sizes: list[int]):
        super().__init__(None, len(files), sizes)
        self.job = job

    def update(self, sessions: int, file_index: int, force: bool = False, position: int | None = None) -> None:
        if self.job.cancelled:
            raise Cancelled()
        self.job.sessions = sessions
        self.job.bytes_done = sum(self.sizes[:file_index - 1]) + self._position(file_index, position)

    def done(self) -> None:
        pass


@dataclass
class Job:
    id: str
    state: str = "running"            # running, done, failed, cancelled
    sessions: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    files: int = 0
    started: float = field(default_factory=time.monotonic)
    report: dict | None = None
    text: str | None = None
    error: str | None = None
    diagnostics: list | None = None
    cancelled: bool = False

    def status(self) -> dict:
        return {"id": self.id, "state": self.state, "sessions": self.sessions, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "files": self.files,
                "elapsed": round(time.monotonic() - self.started, 2), "report": self.report, "text": self.text,
                "error": self.error, "diagnostics": self.diagnostics}


class DryRuns:
    """The dry-run jobs of one workbench (the last few are kept)."""

    KEEP = 4

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, ws: Workspace, edits: dict[str, str], recordings: str, config: str | None,
              diagnostics_json) -> Job:
        job = Job(f"d{next(self._ids)}")
        with self._lock:
            for other in self.jobs.values():
                other.cancelled = True
            self.jobs[job.id] = job
            for old in list(self.jobs)[:-self.KEEP]:
                del self.jobs[old]
        threading.Thread(target=self._run, args=(job, ws, edits, recordings, config, diagnostics_json),
                         name=f"workbench-dry-run-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def _run(self, job: Job, ws: Workspace, edits: dict[str, str], recordings: str, config: str | None,
             diagnostics_json) -> None:
        try:
            cfg, _rules = load_settings(config, ws.rules)
            baseline, _base_diags = compile_ruleset(ws.rules)
            if baseline is None:
                raise CommandError("the saved ruleset does not compile: nothing to compare with")
            with shadow(ws, edits) as sh:
                ruleset, diags = compile_ruleset(sh.rules)
                if ruleset is None:
                    job.diagnostics = [diagnostics_json(d, sh) for d in diags]
                    raise RulesetError(ws.rules, list(diags))
            try:
                files = session_files([recordings])
            except RecordError as err:
                raise CommandError(str(err)) from None
            if not files:
                raise CommandError(f"no recorded sessions (.jsonl, .jsonl.gz) under {recordings}")
            sizes = [_size(f) for f in files]
            job.files, job.bytes_total = len(files), sum(sizes)
            report = replay_files(files, ruleset, ws.rules + " (edited)", baseline=baseline,
                                  baseline_path=ws.rules + " (saved)", examples=EXAMPLES, jobs=1,
                                  max_recipients=cfg.limits.max_recipients, progress=_Progress(job, files, sizes))
            job.report = report.to_json()
            job.text = format_text(report)
            job.sessions, job.bytes_done = report.sessions, job.bytes_total
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except RulesetError:
            job.error = "the edited ruleset has errors: see the editor"
            job.state = "failed"
        except CommandError as err:
            job.error = "; ".join(err.problems)
            job.state = "failed"
        except Exception as err:  # noqa: BLE001 -- shown on the page, not lost in a thread
            job.error = f"{type(err).__name__}: {err}"
            job.state = "failed"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
