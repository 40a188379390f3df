"""Save's other half: ask the running server to reload (SIGHUP to the pid in
its pid file, as `kill -HUP $(cat server.pid_file)` does) and tell whether
it took the new version.

The version is the ruleset's hash, computed by the compiler from the rule
and list files (smtpfw.lang.compiler: the same function the server runs),
so the workbench knows which version the server should report after a
reload.  Whether it did is read from the server's log (``--server-log``):
every process that reloads logs ``rules reloaded from PATH: version HASH``,
one that refuses logs ``reload refused, keeping ruleset HASH: ...``
(smtpfw.server).  The metrics endpoint does not carry the version, so
without a log file the page says the signal was sent and that it cannot see
the answer.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass

_RELOADED = re.compile(r"rules reloaded from .*?: version ([0-9a-f]{6,64})")
_REFUSED = re.compile(r"reload refused, keeping ruleset ([0-9a-f]{6,64})(.*)")
_STARTED = re.compile(r"listening on .*?rules .*? \(version ([0-9a-f]{6,64})\)")
WAIT = 20.0            # seconds after the signal before "no answer"
MAX_LOG_READ = 1 << 20


class ReloadError(Exception):
    pass


@dataclass
class Pending:
    pid: int
    expected: str
    offset: int
    at: float


class Reloader:
    def __init__(self, pid_file: str | None, server_log: str | None):
        self.pid_file = pid_file
        self.server_log = server_log
        self.pending: Pending | None = None

    def describe(self) -> dict:
        return {"pid_file": self.pid_file, "server_log": self.server_log,
                "running_version": self.running_version()}

    def read_pid(self) -> int:
        if not self.pid_file:
            raise ReloadError("no pid file: start the workbench with --config (server.pid_file) or --pid-file")
        try:
            with open(self.pid_file, encoding="ascii") as fh:
                pid = int(fh.read(32).strip())
        except (OSError, ValueError) as err:
            raise ReloadError(f"cannot read the server's pid from {self.pid_file}: "
                              f"{getattr(err, 'strerror', None) or err}") from None
        if pid <= 1:
            raise ReloadError(f"{self.pid_file} does not hold a server's pid")
        if not _is_smtpfw(pid):
            raise ReloadError(f"process {pid} (from {self.pid_file}) is not an smtpfw server: the pid file is "
                              "stale (is the server running?); nothing was signalled")
        return pid

    def signal(self, expected: str) -> dict:
        """SIGHUP the server; ``expected`` is the version it should report."""
        pid = self.read_pid()
        offset = self._log_size()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise ReloadError(f"no process {pid} (from {self.pid_file}): is the server running?") from None
        except PermissionError:
            raise ReloadError(f"not allowed to signal process {pid}: run the workbench as the server's user") from None
        self.pending = Pending(pid, expected, offset, time.monotonic())
        return self.status()

    def status(self) -> dict:
        p = self.pending
        if p is None:
            return {"state": "idle", "running_version": self.running_version()}
        out = {"pid": p.pid, "expected": p.expected}
        if not self.server_log:
            return {**out, "state": "signalled",
                    "note": "the signal was sent; give --server-log to see whether the server took the version"}
        lines = self._log_lines(p.offset)
        reloaded = [m.group(1) for m in map(_RELOADED.search, lines) if m]
        refused = [line.strip() for line in lines if _REFUSED.search(line)]
        if refused:
            return {**out, "state": "refused", "lines": refused[-5:]}
        if p.expected in reloaded:
            return {**out, "state": "reloaded", "processes": reloaded.count(p.expected), "version": p.expected}
        if reloaded:
            return {**out, "state": "other", "version": reloaded[-1]}
        if time.monotonic() - p.at > WAIT:
            return {**out, "state": "no answer", "note": f"no reload line in {self.server_log} after {WAIT:.0f} s"}
        return {**out, "state": "waiting"}

    def running_version(self) -> str | None:
        """The version the server last said it runs, from its log."""
        if not self.server_log:
            return None
        version = None
        for line in self._log_lines(max(0, self._log_size() - MAX_LOG_READ)):
            m = _RELOADED.search(line) or _STARTED.search(line)
            if m:
                version = m.group(1)
        return version

    def _log_size(self) -> int:
        if not self.server_log:
            return 0
        try:
            return os.path.getsize(self.server_log)
        except OSError:
            return 0

    def _log_lines(self, offset: int) -> list[str]:
        if not self.server_log:
            return []
        try:
            with open(self.server_log, "rb") as fh:
                if offset > os.fstat(fh.fileno()).st_size:      # rotated: read the new file whole
                    offset = 0
                fh.seek(offset)
                data = fh.read(MAX_LOG_READ)
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()


def _is_smtpfw(pid: int) -> bool:
    """Whether process ``pid`` runs smtpfw (its command line names it): a
    stale pid file may name a process that has nothing to do with it.
    Where /proc cannot say (not Linux), it is taken to be."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read(4096).split(b"\0")
    except FileNotFoundError:
        return False                    # no such process: os.kill would say so too
    except OSError:
        return True
    return any(b"smtpfw" in arg for arg in argv)
