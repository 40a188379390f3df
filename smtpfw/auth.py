"""SMTP AUTH users: a file of ``user:scrypt$...`` lines.

AUTH (PLAIN, LOGIN) is offered only when ``auth.users_file`` is set, and
only after STARTTLS unless ``auth.allow_plaintext`` says otherwise.  Rules
see the result as ``auth`` and ``auth.user`` (e.g. ``accept if auth`` at
rcpt to let authenticated users relay).  `smtpfw passwd USER` prints a line
for the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from smtpfw.config import ConfigError

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return "scrypt${}${}${}${}${}".format(
        _N, _R, _P, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def _verify(stored: str, password: bytes) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, expected)


class Users:
    def __init__(self, entries: dict[str, str]):
        self.entries = entries
        self._verified: set[tuple[str, bytes]] = set()   # (user, sha256(password)) already checked

    @classmethod
    def load(cls, path: str) -> "Users":
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the AUTH users file: {getattr(err, 'strerror', None) or err}") from None
        entries: dict[str, str] = {}
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            user, sep, stored = text.partition(":")
            if not sep or not user or not stored.startswith("scrypt$") or stored.count("$") != 5:
                raise ConfigError(f"{path}:{number}: expected USER:scrypt$... (make one with `smtpfw passwd USER`)")
            entries[user] = stored
        return cls(entries)

    def check(self, login: bytes, password: bytes) -> bool:
        """Whether the login/password pair is right.  A pair that was right
        once is remembered (as a hash), so a busy client costs one scrypt."""
        user = login.decode("utf-8", "replace")
        stored = self.entries.get(user)
        if stored is None:
            return False
        key = (user, hashlib.sha256(password).digest())
        if key in self._verified:
            return True
        if _verify(stored, password):
            self._verified.add(key)
            return True
        return False
