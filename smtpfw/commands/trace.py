"""`smtpfw trace`: one session, step by step (like `exim -bh`), either
recorded (--session) or described by flags (--ip, --helo, --from, --rcpt)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable

from smtpfw.commands.errors import CommandError
from smtpfw.commands.rulesets import compile_or_raise
from smtpfw.recording import RecordError
from smtpfw.replay import livedns
from smtpfw.replay.build import DEFAULT_CLIENT_IP, NoDns, make_record, null_sender, parse_header
from smtpfw.replay.trace import TraceReport, load_session, trace_record
from smtpfw.settings import load_settings


@dataclass
class SessionSpec:
    """A session described by what the client sends (trace's flags)."""

    ip: str | None = None
    client_port: int = 0
    port: int = 25
    helo: str | None = None
    esmtp: bool = True
    tls: bool = False
    auth: str | None = None
    sender: str | None = None
    rcpts: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)    # "Name: value"
    size: int | None = None
    data: bool = True

    @property
    def given(self) -> bool:
        return bool(self.ip or self.helo or self.sender is not None or self.rcpts)

    def record(self) -> dict:
        """The session record, or CommandError for an impossible session."""
        if self.sender is not None and not self.helo:
            raise CommandError("--from needs --helo (a client says HELO/EHLO before MAIL)")
        if self.rcpts and self.sender is None:
            raise CommandError("--rcpt needs --from (MAIL comes before RCPT)")
        try:
            headers = [parse_header(h) for h in self.headers]
        except ValueError as e:
            raise CommandError(f"--header: {e}") from None
        ip = self.ip or DEFAULT_CLIENT_IP
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CommandError(f"--ip: {ip!r} is not an IP address") from None
        return make_record(ip=ip, client_port=self.client_port, listener_port=self.port, helo=self.helo,
                           esmtp=self.esmtp, tls=self.tls, auth_user=self.auth,
                           sender=null_sender(self.sender) if self.sender is not None else None,
                           rcpts=[null_sender(r) for r in self.rcpts], headers=headers, size=self.size,
                           data=self.data)


def trace(spec: SessionSpec, *, session: str | None = None, rules: str | None = None, config: str | None = None,
          dns: str | None = None, no_dns: bool = False, live_dns: bool = False) -> TraceReport:
    """Trace the recorded ``session`` (FILE[:N] or FOLDER:ID), or the one ``spec`` describes.
    DNS: recorded answers for a recorded session unless ``live_dns``/``dns``; none with ``no_dns``;
    else live from ``dns``, the config's servers or the system's."""
    cfg, rules = load_settings(config, rules)
    if session:
        if spec.given:
            raise CommandError("give either --session or --ip/--helo/--from/--rcpt, not both")
        try:
            record = load_session(session)
        except RecordError as e:
            raise CommandError(str(e)) from None
    else:
        record = spec.record()
    ruleset = compile_or_raise(rules)
    factory: Callable[[dict], object] | None = None
    synchronous: bool | None = None
    if session and not (live_dns or dns):
        desc = "recorded answers (a lookup not in the recording counts as failed)"
    elif no_dns:
        desc = "none (--no-dns: every lookup counts as failed)"
        factory, synchronous = (lambda rec: NoDns()), True
    else:
        desc = f"live, from {livedns.describe(cfg.dns, dns)}"
        factory, synchronous = livedns.dns_source_factory(cfg.dns, dns), False
    try:
        result = trace_record(ruleset, record, session or "the session", dns_factory=factory,
                              synchronous_dns=synchronous, hostname=cfg.hostname or socket.gethostname() or "smtpfw",
                              max_recipients=cfg.limits.max_recipients)
    except RecordError as e:
        raise CommandError(str(e)) from None
    return TraceReport(ruleset, rules, result, desc)
