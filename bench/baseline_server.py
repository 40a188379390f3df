"""The baseline of issue 8: a bare aiosmtpd server that accepts and discards.

No policy, no DNS, no delivery: aiosmtpd's ``Controller`` + ``SMTP`` with a
handler whose ``handle_DATA`` answers "250 OK".  One process, aiosmtpd's
defaults (the standard asyncio event loop).  ``bench/run.py`` starts it and
measures it with the same load as smtpfw in the same run.

    python bench/baseline_server.py --listen 127.0.0.1:2526
    python bench/baseline_server.py --tls-cert cert.pem --tls-key key.pem   # offers STARTTLS

With ``--tls-cert`` (workload d of issue 21, bench/tls_bench.py) aiosmtpd
offers STARTTLS with an ``ssl.SSLContext`` made as smtpfw makes its own
(``ssl.create_default_context(Purpose.CLIENT_AUTH)`` + the certificate).
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller


class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:2526", metavar="HOST:PORT")
    p.add_argument("--tls-cert", help="PEM certificate (chain): offer STARTTLS")
    p.add_argument("--tls-key", help="PEM private key (default: in --tls-cert)")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    smtp_kwargs = {}
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key or None)
        smtp_kwargs["tls_context"] = ctx
    controller = Controller(Discard(), hostname=host or "127.0.0.1", port=int(port), **smtp_kwargs)
    controller.start()
    print(f"baseline aiosmtpd listening on {controller.hostname}:{controller.port}"
          + (" (STARTTLS)" if args.tls_cert else ""), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
