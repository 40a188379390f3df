"""A real Postfix (Debian's package) on a loopback port, in a temp dir.

    with PostfixInstance({"smtpd_recipient_restrictions": "..."}) as pf:
        smtplib.SMTP("127.0.0.1", pf.port)

Its own config directory, queue and log file, in a folder of its own under
/tmp (the postfix user must reach it, and pytest's tmp_path is root's
alone); master(8) runs in the foreground (``-d``) and is stopped with the
test.  Nothing of the system's Postfix is used but the programs (no
/etc/postfix needed).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.cli import wait_until

POSTFIX_LIBEXEC = Path("/usr/lib/postfix/sbin")
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
_QUEUE_DIRS = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "saved",
               "trace", "private")


def in_namespace(resolv: Path, argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace whose /etc/resolv.conf is ``resolv``."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv), *argv]


def postfix_available() -> str | None:
    """Why Postfix cannot run here, or None."""
    if not (POSTFIX_LIBEXEC / "master").exists():
        return "Debian's postfix package is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "Postfix's master must start as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_instance(root: Path, port: int, settings: dict[str, str]) -> Path:
    """Write an instance's main.cf and master.cf (smtpd on 127.0.0.1:``port``,
    ``settings`` over the defaults) and make its queue; its config folder."""
    conf, queue, data = root / "conf", root / "queue", root / "data"
    for d in (conf, queue, data):
        d.mkdir(parents=True, exist_ok=True)
    main = {
        "compatibility_level": "3.6", "queue_directory": str(queue), "data_directory": str(data),
        "mail_owner": "postfix", "setgid_group": "postdrop", "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4", "myhostname": "mx.postfix.test", "mydestination": "",
        "mynetworks": "127.0.0.0/8", "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root), "smtpd_peername_lookup": "no",
        "alias_maps": "", "alias_database": "", "biff": "no",
        **settings,
    }
    (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    (conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{port}"))
    for name in _QUEUE_DIRS:
        d = queue / name
        d.mkdir(exist_ok=True)
        shutil.chown(d, "postfix")
        d.chmod(0o700)
    for name, mode in (("maildrop", 0o730), ("public", 0o710)):
        d = queue / name
        d.mkdir(exist_ok=True)
        shutil.chown(d, "postfix", "postdrop")
        d.chmod(mode)
    (queue / "pid").mkdir(exist_ok=True)
    shutil.chown(data, "postfix")
    data.chmod(0o700)
    return conf


class PostfixInstance:
    """``resolv``: a resolv.conf for Postfix alone (its master runs in a
    mount namespace where it is /etc/resolv.conf), for a DNS server on a
    loopback address's port 53."""

    def __init__(self, settings: dict[str, str], resolv: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="smtpfw-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.settings = settings
        self.resolv = resolv
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> "PostfixInstance":
        conf = prepare_instance(self.root, self.port, self.settings)
        argv = [str(POSTFIX_LIBEXEC / "master"), "-d", "-c", str(conf)]
        self.proc = subprocess.Popen(in_namespace(self.resolv, argv) if self.resolv else argv,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

        def listening():
            assert self.proc.poll() is None, f"postfix master exited: {self.log[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, 15, "postfix listening")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
