"""End-to-end benchmark of smtpfw against Postfix, Haraka and a bare aiosmtpd
baseline (issues 8 and 21).

    python bench/run.py            # 3 repetitions of workloads a, b, c (~10 min with the peers)
    python bench/run.py --quick    # a short smoke run (~2 min)
    python bench/run.py --workloads a --quick --messages 300 --reps 1   # smallest

What it starts, all on loopback and all stopped at the end:

- the tests' DNS server (tests/support/dnsserver.py) serving ../shared/zones
  on DNS_HOST:53 (``--dns-host``, default 127.0.21.21): Postfix and Haraka
  only read /etc/resolv.conf, so each runs in a mount namespace in which a
  resolv.conf naming that address is bind-mounted over it
  (tests/support/postfix.py ``in_namespace``);
- Postfix's ``smtp-sink`` as the downstream (installed with apt-get if
  missing; bench/pysink.py only if that fails, and the results say so);
- ``smtpfw serve`` with rules/reference.rules, forwarding to the sink;
- bench/baseline_server.py, a bare aiosmtpd server that accepts and discards;
- the peers (issue 21), each relaying what it accepts to the same sink,
  each with the reference policy (../shared/policy, ../shared/zones) in its
  own terms (bench/peers.py):
  Postfix (Debian's package, ``master -d`` in a temp dir): reject_rbl_client
  bl.test, check_helo/sender/recipient_access hash maps, reject_rhsbl_sender
  dbl.test, relay_domains = rcpthosts with reject_unauth_destination,
  smtpd_delay_reject = yes, relayhost = the sink;
  Haraka 3 (npm, cached in /var/tmp/smtpfw-bench-haraka): delay_deny,
  dns-list, helo.checks, access, rcpt_to.in_host_list, smtp_forward and
  two small local plugins (bench/peers.py says which and why).

Before measuring, the reference sessions (tests/support/reference.py, from
127.0.0.1, .2 and .5) go to smtpfw and each peer: every RCPT must get the
reference's verdict and every accepted session must reach the sink, or the
benchmark stops (peers.check_reference).

Every server gets the same load from Postfix's ``smtp-source`` (one message
per connection, one recipient), in turn, the order rotated per repetition:

    a) 5,000 x 2 KB, 20 sessions   b) 5,000 x 2 KB, 100 sessions
    c) 2,000 x 100 KB, 20 sessions

Per run: messages/s accepted (smtp-source's wall time; it stops at the first
non-2xx reply), messages/s delivered (until the sink counted them all), server
CPU ms per message (utime+stime of the server's process tree, with the
children that exited: Postfix's smtpd, cleanup and smtp processes, until the
sink had every message), peak RSS and PSS of the tree, the DNS server's CPU,
and the load generator's own CPU use.  Ratios are taken per repetition:
smtpfw / baseline, smtpfw / each peer, smtpfw / the best peer of that
repetition.  The same load sent straight to smtp-sink ("ceiling") shows what
the load generator can do.  Results: bench/results/latest.json and latest.md
(--out to change).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SENDER, RECIPIENT, HELO = "from@example.org", "to@example.net", "loadgen.example.org"


@dataclass(frozen=True)
class Workload:
    name: str
    messages: int
    size: int
    sessions: int
    target: float            # smtpfw / baseline accept rate (issue 8)
    peer_target: float = 3.0  # smtpfw / the best of Postfix and Haraka (issue 21)

    def describe(self) -> str:
        size = f"{self.size // 1024} KB" if self.size >= 1024 else f"{self.size} B"
        return f"{self.messages:,} x {size}, {self.sessions} sessions"


WORKLOADS = {
    "a": Workload("a", 5000, 2048, 20, 0.7),
    "b": Workload("b", 5000, 2048, 100, 0.7),
    "c": Workload("c", 2000, 100 * 1024, 20, 1.5),
}
QUICK_MESSAGES = {"a": 1000, "b": 1000, "c": 300}
CPU_TARGET_MS = 1.5          # per 2 KB message
SERVERS = ("smtpfw", "baseline", "postfix", "haraka")
PEERS = ("postfix", "haraka")
LABELS = {"smtpfw": "smtpfw", "baseline": "bare aiosmtpd", "ceiling": "smtp-sink (load ceiling)",
          "postfix": "Postfix (reference policy)", "haraka": "Haraka (reference policy)"}
PSS_TARGET_MB = 100.0        # whole tree, at 100 sessions (workload b)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- tools ------------------------------------------------------------------

def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def find_postfix_tools(install: bool) -> tuple[str | None, str | None, str]:
    """(smtp-source, smtp-sink, note); installs Debian's postfix if needed."""
    source, sink = _which("smtp-source"), _which("smtp-sink")
    if source and sink:
        return source, sink, "found"
    if not install:
        return source, sink, "not installed (--no-install)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return source, sink, "not installed (needs root and apt-get)"
    log("installing postfix (for smtp-source and smtp-sink) with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                   env=env, check=False, capture_output=True)
    for cmd in (["apt-get", "install", "-y", "-q", "postfix"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postfix"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if cmd[1] == "install" and proc.returncode == 0:
            break
    source, sink = _which("smtp-source"), _which("smtp-sink")
    if source and sink:
        return source, sink, "installed with apt-get"
    return source, sink, f"apt-get install postfix failed: {proc.stderr.strip().splitlines()[-1:]}"


def tool_versions(postfix: bool) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("smtpfw", "aiosmtpd", "uvloop", "dnspython", "lark"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if postfix:
        try:
            proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postfix"],
                                  capture_output=True, text=True, timeout=10)
            out["postfix"] = proc.stdout.strip() or "unknown"
        except OSError:
            out["postfix"] = "unknown"
    try:
        out["smtpfw_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            out["smtpfw_commit"] += "+dirty"
    except OSError:
        pass
    return out


def machine() -> dict:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "os": _os_name()}


def _os_name() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


# ---- processes ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A child process with its output in a log file; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], logdir: Path, stdout=None):
        self.name = name
        self.argv = argv
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=stdout or self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_smtp(port: int, service: Service, timeout: float = 30.0) -> None:
    """Until the port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    while True:
        service.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not answer on port {port} within {timeout:.0f}s")
        time.sleep(0.1)


def wait_line(service: Service, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in service.log_path.read_text(errors="replace"):
        service.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not start within {timeout:.0f}s")
        time.sleep(0.05)


class SinkCounter:
    """Reads smtp-sink's ``-c`` counters ("... mesg=N\\r") from its stdout pipe
    and remembers when each count was reached."""

    def __init__(self, fd: int):
        self.fd = fd
        self.count = 0
        self._cond = threading.Condition()
        self._reached: list[tuple[int, float]] = []      # (count, time) when it changed
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return
            now = time.perf_counter()
            pending += chunk
            *records, pending = pending.replace(b"\n", b"\r").split(b"\r")
            for rec in reversed(records):
                pos = rec.find(b"mesg=")
                if pos != -1:
                    value = int(rec[pos + 5:].split()[0] or 0)
                    with self._cond:
                        if value > self.count:
                            self.count = value
                            self._reached.append((value, now))
                            del self._reached[:-4]
                            self._cond.notify_all()
                    break

    def wait_for(self, count: int, timeout: float) -> float | None:
        """perf_counter time at which the sink had ``count`` messages, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return next(t for c, t in self._reached if c >= count)


# ---- one measured run ----------------------------------------------------------

def run_load(source: list[str], wl: Workload, messages: int, port: int) -> dict:
    argv = [*source, "-s", str(wl.sessions), "-m", str(messages), "-l", str(wl.size),
            "-M", HELO, "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    return {"start": start, "end": end, "rc": proc.returncode, "error": err[-300:],
            "loadgen_cpu_s": usage.ru_utime + usage.ru_stime}


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root``'s process tree, with the children
    that exited and were reaped (their parent's cutime and cstime): Postfix's
    smtpd, cleanup and smtp processes exit after max_use requests."""
    total = 0
    for pid in procstat.tree(root):
        fields = procstat._stat_fields(pid)
        if fields is not None:           # utime, stime, cutime, cstime (stat fields 14-17)
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / procstat.CLK_TCK


def measure(name: str, server, source: list[str], wl: Workload, messages: int,
            port: int, sink: SinkCounter | None, helpers: list[int] = (), dns_pid: int | None = None,
            delivery_timeout: float = 30.0) -> dict:
    """One run of ``wl`` against ``port``; with ``sink``, until the sink
    counted every message.  ``helpers`` (sink, DNS server) are counted
    apart, so that CPU used by anything else on the machine (other load that
    skews the comparison) shows as ``others_cpu_pct``."""
    pids = procstat.tree(server.pid) if server else []
    cpu0 = tree_cpu(server.pid) if server else 0.0
    per0 = {pid: procstat.cpu_seconds([pid]) for pid in pids}
    help0 = sum(tree_cpu(p) for p in helpers)
    dns0 = tree_cpu(dns_pid) if dns_pid else 0.0
    busy0, total0 = procstat.machine_cpu()
    sink0 = sink.count if sink else 0
    sampler = procstat.MemorySampler(server.pid) if server else None
    if sampler:
        sampler.__enter__()
    try:
        load = run_load(source, wl, messages, port)
        delivered_at = None
        if sink is not None and load["rc"] == 0:
            delivered_at = sink.wait_for(sink0 + messages, timeout=delivery_timeout)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    stop = delivered_at if delivered_at is not None else time.perf_counter()
    busy1, total1 = procstat.machine_cpu()
    cpu1 = tree_cpu(server.pid) if server else 0.0
    per = {pid: procstat.cpu_seconds([pid]) - before for pid, before in per0.items()}
    help1 = sum(tree_cpu(p) for p in helpers)
    dns1 = tree_cpu(dns_pid) if dns_pid else 0.0
    wall = load["end"] - load["start"]
    span = max(wall, stop - load["start"])      # until the sink had every message (relaying servers)
    busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    out = {
        "server": name,
        "workload": wl.name,
        "messages": messages,
        "ok": load["rc"] == 0 and (sink is None or delivered_at is not None),
        "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if load["rc"] == 0 else 0.0,
        "loadgen_cpu_pct": round(100 * load["loadgen_cpu_s"] / wall, 1),
        "machine_busy_pct": round(busy_pct, 1),
        "helpers_cpu_pct": round(100 * (help1 - help0) / span, 1),
        "others_cpu_pct": round(max(0.0, busy_pct - 100 * (cpu1 - cpu0 + help1 - help0
                                                            + load["loadgen_cpu_s"]) / span), 1),
    }
    if dns_pid:
        out["dns_cpu_ms_per_msg"] = round(1000 * (dns1 - dns0) / messages, 3)
    if load["rc"] != 0:
        out["error"] = load["error"] or f"load generator exit code {load['rc']}"
    elif sink is not None and delivered_at is None:
        out["error"] = f"the sink counted {sink.count - sink0} of {messages} messages within {delivery_timeout:.0f} s"
    if sink is not None:
        out["delivered_per_s"] = (round(messages / (delivered_at - load["start"]), 1)
                                  if delivered_at is not None else 0.0)
        out["sink_count"] = sink.count - sink0
    if server is not None:
        out["server_cpu_ms_per_msg"] = round(1000 * (cpu1 - cpu0) / messages, 3)
        out["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / span, 1)
        out["peak_rss_mb"] = round(sampler.peak_rss_kb / 1024, 1)
        out["peak_pss_mb"] = round(sampler.peak_pss_kb / 1024, 1)
        if name == "smtpfw" and len(per) > 1:   # how the work was shared: each worker's part of the tree's CPU
            workers = [per[p] for p in pids if p != server.pid]
            out["worker_cpu_share_pct"] = [round(100 * w / max(1e-9, sum(per.values()))) for w in workers]
    return out


# ---- summary -------------------------------------------------------------------

def stat(values: list[float]) -> dict:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


METRICS = ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg", "peak_rss_mb", "peak_pss_mb",
           "loadgen_cpu_pct", "server_cpu_pct", "helpers_cpu_pct", "dns_cpu_ms_per_msg", "machine_busy_pct",
           "others_cpu_pct")


def summarize(runs: list[dict], workloads: list[Workload], scale: dict[str, int]) -> dict:
    """Per workload: each server's medians (min-max), and smtpfw's ratios,
    taken per repetition (both servers measured in it): to the baseline
    (``ratio``, issue 8), to each peer (``ratio_to``) and to the better of
    the peers in that repetition (``ratio_to_best_peer``, issue 21; by
    accepted and by delivered msg/s)."""
    out = {}
    for wl in workloads:
        wl = Workload(wl.name, scale[wl.name], wl.size, wl.sessions, wl.target, wl.peer_target)
        rows = [r for r in runs if r["workload"] == wl.name]
        entry = {"description": wl.describe(), "target_ratio": wl.target, "peer_target_ratio": wl.peer_target}
        for key in ("smtpfw", "baseline", "ceiling", *PEERS):
            mine = [r for r in rows if r["server"] == key]
            if not mine and key in PEERS:
                continue
            good = [r for r in mine if r["ok"]]
            entry[key] = {m: stat([r[m] for r in good if m in r]) for m in METRICS if any(m in r for r in good)}
            entry[key]["failed_runs"] = len(mine) - len(good)

        def per_rep(other: str, metric: str = "accepted_per_s") -> list[float]:
            values = []
            for fw in (r for r in rows if r["server"] == "smtpfw" and r["ok"]):
                o = next((r for r in rows if r["server"] == other and r.get("rep") == fw.get("rep") and r["ok"]),
                         None)
                if o and o.get(metric):
                    values.append(fw[metric] / o[metric])
            return values

        entry["ratio"] = stat(per_rep("baseline"))
        entry["ratio_to"] = {p: stat(per_rep(p)) for p in PEERS if p in entry}
        best, best_delivered, best_names, best_cpu = [], [], [], []
        for fw in (r for r in rows if r["server"] == "smtpfw" and r["ok"]):
            peers = [r for r in rows if r["server"] in PEERS and r.get("rep") == fw.get("rep") and r["ok"]]
            failed = [r for r in rows if r["server"] in PEERS and r.get("rep") == fw.get("rep") and not r["ok"]]
            if peers and not failed:
                top = max(peers, key=lambda r: r["accepted_per_s"])
                best.append(fw["accepted_per_s"] / top["accepted_per_s"])
                best_names.append(top["server"])
                top_d = max(peers, key=lambda r: r.get("delivered_per_s", 0.0))
                if top_d.get("delivered_per_s") and fw.get("delivered_per_s"):
                    best_delivered.append(fw["delivered_per_s"] / top_d["delivered_per_s"])
                leanest = min(r["server_cpu_ms_per_msg"] for r in peers)
                if fw.get("server_cpu_ms_per_msg"):
                    best_cpu.append(leanest / fw["server_cpu_ms_per_msg"])
        if best:
            entry["ratio_to_best_peer"] = stat(best)
            entry["delivered_ratio_to_best_peer"] = stat(best_delivered)
            entry["cpu_ratio_to_best_peer"] = stat(best_cpu)        # the leaner peer's CPU/msg / smtpfw's
            entry["best_peer"] = max(set(best_names), key=best_names.count)
        out[wl.name] = entry
    return out


def targets(summary: dict) -> list[dict]:
    rows = []
    for name, e in summary.items():
        ratio = e.get("ratio_to_best_peer", {}).get("median")
        if ratio is not None:
            rows.append({"target": f"{name}: smtpfw >= {e['peer_target_ratio']:g}x best of Postfix and Haraka "
                                   "(accepted msg/s, issue 21)",
                         "value": round(ratio, 2), "met": ratio >= e["peer_target_ratio"]})
    for name, e in summary.items():
        ratio = e["ratio"].get("median")
        if ratio is not None:
            rows.append({"target": f"{name}: accept rate >= {e['target_ratio']} x baseline (issue 8)",
                         "value": round(ratio, 2), "met": ratio >= e["target_ratio"]})
    for name, e in summary.items():
        if name in ("a", "b"):
            cpu = e["smtpfw"].get("server_cpu_ms_per_msg", {}).get("median")
            if cpu is not None:
                rows.append({"target": f"{name}: server CPU <= {CPU_TARGET_MS} ms per 2 KB message (issue 8)",
                             "value": cpu, "met": cpu <= CPU_TARGET_MS})
    if "b" in summary:
        pss = summary["b"]["smtpfw"].get("peak_pss_mb", {}).get("max")
        if pss is not None:
            rows.append({"target": f"b: peak PSS of the tree <= {PSS_TARGET_MB:.0f} MB at 100 sessions (issue 8)",
                         "value": pss, "met": pss <= PSS_TARGET_MB})
    return rows


def _fmt(s: dict, digits: int = 0) -> str:
    if not s:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}–{f.format(s['max'])})"


def markdown(result: dict) -> str:
    m, v, cfg = result["machine"], result["versions"], result["config"]
    lines = [
        f"# smtpfw benchmark, {result['date']}",
        "",
        f"`{result['command']}`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB, {m['os']}, Linux {m['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- smtpfw: `--workers {cfg['workers']}`, rules/reference.rules, forward to the sink; "
        f"event loop: {cfg['event_loop']}",
    ]
    for name in PEERS:
        if cfg.get("peers", {}).get(name):
            lines.append(f"- {LABELS[name]}: {cfg['peers'][name]}")
    lines += [
        f"- Load: {cfg['loadgen']}; sink: {cfg['sink']}; DNS: tests/support/dnsserver.py on {cfg.get('dns', '?')}",
        f"- {cfg['reps']} repetition(s), servers in rotated order; median (min–max). Accept = messages / load "
        "generator wall time; delivered = until the sink counted them all. CPU ms/msg = utime+stime of the "
        "server's process tree per message (children that exited included), until the sink had them all. "
        "DNS ms/msg = the loopback DNS server's CPU. Others' CPU % = machine CPU used by processes other than "
        "the server, load generator, sink and DNS server during the run (200 = both cores): where it is high "
        "the run was disturbed. smtpfw / this = smtpfw's accepted msg/s / this server's, per repetition.",
        "",
    ]
    if cfg.get("notes"):
        lines += [f"**Note:** {n}" for n in cfg["notes"]] + [""]
    lines += ["| workload | server | accepted msg/s | delivered msg/s | CPU ms/msg | DNS ms/msg | peak RSS MB "
              "| peak PSS MB | load gen CPU % | others' CPU % | smtpfw / this |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in result["summary"].items():
        for key in ("smtpfw", *PEERS, "baseline", "ceiling"):
            s = e.get(key)
            if not s or not s.get("accepted_per_s") and not s.get("failed_runs"):
                continue
            if key == "smtpfw":
                ratio = ""
                if e.get("ratio_to_best_peer"):
                    ratio = (f"**{_fmt(e['ratio_to_best_peer'], 2)}** × best peer (target ≥ "
                             f"{e['peer_target_ratio']:g}); ")
                ratio += f"{_fmt(e['ratio'], 2)} × baseline (target ≥ {e['target_ratio']})"
            elif key in PEERS:
                ratio = _fmt(e["ratio_to"].get(key, {}), 2)
            elif key == "baseline":
                ratio = _fmt(e["ratio"], 2)
            else:
                ratio = ""
            failed = f" ⚠ {s['failed_runs']} failed run(s)" if s.get("failed_runs") else ""
            lines.append(
                f"| {name}) {e['description']} | {LABELS[key]}{failed} | {_fmt(s.get('accepted_per_s', {}))} "
                f"| {_fmt(s.get('delivered_per_s', {}))} | {_fmt(s.get('server_cpu_ms_per_msg', {}), 2)} "
                f"| {_fmt(s.get('dns_cpu_ms_per_msg', {}), 2)} "
                f"| {_fmt(s.get('peak_rss_mb', {}))} | {_fmt(s.get('peak_pss_mb', {}))} "
                f"| {_fmt(s.get('loadgen_cpu_pct', {}))} | {_fmt(s.get('others_cpu_pct', {}))} | {ratio} |")
    best = [f"{name}: {e['best_peer']}, by delivered msg/s {_fmt(e.get('delivered_ratio_to_best_peer', {}), 2)}, "
            f"by CPU per message {_fmt(e.get('cpu_ratio_to_best_peer', {}), 2)}"
            for name, e in result["summary"].items() if e.get("best_peer")]
    if best:
        lines += ["", "Best peer (by accepted msg/s, most often) and smtpfw's ratio to the best peer by delivered "
                  "msg/s, and by CPU per message (the leaner peer's CPU ms/msg / smtpfw's: what the msg/s ratio "
                  "comes to when the machine's cores are the limit, and less disturbed by other work): "
                  + "; ".join(best)]
    shares = [f"{r['workload']}: " + "/".join(str(x) for x in r["worker_cpu_share_pct"])
              for r in result["runs"] if r["server"] == "smtpfw" and r.get("worker_cpu_share_pct")]
    if shares:
        lines += ["", "smtpfw workers' shares of the tree's CPU per run, % (the parent only supervises): "
                  + ", ".join(shares)]
    if result.get("verdicts"):
        lines += ["", "## Reference verdicts (checked before measuring)", ""]
        for name, vd in result["verdicts"].items():
            state = ("every verdict as the reference's" if not vd["mismatches"]
                     else f"**{len(vd['mismatches'])} verdict(s) differ**: " + "; ".join(vd["mismatches"]))
            lines.append(f"- {LABELS[name]}: {vd['cases']} RCPTs, {state}; {vd['delivered']} of "
                         f"{vd['expected_deliveries']} accepted sessions counted by the sink")
            if vd["codes"]:
                lines.append(f"  - same verdict, other reply than the reference's ({len(vd['codes'])}): "
                             + "; ".join(vd["codes"]))
    if cfg.get("haraka_differences"):
        lines += ["", "## Haraka: the reference policy in Haraka 3's terms", ""]
        lines += [f"- {d}" for d in cfg["haraka_differences"]]
    lines += ["", "## Targets (issues 8 and 21)", "", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    lines.append("")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------

HARAKA_DIFFERENCES = [
    "RHSBL on the envelope sender (dbl.test): Haraka 3 ships no plugin for it (dns-list looks up client IPs only; "
    "haraka-plugin-uribl can look up the MAIL FROM domain but also turns on body parsing for every message and "
    "looks up the client's PTR name): a local plugin of 20 lines (bench/peers.py RHSBL_SENDER_JS, "
    "dns.resolve4 of <domain>.dbl.test at MAIL).",
    "Loopback clients: Haraka marks loopback and private clients is_private and dns-list and helo.checks skip "
    "them; a local plugin (loopback_is_public) clears the flag, so the bench's clients are checked as internet "
    "clients are.",
    "badhelo as helo.checks' match_re (regexps, escaped, anchored, case-insensitive): Haraka has no exact HELO list.",
    "badmailfrom's @domain entries as mail_from.access.blacklist_regex `.*@domain` (the exact list holds addresses).",
    "The relay-hack rule ([%!@] in the local part) as rcpt_to.access.blacklist_regex.",
    "Reply codes: Haraka's own (550 for the DNSBL where the reference gives 554; 550 'I cannot deliver mail for' "
    "for relaying where it gives 554 'Relay access denied'); the verdicts are the same (see Reference verdicts).",
    "No DNS cache: Haraka asks the DNS server for every session (DNSBL, RHSBL, and the PTR name Haraka looks up "
    "for every client); Postfix's smtpd and smtpfw keep answers per process.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smtpfw end-to-end benchmark (issues 8 and 21).")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer messages, 1 repetition")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--messages", type=int, help="messages per run for every workload (default 5,000 / 5,000 / "
                                                 "2,000; --quick 1,000 / 1,000 / 300)")
    p.add_argument("--workloads", default="a,b,c",
                   help="which of a,b,c (default all), and d: STARTTLS (bench/tls_bench.py), e: slow DNS "
                        "(bench/slowdns_bench.py), g: big lists and maps (bench/lists_bench.py)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"which of {','.join(SERVERS)} for a, b, c (default all; the peers need root, Debian's "
                        "postfix and npm)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="smtpfw workers and Haraka nodes (default: CPUs)")
    p.add_argument("--haraka", help="a folder where `npm install Haraka` was run (default: "
                                    "/var/tmp/smtpfw-bench-haraka, installed there on first use)")
    p.add_argument("--dns-host", default="127.0.21.21", help="loopback address for the DNS server on port 53")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for latest.json and latest.md")
    p.add_argument("--zones", default=str(ROOT.parent / "shared" / "zones"), help="rbldnsd zone files")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfix, nor npm install Haraka")
    p.add_argument("--no-ceiling", action="store_true", help="skip the load-generator ceiling runs")
    p.add_argument("--keep", action="store_true", help="leave the servers running until Enter (profiling)")
    args = p.parse_args(argv)

    reps = args.reps or (1 if args.quick else 3)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if "g" in names:
        import lists_bench
        names.remove("g")
        rc = lists_bench.main(["--out", args.out] + (["--entries", "100000", "--messages", "1000"] if args.quick
                                                     else []) + (["--no-install"] if args.no_install else []))
        if rc or not names:
            return rc
    # issue 21: STARTTLS, slow DNS, stateful rules (bench/state_bench.py: rate limit + greylist pass, SQLite and
    # Redis with two smtpfw processes, beside the stateless run)
    for name, module in (("d", "tls_bench"), ("e", "slowdns_bench"), ("f", "state_bench")):
        if name in names:
            names.remove(name)
            rc = importlib.import_module(module).main(
                ["--out", args.out] + (["--quick"] if args.quick else []) + (["--reps", str(args.reps)] if args.reps
                                                                            else [])
                + ["--workers", str(args.workers)]
                + (["--no-install"] if args.no_install else []))
            if rc or not names:
                return rc
    if any(n not in WORKLOADS for n in names):
        log("--workloads: choose from a, b, c, d, e, f, g")
        return 2
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(s not in SERVERS for s in servers) or "smtpfw" not in servers:
        log(f"--servers: smtpfw and any of {','.join(SERVERS[1:])}")
        return 2
    workloads = [WORKLOADS[w] for w in names]
    zones = sorted(str(z) for z in Path(args.zones).glob("*") if z.is_file())
    if not zones:
        log(f"no zone files in {args.zones} (use --zones)")
        return 2

    notes: list[str] = []
    source_bin, sink_bin, how = find_postfix_tools(not args.no_install)
    if source_bin:
        source = [source_bin]
        loadgen = f"Postfix smtp-source ({how})"
    else:
        source = [sys.executable, str(BENCH / "pysource.py")]
        loadgen = "bench/pysource.py (Python)"
        notes.append(f"smtp-source unavailable ({how}); the Python load generator may be the bottleneck.")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if not args.no_install:       # the `fast` extra of pyproject.toml
            log("installing uvloop (pip install 'uvloop>=0.19', the project's `fast` extra) ...")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop>=0.19"], check=False)
            importlib.invalidate_caches()
    try:
        import uvloop  # noqa: F401,F811
        event_loop = "uvloop"
    except ImportError:
        event_loop = "asyncio (uvloop not installed: pip install -e '.[fast]')"
        notes.append("uvloop is not installed; smtpfw runs on the standard asyncio loop.")

    # the peers: Postfix and Haraka with the reference policy (bench/peers.py)
    peers = None
    policy = ROOT.parent / "shared" / "policy"
    haraka_exe, haraka_how = None, "not asked for"
    if any(s in PEERS for s in servers):
        sys.path.insert(0, str(ROOT))
        import peers      # (it imports this file as the module `run`: Service, SinkCounter, free_port)
        from policy_bench import port_free
        servers, haraka_exe, haraka_how = peers.runnable_peers(
            servers, notes, args.haraka, not args.no_install, None if sink_bin else "no smtp-sink")
        if any(s in PEERS for s in servers) and not port_free(args.dns_host, 53):
            log(f"{args.dns_host}:53 is taken; choose another loopback address with --dns-host")
            return 2
    with_peers = any(s in PEERS for s in servers)

    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-bench-"))
    tmp.chmod(0o755)
    services: list = []
    verdicts: dict[str, dict] = {}
    peer_setup: dict[str, str] = {}
    versions = tool_versions(bool(source_bin or sink_bin))
    try:
        sink_port, fw_port, base_port = (free_port() for _ in range(3))
        if with_peers:
            dns_host, dns_port = args.dns_host, 53
        else:
            dns_host, dns_port = "127.0.0.1", free_port()
        dns = Service("dns", [sys.executable, str(ROOT / "tests/support/dnsserver.py"),
                              "--host", dns_host, "--port", str(dns_port), *zones], tmp)
        services.append(dns)
        read_fd, write_fd = os.pipe()
        if sink_bin:
            sink_argv = [sink_bin, "-c", "-m", "2000"]
            if os.geteuid() == 0:
                sink_argv += ["-u", "nobody"]
            sink_argv += [f"127.0.0.1:{sink_port}", "1024"]
            sink_name = "Postfix smtp-sink"
        else:
            sink_argv = [sys.executable, str(BENCH / "pysink.py"), f"127.0.0.1:{sink_port}"]
            sink_name = "bench/pysink.py (Python)"
            notes.append(f"smtp-sink unavailable ({how}); using the Python sink.")
        sink = Service("sink", sink_argv, tmp, stdout=write_fd)
        os.close(write_fd)
        services.append(sink)
        counter = SinkCounter(read_fd)

        config = tmp / "smtpfw.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{fw_port}\n"
            "hostname: smtpfw.bench.test\n"
            f"server:\n  workers: {args.workers}\n"
            f"delivery:\n  mode: forward\n  forward: 127.0.0.1:{sink_port}\n"
            # one client IP sends everything: the per-IP limit must not bite
            "limits:\n  max_connections_per_ip: 10000\n  max_connections: 10000\n"
            f"dns:\n  nameservers: [\"{dns_host}:{dns_port}\"]\n")
        wait_line(dns, "dnsserver listening")
        wait_smtp(sink_port, sink)
        live: dict[str, tuple] = {}          # name -> (server, port, sink counter or None)
        fw = Service("smtpfw", [sys.executable, "-m", "smtpfw", "serve", "--config", str(config),
                                "--rules", str(ROOT / "rules/reference.rules")], tmp)
        services.append(fw)
        live["smtpfw"] = (fw, fw_port, counter)
        if "baseline" in servers:
            base = Service("baseline", [sys.executable, str(BENCH / "baseline_server.py"),
                                        "--listen", f"127.0.0.1:{base_port}"], tmp)
            services.append(base)
            live["baseline"] = (base, base_port, None)
        if with_peers:
            resolv = tmp / "resolv.conf"
            resolv.write_text(f"nameserver {dns_host}\noptions timeout:2 attempts:2\n")
            resolv.chmod(0o644)
        if "postfix" in servers:
            settings = peers.postfix_reference_settings(tmp / "postfix", sink_port, policy)
            pf = peers.PostfixServer("bench", settings, resolv)
            services.append(pf)
            pf.start()
            live["postfix"] = (pf, pf.port, counter)
            peer_setup["postfix"] = ("master -d, " + ", ".join(f"{k} = {settings[k]}" for k in (
                "smtpd_recipient_restrictions", "relay_domains", "smtpd_delay_reject", "relayhost"))
                + "; default process limits (smtpd max 100)").replace(f"{tmp}/postfix/postfix-tables/", "")
            versions["postfix"] = versions.get("postfix", "unknown")
        if "haraka" in servers:
            hk = peers.Haraka(haraka_exe, tmp, "haraka", None, None, sink_port, resolv, args.workers, policy=policy)
            services.append(hk)
            hk.start()
            live["haraka"] = (hk, hk.port, counter)
            plugins = (hk.dir / "config" / "plugins").read_text().split()
            peer_setup["haraka"] = (f"Haraka {peers.haraka_version(haraka_exe)} ({haraka_how}), nodes={args.workers}, "
                                    f"plugins: {', '.join(plugins)}")
            versions["haraka"] = peers.haraka_version(haraka_exe)
            versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        for name, (srv, port, _) in live.items():
            wait_smtp(port, srv, timeout=60)

        log(", ".join(f"{n} :{port}" for n, (_, port, _) in live.items())
            + f"; smtpfw {args.workers} workers, {event_loop}; sink :{sink_port} ({sink_name}), "
              f"dns {dns_host}:{dns_port}; load: {loadgen}")
        helpers = [sink.pid, dns.pid]

        # the reference verdicts, before anything is measured
        if with_peers:
            for name in ("smtpfw", *PEERS):
                if name in live:
                    verdicts[name] = peers.check_reference(live[name][1], counter)
                    vd = verdicts[name]
                    log(f"verdicts {name}: {vd['cases']} RCPTs, "
                        + ("all as the reference" if not vd["mismatches"]
                           else f"{len(vd['mismatches'])} DIFFER:\n    " + "\n    ".join(vd["mismatches"]))
                        + f"; delivered {vd['delivered']}/{vd['expected_deliveries']}"
                        + (f"; {len(vd['codes'])} other reply codes" if vd["codes"] else ""))
            if any(v["mismatches"] for v in verdicts.values()):
                raise RuntimeError("a server's verdicts differ from the reference's (above): not measuring")

        # Warm-up, the same for every server: at least 3 s of load at 100
        # sessions, so DNS caches are filled, processes forked and the
        # forward pool has seen the load (it sizes itself from the last 2 s's peak).
        warm = Workload("warm-up", 1000, 2048, 100, 0)
        for name, (server, port, sk) in live.items():
            started = time.monotonic()
            while time.monotonic() - started < (1.0 if args.quick else 3.0):
                r = measure(name, server, source, warm, warm.messages, port, sk, helpers, dns.pid,
                            delivery_timeout=120.0)
                if not r["ok"]:
                    raise RuntimeError(f"warm-up against {name} failed: {r.get('error')}\n"
                                       f"see {getattr(server, 'log_path', tmp)}")
        if args.keep:
            log("servers running; press Enter to start measuring")
            input()

        runs: list[dict] = []
        scale = QUICK_MESSAGES if args.quick else {w: WORKLOADS[w].messages for w in WORKLOADS}
        if args.messages:
            scale = {w: args.messages for w in WORKLOADS}
        if not args.no_ceiling:
            for wl in workloads:
                runs.append(measure("ceiling", None, source, wl, scale[wl.name], sink_port, None, helpers))
                log(f"  ceiling  {wl.name}: {runs[-1]['accepted_per_s']:8.1f} msg/s straight to smtp-sink")
        order = list(live)
        for rep in range(reps):
            for wl in workloads:
                for name in order[rep % len(order):] + order[:rep % len(order)]:
                    server, port, sk = live[name]
                    for s in services:
                        s.check()
                    time.sleep(0.5)
                    r = measure(name, server, source, wl, scale[wl.name], port, sk, helpers, dns.pid,
                                delivery_timeout=120.0)
                    r["rep"] = rep + 1
                    runs.append(r)
                    log(f"  rep {rep + 1} {wl.name} {name:8}: {r['accepted_per_s']:8.1f} msg/s"
                        + (f", delivered {r['delivered_per_s']:.1f}/s" if "delivered_per_s" in r else "")
                        + f", cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg, pss {r['peak_pss_mb']:.0f} MB"
                        + f", others {r['others_cpu_pct']:.0f}%"
                        + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
        if args.keep:
            log("measured; press Enter to stop the servers")
            input()
    except BaseException:
        log(f"benchmark failed; the servers' logs are kept in {tmp}")
        raise
    finally:
        for s in reversed(services):
            try:
                s.stop()
            except Exception as err:              # go on stopping the others
                log(f"stopping {s.name}: {err}")

    if any(r["server"] == "smtpfw" and r["ok"] and r.get("sink_count", 0) < r["messages"] for r in runs):
        notes.append("the sink counted fewer messages than smtpfw accepted in some run(s)")
    summary = summarize(runs, workloads, scale)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": machine(),
        "versions": versions,
        "config": {"workers": args.workers, "reps": reps, "quick": args.quick, "event_loop": event_loop,
                   "loadgen": loadgen, "sink": sink_name, "dns": f"{dns_host}:{dns_port}", "servers": list(live),
                   "peers": peer_setup, "notes": notes,
                   "haraka_differences": HARAKA_DIFFERENCES if "haraka" in live else [],
                   "messages": {w.name: scale[w.name] for w in workloads}},
        "summary": summary,
        "targets": targets(summary),
        "verdicts": verdicts,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "latest.md").write_text(text)
    print(text)
    if all(r["ok"] for r in runs):
        shutil.rmtree(tmp, ignore_errors=True)
        for name in PEERS:
            if name in live and hasattr(live[name][0], "root"):        # PostfixServer's own folder
                shutil.rmtree(live[name][0].root, ignore_errors=True)
        return 0
    log(f"some runs failed; the servers' logs are kept in {tmp}" + (
        f" and {live['postfix'][0].root}" if "postfix" in live else ""))
    return 1


if __name__ == "__main__":
    sys.exit(main())
