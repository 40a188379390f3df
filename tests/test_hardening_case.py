"""Issue 12, item 5: one rule for case, applied by the type of the field.

Domains, addresses (local part included) and text compare case-insensitively
in every test: `=`, `!=`, `in` (inline and list files), `matches`, `like`,
the engine's equality index, and whatever runs the compiled rules (server,
`smtpfw test`).  Before the fix the rule's constant was lower-cased and the
value was not: `rcpt.local = "root"` let `ROOT@` through, and `rcpts in
LIST` kept the client's case (spam traps bypassed).
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from smtpfw.verdict import Stage
from tests.support.cli import run as smtpfw
from tests.support.server import maildir_messages, running_server
from tests.test_rules_lang import decide, ok, state


def refused(tmp_path: Path, cond: str, stage: Stage = Stage.RCPT, decls: str = "", **kw) -> bool:
    rs = ok(tmp_path, f"{decls}\non {stage.value}:\n    reject if {cond}\n")
    st = state(**{k: v for k, v in kw.items() if k not in ("auth_user", "listener")})
    st.auth_user = kw.get("auth_user", "")
    st.listener_name = kw.get("listener", "mx")
    return decide(rs, stage, st).outcome.refuses


@pytest.mark.parametrize("cond,kw,expected", [
    # text fields: the value's case no longer matters
    ('rcpt.local = "root"', {"rcpt": "ROOT@example.net"}, True),
    ('rcpt.local != "root"', {"rcpt": "Root@example.net"}, False),
    ('sender.local = "MAILER-DAEMON"', {"sender": "MAILER-DAEMON@example.org"}, True),
    ('sender.local = "mailer-daemon"', {"sender": "Mailer-Daemon@example.org"}, True),
    ('auth.user = "alice"', {"auth_user": "Alice"}, True),
    ('auth.user in ["ALICE"]', {"auth_user": "alice"}, True),
    ('listener.name = "MX"', {"listener": "mx"}, True),
    ('rcpt.local in ["postmaster", "root"]', {"rcpt": "RoOt@example.net"}, True),
    ('rcpt.local matches "^root$"', {"rcpt": "ROOT@example.net"}, True),
    ('rcpt.local like "ro?t"', {"rcpt": "ROOT@example.net"}, True),
    ('header.subject = "hello"', {"headers": {"subject": "HELLO"}}, True),
    ('header.subject = "HELLO"', {"headers": {"subject": "hello"}}, True),
    ('header.subject in ["Hello"]', {"headers": {"subject": "hELLO"}}, True),
    ('sender.resolvable = "YES"', {}, False),           # a fixed word: its constant folds like any text
    # the recipients of the message: address type, so case-insensitive like `rcpt`
    ('rcpts in ["trap@example.net"]', {"rcpts": ["TRAP@Example.NET"]}, True),
    ('rcpts = "trap@example.net"', {"rcpts": ["Trap@example.net"]}, True),
    ('rcpts != "trap@example.net"', {"rcpts": ["Trap@example.net"]}, False),
    ('rcpts in ["@traps.example"]', {"rcpts": ["x@TRAPS.example"]}, True),
    # unchanged: domains and addresses were already case-insensitive
    ('rcpt = "b@example.net"', {"rcpt": "B@EXAMPLE.NET"}, True),
    ('rcpt.domain = "EXAMPLE.net."', {"rcpt": "b@example.NET"}, True),
])
def test_every_text_test_ignores_case(tmp_path, cond, kw, expected):
    stage = Stage.DATA if "header." in cond else Stage.RCPT
    assert refused(tmp_path, cond, stage, **kw) is expected


def test_sender_resolvable_constant_in_capitals_compiles(tmp_path):
    """`sender.resolvable = "YES"` was an E202 (choices compared raw); it now
    means "yes", as for every text constant."""
    rs = ok(tmp_path, 'on mail:\n    reject if sender.resolvable = "NO"\n')
    assert rs is not None


def test_rcpts_in_a_list_file_ignores_case(tmp_path):
    (tmp_path / "traps").write_text("spamtrap@example.net\n@honeypot.example\n")
    decls = 'list traps = file "traps"'
    assert refused(tmp_path, "rcpts in traps", Stage.DATA, decls, rcpts=["SpamTrap@Example.Net"])
    assert refused(tmp_path, "rcpts in traps", Stage.DATA, decls, rcpts=["a@HONEYPOT.example"])
    assert not refused(tmp_path, "rcpts in traps", Stage.DATA, decls, rcpts=["other@example.net"])


def test_equality_index_folds_the_value(tmp_path):
    """A run of `field = value` rules is one dict lookup in the engine: it
    must look up the folded value, or the index itself is the bypass."""
    rules = "".join(f'    [{n}] reject 550 5.7.1 "{n}" if rcpt.local = "{n}"\n'
                    for n in ("abuse", "root", "webmaster", "noc"))
    rs = ok(tmp_path, "on rcpt:\n" + rules)
    assert rs._groups[Stage.RCPT], "the rules should form an equality group"
    d = decide(rs, Stage.RCPT, state(rcpt="ROOT@example.net"))
    assert (d.outcome.refuses, d.rule_id) == (True, "root")
    d = decide(rs, Stage.RCPT, state(rcpt="WebMaster@example.net"))
    assert d.rule_id == "webmaster"


RULES = """
list traps = ["spamtrap@localhost"]
on rcpt:
    [no-root] reject 550 5.7.1 "no mail for root" if rcpt.local = "root"
    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
on data:
    [trap] reject 550 5.7.1 "spam trap" if rcpts in traps
"""


def test_server_refuses_whatever_the_client_case(tmp_path):
    with running_server(rules_text=RULES, maildir=tmp_path / "md") as srv, \
            smtplib.SMTP(*srv.address, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("alice@example.org")
        assert client.rcpt("ROOT@localhost") == (550, b"5.7.1 no mail for root")
        assert client.rcpt("root@LOCALHOST") == (550, b"5.7.1 no mail for root")
        assert client.rcpt("SpamTrap@LocalHost")[0] == 250
        assert client.rcpt("bob@localhost")[0] == 250
        code, text = client.data(b"Subject: x\r\n\r\nhi\r\n")
        assert (code, text) == (550, b"5.7.1 spam trap")
    assert maildir_messages(tmp_path / "md") == []


def test_smtpfw_test_agrees(tmp_path):
    """`smtpfw test` runs the same compiled rules, so it sees the same case rule."""
    (tmp_path / "site.rules").write_text(RULES)
    (tmp_path / "site.tests").write_text(
        "ehlo c.example from a@example.org rcpt ROOT@localhost -> reject at rcpt by no-root\n"
        "ehlo c.example from a@example.org rcpt bob@localhost rcpt SPAMTRAP@localhost -> reject at data by trap\n"
        "ehlo c.example from a@example.org rcpt bob@localhost -> accept\n")
    run = smtpfw("test", tmp_path / "site.rules")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 tests, 3 passed" in run.stdout
