"""Command line: subcommands -> functions -> exit codes.

Exit codes (all subcommands): 0 success / nothing found, 1 findings (lint
diagnostics, failed ruleset tests, dry-run changes with --fail-on-change),
2 usage, configuration or I/O error.  Errors are one clear line, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from smtpfw import __version__, paths
from smtpfw.config import Config, ConfigError, Listener, _hostport, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    p.add_argument("--rules", metavar="FILE", help="ruleset file (default: the config's, else rules/default.rules)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtpfw", description="A declarative, rules-driven SMTP firewall.")
    parser.add_argument("--version", action="version", version=f"smtpfw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the SMTP firewall",
                       description="Run the SMTP firewall. Flags override the config file.")
    _add_config_args(p)
    p.add_argument("--listen", metavar="HOST:PORT", action="append",
                   help="address to listen on (repeatable; default 127.0.0.1:2525)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--forward", metavar="HOST:PORT", help="forward accepted mail to this SMTP server")
    target.add_argument("--maildir", metavar="DIR", help="write accepted mail to this Maildir (default ./var/maildir)")
    p.add_argument("--workers", metavar="N", type=nonnegative,
                   help="worker processes (default: one per CPU; 0 also means one per CPU)")
    p.add_argument("--record", metavar="DIR", help="record sessions as JSON Lines under DIR")
    p.add_argument("--log-format", choices=("kv", "json"),
                   help="format of every log line: kv (text, the default) or json (one object per line)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("lint", help="check rule files", description="Check rule files and print diagnostics.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="rule files or folders (default: the configured ruleset)")
    _add_config_args(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    p.add_argument("--fail-on", choices=("error", "warning", "hint"), default="error",
                   help="lowest severity that makes the exit code 1 (default error)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output: auto (on a terminal, unless NO_COLOR is set), always, never")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("passwd", help="make a line for the AUTH users file",
                       description="Print USER:scrypt$... for auth.users_file. The password is read "
                                   "from standard input (asked for on a terminal).")
    p.add_argument("user", metavar="USER", help="the user name (no ':')")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("docs", help="print the documentation installed with smtpfw",
                       description="Print a page of the documentation installed with smtpfw, or one "
                                   "section of it: diagnostics' URLs (docs/lint.md#e102) work as they are.")
    p.add_argument("page", nargs="?", metavar="PAGE[#SECTION]",
                   help="lint, rules, dry-run, ... or a URL such as docs/lint.md#e102 (none: list the pages)")
    p.set_defaults(func=cmd_docs)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add subcommands here (dry-run, trace, test, import).
_EXTRA_COMMANDS: list = []

from smtpfw.replay.commands import nonnegative, register as _register_replay  # noqa: E402  dry-run, trace, test, import

_EXTRA_COMMANDS.append(_register_replay)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"smtpfw: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"smtpfw: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 2


def load_settings(args) -> tuple[Config, str]:
    """The config (file + flags) and the rules path to use."""
    cfg = load_config(args.config) if getattr(args, "config", None) else Config()
    rules = getattr(args, "rules", None) or cfg.rules or str(paths.default_rules())
    return cfg, rules


log = logging.getLogger("smtpfw")


def _setup_logging(cfg: Config) -> None:
    from smtpfw import logformat

    logformat.setup(cfg.log_format, cfg.log_level, sys.stderr)


def _serve_config(args, cfg: Config) -> Config:
    """The config with serve's flags applied over it."""
    if args.listen:
        listeners = []
        for item in args.listen:
            host, port = _hostport(item, "--listen")
            listeners.append(Listener(host, port, f"{host}:{port}"))
        cfg = replace(cfg, listen=tuple(listeners))
    if args.forward:
        host, port = _hostport(args.forward, "--forward", 25)
        cfg = replace(cfg, delivery_mode="forward", forward_host=host, forward_port=port)
    if args.maildir:
        cfg = replace(cfg, delivery_mode="maildir", maildir=args.maildir)
    if args.workers is not None:
        cfg = replace(cfg, workers=args.workers)
    if args.record:
        cfg = replace(cfg, recording_enabled=True, recording_path=args.record)
    if args.log_format:
        cfg = replace(cfg, log_format=args.log_format)
    return cfg


def cmd_serve(args) -> int:
    """Everything after the config is read goes to the log, in its format
    (one JSON object per line with --log-format json), errors included."""
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.server import serve

    cfg, rules = load_settings(args)
    cfg = _serve_config(args, cfg)
    _setup_logging(cfg)
    ruleset, diags = compile_ruleset(rules)
    for d in diags:
        log.log(logging.ERROR if d.level.value == "error" else logging.WARNING, "%s", _diagnostic_line(d))
    if ruleset is None:
        log.error("%s: the ruleset has errors; not starting", rules)
        return 2
    try:
        return serve(cfg, ruleset, rules)
    except ConfigError as err:
        log.error("not starting: %s", err)
        return 2


def _diagnostic_line(d) -> str:
    where = f"{d.span}: " if d.span else ""
    return f"{where}{d.level.value}[{d.code}] {d.message}" + (f" (help: {d.help})" if d.help else "")


def cmd_lint(args) -> int:
    """Without a PATH, lint the configured ruleset, and say which it is
    (otherwise "no problems found" could be about a file nobody meant)."""
    from smtpfw.lint import run_lint

    if not args.paths:
        cfg, rules = load_settings(args)
        origin = ("--rules" if args.rules else f"rules: in {args.config}" if cfg.rules
                  else "no PATH given: the packaged default ruleset")
        print(f"smtpfw lint: checking {rules} ({origin})", file=sys.stderr)
        args.paths = [rules]
    return run_lint(args)


def cmd_docs(args) -> int:
    from smtpfw import docs

    return docs.run(args)


def cmd_passwd(args) -> int:
    import getpass

    from smtpfw.auth import hash_password

    if ":" in args.user or not args.user.strip():
        print("smtpfw passwd: a user name cannot be empty or contain ':'", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("smtpfw passwd: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("smtpfw passwd: empty password", file=sys.stderr)
        return 2
    print(f"{args.user}:{hash_password(password)}")
    return 0
