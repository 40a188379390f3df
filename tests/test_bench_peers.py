"""bench/run.py's summary against the peers (issue 21): smtpfw / the best of
Postfix and Haraka is taken per repetition, a repetition where a peer
failed is left out, and the target row is there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_run_under_test", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _row(server, rep, accepted, ok=True, delivered=None):
    r = {"server": server, "workload": "a", "rep": rep, "ok": ok, "messages": 100, "accepted_per_s": accepted,
         "server_cpu_ms_per_msg": 1.0, "others_cpu_pct": 5.0}
    if delivered is not None:
        r["delivered_per_s"] = delivered
    return r


def test_ratio_to_the_best_peer_is_taken_per_repetition():
    run = _run_module()
    runs = [
        _row("smtpfw", 1, 1200, delivered=1200), _row("baseline", 1, 1000),
        _row("postfix", 1, 400, delivered=300), _row("haraka", 1, 200, delivered=200),
        _row("smtpfw", 2, 900, delivered=900), _row("baseline", 2, 1000),
        _row("postfix", 2, 200, delivered=200), _row("haraka", 2, 300, delivered=300),
        _row("smtpfw", 3, 1000, delivered=1000), _row("baseline", 3, 1000),
        _row("postfix", 3, 0.0, ok=False), _row("haraka", 3, 100, delivered=100),   # rep 3: a peer failed
    ]
    summary = run.summarize(runs, [run.WORKLOADS["a"]], {"a": 100})
    e = summary["a"]
    assert e["ratio_to_best_peer"] == {"median": 3.0, "min": 3.0, "max": 3.0}     # 1200/400 and 900/300
    assert e["delivered_ratio_to_best_peer"] == {"median": 3.5, "min": 3.0, "max": 4.0}
    assert e["ratio_to"]["postfix"]["median"] == 3.75                             # 3.0 and 4.5
    assert e["ratio"]["median"] == 1.0
    assert e["postfix"]["failed_runs"] == 1
    rows = run.targets(summary)
    assert rows[0]["target"].startswith("a: smtpfw >= 3x best of Postfix and Haraka")
    assert rows[0]["met"] is True


def test_haraka_regexes_escape_list_entries():
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(BENCH.parent))
    import peers

    assert peers._regex_escape("bad.helo.example") == r"bad\.helo\.example"
    assert peers._regex_escape("spam-helo.example") == r"spam-helo\.example"
    assert peers._regex_escape("@a+b.example") == r"@a\+b\.example"
