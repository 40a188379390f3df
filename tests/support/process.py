"""A server process the tests start on loopback, in a temp dir of its own:
the lifecycle the store harnesses (tests/support/stores.py: PostgreSQL,
MariaDB, slapd) and the scanner harnesses (tests/support/scanners.py:
clamd, spamd) share.

``start`` polls ``_ready`` (a real request) until ``ready_timeout``; a server
that does not come up is an error with the tail of its log.  ``pause`` and
``resume`` are SIGSTOP/SIGCONT to the server's process group *and* every
descendant (PostgreSQL's backends and spamd's children call setsid(), so a
group signal alone would leave them answering); ``kill`` is SIGKILL to all
of them, and waits until every one is gone (a child still dying could
accept a connection); ``start`` again brings it back on the same port with
the same data.  ``stop`` shuts down and removes the temp dir.  Servers are
killed at interpreter exit, and, when started from the main thread, when
the process that started them dies (``setpriv --pdeathsig KILL``).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

HOST = "127.0.0.1"


def which(*names: str, dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")) -> str | None:
    """A program by any of ``names``, on $PATH or in the system's sbin/bin."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in dirs:
            if os.access(f"{d}/{name}", os.X_OK):
                return f"{d}/{name}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _searchable_by_all(path: Path) -> bool:
    """Every directory from / down to ``path`` is o+x (another user can reach into it)."""
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def make_root(prefix: str, owner: pwd.struct_passwd | None) -> Path:
    """A fresh temp dir; short enough for a unix socket path in it, and
    reachable by ``owner`` (who then owns it)."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 60 or (owner is not None and not _searchable_by_all(base)):
        base = Path("/tmp")
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    return root


def descendants(root: int) -> list[int]:
    """The pids of ``root``'s children, their children, ... (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat_text.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _gone(pid: int) -> bool:
    """No such process, or a zombie (its sockets are closed)."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_text.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


_LIVE: set["ServerProcess"] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _kill_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for inst in live:
        try:
            inst.kill()
        finally:
            inst._cleanup()


class ServerProcess:
    """One server process in its own session (process group), with a temp dir."""

    kind = "server"
    host = HOST
    ready_timeout = 30.0
    error: type[Exception] = RuntimeError      # what a failure raises (StoreError, ScannerError)

    def __init__(self, run_as: pwd.struct_passwd | None = None) -> None:
        self.run_as = run_as
        self.root = make_root(f"smtpfw-{self.kind}-", run_as)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.logfile = self.root / f"{self.kind}.log"
        self.startup_seconds: float | None = None     # of the last start
        self._prepared = False
        self._removed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- to be provided by each kind
    def _prepare(self) -> None:
        """Data dir, config files (once, before the first start)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """The server answers a real request."""
        raise NotImplementedError

    def _after_first_start(self) -> None:
        """Users, databases... (once, after the first start)."""

    def _before_start(self) -> None:
        """Before every start (a socket file a killed server left behind...)."""

    def _terminate_signal(self) -> int:
        return signal.SIGTERM

    def _after_kill(self) -> None:
        """Leftovers of a killed server (PostgreSQL's shared memory...)."""

    def _popen_kw(self) -> dict:
        kw: dict = {}
        if self.run_as is not None:
            kw.update(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[],
                      env={**os.environ, "HOME": str(self.root), "USER": self.run_as.pw_name,
                           "LOGNAME": self.run_as.pw_name})
        return kw

    # -- shared
    @property
    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log[-chars:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _fail(self, what: str) -> Exception:
        return self.error(f"{self.kind} on {HOST}:{self.port} ({self.root}): {what}\n"
                          f"--- tail of {self.logfile.name} ---\n{self.log_tail()}")

    def start(self) -> Self:
        if self.running:
            return self
        if self._removed:
            raise self.error(f"{self.kind}: stopped for good (its temp dir is gone); make a new instance")
        try:
            if not self._prepared:
                self._prepare()
            self._before_start()
            argv = self._command()
            # the server dies with us (only when the main thread starts it: the
            # parent-death signal follows the thread that forked)
            setpriv = which("setpriv")
            if setpriv and threading.current_thread() is threading.main_thread():
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            began = time.monotonic()
            with open(self.logfile, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, cwd=self.root, **self._popen_kw())
            deadline = began + self.ready_timeout
            while not self._ready():
                if self.proc.poll() is not None:
                    raise self._fail(f"the server exited (status {self.proc.returncode}) before answering")
                if time.monotonic() > deadline:
                    raise self._fail(f"not answering after {self.ready_timeout:.0f} s")
                time.sleep(0.05)
            self.startup_seconds = time.monotonic() - began
            if not self._prepared:
                self._after_first_start()
                self._prepared = True
        except BaseException:
            self.stop()
            raise
        return self

    def _signal_all(self, sig: int, pids: list[int] | None = None) -> None:
        """``sig`` to the server's process group and every descendant."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in descendants(self.proc.pid) if pids is None else pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        """SIGSTOP the server and its children: connections are accepted by
        the kernel, nothing answers."""
        assert self.running, f"{self.kind} is not running"
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None, f"{self.kind} was never started"
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server mid-run; ``start`` brings it back (same port, same data)."""
        if self.proc is None:
            return
        # the descendants first: once the server is reaped they are orphans
        # (re-parented to init) and no longer found under its pid
        pids = descendants(self.proc.pid)
        self._signal_all(signal.SIGCONT, pids)
        self._signal_all(signal.SIGKILL, pids)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        wait_gone(pids, 10)
        self._after_kill()

    def stop(self) -> None:
        """Shut down (gracefully, else SIGKILL after 10 s) and remove the temp dir."""
        try:
            if self.running:
                assert self.proc is not None
                self._signal_all(signal.SIGCONT)
                self._signal_all(self._terminate_signal())
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()   # stragglers too
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._removed = True
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self.port} {'running' if self.running else 'stopped'}>"
