"""`smtpfw workbench` in a real Chromium (Debian's chromium + chromium-driver,
through Selenium): the loop a person goes through, against the real server.

The module starts `smtpfw serve` on loopback with recording on, a pid file
and its log in a file, sends it five sessions with smtplib, and starts
`smtpfw workbench` on that ruleset, its recordings, the server's pid file
and log.  One browser for the module; the tests run in order, as a person
would: type a mistake and see it at its line, apply the did-you-mean,
run the tests (a failing one shows its trace), dry-run the change over the
recorded sessions, trace one of the changed sessions and a session typed
in the form (with the DNS answer used), add it as a test, save, and see
the server reload to the new version.

With SMTPFW_SCREENSHOTS=1 each screen is written to docs/workbench/*.png.
"""

from __future__ import annotations

import re
import smtplib
import time

import pytest
import yaml

from tests.support.browser import Browser, Process, missing, start_workbench
from tests.support.server import recorded_sessions



@pytest.fixture(autouse=True, scope="module")
def _browser_available():
    """No Chromium or Selenium is a failure, not a skip (.ci/run installs them)."""
    why = missing()
    if why:
        pytest.fail(why)

TOKEN = "browser-test-token-0123456789"

RULES = """\
# site.rules: what the workbench edits in these tests
list badhelo = file "lists/badhelo"
zone bl = dnsbl "bl.test"

on connect:
    [dnsbl] reject 554 5.7.1 "Blocked: listed in bl.test" if client.ip listed in bl

on helo:
    [badhelo] reject 550 5.7.1 "Bad HELO" if helo in badhelo

on rcpt:
    [local-domain] accept if rcpt.domain in localnames
    [no-relay] reject 554 5.7.1 "Relaying denied"
"""

TESTS = """\
# the ruleset's tests (smtpfw test)
dns bl.test 192.0.2.66 = listed 127.0.0.2
ehlo client.example from alice@example.org rcpt root@localhost -> accept
ehlo spam.example from alice@example.org rcpt root@localhost -> reject at helo by badhelo code 550
client 192.0.2.66 ehlo client.example -> reject at connect by dnsbl
ehlo client.example from alice@example.org rcpt bob@elsewhere.example -> reject at rcpt by no-relay
"""

# (helo, sender): the sessions sent to the real server; spam.example senders
# are what the edit below starts refusing
SESSIONS = [("client.example", "alice@example.org"), ("spam.example", None), ("client.example", "bob@spam.example"),
            ("mx.example", "carol@spam.example"), ("client.example", "dave@example.org")]
NEW_RULE = '[no-spam] reject 550 5.7.1 "No mail from spam.example" if sender.domian = "spam.example"'


@pytest.fixture(scope="module")
def site(tmp_path_factory, shared_dns):
    """The ruleset folder, the real server (recording, pid file, log file) and the workbench."""
    tmp = tmp_path_factory.mktemp("workbench")
    rules_dir = tmp / "rules"
    (rules_dir / "lists").mkdir(parents=True)
    (rules_dir / "site.rules").write_text(RULES)
    (rules_dir / "site.tests").write_text(TESTS)
    (rules_dir / "lists" / "badhelo").write_text("spam.example\n")
    (tmp / "outside.txt").write_text("not for the workbench\n")
    recordings = tmp / "sessions"
    config = tmp / "smtpfw.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"pid_file": str(tmp / "smtpfw.pid")},
        "dns": {"nameservers": [f"{shared_dns.address[0]}:{shared_dns.address[1]}"]},
        "recording": {"enabled": True, "path": str(recordings)}}))
    server = Process(["serve", "--config", config, "--rules", rules_dir / "site.rules", "--listen", "127.0.0.1:0",
                      "--workers", "1", "--maildir", tmp / "md"], tmp / "server.log")
    try:
        port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        for helo, sender in SESSIONS:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                code, _ = s.ehlo(helo)
                if code == 250 and sender:
                    s.sendmail(sender, ["root@localhost"], b"Subject: test\r\n\r\nhello\r\n")
        records = recorded_sessions(recordings, len(SESSIONS), timeout=10)
        ids = {next((e.get("addr") for e in r["events"] if e.get("cmd") == "mail"), None): r["id"] for r in records}
        wb, base = start_workbench("--config", config, "--rules", rules_dir / "site.rules",
                                   "--recordings", recordings, "--server-log", tmp / "server.log",
                                   log=tmp / "workbench.log", token=TOKEN)
        try:
            yield {"tmp": tmp, "rules": rules_dir / "site.rules", "tests": rules_dir / "site.tests", "base": base,
                   "ids": ids, "server": server, "port": port}
        finally:
            wb.stop()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(site):
    b = Browser()
    try:
        b.get(f"{site['base']}/?token={TOKEN}")
        b.wait_for(lambda b: b.js("return document.body.dataset.ready"), 15, "the page to load")
        yield b
    finally:
        b.close()


def doc(b: Browser) -> str:
    return b.js("return window.workbench.view.state.doc.toString()")


def tab(b: Browser, name: str) -> None:
    b.q(f'.tab[data-tab="{name}"]').click()


def line_of(b: Browser, css: str) -> int:
    """The 1-based editor line holding the first element matching ``css``."""
    return b.js("""
        const mark = document.querySelector(arguments[0]);
        const view = window.workbench.view;
        return view.state.doc.lineAt(view.posAtDOM(mark)).number;""", css)


def test_the_page_opens_with_the_ruleset_and_no_problems(browser, site):
    b = browser
    assert b.wait_for(lambda b: b.q("#lint-summary").text == "no problems" and b.q("#lint-summary").text)
    assert doc(b) == RULES
    names = [li.get_attribute("data-name") for li in b.qa("#files li")]
    assert names == ["site.rules", "site.tests", "lists/badhelo"]
    assert b.q("#version").text == re.search(r"version ([0-9a-f]{12})", site["server"].text()).group(1)
    b.screenshot("editor")


def test_a_mistake_typed_shows_its_diagnostic_at_its_line(browser):
    from selenium.webdriver.common.keys import Keys

    b = browser
    b.js("const v = window.workbench.view; v.focus(); v.dispatch({selection: {anchor: v.state.doc.length}});")
    editor = b.q(".cm-content")
    editor.send_keys("on mail:", Keys.ENTER, NEW_RULE, Keys.ENTER)
    typed = time.monotonic()
    assert NEW_RULE in doc(b)
    typed_line = doc(b).split("\n").index(next(ln for ln in doc(b).split("\n") if NEW_RULE in ln)) + 1
    item = b.wait_for('#problems li.diag.error[data-code="E102"]', 5)[0]
    assert time.monotonic() - typed < 2.0          # lint runs 250 ms after the last key (~0.4 s here)
    assert int(item.get_attribute("data-line")) == typed_line
    assert "unknown field `sender.domian`" in item.text and "did you mean `sender.domain`?" in item.text
    b.wait_for(".cm-lintRange-error", 5)
    assert line_of(b, ".cm-lintRange-error") == typed_line
    assert b.qa(".cm-lint-marker-error")
    b.screenshot("lint")


def test_the_did_you_mean_is_applied_with_one_click(browser):
    b = browser
    b.q('#problems li[data-code="E102"] button.fix').click()
    b.wait_for(lambda b: "sender.domain =" in doc(b))
    assert "sender.domian" not in doc(b)
    assert b.wait_for(lambda b: b.q("#lint-summary").text == "no problems")
    assert not b.qa(".cm-lintRange-error")


def test_tests_run_and_a_failure_shows_its_trace(browser):
    b = browser
    tab(b, "tests")
    b.q("#run-tests").click()
    summary = b.wait_for(lambda b: b.q("#tests-summary").text.startswith("4 tests") and b.q("#tests-summary"))
    assert summary.text == "4 tests: 4 passed, 0 failed"
    # a test the edited rules fail: its diagnostic and its trace
    b.js("window.workbench.openFile('site.tests')")
    b.wait_for(lambda b: b.q("#filename").text == "site.tests")
    b.js("const v = window.workbench.view; v.dispatch({changes: {from: v.state.doc.length, "
         "insert: 'ehlo client.example from x@spam.example rcpt root@localhost -> accept\\n'}})")
    b.q("#run-tests").click()
    b.wait_for(lambda b: "1 failed" in b.q("#tests-summary").text)
    failure = b.q(".failure")
    assert "expected accept; got rejected at mail by no-spam" in failure.text
    assert "rule  no-spam" in failure.find_element("css selector", "pre.trace").text
    b.screenshot("tests")
    b.js("const v = window.workbench.view; const l = v.state.doc.line(v.state.doc.lines - 1); "
         "v.dispatch({changes: {from: l.from, to: l.to + 1}})")       # take the failing test out again
    b.js("window.workbench.openFile('site.rules')")
    b.wait_for(lambda b: b.q("#filename").text == "site.rules")


def test_dry_run_over_the_recorded_sessions_shows_the_changed_ones(browser, site):
    b = browser
    tab(b, "dryrun")
    b.q("#dryrun-start").click()
    summary = b.wait_for(lambda b: b.qa("#dryrun-summary") and b.q("#dryrun-summary"), 20)
    assert summary.text == "2 of 5 sessions change (newly rejected 2, newly accepted 0, changed 0)"
    assert b.q("#dryrun-count").text.startswith("done: 5 sessions")
    group = b.q('.category[data-category="newly_rejected"] .group[data-rule="no-spam"]')
    assert "by no-spam, rejected at mail (550): 2 sessions" in group.text
    shown = {li.get_attribute("data-id") for li in group.find_elements("css selector", "li.session")}
    assert shown == {site["ids"]["bob@spam.example"], site["ids"]["carol@spam.example"]}
    b.screenshot("dry-run")


def test_a_changed_session_opens_as_a_trace(browser, site):
    b = browser
    sid = site["ids"]["bob@spam.example"]
    b.q(f'li.session[data-id="{sid}"] a').click()
    verdict = b.wait_for(lambda b: b.qa("#trace-verdict") and b.q("#trace-verdict"), 10)
    assert verdict.text.startswith(f"session {sid}: rejected at mail by no-spam (550)")
    trace = b.q("#trace-result pre.trace").text
    assert "MAIL FROM:<bob@spam.example>" in trace and "rule  no-spam" in trace
    assert "dns   dnsbl 127.0.0.1 in bl.test: clear" in trace     # the answer the server recorded


def test_a_session_from_the_form_is_traced_with_its_dns_answers(browser):
    b = browser
    for field, value in (("#f-ip", "192.0.2.66"), ("#f-helo", "client.example"), ("#f-from", "a@example.org"),
                         ("#f-rcpts", "root@localhost")):
        b.q(field).clear()
        b.q(field).send_keys(value)
    b.q("#trace-button").click()
    b.wait_for(lambda b: "the session:" in b.q("#trace-verdict").text, 10)
    assert b.q("#trace-verdict").text.startswith("the session: rejected at connect by dnsbl (554)")
    assert "dnsbl 192.0.2.66 in bl.test: listed 127.0.0.2" in b.q("#trace-result .dns").text
    b.screenshot("trace")


def test_a_session_is_added_as_a_test_with_one_click(browser, site):
    b = browser
    sid = site["ids"]["carol@spam.example"]
    from selenium.webdriver.support.ui import Select

    b.wait_for(f'#session-list option[value="{sid}"]', 10)
    Select(b.q("#session-list")).select_by_value(sid)
    b.q("#trace-recorded").click()
    b.wait_for(lambda b: sid in b.q("#trace-verdict").text, 10)
    b.q("#add-test").click()
    b.wait_for(lambda b: b.q("#filename").text == "site.tests")
    expected = (f"client 127.0.0.1 port {site['port']} ehlo mx.example from carol@spam.example "
                "rcpt root@localhost -> reject at mail by no-spam code 550")      # the listener's port, as recorded
    b.wait_for(lambda b: expected in doc(b), what=f"{expected!r} in the editor: {doc(b)[-300:]}")
    tab(b, "tests")
    b.q("#run-tests").click()
    b.wait_for(lambda b: b.q("#tests-summary").text == "5 tests: 5 passed, 0 failed")


def test_save_shows_the_diff_then_the_server_reloads_to_the_new_version(browser, site):
    b = browser
    tab(b, "save")
    b.q("#preview").click()
    compiles = b.wait_for(lambda b: b.qa("#save-compiles") and b.q("#save-compiles"))
    new_version = re.search(r"version ([0-9a-f]{12})", compiles.text).group(1)
    diffs = {d.find_element("css selector", "h4").text: d.text for d in b.qa(".diff")}
    assert set(diffs) == {"site.rules", "site.tests"}
    assert '+[no-spam] reject 550 5.7.1 "No mail from spam.example" if sender.domain = "spam.example"' \
        in diffs["site.rules"]
    b.screenshot("save")
    b.q("#save-button").click()
    saved = b.wait_for(lambda b: b.qa("#saved") and b.q("#saved"))
    assert saved.text == f"saved site.rules, site.tests: version {new_version}"
    assert "sender.domain = \"spam.example\"" in site["rules"].read_text()
    assert "carol@spam.example" in site["tests"].read_text()
    result = b.wait_for(lambda b: b.q("#reload-result").get_attribute("data-state") == "reloaded"
                        and b.q("#reload-result"), 15)
    assert result.text == f"the server reloaded: it runs version {new_version}"
    assert f"rules reloaded from {site['rules']}: version {new_version}" in site["server"].text()
    assert b.q("#server-version").text == new_version
    b.screenshot("reloaded")
