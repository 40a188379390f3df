"""Run the real smtpfw server on a loopback port, in a background thread.

    with running_server(rules=RULES_TEXT, maildir=tmp_path / "md") as srv:
        smtplib.SMTP("127.0.0.1", srv.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from smtpfw.config import Config, Listener
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.server import Server

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


class RunningServer:
    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.server = server
        self.loop = loop
        self.thread = thread

    @property
    def port(self) -> int:
        return self.server.ports[0]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop thread and return its result."""
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn, *args), self.loop)
        return fut.result(30)

    def reload(self):
        return self.call(self.server.reload)


async def _as_coro(fn, *args):
    result = fn(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result


@contextlib.contextmanager
def running_server(rules: str | os.PathLike | None = None, *, rules_text: str | None = None,
                   config: Config | None = None, dns=None, forward_to=None, **overrides):
    """Start a server; ``rules`` is a path, ``rules_text`` an inline ruleset
    (written to a temp file so includes and relative lists work from cwd);
    ``forward_to`` (a Downstream, or a port on 127.0.0.1) selects forward mode."""
    if forward_to is not None:
        overrides.update(delivery_mode="forward", forward_host="127.0.0.1",
                         forward_port=getattr(forward_to, "port", forward_to))
    tmpdir = tempfile.mkdtemp(prefix="smtpfw-test-")
    if rules_text is not None:
        rules = os.path.join(tmpdir, "test.rules")
        Path(rules).write_text(rules_text)
    rules = str(rules or REPO / "rules" / "default.rules")
    cfg = config or Config()
    cfg = replace(cfg, listen=(Listener("127.0.0.1", 0, "test"),), workers=1,
                  maildir=overrides.pop("maildir", os.path.join(tmpdir, "maildir")),
                  # a state file of its own unless the test names one (a pass cache or a
                  # limit must not carry over from another test)
                  state_store=overrides.pop("state_store", cfg.state_store if cfg.state_store != Config().state_store
                                            else os.path.join(tmpdir, "state.db")),
                  hostname=overrides.pop("hostname", "mx.test"))
    if dns is not None:
        cfg = replace(cfg, dns_nameservers=(dns.address,))
    if overrides:
        cfg = replace(cfg, **overrides)
    ruleset, diags = compile_ruleset(rules)
    assert ruleset is not None, diags
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def run():
        asyncio.set_event_loop(loop)
        server = Server(cfg, ruleset, rules, loop)
        holder["server"] = server
        try:
            loop.run_until_complete(server.start())
        except BaseException as err:
            holder["error"] = err
            started.set()
            return
        started.set()
        loop.run_forever()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    if "error" in holder:
        raise holder["error"]
    running = RunningServer(holder["server"], loop, thread)
    running.tmpdir = tmpdir
    try:
        yield running
    finally:
        fut = asyncio.run_coroutine_threadsafe(holder["server"].stop(grace=1.0), loop)
        try:
            fut.result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def maildir_messages(path) -> list[bytes]:
    new = Path(path) / "new"
    if not new.is_dir():
        return []
    return [p.read_bytes() for p in sorted(new.iterdir())]


def recorded_sessions(path, count: int, timeout: float = 5.0) -> list[dict]:
    """The session records in the folder ``path`` (a server's
    ``recording_path``), once there are ``count`` of them: a record is
    written when its session has ended, which the client may not wait for."""
    from smtpfw.recording import read_records
    from tests.support.cli import wait_until

    files = lambda: sorted(Path(path).glob("*.jsonl"))  # noqa: E731
    wait_until(lambda: sum(f.read_bytes().count(b"\n") for f in files()) >= count, timeout,
               f"{count} session record(s) in {path}")
    return [r for f in files() for r in read_records(str(f))]


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6)."""
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
