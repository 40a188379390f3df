"""Command line: argv -> a command -> its report rendered -> an exit code.

Exit codes (all subcommands): 0 success / nothing found, 1 findings (lint
diagnostics, failed ruleset tests, dry-run changes with --fail-on-change),
2 usage, configuration or I/O error, 3 an internal error (a bug in smtpfw,
e.g. replay raising on a well-formed session record).  Errors are one clear
line, never a traceback.

The grammar is in smtpfw.cli_parser; the work is in smtpfw.commands, which
return reports; this module prints them.  A handler imports its command
when it runs, so `smtpfw docs` does not load the server or the compiler.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import replace

from smtpfw.cli_parser import build_parser as _build_parser
from smtpfw.cli_parser import nonnegative  # noqa: F401  (re-exported: the argparse type)
from smtpfw.commands.errors import CommandError, RulesetError
from smtpfw.config import Config, ConfigError, Listener, _hostport
from smtpfw.diagnostics import Severity
from smtpfw.errors import InternalError
from smtpfw.lint_output import format_json, format_text, use_color
from smtpfw.settings import load_settings

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3

log = logging.getLogger("smtpfw")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"smtpfw: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"smtpfw: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return EXIT_ERROR


def build_parser():
    return _build_parser(_HANDLERS)


def _guarded(name: str, config_errors: bool = False):
    """Turn a command's errors into `smtpfw NAME: ...` lines and an exit code
    (ConfigError too if ``config_errors``; else main reports it)."""
    caught = (CommandError, InternalError, ConfigError) if config_errors else (CommandError, InternalError)

    def wrap(handler):
        @functools.wraps(handler)
        def run(args) -> int:
            try:
                return handler(args)
            except caught as err:
                if isinstance(err, RulesetError):
                    sys.stderr.write(format_text(err.diags))
                for line in getattr(err, "problems", None) or [str(err)]:
                    print(f"smtpfw {name}: {line}", file=sys.stderr)
                return EXIT_BUG if isinstance(err, InternalError) else EXIT_ERROR
        return run
    return wrap


# ---- serve and passwd ---------------------------------------------------------

# `smtpfw policy` / `smtpfw milter`: serve, with listeners of that kind.
_KIND_DEFAULT_LISTEN = {"policy": "127.0.0.1:10040", "milter": "127.0.0.1:10041"}


def _serve_config(args, cfg: Config) -> Config:
    """The config with serve's flags applied over it."""
    kind = args.command if args.command in _KIND_DEFAULT_LISTEN else "smtp"
    listen = args.listen
    if not listen and kind != "smtp":
        own = tuple(l for l in cfg.listen if l.kind == kind)
        listen = None if own else [_KIND_DEFAULT_LISTEN[kind]]
        if own:
            cfg = replace(cfg, listen=own)
    if listen:
        listeners = []
        for item in listen:
            host, port = _hostport(item, "--listen")
            listeners.append(Listener(host, port, f"{host}:{port}", kind=kind))
        cfg = replace(cfg, listen=tuple(listeners))
    if args.forward:
        host, port = _hostport(args.forward, "--forward", 25)
        cfg = replace(cfg, delivery=replace(cfg.delivery, mode="forward", forward_host=host, forward_port=port))
    if args.maildir:
        cfg = replace(cfg, delivery=replace(cfg.delivery, mode="maildir", maildir=args.maildir))
    if args.workers is not None:
        cfg = replace(cfg, server=replace(cfg.server, workers=args.workers))
    if args.record:
        cfg = replace(cfg, recording=replace(cfg.recording, enabled=True, path=args.record))
    if args.log_format:
        cfg = replace(cfg, logging=replace(cfg.logging, format=args.log_format))
    return cfg


def cmd_serve(args) -> int:
    """Everything after the config is read goes to the log, in its format
    (one JSON object per line with --log-format json), errors included."""
    from smtpfw import logformat
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw import service
    from smtpfw.server import serve, shared_lists

    cfg, rules = load_settings(args.config, args.rules)
    cfg = _serve_config(args, cfg)
    logformat.setup(cfg.logging.format, cfg.logging.level, sys.stderr)
    with shared_lists(cfg):
        ruleset, diags = compile_ruleset(rules)
        for d in diags:
            log.log(logging.ERROR if d.level is Severity.ERROR else logging.WARNING, "%s", _diagnostic_line(d))
        if ruleset is None:
            log.error("%s: the ruleset has errors; not starting", rules)
            return EXIT_ERROR
        service.release_memory()            # before the workers fork: what the compile dropped
        handed, ruleset = [ruleset], None   # the server's alone from here: a reload lets it go
        try:
            return serve(cfg, handed, rules)
        except ConfigError as err:
            log.error("not starting: %s", err)
            return EXIT_ERROR


def _diagnostic_line(d) -> str:
    where = f"{d.span}: " if d.span else ""
    return f"{where}{d.level.value}[{d.code}] {d.message}" + (f" (help: {d.help})" if d.help else "")


def cmd_passwd(args) -> int:
    import getpass

    from smtpfw.auth import hash_password

    if ":" in args.user or not args.user.strip():
        print("smtpfw passwd: a user name cannot be empty or contain ':'", file=sys.stderr)
        return EXIT_ERROR
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("smtpfw passwd: the passwords differ", file=sys.stderr)
            return EXIT_ERROR
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("smtpfw passwd: empty password", file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.user}:{hash_password(password)}")
    return EXIT_OK


# ---- the commands that return reports -------------------------------------------

@_guarded("lint")
def cmd_lint(args) -> int:
    """Without a PATH, lint the configured ruleset, and say which it is
    (otherwise "no problems found" could be about a file nobody meant)."""
    from smtpfw.commands.lint import lint

    paths = args.paths
    cfg, rules = load_settings(args.config, args.rules)
    if not paths:
        origin = ("--rules" if args.rules else f"rules: in {args.config}" if cfg.rules
                  else "no PATH given: the packaged default ruleset")
        print(f"smtpfw lint: checking {rules} ({origin})", file=sys.stderr)
        paths = [rules]
    report = lint(paths, args.mode, [host for host, _port in cfg.dns_nameservers])
    if args.format == "json":
        sys.stdout.write(format_json(report.diagnostics, report.files))
    else:
        sys.stdout.write(format_text(report.diagnostics, report.sources, color=use_color(args.color, sys.stdout),
                                     summary=True))
    return EXIT_FINDINGS if report.fails(Severity(args.fail_on)) else EXIT_OK


@_guarded("docs")
def cmd_docs(args) -> int:
    from smtpfw.commands.docs import docs

    sys.stdout.write(docs(args.page))
    return EXIT_OK


@_guarded("dry-run", config_errors=True)
def cmd_dry_run(args) -> int:
    from smtpfw.commands.dryrun import dry_run
    from smtpfw.replay.dryrun import format_text as dry_run_text

    report = dry_run(args.sessions, rules=args.rules, config=args.config, baseline=args.baseline,
                     live_dns=args.live_dns, dns=args.dns, examples=args.examples, jobs=args.jobs,
                     progress_stream=sys.stderr)
    sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n" if args.format == "json"
                     else dry_run_text(report))
    return EXIT_FINDINGS if args.fail_on_change and report.changed_sessions else EXIT_OK


@_guarded("stats", config_errors=True)
def cmd_stats(args) -> int:
    from smtpfw.commands.errors import CommandError
    from smtpfw.commands.stats import stats_from_metrics, stats_from_recordings

    if bool(args.metrics) == bool(args.sessions):
        raise CommandError("give recorded sessions (files or folders) or --metrics URL, one of the two")
    report = (stats_from_metrics(args.metrics, rules=args.rules, config=args.config) if args.metrics else
              stats_from_recordings(args.sessions, rules=args.rules, config=args.config, days=args.days,
                                    top=args.top, jobs=args.jobs))
    sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n" if args.format == "json" else report.to_text())
    return EXIT_OK


@_guarded("trace", config_errors=True)
def cmd_trace(args) -> int:
    from smtpfw.commands.trace import SessionSpec, trace

    spec = SessionSpec(ip=args.ip, client_port=args.client_port, port=args.port, helo=args.helo,
                       esmtp=not args.plain_helo, tls=args.tls, auth=args.auth, sender=args.sender,
                       rcpts=args.rcpt, headers=args.header, size=args.size, data=not args.no_data)
    report = trace(spec, session=args.session, rules=args.rules, config=args.config, dns=args.dns,
                   no_dns=args.no_dns, live_dns=args.live_dns)
    sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n" if args.format == "json" else report.to_text())
    return EXIT_OK


@_guarded("test", config_errors=True)
def cmd_test(args) -> int:
    from smtpfw.commands.ruleset_tests import run_tests
    from smtpfw.replay.rulestests import format_suite, format_summary

    report = run_tests(args.paths)
    color = use_color(args.color, sys.stdout)
    for suite in report.suites:
        if suite.ruleset_diags:
            sys.stderr.write(format_text(suite.ruleset_diags))
            print(f"smtpfw test: {suite.rules}: the ruleset has errors", file=sys.stderr)
        elif suite.read_error:
            print(f"smtpfw test: {suite.read_error}", file=sys.stderr)
        elif args.format == "text":
            sys.stdout.write(format_suite(suite, color=color, verbose=args.verbose))
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(format_summary(report, verbose=args.verbose))
    return report.status


@_guarded("import", config_errors=True)
def cmd_import_postfix(args) -> int:
    from smtpfw.commands.import_log import import_postfix
    from smtpfw.replay.postfix import summary

    report = import_postfix(args.maillog, args.output, args.year, stdin=sys.stdin, stdout=sys.stdout)
    print(f"smtpfw import: {summary(args.maillog, report)}", file=sys.stderr)
    if not report.sessions:
        print(f"smtpfw import: {args.maillog}: no Postfix smtpd sessions recognised (is it a Postfix mail log?)",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


@_guarded("import", config_errors=True)
def cmd_import_postfix_config(args) -> int:
    from smtpfw.commands.errors import CommandError
    from smtpfw.importers import import_main_cf

    try:
        result = import_main_cf(args.main_cf, map_dir=args.map_dir)
        written = result.write(args.output, overwrite=args.force)
    except FileExistsError as err:
        raise CommandError(f"{err}: use --force to overwrite") from None
    except OSError as err:
        raise CommandError(f"{getattr(err, 'filename', '') or args.main_cf}: {err.strerror or err}") from None
    sys.stdout.write(result.report_text())
    print(f"smtpfw import: wrote {', '.join(written)}; check it with `smtpfw lint {written[0]}`", file=sys.stderr)
    return EXIT_OK


def _write_import(result, output: str, force: bool) -> int:
    from smtpfw.commands.errors import CommandError

    try:
        written = result.write(output, overwrite=force)
    except FileExistsError as err:
        raise CommandError(f"{err}: use --force to overwrite") from None
    except OSError as err:
        raise CommandError(f"{getattr(err, 'filename', '') or output}: {err.strerror or err}") from None
    sys.stdout.write(result.report_text())
    print(f"smtpfw import: wrote {', '.join(written)}; check it with `smtpfw lint {written[0]}`", file=sys.stderr)
    return EXIT_OK


@_guarded("import", config_errors=True)
def cmd_import_postfwd_config(args) -> int:
    from smtpfw.commands.errors import CommandError
    from smtpfw.importers import import_postfwd_cf

    try:
        result = import_postfwd_cf(args.postfwd_cf)
    except OSError as err:
        raise CommandError(f"{getattr(err, 'filename', '') or args.postfwd_cf}: {err.strerror or err}") from None
    return _write_import(result, args.output, args.force)


@_guarded("import", config_errors=True)
def cmd_import_qpsmtpd_config(args) -> int:
    from smtpfw.commands.errors import CommandError
    from smtpfw.importers import import_qpsmtpd_config

    try:
        result = import_qpsmtpd_config(args.config_dir)
    except OSError as err:
        raise CommandError(f"{getattr(err, 'filename', '') or args.config_dir}: {err.strerror or err}") from None
    return _write_import(result, args.output, args.force)


@_guarded("workbench", config_errors=True)
def cmd_workbench(args) -> int:
    from smtpfw.commands.workbench import workbench_setup

    setup = workbench_setup(rules=args.rules, config=args.config, recordings=args.recordings, listen=args.listen,
                            pid_file=args.pid_file, server_log=args.server_log)
    try:
        from smtpfw.workbench.app import run
        from smtpfw.workbench.bridge import Settings
        from smtpfw.workbench.security import new_token
    except ImportError as err:
        print(f"smtpfw workbench: {err.name or err} is not installed: pip install 'smtpfw[workbench]'",
              file=sys.stderr)
        return EXIT_ERROR
    settings = Settings(rules=setup.rules, config=setup.config, recordings=setup.recordings,
                        pid_file=setup.pid_file, server_log=setup.server_log, nameservers=setup.nameservers)
    token = setup.token or new_token()

    def announce(url: str) -> None:
        print(f"smtpfw workbench: editing {setup.rules}; open {url}", file=sys.stderr, flush=True)

    run(settings, token, setup.host, setup.port, announce)
    return EXIT_OK


_HANDLERS = {"serve": cmd_serve, "policy": cmd_serve, "milter": cmd_serve, "lint": cmd_lint, "passwd": cmd_passwd,
             "docs": cmd_docs, "dry-run": cmd_dry_run, "stats": cmd_stats, "trace": cmd_trace, "test": cmd_test,
             "import postfix": cmd_import_postfix, "import postfix-config": cmd_import_postfix_config,
             "import postfwd-config": cmd_import_postfwd_config, "import qpsmtpd-config": cmd_import_qpsmtpd_config,
             "workbench": cmd_workbench}
