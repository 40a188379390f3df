"""The SMTP conversation, written once for every front end (sans-IO).

A ``Conversation`` owns what a session's commands do to its state: the
sequence rules (HELO before MAIL, MAIL before RCPT, ...), the protocol
limits that are about the conversation (errors, junk commands,
transactions, unrecognized commands, recipients), the calls into
``Policy`` and the events recorded.  Each method takes one command, already
parsed, and returns a ``Step``: the reply, whether to close, the decision.
It reads no socket and writes none.

The front ends translate what they receive into these calls:

- ``smtpfw.protocol.smtp``: the SMTP wire (line reading and syntax, DATA,
  STARTTLS handshakes, the AUTH exchange, delivery, timeouts);
- ``smtpfw.replay.session``: a recorded session's commands, for dry-run,
  trace and ``smtpfw test``.

so live and replay cannot disagree about what a ruleset does with a command.
Methods are coroutines only because ``Policy`` may wait for facts (DNS) or
a plugin; with facts gathered up front nothing in here ever suspends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from smtpfw import replies
from smtpfw.core import events as ev
from smtpfw.core.events import Step
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Decision, Outcome, Stage

_ACCEPT = Decision(Outcome.ACCEPT)
_CONTINUE = Decision(Outcome.CONTINUE)
_REFUSING = frozenset(o for o in Outcome if o.refuses)
MAIL_OK = replies.line(*replies.render(Stage.MAIL, _ACCEPT))
RCPT_OK = replies.line(*replies.render(Stage.RCPT, _ACCEPT))
RSET_OK = "250 2.0.0 OK"
_HELD = "refusal held until {} (delay_reject)"


@dataclass(frozen=True, slots=True)
class Limits:
    """The conversation's limits (config ``limits.*``; Postfix names in brackets)."""

    max_errors: int = 20                  # smtpd_hard_error_limit
    max_junk_commands: int = 100          # smtpd_junk_command_limit
    max_transactions: int = 1000
    max_unrecognized_commands: int = 10
    max_recipients: int = 100             # smtpd_recipient_limit
    max_events: int = 1000                # events kept for the record
    auth_allow_plaintext: bool = False

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        return cls(cfg.max_errors, cfg.max_junk_commands, cfg.max_transactions,
                   cfg.max_unrecognized_commands, cfg.max_recipients, cfg.recording_max_events,
                   cfg.auth_allow_plaintext)


class Conversation:
    def __init__(self, ruleset, state: SessionState, facts, limits: Limits = Limits(), *,
                 hostname: str = "smtpfw", greeting: str = "", trace: list | None = None, notify=None,
                 record: bool = True, sequence: bool = True, decide_late: bool = False):
        """``record``: keep events for the session record, bounded by
        ``limits.max_events`` (replay, which reads a record, keeps none).
        ``sequence``: enforce the command sequence (HELO before MAIL...);
        off where the MTA in front does that (the policy front end).
        ``decide_late``: answer the hooks the ruleset lets be decided late
        (``Ruleset.decided_late``, smtpfw.lang.deferral) at once and decide
        them in the background, in order, before the next command that
        needs them; the front end then calls ``settle`` before RSET and
        STARTTLS and at the end of the session.  Only the SMTP front end
        asks for it: replay decides every hook at its command, which the
        late decision cannot be told apart from."""
        self.state = state
        self.limits = limits
        self.record = record
        self.sequence = sequence
        self.hostname = hostname
        self.greeting = greeting or f"220 {hostname} ESMTP smtpfw"
        self._helo_ok = f"250 {hostname}"
        self.policy = Policy(ruleset, state, facts, trace, notify=notify)
        self.errors = 0
        self.junk = 0
        self.transactions = 0
        self.unrecognized = 0
        self._pending: tuple | None = None       # (size, headers, data and queue decisions) of a message
        self._late = ruleset.decided_late if decide_late else frozenset()
        self._deciding: asyncio.Task | None = None   # the hooks answered but not decided yet, in order
        self._deciding_stages: set[Stage] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- what every command may end in -------------------------------------

    def error(self, reply: str, *, note: str = "") -> Step:
        """A client error or a refusal: the client hears it, and past
        max_errors it is cut off (every 4xx/5xx counts, as in Postfix)."""
        self.errors += 1
        if self.errors > self.limits.max_errors:
            return Step(reply, close=True, after=replies.TOO_MANY_ERRORS, reached=False, note=note)
        return Step(reply, reached=False, note=note)

    def junk_command(self) -> Step | None:
        """Count a command that moves no mail; the 421 past the limit, else None."""
        self.junk += 1
        if self.junk > self.limits.max_junk_commands:
            return Step(replies.TOO_MANY_JUNK, close=True, reached=False, note="too many junk commands")
        return None

    def unrecognized_command(self) -> Step:
        self.unrecognized += 1
        self.state.unrecognized = self.unrecognized
        if self.record:
            self._note(ev.Unrecognized())
        if self.unrecognized >= self.limits.max_unrecognized_commands:
            return Step(replies.TOO_MANY_UNRECOGNIZED, close=True)
        step = self.error(replies.SYNTAX_UNRECOGNIZED)
        return Step(step.reply, close=step.close, after=step.after)

    def _refused(self, stage: Stage, decision: Decision, note: str = "") -> Step:
        """A policy refusal; it counts as an error unless it disconnects."""
        reply = replies.for_decision(stage, decision)
        if decision.outcome is Outcome.DISCONNECT:
            return Step(reply, True, "", True, decision, stage, note)
        self.errors += 1
        over = self.errors > self.limits.max_errors
        return Step(reply, over, replies.TOO_MANY_ERRORS if over else "", True, decision, stage, note)

    def _note(self, event) -> None:
        """Keep an event for the record (callers test ``self.record`` first,
        so replay does not even make the event)."""
        self.state.note(event, self.limits.max_events)

    def new_transaction(self) -> None:
        """RSET, a new HELO, the end of a message: the envelope starts over."""
        st = self.state
        st.reset_transaction()
        if self.record:
            st.trim_history(self.limits.max_events)
        self.policy.forget_transaction()

    # ---- hooks decided after their reply --------------------------------------

    def _later(self, stage: Stage, subject: str = "") -> bool:
        """Decide ``stage`` after the hooks pending, in the background, if
        the ruleset lets it be and only earlier hooks are pending; False
        (nothing started) if it must be decided now."""
        if stage not in self._late or any(s.order >= stage.order for s in self._deciding_stages):
            return False
        before, policy = self._deciding, self.policy
        at_hand = policy.prefetch(stage)       # its DNS lookups start now, with the state of this command
        if at_hand and (before is None or before.done()):
            return False                       # nothing to wait for (no lookups, or cached): decided now, without a task
        policy.forget_prefetch()               # decided later, from the state as it is then

        async def decide() -> None:
            if before is not None:
                await before
            await policy.run(stage, subject=subject)
        loop = self._loop
        if loop is None:                       # asked once: get_running_loop() costs a getpid() system call
            loop = self._loop = asyncio.get_running_loop()
        self._deciding = loop.create_task(decide())
        self._deciding_stages.add(stage)
        return True

    @property
    def deciding(self) -> bool:
        """Hooks were answered and are not decided yet."""
        return self._deciding is not None

    async def settle(self) -> None:
        """Decide the hooks that were answered before they were decided."""
        task = self._deciding
        if task is not None:
            try:
                await task
            finally:
                if self._deciding is task:     # still "deciding" while it waits: a lost connection lets it finish
                    self._deciding = None
                    self._deciding_stages.clear()

    def abandon(self) -> None:
        """The session is gone: hooks still being decided are not needed."""
        task, self._deciding = self._deciding, None
        self._deciding_stages.clear()
        if task is not None:
            task.cancel()

    # ---- the commands -------------------------------------------------------

    async def connect(self) -> Step:
        if self._later(Stage.CONNECT):
            self.state.connect_reply = f"220 {self.hostname}"
            return Step(self.greeting, decision=_CONTINUE, stage=Stage.CONNECT)
        decision = await self.policy.run(Stage.CONNECT)
        if decision.outcome in _REFUSING:
            reply = replies.for_decision(Stage.CONNECT, decision)
            self.state.connect_reply = reply
            return Step(reply, close=True, decision=decision, stage=Stage.CONNECT)
        self.state.connect_reply = f"220 {self.hostname}"
        return Step(self.greeting, decision=decision, stage=Stage.CONNECT, note=self._held(Stage.CONNECT))

    async def helo(self, name: str, esmtp: bool, extensions: tuple[str, ...] = ()) -> Step:
        """HELO/EHLO ``name``; an accepted EHLO lists ``extensions``."""
        over = self.junk_command()
        if over is not None:
            return over
        st = self.state
        if self._deciding_stages - {Stage.CONNECT}:
            await self.settle()                # a held HELO or MAIL refusal ends with what it was about
        self.new_transaction()
        st.set_helo(name, esmtp)
        if self._later(Stage.HELO, name):
            decision = _CONTINUE
        else:
            await self.settle()
            decision = await self.policy.run(Stage.HELO, subject=name)
        if decision.outcome in _REFUSING:
            st.set_helo("", False)
            step = self._refused(Stage.HELO, decision)
            if self.record:
                self._note(ev.Helo(name, esmtp, decision, step.reply))
            return step
        if esmtp and extensions:
            text = "\r\n".join([f"250-{self.hostname}", *(f"250-{x}" for x in extensions[:-1]),
                                 f"250 {extensions[-1]}"])
        else:
            text = self._helo_ok
        if self.record:
            self._note(ev.Helo(name, esmtp, decision, "250" if esmtp else text))
        return Step(text, False, "", True, decision, Stage.HELO, self._held(Stage.HELO))

    async def mail(self, address: str, params: dict, problem: str | None = None) -> Step:
        """MAIL FROM:<address> params; ``problem``: the front end's syntax or
        parameter error reply for this command (sequence errors come first)."""
        st = self.state
        if self.sequence and not st.helo:
            return self.error(replies.NEED_HELO, note="no accepted HELO")
        if self.sequence and st.sender is not None:
            return self.error(replies.NESTED_MAIL, note="a transaction is open")
        if problem:
            return self.error(problem)
        self.transactions += 1
        if self.transactions > self.limits.max_transactions:
            return Step(replies.TOO_MANY_TRANSACTIONS, close=True, reached=False, note="too many transactions")
        st.set_sender(address, params)
        if self._later(Stage.MAIL, address):
            decision = _CONTINUE
        else:
            await self.settle()
            decision = await self.policy.run(Stage.MAIL, subject=address)
        if decision.outcome in _REFUSING:
            st.reset_transaction()
            step = self._refused(Stage.MAIL, decision)
            if self.record:
                self._note(ev.Mail(address, params, decision, step.reply))
            return step
        if self.record:
            self._note(ev.Mail(address, params, decision, MAIL_OK))
        return Step(MAIL_OK, False, "", True, decision, Stage.MAIL, self._held(Stage.MAIL))

    async def rcpt(self, address: str, problem: str | None = None) -> Step:
        st = self.state
        if self.sequence and not st.helo:
            return self.error(replies.NEED_HELO, note="no accepted HELO")
        if self.sequence and st.sender is None:
            return self.error(replies.NEED_MAIL, note="no accepted MAIL")
        if problem:
            return self.error(problem)
        if len(st.rcpts) >= self.limits.max_recipients:
            # Not an error (a pipelining client sends them all before it
            # sees a reply), but work that moves no mail.
            return self.junk_command() or Step(replies.TOO_MANY_RCPTS, reached=False, note="too many recipients")
        await self.settle()
        st.set_rcpt(address)
        decision = await self.policy.run(Stage.RCPT, subject=address)
        if decision.outcome in _REFUSING:
            st.rcpt_rejected += 1
            policy = self.policy
            held = (f"refusal held from {policy.delayed_stage.value} (delay_reject)"
                    if decision is policy.delayed and policy.delayed_stage is not None else "")
            step = self._refused(Stage.RCPT, decision, held)
            if self.record:
                self._note(ev.Rcpt(address, decision, step.reply))
            return step
        st.rcpts.append(address)
        if self.record:
            self._note(ev.Rcpt(address, decision, RCPT_OK))
        return Step(RCPT_OK, False, "", True, decision, Stage.RCPT)

    def data(self, problem: str | None = None) -> Step:
        """DATA: 354, or why not."""
        st = self.state
        if problem:
            return self.error(problem)
        if self.sequence and not st.helo:
            return self.error(replies.NEED_HELO, note="no accepted HELO")
        if self.sequence and st.sender is None:
            return self.error(replies.NEED_MAIL, note="no accepted MAIL")
        if not st.rcpts:
            return self.error(replies.NO_VALID_RCPTS if st.rcpt_rejected else replies.NEED_RCPT,
                              note="no accepted recipient")
        held = self.policy.held_refusal()
        if held is not None:
            stage = self.policy.delayed_stage or Stage.MAIL
            state_note = f"refusal held from {stage.value} until DATA (delay_reject)"
            self.new_transaction()
            return Step(replies.for_decision(Stage.DATA, held), decision=held, stage=Stage.DATA, note=state_note,
                        reached=True)
        return Step(replies.DATA_START)

    def unreadable(self, reply: str) -> Step:
        """The data could not be taken (too big, bare LF, ...): the
        transaction ends with ``reply``."""
        self.new_transaction()
        return Step(reply, reached=False)

    async def message(self, size: int, headers: dict, recorded_headers: dict,
                      body: bytes | None = None) -> Step:
        """The data was read whole: the data and queue hooks decide.  A
        refusal ends the transaction; an acceptance asks the front end to
        deliver (``Step.deliver``) and report back with ``delivered``."""
        st = self.state
        await self.settle()
        st.message_size = size
        st.headers = headers
        data = await self.policy.run(Stage.DATA, body)
        if data.outcome in _REFUSING:
            return self._message_done((size, recorded_headers, data, None), Stage.DATA, data,
                                      replies.for_decision(Stage.DATA, data))
        queue = await self.policy.run(Stage.QUEUE, body)
        self._pending = (size, recorded_headers, data, queue)
        if queue.outcome in _REFUSING:
            return self._message_done(self._pending, Stage.QUEUE, queue, replies.for_decision(Stage.QUEUE, queue))
        st.messages += 1
        return Step("", False, "", True, queue, Stage.QUEUE, "", True)

    def delivered(self, reply: str) -> Step:
        """The outcome of the delivery ``message`` asked for, as the reply."""
        pending = self._pending
        assert pending is not None, "delivered() without a message() that asked for delivery"
        return self._message_done(pending, Stage.QUEUE, pending[3], reply)

    def _message_done(self, pending: tuple, stage: Stage, decision: Decision, reply: str) -> Step:
        self._pending = None
        if self.record:
            size, headers, data, queue = pending
            self._note(ev.Data(size, headers, data, queue, reply))
        self.new_transaction()
        return Step(reply, reply.startswith("421"), "", True, decision, stage)

    def rset(self) -> Step:
        over = self.junk_command()
        if over is not None:
            return over
        self.new_transaction()
        if self.record:
            self._note(ev.Rset())
        return Step(RSET_OK)

    def tls_started(self) -> None:
        """After a completed STARTTLS handshake: RFC 3207 4.2, everything
        the client said before TLS is forgotten."""
        st = self.state
        st.tls = True
        if self.record:
            self._note(ev.StartTls())
        st.set_helo("", False)
        st.auth, st.auth_user = False, ""
        self.new_transaction()

    def auth_problem(self) -> str | None:
        """Why AUTH may not start now, as a reply; None if it may."""
        st = self.state
        if not st.esmtp:
            return replies.NEED_EHLO
        if st.auth:
            return replies.ALREADY_AUTHENTICATED
        if st.sender is not None:
            return replies.AUTH_IN_TRANSACTION
        if not (st.tls or self.limits.auth_allow_plaintext):
            return replies.AUTH_NEEDS_TLS
        return None

    def authenticated(self, user: str) -> Step:
        st = self.state
        st.auth, st.auth_user = True, user
        if self.record:
            self._note(ev.Auth(user))
        return Step(replies.AUTH_OK)

    def _held(self, stage: Stage) -> str:
        policy = self.policy
        if policy.delayed_stage is stage and policy.delayed is not None:
            return _HELD.format("DATA" if policy.ruleset.delay_until is Stage.DATA else "RCPT")
        return ""
