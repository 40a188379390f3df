"""The subcommands of this package: dry-run, trace, test, import.

``smtpfw.cli`` calls ``register(sub)`` (listed in ``_EXTRA_COMMANDS``).
Exit codes follow the CLI's: 0 fine, 1 findings (failed tests, changes with
--fail-on-change), 2 usage, rules or input error.
"""

from __future__ import annotations

import argparse
import sys

from smtpfw.config import ConfigError, _hostport


def register(sub) -> None:
    p = sub.add_parser(
        "dry-run", help="replay recorded sessions through a ruleset and show what changes",
        description="Replay recorded sessions (.jsonl, .jsonl.gz, or folders of them) through a ruleset, "
                    "without network, and compare with a baseline ruleset or with the verdicts recorded.")
    p.add_argument("sessions", nargs="+", metavar="SESSIONS", help="session files or folders (- for stdin)")
    p.add_argument("--rules", metavar="FILE", help="ruleset to try (default: the config's, else rules/default.rules)")
    p.add_argument("--config", metavar="FILE", help="YAML config (DNS servers, limits)")
    p.add_argument("--baseline", metavar="FILE",
                   help="compare with this ruleset (default: with the verdicts recorded in the sessions)")
    p.add_argument("--live-dns", action="store_true",
                   help="ask DNS again instead of using the recorded answers")
    p.add_argument("--dns", metavar="HOST:PORT", help="DNS server for --live-dns (implies it)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="report format: text, or json for scripts (default text)")
    p.add_argument("--examples", metavar="N", type=nonnegative, default=3, help="examples per group (default 3)")
    p.add_argument("--fail-on-change", action="store_true", help="exit 1 if any session changes")
    p.add_argument("--jobs", metavar="N", type=nonnegative, default=0,
                   help="worker processes (default: one per CPU for inputs over 16 MB, else 1)")
    p.set_defaults(func=_dry_run)

    p = sub.add_parser(
        "trace", help="show step by step how a ruleset decides one session",
        description="Run one session through the ruleset and show each hook, each rule with its "
                    "condition's values, the DNS answers used and the replies (like exim -bh). "
                    "Give the session with --ip/--helo/--from/--rcpt, or --session FILE[:N] or FOLDER:ID.")
    p.add_argument("--rules", metavar="FILE", help="ruleset (default: the config's, else rules/default.rules)")
    p.add_argument("--config", metavar="FILE", help="YAML config (DNS servers, hostname, limits)")
    p.add_argument("--session", metavar="FILE[:N]",
                   help="a recorded session: the Nth record of FILE (1-based) or the one with id N "
                        "(default 1); FOLDER:ID searches every recording under FOLDER")
    p.add_argument("--ip", metavar="IP", help="client IP address (default 192.0.2.1)")
    p.add_argument("--client-port", metavar="N", type=nonnegative, default=0,
                   help="client source port, as rules see it in client.port (default 0)")
    p.add_argument("--port", metavar="N", type=nonnegative, default=25, help="listener port (default 25)")
    p.add_argument("--helo", metavar="NAME", help="HELO/EHLO name (sent as EHLO)")
    p.add_argument("--plain-helo", action="store_true", help="send HELO instead of EHLO")
    p.add_argument("--tls", action="store_true", help="the session is encrypted")
    p.add_argument("--auth", metavar="USER", help="the client authenticated as USER")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="MAIL FROM address (\"\" or \"<>\": null sender)")
    p.add_argument("--rcpt", metavar="ADDR", action="append", default=[], help="recipient (repeatable)")
    p.add_argument("--header", metavar="'Name: value'", action="append", default=[],
                   help="a header field the DATA hook sees (repeatable)")
    p.add_argument("--size", metavar="N", type=nonnegative, help="message size in bytes (default 1000)")
    p.add_argument("--no-data", action="store_true", help="stop after RCPT (no DATA)")
    dns = p.add_mutually_exclusive_group()
    dns.add_argument("--dns", metavar="HOST:PORT", help="ask this DNS server (default: the config's, else the system's)")
    dns.add_argument("--no-dns", action="store_true", help="no DNS: every lookup counts as failed")
    dns.add_argument("--live-dns", action="store_true", help="with --session: ask DNS again, not the recording")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format: text, or json for scripts (default text)")
    p.set_defaults(func=_trace)

    p = sub.add_parser(
        "test", help="run the ruleset tests that live beside rule files (RULES.tests)",
        description="Run the expectations in <ruleset>.tests files (`smtpfw docs dry-run#ruleset-tests`). "
                    "Failures are printed like lint diagnostics (E901, E902) with a trace.")
    p.add_argument("paths", nargs="+", metavar="RULES", help="rule files, .tests files or folders")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format: text, or json like `smtpfw lint --format json` (default text)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output: auto (on a terminal, unless NO_COLOR is set), always, never")
    p.add_argument("-v", "--verbose", action="store_true", help="list every test")
    p.set_defaults(func=_test)

    p = sub.add_parser("import", help="turn mail logs into recorded sessions",
                       description="Turn mail server logs into smtpfw session records (format v1) for dry-run.")
    isub = p.add_subparsers(dest="source", metavar="SOURCE")
    q = isub.add_parser("postfix", help="Postfix smtpd/cleanup/qmgr log lines",
                        description="Read a Postfix mail log (plain, .gz, or - for stdin) and write one "
                                    "session record per smtpd connection.")
    q.add_argument("maillog", metavar="MAILLOG", help="the Postfix log: a file, a .gz file, or - for stdin")
    q.add_argument("-o", "--output", metavar="OUT.jsonl", help="output file (.gz compresses; default stdout)")
    q.add_argument("--year", type=int, help="year for syslog time stamps without one (default: this year)")
    q.set_defaults(func=_import_postfix)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def nonnegative(text: str) -> int:
    """argparse type: a whole number >= 0 (a usage error otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


# ---- shared helpers -----------------------------------------------------------

def load_config_arg(args):
    """The config and the rules path (flags over config); sets args.rules."""
    from smtpfw.cli import load_settings

    cfg, rules = load_settings(args)
    args.rules = rules
    return cfg


def compile_or_report(path: str, command: str):
    """The compiled ruleset, or None after printing its errors."""
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.lint_output import format_text

    ruleset, diags = compile_ruleset(path)
    if ruleset is None:
        sys.stderr.write(format_text(diags))
        print(f"smtpfw {command}: {path}: the ruleset has errors", file=sys.stderr)
    return ruleset


def make_resolver(cfg, dns_arg: str | None):
    from smtpfw.checks.dns import Resolver

    if dns_arg:
        servers = [_hostport(dns_arg, "--dns", 53)]
    else:
        servers = list(cfg.dns_nameservers) or None
    return Resolver(servers, timeout=cfg.dns_timeout, cache_size=cfg.dns_cache_size)


def dns_source_factory(cfg, dns_arg: str | None):
    """record -> a live DnsSession (one shared caching Resolver)."""
    from smtpfw.checks.dns import DnsSession

    resolver = make_resolver(cfg, dns_arg)
    return lambda record: DnsSession(resolver, cfg.dns_session_budget)


def _guard(command: str, fn, args) -> int:
    try:
        return fn(args)
    except ConfigError as err:
        print(f"smtpfw {command}: {err}", file=sys.stderr)
        return 2


# ---- the commands -------------------------------------------------------------

def _dry_run(args) -> int:
    from smtpfw.replay import dryrun

    return _guard("dry-run", dryrun.run, args)


def _trace(args) -> int:
    from smtpfw.replay import trace

    return _guard("trace", trace.run, args)


def _test(args) -> int:
    from smtpfw.replay import rulestests

    return _guard("test", rulestests.run, args)


def _import_postfix(args) -> int:
    from smtpfw.replay import postfix

    return _guard("import", postfix.run, args)
