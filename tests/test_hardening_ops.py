"""Issue 12, items 9, 17 and 22: what `smtpfw serve` logs, and what it checks
before serving; against a real `smtpfw serve` process on a loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import threading
import time

import pytest

from tests.smtp_client import RawClient
from tests.support.cli import Serve, run, wait_until
from tests.support.downstream import closed_port

HOSTILE_HELO = "a\x1b[31mb\x07c\tX\x85Y\u2028Z\rW"


def _ehlo_session(port: int, helo: str = HOSTILE_HELO, sender: str = "<>",
                  rcpt: str = "x@relay.example") -> str:
    """EHLO (raw bytes), MAIL, one RCPT, QUIT; the RCPT reply."""
    with RawClient(("127.0.0.1", port), timeout=10) as c:
        c.reply()
        c.send(b"EHLO " + helo.encode() + b"\r\n")
        c.reply()
        c.cmd(f"MAIL FROM:{sender}")
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        c.cmd("QUIT")
        return reply


# ---- item 9: control characters in the log ------------------------------------

def test_control_characters_from_clients_are_escaped_in_every_kv_log_line(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text('on helo:\n    [said] log "helo was {helo}"\n'
                     'on rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain != "localhost"\n')
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--maildir", str(tmp_path / "md"),
                "--rules", str(rules))
    try:
        _ehlo_session(srv.port)
        session = srv.session_line()
        notice = srv.wait_for(r"^.*rule=said.*$").group(0)
    finally:
        srv.stop()
    escaped = r"a\x1b[31mb\x07c\tX\x85Y\u2028Z\rW"
    assert f'helo="{escaped}"' in session
    assert "helo was " in notice
    for line in srv.rest.splitlines():          # nothing raw, in any line
        assert line.isprintable(), repr(line)
    assert len(srv.rest.splitlines()) == srv.rest.count("\n")


# ---- item 22: what the session line says ----------------------------------------

def test_session_line_shows_the_refusal_and_the_null_sender(tmp_path):
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--maildir", str(tmp_path / "md"))
    try:
        assert _ehlo_session(srv.port, helo="client.example") == "554 5.7.1 Relaying denied"
        line = srv.session_line()
    finally:
        srv.stop()
    assert " from=<> " in line
    assert 'reply="554 5.7.1 Relaying denied"' in line
    assert "Bye" not in line


def test_json_log_is_one_json_object_per_line_for_every_line(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text('on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "a.example"\n')
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--maildir", str(tmp_path / "md"),
                "--rules", str(rules), "--log-format", "json")
    try:
        _ehlo_session(srv.port, rcpt="u@a.example")
        srv.session_line()
        rules.write_text("on rcpt:\n    reject if rcpt.domian = \"a.example\"\n")
        srv.signal(signal.SIGHUP)
        srv.wait_for("reload refused")
    finally:
        assert srv.stop() == 0
    objects = [json.loads(line) for line in srv.rest.splitlines()]     # every line, or this raises
    assert all(isinstance(o, dict) and o["level"] and o["pid"] for o in objects)
    session = next(o for o in objects if "session" in o)
    assert session["helo"] == HOSTILE_HELO                              # exact, not escaped twice
    assert session["from"] == "<>" and session["reply"] == "554 5.7.1 closed"
    assert any("listening on" in o.get("msg", "") for o in objects)


def test_refused_reload_is_logged_once_and_names_the_process(tmp_path):
    rules = tmp_path / "r.rules"
    good = 'on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "a.example"\n'
    rules.write_text(good)
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", str(tmp_path / "md"),
                "--rules", str(rules))
    try:
        rules.write_text("on rcpt:\n    reject if rcpt.domian = \"a.example\"\n")
        srv.signal(signal.SIGHUP)
        srv.wait_for("reload refused")
        rules.write_text(good.replace("a.example", "b.example"))
        srv.signal(signal.SIGHUP)          # signals arrive in order: after both workers reloaded,
        wait_until(lambda: srv.text.count("rules reloaded") == 2, what="two workers reloading")
    finally:
        srv.stop()
    refused = [line for line in srv.rest.splitlines() if "reload refused" in line]
    assert len(refused) == 1, refused
    assert f"[{srv.proc.pid}]" in refused[0] and "supervisor" in refused[0]
    assert "rcpt.domian" in refused[0]
    reloaded = [line for line in srv.rest.splitlines() if "rules reloaded" in line]
    assert all(re.search(r"worker \d+", line) for line in reloaded)


def test_cannot_listen_names_the_address(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("serve", "--listen", f"127.0.0.1:{port}", "--workers", "1", "--maildir", str(tmp_path / "md"))
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- item 17: every path and target checked before serving ----------------------

@pytest.mark.parametrize("flag", ["--record", "--maildir"])
@pytest.mark.parametrize("workers", ["1", "3"])
def test_unusable_folder_refuses_to_start_with_one_line(tmp_path, flag, workers):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run("serve", "--listen", "127.0.0.1:0", "--workers", workers, flag, str(blocker / "sub"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "workers keep failing" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    key = "recording.path" if flag == "--record" else "delivery.maildir"
    assert key in lines[0] and str(blocker / "sub") in lines[0] and "Not a directory" in lines[0]


def test_missing_maildir_and_recording_folder_are_created_at_start(tmp_path):
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--maildir", str(tmp_path / "md"),
                "--record", str(tmp_path / "rec"))
    try:
        assert {p.name for p in (tmp_path / "md").iterdir()} == {"tmp", "new", "cur"}
        assert (tmp_path / "rec").is_dir()
    finally:
        srv.stop()


def test_forward_target_down_warns_at_start_and_clients_do_not_see_it(tmp_path):
    port = closed_port()
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--forward", f"127.0.0.1:{port}")
    try:
        warning = srv.wait_for(r"WARNING.*forward.*").group(0)
        assert f"127.0.0.1:{port}" in warning and "refused" in warning
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            s.ehlo("client.example")
            s.mail("a@b.example")
            s.rcpt("root@localhost")
            code, text = s.data(b"Subject: x\r\n\r\nx\r\n")
        assert code == 451 and text == b"4.4.1 downstream MTA unavailable: connection refused"
        assert b"127.0.0.1" not in text and str(port).encode() not in text
        srv.wait_for(rf"forward to 127\.0\.0\.1:{port}: .*refused")    # the log says where
    finally:
        srv.stop()


def test_downstream_greeting_is_logged_not_sent_to_clients(tmp_path):
    """A downstream's refusal names its host: the log gets it, clients do not."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        threading.Thread(target=_refuse_every_session, args=(listener,), daemon=True).start()
        srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--forward", f"127.0.0.1:{port}")
        try:
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("a@b.example")
                s.rcpt("root@localhost")
                code, text = s.data(b"Subject: x\r\n\r\nx\r\n")
            srv.wait_for(rf"forward to 127\.0\.0\.1:{port}: downstream MTA refused the session "
                         r"\(554 mx\.internal\.example")
        finally:
            srv.stop()
    assert (code, text) == (451, b"4.3.0 downstream MTA refused the session")     # its greeting is not passed on


def _refuse_every_session(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"554 mx.internal.example no service here\r\n")


def test_unresolvable_forward_target_warns_but_starts(tmp_path):
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--forward", "mta.nonexistent.invalid:25")
    try:
        srv.wait_for(r"WARNING.*mta\.nonexistent\.invalid:25.*cannot resolve")
    finally:
        assert srv.stop() == 0




def test_a_worker_started_after_a_reload_runs_the_reloaded_rules(tmp_path):
    """A worker that dies is replaced; the new one must not fall back to the
    rules the supervisor started with when the others run reloaded ones."""
    import smtplib
    rules = tmp_path / "r.rules"
    rules.write_text('on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "a.example"\n')
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", str(tmp_path / "md"),
                "--rules", str(rules))
    try:
        srv.wait_for("listening")
        rules.write_text('on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "b.example"\n')
        srv.signal(signal.SIGHUP)
        wait_until(lambda: srv.text.count("rules reloaded") == 2, what="two workers reloading")
        wait_until(lambda: srv.text.count("before the reload has finished") == 2, what="the old workers gone")
        with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as fh:
            workers = [int(p) for p in fh.read().split()]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: srv.text.count("starting a new one") == 2, 15, what="two new workers")
        wait_until(lambda: srv.text.count("(as reloaded)") == 2, 15, what="the new workers' rules")
        host, port = srv.address
        for _ in range(6):
            with smtplib.SMTP(host, port, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("x@example.org")
                assert s.rcpt("u@a.example")[0] == 250          # the old rule is gone everywhere
                assert s.rcpt("u@b.example")[0] == 554
    finally:
        srv.stop()


def test_workers_listen_with_the_full_backlog(tmp_path):
    """The workers' loops must not shrink the listen queue to asyncio's
    default of 100 (a burst of 200 clients then sees refused SYNs and
    seconds of TCP retries)."""
    import shutil
    import subprocess
    if not shutil.which("ss"):
        pytest.fail("ss (iproute2) is needed to read the listen backlog")
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", str(tmp_path / "md"))
    try:
        srv.wait_for("listening")
        host, port = srv.address
        def workers() -> int:
            with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as fh:
                return len(fh.read().split())
        wait_until(lambda: workers() == 2, 10, "two workers")
        for _ in range(4):                  # the workers are serving: their loops have called listen()
            with smtplib.SMTP(host, port, timeout=10) as s:
                assert s.noop()[0] == 250
        time.sleep(0.5)
        assert _backlogs(port) == {1024}
    finally:
        srv.stop()


def _backlogs(port: int) -> set[int]:
    import subprocess
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(line.split()[2]) for line in out.splitlines() if line.strip()}
