"""smtpfw.importers.postfix_conf: a Postfix main.cf -> an smtpfw ruleset, its
map files and a report of every parameter and restriction.

Golden fixtures, tests/data/postfix-conf/<name>/:

    main.cf          a real configuration; its first line cites the source (repository, path, commit)
    maps/            the files it names: the repository's own, or stand-ins that say so on their first line
    expected.rules   the ruleset
    expected.report  the report (one entry per parameter and per restriction)
    expected.files   the other files the import gives: name, lines, sha256

Regenerate them after an intended change with
``SMTPFW_UPDATE_GOLDEN=1 python -m pytest tests/test_import_postfix_conf.py`` and review the diff.
Every imported ruleset must lint clean: no error, and each warning explained by a report line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from smtpfw.importers import (
    ImportResult,
    ReportLine,
    Status,
    import_main_cf,
    parse_main_cf,
)
from smtpfw.importers.postfix_conf import _ARG, split_list
from smtpfw.lint import lint_file
from tests.support.importers import manifest, run_ruleset_tests

DATA = Path(__file__).resolve().parent / "data" / "postfix-conf"
UPDATE = os.environ.get("SMTPFW_UPDATE_GOLDEN") == "1"
FIXTURES = ["mailinabox", "mailcow", "docker-mailserver", "iredmail"]
LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
         "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
         "smtpd_end_of_data_restrictions", "postscreen_access_list", "postscreen_dnsbl_sites")


def run_import(name: str) -> ImportResult:
    base = DATA / name
    return import_main_cf(str(base / "main.cf"), map_dir=str(base / "maps"))




def lint_import(result: ImportResult, where: Path) -> tuple[list, str]:
    result.write(str(where))
    diags, _sources = lint_file(str(where / "imported.rules"))
    return diags, result.report_text()


def unexplained(diags: list, report: str) -> list:
    """Diagnostics that are errors, or warnings/hints no report line explains
    (a report line names the code, the file and the line)."""
    out = []
    for d in diags:
        if d.level.value == "error":
            out.append(d)
            continue
        file = os.path.basename(d.span.file) if d.span else ""
        if not any(str(d.code) in line and file in line and (d.span is None or f"line {d.span.line}" in line)
                   for line in report.splitlines()):
            out.append(d)
    return out


def write_main_cf(tmp_path: Path, text: str, maps: dict[str, str] | None = None) -> tuple[str, str]:
    (tmp_path / "etc").mkdir(parents=True)
    (tmp_path / "etc" / "main.cf").write_text(text, encoding="utf-8")
    mapdir = tmp_path / "maps"
    mapdir.mkdir()
    for name, content in (maps or {}).items():
        (mapdir / name).write_text(content, encoding="utf-8")
    return str(tmp_path / "etc" / "main.cf"), str(mapdir)




def lines_for(result: ImportResult, parameter: str) -> list[ReportLine]:
    return [r for r in result.report if r.parameter == parameter]


# ---- the real configurations ----------------------------------------------------

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_golden(name):
    result = run_import(name)
    base = DATA / name
    got = {"expected.rules": result.ruleset_text, "expected.report": result.report_text(),
           "expected.files": manifest(result.files)}
    if UPDATE:
        for file, text in got.items():
            (base / file).write_text(text, encoding="utf-8")
    for file, text in got.items():
        assert text == (base / file).read_text(encoding="utf-8"), f"{name}/{file} differs from the import"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_lints_clean(name, tmp_path):
    diags, report = lint_import(run_import(name), tmp_path)
    assert unexplained(diags, report) == [], [f"{d.code} {d.span}: {d.message}" for d in diags]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cites_its_sources(name):
    base = DATA / name
    first = (base / "main.cf").read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# Source: [\w.-]+/[\w.-]+, .+, commit [0-9a-f]{40}", first), first
    for path in sorted((base / "maps").iterdir()):
        head = path.read_text(encoding="utf-8").splitlines()[0]
        assert head.startswith("#") and ("Stand-in" in head or "commit" in head or "stand-in" in head), path


@pytest.mark.parametrize("name", FIXTURES)
def test_every_parameter_and_restriction_is_reported(name):
    """Never a silent drop: a report line for every setting of main.cf, and
    for every element of every restriction list."""
    result = run_import(name)
    params, bad = parse_main_cf((DATA / name / "main.cf").read_text(encoding="utf-8"))
    reported = {r.parameter for r in result.report}
    assert not bad
    for p in params:
        assert p.name in reported, f"{p.name} (line {p.line}) is not in the report"
    effective = {p.name: p for p in params}
    for name_ in LISTS:
        if name_ not in effective:
            continue
        lines = [r for r in lines_for(result, name_) if r.line == effective[name_].line]
        value = effective[name_].value
        if "$" in value:        # an expanded list is counted through its report lines alone
            assert lines
            continue
        tokens = split_list(value)
        items = len(tokens) - sum(1 for t in tokens if t.lower() in _ARG)
        assert len(lines) == items, (name_, [r.original for r in lines])


def test_fixture_counts():
    """The share of each fixture that is translated (exactly or with the
    difference said) and what is reported instead; see the golden reports."""
    counts = {name: run_import(name).counts() for name in FIXTURES}
    for name, c in counts.items():
        assert c[Status.TRANSLATED] + c[Status.APPROXIMATED] > 0, name
        assert sum(c.values()) == len(run_import(name).report)


# ---- what the imported rules do -----------------------------------------------------

DMS_TESTS = """\
dns resolvable example.org = yes
dns resolvable example.com = yes
dns resolvable elsewhere.example = yes
dns zen.spamhaus.org 203.0.113.66 = listed 127.0.0.4
dns b.barracudacentral.org 203.0.113.66 = listed 127.0.0.2
dns list.dnswl.org 203.0.113.77 = listed 127.0.10.3
dns zen.spamhaus.org 203.0.113.77 = listed 127.0.0.4

# mail for a hosted domain (maps/vhost) from anyone
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt user@example.com -> accept
# relaying: refused, except for mynetworks
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt x@elsewhere.example \\
    -> reject at rcpt by client-reject_unauth_destination code 554 text "Relay access denied"
client 127.0.0.1 ehlo mx.example.org from a@example.org rcpt x@elsewhere.example -> accept
client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt x%elsewhere.example@example.com \\
    -> reject at rcpt by client-reject_unauth_destination
# HELO checks (at RCPT, smtpd_delay_reject = yes)
client 203.0.113.5 ehlo localhost from a@example.org rcpt user@example.com \\
    -> reject at rcpt by rcpt-reject_non_fqdn_helo_hostname code 504
# sender domain without DNS: 450, but not for mynetworks (permit_mynetworks in that list)
client 203.0.113.5 ehlo mx.example.org from a@nowhere.example rcpt user@example.com \\
    -> tempfail at rcpt by sender-reject_unknown_sender_domain code 450
client 127.0.0.1 ehlo mx.example.org from a@nowhere.example rcpt user@example.com -> accept
# postscreen: zen 3 + barracuda 2 >= 3, refused at RCPT; dnswl -4 brings another under the threshold
client 203.0.113.66 ehlo mx.example.org from a@example.org rcpt user@example.com \\
    -> reject at rcpt by postscreen-dnsbl-threshold code 550
client 203.0.113.77 ehlo mx.example.org from a@example.org rcpt user@example.com -> accept
"""


def test_imported_rules_behave_like_postfix(tmp_path):
    result = run_import("docker-mailserver")
    result.write(str(tmp_path))
    assert run_ruleset_tests(tmp_path / "imported.rules", DMS_TESTS) == DMS_TESTS.count("->")


# ---- main.cf syntax ------------------------------------------------------------------

def test_logical_lines_comments_and_bad_lines():
    params, bad = parse_main_cf(
        "# a comment\n"
        "alpha = one,\n"
        "    two\n"
        "  # an indented comment does not end the value\n"
        "\n"
        "\tthree\n"
        "beta=\n"
        "gamma = x # not a comment\n"
        "not a setting\n"
        "  orphan? no: continues `not a setting`\n")
    assert [(p.name, p.value, p.line) for p in params] == [
        ("alpha", "one, two three", 2), ("beta", "", 7), ("gamma", "x # not a comment", 8)]
    assert bad == [(9, "not a setting orphan? no: continues `not a setting`")]


def test_lists_split_on_commas_and_whitespace_and_keep_groups():
    assert split_list("a, b\tc,,d  e") == ["a", "b", "c", "d", "e"]
    assert split_list("check_policy_service { inet:127.0.0.1:10023, timeout=10s }, permit") == [
        "check_policy_service", "inet:127.0.0.1:10023, timeout=10s", "permit"]
    assert split_list("check_helo_access inline:{ a=OK, { b = REJECT no } }") == [
        "check_helo_access", "inline:{ a=OK, { b = REJECT no } }"]


def test_parameter_expansion(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "myhostname = mx.example.net\n"
        "mydestination = $myhostname, ${mydomain}, $(mydomain)-x.example, ${unset_one?a.example} "
        "${unset_one:b.example} ${mydomain?{c.example}:{d.example}} ${empty_one?{e.example}:{f.example}}\n"
        "empty_one =\n"
        "smtpd_relay_restrictions = $my_relay\n"
        "my_relay = permit_mynetworks reject_unauth_destination\n"
        "mynetworks = 192.0.2.0/24\n"))
    result = import_main_cf(main_cf, map_dir=maps)
    assert 'list mydestination = ["mx.example.net", "example.net", "example.net-x.example", "b.example", ' \
           '"c.example", "f.example"]' in result.ruleset_text
    assert "[relay-reject_unauth_destination] reject 554 5.7.1" in result.ruleset_text
    (used,) = lines_for(result, "my_relay")
    assert used.status is Status.TRANSLATED and "$my_relay in smtpd_relay_restrictions" in used.note
    undefined = [r for r in result.report if r.parameter == "(expansion)"]
    assert [r.original for r in undefined] == ["$unset_one"]
    assert undefined[0].status is Status.NOT_UNDERSTOOD


def test_machine_names_stand_for_localnames_or_are_reported(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8\n"
                                            "smtpd_relay_restrictions = reject_unauth_destination\n")
    result = import_main_cf(main_cf, map_dir=maps)
    assert 'rcpt.domain not in localnames and rcpt.domain not in mydestination' in result.ruleset_text
    # below compatibility level 2 relay_domains is $mydestination: its domains and their subdomains
    main_cf0, maps0 = write_main_cf(tmp_path / "zero", "mynetworks = 127.0.0.0/8\n"
                                                        "smtpd_relay_restrictions = reject_unauth_destination\n")
    zero = import_main_cf(main_cf0, map_dir=maps0)
    assert 'rcpt.domain not within localnames and rcpt.domain not within mydestination' in zero.ruleset_text
    (dest,) = lines_for(result, "mydestination")
    assert dest.status is Status.APPROXIMATED and "localhost.$mydomain" in dest.note


# ---- restrictions -----------------------------------------------------------------------

RESTRICTION_CLASSES = """\
# Postfix RESTRICTION_CLASS_README's setups, with .example names
mynetworks = 198.51.100.0/24
mydestination = my.example, this.example
smtpd_restriction_classes = restrictive, permissive, insiders_only
restrictive = reject_unknown_sender_domain, reject_unknown_client_hostname
permissive = permit
insiders_only = check_sender_access hash:/etc/postfix/insiders, reject
smtpd_recipient_restrictions =
    permit_mynetworks, reject_unauth_destination,
    check_recipient_access hash:/etc/postfix/recipient_access,
    check_recipient_access hash:/etc/postfix/protected_destinations
"""


def test_restriction_classes(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, RESTRICTION_CLASSES, {
        "recipient_access": "joe@my.example permissive\njane@my.example restrictive\n",
        "protected_destinations": "all@my.example insiders_only\n",
        "insiders": "my.example OK\n"})
    result = import_main_cf(main_cf, map_dir=maps)
    text = result.ruleset_text
    assert "class restrictive:" in text and "class insiders_only:" in text and "class permissive:" in text
    assert "[insiders_only-reject] reject 554 5.7.1" in text
    assert "apply recipient_access(rcpt)" in text
    assert result.files["maps/recipient_access"] == "joe@my.example permissive\njane@my.example restrictive\n"
    (permit,) = lines_for(result, "permissive")
    assert permit.status is Status.APPROXIMATED and "classes do not accept" in permit.note
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []
    run_ruleset_tests(tmp_path / "out" / "imported.rules",
        "dns ptr 203.0.113.5 = found mx.example.org\n"
        "dns resolvable example.org = yes\n"
        "client 203.0.113.9 ehlo mx.nowhere.example from a@example.org rcpt joe@my.example -> accept\n"
        "client 203.0.113.9 ehlo mx.nowhere.example from a@example.org rcpt jane@my.example "
        "-> tempfail at rcpt by restrictive-reject_unknown_client_hostname code 450\n"
        "client 203.0.113.5 ehlo mx.example.org from a@example.org rcpt all@my.example "
        "-> reject at rcpt by insiders_only-reject code 554\n"
        "client 203.0.113.5 ehlo mx.example.org from boss@my.example rcpt all@my.example -> accept\n"
        "client 198.51.100.7 ehlo pc.my.example from a@example.org rcpt all@my.example -> accept\n")


def test_a_permit_ends_only_its_own_list(tmp_path):
    """permit_mynetworks and an access map's OK are guards of the later rules
    of their list; the relay check of the next list still applies."""
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 192.0.2.0/24\nmydestination = example.org\n"
        "smtpd_sender_restrictions = check_sender_access hash:/etc/postfix/senders, reject_non_fqdn_sender, permit,"
        " reject_unknown_sender_domain\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"),
        {"senders": "friend@partner.example OK\nspam@bad.example REJECT no thanks\n"})
    result = import_main_cf(main_cf, map_dir=maps)
    text = result.ruleset_text
    assert "accept" not in text.split("on rcpt:")[1]
    assert '[sender-check_sender_access] apply senders(sender) if senders(sender) not matches' in text
    assert re.search(r'\[sender-reject_non_fqdn_sender\] .* if senders\(sender\) not matches ".*" and not sender.null',
                     text)
    (after,) = [r for r in lines_for(result, "smtpd_sender_restrictions")
                if r.original == "reject_unknown_sender_domain"]
    assert after.status is Status.TRANSLATED and "`permit` before it" in after.note
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []
    run_ruleset_tests(tmp_path / "out" / "imported.rules",
        "client 203.0.113.5 ehlo mx.partner.example from friend@partner.example rcpt x@elsewhere.example "
        "-> reject at rcpt by relay-reject_unauth_destination\n"
        "client 203.0.113.5 ehlo mx.partner.example from spam@bad.example rcpt x@example.org "
        "-> reject at rcpt by sender-check_sender_access code 554 text \"no thanks\"\n"
        "client 203.0.113.5 ehlo mx.partner.example from friend@partner.example rcpt x@example.org -> accept\n"
        "client 203.0.113.5 ehlo mx.partner.example from joe@localhost rcpt x@example.org "
        "-> reject at rcpt by sender-reject_non_fqdn_sender code 504\n")


def test_unknown_and_untranslatable_things_are_reported(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\n"
        "smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:10023,"
        " reject_frobnicate, defer_if_permit, check_recipient_mx_access hash:/etc/postfix/mx,"
        " check_client_access tcp:127.0.0.1:9999\n"
        "smtpd_frobnicate = yes\n"
        "smtpd_tls_cert_file = /etc/ssl/x.pem\n"))
    result = import_main_cf(main_cf, map_dir=maps)
    by_item = {r.original: r for r in lines_for(result, "smtpd_recipient_restrictions")}
    assert by_item["check_policy_service inet:127.0.0.1:10023"].status is Status.NOT_TRANSLATED
    assert "policy server" in by_item["check_policy_service inet:127.0.0.1:10023"].note
    assert by_item["reject_frobnicate"].status is Status.NOT_UNDERSTOOD
    assert by_item["defer_if_permit"].status is Status.NOT_TRANSLATED
    assert by_item["check_recipient_mx_access hash:/etc/postfix/mx"].status is Status.NOT_TRANSLATED
    assert "tcp:" in by_item["check_client_access tcp:127.0.0.1:9999"].note
    (frob,) = lines_for(result, "smtpd_frobnicate")
    assert frob.status is Status.NOT_UNDERSTOOD
    (tls,) = lines_for(result, "smtpd_tls_cert_file")
    assert tls.status is Status.NOT_APPLICABLE and "tls.cert" in tls.note
    assert "#   check_policy_service inet:127.0.0.1:10023\n    #     (not translated: see the report)" in \
        result.ruleset_text
    assert result.report_text().endswith("\n") and "summary:" in result.report_text()


def test_tables_hash_source_cidr_missing_and_refused_lines(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\n"
        "smtpd_client_restrictions = check_client_access cidr:/etc/postfix/clients.cidr,"
        " check_client_access hash:/etc/postfix/client_names\n"
        "smtpd_helo_restrictions = check_helo_access pcre:/etc/postfix/helo.pcre\n"
        "smtpd_sender_restrictions = check_sender_access hash:/etc/postfix/missing_senders\n"),
        {"clients.cidr": "198.51.100.0/24 REJECT go away\n10.1.2.3/8 REJECT host bits\n",
         "client_names": "mx.example.com OK\n", "client_names.db": "\x00binary\x00",
         "helo.pcre": "/^(?!mx)/ REJECT lookahead\n/^localhost$/ REJECT local\n/^Localhost$/i REJECT never\n"})
    result = import_main_cf(main_cf, map_dir=maps)
    assert result.files["maps/client_names"] == "mx.example.com OK\n"       # the postmap source, not the .db
    assert result.files["maps/clients.cidr"].splitlines()[1].startswith("# smtpfw import: left out (E304")
    assert result.files["maps/helo.pcre"].splitlines()[0].startswith("# smtpfw import: left out (E404")
    assert result.files["maps/missing_senders"].startswith("# Stand-in for /etc/postfix/missing_senders")
    notes = "\n".join(r.note for r in result.report)
    assert "maps/clients.cidr line 2" in notes and "maps/helo.pcre line 1" in notes
    assert "maps/helo.pcre line 3: pattern /^Localhost$/i can never match helo" in notes     # lint's W402
    assert "/etc/postfix/missing_senders was not found" in notes
    # hostname keys: the client's verified name is looked up too
    assert re.search(r"apply client_names\(client.rdns\) if .*client.fcrdns", result.ruleset_text)
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []


def test_map_values_smtpfw_does_not_act_on_are_explained(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\n"
        "smtpd_recipient_restrictions = check_sender_access hash:/etc/postfix/senders\n"),
        {"senders": "bulk@example.com DISCARD\nok@example.com OK\nspam@example.com HOLD\n"})
    result = import_main_cf(main_cf, map_dir=maps)
    diags, report = lint_import(result, tmp_path / "out")
    warnings = [d for d in diags if str(d.code) == "W305"]
    assert len(warnings) == 2
    assert unexplained(diags, report) == []
    (line,) = lines_for(result, "smtpd_recipient_restrictions")
    assert line.status is Status.APPROXIMATED and "`DISCARD`" in line.note and "`HOLD`" in line.note


def test_smtpd_delay_reject_no_puts_lists_at_their_own_stage(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\nsmtpd_delay_reject = no\n"
        "smtpd_client_restrictions = permit_sasl_authenticated, reject_unknown_reverse_client_hostname,"
        " reject_non_fqdn_sender\n"
        "smtpd_helo_restrictions = reject_invalid_helo_hostname\n"
        "smtpd_sender_restrictions = permit_sasl_authenticated, reject_non_fqdn_sender\n"))
    result = import_main_cf(main_cf, map_dir=maps)
    text = result.ruleset_text
    assert re.search(r"on connect:\n(    #.*\n)*    \[client-reject_unknown_reverse_client_hostname\]", text)
    assert re.search(r"on helo:\n(    #.*\n)*    \[helo-reject_invalid_helo_hostname\]", text)
    assert "[sender-reject_non_fqdn_sender] reject 504 5.5.2" in text and "if not auth and" in text
    client = {r.original: r for r in lines_for(result, "smtpd_client_restrictions")}
    assert client["permit_sasl_authenticated"].status is Status.NOT_TRANSLATED
    assert "nobody has authenticated yet" in client["permit_sasl_authenticated"].note
    assert "skips it too" in client["reject_non_fqdn_sender"].note
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []


def test_postscreen_scores_thresholds_and_actions(tmp_path):
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\n"
        "postscreen_dnsbl_sites = zen.spamhaus.org=127.0.0.[2..11]*3, bl.example.net*2\n"
        "    list.dnswl.org=127.0.[0..255].[1;2;3]*-4, bad.example=not-a-code\n"
        "postscreen_dnsbl_threshold = 4\npostscreen_dnsbl_allowlist_threshold = -1\n"
        "postscreen_dnsbl_action = drop\npostscreen_greet_action = ignore\n"))
    result = import_main_cf(main_cf, map_dir=maps)
    text = result.ruleset_text
    assert "[postscreen-zen] score dnsbl +3 if client.ip listed in zen codes [127.0.0.[2..11]]" in text
    assert "[postscreen-list_dnswl] score dnsbl -4 if client.ip listed in list_dnswl codes [127.0.[0..255].[1;2;3]]" \
        in text
    assert "[postscreen-dnsbl-allowlist] accept if score.dnsbl <= -1" in text
    assert '[postscreen-dnsbl-threshold] disconnect 521 5.7.1 "Service unavailable' in text
    assert "option delay_reject" not in text
    sites = {r.original: r for r in lines_for(result, "postscreen_dnsbl_sites")}
    assert sites["bad.example=not-a-code"].status is Status.NOT_TRANSLATED
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []


def test_database_maps_are_applied_and_lint_clean(tmp_path):
    """A check_*_access on a database table is a rule reading the map's
    value, and the ruleset lints clean (lint once failed on those: E999)."""
    main_cf, maps = write_main_cf(tmp_path, (
        "mynetworks = 127.0.0.0/8\nmydestination = example.org\n"
        "virtual_mailbox_domains = proxy:mysql:/etc/postfix/domains.cf\n"
        "smtpd_recipient_restrictions = check_recipient_access mysql:/etc/postfix/policy.cf,"
        " reject_unauth_destination\n"),
        {"domains.cf": "hosts = 127.0.0.1\nuser = u\npassword = p\ndbname = mail\n"
                       "query = SELECT 1 FROM domain WHERE domain='%s'\n",
         "policy.cf": "hosts = 127.0.0.1\nuser = u\npassword = p\ndbname = mail\n"
                      "query = SELECT action FROM policy WHERE address='%s'\n"})
    result = import_main_cf(main_cf, map_dir=maps)
    assert 'map domains = mysql "maps/domains.cf"' in result.ruleset_text
    assert "rcpt.domain not in domains" in result.ruleset_text
    assert "[rcpt-check_recipient_access] apply policy(rcpt)" in result.ruleset_text
    assert "#     [rcpt-check_recipient_access]" not in result.ruleset_text
    assert "maps/policy.cf" in result.files
    diags, report = lint_import(result, tmp_path / "out")
    assert unexplained(diags, report) == []


def test_write_refuses_to_overwrite(tmp_path):
    result = run_import("docker-mailserver")
    written = result.write(str(tmp_path))
    assert sorted(os.path.relpath(p, tmp_path) for p in written) == ["imported.rules", "maps/vhost", "maps/virtual"]
    with pytest.raises(FileExistsError):
        result.write(str(tmp_path))
    result.write(str(tmp_path), overwrite=True)


def test_the_command_writes_a_ruleset_that_lints_clean(tmp_path):
    from tests.support.cli import run
    fixture = DATA / "docker-mailserver"
    out = tmp_path / "out"
    proc = run("import", "postfix-config", fixture / "main.cf", "-o", out, "--map-dir", fixture / "maps")
    assert proc.returncode == 0, proc.stderr
    assert "summary:" in proc.stdout and (out / "imported.rules").exists()
    assert run("lint", out / "imported.rules").returncode == 0
    again = run("import", "postfix-config", fixture / "main.cf", "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr


def test_a_main_cf_that_cannot_be_read_is_a_clear_error(tmp_path):
    from tests.support.cli import run
    proc = run("import", "postfix-config", tmp_path / "nope" / "main.cf", "-o", tmp_path / "out")
    assert proc.returncode == 2 and "main.cf" in proc.stderr and "Traceback" not in proc.stderr


def test_rbl_reply_maps_and_exact_domain_access_maps(tmp_path):
    """rbl_reply_maps gives a list's reply (code and text, $rbl_* as
    fields); without smtpd_access_maps in parent_domain_matches_subdomains
    a `domain` key of an access map is that domain only (address lookups),
    and host-name lookups of such a map are reported as approximated."""
    main_cf, mapdir = write_main_cf(tmp_path, (
        "compatibility_level = 3.6\n"
        "relay_domains = example.net\n"
        "parent_domain_matches_subdomains = debug_peer_list, mynetworks\n"
        "rbl_reply_maps = texthash:/etc/postfix/rbl_reply\n"
        "smtpd_recipient_restrictions = check_sender_access texthash:/etc/postfix/senders,\n"
        "    check_helo_access texthash:/etc/postfix/senders, reject_rhsbl_sender dbl.test,\n"
        "    reject_rbl_client bl.test, reject_unauth_destination\n"),
        {"rbl_reply": "dbl.test 550 5.7.1 Sender $sender refused: $rbl_domain says ${rbl_reason?$rbl_reason}\n",
         "senders": "spammer.example 550 5.7.1 go away\n.sub.bad.example 550 5.7.1 subdomains only\n"})
    result = import_main_cf(main_cf, map_dir=mapdir)
    out = tmp_path / "out"
    result.write(str(out))
    assert (out / "maps" / "senders_exact").read_text().splitlines() == [
        "@spammer.example 550 5.7.1 go away", ".sub.bad.example 550 5.7.1 subdomains only"]
    text = (out / "imported.rules").read_text()
    assert 'reject 550 5.7.1 "Sender {sender} refused: dbl.test says {rhsbl.txt}"' in text
    assert '"Service unavailable; Client host [{client.ip}] blocked using bl.test; {dnsbl.txt}"' in text
    notes = " ".join(r.note for r in result.report)
    assert "matches that name only; smtpfw maps match helo's parent domains too" in notes
    assert "is written as its text" in notes                       # the site's ${rbl_reason?...}
    assert run_ruleset_tests(out / "imported.rules", """\
dns dbl.test spam.example = listed 127.0.0.2 "listed for spam"
client 192.0.2.9 ehlo mx.good.example from a@spammer.example rcpt u@example.net -> reject at rcpt code 550
client 192.0.2.9 ehlo mx.good.example from a@mx.spammer.example rcpt u@example.net -> accept
client 192.0.2.9 ehlo mx.good.example from a@x.sub.bad.example rcpt u@example.net -> reject at rcpt code 550
client 192.0.2.9 ehlo mx.good.example from a@spam.example rcpt u@example.net -> reject at rcpt code 550
""") == 4
