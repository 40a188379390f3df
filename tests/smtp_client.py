"""A raw-socket SMTP client for the malformed cases smtplib will not send."""

from __future__ import annotations

import socket


class RawClient:
    def __init__(self, address, timeout: float = 5.0, source: str | None = None):
        self.sock = socket.create_connection(address, timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def reply(self) -> str:
        """One whole (possibly multi-line) reply, as its last line."""
        while True:
            line = self.line()
            if len(line) < 4 or line[3] != "-":
                return line

    def cmd(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            data = self.sock.recv(1)
        except (ConnectionError, socket.timeout):
            return True
        return data == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
