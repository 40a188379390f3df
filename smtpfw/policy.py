"""Runs a ruleset's hooks for one session: gather facts (DNS, ...),
evaluate, run plugin steps, apply delayed rejection, and note every decision.

The live server, replay (dry-run), trace and ``smtpfw test`` all drive a
session through this one class, so they cannot disagree about what a ruleset
does.  Only the fact source differs: live lookups, or recorded answers
(smtpfw.facts).
"""

from __future__ import annotations

import logging
import re

from smtpfw.facts import FactSource
from smtpfw.actions import RunPlugin
from smtpfw.checks.mime import forget_lines
from smtpfw.engine import NeedFacts, PluginCall, Ruleset
from smtpfw.facts.base import provider_of
from smtpfw.plugins import PLUGIN_FAILED, run_plugin
from smtpfw.session import SessionState
from smtpfw.verdict import CONTINUE, Decision, Outcome, Stage

_EARLY = (Stage.CONNECT, Stage.HELO, Stage.MAIL)
FACT_ROUNDS = 3            # facts that depend on facts: PTR name -> its RHSBL listing is two
log = logging.getLogger("smtpfw.plugins")

# Reply classes a plugin's decision may carry, per outcome.  A refusal with a
# 2xx code would tell the client "accepted" for mail that is dropped.
_CLASSES = {Outcome.CONTINUE: "2345", Outcome.ACCEPT: "2", Outcome.REJECT: "5",
            Outcome.TEMPFAIL: "4", Outcome.DISCONNECT: "45"}
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _sane(d: object) -> bool:
    """A plugin's Decision is used only if it is well-formed: an Outcome, an
    int code 200-599 of the outcome's class, an enhanced code of that class,
    text that is text."""
    if not isinstance(d, Decision) or not isinstance(d.outcome, Outcome):
        return False
    classes = _CLASSES[d.outcome]
    code = d.code
    if code is not None and (type(code) is not int or not 200 <= code <= 599 or str(code)[0] not in classes):
        return False
    enhanced = d.enhanced
    if enhanced is not None and (not isinstance(enhanced, str) or not _ENHANCED.fullmatch(enhanced)
                                 or enhanced[0] not in (str(code)[0] if code else classes)):
        return False
    return all(v is None or isinstance(v, str) for v in (d.text, d.rule_id))


class _Contained:
    """A plugin whose run() cannot stop the server: asyncio re-raises
    SystemExit and KeyboardInterrupt out of the event loop, so a plugin (or a
    library it calls) doing sys.exit() would end every session.  Here they
    become an ordinary exception, which run_plugin turns into a 451."""

    __slots__ = ("plugin",)

    def __init__(self, plugin):
        self.plugin = plugin

    @property
    def timeout(self):
        return getattr(self.plugin, "timeout", 10.0)

    @property
    def fields(self):
        return getattr(self.plugin, "fields", {})

    async def run(self, stage, state, message):
        try:
            return await self.plugin.run(stage, state, message)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise RuntimeError(f"plugin raised {type(exc).__name__}({exc})") from None


class Policy:
    def __init__(self, ruleset: Ruleset, state: SessionState, facts: FactSource | None,
                 trace: list | None = None, notify=None):
        self.ruleset = ruleset
        self.state = state
        self.facts = facts
        self.trace = trace
        # notify(stage, kind, rule_id, text): `log`/`warn` actions and
        # monitor-mode refusals as they happen (the live server logs them).
        self.notify = notify
        self.delayed: Decision | None = None     # smtpd_delay_reject: refusal held until RCPT
        self.delayed_stage: Stage | None = None
        self.asked: list = []
        self._prefetched: tuple | None = None    # (stage, keys it waits for) from prefetch, for its run right after

    def prefetch(self, stage: Stage) -> bool:
        """Start the facts ``stage`` will need, from the state as it is now
        (a hook decided later asks for them again: nothing is asked twice);
        whether every fact it waits for is at hand already (none, or
        cached, in every round: a fact's key can depend on another fact's
        answer), so that deciding it now would not wait.  Answers at hand
        are taken into the session's facts, as ``run`` would; its run right
        after, with the state unchanged, does not make the keys again."""
        rs, facts, state = self.ruleset, self.facts, self.state
        if facts is None:
            return True
        if rs.fact_starts.get(stage):
            facts.start(rs.fact_keys(rs.fact_starts, stage, state))
        if not rs.fact_needs.get(stage):
            self._prefetched = (stage, [])
            return True
        keys = rs.fact_keys(rs.fact_needs, stage, state)
        self._prefetched = (stage, keys)
        facts.start(keys)
        known = state.facts
        at_hand = getattr(facts, "at_hand", None)       # optional (FactSource)
        for _ in range(FACT_ROUNDS):
            wanted = [k for k in dict.fromkeys(keys) if k not in known]
            if not wanted:
                return True
            got = at_hand(wanted) if at_hand is not None else None
            if got is None:
                return False
            known.update(got)
            keys = rs.fact_keys(rs.fact_needs, stage, state)
            facts.start(keys)
        return True

    def forget_prefetch(self) -> None:
        """The hook is decided later: its keys are made again then."""
        self._prefetched = None

    async def run(self, stage: Stage, message: bytes | None = None, subject: str = "") -> Decision:
        """Decide one hook.  Never raises for rule or plugin trouble."""
        rs, state = self.ruleset, self.state
        facts = self.facts
        state.hook_runs += 1
        state.message = message                # content checks read it; dropped when the hook is decided
        try:
            return await self._run(stage, message, subject)
        finally:
            if state.message is not None:
                state.message = None
                forget_lines()

    async def _run(self, stage: Stage, message: bytes | None, subject: str) -> Decision:
        rs, state = self.ruleset, self.state
        facts = self.facts
        self.asked = []                        # lazy facts asked in this hook run (what a refusal gives back)
        prefetched, self._prefetched = self._prefetched, None
        if facts is not None:
            pre = prefetched[1] if prefetched is not None and prefetched[0] is stage else None
            if rs.fact_starts.get(stage) and pre is None:
                facts.start(rs.fact_keys(rs.fact_starts, stage, state))
            if rs.fact_needs.get(stage):
                known = state.facts
                # A fact's key can depend on another fact (an RHSBL lookup of
                # the PTR name needs the PTR answer): ask again for the keys
                # the answers made known, a few rounds at most.
                for _ in range(FACT_ROUNDS):
                    keys = pre if pre is not None else rs.fact_keys(rs.fact_needs, stage, state)
                    pre = None
                    wanted = [k for k in dict.fromkeys(keys) if k not in known]
                    if not wanted:
                        break
                    known.update(await facts.results(wanted))
        logged, monitored = len(state.log_lines), len(state.monitored)
        if stage is Stage.HELO:
            state.forget_scores(Stage.HELO)    # a new HELO (after STARTTLS, say) replaces what the old one scored
        state.stage = stage
        decision = await self._evaluate(stage, message)
        heard = self._delay(stage, decision) if rs.delay_reject else decision
        if self.asked:                         # a refusal now or one held and given now gives back its counts
            await self._settle(decision if decision.outcome.refuses else heard)
        if state.effects:
            effects, state.effects = state.effects, []
            commit = getattr(self.facts, "commit", None)
            if commit is not None:
                await commit(effects)
        if self.notify is not None:
            for kind, rule_id, text in state.log_lines[logged:]:
                self.notify(stage, kind, rule_id, text)
            for rule_id, would in state.monitored[monitored:]:
                said = (would.text or "" if would.outcome is Outcome.CONTINUE      # would tarpit ...
                        else f"would {would.outcome.value}: {would.text or ''}".rstrip(": "))
                self.notify(stage, "monitor", rule_id, said)
        decision = heard
        authserv_id = rs.options.get("authentication_results")
        if authserv_id and stage is Stage.DATA and not decision.outcome.refuses:
            from smtpfw.checks.content import header_for
            state.auth_results = header_for(state.facts, state.messages, state.sender, str(authserv_id),
                                            state.client_ip)
        state.decisions.append((stage, decision, subject))
        return decision

    async def _evaluate(self, stage: Stage, message: bytes | None) -> Decision:
        rs, state = self.ruleset, self.state
        start = 0
        while True:
            result = rs.evaluate(stage, state, start, self.trace)
            if isinstance(result, NeedFacts):
                start = await self._ask(result)
                continue
            if not isinstance(result, PluginCall):
                return result
            action = result.rule.action
            assert isinstance(action, RunPlugin)
            name = action.name
            plugin = rs.plugins.get(name)
            decision = (await run_plugin(name, _Contained(plugin), stage, state, message)
                        if plugin is not None else PLUGIN_FAILED)
            if decision is not None and not _sane(decision):
                log.error("plugin %s returned a malformed decision %r (session %s)",
                          name, decision, state.session_id)
                decision = PLUGIN_FAILED
            if decision is not None and decision.outcome.terminal:
                return Decision(decision.outcome, decision.code, decision.enhanced, decision.text,
                                decision.rule_id or result.rule.rule_id)
            start = result.next_index

    async def _ask(self, need: NeedFacts) -> int:
        """A rule reached a lazy fact: ask for it (counted once) and resume there."""
        state, key = self.state, need.key
        if self.facts is not None:
            try:
                state.facts.update(await self.facts.results([key]))
            except KeyError:                   # no source for it in this session: fail open, below
                pass
        answer = state.facts.get(key)
        if answer is None:                     # no source in this run (a state store, a scanner): fail open
            answer = state.facts[key] = provider_of(key).unavailable(f"no {key.provider} source in this run")
        self.asked.append(key)
        if answer is not None and not getattr(answer, "available", True):
            state.log_lines.append(("warn", "state", f"state store unavailable: {answer.reason}"))
        return need.index

    async def _settle(self, decision: Decision) -> None:
        """The effects of this hook's lazy facts: a refused hook gives back
        what its limits counted (a refused recipient costs nothing)."""
        if decision.outcome.refuses and self.facts is not None:
            refund = getattr(self.facts, "refund", None)
            if refund is not None:
                await refund(self.asked, self.state.facts)

    def _delay(self, stage: Stage, decision: Decision) -> Decision:
        """Hold connect/helo/mail refusals (not disconnects) until RCPT, so the
        log shows the whole envelope (Postfix smtpd_delay_reject), or with
        `option delay_reject = "data"` until the DATA command, so every
        recipient is seen too (qpsmtpd's naughty plugin); ``held_refusal``
        gives it there."""
        if stage in _EARLY and decision.outcome in (Outcome.REJECT, Outcome.TEMPFAIL):
            if self.delayed is None:
                self.delayed, self.delayed_stage = decision, stage
            return CONTINUE
        if stage is Stage.RCPT and self.delayed is not None and self.ruleset.delay_until is Stage.RCPT:
            return self.delayed
        return decision

    def held_refusal(self) -> Decision | None:
        """At the DATA command: the refusal held until DATA, if any."""
        if self.ruleset.delay_until is Stage.DATA:
            return self.delayed
        return None

    def forget_transaction(self) -> None:
        """A held MAIL refusal ends with its transaction; connect/helo ones stay."""
        if self.delayed_stage is Stage.MAIL:
            self.delayed = self.delayed_stage = None
