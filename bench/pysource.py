"""Fallback load generator, used by bench/run.py only when Postfix's
smtp-source cannot be found or installed.  Takes the subset of smtp-source's
options the benchmark uses (-s sessions, -m messages, -l payload length,
-f from, -t to, -M helo name) and sends one message per connection.
Exits 1 at the first unexpected reply, like smtp-source without -A.

    python bench/pysource.py -s 20 -m 5000 -l 2048 -f a@x -t b@y 127.0.0.1:2525
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def payload(length: int) -> bytes:
    line = b"X" * 78 + b"\r\n"
    body = (line * (length // 80 + 1))[:length]
    return body if body.endswith(b"\r\n") else body + b"\r\n"


async def one(host: str, port: int, helo: bytes, sender: bytes, rcpt: bytes, body: bytes) -> None:
    reader, writer = await asyncio.open_connection(host, port)

    async def expect(prefix: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line.startswith(prefix):
                raise RuntimeError(f"unexpected reply {line!r}")
            if line[3:4] != b"-":
                return

    try:
        await expect(b"220")
        writer.write(b"HELO " + helo + b"\r\n")
        await expect(b"250")
        writer.write(b"MAIL FROM:<" + sender + b">\r\n")
        await expect(b"250")
        writer.write(b"RCPT TO:<" + rcpt + b">\r\n")
        await expect(b"250")
        writer.write(b"DATA\r\n")
        await expect(b"354")
        writer.write(b"From: <" + sender + b">\r\nTo: <" + rcpt + b">\r\nSubject: bench\r\n\r\n"
                     + body + b".\r\n")
        await expect(b"250")
        writer.write(b"QUIT\r\n")
        await expect(b"221")
    finally:
        writer.close()


async def main(args) -> int:
    host, _, port = args.target.rpartition(":")
    body = payload(args.l)
    left = args.m

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one(host, int(port), args.M.encode(), args.f.encode(), args.t.encode(), body)

    try:
        await asyncio.gather(*(worker() for _ in range(args.s)))
    except Exception as err:  # noqa: BLE001 - report and fail like smtp-source
        print(f"pysource: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for opt, default in (("-s", 1), ("-m", 1), ("-l", 0)):
        p.add_argument(opt, type=int, default=default)
    p.add_argument("-f", default="from@example.org")
    p.add_argument("-t", default="to@example.net")
    p.add_argument("-M", default="loadgen.example.org")
    p.add_argument("target")
    sys.exit(asyncio.run(main(p.parse_args())))
