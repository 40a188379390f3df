"""Fallback SMTP sink, used by bench/run.py only when Postfix's smtp-sink
cannot be found or installed.  Accepts everything, discards it, and prints
smtp-sink-style running counters ("sess=N quit=N mesg=N\\r") to stdout.

    python bench/pysink.py 127.0.0.1:2527
"""

from __future__ import annotations

import asyncio
import sys

counts = {"sess": 0, "quit": 0, "mesg": 0}


def _show() -> None:
    sys.stdout.write(f"sess={counts['sess']} quit={counts['quit']} mesg={counts['mesg']}\r")
    sys.stdout.flush()


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 pysink ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-pysink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                counts["mesg"] += 1
                _show()
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                counts["quit"] += 1
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
            if reader._buffer.find(b"\n") == -1:       # flush at the end of a pipelined group
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        counts["sess"] += 1
        _show()
        writer.close()


async def main(address: str) -> None:
    host, _, port = address.rpartition(":")
    server = await asyncio.start_server(session, host or "127.0.0.1", int(port), limit=1 << 20, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
