"""The baseline of issue 8: a bare aiosmtpd server that accepts and discards.

No policy, no DNS, no delivery: aiosmtpd's ``Controller`` + ``SMTP`` with a
handler whose ``handle_DATA`` answers "250 OK".  One process, aiosmtpd's
defaults (the standard asyncio event loop).  ``bench/run.py`` starts it and
measures it with the same load as smtpfw in the same run.

    python bench/baseline_server.py --listen 127.0.0.1:2526
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:2526", metavar="HOST:PORT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    controller = Controller(Discard(), hostname=host or "127.0.0.1", port=int(port))
    controller.start()
    print(f"baseline aiosmtpd listening on {controller.hostname}:{controller.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
