"""Rule-engine micro-benchmark (issue 8): 1,000 rules and 1,000,000-entry lists.

    python bench/engine_bench.py            # lists of 10 and of 1,000,000 entries
    python bench/engine_bench.py --quick    # 10 and 100,000 entries, fewer sessions

For each list size, in a fresh process (so memory is not shared between the
two): generate five list files in a temp folder (client IPs and networks,
HELO names, sender addresses, sender domains, recipient addresses), a ruleset
of 1,000 rules over them (see ``ruleset_text``), compile it with
``compile_ruleset`` and evaluate sessions that pass every rule, so that every
rule of every hook runs (the worst case for the engine):

- list loading: reading + building each list's table, and the whole compile;
- memory: what the compiled ruleset keeps and the peak while compiling
  (tracemalloc, a second compile), and the process RSS grown by compiling;
- evaluation: ``Ruleset.evaluate`` for connect, helo, mail, rcpt and data of
  one session, DNS answers already gathered (the engine is pure: I/O is
  done before), median and p99 over many sessions.

Evaluation must not grow with list size: compare the two rows.
Results: bench/results/engine-latest.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RULES = 1000
TARGET_EVAL_US = 20.0
TARGET_LOAD_S = 2.0


# ---- generated input -----------------------------------------------------------

def write_lists(folder: Path, entries: int, seed: int = 8) -> dict[str, Path]:
    """Five list files of ``entries`` lines each; none matches the sessions
    evaluated (which use 192.0.2.x, *.example.org, *@example.net)."""
    rnd = random.Random(seed)
    files = {}

    def dump(name: str, lines) -> None:
        path = folder / name
        with open(path, "w") as fh:
            fh.write(f"# {entries} generated entries\n")
            fh.writelines(f"{x}\n" for x in lines)
        files[name] = path

    def ip(i: int) -> str:
        n = 0x0B000000 + i * 7                      # 11.0.0.0 upwards
        return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def net(i: int) -> str:                          # distinct /24s in 20.0.0.0-35.255.255.0
        return f"{20 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"

    dump("badips", (ip(i) if i % 10 else net(i) for i in range(entries)))
    dump("badhelos", (f"h{i:x}.spam{rnd.randrange(1000)}.test" for i in range(entries)))
    dump("badsenders", (f"u{i:x}@s{rnd.randrange(10000)}.test" if i % 5 else f"@d{i:x}.test"
                        for i in range(entries)))
    dump("baddomains", (f"d{i:x}.bulk{rnd.randrange(1000)}.test" for i in range(entries)))
    dump("badrcpts", (f"r{i:x}@example.net" for i in range(entries)))
    return files


def ruleset_text(rules: int = RULES) -> str:
    """``rules`` rules in the mix a large site has: a list test or two and a
    DNS test per hook, many exact-value rules against the same fields (one
    per blocked host, sender, recipient...), a few patterns."""
    head = [
        'option delay_reject = yes',
        'list badips = file "badips"',
        'list badhelos = file "badhelos"',
        'list badsenders = file "badsenders"',
        'list baddomains = file "baddomains"',
        'list badrcpts = file "badrcpts"',
        'list rcpthosts = ["example.net", "example.com"]',
        'zone bl = dnsbl "bl.test"',
        'zone dbl = rhsbl "dbl.test"',
    ]
    fixed = {
        "connect": ['[c-list] reject 554 5.7.1 "blocked" if client.ip in badips',
                    '[c-dnsbl] reject 554 5.7.1 "listed: {dnsbl.txt}" if client.ip listed in bl'],
        "helo": ['[h-list] reject 550 5.7.1 "bad helo" if helo in badhelos',
                 '[h-ip] reject 550 5.7.1 "helo is an IP" if helo matches "^\\\\[?[0-9.]+\\\\]?$"'],
        "mail": ['[m-list] reject 550 5.7.1 "bad sender" if sender in badsenders',
                 '[m-dom] reject 550 5.7.1 "bad domain" if sender.domain within baddomains',
                 '[m-rhsbl] reject 550 5.7.1 "listed: {rhsbl.txt}" if sender.domain listed in dbl'],
        "rcpt": ['[r-list] reject 550 5.7.1 "bad rcpt" if rcpt in badrcpts',
                 '[r-hack] reject 550 5.7.1 "no relay" if rcpt.local matches "[%!@]"',
                 '[r-hosts] reject 554 5.7.1 "Relay access denied" if rcpt.domain not in rcpthosts'],
        "data": ['[d-size] reject 552 5.3.4 "too big" if message.size > 50M',
                 '[d-subj] reject 550 5.7.1 "spam" if header.subject matches "(?i)viagra|casino"'],
    }
    # the remaining rules: one exact value each, spread over the hooks
    exact = [
        ("connect", 'client.ip = "{}"', lambda i: f"203.0.113.{i % 250}" if i < 250 else f"198.51.{i // 250}.{i % 250}"),
        ("helo", 'helo = "{}"', lambda i: f"blocked-{i}.helo.test"),
        ("mail", 'sender = "{}"', lambda i: f"spammer{i}@bulk.test"),
        ("mail", 'sender.domain = "{}"', lambda i: f"bulk{i}.test"),
        ("rcpt", 'rcpt = "{}"', lambda i: f"former{i}@example.net"),
        ("rcpt", 'rcpt.domain = "{}"', lambda i: f"old{i}.example.net"),
    ]
    count = sum(len(v) for v in fixed.values())
    per = {}
    n = 0
    while count < rules:
        hook, test, value = exact[n % len(exact)]
        per.setdefault(hook, []).append(
            f'[x{n}] reject 550 5.7.1 "blocked by rule x{n}" if {test.format(value(n // len(exact)))}')
        n += 1
        count += 1
    out = head[:]
    for hook in ("connect", "helo", "mail", "rcpt", "data"):
        out.append(f"on {hook}:")
        out += [f"    {r}" for r in fixed[hook] + per.get(hook, [])]
    return "\n".join(out) + "\n"


# ---- one list size, in its own process ---------------------------------------------

def rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(entries: int, sessions: int) -> dict:
    from smtpfw.checks.dnsresult import DnsAnswer
    from smtpfw.checks.lists import build_matcher, read_list_file
    from smtpfw.engine import PluginCall
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.lang.fields import ADDRESS, DOMAIN, IP
    from smtpfw.session import SessionState
    from smtpfw.verdict import Outcome, Stage

    with tempfile.TemporaryDirectory(prefix="smtpfw-engine-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = write_lists(folder, entries)
        generate_s = time.perf_counter() - t
        rules_path = folder / "bench.rules"
        rules_path.write_text(ruleset_text())

        # each list alone: read + build its table
        types = {"badips": (IP, False), "badhelos": (DOMAIN, False), "badsenders": (ADDRESS, False),
                 "baddomains": (DOMAIN, True), "badrcpts": (ADDRESS, False)}
        lists = {}
        for name, path in files.items():
            gc.collect()
            t = time.perf_counter()
            got, diags = read_list_file(str(path), name)
            read_s = time.perf_counter() - t
            matcher, diags2 = build_matcher(got, *types[name])
            total_s = time.perf_counter() - t
            errors = [d for d in diags + diags2 if d.code.startswith("E")]
            lists[name] = {"entries": len(got), "read_s": round(read_s, 3), "load_s": round(total_s, 3),
                           "errors": len(errors)}
            del got, matcher, diags, diags2
        gc.collect()

        before = rss_kb()
        t = time.perf_counter()
        ruleset, diags = compile_ruleset(str(rules_path))
        compile_s = time.perf_counter() - t
        gc.collect()
        grown_mb = (rss_kb() - before) / 1024
        if ruleset is None:
            raise SystemExit("the generated ruleset does not compile:\n" +
                             "\n".join(f"{d.span} {d.code} {d.message}" for d in diags))
        rules = sum(len(r) for r in ruleset.hooks.values())
        # the same compile again, traced: what the compiled ruleset keeps
        # (current) and the most compiling needed at once (peak)
        tracemalloc.start()
        traced, _ = compile_ruleset(str(rules_path))
        gc.collect()
        kept_b, peak_b = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del traced
        gc.collect()

    # sessions that pass every rule: every rule of every hook is evaluated
    clear = DnsAnswer("clear")
    states = []
    for i in range(sessions):
        s = SessionState(client_ip=f"192.0.2.{i % 250 + 1}", client_port=40000 + i,
                         listener_address="127.0.0.1", listener_port=25, listener_name="default")
        s.set_helo(f"mail{i}.example.org", True)
        s.set_sender(f"user{i}@example.org", {})
        s.set_rcpt(f"rcpt{i % 97}@example.net")
        s.message_size = 2048
        s.headers = {"subject": f"report {i}", "from": f"user{i}@example.org"}
        for stage in (Stage.CONNECT, Stage.MAIL):
            for lk in ruleset.fact_keys(ruleset.fact_needs, stage, s):
                s.facts[lk] = clear
        states.append(s)
    stages = (Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA)
    evaluate = ruleset.evaluate
    perf = time.perf_counter_ns

    def session(s) -> None:
        for stage in stages:
            d = evaluate(stage, s)
            if isinstance(d, PluginCall) or d.outcome is not Outcome.CONTINUE:
                raise SystemExit(f"session {s.session_id} stopped at {stage}: {d}")

    for s in states[:200]:                     # warm-up
        session(s)
    for s in states:
        s.hits.clear()
    gc.collect()
    gc.disable()
    times = []
    for s in states:
        t0 = perf()
        session(s)
        times.append(perf() - t0)
    gc.enable()
    times.sort()
    return {
        "entries": entries,
        "rules": rules,
        "generate_s": round(generate_s, 2),
        "lists": lists,
        "max_list_load_s": max(v["load_s"] for v in lists.values()),
        "compile_s": round(compile_s, 3),
        "compile_rss_mb": round(grown_mb, 1),
        "ruleset_mb": round(kept_b / 2**20, 1),
        "compile_peak_mb": round(peak_b / 2**20, 1),
        "sessions": sessions,
        "eval_us_median": round(statistics.median(times) / 1000, 2),
        "eval_us_p99": round(times[int(len(times) * 0.99) - 1] / 1000, 2),
        "eval_us_min": round(times[0] / 1000, 2),
    }


# ---- main ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smtpfw rule-engine micro-benchmark (issue 8).")
    p.add_argument("--quick", action="store_true", help="10 and 100,000 entries, 2,000 sessions")
    p.add_argument("--entries", type=int, nargs="*", help="list sizes (default 10 1000000)")
    p.add_argument("--sessions", type=int, help="sessions evaluated per size (default 20,000)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for engine-latest.json")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sessions = args.sessions or (2000 if args.quick else 20000)
    if args.child is not None:
        print(json.dumps(child(args.child, sessions)))
        return 0
    sizes = args.entries or ([10, 100_000] if args.quick else [10, 1_000_000])
    rows = []
    for entries in sizes:
        print(f"lists of {entries:,} entries ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(entries), "--sessions", str(sessions)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lines = [f"Rule engine: {rows[0]['rules']} rules, DNS answers gathered, every rule evaluated "
             f"({sessions:,} sessions per row)", "",
             "| list entries | load one list (s), max | compile all (s) | ruleset memory (MB) | compile peak (MB) "
             "| RSS grown (MB) | eval µs/session median | p99 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['entries']:,} | {r['max_list_load_s']:.2f} | {r['compile_s']:.2f} "
                     f"| {r['ruleset_mb']:.0f} | {r['compile_peak_mb']:.0f} | {r['compile_rss_mb']:.0f} "
                     f"| {r['eval_us_median']:.1f} | {r['eval_us_p99']:.1f} |")
    big = rows[-1]
    lines += ["", f"Per list at {big['entries']:,} entries (read, read + build, seconds): " +
              ", ".join(f"{k} {v['read_s']:.2f}/{v['load_s']:.2f}" for k, v in big["lists"].items())]
    targets = [
        {"target": f"eval <= {TARGET_EVAL_US:g} µs/session median, {big['rules']} rules, "
                   f"{big['entries']:,}-entry lists", "value": big["eval_us_median"],
         "met": big["eval_us_median"] <= TARGET_EVAL_US},
        {"target": f"loading a {big['entries']:,}-entry list <= {TARGET_LOAD_S:g} s",
         "value": big["max_list_load_s"], "met": big["max_list_load_s"] <= TARGET_LOAD_S},
        {"target": "evaluation does not grow with list size (largest / smallest median)",
         "value": round(big["eval_us_median"] / rows[0]["eval_us_median"], 2),
         "met": big["eval_us_median"] <= rows[0]["eval_us_median"] * 1.25},
    ]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine-latest.json").write_text(json.dumps({"rows": rows, "targets": targets}, indent=2) + "\n")
    (out / "engine-latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
