"""Real content scanners (Debian's clamav-daemon and spamassassin) on loopback, in temp dirs.

    with ClamdInstance() as clamd:            # knows one signature: EICAR
        clamd.address                         # "unix:<tmp>/clamd.sock"
        clamd.tcp_address                     # "127.0.0.1:<port>"
    with SpamdInstance() as spamd:            # the rules Debian ships (GTUBE among them)
        spamd.address                         # "127.0.0.1:<port>"
        spamd.unix_address                    # "unix:<tmp>/spamd.sock"

Nothing is downloaded (no freshclam, no sa-update).  clamd's database
directory holds only ``smtpfw-test.ndb``, written here: the EICAR test file
as a custom body signature named ``EICAR_SIGNATURE`` (clamd reports custom
signatures with ``.UNOFFICIAL`` appended: ``EICAR_VIRUS``).  spamd reads the
rules of the spamassassin package (/usr/share/spamassassin, which has GTUBE
in 20_body_tests.cf) or, where they are missing (``rules="minimal"``, or a
system whose package leaves them to sa-update), a one-rule file written
here that defines GTUBE.  Either way its site config is a temp dir of its
own (plugins, ``required_score 5``, no Bayes), never /etc/spamassassin, and
it runs local tests only (``-L``) and no user config (``-x``).

Each server listens on 127.0.0.1 only, on a free port (and a unix socket in
its temp dir), and keeps its config, pid file and log there.  ``start``
polls (30 s at most for clamd, 60 s for spamd, which compiles its rules
first) until the server answers PING; one that does not come up is an
error carrying the tail of its log.

``pause``/``resume`` (SIGSTOP/SIGCONT to the server's process group and
every descendant: spamd's preforked children answer the connections) make a
server that accepts connections (the kernel does) but never answers;
``kill`` (SIGKILL) a server that is gone, and ``start`` again (same port,
same socket path) one that comes back.  ``stop`` shuts down and removes the
temp dir; it is what leaving the ``with`` block does.  Servers are killed at
interpreter exit (atexit) and, when started from the main thread, when the
process that started them dies (``setpriv --pdeathsig KILL``).

Running as root: clamd runs as root (it needs no User line then); spamd as
the ``debian-spamd`` user the package creates (else ``nobody``), with the
temp dir chowned to it -- run as root it would hand each connection to
``nobody``, who cannot read a private temp dir.

``scanners_available(kind)`` ("clamd", "spamd") says why a kind cannot run
here, or None.
"""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

from tests.support.process import HOST, ServerProcess
INSTALL_HINT = "(.ci/run installs it)"

CLAMD = "/usr/sbin/clamd"
SPAMD = "/usr/sbin/spamd"
SHIPPED_RULES = Path("/usr/share/spamassassin")

# The EICAR anti-virus test file (eicar.org) and SpamAssassin's GTUBE, each
# put together here from two halves so that this source file is not itself
# flagged by a virus or spam scanner on the way to a developer's machine.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR_SIGNATURE = "Eicar-Test-Signature"
EICAR_VIRUS = EICAR_SIGNATURE + ".UNOFFICIAL"     # as clamd reports a signature from a custom database

# The plugins that the rules' eval tests need (Debian loads them from
# /etc/spamassassin/*.pre, which our own site config dir replaces); Check
# is the one without which spamd cannot scan at all.  Network plugins
# (URIDNSBL, SPF, DKIM, Razor2, Pyzor...) are left out: local tests only.
SPAMD_PLUGINS = ("Check", "HeaderEval", "BodyEval", "MIMEEval", "HTMLEval", "RelayEval", "URIEval",
                 "WLBLEval", "MIMEHeader", "ReplaceTags", "FreeMail", "ImageInfo", "VBounce",
                 "WelcomeListSubject")
MINIMAL_RULES = (
    "# GTUBE, as SpamAssassin's 20_body_tests.cf and 50_scores.cf define it\n"
    "body GTUBE /XJS\\*C4JDBQADN1\\.NSBN3\\*2IDNEN\\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\\*C\\.34X/\n"
    "describe GTUBE Generic Test for Unsolicited Bulk Email\n"
    "tflags GTUBE userconf noautolearn\n"
    "score GTUBE 1000.000\n"
)




def shipped_rules() -> Path | None:
    """The spamassassin package's rules dir, when it has rules (GTUBE among them)."""
    try:
        for cf in SHIPPED_RULES.glob("*.cf"):
            if b"\nbody GTUBE" in cf.read_bytes():
                return SHIPPED_RULES
    except OSError:
        pass
    return None


def _spamd_user() -> pwd.struct_passwd | None:
    """The account spamd runs as when we are root."""
    for name in ("debian-spamd", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    return None


def scanners_available(kind: str) -> str | None:
    """Why a ``kind`` ("clamd", "spamd") scanner cannot run here, or None."""
    if kind == "clamd":
        if not os.access(CLAMD, os.X_OK):
            return f"Debian's clamav-daemon package is not installed (no {CLAMD}) {INSTALL_HINT}"
        return None
    if kind == "spamd":
        if not os.access(SPAMD, os.X_OK):
            return f"Debian's spamassassin package is not installed (no {SPAMD}) {INSTALL_HINT}"
        if os.geteuid() == 0 and _spamd_user() is None:
            return "running as root, and neither a debian-spamd nor a nobody user to run spamd as"
        return None
    raise ValueError(f"unknown scanner kind {kind!r} (clamd, spamd)")


# -- common machinery ---------------------------------------------------------

class ScannerError(RuntimeError):
    """A scanner that would not start."""


class _ScannerInstance(ServerProcess):
    """A scanner listening on a unix socket in its temp dir and on a TCP
    port (tests/support/process.py has the lifecycle)."""

    kind = "scanner"
    error = ScannerError

    def __init__(self, run_as: pwd.struct_passwd | None = None) -> None:
        reason = scanners_available(self.kind)
        if reason:
            raise ScannerError(reason)
        super().__init__(run_as)
        self.socket_path = self.root / f"{self.kind}.sock"

    # -- to be provided by each kind
    def _ping(self, sock: socket.socket) -> bool:
        raise NotImplementedError

    @property
    def address(self) -> str:
        raise NotImplementedError

    # -- shared
    @property
    def tcp_address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    def _popen_kw(self) -> dict:
        env = {**os.environ, "HOME": str(self.root), "TMPDIR": str(self.root)}
        kw: dict = {"env": env}
        if self.run_as is not None:
            env.update(USER=self.run_as.pw_name, LOGNAME=self.run_as.pw_name)
            kw.update(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        return kw

    def _before_start(self) -> None:
        self.socket_path.unlink(missing_ok=True)     # a socket file left by a killed server

    def _ready(self) -> bool:
        return self.ping()

    def ping(self, timeout: float = 1.0) -> bool:
        """Both the TCP port and the unix socket answer PING."""
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                if not self._ping(s):
                    return False
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(self.socket_path))
                return self._ping(s)
        except OSError:
            return False


def _recv_until(sock: socket.socket, end: bytes, limit: int = 4096) -> bytes:
    data = b""
    while end not in data and len(data) < limit:
        chunk = sock.recv(limit)
        if not chunk:
            break
        data += chunk
    return data


# -- clamd --------------------------------------------------------------------

class ClamdInstance(_ScannerInstance):
    """clamd (Foreground) with a database of one signature, EICAR, on
    ``unix_address`` (``address``) and ``tcp_address``.

    ``stream_max_length``: clamd's StreamMaxLength (a longer INSTREAM is
    refused with "INSTREAM size limit exceeded").  ``extra``: more
    clamd.conf lines, e.g. ``"ScanMail no"``.  ``signatures``: more
    ``name: bytes`` body signatures for the database."""

    kind = "clamd"
    ready_timeout = 30.0

    def __init__(self, *extra: str, stream_max_length: str = "1M",
                 signatures: dict[str, bytes] | None = None) -> None:
        super().__init__()
        self.extra = list(extra)
        self.stream_max_length = stream_max_length
        self.signatures = {EICAR_SIGNATURE: EICAR, **(signatures or {})}
        self.conf = self.root / "clamd.conf"
        self.dbdir = self.root / "db"

    @property
    def address(self) -> str:
        return self.unix_address

    def _prepare(self) -> None:
        self.dbdir.mkdir(exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        # .ndb: name:target type (0, any file):offset (*, anywhere):hex
        (self.dbdir / "smtpfw-test.ndb").write_text(
            "".join(f"{name}:0:*:{body.hex()}\n" for name, body in self.signatures.items()))
        lines = [f"LocalSocket {self.socket_path}", "LocalSocketMode 660",
                 f"TCPSocket {self.port}", f"TCPAddr {HOST}", "Foreground yes",
                 f"DatabaseDirectory {self.dbdir}", f"PidFile {self.root / 'clamd.pid'}",
                 f"TemporaryDirectory {self.root / 'tmp'}", f"LogFile {self.logfile}", "LogTime yes",
                 f"StreamMaxLength {self.stream_max_length}", "MaxThreads 4", "SelfCheck 3600",
                 *self.extra]
        self.conf.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [CLAMD, "-c", str(self.conf)]

    def _ping(self, sock: socket.socket) -> bool:
        sock.sendall(b"zPING\0")
        return _recv_until(sock, b"\0") == b"PONG\0"


# -- spamd --------------------------------------------------------------------

class SpamdInstance(_ScannerInstance):
    """spamd on ``tcp_address`` (``address``) and ``unix_address``.

    ``rules``: "auto" (the package's rules when it ships them, else the
    one-rule GTUBE file), "shipped" (the package's, an error if missing),
    "minimal" (the GTUBE file: starts faster).  ``local_cf``: more lines for
    the site config's local.cf."""

    kind = "spamd"
    ready_timeout = 60.0      # spamd compiles all its rules before it listens

    def __init__(self, *local_cf: str, rules: str = "auto") -> None:
        if rules not in ("auto", "shipped", "minimal"):
            raise ValueError(f"rules={rules!r}: auto, shipped or minimal")
        shipped = shipped_rules()
        if rules == "shipped" and shipped is None:
            raise ScannerError(f"the spamassassin package's rules are not in {SHIPPED_RULES} {INSTALL_HINT}")
        super().__init__(run_as=_spamd_user() if os.geteuid() == 0 else None)
        self.local_cf = list(local_cf)
        self.site = self.root / "site"
        self.rules_dir = shipped if rules != "minimal" and shipped is not None else self.root / "rules"
        self.pidfile = self.root / "spamd.pid"

    @property
    def address(self) -> str:
        return self.tcp_address

    @property
    def minimal_rules(self) -> bool:
        return self.rules_dir != SHIPPED_RULES

    def _prepare(self) -> None:
        self.site.mkdir(exist_ok=True)
        (self.site / "init.pre").write_text(
            "".join(f"loadplugin Mail::SpamAssassin::Plugin::{p}\n" for p in SPAMD_PLUGINS))
        (self.site / "local.cf").write_text(
            "\n".join(["required_score 5.0", "use_bayes 0", "bayes_auto_learn 0", *self.local_cf]) + "\n")
        if self.minimal_rules:
            self.rules_dir.mkdir(exist_ok=True)
            (self.rules_dir / "20_gtube.cf").write_text(MINIMAL_RULES)
        if self.run_as is not None:
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _command(self) -> list[str]:
        return [SPAMD, f"--listen={HOST}:{self.port}", f"--listen={self.socket_path}",
                f"--configpath={self.rules_dir}", f"--siteconfigpath={self.site}",
                "--nouser-config", "--local", "--max-children=2", "--min-children=1", "--min-spare=1",
                "--max-spare=1", f"--pidfile={self.pidfile}", "--syslog=stderr", f"--helper-home-dir={self.root}"]

    def _ping(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
        return _recv_until(sock, b"\n").startswith(b"SPAMD/1.5 0 PONG")
