"""Workload g of issue 21: big lists and maps.

The reference policy plus five lists of 1,000,000 entries (client IPs,
HELO names, senders, sender domains tested with `within`, recipients) and
a 1,500-pattern pcre map, served by `smtpfw serve` with 1 and then 2
workers.  Measured per run, all on 127.0.0.1:

- load: from the process start until the port greets (Python start,
  compiling the rules, reading and packing every list);
- PSS and RSS of the whole process tree (supervisor and workers) after the
  start, after a load of messages, and after a reload (SIGHUP: with 2
  workers the supervisor compiles and forks new workers, with 1 the
  process compiles in place; the lists unchanged); "reload s" runs until
  every worker on the new rules has said so;
- msg/s of that load (smtp-source when Postfix's tools are there, as in
  bench/run.py, else bench/pysource.py), every session passing every rule;
- the same with the reference policy alone, for the per-process baseline.

    python bench/lists_bench.py                  # 1,000,000 entries a list (about 2 minutes)
    python bench/lists_bench.py --entries 100000 # smaller, quicker

Also `python bench/run.py --workloads g`.  Results go to
bench/results/lists-latest.{json,md} (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import procstat  # noqa: E402
import run as benchrun  # noqa: E402

from tests.support.dnsserver import DnsServer  # noqa: E402

ROOT = BENCH.parent
PATTERNS = 1500


def make_lists(folder: Path, entries: int) -> Path:
    """The five lists, the pcre map and the ruleset using them; the ruleset's path."""
    def write(name: str, lines) -> None:
        with open(folder / name, "w") as fh:
            fh.writelines(lines)
    write("ips", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(entries)))
    write("helos", (f"h{i}.bad{i % 50}.example\n" for i in range(entries)))
    write("senders", (f"user{i}@s{i % 1000}.example\n" for i in range(entries)))
    write("domains", (f"d{i}.example{i % 97}.com\n" for i in range(entries)))
    write("rcpts", (f"r{i}@example.net\n" for i in range(entries)))
    write("generic.pcre", (f"/^x{i}[a-z]+\\.dyn{i % 31}\\.example$/ REJECT generic {i}\n" for i in range(PATTERNS)))
    rules = folder / "lists.rules"
    rules.write_text(f'include "{ROOT / "rules" / "reference.rules"}"\n' + """
list big_ips     = file "ips"
list big_helos   = file "helos"
list big_senders = file "senders"
list big_domains = file "domains"
list big_rcpts   = file "rcpts"
map generic = pcre "generic.pcre"
on connect:
    [g-ip] reject 554 5.7.1 "listed" if client.ip in big_ips
on helo:
    [g-helo] reject 550 5.7.1 "bad helo" if helo in big_helos
    [g-generic] apply generic(helo)
on mail:
    [g-sender] reject 550 5.7.1 "bad sender" if sender in big_senders
    [g-domain] reject 550 5.7.1 "bad domain" if sender.domain within big_domains
on rcpt:
    [g-rcpt] reject 550 5.7.1 "bad rcpt" if rcpt in big_rcpts
""")
    return rules


def one_run(rules: Path, workers: int, dns_address, source: list[str], messages: int, tmp: Path) -> dict:
    cfg = tmp / f"smtpfw-{workers}.yaml"
    cfg.write_text(f"dns:\n  nameservers: ['{dns_address[0]}:{dns_address[1]}']\n  health_interval: 0\n"
                   "limits:\n  max_connections_per_ip: 1000\n")
    port = benchrun.free_port()
    started = time.perf_counter()
    srv = benchrun.Service(f"smtpfw-{rules.stem}-{workers}", [
        sys.executable, "-m", "smtpfw", "serve", "--config", str(cfg), "--rules", str(rules),
        "--listen", f"127.0.0.1:{port}", "--workers", str(workers), "--maildir", str(tmp / "md")], tmp)
    try:
        benchrun.wait_smtp(port, srv, timeout=120)
        load = time.perf_counter() - started
        time.sleep(1.0)
        rss0, pss0 = procstat.memory_kb(procstat.tree(srv.pid))
        wl = benchrun.Workload("g", messages, 2048, 20, 0)
        run = benchrun.run_load(source, wl, messages, port)
        if run["rc"] != 0:
            raise RuntimeError(f"load generator failed: {run['error']}")
        rate = messages / (run["end"] - run["start"])
        rss1, pss1 = procstat.memory_kb(procstat.tree(srv.pid))
        srv.proc.send_signal(signal.SIGHUP)
        t0 = time.perf_counter()
        deadline = time.monotonic() + 180
        while srv.log_path.read_text(errors="replace").count("rules reloaded") < workers:
            srv.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not reload within 180 s")
            time.sleep(0.1)
        reload_s = time.perf_counter() - t0
        time.sleep(1.0)
        run2 = benchrun.run_load(source, wl, messages, port)
        rss2, pss2 = procstat.memory_kb(procstat.tree(srv.pid))
        return {"workers": workers, "load_s": round(load, 2), "reload_s": round(reload_s, 2),
                "msg_per_s": round(rate), "msg_per_s_after_reload": round(messages / (run2["end"] - run2["start"])),
                "pss_mb": {"start": round(pss0 / 1024), "after_load": round(pss1 / 1024),
                           "after_reload": round(pss2 / 1024)},
                "rss_mb": {"start": round(rss0 / 1024), "after_load": round(rss1 / 1024),
                           "after_reload": round(rss2 / 1024)}}
    finally:
        srv.stop()


def markdown(result: dict) -> str:
    out = [f"# Workload g: big lists ({result['entries']:,} entries x 5 lists, {PATTERNS:,}-pattern pcre map)", "",
           f"{result['machine']}; load generator: {result['loadgen']}; {result['messages']:,} x 2 KB, 20 sessions", "",
           "| ruleset | workers | load s | msg/s | PSS start | PSS after load | PSS after reload | reload s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        p = r["pss_mb"]
        out.append(f"| {r['rules']} | {r['workers']} | {r['load_s']} | {r['msg_per_s']:,} | {p['start']} MB | "
                   f"{p['after_load']} MB | {p['after_reload']} MB | {r['reload_s']} |")
    out += ["", "PSS ratio, 2 workers / 1 worker (target <= 1.3):"]
    for rules in ("lists", "reference"):
        one, two = (next(r for r in result["runs"] if r["rules"] == rules and r["workers"] == w) for w in (1, 2))
        ratios = {k: round(two["pss_mb"][k] / one["pss_mb"][k], 2) for k in one["pss_mb"]}
        out.append(f"- {rules}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ratios.items()))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="workload g: big lists and maps (issue 21)")
    p.add_argument("--entries", type=int, default=1_000_000, help="entries in each of the five lists")
    p.add_argument("--messages", type=int, default=3000, help="messages of each load (2 KB, 20 sessions)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder for lists-latest.json and .md")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install postfix")
    args = p.parse_args(argv)
    source_bin, _sink, how = benchrun.find_postfix_tools(not args.no_install)
    source = [source_bin] if source_bin else [sys.executable, str(BENCH / "pysource.py")]
    loadgen = f"smtp-source ({how})" if source_bin else "bench/pysource.py"
    zones = [ROOT.parent / "shared" / "zones" / z for z in ("bl.test", "dbl.test")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="smtpfw-listsbench-") as d, DnsServer(zones) as dns:
        tmp = Path(d)
        started = time.perf_counter()
        rules = make_lists(tmp, args.entries)
        benchrun.log(f"lists written in {time.perf_counter() - started:.1f} s")
        for name, path in (("lists", rules), ("reference", ROOT / "rules" / "reference.rules")):
            for workers in (1, 2):
                r = one_run(path, workers, dns.address, source, args.messages, tmp)
                r["rules"] = name
                benchrun.log(json.dumps(r))
                runs.append(r)
    result = {"entries": args.entries, "messages": args.messages, "loadgen": loadgen,
              "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lists-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / "lists-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
