"""State that outlives a session: rate limits, concurrency slots,
greylisting, a TTL key-value (pass caches, reputation counters).

``open_store`` makes the process's ``Store`` from a location:

- a path, or ``sqlite:PATH``: the embedded store, one SQLite file shared by
  the workers of a host (``smtpfw.state.sqlite``);
- ``redis://HOST:PORT/DB``, ``rediss://...``, ``unix://PATH``: Redis or
  Valkey, shared by every node (``smtpfw.state.redis``);
  ``redis+cluster://HOST:PORT``: a Redis Cluster.

Rules cannot use it yet: the rule language, the facts pipeline and the
effects phase are the next step of issue 15 (docs/state.md).
"""

from __future__ import annotations

from typing import Any

from smtpfw.state.store import (Backend, Breaker, Bucket, Done, GreyResult, Greylisting, RateResult, SlotResult,
                                Store, Value)


def open_backend(location: str, *, timeout: float = 0.25, **options: Any) -> Backend:
    if location.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
        from smtpfw.state.redis import RedisBackend
        cluster = location.startswith("redis+cluster://")
        url = "redis://" + location[len("redis+cluster://"):] if cluster else location
        return RedisBackend(url, timeout=timeout, cluster=cluster, **options)
    from smtpfw.state.sqlite import SqliteBackend
    path = location[len("sqlite:"):] if location.startswith("sqlite:") else location
    return SqliteBackend(path, busy_timeout=timeout, **options)


def open_store(location: str, *, timeout: float = 0.25, failures: int = 3, cooldown: float = 5.0,
               greylisting: Greylisting = Greylisting(), **options: Any) -> Store:
    """The store at ``location`` (see above); ``options`` go to the back end."""
    return Store(open_backend(location, timeout=timeout, **options), timeout=timeout, failures=failures,
                 cooldown=cooldown, greylisting=greylisting)


__all__ = ["Backend", "Breaker", "Bucket", "Done", "GreyResult", "Greylisting", "RateResult", "SlotResult", "Store",
           "Value", "open_backend", "open_store"]
