"""One event loop in a background thread: how the test servers (DNS,
downstream SMTP) run beside synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable


def start_loop_thread(setup: Callable[[], Awaitable], teardown: Callable[[], Awaitable],
                      name: str, timeout: float = 10.0) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Run ``setup()`` on a new loop in a new thread, then serve until the
    loop is stopped, then ``teardown()``.  A setup failure is raised here."""
    ready = threading.Event()
    holder: dict = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        try:
            loop.run_until_complete(setup())
        except BaseException as exc:  # reported to the caller below
            holder["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(teardown())
            loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait(timeout)
    if "error" in holder:
        thread.join(timeout)
        raise holder["error"]
    return holder["loop"], thread


def stop_loop_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float = 10.0) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
