"""End-to-end cost of stateful rules (issue 15): smtpfw's messages/s with a
rate limit and greylisting that every session passes, against the same
ruleset without them, in the same run.

    python bench/state_bench.py                 # workloads a and b, 3 repetitions (about 4 minutes)
    python bench/state_bench.py --quick         # workload a, 2,000 messages, 1 repetition (about 20 s)
    python bench/state_bench.py --experiments   # + the experiments below (about 8 minutes)

Needs Linux (/proc), Postfix's smtp-source and smtp-sink (bench/run.py's
find_postfix_tools: apt-get installs them as root, else the Python
fallbacks), Debian's redis-server for the Redis setups, ../shared/zones for
the DNS lists of the reference rules (served by tests/support/dnsserver.py
on loopback, as bench/run.py does).

Configurations ("setups"), all on 127.0.0.1, all running at once and
measured in turn (the order rotated between repetitions):

- ``stateless``: rules/reference.rules as bench/run.py uses it, one smtpfw
  process with ``--workers`` workers (default: one per CPU);
- ``sqlite``: the same rules plus a rate limit tested at MAIL
  (``limit per_net = 1000000 per 1h by client.net``) and greylisting at RCPT
  (``greylist != "pass"``), on the embedded store (one SQLite file shared by
  the workers), one process with ``--workers`` workers;
- ``redis-2p``: the stateful rules on a real ``redis-server`` this script
  starts on a loopback port (no persistence, as tests/support/redis.py runs
  it), shared by TWO smtpfw processes of ``--workers``/2 workers each; the
  load is split over both (two load generators, half the sessions and half
  the messages each, started together; msg/s = all messages / the time
  until both finished);
- ``stateless-2p``: the stateless rules in the same two-process topology,
  so the Redis row has a control with the same processes and load split;
- ``redis``: the stateful rules on Redis from one process with
  ``--workers`` workers (SQLite and Redis side by side; not in --quick);
- with ``--experiments``, setups that run smtpfw with a change the profile
  suggests, put in place by this script's wrapper (not smtpfw's code; see
  "experiments" below): ``sqlite+inline`` (smtpfw's SQLite store without
  its group commit: each write its own transaction), ``redis-2p+redispy``
  (redis-py's client instead of smtpfw's own pipelined one: the client as
  it was), ``sqlite+null`` (no back end at all: the rule layer's own cost).

Workloads (bench/run.py's, one message per connection, one recipient):
a) 5,000 x 2 KB over 20 sessions, b) 5,000 x 2 KB over 100 sessions,
c) 2,000 x 100 KB over 20 sessions (only with --workloads).

Every session passes every rule.  The rate limit (a million an hour per
/24) never bites.  Greylisting: the one triplet the load generator makes
(127.0.0.0/24, from@example.org, to@example.net) is *warmed* before any
smtpfw starts, through the state-store API on the same location
(``Store.greylist`` twice with a delay of 0: "new", then "pass"), so every
measured session finds a passed triplet while smtpfw runs with the default
``greylist_delay`` of 300 s.  ``greylist_allow_after: 0`` keeps the
auto-allowlist off: every session takes the triplet's "pass" path (two
reads in one write transaction; the triplet's expiry is written again once
an hour, GREY_REFRESH) rather than the allowlisted client's shortcut.  One
probe session per server (smtplib) must get 250 at RCPT before the
warm-up load.

Per run: accepted msg/s (smtp-source's wall time; it stops at the first
non-2xx reply), delivered msg/s (until the sink counted them all), CPU ms
per message of the smtpfw process trees and of redis-server, and the state
store's own operation latency as each worker's ``Store`` saw it
(``Store.stats`` — calls, failures, shed, mean, max — plus p50/p99 from the
same calls): this script starts smtpfw through a small wrapper (``_serve``
below) that adds a task to each worker answering "reset" and "dump"
requests written to a control file; it changes nothing else.  A run in
which any state operation failed or was shed (fail-open would then have
let the session through without the store) is flagged.

Results: bench/results/state-latest.json and state-latest.md.
Profiling: ``--profile SETUP[,SETUP]`` runs py-spy (if installed) on the
servers of each named setup during an extra, unmeasured run of workload a
and adds the summary (own time by function, time under the state store) to
the results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

NET = "127.0.0.0/24"          # client.net of every session (all from 127.0.0.1)
STATE_RULES = """\
# rules/reference.rules plus a rate limit and greylisting that every
# session passes (bench/state_bench.py)
include "{reference}"

limit per_net = 1000000 per 1h by client.net

on mail:
    [rate] tempfail 450 4.7.1 "Too many messages from {{client.net}}, try again in {{limit.per_net.retry}}s" if limit.per_net.exceeded
on rcpt:
    [grey] tempfail 451 4.7.1 "Greylisted, try again in {{greylist.retry}}s" if greylist != "pass"
"""
TARGET_RATIO = 0.8


# ---- the server wrapper: Store.stats on request ---------------------------------
#
# python bench/state_bench.py _serve CONTROL_DIR EXPERIMENT serve --config ... --rules ...
# runs `smtpfw serve` unchanged but for one task per worker that has a
# state store: every 0.2 s it looks at CONTROL_DIR/control ("N reset" or
# "N dump"); on a new N it clears the store's stats (reset) or writes them
# to CONTROL_DIR/stats-PID.json (dump), and always acknowledges N there.
# EXPERIMENT is "-" (smtpfw as it is) or one of the experiments below.

def _serve(control_dir: str, experiment: str, argv: list[str]) -> int:
    import smtpfw.server as server_mod
    from smtpfw.state.store import Store

    if experiment == "inline":
        _experiment_sqlite_inline()
    elif experiment == "null":
        _experiment_null_backend()
    elif experiment == "redispy":
        _experiment_redis_py()

    samples: dict[str, list[float]] = collections.defaultdict(list)
    original_call = Store._call

    async def timed_call(self, op, make, unavailable):
        start = time.perf_counter()
        try:
            return await original_call(self, op, make, unavailable)
        finally:
            samples[op].append(time.perf_counter() - start)

    Store._call = timed_call                     # type: ignore[method-assign]
    original_start = server_mod.Server.start

    async def start(self, sockets=None):
        await original_start(self, sockets)
        if self.store is not None:
            self._bench_task = asyncio.get_running_loop().create_task(_answer(self))

    async def _answer(server) -> None:
        control = Path(control_dir) / "control"
        out = Path(control_dir) / f"stats-{os.getpid()}.json"
        seen = None
        while server.accepting:
            await asyncio.sleep(0.2)
            try:
                text = control.read_text().split()
            except OSError:
                continue
            if len(text) != 2 or text[0] == seen:
                continue
            seen, what = text
            store = server.store
            if what == "reset":
                store.stats.clear()
                samples.clear()
                body: dict = {"ack": seen, "pid": os.getpid()}
            else:
                ops = store.describe_stats()
                for op, values in samples.items():
                    if op in ops and values:
                        values = sorted(values)
                        ops[op]["p50_ms"] = round(1000 * values[len(values) // 2], 3)
                        ops[op]["p99_ms"] = round(1000 * values[int(0.99 * (len(values) - 1))], 3)
                body = {"ack": seen, "pid": os.getpid(), "backend": store.name, "ops": ops}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            tmp.replace(out)

    server_mod.Server.start = start              # type: ignore[method-assign]
    from smtpfw.cli import main
    return main(argv)


# ---- experiments: what the profile suggests, tried without changing smtpfw ----------
#
# Not smtpfw's code: replacements put in place by the wrapper above for the
# setups whose names end in "+inline", "+redispy", "+null" (--experiments), to measure
# the changes proposed in docs/state.md ("Performance") before anyone makes
# them.

def _experiment_sqlite_inline() -> None:
    """smtpfw's SQLite store without its group commit (``group_commit=False``):
    each write its own ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the event loop's
    thread, what this experiment measured before smtpfw ran SQLite there
    (docs/state.md, "Performance").  Reads are never grouped, so for
    bench/bot_bench.py's pass-cache+inline (a read) this is smtpfw as it is."""
    from smtpfw.state.sqlite import SqliteBackend

    original = SqliteBackend.__init__

    def __init__(self, *args, **kwargs):
        kwargs["group_commit"] = False
        original(self, *args, **kwargs)

    SqliteBackend.__init__ = __init__            # type: ignore[method-assign]


def _experiment_null_backend() -> None:
    """No back end at all: hit and greylist answer "allowed" / "pass" at
    once (through Store, its timeout and stats, as always).  What is left
    is the cost of stateful rules in smtpfw itself (the keys, the engine
    pausing at a lazy fact and resuming, Policy, StateFacts, Store): the
    floor any back end adds to."""
    from smtpfw.state.sqlite import SqliteBackend
    from smtpfw.state.store import GreyResult, RateResult

    async def hit(self, key, buckets, cost, now, force):
        return RateResult(True, tuple(1.0 for _ in buckets), 0.0, tuple(b.limit for b in buckets))

    async def greylist(self, triplet, client, g, now):
        return GreyResult("pass", 0.0, False, 1)

    SqliteBackend.hit = hit                      # type: ignore[method-assign]
    SqliteBackend.greylist = greylist            # type: ignore[method-assign]


def _experiment_redis_py() -> None:
    """RedisBackend on redis-py's pooled client (``pipelined=False``), as
    smtpfw was before its own pipelined client (smtpfw/state/resp.py): the
    same scripts and keys, a client that costs more CPU per operation."""
    from smtpfw.state import redis as mod

    original_init = mod.RedisBackend.__init__

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options) -> None:
        original_init(self, url, **{**options, "pipelined": False})

    mod.RedisBackend.__init__ = __init__         # type: ignore[method-assign]


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "_serve":
    sys.exit(_serve(sys.argv[2], sys.argv[3], sys.argv[4:]))

import procstat
import run as e2e  # bench/run.py: processes, smtp-source, sink counter, machine info
from run import Service, Workload, free_port, log, wait_line, wait_smtp

WORKLOADS = {
    "a": Workload("a", 5000, 2048, 20, TARGET_RATIO),
    "b": Workload("b", 5000, 2048, 100, TARGET_RATIO),
    "c": Workload("c", 2000, 100 * 1024, 20, TARGET_RATIO),
}
QUICK_MESSAGES = {"a": 2000, "b": 2000, "c": 300}
SETUPS = ("stateless", "sqlite", "stateless-2p", "redis-2p", "redis")
EXPERIMENTS = ("sqlite+inline", "redis-2p+redispy", "sqlite+null")
QUICK_SETUPS = ("stateless", "sqlite", "stateless-2p", "redis-2p")
BASELINE = {"sqlite": "stateless", "redis": "stateless", "redis-2p": "stateless",
            "stateless-2p": "stateless", "sqlite+inline": "stateless",
            "redis-2p+redispy": "stateless", "sqlite+null": "stateless"}
SAME_TOPOLOGY = {"redis-2p": "stateless-2p", "redis-2p+redispy": "stateless-2p"}
STATEFUL = ("sqlite", "redis-2p", "redis", *EXPERIMENTS)
DESCRIBE = {
    "stateless": "reference rules, 1 process × {w} workers",
    "sqlite": "+ rate limit + greylisting, SQLite, 1 process × {w} workers",
    "stateless-2p": "reference rules, 2 processes × {h} worker(s), load split",
    "redis-2p": "+ rate limit + greylisting, Redis shared by 2 processes × {h} worker(s), load split",
    "redis": "+ rate limit + greylisting, Redis, 1 process × {w} workers",
    "sqlite+inline": "as sqlite, EXPERIMENT: no group commit (each write its own transaction)",
    "sqlite+null": "as sqlite, EXPERIMENT: no back end (answers at once): smtpfw's own part",
    "redis-2p+redispy": "as redis-2p, EXPERIMENT: redis-py's client (as before smtpfw's own)",
}


# ---- Redis ----------------------------------------------------------------------

class Redis:
    """A redis-server on a loopback port, as tests/support/redis.py runs it
    (no persistence, its own folder)."""

    def __init__(self, logdir: Path):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.dir = logdir / "redis"
        self.dir.mkdir()
        self.service = Service("redis", [exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                                         "--daemonize", "no", "--protected-mode", "no"], logdir)
        deadline = time.monotonic() + 15
        while True:
            self.service.check()
            try:
                import socket
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 15 s")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run([self.service.argv[0], "--version"], capture_output=True, text=True,
                             check=False).stdout
        return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


def warm_greylist(location: str) -> list[str]:
    """Pass the load generator's triplet on ``location`` through the store
    API (delay 0: "new", then "pass"); the verdicts."""
    from smtpfw.state import Greylisting, open_store

    triplet = f"{NET}|{e2e.SENDER}|{e2e.RECIPIENT}"     # as smtpfw.lang.fields._grey_key builds it

    async def go() -> list[str]:
        store = open_store(location, timeout=5.0, greylisting=Greylisting(delay=0.0, allow_after=0))
        try:
            now = time.time()
            first = await store.greylist(triplet, now=now, client=NET)
            second = await store.greylist(triplet, now=now + 0.001, client=NET)
            if not (first.available and second.available):
                raise RuntimeError(f"warming the greylist on {location} failed: {first.reason or second.reason}")
            return [first.verdict, second.verdict]
        finally:
            await store.close()
    return asyncio.run(go())


def store_alone(location: str, count: int) -> dict:
    """The two operations a session makes, on the store alone (this
    process, smtpfw's ``Store``, uvloop if installed): 1 and 10 in flight,
    ops/s, mean latency and this process's CPU per operation (the SQLite
    pool's threads included).  Keys of its own: the servers' are untouched."""
    from smtpfw.state import Bucket, Greylisting, open_store

    async def go() -> dict:
        store = open_store(location, timeout=5.0, greylisting=Greylisting(delay=0.0, allow_after=0))
        buckets = [Bucket(1_000_000, 3600)]
        out: dict = {}
        try:
            now = time.time()
            for _ in range(2):
                await store.greylist("alone|a@x|b@y", now=now, client="alone")
            ops = {"hit": lambda: store.hit("alone|127.0.0.0/24", buckets, now=time.time()),
                   "greylist": lambda: store.greylist("alone|a@x|b@y", now=time.time(), client="alone")}
            for tasks in (1, 10):
                for op, call in ops.items():
                    left = iter(range(count))
                    store.stats.clear()

                    async def worker(left=left, call=call) -> None:
                        for _ in left:
                            await call()
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(tasks)))
                    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                    st = store.describe_stats()[op]
                    out[f"{op}, {tasks} in flight"] = {"ops_per_s": round(count / wall), "mean_ms": st["mean_ms"],
                                                       "cpu_us_per_op": round(1e6 * cpu / count),
                                                       "failures": st["failures"] + st["shed"]}
        finally:
            await store.close()
        return out
    try:
        import uvloop
        return uvloop.run(go())
    except ImportError:
        return asyncio.run(go())


# ---- a setup: one or two smtpfw processes ----------------------------------------

@dataclass
class Setup:
    name: str
    processes: int
    workers: int                                 # per process
    store: str | None                            # None: stateless
    experiment: str = "-"                        # "-" or what follows "+" in the setup's name (see _serve)
    servers: list[Service] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    control: Path | None = None

    @property
    def stateful(self) -> bool:
        return self.store is not None

    def start(self, tmp: Path, sink_port: int, dns_port: int, rules: Path) -> None:
        self.control = tmp / f"control-{self.name}"
        self.control.mkdir()
        for i in range(self.processes):
            port = free_port()
            config = tmp / f"smtpfw-{self.name}-{i}.yaml"
            text = (f"listen: 127.0.0.1:{port}\n"
                    "hostname: smtpfw.bench.test\n"
                    f"server:\n  workers: {self.workers}\n"
                    f"delivery:\n  mode: forward\n  forward: 127.0.0.1:{sink_port}\n"
                    "limits:\n  max_connections_per_ip: 10000\n  max_connections: 10000\n"
                    f"dns:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\n")
            if self.store:
                text += f"state:\n  store: \"{self.store}\"\n  greylist_allow_after: 0\n"
            config.write_text(text)
            self.servers.append(Service(f"smtpfw-{self.name}-{i}",
                                        [sys.executable, str(BENCH / "state_bench.py"), "_serve", str(self.control),
                                         self.experiment, "serve", "--config", str(config), "--rules", str(rules)], tmp))
            self.ports.append(port)

    def wait(self) -> None:
        for server, port in zip(self.servers, self.ports):
            wait_smtp(port, server)

    def probe(self) -> None:
        """One session per server: RCPT must be accepted (the greylist is warm)."""
        for port in self.ports:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.helo(e2e.HELO)
                code, text = s.mail(e2e.SENDER)
                if code != 250:
                    raise RuntimeError(f"{self.name}: MAIL answered {code} {text!r}")
                code, text = s.rcpt(e2e.RECIPIENT)
                if code != 250:
                    raise RuntimeError(f"{self.name}: RCPT answered {code} {text!r}: is the greylist warm?")
                s.rset()

    def pids(self) -> list[int]:
        return [pid for server in self.servers for pid in procstat.tree(server.pid)]

    def workers_with_store(self) -> int:
        return self.processes * self.workers if self.stateful else 0

    # Store.stats of every worker, through the wrapper's control file
    def _request(self, what: str, timeout: float = 5.0) -> list[dict]:
        if not self.stateful:
            return []
        assert self.control is not None
        token = f"{time.monotonic_ns()}"
        tmp = self.control / "control.tmp"
        tmp.write_text(f"{token} {what}\n")
        tmp.replace(self.control / "control")
        deadline = time.monotonic() + timeout
        live = set(self.pids())
        while True:
            got = []
            for path in self.control.glob("stats-*.json"):
                try:
                    body = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if body.get("ack") == token and body.get("pid") in live:
                    got.append(body)
            if len(got) >= self.workers_with_store() or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def reset_stats(self) -> None:
        self._request("reset")

    def dump_stats(self) -> dict:
        """Store.stats summed over the workers: per operation calls,
        failures, shed, mean and max ms, and the workers' p50/p99 (the
        largest of the workers' values)."""
        bodies = self._request("dump")
        out: dict = {}
        for body in bodies:
            for op, s in body.get("ops", {}).items():
                o = out.setdefault(op, {"calls": 0, "failures": 0, "shed": 0, "_ms": 0.0, "max_ms": 0.0,
                                        "p50_ms": 0.0, "p99_ms": 0.0})
                o["calls"] += s["calls"]
                o["failures"] += s["failures"]
                o["shed"] += s["shed"]
                o["_ms"] += s["mean_ms"] * s["calls"]
                for k in ("max_ms", "p50_ms", "p99_ms"):
                    o[k] = max(o[k], s.get(k, 0.0))
        for o in out.values():
            o["mean_ms"] = round(o.pop("_ms") / o["calls"], 3) if o["calls"] else 0.0
        if bodies and len(bodies) < self.workers_with_store():
            out["_note"] = f"{len(bodies)} of {self.workers_with_store()} workers answered"
        return out

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


# ---- one measured run ---------------------------------------------------------------

def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def run_loads(source: list[str], wl: Workload, messages: int, ports: list[int]) -> dict:
    """One load generator per port, started together: half the sessions and
    messages each for two ports."""
    procs = []
    start = time.perf_counter()
    for port, sessions, count in zip(ports, split(wl.sessions, len(ports)), split(messages, len(ports))):
        argv = [*source, "-s", str(max(1, sessions)), "-m", str(count), "-l", str(wl.size),
                "-M", e2e.HELO, "-f", e2e.SENDER, "-t", e2e.RECIPIENT, f"127.0.0.1:{port}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT))
    rcs, errors, cpu, end = [], [], 0.0, start
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        end = max(end, time.perf_counter())
        proc.returncode = os.waitstatus_to_exitcode(status)
        rcs.append(proc.returncode)
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if proc.returncode:
            errors.append(err[-300:] or f"exit code {proc.returncode}")
        cpu += usage.ru_utime + usage.ru_stime
    return {"start": start, "end": end, "ok": all(rc == 0 for rc in rcs), "error": "; ".join(errors),
            "loadgen_cpu_s": cpu}


def measure(setup: Setup, source: list[str], wl: Workload, messages: int, sink: e2e.SinkCounter,
            helpers: list[int], redis_pid: int | None) -> dict:
    setup.reset_stats()
    pids = setup.pids()
    cpu0 = procstat.cpu_seconds(pids)
    help0 = procstat.cpu_seconds(helpers)
    redis0 = procstat.cpu_seconds([redis_pid]) if redis_pid else 0.0
    busy0, total0 = procstat.machine_cpu()
    sink0 = sink.count
    load = run_loads(source, wl, messages, setup.ports)
    delivered_at = sink.wait_for(sink0 + messages, timeout=30.0) if load["ok"] else None
    busy1, total1 = procstat.machine_cpu()
    cpu = procstat.cpu_seconds(setup.pids()) - cpu0
    helpers_cpu = procstat.cpu_seconds(helpers) - help0
    redis_cpu = (procstat.cpu_seconds([redis_pid]) - redis0) if redis_pid else 0.0
    wall = load["end"] - load["start"]
    busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    store_cpu = redis_cpu if setup.store and setup.store.startswith("redis") else 0.0
    out = {
        "setup": setup.name,
        "workload": wl.name,
        "messages": messages,
        "ok": load["ok"],
        "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if load["ok"] else 0.0,
        "delivered_per_s": round(messages / (delivered_at - load["start"]), 1) if delivered_at else 0.0,
        "sink_count": sink.count - sink0,
        "server_cpu_ms_per_msg": round(1000 * cpu / messages, 3),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "redis_cpu_ms_per_msg": round(1000 * store_cpu / messages, 3),
        "loadgen_cpu_pct": round(100 * load["loadgen_cpu_s"] / wall, 1),
        "machine_busy_pct": round(busy_pct, 1),
        "others_cpu_pct": round(max(0.0, busy_pct - 100 * (cpu + helpers_cpu + redis_cpu + load["loadgen_cpu_s"])
                                    / wall), 1),
    }
    if not load["ok"]:
        out["error"] = load["error"]
    if setup.stateful:
        time.sleep(0.3)                          # the workers' last operations are done
        stats = setup.dump_stats()
        out["store_ops"] = stats
        bad = sum(s.get("failures", 0) + s.get("shed", 0) for op, s in stats.items() if not op.startswith("_"))
        if bad:
            out["store_unavailable_ops"] = bad
        # every session: one hit (MAIL) and one greylist (RCPT); the probe is not counted
        out["store_ops_per_msg"] = round(sum(s.get("calls", 0) for op, s in stats.items()
                                             if not op.startswith("_")) / messages, 2)
    return out


# ---- profiling ------------------------------------------------------------------

def profile(setup: Setup, source: list[str], sink: e2e.SinkCounter, messages: int, tmp: Path) -> dict:
    """py-spy on every process of ``setup`` during an unmeasured run of
    workload a: own time by function and the share under the state store."""
    pyspy = shutil.which("py-spy")
    if not pyspy:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    wl = WORKLOADS["a"]
    spies = []
    for server in setup.servers:
        out = tmp / f"pyspy-{server.name}.txt"
        spies.append((subprocess.Popen([pyspy, "record", "--pid", str(server.pid), "--subprocesses", "--format",
                                        "raw", "--rate", "250", "--output", str(out)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
    time.sleep(1.5)                               # py-spy attached
    run_loads(source, wl, messages, setup.ports)
    for proc, _ in spies:
        proc.send_signal(signal.SIGINT)
    for proc, _ in spies:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    own: collections.Counter = collections.Counter()
    under: collections.Counter = collections.Counter()
    total = 0
    markers = {
        "state store (Store._call and below)": "_call (smtpfw/state/store.py",
        "SQLite back end (smtpfw/state/sqlite.py)": "smtpfw/state/sqlite.py",
        "Redis back end (smtpfw/state/redis.py)": "smtpfw/state/redis.py",
        "redis-py (redis/asyncio)": "redis/asyncio/",
        "StateFacts / Policy asking state": "smtpfw/state/facts.py",
        "executor hand-off (run_in_executor, futures)": "run_in_executor",
        "asyncio.wait_for": "wait_for (",
        "thread pool workers (concurrent/futures/thread.py)": "concurrent/futures/thread.py",
        "socket writes (transport.write)": "write (",
        "session log line (log_and_record)": "log_and_record",
        "forward delivery (smtpfw/delivery)": "smtpfw/delivery/",
        "rules (smtpfw/engine.py)": "smtpfw/engine.py",
    }
    for _, path in spies:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            if frames and frames[0].startswith("process "):
                frames = frames[1:]
            if not frames:
                continue
            total += n
            leaf = frames[-1]
            own[leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split("/")[-1]] += n
            for label, needle in markers.items():
                if any(needle in f for f in frames):
                    under[label] += n
    if not total:
        return {"error": "py-spy recorded nothing (needs ptrace: root or CAP_SYS_PTRACE)"}
    return {"setup": setup.name, "samples": total, "messages": messages,
            "own_pct": [[name, round(100 * n / total, 1)] for name, n in own.most_common(25)],
            "under_pct": {label: round(100 * under[label] / total, 1) for label in markers}}


# ---- summary ------------------------------------------------------------------------

def stat(values: list[float]) -> dict:
    return e2e.stat(values)


def summarize(runs: list[dict], setups: list[str], workloads: list[Workload], scale: dict[str, int]) -> dict:
    out: dict = {}
    for wl in workloads:
        entry: dict = {"description": Workload(wl.name, scale[wl.name], wl.size, wl.sessions, 0).describe(),
                       "setups": {}, "ratios": {}}
        by = {name: [r for r in runs if r["workload"] == wl.name and r["setup"] == name] for name in setups}
        for name, rows in by.items():
            e = {m: stat([r[m] for r in rows if r["ok"]])
                 for m in ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg", "redis_cpu_ms_per_msg",
                           "loadgen_cpu_pct", "others_cpu_pct", "machine_busy_pct", "store_ops_per_msg")
                 if any(m in r for r in rows)}
            e["failed_runs"] = sum(1 for r in rows if not r["ok"])
            e["runs_with_store_unavailable"] = sum(1 for r in rows if r.get("store_unavailable_ops"))
            ops: dict = {}
            for r in rows:
                for op, s in r.get("store_ops", {}).items():
                    if not op.startswith("_"):
                        ops.setdefault(op, []).append(s)
            if ops:
                measured = sum(r["messages"] for r in rows if r.get("store_ops"))
                e["store_ops"] = {op: {"calls": sum(x["calls"] for x in xs),
                                       "per_msg": round(sum(x["calls"] for x in xs) / max(1, measured), 2),
                                       "failures": sum(x["failures"] for x in xs),
                                       "shed": sum(x["shed"] for x in xs),
                                       "mean_ms": stat([x["mean_ms"] for x in xs]),
                                       "p50_ms": stat([x["p50_ms"] for x in xs]),
                                       "p99_ms": stat([x["p99_ms"] for x in xs]),
                                       "max_ms": round(max(x["max_ms"] for x in xs), 3)} for op, xs in ops.items()}
            entry["setups"][name] = e
        # ratios within a repetition, against the stateless setup of that repetition
        for name in setups:
            for label, base in (("to_stateless", BASELINE.get(name)), ("to_same_topology", SAME_TOPOLOGY.get(name))):
                if not base or base not in by:
                    continue
                pairs = [(r, b) for r in by[name] for b in by[base] if r.get("rep") == b.get("rep")]
                values = [r["accepted_per_s"] / b["accepted_per_s"] for r, b in pairs
                          if r["ok"] and b["ok"] and b["accepted_per_s"]]
                cpu = [b["server_cpu_ms_per_msg"] / (r["server_cpu_ms_per_msg"] + r["redis_cpu_ms_per_msg"])
                       for r, b in pairs if r["ok"] and b["ok"] and r["server_cpu_ms_per_msg"]]
                if values:
                    entry["ratios"].setdefault(name, {})[label] = {"base": base, "msg_s": stat(values),
                                                                   "cpu": stat(cpu)}
        out[wl.name] = entry
    return out


def targets(summary: dict) -> list[dict]:
    rows = []
    for wname, e in summary.items():
        for name, r in e["ratios"].items():
            if name in SETUPS and name != "stateless-2p":      # the stateful setups, not the experiments
                for v in r.values():
                    med = v["msg_s"].get("median")
                    if med is None:
                        continue
                    rows.append({"target": f"{wname}: {name} msg/s >= {TARGET_RATIO} x {v['base']}",
                                 "value": round(med, 2), "met": med >= TARGET_RATIO})
    return rows


def _fmt(s: dict, digits: int = 0) -> str:
    return e2e._fmt(s, digits)


def markdown(result: dict) -> str:
    m, v, cfg = result["machine"], result["versions"], result["config"]
    w, h = cfg["workers"], cfg["workers_2p"]
    lines = [
        f"# smtpfw stateful-rules benchmark (issue 15), {result['date']}",
        "",
        f"`{result['command']}`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB, {m['os']}, Linux {m['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load: {cfg['loadgen']}, one message per connection, one recipient; sink: {cfg['sink']}; "
        f"event loop: {cfg['event_loop']}",
        "- Stateful rules: rules/reference.rules + `limit per_net = 1000000 per 1h by client.net` tested at MAIL "
        "+ `greylist != \"pass\"` at RCPT; `greylist_allow_after: 0` (every session takes the triplet's pass "
        "path); state.timeout 0.25 s, fail open (a failed or shed operation is counted and flagged).",
        f"- Greylist warmed before smtpfw started: {cfg['warm']}",
        f"- {cfg['reps']} repetition(s), the order of the setups rotated; median (min–max). accepted = messages / "
        "the load generators' wall time; delivered = until the sink counted them all; CPU ms/msg = utime+stime "
        "of the smtpfw process trees (and of redis-server, apart) per message; ratio = msg/s over the stateless "
        "setup's in the same repetition; CPU ratio = stateless CPU per message / stateful (smtpfw + Redis).",
        "",
    ]
    if any("+" in n for n in cfg["setups"]):
        lines += ["Setups marked EXPERIMENT run smtpfw with a replacement this script puts in place (bench/"
                  "state_bench.py, `_experiment_*`; not smtpfw's code): what the profile suggests, measured "
                  "before anyone changes smtpfw. They are not targets.", ""]
    if cfg.get("notes"):
        lines += [f"**Note:** {n}" for n in cfg["notes"]] + [""]
    lines += ["| workload | setup | accepted msg/s | delivered msg/s | smtpfw CPU ms/msg | Redis CPU ms/msg "
              "| others' CPU % | ratio to stateless (1 process) | ratio to stateless, same topology | CPU ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for wname, e in result["summary"].items():
        for name, s in e["setups"].items():
            r = e["ratios"].get(name, {})
            to = r.get("to_stateless")
            same = r.get("to_same_topology")
            flag = ""
            if s.get("failed_runs"):
                flag += f" ⚠ {s['failed_runs']} failed run(s)"
            if s.get("runs_with_store_unavailable"):
                flag += f" ⚠ store unavailable in {s['runs_with_store_unavailable']} run(s)"
            ratio = (f"**{_fmt(to['msg_s'], 2)}**" if name in STATEFUL
                     else _fmt(to["msg_s"], 2)) if to else ("1" if name == "stateless" else "-")
            lines.append(
                f"| {wname}) {e['description']} | {name}: {DESCRIBE[name].format(w=w, h=h)}{flag} "
                f"| {_fmt(s.get('accepted_per_s', {}))} | {_fmt(s.get('delivered_per_s', {}))} "
                f"| {_fmt(s.get('server_cpu_ms_per_msg', {}), 2)} "
                f"| {_fmt(s.get('redis_cpu_ms_per_msg', {}), 3) if name.startswith('redis') else '-'} "
                f"| {_fmt(s.get('others_cpu_pct', {}))} | {ratio} "
                f"| {('**' + _fmt(same['msg_s'], 2) + '**') if same else '-'} "
                f"| {_fmt((to or {}).get('cpu', {}), 2) if to else '-'} |")
    lines += ["", "## State store operations, as each worker's `Store` saw them (`Store.stats`)", "",
              "Per operation, over all measured runs of the setup: calls, failures + shed (fail-open answers), "
              "median over runs of the mean / p50 / p99 latency (the slowest worker's p50/p99), the largest "
              "single operation.", "",
              "| workload | setup | operation | calls | ops/msg | failed + shed | mean ms | p50 ms | p99 ms | max ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for wname, e in result["summary"].items():
        for name, s in e["setups"].items():
            for op, o in sorted(s.get("store_ops", {}).items()):
                lines.append(f"| {wname} | {name} | {op} | {o['calls']:,} | {o['per_msg']:.2f} "
                             f"| {o['failures'] + o['shed']} | {_fmt(o['mean_ms'], 3)} | {_fmt(o['p50_ms'], 3)} "
                             f"| {_fmt(o['p99_ms'], 3)} | {o['max_ms']:.1f} |")
    if result.get("store_alone"):
        lines += ["", "## The store alone", "",
                  "The two operations a session makes, from one process through smtpfw's `Store` (uvloop), "
                  "after the measured runs: operations/s, mean latency, and CPU of that process per operation "
                  "(for SQLite its thread pool included; Redis's own CPU not included).", "",
                  "| back end | operation | ops/s | mean ms | CPU µs/op |", "|---|---|---|---|---|"]
        for kind, ops in result["store_alone"].items():
            for op, o in ops.items():
                lines.append(f"| {kind} | {op} | {o['ops_per_s']:,} | {o['mean_ms']:.3f} | {o['cpu_us_per_op']} |")
    lines += ["", f"## Targets (issue 15: stateful ≥ {TARGET_RATIO} × stateless)", "",
              "| target | measured (median) | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    for p in result.get("profiles", []):
        lines += ["", f"## Profile: {p.get('setup', '?')}", ""]
        if "error" in p:
            lines.append(p["error"])
            continue
        lines += [f"py-spy (250 Hz, not idle), every process of the setup, {p['samples']:,} samples during "
                  f"{p['messages']:,} messages of workload a (unmeasured). Samples are of every thread py-spy saw "
                  "active (the SQLite pool's threads too), so a share is of samples, not of CPU. Share of samples "
                  "with a frame of:", ""]
        lines += [f"- {label}: {pct} %" for label, pct in p["under_pct"].items()]
        lines += ["", "Own time, top functions: " + "; ".join(f"{n} {pct} %" for n, pct in p["own_pct"][:15])]
    lines.append("")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smtpfw with and without stateful rules (issue 15).")
    p.add_argument("--quick", action="store_true", help="workload a, 2,000 messages, 1 repetition (about 20 s)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--workloads", help="of a,b,c (default a,b; --quick a)")
    p.add_argument("--setups", help=f"of {','.join(SETUPS + EXPERIMENTS)} (default {','.join(SETUPS)}; "
                                    f"--quick {','.join(QUICK_SETUPS)})")
    p.add_argument("--experiments", action="store_true",
                   help=f"add the setups {', '.join(EXPERIMENTS)}: the changes the profile suggests, made by the "
                        "wrapper (not smtpfw's code)")
    p.add_argument("--messages", type=int, help="messages per run (default 5,000 / 2,000 for c; --quick 2,000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers of a one-process setup (default: CPUs); two-process setups get half each")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for state-latest.json and .md")
    p.add_argument("--zones", default=str(ROOT.parent / "shared" / "zones"), help="rbldnsd zone files")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfix")
    p.add_argument("--profile", default="", help="setups to profile with py-spy after measuring (e.g. sqlite,redis-2p)")
    p.add_argument("--keep", action="store_true", help="leave the servers running until Enter (profiling)")
    args = p.parse_args(argv)

    reps = args.reps or (1 if args.quick else 3)
    workloads = [WORKLOADS[w.strip()] for w in (args.workloads or ("a" if args.quick else "a,b")).split(",")
                 if w.strip()]
    names = [s.strip() for s in (args.setups or ",".join(QUICK_SETUPS if args.quick else SETUPS)).split(",")
             if s.strip()]
    if args.experiments:
        names += [n for n in EXPERIMENTS if n not in names]
    unknown = [n for n in names if n not in SETUPS + EXPERIMENTS]
    if unknown:
        p.error(f"unknown setup(s) {unknown}; known: {', '.join(SETUPS + EXPERIMENTS)}")
    if "stateless" not in names:
        names.insert(0, "stateless")
    to_profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    zones = sorted(str(z) for z in Path(args.zones).glob("*") if z.is_file())
    if not zones:
        log(f"no zone files in {args.zones} (use --zones)")
        return 2

    notes: list[str] = []
    source_bin, sink_bin, how = e2e.find_postfix_tools(not args.no_install)
    if source_bin:
        source, loadgen = [source_bin], f"Postfix smtp-source ({how})"
    else:
        source, loadgen = [sys.executable, str(BENCH / "pysource.py")], "bench/pysource.py (Python)"
        notes.append(f"smtp-source unavailable ({how}); the Python load generator may be the bottleneck.")
    try:
        import uvloop  # noqa: F401
        event_loop = "uvloop"
    except ImportError:
        event_loop = "asyncio (uvloop not installed: pip install -e '.[fast]')"
        notes.append("uvloop is not installed; smtpfw runs on the standard asyncio loop.")

    workers = max(1, args.workers)
    half = max(1, workers // 2)
    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-state-bench-"))
    services: list[Service] = []
    setups: dict[str, Setup] = {}
    redis: Redis | None = None
    runs: list[dict] = []
    profiles: list[dict] = []
    warm_note: list[str] = []
    alone: dict = {}
    started = time.monotonic()
    try:
        dns_port, sink_port = free_port(), free_port()
        dns = Service("dns", [sys.executable, str(ROOT / "tests/support/dnsserver.py"), "--port", str(dns_port),
                              *zones], tmp)
        services.append(dns)
        read_fd, write_fd = os.pipe()
        if sink_bin:
            sink_argv = [sink_bin, "-c", "-m", "2000"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
            sink_argv += [f"127.0.0.1:{sink_port}", "1024"]
            sink_name = "Postfix smtp-sink"
        else:
            sink_argv = [sys.executable, str(BENCH / "pysink.py"), f"127.0.0.1:{sink_port}"]
            sink_name = "bench/pysink.py (Python)"
        sink = Service("sink", sink_argv, tmp, stdout=write_fd)
        os.close(write_fd)
        services.append(sink)
        counter = e2e.SinkCounter(read_fd)
        wait_line(dns, "dnsserver listening")
        wait_smtp(sink_port, sink)

        state_rules = tmp / "state.rules"
        state_rules.write_text(STATE_RULES.format(reference=ROOT / "rules/reference.rules"))
        if any(n.startswith("redis") for n in names):
            redis = Redis(tmp)
            services.append(redis.service)
        sqlite_path = tmp / "state" / "state.db"
        for name in names:
            base, _, experiment = name.partition("+")
            store = {"sqlite": str(sqlite_path), "redis": redis.url if redis else None,
                     "redis-2p": redis.url if redis else None}.get(base)
            two = base.endswith("-2p")
            setups[name] = Setup(name, 2 if two else 1, half if two else workers, store, experiment or "-")
        # the greylist, warm before any smtpfw opens the store
        for location in sorted({s.store for s in setups.values() if s.store}):
            verdicts = warm_greylist(location)
            kind = "Redis" if location.startswith("redis") else "SQLite"
            warm_note.append(f"{kind}: {' then '.join(verdicts)}")
            if verdicts[-1] != "pass":
                raise RuntimeError(f"warming the greylist on {location} gave {verdicts}")
        for s in setups.values():
            s.start(tmp, sink_port, dns_port, state_rules if s.stateful else ROOT / "rules/reference.rules")
            services.extend(s.servers)
        for s in setups.values():
            s.wait()
            s.probe()
        helpers = [sink.pid, dns.pid]
        log(f"setups: {', '.join(f'{n} :{s.ports}' for n, s in setups.items())}; sink :{sink_port}; "
            f"dns :{dns_port}" + (f"; redis :{redis.port}" if redis else "") + f"; load: {loadgen}")

        # warm-up: at least 3 s (1 s quick) of load at 100 sessions per setup
        warm = Workload("warm-up", 1000, 2048, 100, 0)
        for s in setups.values():
            t0 = time.monotonic()
            while time.monotonic() - t0 < (1.0 if args.quick else 3.0):
                load = run_loads(source, warm, warm.messages, s.ports)
                if not load["ok"]:
                    raise RuntimeError(f"warm-up of {s.name} failed: {load['error']}; logs in {tmp}")
        if args.keep:
            log("servers running; press Enter to start measuring")
            input()

        scale = {w: args.messages or (QUICK_MESSAGES if args.quick else {k: x.messages for k, x in WORKLOADS.items()})[w]
                 for w in WORKLOADS}
        order = list(names)
        for rep in range(reps):
            for wl in workloads:
                for name in order:
                    s = setups[name]
                    for server in s.servers:
                        server.check()
                    time.sleep(0.3)
                    r = measure(s, source, wl, scale[wl.name], counter, helpers,
                                redis.service.pid if redis else None)
                    r["rep"] = rep + 1
                    runs.append(r)
                    ops = r.get("store_ops", {})
                    log(f"  rep {rep + 1} {wl.name} {name:13}: {r['accepted_per_s']:8.1f} msg/s, delivered "
                        f"{r['delivered_per_s']:.1f}/s, cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg"
                        + (f" + redis {r['redis_cpu_ms_per_msg']:.3f}" if r["redis_cpu_ms_per_msg"] else "")
                        + (", " + ", ".join(f"{op} {o['calls']} x {o['mean_ms']:.2f} ms (p99 {o['p99_ms']:.1f})"
                                            for op, o in ops.items() if not op.startswith("_")) if ops else "")
                        + (f", others {r['others_cpu_pct']:.0f}%")
                        + (f"  STORE UNAVAILABLE x{r['store_unavailable_ops']}" if r.get("store_unavailable_ops")
                           else "")
                        + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
            order = order[1:] + order[:1]
        for location in sorted({s.store for s in setups.values() if s.store}):
            kind = "Redis" if location.startswith("redis") else "SQLite"
            alone[kind] = store_alone(location, 500 if args.quick else 2000)
            log(f"  {kind} alone: " + ", ".join(f"{k} {v['ops_per_s']}/s {v['cpu_us_per_op']} µs CPU"
                                               for k, v in alone[kind].items()))
        for name in to_profile:
            if name in setups:
                log(f"profiling {name} with py-spy ...")
                profiles.append(profile(setups[name], source, counter, 3 * scale["a"], tmp))
        if args.keep:
            log("measured; press Enter to stop the servers")
            input()
    except BaseException:
        log(f"benchmark failed; the servers' logs are kept in {tmp}")
        raise
    finally:
        for s in reversed(services):
            s.stop()

    if any(r["ok"] and r.get("sink_count", 0) < r["messages"] for r in runs):
        notes.append("the sink counted fewer messages than smtpfw accepted in some run(s)")
    if any(r.get("store_unavailable_ops") for r in runs):
        notes.append("some state operations failed or were shed (fail-open let those sessions through "
                     "without the store): those runs overstate the stateful rate")
    summary = summarize(runs, names, workloads, scale)
    versions = e2e.tool_versions(bool(source_bin or sink_bin))
    if redis:
        versions["redis-server"] = redis.version()
    from importlib import metadata
    try:
        versions["redis-py"] = metadata.version("redis")
    except metadata.PackageNotFoundError:
        versions["redis-py"] = "not installed"
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/state_bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": e2e.machine(),
        "versions": versions,
        "config": {"workers": workers, "workers_2p": half, "reps": reps, "quick": args.quick,
                   "event_loop": event_loop, "loadgen": loadgen, "sink": sink_name, "notes": notes,
                   "setups": {n: DESCRIBE[n].format(w=workers, h=half) for n in names},
                   "messages": {w.name: scale[w.name] for w in workloads},
                   "warm": "the triplet (127.0.0.0/24, from@example.org, to@example.net) passed through the "
                           "store API with delay 0 (" + "; ".join(warm_note) + "), then smtpfw ran with "
                           "greylist_delay 300; one probe session per server got 250 at RCPT",
                   "seconds": round(time.monotonic() - started, 1)},
        "summary": summary,
        "targets": targets(summary),
        "store_alone": alone,
        "profiles": profiles,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "state-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "state-latest.md").write_text(text)
    print(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    if all(r["ok"] for r in runs):
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    log(f"some runs failed; the servers' logs are kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
