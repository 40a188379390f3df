"""SMTP AUTH users: a file of ``user:scrypt$...`` lines.

AUTH (PLAIN, LOGIN) is offered only when ``auth.users_file`` is set, and
only after STARTTLS unless ``auth.allow_plaintext`` says otherwise.  Rules
see the result as ``auth`` and ``auth.user`` (e.g. ``accept if auth`` at
rcpt to let authenticated users relay).  `smtpfw passwd USER` prints a line
for the file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from smtpfw.config import ConfigError

_N, _R, _P = 2**14, 8, 1
# A stored hash no password matches: unknown users are checked against it, so
# a failure costs one scrypt whoever the user is (no enumeration by timing).
_DUMMY = "scrypt${}${}${}${}${}".format(_N, _R, _P, base64.b64encode(b"\0" * 16).decode(),
                                        base64.b64encode(b"\1" * 64).decode())
# scrypt (16 MiB, ~50 ms) runs on these threads, never on the event loop; a
# queue longer than this answers "try later" instead of piling up work.
HASH_THREADS = 2
MAX_QUEUED = 32


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
        self._pool: ThreadPoolExecutor | None = None
        self._queued = 0

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
        once is remembered (as a hash), so a busy client costs one scrypt;
        every failure costs one scrypt, known user or not."""
        user = login.decode("utf-8", "replace")
        stored = self.entries.get(user)
        key = (user, hashlib.sha256(password).digest())
        if stored is not None and key in self._verified:
            return True
        ok = _verify(stored or _DUMMY, password) and stored is not None
        if ok:
            self._verified.add(key)
        return ok

    async def check_async(self, login: bytes, password: bytes) -> bool | None:
        """``check`` on a hashing thread; None when too many checks are queued
        (the caller answers 454: try again later)."""
        if self._queued >= MAX_QUEUED:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="smtpfw-auth")
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.check, login, password)
        finally:
            self._queued -= 1


class AuthThrottle:
    """Failed AUTH attempts per client network, across connections (Postfix
    anvil's smtpd_client_auth_rate_limit): past ``limit`` failures within
    ``window`` seconds, AUTH is refused without a password check until the
    oldest failure ages out.  Bounded: the least recently failed networks are
    forgotten first."""

    MAX_CLIENTS = 10000

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def blocked(self, key: str | None) -> bool:
        if key is None or self.limit <= 0:
            return False
        return len(self._recent(key)) >= self.limit

    def failed(self, key: str | None) -> None:
        if key is None:
            return
        times = self._recent(key)
        times.append(time.monotonic())
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self.MAX_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, key: str) -> list[float]:
        cutoff = time.monotonic() - self.window
        times = [t for t in self._failures.get(key, ()) if t > cutoff]
        if not times:
            self._failures.pop(key, None)
        return times
