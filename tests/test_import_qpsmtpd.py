"""smtpfw.importers.qpsmtpd_conf: a qpsmtpd config folder -> an smtpfw ruleset,
its list files and a report of every plugin and file.

Golden fixture, tests/data/qpsmtpd-conf/<name>/:

    config.sample/   qpsmtpd's own config.sample/ folder; SOURCE and each file's first line cite it
    expected.rules   the ruleset
    expected.report  the report
    expected.files   the other files the import gives: name, lines, sha256

Regenerate them after an intended change with
``SMTPFW_UPDATE_GOLDEN=1 python -m pytest tests/test_import_qpsmtpd.py`` and review the diff.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest

from smtpfw.importers import ImportResult, Status, import_qpsmtpd_config
from smtpfw.importers.qpsmtpd_conf import parse_plugins
from tests.support.importers import lint_clean, manifest, run_ruleset_tests

DATA = Path(__file__).resolve().parent / "data" / "qpsmtpd-conf"
UPDATE = os.environ.get("SMTPFW_UPDATE_GOLDEN") == "1"
FIXTURES = ["sample"]


def run_import(name: str) -> ImportResult:
    return import_qpsmtpd_config(str(DATA / name / "config.sample"))








def write_config(where: Path, files: dict[str, str]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (where / name).write_text(text, encoding="utf-8")
    return where


# ---- the real configuration -----------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_golden(name):
    result = run_import(name)
    golden_dir = DATA / name
    got = {"expected.rules": result.ruleset_text, "expected.report": result.report_text(),
           "expected.files": manifest(result.files)}
    if UPDATE:
        for file, text in got.items():
            (golden_dir / file).write_text(text, encoding="utf-8")
    for file, text in got.items():
        assert text == (golden_dir / file).read_text(encoding="utf-8"), f"{name}/{file} differs from the import"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_lints_clean(name, tmp_path):
    assert lint_clean(run_import(name), tmp_path) == []


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cites_its_source(name):
    base = DATA / name / "config.sample"
    assert "commit dfe319b82b7388ec04c7ec20fe9c92cefe729c17" in (base / "SOURCE").read_text(encoding="utf-8")
    for path in sorted(base.iterdir()):
        if path.is_file() and path.name not in ("SOURCE", "IP"):
            first = path.read_text(encoding="utf-8").splitlines()[0]
            assert first.startswith("# Source: smtpd/qpsmtpd, config.sample/") and "licence: MIT" in first, path


@pytest.mark.parametrize("name", FIXTURES)
def test_every_plugin_and_file_is_reported(name):
    base = DATA / name / "config.sample"
    result = run_import(name)
    plugins = parse_plugins((base / "plugins").read_text(encoding="utf-8"))
    by_line = {(r.file, r.line): r for r in result.report if hasattr(r, "file")}
    for p in plugins:
        assert ("plugins", p.line) in by_line, p.text
        assert by_line[("plugins", p.line)].original == p.text
    reported = {getattr(r, "file", "") for r in result.report}
    for path in base.iterdir():
        if path.name != "plugins":
            assert path.name in reported, path.name
    counts = result.counts()
    assert counts[Status.TRANSLATED] + counts[Status.APPROXIMATED] > counts[Status.NOT_TRANSLATED]


SAMPLE_TESTS = """\
dns zen.spamhaus.org 203.0.113.66 = listed 127.0.0.2
dns ptr 203.0.113.5 = found mx.example.org
dns resolvable example.org = yes

# recipients: rcpthosts (localhost) and relay clients (127.0.0.1, 192.0.*) only
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt u@localhost -> accept
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt u@elsewhere.example \\
    -> reject at rcpt by relaying-denied code 550 text "Relaying denied"
client 192.0.2.7 ehlo mx.example.org from a@example.org rcpt u@elsewhere.example -> accept
# badrcptto: the bang path pattern and an address of the list
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt bad@example.com \\
    -> reject at rcpt by badrcptto code 550
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt a!b@localhost \\
    -> reject at rcpt by badrcptto-pattern text "bang paths"
# badmailfrom (reject naughty: held until DATA by naughty's `reject data`)
client 203.0.113.5 ehlo mx.example.org from badmailexample@microsoft.com rcpt u@localhost \\
    -> reject by badmailfrom code 550
client 203.0.113.5 ehlo mx.example.org from x@www.yahoo.com rcpt u@localhost \\
    -> reject by badmailfrom-www.yahoo.com text "yahoo never sends from www"
# dnsbl (reject naughty): a listed client is refused, a relay client is not checked
client 203.0.113.66 ehlo mx.example.org from a@example.org rcpt u@localhost -> reject by dnsbl-zen code 550
"""


def test_imported_sample_refuses_what_qpsmtpd_refuses(tmp_path):
    result = import_qpsmtpd_config(str(DATA / "sample" / "config.sample"))
    assert "spam.score" in result.ruleset_text          # `spamassassin reject 12`: no scanner here, no verdict
    result.write(str(tmp_path / "out"))
    assert run_ruleset_tests(tmp_path / "out" / "imported.rules", SAMPLE_TESTS) == SAMPLE_TESTS.count("->")


# ---- plugins and files ----------------------------------------------------------------------

def test_unknown_plugins_and_missing_files_are_reported(tmp_path):
    conf = write_config(tmp_path / "config", {
        "plugins": "frobnicate x y\ndnsbl\nbadmailfrom\nrcpt_ok\nqueue/smtp-forward 10.2.2.2 9025\n",
        "rcpthosts": "example.net\n.sub.example.net\n"})
    result = import_qpsmtpd_config(str(conf))
    by = {r.original: r for r in result.report}
    assert by["frobnicate x y"].status is Status.NOT_UNDERSTOOD
    assert by["dnsbl"].status is Status.NOT_TRANSLATED and "dnsbl_zones" in by["dnsbl"].note
    assert "missing or empty" in by["badmailfrom"].note
    assert by["queue/smtp-forward 10.2.2.2 9025"].status is Status.NOT_APPLICABLE
    assert lint_clean(result, tmp_path / "out") == []
    run_ruleset_tests(tmp_path / "out" / "imported.rules",
        "client 203.0.113.5 ehlo mx.a.example from a@b.example rcpt u@example.net -> accept\n"
        "client 203.0.113.5 ehlo mx.a.example from a@b.example rcpt u@x.sub.example.net -> accept\n"
        "client 203.0.113.5 ehlo mx.a.example from a@b.example rcpt u@sub.example.net "
        "-> reject at rcpt by relaying-denied\n")


# ---- the command, and a real server ------------------------------------------------------------

def test_the_command_writes_a_ruleset_that_lints_clean(tmp_path):
    from tests.support.cli import run
    out = tmp_path / "out"
    proc = run("import", "qpsmtpd-config", DATA / "sample" / "config.sample", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "summary:" in proc.stdout and (out / "imported.rules").exists()
    assert run("lint", out / "imported.rules").returncode == 0
    again = run("import", "qpsmtpd-config", DATA / "sample" / "config.sample", "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("where", ["missing", "no-plugins", "file"])
def test_a_folder_that_cannot_be_read_is_a_clear_error(tmp_path, where):
    from tests.support.cli import run
    target = {"missing": tmp_path / "nope", "no-plugins": tmp_path,
              "file": write_config(tmp_path / "c", {"plugins": "rcpt_ok\n"}) / "plugins"}[where]
    proc = run("import", "qpsmtpd-config", target, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "smtpfw import:" in proc.stderr


def test_a_listed_client_and_a_bad_sender_are_refused_by_a_real_server(tmp_path, shared_dns):
    """dnsbl with dnsbl_zones bl.test on the loopback DNS server (it lists
    127.0.0.2) and badmailfrom, on a real server."""
    from tests.smtp_client import RawClient
    from tests.support.server import running_server
    conf = write_config(tmp_path / "config", {
        "plugins": "dnsbl\nbadmailfrom\nrcpt_ok\n", "dnsbl_zones": "bl.test\n",
        "badmailfrom": "spammer@evil.example\n", "rcpthosts": "localhost\n"})
    result = import_qpsmtpd_config(str(conf))
    result.write(str(tmp_path / "out"))
    with running_server(tmp_path / "out" / "imported.rules", dns=shared_dns) as srv:
        c = RawClient(srv.address, source="127.0.0.2")
        assert c.reply().startswith("550 5.7.1 Blocked by bl.test: Listed in bl.test")
        c.close()
        with smtplib.SMTP(*srv.address, source_address=("127.0.0.3", 0), timeout=10) as s:
            s.ehlo("mx.example.org")
            assert s.mail("spammer@evil.example")[0] == 550
            s.rset()
            assert s.mail("friend@good.example")[0] == 250
            assert s.rcpt("postmaster@localhost")[0] == 250
