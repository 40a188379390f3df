"""Stateful rules end to end (issue 15): rate limits and greylisting in the
rule language, on the real server, against the embedded SQLite store and a
real redis-server on loopback.  Limits hold exactly under concurrency; two
servers sharing one Redis enforce one limit; greylisting passes after the
delay and from another address of the /24; a store that is gone fails open
(or closed, as configured); a restart keeps the greylist."""

from __future__ import annotations

import smtplib
import threading
import time
from dataclasses import replace

import pytest

from smtpfw.config import Config
from tests.support.redis import RedisInstance, redis_available
from tests.support.server import running_server

LIMIT_RULES = """
limit per_net = 4 per 1h by client.net
on mail:
    [too-fast] tempfail 450 4.7.1 "Too many messages from {client.net}, try again in {limit.per_net.retry}s" if limit.per_net.exceeded
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""

GREY_RULES = """
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
    [grey] tempfail 451 4.7.1 "Greylisted, try again in {greylist.retry}s" if greylist != "pass"
"""


def mail_reply(srv, source="127.0.0.1", sender="a@client.example") -> str:
    with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
        s.ehlo("client.example")
        code, text = s.mail(sender)
        return f"{code} {text.decode()}"


def rcpt_reply(srv, source="127.0.0.1", sender="a@client.example", rcpt="root@localhost") -> str:
    with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
        s.ehlo("client.example")
        s.mail(sender)
        code, text = s.rcpt(rcpt)
        return f"{code} {text.decode()}"


def in_parallel(calls) -> list[str]:
    out: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i, call):
        barrier.wait()
        out[i] = call()
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def sqlite_config(tmp_path, **state) -> Config:
    cfg = Config()
    return replace(cfg, state=replace(cfg.state, store=str(tmp_path / "state.db"), **state))


def test_a_limit_holds_exactly_under_concurrency_on_sqlite(tmp_path):
    with running_server(rules_text=LIMIT_RULES, config=sqlite_config(tmp_path)) as srv:
        replies = in_parallel([lambda: mail_reply(srv)] * 10)
        passed = [r for r in replies if r.startswith("250")]
        refused = [r for r in replies if not r.startswith("250")]
        assert len(passed) == 4, replies
        assert all(r.startswith("450 4.7.1 Too many messages from 127.0.0.0/24, try again in ") for r in refused)
        # another network has its own count
        assert mail_reply(srv, source="127.0.1.1").startswith("250")


def test_a_refused_message_costs_nothing(tmp_path):
    """The count is given back when the hook that counted refuses."""
    rules = LIMIT_RULES.replace('on rcpt:', 'on mail:\n    [no-bulk] reject 550 5.7.1 "no" if sender.domain = "bulk.example"\non rcpt:')
    with running_server(rules_text=rules, config=sqlite_config(tmp_path)) as srv:
        for _ in range(6):
            assert mail_reply(srv, sender="x@bulk.example").startswith("550 5.7.1 no")
        assert [mail_reply(srv)[:3] for _ in range(5)] == ["250"] * 4 + ["450"]


@pytest.mark.skipif(redis_available() is not None, reason=redis_available() or "")
def test_two_servers_sharing_redis_enforce_one_limit(tmp_path):
    with RedisInstance() as redis:
        cfg = replace(Config(), state=replace(Config().state, store=redis.url))
        with running_server(rules_text=LIMIT_RULES, config=cfg) as a, \
                running_server(rules_text=LIMIT_RULES, config=cfg) as b:
            replies = in_parallel([lambda: mail_reply(a), lambda: mail_reply(b)] * 5)
        assert sum(r.startswith("250") for r in replies) == 4, replies


@pytest.mark.skipif(redis_available() is not None, reason=redis_available() or "")
@pytest.mark.parametrize("fail,expected", [("open", "250"), ("closed", "450")])
def test_a_dead_store_fails_open_or_closed(tmp_path, fail, expected, caplog):
    with RedisInstance() as redis:
        cfg = replace(Config(), state=replace(Config().state, store=redis.url, fail=fail, timeout=0.3))
        with running_server(rules_text=LIMIT_RULES, config=cfg) as srv:
            assert mail_reply(srv).startswith("250")
            redis.kill()
            started = time.monotonic()
            assert mail_reply(srv)[:3] == expected
            assert time.monotonic() - started < 5          # the store's timeout, not a hang
            redis.start()                                  # it comes back: counting goes on
            replies = [mail_reply(srv)[:3] for _ in range(6)]
            assert "450" in replies


def test_greylisting_passes_after_the_delay_and_from_the_same_network(tmp_path):
    cfg = sqlite_config(tmp_path, greylist_delay=1.0)
    with running_server(rules_text=GREY_RULES, config=cfg) as srv:
        first = rcpt_reply(srv, source="127.0.0.2")
        assert first.startswith("451 4.7.1 Greylisted, try again in 1s"), first
        assert rcpt_reply(srv, source="127.0.0.3").startswith("451")        # too early
        deadline = time.monotonic() + 10
        while (reply := rcpt_reply(srv, source="127.0.0.4")).startswith("451"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert reply.startswith("250")                   # another address of the /24 passes
        assert rcpt_reply(srv, source="127.0.1.2").startswith("451")       # another network: its own triplet


def test_a_restart_keeps_the_greylist(tmp_path):
    cfg = sqlite_config(tmp_path, greylist_delay=0.5)
    with running_server(rules_text=GREY_RULES, config=cfg) as srv:
        assert rcpt_reply(srv).startswith("451")
    time.sleep(0.6)                                      # the delay passes while no server runs
    with running_server(rules_text=GREY_RULES, config=cfg) as srv:
        assert rcpt_reply(srv).startswith("250")


STATEFUL = """
limit per_ip = 2 per 1h by client.ip
on mail:
    [fast] tempfail 450 4.7.1 "slow down, {limit.per_ip.retry}s" if limit.per_ip.exceeded
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
    [grey] tempfail 451 4.7.1 "Greylisted, try again in {greylist.retry}s" if greylist != "pass"
"""

SEQUENCE = """\
# state carries from one test to the next, each at its time
client 192.0.2.1 at 2026-11-30T10:00 ehlo a.test from x@a.test rcpt root@localhost -> tempfail at rcpt by grey text "Greylisted, try again in 300s"
client 192.0.2.9 at 2026-11-30T10:06 ehlo a.test from x@a.test rcpt root@localhost -> accept
client 192.0.2.1 at 2026-11-30T10:07 ehlo a.test from x@a.test rcpt root@localhost -> accept
client 192.0.2.1 at 2026-11-30T10:08 ehlo a.test from x@a.test rcpt root@localhost -> tempfail at mail by fast text "slow down, 1320s"
"""


def test_ruleset_tests_run_stateful_rules_in_order(tmp_path, capsys):
    from smtpfw.cli import main

    (tmp_path / "s.rules").write_text(STATEFUL)
    (tmp_path / "s.tests").write_text(SEQUENCE)
    assert main(["test", str(tmp_path / "s.rules")]) == 0, capsys.readouterr().out
    # a failing test's trace shows the state it met
    (tmp_path / "s.tests").write_text(SEQUENCE.replace("10:08 ehlo a.test from x@a.test rcpt root@localhost -> tempfail "
                                                       'at mail by fast text "slow down, 1320s"',
                                                       "10:08 ehlo a.test from x@a.test rcpt root@localhost -> accept"))
    assert main(["test", str(tmp_path / "s.rules")]) == 1
    out = capsys.readouterr().out
    assert "state limit per_ip [192.0.2.1] 2 per 3600s: exceeded, retry in 1320s" in out
    assert "limit.per_ip.exceeded = yes" in out


def test_dry_run_replays_stateful_rules_deterministically(tmp_path, capsys):
    """State starts empty, each session at its recorded time, in order; the
    same report for any --jobs."""
    import json

    from smtpfw.cli import main
    from smtpfw.replay.build import make_record
    from tests.test_rules_lang2 import at

    (tmp_path / "s.rules").write_text(STATEFUL)
    times = ["2026-11-30T10:00", "2026-11-30T10:06", "2026-11-30T10:07", "2026-11-30T10:08"]
    ips = ["192.0.2.1", "192.0.2.9", "192.0.2.1", "192.0.2.1"]
    lines = [json.dumps(make_record(ip=ip, helo="a.test", sender="x@a.test", rcpts=["root@localhost"],
                                    session_id=f"s{i}", started=at(t + ":00+00:00")))
             for i, (ip, t) in enumerate(zip(ips, times))]
    (tmp_path / "a.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n")
    (tmp_path / "b.jsonl").write_text(lines[2] + "\n" + lines[3] + "\n")
    reports = []
    for jobs in ("1", "2"):
        assert main(["dry-run", "--rules", str(tmp_path / "s.rules"), "--format", "json", "--jobs", jobs,
                     str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
        report = json.loads(capsys.readouterr().out)
        reports.append((report["verdicts"], report["rule_hits"]))
    assert reports[0] == reports[1]
    verdicts, hits = reports[0]
    assert verdicts["tempfailed"] == 2 and verdicts["accepted"] == 2
    assert hits["grey"] == 1 and hits["fast"] == 1


def test_greylisting_as_a_postfix_policy_service(tmp_path):
    """postgrey's place: Postfix asks at RCPT (check_policy_service)."""
    from smtpfw.config import Listener
    from tests.test_policy_server import PolicyClient, rcpt_request

    rules = GREY_RULES.replace("localnames", '["example.net"]')
    cfg = sqlite_config(tmp_path, greylist_delay=0.5)
    with running_server(rules_text=rules, config=cfg,
                        listen=(Listener("127.0.0.1", 0, "policy", kind="policy"),)) as srv:
        c = PolicyClient(srv.address)
        assert c.ask(**rcpt_request(instance="i1")) == "451 4.7.1 Greylisted, try again in 1s"
        deadline = time.monotonic() + 10
        while (answer := c.ask(**rcpt_request(instance=f"i{time.monotonic()}"))) != "DUNNO":
            assert answer.startswith("451") and time.monotonic() < deadline, answer
            time.sleep(0.2)
        c.close()


CONCURRENT = """
limit conns = 2 concurrent by client.net
on connect:
    [busy] disconnect 421 4.7.0 "Too many connections from {client.net}" if limit.conns.exceeded
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""


def test_a_concurrency_limit_counts_open_sessions_and_frees_them(tmp_path):
    with running_server(rules_text=CONCURRENT, config=sqlite_config(tmp_path)) as srv:
        first = smtplib.SMTP(*srv.address, source_address=("127.0.0.1", 0), timeout=10)
        second = smtplib.SMTP(*srv.address, source_address=("127.0.0.2", 0), timeout=10)
        try:
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(*srv.address, source_address=("127.0.0.3", 0), timeout=10)
            assert refused.value.smtp_code == 421
            assert b"Too many connections from 127.0.0.0/24" in refused.value.smtp_error
            assert mail_reply(srv, source="127.0.1.1").startswith("250")       # another network
        finally:
            first.quit()
        # the ended session's slot is free again (released in the background)
        deadline = time.monotonic() + 5
        while True:
            try:
                smtplib.SMTP(*srv.address, source_address=("127.0.0.4", 0), timeout=10).quit()
                break
            except smtplib.SMTPConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        second.quit()


def test_dry_run_counts_sessions_that_overlapped_in_time(tmp_path, capsys):
    import json

    from smtpfw.cli import main
    from smtpfw.replay.build import make_record

    (tmp_path / "c.rules").write_text(CONCURRENT)
    # three sessions of 10 s from one network: the third starts while two are open;
    # the fourth after the first two ended
    starts = [1000.0, 1001.0, 1002.0, 1020.0]
    lines = []
    for i, t in enumerate(starts):
        rec = make_record(ip=f"192.0.2.{i + 1}", helo="a.test", sender="x@a.test", rcpts=["root@localhost"],
                          session_id=f"s{i}", started=t)
        rec["duration"] = 10.0
        lines.append(json.dumps(rec))
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["dry-run", "--rules", str(tmp_path / "c.rules"), "--format", "json", str(tmp_path / "s.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rule_hits"]["busy"] == 1 and report["verdicts"]["disconnected"] == 1


PENALTY = """
counter strikes = 1h by client.net
on connect:
    [penalty] reject 554 5.7.1 "{client.net} hit a spam trap; come back later" if counter.strikes >= 2
on rcpt:
    [strike] count strikes if rcpt = "trap@localhost"
    [trap] reject 550 5.1.1 "No such user" if rcpt = "trap@localhost"
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""


def test_a_counter_outlives_the_session_penalty_box(tmp_path):
    """Haraka karma / a penalty box: two trap hits, then the network is refused at connect."""
    with running_server(rules_text=PENALTY, config=sqlite_config(tmp_path)) as srv:
        assert rcpt_reply(srv, rcpt="trap@localhost").startswith("550 5.1.1")      # strike 1
        assert rcpt_reply(srv, source="127.0.0.2", rcpt="trap@localhost").startswith("550")   # strike 2
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            rcpt_reply(srv, source="127.0.0.3")
        assert refused.value.smtp_code == 554
        assert b"127.0.0.0/24 hit a spam trap" in refused.value.smtp_error
        assert rcpt_reply(srv, source="127.0.1.9").startswith("250")              # another network


def test_counter_in_ruleset_tests_and_its_mistakes(tmp_path, capsys):
    from smtpfw.cli import main
    from tests.test_rules_lang2 import errors

    (tmp_path / "p.rules").write_text(PENALTY)
    (tmp_path / "p.tests").write_text(
        "client 192.0.2.1 at 2026-11-30T10:00 ehlo a.test from x@a.test rcpt trap@localhost -> reject at rcpt by trap\n"
        "client 192.0.2.2 at 2026-11-30T10:01 ehlo a.test from x@a.test rcpt root@localhost -> accept\n"
        "client 192.0.2.3 at 2026-11-30T10:02 ehlo a.test from x@a.test rcpt trap@localhost -> reject at rcpt by trap\n"
        "client 192.0.2.4 at 2026-11-30T10:03 -> reject at connect by penalty\n"
        "client 192.0.2.4 at 2026-11-30T11:03 ehlo a.test from x@a.test rcpt root@localhost -> accept\n")
    assert main(["test", str(tmp_path / "p.rules")]) == 0, capsys.readouterr().out
    assert "unknown counter `strike`" in errors(tmp_path, "counter strikes = 1h by client.net\n"
                                                          "on rcpt:\n    count strike\n")
    assert "`sender` is not known yet in `on connect:`" in errors(
        tmp_path, "counter s = 1h by sender\non connect:\n    reject if counter.s > 1\n")


def test_without_a_store_stateful_rules_fail_open(tmp_path):
    """A session whose Policy has no state source (a bare evaluation) sees
    the fail-open answers: no limit exceeded, greylisting passes."""
    import asyncio

    from smtpfw.policy import Policy
    from smtpfw.session import SessionState
    from smtpfw.verdict import Outcome, Stage
    from tests.test_rules_lang import ok

    rs = ok(tmp_path, STATEFUL)
    st = SessionState(client_ip="192.0.2.1", session_id="x")
    st.set_helo("a.test", True)
    st.set_sender("x@a.test")
    st.set_rcpt("root@localhost")
    policy = Policy(rs, st, None)
    assert asyncio.run(policy.run(Stage.MAIL)).outcome is Outcome.CONTINUE
    assert asyncio.run(policy.run(Stage.RCPT)).outcome is Outcome.CONTINUE


# ---- found in review: each failed before its fix ----------------------------------------

def test_a_state_field_only_in_reply_text_opens_the_store(tmp_path):
    """`{greylist.retry}` used only in a reply made a ruleset that needs the
    store but did not say so: the server opened none and the session crashed."""
    from tests.test_rules_lang import ok

    rules = ('on rcpt:\n    [g] tempfail 451 4.7.1 "Greylisted, retry in {greylist.retry}s" '
             'if rcpt.domain = "localhost"\n')
    assert ok(tmp_path, rules).stateful
    with running_server(rules_text=rules, config=sqlite_config(tmp_path)) as srv:
        assert rcpt_reply(srv).startswith("451 4.7.1 Greylisted, retry in 300s")


def test_a_state_field_in_a_class_text_is_refused(tmp_path):
    from tests.test_rules_lang2 import errors

    text = ("counter strikes = 1h by client.net\non rcpt:\n    [strike] count strikes\n    [u] use grey\n"
            'class grey:\n    [g] tempfail 451 4.7.1 "Greylisted {greylist.retry}s"\n')
    assert "cannot be tested in a class" in errors(tmp_path, text)


def test_a_later_refused_hook_keeps_the_sessions_slot(tmp_path):
    """A MAIL rule that reads the concurrency limit again and is refused used
    to give back the slot the session took at connect."""
    rules = ('limit conns = 1 concurrent by client.net\non connect:\n'
             '    [busy] disconnect 421 4.7.0 "busy" if limit.conns.exceeded\n'
             'on mail:\n    [no] reject 550 5.7.1 "no {limit.conns.count}" if sender.domain = "bad.example"\n'
             'on rcpt:\n    reject if rcpt.domain not in localnames\n')
    with running_server(rules_text=rules, config=sqlite_config(tmp_path)) as srv:
        with smtplib.SMTP(*srv.address, source_address=("127.0.0.1", 0), timeout=10) as first:
            first.ehlo("a.example")
            assert first.mail("x@bad.example")[0] == 550
            with pytest.raises(smtplib.SMTPConnectError):
                smtplib.SMTP(*srv.address, source_address=("127.0.0.2", 0), timeout=10)


def test_recipients_refused_by_a_held_refusal_cost_nothing(tmp_path):
    import asyncio

    from smtpfw.policy import Policy
    from smtpfw.session import SessionState
    from smtpfw.state import open_store
    from smtpfw.state.facts import StateFacts
    from smtpfw.facts import Facts
    from smtpfw.verdict import Outcome, Stage
    from tests.test_rules_lang import ok

    rs = ok(tmp_path, 'option delay_reject = yes\nlimit rcpts = 3 per 1h by client.net counting recipients\n'
                      'on connect:\n    [blocked] reject if client.ip = "192.0.2.66"\n'
                      'on rcpt:\n    [fast] tempfail if limit.rcpts.exceeded\n')

    async def main():
        store = open_store(":memory:")
        facts = Facts({"state": StateFacts(store, clock=lambda: 1000.0)})
        st = SessionState(client_ip="192.0.2.66", session_id="s")
        policy = Policy(rs, st, facts)
        await policy.run(Stage.CONNECT)
        st.set_helo("a.test", True)
        st.set_sender("x@a.test")
        outcomes = []
        for i in range(5):
            st.set_rcpt(f"r{i}@example.net")
            outcomes.append((await policy.run(Stage.RCPT)).rule_id)
        other = SessionState(client_ip="192.0.2.7", session_id="t")      # same /24: its bucket is untouched
        other.set_helo("a.test", True)
        other.set_sender("x@a.test")
        other.set_rcpt("r@example.net")
        verdict = await Policy(rs, other, facts).run(Stage.RCPT)
        await store.close()
        return outcomes, verdict.outcome
    outcomes, verdict = asyncio.run(main())
    assert outcomes == ["blocked"] * 5 and verdict is Outcome.CONTINUE


def test_a_second_helo_replaces_what_the_first_scored(tmp_path):
    import asyncio

    from smtpfw.core.conversation import Conversation
    from smtpfw.facts import RecordedFacts
    from smtpfw.session import SessionState
    from tests.test_rules_lang import ok

    rs = ok(tmp_path, 'on helo:\n    score spam +3 if not helo.fqdn\non mail:\n'
                      '    reject 550 5.7.1 "spam score {score.spam}" if score.spam >= 5\n')
    st = SessionState(client_ip="192.0.2.1")
    conv = Conversation(rs, st, RecordedFacts({}))

    async def talk():
        await conv.connect()
        await conv.helo("localhost", True)
        await conv.helo("localhost", True)          # again, as after STARTTLS
        return await conv.mail("a@b.test", {})
    assert asyncio.run(talk()).reply.startswith("250") and st.scores["spam"] == 3


def test_w605_knows_hooks_that_run_again(tmp_path):
    from tests.test_rules_lang import compile_text
    from smtpfw.lint_output import format_text

    _, diags = compile_text(tmp_path, 'on rcpt:\n    score traps +1 if rcpt = "trap@localhost"\n'
                                      'on data:\n    reject if score.traps >= 3\n')
    assert "W605" not in format_text(diags)


def test_tarpit_in_monitor_mode_only_says_so(tmp_path):
    import time

    rules = 'on connect:\n    [slow] monitor tarpit 3s\non rcpt:\n    reject if rcpt.domain not in localnames\n'
    with running_server(rules_text=rules) as srv:
        started = time.monotonic()
        assert mail_reply(srv).startswith("250")
        assert time.monotonic() - started < 3
    from tests.test_rules_lang2 import errors
    assert "longer than 300 s" in errors(tmp_path, "on connect:\n    tarpit 1d\n")
