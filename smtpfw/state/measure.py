"""What one state-store operation costs, measured on a real back end.

    python -m smtpfw.state.measure /var/lib/smtpfw/state.db
    python -m smtpfw.state.measure redis://127.0.0.1:6379/0 --tasks 32

Runs each operation ``--count`` times, ``--tasks`` at once on one event
loop (as a worker's sessions do), on keys of its own (``--prefix``), and
prints per operation: operations per second and the mean and 99th
percentile latency seen by the caller.  The keys it writes expire by
themselves (short TTLs) and are not deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from smtpfw.state import Bucket, open_store


async def measure(location: str, count: int, tasks: int, prefix: str) -> dict:
    store = open_store(location, timeout=5.0)
    now = time.time()
    buckets = [Bucket(1_000_000, 60), Bucket(10_000_000, 3600)]
    ops = {
        "hit": lambda i: store.hit(f"{prefix}:rate:{i % 1000}", buckets, now=now),
        "peek": lambda i: store.peek(f"{prefix}:rate:{i % 1000}", buckets, now=now),
        "acquire": lambda i: store.acquire(f"{prefix}:conc:{i % 1000}", 1_000_000, 60, now=now, holder=str(i)),
        "release": lambda i: store.release(f"{prefix}:conc:{i % 1000}", str(i)),
        "greylist": lambda i: store.greylist(f"{prefix}|net{i % 1000}|s@x|r@y", now=now, client=f"net{i % 1000}",
                                             delay=0, lifetime=60),
        "set": lambda i: store.set(f"{prefix}:kv:{i % 1000}", "pass", 60, now=now),
        "get": lambda i: store.get(f"{prefix}:kv:{i % 1000}", now=now),
        "incr": lambda i: store.incr(f"{prefix}:kv:n{i % 1000}", 1, 60, now=now),
    }
    out: dict = {"backend": store.name, "count": count, "tasks": tasks}
    try:
        await store.ping()
        for name, op in ops.items():
            latencies: list[float] = []
            next_i = iter(range(count))

            async def worker() -> None:
                for i in next_i:
                    t = time.perf_counter()
                    result = await op(i)
                    latencies.append(time.perf_counter() - t)
                    if not getattr(result, "available", True):
                        raise SystemExit(f"{name}: {getattr(result, 'reason', '')}")
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            elapsed = time.perf_counter() - start
            latencies.sort()
            out[name] = {"ops_per_s": round(count / elapsed), "mean_ms": round(1000 * sum(latencies) / count, 3),
                         "p99_ms": round(1000 * latencies[int(0.99 * (count - 1))], 3)}
    finally:
        await store.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smtpfw.state.measure", description=__doc__.split("\n")[0])
    parser.add_argument("location", help="a SQLite file or a redis:// URL")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=1, help="operations in flight at once")
    parser.add_argument("--prefix", default="measure")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.location, args.count, args.tasks, args.prefix)), indent=1))


if __name__ == "__main__":
    main()
