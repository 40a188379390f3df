"""Real database and directory servers (Debian's packages) on loopback, in temp dirs.

    with PostgresInstance() as pg:            # role smtpfw/secret, database mail
        pg.execute("CREATE TABLE t (k text)")
        asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, database=pg.dbname)

    with MariaDBInstance() as db:             # 'smtpfw'@'127.0.0.1' / secret, database mail
        db.execute("CREATE TABLE t (k text)")

    with SlapdInstance() as ldap:             # dc=example,dc=org, cn=admin,dc=example,dc=org / secret
        ldap.add_ldif("dn: ou=people,dc=example,dc=org\\nobjectClass: organizationalUnit\\nou: people\\n")

Each server listens on 127.0.0.1 only, on a free port, and keeps everything
(data, sockets, logs) in its own temp dir.  ``start`` waits (polling, 30 s
at most) until the server answers a real request; a server that does not
come up is an error carrying the tail of its log.

``pause``/``resume`` (SIGSTOP/SIGCONT of the server's process group: for
PostgreSQL the postmaster and its backends) make a server that does not
answer; ``kill`` (SIGKILL) a server that is gone, and ``start`` again (same
port, same data) one that comes back.  ``stop`` shuts down and removes the
temp dir; it is what leaving the ``with`` block does.  Servers are killed
at interpreter exit (atexit) and, when started from the main thread, when
the process that started them dies (``setpriv --pdeathsig KILL``).

Running as root: PostgreSQL refuses to, so initdb and postgres run as the
``postgres`` user the Debian package creates (else ``nobody``), with the
temp dir chowned to it; mariadbd runs with ``--user=root``; slapd as root.
The command-line clients (psql, mariadb, ldapadd) run as the caller.

``stores_available(kind)`` says why a kind cannot run here, or None.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

from tests.support.process import HOST, ServerProcess, which as _which

INSTALL_HINT = "(.ci/run installs it)"


# -- where the programs are ---------------------------------------------------

def _pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and postgres."""
    candidates = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").exists() and (d / "postgres").exists():
            try:
                version = tuple(int(p) for p in d.parent.name.split("."))
            except ValueError:
                continue
            candidates.append((version, d))
    return max(candidates)[1] if candidates else None


def _psql() -> str | None:
    bindir = _pg_bindir()
    if bindir is not None and (bindir / "psql").exists():
        return str(bindir / "psql")
    return _which("psql")


def _mariadbd() -> str | None:
    return _which("mariadbd", "mysqld")


def _mariadb_install_db() -> str | None:
    return _which("mariadb-install-db", "mysql_install_db")


def _mariadb_client() -> str | None:
    return _which("mariadb", "mysql")


SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
LDAP_MODULES = Path("/usr/lib/ldap")
LDAP_SCHEMA = Path("/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The account to run a server that refuses root as (when we are root)."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    return None


def stores_available(kind: str) -> str | None:
    """Why a ``kind`` ("postgres", "mariadb", "slapd") server cannot run here, or None."""
    if kind == "postgres":
        if _pg_bindir() is None:
            return f"Debian's postgresql package is not installed (no /usr/lib/postgresql/*/bin/initdb) {INSTALL_HINT}"
        if _psql() is None:
            return f"psql (Debian's postgresql-client package) is not installed {INSTALL_HINT}"
        if os.geteuid() == 0 and _unprivileged_user() is None:
            return "running as root, and neither a postgres nor a nobody user to run PostgreSQL as"
        return None
    if kind == "mariadb":
        if _mariadbd() is None or _mariadb_install_db() is None:
            return f"Debian's mariadb-server package is not installed (no mariadbd/mariadb-install-db) {INSTALL_HINT}"
        if _mariadb_client() is None:
            return f"the mariadb client (Debian's mariadb-client package) is not installed {INSTALL_HINT}"
        return None
    if kind == "slapd":
        if not os.access(SLAPD, os.X_OK) or not os.access(SLAPADD, os.X_OK):
            return f"Debian's slapd package is not installed (no {SLAPD}) {INSTALL_HINT}"
        missing = [s for s in SCHEMAS if not (LDAP_SCHEMA / f"{s}.schema").exists()]
        if missing:
            return f"slapd's schema files {missing} are missing from {LDAP_SCHEMA} {INSTALL_HINT}"
        if not any(LDAP_MODULES.glob("back_mdb*.so*")):
            return f"slapd's back_mdb module is missing from {LDAP_MODULES} {INSTALL_HINT}"
        if _which("ldapadd") is None or _which("ldapsearch") is None or _which("ldapwhoami") is None:
            return f"Debian's ldap-utils package (ldapadd, ldapsearch) is not installed {INSTALL_HINT}"
        return None
    raise ValueError(f"unknown store kind {kind!r} (postgres, mariadb, slapd)")


# -- common machinery ---------------------------------------------------------

class StoreError(RuntimeError):
    """A server that would not start, or a client command that failed."""


class _ServerInstance(ServerProcess):
    """A store server (tests/support/process.py has the lifecycle)."""

    error = StoreError

    def __init__(self, extra: tuple[str, ...], run_as: pwd.struct_passwd | None = None) -> None:
        reason = stores_available(self.kind)
        if reason:
            raise StoreError(reason)
        super().__init__(run_as)
        self.extra = list(extra)

    def _run(self, argv: list[str], what: str, input: str | None = None, as_server: bool = False,
             timeout: float = 60) -> subprocess.CompletedProcess:
        """A helper program to completion; its output in the error if it fails."""
        kw = self._popen_kw() if as_server else {}
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired as e:
            raise self._fail(f"{what} timed out after {timeout} s: {argv}") from e
        if proc.returncode != 0:
            raise self._fail(f"{what} failed (exit {proc.returncode}): {argv}\n"
                             f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
        return proc


# -- PostgreSQL ---------------------------------------------------------------

class PostgresInstance(_ServerInstance):
    """A PostgreSQL cluster: superuser ``postgres`` (trust, over the unix
    socket in ``socket_dir`` or TCP), and a login role ``user``/``password``
    owning database ``dbname`` (scram-sha-256 over TCP).

    ``extra``: more postgres options, e.g. ``"-c", "max_connections=20"``."""

    kind = "postgres"
    superuser = "postgres"

    def __init__(self, *extra: str, user: str = "smtpfw", password: str = "secret", dbname: str = "mail") -> None:
        self.user, self.password, self.dbname = user, password, dbname
        bindir = _pg_bindir()
        self.bindir = bindir if bindir is not None else Path("/nonexistent")
        super().__init__(extra, run_as=_unprivileged_user() if os.geteuid() == 0 else None)
        self.datadir = self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{self.dbname}"

    def _prepare(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                  "initdb", as_server=True)
        (self.datadir / "pg_hba.conf").write_text(
            "# smtpfw test instance\n"
            "local all all trust\n"
            f"host all {self.superuser} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")

    def _command(self) -> list[str]:
        return [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                "-k", str(self.socket_dir), "-c", f"listen_addresses={HOST}",
                # no fsync: fast, and a killed server still keeps every commit (the OS has them)
                "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "dynamic_shared_memory_type=mmap", "-c", "logging_collector=off",
                "-c", "password_encryption=scram-sha-256", *self.extra]

    def _psql(self, sql: str, database: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_psql() or "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", self.superuser, "-d", database],
            input=sql, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"})

    def _ready(self) -> bool:
        try:
            proc = self._psql("SELECT 1", "postgres", timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip() == "1"

    def _after_first_start(self) -> None:
        role, password = _pg_ident(self.user), self.password.replace("'", "''")
        self.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}';\n"
                     f"CREATE DATABASE {_pg_ident(self.dbname)} OWNER {role};\n", database="postgres")

    def execute(self, sql: str, database: str | None = None) -> str:
        """SQL (one or more statements) as the superuser, in ``database``
        (default ``dbname``); psql's unaligned, tuples-only output."""
        proc = self._psql(sql, database or self.dbname)
        if proc.returncode != 0:
            raise self._fail(f"psql failed (exit {proc.returncode}) on {sql!r}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def _terminate_signal(self) -> int:
        return signal.SIGINT   # "fast" shutdown: does not wait for clients

    def _after_kill(self) -> None:
        # a killed postmaster leaves its small SysV segment behind (key and id
        # on line 7 of postmaster.pid); a restart reclaims it, the end must not leak it
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            shmid = lines[6].split()[1]
        except (OSError, IndexError):
            return
        ipcrm = _which("ipcrm")
        if ipcrm:
            subprocess.run([ipcrm, "-m", shmid], capture_output=True, timeout=10)


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- MariaDB ------------------------------------------------------------------

class MariaDBInstance(_ServerInstance):
    """A MariaDB server: ``root`` without a password (over the socket, or
    TCP), and ``'user'@'127.0.0.1'`` / ``@'localhost'`` identified by
    ``password`` with ALL on database ``dbname``.

    ``extra``: more mariadbd options, e.g. ``"--max-connections=20"``."""

    kind = "mariadb"
    superuser = "root"

    def __init__(self, *extra: str, user: str = "smtpfw", password: str = "secret", dbname: str = "mail") -> None:
        self.user, self.password, self.dbname = user, password, dbname
        super().__init__(extra)
        self.datadir = self.root / "data"
        self.socket = self.root / "mysqld.sock"

    def _user_opt(self) -> list[str]:
        # mariadbd refuses to run as root unless told to
        return ["--user=root"] if os.geteuid() == 0 else []

    def _prepare(self) -> None:
        self._run([_mariadb_install_db() or "mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                   "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                   *self._user_opt()],
                  "mariadb-install-db", timeout=120)

    def _command(self) -> list[str]:
        return [_mariadbd() or "mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", f"--bind-address={HOST}", f"--pid-file={self.root / 'mysqld.pid'}",
                f"--log-error={self.logfile}", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--innodb-flush-log-at-trx-commit=2",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                *self._user_opt(), *self.extra]

    def _client(self, sql: str, database: str | None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_mariadb_client() or "mariadb", "--no-defaults", f"--socket={self.socket}", "-u", self.superuser,
             "--batch", "--skip-column-names", "--connect-timeout=5", *([database] if database else [])],
            input=sql, capture_output=True, text=True, timeout=timeout)

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            proc = self._client("SELECT 1", None, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip() == "1"

    def _after_first_start(self) -> None:
        db, user, pw = _my_ident(self.dbname), _my_str(self.user), _my_str(self.password)
        self.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4;\n"
                     f"CREATE USER {user}@'127.0.0.1' IDENTIFIED BY {pw};\n"
                     f"CREATE USER {user}@'localhost' IDENTIFIED BY {pw};\n"
                     f"GRANT ALL ON {db}.* TO {user}@'127.0.0.1';\n"
                     f"GRANT ALL ON {db}.* TO {user}@'localhost';\n", database="")

    def execute(self, sql: str, database: str | None = None) -> str:
        """SQL (one or more statements, ``;``-separated) as root over the
        socket, in ``database`` (default ``dbname``; "" for none); the
        client's tab-separated output without column names."""
        proc = self._client(sql, self.dbname if database is None else database)
        if proc.returncode != 0:
            raise self._fail(f"mariadb client failed (exit {proc.returncode}) on {sql!r}:\n{proc.stderr[-3000:]}")
        return proc.stdout


def _my_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _my_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


# -- OpenLDAP slapd -----------------------------------------------------------

class SlapdInstance(_ServerInstance):
    """An OpenLDAP slapd (slapd.conf style, back_mdb) serving ``base_dn``,
    with rootdn ``bind_dn``/``bind_pw``; the base entry (a dcObject
    organization) is there from the start unless ``base_entry=False``.
    Anonymous read is allowed (slapd's default access).

    ``extra``: more slapd.conf lines for the database section, e.g.
    ``"index mail eq"``."""

    kind = "slapd"

    def __init__(self, *extra: str, base_dn: str = "dc=example,dc=org", bind_pw: str = "secret",
                 base_entry: bool = True) -> None:
        self.base_dn = base_dn
        self.bind_dn = f"cn=admin,{base_dn}"
        self.bind_pw = bind_pw
        self.base_entry = base_entry
        super().__init__(extra)
        self.conf = self.root / "slapd.conf"
        self.dbdir = self.root / "db"
        self._base_added = False

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}/"

    def _write_conf(self) -> None:
        self.dbdir.mkdir(exist_ok=True)
        lines = [f"include {LDAP_SCHEMA / (s + '.schema')}" for s in SCHEMAS]
        lines += [f"pidfile {self.root / 'slapd.pid'}", f"argsfile {self.root / 'slapd.args'}",
                  f"modulepath {LDAP_MODULES}", "moduleload back_mdb",
                  "database mdb", f'suffix "{self.base_dn}"', f'rootdn "{self.bind_dn}"',
                  f"rootpw {self.bind_pw}", f"directory {self.dbdir}", "maxsize 104857600",
                  *self.extra]
        self.conf.write_text("\n".join(lines) + "\n")

    def _base_ldif(self) -> str:
        attr, _, value = self.base_dn.split(",")[0].partition("=")
        value = value.strip()
        if attr.strip().lower() == "dc":
            return f"dn: {self.base_dn}\nobjectClass: dcObject\nobjectClass: organization\ndc: {value}\no: {value}\n"
        return f"dn: {self.base_dn}\nobjectClass: organization\no: {value}\n"

    def _prepare(self) -> None:
        """slapd.conf, the mdb dir, the base entry (slapadd, offline)."""
        if not self.conf.exists():
            self._write_conf()
        if self.base_entry and not self._base_added:
            self._base_added = True
            self._run([SLAPADD, "-f", str(self.conf), "-q"], "slapadd (the base entry)", input=self._base_ldif())

    def _command(self) -> list[str]:
        # -d 0: stay in the foreground, log only what is always logged (errors)
        return [SLAPD, "-f", str(self.conf), "-h", self.url, "-d", "0"]

    def _ready(self) -> bool:
        try:
            proc = subprocess.run([_which("ldapwhoami") or "ldapwhoami", "-x", "-H", self.url,
                                   "-D", self.bind_dn, "-w", self.bind_pw, "-o", "nettimeout=5"],
                                  capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def add_ldif(self, text: str) -> str:
        """Add the entries: with ldapadd bound as ``bind_dn`` when running,
        with slapadd (offline) before ``start``."""
        if self.running:
            argv = [_which("ldapadd") or "ldapadd", "-x", "-H", self.url, "-D", self.bind_dn,
                    "-w", self.bind_pw, "-o", "nettimeout=10"]
            return self._run(argv, "ldapadd", input=text).stdout
        self._prepare()
        return self._run([SLAPADD, "-f", str(self.conf), "-q"], "slapadd", input=text).stdout

    def search(self, filter: str = "(objectClass=*)", *attrs: str, base: str | None = None,
               scope: str = "sub") -> str:
        """ldapsearch -LLL (bound as ``bind_dn``): the entries as LDIF."""
        argv = [_which("ldapsearch") or "ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-o", "nettimeout=10",
                "-H", self.url, "-D", self.bind_dn, "-w", self.bind_pw, "-b", base or self.base_dn,
                "-s", scope, filter, *attrs]
        return self._run(argv, "ldapsearch").stdout
