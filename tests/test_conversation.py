"""The conversation core: a table of conversations and the replies each
step gets, run without sockets; then the same table against the real
server with recording on, and each recording replayed: live, core and
replay must agree reply by reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from smtpfw.core.conversation import Conversation, Limits
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import read_records
from smtpfw.replay.session import replay_record, same_as_recorded
from smtpfw.session import SessionState
from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.server import running_server

RULES = """
on helo:
    [bad-helo] reject 550 5.7.1 "bad HELO" if helo = "bad.example"
on mail:
    [bad-sender] reject 550 5.7.1 "bad sender" if sender.domain = "spam.example"
on rcpt:
    [bye] disconnect 421 4.7.0 "go away" if rcpt = "bye@localhost"
    [grey] tempfail 451 4.7.1 "try later" if rcpt = "grey@localhost"
    accept if rcpt.domain in localnames
    [relay] reject 554 5.7.1 "Relaying denied"
on data:
    [spam] reject 550 5.7.1 "spam" if header.subject = "buy now"
"""
LIMITS = Limits(max_errors=3, max_junk_commands=6, max_transactions=3, max_unrecognized_commands=3,
                max_recipients=2)
BODY = "Subject: {}\r\n\r\nhello\r\n"

# Each conversation: (command, argument) steps and the reply each gets,
# by its code and enhanced code.
CONVERSATIONS = {
    "accepted": [(("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                 (("RCPT", "u@localhost"), "250 2.1.5"), (("DATA", "hi"), "250")],
    "sequence": [(("MAIL", "a@b.example"), "503 5.5.1"), (("EHLO", "c.example"), "250"),
                 (("RCPT", "u@localhost"), "503 5.5.1"), (("DATA", None), "503 5.5.1"),
                 (("QUIT", ""), "221")],
    "bad helo, then a good one": [(("HELO", "bad.example"), "550 5.7.1"), (("MAIL", "a@b.example"), "503 5.5.1"),
                                  (("HELO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                                  (("QUIT", ""), "221")],
    "refused sender": [(("EHLO", "c.example"), "250"), (("MAIL", "x@spam.example"), "550 5.7.1"),
                       (("RCPT", "u@localhost"), "503 5.5.1"), (("QUIT", ""), "221")],
    "relay and tempfail, no valid recipient": [
        (("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
        (("RCPT", "u@far.example"), "554 5.7.1"), (("RCPT", "grey@localhost"), "451 4.7.1"),
        (("DATA", None), "554 5.5.1"), (("QUIT", ""), "221")],
    "disconnect": [(("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                   (("RCPT", "bye@localhost"), "421 4.7.0")],
    "content refused": [(("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                        (("RCPT", "u@localhost"), "250 2.1.5"), (("DATA", "buy now"), "550 5.7.1"),
                        (("QUIT", ""), "221")],
    "too many recipients": [(("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                            (("RCPT", "u@localhost"), "250 2.1.5"), (("RCPT", "v@localhost"), "250 2.1.5"),
                            (("RCPT", "w@localhost"), "452 4.5.3"), (("QUIT", ""), "221")],
    "too many errors": [(("EHLO", "c.example"), "250"), (("MAIL", "a@b.example"), "250 2.1.0"),
                        (("RCPT", "a@far.example"), "554 5.7.1"), (("RCPT", "b@far.example"), "554 5.7.1"),
                        (("RCPT", "c@far.example"), "554 5.7.1"), (("RCPT", "d@far.example"), "554 5.7.1+421 4.7.0")],
    "too many transactions": [(("EHLO", "c.example"), "250")]
    + [step for _ in range(3) for step in ((("MAIL", "a@b.example"), "250 2.1.0"), (("RSET", ""), "250 2.0.0"))]
    + [(("MAIL", "a@b.example"), "421 4.7.0")],
    "too many junk commands": [(("EHLO", "c.example"), "250")] + [(("RSET", ""), "250 2.0.0")] * 5
    + [(("HELO", "c.example"), "421 4.7.0")],
    "unrecognized commands": [(("EHLO", "c.example"), "250"), (("FOO", ""), "500 5.5.2"), (("BAR", ""), "500 5.5.2"),
                              (("BAZ", ""), "421 4.7.0")],
}


async def _core_replies(ruleset, steps) -> list[str]:
    st = SessionState()
    st.client_ip, st.session_id = "127.0.0.1", "t"
    conv = Conversation(ruleset, st, None, LIMITS, hostname="mx.test")
    out = [(await conv.connect()).reply]
    for (cmd, arg), _ in steps:
        if cmd in ("HELO", "EHLO"):
            step = await conv.helo(arg, cmd == "EHLO")
        elif cmd == "MAIL":
            step = await conv.mail(arg, {})
        elif cmd == "RCPT":
            step = await conv.rcpt(arg)
        elif cmd == "DATA":
            step = conv.data()
            if arg is not None and step.reply.startswith("354"):
                body = BODY.format(arg).encode()
                headers = {"subject": arg}
                step = await conv.message(len(body), headers, headers, body)
                if step.deliver:
                    step = conv.delivered("250 2.0.0 Ok: queued")
        elif cmd == "RSET":
            step = conv.rset()
        elif cmd == "QUIT":
            out.append("221")
            break
        else:
            step = conv.unrecognized_command()
        out.append(_shown(step.reply, step.after))
        if step.close:
            break
    return out


def _shown(reply: str, after: str = "") -> str:
    return reply + (f"+{after}" if after else "")


def _matches(got: str, expected: str) -> bool:
    return all(g.startswith(e) for g, e in zip(got.split("+"), expected.split("+"))) \
        and got.count("+") == expected.count("+")


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "conv.rules"
    path.write_text(RULES)
    rs, diags = compile_ruleset(str(path))
    assert rs is not None, diags
    return rs


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_core_replies_without_sockets(ruleset, name):
    steps = CONVERSATIONS[name]
    got = asyncio.run(_core_replies(ruleset, steps))
    assert got[0].startswith("220 mx.test")
    expected = [e for _, e in steps][:len(got) - 1]
    assert len(got) - 1 == len(expected) and all(map(_matches, got[1:], expected)), (got, expected)


def _wire(c: RawClient, cmd: str, arg) -> str:
    if cmd == "MAIL":
        return c.cmd(f"MAIL FROM:<{arg}>")
    if cmd == "RCPT":
        return c.cmd(f"RCPT TO:<{arg}>")
    if cmd == "DATA":
        reply = c.cmd("DATA")
        if arg is None or not reply.startswith("354"):
            return reply
        c.send(BODY.format(arg).encode() + b".\r\n")
        return c.reply()
    return c.cmd(f"{cmd} {arg}".strip())


def test_live_core_and_replay_agree(ruleset, tmp_path):
    rec = tmp_path / "rec"
    live: dict[str, list[str]] = {}
    with running_server(rules_text=RULES, recording_enabled=True, recording_path=str(rec),
                        max_errors=LIMITS.max_errors, max_junk_commands=LIMITS.max_junk_commands,
                        max_transactions=LIMITS.max_transactions,
                        max_unrecognized_commands=LIMITS.max_unrecognized_commands,
                        max_recipients=LIMITS.max_recipients) as srv:
        for name, steps in CONVERSATIONS.items():
            with RawClient(srv.address) as c:
                replies = [c.reply()]
                for (cmd, arg), expected in steps:
                    reply = _wire(c, cmd, arg)
                    if "+" in expected:
                        reply += "+" + c.line()
                    replies.append(reply)
                live[name] = replies
        wait_until(lambda: sum(len(f.read_text().splitlines()) for f in Path(rec).glob("*.jsonl"))
                   == len(CONVERSATIONS), 5, "every session recorded")
    records = [r for f in sorted(Path(rec).glob("*.jsonl")) for r in read_records(str(f))]
    for name, steps in CONVERSATIONS.items():
        core = asyncio.run(_core_replies(ruleset, steps))
        got = live[name]
        assert [r.split(" ", 1)[0] for r in got[1:]] == [r.split(" ", 1)[0] for r in core[1:]], (name, got, core)
        assert all(map(_matches, got[1:], [e for _, e in steps])), (name, got)
    # Every recording replays to the decisions and replies it recorded.
    for record in records:
        result = replay_record(ruleset, record, max_recipients=LIMITS.max_recipients)
        assert same_as_recorded(record, result), record["id"]
        for event, replayed in zip(record["events"], result.events):
            if event["cmd"] in ("mail", "rcpt"):
                assert replayed.reply == event["reply"], (event, replayed)
            elif "reply" in event:           # HELO names the host, DATA the queue id: the code
                assert replayed.reply[:3] == event["reply"][:3], (event, replayed)
