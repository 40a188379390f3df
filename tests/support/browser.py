"""A real Chromium for the browser tests: Debian's ``chromium`` driven by
its ``chromium-driver`` through Selenium, headless, with a fresh profile
and none of the background traffic (updates, sync, safe browsing) that a
closed network makes it wait on.  No browser is downloaded: the driver
and the browser are the system's, named by path (Selenium Manager is not
asked).

    with Browser() as b:
        b.get("http://127.0.0.1:8025/?token=...")
        b.wait_for("#problems li")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Self

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
         "--metrics-recording-only", "--no-default-browser-check", "--password-store=basic",
         "--window-size=1500,950"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "workbench"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


class Browser:
    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="smtpfw-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        self.driver.set_page_load_timeout(20)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def q(self, css: str):
        return self.driver.find_element("css selector", css)

    def qa(self, css: str) -> list:
        return self.driver.find_elements("css selector", css)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, condition, timeout: float = 10.0, what: str = ""):
        """Poll until ``condition`` (a CSS selector that must match, or a
        function of the browser) gives something true; that value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.qa(condition) if isinstance(condition, str) else condition(self)
            except Exception as err:  # noqa: BLE001 -- a stale element while the page redraws
                last = err
            if last and not isinstance(last, Exception):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition!r} (last: {last!r})")
            time.sleep(0.05)

    def screenshot(self, name: str) -> None:
        """docs/workbench/NAME.png, only when SMTPFW_SCREENSHOTS=1 (so a test run does not change the tree)."""
        if os.environ.get("SMTPFW_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the processes the browser tests talk to ------------------------------------------

class Process:
    """``python -m smtpfw ARGS`` with stderr in ``log`` (a file: the
    workbench reads the server's log from it); ``wait_for`` a log line."""

    def __init__(self, args: list, log: Path, env: dict | None = None, cwd=None):
        import subprocess
        import sys

        self.log = Path(log)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "smtpfw", *map(str, args)], stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=fh, env={**os.environ, **(env or {})},
                                         cwd=cwd or Path(__file__).resolve().parents[2])

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 20.0):
        import re

        regex = re.compile(pattern)

        def found():
            m = regex.search(self.text())
            if m is None and self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()}")
            return m
        deadline = time.monotonic() + timeout
        while True:
            m = found()
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), by this process's own id."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_workbench(*args, log: Path, token: str) -> tuple[Process, str]:
    """`smtpfw workbench ARGS --listen 127.0.0.1:0` (unless ARGS say where);
    the process and the base URL it printed (without the token)."""
    if "--listen" not in args:
        args = (*args, "--listen", "127.0.0.1:0")
    proc = Process(["workbench", *args], log, env={"SMTPFW_WORKBENCH_TOKEN": token})
    m = proc.wait_for(r"open (http://\S+?)/\?token=(\S+)")
    assert m.group(2) == token
    return proc, m.group(1)
