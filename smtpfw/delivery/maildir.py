"""Deliver into a local Maildir (one file per message, all recipients).

The classic Maildir protocol: write ``tmp/<unique>``, flush and fsync it,
hard-link (or rename) it into ``new/``, fsync ``new/``, and only then say 250.
Any ``OSError`` on the way yields 451 4.3.0 and leaves nothing in ``new/``.
The bytes are written exactly as received: no ``Delivered-To:``/
``Return-Path:`` is added.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
import time

from smtpfw.delivery.message import DeliveryResult, Message
from smtpfw.paths import writable_folder
from smtpfw.pid import pid

log = logging.getLogger("smtpfw.delivery.maildir")

_COUNTER = itertools.count(1)      # next() is atomic under the GIL
_SUBDIRS = ("tmp", "new", "cur")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# link() unsupported on this file system -> fall back to rename()
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                   getattr(errno, "ENOSYS", errno.EPERM)}


def _safe_hostname() -> str:
    # Maildir spec: "/" -> \057 and ":" -> \072 in the host part.
    host = socket.gethostname() or "localhost"
    return host.replace("/", r"\057").replace(":", r"\072")


def prepare_maildir(path: str) -> None:
    """Create the Maildir (tmp/new/cur, mode 0700) and prove it writable,
    at start-up: an unusable one would otherwise answer every message 451.
    Raises OSError."""
    writable_folder(path, 0o700)
    for sub in _SUBDIRS:
        writable_folder(os.path.join(path, sub), 0o700)


class MaildirDelivery:
    """``MaildirDelivery(path)``: a single catch-all Maildir.

    ``path/{tmp,new,cur}`` are created (mode 0o700) on first use if missing;
    a failure to create them is a 451 for that message, retried next time.
    Blocking file I/O runs in ``asyncio.to_thread``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tmp = os.path.join(self.path, "tmp")
        self._new = os.path.join(self.path, "new")
        self._ready = False
        self._host = _safe_hostname()

    def __repr__(self) -> str:
        return f"MaildirDelivery({self.path!r})"

    async def deliver(self, msg: Message) -> DeliveryResult:
        try:
            name = await asyncio.to_thread(self._deliver_sync, msg.data)
        except OSError as exc:
            log.error("maildir delivery to %s failed: %s", self.path, exc)
            reason = exc.strerror or exc.__class__.__name__
            return DeliveryResult(451, "4.3.0", f"local delivery failed: {reason}; try again later")
        except Exception:  # noqa: BLE001 - deliver() must never raise
            log.exception("maildir delivery to %s failed", self.path)
            return DeliveryResult(451, "4.3.0", "local delivery failed: internal error; try again later")
        return DeliveryResult(250, "2.0.0", f"Delivered as {name}")

    async def close(self) -> None:
        return None

    # -- blocking part (worker thread) -----------------------------------

    def _ensure_dirs(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for sub in _SUBDIRS:
            try:
                os.mkdir(os.path.join(self.path, sub), 0o700)
            except FileExistsError:
                if not os.path.isdir(os.path.join(self.path, sub)):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                             os.path.join(self.path, sub)) from None
        self._ready = True

    def _unique(self) -> str:
        ns = time.time_ns()
        sec, usec = divmod(ns // 1000, 1_000_000)
        return f"{sec}.M{usec}P{pid()}Q{next(_COUNTER)}.{self._host}"     # a forked worker's own pid

    def _deliver_sync(self, data: bytes) -> str:
        if not self._ready:
            self._ensure_dirs()
        name = self._unique()
        tmp = os.path.join(self._tmp, name)
        new = os.path.join(self._new, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        except FileNotFoundError:
            # Maildir removed under us: recreate once.
            self._ensure_dirs()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        in_new = False
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, new)
                in_new = True
                os.unlink(tmp)
            except OSError as exc:
                if in_new or exc.errno not in _NO_LINK_ERRNOS:
                    raise
                os.rename(tmp, new)      # no hard links here: rename instead
                in_new = True
            dfd = os.open(self._new, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            for path in (new, tmp) if in_new else (tmp,):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        return name
