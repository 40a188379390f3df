"""SASL PLAIN (RFC 4616) and LOGIN exchanges for SMTP AUTH (RFC 4954),
as a small state machine with no I/O.

The SMTP front end sends each ``challenge`` as a 334 reply and feeds the
client's line to ``respond``; when ``challenge`` is None the exchange is
over, with either ``login``/``password`` or an ``error`` reply.  Keeping the
exchange apart from the socket is what lets the password check run off the
event loop and lets the exchange be tested without a server.
"""

from __future__ import annotations

import base64
import binascii

from smtpfw import replies

MECHANISMS = ("PLAIN", "LOGIN")
MAX_RESPONSE = 12288          # RFC 4954 4: a client response line may be this long
_USERNAME, _PASSWORD = "VXNlcm5hbWU6", "UGFzc3dvcmQ6"     # base64 "Username:", "Password:"


class Exchange:
    def __init__(self, mechanism: str, initial: str = "") -> None:
        self.mechanism = mechanism
        self.login = b""
        self.password = b""
        self.error: str | None = None
        self.challenge: str | None = None
        self._step = 0
        if mechanism == "PLAIN":
            if initial:
                self._plain(initial.encode("ascii", "replace"))
            else:
                self.challenge = ""
        elif initial:
            self._login_user(initial.encode("ascii", "replace"))
        else:
            self.challenge = _USERNAME

    def respond(self, line: bytes) -> None:
        """The client's answer to the current challenge."""
        self.challenge = None
        if line == b"*":
            self.error = replies.AUTH_ABORTED
        elif self.mechanism == "PLAIN":
            self._plain(line)
        elif self._step == 0:
            self._login_user(line)
        else:
            self.password = self._decode(line) or b""

    def _plain(self, blob: bytes) -> None:
        data = self._decode(blob)
        if data is None:
            return
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            self.error = replies.AUTH_MALFORMED
            return
        authzid, self.login, self.password = parts
        if authzid and authzid != self.login:
            self.error = replies.AUTH_FAILED     # acting for another user is not offered
            self.login = self.password = b""

    def _login_user(self, blob: bytes) -> None:
        user = self._decode(blob)
        if user is None:
            return
        self.login, self._step, self.challenge = user, 1, _PASSWORD

    def _decode(self, blob: bytes) -> bytes | None:
        if len(blob) > MAX_RESPONSE:
            self.error = replies.AUTH_TOO_LONG
            return None
        if blob == b"=":
            return b""
        try:
            return base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            self.error = replies.AUTH_BAD_BASE64
            return None
