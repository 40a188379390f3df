"""Prometheus metrics, for every worker at once (prometheus-client's
multiprocess mode: each process writes its counters to files in one
directory; the endpoint adds them up).  Off unless ``metrics.listen`` is
set; then the supervisor (or the one worker) serves
``http://HOST:PORT/metrics``.

What is counted, and where: sessions, decisions per hook and outcome, hits
and monitor-mode would-be refusals per rule id (bounded: a ruleset's ids),
when a session ends (``session_done``, one call per session); DNS lookups
per kind, zone and status and their latency (the resolver); deliveries and
their latency (the SMTP front end); sessions in flight; DNS list health per
zone.  Labels never carry a client, sender or recipient: those are
unbounded, and `smtpfw stats --recordings` counts them from the records.
"""

from __future__ import annotations

import os
from typing import Any

ENABLED = False
_m: dict[str, Any] = {}


def setup(directory: str) -> None:
    """Turn metrics on in this process (before any worker is forked):
    ``directory`` holds the per-process files."""
    global ENABLED
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import Counter, Gauge, Histogram

    _m.update(
        sessions=Counter("smtpfw_sessions", "SMTP sessions ended"),
        decisions=Counter("smtpfw_decisions", "hook decisions", ["hook", "outcome"]),
        hits=Counter("smtpfw_rule_hits", "rules that matched", ["rule"]),
        monitored=Counter("smtpfw_rule_monitored", "refusals a monitor-mode rule would have made", ["rule"]),
        dns=Counter("smtpfw_dns_lookups", "DNS lookups asked of the resolver (not cache hits)",
                    ["kind", "zone", "status"]),
        dns_passes=Counter("smtpfw_dns_pass_cached", "DNSBL lookups answered from the pass cache (dns.pass_ttl)",
                           ["zone"]),
        dns_seconds=Histogram("smtpfw_dns_lookup_seconds", "time a DNS lookup took", ["kind"],
                              buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)),
        deliveries=Counter("smtpfw_deliveries", "messages handed to the delivery", ["result"]),
        delivery_seconds=Histogram("smtpfw_delivery_seconds", "time a delivery took",
                                   buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)),
        in_flight=Gauge("smtpfw_sessions_in_flight", "sessions open now", multiprocess_mode="livesum"),
        canary=Counter("smtpfw_canary_divergences", "sessions the canary ruleset judged otherwise",
                       ["live", "canary"]),
        zone_healthy=Gauge("smtpfw_dns_zone_healthy", "1 when a DNS list answers its test entries as it should",
                           ["kind", "zone"], multiprocess_mode="livemin"),
    )
    ENABLED = True


def session_done(state) -> None:
    if not ENABLED:
        return
    m = _m
    m["sessions"].inc()
    for stage, decision, _subject in state.decisions:
        m["decisions"].labels(stage.value, decision.outcome.value).inc()
    for rule_id in state.hits:
        m["hits"].labels(rule_id).inc()
    for rule_id, _decision in state.monitored:
        m["monitored"].labels(rule_id).inc()


def dns_lookup(kind: str, zone: str, status: str, seconds: float) -> None:
    if ENABLED:
        _m["dns"].labels(kind, zone, status).inc()
        _m["dns_seconds"].labels(kind).observe(seconds)


def dns_pass_cached(zone: str) -> None:
    """A DNSBL lookup answered "clear" from the pass cache: counted, not timed."""
    if ENABLED:
        _m["dns_passes"].labels(zone).inc()


def delivery(ok: bool, seconds: float) -> None:
    if ENABLED:
        _m["deliveries"].labels("ok" if ok else "failed").inc()
        _m["delivery_seconds"].observe(seconds)


def in_flight(count: int) -> None:
    if ENABLED:
        _m["in_flight"].set(count)


def zone_health(kind: str, zone: str, healthy: bool) -> None:
    if ENABLED:
        _m["zone_healthy"].labels(kind, zone).set(1 if healthy else 0)


def canary_divergence(live: str, canary: str) -> None:
    if ENABLED:
        _m["canary"].labels(live, canary).inc()


def serve_http(host: str, port: int):
    """The endpoint, in a thread of this process: every process's metrics
    added up.  Returns the server (its port: ``server.server_port``)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, _thread = start_http_server(port, host, registry=registry)
    return server


def process_gone(pid: int) -> None:
    """A worker exited: its live gauges stop counting."""
    if ENABLED:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
