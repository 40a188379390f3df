"""Running as a system service: readiness for systemd, a pid file, and
giving up root once port 25 is bound.

``serve`` binds its sockets (port 25 needs root), reads the TLS key and the
AUTH users file (often readable by root only), writes the pid file, and then
drops to ``server.user``/``server.group`` before anything touches a client:
a flaw in a session cannot act as root.  systemd learns when smtpfw is
ready, reloading and stopping through sd_notify (``Type=notify`` in
packaging/smtpfw.service), without a library: it is one datagram.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket

from smtpfw.config import ConfigError

log = logging.getLogger("smtpfw.server")


def notify(state: str) -> None:
    """Tell systemd ``state`` (READY=1, RELOADING=1, STOPPING=1, STATUS=...)
    when it asked (NOTIFY_SOCKET); nothing otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]          # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as err:
        log.warning("sd_notify %s: %s", state.split("=")[0], err.strerror or err)


def drop_privileges(user: str, group: str = "") -> None:
    """Become ``user`` (and ``group``, else the user's own), for good."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"server.user: no such user {user!r}") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise ConfigError(f"server.group: no such group {group!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return                            # already that user (a test, or systemd's User=)
        raise ConfigError(f"server.user: only root can become {user!r}; this process runs as uid {os.geteuid()}")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise ConfigError("server.user: dropping privileges did not hold")   # pragma: no cover


def write_pid_file(path: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as err:
        raise ConfigError(f"server.pid_file: cannot write {path}: {err.strerror or err}") from None


def remove_pid_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def release_memory() -> None:
    """Give the heap a compile freed back to the kernel (glibc's
    malloc_trim): building a million-entry list makes and drops a million
    strings, and without this each worker that reloads keeps their pages."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):       # not glibc: nothing to do
        pass
