"""Workload e of issue 21: slow DNS, smtpfw and its peers.

The loopback DNS server (tests/support/dnsserver.py ``--delay``) answers
every query after 0 ms ("instant"), 20 ms and 200 ms; ``smtpfw serve`` with
rules/reference.rules (one DNSBL lookup of the client address at connect,
one RHSBL lookup of the sender's domain at MAIL) forwards to Postfix's
smtp-sink.  One DNS server per delay and, per delay, one of each server
(``--servers``, default smtpfw,postfix,haraka), all started at once and
measured in turn within each repetition (the order of the delays and of
the servers rotated per repetition).

The peers (issue 21: "Postfix with postscreen and its DNSBL for e, Haraka
with dns-list"), each with the reference policy as bench/peers.py gives it
to them for workloads a-c, relaying to the same sink:

- Postfix (Debian's package): postscreen in front of smtpd
  (peers.PostscreenPostfix, peers.postscreen_settings:
  postscreen_dnsbl_sites = bl.test, postscreen_dnsbl_action = enforce, no
  pregreet test, the deep protocol tests off, process and queue limits
  above the 200 sessions) and smtpd with the reference restrictions
  (reject_rbl_client bl.test, reject_rhsbl_sender dbl.test, ...;
  peers.postfix_reference_settings);
- Haraka 3 (npm): dns-list (bl.test), the local rhsbl_sender plugin
  (dbl.test) and the rest of peers.Haraka's reference policy.

Both read only /etc/resolv.conf, so with them the DNS servers listen on
port 53 of their own loopback addresses (127.0.53.1, .2, .3: one per
delay), and each peer runs in a mount namespace whose resolv.conf names
its delay's server; smtpfw asks the same server.  Without the peers (not
root, Postfix or npm missing: each left out with a note in the results)
the DNS servers listen on free ports of 127.0.0.1.  Before measuring, the
reference sessions (peers.check_reference) go to every server at every
delay: every RCPT must get the reference's verdict.

Load: this file's own asyncio load generator (``--loadgen``, run as a
child process so its CPU is its own): 200 concurrent sessions, one 2 KB
message per connection, and no two sessions alike, so that no DNS answer
is cached anywhere: every session binds a different source address from
127.0.0.0/8 before it connects (127.16.0.1, 127.16.0.2, ...; on Linux the
whole of 127/8 is local to the loopback interface, so no network namespace
is needed) and sends from its own sender domain (``u@sN.senders.example``).
The addresses and domains never repeat within a benchmark run (warm-ups
included), and none of them is listed in ../shared/zones.

Two loads per delay and server.  Closed loop (the issue's workload): 200
sessions, each starting the next when the last ends; its msg/s is the
throughput, and since at most 200 sessions are open, session latency =
200 / msg/s whenever the server is the bottleneck (Little's law).  Paced:
one session started every 1/rate s (default rate: half the lowest
closed-loop msg/s with instant DNS among the servers, so that it is below
every server's saturation), at most 200 open: latency below saturation,
which shows what the DNS delay itself adds.

Per run: msg/s (messages / the generator's wall time; a message counts
after the 250 to its end of DATA), delivered msg/s (until the sink counted
them all), per-session latency (connect to the 221 reply to QUIT) p50, p90,
p99 and max, the wait for the greeting and for the RCPT reply (where the
DNS answers are waited for), server CPU ms per message (the server's
process tree, with reaped children: Postfix's smtpd, cleanup and smtp
processes), the generator's CPU and others' CPU (the machine's CPU used by
anything but the server, the generator, the sink and the DNS servers; 200
= both cores).  smtpfw / the best peer is taken per repetition and delay
(closed loop), over the peers whose run succeeded.

Targets (issue 21): throughput with slow DNS >= 0.8 x the same workload
with instant DNS; p99 session latency <= DNS delay + 50 ms (smtpfw's);
no number for smtpfw against the peers on e.

    python bench/slowdns_bench.py            # 5,000 messages a run, 3 repetitions, 3 servers (~25 minutes)
    python bench/slowdns_bench.py --quick    # 1,000 messages, 1 repetition (~2 minutes)
    python bench/slowdns_bench.py --servers smtpfw   # smtpfw alone, as before the peers

Also ``python bench/run.py --workloads e``.  Results:
bench/results/slowdns-latest.{json,md} (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(BENCH))

import procstat  # noqa: E402
import run as benchrun  # noqa: E402

log = benchrun.log
DELAYS_MS = (0, 20, 200)
SESSIONS = 200
SIZE = 2048
HELO = "loadgen.example.org"
RECIPIENT = "to@example.net"
RATIO_TARGET = 0.8            # throughput with slow DNS >= 0.8 x instant (issue 21)
LATENCY_MARGIN_MS = 50        # p99 session latency <= delay + 50 ms


# ---- the load generator (a child process) -------------------------------------------------

def client_address(n: int) -> str:
    """The n-th source address: 127.16.0.1, ..., 127.16.0.254, 127.16.1.1, ...
    (never .0 or .255, never in 127.0.0.0/16 where bl.test lists entries)."""
    rest, host = divmod(n, 254)
    return f"127.{16 + rest // 256}.{rest % 256}.{host + 1}"


async def _reply(reader: asyncio.StreamReader, want: int, what: str) -> None:
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"{what}: connection lost ({line!r})")
        if line[3:4] != b"-":
            break
    if int(line[:3]) // 100 != want // 100:
        raise ConnectionError(f"{what}: {line.decode(errors='replace').strip()}")


async def _generate(port: int, sessions: int, messages: int, offset: int, size: int, rate: float = 0.0) -> dict:
    """Closed loop (``rate`` 0: each of ``sessions`` starts its next session
    when the last one ends) or paced (session n starts at n / ``rate`` s, at
    most ``sessions`` at a time)."""
    loop = asyncio.get_running_loop()
    body_line = (b"x" * 76 + b"\r\n")
    body = b"Subject: slow dns\r\n\r\n" + body_line * max(1, size // len(body_line)) + b".\r\n"
    next_n = 0
    latencies: list[float] = []
    greets: list[float] = []
    rcpts: list[float] = []
    errors: dict[str, int] = {}

    async def one(n: int) -> None:
        src = client_address(offset + n)
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        try:
            await _reply(reader, 220, "greeting")
            t1 = loop.time()
            writer.write(f"EHLO {HELO}\r\n".encode())
            await _reply(reader, 250, "EHLO")
            writer.write(f"MAIL FROM:<u{n}@s{offset + n}.senders.example>\r\n".encode())
            await _reply(reader, 250, "MAIL")
            t2 = loop.time()
            writer.write(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
            await _reply(reader, 250, "RCPT")
            t3 = loop.time()
            writer.write(b"DATA\r\n")
            await _reply(reader, 354, "DATA")
            writer.write(body)
            await _reply(reader, 250, "end of DATA")
            writer.write(b"QUIT\r\n")
            await _reply(reader, 221, "QUIT")
            t4 = loop.time()
        finally:
            writer.close()
        latencies.append(t4 - t0)
        greets.append(t1 - t0)
        rcpts.append(t3 - t2)

    async def worker() -> None:
        nonlocal next_n
        while next_n < messages:
            n = next_n
            next_n += 1
            if rate:
                wait = begin + n / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                await one(n)
            except (OSError, ConnectionError, ValueError) as err:
                key = str(err)[:120]
                errors[key] = errors.get(key, 0) + 1

    start = time.perf_counter()
    begin = loop.time()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    wall = time.perf_counter() - start
    return {"ok": len(latencies), "failed": messages - len(latencies), "wall_s": wall, "errors": errors,
            "latency_ms": _percentiles(latencies), "greeting_ms": _percentiles(greets), "rcpt_ms": _percentiles(rcpts)}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return round(1000 * v[min(len(v) - 1, int(p * len(v)))], 1)
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(1000 * v[-1], 1),
            "mean": round(1000 * statistics.fmean(v), 1)}


def loadgen_main(args: argparse.Namespace) -> int:
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_generate(args.port, args.sessions, args.messages, args.offset, args.size, args.rate))
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


# ---- one measured run ---------------------------------------------------------------------

def measure(server: str, delay_ms: int, srv, port: int, sink: benchrun.SinkCounter, helpers: list[int],
            messages: int, offset: int, sessions: int, rate: float = 0.0) -> dict:
    sink0 = sink.count
    cpu0 = benchrun.tree_cpu(srv.pid)            # with reaped children (Postfix's smtpd, cleanup, smtp)
    help0 = procstat.cpu_seconds(helpers)
    busy0, total0 = procstat.machine_cpu()
    argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen", "--port", str(port), "--sessions",
            str(sessions), "--messages", str(messages), "--offset", str(offset), "--size", str(SIZE),
            "--rate", str(rate)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    rc = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(errors="replace"), proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    try:
        gen = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        gen = {"ok": 0, "failed": messages, "errors": {err.strip()[-300:] or f"exit {rc}": 1}}
    delivered_at = sink.wait_for(sink0 + gen["ok"], timeout=60.0) if gen["ok"] else None
    stop = delivered_at if delivered_at is not None else time.perf_counter()
    busy1, total1 = procstat.machine_cpu()
    cpu = benchrun.tree_cpu(srv.pid) - cpu0
    helpers_cpu = procstat.cpu_seconds(helpers) - help0
    loadgen = usage.ru_utime + usage.ru_stime
    wall = gen.get("wall_s") or (end - start)
    span = stop - start
    busy = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1) * span
    ok = rc == 0 and gen["failed"] == 0 and delivered_at is not None
    r = {
        "server": server, "delay_ms": delay_ms, "mode": f"paced {rate:g}/s" if rate else "closed", "rate": rate,
        "messages": messages, "ok": ok, "wall_s": round(wall, 3),
        "accepted_per_s": round(gen["ok"] / wall, 1) if wall else 0.0,
        "delivered_per_s": round(gen["ok"] / span, 1) if delivered_at is not None else 0.0,
        "latency_ms": gen.get("latency_ms", {}), "greeting_ms": gen.get("greeting_ms", {}),
        "rcpt_ms": gen.get("rcpt_ms", {}),
        "server_cpu_ms_per_msg": round(1000 * cpu / messages, 3),
        "server_cpu_pct": round(100 * cpu / span, 1),
        "loadgen_cpu_pct": round(100 * loadgen / (end - start), 1),
        "loadgen_cpu_ms_per_msg": round(1000 * loadgen / messages, 3),
        "helpers_cpu_pct": round(100 * helpers_cpu / span, 1),
        "machine_busy_pct": round(100 * busy / span, 1),
        "others_cpu_pct": round(max(0.0, 100 * (busy - cpu - helpers_cpu - loadgen) / span), 1),
        "sink_count": sink.count - sink0,
    }
    if not ok:
        r["error"] = (json.dumps(gen.get("errors", {}))[:500] or f"exit {rc}") + (
            "" if delivered_at is not None or not gen["ok"] else f"; the sink counted {sink.count - sink0} "
                                                                 f"of {gen['ok']} within 60 s")
    return r


# ---- summary ---------------------------------------------------------------------------------

METRICS = ("rate", "accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg", "server_cpu_pct",
           "loadgen_cpu_pct", "loadgen_cpu_ms_per_msg", "machine_busy_pct", "others_cpu_pct")


def summarize(runs: list[dict], delays: list[int], servers: list[str] = ("smtpfw",)) -> dict:
    """{mode: {delay: {server: entry, "ratio_to_best_peer": stat}}}; mode
    "closed" (throughput) or "paced".  Ratios are taken per repetition:
    each server to itself with instant DNS (same mode), and (closed loop)
    smtpfw to the best peer whose run of that repetition succeeded."""
    out: dict = {}
    for mode in ("closed", "paced"):
        for d in delays:
            at: dict = {}
            for server in servers:
                mine = [r for r in runs if r.get("server", "smtpfw") == server and r["delay_ms"] == d
                        and r["mode"].split()[0] == mode]
                if not mine:
                    continue
                rows = [r for r in mine if r["ok"]]
                e = {m: benchrun.stat([r[m] for r in rows]) for m in METRICS}
                for part in ("latency_ms", "greeting_ms", "rcpt_ms"):
                    e[part] = {q: benchrun.stat([r[part][q] for r in rows if r[part]])
                               for q in ("p50", "p90", "p99", "max")}
                ratios = []
                for r in rows:
                    inst = next((x for x in runs if x.get("server", "smtpfw") == server and x["delay_ms"] == 0
                                 and x["rep"] == r["rep"] and x["ok"] and x["mode"] == r["mode"]), None)
                    if inst:
                        ratios.append(r["accepted_per_s"] / inst["accepted_per_s"])
                e["ratio_to_instant"] = benchrun.stat(ratios)
                e["failed_runs"] = len(mine) - len(rows)
                at[server] = e
            if not at:
                continue
            peers = [s for s in at if s != "smtpfw"]
            if mode == "closed" and "smtpfw" in at and peers:
                best = []
                for r in runs:
                    if r.get("server", "smtpfw") != "smtpfw" or r["delay_ms"] != d or r["mode"] != "closed" \
                            or not r["ok"]:
                        continue
                    theirs = [x["accepted_per_s"] for x in runs if x.get("server") in peers and x["ok"]
                              and x["delay_ms"] == d and x["rep"] == r["rep"] and x["mode"] == "closed"]
                    if theirs:
                        best.append(r["accepted_per_s"] / max(theirs))
                at["ratio_to_best_peer"] = benchrun.stat(best)
            out.setdefault(mode, {})[str(d)] = at
    return out


def targets(summary: dict) -> list[dict]:
    """Issue 21's targets for smtpfw; smtpfw / the best peer per delay is
    reported beside them (the issue sets no number for e)."""
    rows = []
    for d, at in summary.get("closed", {}).items():
        e = at.get("smtpfw", {})
        if d != "0" and e.get("ratio_to_instant"):
            v = e["ratio_to_instant"]["median"]
            rows.append({"target": f"{d} ms: msg/s >= {RATIO_TARGET} x instant DNS (200 sessions, closed loop)",
                         "value": round(v, 2), "met": v >= RATIO_TARGET})
    for mode, what in (("closed", "200 sessions, closed loop"), ("paced", "paced below saturation")):
        for d, at in summary.get(mode, {}).items():
            p99 = at.get("smtpfw", {}).get("latency_ms", {}).get("p99", {}).get("median")
            if p99 is not None:
                limit = int(d) + LATENCY_MARGIN_MS
                rows.append({"target": f"{d} ms: p99 session latency <= {limit} ms ({what})", "value": p99,
                             "met": p99 <= limit})
    for d, at in summary.get("closed", {}).items():
        if at.get("ratio_to_best_peer"):
            rows.append({"target": f"{'instant' if d == '0' else d + ' ms'}: smtpfw msg/s / the best peer's "
                                   "(200 sessions, closed loop; no number in the issue)",
                         "value": round(at["ratio_to_best_peer"]["median"], 2), "met": None})
    return rows


LABELS = {"smtpfw": "smtpfw", "postfix": "Postfix + postscreen", "haraka": "Haraka"}


def markdown(result: dict) -> str:
    cfg = result["config"]
    f = benchrun._fmt
    lines = [
        f"# Workload e: slow DNS, {result['date']}", "",
        f"`{result['command']}`", "",
        f"- Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['os']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- smtpfw `--workers {cfg['workers']}` (`{cfg['smtpfw_cmd']}`), rules/reference.rules, forward to "
        "smtp-sink; DNS: tests/support/dnsserver.py answering every query after the delay, one per delay "
        f"({cfg['dns']}), the same for every server of that delay",
    ]
    for name, text in cfg.get("peers", {}).items():
        lines.append(f"- {LABELS.get(name, name)}: {text}")
    for note in cfg.get("notes", []):
        lines.append(f"- Note: {note}")
    lines += [
        f"- 2 KB messages, one per connection, every session from its own 127/8 address and sender domain (no DNS "
        f"answer cached); {cfg['reps']} repetition(s), median (min–max); load generator: {cfg['loadgen']}",
        f"- closed loop: {cfg['messages']:,} messages, {cfg['sessions']} concurrent sessions, each starting its "
        f"next session when the last ends (throughput); paced: {cfg['paced_messages']:,} messages, one session "
        f"started every 1/rate s (rate {cfg['paced_rate']}), at most {cfg['sessions']} at a time (latency below "
        "saturation); servers measured in turn, the order rotated per repetition",
        "- Latency: connect to the 221 reply to QUIT, per session; greeting: connect to 220; RCPT: the RCPT "
        "command's reply time. Percentiles per run, then the median (min–max) over the runs. Server CPU: its "
        "process tree with reaped children (Postfix's smtpd, cleanup, smtp). Others' CPU % = the machine's CPU "
        "used by anything but the server, the load generator, the sink and the DNS servers (200 = both cores). "
        "/ best peer: smtpfw's msg/s over the best of the peers' in the same repetition.", "",
        "| load | DNS delay | server | msg/s | / instant | / best peer | session p50 ms | p90 | p99 | max "
        "| greeting p99 | RCPT p99 | server CPU ms/msg | load gen CPU % | others' CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, delays in result["summary"].items():
        for d, at in delays.items():
            for server, e in at.items():
                if server == "ratio_to_best_peer":
                    continue
                lat = e["latency_ms"]
                failed = f" ⚠ {e['failed_runs']} failed" if e["failed_runs"] else ""
                load = f"{cfg['sessions']} sessions" if mode == "closed" else f"paced {f(e['rate'])}/s"
                best = f(at.get("ratio_to_best_peer", {}), 2) if server == "smtpfw" and mode == "closed" \
                    and "ratio_to_best_peer" in at else ""
                lines.append(
                    f"| {load} | {'instant' if d == '0' else d + ' ms'} | {LABELS.get(server, server)}{failed} "
                    f"| {f(e['accepted_per_s'])} "
                    f"| {f(e['ratio_to_instant'], 2) if d != '0' and mode == 'closed' else ''} | {best} "
                    f"| {f(lat['p50'])} | {f(lat['p90'])} | {f(lat['p99'])} | {f(lat['max'])} "
                    f"| {f(e['greeting_ms']['p99'])} | {f(e['rcpt_ms']['p99'])} "
                    f"| {f(e['server_cpu_ms_per_msg'], 2)} | {f(e['loadgen_cpu_pct'])} | {f(e['others_cpu_pct'])} |")
    lines += ["", "## Targets (issue 21, workload e)", "", "| target | measured | met |", "|---|---|---|"]
    for tg in result["targets"]:
        met = "—" if tg["met"] is None else ("yes" if tg["met"] else "**no**")
        lines.append(f"| {tg['target']} | {tg['value']} | {met} |")
    if result.get("verdicts"):
        lines += ["", "## Reference verdicts (every server, every delay, before measuring)", ""]
        for key, vd in result["verdicts"].items():
            lines.append(f"- {key}: {vd['cases']} RCPTs, "
                         + ("all as the reference" if not vd["mismatches"] else f"{len(vd['mismatches'])} differ")
                         + (f"; {len(vd['codes'])} with another reply code or stage" if vd["codes"] else ""))
    failures = [r for r in result["runs"] if not r["ok"]]
    if failures:
        lines += ["", "## Failed runs", ""]
        for r in failures:
            lines.append(f"- {r['server']} {r['mode']} {r['delay_ms']} ms rep {r['rep']}: {r.get('error', '')[:300]}")
    lines.append("")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------

SERVERS = ("smtpfw", "postfix", "haraka")
PEERS = ("postfix", "haraka")
DNS_NET = "127.0.53"          # the DNS servers with the peers: 127.0.53.1, .2, ... port 53 (one per delay)


def _check_verdicts(live: dict, timeout: float) -> dict:
    """peers.check_reference against every server at every delay, all at once
    (one thread each; no sink count: the warm-up counts deliveries)."""
    import peers
    out: dict = {}

    def one(key: str, port: int) -> None:
        out[key] = peers.check_reference(port, None, timeout=timeout)

    threads = [threading.Thread(target=one, args=(f"{server} {d} ms", port))
               for (server, d), (_, port) in live.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {key: out[key] for key in sorted(out, key=lambda k: (SERVERS.index(k.split()[0]), int(k.split()[1])))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="workload e: slow DNS (issue 21)")
    p.add_argument("--quick", action="store_true", help="1,000 messages, 1 repetition")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--messages", type=int, help="messages a run (default 5000, --quick 1000)")
    p.add_argument("--sessions", type=int, default=SESSIONS, help="concurrent sessions (default 200)")
    p.add_argument("--paced-rate", type=float, default=-1.0,
                   help="sessions/s of the paced runs (default: half the lowest closed-loop msg/s with instant "
                        "DNS among the servers; 0: no paced runs)")
    p.add_argument("--delays", default=",".join(map(str, DELAYS_MS)), help="DNS delays in ms (default 0,20,200)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="smtpfw and any of postfix,haraka (default all; a peer whose package or npm is missing, "
                        "or that cannot run here, is left out with a note)")
    p.add_argument("--haraka", help="a folder where `npm install Haraka` was run (default: "
                                    "/var/tmp/smtpfw-bench-haraka, installed there on first use)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="smtpfw workers and Haraka nodes (default: CPUs)")
    p.add_argument("--smtpfw-cmd", default=f"{sys.executable} -m smtpfw",
                   help="how to start smtpfw (default: this Python's -m smtpfw), for A/B runs of a build")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for slowdns-latest.json and .md")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install postfix (for smtp-sink), nor npm install Haraka")
    # the load generator itself (a child process of the benchmark)
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=SIZE, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loadgen:
        return loadgen_main(args)

    reps = args.reps or (1 if args.quick else 3)
    messages = args.messages or (1000 if args.quick else 5000)
    paced_messages = max(100, messages // 2)
    delays = [int(d) for d in args.delays.split(",") if d.strip()]
    if 0 not in delays:
        delays.insert(0, 0)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(s not in SERVERS for s in servers) or "smtpfw" not in servers:
        log(f"--servers: smtpfw and any of {','.join(PEERS)}")
        return 2
    _source, sink_bin, how = benchrun.find_postfix_tools(not args.no_install)
    if not sink_bin:
        log(f"smtp-sink: {how}")
        return 2
    try:
        import uvloop  # noqa: F401
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    zones = sorted(str(z) for z in (SHARED / "zones").glob("*") if z.is_file())

    # the peers (bench/peers.py): Postfix with postscreen, Haraka; each left out with a note if it cannot run
    notes: list[str] = []
    peer_setup: dict[str, str] = {}
    haraka_exe, haraka_how = None, ""
    dns_hosts = {d: ("127.0.0.1", 0) for d in delays}
    if any(s in PEERS for s in servers):
        sys.path.insert(0, str(ROOT))
        import peers
        from policy_bench import port_free
        servers, haraka_exe, haraka_how = peers.runnable_peers(servers, notes, args.haraka, not args.no_install)
        if any(s in PEERS for s in servers):
            dns_hosts = {d: (f"{DNS_NET}.{i + 1}", 53) for i, d in enumerate(delays)}
            taken = [h for h, port in dns_hosts.values() if not port_free(h, port)]
            if taken:
                log(f"port 53 of {', '.join(taken)} is taken: stop what uses it (the peers' DNS servers are "
                    f"{DNS_NET}.1, .2, ...)")
                return 2
    for note in notes:
        log(note)
    policy = SHARED / "policy"
    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-slowdns-"))
    tmp.chmod(0o755)                    # Postfix's and Haraka's users read the resolv.conf files in it
    services: list = []
    runs: list[dict] = []
    verdicts: dict = {}
    versions = benchrun.tool_versions(True)
    paced_rate = args.paced_rate
    offset = 0
    try:
        sink_port = benchrun.free_port()
        read_fd, write_fd = os.pipe()
        sink_argv = [sink_bin, "-c", "-m", "2000"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        sink = benchrun.Service("sink", [*sink_argv, f"127.0.0.1:{sink_port}", "1024"], tmp, stdout=write_fd)
        os.close(write_fd)
        services.append(sink)
        counter = benchrun.SinkCounter(read_fd)
        benchrun.wait_smtp(sink_port, sink)
        live: dict[tuple[str, int], tuple] = {}         # (server, delay) -> (process, port)
        dnss = []
        for d in delays:
            host, dns_port = dns_hosts[d]
            dns_port = dns_port or benchrun.free_port()
            dns_hosts[d] = (host, dns_port)
            dns = benchrun.Service(f"dns-{d}ms", [sys.executable, str(ROOT / "tests/support/dnsserver.py"),
                                                  "--host", host, "--port", str(dns_port),
                                                  "--delay", str(d / 1000), *zones], tmp)
            services.append(dns)
            dnss.append(dns)
            benchrun.wait_line(dns, "dnsserver listening")
            port = benchrun.free_port()
            cfg = tmp / f"smtpfw-{d}ms.yaml"
            cfg.write_text(
                f"listen: 127.0.0.1:{port}\nhostname: smtpfw.bench.test\n"
                f"server:\n  workers: {args.workers}\n"
                f"delivery:\n  mode: forward\n  forward: 127.0.0.1:{sink_port}\n"
                "limits:\n  max_connections: 10000\n"
                f"dns:\n  nameservers: [\"{host}:{dns_port}\"]\n")
            fw = benchrun.Service(f"smtpfw-{d}ms", [*args.smtpfw_cmd.split(), "serve", "--config", str(cfg),
                                                    "--rules", str(ROOT / "rules/reference.rules")], tmp)
            services.append(fw)
            live[("smtpfw", d)] = (fw, port)
            if any(s in PEERS for s in servers):
                resolv = tmp / f"resolv-{d}ms.conf"
                resolv.write_text(f"nameserver {host}\noptions timeout:2 attempts:2\n")
                resolv.chmod(0o644)
            if "postfix" in servers:
                settings = {**peers.postfix_reference_settings(tmp / f"postfix-{d}ms", sink_port, policy),
                            **peers.postscreen_settings(args.sessions)}
                pf = peers.PostscreenPostfix(f"slowdns-{d}ms", settings, resolv)
                services.append(pf)
                pf.start()
                live[("postfix", d)] = (pf, pf.port)
                peer_setup["postfix"] = (
                    "master -d, master.cf `inet ... postscreen`, `smtpd pass`, `dnsblog`, `tlsproxy`; "
                    + ", ".join(f"{k} = {settings[k]}" for k in (
                        "postscreen_dnsbl_sites", "postscreen_dnsbl_action", "postscreen_access_list",
                        "postscreen_greet_banner", "default_process_limit", "postscreen_pre_queue_limit",
                        "postscreen_post_queue_limit", "smtpd_recipient_restrictions", "smtpd_delay_reject",
                        "relayhost"))
                    + "; postscreen_dnsbl_threshold and the deep protocol tests (off) at their defaults; "
                    "resolv.conf naming that delay's DNS server").replace(f"{tmp}/postfix-{d}ms/postfix-tables/", "")
            if "haraka" in servers:
                hk = peers.Haraka(haraka_exe, tmp, f"haraka-{d}ms", None, None, sink_port, resolv, args.workers,
                                  policy=policy)
                services.append(hk)
                hk.start()
                live[("haraka", d)] = (hk, hk.port)
                plugins = (hk.dir / "config" / "plugins").read_text().split()
                peer_setup["haraka"] = (f"Haraka {peers.haraka_version(haraka_exe)} ({haraka_how}), "
                                        f"nodes={args.workers}, plugins: {', '.join(plugins)} (dns-list: bl.test; "
                                        "rhsbl_sender: dbl.test, bench/peers.py); resolv.conf naming that delay's "
                                        "DNS server; it also looks up every client's PTR name")
                versions["haraka"] = peers.haraka_version(haraka_exe)
                versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                                  check=False).stdout.strip()
        for (server, d), (srv, port) in live.items():
            benchrun.wait_smtp(port, srv, timeout=60)
        helpers = [sink.pid] + [s.pid for s in dnss]
        log(", ".join(f"{server} {d} ms :{port}" for (server, d), (_, port) in live.items())
            + f"; sink :{sink_port}; dns " + ", ".join(f"{d} ms {h}:{pt}" for d, (h, pt) in dns_hosts.items())
            + f"; {args.sessions} sessions, {messages} messages a run")
        if len(servers) > 1:                # the peers' verdicts (and smtpfw's) before anything is measured
            verdicts = _check_verdicts(live, timeout=30.0)
            for key, vd in verdicts.items():
                log(f"verdicts {key}: {vd['cases']} RCPTs, "
                    + ("all as the reference" if not vd["mismatches"]
                       else f"{len(vd['mismatches'])} DIFFER:\n    " + "\n    ".join(vd["mismatches"]))
                    + (f"; {len(vd['codes'])} other reply codes or stages" if vd["codes"] else ""))
            if any(v["mismatches"] for v in verdicts.values()):
                raise RuntimeError("a server's verdicts differ from the reference's (above): not measuring")
        for (server, d), (srv, port) in live.items():    # warm-up: processes forked, pools sized, code paths run
            r = measure(server, d, srv, port, counter, helpers, 300 if args.quick else 1000, offset, args.sessions)
            offset += r["messages"]
            if not r["ok"]:
                raise RuntimeError(f"warm-up of {server} ({d} ms) failed: {r.get('error')}")
        for rep in range(reps):
            order = delays[rep % len(delays):] + delays[:rep % len(delays)]
            turn = servers[rep % len(servers):] + servers[:rep % len(servers)]
            plan = [(d, s, 0.0) for d in order for s in turn]
            if paced_rate != 0:
                plan += [(d, s, None) for d in order for s in turn]
            for d, server, rate in plan:
                if rate is None:            # paced: half the lowest closed-loop rate with instant DNS, once chosen
                    if paced_rate < 0:
                        inst = {}
                        for r in runs:
                            if r["delay_ms"] == 0 and r["ok"] and r["mode"] == "closed":
                                inst.setdefault(r["server"], []).append(r["accepted_per_s"])
                        low = min((statistics.median(v) for v in inst.values()), default=0.0)
                        paced_rate = max(10.0, 10 * (low // 20)) if low else 100.0
                    rate = paced_rate
                srv, port = live[(server, d)]
                for s in services:
                    s.check()
                time.sleep(0.5)
                n = messages if not rate else paced_messages
                r = measure(server, d, srv, port, counter, helpers, n, offset, args.sessions, rate)
                offset += n
                r["rep"] = rep + 1
                runs.append(r)
                lat = r["latency_ms"]
                log(f"  rep {rep + 1} {r['mode']:13} {d:4} ms {server:7}: {r['accepted_per_s']:7.1f} msg/s, "
                    f"latency p50 {lat.get('p50')} "
                    f"p90 {lat.get('p90')} p99 {lat.get('p99')} ms, greeting p99 {r['greeting_ms'].get('p99')}, "
                    f"rcpt p99 {r['rcpt_ms'].get('p99')}, cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg, loadgen "
                    f"{r['loadgen_cpu_pct']:.0f}%, others {r['others_cpu_pct']:.0f}%"
                    + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
    except BaseException:
        log(f"benchmark failed; logs are kept in {tmp}")
        raise
    finally:
        for s in reversed(services):
            try:
                s.stop()
            except Exception as err:              # go on stopping the others
                log(f"stopping {s.name}: {err}")

    summary = summarize(runs, delays, servers)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/slowdns_bench.py" + (" " + " ".join(argv if argv is not None
                                                                    else sys.argv[1:])).rstrip(),
        "machine": benchrun.machine(),
        "versions": versions,
        "config": {"workers": args.workers, "reps": reps, "quick": args.quick, "messages": messages,
                   "smtpfw_cmd": args.smtpfw_cmd, "paced_messages": paced_messages,
                   "paced_rate": (f"{paced_rate:g}/s" + (" = half the lowest closed-loop msg/s with instant DNS "
                                                         "among the servers, first repetition"
                                                         if args.paced_rate < 0 else ""))
                   if paced_rate > 0 else "none",
                   "sessions": args.sessions, "delays_ms": delays, "servers": servers, "peers": peer_setup,
                   "notes": notes, "dns": ", ".join(f"{d} ms {h}:{pt}" for d, (h, pt) in dns_hosts.items()),
                   "loadgen": f"bench/slowdns_bench.py --loadgen (Python, {loop_name}, one process)"},
        "summary": summary,
        "targets": targets(summary),
        "verdicts": verdicts,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slowdns-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / "slowdns-latest.md").write_text(text)
    print(text)
    if all(r["ok"] for r in runs):
        shutil.rmtree(tmp, ignore_errors=True)
        for (server, _), (srv, _) in live.items():
            if server == "postfix":
                shutil.rmtree(srv.root, ignore_errors=True)
        return 0
    log(f"some runs failed; logs are kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
