"""Live DNS for replay (--live-dns, --dns): one caching resolver shared by
every replayed session, built from the config's dns section."""

from __future__ import annotations

from smtpfw.checks.dns import DnsSession, Resolver
from smtpfw.config import DnsSettings, _hostport


def make_resolver(dns: DnsSettings, dns_arg: str | None) -> Resolver:
    """A resolver asking ``dns_arg`` (HOST:PORT), else the configured servers, else the system's."""
    servers = [_hostport(dns_arg, "--dns", 53)] if dns_arg else (list(dns.nameservers) or None)
    return Resolver(servers, timeout=dns.timeout, cache_size=dns.cache_size)


def dns_source_factory(dns: DnsSettings, dns_arg: str | None):
    """record -> a live DnsSession (one shared caching Resolver)."""
    resolver = make_resolver(dns, dns_arg)
    return lambda record: DnsSession(resolver, dns.session_budget)


def describe(dns: DnsSettings, dns_arg: str | None) -> str:
    """The servers asked, in words."""
    if dns_arg:
        return dns_arg
    if dns.nameservers:
        return ", ".join(f"{h}:{p}" for h, p in dns.nameservers)
    return "the system resolver"
