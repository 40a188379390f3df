"""`smtpfw serve` as an operator runs it: a real process, signals, reload."""

from __future__ import annotations

import signal
import smtplib
import socket
import time

import pytest

from smtpfw.lang.compiler import compile_ruleset
from tests.smtp_client import RawClient
from tests.support.cli import Serve, run, wait_until


def test_version_and_help():
    assert run("--version").stdout.startswith("smtpfw ")
    for sub in ("serve", "lint"):
        proc = run(sub, "--help")
        assert proc.returncode == 0 and "usage: smtpfw " + sub in proc.stdout


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_serve_with_no_arguments_uses_embedded_default(tmp_path):
    """From any directory: 127.0.0.1:2525, Maildir ./var/maildir, rules/default.rules."""
    if not _port_free(2525):
        pytest.skip("port 2525 is in use on this machine")
    srv = Serve(cwd=tmp_path)
    try:
        assert srv.port == 2525
        assert "default.rules" in "".join(srv.lines)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
            s.ehlo("client.example")
            assert s.sendmail("a@b.example", ["root@localhost"], b"Subject: default\r\n\r\nhi\r\n") == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("a@b.example", ["x@relay.example"], b"Subject: relay\r\n\r\nhi\r\n")
    finally:
        assert srv.stop() == 0
    files = list((tmp_path / "var" / "maildir" / "new").iterdir())
    assert len(files) == 1 and b"Subject: default" in files[0].read_bytes()


def test_bad_rules_refuse_to_start(tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text("on rcpt:\n    reject if sender.domian = \"x\"\n")
    proc = run("serve", "--rules", str(rules), "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert "unknown field `sender.domian`" in proc.stderr
    assert "did you mean `sender.domain`?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_lets_inflight_session_finish(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  shutdown_grace: 10\n")
    srv = Serve("--config", str(cfg), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))
    try:
        c = RawClient(("127.0.0.1", srv.port))
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        assert c.cmd("RCPT TO:<u@localhost>").startswith("250")
        srv.signal(signal.SIGTERM)
        srv.wait_for(r"shutting down: 1 sessions in flight")
        # no new connections once shutting down (the listener closes right after that line)
        wait_until(lambda: _refused(srv.port), 5, "the listener to close")
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: inflight\r\n\r\nx\r\n.\r\n")
        assert c.reply().startswith("250 2.0.0")
        c.cmd("QUIT")
        assert srv.proc.wait(10) == 0
    finally:
        srv.stop()
    assert any(b"inflight" in p.read_bytes() for p in (tmp_path / "md" / "new").iterdir())


def test_sigterm_grace_then_421(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  shutdown_grace: 0.5\n")
    srv = Serve("--config", str(cfg), "--listen", "127.0.0.1:0", "--workers", "1")
    try:
        c = RawClient(("127.0.0.1", srv.port))
        c.reply()
        c.cmd("EHLO client.example")
        srv.signal(signal.SIGTERM)
        assert c.line().startswith("421 4.3.2")
        assert srv.proc.wait(10) == 0
    finally:
        srv.stop()


def test_sighup_reloads_and_keeps_old_rules_when_broken(tmp_path):
    rules = tmp_path / "site.rules"
    rules.write_text('on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "a.example"\n')
    srv = Serve("--rules", str(rules), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))

    rcpt = srv.rcpt_code

    try:
        assert rcpt("a.example") == 554 and rcpt("b.example") == 250
        rules.write_text('on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "b.example"\n')
        version = compile_ruleset(rules)[0].version
        srv.signal(signal.SIGHUP)
        srv.wait_for(rf"rules reloaded from .*: version {version}\b")      # the reload happened ...
        assert rcpt("a.example") == 250 and rcpt("b.example") == 554     # ... and decides now
        rules.write_text('on rcpt:\n    reject if rcpt.domian = "a.example"\n')   # broken
        srv.signal(signal.SIGHUP)
        refused = srv.wait_for(rf"reload refused, keeping ruleset {version}\b.*").group(0)
        assert "rcpt.domian" in refused                    # it was tried, and refused for its error
        assert rcpt("a.example") == 250 and rcpt("b.example") == 554
    finally:
        srv.stop()


def test_two_workers_share_the_port(tmp_path):
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", str(tmp_path / "md"))
    try:
        for i in range(20):
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
                s.ehlo("client.example")
                assert s.sendmail("a@b.example", ["u@localhost"], f"Subject: w{i}\r\n\r\nx\r\n".encode()) == {}
    finally:
        assert srv.stop() == 0
    assert len(list((tmp_path / "md" / "new").iterdir())) == 20


def test_reload_on_file_change(tmp_path):
    rules = tmp_path / "site.rules"
    (tmp_path / "blocked").write_text("a.example\n")
    rules.write_text('list blocked = file "blocked"\n'
                     'on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain in blocked\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  reload_on_change: true\n")
    srv = Serve("--config", str(cfg), "--rules", str(rules), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))

    rcpt = srv.rcpt_code

    try:
        assert rcpt("b.example") == 250
        (tmp_path / "blocked").write_text("a.example\nb.example\n")   # a list file changes
        deadline = time.monotonic() + 10
        while rcpt("b.example") != 554:
            assert time.monotonic() < deadline, "list change was not picked up"
            time.sleep(0.2)
    finally:
        srv.stop()


@pytest.mark.parametrize("yaml_text,message", [
    ("tls:\n  cert: /nonexistent/cert.pem\n", "tls.cert/tls.key: cannot load /nonexistent/cert.pem"),
    ("auth:\n  users_file: /nonexistent/users\n", "/nonexistent/users: cannot read the AUTH users file"),
])
def test_bad_tls_or_auth_files_refuse_to_start(tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    proc = run("serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--workers", "2")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
