"""Replay one recorded session through a ruleset.

``replay_record(ruleset, record)`` rebuilds the ``SessionState`` a live
session had (connect info, TLS/AUTH) and feeds the recorded commands, in
order, to the same ``Conversation`` (``smtpfw.core``) the SMTP front end
drives: the same sequence rules, limits, state changes and Policy calls.
Replay is one more front end.  Message bodies are not recorded, so plugins
get ``message=None``.

When the ruleset under test decides differently from the one recorded, the
client would have seen different replies.  Replay follows what the server
would then do with the commands the client did send:

- a refused connect: nothing else runs;
- a refused HELO: MAIL is "not reached" until a later HELO is accepted;
- a refused MAIL: that transaction's RCPT and DATA are not reached;
- a refused RCPT is not added to the recipients;
- DATA with no accepted recipient is not reached;
- a disconnect: nothing after it runs.

What the client would have sent *instead* (after a reply it did not get)
is unknowable; replay never invents commands.

The session's verdict (``Verdict``) sums it up from the first transaction
that got as far as a recipient, computed the same way for a recording (from
the decisions recorded) and for a replay, so the two compare exactly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from smtpfw import facts, replies
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.core.conversation import Conversation, Limits
from smtpfw.core.events import Step
from smtpfw.engine import Ruleset, TraceStep
from smtpfw.facts import FactMissing, Facts, RecordedFacts
from smtpfw.lang.fields import lookup_field
from smtpfw.recording import BEHAVIOUR
from smtpfw.session import SessionState
from smtpfw.verdict import CONTINUE, Decision, Outcome, Stage

DEFAULT_MAX_RECIPIENTS = 100      # smtpfw.config.Config.max_recipients

# Verdict kinds.
ACCEPTED, REJECTED, TEMPFAILED, DISCONNECTED, NO_MAIL = (
    "accepted", "rejected", "tempfailed", "disconnected", "no-mail")
KINDS = (ACCEPTED, REJECTED, TEMPFAILED, DISCONNECTED, NO_MAIL)
REFUSING = frozenset({REJECTED, TEMPFAILED, DISCONNECTED})
_KIND_OF = {Outcome.REJECT: REJECTED, Outcome.TEMPFAIL: TEMPFAILED, Outcome.DISCONNECT: DISCONNECTED}
_REFUSALS = frozenset(_KIND_OF)

_ACCEPT = Decision(Outcome.ACCEPT)
DATA_OK = replies.line(*replies.render(Stage.DATA, _ACCEPT))


class EventResult:
    """One recorded command, as the ruleset under test handles it."""

    __slots__ = ("cmd", "subject", "reached", "decision", "stage", "fixed_reply", "note", "trace", "dns",
                 "refused")

    def __init__(self, cmd: str, subject: str = "", reached: bool = True, decision: Decision | None = None,
                 stage: Stage | None = None, fixed_reply: str = "", note: str = "") -> None:
        self.cmd = cmd                    # connect helo ehlo mail rcpt data rset starttls
        self.subject = subject            # HELO name or address
        self.reached = reached            # False: the server would not have run its hook
        self.decision = decision
        self.stage = stage                # the hook whose decision this is (data: data or queue)
        self.fixed_reply = fixed_reply    # the reply, when it is not a refusal's
        self.note = note                  # why not reached, held refusals, ...
        self.trace = None                 # TraceInfo of every rule evaluated (trace mode)
        self.dns = None                   # (Lookup, DnsAnswer) gathered for this command (trace mode)
        self.refused = reached and decision is not None and decision.outcome in _REFUSALS

    def __repr__(self) -> str:
        return (f"EventResult({self.cmd!r}, {self.subject!r}, reached={self.reached}, "
                f"decision={self.decision!r}, stage={self.stage})")

    @property
    def reply(self) -> str:
        """What the client gets (refusal replies are rendered on demand)."""
        if self.refused:
            return replies.for_decision(self.stage, self.decision)
        return self.fixed_reply

    def key(self) -> tuple:
        """What a comparison looks at: reached, and which refusal."""
        if not self.reached:
            return ("not-reached",)
        d = self.decision
        if d is None or not d.outcome.refuses:
            return ("pass",)
        return (d.outcome.value, d.rule_id, _code(self.stage, d))


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str                        # accepted rejected tempfailed disconnected no-mail
    stage: str | None = None         # hook of the refusal
    rule: str | None = None          # rule that refused (None: no rule / not known)
    code: int | None = None          # the reply code the client got
    reply: str = ""                  # the refusal's reply line

    def key(self) -> tuple:
        return (self.kind, self.stage, self.rule, self.code)

    def describe(self) -> str:
        if self.kind not in REFUSING:
            return self.kind
        out = f"{self.kind} at {self.stage}"
        if self.rule:
            out += f" by {self.rule}"
        return out + (f" ({self.code})" if self.code else "")

    def to_json(self) -> dict:
        return {"kind": self.kind, "stage": self.stage, "rule": self.rule, "code": self.code,
                "reply": self.reply}


@dataclass(slots=True)
class ReplayResult:
    record: dict
    connect: EventResult
    events: list
    verdict: Verdict
    hits: list                       # rule ids that matched, in order
    decisions: list                  # (Stage, Decision, subject) per hook run
    monitored: list                  # (rule id, Decision) of monitor-mode refusals
    state: SessionState | None = None
    changed_events: list = field(default_factory=list)
    uncoded: frozenset = frozenset()  # zones with a listing whose codes a filter could not test
    scores: dict = field(default_factory=dict)   # score name -> the session's total

    def to_json(self) -> dict:
        return {
            "id": self.record.get("id"),
            "verdict": self.verdict.to_json(),
            "connect": _event_json(self.connect),
            "events": [_event_json(e) for e in self.events],
            "hits": list(self.hits),
            "monitored": [{"rule": r, "decision": d.to_json()} for r, d in self.monitored],
        }


def _event_json(e: EventResult) -> dict:
    out = {"cmd": e.cmd, "subject": e.subject, "reached": e.reached, "reply": e.reply}
    if e.decision is not None:
        out["decision"] = e.decision.to_json()
        out["stage"] = e.stage.value if e.stage else None
    if e.note:
        out["note"] = e.note
    return out


_CODES: dict = {}


def _code(stage: Stage | None, d: Decision) -> int:
    """The reply code a decision gives at a stage (replies.render's, memoised)."""
    key = (stage, d.outcome, d.code)
    code = _CODES.get(key)
    if code is None:
        code = _CODES[key] = replies.render(stage or Stage.DATA, d)[0]
    return code


# ---- verdicts -----------------------------------------------------------------

def _refusal(ev: EventResult) -> Verdict:
    d = ev.decision
    code, enhanced, text = replies.render(ev.stage, d)
    return Verdict(_KIND_OF[d.outcome], ev.stage.value, d.rule_id, code,
                   replies.line(code, enhanced, text))


def verdict_of(connect: EventResult, events: list) -> Verdict:
    """The session's verdict: its first transaction that reached a recipient
    (or was refused at MAIL); else a HELO refusal; else "no-mail"."""
    if connect.refused:
        return _refusal(connect)
    helo_refusal = None
    mail = None                 # the open transaction's MAIL result
    accepted = 0
    first_refused = None
    data = None
    decisive = False

    def close():
        if not decisive:
            return None
        if mail is not None and mail.refused:
            return _refusal(mail)
        if accepted:
            if data is not None and data.refused:
                return _refusal(data)
            return Verdict(ACCEPTED)
        if first_refused is not None:
            return _refusal(first_refused)
        return None

    for ev in events:
        if not ev.reached:
            continue
        cmd = ev.cmd
        if cmd == "mail":
            if decisive:
                break
            mail, accepted, first_refused, data = ev, 0, None, None
            decisive = ev.refused
        elif cmd == "rcpt":
            decisive = True
            if ev.refused:
                if first_refused is None:
                    first_refused = ev
            else:
                accepted += 1
        elif cmd == "data":
            data = ev
            decisive = True
            break
        elif cmd in ("helo", "ehlo", "rset", "starttls"):
            if decisive:
                break
            mail = None
            if cmd != "rset" and ev.refused and helo_refusal is None:
                helo_refusal = ev
        if ev.refused and ev.decision.outcome is Outcome.DISCONNECT:
            if decisive or mail is not None:
                return _refusal(ev)
            break
    verdict = close()
    if verdict is not None:
        return verdict
    for ev in events:            # a disconnect before any transaction
        if ev.refused and ev.decision.outcome is Outcome.DISCONNECT:
            return _refusal(ev)
    if helo_refusal is not None:
        return _refusal(helo_refusal)
    return Verdict(NO_MAIL)


def recorded_events(record: dict) -> tuple[EventResult, list]:
    """The recording's own decisions as EventResults (for the default
    comparison and for recorded-verdict statistics)."""
    conn = record.get("connect") or _EMPTY
    cd = conn.get("decision")
    connect = EventResult("connect", record["client"].get("ip", ""), True,
                          _decision(cd) if cd else CONTINUE, Stage.CONNECT, conn.get("reply") or "")
    out = []
    append = out.append
    for ev in record["events"]:
        cmd = ev.get("cmd", "")
        d = ev.get("decision")
        decision = _decision(d) if d else None
        stage = _STAGE_OF.get(cmd)
        if cmd == "data":
            q = ev.get("queue")
            if q and (decision is None or decision.outcome not in _REFUSALS):
                decision, stage = _decision(q), Stage.QUEUE
        append(EventResult(cmd, ev.get("arg") or ev.get("addr") or "", True, decision, stage,
                           ev.get("reply") or ""))
    return connect, out


_DECISIONS: dict = {}


def _decision(d: dict) -> Decision:
    """Decision.from_json, memoised (recordings repeat the same few)."""
    key = (d.get("outcome"), d.get("code"), d.get("enhanced"), d.get("text"), d.get("rule"))
    dec = _DECISIONS.get(key)
    if dec is None:
        dec = Decision.from_json(d)
        if len(_DECISIONS) < 4096:
            _DECISIONS[key] = dec
    return dec


_REFUSAL_VALUES = frozenset(o.value for o in _REFUSALS)
_PASS = ("pass",)


def _recorded_key(d: dict | None, stage: Stage | None) -> tuple:
    """EventResult.key() of a recorded decision, from its JSON."""
    if not d or d.get("outcome") not in _REFUSAL_VALUES:
        return _PASS
    dec = _decision(d)
    return (dec.outcome.value, dec.rule_id, _code(stage, dec))


def same_as_recorded(record: dict, result: "ReplayResult") -> bool:
    """True if every command of the replay was decided as recorded (then
    the verdicts are equal too).  The fast path of the default comparison:
    no EventResults are built for the recording."""
    conn = record.get("connect") or _EMPTY
    if _recorded_key(conn.get("decision"), Stage.CONNECT) != result.connect.key():
        return False
    for ev, r in zip(record["events"], result.events):
        if not r.reached:
            return False
        cmd = ev.get("cmd")
        d = ev.get("decision")
        if cmd == "data":
            k = _recorded_key(d, Stage.DATA)
            if k is _PASS and ev.get("queue"):
                k = _recorded_key(ev["queue"], Stage.QUEUE)
        else:
            k = _recorded_key(d, _STAGE_OF.get(cmd))
        if k is _PASS:
            if r.refused:
                return False
        elif k != r.key():
            return False
    return True


def recorded_verdict(record: dict) -> Verdict:
    return verdict_of(*recorded_events(record))


_STAGE_OF = {"helo": Stage.HELO, "ehlo": Stage.HELO, "mail": Stage.MAIL, "rcpt": Stage.RCPT,
             "data": Stage.DATA}


# ---- trace --------------------------------------------------------------------

@dataclass(slots=True)
class TraceInfo:
    """A TraceStep plus the values its condition's leaves had at that moment."""

    step: TraceStep
    leaves: list                 # (source text, value shown, bool result)


class _TraceList(list):
    """Handed to the engine as its trace list: evaluates each rule's leaves
    when the engine appends the step, so the values are the ones it saw."""

    def __init__(self, ruleset: Ruleset, state: SessionState):
        super().__init__()
        self.ruleset = ruleset
        self.state = state

    def append(self, step: TraceStep) -> None:
        super().append(TraceInfo(step, leaf_values(self.ruleset, step.rule, self.state)))


def node_text(ruleset: Ruleset, node) -> str:
    span = getattr(node, "span", None)
    if span is None:
        return str(node)
    text = ruleset.sources.get(span.file)
    if text is None:
        return type(node).__name__
    lines = text.splitlines()
    if span.line != span.end_line or not 1 <= span.line <= len(lines):
        first = lines[span.line - 1] if 1 <= span.line <= len(lines) else ""
        return first[span.column - 1:].strip()
    return lines[span.line - 1][span.column - 1:span.end_column - 1]


def leaf_values(ruleset: Ruleset, rule, state: SessionState) -> list:
    out = []
    for node, test in rule.leaves:
        try:
            result = bool(test(state))
        except Exception as err:    # a trace must never fail on one leaf
            result = False
            shown = f"error: {err}"
        else:
            shown = _leaf_value(node, state, ruleset)
        out.append((node_text(ruleset, node), shown, result))
    return out


def _leaf_value(node, state: SessionState, ruleset: Ruleset | None = None) -> str:
    fld = getattr(node, "field", None)
    if fld is None:
        tag = getattr(node, "tag", None)
        return f"tags = {sorted(state.tags)}" if tag is not None else ""
    spec = (ruleset.fields.get(fld.text) if ruleset is not None else None) or lookup_field(fld.name)
    if spec is not None:
        try:
            value = spec.get(state)
        except FactMissing:
            return f"{fld.text}: not asked"
    else:
        value = state.plugin_fields.get(fld.name, "")
    if isinstance(value, str):
        value = f'"{value}"'
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    return f"{fld.text} = {value}"


# ---- the replayer -------------------------------------------------------------

_KINDS = {k.value: k for k in LookupKind}


def recorded_facts(record: dict) -> dict:
    """``smtpfw.facts.decode(record)``, with DNS answers built without the
    per-field JSON helpers and shared between sessions (the hot path of a
    dry-run; same result).  Reads format 2 ("facts") and 1 ("dns")."""
    out = {_lookup(d["lookup"]): _answer(d["answer"]) for d in record.get("dns") or ()}
    for item in record.get("facts") or ():
        if item["provider"] == "dns":
            out[_lookup(item["key"])] = _answer(item["value"])
        else:
            out.update(facts.decode({"facts": [item]}))
    return out


def _lookup(lk: dict) -> Lookup:
    return Lookup(_KINDS[lk["kind"]], lk["name"], lk.get("zone", ""))


def _answer(a: dict) -> DnsAnswer:
    if len(a) == 1:
        answer = _ANSWERS.get(a["status"])
        if answer is None:
            answer = _ANSWERS[a["status"]] = DnsAnswer(a["status"])
        return answer
    return DnsAnswer(a["status"], tuple(a.get("codes", ())), a.get("txt", ""),
                     tuple(a.get("names", ())), bool(a.get("confirmed", False)), a.get("error", ""))


_ANSWERS: dict = {}


def _default_facts(record: dict):
    return RecordedFacts(recorded_facts(record))


def _with_recorded(dns_factory):
    """A DNS source of replay's own (live, declared, none) for DNS facts (and
    the other providers it names in ``providers``: declared test answers
    cover maps too); every other fact (recipient callouts...) from the record."""
    def facts(record: dict) -> Facts:
        source = dns_factory(record)
        return Facts({p: source for p in getattr(source, "providers", ("dns",))}, default=_default_facts(record))
    return facts


def _with_state(source, store, record: dict):
    """``source`` with a state source over ``store`` at the record's time.
    Concurrency slots are held for the recorded session's length, not
    released when the replay of it ends: sessions replayed one after the
    other count as the overlapping sessions they were."""
    from smtpfw.state.facts import StateFacts

    when = float(record.get("time") or 0.0)
    state = StateFacts(store, clock=lambda: when, release=False,
                       slot_ttl=max(float(record.get("duration") or 0.0), 0.001))
    if isinstance(source, Facts):
        return Facts({**source.sources, "state": state}, default=source.default)
    return Facts({"state": state}, default=source)


class Replayer:
    """Replays many records through one ruleset.

    ``dns_factory(record)`` gives each session its DNS source; the default
    is the recorded answers (``RecordedFacts``).  Recorded DNS takes a fast
    path: the answers are put into ``SessionState.facts`` up front and Policy
    runs without a DNS source.  That is the same thing for the rules: a
    compiled test treats an answer that is absent exactly like a failed one
    (``RecordedFacts`` answers "failed: not in recording" for those), and a
    recorded answer is keyed by its lookup, so it does not matter at which
    hook it is put in.  Trace mode uses ``RecordedFacts`` itself, to show
    which answers each hook asked for.

    With recorded (or declared) DNS and no plugins nothing ever waits, so a
    session's coroutines are driven to completion by hand: no event loop
    per session.  Live DNS or plugins need a loop; one is kept for the
    whole batch.
    """

    def __init__(self, ruleset: Ruleset, dns_factory=None, *, max_recipients: int = DEFAULT_MAX_RECIPIENTS,
                 trace: bool = False, hostname: str = "smtpfw", synchronous_dns: bool | None = None):
        self.ruleset = ruleset
        self.prefill = dns_factory is None and not trace
        self.dns_factory = _with_recorded(dns_factory) if dns_factory is not None else _default_facts
        self.max_recipients = max_recipients
        self.limits = Limits(max_recipients=max_recipients)
        self.trace = trace
        self.hostname = hostname
        self.greeting = f"220 {hostname} ESMTP smtpfw"
        if synchronous_dns is None:
            synchronous_dns = dns_factory is None
        self.synchronous = synchronous_dns and not ruleset.plugins
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state_store = None
        if ruleset.stateful:
            # Limits and greylisting run on a store of the replay's own: it
            # starts empty and each session is judged at its recorded time,
            # in the order the sessions come (docs/state.md, dry-run).
            from smtpfw.state import open_store
            self.state_store = open_store(":memory:", timeout=30.0)
            inner = self.dns_factory
            self.dns_factory = lambda record: _with_state(inner(record), self.state_store, record)
            self.prefill = False
            self.synchronous = False

    def replay(self, record: dict) -> ReplayResult:
        if self.synchronous:
            if self.prefill:
                coro = self._session(record, None, recorded_facts(record))
            else:
                coro = self._session(record, self.dns_factory(record), None)
            try:
                coro.send(None)
            except StopIteration as stop:
                return stop.value
            coro.close()
            raise RuntimeError("replay: a DNS source or plugin waited; use synchronous_dns=False")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self._replay_async(record))

    async def _replay_async(self, record: dict) -> ReplayResult:
        if self.prefill:
            return await self._session(record, None, recorded_facts(record))
        dns = self.dns_factory(record)
        try:
            return await self._session(record, dns, None)
        finally:
            close = getattr(dns, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        if self._loop is not None:
            if self.state_store is not None:
                self._loop.run_until_complete(self.state_store.close())
                self.state_store = None
            self._loop.close()
            self._loop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # The mirror of smtpfw.protocol.smtp.FirewallSMTP: its command handlers'
    # preconditions and state changes, in the same order.
    async def _session(self, record: dict, dns, answers: dict | None) -> ReplayResult:
        st = SessionState()
        st.session_id = str(record.get("id") or "")
        st.started = float(record.get("time") or 0)
        listener = record.get("listener") or _EMPTY
        st.listener_address = str(listener.get("address") or "")
        st.listener_port = int(listener.get("port") or 0)
        st.listener_name = str(listener.get("name") or "")
        client = record["client"]
        st.client_ip = str(client.get("ip") or "")
        st.client_port = int(client.get("port") or 0)
        for name, value in (record.get("behaviour") or _EMPTY).items():
            if name in BEHAVIOUR:
                setattr(st, name, value)
        events = record["events"]
        if record.get("tls"):
            st.tls = not any(e.get("cmd") == "starttls" for e in events)
        if record.get("auth") and not any(e.get("cmd") == "auth" for e in events):
            st.auth = True      # an older record: authenticated, but not when
            st.auth_user = str(record.get("auth_user") or "")
        if answers:
            st.facts = answers
        detail = self.trace
        trace = _TraceList(self.ruleset, st) if detail else None
        conv = Conversation(self.ruleset, st, dns, self.limits, hostname=self.hostname, greeting=self.greeting,
                            trace=trace, record=False)

        mark = (len(st.facts), 0) if detail else None
        step = await conv.connect()
        connect = EventResult("connect", st.client_ip, True, step.decision, Stage.CONNECT,
                              "" if step.close else step.reply, step.note)
        results = ([EventResult(e.get("cmd", ""), _subject(e), False, note="connection refused at connect")
                    for e in events] if step.close else [])
        if detail:
            self._fill(connect, st, trace, mark)
        if not step.close:
            closed = ""
            event = self._event
            for ev in events:
                cmd = ev.get("cmd", "")
                if closed:
                    results.append(EventResult(cmd, _subject(ev), False, note=closed))
                    continue
                if detail:
                    mark = (len(st.facts), len(trace))
                r, step = await event(cmd, ev, conv)
                if detail:
                    self._fill(r, st, trace, mark)
                results.append(r)
                if step is not None and step.close:
                    closed = f"connection closed after {cmd.upper()}"
        verdict = verdict_of(connect, results)
        return ReplayResult(record, connect, results, verdict, st.hits, st.decisions, st.monitored,
                            st if detail else None, uncoded=frozenset(st.uncoded), scores=dict(st.scores))

    async def _event(self, cmd: str, ev: dict, conv: Conversation) -> tuple[EventResult, Step | None]:
        """One recorded command through the conversation, as the live server
        would take it; the result and the step (None: no step)."""
        if cmd == "rcpt":
            addr = str(ev.get("addr") or "")
            return _result(cmd, addr, await conv.rcpt(addr))
        if cmd == "mail":
            addr = str(ev.get("addr") or "")
            return _result(cmd, addr, await conv.mail(addr, ev.get("params") or {}))
        if cmd == "ehlo" or cmd == "helo":
            arg = str(ev.get("arg") or "")
            return _result(cmd, arg, await conv.helo(arg, cmd == "ehlo"))
        if cmd == "data":
            step = conv.data()
            if step.reply != replies.DATA_START:
                return _result(cmd, "", step)
            headers = dict(ev.get("headers") or _EMPTY)
            step = await conv.message(int(ev.get("size") or 0), headers, headers)
            if step.deliver:
                step = conv.delivered(DATA_OK)
            return EventResult(cmd, "", True, step.decision, step.stage, DATA_OK), step
        if cmd == "rset":
            return _result(cmd, "", conv.rset())
        if cmd == "starttls":
            conv.tls_started()
            return EventResult(cmd, "", True, None, None, "220 2.0.0 Ready to start TLS"), None
        if cmd == "auth":
            user = str(ev.get("user") or "")
            return EventResult(cmd, user, True, None, None, conv.authenticated(user).reply), None
        if cmd == "unrecognized":
            # An unknown command: no hook runs, the count is a field
            # (session.unrecognized).  Recorded only by servers that log it.
            return _result(cmd, "", conv.unrecognized_command())
        return EventResult(cmd, _subject(ev), False, note=f"unknown event {cmd!r} ignored"), None

    @staticmethod
    def _fill(r: EventResult, st: SessionState, trace, mark) -> None:
        n_dns, n_trace = mark
        r.dns = list(st.facts.items())[n_dns:]
        r.trace = list(trace[n_trace:])


_EMPTY: dict = {}


def _result(cmd: str, subject: str, step: Step) -> tuple[EventResult, Step]:
    return EventResult(cmd, subject, step.reached, step.decision, step.stage, step.reply, step.note), step


def _subject(ev: dict) -> str:
    return str(ev.get("arg") or ev.get("addr") or "")


def replay_record(ruleset: Ruleset, record: dict, dns=None, *, trace: bool = False,
                  max_recipients: int = DEFAULT_MAX_RECIPIENTS) -> ReplayResult:
    """Replay one record.  ``dns``: a DnsSource (default: the recorded
    answers, ``RecordedFacts``)."""
    if dns is None:
        replayer = Replayer(ruleset, trace=trace, max_recipients=max_recipients)
    else:
        synchronous = isinstance(dns, RecordedFacts) or getattr(dns, "synchronous", False)
        replayer = Replayer(ruleset, lambda rec: dns, trace=trace, max_recipients=max_recipients,
                            synchronous_dns=synchronous)
    try:
        return replayer.replay(record)
    finally:
        replayer.close()
