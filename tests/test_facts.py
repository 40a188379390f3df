"""The facts pipeline: one key space for everything rules read besides the
conversation, recorded under one key, replayed from it; records of format 1
(DNS answers under "dns") still replay the same."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import pytest

from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.facts import PROVIDERS, Facts, Provider, RecordedFacts, decode, encode
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import FORMAT_VERSION, read_records
from smtpfw.replay.session import recorded_facts, replay_record, same_as_recorded
from tests.support.cli import wait_until
from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED, running_server

RULES = """
zone bl  = dnsbl "bl.test"
zone dbl = rhsbl "dbl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed" if client.ip listed in bl
on mail:
    [rhsbl] reject 550 5.7.1 "domain listed" if sender.domain listed in dbl
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def test_records_keep_every_fact_under_one_key_and_format_1_still_replays(tmp_path):
    import smtplib
    rec = tmp_path / "rec"
    with DnsServer([SHARED / "zones" / "bl.test", SHARED / "zones" / "dbl.test"]) as dns:
        with running_server(rules_text=RULES, dns=dns, recording_enabled=True, recording_path=str(rec)) as srv:
            for source, sender in (("127.0.0.1", "a@spam.example"), ("127.0.0.2", "a@b.example"),
                                   ("127.0.0.1", "a@b.example")):
                try:
                    with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
                        s.ehlo("client.example")
                        s.mail(sender)
                        s.rcpt("u@localhost")
                except smtplib.SMTPConnectError:
                    pass
            wait_until(lambda: sum(len(f.read_text().splitlines()) for f in rec.glob("*.jsonl")) == 3, 5,
                       "three records")
    ruleset, _ = compile_ruleset(str(srv.server.rules_path))
    records = [r for f in rec.glob("*.jsonl") for r in read_records(str(f))]
    assert {r["v"] for r in records} == {FORMAT_VERSION} == {2}
    for record in records:
        assert "dns" not in record and record["facts"]
        assert all(f["provider"] == "dns" for f in record["facts"])
        assert decode(record) == recorded_facts(record)
        assert same_as_recorded(record, replay_record(ruleset, record))
        # The same session written as format 1: same facts, same replay.
        v1 = {k: v for k, v in record.items() if k != "facts"}
        v1.update(v=1, dns=[{"lookup": f["key"], "answer": f["value"]} for f in record["facts"]])
        assert decode(v1) == decode(record)
        assert replay_record(ruleset, v1).verdict == replay_record(ruleset, record).verdict


def test_a_fact_missing_from_a_recording_is_its_providers_unavailable_value():
    lk = Lookup(LookupKind.DNSBL, "192.0.2.1", "bl.test")
    got = asyncio.run(RecordedFacts({}).results([lk]))
    assert got[lk].failed and got[lk].error == "not in recording"


@dataclass(frozen=True, slots=True)
class SlowKey:
    """A second kind of fact, to show that the router keeps providers apart
    and waits for them together."""

    provider: ClassVar[str] = "slow"
    name: str

    def to_json(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True, slots=True)
class SlowValue:
    text: str

    def to_json(self) -> dict:
        return {"text": self.text}


LOG: list[str] = []


class SlowSource:
    def __init__(self):
        self.started: list = []

    def start(self, keys) -> None:
        self.started += list(keys)

    async def results(self, keys) -> dict:
        LOG.append("slow waits")
        await asyncio.sleep(0.05)
        LOG.append("slow answers")
        return {k: SlowValue(k.name.upper()) for k in keys}


class SlowDns(RecordedFacts):
    async def results(self, keys) -> dict:
        LOG.append("dns waits")
        await asyncio.sleep(0.05)
        LOG.append("dns answers")
        return await super().results(keys)


@pytest.fixture
def slow_provider():
    PROVIDERS["slow"] = Provider("slow", lambda d: SlowKey(d["name"]), lambda d: SlowValue(d["text"]),
                                 lambda error: SlowValue(f"unavailable: {error}"))
    yield
    del PROVIDERS["slow"]


def test_facts_of_two_providers_are_gathered_together_and_recorded_alike(slow_provider):
    lk = Lookup(LookupKind.RHSBL, "spam.example", "dbl.test")
    listed = DnsAnswer("listed", ("127.0.0.2",))
    slow = SlowSource()
    facts = Facts({"dns": SlowDns({lk: listed}), "slow": slow})
    facts.start([SlowKey("x")])
    assert slow.started == [SlowKey("x")]
    LOG.clear()
    got = asyncio.run(facts.results([lk, SlowKey("x")]))
    assert sorted(LOG[:2]) == ["dns waits", "slow waits"]     # both asked before either answered
    assert got == {lk: listed, SlowKey("x"): SlowValue("X")}
    record = {"facts": encode(got)}
    assert decode(record) == got
    assert asyncio.run(RecordedFacts({}).results([SlowKey("y")])) == {SlowKey("y"): SlowValue("unavailable: not in recording")}
