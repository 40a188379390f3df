"""A real redis-server (Debian's package) on a loopback port, in a temp dir.

    with RedisInstance() as r:
        open_store(r.url)

No persistence (``--save "" --appendonly no``): the data lives as long as
the process.  ``pause``/``resume`` (SIGSTOP/SIGCONT) make it a server that
does not answer; ``kill`` and ``start`` (same port) a server that is gone
and comes back.  ``RedisClusterInstances``: three such servers made
into a Redis Cluster (three masters, no replicas) with redis-cli.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.cli import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> str | None:
    """Why redis-server cannot run here, or None."""
    if not Path(REDIS_SERVER).exists():
        return "Debian's redis-server package is not installed (.ci/run installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisInstance:
    def __init__(self, *extra: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="smtpfw-redis-"))
        self.port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> "RedisInstance":
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
             "--logfile", str(self.root / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

        def answering() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"redis-server exited: {self.log[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answering, 15, "redis-server answering")
        return self

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "RedisInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisClusterInstances:
    def __init__(self, nodes: int = 3) -> None:
        # the cluster bus on a free port of its own (by default it is the
        # port + 10000, which a free port above 55535 does not have)
        self.nodes = [RedisInstance("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
                      for _ in range(nodes)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def __enter__(self) -> "RedisClusterInstances":
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)

            def ready(node: RedisInstance) -> bool:
                out = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(node.port), "cluster",
                                      "info"], capture_output=True, text=True, timeout=5).stdout
                return "cluster_state:ok" in out
            for node in self.nodes:
                wait_until(lambda: ready(node), 15, "the cluster ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            node.__exit__()
