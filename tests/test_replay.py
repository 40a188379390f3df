"""Replay semantics (smtpfw.replay.session) and the dry-run command.

Records are built by hand here; tests/test_replay_roundtrip.py records
them with the real server.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.plugins import Plugin, PluginResult
from smtpfw.recording import FORMAT_VERSION
from smtpfw.replay import dryrun
from smtpfw.replay.build import make_record
from smtpfw.replay.session import (Replayer, recorded_events, replay_record, same_as_recorded,
                                   verdict_of)
from tests.support.cli import run as smtpfw

RULES = """
zone bl = dnsbl "bl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed" if client.ip listed in bl
    [dns-down] tempfail 451 4.7.1 "dns down" if client.ip lookup failed in bl
on helo:
    [badhelo] reject 550 5.7.1 "bad helo" if helo = "bad.example"
on mail:
    [badsender] reject 550 5.7.1 "bad sender" if sender = "bad@example.org"
on rcpt:
    [bye] disconnect 421 4.7.0 "bye" if rcpt = "bye@example.net"
    [third] reject 550 if rcpt.count >= 2
    [relay] reject 554 5.7.1 "relay" if rcpt.domain != "example.net"
on data:
    [big] reject 552 5.3.4 "too big" if message.size > 100000
    [subject] reject 550 5.7.1 "subject" if header.subject = "spam"
"""
CLEAR = {"lookup": {"kind": "dnsbl", "name": "192.0.2.1", "zone": "bl.test"}, "answer": {"status": "clear"}}


def ruleset(text: str = RULES, name: str = "t.rules"):
    rs, diags = compile_ruleset(name, text=text)
    assert rs is not None, diags
    return rs


def rec(*events, ip="192.0.2.1", dns=(CLEAR,)) -> dict:
    r = make_record(ip=ip)
    r["events"] = list(events)
    r["dns"] = list(dns)
    return r


def ehlo(name="mx.example.org"):
    return {"cmd": "ehlo", "arg": name}


def mail(addr="alice@example.org"):
    return {"cmd": "mail", "addr": addr, "params": {}}


def rcpt(addr="bob@example.net"):
    return {"cmd": "rcpt", "addr": addr}


def data(size=1000, **headers):
    return {"cmd": "data", "size": size, "headers": headers}


def summary(result):
    return [(e.cmd, e.reached, e.decision.outcome.value if e.decision else None, e.reply[:3]) for e in result.events]


def test_accepted_session_replies_and_verdict():
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt(), data()))
    assert r.verdict.kind == "accepted"
    assert [e.reply[:3] for e in r.events] == ["250", "250", "250", "250"]
    assert r.connect.reply.startswith("220 ")


def test_refused_connect_runs_nothing_else():
    listed = {"lookup": {"kind": "dnsbl", "name": "192.0.2.66", "zone": "bl.test"},
              "answer": {"status": "listed", "codes": ["127.0.0.2"]}}
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt(), data(), ip="192.0.2.66", dns=[listed]))
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule, r.verdict.code) == ("rejected", "connect", "dnsbl", 554)
    assert r.connect.reply == "554 5.7.1 listed"
    assert not any(e.reached for e in r.events)
    assert r.hits == ["dnsbl"]


def test_lookup_not_in_recording_counts_as_failed():
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt(), dns=()))
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule) == ("tempfailed", "connect", "dns-down")
    assert r.connect.reply == "421 4.7.1 dns down"       # a 4xx greeting is always 421, with the rule's text


def test_refused_helo_means_mail_is_not_reached_until_a_later_helo():
    r = replay_record(ruleset(), rec(ehlo("bad.example"), mail(), rcpt(), ehlo(), mail(), rcpt(), data()))
    assert summary(r) == [
        ("ehlo", True, "reject", "550"), ("mail", False, None, "503"), ("rcpt", False, None, "503"),
        ("ehlo", True, "continue", "250"), ("mail", True, "continue", "250"), ("rcpt", True, "continue", "250"),
        ("data", True, "continue", "250")]
    assert r.verdict.kind == "accepted"        # the first transaction that reached a recipient


def test_refused_helo_alone_is_the_verdict():
    r = replay_record(ruleset(), rec(ehlo("bad.example"), mail(), rcpt()))
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule) == ("rejected", "helo", "badhelo")


def test_refused_mail_makes_its_rcpt_and_data_not_reached():
    r = replay_record(ruleset(), rec(ehlo(), mail("bad@example.org"), rcpt(), data(), {"cmd": "rset"},
                                     mail(), rcpt(), data()))
    assert summary(r) == [
        ("ehlo", True, "continue", "250"), ("mail", True, "reject", "550"), ("rcpt", False, None, "503"),
        ("data", False, None, "503"), ("rset", True, None, "250"), ("mail", True, "continue", "250"),
        ("rcpt", True, "continue", "250"), ("data", True, "continue", "250")]
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule) == ("rejected", "mail", "badsender")


def test_nested_mail_is_not_reached():
    r = replay_record(ruleset(), rec(ehlo(), mail(), mail("other@example.org"), rcpt(), data()))
    assert summary(r)[2] == ("mail", False, None, "503")
    assert r.verdict.kind == "accepted"


def test_refused_rcpts_are_not_counted_and_data_needs_one_accepted():
    # [third] refuses once two recipients were accepted: refused ones do not count
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt("x@elsewhere.example"), rcpt(), rcpt("c@example.net"),
                                     rcpt("d@example.net"), data()))
    assert [(e.cmd, e.decision.outcome.value if e.decision else None) for e in r.events] == [
        ("ehlo", "continue"), ("mail", "continue"), ("rcpt", "reject"), ("rcpt", "continue"),
        ("rcpt", "continue"), ("rcpt", "reject"), ("data", "continue")]
    assert r.events[5].reply == "550 5.7.1 Recipient rejected"      # defaults filled in by replies
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt("x@elsewhere.example"), data()))
    assert summary(r)[-1] == ("data", False, None, "554")             # no valid recipients
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule, r.verdict.code) == ("rejected", "rcpt", "relay", 554)


def test_disconnect_ends_the_session():
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt("bye@example.net"), rcpt(), data()))
    assert summary(r)[2:] == [("rcpt", True, "disconnect", "421"), ("rcpt", False, None, ""),
                              ("data", False, None, "")]
    assert r.events[3].note == "connection closed after RCPT"
    assert (r.verdict.kind, r.verdict.rule) == ("disconnected", "bye")


def test_data_sees_size_and_recorded_headers_and_resets_the_transaction():
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt(), data(size=200000), rcpt()))
    assert (r.verdict.kind, r.verdict.stage, r.verdict.rule, r.verdict.code) == ("rejected", "data", "big", 552)
    assert summary(r)[-1] == ("rcpt", False, None, "503")         # after DATA the envelope starts over
    r = replay_record(ruleset(), rec(ehlo(), mail(), rcpt(), data(subject="spam")))
    assert r.verdict.rule == "subject"


def test_max_recipients():
    events = [ehlo(), mail()] + [rcpt()] * 3
    r = replay_record(ruleset("on rcpt:\n    accept\n"), rec(*events), max_recipients=2)
    assert [e.reached for e in r.events[2:]] == [True, True, False]
    assert r.events[4].reply.startswith("452 4.5.3 ")


def test_no_mail_verdict():
    assert replay_record(ruleset(), rec(ehlo())).verdict.kind == "no-mail"
    assert replay_record(ruleset(), rec(ehlo(), mail())).verdict.kind == "no-mail"


def test_delay_reject_holds_refusals_until_rcpt():
    text = "option delay_reject = yes\n" + RULES
    r = replay_record(ruleset(text), rec(ehlo("bad.example"), mail("bad@example.org"), rcpt(), rcpt()))
    assert [e.reply for e in r.events[2:]] == ["550 5.7.1 bad helo"] * 2     # the held refusal is badhelo's
    assert [e.reply[:3] for e in r.events[:2]] == ["250", "250"]
    assert "held from helo" in r.events[2].note
    assert (r.verdict.stage, r.verdict.rule) == ("rcpt", "badhelo")


def test_tls_and_auth_come_from_the_record_and_starttls_events():
    text = "on mail:\n    [plain] reject if not tls\n"
    r = rec(ehlo(), mail(), rcpt())
    assert replay_record(ruleset(text), r).verdict.rule == "plain"
    r["tls"] = True
    assert replay_record(ruleset(text), r).verdict.kind == "accepted"
    # with a starttls event, TLS starts there: the first EHLO is in clear
    text = "on helo:\n    [plain-helo] tag clear if not tls\non mail:\n    [was-clear] reject if tagged clear\n"
    r = rec(ehlo(), {"cmd": "starttls"}, ehlo(), mail(), rcpt())
    r["tls"] = True
    result = replay_record(ruleset(text), r)
    assert result.hits == ["plain-helo", "was-clear"]


class SeeMessage(Plugin):
    """Says whether it was given the message (replay gives none)."""

    fields = {"got": "string"}

    async def run(self, stage, state, message):
        return PluginResult(fields={"got": "none" if message is None else "bytes"})


def test_plugins_get_no_message_in_replay():
    text = ('plugin probe = "tests.test_replay:SeeMessage"\n'
            'on data:\n    run probe\n    [nomsg] reject 550 "no body" if probe.got = "none"\n')
    rs = ruleset(text)
    with Replayer(rs) as replayer:                # plugins: one event loop for the batch
        for _ in range(3):
            r = replayer.replay(rec(ehlo(), mail(), rcpt(), data()))
            assert (r.verdict.stage, r.verdict.rule) == ("data", "nomsg")


def test_recorded_verdict_uses_recorded_decisions():
    r = rec(ehlo(), mail(), rcpt())
    r["events"][2]["decision"] = {"outcome": "reject", "code": 554, "enhanced": "5.7.1", "text": "x", "rule": "old"}
    connect, events = recorded_events(r)
    v = verdict_of(connect, events)
    assert (v.kind, v.stage, v.rule, v.code) == ("rejected", "rcpt", "old", 554)


# ---- the fast comparison against the recording agrees with the full one ----------

_CMDS = st.sampled_from(["ehlo", "mail", "rcpt", "data", "rset"])
_DECISIONS = st.sampled_from([
    None,
    {"outcome": "continue", "code": None, "enhanced": None, "text": None, "rule": None},
    {"outcome": "accept", "code": None, "enhanced": None, "text": None, "rule": "ok"},
    {"outcome": "reject", "code": 554, "enhanced": "5.7.1", "text": "relay", "rule": "relay"},
    {"outcome": "reject", "code": None, "enhanced": None, "text": None, "rule": "badhelo"},
    {"outcome": "tempfail", "code": 451, "enhanced": "4.7.1", "text": "t", "rule": "dns-down"},
    {"outcome": "disconnect", "code": 421, "enhanced": "4.7.0", "text": "bye", "rule": "bye"},
])
_ARGS = {"ehlo": st.sampled_from(["mx.example.org", "bad.example"]),
         "mail": st.sampled_from(["alice@example.org", "bad@example.org"]),
         "rcpt": st.sampled_from(["bob@example.net", "x@elsewhere.example", "bye@example.net"])}


@st.composite
def recorded_sessions(draw):
    events = []
    for cmd in draw(st.lists(_CMDS, max_size=8)):
        ev = {"cmd": cmd}
        if cmd == "ehlo":
            ev["arg"] = draw(_ARGS["ehlo"])
        elif cmd == "mail":
            ev["addr"], ev["params"] = draw(_ARGS["mail"]), {}
        elif cmd == "rcpt":
            ev["addr"] = draw(_ARGS["rcpt"])
        elif cmd == "data":
            ev["size"], ev["headers"] = 10, {}
            q = draw(_DECISIONS)
            if q is not None:
                ev["queue"] = q
        if cmd != "rset":
            d = draw(_DECISIONS)
            if d is not None:
                ev["decision"] = d
        events.append(ev)
    r = rec(*events)
    r["connect"] = {"decision": draw(_DECISIONS)}
    return r


@settings(max_examples=300, deadline=None)
@given(recorded_sessions())
def test_fast_comparison_agrees_with_the_full_one(record):
    result = replay_record(ruleset(), record)
    connect, events = recorded_events(record)
    full = (connect.key() == result.connect.key()
            and all(b.key() == n.key() for b, n in zip(events, result.events)))
    assert same_as_recorded(record, result) == full
    if full:
        assert verdict_of(connect, events).key() == result.verdict.key()


# ---- dry-run ---------------------------------------------------------------------


def write_jsonl(path: Path, records) -> Path:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def sample_records(n=30):
    out = []
    for i in range(n):
        sender = "bad@example.org" if i % 5 == 0 else "alice@example.org"
        r = rec(ehlo(), mail(sender), rcpt("bob@example.net" if i % 3 else "x@elsewhere.example"), data())
        r["id"] = f"s{i}"
        out.append(r)
    return out


def test_dry_run_reads_folders_gz_and_stdin(tmp_path):
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    records = sample_records()
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:10])
    write_jsonl(tmp_path / "in" / "b.jsonl.gz", records[10:20])
    write_jsonl(tmp_path / "in" / "sessions-20240101-1.jsonl.1700000000000", records[20:])
    (tmp_path / "in" / "notes.txt").write_text("not a session file\n")
    run = smtpfw("dry-run", "--rules", rules, "--format", "json", tmp_path / "in")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["sessions"] == 30 and len(report["files"]) == 3
    assert report["baseline"] == {"kind": "recorded"}
    assert report["hooks"]["connect"] == {"continue": 30}
    # the records carry no decisions (all "continue"): refusals show up as changes
    assert report["verdicts"] == {"accepted": 16, "rejected": 14, "tempfailed": 0, "disconnected": 0, "no-mail": 0}
    assert report["changes"]["newly_rejected"]["count"] == 14
    groups = {g["rule"]: g["count"] for g in report["changes"]["newly_rejected"]["groups"]}
    assert groups == {"badsender": 6, "relay": 8}
    assert report["never_fired"] == ["dnsbl", "dns-down", "badhelo", "bye", "third", "big", "subject"]
    stdin = "".join(json.dumps(r) + "\n" for r in records)
    run2 = smtpfw("dry-run", "--rules", rules, "--format", "json", "-", stdin=stdin)
    assert json.loads(run2.stdout)["verdicts"] == report["verdicts"]


def test_dry_run_same_report_with_worker_processes(tmp_path):
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    path = write_jsonl(tmp_path / "s.jsonl", sample_records(200))
    one = smtpfw("dry-run", "--rules", rules, "--jobs", "1", "--examples", "2", path)
    two = smtpfw("dry-run", "--rules", rules, "--jobs", "2", "--examples", "2", path)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert one.stdout == two.stdout


def test_chunked_replay_merges_to_the_sequential_report(tmp_path):
    rs = ruleset()
    path = write_jsonl(tmp_path / "s.jsonl", sample_records(97))
    seq = dryrun.DryRun(rs, "t.rules", examples=3)
    for _n, r in dryrun.iter_records(str(path)):
        seq.add(r)
    expected = seq.finish().to_json()
    merged = dryrun.Report("t.rules", rs.version, None, None, rule_ids=list(dict.fromkeys(r.rule_id for r in rs.rules)))
    chunks = dryrun.plan_chunks([str(path)], chunk_bytes=1000)
    assert len(chunks) > 10
    for p, start, end in chunks:
        part = dryrun.DryRun(rs, "t.rules", examples=3)
        for _off, r in dryrun._iter_range(p, start, end):
            part.add(r)
        dryrun.merge(merged, part.finish(), 3)
    got = merged.to_json()
    for key in ("sessions", "verdicts", "hooks", "rule_hits", "changes", "never_fired"):
        assert got[key] == expected[key], key


def test_dry_run_against_a_baseline_ruleset(tmp_path):
    a = tmp_path / "a.rules"
    a.write_text(RULES)
    b = tmp_path / "b.rules"
    b.write_text(RULES.replace('if sender = "bad@example.org"', 'if sender = "nobody@example.org"'))
    path = write_jsonl(tmp_path / "s.jsonl", sample_records())
    run = smtpfw("dry-run", "--rules", b, "--baseline", a, "--format", "json", "--fail-on-change", path)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["baseline"]["kind"] == "ruleset"
    # sessions 0, 5, 10, ... were refused at MAIL; now those with a local recipient get through
    accepted = report["changes"]["newly_accepted"]
    assert accepted["count"] == 4 and accepted["groups"][0]["rule"] == "badsender"
    changed = report["changes"]["changed"]        # 0, 15: refused at RCPT by relay instead
    assert changed["count"] == 2


def test_dry_run_errors_exit_2(tmp_path):
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    good = json.dumps(rec(ehlo()))
    cases = {
        "missing.jsonl": None,
        "notjson.jsonl": good + "\n{not json\n",
        "newer.jsonl": json.dumps({**rec(ehlo()), "v": FORMAT_VERSION + 1}) + "\n",
        "noclient.jsonl": json.dumps({"v": 1, "events": []}) + "\n",
        "badevents.jsonl": good + "\n" + json.dumps({**rec(), "events": "nope"}) + "\n",
    }
    messages = {}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        run = smtpfw("dry-run", "--rules", rules, path)
        assert run.returncode == 2, (name, run.stdout)
        assert run.stdout == ""
        assert "Traceback" not in run.stderr
        messages[name] = run.stderr
    assert "missing.jsonl: no such file or folder" in messages["missing.jsonl"]
    assert "notjson.jsonl:2: not JSON" in messages["notjson.jsonl"]
    assert f"format version {FORMAT_VERSION + 1}" in messages["newer.jsonl"] and "upgrade smtpfw" in messages["newer.jsonl"]
    assert "noclient.jsonl:1: record has no 'client'" in messages["noclient.jsonl"]
    assert "badevents.jsonl:2: cannot replay this session" in messages["badevents.jsonl"]
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(b"this is not gzip")
    run = smtpfw("dry-run", "--rules", rules, bad_gz)
    assert run.returncode == 2 and "bad.jsonl.gz" in run.stderr and "Traceback" not in run.stderr
    run = smtpfw("dry-run", "--rules", tmp_path / "nope.rules", tmp_path / "notjson.jsonl")
    assert run.returncode == 2
    (tmp_path / "empty").mkdir()
    run = smtpfw("dry-run", "--rules", rules, tmp_path / "empty")
    assert run.returncode == 2 and "no session files" in run.stderr


def test_worker_errors_name_the_line(tmp_path):
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    lines = [json.dumps(r) for r in sample_records(5)]
    lines.insert(3, "{oops")
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run = smtpfw("dry-run", "--rules", rules, "--jobs", "2", path)
    assert run.returncode == 2
    assert f"{path}:4: not JSON" in run.stderr


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal():
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        p = dryrun.Progress(stream, 2)
        p.update(5000, 1, force=True)
        p.done()
    assert "5,000 sessions" in tty.getvalue() and "file 1/2" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_dry_run_live_dns_asks_the_dns_server_again(tmp_path, shared_dns):
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    listed = rec(ehlo(), mail(), rcpt(), data(), ip="192.0.2.66", dns=())     # nothing recorded
    listed["id"] = "listed"
    path = write_jsonl(tmp_path / "s.jsonl", [listed])
    offline = json.loads(smtpfw("dry-run", "--rules", rules, "--format", "json", path).stdout)
    assert offline["verdicts"]["tempfailed"] == 1                  # not in the recording: failed
    host, port = shared_dns.address
    run = smtpfw("dry-run", "--rules", rules, "--format", "json", "--dns", f"{host}:{port}", path)
    assert run.returncode == 0, run.stderr
    live = json.loads(run.stdout)
    assert live["verdicts"]["rejected"] == 1 and live["rule_hits"]["dnsbl"] == 1
