"""The real `smtpfw` command line, in subprocesses.

    proc = run("lint", "rules/default.rules")          # a finished command
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1")
    srv.wait_for(r"session=")                           # a stderr line, waited for
    srv.stop()
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time

SMTPFW = [sys.executable, "-m", "smtpfw"]


def run(*args, **kw) -> subprocess.CompletedProcess:
    """`smtpfw ARGS...` to completion, output captured as text."""
    return subprocess.run(SMTPFW + list(args), capture_output=True, text=True, timeout=60, **kw)


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
    """`smtpfw serve ...` in a subprocess; waits for its listening line.

    A thread collects stderr, so a test can wait for any later line
    (``wait_for``) without blocking on a pipe."""

    def __init__(self, *args, cwd=None, env=None):
        self.proc = subprocess.Popen(SMTPFW + ["serve", *args], cwd=cwd, env=env, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
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

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM, wait; ``rest`` is then the whole of stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self._reader.join(10)
            self.rest = self.text
