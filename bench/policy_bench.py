"""Postfix + smtpfw as a policy service, against Postfix + postfwd and Postfix alone (issue 16).

    python bench/policy_bench.py            # 2,000 x 2 KB over 20 sessions, 3 repetitions (~1.5 min)
    python bench/policy_bench.py --quick    # 500 messages, 1 repetition (~20 s)

One run starts, all on loopback and all stopped at the end (even on errors):

- the tests' DNS server (tests/support/dnsserver.py) serving ../shared/zones
  on DNS_HOST:53 (default 127.0.53.53), so that Postfix and postfwd, which
  only know /etc/resolv.conf, can use it: each of them runs in a private
  mount namespace (``unshare --mount``) in which a resolv.conf naming that
  address is bind-mounted over /etc/resolv.conf; nothing of the system
  changes;
- Postfix's ``smtp-sink -c`` as the relay target of every Postfix;
- ``smtpfw serve`` with one ``kind: policy`` listener and
  rules/reference.rules (DNS: the loopback server);
- postfwd2 (Debian's ``postfwd`` package, installed with apt-get if missing)
  with the reference policy in its own syntax, generated from
  ../shared/policy;
- with configuration null, the null policy service;
- one instance of the same Postfix per configuration (Debian's package;
  ``master -d`` with its own config, queue and log in a temporary folder),
  identical but for ``smtpd_recipient_restrictions``:

  plain    ``reject_unauth_destination`` only: no policy at all;
  native   the reference policy in Postfix's own restrictions
           (reject_rbl_client, check_*_access texthash/regexp tables,
           reject_rhsbl_sender, relay_domains + reject_unauth_destination);
  smtpfw   ``check_policy_service inet:127.0.0.1:PORT`` -> smtpfw;
  postfwd  ``check_policy_service inet:127.0.0.1:PORT`` -> postfwd;
  null     ``check_policy_service inet:127.0.0.1:PORT`` -> the null policy
           service (bench/null_policy.c, compiled with cc at run time, or
           bench/null_policy.py on uvloop without a compiler): every
           request answered ``action=DUNNO`` at once, unread.  What asking
           any policy service costs Postfix at the least (not run unless
           named in --configs).

  Each relays what it accepts to smtp-sink (relayhost = [127.0.0.1]:SINK,
  relay_domains = the rcpthosts list, smtp_dns_support_level = disabled).

Before measuring, the reference sessions of tests/test_reference_policy.py
that can come from loopback addresses (127.0.0.1, and 127.0.0.2/.5, which
bl.test lists) are sent to every Postfix that has a policy (not null, which
refuses nothing), and each RCPT reply's code must be the reference's: they
express the same policy.

Load: Postfix's ``smtp-source`` (one message per connection, one recipient;
HELO, sender and recipient pass the policy), each configuration in turn,
the order rotated between repetitions.  Per run: messages/s (messages /
smtp-source's wall time), delivered/s (until smtp-sink counted them all),
and CPU ms per message, from the start of the load until the sink has every
message, of Postfix's process tree (master and all its children, including
children that exited: master's cutime/cstime), of the policy service's tree
(smtpfw's supervisor and workers; postfwd's master, cache and policy
children; the null service's one process) and of the DNS server.  Results: bench/results/latest.policy.json
and latest.policy.md (--out to change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402
import run as benchrun  # noqa: E402  (bench/run.py: Service, SinkCounter, tool helpers)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
from tests.support.postfix import POSTFIX_LIBEXEC, in_namespace, postfix_available, prepare_instance  # noqa: E402
from tests.support.postfwd import Postfwd  # noqa: E402
from tests.support.reference import base_settings, postfix_native, read_list  # noqa: E402

SENDER, RECIPIENT, HELO = "from@example.org", "to@example.net", "loadgen.example.org"
TARGET = 0.9                  # Postfix + smtpfw policy >= 0.9 x Postfix alone (issue 16)
CONFIGS = ("plain", "native", "smtpfw", "postfwd", "smtpfw-b", "null")
POLICY_SERVICES = ("smtpfw", "postfwd", "smtpfw-b", "null")
LABELS = {
    "plain": "Postfix alone, no policy",
    "native": "Postfix alone, reference policy in Postfix restrictions",
    "smtpfw": "Postfix + smtpfw policy (rules/reference.rules)",
    "postfwd": "Postfix + postfwd2 (reference policy)",
    "smtpfw-b": "Postfix + smtpfw policy, build B (--smtpfw-b-cmd)",
    "null": "Postfix + null policy service (DUNNO to every request)",
}
log = benchrun.log


# ---- processes -------------------------------------------------------------------

def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root``'s process tree, including children
    that have exited and been reaped (their time is in their parent's cutime
    and cstime).  Postfix's smtpd, cleanup and smtp processes exit after
    max_use requests, postfwd's children after max_requests: counting live
    processes only would lose their time."""
    total = 0
    for pid in procstat.tree(root):
        fields = procstat._stat_fields(pid)
        if fields is not None:           # utime, stime, cutime, cstime (stat fields 14-17)
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / procstat.CLK_TCK


def port_free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def wait_port(port: int, service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        service.check()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not listen on port {port} within {timeout:.0f}s")
        time.sleep(0.1)


def policy_ask(port: int, **attrs) -> str:
    """One policy request, as Postfix's smtpd sends it; the action."""
    attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
             "client_address": "127.0.0.1", "client_port": "1", "client_name": "unknown",
             "helo_name": HELO, "sender": SENDER, "recipient": RECIPIENT, "instance": "ping.1", **attrs}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n")
        buf = b""
        while b"\n\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"policy service on {port} closed: {buf!r}")
            buf += chunk
    return buf.partition(b"\n\n")[0].decode().removeprefix("action=")


class PostfixServer:
    """One Postfix (master -d) in a folder of its own, in a mount namespace
    with the benchmark's resolv.conf; stopped with killpg."""

    def __init__(self, name: str, settings: dict[str, str], resolv: Path):
        self.name = f"postfix-{name}"
        self.root = Path(tempfile.mkdtemp(prefix=f"smtpfw-pbench-{name}-"))
        self.root.chmod(0o755)
        self.port = benchrun.free_port()
        self.settings = settings
        self.resolv = resolv
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "master.log"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.maillog()[-2000:]}"
                               f"{self.log_path.read_text(errors='replace')[-1000:]}")

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def configure(self) -> Path:
        """The instance's configuration folder, made (a subclass adds to it)."""
        return prepare_instance(self.root, self.port, self.settings)

    def start(self) -> None:
        conf = self.configure()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(in_namespace(self.resolv, [str(POSTFIX_LIBEXEC / "master"), "-d",
                                                                "-c", str(conf)]),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
                except ProcessLookupError:
                    pass
            self._log.close()


def install_postfwd(allowed: bool) -> str:
    if os.path.exists("/usr/sbin/postfwd2"):
        return "found"
    if not allowed:
        raise SystemExit("postfwd2 is not installed (apt-get install postfwd; --no-install given)")
    log("installing postfwd with apt-get (policy-rc.d keeps it from starting) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc_d = Path("/usr/sbin/policy-rc.d")
    made = not rc_d.exists()
    if made:
        rc_d.write_text("#!/bin/sh\nexit 101\n")
        rc_d.chmod(0o755)
    try:
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "postfwd"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            proc = subprocess.run(["apt-get", "install", "-y", "-q", "postfwd"], env=env, capture_output=True,
                                  text=True)
    finally:
        if made:
            rc_d.unlink()
    if not os.path.exists("/usr/sbin/postfwd2"):
        raise SystemExit(f"apt-get install postfwd failed: {proc.stderr[-500:]}")
    return "installed with apt-get"


# ---- the policy, three ways ---------------------------------------------------------

def postfwd_config(tmp: Path, policy: Path) -> Path:
    """The reference policy (../shared/policy/README) as a postfwd2 ruleset.
    postfwd is asked at RCPT only, so the rules run in the reference's order
    (connect, HELO, MAIL, RCPT) on one request; the first that matches
    answers.  Lists are postfwd ``file:`` items (compared case-insensitively
    with ``==``); badmailfrom's ``@domain`` entries become sender_domain
    items.  postfwd's actions cannot contain ';' (its item separator), so the
    DNSBL text says "Service unavailable," where Postfix says ";"."""
    mf = read_list(policy / "badmailfrom")
    (tmp / "badmailfrom-addresses").write_text("".join(f"{a}\n" for a in mf if not a.startswith("@")))
    (tmp / "badmailfrom-domains").write_text("".join(f"{a[1:]}\n" for a in mf if a.startswith("@")))
    rules = [
        "id=dnsbl; rbl=bl.test; action=554 5.7.1 Service unavailable, client [$$client_address] "
        "blocked using bl.test: $$dnsbltext",
        f"id=badhelo; helo_name==file:{policy / 'badhelo'}; "
        "action=550 5.7.1 Helo command rejected: host name $$helo_name is not acceptable",
        f"id=badmailfrom; sender==file:{tmp / 'badmailfrom-addresses'}; "
        "action=550 5.7.1 Sender address rejected: your envelope sender is in my badmailfrom list",
        f"id=badmailfrom-domain; sender_domain==file:{tmp / 'badmailfrom-domains'}; "
        "action=550 5.7.1 Sender address rejected: your envelope sender is in my badmailfrom list",
        "id=rhsbl; rhsbl_sender=dbl.test; "
        "action=550 5.7.1 Sender address rejected: domain $$sender_domain blocked using dbl.test: $$dnsbltext",
        "id=relay-hack; recipient_localpart=~[%!@]; action=550 5.7.1 Relaying denied: address form not accepted",
        f"id=badrcptto; recipient==file:{policy / 'badrcptto'}; "
        "action=550 5.7.1 Recipient address rejected: blocked by badrcptto",
        f"id=rcpthosts; recipient_domain==file:{policy / 'rcpthosts'}; action=DUNNO",
        "id=relay; action=554 5.7.1 Relay access denied",
    ]
    path = tmp / "postfwd.cf"
    path.write_text("# the reference policy (shared/policy/README), generated by bench/policy_bench.py\n"
                    + "\n".join(rules) + "\n")
    return path


def null_policy_argv(tmp: Path, port: int) -> tuple[list[str], str]:
    """How to run the null policy service: bench/null_policy.c compiled with
    cc -O2, else bench/null_policy.py (uvloop if installed); what it is."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        exe = tmp / "null_policy"
        proc = subprocess.run([cc, "-O2", "-o", str(exe), str(BENCH / "null_policy.c")], capture_output=True,
                              text=True)
        if proc.returncode == 0:
            return [str(exe), "127.0.0.1", str(port)], f"bench/null_policy.c ({Path(cc).name} -O2)"
        log(f"cc could not build bench/null_policy.c, using bench/null_policy.py: {proc.stderr[-300:]}")
    return ([sys.executable, str(BENCH / "null_policy.py"), "127.0.0.1", str(port)],
            "bench/null_policy.py (no C compiler)")


# ---- verdicts -------------------------------------------------------------------

def check_verdicts(port: int) -> list[str]:
    """The loopback reference sessions against one Postfix: each RCPT reply's
    code and enhanced code must be the reference's.  The mismatches."""
    from tests.support.reference import SESSIONS

    bad = []
    for client, helo, sender, rcpts, _ in SESSIONS:
        if not client.startswith("127."):
            continue
        with smtplib.SMTP("127.0.0.1", port, source_address=(client, 0), timeout=30) as s:
            s.ehlo(helo)
            code, text = s.mail(sender)
            if code != 250:
                bad.append(f"{client} {helo} MAIL FROM:<{sender}>: {code} {text.decode()}")
                continue
            for rcpt, want in rcpts.items():
                code, text = s.rcpt(rcpt)
                got = f"{code} {(text.decode().split() or [''])[0]}"
                expected = " ".join(want.split()[:2])
                if got != expected:
                    bad.append(f"{client} {helo} <{sender}> RCPT <{rcpt}>: {code} {text.decode()} "
                               f"(reference: {want.strip()})")
            s.rset()
    return bad


# ---- one measured run -------------------------------------------------------------

def measure(name: str, pf: PostfixServer, policy_pid: int | None, source: list[str], messages: int,
            sessions: int, size: int, sink: benchrun.SinkCounter, dns_pid: int, sink_pid: int) -> dict:
    sink0 = sink.count
    pf_cpu0 = tree_cpu(pf.pid)
    pol_cpu0 = tree_cpu(policy_pid) if policy_pid else 0.0
    dns_cpu0, sink_cpu0 = tree_cpu(dns_pid), tree_cpu(sink_pid)
    busy0, total0 = procstat.machine_cpu()
    argv = [*source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", HELO, "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{pf.port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    delivered_at = sink.wait_for(sink0 + messages, timeout=120.0) if rc == 0 else None
    stop = delivered_at if delivered_at is not None else time.perf_counter()
    busy1, total1 = procstat.machine_cpu()
    pf_cpu = tree_cpu(pf.pid) - pf_cpu0
    pol_cpu = (tree_cpu(policy_pid) - pol_cpu0) if policy_pid else 0.0
    dns_cpu, sink_cpu = tree_cpu(dns_pid) - dns_cpu0, tree_cpu(sink_pid) - sink_cpu0
    wall, span = end - start, stop - start
    loadgen = usage.ru_utime + usage.ru_stime
    busy = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1) * span   # CPU seconds
    ok = rc == 0 and delivered_at is not None
    out = {
        "config": name, "messages": messages, "ok": ok, "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if rc == 0 else 0.0,
        "delivered_per_s": round(messages / span, 1) if ok else 0.0,
        "postfix_cpu_ms_per_msg": round(1000 * pf_cpu / messages, 3),
        "policy_cpu_ms_per_msg": round(1000 * pol_cpu / messages, 3),
        "total_cpu_ms_per_msg": round(1000 * (pf_cpu + pol_cpu) / messages, 3),
        "dns_cpu_ms_per_msg": round(1000 * dns_cpu / messages, 3),
        "sink_cpu_ms_per_msg": round(1000 * sink_cpu / messages, 3),
        "loadgen_cpu_pct": round(100 * loadgen / wall, 1),
        "machine_busy_pct": round(100 * busy / span, 1),
        "others_cpu_pct": round(max(0.0, 100 * (busy - pf_cpu - pol_cpu - dns_cpu - sink_cpu - loadgen) / span), 1),
        "sink_count": sink.count - sink0,
    }
    if rc != 0:
        out["error"] = err[-300:] or f"smtp-source exit code {rc}"
    elif delivered_at is None:
        out["error"] = f"the sink counted {sink.count - sink0} of {messages} messages within 120 s"
    return out


# ---- summary ----------------------------------------------------------------------

METRICS = ("accepted_per_s", "delivered_per_s", "postfix_cpu_ms_per_msg", "policy_cpu_ms_per_msg",
           "total_cpu_ms_per_msg", "dns_cpu_ms_per_msg", "loadgen_cpu_pct", "machine_busy_pct", "others_cpu_pct")


def summarize(runs: list[dict], configs: list[str]) -> dict:
    out = {}
    for name in configs:
        rows = [r for r in runs if r["config"] == name]
        good = [r for r in rows if r["ok"]]
        out[name] = {m: benchrun.stat([r[m] for r in good]) for m in METRICS}
        out[name]["failed_runs"] = len(rows) - len(good)
        for base in ("native", "plain"):
            if base in configs and name != base:
                ratios, delivered, cpu, pf_extra = [], [], [], []
                for r in good:
                    b = next((x for x in runs if x["config"] == base and x["rep"] == r["rep"] and x["ok"]), None)
                    if b:
                        ratios.append(r["accepted_per_s"] / b["accepted_per_s"])
                        delivered.append(r["delivered_per_s"] / b["delivered_per_s"])
                        cpu.append(b["total_cpu_ms_per_msg"] / r["total_cpu_ms_per_msg"])
                        pf_extra.append(r["postfix_cpu_ms_per_msg"] - b["postfix_cpu_ms_per_msg"])
                out[name][f"ratio_to_{base}"] = benchrun.stat(ratios)
                out[name][f"delivered_ratio_to_{base}"] = benchrun.stat(delivered)
                out[name][f"cpu_ratio_to_{base}"] = benchrun.stat(cpu)
                out[name][f"postfix_cpu_extra_to_{base}"] = benchrun.stat(pf_extra)
    return out


def targets(summary: dict) -> list[dict]:
    """The target's rows for smtpfw; for the null policy service the same
    comparison, for reference (what no policy service can do better than)."""
    rows = []
    for name, who in (("smtpfw", "Postfix + smtpfw policy"),
                      ("null", "for reference, not the target: Postfix + null policy service")):
        if name not in summary:
            continue
        for base, what in (("native", "Postfix alone with the reference policy in its own restrictions"),
                           ("plain", "Postfix alone with no policy")):
            r = summary[name].get(f"ratio_to_{base}", {}).get("median")
            if r is not None:
                rows.append({"target": f"{who} >= {TARGET} x {what} (msg/s)",
                             "value": round(r, 2), "met": r >= TARGET})
    return rows


_fmt = benchrun._fmt


def markdown(result: dict) -> str:
    m, v, cfg = result["machine"], result["versions"], result["config"]
    lines = [
        f"# Postfix policy-service benchmark, {result['date']}",
        "",
        f"`{result['command']}`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB, {m['os']}, Linux {m['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load: smtp-source, {cfg['messages']:,} messages of {cfg['size'] // 1024} KB over {cfg['sessions']} "
        f"sessions (one message per connection, one recipient), from 127.0.0.1; {cfg['reps']} repetition(s), "
        "configurations in rotated order; median (min–max).",
        "- Every Postfix relays to smtp-sink (relayhost [127.0.0.1]:SINK). msg/s = messages / smtp-source's wall "
        "time; delivered/s = until smtp-sink counted them all. CPU ms/msg from the start of the load until the "
        "sink had every message: Postfix = master and all its children (exited ones included); policy = "
        "smtpfw's supervisor and workers, postfwd2's master, cache and policy children, or the null "
        "service's process; DNS = the "
        "loopback DNS server (smtpd caches DNSBL answers per process, smtpfw and postfwd per process too). "
        "CPU ratio = Postfix alone's total CPU per message / this configuration's, in the same repetition: "
        "what the msg/s ratio comes to when the machine's cores are the limit, and less disturbed by other "
        "work on the machine than msg/s. Others' CPU % = machine CPU used by anything else (kernel threads, "
        "other users' processes; 200 = both cores): where it is high, that run's msg/s were disturbed.",
        f"- smtpfw: `{cfg.get('smtpfw_cmd', 'python -m smtpfw')} serve`, `--workers {cfg['workers']}`, "
        f"{cfg['event_loop']}; postfwd2 arguments: "
        f"`{' '.join(cfg['postfwd_args'])}`",
    ]
    if cfg.get("smtpfw_b_cmd"):
        lines.append(f"- smtpfw-b: `{cfg['smtpfw_b_cmd']} serve`, the same configuration"
                     + (f" but `--workers {cfg['b_workers']}`" if cfg.get("b_workers") else ""))
    if cfg.get("null_policy", "not used") != "not used":
        lines.append(f"- null: {cfg['null_policy']}, one process answering `action=DUNNO` to every request "
                     "unread; Postfix configured as for smtpfw")
    lines.append("")
    for n in cfg.get("notes", []):
        lines += [f"**Note:** {n}", ""]
    lines += ["| configuration | msg/s | delivered msg/s | ratio to Postfix + native policy | ratio to Postfix, "
              "no policy | delivered ratio to native policy | CPU ms/msg Postfix | CPU ms/msg policy service "
              "| CPU ms/msg total | CPU ratio to native policy | DNS server CPU ms/msg | others' CPU % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        failed = f" ⚠ {s['failed_runs']} failed run(s)" if s.get("failed_runs") else ""
        r_native = _fmt(s.get("ratio_to_native", {}), 2) if name != "native" else "1"
        r_plain = _fmt(s.get("ratio_to_plain", {}), 2) if name != "plain" else "1"
        if name == "smtpfw":
            r_native, r_plain = f"**{r_native}**", f"**{r_plain}**"
        lines.append(
            f"| {LABELS[name]}{failed} | {_fmt(s['accepted_per_s'])} | {_fmt(s['delivered_per_s'])} "
            f"| {r_native} | {r_plain} "
            f"| {_fmt(s.get('delivered_ratio_to_native', {}), 2) if name != 'native' else '1'} "
            f"| {_fmt(s['postfix_cpu_ms_per_msg'], 2)} "
            f"| {_fmt(s['policy_cpu_ms_per_msg'], 2) if name in POLICY_SERVICES else '-'} "
            f"| {_fmt(s['total_cpu_ms_per_msg'], 2)} "
            f"| {_fmt(s.get('cpu_ratio_to_native', {}), 2) if name != 'native' else '1'} "
            f"| {_fmt(s['dns_cpu_ms_per_msg'], 2)} "
            f"| {_fmt(s['others_cpu_pct'])} |")
    extra = [(name, base, s[f"postfix_cpu_extra_to_{base}"]) for name, s in result["summary"].items()
             for base in ("plain", "native") if name in POLICY_SERVICES and f"postfix_cpu_extra_to_{base}" in s]
    if extra:
        lines += ["", "Postfix's own CPU per message with a policy service, minus that of Postfix alone in the "
                  "same repetition (smtpd's side of asking: the policy client, its writes, reads and wake-ups):",
                  ""]
        for name, base, st in extra:
            lines.append(f"- {LABELS[name]}: {_fmt(st, 2)} ms/msg over {LABELS[base].lower()}")
    lines += ["", "## Verdicts", ""]
    if not result["verdicts"]:
        lines.append("- none checked: no configuration with a policy that refuses ran")
    for name, bad in result["verdicts"].items():
        lines.append(f"- {LABELS[name]}: " + ("every loopback reference session gets the reference's codes"
                                                if not bad else f"**{len(bad)} mismatch(es)**: " + "; ".join(bad)))
    lines += ["", "## Target (issue 16)", "", "| target | measured (median ratio) | met |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Runs", "", "| rep | configuration | msg/s | delivered/s | CPU ms/msg Postfix / policy / DNS "
              "| load gen CPU % | others' CPU % |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['rep']} | {r['config']}{'' if r['ok'] else ' FAILED: ' + r.get('error', '')} "
                     f"| {r['accepted_per_s']:,.0f} | {r['delivered_per_s']:,.0f} "
                     f"| {r['postfix_cpu_ms_per_msg']:.2f} / {r['policy_cpu_ms_per_msg']:.2f} / "
                     f"{r['dns_cpu_ms_per_msg']:.2f} | {r['loadgen_cpu_pct']:.0f} | {r['others_cpu_pct']:.0f} |")
    lines.append("")
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Postfix + smtpfw policy vs Postfix + postfwd vs Postfix alone "
                                            "(issue 16).")
    p.add_argument("--quick", action="store_true", help="500 messages, 1 repetition")
    p.add_argument("--messages", type=int, help="messages per run (default 2000, --quick 500)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent smtp-source sessions (default 20)")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes (default 2048)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--configs", default=",".join(CONFIGS[:4]), help=f"which of {','.join(CONFIGS)} "
                   "(default: the first four)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="smtpfw workers (default: CPUs)")
    p.add_argument("--dns-host", default="127.0.53.53", help="loopback address for the DNS server (port 53)")
    p.add_argument("--postfwd-args", default="--summary=600 --cache=600 --cache-rdomain-only --cache-no-size",
                   help="postfwd2 options besides file, port, user and sockets (default: the ARGS of Debian's "
                        "/etc/default/postfwd)")
    p.add_argument("--smtpfw-cmd", default=f"{sys.executable} -m smtpfw",
                   help="how to run smtpfw (default: this Python's -m smtpfw); e.g. another build's: "
                        "'env PYTHONPATH=/tmp/other python -P -m smtpfw' (split on spaces; it runs in the "
                        "repository's folder, which -m would put first on sys.path without -P)")
    p.add_argument("--smtpfw-b-cmd", help="a second smtpfw build to compare in the same run (adds the "
                                          "configuration smtpfw-b)")
    p.add_argument("--smtpfw-b-workers", type=int, help="workers of build B (default: --workers; with "
                                                        "--smtpfw-b-cmd the same build, to compare worker counts)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for latest.policy.json and .md")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfwd")
    p.add_argument("--keep", action="store_true", help="leave everything running until Enter (profiling)")
    args = p.parse_args(argv)

    why = postfix_available()
    if why:
        log(f"cannot run Postfix: {why}")
        return 2
    if not shutil.which("unshare"):
        log("needs unshare(1) (util-linux) for the mount namespaces")
        return 2
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.smtpfw_b_cmd and "smtpfw-b" not in configs:
        configs.append("smtpfw-b")
    if "smtpfw-b" in configs and not args.smtpfw_b_cmd:
        configs.remove("smtpfw-b")
    if any(c not in CONFIGS for c in configs):
        log(f"--configs: choose from {','.join(CONFIGS)}")
        return 2
    reps = args.reps or (1 if args.quick else 3)
    messages = args.messages or (500 if args.quick else 2000)
    zones = sorted(str(z) for z in (SHARED / "zones").glob("*") if z.is_file())
    policy = SHARED / "policy"
    source_bin, sink_bin, how = benchrun.find_postfix_tools(not args.no_install)
    if not (source_bin and sink_bin):
        log(f"smtp-source/smtp-sink: {how}")
        return 2
    notes: list[str] = []
    postfwd_how = install_postfwd(not args.no_install) if "postfwd" in configs else "not used"
    null_how = "not used"
    try:
        import uvloop  # noqa: F401
        event_loop = "uvloop"
    except ImportError:
        event_loop = "asyncio (uvloop not installed: pip install -e '.[fast]')"
        notes.append("uvloop is not installed; smtpfw runs on the standard asyncio loop.")
    if not port_free(args.dns_host, 53):
        log(f"{args.dns_host}:53 is taken; choose another loopback address with --dns-host")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-pbench-"))
    tmp.chmod(0o755)
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {args.dns_host}\noptions timeout:2 attempts:2\n")
    resolv.chmod(0o644)
    stoppers: list = []
    postfixes: dict[str, PostfixServer] = {}
    policy_pids: dict[str, int] = {}
    verdicts: dict[str, list[str]] = {}
    runs: list[dict] = []
    failed = True
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
        base = base_settings(sink_port, policy)

        policy_ports: dict[str, int] = {}
        for name, cmd in (("smtpfw", args.smtpfw_cmd), ("smtpfw-b", args.smtpfw_b_cmd)):
            if name not in configs:
                continue
            port = policy_ports[name] = benchrun.free_port()
            workers = args.smtpfw_b_workers if name == "smtpfw-b" and args.smtpfw_b_workers else args.workers
            cfg = tmp / f"{name}.yaml"
            cfg.write_text(
                f"listen:\n  - {{address: \"127.0.0.1:{port}\", name: policy, kind: policy}}\n"
                "hostname: smtpfw.bench.test\n"
                f"server:\n  workers: {workers}\n"
                f"delivery:\n  mode: maildir\n  maildir: {tmp / 'maildir'}\n"
                f"dns:\n  nameservers: [\"{args.dns_host}:53\"]\n")
            fw = benchrun.Service(name, [*cmd.split(), "serve", "--config", str(cfg),
                                         "--rules", str(ROOT / "rules/reference.rules")], tmp)
            stoppers.append(fw)
            wait_port(port, fw)
            policy_pids[name] = fw.pid
            log(f"{name} policy on :{port} ({workers} workers, {cmd}): ping -> {policy_ask(port)}")
        if "null" in configs:
            port = policy_ports["null"] = benchrun.free_port()
            argv_null, null_how = null_policy_argv(tmp, port)
            nul = benchrun.Service("null", argv_null, tmp)
            stoppers.append(nul)
            wait_port(port, nul)
            policy_pids["null"] = nul.pid
            log(f"null policy service on :{port} ({null_how}): ping -> {policy_ask(port)}")
        if "postfwd" in configs:
            port = policy_ports["postfwd"] = benchrun.free_port()
            pw = Postfwd(tmp, postfwd_config(tmp, policy), port, resolv, args.postfwd_args.split())
            stoppers.append(pw)
            pw.start()
            wait_port(port, pw)
            policy_pids["postfwd"] = pw.pid
            log(f"postfwd2 on :{port} (pid {pw.pid}): ping -> {policy_ask(port)}")

        for name in configs:
            settings = dict(base)
            if name == "plain":
                settings["smtpd_recipient_restrictions"] = "reject_unauth_destination"
            elif name == "native":
                settings.update(postfix_native(tmp, policy))
            else:
                port = policy_ports[name]
                settings["smtpd_recipient_restrictions"] = (f"check_policy_service inet:127.0.0.1:{port}, "
                                                            "reject_unauth_destination")
            pf = PostfixServer(name, settings, resolv)
            postfixes[name] = pf
            stoppers.append(pf)
            pf.start()
        for pf in postfixes.values():
            benchrun.wait_smtp(pf.port, pf)
        log("postfix: " + ", ".join(f"{n} :{pf.port}" for n, pf in postfixes.items())
            + f"; sink :{sink_port}; dns {args.dns_host}:53; load: smtp-source")

        for name, pf in postfixes.items():
            if name not in ("plain", "null"):           # null refuses nothing: only the relay check
                verdicts[name] = check_verdicts(pf.port)
                log(f"verdicts {name}: " + ("all as the reference" if not verdicts[name]
                                            else f"{len(verdicts[name])} mismatches: {verdicts[name]}"))

        source = [source_bin]
        for name, pf in postfixes.items():           # warm-up: processes, policy connections, caches
            r = measure(name, pf, policy_pids.get(name), source, 300 if args.quick else 1000, args.sessions,
                        args.size, counter, dns.pid, sink.pid)
            if not r["ok"]:
                raise RuntimeError(f"warm-up of {name} failed: {r.get('error')}; see {pf.root}")
        if args.keep:
            log("running; press Enter to start measuring")
            input()
        for rep in range(reps):
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for name in order:
                for s in stoppers:
                    s.check()
                time.sleep(1.0)
                r = measure(name, postfixes[name], policy_pids.get(name), source, messages, args.sessions,
                            args.size, counter, dns.pid, sink.pid)
                r["rep"] = rep + 1
                runs.append(r)
                log(f"  rep {rep + 1} {name:8} {r['accepted_per_s']:7.1f} msg/s, delivered {r['delivered_per_s']:7.1f}/s, "
                    f"cpu ms/msg postfix {r['postfix_cpu_ms_per_msg']:.2f} policy {r['policy_cpu_ms_per_msg']:.2f} "
                    f"dns {r['dns_cpu_ms_per_msg']:.2f}, others {r['others_cpu_pct']:.0f}%"
                    + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
        if args.keep:
            log("measured; press Enter to stop everything")
            input()
        failed = not all(r["ok"] for r in runs) or any(verdicts.values())
    except BaseException:
        log(f"benchmark failed; logs are kept in {tmp} and the Postfix folders")
        raise
    finally:
        for s in reversed(stoppers):
            try:
                s.stop()
            except Exception as err:              # go on stopping the others
                log(f"stopping {s.name}: {err}")

    versions = benchrun.tool_versions(True)
    try:
        versions["postfwd"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postfwd"], capture_output=True,
                                             text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        versions["postfwd"] = "unknown"
    summary = summarize(runs, configs)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/policy_bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": benchrun.machine(),
        "versions": versions,
        "config": {"workers": args.workers, "reps": reps, "messages": messages, "sessions": args.sessions,
                   "size": args.size, "event_loop": event_loop, "postfwd_args": args.postfwd_args.split(),
                   "postfwd": postfwd_how, "null_policy": null_how,
                   "postfix_tools": how, "smtpfw_cmd": args.smtpfw_cmd,
                   "smtpfw_b_cmd": args.smtpfw_b_cmd, "b_workers": args.smtpfw_b_workers, "notes": notes},
        "summary": summary,
        "targets": targets(summary),
        "verdicts": verdicts,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.policy.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "latest.policy.md").write_text(text)
    print(text)
    if failed:
        log(f"some runs failed or verdicts differ; logs are kept in {tmp} and the Postfix folders")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    for pf in postfixes.values():
        shutil.rmtree(pf.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
