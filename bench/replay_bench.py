"""Replay benchmark: N synthetic recorded sessions through a ruleset.

    python bench/replay_bench.py                 # 1,000,000 sessions, rules/reference.rules
    python bench/replay_bench.py --n 100000 --rules rules/default.rules
    python bench/replay_bench.py --end-to-end    # also write a .jsonl and time `dry-run` reading it

The sessions look like what `smtpfw serve` records under the reference
policy: a mix of clean clients, DNSBL-listed IPs, bad HELOs, bad senders,
RHSBL-listed sender domains, relay attempts and several recipients, each
with the DNS answers the rules used.  Reports sessions/s for the replay
alone (records already parsed) and, with --end-to-end, for the whole
dry-run pipeline (read JSON Lines, replay, compare, summarise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smtpfw.lang.compiler import compile_ruleset  # noqa: E402
from smtpfw.replay.session import Replayer  # noqa: E402

_HELOS = ["mail.example.org", "mx1.example.com", "bad.helo.example", "SPAM-HELO.example", "host.example.net"]
_SENDERS = ["alice@example.org", "bob@example.com", "", "joe@evil.example", "x@spammer.example",
            "y@sub.spammer.example", "news@spam.example", "info@bad.example", "ops@example.net"]
_RCPTS = ["bob@example.net", "carol@example.net", "blocked@example.net", "trap@example.net",
          "someone@elsewhere.example", "x@sub.example.net", "user%other@example.net", "Dave@EXAMPLE.NET"]
_LISTED_DOMAINS = {"spam.example", "bad.example"}


def _dns(kind: str, name: str, zone: str, listed: bool, code: str = "127.0.0.2") -> dict:
    answer = {"status": "listed", "codes": [code], "txt": f"{name} is listed"} if listed else {"status": "clear"}
    return {"lookup": {"kind": kind, "name": name, "zone": zone}, "answer": answer}


def synthetic_record(i: int, rnd: random.Random) -> dict:
    """One session as a client sent it (decisions filled in by as_recorded)."""
    listed = rnd.random() < 0.15
    ip = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    dns = [_dns("dnsbl", ip, "bl.test", listed, rnd.choice(("127.0.0.2", "127.0.0.4")))]
    events: list = [{"cmd": "ehlo", "arg": rnd.choice(_HELOS), "decision": {"outcome": "continue"}, "reply": "250"}]
    for _ in range(1 if rnd.random() < 0.9 else 2):
        sender = rnd.choice(_SENDERS)
        events.append({"cmd": "mail", "addr": sender, "params": {"SIZE": str(rnd.randrange(100, 50000))},
                       "decision": {"outcome": "continue"}, "reply": "250 2.1.0 Sender OK"})
        domain = sender.rpartition("@")[2].lower()
        if domain:
            dns.append(_dns("rhsbl", domain, "dbl.test", domain in _LISTED_DOMAINS))
        for _ in range(rnd.choice((1, 1, 1, 2, 3))):
            events.append({"cmd": "rcpt", "addr": rnd.choice(_RCPTS), "decision": {"outcome": "continue"},
                           "reply": "250 2.1.5 Recipient OK"})
        events.append({"cmd": "data", "size": rnd.randrange(500, 60000),
                       "headers": {"subject": f"message {i}", "from": sender},
                       "decision": {"outcome": "continue"}, "queue": {"outcome": "continue"},
                       "reply": "250 2.0.0 Ok: queued"})
    seen, unique = set(), []
    for d in dns:
        key = json.dumps(d["lookup"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return {"v": 1, "id": f"bench.{i:x}", "time": 1700000000.0 + i, "duration": 0.05, "ruleset": "bench",
            "listener": {"address": "192.0.2.25", "port": 25, "name": "mx"},
            "client": {"ip": ip, "port": 40000 + i % 20000}, "tls": False, "auth": False, "auth_user": "",
            "connect": {"decision": {"outcome": "continue"}, "reply": "220 mx"},
            "events": events, "dns": unique, "tags": [], "monitored": [], "final_reply": "221 2.0.0 Bye"}


def as_recorded(record: dict, result) -> dict:
    """Write a replay's decisions and replies into the record, as the live
    server records them, so a dry-run against the recorded verdicts sees
    realistic (mostly unchanged) sessions."""
    record["connect"] = {"decision": result.connect.decision.to_json(), "reply": result.connect.reply}
    events = []
    for ev, r in zip(record["events"], result.events):
        if not r.reached:
            break                       # the live server never saw it
        ev = dict(ev)
        if r.decision is not None:
            if ev["cmd"] == "data" and r.stage is not None and r.stage.value == "queue":
                ev["decision"] = {"outcome": "continue", "code": None, "enhanced": None, "text": None,
                                  "rule": None}
                ev["queue"] = r.decision.to_json()
            else:
                ev["decision"] = r.decision.to_json()
                ev.pop("queue", None)
        ev["reply"] = r.reply
        events.append(ev)
    record["events"] = events
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="sessions (default 1,000,000)")
    p.add_argument("--rules", default=str(REPO / "rules" / "reference.rules"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--end-to-end", action="store_true", help="also time `smtpfw dry-run` over a .jsonl file")
    args = p.parse_args(argv)

    ruleset, diags = compile_ruleset(args.rules)
    if ruleset is None:
        print("\n".join(str(d) for d in diags), file=sys.stderr)
        return 2
    rnd = random.Random(args.seed)
    pool = [synthetic_record(i, rnd) for i in range(min(args.n, 20_000))]
    replayer = Replayer(ruleset)
    replay = replayer.replay
    pool = [as_recorded(rec, replay(rec)) for rec in pool]
    kinds: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(args.n):
        v = replay(pool[i % len(pool)]).verdict.kind
        kinds[v] = kinds.get(v, 0) + 1
    elapsed = time.perf_counter() - start
    print(f"replay: {args.n:,} sessions through {os.path.relpath(args.rules)} in {elapsed:.2f}s "
          f"= {args.n / elapsed:,.0f} sessions/s  {kinds}")
    if args.end_to_end:
        from smtpfw.cli import main as cli_main
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sessions.jsonl")
            with open(path, "w", encoding="utf-8") as fh:
                for i in range(args.n):
                    rec = pool[i % len(pool)]
                    rec["id"] = f"bench.{i:x}"
                    fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            start = time.perf_counter()
            with open(os.devnull, "w") as null:
                saved, sys.stdout = sys.stdout, null
                try:
                    cli_main(["dry-run", "--rules", args.rules, "--baseline", args.rules, path])
                finally:
                    sys.stdout = saved
            elapsed = time.perf_counter() - start
            print(f"dry-run end to end (read JSON, replay under rules and baseline, diff): "
                  f"{args.n:,} sessions in {elapsed:.2f}s = {args.n / elapsed:,.0f} sessions/s")
            start = time.perf_counter()
            with open(os.devnull, "w") as null:
                saved, sys.stdout = sys.stdout, null
                try:
                    cli_main(["dry-run", "--rules", args.rules, path])
                finally:
                    sys.stdout = saved
            elapsed = time.perf_counter() - start
            print(f"dry-run end to end against recorded verdicts: "
                  f"{args.n:,} sessions in {elapsed:.2f}s = {args.n / elapsed:,.0f} sessions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
