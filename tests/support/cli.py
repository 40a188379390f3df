"""The real `smtpfw` command line, in subprocesses.

    proc = run("lint", "rules/default.rules")          # a finished command
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1")
    srv.wait_for(r"session=")                           # a stderr line, waited for
    srv.stop()

    with serve_with(tmp_path, {"limits": {"idle_timeout": 2}}) as srv:
        ...                                             # one worker on 127.0.0.1:0, Maildir tmp_path/md
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SMTPFW = [sys.executable, "-m", "smtpfw"]


def run(*args, stdin: str | None = None, **kw) -> subprocess.CompletedProcess:
    """`smtpfw ARGS...` to completion (paths may be Path objects), output
    captured as text; ``stdin`` is fed to it; the working directory is the
    repository unless ``cwd`` says otherwise."""
    kw.setdefault("cwd", REPO)
    return subprocess.run(SMTPFW + [str(a) for a in args], capture_output=True, text=True, timeout=60,
                          input=stdin, **kw)


def wait_until(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Serve:
    """`smtpfw serve ...` (or ``command``: policy, milter) in a subprocess;
    waits for its listening line.

    A thread collects stderr, so a test can wait for any later line
    (``wait_for``) without blocking on a pipe."""

    def __init__(self, *args, cwd=None, env=None, command: str = "serve"):
        self.proc = subprocess.Popen(SMTPFW + [command, *map(str, args)], cwd=cwd, env=env,
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        try:
            match = self.wait_for(r"listening on [^ ]+:(\d+)", timeout=20, dead_ok=False)
        except AssertionError:
            self.stop()
            raise AssertionError("serve did not start: " + self.rest) from None
        self.port = int(match.group(1))

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, dead_ok: bool = True) -> re.Match:
        """The first stderr line matching ``pattern``, once it is there."""
        regex = re.compile(pattern)

        def found():
            match = next((m for m in map(regex.search, list(self.lines)) if m), None)
            if match is None and not dead_ok and self.proc.poll() is not None:
                self._reader.join(5)
                match = next((m for m in map(regex.search, list(self.lines)) if m), None)
                if match is None:
                    raise AssertionError(f"serve exited before {pattern!r}")
            return match

        return wait_until(found, timeout, f"{pattern!r} on stderr:\n{self.text}")

    def session_line(self) -> str:
        """The first session's log line (kv or json), once written."""
        return self.wait_for(r'^.*(\bsession=\S+ client=|^\{.*"session": ).*$').group(0)

    def rcpt_code(self, domain: str) -> int:
        """The reply code to RCPT TO:<u@domain>."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            s.ehlo("client.example")
            s.mail("x@y.example")
            return s.rcpt(f"u@{domain}")[0]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL, wait; ``rest`` is then the whole of stderr."""
        return self._end(signal.SIGKILL, 10)

    def __enter__(self) -> "Serve":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int:
        """SIGTERM, wait; ``rest`` is then the whole of stderr."""
        return self._end(signal.SIGTERM, 20)

    def _end(self, sig, wait: float) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(wait)
        finally:
            self._reader.join(10)
            self.rest = self.text


def serve_with(tmp_path, settings: dict, *args) -> Serve:
    """`smtpfw serve` with ``settings`` (the YAML file's sections, as a
    mapping) in ``tmp_path/smtpfw.yaml``: one worker on 127.0.0.1:0, Maildir
    ``tmp_path/md`` unless ``args`` (more command-line flags) say otherwise."""
    cfg = Path(tmp_path) / "smtpfw.yaml"
    cfg.write_text(yaml.safe_dump(settings))
    defaults = {"--listen": "127.0.0.1:0", "--workers": "1", "--maildir": Path(tmp_path) / "md"}
    flags = [str(a) for a in args]
    for flag, value in defaults.items():
        if flag not in flags and not (flag == "--maildir" and "--forward" in flags):
            flags += [flag, str(value)]
    return Serve("--config", cfg, *flags)
