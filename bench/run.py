"""End-to-end benchmark of smtpfw against a bare aiosmtpd baseline (issue 8).

    python bench/run.py            # 3 repetitions of workloads a, b, c (~3 min)
    python bench/run.py --quick    # a short smoke run (< 2 min)

What it starts, all on 127.0.0.1 and all stopped at the end:

- the tests' DNS server (tests/support/dnsserver.py) serving ../shared/zones;
- Postfix's ``smtp-sink`` as the downstream (installed with apt-get if
  missing; bench/pysink.py only if that fails, and the results say so);
- ``smtpfw serve`` with rules/reference.rules, forwarding to the sink;
- bench/baseline_server.py, a bare aiosmtpd server that accepts and discards.

Both servers get the same load from Postfix's ``smtp-source`` (one message
per connection, one recipient), alternating within each repetition:

    a) 5,000 x 2 KB, 20 sessions   b) 5,000 x 2 KB, 100 sessions
    c) 2,000 x 100 KB, 20 sessions

Per run: messages/s accepted (smtp-source's wall time; it stops at the first
non-2xx reply), messages/s delivered (until the sink counted them all), server
CPU ms per message (utime+stime of the server's process tree), peak RSS and
PSS of the tree, and the load generator's own CPU use.  The same load sent
straight to smtp-sink ("ceiling") shows what the load generator can do.
Results: bench/results/latest.json and latest.md (--out to change).
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


def measure(name: str, server: Service | None, source: list[str], wl: Workload, messages: int,
            port: int, sink: SinkCounter | None, helpers: list[int] = ()) -> dict:
    """One run of ``wl`` against ``port``.  ``helpers`` (sink, DNS server) are
    counted apart, so that CPU used by anything else on the machine (other
    load that skews the comparison) shows as ``others_cpu_pct``."""
    pids = procstat.tree(server.pid) if server else []
    cpu0 = procstat.cpu_seconds(pids)
    per0 = {pid: procstat.cpu_seconds([pid]) for pid in pids}
    help0 = procstat.cpu_seconds(list(helpers))
    busy0, total0 = procstat.machine_cpu()
    sink0 = sink.count if sink else 0
    sampler = procstat.MemorySampler(server.pid) if server else None
    if sampler:
        sampler.__enter__()
    try:
        load = run_load(source, wl, messages, port)
        delivered_at = None
        if sink is not None and load["rc"] == 0:
            delivered_at = sink.wait_for(sink0 + messages, timeout=30.0)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    busy1, total1 = procstat.machine_cpu()
    cpu1 = procstat.cpu_seconds(procstat.tree(server.pid)) if server else 0.0
    per = {pid: procstat.cpu_seconds([pid]) - before for pid, before in per0.items()}
    help1 = procstat.cpu_seconds(list(helpers))
    wall = load["end"] - load["start"]
    busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    out = {
        "server": name,
        "workload": wl.name,
        "messages": messages,
        "ok": load["rc"] == 0,
        "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if load["rc"] == 0 else 0.0,
        "loadgen_cpu_pct": round(100 * load["loadgen_cpu_s"] / wall, 1),
        "machine_busy_pct": round(busy_pct, 1),
        "helpers_cpu_pct": round(100 * (help1 - help0) / wall, 1),
        "others_cpu_pct": round(max(0.0, busy_pct - 100 * (cpu1 - cpu0 + help1 - help0
                                                            + load["loadgen_cpu_s"]) / wall), 1),
    }
    if load["rc"] != 0:
        out["error"] = load["error"] or f"load generator exit code {load['rc']}"
    if sink is not None:
        out["delivered_per_s"] = (round(messages / (delivered_at - load["start"]), 1)
                                  if delivered_at is not None else 0.0)
        out["sink_count"] = sink.count - sink0
    if server is not None:
        out["server_cpu_ms_per_msg"] = round(1000 * (cpu1 - cpu0) / messages, 3)
        out["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
        out["peak_rss_mb"] = round(sampler.peak_rss_kb / 1024, 1)
        out["peak_pss_mb"] = round(sampler.peak_pss_kb / 1024, 1)
        if len(per) > 1:          # how the work was shared: each worker's part of the tree's CPU
            workers = [per[p] for p in pids if p != server.pid]
            out["worker_cpu_share_pct"] = [round(100 * w / max(1e-9, cpu1 - cpu0)) for w in workers]
    return out


# ---- summary -------------------------------------------------------------------

def stat(values: list[float]) -> dict:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarize(runs: list[dict], workloads: list[Workload], scale: dict[str, int]) -> dict:
    out = {}
    for wl in workloads:
        wl = Workload(wl.name, scale[wl.name], wl.size, wl.sessions, wl.target)
        fw = [r for r in runs if r["workload"] == wl.name and r["server"] == "smtpfw"]
        base = [r for r in runs if r["workload"] == wl.name and r["server"] == "baseline"]
        ceiling = [r for r in runs if r["workload"] == wl.name and r["server"] == "ceiling"]
        ratios = [f["accepted_per_s"] / b["accepted_per_s"] for f, b in zip(fw, base) if b["accepted_per_s"]]
        entry = {"description": wl.describe(), "target_ratio": wl.target, "ratio": stat(ratios)}
        for key, rows in (("smtpfw", fw), ("baseline", base), ("ceiling", ceiling)):
            entry[key] = {m: stat([r[m] for r in rows if m in r])
                          for m in ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg",
                                    "peak_rss_mb", "peak_pss_mb", "loadgen_cpu_pct", "server_cpu_pct",
                                    "helpers_cpu_pct", "machine_busy_pct", "others_cpu_pct")
                          if any(m in r for r in rows)}
            entry[key]["failed_runs"] = sum(1 for r in rows if not r["ok"])
        out[wl.name] = entry
    return out


def targets(summary: dict) -> list[dict]:
    rows = []
    for name, e in summary.items():
        ratio = e["ratio"].get("median")
        if ratio is not None:
            rows.append({"target": f"{name}: accept rate >= {e['target_ratio']} x baseline",
                         "value": round(ratio, 2), "met": ratio >= e["target_ratio"]})
    for name, e in summary.items():
        if name in ("a", "b"):
            cpu = e["smtpfw"].get("server_cpu_ms_per_msg", {}).get("median")
            if cpu is not None:
                rows.append({"target": f"{name}: server CPU <= {CPU_TARGET_MS} ms per 2 KB message",
                             "value": cpu, "met": cpu <= CPU_TARGET_MS})
    if "b" in summary:
        pss = summary["b"]["smtpfw"].get("peak_pss_mb", {}).get("max")
        if pss is not None:
            rows.append({"target": f"b: peak PSS of the tree <= {PSS_TARGET_MB:.0f} MB at 100 sessions",
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
        f"- Load: {cfg['loadgen']}; sink: {cfg['sink']}",
        f"- {cfg['reps']} repetition(s); median (min–max). Accept = messages / load generator wall time; "
        "delivered = until the sink counted them all. CPU ms/msg = utime+stime of the server's process tree "
        "per message. Others' CPU % = machine CPU used by processes other than the server, load generator, "
        "sink and DNS server during the run (200 = both cores): where it is high the run was disturbed.",
        "",
    ]
    if cfg.get("notes"):
        lines += [f"**Note:** {n}" for n in cfg["notes"]] + [""]
    lines += ["| workload | server | accepted msg/s | delivered msg/s | CPU ms/msg | peak RSS MB | peak PSS MB "
              "| load gen CPU % | others' CPU % | ratio to baseline |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in result["summary"].items():
        for key in ("smtpfw", "baseline", "ceiling"):
            s = e[key]
            if not s.get("accepted_per_s"):
                continue
            label = {"smtpfw": "smtpfw", "baseline": "bare aiosmtpd",
                     "ceiling": "smtp-sink (load ceiling)"}[key]
            ratio = f"**{_fmt(e['ratio'], 2)}** (target ≥ {e['target_ratio']})" if key == "smtpfw" else ""
            failed = f" ⚠ {s['failed_runs']} failed run(s)" if s.get("failed_runs") else ""
            lines.append(
                f"| {name}) {e['description']} | {label}{failed} | {_fmt(s.get('accepted_per_s', {}))} "
                f"| {_fmt(s.get('delivered_per_s', {}))} | {_fmt(s.get('server_cpu_ms_per_msg', {}), 2)} "
                f"| {_fmt(s.get('peak_rss_mb', {}))} | {_fmt(s.get('peak_pss_mb', {}))} "
                f"| {_fmt(s.get('loadgen_cpu_pct', {}))} | {_fmt(s.get('others_cpu_pct', {}))} | {ratio} |")
    shares = [f"{r['workload']}: " + "/".join(str(x) for x in r["worker_cpu_share_pct"])
              for r in result["runs"] if r["server"] == "smtpfw" and r.get("worker_cpu_share_pct")]
    if shares:
        lines += ["", "smtpfw workers' shares of the tree's CPU per run, % (the parent only supervises): "
                  + ", ".join(shares)]
    lines += ["", "## Targets (issue 8)", "", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    lines.append("")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smtpfw end-to-end benchmark (issue 8).")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer messages, 1 repetition (< 2 min)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--workloads", default="a,b,c",
                   help="which of a,b,c (default all), and d: STARTTLS (bench/tls_bench.py), e: slow DNS "
                        "(bench/slowdns_bench.py), g: big lists and maps (bench/lists_bench.py)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="smtpfw workers (default: CPUs)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for latest.json and latest.md")
    p.add_argument("--zones", default=str(ROOT.parent / "shared" / "zones"), help="rbldnsd zone files")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfix")
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

    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-bench-"))
    services: list[Service] = []
    try:
        dns_port, sink_port, fw_port, base_port = (free_port() for _ in range(4))
        dns = Service("dns", [sys.executable, str(ROOT / "tests/support/dnsserver.py"),
                              "--port", str(dns_port), *zones], tmp)
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
            f"dns:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\n")
        wait_line(dns, "dnsserver listening")
        wait_smtp(sink_port, sink)
        fw = Service("smtpfw", [sys.executable, "-m", "smtpfw", "serve", "--config", str(config),
                                "--rules", str(ROOT / "rules/reference.rules")], tmp)
        services.append(fw)
        base = Service("baseline", [sys.executable, str(BENCH / "baseline_server.py"),
                                    "--listen", f"127.0.0.1:{base_port}"], tmp)
        services.append(base)
        wait_smtp(fw_port, fw)
        wait_smtp(base_port, base)

        log(f"smtpfw :{fw_port} ({args.workers} workers, {event_loop}), baseline :{base_port}, "
            f"sink :{sink_port} ({sink_name}), dns :{dns_port}; load: {loadgen}")
        helpers = [sink.pid, dns.pid]
        # Warm-up, the same for both servers: at least 3 s of load at 100
        # sessions, so DNS caches are filled and the forward pool has seen
        # the load (it sizes itself from the last 2 s's peak).
        warm = Workload("warm-up", 1000, 2048, 100, 0)
        for server, port, sk in ((fw, fw_port, counter), (base, base_port, None)):
            started = time.monotonic()
            while time.monotonic() - started < (1.0 if args.quick else 3.0):
                r = measure(server.name, server, source, warm, warm.messages, port, sk, helpers)
                if not r["ok"]:
                    raise RuntimeError(f"warm-up against {server.name} failed: {r.get('error')}\n"
                                       f"see {server.log_path}")
        if args.keep:
            log("servers running; press Enter to start measuring")
            input()

        runs: list[dict] = []
        scale = QUICK_MESSAGES if args.quick else {w: WORKLOADS[w].messages for w in WORKLOADS}
        if not args.no_ceiling:
            for wl in workloads:
                runs.append(measure("ceiling", None, source, wl, scale[wl.name], sink_port, None, helpers))
                log(f"  ceiling  {wl.name}: {runs[-1]['accepted_per_s']:8.1f} msg/s straight to smtp-sink")
        for rep in range(reps):
            for wl in workloads:
                for name, server, port, sk in (("baseline", base, base_port, None),
                                               ("smtpfw", fw, fw_port, counter)):
                    server.check()
                    time.sleep(0.3)
                    r = measure(name, server, source, wl, scale[wl.name], port, sk, helpers)
                    r["rep"] = rep + 1
                    runs.append(r)
                    log(f"  rep {rep + 1} {wl.name} {name:8}: {r['accepted_per_s']:8.1f} msg/s"
                        + (f", delivered {r['delivered_per_s']:.1f}/s" if "delivered_per_s" in r else "")
                        + f", cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg, pss {r['peak_pss_mb']:.0f} MB"
                        + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
        if args.keep:
            log("measured; press Enter to stop the servers")
            input()
    except BaseException:
        log(f"benchmark failed; the servers' logs are kept in {tmp}")
        raise
    finally:
        for s in reversed(services):
            s.stop()

    if any(r["server"] == "smtpfw" and r["ok"] and r.get("sink_count", 0) < r["messages"] for r in runs):
        notes.append("the sink counted fewer messages than smtpfw accepted in some run(s)")
    summary = summarize(runs, workloads, scale)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": machine(),
        "versions": tool_versions(bool(source_bin or sink_bin)),
        "config": {"workers": args.workers, "reps": reps, "quick": args.quick, "event_loop": event_loop,
                   "loadgen": loadgen, "sink": sink_name, "notes": notes,
                   "messages": {w.name: scale[w.name] for w in workloads}},
        "summary": summary,
        "targets": targets(summary),
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
        return 0
    log(f"some runs failed; the servers' logs are kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
