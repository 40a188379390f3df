"""The Postfix policy-delegation front end (SMTPD_POLICY_README): smtpfw
behind Postfix, as postfwd and policyd-weight are, with the same ruleset.

Postfix's smtpd asks over a long-lived connection, one request per access
check: ``name=value`` lines, an empty line; we answer ``action=...`` and an
empty line.  Each smtpd process keeps its own connection and handles one
SMTP session at a time, so on one connection a session is the run of
requests with the same client address and port.  A request brings the
conversation up to its ``protocol_state`` (CONNECT, HELO/EHLO, MAIL, RCPT):
what Postfix did not ask about earlier is fed to the conversation first, so
a ruleset's connect, helo and mail rules decide even when Postfix asks only
at RCPT (the usual ``check_policy_service`` in smtpd_recipient_restrictions),
and held refusals (``option delay_reject``) come out at RCPT as inline.

The decision becomes a Postfix action:

- a refusal: its reply as the action (``554 5.7.1 text``; Postfix takes a
  4xx/5xx code with text, and 421 disconnects);
- ``accept``: ``OK`` (this restriction list permits);
- nothing decided: ``DUNNO`` (Postfix goes on with its own restrictions);
- a monitor-mode refusal: ``WARN`` with what would have been refused.

Postfix checks the protocol itself, so the conversation's sequence checks
and limits are off here.  Sessions are logged and recorded like SMTP ones
(replayable with dry-run); this front end sees no message, so rules on
headers and the message never decide here (milter mode will).
"""

from __future__ import annotations

import asyncio
import logging
import time

from smtpfw import replies
from smtpfw.core.conversation import Conversation, Limits
from smtpfw.core.events import Step
from smtpfw.protocol.common import MtaConnection, log_and_record, new_session_id, plain_ip
from smtpfw.protocol.stream import LineTooLong
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome

log = logging.getLogger("smtpfw.policy")

LINE_LIMIT = 8192              # Postfix's attribute lines are far shorter
MAX_ATTRIBUTES = 100
REQUEST_TIMEOUT = 60.0         # a request must end this long after it starts
IDLE_TIMEOUT = 600.0           # Postfix keeps an idle policy connection for up to max_idle (100 s)
UNLIMITED = Limits(max_errors=1 << 30, max_junk_commands=1 << 30, max_transactions=1 << 30,
                   max_unrecognized_commands=1 << 30, max_recipients=1 << 30)
_STATES = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT")


class BadRequest(Exception):
    """Not the policy protocol: the connection is closed (Postfix then
    applies smtpd_policy_service_default_action, 451 4.3.5 by default)."""


class PolicySession:
    """One SMTP session as Postfix describes it, through the conversation."""

    def __init__(self, server, listener, attrs: dict[str, str]):
        self.server = server
        self.ruleset = server.ruleset
        self.started = time.monotonic()
        self.key = (attrs.get("client_address", ""), attrs.get("client_port", ""))
        st = self.state = SessionState()
        st.session_id = new_session_id()
        st.started = time.time()
        st.client_ip = plain_ip(attrs.get("client_address", ""))
        st.client_port = _int(attrs.get("client_port"))
        st.listener_address = attrs.get("server_address", "")
        st.listener_port = _int(attrs.get("server_port"))
        st.listener_name = listener.name
        st.tls = bool(attrs.get("encryption_protocol"))
        self.facts = server.session_facts()
        self.conv = Conversation(self.ruleset, st, self.facts, UNLIMITED,
                                 hostname=server.hostname, sequence=False)
        self.connected = False
        self.last_answer = self.started
        self.helo: str | None = None
        self.instance: str | None = None
        self.mailed = False
        # Refusals that stand for what follows them, as they would inline:
        # connect for the session, HELO until another HELO, MAIL for its
        # transaction (Postfix asks at each RCPT; each gets the answer).
        self.connect_refusal: Step | None = None
        self.helo_refusal: Step | None = None
        self.mail_refusal: Step | None = None

    async def answer(self, attrs: dict[str, str]) -> str:
        """The action for one request."""
        state = attrs.get("protocol_state", "").upper()
        if state == "DATA" and self.conv.policy.held_refusal() is not None:
            step = self.conv.data()        # `delay_reject = "data"` (Postfix: smtpd_data_restrictions)
            return step.reply if _refused(step) else "DUNNO"
        if state not in _STATES:
            return "DUNNO"                 # DATA, END-OF-MESSAGE, VRFY, ETRN: nothing to decide here
        monitored = len(self.state.monitored)
        step = await self._advance(state, attrs)
        if _refused(step):
            return step.reply
        new = self.state.monitored[monitored:]
        if new:
            rule, would = new[0]
            return f"WARN smtpfw rule {rule} would {would.outcome.value}: {would.text or ''}".rstrip(": ")
        if step.decision is not None and step.decision.outcome is Outcome.ACCEPT and state == "RCPT":
            return "OK"
        return "DUNNO"

    async def _advance(self, state: str, attrs: dict[str, str]) -> Step:
        """Bring the conversation up to ``state``; the step that answers."""
        conv, st = self.conv, self.state
        if not self.connected:
            self.connected = True
            st.auth_user = attrs.get("sasl_username", "")
            st.auth = bool(st.auth_user)
            step = await conv.connect()
            if _refused(step):
                self.connect_refusal = step
            if _refused(step) or state == "CONNECT":
                return step
        if self.connect_refusal is not None:
            return self.connect_refusal
        user = attrs.get("sasl_username", "")
        if user and user != st.auth_user:   # AUTH came after the session's first request (a CONNECT or HELO check)
            st.auth_user, st.auth = user, True
        if state == "CONNECT":
            return _NOTHING
        helo = attrs.get("helo_name", "")
        if state in ("EHLO", "HELO") or (helo and helo != self.helo):
            self.helo = helo
            step = await conv.helo(helo, state != "HELO" and attrs.get("protocol_name") != "SMTP")
            self.helo_refusal = step if _refused(step) else None
            self.mailed, self.mail_refusal = False, None          # a HELO starts the envelope over
            if _refused(step) or state in ("EHLO", "HELO"):
                return step
        if self.helo_refusal is not None:
            return self.helo_refusal
        instance = attrs.get("instance", "")
        if instance != self.instance:
            self.instance = instance
            if self.mailed:
                conv.new_transaction()
            self.mailed = False
            self.mail_refusal = None
        if not self.mailed:
            self.mailed = True
            sender = attrs.get("sender", "")
            params = {"SIZE": attrs["size"]} if attrs.get("size", "0") not in ("", "0") else {}
            step = await conv.mail(sender, params)
            self.mail_refusal = step if _refused(step) else None
            if _refused(step) or state == "MAIL":
                return step
        if self.mail_refusal is not None:
            return self.mail_refusal
        if state != "RCPT":
            return _NOTHING
        return await conv.rcpt(attrs.get("recipient", ""))

    def note_answer(self, action: str) -> None:
        """What the session log shows as the reply: the last action given."""
        self.last_answer = time.monotonic()
        st = self.state
        st.final_reply = action
        if action[:1] in ("4", "5"):
            st.refusal = action

    def finish(self) -> None:
        """Log and record the session.  Postfix does not say when a session
        ends; it is over when the next request is about another client or
        the connection closes, so its duration runs to its last answer."""
        self.facts.close()
        log_and_record(self.server, self.state, self.ruleset.version, self.last_answer - self.started)


_NOTHING = Step("")


def _refused(step: Step) -> bool:
    return step.decision is not None and step.decision.outcome.refuses


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


class PolicyConnection(MtaConnection):
    """One connection from a Postfix smtpd process."""

    def __init__(self, server, listener):
        super().__init__(server, listener)
        self.session: PolicySession | None = None

    async def run(self) -> None:
        peer = (self.transport.get_extra_info("peername") or ("?",))[0]
        try:
            while True:
                try:
                    attrs = await asyncio.wait_for(self._request(), IDLE_TIMEOUT)
                except asyncio.TimeoutError:
                    return
                if attrs is None:
                    return
                action = await self._decide(attrs)
                self.write(f"action={_one_line(action)}\n\n".encode("utf-8", "replace"))
                await self.drain()
        except BadRequest as err:
            log.warning("policy client %s: %s; closing the connection", peer, err)
        except ConnectionError:
            pass
        except Exception:
            log.exception("policy client %s: internal error", peer)
        finally:
            self._end_session()
            self.server.sessions.discard(self)
            self.close()

    async def _request(self) -> dict[str, str] | None:
        """The next request's attributes; None at a clean EOF.  Waiting for
        a request is bounded by run(); once one has begun it must end within
        REQUEST_TIMEOUT (one deadline per request, not a timer per line:
        Postfix sends some 30 lines a request)."""
        attrs: dict[str, str] = {}
        line = await self._line(attrs)
        if line is None:
            return None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                while line is not None:
                    if not line:
                        if attrs:
                            return attrs
                    else:
                        self._attribute(attrs, line)
                    line = await self._line(attrs)
        except TimeoutError:
            raise BadRequest(f"a request that did not end within {REQUEST_TIMEOUT:.0f} s") from None
        return None

    async def _line(self, attrs: dict[str, str]) -> bytes | None:
        """One line without its end; None at EOF between requests."""
        try:
            return (await self.readline(LINE_LIMIT)).rstrip(b"\r\n")
        except LineTooLong:
            raise BadRequest(f"a line over {LINE_LIMIT} bytes") from None
        except ConnectionError:
            if attrs:
                raise BadRequest("the connection closed inside a request") from None
            return None

    @staticmethod
    def _attribute(attrs: dict[str, str], line: bytes) -> None:
        name, eq, value = line.decode("utf-8", "replace").partition("=")
        if not eq or not name or not name.replace("_", "").isalnum():
            raise BadRequest(f"not a name=value line: {line[:60]!r}")
        if len(attrs) >= MAX_ATTRIBUTES:
            raise BadRequest(f"more than {MAX_ATTRIBUTES} attributes in one request")
        attrs[name] = value

    async def _decide(self, attrs: dict[str, str]) -> str:
        if attrs.get("request") != "smtpd_access_policy":
            raise BadRequest(f"unknown request {attrs.get('request', '')!r}")
        key = (attrs.get("client_address", ""), attrs.get("client_port", ""))
        if self.session is None or self.session.key != key:
            self._end_session()
            self.session = PolicySession(self.server, self.listener, attrs)
        try:
            action = await self.session.answer(attrs)
        except Exception:
            log.exception("policy session %s: internal error", self.session.state.session_id)
            action = replies.LOCAL_ERROR       # 451 4.3.0: Postfix defers, the sender retries
        self.session.note_answer(action)
        return action

    def _end_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.finish()


def _one_line(text: str) -> str:
    return " ".join(text.split())
