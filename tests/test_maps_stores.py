"""Database and directory maps against the real servers from Debian's
packages (PostgreSQL, MariaDB, OpenLDAP), each started by the tests on
loopback in a temp dir (tests/support/stores.py): unknown recipients refused
at RCPT through the real smtpfw server, values as fields, injection attempts
inert, cache hits counted, and a server frozen (SIGSTOP) or killed mid-run
answered with the configured failure within the timeout, then recovered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from smtpfw.maps.tables.table import load_table
from tests.smtp_client import RawClient
from tests.support.server import running_server
from tests.support.stores import MariaDBInstance, PostgresInstance, SlapdInstance, stores_available

SQL = """
CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, quota INT, active INT);
INSERT INTO mailbox VALUES ('alice@example.org', 100, 1), ('bob@example.org', 0, 0), ('carol@example.org', 5, 1);
"""
LDIF = """dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@example.org
employeeType: 100

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
mail: carol@example.org
employeeType: 5

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@example.org
employeeType: disabled
"""

RULES = """
map mailboxes = {kind} "mailboxes.cf"
map quota = {kind} "quota.cf"
on rcpt:
    [unknown-user] reject 550 5.1.1 "<{{rcpt}}>: Recipient address rejected: User unknown" if rcpt.domain = "example.org" and not rcpt in mailboxes
    [small-quota] tempfail 452 4.2.2 "Mailbox full" if quota(rcpt) = "5"
    [local] accept if rcpt.domain = "example.org"
    [relay] reject 554 5.7.1 "Relaying denied"
"""

SETTINGS = "timeout = 0.5\ncache_ttl = 300\nnegative_cache_ttl = 300\n"


class Site:
    """A running store with the test data, and the settings files that reach it."""

    def __init__(self, kind: str, server):
        self.kind, self.server = kind, server

    def settings(self, which: str) -> str:
        s = self.server
        if self.kind == "ldap":
            attr = "mail" if which == "mailboxes" else "employeeType"
            flt = "(&(objectClass=inetOrgPerson)(mail=%s)(!(employeeType=disabled)))"
            return (f"server_host = {s.url}\nsearch_base = ou=people, dc=example, dc=org\n"
                    f"query_filter = {flt}\nresult_attribute = {attr}\n"
                    f"bind = yes\nbind_dn = {s.bind_dn}\nbind_pw = {s.bind_pw}\n" + SETTINGS)
        column = "username" if which == "mailboxes" else "quota"
        return (f"hosts = inet:127.0.0.1:{s.port}\nuser = {s.user}\npassword = {s.password}\ndbname = {s.dbname}\n"
                f"query = SELECT {column} FROM mailbox WHERE username='%u@%d' AND active = 1\n" + SETTINGS)

    def write(self, folder: Path) -> Path:
        for which in ("mailboxes", "quota"):
            (folder / f"{which}.cf").write_text(self.settings(which))
        rules = folder / "site.rules"
        rules.write_text(RULES.format(kind=self.kind))
        return rules


def _start(kind: str):
    name = {"pgsql": "postgres", "mysql": "mariadb", "ldap": "slapd"}[kind]
    why = stores_available(name)
    if why:
        pytest.fail(why)
    if kind == "pgsql":
        server = PostgresInstance().start()
        server.execute(SQL + "GRANT SELECT ON mailbox TO smtpfw;")
    elif kind == "mysql":
        server = MariaDBInstance().start()
        # the instance flushes InnoDB's log about once a second; one
        # durable commit after the data makes it survive the kill test
        server.execute(SQL + "SET GLOBAL innodb_flush_log_at_trx_commit = 1;"
                             "CREATE TABLE flushed (x INT); INSERT INTO flushed VALUES (1);")
    else:
        server = SlapdInstance().start()
        server.add_ldif(LDIF)
    return server


@pytest.fixture(scope="module", params=["pgsql", "mysql", "ldap"])
def site(request):
    server = _start(request.param)
    try:
        yield Site(request.param, server)
    finally:
        server.stop()


def rcpt(srv, address: str) -> str:
    with RawClient(srv.address, timeout=30) as c:
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<dave@sender.example>")
        reply = c.cmd(f"RCPT TO:<{address}>")
        c.cmd("QUIT")
    return reply


def test_unknown_recipients_are_refused_and_values_are_fields(site, tmp_path):
    with running_server(site.write(tmp_path)) as srv:
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "Alice@EXAMPLE.org") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "bob@example.org").startswith("550 5.1.1 <bob@example.org>")       # disabled
        assert rcpt(srv, "nobody@example.org").startswith("550 5.1.1 <nobody@example.org>")
        assert rcpt(srv, "carol@example.org") == "452 4.2.2 Mailbox full"                  # quota(rcpt) = "5"
        assert rcpt(srv, "x@elsewhere.example") == "554 5.7.1 Relaying denied"
        table = srv.call(lambda: srv.server.ruleset.tables["mailboxes"])
        asked = table.asked
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"                 # cached
        assert rcpt(srv, "nobody@example.org").startswith("550")                          # cached too
        assert table.asked == asked


@pytest.mark.parametrize("key", [
    "*@example.org",                                  # an LDAP wildcard
    '"x\')) OR 1=1 --"@example.org',                  # SQL
    "\"'; DROP TABLE mailbox; --\"@example.org",
    '"*)(mail=*"@example.org',                        # LDAP filter injection
    '"alice@example.org)(|(mail=*"@example.org',
])
def test_injection_attempts_are_inert(site, tmp_path, key):
    with running_server(site.write(tmp_path)) as srv:
        assert rcpt(srv, key).startswith("550 5.1.1"), key
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"       # the data is all still there


def test_keys_no_address_could_carry_are_inert_too(site, tmp_path):
    """The table itself, with keys the SMTP parser would refuse."""
    site.write(tmp_path)
    table, diags = load_table("mailboxes", str(tmp_path / "mailboxes.cf"), "mailboxes.cf", site.kind)
    assert table is not None, diags

    async def ask_all():
        keys = ["*", "alice@example.org)(objectClass=*", "x' OR '1'='1", "x\\' OR 1=1 -- @example.org",
                "alice@example.org\x00", "' UNION SELECT username FROM mailbox --@example.org"]
        return {k: await table.ask(k) for k in keys}
    answers = asyncio.run(ask_all())
    assert {k: a.status for k, a in answers.items()} == {k: "none" for k in answers}, answers
    from smtpfw.maps.tables.stores import close_stores
    asyncio.run(close_stores())


def test_a_frozen_store_tempfails_within_the_timeout_then_recovers(site, tmp_path):
    with running_server(site.write(tmp_path)) as srv:
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        site.server.pause()
        try:
            started = time.monotonic()
            assert rcpt(srv, "nobody1@example.org") == "451 4.3.0 Temporary lookup failure"
            took = time.monotonic() - started
            assert took < 3.0, took                                    # timeout 0.5 s a lookup
            assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"   # cached before
        finally:
            site.server.resume()
        # the stuck connection is given up; a new one answers
        deadline = time.monotonic() + 20
        while rcpt(srv, "nobody2@example.org").startswith("451") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rcpt(srv, "nobody3@example.org").startswith("550 5.1.1")


def test_a_killed_store_tempfails_then_recovers_when_it_is_back(site, tmp_path):
    with running_server(site.write(tmp_path)) as srv:
        assert rcpt(srv, "nobody@example.org").startswith("550")
        site.server.kill()
        try:
            started = time.monotonic()
            assert rcpt(srv, "nobody4@example.org") == "451 4.3.0 Temporary lookup failure"
            assert time.monotonic() - started < 3.0
        finally:
            site.server.start()
        deadline = time.monotonic() + 20
        while rcpt(srv, "nobody5@example.org").startswith("451") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rcpt(srv, "nobody6@example.org").startswith("550 5.1.1")
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"


def test_fail_open_lets_the_recipient_through_the_rules_when_the_store_is_gone(site, tmp_path):
    rules = site.write(tmp_path)
    (tmp_path / "mailboxes.cf").write_text(site.settings("mailboxes").replace(str(site.server.port), "1") +
                                           "fail = open\n")
    with running_server(rules) as srv:
        # no entry, as the rules see it: refused as unknown, not tempfailed
        assert rcpt(srv, "alice@example.org").startswith("550 5.1.1")


def test_a_wrong_password_is_a_lookup_failure_not_a_crash(site, tmp_path):
    rules = site.write(tmp_path)
    text = site.settings("mailboxes")
    text = text.replace("bind_pw = secret", "bind_pw = wrong") if site.kind == "ldap" else \
        text.replace("password = secret", "password = wrong")
    (tmp_path / "mailboxes.cf").write_text(text)
    with running_server(rules) as srv:
        assert rcpt(srv, "alice@example.org") == "451 4.3.0 Temporary lookup failure"
