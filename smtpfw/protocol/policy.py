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
REQUEST_TIMEOUT = 60.0         # a request must end this long after its first byte came
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
    """One connection from a Postfix smtpd process.

    A request as Postfix sends it (one write, a few hundred bytes) is
    usually in the buffer whole when it is read: it is then taken and parsed
    in one piece.  Anything else (a request that arrives in parts, empty
    lines before it, CR LF line ends, a long one) is read line by line.

    Time limits cost one timer per connection, not one per request: while
    the connection waits it has a deadline (IDLE_TIMEOUT for the next
    request, REQUEST_TIMEOUT for the rest of one that began), a request only
    moves it, and the timer, when it fires early, sets itself again for the
    deadline.  At the deadline the connection is closed."""

    def __init__(self, server, listener):
        super().__init__(server, listener)
        self.session: PolicySession | None = None
        self.peer = "?"
        self._waiting = ""                 # "" (answering), "idle" or "request"
        self._deadline = 0.0               # loop time by which what is awaited must come
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.retiring = False

    def retire(self) -> None:
        """This worker's rules were replaced by a reload: close now if no
        request is under way, else after its answer.  Postfix's policy
        client opens a new connection for its next request (to a worker
        with the new rules); the session a new connection meets is rebuilt
        from the request, which carries the client, HELO and sender."""
        self.retiring = True
        if self._waiting == "idle" and not self.buffer:
            self.close()

    async def run(self) -> None:
        self.peer = (self.transport.get_extra_info("peername") or ("?",))[0]
        try:
            while True:
                attrs = await self._request()
                if attrs is None:
                    return
                action = await self._decide(attrs)
                self.write(_DUNNO if action == "DUNNO" else
                           f"action={_one_line(action)}\n\n".encode("utf-8", "replace"))
                await self.drain()
                if self.retiring and not self.buffer:
                    return                     # answered; Postfix asks its next question on a new connection
        except BadRequest as err:
            log.warning("policy client %s: %s; closing the connection", self.peer, err)
        except ConnectionError:
            pass
        except Exception:
            log.exception("policy client %s: internal error", self.peer)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._end_session()
            self.server.sessions.discard(self)
            self.close()

    # ---- time limits ---------------------------------------------------------

    def _wait(self, why: str, seconds: float) -> None:
        """From now on the connection waits for at most ``seconds``."""
        self._waiting = why
        self._deadline = deadline = self.loop.time() + seconds
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        self._timer = None
        if not self._waiting:
            return                             # answering: set again when it next waits
        if self.loop.time() + 0.01 < self._deadline:   # it waited since, and not that long yet (uvloop's timers are in whole ms)
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._watch)
            return
        if self._waiting == "request":
            log.warning("policy client %s: a request that did not end within %.0f s; closing the connection",
                        self.peer, REQUEST_TIMEOUT)
        self.close()                           # the connection's end cancels run(), which ends the session

    # ---- requests ------------------------------------------------------------

    async def _request(self) -> dict[str, str] | None:
        """The next request's attributes; None at a clean EOF."""
        if not self.buffer:
            self._wait("idle", IDLE_TIMEOUT)
            while not self.buffer:
                if not await self.more():
                    return None
        buffer = self.buffer
        end = buffer.find(b"\n\n")
        if 0 < end < LINE_LIMIT and buffer[0] != 10:      # whole, no empty line first, no line too long
            block = buffer[:end]
            if b"\r" not in block:
                del buffer[:end + 2]
                self.consumed()
                self._waiting = ""
                return _parse(block)
        return await self._request_by_line()

    async def _request_by_line(self) -> dict[str, str] | None:
        """A request read line by line, within REQUEST_TIMEOUT."""
        self._wait("request", REQUEST_TIMEOUT)
        attrs: dict[str, str] = {}
        while True:
            line = await self._line(attrs)
            if line is None:
                return None
            if line:
                self._attribute(attrs, line)
            elif attrs:
                self._waiting = ""
                return attrs

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


_DUNNO = b"action=DUNNO\n\n"
# What Postfix 3.x sends (SMTPD_POLICY_README): names known to be well formed.
_POSTFIX_NAMES = frozenset((
    "request", "protocol_state", "protocol_name", "helo_name", "queue_id", "sender", "recipient",
    "recipient_count", "client_address", "client_name", "reverse_client_name", "instance", "sasl_method",
    "sasl_username", "sasl_sender", "size", "ccert_subject", "ccert_issuer", "ccert_fingerprint",
    "ccert_pubkey_fingerprint", "encryption_protocol", "encryption_cipher", "encryption_keysize",
    "etrn_domain", "stress", "client_port", "policy_context", "server_address", "server_port",
    "compatibility_level", "mail_version"))


def _parse(block: bytearray) -> dict[str, str]:
    """A whole request (its lines, LF-separated, without the empty line that
    ends it) as its attributes; what _attribute checks line by line."""
    attrs: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        name, eq, value = line.partition("=")
        if not eq or (name not in _POSTFIX_NAMES and not name.replace("_", "").isalnum()):
            raise BadRequest(f"not a name=value line: {line.encode('utf-8', 'replace')[:60]!r}")
        attrs[name] = value
    if len(attrs) > MAX_ATTRIBUTES:
        raise BadRequest(f"more than {MAX_ATTRIBUTES} attributes in one request")
    return attrs


def _one_line(text: str) -> str:
    return " ".join(text.split())
