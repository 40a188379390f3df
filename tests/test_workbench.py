"""`smtpfw workbench` over plain HTTP: who may use it (the token, the Host,
cross-site requests), which files it reads and writes (the ruleset's folder
and nothing outside it), and that it judges rules with smtpfw's own engine
(the same diagnostics as `smtpfw lint --format json`).  The page itself is
tested in a real browser in tests/test_workbench_browser.py."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest

import aiohttp  # noqa: F401,E402  (the [workbench] extra; in [test] too: missing is a failure)

from smtpfw.workbench.files import PathRefused, Workspace
from tests.support.browser import start_workbench
from tests.support.cli import run

TOKEN = "http-test-token-abcdefghijklmnop"
RULES = """\
list badhelo = file "lists/badhelo"

on helo:
    [badhelo] reject 550 5.7.1 "Bad HELO" if helo in badhelo
on mail:
    reject if sender.domian = "spam.example"
on rcpt:
    [local-domain] accept if rcpt.domain in localnames
    [no-relay] reject 554 5.7.1 "Relaying denied"
"""
GOOD = RULES.replace("sender.domian", "sender.domain")


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, token: str | None = TOKEN,
            host: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    hdrs = {"Host": host or f"127.0.0.1:{port}", **(headers or {})}
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace")
    return resp.status, payload, resp.headers


def post(port: int, path: str, body: dict, **kw):
    headers = {"X-Smtpfw-Workbench": "1", **kw.pop("headers", {})}
    return request(port, "POST", path, body, headers=headers, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wb-http")
    rules = tmp / "rules"
    (rules / "lists").mkdir(parents=True)
    (rules / "site.rules").write_text(RULES)
    (rules / "lists" / "badhelo").write_text("spam.example\n")
    (tmp / "outside.txt").write_text("secret\n")
    os.symlink(tmp / "outside.txt", rules / "link-out")
    return tmp


@pytest.fixture(scope="module")
def wb(folder):
    """A workbench on 0.0.0.0 (off loopback), asked through 127.0.0.1."""
    proc, base = start_workbench("--rules", folder / "rules" / "site.rules", "--listen", "0.0.0.0:0",
                                 log=folder / "wb.log", token=TOKEN)
    try:
        yield int(base.rsplit(":", 1)[1])
    finally:
        proc.stop()


# ---- the token --------------------------------------------------------------------

def test_off_loopback_the_printed_url_carries_the_token_and_requests_without_it_are_refused(wb, folder):
    assert f"open http://HOST:{wb}/?token={TOKEN}" in (folder / "wb.log").read_text()
    for path in ("/", "/api/state", "/static/app.js", "/api/file?name=site.rules"):
        status, body, _ = request(wb, "GET", path, token=None)
        assert status == 401 and "token" in body["error"], path
    status, _, _ = request(wb, "GET", "/api/state", token="wrong-token-wrong-token")
    assert status == 401
    status, body, _ = request(wb, "GET", "/?token=wrong", token=None)
    assert status == 403
    status, body, _ = post(wb, "/api/save", {"files": {"site.rules": GOOD}}, token=None)
    assert status == 401
    assert (folder / "rules" / "site.rules").read_text() == RULES


def test_the_token_in_the_url_becomes_a_strict_http_only_cookie(wb):
    status, _, headers = request(wb, "GET", f"/?token={TOKEN}", token=None)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert f"smtpfw_workbench_{wb}={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, page, headers = request(wb, "GET", "/", token=None, headers={"Cookie": f"smtpfw_workbench_{wb}={TOKEN}"})
    assert status == 200 and '<script src="/static/app.js">' in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"


def test_the_cookie_of_another_port_is_not_this_workbenchs(wb):
    """Browsers send a host's cookies to every port: the token's cookie is
    named for the port, so a cookie set by (or for) another port is no token here."""
    status, _, _ = request(wb, "GET", "/api/state", token=None, headers={"Cookie": f"smtpfw_workbench={TOKEN}"})
    assert status == 401
    status, _, _ = request(wb, "GET", "/api/state", token=None,
                           headers={"Cookie": f"smtpfw_workbench_{wb + 1}={TOKEN}"})
    assert status == 401


def test_malformed_requests_get_a_400_with_the_reason(wb):
    for body in ({"files": {"lists": "x"}}, {"files": {"a": "x", "a/b": "y"}}, {"files": {"site.rules/b": "x"}}):
        status, answer, _ = post(wb, "/api/preview", body)
        assert status == 400 and answer["error"], (body, status, answer)
    status, answer, _ = post(wb, "/api/trace", {"form": "not an object"})
    assert status == 400 and "form" in answer["error"]
    for name in ("smtpfw.yaml", ".hidden", "tls/key.pem"):
        status, answer, _ = post(wb, "/api/save", {"files": {name: "x"}})
        assert status == 400 and "not hidden files, configuration or keys" in answer["error"], (name, answer)


def test_a_loopback_workbench_answers_only_its_own_host_names(folder):
    proc, base = start_workbench("--rules", folder / "rules" / "site.rules", log=folder / "wb-lo.log", token=TOKEN)
    try:
        port = int(base.rsplit(":", 1)[1])
        assert request(port, "GET", "/api/state")[0] == 200
        assert request(port, "GET", "/api/state", host=f"localhost:{port}")[0] == 200
        status, body, _ = request(port, "GET", "/api/state", host=f"rebound.example:{port}")
        assert status == 421 and "rebound.example" in body["error"]
    finally:
        proc.stop()


# ---- cross-site requests ------------------------------------------------------------

@pytest.mark.parametrize("headers, why", [
    ({"Origin": "http://evil.example"}, "another site"),
    ({"Sec-Fetch-Site": "cross-site"}, "another site"),
    ({"X-Smtpfw-Workbench": ""}, "X-Smtpfw-Workbench"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, "JSON"),
], ids=["origin", "sec-fetch-site", "no-csrf-header", "form-post"])
def test_a_cross_site_post_is_refused(wb, folder, headers, why):
    cookie = {"Cookie": f"smtpfw_workbench_{wb}={TOKEN}"}
    status, body, _ = post(wb, "/api/save", {"files": {"site.rules": GOOD}}, token=None, headers={**cookie, **headers})
    assert status == 403 and why in body["error"]
    assert (folder / "rules" / "site.rules").read_text() == RULES


def test_the_same_post_from_the_page_itself_goes_through(wb):
    origin = {"Origin": f"http://127.0.0.1:{wb}", "Sec-Fetch-Site": "same-origin"}
    status, body, _ = post(wb, "/api/lint", {"files": {}}, headers=origin)
    assert status == 200 and body["summary"]["error"] == 1


# ---- files: the folder and nothing outside it -------------------------------------------

@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "lists/../../outside.txt", "link-out",
                                  "./site.rules", "lists//badhelo", "~root/.bashrc", "a\\..\\b", "x\x00y", ""])
def test_path_traversal_is_refused_when_reading(wb, name):
    from urllib.parse import quote

    status, body, _ = request(wb, "GET", f"/api/file?name={quote(name)}")
    assert status == 400, body
    assert "secret" not in json.dumps(body)


@pytest.mark.parametrize("path", ["/api/save", "/api/lint", "/api/preview", "/api/tests", "/api/files"])
def test_path_traversal_is_refused_when_writing_or_linting(wb, folder, path):
    status, body, _ = post(wb, path, {"files": {"../outside.txt": "owned\n", "site.rules": GOOD}})
    assert status == 400 and "refused" in body["error"]
    assert (folder / "outside.txt").read_text() == "secret\n"
    status, body, _ = post(wb, path, {"files": {"link-out": "owned\n"}})
    assert status == 400 and "outside" in body["error"]
    assert (folder / "outside.txt").read_text() == "secret\n"


def test_a_file_inside_the_folder_is_read(wb):
    status, body, _ = request(wb, "GET", "/api/file?name=lists/badhelo")
    assert status == 200 and body["text"] == "spam.example\n"


def test_resolve_refuses_every_way_out(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.rules").write_text("")
    ws = Workspace.open(str(tmp_path / "r" / "a.rules"))
    assert ws.resolve("lists/x") == str(tmp_path / "r" / "lists" / "x")
    for bad in ("..", "../r/a.rules", "/tmp/x", "a/../../b", "a/./b", "", "x\ny", None, 3):
        with pytest.raises(PathRefused):
            ws.resolve(bad)


# ---- one engine, and save ------------------------------------------------------------------

def test_lint_says_what_smtpfw_lint_says(wb, folder):
    status, body, _ = post(wb, "/api/lint", {"files": {}})
    assert status == 200
    cli = json.loads(run("lint", "--format", "json", folder / "rules" / "site.rules").stdout)
    keys = ("code", "severity", "message", "line", "column", "end_line", "end_column", "help", "url")
    assert [{k: d[k] for k in keys} for d in body["diagnostics"]] == [{k: d[k] for k in keys}
                                                                      for d in cli["diagnostics"]]
    (d,) = body["diagnostics"]
    assert d["file"] == "site.rules" and d["code"] == "E102"
    assert d["fix"] == {"line": 6, "column": 15, "end_column": 28, "from": "sender.domian", "insert": "sender.domain"}


def test_unsaved_text_is_linted_without_touching_the_file(wb, folder):
    status, body, _ = post(wb, "/api/lint", {"files": {"site.rules": GOOD, "lists/badhelo": "spam.example\n1.2.3.4/99\n"}})
    assert status == 200
    assert [(d["code"], d["file"], d["line"]) for d in body["diagnostics"]] == [("E302", "lists/badhelo", 2)]
    assert (folder / "rules" / "site.rules").read_text() == RULES


def test_save_refuses_a_ruleset_that_does_not_compile_and_a_stale_base(wb, folder):
    status, body, _ = post(wb, "/api/save", {"files": {"site.rules": RULES + "on bogus:\n"}})
    assert status == 422 and "nothing was saved" in body["error"]
    status, body, _ = post(wb, "/api/save", {"files": {"site.rules": GOOD}, "bases": {"site.rules": "0" * 16}})
    assert status == 409 and "changed on disk" in body["error"]
    assert (folder / "rules" / "site.rules").read_text() == RULES
    status, body, _ = post(wb, "/api/preview", {"files": {"site.rules": GOOD}})
    assert status == 200 and body["compiles"] and "+    reject if sender.domain" in body["diffs"][0]["diff"]


def test_two_saves_from_the_same_base_at_once_cannot_both_win(wb, folder):
    """The check for a change on disk and the writes are one step: of two
    saves made from the same text at the same moment, one is refused."""
    from concurrent.futures import ThreadPoolExecutor
    from smtpfw.workbench.files import digest
    base = {"site.rules": digest((folder / "rules" / "site.rules").read_text())}
    edits = [GOOD, GOOD.replace("spam.example", "junk.example")]
    for _ in range(5):
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda text: post(wb, "/api/save", {"files": {"site.rules": text},
                                                                           "bases": base})[0], edits))
        assert sorted(results) == [200, 409], results
        (folder / "rules" / "site.rules").write_text(RULES)          # back to the base, for the next round
        base = {"site.rules": digest(RULES)}


def test_the_command_refuses_a_missing_ruleset_and_a_short_token(tmp_path):
    proc = run("workbench", "--rules", tmp_path / "none.rules")
    assert proc.returncode == 2 and "no such ruleset file" in proc.stderr
    (tmp_path / "a.rules").write_text("")
    proc = run("workbench", "--rules", tmp_path / "a.rules", env={**os.environ, "SMTPFW_WORKBENCH_TOKEN": "short"})
    assert proc.returncode == 2 and "at least 16 characters" in proc.stderr


def test_reload_reads_the_servers_answer_from_its_log(tmp_path):
    """SIGHUP goes to the pid in the pid file; the answer is the log lines
    written after it (here a stand-in process that ignores SIGHUP)."""
    import signal
    import subprocess
    import sys

    from smtpfw.workbench.reload import Reloader

    log = tmp_path / "server.log"
    log.write_text("smtpfw listening on 127.0.0.1:2525, rules site.rules (version aaaaaaaaaaaa), maildir, 1 worker(s)\n")
    stand_in = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(30)", "smtpfw-stand-in"],
                                stdout=subprocess.PIPE)
    try:
        assert stand_in.stdout.readline() == b"up\n"
        (tmp_path / "pid").write_text(f"{stand_in.pid}\n")
        r = Reloader(str(tmp_path / "pid"), str(log))
        assert r.running_version() == "aaaaaaaaaaaa"
        assert r.signal("bbbbbbbbbbbb")["state"] == "waiting"
        with log.open("a") as fh:
            fh.write("smtpfw.server ERROR worker 1: reload refused, keeping ruleset aaaaaaaaaaaa: site.rules:3:1: "
                     "error[E101] unknown hook\n")
        status = r.status()
        assert status["state"] == "refused" and "E101" in status["lines"][0]
        assert r.signal("bbbbbbbbbbbb")["state"] == "waiting"      # a new signal reads from the end of the log
        with log.open("a") as fh:
            fh.write("smtpfw.server INFO worker 1: rules reloaded from site.rules: version bbbbbbbbbbbb\n"
                     "smtpfw.server INFO worker 2: rules reloaded from site.rules: version bbbbbbbbbbbb\n")
        assert r.status() == {"pid": stand_in.pid, "expected": "bbbbbbbbbbbb", "state": "reloaded", "processes": 2,
                              "version": "bbbbbbbbbbbb"}
        assert r.running_version() == "bbbbbbbbbbbb"
        assert Reloader(str(tmp_path / "pid"), None).signal("bbbbbbbbbbbb")["state"] == "signalled"
    finally:
        stand_in.send_signal(signal.SIGTERM)
        stand_in.wait(10)
    (tmp_path / "pid").write_text("99999999\n")
    with pytest.raises(Exception, match="99999999 .* is not an smtpfw server"):
        Reloader(str(tmp_path / "pid"), str(log)).signal("bbbbbbbbbbbb")
    other = subprocess.Popen(["sleep", "30"])             # a stale pid file naming someone else's process
    try:
        (tmp_path / "pid").write_text(f"{other.pid}\n")
        with pytest.raises(Exception, match="is not an smtpfw server"):
            Reloader(str(tmp_path / "pid"), str(log)).signal("bbbbbbbbbbbb")
        assert other.poll() is None                       # not signalled
    finally:
        other.kill()
        other.wait(10)
