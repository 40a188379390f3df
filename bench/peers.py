"""The peers smtpfw is measured against: Postfix and Haraka (issue 21).

Shared by bench/run.py (plain workloads a, b, c), bench/tls_bench.py
(workload d, STARTTLS) and bench/slowdns_bench.py (workload e, slow DNS):

- ``find_haraka`` / ``haraka_version``: Haraka 3.x installed with npm into
  HARAKA_CACHE on first use (or a given folder);
- ``Haraka``: one Haraka (cluster of ``nodes``) in a folder of its own, in a
  mount namespace whose /etc/resolv.conf names the benchmark's DNS server;
  with ``policy`` the whole reference policy (below), without it what
  tls_bench has always run (tls, dns-list, rcpt_to.in_host_list);
- ``TlsPostfix``: policy_bench's PostfixServer with tlsmgr;
- ``PostscreenPostfix`` and ``postscreen_settings``: postscreen in front of
  smtpd with bl.test as its DNSBL (workload e, bench/slowdns_bench.py);
  ``postfix_reference_settings``: the reference policy in Postfix's own
  restrictions on hash maps (postmap), smtpd_delay_reject = yes, relaying
  to the sink;
- ``check_reference``: the reference sessions (tests/support/reference.py
  SESSIONS, clients 127.0.0.1, .2 and .5 bound as source addresses) sent to
  a server; every RCPT's verdict (accepted / refused) must be the
  reference's, and every session the reference delivers must reach the
  sink.

The reference policy in Haraka 3.3 (``policy`` given), plugin by plugin:

  loopback_is_public   (local, below) the benchmark's loopback clients
                       stand for internet clients: Haraka marks loopback
                       and private clients ``is_private``, and dns-list and
                       helo.checks skip every check for those
  delay_deny           refusals at connect, HELO and MAIL are given at RCPT
                       (Postfix's smtpd_delay_reject = yes; smtpfw's
                       ``option delay_reject``)
  dns-list             bl.test, client IP (any A answer refuses)
  helo.checks          match_re only: helo.checks.regexps = the badhelo
                       names, exact, case-insensitive; every other check off
  access               mail: mail_from.access.blacklist (the badmailfrom
                       addresses) and .blacklist_regex (``.*@domain`` for
                       its @domain entries); rcpt: rcpt_to.access.blacklist
                       (badrcptto) and .blacklist_regex (the relay-hack
                       form ``[%!@]`` in the local part)
  rhsbl_sender         (local, below) dbl.test on the MAIL FROM domain:
                       Haraka 3 ships no RHSBL for the envelope sender
                       (haraka-plugin-uribl looks up the sender's domain
                       too, but turns on body parsing for every message
                       and looks up the client's PTR name; dns-list looks
                       up IPs only)
  rcpt_to.in_host_list host_list = rcpthosts (exact domains); any other
                       recipient domain gets Haraka's 550 "I cannot deliver
                       mail for"
  queue/smtp_forward   to the sink, answering 250 after the sink did

What differs from the reference: the reply codes and texts are Haraka's
(550 for the DNSBL where the reference says 554, "I cannot deliver" for
relaying); Haraka caches no DNS answers (two lookups per session plus the
PTR lookup Haraka makes for every client), where Postfix's smtpd and smtpfw
keep answers per process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
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
from policy_bench import PostfixServer  # noqa: E402

from tests.support.postfix import MASTER_CF, in_namespace  # noqa: E402
from tests.support.reference import SESSIONS, base_settings, postfix_native, read_list  # noqa: E402

log = benchrun.log
HARAKA_CACHE = Path("/var/tmp/smtpfw-bench-haraka")     # npm install Haraka, once, outside the checkout


# ---- Haraka ------------------------------------------------------------------------

PEERS = ("postfix", "haraka")


def runnable_peers(servers: list[str], notes: list[str], haraka: str | None, install: bool,
                   postfix_missing: str | None = None) -> tuple[list[str], Path | None, str]:
    """``servers`` without the peers that cannot run here, each left out
    with a note: Postfix without Debian's package (or ``postfix_missing``),
    Haraka without npm, both without root and unshare(1) (their
    resolv.conf is a mount namespace's).  Also Haraka's executable and how
    it was found."""
    from tests.support.postfix import postfix_available
    servers = list(servers)
    if "postfix" in servers and (why := postfix_available() or postfix_missing):
        notes.append(f"Postfix not measured: {why}")
        servers.remove("postfix")
    haraka_exe, haraka_how = None, "not asked for"
    if "haraka" in servers:
        haraka_exe, haraka_how = find_haraka(Path(tempfile.gettempdir()), haraka, install)
        if haraka_exe is None:
            notes.append(f"Haraka not measured: {haraka_how}")
            servers.remove("haraka")
    if any(s in PEERS for s in servers) and (os.geteuid() != 0 or not shutil.which("unshare")):
        notes.append("Postfix and Haraka not measured: they need root and unshare(1) for their resolv.conf")
        servers = [s for s in servers if s not in PEERS]
    return servers, haraka_exe, haraka_how


def find_haraka(tmp: Path, given: str | None, install: bool) -> tuple[Path | None, str]:
    """The haraka executable and how it was found, or (None, why not)."""
    if given:
        exe = Path(given) / "node_modules" / ".bin" / "haraka"
        return (exe, f"given ({given})") if exe.exists() else (None, f"no {exe}")
    d = HARAKA_CACHE
    exe = d / "node_modules" / ".bin" / "haraka"
    if exe.exists():
        return exe, f"npm install Haraka, cached in {d}"
    if not install:
        return None, "not installed (--no-install)"
    if not shutil.which("npm"):
        return None, "npm is not installed"
    d.mkdir(parents=True, exist_ok=True)
    log("installing Haraka with npm (npm install Haraka) ...")
    try:
        subprocess.run(["npm", "init", "-y"], cwd=d, capture_output=True, timeout=60)
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "Haraka"], cwd=d, capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, "npm install Haraka took more than 15 minutes"
    if proc.returncode != 0 or not exe.exists():
        return None, f"npm install Haraka failed: {proc.stderr.strip()[-300:]}"
    return exe, f"npm install Haraka into {d}"


def haraka_version(exe: Path) -> str:
    try:
        pkg = exe.resolve().parent.parent / "package.json"
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


LOOPBACK_IS_PUBLIC_JS = """\
// smtpfw bench: the benchmark's clients connect from loopback addresses and
// stand for clients on the internet.  Haraka marks loopback and private
// clients is_private, and dns-list and helo.checks skip them entirely.
exports.hook_connect_init = function (next, connection) {
    connection.remote.is_private = false
    next()
}
"""

RHSBL_SENDER_JS = """\
// smtpfw bench: RHSBL on the envelope sender's domain (the reference
// policy's dbl.test), as Haraka 2's rhsbl plugin did; Haraka 3 ships none.
// Only the domain itself is looked up, not its parents.
const dns = require('node:dns').promises

exports.register = function () {
    this.zones = this.config.get('rhsbl.sender_zones', 'list')
}

exports.hook_mail = async function (next, connection, params) {
    const host = params[0] && params[0].host
    if (!host) return next()
    const domain = host.toLowerCase()
    for (const zone of this.zones) {
        try {
            await dns.resolve4(`${domain}.${zone}`)
        } catch (err) {
            continue                                   // NXDOMAIN: not listed
        }
        return next(DENY, `Sender address rejected: domain ${domain} blocked using ${zone}`)
    }
    next()
}
"""


def _regex_escape(text: str) -> str:
    """A literal for a JavaScript regex (Python's re.escape also escapes
    characters such as '-' that JS's unicode-less mode accepts escaped)."""
    return re.sub(r"([.\\+*?^$()\[\]{}|/])", r"\\\1", text)


class Haraka:
    """Haraka (cluster of ``nodes`` workers) in a folder of its own, in the
    benchmark's mount namespace (for its resolv.conf); stopped with killpg.

    ``cert``/``key``: the tls plugin with that certificate (None: no TLS).
    ``policy``: a folder with the reference lists (../shared/policy): the
    whole reference policy (module docstring); None: dns-list (bl.test) and
    rcpt_to.in_host_list only, as tls_bench has always run it."""

    def __init__(self, exe: Path, tmp: Path, name: str, cert: Path | None, key: Path | None, sink_port: int,
                 resolv: Path, nodes: int, policy: Path | None = None):
        self.name = name
        self.port = benchrun.free_port()
        self.dir = tmp / name
        self.log_path = tmp / f"{name}.log"
        cfg = self.dir / "config"
        subprocess.run([str(exe), "-i", str(self.dir)], check=True, capture_output=True, timeout=120)
        if policy is None:
            plugins = ["dns-list", "rcpt_to.in_host_list", "queue/smtp_forward"]
        else:
            plugins = ["loopback_is_public", "delay_deny", "dns-list", "helo.checks", "access", "rhsbl_sender",
                       "rcpt_to.in_host_list", "queue/smtp_forward"]
        if cert is not None:
            plugins.insert(0, "tls")
        (cfg / "plugins").write_text("".join(f"{p}\n" for p in plugins))
        (cfg / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\nnodes={nodes}\n")
        (cfg / "me").write_text("haraka.bench.test\n")
        (cfg / "log.ini").write_text("[main]\nlevel=notice\ntimestamps=false\n")
        (cfg / "host_list").write_text("example.net\n" if policy is None else
                                       "".join(f"{d}\n" for d in read_list(policy / "rcpthosts")))
        if cert is not None:
            shutil.copy(cert, cfg / "tls_cert.pem")
            shutil.copy(key, cfg / "tls_key.pem")
            (cfg / "tls.ini").write_text("key=tls_key.pem\ncert=tls_cert.pem\n")
        (cfg / "dns-list.ini").write_text("[main]\nperiodic_checks=0\nsearch=first\nzones=bl.test\n\n"
                                          "[bl.test]\nipv6=false\nreject=true\n")
        (cfg / "smtp_forward.ini").write_text(f"host=127.0.0.1\nport={sink_port}\nenable_tls=false\n"
                                              "max_connections=200\n")
        if policy is not None:
            self._write_policy(cfg, policy)
        self.argv = in_namespace(resolv, [str(exe), "-c", str(self.dir)])
        self.proc: subprocess.Popen | None = None

    def _write_policy(self, cfg: Path, policy: Path) -> None:
        plugins = self.dir / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "loopback_is_public.js").write_text(LOOPBACK_IS_PUBLIC_JS)
        (plugins / "rhsbl_sender.js").write_text(RHSBL_SENDER_JS)
        (cfg / "rhsbl.sender_zones").write_text("dbl.test\n")
        (cfg / "delay_deny.ini").write_text("[main]\n")
        checks = ("match_re", "bare_ip", "dynamic", "big_company", "valid_hostname", "rdns_match", "forward_dns",
                  "host_mismatch", "proto_mismatch")
        (cfg / "helo.checks.ini").write_text(
            "[check]\n" + "".join(f"{c}={'true' if c == 'match_re' else 'false'}\n" for c in checks)
            + "literal_mismatch=0\n\n[reject]\nmatch_re=true\n\n[skip]\nprivate_ip=false\nrelaying=false\n")
        (cfg / "helo.checks.regexps").write_text("".join(f"{_regex_escape(h)}\n"
                                                         for h in read_list(policy / "badhelo")))
        (cfg / "access.ini").write_text(
            "[check]\nany=false\nconn=false\nmail=true\nrcpt=true\n\n[deny_msg]\n"
            "mail=Sender address rejected: your envelope sender is in my badmailfrom list\n"
            "rcpt=Recipient address rejected: blocked by badrcptto\n")
        senders = read_list(policy / "badmailfrom")
        (cfg / "mail_from.access.blacklist").write_text("".join(f"{a}\n" for a in senders if not a.startswith("@")))
        (cfg / "mail_from.access.blacklist_regex").write_text(
            "".join(f".*{_regex_escape(a)}\n" for a in senders if a.startswith("@")))
        (cfg / "rcpt_to.access.blacklist").write_text("".join(f"{a}\n" for a in read_list(policy / "badrcptto")))
        # anchored ^(...)$, case-insensitive: a %, ! or @ before the last @
        (cfg / "rcpt_to.access.blacklist_regex").write_text(".*[%!@].*@[^@]*\n")
        for f in (*cfg.iterdir(), *plugins.iterdir()):
            if f.is_file():
                f.chmod(0o644)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
                except ProcessLookupError:
                    pass
            self._log.close()


# ---- Postfix ------------------------------------------------------------------------

class TlsPostfix(PostfixServer):
    """PostfixServer with tlsmgr in master.cf (smtpd asks it for TLS session
    ticket keys and randomness)."""

    def configure(self) -> Path:
        conf = super().configure()
        with open(conf / "master.cf", "a") as fh:
            fh.write("tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n")
        return conf


POSTSCREEN_MASTER = """\
{listen} inet n - n - 1 postscreen
smtpd     pass  -       -       n       -       -       smtpd
dnsblog   unix  -       -       n       -       0       dnsblog
tlsproxy  unix  -       -       n       -       0       tlsproxy
"""


def postscreen_settings(sessions: int) -> dict[str, str]:
    """main.cf settings for postscreen in front of smtpd (workload e,
    bench/slowdns_bench.py), on top of postfix_reference_settings:

    - postscreen_dnsbl_sites = bl.test, postscreen_dnsbl_action = enforce
      (a listed client gets 550 5.7.1 "Service unavailable; client [...]
      blocked using bl.test" at RCPT from postscreen's own SMTP engine; the
      reference says 554 at RCPT: the same verdict), threshold default (1);
    - postscreen_greet_banner empty: no pregreet test.  With the "220-"
      teaser, postscreen waits the whole postscreen_greet_wait (6 s) for
      every client it has not seen, so every session of the benchmark's
      load (each from a new address) would wait 6 s.  Without it the
      greeting waits for the DNSBL answer only;
    - the deep protocol tests (pipelining, non-SMTP command, bare newline)
      stay off, their default;
    - postscreen_access_list empty: its default, permit_mynetworks, would
      let every loopback client through untested;
    - smtpd (and every other service) may run ``sessions`` processes
      (default_process_limit; 100 by default) and postscreen queues as
      many: with 200 sessions and 100 smtpd, postscreen answers the
      clients it cannot hand over with 421 "all server ports are busy".
    smtpd keeps the whole reference policy, reject_rbl_client bl.test
    included: a client postscreen passes is looked up a second time."""
    limit = str(max(100, sessions + 20))
    return {
        "postscreen_access_list": "",
        "postscreen_dnsbl_sites": "bl.test",
        "postscreen_dnsbl_action": "enforce",
        "postscreen_greet_banner": "",
        "default_process_limit": limit,
        "postscreen_pre_queue_limit": limit,
        "postscreen_post_queue_limit": limit,
    }


class PostscreenPostfix(PostfixServer):
    """PostfixServer with postscreen on the listening port and smtpd behind
    it (``smtpd pass``), dnsblog and tlsproxy as Debian's master.cf has
    them (chroot off)."""

    def configure(self) -> Path:
        conf = super().configure()
        rest = "".join(line + "\n" for line in MASTER_CF.splitlines()[1:])
        (conf / "master.cf").write_text(POSTSCREEN_MASTER.format(listen=f"127.0.0.1:{self.port}") + rest)
        return conf

    def stop(self) -> None:
        # postscreen and postlogd leave master's process group (setsid); they exit when master is
        # gone, and any still there after 5 s is killed by its pid
        pids = procstat.tree(self.proc.pid)[1:] if self.proc is not None and self.proc.poll() is None else []
        super().stop()
        deadline = time.monotonic() + 5
        for pid in pids:
            while procstat._stat_fields(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if procstat._stat_fields(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def postfix_reference_settings(tables: Path, sink_port: int, policy: Path) -> dict[str, str]:
    """main.cf settings for a Postfix with the reference policy in its own
    restrictions (tests/support/reference.py ``postfix_native``: reject_rbl_client
    bl.test, check_helo/sender/recipient_access, reject_rhsbl_sender dbl.test,
    relay_domains = rcpthosts with reject_unauth_destination), its access
    tables made into hash maps with postmap, smtpd_delay_reject = yes, and
    relayhost = the sink.  ``tables``: an empty folder the postfix user can read."""
    tables.mkdir(parents=True, exist_ok=True)
    tables.chmod(0o755)
    settings = {**base_settings(sink_port, policy), **postfix_native(tables, policy), "smtpd_delay_reject": "yes"}
    conf = tables / "postmap-conf"               # postmap reads a main.cf; the system has none
    conf.mkdir(exist_ok=True)
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    for key, value in settings.items():
        for path in re.findall(r"texthash:(\S+?)(?=[,\s]|$)", value):
            proc = subprocess.run(["postmap", "-c", str(conf), f"hash:{path}"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"postmap hash:{path}: {proc.stderr.strip()}")
            Path(f"{path}.db").chmod(0o644)
        settings[key] = value.replace("texthash:", "hash:")
    return settings


# ---- the reference verdicts ---------------------------------------------------------------

def check_reference(port: int, sink: "benchrun.SinkCounter | None", timeout: float = 30.0) -> dict:
    """The reference sessions against the server on ``port``.  Each RCPT's
    verdict (accepted, or refused with 5xx at whatever stage: connect,
    EHLO, MAIL or RCPT) must be the reference's; a 4xx where the reference
    refuses counts as a different verdict.  Sessions the reference delivers
    send a short message, and ``sink`` must count every one of them.

    Returns {"cases", "mismatches": [...], "codes": [...] (same verdict,
    other reply code than the reference's: informational), "delivered",
    "expected_deliveries"}."""
    mismatches: list[str] = []
    codes: list[str] = []
    deliveries = 0
    sink0 = sink.count if sink else 0
    cases = 0
    for client, helo, sender, rcpts, deliver in SESSIONS:
        where = f"[{client}] EHLO {helo} MAIL FROM:<{sender}>"
        refusal: tuple[str, int, str] | None = None      # (stage, code, text) of a refusal before RCPT
        accepted = 0
        try:
            with smtplib.SMTP(timeout=timeout, source_address=(client, 0)) as s:
                code, text = s.connect("127.0.0.1", port)
                if code >= 400:
                    refusal = ("connect", code, text.decode(errors="replace"))
                if refusal is None:
                    code, text = s.ehlo(helo)
                    if code >= 400:
                        refusal = ("EHLO", code, text.decode(errors="replace"))
                if refusal is None:
                    code, text = s.mail(sender)
                    if code >= 400:
                        refusal = ("MAIL", code, text.decode(errors="replace"))
                for rcpt, want in rcpts.items():
                    cases += 1
                    if refusal is None:
                        code, text = s.rcpt(rcpt)
                        stage, reply = "RCPT", f"{code} {text.decode(errors='replace')}"
                    else:
                        stage, code, reply = refusal[0], refusal[1], f"{refusal[1]} {refusal[2]}"
                    want_code = int(want.split()[0])
                    got_ok, want_ok = code < 300, want_code < 300
                    label = f"{where} RCPT TO:<{rcpt}>"
                    if got_ok != want_ok or (not got_ok and code // 100 != want_code // 100):
                        mismatches.append(f"{label}: {stage} {reply.strip()} (reference: {want.strip()})")
                    elif not got_ok and (code != want_code or stage != "RCPT"):
                        codes.append(f"{label}: {stage} {reply.strip()[:120]} (reference: {want.split(':')[0]})")
                    if got_ok:
                        accepted += 1
                if accepted and refusal is None:
                    code, text = s.data(f"Subject: reference case\r\nFrom: <{sender}>\r\n\r\n{where}\r\n")
                    if code >= 300:
                        mismatches.append(f"{where}: DATA {code} {text.decode(errors='replace')}")
                    else:
                        deliveries += 1
                    if not deliver:
                        mismatches.append(f"{where}: delivered; the reference refuses every recipient")
                elif deliver:
                    mismatches.append(f"{where}: no recipient accepted; the reference delivers")
                try:
                    s.quit()
                except smtplib.SMTPServerDisconnected:
                    pass
        except (OSError, smtplib.SMTPException) as err:
            mismatches.append(f"{where}: {type(err).__name__}: {err}")
    expected = sum(1 for *_, deliver in SESSIONS if deliver)
    delivered = deliveries
    if sink is not None:
        deadline = time.monotonic() + timeout
        while sink.count - sink0 < deliveries and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = sink.count - sink0
        if delivered != deliveries:
            mismatches.append(f"the sink counted {delivered} of the {deliveries} messages accepted")
    return {"cases": cases, "mismatches": mismatches, "codes": codes, "delivered": delivered,
            "expected_deliveries": expected}
