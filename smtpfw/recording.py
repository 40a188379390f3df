"""Session records: one JSON object per SMTP session (JSON Lines on disk).

The record feeds the recording and dry-run; the per-session log line says
the same things, made from the session itself (every session is logged).
Format version 2 (docs/recording.md):

    {"v": 2, "id", "time", "duration", "ruleset",
     "listener": {"address", "port", "name"}, "client": {"ip", "port"},
     "tls", "auth", "auth_user",
     "connect": {"decision", "reply"},
     "events": [{"cmd": "helo"|"ehlo", "arg", "decision", "reply"},
                {"cmd": "mail", "addr", "params", "decision", "reply"},
                {"cmd": "rcpt", "addr", "decision", "reply"},
                {"cmd": "data", "size", "headers", "decision", "queue", "reply"},
                {"cmd": "rset"}],
     "facts": [{"provider": "dns", "key": {...}, "value": {...}}],
     "tags", "monitored": [{"rule", "decision"}], "final_reply", "refusal",
     "events_dropped" (only when some were),
     "behaviour": {"pregreet", "pregreet_text", "pregreet_ms", "pregreet_cached", "pass_new",
                   "unauth_pipelining", "non_smtp", "bare_newline"} (only what happened)}

Version 1 had the DNS answers as "dns": [{"lookup", "answer"}]; version 2
keeps every fact (smtpfw.facts) under one key.  Bodies are never recorded.
Readers accept versions 1 and 2 and say clearly when a record is newer or
malformed.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import logging
import os
import threading
from typing import Iterator

from smtpfw import facts
from smtpfw.core.events import Data, Helo, Mail, Rcpt
from smtpfw.logformat import LogLine, kv_value
from smtpfw.session import SessionState
from smtpfw.verdict import Decision
from smtpfw.pid import pid

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)   # 1: DNS answers under "dns"; 2: every fact under "facts"
LOG_RCPTS = 20             # recipients shown on a session's log line
log = logging.getLogger("smtpfw.session")


class RecordError(Exception):
    pass


def session_record(state: SessionState, ruleset_version: str, duration: float) -> dict:
    return {
        "v": FORMAT_VERSION,
        "id": state.session_id,
        "time": round(state.started, 3),
        "duration": round(duration, 4),
        "ruleset": ruleset_version,
        "listener": {"address": state.listener_address, "port": state.listener_port,
                     "name": state.listener_name},
        "client": {"ip": state.client_ip, "port": state.client_port},
        "tls": state.tls,
        "auth": state.auth,
        "auth_user": state.auth_user,
        "connect": {"reply": state.connect_reply,
                    "decision": connect.to_json() if (connect := _first_decision(state, "connect")) else None},
        "events": [e.to_json() for e in state.events],
        "facts": facts.encode(state.facts),
        "tags": sorted(state.tags),
        **({"scores": scores_json(state)} if state.scores else {}),
        "monitored": [{"rule": rid, "decision": d.to_json()} for rid, d in state.monitored],
        "final_reply": state.final_reply,
        **({"events_dropped": state.events_dropped} if state.events_dropped else {}),
        **({"behaviour": behaviour} if (behaviour := _behaviour(state)) else {}),
        "refusal": state.refusal,
    }


BEHAVIOUR = ("pregreet", "pregreet_text", "pregreet_ms", "pregreet_cached", "pass_new", "unauth_pipelining",
             "non_smtp", "bare_newline")


def _behaviour(state: SessionState) -> dict:
    """How the client behaved (the bot tests), where it did anything (a
    pregreet with its text and time, even 0 ms)."""
    return {name: getattr(state, name) for name in BEHAVIOUR
            if getattr(state, name) or (state.pregreet and name.startswith("pregreet"))}


def scores_json(state: SessionState) -> dict:
    """Each score's total and what made it: {"spam": {"total": 5, "by": [["rule", 3], ...]}}."""
    out: dict = {name: {"total": total, "by": []} for name, total in sorted(state.scores.items())}
    for name, weight, rule_id, _hook in state.score_hits:
        if name in out:
            out[name]["by"].append([rule_id, weight])
    return out


def _first_decision(state: SessionState, stage: str) -> Decision | None:
    for st, decision, _ in state.decisions:
        if st.value == stage:
            return decision
    return None


def recorded_facts(record: dict) -> dict:
    """The facts a session's rules saw (format 2 "facts", or format 1 "dns")."""
    return facts.decode(record)


def check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a session record (a JSON object)")
    version = record.get("v")
    if version not in READABLE_VERSIONS:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise RecordError(f"{where}: recorded with format version {version}; this smtpfw reads "
                              f"versions {READABLE_VERSIONS[0]} to {FORMAT_VERSION} — upgrade smtpfw to replay it")
        raise RecordError(f"{where}: unknown record format version {version!r}")
    for key in ("client", "events"):
        if key not in record:
            raise RecordError(f"{where}: record has no {key!r}")
    return record


def read_records(path: str) -> Iterator[dict]:
    """Records from a .jsonl or .jsonl.gz file, checked; errors name file:line."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        fh = opener(path, "rt", encoding="utf-8")
    except OSError as err:
        raise RecordError(f"{path}: {err.strerror or err}") from None
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as err:
                raise RecordError(f"{path}:{number}: not JSON: {err}") from None
            yield check_record(data, f"{path}:{number}")


def log_line(state: SessionState, ruleset_version: str, duration: float, fmt: str) -> LogLine:
    """The one structured line per session (its fields ride along for the
    json log format; docs/recording.md#the-session-log-line).  Made from the
    session itself, not from its record: every session is logged, few are
    recorded, and the record (every event and fact as JSON) costs more than
    the line."""
    fields = _log_fields(state, ruleset_version, duration)
    if fmt == "json":
        return LogLine(json.dumps(fields, separators=(",", ":")), fields)
    parts = []
    for k, v in fields.items():
        if v is None or v == [] or v == "":
            continue
        if isinstance(v, list):
            v = ",".join(v)
        parts.append(f"{k}={kv_value(str(v))}")
    return LogLine(" ".join(parts), fields)


_COMMAND = {Rcpt: "rcpt", Mail: "mail", Data: "data"}


def _log_fields(state: SessionState, ruleset_version: str, duration: float) -> dict:
    helo, senders, rcpts, size, data_reply, decided = "", [], [], None, None, []
    connect = _first_decision(state, "connect")
    if connect is not None and connect.rule_id:
        decided.append(f"connect:{connect.rule_id}")
    for event in state.events:
        kind = type(event)
        if kind is Rcpt:
            rcpts.append(f"{event.address}:{(event.reply or '')[:3]}")
        elif kind is Mail:
            senders.append(event.address)
        elif kind is Helo:
            helo = helo or event.name
        elif kind is Data:
            size, data_reply = event.size, event.reply
        else:
            continue
        if event.decision.rule_id:
            decided.append(f"{_COMMAND.get(kind) or ('ehlo' if event.esmtp else 'helo')}:{event.decision.rule_id}")
    if len(rcpts) > LOG_RCPTS:          # one line per session stays a line (the record has them all)
        rcpts[LOG_RCPTS:] = [f"+{len(rcpts) - LOG_RCPTS} more"]
    refusal = state.refusal or ""
    reply = data_reply or refusal or state.final_reply or state.connect_reply
    return {
        "session": state.session_id,
        "client": state.client_ip,
        "helo": helo,
        "from": (senders[-1] or "<>") if senders else None,
        "rcpts": rcpts,
        "size": size,
        "reply": reply,
        "refusal": refusal if refusal != reply else None,
        "decided_by": decided,
        "would": [f"{rule}:{d.outcome.value}" for rule, d in state.monitored],
        "scores": [f"{name}={total}" for name, total in sorted(state.scores.items())],
        "ruleset": ruleset_version,
        "duration_ms": round(duration * 1000, 1),
    }


class Recorder:
    """Appends records as JSON Lines; rotates daily or by size.

    Writes are line-buffered appends from the event loop thread; a line is
    small (no bodies), so this costs microseconds.
    """

    def __init__(self, directory: str, rotate: str = "daily", max_bytes: int = 100 * 2**20):
        self.directory = directory
        self.rotate = rotate
        self.max_bytes = max_bytes
        self._fh = None
        self._name = ""
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)

    def _target(self) -> str:
        day = _dt.date.today().strftime("%Y%m%d")
        return os.path.join(self.directory, f"sessions-{day}-{pid()}.jsonl")

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            name = self._target()
            if self._fh is None or name != self._name:
                self._open(name)
            elif self.rotate == "size" and self._fh.tell() + len(line) > self.max_bytes:
                self._fh.close()
                self._fh = None
                os.replace(self._name, self._rotated_name())
                self._open(name)
            self._fh.write(line)
            self._fh.flush()

    def _rotated_name(self) -> str:
        """sessions-DAY-PID.jsonl.N: the first N not taken (never overwrite)."""
        n = 1
        while os.path.exists(f"{self._name}.{n}"):
            n += 1
        return f"{self._name}.{n}"

    def _open(self, name: str) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = open(name, "a", encoding="utf-8")
        self._name = name

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
