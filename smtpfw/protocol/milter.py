"""The milter front end: smtpfw as a Postfix (or Sendmail) mail filter, so
rules at ``data`` see the headers and the message behind the MTA.

The milter wire protocol is parsed by ``kilter.protocol``, a maintained,
sans-IO implementation (parsers and the filter-side state machine, no
sockets, no threads), which fits how smtpfw is built: this module only moves
bytes between the connection and that parser, and events into the
conversation core.  pymilter needs the C libmilter and its threads;
purepythonmilter is an early release; a home-made parser would be one more
thing to get wrong.

The MTA opens one milter connection per SMTP session.  Its events become
conversation calls: Connect -> connect, Helo -> helo, EnvelopeFrom -> mail,
EnvelopeRecipient -> rcpt, Header/Body -> the message, EndOfMessage -> the
data and queue hooks, Abort -> a new transaction.  A refusal is answered with
its reply (SMFIR_REPLYCODE: code, enhanced code, text), anything else with
Continue; ``add_header`` rules add their fields at the end of the message.
The MTA checks the SMTP sequence and its own limits, so the conversation's
are off here.
"""

from __future__ import annotations

import logging
import time

from kilter.protocol import messages as m
from kilter.protocol.buffer import SimpleBuffer
from kilter.protocol.core import FilterProtocol
from kilter.protocol.exceptions import InvalidMessage, UnexpectedMessage, UnknownMessage

from smtpfw.core.conversation import Conversation
from smtpfw.core.events import Step
from smtpfw.facts import Facts
from smtpfw.protocol.address import parse_path
from smtpfw.protocol.common import MtaConnection, log_and_record, new_session_id, plain_ip
from smtpfw.protocol.policy import UNLIMITED
from smtpfw.session import SessionState

log = logging.getLogger("smtpfw.milter")

BUFFER = 1024 * 1024 + 64 * 1024   # a milter packet is at most 64 KiB of body (1 MiB negotiable) plus framing
_WANTED_ACTIONS = m.ActionFlags.ADD_HEADERS
_UNWANTED_EVENTS = m.ProtocolFlags.NO_UNKNOWN


class MilterConnection(MtaConnection):
    """One milter connection: one SMTP session of the MTA."""

    def __init__(self, server, listener):
        super().__init__(server, listener)
        self.filter = FilterProtocol()
        self.inbox = SimpleBuffer(BUFFER)
        self.outbox = SimpleBuffer(BUFFER)
        self.ruleset = server.ruleset
        self.state = SessionState()
        self.conv: Conversation | None = None
        self.facts: Facts | None = None
        self.started = time.monotonic()
        self.macros: dict[str, str] = {}
        self._reset_message()

    def _reset_message(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.too_big = False

    # ---- the byte side ----------------------------------------------------------

    async def run(self) -> None:
        peer = (self.transport.get_extra_info("peername") or ("?",))[0]
        try:
            while True:
                while self.buffer and self.inbox.available:
                    take = min(len(self.buffer), self.inbox.available)
                    self.inbox[:] = bytes(self.buffer[:take])
                    del self.buffer[:take]
                    self.consumed()
                    for message in self.filter.read_from(self.inbox):
                        message.freeze()
                        if not await self._event(message):
                            return
                if not self.inbox.available:
                    raise InvalidMessage(None)              # a packet larger than any the MTA may send
                if not await self.more():
                    return
        except (InvalidMessage, UnexpectedMessage, UnknownMessage, ValueError) as err:
            log.warning("milter client %s: not the milter protocol (%s); closing the connection",
                        peer, type(err).__name__)
        except ConnectionError:
            pass
        except Exception:
            log.exception("milter client %s: internal error", peer)
        finally:
            self._finish()
            self.server.sessions.discard(self)
            self.close()

    def _send(self, *messages: m.Message) -> None:
        for message in messages:
            self.filter.write_to(self.outbox, message)
        self.write(self.outbox[:].tobytes())
        del self.outbox[:]

    # ---- events -> the conversation ---------------------------------------------

    async def _event(self, message: m.Message) -> bool:
        """Handle one MTA message; False when the connection is done."""
        match message:
            case m.Negotiate():
                self._send(m.Negotiate(6, message.action_flags & _WANTED_ACTIONS,
                                       message.protocol_flags & _UNWANTED_EVENTS))
            case m.Macro():
                self.macros.update(message.macros)
            case m.Connect():
                self._answer(await self._connect(message))
            case m.Helo():
                self._answer(await self.conv.helo(message.hostname, True))
            case m.EnvelopeFrom():
                self.conv.new_transaction()
                self._reset_message()
                path = parse_path(_text(message.sender)) if _text(message.sender) != "<>" else ("", "")
                address, params = (path[0], _params(message.arguments)) if path else ("", {})
                self._authenticated()
                self._answer(await self.conv.mail(address, params))
            case m.EnvelopeRecipient():
                path = parse_path(_text(message.recipient))
                self._answer(await self.conv.rcpt(path[0] if path else _text(message.recipient).strip("<>")))
            case m.Header():
                self._header(message.name, _text(message.value))
                self._send(m.Continue())
            case m.Body():
                self._body(bytes(message.content))
                self._send(m.Continue())
            case m.EndOfMessage():
                self._body(bytes(message.content))
                await self._end_of_message()
            case m.Abort():
                self.conv.new_transaction()
                self._reset_message()
            case m.Close():
                return False
            case m.EndOfHeaders():
                self._body(b"\r\n")
                self._send(m.Continue())
            case m.Data() | m.Unknown():
                self._send(m.Continue())
        return True

    async def _connect(self, message: m.Connect) -> Step:
        st = self.state
        st.session_id = new_session_id()
        st.started = time.time()
        st.client_ip = plain_ip(str(message.address)) if message.address is not None else ""
        st.client_port = message.port
        st.listener_name = self.listener.name
        self.facts = self.server.session_facts()
        self.conv = Conversation(self.ruleset, st, self.facts, UNLIMITED,
                                 hostname=self.server.hostname, sequence=False)
        return await self.conv.connect()

    def _authenticated(self) -> None:
        user = self.macros.get("{auth_authen}", "")
        st = self.state
        if user and not st.auth:
            st.auth, st.auth_user = True, user
        st.tls = st.tls or bool(self.macros.get("{tls_version}"))

    def _header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self._body(f"{name}: {value}\r\n".encode("utf-8", "replace"))

    def _body(self, chunk: bytes) -> None:
        """The message as rules at data see it: header fields, the blank
        line (EndOfHeaders), the body (CRLF lines, as the MTA sends them)."""
        if self.too_big:
            return
        if len(self.body) + len(chunk) > self.server.config.max_message_size:
            self.too_big = True                       # the MTA enforces its own size; rules see what fits
            return
        self.body += chunk

    async def _end_of_message(self) -> None:
        conv = self.conv
        first: dict[str, str] = {}
        for name, value in self.headers:
            first.setdefault(name.lower(), _unfold(value))
        wanted = self.server.config.recording_headers
        data = conv.data()
        if data.reply != "354 End data with <CR><LF>.<CR><LF>" and not self.state.rcpts:
            # the MTA took recipients our rules refused: nothing of ours to decide
            self._send(m.Continue())
            return
        step = await conv.message(len(self.body), first, {k: v for k, v in first.items() if k in wanted},
                                  bytes(self.body))
        if step.deliver:
            edits = [m.AddHeader(name, value.encode("utf-8")) for name, value in self.state.add_headers]
            if self.state.auth_results:          # the MTA prepends it (forged ones are not removed in milter mode)
                edits.insert(0, m.AddHeader("Authentication-Results", self.state.auth_results.encode("ascii")))
            step = conv.delivered("250 2.0.0 Ok: handed back to the MTA")
            self._send(*edits, m.Continue())
        else:
            self._answer(step)
        self._reset_message()

    def _answer(self, step: Step) -> None:
        if step.decision is not None and step.decision.outcome.refuses:
            self._send(m.ReplyCode(step.reply.encode("utf-8", "replace") + b"\0"))
        else:
            self._send(m.Continue())

    def _finish(self) -> None:
        if self.facts is not None:
            self.facts.close()
        if self.conv is not None:
            log_and_record(self.server, self.state, self.ruleset.version, time.monotonic() - self.started)
            self.conv = None


def _text(value) -> str:
    return bytes(value).decode("utf-8", "replace") if not isinstance(value, str) else value


def _params(arguments) -> dict:
    out: dict = {}
    for arg in arguments:
        key, eq, value = _text(arg).partition("=")
        out[key.upper()] = value if eq else True
    return out


def _unfold(value: str) -> str:
    return " ".join(value.split()) if "\n" in value else value.strip()

