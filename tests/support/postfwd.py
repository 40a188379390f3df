"""postfwd2 (Debian's ``postfwd`` package) on a loopback port, in a folder
of its own: the policy server smtpfw's postfwd importer is checked against
(tests/test_import_postfwd.py) and bench/policy_bench.py measures."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.postfix import in_namespace

POSTFWD = "/usr/sbin/postfwd2"


def postfwd_available() -> str | None:
    """Why postfwd cannot run here, or None."""
    if not os.path.exists(POSTFWD):
        return "Debian's postfwd package is not installed (.ci/run installs it)"
    try:
        pwd.getpwnam("postfw")
    except KeyError:
        return "there is no postfw user (the postfwd package makes it)"
    if os.geteuid() != 0:
        return "postfwd2 must start as root to take its user"
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


class Postfwd:
    """postfwd2 on a loopback port.  postfwd2 has no foreground mode (its
    --nodaemon reads requests from stdin): it daemonizes (setsid) and writes
    its pid file; we read the pid from there and stop its process group."""

    def __init__(self, tmp: Path, config: Path, port: int, resolv: Path | None = None, args: list[str] | tuple[str, ...] = ()):
        self.name = "postfwd"
        self.dir = tmp / "postfwd"
        self.dir.mkdir()
        shutil.chown(self.dir, "postfw", "postfw")
        self.pid_file = self.dir / "master.pid"
        self.log_path = tmp / "postfwd.log"
        self.pid = 0
        self.pgid = 0
        argv = [POSTFWD, "--file", str(config), "--interface", "127.0.0.1", "--port", str(port),
                "--user", "postfw", "--group", "postfw", "--pidfile", str(self.pid_file),
                "--cache_socket", f"unix::{self.dir / 'cache.sock'}", *args]
        self.argv = in_namespace(resolv, argv) if resolv is not None else argv
        self.port = port

    def start(self) -> None:
        with open(self.log_path, "wb") as out:
            proc = subprocess.run(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=60, start_new_session=True)
        if proc.returncode != 0:
            raise RuntimeError(f"postfwd2 exited with {proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        deadline = time.monotonic() + 15
        while not self.pid:
            try:
                self.pid = int(self.pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                if time.monotonic() > deadline:
                    raise RuntimeError("postfwd2 wrote no pid file") from None
                time.sleep(0.05)
        self.pgid = os.getpgid(self.pid)
        # The pid file is written before the policy server listens: wait for
        # the port too (a request in between was refused once in a full run).
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                self.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfwd2 does not listen on port {self.port}; see {self.log_path}") from None
                time.sleep(0.05)

    def check(self) -> None:
        if self.pid and not os.path.exists(f"/proc/{self.pid}"):
            raise RuntimeError(f"postfwd2 (pid {self.pid}) is gone; see {self.log_path}")

    def stop(self) -> None:
        if not self.pid:
            return
        if self.pgid == self.pid and self.pgid != os.getpgrp():     # its own group (daemonize's setsid)
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while _group_alive(self.pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not _group_alive(self.pgid):
                    break
        else:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid = 0


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in process group ``pgid``."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
