"""Maps in databases and directories (`map NAME = sqlite|pgsql|mysql|ldap
"settings.cf"`): the Postfix query template with bound parameters, the
settings file's diagnostics, and SQLite end to end through the real server.
PostgreSQL, MariaDB and OpenLDAP run for real in tests/test_maps_stores.py."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from smtpfw.diagnostics import Code
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.maps.tables.table import load_table
from smtpfw.maps.tables.template import TemplateError, compile_sql, expand, parse
from smtpfw.replay.session import replay_record
from tests.smtp_client import RawClient
from tests.support.server import recorded_sessions, running_server

# ---- the query template -------------------------------------------------------


def test_expansions_become_bound_parameters_in_every_dialect():
    q = "SELECT maildir FROM mailbox WHERE username='%s' AND active = '1'"
    assert compile_sql(q, "sqlite").text == "SELECT maildir FROM mailbox WHERE username=? AND active = '1'"
    assert compile_sql(q, "pgsql").text == "SELECT maildir FROM mailbox WHERE username=$1 AND active = '1'"
    assert compile_sql(q, "mysql").text == "SELECT maildir FROM mailbox WHERE username=%s AND active = '1'"
    two = compile_sql("SELECT goto FROM alias WHERE address='%u@%d' OR address='@%d'", "pgsql")
    assert two.text == "SELECT goto FROM alias WHERE address=$1 OR address=$2"
    assert two.bind("Bob@Example.org") == ["Bob@Example.org", "@Example.org"]


def test_a_key_never_changes_the_query():
    q = compile_sql("SELECT 1 FROM users WHERE email='%s'", "sqlite")
    evil = "x' OR '1'='1"
    assert q.text == "SELECT 1 FROM users WHERE email=?"
    assert q.bind(evil) == [evil]


def test_percent_signs_and_quotes_outside_expansions_are_kept():
    q = compile_sql("SELECT 1 FROM t WHERE a LIKE '%%.example' AND b = 'it''s' AND c='%s'", "mysql")
    assert q.text == "SELECT 1 FROM t WHERE a LIKE '%%.example' AND b = 'it''s' AND c=%s"     # mysql formats with %
    q = compile_sql("SELECT 1 FROM t WHERE a LIKE '%%.example' AND c='%s'", "sqlite")
    assert q.text == "SELECT 1 FROM t WHERE a LIKE '%.example' AND c=?"


def test_postfix_suppression_rules():
    q = compile_sql("SELECT 1 FROM t WHERE domain='%d'", "sqlite")
    assert q.bind("user@example.org") == ["example.org"]
    assert q.bind("example.org") is None                   # %d of a key without @: no lookup
    assert compile_sql("SELECT 1 FROM t WHERE u='%u'", "sqlite").bind("@example.org") is None
    labels = parse("%3.%2.%1")
    assert expand(labels, "u@mail.example.com") == "mail.example.com"
    assert expand(labels, "u@example.com") is None         # too few labels


def test_result_format_expands_the_result_and_the_key():
    fmt = parse("%u+%U@%d")
    assert expand(fmt, "alice@example.org", result="box@store.example") == "box+alice@store.example"


@pytest.mark.parametrize("query, problem", [
    ("SELECT 1 FROM t WHERE a = '%x'", "`%x` is not an expansion"),
    ("SELECT 1 FROM t WHERE a = '%s", "not closed"),
    ('SELECT 1 FROM "%s" WHERE a = 1', "inside the quoted name"),
    ("SELECT 1 FROM t WHERE a = 1 %", "at the end"),
])
def test_bad_templates_are_refused(query, problem):
    with pytest.raises(TemplateError, match=problem):
        compile_sql(query, "sqlite")


# ---- the settings file ----------------------------------------------------------

def _diags(tmp_path: Path, kind: str, text: str):
    cf = tmp_path / "m.cf"
    cf.write_text(text)
    table, diags = load_table("m", str(cf), "m.cf", kind)
    return table, diags


def test_a_settings_file_without_its_query_is_refused(tmp_path):
    table, diags = _diags(tmp_path, "sqlite", "dbpath = x.sqlite\n")
    assert table is None
    assert [(d.code, d.message) for d in diags] == [(Code.E306_TABLE_CONFIG_ERROR, "a sqlite map needs `query = ...`")]


def test_unsupported_settings_are_refused_not_ignored(tmp_path):
    table, diags = _diags(tmp_path, "ldap", "search_base = dc=example, dc=org\nstart_tls = yes\n")
    assert table is None
    (d,) = diags
    assert d.code == Code.E306_TABLE_CONFIG_ERROR and "`start_tls`" in d.message
    assert (d.span.line, d.span.column) == (2, 1)


def test_an_unknown_setting_is_a_warning_with_a_suggestion(tmp_path):
    table, diags = _diags(tmp_path, "pgsql", "dbname = mail\nquery = SELECT 1 FROM t WHERE a='%s'\nqeury = x\n")
    assert table is not None
    (d,) = diags
    assert d.code == Code.W307_TABLE_PARAMETER_UNKNOWN and d.help == "did you mean `query`?"


def test_bad_smtpfw_settings(tmp_path):
    table, diags = _diags(tmp_path, "sqlite", "dbpath = x\nquery = SELECT 1 FROM t WHERE a='%s'\nfail = closed\n")
    assert table is None and "fail = tempfail" in diags[0].message and diags[0].span.line == 3
    table, diags = _diags(tmp_path, "sqlite", "dbpath = x\nquery = SELECT 1 FROM t WHERE a='%s'\ntimeout = soon\n")
    assert table is None and "not a number" in diags[0].message


def test_a_query_that_ignores_the_key_is_refused(tmp_path):
    table, diags = _diags(tmp_path, "sqlite", "dbpath = x\nquery = SELECT 1 FROM t\n")
    assert table is None and "does not use the key" in diags[0].message


def test_lint_names_a_misspelt_kind_and_a_missing_file(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text('map users = sqlit "users.cf"\non rcpt:\n    accept if rcpt in users\n')
    ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is None
    assert diags[0].code == Code.E002_SYNTAX_ERROR and diags[0].help.startswith("did you mean `sqlite`?")
    rules.write_text('map users = sqlite "users.cf"\non rcpt:\n    accept if rcpt in users\n')
    ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is None and diags[0].code == Code.E301_LIST_FILE_MISSING


# ---- SQLite end to end -----------------------------------------------------------

RULES = """
map mailboxes = sqlite "mailboxes.cf"
map quota = sqlite "quota.cf"
on rcpt:
    [unknown-user] reject 550 5.1.1 "<{rcpt}>: Recipient address rejected: User unknown" if rcpt.domain = "example.org" and not rcpt in mailboxes
    [local] accept if rcpt.domain = "example.org"
    [relay] reject 554 5.7.1 "Relaying denied"
on data:
    add_header "X-Quota" "{quota(rcpt)}" if quota(rcpt) != ""
"""


def make_site(tmp_path: Path, extra: str = "") -> Path:
    db = sqlite3.connect(tmp_path / "users.sqlite")
    db.executescript("""
        CREATE TABLE users (email TEXT PRIMARY KEY, quota INTEGER, active INTEGER);
        INSERT INTO users VALUES ('alice@example.org', 100, 1), ('bob@example.org', 0, 0);
        CREATE TABLE aliases (source TEXT, destination TEXT);
        INSERT INTO aliases VALUES ('postmaster@example.org', 'alice@example.org');
    """)
    db.commit()
    db.close()
    (tmp_path / "mailboxes.cf").write_text(
        "# as mail-in-a-box writes it\n"
        "dbpath = users.sqlite\n"
        "query = SELECT 1 FROM users WHERE email='%s' AND active = 1\n"
        "  UNION SELECT 1 FROM aliases WHERE source='%s'\n" + extra)
    (tmp_path / "quota.cf").write_text("dbpath = users.sqlite\nquery = SELECT quota FROM users WHERE email='%u@%d'\n")
    (tmp_path / "site.rules").write_text(RULES)
    return tmp_path / "site.rules"


def rcpt(srv, address: str) -> str:
    with RawClient(srv.address, timeout=30) as c:
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<carol@sender.example>")
        reply = c.cmd(f"RCPT TO:<{address}>")
        c.cmd("QUIT")
    return reply


def test_unknown_recipients_are_refused_at_rcpt(tmp_path):
    with running_server(make_site(tmp_path)) as srv:
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "Postmaster@Example.ORG") == "250 2.1.5 Recipient OK"           # an alias; case folded
        assert rcpt(srv, "bob@example.org").startswith("550 5.1.1 <bob@example.org>")    # inactive
        assert rcpt(srv, "nobody@example.org").startswith("550 5.1.1 <nobody@example.org>")
        assert rcpt(srv, "x@elsewhere.example") == "554 5.7.1 Relaying denied"


def test_injection_attempts_are_looked_up_not_run(tmp_path):
    with running_server(make_site(tmp_path)) as srv:
        for evil in ('"x\' OR \'1\'=\'1"@example.org', '"\'; DROP TABLE users; --"@example.org'):
            assert rcpt(srv, evil).startswith("550 5.1.1"), evil
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"               # the table is still there
    db = sqlite3.connect(tmp_path / "users.sqlite")
    assert db.execute("SELECT count(*) FROM users").fetchone() == (2,)


def test_answers_are_cached_and_the_cache_expires(tmp_path):
    with running_server(make_site(tmp_path, "cache_ttl = 0.5\nnegative_cache_ttl = 0.5\n")) as srv:
        table = lambda: srv.server.ruleset.tables["mailboxes"]      # noqa: E731
        for _ in range(3):
            assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
            assert rcpt(srv, "nobody@example.org").startswith("550")
        assert srv.call(lambda: table().asked) == 2
        time.sleep(0.6)
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        assert srv.call(lambda: table().asked) == 3


def test_a_map_value_is_a_field(tmp_path):
    with running_server(make_site(tmp_path)) as srv:
        import smtplib
        with smtplib.SMTP(*srv.address, timeout=30) as s:
            s.ehlo("client.example")
            assert s.sendmail("carol@sender.example", ["alice@example.org"], b"Subject: hi\r\n\r\nhi\r\n") == {}
        from tests.support.server import maildir_messages
        (msg,) = maildir_messages(Path(srv.tmpdir) / "maildir")
        assert b"X-Quota: 100\r\n" in msg


def test_a_broken_store_tempfails_as_postfix_does(tmp_path):
    rules = make_site(tmp_path)
    with running_server(rules) as srv:
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        (tmp_path / "users.sqlite").unlink()
        (tmp_path / "users.sqlite").write_bytes(b"this is not a database" * 100)
        assert rcpt(srv, "nobody@example.org") == "451 4.3.0 Temporary lookup failure"
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"       # still cached: found
        assert rcpt(srv, "x@elsewhere.example") == "554 5.7.1 Relaying denied"  # the rule that asks is not reached


def test_fail_open_treats_a_broken_store_as_no_entry(tmp_path):
    rules = make_site(tmp_path, "fail = open\n")
    (tmp_path / "users.sqlite").unlink()
    with running_server(rules) as srv:
        assert rcpt(srv, "alice@example.org").startswith("550 5.1.1")


def test_a_locked_database_answers_within_the_timeout(tmp_path):
    rules = make_site(tmp_path, "timeout = 0.3\n")
    writer = sqlite3.connect(tmp_path / "users.sqlite", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with running_server(rules) as srv:
            started = time.monotonic()
            assert rcpt(srv, "alice@example.org") == "451 4.3.0 Temporary lookup failure"
            assert time.monotonic() - started < 2.0
    finally:
        writer.execute("ROLLBACK")


def test_recorded_answers_replay_the_same_verdicts_after_the_table_changed(tmp_path):
    rules = make_site(tmp_path)
    recording = tmp_path / "recordings"
    with running_server(rules, recording_enabled=True, recording_path=str(recording)) as srv:
        assert rcpt(srv, "alice@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "nobody@example.org").startswith("550 5.1.1")
        records = recorded_sessions(recording, 2)
    db = sqlite3.connect(tmp_path / "users.sqlite")
    db.execute("DELETE FROM users")
    db.commit()
    ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is not None, diags
    verdicts = []
    for record in records:
        result = replay_record(ruleset, record)
        verdicts.append(result.verdict.key())
    assert [f["value"]["status"] for r in records for f in r["facts"] if f["provider"] == "map"] == ["found", "none"]
    assert verdicts == [("accepted", None, None, None), ("rejected", "rcpt", "unknown-user", 550)]
    # a replay of a session whose lookup was not recorded: the map's failure answer, said so in the trace
    bare = dict(records[1], facts=[])
    assert replay_record(ruleset, bare).verdict.key() == ("tempfailed", "rcpt", "unknown-user", 451)


def test_the_shipped_example_refuses_unknown_recipients_end_to_end(tmp_path):
    import shutil
    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "rules" / "examples", tmp_path / "examples")
    shutil.copy(repo / "rules" / "default.rules", tmp_path / "default.rules")
    maps = tmp_path / "examples" / "maps"
    db = sqlite3.connect(maps / "users.sqlite")
    db.executescript((maps / "users.sql").read_text())
    db.close()
    with running_server(tmp_path / "examples" / "recipient_maps.rules") as srv:
        assert rcpt(srv, "root@localhost") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "postmaster@localhost") == "250 2.1.5 Recipient OK"        # an alias
        assert rcpt(srv, "nobody@localhost").endswith("User unknown in virtual mailbox table")
        assert rcpt(srv, "bob@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(srv, "mallory@example.org").endswith("User unknown in relay recipient table")


def test_lint_takes_rules_that_read_a_database_maps_value(tmp_path):
    """It used to read every map that is not an access file as a pattern file (E999)."""
    from smtpfw.lint import lint_files
    (tmp_path / "m.cf").write_text("dbpath = x.sqlite\nquery = SELECT goto FROM alias WHERE address='%s'\n")
    rules = tmp_path / "t.rules"
    rules.write_text('map m = sqlite "m.cf"\non mail:\n    [mm] reject if m(sender) != ""\n'
                     "on rcpt:\n    apply m(rcpt)\n"
                     '    reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    diags, _sources, _files = lint_files([str(rules)])
    assert [d.code for d in diags] == [], diags
