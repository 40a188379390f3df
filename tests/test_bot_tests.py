"""Bot detection before and during the greeting (postscreen-class tests):
pregreet, unauthorized pipelining, non-SMTP commands, bare newlines; and
well-behaved clients (smtplib; smtpfw's own forwarding client, which
pipelines as RFC 2920 allows) are never flagged."""

from __future__ import annotations

import re
import smtplib
import time

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import read_records
from smtpfw.replay.session import replay_record
from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.server import running_server

RULES = """
on connect:
    [pregreet] reject 550 5.7.1 "Talked before its turn: {client.pregreet_text}" if client.pregreet
on mail:
    [pipelining] reject 550 5.5.1 "Improper use of SMTP command pipelining" if session.unauth_pipelining
    [bare-lf] reject 550 5.5.2 "Bare LF in a command" if session.bare_newline
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def records(path) -> list[dict]:
    return [r for f in sorted(path.glob("*.jsonl")) for r in read_records(str(f))]


def test_a_client_that_talks_early_is_a_pregreeter(tmp_path):
    with running_server(rules_text=RULES, smtp_greet_wait=0.5, recording_enabled=True,
                        recording_path=str(tmp_path / "rec")) as srv:
        with RawClient(srv.address) as c:
            assert c.line() == "220-mx.test ESMTP smtpfw"                # the teaser
            c.send(b"EHLO bot.example\r\n")                              # before the final line
            assert c.line() == "220 mx.test ESMTP smtpfw"                # the greeting still ends well
            assert c.reply() == "550 5.7.1 Talked before its turn: EHLO bot.example"
            assert c.closed()
        with RawClient(srv.address) as c:                                # one that waits
            started = time.monotonic()
            assert c.reply() == "220 mx.test ESMTP smtpfw"
            assert time.monotonic() - started >= 0.4
            assert c.cmd("EHLO good.example").startswith("250")
            c.cmd("QUIT")
        wait_until(lambda: len(records(tmp_path / "rec")) == 2, 5, "two records")
    bot, good = sorted(records(tmp_path / "rec"), key=lambda r: r["time"])
    assert bot["behaviour"]["pregreet"] is True and bot["behaviour"]["pregreet_text"] == "EHLO bot.example"
    assert 0 <= bot["behaviour"]["pregreet_ms"] < 500
    assert good["behaviour"] == {"pass_new": True}                          # it waited: a new pass, no bot sign
    ruleset, _ = compile_ruleset(srv.server.rules_path)
    assert replay_record(ruleset, bot).verdict.rule == "pregreet"          # dry-run sees it too


def test_without_the_wait_the_greeting_is_one_line():
    with running_server(rules_text=RULES) as srv, RawClient(srv.address) as c:
        assert c.line() == "220 mx.test ESMTP smtpfw"


def test_pipelining_before_ehlo_or_after_data_is_noticed():
    with running_server(rules_text=RULES) as srv:
        with RawClient(srv.address) as c:                                # HELO: no PIPELINING offered
            c.reply()
            c.send(b"HELO bot.example\r\nMAIL FROM:<a@b.example>\r\n")
            assert c.reply().startswith("250 ")
            assert c.reply() == "550 5.5.1 Improper use of SMTP command pipelining"
        with RawClient(srv.address) as c:                                # EHLO, then a proper group
            c.reply()
            c.cmd("EHLO good.example")
            c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n")
            assert c.reply() == "250 2.1.0 Sender OK"
            assert c.reply() == "250 2.1.5 Recipient OK"
            assert c.reply().startswith("354")
            c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
            assert c.reply().startswith("250 2.0.0")


def test_web_and_proxy_clients_are_cut_off_at_once(tmp_path):
    with running_server(rules_text=RULES, recording_enabled=True, recording_path=str(tmp_path / "rec")) as srv:
        for first in (b"GET / HTTP/1.1\r\n", b"CONNECT mail.example:25 HTTP/1.0\r\n", b"Host: mx.test\r\n"):
            with RawClient(srv.address) as c:
                c.reply()
                c.send(first)
                assert c.reply().startswith("421 4.7.0 This is an SMTP server")
                assert c.closed()
        wait_until(lambda: len(records(tmp_path / "rec")) == 3, 5, "three records")
    assert all(r["behaviour"] == {"non_smtp": True} for r in records(tmp_path / "rec"))


def test_bare_newline_in_a_command_is_noticed():
    with running_server(rules_text=RULES) as srv, RawClient(srv.address) as c:
        c.reply()
        c.send(b"EHLO bot.example\n")
        assert c.reply().startswith("250")
        assert c.cmd("MAIL FROM:<a@b.example>") == "550 5.5.2 Bare LF in a command"


def test_well_behaved_clients_are_never_flagged(tmp_path):
    """smtplib, and smtpfw's forwarding client (which pipelines MAIL, RCPT
    and DATA as RFC 2920 allows) talking to a second smtpfw."""
    rec = tmp_path / "rec"
    with running_server(rules_text=RULES, smtp_greet_wait=0.3, recording_enabled=True,
                        recording_path=str(rec)) as inner:
        with smtplib.SMTP(*inner.address, timeout=10) as s:
            s.ehlo("client.example")
            assert s.sendmail("a@b.example", ["u@localhost", "v@localhost"], b"Subject: x\r\n\r\nx\r\n") == {}
        with running_server(rules_text="on rcpt:\n    accept\n", delivery_mode="forward",
                            forward_host="127.0.0.1", forward_port=inner.port) as outer:
            with smtplib.SMTP(*outer.address, timeout=10) as s:
                s.ehlo("client.example")
                assert s.sendmail("a@b.example", ["u@localhost", "w@localhost"], b"Subject: y\r\n\r\ny\r\n") == {}
        wait_until(lambda: len(records(rec)) >= 2, 10, "the inner server's records")
    behaviour = [r.get("behaviour") for r in records(rec)]
    # no bot sign; the second client skipped the wait: the first one's pass is remembered (PASS OLD)
    assert behaviour == [{"pass_new": True}, {"pregreet_cached": True}], behaviour


# ---- tarpit (issue 18) ---------------------------------------------------------

TARPIT_RULES = """
on connect:
    [slow] tarpit 2s if client.ip = "127.0.0.66"
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""


def test_a_tarpitted_client_waits_while_others_are_served():
    import smtplib
    import threading
    import time

    from tests.support.server import running_server

    with running_server(rules_text=TARPIT_RULES) as srv:
        done: dict = {}

        def slow():
            started = time.monotonic()
            with smtplib.SMTP(*srv.address, source_address=("127.0.0.66", 0), timeout=30) as s:
                done["greeting"] = time.monotonic() - started
                s.ehlo("bot.example")
                done["ehlo"] = time.monotonic() - started
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.2)                                          # the tarpitted client is connected

        def normal(_i):
            started = time.monotonic()
            source = f"127.0.0.{2 + _i % 10}"                  # ten clients: within the per-IP cap
            with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=30) as s:
                s.ehlo("good.example")
                s.mail("a@good.example")
                ok = s.rcpt("root@localhost")[0] == 250
            return ok, time.monotonic() - started
        from concurrent.futures import ThreadPoolExecutor
        started = time.monotonic()
        with ThreadPoolExecutor(50) as pool:                    # 100 normal clients at once, meanwhile
            results = list(pool.map(normal, range(100)))
        took = time.monotonic() - started
        t.join(30)
        assert done["greeting"] >= 2 and done["ehlo"] >= 4          # every reply to it waits
        assert all(ok for ok, _ in results)
        # a client held by the tarpit would wait 2 s for every reply (8 s a session)
        assert took < 5.0 and max(s for _, s in results) < 2.0, (took, max(s for _, s in results))


def test_the_tarpit_slows_only_so_many_at_once():
    import smtplib
    import time

    from tests.support.server import running_server

    with running_server(rules_text=TARPIT_RULES.replace('if client.ip = "127.0.0.66"', ""),
                        max_tarpitted=1) as srv:
        first = smtplib.SMTP(*srv.address, timeout=30)               # holds the one tarpit slot
        started = time.monotonic()
        with smtplib.SMTP(*srv.address, timeout=30) as second:       # over the cap: served at once
            assert second.ehlo("b.example")[0] == 250
        assert time.monotonic() - started < 2
        first.close()


# ---- the pass cache and stress (issue 18) ----------------------------------------

def greeting(address, talk_early: bytes = b"") -> tuple[float, list[str], str]:
    """(seconds until the greeting ended, its lines, the reply to QUIT)."""
    started = time.monotonic()
    with RawClient(address, timeout=10) as c:
        lines = [c.line()]
        if talk_early:
            c.send(talk_early)
        while lines[-1][3:4] == "-":
            lines.append(c.line())
        took = time.monotonic() - started
        quit_reply = c.cmd("QUIT") if not talk_early else c.reply()
    return took, lines, quit_reply


def test_a_client_that_passed_skips_the_wait_across_workers_until_the_pass_expires(tmp_path):
    from tests.support.cli import serve_with
    settings = {"smtp": {"greet_wait": 1.0, "greet_pass_ttl": 6}, "state": {"store": str(tmp_path / "state.db")}}
    with serve_with(tmp_path, settings, "--workers", "2") as srv:
        took, lines, _ = greeting(srv.address)
        assert took >= 1.0 and lines == ["220-localhost ESMTP smtpfw", "220 localhost ESMTP smtpfw"]
        first_pass = time.monotonic()
        from concurrent.futures import ThreadPoolExecutor
        quick: list = []
        for _ in range(10):                              # a few at once, until both workers have taken some
            with ThreadPoolExecutor(4) as pool:
                quick += list(pool.map(lambda _i: greeting(srv.address), range(4)))
            wait_until(lambda: len(re.findall(r"smtpfw\.session\[(\d+)\]", srv.text)) >= 1 + len(quick), 10,
                       "session lines")
            if len(set(re.findall(r"smtpfw\.session\[(\d+)\]", srv.text))) == 2:
                break
        assert all(t < 0.9 for t, _l, _q in quick), quick                     # PASS OLD: none waited the 1 s
        assert all(lines == ["220-localhost ESMTP smtpfw", "220 localhost ESMTP smtpfw"] for _t, lines, _q in quick)
        workers = set(re.findall(r"smtpfw\.session\[(\d+)\]", srv.text))
        assert len(workers) == 2, workers                                      # both workers took sessions
        time.sleep(max(0.0, first_pass + 6.2 - time.monotonic()))
        took, _lines, _ = greeting(srv.address)
        assert took >= 1.0                                                      # expired: tested again


def test_a_pregreeter_is_not_remembered(tmp_path):
    with running_server(rules_text=RULES, smtp_greet_wait=0.5) as srv:
        took, lines, reply = greeting(srv.address, talk_early=b"EHLO bot.example\r\n")
        assert reply.startswith("550 5.7.1 Talked before its turn")
        took, lines, _ = greeting(srv.address)
        assert took >= 0.5                                                      # tested again, and passes
        took, lines, _ = greeting(srv.address)
        assert took < 0.4                                                       # now it is remembered


def test_under_stress_the_wait_is_shorter(tmp_path):
    with running_server(rules_text=RULES, smtp_greet_wait=2.0, smtp_stress_greet_wait=0.2, smtp_greet_pass_ttl=0,
                        max_connections=4, stress_threshold=0.5) as srv:
        took, _lines, _ = greeting(srv.address)
        assert took >= 2.0                                                      # no stress: the whole wait
        held = [RawClient(srv.address, timeout=10) for _ in range(2)]          # 2 of 4 slots: under stress
        try:
            wait_until(lambda: srv.call(lambda: srv.server.connections) >= 2, 5, "held connections")
            took, _lines, _ = greeting(srv.address)
            assert 0.2 <= took < 1.0, took
        finally:
            for c in held:
                c.close()


STUTTER_RULES = """
on connect:
    [stutter] stutter 3s if client.ip = "127.0.0.67"
on rcpt:
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""


def test_a_stuttered_client_gets_a_byte_a_second_then_whole_replies():
    with running_server(rules_text=STUTTER_RULES) as srv:
        with RawClient(srv.address, timeout=30, source="127.0.0.67") as c:
            started = time.monotonic()
            first = c.sock.recv(100)
            assert first == b"2"                                        # one byte, then a pause
            assert c.line() == "20 mx.test ESMTP smtpfw"                # the rest once the 3 s are over
            took = time.monotonic() - started
            assert 2.5 <= took < 6, took
            started = time.monotonic()
            assert c.cmd("EHLO bot.example").startswith("250 ")        # no longer stuttered
            assert time.monotonic() - started < 1
        took, _lines, _ = greeting(srv.address)                          # another client: at once
        assert took < 1


def test_monitor_mode_only_reports_a_stutter(tmp_path):
    rules = "option mode = \"monitor\"\n" + STUTTER_RULES
    with running_server(rules_text=rules) as srv:
        with RawClient(srv.address, timeout=30, source="127.0.0.67") as c:
            started = time.monotonic()
            assert c.line() == "220 mx.test ESMTP smtpfw"
            assert time.monotonic() - started < 1


def test_the_pass_cache_remembers_locally_and_fails_open(tmp_path):
    import asyncio

    from smtpfw.state import open_store
    from smtpfw.state.passes import PassCache

    async def main():
        store = open_store(str(tmp_path / "state.db"), timeout=1.0)
        now = [1000.0]
        one = PassCache(store, 60, clock=lambda: now[0])
        other = PassCache(store, 60, clock=lambda: now[0])          # another worker, same store
        assert not await one.passed("192.0.2.1")
        await one.remember("192.0.2.1")
        reads = one.store_reads
        assert await one.passed("192.0.2.1") and one.store_reads == reads      # from memory: no store read
        now[0] += 30
        assert await other.passed("192.0.2.1")                                # from the store ...
        assert await other.passed("192.0.2.1") and other.store_reads == 1     # ... then from memory
        now[0] += 31                                                           # 61 s after the pass
        assert not await one.passed("192.0.2.1") and not await other.passed("192.0.2.1")
        await store.close()
        closed = PassCache(store, 60, clock=lambda: now[0], fail_open=False)
        opened = PassCache(store, 60, clock=lambda: now[0])
        # a store that cannot answer: state.fail decides
        assert await opened.passed("192.0.2.9") is True
        assert await closed.passed("192.0.2.9") is False
    asyncio.run(main())


def test_a_new_pass_can_be_told_to_come_back_and_a_listener_can_skip_the_test(tmp_path):
    """postscreen's PASS NEW: the client that just passed is deferred at RCPT
    (a rule on client.pass_new); when it comes back it is PASS OLD and goes
    through.  A listener with greet_wait 0 (a submission port) never tests."""
    from smtpfw.config import Listener
    rules = ('on rcpt:\n    [pass-new] tempfail 450 4.3.2 "Service currently unavailable" if client.pass_new\n'
             '    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')

    def rcpt(address) -> tuple[float, str]:
        started = time.monotonic()
        with RawClient(address, timeout=10) as c:
            c.reply()
            waited = time.monotonic() - started
            c.cmd("EHLO mx.example.org")
            c.cmd("MAIL FROM:<a@example.org>")
            return waited, c.cmd("RCPT TO:<root@localhost>")

    with running_server(rules_text=rules, smtp_greet_wait=0.5) as srv:
        waited, reply = rcpt(srv.address)
        assert waited >= 0.5 and reply == "450 4.3.2 Service currently unavailable"
        waited, reply = rcpt(srv.address)
        assert waited < 0.4 and reply == "250 2.1.5 Recipient OK"
    with running_server(rules_text=rules, smtp_greet_wait=2.0,
                        listen=(Listener("127.0.0.1", 0, "submission", greet_wait=0.0),)) as srv:
        waited, reply = rcpt(srv.address)
        assert waited < 1.0 and reply == "250 2.1.5 Recipient OK"


def test_postfix_smtp_client_is_never_flagged(tmp_path):
    """Debian's Postfix relays two messages (several recipients, so it
    pipelines) through smtpfw with the pregreet test on: its smtp client
    waits for the whole greeting and pipelines only where allowed."""
    import pytest

    from tests.support.postfix import PostfixInstance, postfix_available
    why = postfix_available()
    if why:
        pytest.fail(why)
    rec = tmp_path / "rec"
    rules = ("on rcpt:\n    [local] accept if rcpt.domain = \"example.net\"\n"
             "    [relay] reject 554 5.7.1 \"Relaying denied\"\n")
    with running_server(rules_text=rules, smtp_greet_wait=0.5, recording_enabled=True,
                        recording_path=str(rec)) as srv:
        settings = {"relayhost": f"[127.0.0.1]:{srv.port}", "smtp_dns_support_level": "disabled",
                    "relay_domains": "example.net"}
        with PostfixInstance(settings) as pf:
            for n in range(2):
                with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
                    s.ehlo("client.example")
                    assert s.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"],
                                      f"Subject: {n}\r\n\r\nhello\r\n".encode()) == {}
            wait_until(lambda: len(records(rec)) >= 2, 60, f"two sessions from Postfix: {pf.log[-2000:]}")
    sessions = records(rec)
    rcpts = [e for r in sessions for e in r["events"] if e["cmd"] == "rcpt"]
    assert len(rcpts) == 4 and all(e["reply"].startswith("250") for e in rcpts), rcpts
    flags = [{k: v for k, v in (r.get("behaviour") or {}).items() if k not in ("pregreet_cached", "pass_new")}
             for r in sessions]
    assert flags == [{}] * len(sessions), flags
    assert all(e.get("decision", {}).get("outcome") != "reject" for r in sessions for e in r["events"])
