"""Build a session record (format v1) from a description of what a client
sends: for `smtpfw trace` flags and `smtpfw test` lines."""

from __future__ import annotations

import time

from smtpfw import facts
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind, failed
from smtpfw.checks.tableresult import NOT_FOUND
from smtpfw.recording import FORMAT_VERSION

DEFAULT_CLIENT_IP = "192.0.2.1"
DEFAULT_SIZE = 1000


def make_record(*, ip: str = DEFAULT_CLIENT_IP, client_port: int = 0, listener_port: int = 25,
                helo: str | None = None, esmtp: bool = True, tls: bool = False, auth_user: str | None = None,
                sender: str | None = None, rcpts: list[str] = (), headers: list[tuple[str, str]] = (),
                size: int | None = None, data: bool = True, session_id: str = "trace",
                dns: dict[Lookup, DnsAnswer] | None = None, unrecognized: int = 0,
                started: float | None = None) -> dict:
    events: list[dict] = [{"cmd": "unrecognized"} for _ in range(unrecognized)]
    if helo is not None:
        events.append({"cmd": "ehlo" if esmtp else "helo", "arg": helo})
    if sender is not None:
        events.append({"cmd": "mail", "addr": sender, "params": {}})
        for rcpt in rcpts:
            events.append({"cmd": "rcpt", "addr": rcpt})
        if rcpts and data:
            first: dict[str, str] = {}
            for name, value in headers:
                first.setdefault(name.strip().lower(), value.strip())
            events.append({"cmd": "data", "size": DEFAULT_SIZE if size is None else size, "headers": first})
    return {
        "v": FORMAT_VERSION, "id": session_id, "time": round(time.time() if started is None else started, 3),
        "duration": 0.0,
        "ruleset": "", "listener": {"address": "", "port": listener_port, "name": ""},
        "client": {"ip": ip, "port": client_port}, "tls": tls, "auth": auth_user is not None,
        "auth_user": auth_user or "", "connect": {}, "events": events,
        "facts": facts.encode(dns or {}),
        "tags": [], "monitored": [], "final_reply": "",
    }


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or " " in name.strip():
        raise ValueError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def null_sender(text: str) -> str:
    """"<>" and "" are the null sender; <addr> loses its brackets."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


# Answers for lookups a test does not declare: the DNS of a test is empty.
UNDECLARED = {
    LookupKind.DNSBL: DnsAnswer("clear"),
    LookupKind.RHSBL: DnsAnswer("clear"),
    LookupKind.PTR: DnsAnswer("none"),
    LookupKind.RESOLVABLE: DnsAnswer("no"),
    LookupKind.ADDRESSES: DnsAnswer("none"),
}


class DeclaredDns:
    """DNS and map answers given up front (a ruleset test's `dns` and `map`
    lines); a lookup not declared gets ``UNDECLARED`` for its kind, a map
    key not declared has no entry.  Never waits."""

    synchronous = True
    providers = ("dns", "map")

    def __init__(self, answers: dict[Lookup, DnsAnswer], defaults: dict | None = UNDECLARED):
        self.answers = answers
        self.defaults = defaults

    def start(self, lookups) -> None:
        pass

    async def results(self, lookups) -> dict[Lookup, DnsAnswer]:
        out = {}
        for lk in lookups:
            a = self.answers.get(lk)
            if a is None:
                if lk.provider == "map":
                    a = NOT_FOUND
                else:
                    a = self.defaults[lk.kind] if self.defaults is not None else failed("no DNS")
            out[lk] = a
        return out


class NoDns(DeclaredDns):
    """`trace --no-dns`: every lookup fails."""

    providers = ("dns",)

    def __init__(self):
        super().__init__({}, None)

    async def results(self, lookups) -> dict[Lookup, DnsAnswer]:
        return {lk: failed("no DNS (--no-dns)") for lk in lookups}
