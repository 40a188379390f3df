"""End-to-end cost of sender authentication (issue 19): smtpfw's messages/s
with SPF, DKIM, ARC and DMARC asked for every message, against the same
ruleset without them, in the same run.

    python bench/content_bench.py             # workload a, 3 repetitions (4-8 minutes with the profile)
    python bench/content_bench.py --quick     # 1,000 messages, 1 repetition (< 1 minute)
    python bench/content_bench.py --profile   # and always profile (otherwise: only when the ratio is < 0.6,
                                              # and not with --quick)

Needs Linux (/proc), Postfix's smtp-source and smtp-sink (bench/run.py's
find_postfix_tools: apt-get installs them as root), dkimpy, pyspf and
cryptography / PyNaCl (smtpfw's dependencies), ../shared/zones for the DNS
lists of the reference rules.

Setups, both running at once on 127.0.0.1 and measured in turn (the order
rotated between repetitions), one smtpfw process with ``--workers``
workers each (default: one per CPU), forwarding to one smtp-sink:

- ``plain``: rules/reference.rules, as bench/run.py runs it;
- ``auth``: the same rules (``include``) plus
  ``option authentication_results = "mx.bench"`` (SPF at MAIL, DKIM + ARC
  and DMARC at DATA for every message, an Authentication-Results header on
  what is accepted) and a DATA rule that uses the result:
  ``[dmarc-reject] reject 550 5.7.1 ... if dmarc = "fail" and dmarc.policy = "reject"``.

DNS: one loopback server (tests/support/dnsserver.py's DnsServer, run by
this script as ``_dns``) serves ../shared/zones (the reference rules'
bl.test and dbl.test) and the sender's records: ``example.org TXT
"v=spf1 ip4:127.0.0.1 -all"`` (SPF passes for the envelope sender
from@example.org), ``_dmarc.example.org TXT "v=DMARC1; p=reject"`` (the
From: domain), ``bench._domainkey.example.org TXT`` the DKIM public key,
and ``_dmarc.bank.example`` (p=reject) for the negative probe.  It
answers a count of the queries it got (``queries.bench.internal TXT``),
so each run reports DNS queries per message.  smtpfw caches SPF results
(60 s per worker) and DNSBL answers; the DKIM key and the DMARC record are
looked up for every message (smtpfw does not cache them), from this
loopback server.

Messages (workload a: 5,000 per run, 20 sessions, one message per
connection, one recipient), both sent by Postfix's smtp-source:

- ``signed`` (the target's): a 2 KB-body message (From: <from@example.org>,
  To, Subject, Date, Message-ID, MIME headers) DKIM-signed by this script
  with dkimpy (``dkim.sign``, relaxed/relaxed, d=example.org, s=bench) with
  an RSA-2048 key it makes (``--key ed25519`` for Ed25519), sent with
  ``smtp-source -F FILE`` (smtp-source sends a prepared message as it is:
  every line ends in CRLF, plus one empty line at the end, which DKIM's
  body canonicalisation ignores).  The load generator stays Postfix's C
  program: bench/pysource.py cannot send a given message (its headers are
  fixed), and its ceiling is measured beside smtp-source's for the record.
- ``unsigned``: smtp-source's own generated message (``-l 2048``, exactly
  bench/run.py's workload a): ``dkim=none``, so SPF + DMARC only.

Plain and auth get the same load generator and the same messages; the
ratio is auth's accepted msg/s over plain's in the same repetition, per
message kind.  Target (issue 19): signed auth >= 0.6 x plain.

Correctness, before measuring: each setup's forward-mode server accepts
one signed and one unsigned message from smtp-source (the sink counts
them); a Maildir-mode smtpfw per setup (same rules, same DNS, 1 worker)
gets the same two messages and the delivered files are read: auth's must
carry ``Authentication-Results: mx.bench;`` with spf=pass, dkim=pass
(signed; dkim=none unsigned) and dmarc=pass, plain's none; and a message
whose From: is bank.example (p=reject, nothing aligned) must get 550 from
auth (the DMARC rule works) and 250 from plain.

Per run: accepted msg/s (smtp-source's wall time; it stops at the first
non-2xx reply), delivered msg/s (until the sink counted them all), smtpfw
CPU ms per message (utime+stime of the process tree), the DNS server's CPU
and queries per message, others' CPU (machine CPU used by anything but the
server, the load generator, the sink and the DNS server).  Before each run
the script waits (up to ``--quiet-wait`` seconds, default 20) for a second
in which the machine's CPU use is below 25 %: on a shared machine other
work skews a run; the wait and the CPU use before it are kept per run.

Each part alone: after the measured runs, every part auth adds (SPF from
the cache, verify_dkim and within it dkimpy and the key's DNS query, ARC,
DMARC and within it the _dmarc query, the header, removing forged ones) is
called one at a time in this process against the same DNS server, CPU and
wall time per call: what each costs without contention or a profiler.

Profile (when the signed ratio is below 0.6 and not --quick, or ``--profile``): a third and
a fourth smtpfw (plain, auth) run through this script's wrapper
(``_serve``: smtpfw unchanged but for cProfile, started and stopped by
SIGUSR1/SIGUSR2 in each worker, with a CPU-time timer on the event loop's
thread and inside the DKIM / ARC / SPF thread-pool calls); an unmeasured
run of signed messages through each; own CPU time by function and the CPU
under each check, per message.

Results: bench/results/content-latest.json and content-latest.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import json
import os
import re
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

AUTHSERV = "mx.bench"
DOMAIN = "example.org"              # bench/run.py's sender from@example.org: envelope and From:
SELECTOR = "bench"
BAD_FROM = "ceo@bank.example"       # the negative probe's From: (p=reject, nothing aligned)
COUNTER = "queries.bench.internal."
TARGET_RATIO = 0.6
AUTH_RULES = """\
# rules/reference.rules plus sender authentication for every message
# (bench/content_bench.py, issue 19)
include "{reference}"

option authentication_results = "{authserv}"

on data:
    [dmarc-reject] reject 550 5.7.1 "DMARC: {{dmarc.from}} asks to reject unauthenticated mail" if dmarc = "fail" and dmarc.policy = "reject"
"""


# ---- the DNS server: zones + the sender's records + a query counter --------------------
#
# python bench/content_bench.py _dns --port N --records FILE ZONE...

def _dns(argv: list[str]) -> int:
    import dns.message
    import dns.name
    import dns.rdataclass
    import dns.rdatatype
    import dns.rdtypes.ANY.TXT
    import dns.rrset

    from tests.support.dnsserver import DnsServer

    p = argparse.ArgumentParser(prog="content_bench.py _dns")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--records", required=True, help="JSON: [[name, type, [presentation values]], ...]")
    p.add_argument("--authoritative", action="append", default=[])
    p.add_argument("zones", nargs="*")
    args = p.parse_args(argv)
    counter = dns.name.from_text(COUNTER)

    class CountingServer(DnsServer):
        def answer(self, query):
            if len(query.question) == 1 and query.question[0].name == counter:
                r = dns.message.make_response(query)
                rrset = dns.rrset.RRset(counter, dns.rdataclass.IN, dns.rdatatype.TXT)
                rrset.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                                  [str(self.queries).encode()]), 0)
                r.answer.append(rrset)
                return r
            return super().answer(query)

    records = {(name, rtype): values for name, rtype, values in json.loads(Path(args.records).read_text())}
    server = CountingServer(args.zones, records=records, authoritative=args.authoritative, port=args.port)
    server.start()
    zones = ", ".join(f"{z.name}({z.kind})" for z in server.zones) or "no zones"
    print(f"dnsserver listening on {server.host}:{server.port} udp+tcp: {zones}; "
          f"{len(records)} static record set(s)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


# ---- the profiling wrapper ----------------------------------------------------------
#
# python bench/content_bench.py _serve OUTDIR serve --config ... --rules ...
# runs `smtpfw serve` unchanged but for this, in each worker: SIGUSR1 starts
# cProfile (timer: the thread's CPU time) on the event loop's thread and
# inside every DKIM / ARC / SPF call in the checks' thread pools; SIGUSR2
# stops it and writes OUTDIR/prof-PID.pstats and OUTDIR/prof-PID.json (the
# pool calls' count, CPU and wall time; the worker's CPU between the two
# signals).  OUTDIR/started-PID acknowledges SIGUSR1.

def _serve(outdir: str, argv: list[str]) -> int:
    import asyncio
    import cProfile
    import pstats

    import smtpfw.server as server_mod
    from smtpfw.checks import dkim as dkim_mod
    from smtpfw.checks import spf as spf_mod

    out = Path(outdir)
    state: dict = {"active": False, "main": None, "threads": [], "cpu0": 0.0}
    local = threading.local()
    lock = threading.Lock()
    timings: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])   # name -> calls, cpu s, wall s

    def wrap(mod, name: str) -> None:
        original = getattr(mod, name)

        def wrapper(*args, **kwargs):
            if not state["active"]:
                return original(*args, **kwargs)
            prof = getattr(local, "prof", None)
            if prof is None:
                prof = local.prof = cProfile.Profile(time.thread_time)
                with lock:
                    state["threads"].append(prof)
            c0, w0 = time.thread_time(), time.perf_counter()
            prof.enable()
            try:
                return original(*args, **kwargs)
            finally:
                prof.disable()
                with lock:
                    t = timings[name]
                    t[0] += 1
                    t[1] += time.thread_time() - c0
                    t[2] += time.perf_counter() - w0
        wrapper.__name__ = name
        setattr(mod, name, wrapper)

    wrap(dkim_mod, "_verify_all")
    wrap(dkim_mod, "_arc_verify")
    wrap(spf_mod, "_evaluate")

    def start() -> None:
        timings.clear()
        state["cpu0"] = time.process_time()
        state["active"] = True
        prof = state["main"] = cProfile.Profile(time.thread_time)
        (out / f"started-{os.getpid()}").write_text("1")
        prof.enable()

    def stop() -> None:
        prof = state["main"]
        if prof is None:
            return
        prof.disable()
        state["active"] = False
        cpu = time.process_time() - state["cpu0"]
        stats = pstats.Stats(prof)
        for p in state["threads"]:
            stats.add(p)
        stats.dump_stats(str(out / f"prof-{os.getpid()}.pstats"))
        body = {"pid": os.getpid(), "worker_cpu_s": cpu,
                "pool_calls": {k: {"calls": v[0], "cpu_s": v[1], "wall_s": v[2]} for k, v in timings.items()}}
        (out / f"prof-{os.getpid()}.json").write_text(json.dumps(body))
        state["main"] = None

    original_worker = server_mod._run_worker

    async def _run_worker(*args, **kwargs):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, start)
        loop.add_signal_handler(signal.SIGUSR2, stop)
        return await original_worker(*args, **kwargs)

    server_mod._run_worker = _run_worker        # type: ignore[assignment]
    from smtpfw.cli import main
    return main(argv)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_dns":
    sys.exit(_dns(sys.argv[2:]))
if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "_serve":
    sys.exit(_serve(sys.argv[2], sys.argv[3:]))

import procstat
import run as e2e  # bench/run.py: processes, smtp-source, sink counter, machine info
from run import Service, free_port, log, wait_line, wait_smtp

WORKLOAD = e2e.WORKLOADS["a"]            # 5,000 x 2 KB, 20 sessions
QUICK_MESSAGES = 1000
SETUPS = ("plain", "auth")
KINDS = ("signed", "unsigned")
DESCRIBE = {
    "plain": "rules/reference.rules",
    "auth": f"+ option authentication_results = \"{AUTHSERV}\" + [dmarc-reject] at DATA",
}


# ---- the DKIM key and the signed message ----------------------------------------------

def make_key(kind: str) -> tuple[bytes, str, bytes, str]:
    """(private key for dkim.sign, the TXT record, a=, description)."""
    if kind == "ed25519":
        import nacl.encoding
        import nacl.signing
        signer = nacl.signing.SigningKey.generate()
        public = signer.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
        return (signer.encode(encoder=nacl.encoding.Base64Encoder), f"v=DKIM1; k=ed25519; p={public}",
                b"ed25519-sha256", "Ed25519 (ed25519-sha256)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    return private, f"v=DKIM1; k=rsa; p={public}", b"rsa-sha256", "RSA-2048 (rsa-sha256)"


def make_message(body_size: int, private: bytes, txt: str, algorithm: bytes) -> tuple[bytes, bytes]:
    """(the file smtp-source -F sends: LF line ends, the DKIM-Signature
    first; the message as it arrives: CRLF, one empty line added).  The
    arriving form is verified here with dkimpy before anything runs."""
    line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n"   # 80 bytes
    body = (line * (body_size // len(line) + 1))[:body_size - 1] + "\n"
    head = (f"From: <{e2e.SENDER}>\nTo: <{e2e.RECIPIENT}>\nSubject: smtpfw content benchmark\n"
            "Date: Mon, 30 Nov 2026 12:00:00 +0000\nMessage-ID: <content-bench.1@example.org>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n")
    lf = (head + body).encode()
    import dkim
    signature = dkim.sign(lf.replace(b"\n", b"\r\n"), SELECTOR.encode(), DOMAIN.encode(), private,
                          signature_algorithm=algorithm, canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id",
                                           b"mime-version", b"content-type"])
    data = signature.replace(b"\r\n", b"\n") + lf
    wire = data.replace(b"\n", b"\r\n") + b"\r\n"
    if not dkim.verify(wire, dnsfunc=lambda name, timeout=5: txt.encode()):
        raise RuntimeError("the signed message does not verify with dkimpy")
    return data, wire


def txt_presentation(text: str) -> str:
    """A TXT value in zone-file form: strings of at most 255 bytes."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


def dns_records(key_txt: str) -> list:
    return [
        [f"{DOMAIN}.", "TXT", [txt_presentation("v=spf1 ip4:127.0.0.1 -all")]],
        [f"_dmarc.{DOMAIN}.", "TXT", [txt_presentation("v=DMARC1; p=reject")]],
        [f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT", [txt_presentation(key_txt)]],
        [f"_dmarc.{BAD_FROM.split('@')[1]}.", "TXT", [txt_presentation("v=DMARC1; p=reject")]],
    ]


def dns_queries(port: int) -> int:
    """How many queries the DNS server has answered (this one not counted)."""
    import dns.message
    import dns.query
    r = dns.query.udp(dns.message.make_query(COUNTER, "TXT"), "127.0.0.1", port=port, timeout=2)
    return int(r.answer[0][0].strings[0]) - 1


# ---- smtpfw ---------------------------------------------------------------------------

def write_config(path: Path, port: int, workers: int, dns_port: int, sink_port: int | None,
                 maildir: Path | None = None) -> None:
    delivery = (f"delivery:\n  mode: maildir\n  maildir: \"{maildir}\"\n" if maildir is not None
                else f"delivery:\n  mode: forward\n  forward: 127.0.0.1:{sink_port}\n")
    path.write_text(f"listen: 127.0.0.1:{port}\n"
                    "hostname: smtpfw.bench.test\n"
                    f"server:\n  workers: {workers}\n"
                    + delivery +
                    "limits:\n  max_connections_per_ip: 10000\n  max_connections: 10000\n"
                    f"dns:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\n")


@dataclass
class Setup:
    name: str
    rules: Path
    port: int = 0
    server: Service | None = None
    probe: dict = field(default_factory=dict)

    def start(self, tmp: Path, workers: int, dns_port: int, sink_port: int, wrapper: list[str] | None = None,
              label: str | None = None) -> Service:
        label = label or f"smtpfw-{self.name}"
        self.port = free_port()
        config = tmp / f"{label}.yaml"
        write_config(config, self.port, workers, dns_port, sink_port)
        head = wrapper or [sys.executable, "-m", "smtpfw"]
        self.server = Service(label, [*head, "serve", "--config", str(config), "--rules", str(self.rules)], tmp)
        return self.server


# ---- load -------------------------------------------------------------------------------

def load_argv(source: list[str], msg_args: list[str], sessions: int, messages: int, port: int) -> list[str]:
    return [*source, "-s", str(sessions), "-m", str(messages), *msg_args, "-M", e2e.HELO,
            "-f", e2e.SENDER, "-t", e2e.RECIPIENT, f"127.0.0.1:{port}"]


def run_load(argv: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    return {"start": start, "end": end, "rc": rc, "error": err[-300:] or (f"exit code {rc}" if rc else ""),
            "loadgen_cpu_s": usage.ru_utime + usage.ru_stime}


def wait_quiet(max_wait: float, threshold_pct: float = 25.0) -> dict:
    """Before a run (our servers idle): wait, up to ``max_wait`` seconds,
    for a second in which the machine's CPU use (200 % = two cores) is below
    ``threshold_pct``: other people's load on a shared machine skews a run."""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        b0, n0 = procstat.machine_cpu()
        time.sleep(1.0)
        b1, n1 = procstat.machine_cpu()
        busy = 100 * (b1 - b0) / max(1, n1 - n0) * (os.cpu_count() or 1)
        waited = time.monotonic() - t0
        if busy < threshold_pct or waited >= max_wait:
            return {"waited_s": round(waited, 1), "busy_before_pct": round(busy, 1)}


def measure(name: str, kind: str, server: Service | None, argv: list[str], messages: int,
            sink: e2e.SinkCounter, sink_pid: int, dns_pid: int, dns_port: int) -> dict:
    """One run: ``argv`` (a load generator) against ``server`` (None: the
    sink itself, the load generator's ceiling)."""
    pids = procstat.tree(server.pid) if server else []
    cpu0 = procstat.cpu_seconds(pids)
    sink_cpu0, dns_cpu0 = procstat.cpu_seconds([sink_pid]), procstat.cpu_seconds([dns_pid])
    q0 = dns_queries(dns_port)
    busy0, total0 = procstat.machine_cpu()
    sink0 = sink.count
    load = run_load(argv)
    delivered_at = sink.wait_for(sink0 + messages, timeout=30.0) if load["rc"] == 0 else None
    busy1, total1 = procstat.machine_cpu()
    cpu = (procstat.cpu_seconds(procstat.tree(server.pid)) - cpu0) if server else 0.0
    sink_cpu = procstat.cpu_seconds([sink_pid]) - sink_cpu0
    dns_cpu = procstat.cpu_seconds([dns_pid]) - dns_cpu0
    queries = dns_queries(dns_port) - q0 - 1           # the first count query is counted by the second
    wall = load["end"] - load["start"]
    busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    out = {
        "setup": name,
        "kind": kind,
        "messages": messages,
        "ok": load["rc"] == 0,
        "wall_s": round(wall, 3),
        "accepted_per_s": round(messages / wall, 1) if load["rc"] == 0 else 0.0,
        "delivered_per_s": round(messages / (delivered_at - load["start"]), 1) if delivered_at else 0.0,
        "sink_count": sink.count - sink0,
        "loadgen_cpu_pct": round(100 * load["loadgen_cpu_s"] / wall, 1),
        "sink_cpu_pct": round(100 * sink_cpu / wall, 1),
        "dns_cpu_ms_per_msg": round(1000 * dns_cpu / messages, 3),
        "dns_queries_per_msg": round(queries / messages, 2),
        "machine_busy_pct": round(busy_pct, 1),
        "others_cpu_pct": round(max(0.0, busy_pct - 100 * (cpu + sink_cpu + dns_cpu + load["loadgen_cpu_s"])
                                    / wall), 1),
    }
    if server is not None:
        out["server_cpu_ms_per_msg"] = round(1000 * cpu / messages, 3)
        out["server_cpu_pct"] = round(100 * cpu / wall, 1)
    if load["rc"] != 0:
        out["error"] = load["error"]
    return out


# ---- correctness probes -------------------------------------------------------------------

def _auth_results(message: bytes) -> list[str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = re.sub(r"\r\n[ \t]+", " ", head).split("\r\n")
    return [f for f in fields if f.lower().startswith("authentication-results:")]


def probe(setup: Setup, tmp: Path, source_bin: str, kinds: dict[str, list[str]], dns_port: int,
          sink: e2e.SinkCounter) -> dict:
    """The checks described in the module's docstring; raises on a failure."""
    out: dict = {"forward": {}, "maildir": {}, "dmarc_probe": None}
    # 1. the measured server (forward mode): each kind accepted, counted by the sink
    for kind, msg_args in kinds.items():
        before = sink.count
        r = run_load(load_argv([source_bin], msg_args, 1, 1, setup.port))
        if r["rc"] != 0:
            raise RuntimeError(f"probe: {setup.name} refused the {kind} message: {r['error']}")
        if sink.wait_for(before + 1, timeout=10.0) is None:
            raise RuntimeError(f"probe: the {kind} message through {setup.name} did not reach the sink")
        out["forward"][kind] = "accepted, delivered to the sink"
    # 2. a Maildir-mode smtpfw with the same rules: what is delivered
    maildir = tmp / f"maildir-{setup.name}"
    port = free_port()
    config = tmp / f"probe-{setup.name}.yaml"
    write_config(config, port, 1, dns_port, None, maildir)
    server = Service(f"probe-{setup.name}", [sys.executable, "-m", "smtpfw", "serve", "--config", str(config),
                                             "--rules", str(setup.rules)], tmp)
    try:
        wait_smtp(port, server)
        for kind, msg_args in kinds.items():
            r = run_load(load_argv([source_bin], msg_args, 1, 1, port))
            if r["rc"] != 0:
                raise RuntimeError(f"probe: Maildir-mode {setup.name} refused the {kind} message: {r['error']}")
            files = sorted((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []
            if not files:
                raise RuntimeError(f"probe: Maildir-mode {setup.name} delivered nothing for {kind}")
            message = files[-1].read_bytes()
            files[-1].unlink()
            ar = _auth_results(message)
            ours = [f for f in ar if f.split(":", 1)[1].strip().startswith(f"{AUTHSERV};")]
            entry = {"authentication_results": ours}
            if setup.name == "auth":
                want = ["spf=pass", "dkim=pass" if kind == "signed" else "dkim=none", "dmarc=pass"]
                if len(ours) != 1 or not all(w in ours[0] for w in want):
                    raise RuntimeError(f"probe: auth, {kind}: want one Authentication-Results: {AUTHSERV}; with "
                                       f"{', '.join(want)}; got {ar}")
                entry["has"] = want
            elif ours:
                raise RuntimeError(f"probe: plain added Authentication-Results: {ours}")
            out["maildir"][kind] = entry
    finally:
        server.stop()
    # 3. DMARC fail with p=reject: refused by auth's rule, accepted by plain
    bad = (f"From: <{BAD_FROM}>\r\nTo: <{e2e.RECIPIENT}>\r\nSubject: probe\r\n"
           "Message-ID: <probe@bank.example>\r\n\r\nPay now.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", setup.port, timeout=30) as s:
        s.helo(e2e.HELO)
        try:
            s.sendmail(e2e.SENDER, [e2e.RECIPIENT], bad)
            code, text = 250, ""
        except smtplib.SMTPResponseException as exc:
            code, text = exc.smtp_code, exc.smtp_error.decode(errors="replace")
        except smtplib.SMTPDataError as exc:   # pragma: no cover - a subclass of the above
            code, text = exc.smtp_code, str(exc.smtp_error)
    want = 550 if setup.name == "auth" else 250
    if code != want:
        raise RuntimeError(f"probe: {setup.name}, From: {BAD_FROM} (DMARC p=reject, not aligned): "
                           f"want {want}, got {code} {text}")
    out["dmarc_probe"] = f"From: {BAD_FROM}: {code} {text}".rstrip()
    return out


# ---- the parts alone ---------------------------------------------------------------------

def components(dns_port: int, wire: bytes, key_txt: str, n: int, rounds: int = 5) -> list[dict]:
    """CPU (and wall) ms per call of each part of what auth adds, one call at
    a time in this process (uvloop if installed), against the same loopback
    DNS server, no profiler: what each costs without contention.  The parts
    are interleaved in ``rounds`` rounds of ``n / rounds`` calls each; the
    least disturbed round (the minimum) is the cost, the median is kept."""
    import asyncio
    import logging

    import dkim

    from smtpfw.checks import authresults, content
    from smtpfw.checks import dkim as dkim_mod
    from smtpfw.checks import dmarc as dmarc_mod
    from smtpfw.checks import spf as spf_mod
    from smtpfw.checks.dkim import DkimSignature
    from smtpfw.checks.spf import SpfResult

    ns = [("127.0.0.1", dns_port)]
    key_name = f"{SELECTOR}._domainkey.{DOMAIN}"
    quiet = logging.getLogger("smtpfw.bench.quiet")
    quiet.setLevel(logging.CRITICAL + 1)
    spf = SpfResult("pass", "mailfrom", DOMAIN, e2e.SENDER)
    sigs = (DkimSignature(DOMAIN, SELECTOR, "pass"),)
    resolver = spf_mod.build_resolver(ns, 10)

    def dmarc_query():
        return spf_mod.build_resolver(ns, 5, asynchronous=True).resolve(
            f"_dmarc.{DOMAIN}", "TXT", search=False, raise_on_no_answer=False)

    # (label, calls per message in auth with a signed message, async?, the call)
    parts = [
        ("SPF, a cache hit (check_spf; results are cached 60 s per worker)", "1", True,
         lambda: spf_mod.check_spf("127.0.0.1", e2e.SENDER, e2e.HELO, nameservers=ns, timeout=10)),
        ("DKIM as smtpfw runs it (verify_dkim: a resolver, the thread-pool hand-off, _verify_all)", "1 (signed)",
         True, lambda: dkim_mod.verify_dkim(wire, nameservers=ns, timeout=10)),
        ("  _verify_all in the calling thread (no hand-off): key lookup over DNS + dkimpy", "1 (signed)", False,
         lambda: dkim_mod._verify_all(wire, spf_mod.build_resolver(ns, 10), 10, 5)),
        ("  dkimpy alone, the key from memory: parse, canonicalise, hash, the key, the signature", "1 (signed)", False,
         lambda: dkim.DKIM(wire, logger=quiet, minkey=1024).verify(dnsfunc=lambda name, timeout=5: key_txt.encode())),
        ("  the key's TXT query alone (dnspython sync resolver, built each time)", "1 (signed)", False,
         lambda: spf_mod.build_resolver(ns, 10).resolve(key_name, "TXT", search=False, raise_on_no_answer=False)),
        ("  the key's TXT query, a resolver reused", "-", False,
         lambda: resolver.resolve(key_name, "TXT", search=False, raise_on_no_answer=False)),
        ("ARC (verify_arc: no ARC-Seal, so nothing to verify)", "1", True,
         lambda: dkim_mod.verify_arc(wire, nameservers=ns, timeout=10)),
        ("DMARC (check_dmarc_message: From:, the _dmarc TXT query with a new async resolver, alignment)", "1", True,
         lambda: dmarc_mod.check_dmarc_message(wire, spf, sigs, nameservers=ns, timeout=5)),
        ("  the _dmarc TXT query alone (dnspython async resolver, built each time)", "1", True, dmarc_query),
        ("Authentication-Results value (content.header_for)", "1", False, None),
        ("forged Authentication-Results removed (authresults.strip_forged)", "1", False,
         lambda: authresults.strip_forged(wire, AUTHSERV)),
    ]
    per = max(1, n // rounds)
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in parts}

    async def go() -> None:
        spf_mod.clear_cache()
        answers = {}
        for label, _m, is_async, fn in parts:            # warm, and the answers header_for needs
            if fn is not None:
                answers[label] = (await fn()) if is_async else fn()
        facts = {content.SpfQuery("mailfrom", "127.0.0.1", e2e.SENDER, e2e.HELO): answers[parts[0][0]],
                 content.MessageQuery("dkim", 0): content.DkimVerdict(answers[parts[1][0]]),
                 content.DmarcQuery(0, ("pass", DOMAIN), ((DOMAIN, "pass"),)): answers[parts[7][0]]}
        parts[9] = (parts[9][0], parts[9][1], False,
                    lambda: content.header_for(facts, 0, e2e.SENDER, AUTHSERV, "127.0.0.1"))
        for _ in range(rounds):
            for label, _m, is_async, fn in parts:
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(per):
                    if is_async:
                        await fn()
                    else:
                        fn()
                samples[label].append(((time.process_time() - c0) / per, (time.perf_counter() - w0) / per))

    try:
        import uvloop
        uvloop.run(go())
    except ImportError:
        asyncio.run(go())
    rows = []
    for label, per_msg, _a, _f in parts:
        cpu = sorted(c for c, _w in samples[label])
        wall = sorted(w for _c, w in samples[label])
        rows.append({"part": label, "per_message": per_msg, "cpu_ms": round(1000 * cpu[0], 3),
                     "cpu_ms_median": round(1000 * statistics.median(cpu), 3),
                     "wall_ms": round(1000 * wall[0], 3), "calls": per * rounds})
    return rows


# ---- profile --------------------------------------------------------------------------------

PROFILE_GROUPS = [
    # (label, file suffix, function name): CPU under (cumulative) that function
    ("DKIM verification in the pool threads (dkimpy: smtpfw.checks.dkim._verify_all)", "smtpfw/checks/dkim.py",
     "_verify_all"),
    ("  dkimpy: reading the message (DomainSigner.set_message, rfc822_parse)", "dkim/__init__.py", "set_message"),
    ("  dkimpy: key lookup and parsing (load_pk_from_dns, with the TXT query)", "dkim/__init__.py",
     "load_pk_from_dns"),
    ("  dkimpy: canonicalisation, body and header hashes, signature (verify_sig_process)", "dkim/__init__.py",
     "verify_sig_process"),
    ("  dkimpy: the RSA public-key operation (RSASSA_PKCS1_v1_5_verify)", "dkim/crypto.py",
     "RSASSA_PKCS1_v1_5_verify"),
    ("  dnspython sync resolver (the key's TXT query, in the thread)", "dns/resolver.py", "resolve"),
    ("ARC (verify_arc on the loop; no ARC-Seal: not verified)", "smtpfw/checks/dkim.py", "verify_arc"),
    ("ARC verification in the pool threads (_arc_verify)", "smtpfw/checks/dkim.py", "_arc_verify"),
    ("DKIM on the loop (verify_dkim: finding the signature, a resolver, the hand-off)", "smtpfw/checks/dkim.py",
     "verify_dkim"),
    ("DMARC (check_dmarc_message: From:, the _dmarc lookup, alignment)", "smtpfw/checks/dmarc.py",
     "check_dmarc_message"),
    ("  dnspython async resolver (the _dmarc query)", "dns/asyncresolver.py", "resolve"),
    ("SPF on the loop (check_spf: cache hits, the hand-off)", "smtpfw/checks/spf.py", "check_spf"),
    ("SPF evaluation in the pool threads (pyspf, cache misses)", "smtpfw/checks/spf.py", "_evaluate"),
    ("resolvers built (build_resolver)", "smtpfw/checks/spf.py", "build_resolver"),
    ("Authentication-Results value (content.header_for)", "smtpfw/checks/content.py", "header_for"),
    ("forged Authentication-Results removed (authresults.strip_forged)", "smtpfw/checks/authresults.py",
     "strip_forged"),
    ("the checks' coroutines (ContentFacts._answer)", "smtpfw/checks/content.py", "_answer"),
    ("the rules, all hooks (Policy._run)", "smtpfw/policy.py", "_run"),
    ("forward delivery (smtpfw/delivery)", "smtpfw/delivery/", "deliver"),
    ("thread-pool hand-off (run_in_executor)", "asyncio/base_events.py", "run_in_executor"),
    ("asyncio.wait_for", "asyncio/tasks.py", "wait_for"),
]


def _label(func: tuple) -> str:
    path, line, name = func
    if path == "~":
        return name
    parts = Path(path).parts
    for anchor in ("smtpfw", "dkim", "dns", "asyncio", "spf.py", "uvloop", "email", "publicsuffixlist"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor):])
            break
    else:
        path = parts[-1]
    return f"{name} ({path}:{line})"


def analyse_profile(files: list[Path], messages: int) -> dict:
    import pstats
    stats = pstats.Stats(*[str(f) for f in files])
    entries = stats.stats                          # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    own = sorted(((v[2], func) for func, v in entries.items()), reverse=True)
    groups = {}
    for label, suffix, name in PROFILE_GROUPS:
        ct = sum(v[3] for func, v in entries.items()
                 if func[2] == name and (suffix in func[0]))
        groups[label] = round(1000 * ct / messages, 4)
    return {"profiled_cpu_ms_per_msg": round(1000 * total / messages, 4),
            "own": {_label(func): round(1000 * tt / messages, 4) for tt, func in own[:40]},
            "groups": groups}


def profile(setups: dict[str, Setup], tmp: Path, workers: int, dns_port: int, sink_port: int,
            source_bin: str, signed_args: list[str], messages: int, sink: e2e.SinkCounter) -> dict:
    """cProfile (CPU time) in every worker of a wrapped plain and auth
    server during an unmeasured run of signed messages; see _serve."""
    out: dict = {"messages": messages, "setups": {}}
    for name in SETUPS:
        outdir = tmp / f"profile-{name}"
        outdir.mkdir()
        copy = Setup(name, setups[name].rules)
        server = copy.start(tmp, workers, dns_port, sink_port,
                            wrapper=[sys.executable, str(BENCH / "content_bench.py"), "_serve", str(outdir)],
                            label=f"profiled-{name}")
        try:
            wait_smtp(copy.port, server)
            for _ in range(2):                     # warm: imports, the public suffix list, caches
                r = run_load(load_argv([source_bin], signed_args, 100, 500, copy.port))
                if r["rc"]:
                    raise RuntimeError(f"profile warm-up of {name} failed: {r['error']}")
            tree = procstat.tree(server.pid)
            pids = [p for p in tree if p != server.pid] or [server.pid]
            for pid in pids:
                os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not all((outdir / f"started-{pid}").exists() for pid in pids):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"profiled {name}: the workers did not start profiling")
                time.sleep(0.05)
            cpu0 = procstat.cpu_seconds(pids)
            sink0 = sink.count
            r = run_load(load_argv([source_bin], signed_args, WORKLOAD.sessions, messages, copy.port))
            if r["rc"]:
                raise RuntimeError(f"profile run of {name} failed: {r['error']}")
            sink.wait_for(sink0 + messages, timeout=60)
            cpu = procstat.cpu_seconds(pids) - cpu0
            for pid in pids:
                os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + 60
            while not all((outdir / f"prof-{pid}.json").exists() for pid in pids):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"profiled {name}: no profile written")
                time.sleep(0.1)
        finally:
            server.stop()
        res = analyse_profile([outdir / f"prof-{pid}.pstats" for pid in pids], messages)
        pool: dict = {}
        for pid in pids:
            body = json.loads((outdir / f"prof-{pid}.json").read_text())
            for k, v in body["pool_calls"].items():
                p = pool.setdefault(k, {"calls": 0, "cpu_s": 0.0, "wall_s": 0.0})
                for m in p:
                    p[m] += v[m]
        res["pool_calls"] = {k: {"calls": v["calls"],
                                 "cpu_ms_per_call": round(1000 * v["cpu_s"] / max(1, v["calls"]), 3),
                                 "wall_ms_per_call": round(1000 * v["wall_s"] / max(1, v["calls"]), 3)}
                             for k, v in pool.items()}
        res["worker_cpu_ms_per_msg_profiled"] = round(1000 * cpu / messages, 3)
        res["msg_per_s_profiled"] = round(messages / (r["end"] - r["start"]), 1)
        out["setups"][name] = res
        log(f"  profiled {name}: {res['profiled_cpu_ms_per_msg']:.2f} ms/msg profiled CPU, "
            f"{res['worker_cpu_ms_per_msg_profiled']:.2f} ms/msg worker CPU under the profiler")
    # what auth adds, function by function (own CPU per message)
    plain, auth = out["setups"]["plain"]["own"], out["setups"]["auth"]["own"]
    added = {k: round(v - plain.get(k, 0.0), 4) for k, v in auth.items()}
    out["auth_minus_plain_own"] = dict(sorted(added.items(), key=lambda kv: -kv[1])[:20])
    return out


# ---- summary ------------------------------------------------------------------------------

def stat(values: list[float]) -> dict:
    return e2e.stat(values)


METRICS = ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg", "dns_cpu_ms_per_msg",
           "dns_queries_per_msg", "loadgen_cpu_pct", "sink_cpu_pct", "machine_busy_pct", "others_cpu_pct")


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for kind in KINDS:
        entry: dict = {"setups": {}}
        by = {s: [r for r in runs if r["kind"] == kind and r["setup"] == s] for s in SETUPS}
        for s, rows in by.items():
            e = {m: stat([r[m] for r in rows if r["ok"] and m in r]) for m in METRICS}
            e["failed_runs"] = sum(1 for r in rows if not r["ok"])
            entry["setups"][s] = e
        pairs = [(a, p) for a in by["auth"] for p in by["plain"] if a["rep"] == p["rep"] and a["ok"] and p["ok"]]
        entry["ratio"] = stat([a["accepted_per_s"] / p["accepted_per_s"] for a, p in pairs if p["accepted_per_s"]])
        entry["ratio_delivered"] = stat([a["delivered_per_s"] / p["delivered_per_s"] for a, p in pairs
                                         if p["delivered_per_s"]])
        entry["cpu_ratio"] = stat([p["server_cpu_ms_per_msg"] / a["server_cpu_ms_per_msg"] for a, p in pairs
                                   if a["server_cpu_ms_per_msg"]])
        entry["added_cpu_ms_per_msg"] = stat([a["server_cpu_ms_per_msg"] - p["server_cpu_ms_per_msg"]
                                              for a, p in pairs])
        out[kind] = entry
    return out


def targets(summary: dict) -> list[dict]:
    rows = []
    for kind, label in (("signed", "auth / plain accepted msg/s, DKIM-signed messages (smtp-source -F)"),
                        ("unsigned", ("auth / plain accepted msg/s, unsigned messages (smtp-source -l 2048; "
                                      "SPF + DMARC only, no DKIM work)"))):
        med = summary.get(kind, {}).get("ratio", {}).get("median")
        if med is not None:
            rows.append({"target": f"{label} >= {TARGET_RATIO}", "kind": kind, "value": round(med, 2),
                         "met": med >= TARGET_RATIO, "the_target": kind == "signed"})
    return rows


def _fmt(s: dict, digits: int = 0) -> str:
    return e2e._fmt(s, digits)


def markdown(result: dict) -> str:
    m, v, cfg = result["machine"], result["versions"], result["config"]
    lines = [
        f"# smtpfw sender-authentication benchmark (issue 19), {result['date']}",
        "",
        f"`{result['command']}`",
        "",
        (f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB, {m['os']}, Linux {m['kernel']}; "
        f"load average {cfg['loadavg_at_start']} at the start"),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        (f"- Load: {cfg['loadgen']}, workload a ({cfg['messages']:,} messages per run, {WORKLOAD.sessions} sessions, "
        f"one message per connection, one recipient); sink: {cfg['sink']}; event loop: {cfg['event_loop']}; "
        f"smtpfw `--workers {cfg['workers']}`, one process per setup, both running throughout"),
        (f"- Setups: plain = {DESCRIBE['plain']}; auth = the same (`include`) + "
        f"`option authentication_results = \"{AUTHSERV}\"` (SPF at MAIL, DKIM + ARC and DMARC at DATA for every "
        "message, the header added) + `[dmarc-reject] reject 550 5.7.1 ... if dmarc = \"fail\" and "
        "dmarc.policy = \"reject\"` at DATA"),
        f"- DNS: one loopback server ({cfg['dns']}); {cfg['dns_records']}",
        (f"- Messages: **signed** = {cfg['signed']}; **unsigned** = smtp-source's generated message "
        "(`-l 2048`, bench/run.py's workload a): dkim=none, so SPF + DMARC only. Plain and auth get the same "
        "load generator and the same messages."),
        (f"- {cfg['reps']} repetition(s), the order of the four (setup, message) runs rotated; before each run the "
        f"script waits (up to {cfg['quiet_wait']:g} s) for a second in which the machine's CPU use is below 25 % "
        "(this machine is shared); median (min–max). "
        "accepted = messages / smtp-source's wall time; delivered = until the sink counted them all; CPU ms/msg = "
        "utime+stime of the smtpfw process tree per message; DNS = the DNS server's CPU and queries per message; "
        "others' CPU % = machine CPU used by anything but smtpfw, the load generator, the sink and the DNS server "
        "(200 = both cores); ratio = auth / plain accepted msg/s in the same repetition; CPU ratio = plain CPU "
        "per message / auth's."),
        "",
    ]
    for n in cfg.get("notes", []):
        lines += [f"**Note:** {n}", ""]
    lines += ["## Correctness probes", ""]
    for name, p in result["probes"].items():
        parts = [f"{kind}: {text}" for kind, text in p["forward"].items()]
        lines.append(f"- {name}, forward mode (the measured server): " + "; ".join(parts))
        for kind, e in p["maildir"].items():
            ar = e["authentication_results"]
            lines.append(f"- {name}, Maildir-mode copy, {kind}: "
                         + (f"`{ar[0]}`" if ar else "no Authentication-Results header (as expected)"))
        lines.append(f"- {name}, DMARC fail with p=reject: {p['dmarc_probe']}")
    lines += ["", "## Results", "",
              ("| messages | setup | accepted msg/s | delivered msg/s | smtpfw CPU ms/msg | DNS queries/msg "
              "| DNS server CPU ms/msg | load gen CPU % | others' CPU % | ratio auth/plain | CPU ratio |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, e in result["summary"].items():
        for name in SETUPS:
            s = e["setups"][name]
            flag = f" ⚠ {s['failed_runs']} failed run(s)" if s.get("failed_runs") else ""
            ratio = f"**{_fmt(e['ratio'], 2)}**" if name == "auth" else ""
            cpu_ratio = _fmt(e["cpu_ratio"], 2) if name == "auth" else ""
            lines.append(f"| {kind} | {name}{flag} | {_fmt(s['accepted_per_s'])} | {_fmt(s['delivered_per_s'])} "
                         f"| {_fmt(s['server_cpu_ms_per_msg'], 2)} | {_fmt(s['dns_queries_per_msg'], 2)} "
                         f"| {_fmt(s['dns_cpu_ms_per_msg'], 3)} | {_fmt(s['loadgen_cpu_pct'])} "
                         f"| {_fmt(s['others_cpu_pct'])} | {ratio} | {cpu_ratio} |")
    lines += ["", "CPU auth adds per message (auth − plain, same repetition): "
              + "; ".join(f"{kind} {_fmt(e['added_cpu_ms_per_msg'], 2)} ms" for kind, e in result["summary"].items())]
    if result.get("ceiling"):
        lines += ["", "Load generators alone, straight to smtp-sink (their ceiling, one run each):", "",
                  "| load generator | messages | msg/s | load gen CPU % |", "|---|---|---|---|"]
        for c in result["ceiling"]:
            lines.append(f"| {c['label']} | {c['messages']:,} | {c['accepted_per_s']:,.0f} | {c['loadgen_cpu_pct']:.0f} |")
    lines += ["", f"## Target (issue 19: auth ≥ {TARGET_RATIO} × plain, messages/s)", "",
              "| target | measured (median) | met |", "|---|---|---|"]
    for t in result["targets"]:
        label = t["target"] + ("" if t["the_target"] else " (for comparison)")
        lines.append(f"| {label} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    if result.get("parts"):
        lines += ["", "## Where the time goes: each part alone", "",
                  ("What auth adds per message, part by part: each called one at a time in the benchmark's own "
                  "process (uvloop), against the same loopback DNS server, after the measured runs, no profiler; "
                  "the parts interleaved in 5 rounds, the least disturbed round's CPU per call (the median of the "
                  "rounds beside it). "
                  "CPU includes the process's threads (the DKIM pool); indented rows are inside the row above."), "",
                  ("| part | calls per message | CPU ms per call (least disturbed round) | median of rounds "
                  "| wall ms per call |"), "|---|---|---|---|---|"]
        for row in result["parts"]:
            part = row["part"]
            label = ("&nbsp;&nbsp;" + part.strip()) if part.startswith("  ") else part
            lines.append(f"| {label} | {row['per_message']} | {row['cpu_ms']:.3f} | {row['cpu_ms_median']:.3f} "
                         f"| {row['wall_ms']:.3f} |")
        top = sum(r["cpu_ms"] for r in result["parts"] if not r["part"].startswith("  "))
        added = result["summary"].get("signed", {}).get("added_cpu_ms_per_msg", {}).get("median")
        lines += ["", f"Sum of the top-level parts: {top:.2f} ms per signed message"
                  + (f"; measured under load, auth added {added:.2f} ms of smtpfw CPU per signed message "
                     f"(the difference is not attributed by this table: it is what "
                     f"the parts cost under load, ten sessions in flight per worker, the pool thread and the event "
                     f"loop taking turns at the GIL, on cores shared with the sink, the load generator and the DNS "
                     f"server)" if added is not None else "") + "."]
    prof = result.get("profile")
    if prof and prof.get("setups"):
        lines += ["", "## Profile", "",
                  (f"cProfile with a CPU-time timer in every worker, on the event loop's thread and inside the DKIM / "
                  f"ARC / SPF thread-pool calls (bench/content_bench.py `_serve`; smtpfw unchanged), during an "
                  f"unmeasured run of {prof['messages']:,} signed messages (20 sessions) through a plain and an "
                  "auth server started for it. Times are CPU ms per message under the profiler, which slows "
                  "Python code down (compare the rows with each other, not with the measured CPU above)."), ""]
        for name, p in prof["setups"].items():
            lines.append(f"- {name}: profiled CPU {p['profiled_cpu_ms_per_msg']:.2f} ms/msg, workers' CPU under the "
                         f"profiler {p['worker_cpu_ms_per_msg_profiled']:.2f} ms/msg, "
                         f"{p['msg_per_s_profiled']:,.0f} msg/s")
        a = prof["setups"]["auth"]
        lines += ["", "CPU under each part (cumulative, ms per message, auth server):", "",
                  "| part | auth ms/msg | plain ms/msg |", "|---|---|---|"]
        for label, value in a["groups"].items():
            plain = prof["setups"]["plain"]["groups"].get(label, 0.0)
            if value or plain:
                lines.append(f"| {label} | {value:.3f} | {plain:.3f} |")
        if a.get("pool_calls"):
            lines += ["", "Thread-pool calls in auth (count, CPU and wall ms per call, wall includes waiting "
                      "for the GIL): " + "; ".join(f"{k} {v['calls']:,} × {v['cpu_ms_per_call']:.3f} ms CPU / "
                                                   f"{v['wall_ms_per_call']:.3f} ms wall"
                                                   for k, v in a["pool_calls"].items())]
        lines += ["", "Own CPU that auth adds, top functions (auth − plain, ms per message): "
                  + "; ".join(f"{k} {v:.3f}" for k, v in prof["auth_minus_plain_own"].items() if v > 0.0)]
        lines += ["", "Own CPU, top functions in auth (ms per message): "
                  + "; ".join(f"{k} {v:.3f}" for k, v in list(a["own"].items())[:20])]
    if result.get("findings"):
        lines += ["", "## Findings", ""] + [f"- {f}" for f in result["findings"]]
    lines.append("")
    return "\n".join(lines)


def findings(result: dict) -> list[str]:
    """Plain-text conclusions from the numbers (for the .md and the report)."""
    out = []
    s = result["summary"]
    for t in result["targets"]:
        e = s[t["kind"]]
        a, p = e["setups"]["auth"], e["setups"]["plain"]
        out.append(f"{t['kind']}: auth {_fmt(a['accepted_per_s'])} msg/s vs plain {_fmt(p['accepted_per_s'])}: "
                   f"ratio {_fmt(e['ratio'], 2)} — target {'met' if t['met'] else 'NOT met'}; smtpfw CPU "
                   f"{_fmt(a['server_cpu_ms_per_msg'], 2)} vs {_fmt(p['server_cpu_ms_per_msg'], 2)} ms/msg "
                   f"(+{_fmt(e['added_cpu_ms_per_msg'], 2)} ms), CPU ratio {_fmt(e['cpu_ratio'], 2)}.")
        p_cpu = p["server_cpu_ms_per_msg"].get("median")
        if p_cpu and not t["met"]:
            budget = p_cpu / TARGET_RATIO - p_cpu
            out.append(f"{t['kind']}: on this CPU-bound machine msg/s follows CPU per message; {TARGET_RATIO} x "
                       f"plain leaves auth about {budget:.2f} ms of CPU per message on top of plain's "
                       f"{p_cpu:.2f} ms (its DNS server's included); it adds "
                       f"{_fmt(e['added_cpu_ms_per_msg'], 2).split(' ')[0]} ms in smtpfw plus "
                       f"{a['dns_cpu_ms_per_msg'].get('median', 0):.2f} ms in the DNS server.")
    parts = result.get("parts") or []
    if parts:
        top = [r for r in parts if not r["part"].startswith("  ")]
        total = sum(r["cpu_ms"] for r in top)
        ranked = sorted(top, key=lambda r: -r["cpu_ms"])
        out.append(f"Each part alone (no profiler, no contention), {total:.2f} ms of CPU per signed message in all: "
                   + "; ".join(f"{r['part'].split(' (')[0]} {r['cpu_ms']:.2f} ms ({100 * r['cpu_ms'] / total:.0f} %)"
                               for r in ranked) + ".")
        inner = {re.split(r" \(|:", r["part"].strip())[0]: r["cpu_ms"] for r in parts if r["part"].startswith("  ")}
        if inner:
            out.append("Inside them: " + "; ".join(f"{k} {v:.2f} ms" for k, v in inner.items()) + ".")
    prof = result.get("profile")
    if prof and prof.get("setups"):
        a, pl = prof["setups"]["auth"], prof["setups"]["plain"]
        added = a["profiled_cpu_ms_per_msg"] - pl["profiled_cpu_ms_per_msg"]
        parts = []
        for label, value in a["groups"].items():
            if label.startswith(("  ", "the checks", "the rules", "forward", "asyncio", "thread-pool")):
                continue
            extra = value - pl["groups"].get(label, 0.0)
            if extra > 0.02:
                parts.append((extra, label))
        parts.sort(reverse=True)
        if added > 0:
            out.append(f"Under the profiler auth adds {added:.2f} ms of CPU per message; of it: "
                       + "; ".join(f"{label.split(' (')[0]} {x:.2f} ms ({100 * x / added:.0f} %)" for x, label in parts))
    return out


# ---- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smtpfw with and without sender authentication (issue 19).")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} messages, 1 repetition (< 1 minute)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--messages", type=int, help=f"messages per run (default {WORKLOAD.messages:,}; --quick "
                                                f"{QUICK_MESSAGES:,})")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="smtpfw workers (default: CPUs)")
    p.add_argument("--key", choices=("rsa", "ed25519"), default="rsa", help="DKIM key: RSA-2048 (default) or Ed25519")
    p.add_argument("--profile", action="store_true",
                   help="profile even when the target is met (--quick: only with this)")
    p.add_argument("--no-profile", action="store_true", help="never profile")
    p.add_argument("--profile-messages", type=int, help="messages of the profiled run (default 2,000; --quick 500)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the load generators' ceiling runs")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for content-latest.json and .md")
    p.add_argument("--zones", default=str(ROOT.parent / "shared" / "zones"), help="rbldnsd zone files")
    p.add_argument("--quiet-wait", type=float,
                   help="before each run, wait up to this many seconds for a second of machine CPU < 25 %% "
                        "(other load); 0: do not wait (default 20, --quick 2)")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfix")
    args = p.parse_args(argv)

    reps = args.reps or (1 if args.quick else 3)
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if args.quick else 20.0)
    messages = args.messages or (QUICK_MESSAGES if args.quick else WORKLOAD.messages)
    zones = sorted(str(z) for z in Path(args.zones).glob("*") if z.is_file())
    if not zones:
        log(f"no zone files in {args.zones} (use --zones)")
        return 2
    source_bin, sink_bin, how = e2e.find_postfix_tools(not args.no_install)
    if not (source_bin and sink_bin):
        log(f"Postfix's smtp-source and smtp-sink are needed ({how}): smtp-source -F sends the signed message")
        return 2
    notes: list[str] = []
    try:
        import uvloop  # noqa: F401
        event_loop = "uvloop"
    except ImportError:
        event_loop = "asyncio (uvloop not installed: pip install -e '.[fast]')"
        notes.append("uvloop is not installed; smtpfw runs on the standard asyncio loop.")
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5:
        notes.append(f"the machine was not idle at the start (load average {loadavg}): other work shares the "
                     "cores; see others' CPU % per run. Both setups are measured alternately in the same run; "
                     "CPU per message (and the CPU ratio) is the measure other load disturbs least.")

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="smtpfw-content-bench-"))
    services: list[Service] = []
    runs: list[dict] = []
    ceiling: list[dict] = []
    probes: dict = {}
    prof: dict = {}
    parts: list[dict] = []
    try:
        private, key_txt, algorithm, key_desc = make_key(args.key)
        data, wire = make_message(WORKLOAD.size, private, key_txt, algorithm)
        signed_file = tmp / "signed.eml"
        signed_file.write_bytes(data)
        kinds = {"signed": ["-F", str(signed_file)], "unsigned": ["-l", str(WORKLOAD.size)]}
        records_file = tmp / "records.json"
        records = dns_records(key_txt)
        records_file.write_text(json.dumps(records))

        dns_port, sink_port = free_port(), free_port()
        dns = Service("dns", [sys.executable, str(BENCH / "content_bench.py"), "_dns", "--port", str(dns_port),
                              "--records", str(records_file), "--authoritative", DOMAIN,
                              "--authoritative", BAD_FROM.split("@")[1], *zones], tmp)
        services.append(dns)
        read_fd, write_fd = os.pipe()
        sink_argv = [sink_bin, "-c", "-m", "2000"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        sink_argv += [f"127.0.0.1:{sink_port}", "1024"]
        sink = Service("sink", sink_argv, tmp, stdout=write_fd)
        os.close(write_fd)
        services.append(sink)
        counter = e2e.SinkCounter(read_fd)
        wait_line(dns, "dnsserver listening")
        wait_smtp(sink_port, sink)

        auth_rules = tmp / "auth.rules"
        auth_rules.write_text(AUTH_RULES.format(reference=ROOT / "rules/reference.rules", authserv=AUTHSERV))
        setups = {"plain": Setup("plain", ROOT / "rules/reference.rules"), "auth": Setup("auth", auth_rules)}
        for s in setups.values():
            services.append(s.start(tmp, args.workers, dns_port, sink_port))
        for s in setups.values():
            wait_smtp(s.port, s.server)
        log("setups: " + ", ".join(f"{n} :{s.port}" for n, s in setups.items())
            + f"; sink :{sink_port}; dns :{dns_port}; DKIM key {key_desc}; signed message {len(wire):,} bytes")

        for name, s in setups.items():
            probes[name] = probe(s, tmp, source_bin, kinds, dns_port, counter)
            log(f"  probe {name}: ok" + "".join(f"; {k}: {e['authentication_results'][0]}"
                                                for k, e in probes[name]["maildir"].items()
                                                if e["authentication_results"]))

        if not args.no_ceiling:
            for label, argv_ in (("smtp-source -F (signed message)",
                                  load_argv([source_bin], kinds["signed"], WORKLOAD.sessions, messages, sink_port)),
                                 ("smtp-source -l 2048 (unsigned)",
                                  load_argv([source_bin], kinds["unsigned"], WORKLOAD.sessions, messages, sink_port)),
                                 ("bench/pysource.py -l 2048 (Python; cannot send a given message)",
                                  load_argv([sys.executable, str(BENCH / "pysource.py")], kinds["unsigned"],
                                            WORKLOAD.sessions, messages, sink_port))):
                r = measure("ceiling", "-", None, argv_, messages, counter, sink.pid, dns.pid, dns_port)
                r["label"] = label
                ceiling.append(r)
                log(f"  ceiling {label}: {r['accepted_per_s']:.0f} msg/s, load gen CPU {r['loadgen_cpu_pct']:.0f} %")

        # warm-up, the same for both: at least 3 s (1 s quick) at 100 sessions, both kinds
        for s in setups.values():
            for kind, msg_args in kinds.items():
                t0 = time.monotonic()
                while time.monotonic() - t0 < (1.0 if args.quick else 3.0):
                    r = run_load(load_argv([source_bin], msg_args, 100, 1000, s.port))
                    if r["rc"]:
                        raise RuntimeError(f"warm-up of {s.name} ({kind}) failed: {r['error']}; logs in {tmp}")

        order = [(name, kind) for kind in KINDS for name in SETUPS]
        for rep in range(reps):
            for name, kind in order:
                s = setups[name]
                s.server.check()
                quiet = wait_quiet(quiet_wait) if quiet_wait > 0 else {}
                argv_ = load_argv([source_bin], kinds[kind], WORKLOAD.sessions, messages, s.port)
                r = measure(name, kind, s.server, argv_, messages, counter, sink.pid, dns.pid, dns_port)
                r["rep"] = rep + 1
                r.update(quiet)
                runs.append(r)
                log(f"  rep {rep + 1} {kind:8} {name:5}: {r['accepted_per_s']:7.1f} msg/s, delivered "
                    f"{r['delivered_per_s']:.1f}/s, cpu {r['server_cpu_ms_per_msg']:.2f} ms/msg, dns "
                    f"{r['dns_queries_per_msg']:.2f} q/msg {r['dns_cpu_ms_per_msg']:.3f} ms/msg, others "
                    f"{r['others_cpu_pct']:.0f}%" + ("" if r["ok"] else f"  FAILED: {r.get('error')}"))
            order = order[1:] + order[:1]

        log("the parts alone ...")
        parts = components(dns_port, wire, key_txt, 100 if args.quick else 500)
        for row in parts:
            log(f"  {row['cpu_ms']:7.3f} ms CPU {row['wall_ms']:7.3f} ms wall  {row['part']}")
        summary = summarize(runs)
        tgts = targets(summary)
        below = any(t["the_target"] and not t["met"] for t in tgts)
        if not args.no_profile and (args.profile or (below and not args.quick)):
            log("profiling plain and auth (cProfile, an unmeasured run each) ...")
            prof = profile(setups, tmp, args.workers, dns_port, sink_port, source_bin, kinds["signed"],
                           args.profile_messages or (500 if args.quick else 2000), counter)
    except BaseException:
        log(f"benchmark failed; the servers' logs are kept in {tmp}")
        raise
    finally:
        for s in reversed(services):
            s.stop()

    if any(r["ok"] and r.get("sink_count", 0) < r["messages"] for r in runs):
        notes.append("the sink counted fewer messages than smtpfw accepted in some run(s)")
    noisy = [r for r in runs if r.get("busy_before_pct", 0) >= 25]
    if noisy:
        notes.append(f"{len(noisy)} of {len(runs)} runs started without a quiet second within {quiet_wait:g} s "
                     f"(machine CPU before them: {', '.join(str(r['busy_before_pct']) for r in noisy)} %).")
    versions = e2e.tool_versions(True)
    from importlib import metadata
    for dist in ("dkimpy", "pyspf", "publicsuffixlist", "cryptography", "PyNaCl"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/content_bench.py" + (" " + " ".join(argv if argv is not None
                                                                     else sys.argv[1:])).rstrip(),
        "machine": e2e.machine(),
        "versions": versions,
        "config": {"workers": args.workers, "reps": reps, "quick": args.quick, "messages": messages,
                   "event_loop": event_loop, "loadgen": f"Postfix smtp-source ({how})", "sink": "Postfix smtp-sink",
                   "loadavg_at_start": loadavg, "quiet_wait": quiet_wait, "notes": notes, "key": key_desc,
                   "signed": f"{len(wire):,} bytes as received ({WORKLOAD.size:,}-byte body), DKIM-signed with "
                             f"dkimpy (relaxed/relaxed, d={DOMAIN}, s={SELECTOR}, 7 header fields) with a "
                             f"{key_desc} key made by the script, sent with `smtp-source -F`",
                   "dns": "tests/support/dnsserver.py's DnsServer run by this script, serving ../shared/zones "
                          "(bl.test, dbl.test) and the sender's records",
                   "dns_records": "; ".join(f"`{n} TXT {' '.join(v)[:60]}{'…' if len(' '.join(v)) > 60 else ''}`"
                                            for n, _t, v in records),
                   "setups": DESCRIBE, "seconds": round(time.monotonic() - started, 1)},
        "probes": probes,
        "summary": summary,
        "targets": tgts,
        "ceiling": ceiling,
        "parts": parts,
        "profile": prof,
        "runs": runs,
    }
    result["findings"] = findings(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "content-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "content-latest.md").write_text(text)
    print(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    if all(r["ok"] for r in runs):
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    log(f"some runs failed; the servers' logs are kept in {tmp}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
