"""The rule language: every construct parses, compiles and means what
docs/rules.md says; every mistake gets the exact message we promise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.lint_output import format_text
from smtpfw.facts import RecordedFacts
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome, Stage


def compile_text(tmp_path: Path, text: str, name: str = "t.rules"):
    path = tmp_path / name
    path.write_text(text)
    return compile_ruleset(path)


def ok(tmp_path, text):
    ruleset, diags = compile_text(tmp_path, text)
    assert ruleset is not None, format_text(diags)
    return ruleset


def state(ip="192.0.2.1", helo="mx.example.org", sender="a@example.org", rcpt="b@example.net",
          size=0, headers=None, rcpts=(), port=25):
    st = SessionState(client_ip=ip, listener_port=port, listener_name="mx")
    st.set_helo(helo, True)
    if sender is not None:
        st.set_sender(sender)
    st.set_rcpt(rcpt)
    st.rcpts = list(rcpts)
    st.message_size = size
    st.headers = headers or {}
    return st


def decide(ruleset, stage, st, dns=None):
    policy = Policy(ruleset, st, RecordedFacts(dns or {}))
    return asyncio.run(policy.run(stage))


def outcome(tmp_path, cond, stage=Stage.RCPT, dns=None, decls="", **kw):
    rs = ok(tmp_path, f'{decls}\non {stage.value}:\n    reject if {cond}\n')
    return decide(rs, stage, state(**kw), dns).outcome is Outcome.REJECT


# ---- conditions --------------------------------------------------------------

@pytest.mark.parametrize("cond,kw,expected", [
    ('helo = "MX.Example.ORG"', {}, True),                       # domains compare case-insensitively
    ('sender = "A@EXAMPLE.org"', {}, True),
    ('sender != "a@example.org"', {}, False),
    ('sender.domain = "example.org."', {}, True),                # trailing dot ignored
    ('rcpt.domain in ["example.net", "example.com"]', {}, True),
    ('rcpt.domain not in ["example.com"]', {}, True),
    ('rcpt.domain within "net"', {}, True),                      # domain or subdomain
    ('rcpt.domain within ["example.net"]', {}, True),
    ('rcpt.domain within "ample.net"', {}, False),               # label boundary
    ('helo like "mx.*.org"', {}, True),
    ('helo like "*.com"', {}, False),
    ('helo matches "^mx\\\\.[a-z]+\\\\.org$"', {}, True),
    ('helo not matches "^mail"', {}, True),
    ('client.ip in 192.0.2.0/24', {}, True),
    ('client.ip in ["10.0.0.0/8"]', {}, False),
    ('client.ip in ["2001:db8::/32"]', {"ip": "2001:db8::5"}, True),
    ('client.ip = "2001:DB8::5"', {"ip": "2001:db8::5"}, True),
    ('client.ip in ["10.0.0.0/8"]', {"ip": "::ffff:10.1.2.3"}, True),    # v4-mapped
    ('message.size > 1M', {"size": 2_000_000}, True),
    ('message.size <= 1K', {"size": 1024}, True),
    ('listener.port = 587', {"port": 587}, True),
    ('rcpt.count >= 2', {"rcpts": ["x@y", "z@y"]}, True),
    ('rcpts in ["x@y"]', {"rcpts": ["x@y", "z@y"]}, True),
    ('header.subject matches "viagra"', {"headers": {"subject": "Buy VIAGRA"}}, True),
    ('header.x-missing = ""', {}, True),
    ('sender.null', {"sender": ""}, True),
    ('not sender.null and (helo = "a" or helo = "mx.example.org")', {}, True),
    ('sender.null or not (rcpt.local = "b")', {}, False),
])
def test_condition(tmp_path, cond, kw, expected):
    stage = Stage.DATA if cond.startswith(("message", "header")) else Stage.RCPT
    assert outcome(tmp_path, cond, stage, **kw) is expected


def test_list_files_qpsmtpd_style(tmp_path):
    (tmp_path / "senders").write_text("# comment\njoe@evil.example\n@spammer.example   # whole domain\n\n")
    (tmp_path / "domains").write_text("example.net\n.sub.example\n")
    (tmp_path / "nets").write_text("10.0.0.0/8\n2001:db8::/32\n192.0.2.7\n")
    decls = 'list s = file "senders"\nlist d = file "domains"\nlist n = file "nets"\n'
    assert outcome(tmp_path, "sender in s", decls=decls, sender="Joe@Evil.example")
    assert outcome(tmp_path, "sender in s", decls=decls, sender="x@spammer.example")
    assert not outcome(tmp_path, "sender in s", decls=decls, sender="x@a.spammer.example")
    assert outcome(tmp_path, "rcpt.domain in d", decls=decls, rcpt="u@example.net")
    assert not outcome(tmp_path, "rcpt.domain in d", decls=decls, rcpt="u@x.example.net")
    assert outcome(tmp_path, "rcpt.domain in d", decls=decls, rcpt="u@a.b.sub.example")
    assert not outcome(tmp_path, "rcpt.domain in d", decls=decls, rcpt="u@sub.example")
    assert outcome(tmp_path, "client.ip in n", decls=decls, ip="10.9.9.9")
    assert outcome(tmp_path, "client.ip in n", decls=decls, ip="192.0.2.7")
    assert not outcome(tmp_path, "client.ip in n", decls=decls, ip="192.0.2.8")


def _listing(code="127.0.0.2", txt="listed"):
    return DnsAnswer("listed", (code,), txt)


@pytest.mark.parametrize("filter_,code,expected", [
    ("", "127.0.0.4", True),
    ("codes [127.0.0.2]", "127.0.0.4", False),
    ("codes [127.0.0.2-127.0.0.11]", "127.0.0.4", True),
    ("codes [mask 4]", "127.0.0.4", True),
    ("codes [mask 2]", "127.0.0.4", False),
])
def test_dnsbl_code_filters(tmp_path, filter_, code, expected):
    decls = f'zone bl = dnsbl "bl.test" {filter_}'
    dns = {Lookup(LookupKind.DNSBL, "192.0.2.1", "bl.test"): _listing(code)}
    assert outcome(tmp_path, "client.ip listed in bl", Stage.CONNECT, dns, decls) is expected


def test_dns_failure_is_not_listed_unless_tested(tmp_path):
    failed = {Lookup(LookupKind.DNSBL, "192.0.2.1", "bl.test"): DnsAnswer("failed", error="timeout")}
    decls = 'zone bl = dnsbl "bl.test"'
    assert not outcome(tmp_path, "client.ip listed in bl", Stage.CONNECT, failed, decls)
    assert outcome(tmp_path, "client.ip not listed in bl", Stage.CONNECT, failed, decls)
    assert outcome(tmp_path, "client.ip lookup failed in bl", Stage.CONNECT, failed, decls)
    assert not outcome(tmp_path, "client.ip lookup failed in bl", Stage.CONNECT,
                       {Lookup(LookupKind.DNSBL, "192.0.2.1", "bl.test"): DnsAnswer("clear")}, decls)


def test_inline_rhsbl_and_txt_placeholder(tmp_path):
    rs = ok(tmp_path, 'on mail:\n    reject "listed: {rhsbl.txt} ({rhsbl.zone} {rhsbl.code})" '
                      'if sender.domain listed in rhsbl "dbl.test"\n')
    dns = {Lookup(LookupKind.RHSBL, "example.org", "dbl.test"): _listing("127.0.0.2", "Domain is listed")}
    d = decide(rs, Stage.MAIL, state(), dns)
    assert d.text == "listed: Domain is listed (dbl.test 127.0.0.2)"


# ---- actions and semantics -------------------------------------------------

def test_first_terminal_action_wins_and_accept_ends_hook(tmp_path):
    rs = ok(tmp_path, 'on rcpt:\n    accept if rcpt.domain = "example.net"\n    [r] reject\n')
    assert decide(rs, Stage.RCPT, state()).outcome is Outcome.ACCEPT
    assert decide(rs, Stage.RCPT, state(rcpt="x@other.example")).rule_id == "r"


def test_no_terminal_action_continues(tmp_path):
    rs = ok(tmp_path, 'on rcpt:\n    tag seen\n    log "rcpt {rcpt}"\n')
    st = state()
    assert decide(rs, Stage.RCPT, st).outcome is Outcome.CONTINUE
    assert "seen" in st.tags and st.log_lines == [("log", "t.rules:3", "rcpt b@example.net")]


def test_tags_set_earlier_are_seen_later(tmp_path):
    rs = ok(tmp_path, 'on helo:\n    tag dyn if helo like "*.dyn.example"\n'
                      'on rcpt:\n    [t] reject "dynamic" if tagged dyn\n')
    st = state(helo="h1.dyn.example")
    policy = Policy(rs, st, RecordedFacts({}))
    asyncio.run(policy.run(Stage.HELO))
    assert asyncio.run(policy.run(Stage.RCPT)).rule_id == "t"


def test_monitor_rule_logs_and_lets_mail_through(tmp_path):
    rs = ok(tmp_path, 'on rcpt:\n    [m] monitor reject "would reject" if rcpt.domain = "example.net"\n')
    st = state()
    assert decide(rs, Stage.RCPT, st).outcome is Outcome.CONTINUE
    assert st.monitored[0][0] == "m" and st.monitored[0][1].text == "would reject"


def test_monitor_mode_for_whole_ruleset(tmp_path):
    rs = ok(tmp_path, 'option mode = "monitor"\non rcpt:\n    reject\n')
    st = state()
    assert decide(rs, Stage.RCPT, st).outcome is Outcome.CONTINUE and st.monitored


def test_delay_reject_holds_refusal_until_rcpt(tmp_path):
    rs = ok(tmp_path, 'option delay_reject = yes\non helo:\n    [h] reject "bad helo"\n')
    st = state()
    policy = Policy(rs, st, RecordedFacts({}))
    assert asyncio.run(policy.run(Stage.HELO)).outcome is Outcome.CONTINUE
    assert asyncio.run(policy.run(Stage.MAIL)).outcome is Outcome.CONTINUE
    d = asyncio.run(policy.run(Stage.RCPT))
    assert (d.outcome, d.rule_id, d.text) == (Outcome.REJECT, "h", "bad helo")


def test_reply_rule_id_option_and_placeholders(tmp_path):
    rs = ok(tmp_path, 'option reply_rule_id = yes\non rcpt:\n'
                      '    [relay] reject 554 5.7.1 "no relay for {rcpt} from [{client.ip}] {{literal}}"\n')
    d = decide(rs, Stage.RCPT, state())
    assert (d.code, d.enhanced) == (554, "5.7.1")
    assert d.text == "no relay for b@example.net from [192.0.2.1] {literal} (relay)"


def test_placeholder_values_cannot_break_the_reply(tmp_path):
    rs = ok(tmp_path, 'on helo:\n    reject "bad {helo}"\n')
    d = decide(rs, Stage.HELO, state(helo="x\r\n250 fake"))
    assert "\r" not in d.text and "\n" not in d.text


def test_includes_and_derived_rule_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inc.rules").write_text('list l = file "l.txt"\non rcpt:\n    reject if rcpt in l\n')
    (tmp_path / "sub" / "l.txt").write_text("b@example.net\n")
    rs = ok(tmp_path, 'include "sub/inc.rules"\n')
    assert decide(rs, Stage.RCPT, state()).rule_id == "inc.rules:3"


def test_version_changes_with_list_content(tmp_path):
    (tmp_path / "l.txt").write_text("a@b.example\n")
    text = 'list l = file "l.txt"\non rcpt:\n    reject if rcpt in l\n'
    v1 = ok(tmp_path, text).version
    (tmp_path / "l.txt").write_text("c@d.example\n")
    assert ok(tmp_path, text).version != v1


def test_add_header_at_data(tmp_path):
    rs = ok(tmp_path, 'on data:\n    add_header "X-Checked" "by {rule} for {client.ip}"\n')
    st = state()
    decide(rs, Stage.DATA, st)
    assert st.add_headers == [("X-Checked", "by t.rules:2 for 192.0.2.1")]


def test_lists_scale_without_per_lookup_cost(tmp_path):
    (tmp_path / "big").write_text("".join(f"user{i}@example.org\n" for i in range(200_000)))
    rs = ok(tmp_path, 'list big = file "big"\non mail:\n    reject if sender in big\n')
    assert decide(rs, Stage.MAIL, state(sender="user199999@example.org")).outcome is Outcome.REJECT
    assert decide(rs, Stage.MAIL, state(sender="nobody@example.org")).outcome is Outcome.CONTINUE


# ---- error messages: the exact text an operator sees ------------------------

ERRORS = [
    ('on rcpt:\n    rejct "x" if helo = "a"\n',
     "t.rules:2:5: error[E002] unexpected `rejct`; expected a new statement: `on <hook>:`, `class <name>:`, "
     "a declaration (`list`, `map`, `limit`, `counter`, `zone`, `plugin`, `option`, `include`) or a rule starting "
     "with an action (`accept`, `reject`, `tempfail`, `disconnect`, `tag`, `log`, `warn`, `add_header`, `run`, "
     "`score`, `use`, `apply`, `count`, `tarpit`, `stutter`)\n"
     "  |\n2 |     rejct \"x\" if helo = \"a\"\n  |     ^^^^^\n  = help: did you mean `reject`?\n"),
    ('on rcpt:\n    reject if sender.domian = "x"\n',
     "t.rules:2:15: error[E102] unknown field `sender.domian`\n"
     "  |\n2 |     reject if sender.domian = \"x\"\n  |               ^^^^^^^^^^^^^\n"
     "  = help: did you mean `sender.domain`?\n"),
    ('on recpt:\n    reject\n',
     "t.rules:1:4: error[E101] unknown hook `recpt`\n"
     "  |\n1 | on recpt:\n  |    ^^^^^\n"
     "  = help: did you mean `rcpt`? hooks are: connect, helo, mail, rcpt, data, queue\n"),
    ('list local = ["example.net"]\non rcpt:\n    reject if rcpt.domain not in locl\n',
     "t.rules:3:34: error[E103] unknown list `locl`\n"
     "  |\n3 |     reject if rcpt.domain not in locl\n  |                                  ^^^^\n"
     "  = help: did you mean `local`?\n"),
    ('on connect:\n    reject if rcpt = "x@y"\n',
     "t.rules:2:15: error[E201] `rcpt` is not known yet in `on connect:`\n"
     "  |\n2 |     reject if rcpt = \"x@y\"\n  |               ^^^^\n"
     "  = help: `rcpt` is known from `on rcpt:` on; move the rule there\n"),
    ('on rcpt:\n    reject 451 "x"\n',
     "t.rules:2:12: error[E501] `reject 451`: 451 does not fit `reject`\n"
     "  |\n2 |     reject 451 \"x\"\n  |            ^^^^^^^\n"
     "  = help: use a 5xx code such as 550 or 554, or write `tempfail` if 451 is what you mean\n"),
    ('on rcpt:\n    reject "x" if helo in ["a", \n',
     "t.rules:2:32: error[E002] the file ends in the middle of a statement; expected one of "
     "`]`, a \"quoted text\", a number, an IPv4 address or network, yes or no\n"
     "  |\n2 |     reject \"x\" if helo in [\"a\", \n  |                                ^\n"),
    ('on rcpt:\n    reject "x\n',
     "t.rules:2:12: error[E002] this text has no closing quote\n"
     "  |\n2 |     reject \"x\n  |            ^\n  = help: close it with \" on the same line\n"),
    ('on mail:\n    reject "x" if sender matches "(unclosed"\n',
     "t.rules:2:34: error[E401] invalid regular expression: missing ), unterminated subpattern at position 1\n"
     "  |\n2 |     reject \"x\" if sender matches \"(unclosed\"\n  |                                  ^^^^^^^^^^^\n"
     "  = help: regular expressions use Python syntax; write \\. for a literal dot\n"),
    ('on rcpt:\n    reject "for {recipient}"\n',
     "t.rules:2:12: error[E503] unknown placeholder {recipient}\n"
     "  |\n2 |     reject \"for {recipient}\"\n  |            ^^^^^^^^^^^^^^^^^\n"
     "  = help: did you mean {rcpt}?\n"),
    ('on data:\n    reject if message.size > "big"\n',
     "t.rules:2:30: error[E202] `>` compares numbers, but \"big\" is not a number\n"
     "  |\n2 |     reject if message.size > \"big\"\n  |                              ^^^^^\n"
     "  = help: write a number, optionally with K, M or G: `message.size > 10M`\n"),
]


@pytest.mark.parametrize("text,expected", ERRORS, ids=[e[0].split("\n")[1].strip()[:30] for e in ERRORS])
def test_error_messages(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    Path("t.rules").write_text(text)
    ruleset, diags = compile_ruleset("t.rules")
    assert ruleset is None
    assert format_text(diags) == expected


@pytest.mark.parametrize("text", [
    "", "\x00\x01binary", "(" * 5000, "on rcpt:\n reject if " + "(" * 300 + "a" + ")" * 300,
    "on rcpt:\n" + "  reject if helo = \"a\"\n" * 5000, "\ufeffon rcpt:\n reject\n", "on rcpt: on rcpt: on",
])
def test_never_a_traceback(tmp_path, text):
    ruleset, diags = compile_text(tmp_path, text)
    assert ruleset is not None or diags


def test_include_cycle(tmp_path):
    (tmp_path / "a.rules").write_text('include "b.rules"\n')
    (tmp_path / "b.rules").write_text('include "a.rules"\n')
    ruleset, diags = compile_ruleset(tmp_path / "a.rules")
    assert ruleset is None and diags[0].code == "E003" and "includes itself" in diags[0].message


def test_every_field_is_documented():
    from smtpfw.lang.fields import FIELDS
    from tests.support.server import REPO

    doc = (REPO / "docs" / "rules.md").read_text()
    missing = [name for name in FIELDS if f"`{name}`" not in doc]
    assert missing == []


def test_log_warn_and_monitor_reach_the_server_log(caplog):
    import logging
    import smtplib

    from tests.support.server import running_server

    rules = ('on helo:\n    log "hello from {helo}"\n    warn "odd helo" if helo like "*.odd"\n'
             'on rcpt:\n    [m] monitor reject "would block {rcpt}"\n    accept\n')
    with caplog.at_level(logging.INFO, logger="smtpfw.session"):
        with running_server(rules_text=rules) as srv:
            with smtplib.SMTP(*srv.address, timeout=10) as s:
                s.ehlo("x.odd")
                s.mail("a@b.example")
                assert s.rcpt("u@localhost")[0] == 250
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "hello from x.odd" in text and "odd helo" in text
    assert "monitor rule=m at=rcpt" in text and "would reject: would block u@localhost" in text
    assert "would=m:reject" in text
