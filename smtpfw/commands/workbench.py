"""`smtpfw workbench`: what it will serve, checked before it starts: the
ruleset (and its folder, the only one the workbench reads or writes), the
recordings, the server's pid file and log, the address and the token."""

from __future__ import annotations

import os
from dataclasses import dataclass

from smtpfw.commands.errors import CommandError
from smtpfw.config import _hostport
from smtpfw.settings import load_settings

DEFAULT_LISTEN = "127.0.0.1:8025"
TOKEN_ENV = "SMTPFW_WORKBENCH_TOKEN"


@dataclass(frozen=True)
class WorkbenchSetup:
    rules: str
    config: str | None
    recordings: str | None
    pid_file: str | None
    server_log: str | None
    nameservers: tuple[str, ...]
    host: str
    port: int
    token: str | None          # from the environment; None: a new one


def workbench_setup(*, rules: str | None = None, config: str | None = None, recordings: str | None = None,
                    listen: str | None = None, pid_file: str | None = None, server_log: str | None = None,
                    environ: dict | None = None) -> WorkbenchSetup:
    """The workbench's settings from its flags and the config: the config's
    rules, recording path and server.pid_file unless a flag names them."""
    cfg, rules_path = load_settings(config, rules)
    if not os.path.isfile(rules_path):
        raise CommandError(f"{rules_path}: no such ruleset file")
    if not rules_path.endswith(".rules"):
        raise CommandError(f"{rules_path}: a ruleset file's name ends in .rules")
    if recordings is None and config and os.path.isdir(cfg.recording.path):
        recordings = cfg.recording.path
    if recordings is not None and not os.path.isdir(recordings):
        raise CommandError(f"--recordings {recordings}: no such folder")
    host, port = _hostport(listen or DEFAULT_LISTEN, "--listen")
    token = (environ if environ is not None else os.environ).get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise CommandError(f"{TOKEN_ENV}: a token has at least 16 characters")
    return WorkbenchSetup(rules=rules_path, config=config, recordings=recordings,
                          pid_file=pid_file or cfg.server.pid_file or None, server_log=server_log,
                          nameservers=tuple(h for h, _p in cfg.dns.nameservers), host=host.strip("[]"), port=port,
                          token=token)
