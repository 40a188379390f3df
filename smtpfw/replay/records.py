"""Reading recorded sessions for replay: which files, their records, and
why a record could not be replayed.

A record that fails ``recording.check_record`` or has the wrong shape is
the input's fault (``RecordError``, exit 2); a well-formed record that makes
replay raise is smtpfw's (``ReplayBug``, exit 3).  The shape is checked only
after replay raised, so the hot path pays nothing for it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import sys

from smtpfw.checks.dnsresult import LookupKind
from smtpfw.errors import PLEASE_REPORT, InternalError
from smtpfw.recording import RecordError, check_record
from smtpfw.verdict import Outcome

SESSION_FILE = re.compile(r"\.jsonl(\.\d+)?(\.gz)?$")


class ReplayBug(InternalError):
    """Replay raised on a well-formed record: a bug in smtpfw, not in the input."""


def session_files(paths: list[str]) -> list[str]:
    """Files named, and session files (.jsonl, .jsonl.gz, rotated .jsonl.N)
    found under folders, sorted; a missing path is a RecordError."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, _dirs, names in os.walk(path):
                found += [os.path.join(root, n) for n in names if SESSION_FILE.search(n)]
            out += sorted(found)
        elif os.path.exists(path) or path == "-":
            out.append(path)
        else:
            raise RecordError(f"{path}: no such file or folder")
    return out


def iter_records(path: str, progress=None):
    """(line number, checked record) from a .jsonl / .jsonl.gz file or "-".
    ``progress`` (a dry-run Progress) is shown the raw file, to count the bytes read."""
    try:
        fh, raw = _open_text(path)
    except OSError as err:
        raise RecordError(f"{path}: {err.strerror or err}") from None
    if progress is not None:
        progress.reading(raw)
    loads = json.loads
    try:
        number = 0
        try:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    data = loads(line)
                except ValueError as err:
                    raise RecordError(f"{path}:{number}: not JSON: {err}") from None
                yield number, check_record(data, f"{path}:{number}")
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise RecordError(f"{path}:{number + 1}: cannot read: {err}") from None
    finally:
        if fh is not sys.stdin:
            fh.close()
            raw.close()      # GzipFile does not close the file it was given


def _open_text(path: str):
    """(text stream, underlying raw file or None for stdin)."""
    if path == "-":
        return sys.stdin, None
    raw = open(path, "rb")
    binary = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
    return io.TextIOWrapper(binary, encoding="utf-8"), raw


# ---- why replay failed ------------------------------------------------------------

def replay_failure(err: Exception, record, where: str) -> RecordError | ReplayBug:
    """What to report when replaying ``record`` raised ``err``: the record's
    fault if its shape is wrong, else a bug."""
    problem = shape_problem(record)
    if problem is not None:
        return RecordError(f"{where}: cannot replay this session: {problem} ({type(err).__name__}: {err})")
    session = record.get("id") if isinstance(record, dict) else None
    return ReplayBug(f"{where}: internal error replaying session {session!r}: {type(err).__name__}: {err}; "
                     f"{PLEASE_REPORT} with this session record")


_EVENT_STRINGS = ("cmd", "arg", "addr", "user", "reply")
_EVENT_DICTS = ("params", "headers", "decision", "queue")


def shape_problem(record) -> str | None:
    """What is wrong with a record's shape for replay (docs/recording.md), or None."""
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    for key in ("client", "listener", "connect"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key!r} is not an object"
    if not isinstance(record.get("client"), dict):
        return "'client' is missing"
    if not isinstance(record["client"].get("ip", ""), str):
        return "'client.ip' is not a string"
    if not _is_int(record["client"].get("port", 0)) or not _is_int((record.get("listener") or {}).get("port", 0)):
        return "a 'port' is not a number"
    if not isinstance(record.get("events"), list):
        return "'events' is not a list"
    for i, ev in enumerate(record["events"], start=1):
        problem = _event_problem(ev)
        if problem is not None:
            return f"event {i}: {problem}"
    decision = (record.get("connect") or {}).get("decision")
    if decision and _decision_problem(decision):
        return f"'connect.decision': {_decision_problem(decision)}"
    dns = record.get("dns")
    if dns is not None and (not isinstance(dns, list) or not all(_dns_item_ok(item) for item in dns)):
        return "'dns' is not a list of {lookup, answer} objects"
    return None


def _event_problem(ev) -> str | None:
    if not isinstance(ev, dict):
        return "not an object"
    for key in _EVENT_STRINGS:
        if ev.get(key) is not None and not isinstance(ev[key], str):
            return f"{key!r} is not a string"
    for key in _EVENT_DICTS:
        if ev.get(key) is not None and not isinstance(ev[key], dict):
            return f"{key!r} is not an object"
    if ev.get("size") is not None and not _is_int(ev["size"]):
        return "'size' is not a number"
    for key in ("decision", "queue"):
        if ev.get(key) and _decision_problem(ev[key]):
            return f"{key!r}: {_decision_problem(ev[key])}"
    return None


_OUTCOMES = frozenset(o.value for o in Outcome)
_LOOKUP_KINDS = frozenset(k.value for k in LookupKind)


def _decision_problem(d: dict) -> str | None:
    if d.get("outcome") not in _OUTCOMES:
        return f"unknown outcome {d.get('outcome')!r}"
    if d.get("code") is not None and not _is_int(d["code"]):
        return "'code' is not a number"
    return None


def _dns_item_ok(item) -> bool:
    if not isinstance(item, dict):
        return False
    lookup, answer = item.get("lookup"), item.get("answer")
    return (isinstance(lookup, dict) and isinstance(answer, dict) and isinstance(answer.get("status"), str)
            and lookup.get("kind") in _LOOKUP_KINDS and isinstance(lookup.get("name"), str))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
