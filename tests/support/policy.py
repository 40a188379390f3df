"""A Postfix policy-delegation client: what Postfix's smtpd sends to smtpfw
policy or postfwd (SMTPD_POLICY_README)."""

from __future__ import annotations

import socket


class PolicyClient:
    """What Postfix's smtpd sends: name=value lines and an empty line."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=10)
        self.buf = b""

    def ask(self, **attrs) -> str:
        attrs.setdefault("request", "smtpd_access_policy")
        self.sock.sendall("".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n")
        while b"\n\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += chunk
        reply, _, self.buf = self.buf.partition(b"\n\n")
        assert reply.startswith(b"action="), reply
        return reply[len(b"action="):].decode()

    def close(self):
        self.sock.close()
