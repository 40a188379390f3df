"""Fuzzing the live server's SMTP parsing with hypothesis (issue 9).

Properties, each against the real server on loopback:

* any command line (random bytes, non-UTF-8, NUL, bare CR, up to 1,200
  octets; verbs in any case) in any session state is answered with exactly
  one well-formed reply (3 digits, then space or dash; multi-line replies
  end with a space line), or a 221/421 and a clean close; the session stays
  in step (a NOOP after it answers 250); nothing is logged as an internal
  error and no 451 "local problem" is given;
* MAIL FROM / RCPT TO built from address pieces open-relay testers and
  parsers choke on (quotes, escapes, comments, routes, literals, non-ASCII,
  controls) and random ESMTP parameters (SIZE with non-ASCII digits, huge
  numbers, empty values...) get a well-formed 2xx/4xx/5xx, never an
  internal error;
* message data with random bare CR, bare LF, NUL, dots and long lines is
  refused with exactly the documented reply (554 5.6.11 / 554 5.6.0 /
  552 5.3.4), or accepted and stored byte for byte, dot-unstuffed;
* mutated shipped rulesets that still compile evaluate real-looking
  sessions without raising (the checker itself is fuzzed by
  tests/test_lint_fuzz.py).

200 examples each by default (derandomized); SMTPFW_SOAK=1 runs 5,000 with
a random seed.  Crashes found become the regression tests at the bottom.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Stage
from tests.smtp_client import RawClient
from tests.support.server import REPO, maildir_messages, running_server

SOAK = os.environ.get("SMTPFW_SOAK") == "1"
FUZZ = settings(max_examples=5000 if SOAK else 200, deadline=None, derandomize=not SOAK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9]([ -])")
INTERNAL = "451 4.3.0 Temporary local problem"
MAX_SIZE = 50_000


class ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def srv():
    handler = ErrorLog()
    logging.getLogger("smtpfw").addHandler(handler)
    try:
        with running_server(max_message_size=MAX_SIZE, max_errors=1000, max_unrecognized_commands=1000,
                            idle_timeout=10) as s:
            s.errors = handler
            yield s
    finally:
        logging.getLogger("smtpfw").removeHandler(handler)


class Session:
    """A raw session that checks the shape of every reply it reads."""

    def __init__(self, srv):
        self.c = RawClient(srv.address, timeout=10)
        self.closed = False
        assert self.reply().startswith("220 ")

    def reply(self) -> str:
        lines = []
        while True:
            line = self._line()
            m = REPLY_LINE.match(line)
            assert m, f"malformed reply line {line!r} after {lines!r}"
            if lines:
                assert line[:3] == lines[0][:3], f"multi-line reply changes code: {lines + [line]!r}"
            lines.append(line)
            if m.group(1) == b" ":
                break
        text = lines[-1].decode("utf-8")
        assert not text.startswith(INTERNAL), f"internal error: {text}"
        if text[:3] in ("221", "421"):
            self.closed = True
        return text

    def _line(self) -> bytes:
        c = self.c
        while b"\r\n" not in c.buf:
            chunk = c.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed without a reply; pending {c.buf!r}")
            c.buf += chunk
        line, _, c.buf = c.buf.partition(b"\r\n")
        return line

    def cmd(self, raw: bytes) -> str:
        self.c.send(raw + b"\r\n")
        return self.reply()

    def in_step(self) -> None:
        """The session answers NOOP, or has closed cleanly after 221/421."""
        if self.closed:
            self.c.sock.settimeout(5)
            assert self.c.sock.recv(1) == b"", "421/221 but the connection stays open"
            return
        assert self.cmd(b"NOOP").startswith("250 ")

    def close(self):
        self.c.close()


def no_internal_errors(srv):
    bad = [r.getMessage() for r in srv.errors.records]
    srv.errors.records.clear()
    assert not bad, bad


def to_state(s: Session, state: str) -> None:
    if state == "fresh":
        return
    assert s.cmd(b"EHLO fuzz.example").startswith("250")
    if state in ("mail", "rcpt"):
        assert s.cmd(b"MAIL FROM:<fuzz@client.example>").startswith("250")
    if state == "rcpt":
        assert s.cmd(b"RCPT TO:<u@localhost>").startswith("250")


VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "HELP", "EXPN", "AUTH",
         "STARTTLS", "BDAT", "TURN", "ETRN", "QUIT", "XCLIENT", "MAIL FROM:", "RCPT TO:", "mail from:<"]
NASTY = st.sampled_from([b"\x00", b"\r", b"\x80", b"\xff\xfe", b"\xc3\x28", b"\xe2\x80\xa8", b"<", b">",
                         b'"', b"\\", b":", b"@", b"=", b" ", b"\t", b"%", b"!", b"[", b"]", b"(", b")",
                         "\u00e9".encode(), "\u00b2".encode(), "\u0663".encode(), b"SIZE=", b"BODY="])
ARG = st.lists(st.one_of(NASTY, st.binary(max_size=8), st.text(max_size=8).map(str.encode)),
               max_size=40).map(b"".join)
LINE = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(VERBS), st.sampled_from(["", " ", "  ", "\t"]), ARG).map(
        lambda t: t[0].encode() + t[1].encode() + t[2]),
    st.tuples(st.sampled_from(VERBS), st.integers(400, 1200)).map(lambda t: t[0].encode() + b" " + b"x" * t[1]),
).map(lambda b: b.replace(b"\n", b""))


@FUZZ
@given(state=st.sampled_from(["fresh", "helo", "mail", "rcpt"]), line=LINE,
       case=st.sampled_from([str.upper, str.lower, str.title]))
def test_any_command_line_gets_one_wellformed_reply(srv, state, line, case):
    verb, sp, rest = line.partition(b" ")
    try:
        line = case(verb.decode("ascii")).encode() + sp + rest
    except UnicodeDecodeError:
        pass
    s = Session(srv)
    try:
        to_state(s, state)
        reply = s.cmd(line)
        if reply.startswith("354"):                # it was a DATA
            s.c.send(b"fuzz\r\n.\r\n")
            assert s.reply()[:1] in ("2", "4", "5")
        s.in_step()
    finally:
        s.close()
    no_internal_errors(srv)


LOCAL = st.one_of(
    st.from_regex(r"[A-Za-z0-9._%+!#$&'*/=?^`{|}~-]{0,30}", fullmatch=True),
    st.text(alphabet=st.sampled_from(list('abc."\\()<>[]:;@, %!\t\u00e9\u00b2\x7f')), max_size=30),
    st.text(max_size=20).map(lambda t: '"' + t + '"'),
)
DOMAIN = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}\.?", fullmatch=True),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    st.text(alphabet=st.sampled_from(list("ab.-[]:()@\u00e9\u00b2 ")), max_size=20),
    st.just(""),
)
ADDRESS = st.tuples(LOCAL, st.sampled_from(["@", "", "@@", "%"]), DOMAIN).map("".join)
WRAPPED = st.one_of(
    ADDRESS.map(lambda a: f"<{a}>"), ADDRESS, ADDRESS.map(lambda a: f"<{a}"), ADDRESS.map(lambda a: f"{a}>"),
    ADDRESS.map(lambda a: f"<<{a}>>"), st.tuples(DOMAIN, ADDRESS).map(lambda t: f"<@{t[0]}:{t[1]}>"),
    st.just("<>"), st.just(""),
)
PARAM_KEY = st.sampled_from(["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "NOTIFY", "ORCPT", "AUTH",
                             "size", "Body", "X-FOO", "", "=", "SIZE\u00b2", "\u00e9"])
PARAM_VALUE = st.one_of(
    st.sampled_from(["", "7BIT", "8BITMIME", "BINARYMIME", "0", "-1", "1e3", "\u00b2", "\u0663\u0663",
                     "9" * 300, "12345", "=", " ", "NEVER"]),
    st.text(max_size=10),
)
PARAMS = st.lists(st.tuples(PARAM_KEY, st.sampled_from(["=", ""]), PARAM_VALUE).map(
    lambda t: t[0] + t[1] + (t[2] if t[1] else "")), max_size=4).map(" ".join)


@FUZZ
@given(mail=WRAPPED, mail_params=PARAMS, rcpt=WRAPPED, rcpt_params=PARAMS,
       sep=st.sampled_from([":", ": ", " :", ":  "]))
def test_mail_and_rcpt_parsing(srv, mail, mail_params, rcpt, rcpt_params, sep):
    s = Session(srv)
    try:
        assert s.cmd(b"EHLO fuzz.example").startswith("250")
        def line(text: str) -> bytes:             # one command line: no LF inside
            return text.rstrip().replace("\n", "").encode("utf-8", "surrogatepass")
        reply = s.cmd(line(f"MAIL FROM{sep}{mail} {mail_params}"))
        if reply.startswith("250"):
            reply = s.cmd(line(f"RCPT TO{sep}{rcpt} {rcpt_params}"))
            assert reply[:1] in ("2", "4", "5"), reply
        else:
            assert reply[:3] in ("501", "503", "552", "553", "555", "500"), reply
        s.in_step()
    finally:
        s.close()
    no_internal_errors(srv)


TOKENS = st.sampled_from([b"a", b"text ", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b".", b"..", b"\x00",
                          b"\xff", b"\t", b"Subject: x\r\n", b"x" * 999, b"\r\n.", b".\r\n", b"\r\n\r\n"])


def unstuff(wire: bytes) -> bytes:
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in wire.split(b"\r\n"))


@FUZZ
@given(parts=st.lists(TOKENS, max_size=60))
def test_data_content_is_refused_exactly_or_stored_exactly(srv, parts):
    wire = b"".join(parts)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    assume(b"\r\n.\r\n" not in b"\r\n" + wire)         # no real end of data inside
    lines = wire[:-2].split(b"\r\n")
    if b"\n" in wire.replace(b"\r\n", b"") or b"\r" in wire.replace(b"\r\n", b""):
        want = "554 5.6.11"
    elif b"\x00" in wire:
        want = "554 5.6.0"
    elif any(len(l) > 998 for l in lines):
        want = "552 5.3.4"
    else:
        want = "250 2.0.0"
    tag = os.urandom(6).hex().encode()
    wire = b"X-Tag: " + tag + b"\r\n" + wire
    s = Session(srv)
    try:
        to_state(s, "rcpt")
        assert s.cmd(b"DATA").startswith("354")
        s.c.send(wire + b".\r\n")
        assert s.reply().startswith(want)
        s.in_step()
    finally:
        s.close()
    stored = [m for m in maildir_messages(srv.server.config.maildir) if tag in m]
    if want.startswith("250"):
        assert len(stored) == 1 and stored[0].endswith(unstuff(wire))
    else:
        assert stored == []
    no_internal_errors(srv)


# ---- the rule compiler: mutated rulesets that compile must run ------------

SEEDS = sorted(p for p in (REPO / "rules").rglob("*.rules"))
SEED_TEXTS = [p.read_text() for p in SEEDS]
VOCAB = ["on rcpt:", "on data:", "on connect:", "on mail:", "accept", "reject", "tempfail", "disconnect",
         "if", "not", "and", "or", "in", "within", "matches", "like", "listed in", "=", "!=", ">", "<=",
         '"', '""', "localnames", "rcpt.domain", "sender", "helo", "client.ip", "message.size", "10M",
         "header.subject", "tag x", "tagged x", "(", ")", "[", "]", "127.0.0.0/8", "\n", "    ", "monitor",
         '"[%!@"', '"(a+)+$"', "option reply_rule_id = yes", "option delay_reject = yes",
         'add_header "X-A" "{rcpt}"', '"{sender.domain}"', "550", "5.7.1", "421", "4.7.1", "rcpt.count",
         "session.unrecognized", "client.rdns", "esmtp", "tls"]
_counter = itertools.count()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rulefuzz")
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "config", root / "config", dirs_exist_ok=True)
    return root


@st.composite
def mutated(draw):
    i = draw(st.integers(0, len(SEEDS) - 1))
    text = SEED_TEXTS[i]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "swap_lines"]))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(VOCAB)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif op == "duplicate":
            end = at + draw(st.integers(1, 80))
            text = text[:end] + text[at:end] + text[end:]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return SEEDS[i].relative_to(REPO / "rules"), text


SESSIONS = [
    ("127.0.0.1", "mx.good.example", "alice@good.example", ["bob@example.net", "u@localhost"]),
    ("192.0.2.99", "[192.0.2.99]", "", ["x%y@localhost", "postmaster@example.net"]),
    ("::1", "BAD.HELO.example", "joe@evil.example", ["TRAP@EXAMPLE.NET"]),
]
MESSAGE = b"Subject: fuzz\r\nFrom: a@b.example\r\n\r\nbody\r\n"


async def run_session(rs, ip, helo, sender, rcpts):
    st_ = SessionState(client_ip=ip, session_id="fuzz")
    policy = Policy(rs, st_, None)
    await policy.run(Stage.CONNECT)
    st_.set_helo(helo, True)
    await policy.run(Stage.HELO, subject=helo)
    st_.set_sender(sender, {})
    await policy.run(Stage.MAIL, subject=sender)
    for r in rcpts:
        st_.set_rcpt(r)
        d = await policy.run(Stage.RCPT, subject=r)
        if not d.outcome.refuses:
            st_.rcpts.append(r)
    st_.message_size = len(MESSAGE)
    st_.headers = {"subject": "fuzz", "from": "a@b.example"}
    await policy.run(Stage.DATA, MESSAGE)
    await policy.run(Stage.QUEUE, MESSAGE)
    await policy.run(Stage.DISCONNECT)


@FUZZ
@given(case=mutated())
def test_mutated_rulesets_that_compile_also_run(tree, case):
    rel, text = case
    path = tree / "rules" / rel.parent / f"mut{next(_counter) % 8}.rules"
    path.write_text(text)
    ruleset, diags = compile_ruleset(path)
    assert isinstance(diags, list)
    if ruleset is None:
        assert diags, "refused without a diagnostic"
        return
    for session in SESSIONS:
        asyncio.run(run_session(ruleset, *session))


# ---- regressions -----------------------------------------------------------

@pytest.mark.parametrize("arg", ['"', "<", '!1@[\u00e9@', '<"', '"a"@', "(", "<@:>"])
@pytest.mark.parametrize("verb", ["MAIL FROM:", "RCPT TO:"])
def test_malformed_addresses_get_a_syntax_error_not_an_internal_error(srv, verb, arg):
    """Regression: aiosmtpd's address parser (the email package's header
    parser) raises IndexError/AttributeError on these; the session answered
    451 4.3.0 "local problem" and logged an internal error."""
    s = Session(srv)
    try:
        to_state(s, "mail" if verb.startswith("RCPT") else "helo")
        reply = s.cmd(f"{verb}{arg}".encode())
        assert reply.startswith("501 5.1."), reply
        s.in_step()
    finally:
        s.close()
    no_internal_errors(srv)


@pytest.mark.parametrize("size", ["\u00b2", "\u0663", "\u00bd", "\uff11"])
def test_size_with_non_ascii_digits_is_a_syntax_error(srv, size):
    """Regression: "SIZE=\u00b2" passed str.isdigit() and crashed int()."""
    s = Session(srv)
    try:
        to_state(s, "helo")
        assert s.cmd(f"MAIL FROM:<a@b.example> SIZE={size}".encode()) == "501 5.5.4 Syntax: SIZE=<number>"
        s.in_step()
    finally:
        s.close()
    no_internal_errors(srv)


def test_eof_inside_an_overlong_line_ends_the_session_quietly(srv):
    """The session reads what a client sent before its EOF; an EOF in the
    middle of an over-long command line ends it without an internal error."""
    sock = socket.create_connection(srv.address, timeout=5)
    try:
        assert sock.recv(4096).startswith(b"220")
        sock.sendall(b"NOOP " + b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert got in (b"", b"500 5.5.2 Line too long\r\n")
    finally:
        sock.close()
    no_internal_errors(srv)


def test_unset_plugin_int_field_compares_as_zero():
    """Regression, found by the rule fuzzer (soak): plugin field getters
    read the compile loop's variable late, so an unset int field defaulted
    to "" and `spamscore.points >= 5` raised TypeError.  A plugin run only for
    some messages (`run ... if ...`) leaves its fields unset for the
    others: every such message was tempfailed, forever."""
    rules = """
plugin spamscore = "smtpfw.plugins_builtin:HeaderScore"
on data:
    run spamscore if header.subject = "scored"
    [spam] reject 550 5.7.1 "spam" if spamscore.points >= 5
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""
    with running_server(rules_text=rules) as srv:
        s = Session(srv)
        try:
            to_state(s, "rcpt")
            assert s.cmd(b"DATA").startswith("354")
            s.c.send(b"Subject: not scored\r\n\r\nbody\r\n.\r\n")
            assert s.reply().startswith("250 2.0.0")
        finally:
            s.close()
