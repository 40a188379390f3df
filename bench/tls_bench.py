"""Workload d of issue 21: STARTTLS on every session.

3,000 x 2 KB, 20 and 100 sessions, one message per connection, a full
TLS 1.3 handshake each time (no resumption), with an ECDSA P-256 and with
an RSA-2048 certificate (made with openssl in a temp dir).  Load generator:
../shared/tools/tlsgen.c (C, OpenSSL), compiled into the temp dir.

Servers, measured in the same run, all on 127.0.0.1, each with the same
certificate:

- ``smtpfw serve`` with rules/reference.rules (``tls.cert``/``tls.key``),
  forwarding to Postfix's smtp-sink (workers = CPUs);
- bench/baseline_server.py ``--tls-cert``: bare aiosmtpd, STARTTLS, discards;
- Postfix (Debian's package, ``master -d`` in a temp dir) with the reference
  policy in its own restrictions (as bench/policy_bench.py "native"),
  ``smtpd_tls_security_level = may`` and relayhost = the sink;
- Haraka (``npm install Haraka`` into /var/tmp/smtpfw-bench-haraka on first
  use, reused after; or ``--haraka DIR`` with an installed one): tls, dns-list (bl.test), rcpt_to.in_host_list,
  queue/smtp_forward to the sink, ``nodes`` = CPUs.  Skipped (and said so)
  when it cannot be installed.

DNS: tests/support/dnsserver.py serving ../shared/zones on DNS_HOST:53
(default 127.0.21.53); Postfix and Haraka run in a mount namespace whose
/etc/resolv.conf names it (tests/support/postfix.py ``in_namespace``).

Per run: accepted msg/s (messages / tlsgen's wall time; tlsgen counts a
message only after the 250 to its end of DATA), delivered msg/s (until the
sink counted them all, for the servers that relay), CPU ms per message of
the server's process tree (utime+stime, with the children that exited:
Postfix's smtpd processes), tlsgen's own CPU, others' CPU (the machine's
CPU used by anything but the server, tlsgen, sink and DNS server; 200 = both
cores) and ratios to the best peer (Postfix, Haraka) and to bare aiosmtpd.

    python bench/tls_bench.py            # 3 repetitions (about 6 minutes)
    python bench/tls_bench.py --quick    # 500 messages, 1 repetition (< 2 minutes)

An A/B of two smtpfw builds or TLS settings, interleaved in one run (the
order rotates per repetition; the B / A ratios are taken per repetition):

    python bench/tls_bench.py --servers smtpfw --reps 7 --messages 2000 --sessions 100 \
        --smtpfw-b-cmd "env PYTHONPATH=/tmp/old python -P -m smtpfw"      # another build
    python bench/tls_bench.py --servers smtpfw --smtpfw-b-tls session_tickets=0   # another setting
    python bench/tls_bench.py --servers smtpfw --smtpfw-b-plain        # B without STARTTLS: what TLS costs

(/tmp/old: a copy of smtpfw/ with links to grammar/, rules/, config/ and
docs/ beside it, as in the checkout.)

Also ``python bench/run.py --workloads d``.  Results:
bench/results/tls-latest.{json,md} (not committed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import procstat  # noqa: E402
import run as benchrun  # noqa: E402
from peers import HARAKA_CACHE, Haraka, TlsPostfix, find_haraka, haraka_version  # noqa: E402
from policy_bench import port_free, tree_cpu  # noqa: E402

from tests.support.postfix import postfix_available  # noqa: E402
from tests.support.reference import base_settings, postfix_native  # noqa: E402

log = benchrun.log
SENDER, RECIPIENT, HELO = "from@example.org", "to@example.net", "loadgen.example.org"
SIZE = 2048
SESSIONS = (20, 100)
CERTS = ("ecdsa", "rsa")
SERVERS = ("smtpfw", "smtpfw-b", "baseline", "postfix", "haraka")
PEERS = ("postfix", "haraka")
RATIO_TARGET = 3.0            # smtpfw >= 3 x the best peer (issue 21)
CPU_TARGET_MS = 0.8           # smtpfw CPU per TLS session
LABELS = {"smtpfw": "smtpfw (reference policy)", "smtpfw-b": "smtpfw B (reference policy)",
          "baseline": "bare aiosmtpd + STARTTLS", "postfix": "Postfix (reference policy)",
          "haraka": "Haraka (tls, dns-list, in_host_list)"}


# ---- tools ---------------------------------------------------------------------------

def build_tlsgen(tmp: Path, install: bool) -> Path:
    src = SHARED / "tools" / "tlsgen.c"
    out = tmp / "tlsgen"
    argv = ["cc", "-O2", "-pthread", "-o", str(out), str(src), "-lssl", "-lcrypto"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0 and install and os.geteuid() == 0:
        log("installing libssl-dev with apt-get (to build tlsgen) ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-q", "libssl-dev"], env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "libssl-dev"], env=env, capture_output=True)
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cannot build tlsgen: {proc.stderr[-1000:]}")
    return out


def make_certs(tmp: Path) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name, keyopts in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                          ("rsa", ["-newkey", "rsa:2048"])):
        cert, key = tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
        subprocess.run(["openssl", "req", "-x509", *keyopts, "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "30", "-subj", "/CN=mx.test", "-addext", "subjectAltName=DNS:mx.test"],
                       check=True, capture_output=True)
        for f in (cert, key):
            f.chmod(0o644)       # a throw-away test key in a temp dir; every server can read it
        out[name] = (cert, key)
    return out


# ---- one measured run ---------------------------------------------------------------

def measure(server: str, cert: str, srv, port: int, tlsgen: Path, sessions: int, messages: int,
            sink: benchrun.SinkCounter | None, helpers: list[int], plain: bool = False) -> dict:
    """One tlsgen run against ``port``; ``sink`` when the server relays to it
    (the run then ends when the sink has every message); ``plain``: no
    STARTTLS (tlsgen -P)."""
    sink0 = sink.count if sink else 0
    cpu0 = tree_cpu(srv.pid)
    help0 = sum(tree_cpu(p) for p in helpers)
    busy0, total0 = procstat.machine_cpu()
    argv = [str(tlsgen), "-s", str(sessions), "-m", str(messages), "-l", str(SIZE), "-M", HELO,
            "-f", SENDER, "-t", RECIPIENT, "-T", "1.3", *(["-P"] if plain else []), f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    rc = os.waitstatus_to_exitcode(status)
    out_text = proc.stdout.read().decode(errors="replace")
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stdout.close()
    proc.stderr.close()
    try:
        gen = json.loads(out_text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        gen = {}
    delivered_at = None
    if sink is not None and rc == 0:
        delivered_at = sink.wait_for(sink0 + messages, timeout=120.0)
    stop = delivered_at if delivered_at is not None else end
    busy1, total1 = procstat.machine_cpu()
    cpu = tree_cpu(srv.pid) - cpu0
    helpers_cpu = sum(tree_cpu(p) for p in helpers) - help0
    wall, span = end - start, stop - start
    loadgen = usage.ru_utime + usage.ru_stime
    busy = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1) * span
    ok = rc == 0 and gen.get("ok") == messages and (sink is None or delivered_at is not None)
    r = {
        "server": server, "cert": cert, "sessions": sessions, "messages": messages, "ok": ok,
        "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if rc == 0 else 0.0,
        "server_cpu_ms_per_msg": round(1000 * cpu / messages, 3),
        "server_cpu_pct": round(100 * cpu / span, 1),
        "loadgen_cpu_ms_per_msg": round(1000 * loadgen / messages, 3),
        "loadgen_cpu_pct": round(100 * loadgen / wall, 1),
        "helpers_cpu_pct": round(100 * helpers_cpu / span, 1),
        "machine_busy_pct": round(100 * busy / span, 1),
        "others_cpu_pct": round(max(0.0, 100 * (busy - cpu - helpers_cpu - loadgen) / span), 1),
        "tls": {k: gen[k] for k in ("protocol", "cipher", "group", "peer_key") if k in gen},
    }
    if sink is not None:
        r["delivered_per_s"] = round(messages / span, 1) if delivered_at is not None else 0.0
        r["sink_count"] = sink.count - sink0
    if rc != 0 or not ok:
        r["error"] = (err[-300:] or f"tlsgen exit code {rc}") if rc != 0 else \
            f"tlsgen ok={gen.get('ok')}, sink {sink.count - sink0 if sink else '-'} of {messages}"
    return r


# ---- summary --------------------------------------------------------------------------

METRICS = ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg", "server_cpu_pct", "loadgen_cpu_ms_per_msg",
           "loadgen_cpu_pct", "helpers_cpu_pct", "machine_busy_pct", "others_cpu_pct")


def summarize(runs: list[dict], servers: list[str]) -> dict:
    out: dict = {}
    for cert in CERTS:
        for sessions in sorted({r["sessions"] for r in runs}):
            key = f"{cert}-{sessions}"
            rows = [r for r in runs if r["cert"] == cert and r["sessions"] == sessions]
            if not rows:
                continue
            entry: dict = {}
            for name in servers:
                mine = [r for r in rows if r["server"] == name]
                good = [r for r in mine if r["ok"]]
                if not mine:
                    continue
                entry[name] = {m: benchrun.stat([r[m] for r in good if m in r]) for m in METRICS
                               if any(m in r for r in good)}
                entry[name]["failed_runs"] = len(mine) - len(good)
            # ratios per repetition: smtpfw / the best peer of that repetition, and / the baseline
            best, base = [], []
            for rep in sorted({r["rep"] for r in rows}):
                fw = next((r for r in rows if r["rep"] == rep and r["server"] == "smtpfw" and r["ok"]), None)
                peers = [r["accepted_per_s"] for r in rows if r["rep"] == rep and r["server"] in PEERS and r["ok"]]
                b = next((r for r in rows if r["rep"] == rep and r["server"] == "baseline" and r["ok"]), None)
                if fw and peers:
                    best.append(fw["accepted_per_s"] / max(peers))
                if fw and b:
                    base.append(fw["accepted_per_s"] / b["accepted_per_s"])
            entry["ratio_to_best_peer"] = benchrun.stat(best)
            entry["ratio_to_baseline"] = benchrun.stat(base)
            # the A/B: smtpfw B / smtpfw A, per repetition (both measured in it, one after the other)
            ab_rate, ab_cpu = [], []
            for rep in sorted({r["rep"] for r in rows}):
                a = next((r for r in rows if r["rep"] == rep and r["server"] == "smtpfw" and r["ok"]), None)
                b = next((r for r in rows if r["rep"] == rep and r["server"] == "smtpfw-b" and r["ok"]), None)
                if a and b:
                    ab_rate.append(b["accepted_per_s"] / a["accepted_per_s"])
                    ab_cpu.append(b["server_cpu_ms_per_msg"] / a["server_cpu_ms_per_msg"])
            if ab_rate:
                entry["b_over_a"] = {"accepted_per_s": benchrun.stat(ab_rate),
                                     "server_cpu_ms_per_msg": benchrun.stat(ab_cpu)}
            peer_medians = {p: entry[p]["accepted_per_s"]["median"] for p in PEERS
                            if p in entry and entry[p].get("accepted_per_s")}
            entry["best_peer"] = max(peer_medians, key=peer_medians.get) if peer_medians else None
            out[key] = entry
    return out


def targets(summary: dict) -> list[dict]:
    rows = []
    for key, e in summary.items():
        ratio = e["ratio_to_best_peer"].get("median")
        if ratio is not None:
            rows.append({"target": f"{key}: smtpfw >= {RATIO_TARGET} x the best peer ({e['best_peer']})",
                         "value": round(ratio, 2), "met": ratio >= RATIO_TARGET})
    for key, e in summary.items():
        cpu = e.get("smtpfw", {}).get("server_cpu_ms_per_msg", {}).get("median")
        if cpu is not None:
            rows.append({"target": f"{key}: smtpfw CPU per TLS session <= {CPU_TARGET_MS} ms",
                         "value": cpu, "met": cpu <= CPU_TARGET_MS})
    return rows


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"# Workload d: STARTTLS on every session, {result['date']}", "",
        f"`{result['command']}`", "",
        f"- Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['os']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- {cfg['messages']:,} x 2 KB a run, one message per connection, TLS 1.3 full handshake every session "
        f"(tlsgen, no resumption); {cfg['reps']} repetition(s), median (min–max); smtpfw `--workers "
        f"{cfg['workers']}`, Haraka nodes={cfg['workers']}",
        f"- Haraka: {cfg['haraka']}",
        "- msg/s = messages / tlsgen's wall time; delivered = until the sink counted them all (relaying servers). "
        "CPU ms/msg = utime+stime of the server's process tree (children that exited included) until the sink "
        "had every message. Others' CPU % = the machine's CPU used by anything but the server, tlsgen, sink "
        "and DNS server (200 = both cores).", "",
    ]
    lines += [f"**Note:** {n}" for n in cfg.get("notes", [])]
    if cfg.get("notes"):
        lines.append("")
    lines += ["| cert, sessions | server | msg/s | delivered msg/s | server CPU ms/msg | tlsgen CPU ms/msg "
              "| tlsgen CPU % | machine busy % | others' CPU % | smtpfw / this |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, e in result["summary"].items():
        cert, sessions = key.split("-")
        fw = e.get("smtpfw", {}).get("accepted_per_s", {}).get("median")
        for name in SERVERS:
            s = e.get(name)
            if not s or not s.get("accepted_per_s"):
                continue
            me = s["accepted_per_s"]["median"]
            ratio = f"{fw / me:.2f}" if fw and name != "smtpfw" and me else ""
            failed = f" ⚠ {s['failed_runs']} failed" if s.get("failed_runs") else ""
            lines.append(
                f"| {cert.upper()}, {sessions} | {LABELS[name]}{failed} | {benchrun._fmt(s['accepted_per_s'])} "
                f"| {benchrun._fmt(s.get('delivered_per_s', {}))} | {benchrun._fmt(s['server_cpu_ms_per_msg'], 2)} "
                f"| {benchrun._fmt(s['loadgen_cpu_ms_per_msg'], 2)} | {benchrun._fmt(s['loadgen_cpu_pct'])} "
                f"| {benchrun._fmt(s['machine_busy_pct'])} | {benchrun._fmt(s['others_cpu_pct'])} | {ratio} |")
    ab = {k: e["b_over_a"] for k, e in result["summary"].items() if "b_over_a" in e}
    if ab:
        lines += ["", "## A/B: smtpfw B / smtpfw A, per repetition, median (min–max)", "",
                  f"- A: `{cfg.get('smtpfw_cmd')}`" + (f", tls: {cfg['smtpfw_tls']}" if cfg.get("smtpfw_tls") else ""),
                  f"- B: `{cfg.get('smtpfw_b_cmd') or cfg.get('smtpfw_cmd')}`"
                  + (f", tls: {cfg['smtpfw_b_tls']}" if cfg.get("smtpfw_b_tls") else "")
                  + (", driven without STARTTLS (tlsgen -P)" if cfg.get("smtpfw_b_plain") else ""), "",
                  "| cert, sessions | msg/s B / A | CPU ms/msg B / A |", "|---|---|---|"]
        for key, e in ab.items():
            cert, sessions = key.split("-")
            lines.append(f"| {cert.upper()}, {sessions} | {benchrun._fmt(e['accepted_per_s'], 3)} "
                         f"| {benchrun._fmt(e['server_cpu_ms_per_msg'], 3)} |")
    lines += ["", "## Targets (issue 21, workload d)", "", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    tls = next((r["tls"] for r in result["runs"] if r.get("tls")), {})
    if tls:
        lines += ["", "TLS as negotiated: " + ", ".join(f"{k} {v}" for k, v in tls.items())
                  + " (per certificate: " + ", ".join(sorted({f"{r['cert']}: {r['tls'].get('peer_key')}"
                                                              for r in result["runs"] if r.get("tls")})) + ")"]
    lines.append("")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="workload d: STARTTLS on every session (issue 21)")
    p.add_argument("--quick", action="store_true", help="500 messages, 1 repetition (< 2 minutes)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--messages", type=int, help="messages a run (default 3000, --quick 500)")
    p.add_argument("--servers", default="smtpfw,baseline,postfix,haraka", help="which of " + ",".join(SERVERS)
                   + " (smtpfw-b: the second smtpfw of an A/B, see --smtpfw-b-cmd)")
    p.add_argument("--certs", default=",".join(CERTS), help="ecdsa,rsa")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="smtpfw workers and Haraka nodes")
    p.add_argument("--haraka", help=f"a folder where `npm install Haraka` was run (default: {HARAKA_CACHE}, "
                                    "installed there on first use)")
    p.add_argument("--dns-host", default="127.0.21.53", help="loopback address for the DNS server on port 53")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for tls-latest.json and .md")
    p.add_argument("--no-install", action="store_true", help="no apt-get / npm install")
    p.add_argument("--sessions", default=",".join(map(str, SESSIONS)), help="concurrent sessions, e.g. 20,100")
    p.add_argument("--smtpfw-cmd", default=f"{sys.executable} -m smtpfw",
                   help="how to run smtpfw (default: this Python's -m smtpfw)")
    p.add_argument("--smtpfw-tls", default="", help="more tls settings for smtpfw, KEY=VALUE,... "
                                                    "(e.g. session_tickets=0)")
    p.add_argument("--smtpfw-b-cmd", help="a second smtpfw (server smtpfw-b) measured in the same run; e.g. another "
                                          "build: \"env PYTHONPATH=DIR python -P -m smtpfw\"")
    p.add_argument("--smtpfw-b-tls", help="more tls settings for smtpfw-b (adds smtpfw-b; its command is "
                                          "--smtpfw-b-cmd, else --smtpfw-cmd)")
    p.add_argument("--smtpfw-b-plain", action="store_true", help="drive smtpfw-b without STARTTLS (tlsgen -P; "
                                                                 "adds smtpfw-b): what the TLS costs")
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    messages = args.messages or (500 if args.quick else 3000)
    servers = [s for s in args.servers.split(",") if s]
    if (args.smtpfw_b_cmd or args.smtpfw_b_tls is not None or args.smtpfw_b_plain) and "smtpfw-b" not in servers:
        servers.insert(servers.index("smtpfw") + 1 if "smtpfw" in servers else 0, "smtpfw-b")
    session_counts = [int(n) for n in args.sessions.split(",") if n]
    certs = [c for c in args.certs.split(",") if c]
    notes: list[str] = []

    _source, sink_bin, how = benchrun.find_postfix_tools(not args.no_install)
    if not sink_bin:
        log(f"smtp-sink: {how}")
        return 2
    if "postfix" in servers and (why := postfix_available()):
        notes.append(f"Postfix not measured: {why}")
        servers.remove("postfix")
    if not port_free(args.dns_host, 53):
        log(f"{args.dns_host}:53 is taken; choose another loopback address with --dns-host")
        return 2
    zones = sorted(str(z) for z in (SHARED / "zones").glob("*") if z.is_file())

    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-tlsbench-"))
    tmp.chmod(0o755)
    tlsgen = build_tlsgen(tmp, not args.no_install)
    certfiles = make_certs(tmp)
    haraka_exe, haraka_how = (None, "not asked for")
    if "haraka" in servers:
        haraka_exe, haraka_how = find_haraka(tmp, args.haraka, not args.no_install)
        if haraka_exe is None:
            notes.append(f"Haraka not measured: {haraka_how}")
            servers.remove("haraka")
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {args.dns_host}\noptions timeout:2 attempts:2\n")
    resolv.chmod(0o644)
    versions = benchrun.tool_versions(True)
    versions["openssl"] = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split()[1]
    if haraka_exe:
        versions["haraka"] = haraka_version(haraka_exe)
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()

    runs: list[dict] = []
    stoppers: list = []
    try:
        dns = benchrun.Service("dns", [sys.executable, str(ROOT / "tests/support/dnsserver.py"),
                                       "--host", args.dns_host, "--port", "53", *zones], tmp)
        stoppers.append(dns)
        sink_port = benchrun.free_port()
        read_fd, write_fd = os.pipe()
        sink = benchrun.Service("sink", [sink_bin, "-c", "-u", "nobody", "-m", "2000",
                                         f"127.0.0.1:{sink_port}", "1024"], tmp, stdout=write_fd)
        os.close(write_fd)
        stoppers.append(sink)
        counter = benchrun.SinkCounter(read_fd)
        benchrun.wait_line(dns, "dnsserver listening")
        benchrun.wait_smtp(sink_port, sink)
        helpers = [dns.pid, sink.pid]

        for cert in certs:
            cert_file, key_file = certfiles[cert]
            live: dict[str, tuple] = {}      # name -> (server, port, sink counter or None)
            started: list = []
            try:
                for name, cmd, extra in (("smtpfw", args.smtpfw_cmd, args.smtpfw_tls),
                                         ("smtpfw-b", args.smtpfw_b_cmd or args.smtpfw_cmd, args.smtpfw_b_tls or "")):
                    if name not in servers:
                        continue
                    port = benchrun.free_port()
                    cfg = tmp / f"{name}-{cert}.yaml"
                    tls_extra = "".join(f"  {kv.partition('=')[0].strip()}: {kv.partition('=')[2].strip()}\n"
                                        for kv in extra.split(",") if kv.strip())
                    cfg.write_text(
                        f"listen: 127.0.0.1:{port}\nhostname: smtpfw.bench.test\n"
                        f"server:\n  workers: {args.workers}\n"
                        f"delivery:\n  mode: forward\n  forward: 127.0.0.1:{sink_port}\n"
                        "limits:\n  max_connections_per_ip: 10000\n  max_connections: 10000\n"
                        f"dns:\n  nameservers: [\"{args.dns_host}:53\"]\n"
                        f"tls:\n  cert: {cert_file}\n  key: {key_file}\n{tls_extra}")
                    fw = benchrun.Service(f"{name}-{cert}", [*cmd.split(), "serve", "--config",
                                                             str(cfg), "--rules", str(ROOT / "rules/reference.rules")],
                                          tmp)
                    started.append(fw)
                    live[name] = (fw, port, counter)
                if "baseline" in servers:
                    port = benchrun.free_port()
                    base = benchrun.Service(f"baseline-{cert}", [
                        sys.executable, str(BENCH / "baseline_server.py"), "--listen", f"127.0.0.1:{port}",
                        "--tls-cert", str(cert_file), "--tls-key", str(key_file)], tmp)
                    started.append(base)
                    live["baseline"] = (base, port, None)
                if "postfix" in servers:
                    tables = tmp / f"postfix-{cert}"        # postfix_native makes tables/postfix-tables
                    tables.mkdir()
                    tables.chmod(0o755)
                    settings = {**base_settings(sink_port, SHARED / "policy"),
                                **postfix_native(tables, SHARED / "policy")}
                    settings.update({"smtpd_tls_cert_file": str(cert_file), "smtpd_tls_key_file": str(key_file),
                                     "smtpd_tls_security_level": "may", "smtpd_tls_loglevel": "0",
                                     "smtpd_tls_session_cache_database": "", "smtpd_tls_received_header": "no"})
                    pf = TlsPostfix(f"tls-{cert}", settings, resolv)
                    started.append(pf)
                    pf.start()
                    live["postfix"] = (pf, pf.port, counter)
                if "haraka" in servers:
                    hk = Haraka(haraka_exe, tmp, f"haraka-{cert}", cert_file, key_file, sink_port, resolv,
                                args.workers)
                    started.append(hk)
                    hk.start()
                    live["haraka"] = (hk, hk.port, counter)
                for name, (srv, port, _) in live.items():
                    benchrun.wait_smtp(port, srv, timeout=60)
                log(f"{cert}: " + ", ".join(f"{n} :{port}" for n, (_, port, _) in live.items())
                    + f"; sink :{sink_port}; dns {args.dns_host}:53")
                # warm-up, the same for every server: processes forked, caches filled, pools sized
                for name, (srv, port, sk) in live.items():
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < (1.0 if args.quick else 3.0):
                        r = measure(name, cert, srv, port, tlsgen, 100, 300, sk, helpers,
                                    plain=name == "smtpfw-b" and args.smtpfw_b_plain)
                        if not r["ok"]:
                            raise RuntimeError(f"warm-up of {name} ({cert}) failed: {r.get('error')}")
                for rep in range(reps):
                    for sessions in session_counts:
                        order = list(live)
                        order = order[rep % len(order):] + order[:rep % len(order)]
                        for name in order:
                            srv, port, sk = live[name]
                            for s in [*stoppers, *started]:
                                s.check()
                            time.sleep(0.5)
                            r = measure(name, cert, srv, port, tlsgen, sessions, messages, sk, helpers,
                                        plain=name == "smtpfw-b" and args.smtpfw_b_plain)
                            r["rep"] = rep + 1
                            runs.append(r)
                            log(f"  {cert} rep {rep + 1} s={sessions:3} {name:8} {r['accepted_per_s']:7.1f} msg/s, "
                                f"cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg, tlsgen {r['loadgen_cpu_pct']:.0f}% "
                                f"({r['loadgen_cpu_ms_per_msg']:.2f} ms/msg), others {r['others_cpu_pct']:.0f}%"
                                + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
            finally:
                for s in reversed(started):
                    try:
                        s.stop()
                    except Exception as err:
                        log(f"stopping {s.name}: {err}")
    except BaseException:
        log(f"benchmark failed; logs are kept in {tmp}")
        for s in reversed(stoppers):
            s.stop()
        raise
    for s in reversed(stoppers):
        s.stop()

    summary = summarize(runs, servers)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/tls_bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": benchrun.machine(),
        "versions": versions,
        "config": {"workers": args.workers, "reps": reps, "quick": args.quick, "messages": messages,
                   "sessions": session_counts, "certs": certs, "servers": servers, "tlsgen": "../shared/tools/tlsgen.c",
                   "smtpfw_cmd": args.smtpfw_cmd, "smtpfw_tls": args.smtpfw_tls, "smtpfw_b_cmd": args.smtpfw_b_cmd,
                   "smtpfw_b_tls": args.smtpfw_b_tls, "smtpfw_b_plain": args.smtpfw_b_plain,
                   "haraka": haraka_how if haraka_exe else f"not measured ({haraka_how})", "notes": notes},
        "summary": summary,
        "targets": targets(summary),
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / "tls-latest.md").write_text(text)
    print(text)
    if all(r["ok"] for r in runs):
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    log(f"some runs failed; logs are kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
