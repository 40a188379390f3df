"""The command line's grammar: every subcommand, flag and help text.

``build_parser(handlers)`` sets each subcommand's ``func`` from
``handlers`` (name, or "import postfix" -> function(args) -> exit code),
which smtpfw.cli owns.
"""

from __future__ import annotations

import argparse

from smtpfw import __version__


def nonnegative(text: str) -> int:
    """argparse type: a whole number >= 0 (a usage error otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    p.add_argument("--rules", metavar="FILE", help="ruleset file (default: the config's, else rules/default.rules)")


def _color_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output: auto (on a terminal, unless NO_COLOR is set), always, never")


def build_parser(handlers: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtpfw", description="A declarative, rules-driven SMTP firewall.")
    parser.add_argument("--version", action="version", version=f"smtpfw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve(sub)
    _serve(sub, "policy", "run as a Postfix policy service (check_policy_service)",
           "Run as a Postfix policy-delegation service with the same ruleset (docs/policy.md): --listen "
           "addresses speak the policy protocol. Flags override the config file.", "127.0.0.1:10040")
    _serve(sub, "milter", "run as a mail filter (Postfix smtpd_milters)",
           "Run as a milter for Postfix or Sendmail with the same ruleset (docs/policy.md): --listen "
           "addresses speak the milter protocol. Flags override the config file.", "127.0.0.1:10041")
    _lint(sub)
    _passwd(sub)
    _docs(sub)
    _dry_run(sub)
    _stats(sub)
    _trace(sub)
    _test(sub)
    _import(sub, handlers["import postfix"], handlers["import postfix-config"],
            handlers.get("import postfwd-config"), handlers.get("import qpsmtpd-config"))
    _workbench(sub)
    for name, p in sub.choices.items():
        if name in handlers:
            p.set_defaults(func=handlers[name])
    return parser


def _serve(sub, name: str = "serve", summary: str = "run the SMTP firewall",
           description: str = "Run the SMTP firewall. Flags override the config file.",
           default_listen: str = "127.0.0.1:2525") -> None:
    p = sub.add_parser(name, help=summary, description=description)
    _add_config_args(p)
    p.add_argument("--listen", metavar="HOST:PORT", action="append",
                   help=f"address to listen on (repeatable; default {default_listen}"
                        + (", or the config's listeners of this kind)" if name != "serve" else ")"))
    target = p.add_mutually_exclusive_group()
    target.add_argument("--forward", metavar="HOST:PORT", help="forward accepted mail to this SMTP server")
    target.add_argument("--maildir", metavar="DIR", help="write accepted mail to this Maildir (default ./var/maildir)")
    p.add_argument("--workers", metavar="N", type=nonnegative,
                   help="worker processes (default: one per CPU; 0 also means one per CPU)")
    p.add_argument("--record", metavar="DIR", help="record sessions as JSON Lines under DIR")
    p.add_argument("--log-format", choices=("kv", "json"),
                   help="format of every log line: kv (text, the default) or json (one object per line)")


def _lint(sub) -> None:
    p = sub.add_parser("lint", help="check rule files", description="Check rule files and print diagnostics.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="rule files or folders (default: the configured ruleset)")
    _add_config_args(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    p.add_argument("--fail-on", choices=("error", "warning", "hint"), default="error",
                   help="lowest severity that makes the exit code 1 (default error)")
    p.add_argument("--mode", action="append", choices=("smtp", "policy", "milter"), default=[],
                   help="the front end the rules will run behind (repeatable): warn (W604) about fields "
                        "it never has, e.g. header.* under policy (default: none)")
    _color_arg(p)


def _passwd(sub) -> None:
    p = sub.add_parser("passwd", help="make a line for the AUTH users file",
                       description="Print USER:scrypt$... for auth.users_file. The password is read "
                                   "from standard input (asked for on a terminal).")
    p.add_argument("user", metavar="USER", help="the user name (no ':')")


def _docs(sub) -> None:
    p = sub.add_parser("docs", help="print the documentation installed with smtpfw",
                       description="Print a page of the documentation installed with smtpfw, or one "
                                   "section of it: diagnostics' URLs (docs/lint.md#e102) work as they are.")
    p.add_argument("page", nargs="?", metavar="PAGE[#SECTION]",
                   help="lint, rules, dry-run, ... or a URL such as docs/lint.md#e102 (none: list the pages)")


def _dry_run(sub) -> None:
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


def _stats(sub) -> None:
    p = sub.add_parser(
        "stats", help="hits per rule, rules never hit, who is refused most",
        description="What the rules do on real traffic: from recorded sessions (replayed through the ruleset, "
                    "the numbers dry-run shows) or from a running server's metrics endpoint (--metrics).")
    p.add_argument("sessions", nargs="*", metavar="SESSIONS", help="session files or folders")
    p.add_argument("--metrics", metavar="URL", help="a running server's endpoint, e.g. http://127.0.0.1:9185/metrics")
    p.add_argument("--rules", metavar="FILE", help="the ruleset (default: the config's, else rules/default.rules)")
    p.add_argument("--config", metavar="FILE", help="YAML config")
    p.add_argument("--days", metavar="N", type=float, help="only sessions of the last N days (recordings)")
    p.add_argument("--top", metavar="N", type=nonnegative, default=10, help="refused clients/senders/domains shown")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text, or json for scripts")
    p.add_argument("--jobs", metavar="N", type=nonnegative, default=0, help="worker processes for recordings")


def _trace(sub) -> None:
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


def _test(sub) -> None:
    p = sub.add_parser(
        "test", help="run the ruleset tests that live beside rule files (RULES.tests)",
        description="Run the expectations in <ruleset>.tests files (`smtpfw docs dry-run#ruleset-tests`). "
                    "Failures are printed like lint diagnostics (E901, E902) with a trace.")
    p.add_argument("paths", nargs="+", metavar="RULES", help="rule files, .tests files or folders")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format: text, or json like `smtpfw lint --format json` (default text)")
    _color_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="list every test")


def _import(sub, postfix_handler, config_handler, postfwd_handler=None, qpsmtpd_handler=None) -> None:
    p = sub.add_parser("import", help="turn mail logs into recorded sessions, or a Postfix main.cf into rules",
                       description="Turn mail server logs into smtpfw session records (format v1) for dry-run, "
                                   "or a Postfix configuration into an smtpfw ruleset.")
    isub = p.add_subparsers(dest="source", metavar="SOURCE")
    q = isub.add_parser("postfix", help="Postfix smtpd/cleanup/qmgr log lines",
                        description="Read a Postfix mail log (plain, .gz, or - for stdin) and write one "
                                    "session record per smtpd connection.")
    q.add_argument("maillog", metavar="MAILLOG", help="the Postfix log: a file, a .gz file, or - for stdin")
    q.add_argument("-o", "--output", metavar="OUT.jsonl", help="output file (.gz compresses; default stdout)")
    q.add_argument("--year", type=int, help="year for syslog time stamps without one (default: this year)")
    q.set_defaults(func=postfix_handler)
    c = isub.add_parser("postfix-config", help="a Postfix main.cf and the maps it names, as a ruleset",
                        description="Translate a Postfix main.cf (smtpd_*_restrictions, restriction classes, "
                                    "postscreen DNSBL scores, the access/cidr/regexp/pcre/hash/database maps they "
                                    "name) into a ruleset that lints clean, and report every parameter and "
                                    "restriction: translated, approximated, or why not.")
    c.add_argument("main_cf", metavar="MAIN_CF", help="the main.cf to read")
    c.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="folder for imported.rules and its maps/ (created; existing files are kept unless --force)")
    c.add_argument("--map-dir", metavar="DIR", help="where the files main.cf names are (default: their own paths, "
                                                   "then beside main.cf)")
    c.add_argument("--force", action="store_true", help="overwrite files in the output folder")
    c.set_defaults(func=config_handler)
    w = isub.add_parser("postfwd-config", help="a postfwd ruleset, as an smtpfw ruleset",
                        description="Translate a postfwd ruleset (its rules, macros, DNS lists, set() counters, "
                                    "rate limits) into a ruleset that lints clean, and report every rule, item and "
                                    "action: translated, approximated, or why not.")
    w.add_argument("postfwd_cf", metavar="POSTFWD_CF", help="the postfwd ruleset to read (postfwd -f FILE)")
    w.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="folder for imported.rules and its maps/ (created; existing files are kept unless --force)")
    w.add_argument("--force", action="store_true", help="overwrite files in the output folder")
    w.set_defaults(func=postfwd_handler)
    k = isub.add_parser("qpsmtpd-config", help="a qpsmtpd config/ folder (plugins and their lists), as a ruleset",
                        description="Translate a qpsmtpd configuration folder (config/plugins in order, with the "
                                    "list files the plugins read: badhelo, badmailfrom, badrcptto, rcpthosts, "
                                    "relayclients, dnsbl_zones ...) into a ruleset that lints clean, and report "
                                    "every plugin, argument and file: translated, approximated, or why not.")
    k.add_argument("config_dir", metavar="CONFIG_DIR", help="qpsmtpd's config folder (the one holding `plugins`)")
    k.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="folder for imported.rules and its maps/ (created; existing files are kept unless --force)")
    k.add_argument("--force", action="store_true", help="overwrite files in the output folder")
    k.set_defaults(func=qpsmtpd_handler)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _workbench(sub) -> None:
    p = sub.add_parser(
        "workbench", help="edit, lint, test, dry-run and trace rules in the browser",
        description="A local web application for editing the ruleset (docs/workbench.md): lint as you type, "
                    "the ruleset's tests, a dry-run diff against recorded sessions, traces, then save and "
                    "reload the running server. Needs the [workbench] extra (pip install 'smtpfw[workbench]').")
    _add_config_args(p)
    p.add_argument("--recordings", metavar="DIR",
                   help="recorded sessions for the dry-run diff and traces (default: the config's recording.path)")
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help="address to serve on (default 127.0.0.1:8025); every request needs the token in the "
                        "URL printed at start")
    p.add_argument("--pid-file", metavar="FILE",
                   help="the running server's pid file, to send it SIGHUP (default: the config's server.pid_file)")
    p.add_argument("--server-log", metavar="FILE",
                   help="the running server's log, to see whether it took the new version after a reload")
