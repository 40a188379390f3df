"""The null policy service of bench/policy_bench.py when no C compiler is
found (bench/null_policy.c is the one it prefers): answers every Postfix
policy request ``action=DUNNO`` at once, without looking at it.

    python bench/null_policy.py 127.0.0.1 PORT
"""

from __future__ import annotations

import asyncio
import sys

ANSWER = b"action=DUNNO\n\n"


class NullPolicy(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.last = b""

    def data_received(self, data: bytes) -> None:
        answers = (self.last + data).count(b"\n\n")
        self.last = data[-1:]
        if answers:
            self.transport.write(ANSWER * answers)


async def main(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(NullPolicy, host, port, backlog=1024)
    print(f"null policy listening on {host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
