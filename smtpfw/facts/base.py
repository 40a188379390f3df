"""Fact providers, the live router and the recorded source."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from smtpfw.checks import content
from smtpfw.checks.callout import Callout, CalloutAnswer, unknown
from smtpfw.checks.mime import unavailable as mime_unavailable
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, failed
from smtpfw.checks.tableresult import TableAnswer, TableQuery, unavailable as table_unavailable
from smtpfw.state import facts as state_facts


class FactMissing(Exception):
    """A rule reached a lazy fact not asked for yet: the engine pauses
    there (``NeedFacts``) and Policy asks for it."""

    def __init__(self, key: Any):
        super().__init__(key)
        self.key = key


class LookupFailed(Exception):
    """A rule needs the answer of a store that could not give one (a
    database map whose `fail` is tempfail): the engine answers the hook
    with Postfix's 451 4.3.0 "Temporary lookup failure"."""

    def __init__(self, key: Any, reason: str):
        super().__init__(key, reason)
        self.key, self.reason = key, reason

    def __str__(self) -> str:
        return f"lookup failed: {self.reason}"


class FactSource(Protocol):
    """Where ``Policy`` gets facts: ``start`` begins gathering keys early
    (their input is known), ``results`` waits for them (budgets apply).
    A source may also have ``at_hand(keys) -> dict | None`` (the answers,
    if they have come: the SMTP front end then decides a hook at once, not
    in a task)."""

    def start(self, keys: Iterable[Any]) -> None: ...

    async def results(self, keys: Iterable[Any]) -> dict: ...


@dataclass(frozen=True, slots=True)
class Provider:
    """What smtpfw knows about one kind of fact without asking for it:
    how its keys and values are recorded, and what a rule sees when the
    fact could not be had (the provider's failed value)."""

    name: str
    key_from_json: Callable[[dict], Any]
    value_from_json: Callable[[dict], Any]
    unavailable: Callable[[str], Any]


PROVIDERS: dict[str, Provider] = {
    "dns": Provider("dns", Lookup.from_json, DnsAnswer.from_json, failed),
    "callout": Provider("callout", Callout.from_json, CalloutAnswer.from_json, unknown),
    "map": Provider("map", TableQuery.from_json, TableAnswer.from_json, table_unavailable),
    "spf": Provider("spf", content.SpfQuery.from_json, content.SpfResult.from_json, content.spf_unavailable),
    "dkim": Provider("dkim", content.MessageQuery.from_json, content.DkimVerdict.from_json, content.dkim_unavailable),
    "dmarc": Provider("dmarc", content.DmarcQuery.from_json, content.DmarcResult.from_json, content.dmarc_unavailable),
    "mime": Provider("mime", content.MessageQuery.from_json, content.MimeSummary.from_json, mime_unavailable),
    "scan": Provider("scan", content.MessageQuery.from_json, content.ScanResult.from_json, content.scan_unavailable),
    "state": Provider("state", state_facts.key_from_json, state_facts.value_from_json, state_facts.unavailable),
}
# Facts that count or write when asked (rate limits, greylisting): asked
# only when a rule reaches them, and given back when their hook refuses.
LAZY_PROVIDERS = frozenset({"state"})


def provider_of(key) -> Provider:
    return PROVIDERS[key.provider]


class Facts:
    """The source of one session's facts: one source per provider (a
    ``DnsSession`` for "dns"), each key sent to its own, providers waited
    for concurrently; keys of a provider without a source of its own go to
    ``default`` (replay with live DNS: every other fact from the record)."""

    def __init__(self, sources: dict[str, FactSource], default: FactSource | None = None):
        self.sources = sources
        self.default = default

    def _source(self, provider: str) -> FactSource:
        source = self.sources.get(provider) or self.default
        if source is None:
            raise KeyError(f"no source for {provider!r} facts")
        return source

    def start(self, keys) -> None:
        for name, group in _by_provider(keys).items():
            self._source(name).start(group)

    def at_hand(self, keys) -> dict | None:
        """What ``results(keys)`` would answer, if it would not wait; else
        None (as from a source that cannot tell)."""
        out: dict = {}
        for name, group in _by_provider(keys).items():
            at_hand = getattr(self.sources.get(name) or self.default, "at_hand", None)
            got = at_hand(group) if at_hand is not None else None
            if got is None:
                return None
            out.update(got)
        return out

    async def results(self, keys) -> dict:
        groups = _by_provider(keys)
        if len(groups) == 1:
            ((name, group),) = groups.items()
            return await self._source(name).results(group)
        out: dict = {}
        sources = [(self._source(n), g) for n, g in groups.items()]
        if all(getattr(source, "synchronous", False) for source, _ in sources):
            # answers at hand (a recording, declared test answers): no event
            # loop, so a replay can drive the coroutine by hand
            for source, group in sources:
                out.update(await source.results(group))
            return out
        for part in await asyncio.gather(*(source.results(group) for source, group in sources)):
            out.update(part)
        return out

    async def commit(self, effects) -> None:
        """The state writes rules decided (`count NAME`)."""
        source = self.sources.get("state")
        if source is not None:
            await source.commit(effects)     # type: ignore[attr-defined]

    async def refund(self, keys, answers: dict) -> None:
        """Give back what ``keys`` counted (their hook refused)."""
        for name, group in _by_provider(keys).items():
            source = self.sources.get(name)
            refund = getattr(source, "refund", None)
            if refund is not None:
                await refund(group, answers)

    def close(self) -> None:
        for source in self.sources.values():
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _by_provider(keys) -> dict[str, list]:
    groups: dict[str, list] = {}
    for key in keys:
        groups.setdefault(key.provider, []).append(key)
    return groups


class RecordedFacts:
    """Facts from a recording; a fact not recorded is unavailable (its
    provider's failed value, "not in recording")."""

    synchronous = True

    def __init__(self, values: dict):
        self.values = values

    def start(self, keys) -> None:
        pass

    async def results(self, keys) -> dict:
        values = self.values
        return {k: values.get(k) or provider_of(k).unavailable("not in recording") for k in keys}


def encode(facts: dict) -> list[dict]:
    """A session's facts as the record's "facts" list."""
    return [{"provider": k.provider, "key": k.to_json(), "value": v.to_json()} for k, v in facts.items()]


def decode(record: dict) -> dict:
    """A record's facts, as {key: value}: its "dns" list (format 1) and its
    "facts" list (format 2)."""
    out = {Lookup.from_json(d["lookup"]): DnsAnswer.from_json(d["answer"]) for d in record.get("dns") or ()}
    for item in record.get("facts") or ():
        provider = PROVIDERS[item["provider"]]
        out[provider.key_from_json(item["key"])] = provider.value_from_json(item["value"])
    return out
