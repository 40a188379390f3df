"""Live DNS for replay (--live-dns, --dns): one caching resolver shared by
every replayed session, built from the config's DNS settings."""

from __future__ import annotations

from smtpfw.checks.dns import DnsSession, Resolver
from smtpfw.config import Config, _hostport


def make_resolver(cfg: Config, dns_arg: str | None) -> Resolver:
    """A resolver asking ``dns_arg`` (HOST:PORT), else the config's servers, else the system's."""
    servers = [_hostport(dns_arg, "--dns", 53)] if dns_arg else (list(cfg.dns_nameservers) or None)
    return Resolver(servers, timeout=cfg.dns_timeout, cache_size=cfg.dns_cache_size)


def dns_source_factory(cfg: Config, dns_arg: str | None):
    """record -> a live DnsSession (one shared caching Resolver)."""
    resolver = make_resolver(cfg, dns_arg)
    return lambda record: DnsSession(resolver, cfg.dns_session_budget)


def describe(cfg: Config, dns_arg: str | None) -> str:
    """The servers asked, in words."""
    if dns_arg:
        return dns_arg
    if cfg.dns_nameservers:
        return ", ".join(f"{h}:{p}" for h, p in cfg.dns_nameservers)
    return "the system resolver"
