"""The store harnesses of tests/support/stores.py: each real server starts on
loopback, takes data (its command-line client), lets a Python client in over
TCP with the password (and not without it), stops answering while paused,
comes back after a kill, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import subprocess

import aiomysql
import asyncpg
import ldap3
import pymysql
import pytest
from ldap3.core.exceptions import LDAPBindError, LDAPException

from tests.support.stores import (MariaDBInstance, PostgresInstance, SlapdInstance, StoreError,
                                  stores_available)


def need(kind: str) -> None:
    why = stores_available(kind)
    if why:
        pytest.fail(why)


def gone(inst) -> None:
    """The server process is dead and its temp dir removed."""
    assert inst.proc is not None and inst.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(inst.proc.pid, 0)
    assert not inst.root.exists()


def test_postgres():
    need("postgres")
    pg = PostgresInstance()
    with pg:
        assert (pg.host, pg.user, pg.password, pg.dbname) == ("127.0.0.1", "smtpfw", "secret", "mail")
        pg.execute("CREATE TABLE t (k text PRIMARY KEY, v text); INSERT INTO t VALUES ('a', 'one');"
                   "GRANT ALL ON t TO smtpfw;")
        out = subprocess.run(["psql", "-X", "-tA", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres",
                              "-d", "mail", "-c", "SELECT v FROM t WHERE k = 'a'"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "one"

        async def client(password: str = "secret", timeout: float = 5):
            conn = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, password=password,
                                         database=pg.dbname, timeout=timeout)
            try:
                return await conn.fetchval("SELECT v FROM t WHERE k = 'a'")
            finally:
                await conn.close()

        assert asyncio.run(client()) == "one"
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(client("wrong"))

        pg.pause()
        try:
            with pytest.raises(TimeoutError):
                asyncio.run(client(timeout=0.5))
        finally:
            pg.resume()
        assert asyncio.run(client()) == "one"

        pg.kill()
        assert not pg.running
        pg.start()                                      # same port, same data
        assert asyncio.run(client()) == "one"
    gone(pg)


def test_mariadb():
    need("mariadb")
    db = MariaDBInstance()
    with db:
        assert (db.host, db.user, db.password, db.dbname) == ("127.0.0.1", "smtpfw", "secret", "mail")
        db.execute("CREATE TABLE t (k VARCHAR(16) PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('a', 'one');")
        out = subprocess.run(["mariadb", "--no-defaults", f"--socket={db.socket}", "-u", "root", "-N", "-B",
                              "mail", "-e", "SELECT v FROM t WHERE k = 'a'"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "one"

        async def client(password: str = "secret", timeout: float = 5):
            # connect_timeout covers the TCP connect only, not the handshake a paused server never sends
            conn = await asyncio.wait_for(aiomysql.connect(host=db.host, port=db.port, user=db.user,
                                                           password=password, db=db.dbname, connect_timeout=timeout),
                                          timeout)
            try:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT v FROM t WHERE k = 'a'")
                    return (await cur.fetchone())[0]
            finally:
                conn.close()

        assert asyncio.run(client()) == "one"
        with pytest.raises(pymysql.err.OperationalError, match="1045"):   # access denied
            asyncio.run(client("wrong"))

        db.pause()
        try:
            with pytest.raises(TimeoutError):
                asyncio.run(client(timeout=0.5))
        finally:
            db.resume()
        assert asyncio.run(client()) == "one"

        db.kill()
        db.start()
        assert asyncio.run(client()) == "one"
    gone(db)


def test_slapd():
    need("slapd")
    ldap = SlapdInstance()
    ldap.add_ldif("dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n")   # offline
    with ldap:
        assert (ldap.host, ldap.base_dn, ldap.bind_dn, ldap.bind_pw) == \
            ("127.0.0.1", "dc=example,dc=org", "cn=admin,dc=example,dc=org", "secret")
        ldap.add_ldif("dn: uid=alice,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\n"
                      "uid: alice\ncn: Alice\nsn: A\nmail: alice@example.org\n")
        out = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", ldap.url, "-b", ldap.base_dn, "(uid=alice)", "mail"],
                             capture_output=True, text=True, check=True).stdout
        assert "mail: alice@example.org" in out
        assert "dn: ou=people,dc=example,dc=org" in ldap.search("(ou=people)")

        def client(password: str = "secret", timeout: int = 5):      # ldap3 wants whole seconds
            server = ldap3.Server(ldap.host, port=ldap.port, get_info=ldap3.NONE, connect_timeout=timeout)
            with ldap3.Connection(server, user=ldap.bind_dn, password=password, auto_bind=True,
                                  receive_timeout=timeout) as conn:
                conn.search(ldap.base_dn, "(uid=alice)", attributes=["mail"])
                return [str(e.mail) for e in conn.entries]

        assert client() == ["alice@example.org"]
        with pytest.raises(LDAPBindError):
            client("wrong")

        ldap.pause()
        try:
            with pytest.raises(LDAPException):
                client(timeout=1)
        finally:
            ldap.resume()
        assert client() == ["alice@example.org"]

        ldap.kill()
        ldap.start()
        assert client() == ["alice@example.org"]
    gone(ldap)


def test_start_failure_carries_the_log_and_cleans_up():
    need("postgres")
    pg = PostgresInstance("-c", "no_such_setting=1")
    with pytest.raises(StoreError, match="no_such_setting"):
        pg.start()
    assert not pg.root.exists()


def test_unknown_kind():
    with pytest.raises(ValueError):
        stores_available("oracle")
