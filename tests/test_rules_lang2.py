"""Rule language II: relations between fields, values with fields in them,
scores, postscreen code patterns, DNS on the HELO and recipient domain,
time, restriction classes, maps (values, membership, `apply`), and refusals
held until DATA.  Each construct as docs/rules.md describes it, through the
real compiler and Policy (no server: the end-to-end tests are in
test_rules_lang2_e2e.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.core.conversation import Conversation
from smtpfw.facts import RecordedFacts
from smtpfw.lint_output import format_text
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome, Stage
from tests.test_rules_lang import compile_text, ok


def errors(tmp_path, text) -> str:
    ruleset, diags = compile_text(tmp_path, text)
    assert ruleset is None
    return format_text(diags)


def state(ip="192.0.2.1", helo="mx.example.org", sender="a@example.org", rcpt="b@example.net",
          auth_user="", started=0.0):
    st = SessionState(client_ip=ip, listener_port=25, started=started)
    st.set_helo(helo, True)
    if sender is not None:
        st.set_sender(sender)
    st.set_rcpt(rcpt)
    if auth_user:
        st.auth, st.auth_user = True, auth_user
    return st


def run(ruleset, stages, st, dns=None):
    """Decide ``stages`` in order on one session; the last decision."""
    policy = Policy(ruleset, st, RecordedFacts(dns or {}))
    decision = None
    for stage in stages:
        decision = asyncio.run(policy.run(stage))
        if decision.outcome.terminal:
            return decision
    return decision


def rejects(tmp_path, cond, stage=Stage.RCPT, decls="", dns=None, **kw) -> bool:
    rs = ok(tmp_path, f'{decls}\non {stage.value}:\n    reject if {cond}\n')
    return run(rs, [stage], state(**kw), dns).outcome is Outcome.REJECT


# ---- relations between fields -------------------------------------------------

@pytest.mark.parametrize("cond,kw,expected", [
    ("sender.domain = helo", {"helo": "Example.ORG.", "sender": "a@example.org"}, True),
    ("sender.domain = helo", {"helo": "mx.example.org"}, False),
    ("rcpt.domain != sender.domain", {"rcpt": "b@EXAMPLE.org"}, False),
    ("rcpt.domain != sender.domain", {}, True),
    ("helo.literal = client.ip", {"helo": "[192.0.2.1]"}, True),
    ("helo.literal = client.ip", {"helo": "[192.0.2.9]"}, False),
    ("rcpt.count < rcpt.rejected", {}, False),
    ("rcpt.count <= rcpt.rejected", {}, True),
])
def test_a_field_compared_with_another(tmp_path, cond, kw, expected):
    assert rejects(tmp_path, cond, **kw) is expected


@pytest.mark.parametrize("cond,kw,expected", [
    ('helo = "[{client.ip}]"', {"helo": "[192.0.2.1]"}, True),
    ('helo = "[{client.ip}]"', {"helo": "[192.0.2.2]"}, False),
    ('helo != "[{client.ip}]"', {"helo": "[192.0.2.2]"}, True),
    ('sender = "postmaster@{rcpt.domain}"', {"sender": "PostMaster@Example.NET"}, True),
    ('helo = "{{literal}}"', {"helo": "{literal}"}, True),          # {{ }} stay braces
])
def test_a_value_with_fields_in_it(tmp_path, cond, kw, expected):
    """Issue: `helo != "[{client.ip}]"` was taken literally and matched every literal HELO."""
    assert rejects(tmp_path, cond, **kw) is expected


@pytest.mark.parametrize("cond,message", [
    ("rcpts = sender", "`rcpts` (list of addresses) cannot be compared with `sender`"),
    ("message.size > helo", "`>` compares two numbers (or two times or dates), not `message.size` and `helo`"),
    ('rcpt.count = "{helo}"', "holds a {placeholder}: compare it with = or != to a text field"),
    ('helo = "{sender.domian}"', "unknown placeholder {sender.domian}"),
    ("helo = sender", "`sender` is not known yet in `on helo:`"),
])
def test_relations_that_make_no_sense_are_errors(tmp_path, cond, message):
    stage = "helo" if "on helo" in message or cond == "helo = sender" else "data"
    assert message in errors(tmp_path, f"on {stage}:\n    reject if {cond}\n")


# ---- scores -------------------------------------------------------------------

POSTSCREEN = """
zone zen   = dnsbl "zen.test" codes [127.0.0.2-127.0.0.11]
zone bb    = dnsbl "bb.test" codes [127.0.0.2]
zone dnswl = dnsbl "wl.test" codes [127.0.[0..255].[0..255]]
on connect:
    [zen]    score dnsbl +3 if client.ip listed in zen
    [bb]     score dnsbl +2 if client.ip listed in bb
    [dnswl]  score dnsbl -5 if client.ip listed in dnswl
    [allow]  accept if score.dnsbl <= -1
    [block]  reject 550 5.7.1 "blocked (score {score.dnsbl})" if score.dnsbl >= 3
"""


def listed(ip, zone, code="127.0.0.2"):
    return {Lookup(LookupKind.DNSBL, ip, zone): DnsAnswer("listed", (code,))}


@pytest.mark.parametrize("dns,outcome,total", [
    ({}, Outcome.CONTINUE, 0),
    (listed("192.0.2.1", "bb.test"), Outcome.CONTINUE, 2),                        # 2 < 3
    (listed("192.0.2.1", "zen.test"), Outcome.REJECT, 3),
    ({**listed("192.0.2.1", "zen.test"), **listed("192.0.2.1", "bb.test")}, Outcome.REJECT, 5),
    ({**listed("192.0.2.1", "zen.test"), **listed("192.0.2.1", "wl.test", "127.0.9.3")}, Outcome.ACCEPT, -2),
    # a dnswl answer outside 127.0.[0..255].[0..255] is no listing
    ({**listed("192.0.2.1", "zen.test"), **listed("192.0.2.1", "wl.test", "127.255.255.254")}, Outcome.REJECT, 3),
])
def test_postscreen_weighted_dnsbl(tmp_path, dns, outcome, total):
    rs = ok(tmp_path, POSTSCREEN)
    st = state()
    decision = run(rs, [Stage.CONNECT], st, dns)
    assert decision.outcome is outcome
    assert st.scores.get("dnsbl", 0) == total
    if outcome is Outcome.REJECT:
        assert decision.text == f"blocked (score {total})" and decision.rule_id == "block"


def test_scores_add_up_across_hooks_and_keep_their_breakdown(tmp_path):
    rs = ok(tmp_path, """
on helo:
    [nofqdn] score spam +4 if not helo.fqdn
on mail:
    [freemail] score spam +2 if sender.domain = "free.test"
    [known] score spam -1 if sender.domain = "free.test"
    [spam] reject 550 5.7.1 "score {score.spam}" if score.spam >= 5
""")
    st = state(helo="localhost", sender="x@free.test")
    decision = run(rs, [Stage.HELO, Stage.MAIL], st)
    assert (decision.outcome, decision.text) == (Outcome.REJECT, "score 5")
    assert [hit[:3] for hit in st.score_hits] == [("spam", 4, "nofqdn"), ("spam", 2, "freemail"), ("spam", -1, "known")]
    from smtpfw.recording import scores_json
    assert scores_json(st) == {"spam": {"total": 5, "by": [["nofqdn", 4], ["freemail", 2], ["known", -1]]}}


def test_an_unreachable_threshold_is_warned_of(tmp_path):
    _, diags = compile_text(tmp_path, """
on connect:
    score bl +2 if client.ip in 10.0.0.0/8
    score bl +2 if client.ip in 192.0.2.0/24
    reject if score.bl >= 5
    reject if score.typo >= 1
""")
    text = format_text(diags)
    assert "W605" in text and "`score.bl >= 5` can never hold: the rules make score `bl` at most 4" in text
    assert "no rule adds to score `typo`: it is always 0" in text


# ---- DNS on the HELO and the recipient domain ----------------------------------

@pytest.mark.parametrize("helo,literal,valid,fqdn", [
    ("mx.example.org", "", True, True),
    ("[192.0.2.1]", "192.0.2.1", True, False),
    ("[IPv6:2001:DB8::1]", "2001:db8::1", True, False),
    ("localhost", "", True, False),
    ("1.2.3.4", "", True, False),                  # digits and dots: not a name
    ("bad_name!", "", False, False),
    ("[999.1.1.1]", "", False, False),
])
def test_helo_syntax_fields(helo, literal, valid, fqdn):
    from smtpfw.lang.fields import FIELDS
    st = state(helo=helo)
    assert FIELDS["helo.literal"].get(st) == literal
    assert FIELDS["helo.valid"].get(st) is valid
    assert FIELDS["helo.fqdn"].get(st) is fqdn


@pytest.mark.parametrize("helo,answer,resolvable,matches", [
    ("mx.example.org", DnsAnswer("found", ("192.0.2.1",)), None, True),
    ("mx.example.org", DnsAnswer("found", ("192.0.2.7", "2001:db8::1")), None, False),
    ("mx.example.org", DnsAnswer("none"), None, False),
    ("[192.0.2.1]", None, None, True),
])
def test_helo_forward_dns_against_the_client(tmp_path, helo, answer, resolvable, matches):
    rs = ok(tmp_path, 'on helo:\n    reject 550 "HELO {helo} is not {client.ip}" if not helo.matches_client\n')
    dns = {Lookup(LookupKind.ADDRESSES, helo): answer} if answer is not None else {}
    d = run(rs, [Stage.HELO], state(helo=helo), dns)
    assert (d.outcome is Outcome.REJECT) is (not matches)


@pytest.mark.parametrize("field,key,status", [
    ("helo.resolvable", Lookup(LookupKind.RESOLVABLE, "mx.example.org"), "no"),
    ("rcpt.resolvable", Lookup(LookupKind.RESOLVABLE, "example.net"), "no"),
    ("rcpt.resolvable", Lookup(LookupKind.RESOLVABLE, "example.net"), "failed"),
])
def test_unknown_helo_and_recipient_domains(tmp_path, field, key, status):
    stage = Stage.HELO if field.startswith("helo") else Stage.RCPT
    rs = ok(tmp_path, f'on {stage.value}:\n    reject if {field} = "{status}"\n')
    assert run(rs, [stage], state(), {key: DnsAnswer(status)}).outcome is Outcome.REJECT
    assert run(rs, [stage], state(), {key: DnsAnswer("yes")}).outcome is Outcome.CONTINUE


def test_the_helo_lookups_are_asked_for_and_a_literal_is_not_looked_up(tmp_path):
    rs = ok(tmp_path, 'on helo:\n    reject if helo.resolvable = "no" or not helo.matches_client\n')
    keys = rs.fact_keys(rs.fact_needs, Stage.HELO, state())
    assert set(keys) == {Lookup(LookupKind.RESOLVABLE, "mx.example.org"),
                         Lookup(LookupKind.ADDRESSES, "mx.example.org")}
    assert rs.fact_keys(rs.fact_needs, Stage.HELO, state(helo="[192.0.2.1]")) == []


def test_dnsbl_on_the_helo_literal(tmp_path):
    decls = 'zone zen = dnsbl "zen.test"'
    assert rejects(tmp_path, "helo.literal listed in zen", Stage.HELO, decls,
                   listed("192.0.2.99", "zen.test"), helo="[192.0.2.99]")
    assert not rejects(tmp_path, "helo.literal listed in zen", Stage.HELO, decls, {}, helo="mx.example.org")


# ---- postscreen code patterns ----------------------------------------------------

@pytest.mark.parametrize("codes,code,expected", [
    ("127.0.*.*", "127.0.5.9", True),
    ("127.0.*.*", "127.1.0.2", False),
    ("127.0.0.[2..11]", "127.0.0.11", True),
    ("127.0.0.[2..11]", "127.0.0.12", False),
    ("127.0.[1..2].[4..5]", "127.0.2.5", True),
    ("127.0.[1..2].[4..5]", "127.0.2.6", False),
    ("127.0.[1..2].[4..5]", "127.0.3.4", False),
])
def test_code_patterns(tmp_path, codes, code, expected):
    decls = f'zone z = dnsbl "z.test" codes [{codes}]'
    assert rejects(tmp_path, "client.ip listed in z", Stage.CONNECT, decls,
                   listed("192.0.2.1", "z.test", code)) is expected


# ---- time ----------------------------------------------------------------------

def at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("cond,when,expected", [
    ('time.weekday = "mon"', "2026-11-30T10:00:00+00:00", True),
    ('time.weekday in ["sat", "sun"]', "2026-11-30T10:00:00+00:00", False),
    ('time.clock >= "08:00" and time.clock < "18:00"', "2026-11-30T17:59:00+00:00", True),
    ('time.clock >= "08:00" and time.clock < "18:00"', "2026-11-30T18:00:00+00:00", False),
    ("time.hour = 10", "2026-11-30T10:30:00+00:00", True),
    ('time.date = "2026-12-24"', "2026-12-24T00:00:01+00:00", True),
    ('time.date > "2026-12-24"', "2026-12-24T23:59:59+00:00", False),
])
def test_time_in_utc(tmp_path, cond, when, expected):
    assert rejects(tmp_path, cond, Stage.CONNECT, started=at(when)) is expected


def test_time_in_the_rulesets_zone(tmp_path):
    # 23:30 UTC on Sunday is 00:30 on Monday in Berlin (UTC+1 in winter)
    decls = 'option timezone = "Europe/Berlin"'
    when = at("2026-11-29T23:30:00+00:00")
    assert rejects(tmp_path, 'time.weekday = "mon" and time.hour = 0', Stage.CONNECT, decls, started=when)


@pytest.mark.parametrize("text,message", [
    ('option timezone = "Mars/Olympus"\non connect:\n    reject if time.hour = 1\n',
     "option `timezone` takes a time zone name"),
    ('on connect:\n    reject if time.clock > "8am"\n', '`time.clock` is compared with "HH:MM"'),
    ('on connect:\n    reject if time.date < "24.12.2026"\n', '`time.date` is compared with "YYYY-MM-DD"'),
    ('on connect:\n    reject if time.weekday = "monday"\n', "did you mean \"mon\"?"),
])
def test_time_mistakes(tmp_path, text, message):
    assert message in errors(tmp_path, text)


# ---- restriction classes ----------------------------------------------------------

CLASSES = """
class restrictive:
    [strict-rdns] tempfail 450 4.7.1 "no rDNS" if client.ip in 192.0.2.0/24
    [strict-ok]   accept if sender.domain = "partner.test"
class permissive:
    [lenient] reject 554 5.7.1 "blocked" if client.ip in 192.0.2.66
on rcpt:
    [strict] use restrictive if rcpt.domain = "strict.test"
    [lenient-use] use permissive
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in ["strict.test", "open.test"]
"""


@pytest.mark.parametrize("kw,outcome,rule", [
    ({"rcpt": "a@strict.test"}, Outcome.TEMPFAIL, "strict-rdns"),
    ({"rcpt": "a@strict.test", "ip": "198.51.100.1"}, Outcome.CONTINUE, None),
    ({"rcpt": "a@open.test"}, Outcome.CONTINUE, None),                 # permissive lets 192.0.2.1 in
    ({"rcpt": "a@open.test", "ip": "192.0.2.66"}, Outcome.REJECT, "lenient"),
    ({"rcpt": "a@strict.test", "sender": "x@partner.test", "ip": "198.51.100.1"}, Outcome.ACCEPT, "strict-ok"),
    ({"rcpt": "a@elsewhere.test", "ip": "198.51.100.1"}, Outcome.REJECT, "relay"),
])
def test_classes_run_where_they_are_used(tmp_path, kw, outcome, rule):
    d = run(ok(tmp_path, CLASSES), [Stage.RCPT], state(**kw))
    assert d.outcome is outcome
    if rule:
        assert d.rule_id == rule


def test_class_rule_ids_are_rules_of_the_ruleset(tmp_path):
    rs = ok(tmp_path, CLASSES)
    assert {"strict-rdns", "strict-ok", "lenient"} <= {r.rule_id for r in rs.rules}


@pytest.mark.parametrize("text,message", [
    ("on rcpt:\n    use strcit\nclass strict:\n    reject if tls\n", "unknown class `strcit`"),
    ("class a:\n    use b\nclass b:\n    use a\non rcpt:\n    use a\n", "uses itself (through a -> b -> a)"),
    ("class a:\n    reject if sender = \"x@y\"\non connect:\n    use a\n", "`sender` is not known yet in `on connect:`"),
    ("plugin p = \"smtpfw.plugins_builtin:HeaderScore\"\nclass a:\n    run p\non data:\n    use a\n",
     "`run` cannot be used in a class"),
    ("class a:\n    [x] reject if tls\non rcpt:\n    [x] reject if tls\n    use a\n", "rule id `x` is used twice"),
])
def test_class_mistakes(tmp_path, text, message):
    assert message in errors(tmp_path, text)


# ---- refusals held until DATA ---------------------------------------------------------

def test_delay_reject_data_holds_refusals_until_the_data_command(tmp_path):
    rs = ok(tmp_path, """
option delay_reject = "data"
on helo:
    [bad-helo] reject 550 5.7.1 "bad HELO" if helo = "bad.test"
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain != "local.test"
""")
    st = SessionState(client_ip="192.0.2.1")
    conv = Conversation(rs, st, RecordedFacts({}))

    async def talk():
        await conv.connect()
        helo = await conv.helo("bad.test", True)
        mail = await conv.mail("a@b.test", {})
        good = await conv.rcpt("x@local.test")
        bad = await conv.rcpt("x@other.test")
        return helo, mail, good, bad, conv.data()
    helo, mail, good, bad, data = asyncio.run(talk())
    assert helo.reply.startswith("250") and mail.reply.startswith("250")
    assert good.reply.startswith("250")
    assert bad.reply == "554 5.7.1 Relaying denied"             # recipients are still judged one by one
    assert data.reply == "550 5.7.1 bad HELO" and data.decision.rule_id == "bad-helo"
    assert "held from helo until DATA" in data.note


def test_delay_reject_takes_yes_no_rcpt_or_data(tmp_path):
    assert ok(tmp_path, 'option delay_reject = "rcpt"\n').delay_until is Stage.RCPT
    assert ok(tmp_path, "option delay_reject = yes\n").delay_until is Stage.RCPT
    assert ok(tmp_path, "option delay_reject = no\n").delay_until is None
    assert 'option `delay_reject` takes yes, no, "rcpt" or "data"' in errors(tmp_path, 'option delay_reject = "queue"\n')


# ---- maps -------------------------------------------------------------------------------

ACCESS = """\
# a Postfix access map with every kind of key
spammer@example.com     REJECT Go away
bulk.example            554 5.7.1 Bulk mail is not welcome here
.sub.example            DEFER Try again later
friend@                 OK
<>                      DUNNO
192.0.2.66              REJECT
198.51.100              REJECT Your network is blocked
203.0.113.0/25          421 4.7.0 Closing
watch.example           WARN watched sender
tagged.example          restrictive
"""


def test_apply_reads_postfix_access_values(tmp_path):
    (tmp_path / "access").write_text(ACCESS)
    rs = ok(tmp_path, """
map access = file "access"
class restrictive:
    [strict] reject 550 5.7.1 "restrictive class" if not tls
on mail:
    [sender-access] apply access(sender)
    [after] reject 550 5.7.1 "after the map" if sender.domain = "after.test"
""")

    def mail(sender, ip="192.0.2.1"):
        st = state(ip=ip, sender=sender)
        d = run(rs, [Stage.MAIL], st)
        return d.outcome, d.code, d.enhanced, d.text, d.rule_id, st.log_lines

    assert mail("Spammer@Example.COM")[:5] == (Outcome.REJECT, 554, "5.7.1", "Go away", "sender-access")
    assert mail("x@bulk.example")[:4] == (Outcome.REJECT, 554, "5.7.1", "Bulk mail is not welcome here")
    assert mail("x@mx.bulk.example")[0] is Outcome.REJECT            # parent domains match (Postfix)
    assert mail("x@a.sub.example")[:4] == (Outcome.TEMPFAIL, 450, "4.7.1", "Try again later")
    assert mail("x@sub.example")[0] is Outcome.CONTINUE              # .sub.example: subdomains only
    assert mail("friend@anywhere.test")[0] is Outcome.ACCEPT          # user@
    assert mail("")[0] is Outcome.CONTINUE                            # <> DUNNO: the next rule runs
    assert mail("x@after.test")[4] == "after"
    watched = mail("x@watch.example")
    assert watched[0] is Outcome.CONTINUE and watched[5] == [("warn", "sender-access", "watched sender")]
    assert mail("x@tagged.example")[3:5] == ("restrictive class", "strict")


def test_access_map_client_keys(tmp_path):
    (tmp_path / "access").write_text(ACCESS)
    rs = ok(tmp_path, 'map access = file "access"\non connect:\n    [client] apply access(client.ip)\n')
    d = lambda ip: run(rs, [Stage.CONNECT], state(ip=ip))   # noqa: E731
    assert (d("192.0.2.66").outcome, d("192.0.2.66").text) == (Outcome.REJECT, "Access denied")
    assert d("198.51.100.9").text == "Your network is blocked"        # truncated 198.51.100
    assert (d("203.0.113.5").outcome, d("203.0.113.5").code) == (Outcome.DISCONNECT, 421)
    assert d("203.0.113.200").outcome is Outcome.CONTINUE             # outside the /25


def test_map_values_membership_and_placeholders(tmp_path):
    """reject_sender_login_mismatch: a map of which logins may use a sender."""
    rs = ok(tmp_path, """
map owners = {"ceo@example.com": "alice, bob", "example.com": "admin"}
on mail:
    [mismatch] reject 553 5.7.1 "{sender} is not owned by {auth.user} (owners: {owners(sender)})" if auth and owners(sender) != "" and auth.user not in owners(sender)
    [unknown] reject 553 5.7.1 "no owner for {sender}" if auth and sender not in owners
""")
    d = lambda sender, user: run(rs, [Stage.MAIL], state(sender=sender, auth_user=user))   # noqa: E731
    assert d("ceo@example.com", "Bob").outcome is Outcome.CONTINUE       # items compare without case
    refused = d("ceo@example.com", "mallory")
    assert (refused.rule_id, refused.text) == ("mismatch",
                                                "ceo@example.com is not owned by mallory (owners: alice, bob)")
    assert d("x@example.com", "admin").outcome is Outcome.CONTINUE       # the domain's entry
    assert d("x@other.test", "admin").rule_id == "unknown"


def test_a_pcre_map_with_captures_in_its_reply(tmp_path):
    (tmp_path / "helo.pcre").write_text(
        "# iRedMail style\n"
        "/^\\[?(10|127)\\.\\d+\\.\\d+\\.\\d+\\]?$/   REJECT Private address $1 in HELO\n"
        "/^(dsl|cable)[-.]\\d+/                 REJECT Generic HELO ($1)\n"
        "/^localhost$/                          550 5.7.1 You are not localhost\n")
    rs = ok(tmp_path, 'map helo_checks = pcre "helo.pcre"\non helo:\n    [helo-map] apply helo_checks(helo)\n')
    d = lambda helo: run(rs, [Stage.HELO], state(helo=helo))   # noqa: E731
    assert d("[10.1.2.3]").text == "Private address 10 in HELO"
    assert d("DSL-42.isp.example").text == "Generic HELO (dsl)"       # the value is folded, the map is case-less
    assert (d("localhost").code, d("localhost").text) == (550, "You are not localhost")
    assert d("mx.example.org").outcome is Outcome.CONTINUE


@pytest.mark.parametrize("text,message", [
    ('on mail:\n    apply nomap(sender)\n', "unknown map `nomap`"),
    ('list l = ["a"]\non mail:\n    apply l(sender)\n', "`l` is a list, not a map"),
    ('map m = {"a": "OK"}\non mail:\n    reject if tls in m(sender)\n', "`tls` is yes or no; it cannot be `in` a list"),
    ('map m = {"a": "OK"}\non rcpt:\n    reject if m(rcpts) = "x"\n', "a map is looked up by"),
    ('map m = {"a": "OK"}\non connect:\n    apply m(sender)\n', "`sender` is not known yet in `on connect:`"),
    ('map m = {"a": "OK"}\nlist m = ["x"]\non mail:\n    reject if sender in m\n', "declared as a list and as a map"),
])
def test_map_mistakes(tmp_path, text, message):
    assert message in errors(tmp_path, text)


def test_map_files_are_part_of_the_ruleset_version(tmp_path):
    (tmp_path / "access").write_text("a@b.test REJECT\n")
    first = ok(tmp_path, 'map access = file "access"\non mail:\n    apply access(sender)\n')
    (tmp_path / "access").write_text("a@b.test OK\n")
    second = ok(tmp_path, 'map access = file "access"\non mail:\n    apply access(sender)\n')
    assert first.version != second.version
    assert str(tmp_path / "access") in second.files


# ---- facts that depend on facts; several providers in one hook ---------------------

def test_an_rhsbl_lookup_of_the_ptr_name_is_made_in_the_same_hook(tmp_path):
    """The RHSBL key needs the PTR answer: Policy asks again for what the
    answers made known (it used to be silently false)."""
    rs = ok(tmp_path, 'zone dbl = rhsbl "dbl.test"\non connect:\n'
                      '    [rdns-dbl] reject 554 5.7.1 "{client.rdns} listed" if client.rdns listed in dbl\n')
    dns = {Lookup(LookupKind.PTR, "192.0.2.9"): DnsAnswer("found", names=("bad.example",), confirmed=True),
           Lookup(LookupKind.RHSBL, "bad.example", "dbl.test"): DnsAnswer("listed", ("127.0.1.2",))}
    st = state(ip="192.0.2.9")
    d = run(rs, [Stage.CONNECT], st, dns)
    assert (d.outcome, d.text) == (Outcome.REJECT, "bad.example listed")
    assert Lookup(LookupKind.RHSBL, "bad.example", "dbl.test") in st.facts


def test_smtpfw_test_drives_a_hook_that_needs_dns_and_a_callout(tmp_path, capsys):
    """`sender.resolvable` and `rcpt.verified` in one hook: two fact
    providers; the test runner used to stop with "a DNS source or plugin waited"."""
    from smtpfw.cli import main

    (tmp_path / "v.rules").write_text(
        'on rcpt:\n'
        '    [nodomain] reject 550 5.1.8 "Sender domain does not resolve" if sender.resolvable = "no"\n'
        '    [unknown] reject 550 5.1.1 "User unknown" if rcpt.verified = "no"\n'
        '    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    (tmp_path / "v.tests").write_text(
        "dns resolvable nope.test = no\n"
        "dns resolvable yes.test = yes\n"
        "client 192.0.2.1 ehlo a.test from x@nope.test rcpt root@localhost -> reject at rcpt by nodomain\n"
        "client 192.0.2.1 ehlo a.test from x@yes.test rcpt root@localhost -> accept\n")
    assert main(["test", str(tmp_path / "v.rules")]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("codes,code,expected", [
    ("127.0.0.[2;14;13;12;11;10]", "127.0.0.13", True),       # postscreen's `;` lists (mailspike)
    ("127.0.0.[2;14;13;12;11;10]", "127.0.0.3", False),
    ("127.0.0.[2;10..14]", "127.0.0.12", True),
])
def test_code_pattern_lists(tmp_path, codes, code, expected):
    decls = f'zone z = dnsbl "z.test" codes [{codes}]'
    assert rejects(tmp_path, "client.ip listed in z", Stage.CONNECT, decls,
                   listed("192.0.2.1", "z.test", code)) is expected


@pytest.mark.parametrize("codes,message", [
    ('"127.0.0.[2;14;13]"', "is not a return code"),          # quoted: it would never match
    ('"x"', "is not a return code"),
    ("*.*.*.[2..3]", "stands for too many separate ranges"),
])
def test_code_mistakes(tmp_path, codes, message):
    assert message in errors(tmp_path, f'zone z = dnsbl "z.test" codes [{codes}]\non connect:\n'
                                       '    reject if client.ip listed in z\n')


@pytest.mark.parametrize("cond,kw,expected", [
    # postfwd: client_name~=$$(sender_domain)$ -- the rDNS name is in the sender's domain
    ("client.rdns within sender.domain", {"sender": "a@example.org"}, True),
    ("client.rdns within sender.domain", {"sender": "a@other.test"}, False),
    ("client.rdns not within sender.domain", {"sender": "a@other.test"}, True),
    ('client.rdns within brands(sender.domain)', {"sender": "a@gmail.test"}, True),     # Haraka [bigco]
    ('client.rdns within brands(sender.domain)', {"sender": "a@yahoo.test"}, False),
    ("client.ip in helo.addresses", {}, True),
    ("sender.domain in helo", {"helo": "example.org"}, True),       # one value: equality
])
def test_membership_in_another_fields_value(tmp_path, cond, kw, expected):
    decls = 'map brands = {"gmail.test": "google.test, gmail.test", "yahoo.test": "yahoo.test"}'
    rs = ok(tmp_path, f"{decls}\non rcpt:\n    reject if {cond}\n")
    dns = {Lookup(LookupKind.PTR, "192.0.2.1"): DnsAnswer("found", names=("mx1.example.org",), confirmed=True),
           Lookup(LookupKind.PTR, "192.0.2.2"): DnsAnswer("found", names=("mail-x.google.test",), confirmed=True),
           Lookup(LookupKind.ADDRESSES, "mx.example.org"): DnsAnswer("found", ("192.0.2.1",))}
    ip = "192.0.2.2" if "brands" in cond else "192.0.2.1"
    assert (run(rs, [Stage.RCPT], state(ip=ip, **kw), dns).outcome is Outcome.REJECT) is expected


def test_ruleset_tests_say_when_a_session_began(tmp_path, capsys):
    from smtpfw.cli import main

    (tmp_path / "t.rules").write_text(
        'option timezone = "Europe/Berlin"\non rcpt:\n'
        '    [night] tempfail 450 4.7.1 "Not at night" if time.clock < "06:00"\n'
        '    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    tests = ("client 192.0.2.1 at 2026-11-30T04:30 ehlo a.test from x@a.test rcpt root@localhost"
             " -> tempfail at rcpt by night\n"
             "client 192.0.2.1 at 2026-11-30T05:30 ehlo a.test from x@a.test rcpt root@localhost -> accept\n"
             "client 192.0.2.1 at 2026-11-30T05:30+01:00 ehlo a.test from x@a.test rcpt root@localhost"
             " -> tempfail by night\n")
    (tmp_path / "t.tests").write_text(tests)
    assert main(["test", str(tmp_path / "t.rules")]) == 0, capsys.readouterr().out
    (tmp_path / "t.tests").write_text("client 192.0.2.1 at yesterday -> accept\n")
    assert main(["test", str(tmp_path / "t.rules")]) != 0
    assert "`at` takes a date and time like 2026-11-30T14:05, not `yesterday`" in capsys.readouterr().out


def test_dry_run_shows_how_sessions_scored(tmp_path, capsys):
    import json

    from smtpfw.cli import main
    from smtpfw.replay.build import make_record

    (tmp_path / "p.rules").write_text(POSTSCREEN + '\non rcpt:\n    reject if rcpt.domain not in localnames\n')
    records = []
    for i, (ip, zones) in enumerate([("192.0.2.1", ["zen.test", "bb.test"]), ("192.0.2.2", ["bb.test"]),
                                     ("192.0.2.3", [])]):
        dns = {Lookup(LookupKind.DNSBL, ip, z): DnsAnswer("listed", ("127.0.0.2",)) for z in zones}
        records.append(make_record(ip=ip, helo="a.test", sender="x@a.test", rcpts=["root@localhost"], dns=dns,
                                   session_id=f"s{i}"))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["dry-run", "--rules", str(tmp_path / "p.rules"), str(tmp_path / "s.jsonl")]) == 0
    assert "score dnsbl, sessions by total: 0: 1, +2: 1, +5: 1" in capsys.readouterr().out
    assert main(["dry-run", "--rules", str(tmp_path / "p.rules"), "--format", "json", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["scores"] == {"dnsbl": {"0": 1, "2": 1, "5": 1}}


def test_qpsmtpd_list_files_load_as_written(tmp_path):
    """relayclients with address prefixes, badmailfrom with reasons (issue 14, item 3)."""
    (tmp_path / "relayclients").write_text("# qpsmtpd config/relayclients\n192.0.\n10.1.2.3\n2001:0DB8\n198.51\n")
    (tmp_path / "badmailfrom").write_text("spam@example.com  We do not want your mail\n@bulk.example bulk mail\n")
    rs = ok(tmp_path, 'list relayclients = file "relayclients"\nlist badmailfrom = file "badmailfrom"\n'
                      "on mail:\n    [bmf] reject if sender in badmailfrom\n"
                      "on rcpt:\n    [relay] accept if client.ip in relayclients\n    [no] reject\n")
    rcpt = lambda ip: run(rs, [Stage.RCPT], state(ip=ip)).outcome   # noqa: E731
    assert rcpt("192.0.200.1") is Outcome.ACCEPT
    assert rcpt("198.51.7.7") is Outcome.ACCEPT
    assert rcpt("2001:db8:1::5") is Outcome.ACCEPT
    assert rcpt("10.1.2.4") is Outcome.REJECT and rcpt("192.1.0.1") is Outcome.REJECT
    mail = lambda sender: run(rs, [Stage.MAIL], state(sender=sender)).outcome   # noqa: E731
    assert mail("SPAM@example.com") is Outcome.REJECT and mail("x@bulk.example") is Outcome.REJECT
    assert mail("ham@example.com") is Outcome.CONTINUE


def test_lint_finds_map_patterns_that_never_match(tmp_path):
    from smtpfw.lang.check import check_ruleset

    (tmp_path / "m.pcre").write_text("/^mail\\.Example\\.com$/i  REJECT capital\n/@/  REJECT at sign\n"
                                     "/^dsl/ REJECT dsl\n!/@/ DUNNO\n")
    (tmp_path / "m.rules").write_text('map m = pcre "m.pcre"\non connect:\n    apply m(client.rdns)\n'
                                      "on rcpt:\n    reject if rcpt.domain not in localnames\n")
    diags, _ = check_ruleset(tmp_path / "m.rules")
    assert [(d.code, d.span.line) for d in diags] == [("W402", 1), ("W402", 2)]
    assert "case-sensitive (flag i) and needs the capital `E`" in diags[0].message
    assert "it needs `@`, which a domain never contains" in diags[1].message


def test_delay_reject_data_behind_postfix(tmp_path):
    """As a policy service, a refusal held until DATA is the answer to
    Postfix's DATA request (smtpd_data_restrictions), not to RCPT."""
    from smtpfw.config import Listener
    from tests.support.server import running_server
    from tests.test_policy_server import PolicyClient, rcpt_request

    rules = ('option delay_reject = "data"\non helo:\n    [bad-helo] reject 550 5.7.1 "bad HELO" if helo = "bad.test"\n'
             'on rcpt:\n    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain != "example.net"\n')
    with running_server(rules_text=rules, listen=(Listener("127.0.0.1", 0, "policy", kind="policy"),)) as srv:
        c = PolicyClient(srv.address)
        assert c.ask(**rcpt_request(helo="bad.test")) == "DUNNO"
        assert c.ask(**rcpt_request(helo="bad.test", rcpt="x@other.test")) == "554 5.7.1 Relaying denied"
        assert c.ask(**rcpt_request(helo="bad.test", state="DATA")) == "550 5.7.1 bad HELO"
        c.close()


# ---- many `matches` rules as one RE2 set (issue 13) ------------------------------------

PATTERN_RULES = """
on helo:
    [dyn1] reject 550 5.7.1 "dynamic 1" if helo matches "^(dhcp|dyn|dsl)[-.]"
    [dyn2] reject 550 5.7.1 "dynamic 2" if helo matches "\\\\d+-\\\\d+-\\\\d+-\\\\d+"
    [cable] reject 550 5.7.1 "cable" if helo matches "cable|catv"
    [pool] tempfail 450 4.7.1 "pool" if helo matches "pool"
    [ppp] reject 550 5.7.1 "ppp" if helo matches "^ppp"
    [exact] accept if helo = "mx.example.org"
    [after] reject 550 5.7.1 "x" if helo matches "x$"
"""


def test_a_run_of_pattern_rules_is_one_set_and_decides_as_the_rules_do(tmp_path):
    from smtpfw.engine import Ruleset
    rs = ok(tmp_path, PATTERN_RULES)
    groups = rs._groups[Stage.HELO]
    assert [(lo, hi) for lo, hi, _find in groups] == [(0, 5)]          # the five `matches` rules
    for helo in ["dhcp-1.example", "1-2-3-4.isp.example", "pool-cable-9.example", "mypool.example",
                 "ppp9.example", "mx.example.org", "box.example.tx", "clean.example", "DYN-2.EXAMPLE", ""]:
        st = state(helo=helo)
        grouped = rs.evaluate(Stage.HELO, st)
        traced = Ruleset.evaluate(rs, Stage.HELO, state(helo=helo), 0, [])     # the trace path runs every rule
        assert grouped == traced, helo
    # the first matching rule wins, as in order: "pool-cable" matches cable (rule 3) before pool (rule 4)
    assert rs.evaluate(Stage.HELO, state(helo="pool-cable-9.example")).rule_id == "cable"
