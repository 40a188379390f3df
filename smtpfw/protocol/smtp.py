"""The SMTP front end: the wire side of an SMTP session.

smtpfw owns its SMTP server protocol.  The firewall needs what aiosmtpd's
server does not give: a connect hook before the greeting, enhanced status
codes on every reply, strict limits, a DATA reader that refuses bare CR/LF
(SMTP smuggling) and scans its buffer in place, a TLS handshake with its own
timeout, and AUTH checks off the event loop.  It reads and writes through
``stream.Stream`` (asyncio's public Protocol API only), parses envelope
addresses as RFC 5321 writes them (``address.py``) and leaves everything a
command *means* to the conversation core (``smtpfw.core``), which replay
drives too.  aiosmtpd stays what the benchmark measures smtpfw against
(bench/baseline_server.py: a bare aiosmtpd server), not a base class.

Data flows one way: bytes -> command -> Conversation (state, Policy over
gathered facts) -> Step -> reply.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import re
import time

from smtpfw import linescan, metrics
from smtpfw import replies
from smtpfw.protocol import proxy, sasl
from smtpfw.protocol.common import log_and_record, new_session_id, plain_ip
from smtpfw.protocol.address import parse_path
from smtpfw.protocol.stream import LineTooLong, Stream
from smtpfw.delivery import Message
from smtpfw.facts import Facts
from smtpfw.checks.authresults import strip_forged
from smtpfw.core.conversation import Conversation
from smtpfw.core.events import Step
from smtpfw.session import SessionState
from smtpfw.verdict import Stage

log = logging.getLogger("smtpfw.smtp")
session_log = logging.getLogger("smtpfw.session")

COMMAND_LIMIT = 512            # RFC 5321 4.5.3.1.4, including CRLF
ESMTP_EXTRA = 64               # room for SIZE=/BODY=/SMTPUTF8 parameters
TEXT_LINE_LIMIT = 1000         # RFC 5321 4.5.3.1.6, including CRLF
# 998 octets + CR is the most a line may have; a leading transparency dot
# is not counted (RFC 5321 4.5.2: the client added it, we remove it).  The
# data's lines are checked by smtpfw/linescan.py.
# a one-line 2xx/4xx/5xx reply without an enhanced code (x.y.z)
_NEEDS_ENHANCED = re.compile(r"[245]\d\d (?!\d\.\d{1,3}\.\d{1,3}\b)[^\r\n]*$")
LINE_LIMIT = 65536     # input held for one unterminated line; the SMTP limits are checked on top
PROXY_TIMEOUT = 10.0   # seconds a load balancer has for its PROXY header (it sends it at once)
TIMER_SLACK = 0.01     # a timer this close to its deadline is due (uvloop's are in whole ms: no re-arming spin)


class FirewallSMTP(Stream):
    def __init__(self, server, listener):
        super().__init__(server.loop)
        cfg = server.config
        self.server = server
        self.cfg = cfg
        self.listener = listener
        self.hostname = server.hostname
        self.tls_context = server.tls_context
        self.ruleset = server.ruleset          # a session keeps the ruleset it started with
        self.state = SessionState()
        self.conv: Conversation | None = None
        self.facts: Facts | None = None
        self.greeted = False
        self.closing = False
        self.started = time.monotonic()
        self.finished = False
        self.stutter_until: float | None = None   # loop time when `stutter` ends (set at its first reply)
        self.admitted = False                  # counted against the connection limits
        self.client_key: str | None = None     # the client's network, as the per-IP limits count it
        self.handshaking = False               # inside a STARTTLS handshake
        self.held = 0                          # message bytes reserved from the server's budget
        self.in_message = False                # deciding or delivering a message read whole
        self._timer: asyncio.TimerHandle | None = None   # fires at or before _deadline
        self._deadline = 0.0                   # loop time the client must have said something by
        self.held_refusal: Step | None = None  # a connect refusal after a "220-" greeting, for the first command

    # ---- connection lifecycle ----------------------------------------------

    def connection_made(self, transport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.server.sessions.add(self)
            metrics.in_flight(len(self.server.sessions))
            self._reset_timeout()

    def connection_lost(self, error) -> None:
        super().connection_lost(error)
        self._stop_timeout()
        if self.in_message:
            # A message was read whole and is being decided or delivered:
            # finish that (a client that closes right after its final dot, or
            # after a TLS close_notify, has sent its message; cutting the work
            # off half-way could leave it delivered without a record, or
            # half-delivered).  The reply goes nowhere; run() finishes.
            return
        if self.conv is not None and self.conv.deciding and self.task is not None:
            return    # hooks answered before they were decided: run() decides them for the log, then finishes
        if self.task is not None:
            self.task.cancel()
        self._finish()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The client has ``duration`` seconds (the idle timeout by default)
        from now.  Every command moves the deadline; the timer is moved only
        when the deadline comes nearer: a later one is found when the timer
        fires (one timer a session instead of one per command)."""
        if duration is None:
            duration = self.cfg.idle_timeout
            if self.server.under_stress:
                duration = min(duration, self.cfg.stress_idle_timeout)
        self._deadline = deadline = self.loop.time() + duration
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._timeout_cb)

    def _stop_timeout(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout_cb(self) -> None:
        if self.loop.time() + TIMER_SLACK < self._deadline:   # moved since the timer was set
            self._timer = self.loop.call_at(self._deadline, self._timeout_cb)
            return
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self._write_line(replies.IDLE_TIMEOUT)
            self.state.final_reply = replies.IDLE_TIMEOUT
        self.close()
        self._abort_if_stuck()

    def _abort_if_stuck(self) -> None:
        # close() waits until the write buffer is flushed, which never happens
        # with a client that does not read (it pipelines commands and ignores
        # the replies): drop it, or it holds its connection slot forever.
        if self.write_buffer_size():
            self.abort()

    def _write_line(self, text: str) -> None:
        self.write(text.encode("utf-8", "replace") + b"\r\n")

    async def push(self, status: str) -> None:
        """Every reply goes out here.  Every one after the greeting carries
        an enhanced status code, as ENHANCEDSTATUSCODES promises (RFC 2034);
        the greeting and the HELO/EHLO replies carry none."""
        if _NEEDS_ENHANCED.match(status) and status[4:4 + len(self.hostname)] != self.hostname:
            status = f"{status[:4]}{status[0]}.0.0 {status[4:]}"
        self.state.final_reply = status
        if status[:1] in ("4", "5"):
            self.state.refusal = status
        data = status.encode("utf-8", "replace") + b"\r\n"
        if (self.state.tarpit or self.state.stutter) and self.server.may_tarpit(self):
            if self.state.tarpit:
                await asyncio.sleep(self.state.tarpit)      # a timer: no worker waits
            if self.state.stutter:
                data = await self._stutter(data)
        self.write(data)
        await self.drain()

    async def _stutter(self, data: bytes) -> bytes:
        """spamd's stutter: one byte a second until the `stutter` span
        (counted from the first stuttered reply) is over; the rest of
        ``data``, to be sent whole."""
        if self.stutter_until is None:
            self.stutter_until = self.loop.time() + self.state.stutter
        while len(data) > 1 and self.loop.time() < self.stutter_until and not self.closing:
            self.write(data[:1])
            data = data[1:]
            await asyncio.sleep(1.0)
        return data

    def close(self) -> None:
        self.closing = True
        super().close()

    async def shutdown(self) -> None:
        """Server shutdown past the grace period: 421 and close."""
        if self.handshaking:
            self._abandon()          # nothing can be said inside a TLS handshake
            return
        self._write_line(replies.SHUTTING_DOWN)
        self.state.final_reply = replies.SHUTTING_DOWN
        self.close()
        self._abort_if_stuck()

    def _abandon(self) -> None:
        """End the session now, without a reply: the connection is unusable."""
        self.closing = True
        self.abort()
        if self.task is not None:
            self.task.cancel()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        srv = self.server
        srv.sessions.discard(self)
        metrics.in_flight(len(srv.sessions))
        srv.tarpitted.discard(self)
        if self.admitted:
            srv.release(self.client_key)
        self._free_message()
        if self.conv is not None:
            self.conv.abandon()
        if self.facts is not None:
            self.facts.close()
        self.state.trim_history(self.cfg.recording_max_events)
        if not self.greeted and not self.state.connect_reply:
            return   # refused by a connection limit: nothing to log
        log_and_record(srv, self.state, self.ruleset.version, time.monotonic() - self.started)

    # ---- the command loop ---------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                await self._session()
            except ConnectionError:
                pass      # the client went away (EOF inside an over-long line, say)
            if self.conv is not None:
                await self.conv.settle()       # hooks answered but not decided yet: decided for the log
        except Exception:
            log.exception("session %s: internal error", self.state.session_id)
        finally:
            # The session ended (QUIT, EOF, a limit) or was cancelled by a lost
            # connection; either way it is over: close, and release its slot
            # here rather than wait for connection_lost, which asyncio does not
            # call for a connection lost inside a TLS handshake.
            self._stop_timeout()
            self.close()
            self._finish()

    async def _session(self) -> None:
        st = self.state
        peer = self.transport.get_extra_info("peername") or ("", 0)
        st.session_id = new_session_id()
        st.started = time.time()
        st.client_ip, st.client_port = plain_ip(str(peer[0])), int(peer[1])
        if self.listener.proxy_from and not await self._proxied():
            self.close()
            return
        sock = self.transport.get_extra_info("sockname") or ("", 0)
        st.listener_address, st.listener_port = plain_ip(str(sock[0])), int(sock[1])
        st.listener_name = self.listener.name
        self.client_key = self.server.client_key(st.client_ip)
        refusal = self.server.admit(self.client_key)
        if refusal:
            await self.push(refusal)
            self.close()
            return
        self.admitted = True
        self._reset_timeout()                   # the stress timeout may apply now
        self.facts = self.server.session_facts()
        self.conv = Conversation(self.ruleset, st, self.facts, self.server.session_limits,
                                 hostname=self.hostname,
                                 greeting=f"220 {self.hostname} {self.cfg.smtp_banner}", notify=self._notify,
                                 decide_late=True)
        greet_wait = self.listener.greet_wait
        if greet_wait is None:
            greet_wait = self.cfg.smtp_greet_wait
        if greet_wait > 0:
            if self.server.under_stress:
                greet_wait = min(greet_wait, self.cfg.smtp_stress_greet_wait)
            await self._pregreet_test(greet_wait)
        step = await self.conv.connect()
        if greet_wait > 0 and step.close:
            # The greeting began "220-": end it, and refuse at the first command.
            self.held_refusal, step = step, Step(f"220 {self.hostname} {self.cfg.smtp_banner}")
        self.greeted = not step.close
        await self._do(step)
        while self.transport is not None and not self.closing:
            try:
                line = await self.readline(LINE_LIMIT)
            except LineTooLong:
                await self._error(replies.SYNTAX_CMD_TOO_LONG)
                continue
            if self.buffer and not self.state.unauth_pipelining:
                self._check_pipelining(line)
            try:
                await self._command(line)
            except ConnectionError:
                return
            except Exception:
                log.exception("session %s: internal error", st.session_id)
                await self.push(replies.LOCAL_ERROR)

    async def _pregreet_test(self, wait: float) -> None:
        """Postfix postscreen's pregreet test: "220-" now, the final "220 "
        after ``wait``; a client that talks in between did not wait for its
        turn (bots do).  The connect hook's DNS lookups run meanwhile."""
        st, rs = self.state, self.ruleset
        self.facts.start(rs.fact_keys(rs.fact_starts, Stage.CONNECT, st))
        passes = self.server.greet_passes
        if passes is not None and await passes.passed(st.client_ip):
            st.pregreet_cached = True            # postscreen's "PASS OLD": no wait this time
            await self.push(f"220-{self.hostname} {self.cfg.smtp_banner}")
            return
        await self.push(f"220-{self.hostname} {self.cfg.smtp_banner}")
        started = self.loop.time()
        try:
            await asyncio.wait_for(self._input(), wait)
        except asyncio.TimeoutError:
            if passes is not None:
                await passes.remember(st.client_ip)    # "PASS NEW"
                st.pass_new = True
            return
        if self.buffer:
            st.pregreet = True
            st.pregreet_ms = int((self.loop.time() - started) * 1000)
            st.pregreet_text = _clean(bytes(self.buffer[:64]).decode("latin-1")).strip()

    async def _input(self) -> None:
        """Return once input is buffered (or the client is gone)."""
        while not self.buffer and await self.more():
            pass

    def _check_pipelining(self, line: bytes) -> None:
        """More input came with this command: allowed only after EHLO, and
        not behind a command that must end its group (RFC 2920 3.1, 3207)."""
        verb = line.split(b" ", 1)[0].strip().upper()
        if not self.state.esmtp or verb in _ENDS_GROUP:
            self.state.unauth_pipelining = True

    async def _proxied(self) -> bool:
        """Take the PROXY header a trusted load balancer sends first; the
        client it names becomes the session's client.  False (and a log
        line) for an untrusted peer or a header that is missing, malformed
        or slow: such a connection is closed without a word."""
        st = self.state
        balancer = st.client_ip
        if not any(ipaddress.ip_address(balancer) in net for net in self.listener.proxy_from):
            log.warning("listener %s: connection from %s refused: not a trusted proxy (proxy_from)",
                        self.listener.name, balancer)
            return False
        try:
            origin = await asyncio.wait_for(self._proxy_header(), PROXY_TIMEOUT)
        except (proxy.ProxyError, asyncio.TimeoutError, ConnectionError) as err:
            log.warning("listener %s: connection from proxy %s closed: %s", self.listener.name, balancer,
                        _short(err) if not isinstance(err, asyncio.TimeoutError) else "no PROXY header in time")
            return False
        if origin is not None:                   # None: the balancer's own check (v2 LOCAL, v1 UNKNOWN)
            st.client_ip, st.client_port = plain_ip(origin.ip), origin.port
        return True

    async def _proxy_header(self) -> proxy.Origin | None:
        while True:
            parsed = proxy.parse(bytes(self.buffer[:proxy.V2_MAX]))
            if parsed is not proxy.NEED_MORE:
                origin, length = parsed
                del self.buffer[:length]
                self.consumed()
                return origin
            if not await self.more():
                raise ConnectionResetError("closed before the end of its PROXY header")

    async def _do(self, step: Step) -> Step:
        """Carry out one step of the conversation: its reply, the 421 that
        may follow it, the close."""
        await self.push(step.reply)
        if step.after:
            await self.push(step.after)
        if step.close:
            self.close()
        return step

    async def _error(self, reply: str) -> None:
        await self._do(self.conv.error(reply))

    async def _command(self, raw: bytes) -> None:
        limit = COMMAND_LIMIT + (ESMTP_EXTRA if self.state.esmtp else 0)
        if len(raw) > limit:
            await self._error(replies.SYNTAX_CMD_TOO_LONG)
            return
        if b"\x00" in raw:
            await self._error(replies.SYNTAX_NUL)
            return
        try:
            line = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            await self._error(replies.SYNTAX_BAD_ENCODING)
            return
        if not raw.endswith(b"\r\n"):
            self.state.bare_newline = True
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        if self.held_refusal is not None and verb != "QUIT":
            await self._do(self.held_refusal)
            return
        handler = _COMMANDS.get(verb)
        if handler is None:
            if verb in _NOT_SMTP or (verb.endswith(":") and verb[:-1].replace("-", "").isalpha()):
                # A web or proxy client (Postfix: smtpd_forbidden_commands): never SMTP.
                self.state.non_smtp = True
                await self.push(replies.NOT_SMTP)
                self.close()
                return
            await self._do(self.conv.unrecognized_command())
            return
        if verb in _JUNK:
            over = self.conv.junk_command()
            if over is not None:
                await self._do(over)
                return
        self._reset_timeout()
        await handler(self, arg)

    def _notify(self, stage: Stage, kind: str, rule_id: str, text: str) -> None:
        """`log`/`warn` actions and monitor-mode refusals, as they happen."""
        level = logging.INFO if kind == "log" else logging.WARNING
        session_log.log(level, "session=%s %s rule=%s at=%s client=%s: %s", self.state.session_id, kind,
                        rule_id, stage.value, self.state.client_ip, text)

    # ---- commands: wire syntax here, the rest in the conversation -----------

    async def cmd_helo(self, arg: str, esmtp: bool = False) -> None:
        if not arg:
            await self._error(f"501 5.5.4 Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
            return
        extensions = ["PIPELINING", f"SIZE {self.cfg.max_message_size}", "8BITMIME", "SMTPUTF8",
                      "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and not self.state.tls:
            extensions.append("STARTTLS")
        if self._auth_offered():
            extensions.append("AUTH PLAIN LOGIN")
        await self._do(await self.conv.helo(arg, esmtp, tuple(extensions)))

    async def cmd_ehlo(self, arg: str) -> None:
        await self.cmd_helo(arg, esmtp=True)

    async def cmd_mail(self, arg: str) -> None:
        address, params, problem = "", {}, None
        if arg[:5].upper() != "FROM:":
            problem = "501 5.5.4 Syntax: MAIL FROM:<address>"
        else:
            address, params = self._address_and_params(arg[5:])
            problem = (replies.BAD_SENDER_SYNTAX if address is None
                       else "501 5.5.4 Syntax error in parameters" if params is None
                       else self._check_mail_params(params))
        await self._do(await self.conv.mail(address or "", params or {}, problem))

    def _check_mail_params(self, params: dict) -> str | None:
        size = params.get("SIZE")
        if size is not None:
            if not isinstance(size, str) or not (size.isascii() and size.isdigit()):
                return "501 5.5.4 Syntax: SIZE=<number>"
            if int(size) > self.cfg.max_message_size:
                return replies.SIZE_EXCEEDED
            if int(size) > self.cfg.message_memory - self.server.message_bytes:
                return replies.NO_MEMORY
        body = params.get("BODY")
        if body is not None and body not in ("7BIT", "8BITMIME"):
            return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
        if params.get("SMTPUTF8") not in (None, True):
            return "501 5.5.4 SMTPUTF8 takes no value"
        unknown = set(params) - {"SIZE", "BODY", "SMTPUTF8"}
        if unknown:
            return f"555 5.5.4 MAIL parameter {sorted(unknown)[0]} not supported"
        return None

    def _address_and_params(self, text: str) -> tuple[str | None, dict | None]:
        text = text.strip()
        if text.startswith("<>"):
            address, rest = "", text[2:]
        else:
            path = parse_path(text)
            if path is None:
                return None, {}
            address, rest = path
        params: dict = {}
        for item in (rest or "").split():
            key, eq, value = item.partition("=")
            if not key.isalnum() or (eq and not value):
                return address, None
            params[key.upper()] = (value.upper() if key.upper() == "BODY" else value) if eq else True
        return address, params

    async def cmd_rcpt(self, arg: str) -> None:
        address, params, problem = "", {}, None
        if arg[:3].upper() != "TO:":
            problem = "501 5.5.4 Syntax: RCPT TO:<address>"
        else:
            address, params = self._address_and_params(arg[3:])
            problem = (replies.BAD_RCPT_SYNTAX if not address
                       else f"555 5.5.4 RCPT parameter {sorted(params)[0]} not supported" if params
                       else "501 5.5.4 Syntax error in parameters" if params is None
                       else None)
        await self._do(await self.conv.rcpt(address or "", problem))

    async def cmd_data(self, arg: str) -> None:
        step = await self._do(self.conv.data("501 5.5.4 Syntax: DATA" if arg else None))
        if step.reply != replies.DATA_START:
            return
        self._reset_timeout(self.cfg.data_timeout)
        try:
            message, problem, dotted = await self._read_data()
        except BaseException:
            self._free_message()
            raise
        self._reset_timeout()
        if problem is not None:
            self._free_message()
            await self._do(self.conv.unreadable(problem))
            return
        # The client waits for us now (RFC 5321 4.5.3.2.6: up to 10 minutes):
        # a slow downstream or disk is not an idle client.
        self._reset_timeout(self.cfg.data_timeout)
        self.in_message = True
        try:
            step = await self._accept_message(message, dotted)
        finally:
            self.in_message = False
            del message
            self._free_message()
            if self.transport is not None:
                self._reset_timeout()
        await self._do(step)

    async def _accept_message(self, message: bytes, dotted: bool) -> Step:
        """``dotted``: a line of the data as sent started with a dot (if
        none did, none of ``message`` does: forward delivery need not look)."""
        st = self.state
        headers = parse_headers(message)
        wanted = self.cfg.recording_headers
        step = await self.conv.message(len(message), headers, {k: v for k, v in headers.items() if k in wanted},
                                       message)
        if not step.deliver:
            return step
        queue_id = f"{st.session_id}.{st.messages}"
        authserv_id = self.ruleset.options.get("authentication_results")
        if authserv_id:                          # ours are trusted downstream: a client's claiming our id goes
            message = strip_forged(message, str(authserv_id))
        trace = self._trace_headers(queue_id)
        data = trace + message
        dotted = dotted or linescan.has_dot_line(trace)       # a header name the rules added may start with a dot
        started = time.monotonic()
        result = await self.server.delivery.deliver(
            Message(st.sender or "", tuple(st.rcpts), data, _mail_options(st.mail_params), dotted))
        metrics.delivery(result.ok, time.monotonic() - started)
        if result.ok:
            return self.conv.delivered(replies.line(250, result.enhanced or "2.0.0", f"Ok: queued as {queue_id}"))
        log.warning("session %s: delivery failed: %s %s %s", st.session_id, result.code,
                    result.enhanced, result.text)
        return self.conv.delivered(replies.line(result.code, result.enhanced, result.text))

    def _trace_headers(self, queue_id: str) -> bytes:
        st = self.state
        proto = ("ESMTPS" if st.tls else "ESMTP") if st.esmtp else "SMTP"
        rdns = next((a.names[0] for lk, a in st.facts.items() if lk.provider == "dns" and lk.kind == "ptr" and a.names), "unknown")
        received = (f"Received: from {_clean(st.helo)} ({_clean(rdns)} [{st.client_ip}])\r\n"
                    f"\tby {self.hostname} (smtpfw) with {proto} id {queue_id}"
                    + (f"\r\n\tfor <{_clean(st.rcpts[0])}>" if len(st.rcpts) == 1 else "")
                    + f"; {_date_now()}\r\n")
        extra = "".join(f"{_clean(name)}: {_clean(value)}\r\n" for name, value in st.add_headers)
        if st.auth_results:                      # built from checked parts (smtpfw.checks.authresults), folded
            extra = f"Authentication-Results: {st.auth_results}\r\n" + extra
        return (extra + received).encode("utf-8", "replace")

    async def _read_data(self) -> tuple[bytes | None, str | None, bool]:
        """Read until CRLF.CRLF.  Returns (message, None, dotted) or (None,
        reply, dotted); ``dotted``: a line as sent started with a dot.

        Only CRLF "." CRLF ends the data.  Every other end-of-data look-alike
        (LF.LF, CR.CR, LF.CRLF, ...) stays inside the message, and any bare
        CR or LF rejects the whole message, so nothing a client sends after
        a fake terminator can become a second message or a command.
        Past the size limit the data is read and dropped, not kept.
        """
        limit = self.cfg.max_message_size
        buf = bytearray(b"\r\n")          # the DATA line's CRLF starts the first line
        total = 0
        too_big = no_room = False
        scan = 0
        while True:
            end = buf.find(b"\r\n.\r\n", scan)
            if end != -1:
                break
            keep = len(buf) - 4
            scan = max(keep, 0)
            if (too_big or no_room) and keep > 0:
                total += keep
                del buf[:keep]
                scan = 0
            chunk = await self._take_input()
            if not (too_big or no_room) and not self._hold_message(len(chunk)):
                no_room = True
            buf += chunk
            if not too_big and len(buf) - 2 > limit + 5:
                too_big = True
        leftover = buf[end + 5:]
        if leftover:
            self.buffer[0:0] = leftover        # pipelined commands after the data
        if too_big or total + end > limit:
            return None, replies.SIZE_EXCEEDED, False
        if no_room:
            log.warning("session %s: message refused, %d bytes of message memory in use (limits.message_memory)",
                        self.state.session_id, self.server.message_bytes)
            return None, replies.NO_MEMORY, False
        body = bytes(memoryview(buf)[2:end + 2])     # one copy (a bytearray slice is two)
        lines = linescan.scan(buf, 1, end + 2, TEXT_LINE_LIMIT)
        if lines.bare:
            return None, replies.BARE_LINEFEED, lines.dotted
        if b"\x00" in body:
            return None, replies.DATA_NUL, lines.dotted
        if lines.too_long:
            return None, replies.DATA_LINE_TOO_LONG, lines.dotted
        if lines.dotted:                                 # every LF is CRLF's by now
            body = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        return body, None, lines.dotted

    async def _take_input(self) -> bytes:
        """All input buffered now (waiting for some if there is none)."""
        while not self.buffer:
            if not await self.more():
                raise ConnectionResetError("client closed the connection during DATA")
        chunk = bytes(self.buffer)
        self.buffer.clear()
        self.consumed()
        return chunk

    def _hold_message(self, size: int) -> bool:
        """Reserve ``size`` more bytes of the worker's message memory."""
        if not self.server.reserve_message(size):
            return False
        self.held += size
        return True

    def _free_message(self) -> None:
        if self.held:
            self.server.free_message(self.held)
            self.held = 0

    async def cmd_rset(self, arg: str) -> None:
        await self.conv.settle()
        await self._do(self.conv.rset())

    async def cmd_noop(self, arg: str) -> None:
        await self.push("250 2.0.0 OK")

    async def cmd_quit(self, arg: str) -> None:
        await self.push("221 2.0.0 Bye")
        self.close()

    async def cmd_vrfy(self, arg: str) -> None:
        await self.push("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    async def cmd_help(self, arg: str) -> None:
        await self.push("214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
                        + (" STARTTLS" if self.tls_context else ""))

    async def cmd_starttls(self, arg: str) -> None:
        st = self.state
        if self.tls_context is None or st.tls:
            await self._error("502 5.5.1 STARTTLS not available")
            return
        if arg:
            await self._error("501 5.5.4 Syntax: STARTTLS")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        if await self._start_tls():
            await self.conv.settle()           # the hooks before it were about the HELO it forgets
            self.conv.tls_started()

    async def _start_tls(self) -> bool:
        """The TLS handshake, under its own timeout (tls.handshake_timeout).
        A handshake that fails or stalls ends the session: its connection
        slot is released by run() whatever happened on the wire."""
        self._stop_timeout()                   # the idle timer must not write into the handshake
        self.handshaking = True
        try:
            await self.start_tls(self.tls_context, self.cfg.tls_handshake_timeout or None)
        except Exception as err:  # noqa: BLE001 - ssl, timeout and connection errors alike
            log.info("session %s: TLS handshake with %s failed: %s", self.state.session_id,
                     self.state.client_ip, _short(err))
            self.closing = True
            self.abort()
            return False
        finally:
            self.handshaking = False
        self._reset_timeout()
        return True

    def _auth_offered(self) -> bool:
        return (self.server.users is not None and not self.state.auth
                and (self.state.tls or self.cfg.auth_allow_plaintext))

    async def cmd_auth(self, arg: str) -> None:
        """AUTH PLAIN/LOGIN (RFC 4954).  The password check runs off the
        event loop and costs the same for unknown and known users; failures
        are throttled per client network across connections."""
        users = self.server.users
        problem = replies.AUTH_UNAVAILABLE if users is None else self.conv.auth_problem()
        if problem:
            await self._error(problem)
            return
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() not in sasl.MECHANISMS:
            await self._error(replies.AUTH_UNKNOWN_MECHANISM)
            return
        throttle = self.server.auth_throttle
        if throttle.blocked(self.client_key):
            await self._error(replies.AUTH_THROTTLED)
            return
        exchange = sasl.Exchange(mechanism.upper(), initial.strip())
        while exchange.challenge is not None:
            await self.push(f"334 {exchange.challenge}")
            try:
                line = await self.readline(sasl.MAX_RESPONSE + 2)
            except LineTooLong:
                line = b"\0" * (sasl.MAX_RESPONSE + 1)      # refused by the exchange as too long
            exchange.respond(line.rstrip(b"\r\n"))
        if exchange.error:
            await self._error(exchange.error)
            return
        ok = await users.check_async(exchange.login, exchange.password)
        if ok is None:
            await self.push(replies.AUTH_BUSY)
        elif ok:
            await self._do(self.conv.authenticated(exchange.login.decode("utf-8", "replace")))
        else:
            throttle.failed(self.client_key)
            await self._error(replies.AUTH_FAILED)

    async def cmd_not_implemented(self, arg: str) -> None:
        await self._error("502 5.5.1 Command not implemented")


_COMMANDS = {
    "HELO": FirewallSMTP.cmd_helo,
    "EHLO": FirewallSMTP.cmd_ehlo,
    "MAIL": FirewallSMTP.cmd_mail,
    "RCPT": FirewallSMTP.cmd_rcpt,
    "DATA": FirewallSMTP.cmd_data,
    "RSET": FirewallSMTP.cmd_rset,
    "NOOP": FirewallSMTP.cmd_noop,
    "QUIT": FirewallSMTP.cmd_quit,
    "VRFY": FirewallSMTP.cmd_vrfy,
    "HELP": FirewallSMTP.cmd_help,
    "STARTTLS": FirewallSMTP.cmd_starttls,
    "EXPN": FirewallSMTP.cmd_not_implemented,
    "AUTH": FirewallSMTP.cmd_auth,
    "TURN": FirewallSMTP.cmd_not_implemented,
    "ETRN": FirewallSMTP.cmd_not_implemented,
    "BDAT": FirewallSMTP.cmd_not_implemented,
}


_date = [0, ""]


def _date_now() -> str:
    """email.utils.formatdate(localtime=True), computed once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, email.utils.formatdate(now, localtime=True)]
    return _date[1]


# Commands a pipelining client must still wait after (RFC 2920 3.1; STARTTLS
# and AUTH change what follows).
_ENDS_GROUP = frozenset({b"EHLO", b"HELO", b"DATA", b"VRFY", b"EXPN", b"TURN", b"NOOP", b"QUIT", b"STARTTLS",
                         b"AUTH"})
# What web browsers and proxies send (Postfix's smtpd_forbidden_commands).
_NOT_SMTP = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH"})

# Commands that cost us work but move no mail (Postfix smtpd_junk_command_limit);
# the conversation counts HELO/EHLO and RSET itself, as replay does.
_JUNK = frozenset({"NOOP", "VRFY", "HELP"})


def _mail_options(params: dict) -> tuple[str, ...]:
    out = []
    if params.get("BODY"):
        out.append(f"BODY={params['BODY']}")
    if params.get("SMTPUTF8"):
        out.append("SMTPUTF8")
    return tuple(out)


def _short(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _clean(text: str) -> str:
    text = str(text)
    if text.isprintable():
        return text[:200]
    return "".join(ch if ch.isprintable() else " " for ch in text)[:200]


def parse_headers(message: bytes, limit: int = 64 * 1024) -> dict[str, str]:
    """First value of each header field (lower-case names, unfolded)."""
    head_end = message.find(b"\r\n\r\n", 0, limit)
    head = message[:head_end if head_end != -1 else min(len(message), limit)]
    out: dict[str, str] = {}
    current = None          # the field being unfolded (first occurrence only)
    for raw in head.split(b"\r\n"):
        if raw[:1] in (b" ", b"\t"):
            if current is not None:
                out[current] += " " + raw.strip().decode("utf-8", "replace")
            continue
        current = None
        key, colon, value = raw.partition(b":")
        if not colon:
            continue
        name = key.strip().lower().decode("ascii", "replace")
        if name not in out:
            out[name] = value.strip().decode("utf-8", "replace")
            current = name
    return out
