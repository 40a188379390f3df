"""`smtpfw dry-run`: replay recorded sessions through a ruleset, summarise,
and list what changes against a baseline (another ruleset, or by default
the verdicts recorded in the sessions).

The comparison is per session: its verdict (``replay.session.Verdict``)
and each command's decision.  A session is

- *newly rejected* when the baseline let it through (accepted, or no mail
  attempted) and the ruleset refuses it (reject, tempfail or disconnect),
  grouped by the rule that now refuses it;
- *newly accepted* when the baseline refused it and the ruleset does not,
  grouped by the rule that used to refuse it;
- *changed* for every other difference: refused at another stage or by
  another rule, or the same verdict with some command decided otherwise
  (e.g. one of three recipients now refused).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from smtpfw.recording import RecordError, check_record
from smtpfw.replay.records import ReplayBug, iter_records, replay_failure
from smtpfw.replay.session import (KINDS, REFUSING, EventResult, Replayer, ReplayResult, Verdict, recorded_events,
                                   same_as_recorded, verdict_of)
from smtpfw.verdict import Outcome, Stage

# Records imported from another system's log carry that system's verdicts, its rule
# names (postfix:reject_rbl_client ...) never an smtpfw rule id: such a session is
# compared by outcome (refusal kind, stage, reply code), not by which rule refused.
FOREIGN_RULESETS = frozenset({"postfix"})

NEWLY_REJECTED, NEWLY_ACCEPTED, CHANGED = "newly_rejected", "newly_accepted", "changed"
CATEGORIES = (NEWLY_REJECTED, NEWLY_ACCEPTED, CHANGED)
_TITLES = {NEWLY_REJECTED: "newly rejected", NEWLY_ACCEPTED: "newly accepted", CHANGED: "changed"}


# ---- the report ---------------------------------------------------------------

@dataclass
class Group:
    category: str
    key: str                      # the rule (or description) the sessions are grouped by
    rule: str | None
    detail: str                   # "rejected at rcpt (554)" etc.
    count: int = 0
    examples: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"rule": self.rule, "key": self.key, "detail": self.detail, "count": self.count,
                "examples": self.examples}


@dataclass
class Report:
    rules: str
    ruleset_version: str
    baseline: str | None            # None: the recorded verdicts
    baseline_version: str | None
    files: list = field(default_factory=list)
    sessions: int = 0
    verdicts: Counter = field(default_factory=Counter)
    base_verdicts: Counter = field(default_factory=Counter)
    hooks: dict = field(default_factory=dict)          # stage -> Counter(outcome -> n)
    hits: Counter = field(default_factory=Counter)
    rule_ids: list = field(default_factory=list)
    monitored: Counter = field(default_factory=Counter)
    groups: dict = field(default_factory=dict)         # (category, key) -> Group
    changes: Counter = field(default_factory=Counter)  # category -> sessions
    uncoded: Counter = field(default_factory=Counter)  # zone -> sessions with a listing without codes
    scores: dict = field(default_factory=dict)         # score name -> Counter(total -> sessions)
    refused: dict = field(default_factory=dict)        # "client", "sender", "sender domain" -> Counter
    skipped: int = 0                                   # records older than ``since`` (smtpfw stats --days)
    foreign: Counter = field(default_factory=Counter)  # sessions compared by outcome, by the system they came from
    elapsed: float = 0.0

    @property
    def never_fired(self) -> list[str]:
        return [r for r in self.rule_ids if not self.hits.get(r)]

    @property
    def changed_sessions(self) -> int:
        return sum(self.changes.values())

    def to_json(self) -> dict:
        stages = [s.value for s in Stage if s.value in self.hooks]
        return {
            "version": 1,
            "rules": self.rules,
            "ruleset": self.ruleset_version,
            "baseline": {"kind": "ruleset", "rules": self.baseline, "ruleset": self.baseline_version}
            if self.baseline else {"kind": "recorded",
                                   **({"compared_by_outcome": dict(self.foreign)} if self.foreign else {})},
            "files": self.files,
            "sessions": self.sessions,
            "verdicts": {k: self.verdicts.get(k, 0) for k in KINDS},
            "baseline_verdicts": {k: self.base_verdicts.get(k, 0) for k in KINDS},
            "hooks": {s: dict(self.hooks[s]) for s in stages},
            "rule_hits": {r: self.hits.get(r, 0) for r in self.rule_ids},
            "never_fired": self.never_fired,
            "monitored": dict(self.monitored),
            "changes": {
                "sessions": self.changed_sessions,
                **{cat: {"count": self.changes.get(cat, 0),
                         "groups": [g.to_json() for g in self._groups(cat)]} for cat in CATEGORIES},
            },
            "listings_without_codes": dict(self.uncoded),
            "scores": {name: {str(total): n for total, n in sorted(self.score_totals(name).items())}
                       for name in sorted(self.scores)},
            "elapsed_seconds": round(self.elapsed, 3),
        }

    def score_totals(self, name: str) -> Counter:
        """Sessions by their total of score ``name`` (0: no rule added to it)."""
        counts = Counter(self.scores.get(name, ()))
        unscored = self.sessions - sum(counts.values())
        if unscored:
            counts[0] += unscored
        return counts

    def _groups(self, category: str) -> list[Group]:
        gs = [g for (cat, _k), g in self.groups.items() if cat == category]
        return sorted(gs, key=lambda g: (-g.count, g.key))


def new_report(ruleset, rules_path: str, baseline=None, baseline_path: str | None = None) -> Report:
    """An empty report for this ruleset (and baseline)."""
    return Report(rules_path, ruleset.version, baseline_path, baseline.version if baseline is not None else None,
                  rule_ids=list(dict.fromkeys(r.rule_id for r in ruleset.rules)))


def _count_refused(refused: dict, record: dict) -> None:
    """Who a refused session came from: its client, its sender, the sender's domain."""
    refused.setdefault("client", Counter())[str((record.get("client") or {}).get("ip") or "?")] += 1
    sender = next((str(e.get("addr") or "") for e in record.get("events") or () if e.get("cmd") == "mail"), None)
    if sender is not None:
        refused.setdefault("sender", Counter())[sender or "<>"] += 1
        refused.setdefault("sender domain", Counter())[sender.rpartition("@")[2].lower() or "<>"] += 1


def _example(result: ReplayResult, base: Verdict, new: Verdict, what: str) -> dict:
    rec = result.record
    helo = sender = None
    rcpts: list[str] = []
    for e in rec["events"]:
        cmd = e.get("cmd")
        if cmd in ("helo", "ehlo") and helo is None:
            helo = e.get("arg")
        elif cmd == "mail" and sender is None:
            sender = e.get("addr")
        elif cmd == "rcpt" and len(rcpts) < 5:
            rcpts.append(e.get("addr"))
    return {
        "id": rec.get("id"),
        "time": rec.get("time"),
        "client": rec["client"].get("ip"),
        "helo": helo,
        "from": sender,
        "rcpts": rcpts,
        "was": base.describe(),
        "now": new.describe(),
        "was_reply": base.reply,
        "now_reply": new.reply,
        "what": what,
    }


def _first_difference(base_events: list, new_events: list,
                      same: Callable[..., tuple] = lambda e: e.key()) -> tuple[str, str]:
    """(group key, description) of the first command decided otherwise (``same``: what is compared)."""
    for b, n in zip(base_events, new_events):
        if same(b) != same(n):
            kb, kn = b.key(), n.key()
            change = f"{_describe_key(kb)} -> {_describe_key(kn)}"
            subject = f" {n.subject}" if n.subject else ""
            return f"{n.cmd}: {change}", f"{n.cmd}{subject}: {change}"
    return "decisions differ", "decisions differ"


def _describe_key(key: tuple) -> str:
    if key[0] in ("pass", "not-reached"):
        return key[0]
    outcome, rule, code = key
    return f"{outcome}{f' by {rule}' if rule else ''} ({code})"


class DryRun:
    """Accumulates a Report, one session at a time."""

    def __init__(self, ruleset, rules_path: str, baseline=None, baseline_path: str | None = None,
                 examples: int = 3, dns_factory=None, synchronous_dns=None, max_recipients: int = 100,
                 since: float | None = None):
        self.since = since
        self.replayer = Replayer(ruleset, dns_factory, max_recipients=max_recipients,
                                 synchronous_dns=synchronous_dns)
        self.base_replayer = (Replayer(baseline, dns_factory, max_recipients=max_recipients,
                                       synchronous_dns=synchronous_dns) if baseline is not None else None)
        self.examples = examples
        self.report = new_report(ruleset, rules_path, baseline, baseline_path)
        self._hooks: dict = {}

    def close(self) -> None:
        self.replayer.close()
        if self.base_replayer is not None:
            self.base_replayer.close()

    def add(self, record: dict) -> ReplayResult | None:
        rep = self.report
        if self.since is not None and float(record.get("time") or 0) < self.since:
            rep.skipped += 1
            return None
        result = self.replayer.replay(record)
        new = result.verdict
        if new.kind in REFUSING:
            _count_refused(rep.refused, record)
        compared: tuple[EventResult, list[EventResult]] | None     # the baseline's decisions
        if self.base_replayer is not None:
            base_result = self.base_replayer.replay(record)
            compared, base = (base_result.connect, base_result.events), base_result.verdict
        elif same_as_recorded(record, result):
            compared, base = None, new
        else:
            compared = recorded_events(record)
            base = verdict_of(*compared)
        rep.sessions += 1
        rep.verdicts[new.kind] += 1
        rep.base_verdicts[base.kind] += 1
        hooks = self._hooks
        for stage, decision, _subject in result.decisions:
            hook = (stage, decision.outcome)
            hooks[hook] = hooks.get(hook, 0) + 1
        rep.hits.update(result.hits)
        rep.uncoded.update(result.uncoded)
        for name, total in result.scores.items():
            rep.scores.setdefault(name, Counter())[total] += 1
        for rule_id, _d in result.monitored:
            rep.monitored[rule_id] += 1
        # compare
        foreign = self.base_replayer is None and record.get("ruleset") in FOREIGN_RULESETS
        if foreign:
            rep.foreign[record["ruleset"]] += 1
        if compared is None:
            return result
        base_connect, base_events = compared
        same: Callable[[Verdict | EventResult], tuple] = _outcome_key if foreign else _rule_key
        if same(new) != same(base):
            if base.kind not in REFUSING and new.kind in REFUSING:
                cat, v = NEWLY_REJECTED, new
            elif base.kind in REFUSING and new.kind not in REFUSING:
                cat, v = NEWLY_ACCEPTED, base
            else:
                cat, v = CHANGED, None
            if v is not None:
                key, rule = v.rule or "(no rule)", v.rule
                detail = f"{'now' if cat == NEWLY_REJECTED else 'was'} {v.kind} at {v.stage}" + (
                    f" ({v.code})" if v.code else "")
            else:
                key = f"{base.describe()} -> {new.describe()}"
                rule, detail = new.rule or base.rule, "verdict changed"
            self._note(cat, key, rule, detail, result, base, new, "")
        elif same(result.connect) != same(base_connect) or any(
                same(b) != same(n) for b, n in zip(base_events, result.events)):
            key, what = _first_difference([base_connect] + list(base_events), [result.connect] + result.events, same)
            self._note(CHANGED, key, None, "same verdict, a command decided otherwise", result, base, new, what)
        return result

    def _note(self, cat, key, rule, detail, result, base, new, what) -> None:
        rep = self.report
        rep.changes[cat] += 1
        g = rep.groups.get((cat, key))
        if g is None:
            g = rep.groups[(cat, key)] = Group(cat, key, rule, detail)
        g.count += 1
        if len(g.examples) < self.examples:
            g.examples.append(_example(result, base, new, what))

    def finish(self) -> Report:
        rep = self.report
        for (stage, outcome), n in self._hooks.items():
            rep.hooks.setdefault(stage.value, Counter())[outcome.value] += n
        rep.hooks = {s.value: rep.hooks[s.value] for s in Stage if s.value in rep.hooks}
        return rep


# ---- output -------------------------------------------------------------------

def _fmt_time(t) -> str:
    if not t:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (ValueError, OverflowError, OSError):
        return str(t)


def format_text(rep: Report) -> str:
    out: list[str] = []
    w = out.append
    against = (f"baseline {rep.baseline} (ruleset {rep.baseline_version})" if rep.baseline
               else "the verdicts recorded in the sessions")
    w(f"dry-run of {rep.rules} (ruleset {rep.ruleset_version}) over {rep.sessions:,} session"
      f"{'s' if rep.sessions != 1 else ''} from {len(rep.files)} file{'s' if len(rep.files) != 1 else ''}")
    w(f"compared with {against}")
    for system, count in sorted(rep.foreign.items()):
        w(f"  {count:,} session{'s' if count != 1 else ''} came from a {system} log: compared by verdict, stage "
          f"and reply code, not by which rule decided ({system}'s rule names are not smtpfw's)")
    w("")
    w(f"{'verdicts':<16}{'now':>10}{'before':>10}")
    for k in KINDS:
        w(f"  {k:<14}{rep.verdicts.get(k, 0):>10,}{rep.base_verdicts.get(k, 0):>10,}")
    w("")
    cols = [o.value for o in Outcome]
    w(f"{'hooks':<16}{'runs':>10}" + "".join(f"{c:>12}" for c in cols))
    for stage, counts in rep.hooks.items():
        w(f"  {stage:<14}{sum(counts.values()):>10,}" + "".join(f"{counts.get(c, 0):>12,}" for c in cols))
    w("")
    if rep.rule_ids:
        width = max(len(r) for r in rep.rule_ids) + 2
        w("rule hits")
        for r in rep.rule_ids:
            w(f"  {r:<{width}}{rep.hits.get(r, 0):>10,}")
        never = rep.never_fired
        w("never fired: " + (", ".join(never) if never else "(none)"))
    if rep.monitored:
        w("monitor mode, would have refused: " + ", ".join(f"{r} {n:,}" for r, n in rep.monitored.most_common()))
    for name in sorted(rep.scores):
        w(f"score {name}, sessions by total: "
          + ", ".join(f"{total:+d}: {n:,}" if total else f"0: {n:,}"
                      for total, n in sorted(rep.score_totals(name).items())))
    for zone, sessions in sorted(rep.uncoded.items()):
        w(f"note: {sessions:,} session{'s' if sessions != 1 else ''} had a listing in {zone} without its return codes "
          f"(sessions imported from a mail log do not carry them), so a `codes [...]` filter never matched it; "
          f"re-run with --live-dns, or test the zone without codes to see those sessions")
    w("")
    c = rep.changes
    if not rep.changed_sessions:
        w("no changes")
    else:
        w(f"changes: {rep.changed_sessions:,} session{'s' if rep.changed_sessions != 1 else ''} "
          f"(newly rejected {c.get(NEWLY_REJECTED, 0):,}, newly accepted {c.get(NEWLY_ACCEPTED, 0):,}, "
          f"changed {c.get(CHANGED, 0):,})")
        for cat in CATEGORIES:
            groups = rep._groups(cat)
            if not groups:
                continue
            w("")
            w(f"{_TITLES[cat]}: {c.get(cat, 0):,} session{'s' if c.get(cat, 0) != 1 else ''}")
            for g in groups:
                n = f"{g.count:,} session{'s' if g.count != 1 else ''}"
                if cat == NEWLY_REJECTED:
                    w(f"  by {g.key}, {g.detail[4:]}: {n}")
                elif cat == NEWLY_ACCEPTED:
                    w(f"  no longer refused by {g.key} ({g.detail}): {n}")
                else:
                    w(f"  {g.key}: {n}")
                for ex in g.examples:
                    rcpts = ", ".join(f"<{r}>" for r in ex["rcpts"])
                    sender = f"<{ex['from']}>" if ex["from"] is not None else "-"
                    w(f"    {ex['id']}  {_fmt_time(ex['time'])}  {ex['client']}  helo {ex['helo'] or '-'}  "
                      f"{sender} -> {rcpts or '-'}")
                    if cat == CHANGED and ex["what"]:
                        w(f"        {ex['what']}")
                    else:
                        w(f"        was {ex['was']}" + (f": {ex['was_reply']}" if ex["was_reply"] else ""))
                        w(f"        now {ex['now']}" + (f": {ex['now_reply']}" if ex["now_reply"] else ""))
    return "\n".join(out) + "\n"


# ---- the command --------------------------------------------------------------

class Progress:
    """A one-line progress display on stderr, only on a terminal.  It
    counts bytes (of .gz files: compressed bytes), not files: a single
    268 MB recording moves the bar too."""

    WIDTH = 20

    def __init__(self, stream, files: int, sizes: Sequence[int] = ()):
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self.files = files
        self.sizes = list(sizes) or [0] * files      # sizes unknown: files only
        self.total = sum(self.sizes)
        self.raw = None
        self.start = time.monotonic()
        self.last = 0.0

    def reading(self, raw) -> None:
        """The raw file being read now (its position is the progress)."""
        self.raw = raw

    def update(self, sessions: int, file_index: int, force: bool = False, position: int | None = None) -> None:
        """``position``: bytes done in file ``file_index`` (default: where its raw file is)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        done = sum(self.sizes[:file_index - 1]) + self._position(file_index, position)
        rate = sessions / max(now - self.start, 1e-6)
        self.stream.write(f"\r{self._bar(done)}file {file_index}/{self.files}  {sessions:,} sessions  {rate:,.0f}/s ")
        self.stream.flush()

    def _position(self, file_index: int, position: int | None) -> int:
        size = self.sizes[file_index - 1] if 0 < file_index <= self.files else 0
        if position is None:
            try:
                position = self.raw.tell() if self.raw is not None else size
            except (ValueError, OSError):     # closed: the file is done
                position = size
        return min(position, size)

    def _bar(self, done: int) -> str:
        if not self.total:                   # stdin: no size to measure against
            return ""
        filled = int(self.WIDTH * done / self.total)
        return (f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {100 * done // self.total:3d}% "
                f"{done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  ")

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


def progress_for(stream, files: list[str]) -> Progress:
    """A progress display on ``stream`` (shown only if it is a terminal) for these files."""
    return Progress(stream, len(files), [_size(path) for path in files])


def _size(path: str) -> int:
    try:
        return os.path.getsize(path) if path != "-" else 0
    except OSError:
        return 0


# ---- parallel replay ----------------------------------------------------------
#
# Replay is CPU-bound Python; large inputs are cut into byte ranges (whole
# lines) and .gz files, replayed in worker processes (fork: the compiled
# rulesets are inherited, not pickled), and the partial reports merged in
# input order, so the output is the same for any number of jobs.

CHUNK_BYTES = 4 << 20
PARALLEL_MIN_BYTES = 16 << 20
_FORK_STATE: dict = {}


def plan_chunks(files: list[str], chunk_bytes: int = CHUNK_BYTES) -> list[tuple[str, int, int | None]]:
    chunks: list[tuple[str, int, int | None]] = []
    for path in files:
        if path == "-" or path.endswith(".gz"):
            chunks.append((path, 0, None))
            continue
        size = os.path.getsize(path)
        if size <= chunk_bytes:
            chunks.append((path, 0, None))
            continue
        for start in range(0, size, chunk_bytes):
            chunks.append((path, start, start + chunk_bytes))
    return chunks


def _iter_range(path: str, start: int, end: int):
    """(byte offset, checked record) for the lines that start in [start, end)."""
    loads = json.loads
    with open(path, "rb") as fh:
        if start:
            fh.seek(start - 1)
            fh.readline()          # the line that straddles `start` belongs to the chunk before
        pos = fh.tell()
        while pos < end:
            line = fh.readline()
            if not line:
                break
            here = pos
            pos += len(line)
            if not line.strip():
                continue
            where = f"{path}:@{here}"
            try:
                data = loads(line)
            except ValueError as err:
                raise RecordError(f"{where}: not JSON: {err}") from None
            yield here, check_record(data, where)


def _replay_chunk(chunk) -> tuple[Report | None, str | None, bool]:
    """(partial report, None, False), or (None, what went wrong, whether it is a bug)."""
    path, start, end = chunk
    state = _FORK_STATE
    dry = DryRun(state["ruleset"], state["rules"], state["baseline"], state["baseline_path"],
                 examples=state["examples"], max_recipients=state["max_recipients"], since=state["since"])
    records = (iter_records(path) if end is None
               else ((f"@{offset}", record) for offset, record in _iter_range(path, start, end)))
    try:
        for number, record in records:
            try:
                dry.add(record)
            except Exception as err:  # noqa: BLE001 -- told apart by replay_failure
                raise replay_failure(err, record, f"{path}:{number}") from None
    except RecordError as err:
        return None, str(err), False
    except ReplayBug as err:
        return None, str(err), True
    finally:
        dry.close()
    return dry.finish(), None, False


_AT = re.compile(r"^(.*?):@(\d+):")


def _locate(message: str) -> str:
    """path:@OFFSET: -> path:LINE: (counted only when there is an error)."""
    m = _AT.match(message)
    if not m:
        return message
    path, offset = m.group(1), int(m.group(2))
    try:
        with open(path, "rb") as fh:
            line = fh.read(offset).count(b"\n") + 1
    except OSError:
        return message
    return f"{path}:{line}:" + message[m.end():]


def _rule_key(v: Verdict | EventResult) -> tuple:
    return v.key()


def _outcome_key(v: Verdict | EventResult) -> tuple:
    """``key()`` without the rule: (kind, stage, code) of a verdict, (outcome, code) of a decision."""
    k = v.key()
    return (k[0], k[1], k[3]) if isinstance(v, Verdict) else (k[0], k[2]) if len(k) == 3 else k


def merge(into: Report, part: Report, examples: int) -> None:
    into.sessions += part.sessions
    into.foreign.update(part.foreign)
    into.verdicts.update(part.verdicts)
    into.base_verdicts.update(part.base_verdicts)
    into.hits.update(part.hits)
    into.monitored.update(part.monitored)
    into.uncoded.update(part.uncoded)
    for name, counts in part.scores.items():
        into.scores.setdefault(name, Counter()).update(counts)
    into.changes.update(part.changes)
    into.skipped += part.skipped
    for what, counts in part.refused.items():
        into.refused.setdefault(what, Counter()).update(counts)
    for stage, counts in part.hooks.items():
        into.hooks.setdefault(stage, Counter()).update(counts)
    into.hooks = {s.value: into.hooks[s.value] for s in Stage if s.value in into.hooks}
    for key, g in part.groups.items():
        mine = into.groups.get(key)
        if mine is None:
            into.groups[key] = Group(g.category, g.key, g.rule, g.detail, g.count, list(g.examples[:examples]))
        else:
            mine.count += g.count
            mine.examples.extend(g.examples[:max(0, examples - len(mine.examples))])


def _run_parallel(jobs: int, files: list[str], report: Report, examples: int, progress) -> None:
    """Replay ``files`` in ``jobs`` forked workers into ``report``; raises
    RecordError or ReplayBug for the first chunk that fails."""
    chunks = plan_chunks(files)
    ctx = multiprocessing.get_context("fork")
    index = {path: i for i, path in enumerate(files, start=1)}
    with ctx.Pool(jobs) as pool:
        for chunk, (part, error, bug) in zip(chunks, pool.imap(_replay_chunk, chunks)):
            if part is None:
                pool.terminate()
                raise (ReplayBug if bug else RecordError)(_locate(str(error)))
            merge(report, part, examples)
            progress.update(report.sessions, index[chunk[0]], force=True, position=chunk[2] or _size(chunk[0]))


def _auto_jobs(files: list[str]) -> int:
    total = 0
    for path in files:
        if path != "-":
            try:
                total += os.path.getsize(path) * (8 if path.endswith(".gz") else 1)
            except OSError:
                pass
    if total < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 8, len(plan_chunks(files))))


# ---- replaying files -------------------------------------------------------------

def replay_files(files: list[str], ruleset, rules_path: str, *, baseline=None, baseline_path: str | None = None,
                 examples: int = 3, jobs: int = 1, dns_factory=None, max_recipients: int = 100,
                 progress: Progress | None = None, since: float | None = None) -> Report:
    """The report of replaying every record of ``files``.  Raises RecordError
    for unreadable input and ReplayBug when replay itself fails."""
    progress = progress or Progress(None, len(files))
    started = time.perf_counter()
    if ruleset.stateful or (baseline is not None and baseline.stateful):
        jobs = 1            # one state store, sessions in order: limits and greylisting replay as they ran
    if jobs > 1:
        _FORK_STATE.update(ruleset=ruleset, rules=rules_path, baseline=baseline, baseline_path=baseline_path,
                           examples=examples, max_recipients=max_recipients, since=since)
        report = new_report(ruleset, rules_path, baseline, baseline_path)
        try:
            _run_parallel(jobs, files, report, examples, progress)
        finally:
            progress.done()
            _FORK_STATE.clear()
    else:
        dry = DryRun(ruleset, rules_path, baseline, baseline_path, examples=examples, dns_factory=dns_factory,
                     synchronous_dns=False if dns_factory is not None else None, max_recipients=max_recipients,
                     since=since)
        try:
            _replay_serially(dry, files, progress)
        finally:
            progress.done()
            dry.close()
        report = dry.finish()
    report.files = files
    report.elapsed = time.perf_counter() - started
    return report


def _replay_serially(dry: DryRun, files: list[str], progress: Progress) -> None:
    add = dry.add
    for index, path in enumerate(files, start=1):
        for number, record in iter_records(path, progress):
            try:
                add(record)
            except Exception as err:  # noqa: BLE001 -- told apart by replay_failure
                raise replay_failure(err, record, f"{path}:{number}") from None
            if not number & 1023:
                progress.update(dry.report.sessions, index)
    progress.update(dry.report.sessions, len(files), force=True)


def jobs_for(files: list[str], jobs: int, live_dns: bool) -> int:
    """Worker processes: ``jobs`` if given, else by input size; one for live
    DNS (one resolver and its cache) or stdin (it cannot be split)."""
    if live_dns or "-" in files:
        return 1
    return jobs or _auto_jobs(files)
