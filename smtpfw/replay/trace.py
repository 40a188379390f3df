"""`smtpfw trace`: one session, step by step (like `exim -bh`).

For each command: what the client sends (>>>), the DNS answers the hook
used, every rule evaluated with its condition's leaves and their values,
the hook's decision, and the reply the client gets (<<<).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smtpfw.recording import scores_json
from smtpfw import facts
from smtpfw.checks.dnsresult import DnsAnswer, Lookup
from smtpfw.recording import RecordError
from smtpfw.replay.records import iter_records, replay_failure, session_files
from smtpfw.replay.session import EventResult, Replayer, ReplayResult
from smtpfw.verdict import Outcome, Stage


def describe_answer(answer: DnsAnswer) -> str:
    out = answer.status
    if answer.codes:
        out += " " + ",".join(answer.codes)
    if answer.names:
        out += " " + ",".join(answer.names)
        out += " (forward-confirmed)" if answer.confirmed else " (not forward-confirmed)"
    if answer.txt:
        out += f' "{answer.txt}"'
    if answer.error:
        out += f": {answer.error}"
    if answer.pass_cached:
        out += " (from the DNSBL pass cache, not asked)"
    return out


def describe_lookup(lk: Lookup) -> str:
    kind = lk.kind.value
    return f"{kind} {lk.name}" + (f" in {lk.zone}" if lk.zone else "")


def command_line(e: EventResult, ev: dict | None) -> str:
    cmd = e.cmd
    if cmd in ("helo", "ehlo"):
        return f"{cmd.upper()} {e.subject}"
    if cmd == "mail":
        params = (ev or {}).get("params") or {}
        extra = "".join(f" {k}" if v is True else f" {k}={v}" for k, v in params.items())
        return f"MAIL FROM:<{e.subject}>{extra}"
    if cmd == "rcpt":
        return f"RCPT TO:<{e.subject}>"
    if cmd == "data":
        ev = ev or {}
        headers = ev.get("headers") or {}
        hdrs = f", headers: {', '.join(headers)}" if headers else ", no headers"
        return f"DATA ({ev.get('size', 0)} bytes{hdrs})"
    if cmd == "unrecognized":
        return "(a command the server does not know)"
    return cmd.upper()


def _where(ruleset, rule) -> str:
    span = getattr(rule.node, "span", None)
    if span is None:
        return ""
    return f"{os.path.relpath(span.file) if os.path.isabs(span.file) else span.file}:{span.line}"


def _yes(b: bool) -> str:
    return "true" if b else "false"


def _describe_state(key, answer) -> str:
    """A state fact (limit, concurrency slot, counter, greylisting) for a trace line."""
    gone = "" if getattr(answer, "available", True) else f" (store unavailable: {answer.reason})"
    kind = key.to_json()["kind"]
    if kind == "greylist":
        wait = f", retry in {answer.retry}s" if answer.verdict != "pass" else ""
        return f"greylist {key.network} {key.sender or '<>'} {key.rcpt}: {answer.verdict}{wait}{gone}"
    if kind == "counter":
        return f"counter {key.name} [{key.key}]: {answer.value}{gone}"
    if kind == "slot":
        said = "full" if answer.exceeded else "slot taken"
        return f"limit {key.name} [{key.key}] {key.limit} concurrent: {said} ({answer.count} held){gone}"
    rates = ", ".join(f"{limit} per {window:g}s" for limit, window in key.buckets)
    said = (f"exceeded, retry in {answer.retry}s" if answer.exceeded else "counted") + \
        f" ({answer.count}, {answer.percent}% of the fullest bucket)"
    return f"limit {key.name} [{key.key}] {rates}: {said}{gone}"


def format_event(ruleset, e: EventResult, ev: dict | None, indent: str = "") -> list[str]:
    out = []
    w = lambda s: out.append(indent + s)
    if e.cmd == "connect":
        w(f">>> connect from {e.subject}")
    else:
        w(f">>> {command_line(e, ev)}")
    if not e.reached:
        w(f"    not reached: {e.note}" if e.note else "    not reached")
        if e.fixed_reply:
            w(f"<<< {e.fixed_reply}")
        return out
    for lk, answer in e.dns or ():
        if lk.provider == "dns":
            w(f"    dns   {describe_lookup(lk)}: {describe_answer(answer)}")
        elif lk.provider == "state":
            w(f"    state {_describe_state(lk, answer)}")
        else:                                          # another fact: a recipient callout, a map...
            said = getattr(answer, "reply", "") or getattr(answer, "value", "") or getattr(answer, "reason", "")
            detail = f" ({said})" if said else ""
            w(f"    {lk.provider:<5} {' '.join(str(v) for v in lk.to_json().values())}: {answer.status}{detail}")
    stage = None
    for info in e.trace or ():
        step = info.step
        if stage is not None and step.stage is not stage:
            w(f"    hook  {stage.value} done")
        stage = step.stage
        rule = step.rule
        where = _where(ruleset, rule)
        head = f"    rule  {rule.rule_id}" + (f" ({where})" if where and not where.endswith(f":{rule.rule_id}") else "")
        if step.matched:
            head += f": matched -> {step.note}"
        else:
            head += ": no match"
        w(head)
        if not info.leaves and rule.test is None:
            w("            (no condition)")
        for text, value, result in info.leaves:
            w(f"            {text}  = {_yes(result)}" + (f"   [{value}]" if value else ""))
    if e.decision is not None and e.stage is not None:
        d = e.decision
        note = e.note
        if d.outcome is Outcome.CONTINUE:
            verdict = "continue"
            if not note and ruleset.delay_reject and any(
                    i.step.matched and i.step.note in ("reject", "tempfail") for i in e.trace or ()):
                note = f"an earlier refusal is already held until {_until(ruleset)} (delay_reject)"
        else:
            verdict = d.outcome.value + (f" by {d.rule_id}" if d.rule_id else "")
        before = "data: continue; " if e.stage is Stage.QUEUE else ""
        w(f"    => {before}{e.stage.value}: {verdict}" + (f"  ({note})" if note else ""))
    elif e.note:
        w(f"    ({e.note})")
    if e.reply:
        w(f"<<< {e.reply}")
    return out


def _until(ruleset) -> str:
    return "DATA" if ruleset.delay_until is Stage.DATA else "RCPT"


def format_trace(ruleset, rules_path: str, result: ReplayResult, dns_desc: str) -> str:
    rec = result.record
    out = [f"smtpfw trace: {rules_path} (ruleset {ruleset.version}); DNS: {dns_desc}"]
    listener = rec.get("listener") or {}
    flags = [f for f, on in (("tls", rec.get("tls")), (f"auth as {rec.get('auth_user')}", rec.get("auth"))) if on]
    out.append(f"session {rec.get('id')}: client {rec['client'].get('ip')} port {rec['client'].get('port', 0)}, "
               f"listener port {listener.get('port', 0)}" + (", " + ", ".join(flags) if flags else ""))
    if ruleset.delay_reject:
        out.append("option delay_reject: refusals at connect, HELO and MAIL are given "
                   + ("at the DATA command" if ruleset.delay_until is Stage.DATA else "at the first RCPT"))
    out.append("")
    events = rec["events"]
    out += format_event(ruleset, result.connect, None)
    for i, e in enumerate(result.events):
        out.append("")
        out += format_event(ruleset, e, events[i] if i < len(events) else None)
    out.append("")
    out.append(f"verdict: {result.verdict.describe()}")
    out.append("rules matched: " + (", ".join(dict.fromkeys(result.hits)) or "(none)"))
    if result.monitored:
        out.append("monitor mode, would have refused: " + ", ".join(r for r, _ in result.monitored))
    if result.state is not None and result.state.tags:
        out.append("tags: " + ", ".join(sorted(result.state.tags)))
    if result.state is not None and result.state.scores:
        for name, total in sorted(result.state.scores.items()):
            parts = [f"{rule} {weight:+d}" for n, weight, rule, _hook in result.state.score_hits if n == name]
            out.append(f"score {name} = {total}: " + ", ".join(parts))
    return "\n".join(out) + "\n"


def trace_json(ruleset, rules_path: str, result: ReplayResult, dns_desc: str) -> dict:
    def event(e: EventResult) -> dict:
        out = {"cmd": e.cmd, "subject": e.subject, "reached": e.reached, "reply": e.reply, "note": e.note,
               "stage": e.stage.value if e.stage else None,
               "decision": e.decision.to_json() if e.decision is not None else None,
               "dns": [{"lookup": lk.to_json(), "answer": a.to_json()} for lk, a in e.dns or ()
                       if lk.provider == "dns"],
               "facts": facts.encode({lk: a for lk, a in e.dns or () if lk.provider != "dns"}),
               "rules": []}
        for info in e.trace or ():
            step = info.step
            out["rules"].append({
                "rule": step.rule.rule_id, "stage": step.stage.value, "where": _where(ruleset, step.rule),
                "matched": step.matched, "note": step.note,
                "leaves": [{"condition": t, "value": v, "result": r} for t, v, r in info.leaves]})
        return out

    return {"version": 1, "rules": rules_path, "ruleset": ruleset.version, "dns": dns_desc,
            "session": {k: result.record.get(k) for k in ("id", "client", "listener", "tls", "auth", "auth_user")},
            "steps": [event(result.connect)] + [event(e) for e in result.events],
            "verdict": result.verdict.to_json(), "hits": list(result.hits),
            "scores": scores_json(result.state) if result.state is not None else {}}


@dataclass
class TraceReport:
    """One session traced through a ruleset: what `smtpfw trace` shows."""

    ruleset: object
    rules: str
    result: ReplayResult
    dns: str                      # where the DNS answers came from, in words

    def to_text(self) -> str:
        return format_trace(self.ruleset, self.rules, self.result, self.dns)

    def to_json(self) -> dict:
        return trace_json(self.ruleset, self.rules, self.result, self.dns)


def trace_record(ruleset, record: dict, where: str, *, dns_factory=None, synchronous_dns: bool | None = None,
                 hostname: str = "smtpfw", max_recipients: int = 100) -> ReplayResult:
    """Replay one record with tracing on.  ``dns_factory`` None: the answers
    recorded in it.  Raises RecordError or ReplayBug (``where`` names the record)."""
    replayer = Replayer(ruleset, dns_factory, trace=True, hostname=hostname, max_recipients=max_recipients,
                        synchronous_dns=synchronous_dns)
    try:
        return replayer.replay(record)
    except Exception as err:  # noqa: BLE001 -- told apart by replay_failure
        raise replay_failure(err, record, where) from None
    finally:
        replayer.close()


def load_session(spec: str) -> dict:
    """FILE, FILE:N (Nth record, 1-based), FILE:ID or FOLDER:ID."""
    path, selector = spec, None
    if not os.path.exists(spec) and ":" in spec:
        path, _, selector = spec.rpartition(":")
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such file")
    if os.path.isdir(path):
        return _find_in_folder(path, selector)
    for number, record in iter_records(path):
        if selector is None or (selector.isdigit() and number == int(selector)) or record.get("id") == selector:
            return record
    if selector is None:
        raise RecordError(f"{path}: no session records")
    raise RecordError(f"{path}: no session {selector!r} (give a 1-based line number or a session id)")


def _find_in_folder(folder: str, session_id: str | None) -> dict:
    """The session with this id in any recording under ``folder`` (the
    server writes one file per worker and day, so an id from a log line
    could be in any of them)."""
    if not session_id:
        raise RecordError(f"{folder}: a folder of recordings needs a session id: {folder}:ID")
    files = session_files([folder])
    for path in files:
        for _number, record in iter_records(path):
            if record.get("id") == session_id:
                return record
    raise RecordError(f"{folder}: no session {session_id!r} in {len(files)} files")
