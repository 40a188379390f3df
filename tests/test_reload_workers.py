"""SIGHUP with several workers: the supervisor compiles the rules once and
forks fresh workers holding them; the old workers stop accepting, finish
their sessions and exit (smtpfw/server.py ``_supervise``).

Real servers on loopback (`smtpfw serve --workers 2`)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import threading

from tests.support.cli import Serve, wait_until

GATE = 'on rcpt:\n    [gate] reject 554 5.7.1 "closed" if rcpt.domain = "{}"\n'


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return {int(p) for p in fh.read().split()}


def _serve(tmp_path, rules) -> Serve:
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", str(tmp_path / "md"),
                "--rules", str(rules))
    wait_until(lambda: len(_children(srv.proc.pid)) == 2, 10, "two workers")
    return srv


def _version(srv: Serve) -> str:
    return srv.wait_for(r"\(version ([0-9a-f]+)\)").group(1)


def test_a_session_open_across_a_reload_ends_on_the_old_rules_new_ones_get_the_new(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    srv = _serve(tmp_path, rules)
    try:
        old_version = _version(srv)
        before = _children(srv.proc.pid)
        host, port = srv.address
        open_session = smtplib.SMTP(host, port, timeout=20)
        open_session.ehlo("client.example")
        assert open_session.mail("x@example.org")[0] == 250

        rules.write_text(GATE.format("b.example"))
        srv.signal(signal.SIGHUP)
        new_version = srv.wait_for(r"rules reloaded from .*: version ([0-9a-f]+)").group(1)
        assert new_version != old_version
        wait_until(lambda: srv.text.count("rules reloaded") == 2, 20, "two new workers")
        srv.wait_for(r"supervisor \d+: rules .* workers \d+, \d+ replace \d+, \d+, which finish their sessions")
        # the worker without a session goes at once; the one holding it stays
        srv.wait_for(r"before the reload has finished", 10)
        after = _children(srv.proc.pid)
        assert len(after - before) == 2                     # two new workers (and the old one finishing)
        assert len(after & before) == 1, (before, after)
        (old_worker,) = after & before

        for _ in range(4):                                  # new sessions: the new rules
            with smtplib.SMTP(host, port, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("x@example.org")
                assert s.rcpt("u@a.example")[0] == 250
                assert s.rcpt("u@b.example")[0] == 554

        # the session open since before the reload: the old rules, to the end
        assert open_session.rcpt("u@b.example")[0] == 250
        assert open_session.rcpt("u@a.example")[0] == 554
        code, reply = open_session.data(b"Subject: across a reload\r\n\r\nstill here\r\n")
        assert code == 250, reply
        open_session.quit()
        line = srv.wait_for(rf"\[{old_worker}\].* session=.*ruleset={old_version}").group(0)
        assert 'reply="250 ' in line
        srv.wait_for(rf"worker {old_worker} of the rules before the reload has finished", 15)
        wait_until(lambda: _children(srv.proc.pid) == after - {old_worker}, 10, "the old worker gone")
        assert len(list((tmp_path / "md" / "new").iterdir())) == 1
    finally:
        assert srv.stop() == 0
    # no session was cut off (a 421 reply; not a pid that contains 421) and nothing crashed
    assert not re.search(r'(?<![\d.])421[ -]', srv.rest) and "Traceback" not in srv.rest


def test_a_broken_ruleset_on_reload_keeps_the_old_workers(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    srv = _serve(tmp_path, rules)
    try:
        version = _version(srv)
        before = _children(srv.proc.pid)
        rules.write_text('on rcpt:\n    reject if rcpt.domian = "a.example"\n')
        srv.signal(signal.SIGHUP)
        srv.wait_for(rf"supervisor \d+: reload refused, keeping ruleset {version}\b")
        assert _children(srv.proc.pid) == before            # the same workers, untouched
        assert srv.rcpt_code("a.example") == 554 and srv.rcpt_code("b.example") == 250
        assert "rules reloaded" not in srv.text and "replace" not in srv.text

        rules.write_text(GATE.format("b.example"))          # fixed: now it reloads
        srv.signal(signal.SIGHUP)
        wait_until(lambda: srv.text.count("rules reloaded") == 2, 20, "two new workers")
        wait_until(lambda: len(_children(srv.proc.pid)) == 2 and not _children(srv.proc.pid) & before, 10,
                   "the old workers gone")
        assert srv.rcpt_code("a.example") == 250 and srv.rcpt_code("b.example") == 554
    finally:
        assert srv.stop() == 0


def test_no_connection_is_refused_while_the_workers_change(tmp_path):
    """Clients connecting all through a few reloads are all greeted: the
    listening sockets stay open in the supervisor."""
    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    srv = _serve(tmp_path, rules)
    greeted, failures = [], []
    done = threading.Event()

    def clients() -> None:
        while not done.is_set():
            try:
                with socket.create_connection(srv.address, timeout=10) as c:
                    banner = c.recv(100)
                    if not banner.startswith(b"220 "):
                        failures.append(banner)
                    else:
                        greeted.append(1)
                    c.sendall(b"QUIT\r\n")
                    c.recv(100)
            except OSError as err:
                failures.append(err)

    thread = threading.Thread(target=clients)
    thread.start()
    try:
        for n, domain in enumerate(["b.example", "c.example", "d.example"], 1):
            rules.write_text(GATE.format(domain))
            srv.signal(signal.SIGHUP)
            wait_until(lambda: srv.text.count("rules reloaded") == 2 * n, 20, f"reload {n}")
        wait_until(lambda: srv.text.count("before the reload has finished") == 6, 20, "the old workers gone")
    finally:
        done.set()
        thread.join(30)
        assert srv.stop() == 0
    assert not failures, failures[:5]
    assert len(greeted) > 10
    assert not re.search(r"exited \(status", srv.text)           # no worker died


def test_systemd_hears_the_reload_from_the_supervisor(tmp_path):
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--maildir", tmp_path / "md", "--rules", rules,
                env={**os.environ, "NOTIFY_SOCKET": path})
    try:
        assert listener.recv(100) == b"READY=1"
        rules.write_text(GATE.format("b.example"))
        srv.signal(signal.SIGHUP)
        assert listener.recv(100) == b"RELOADING=1"
        assert listener.recv(100) == b"READY=1"
        wait_until(lambda: srv.text.count("rules reloaded") == 2, 20, "two new workers")
    finally:
        srv.stop()
    assert listener.recv(100) == b"STOPPING=1"
    listener.close()


def test_a_reload_whose_rules_need_a_store_that_cannot_open_keeps_the_old_workers(tmp_path):
    """The supervisor tries the store the new rules need (in a child: a store
    may start a thread) before it replaces any worker."""
    from tests.support.cli import serve_with
    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    (tmp_path / "a-file").write_text("not a folder\n")
    with serve_with(tmp_path, {"state": {"store": str(tmp_path / "a-file" / "state.db")}},
                    "--workers", "2", "--rules", rules) as srv:
        wait_until(lambda: len(_children(srv.proc.pid)) == 2, 10, "two workers")
        before = _children(srv.proc.pid)
        version = _version(srv)
        rules.write_text(GATE.format("a.example") +
                         '    [grey] tempfail 451 4.7.1 "Greylisted" if greylist != "pass"\n')
        srv.signal(signal.SIGHUP)
        line = srv.wait_for(rf"supervisor \d+: reload refused, keeping ruleset {version}\b.*").group(0)
        assert "cannot open the state store" in line
        assert _children(srv.proc.pid) == before
        assert srv.rcpt_code("a.example") == 554 and srv.rcpt_code("b.example") == 250


def test_a_policy_connection_kept_open_by_postfix_moves_to_the_new_rules(tmp_path):
    """Postfix keeps its policy connection open for minutes: a reload closes
    it at its next idle moment (after the answer under way), and the
    client's next connection is answered by the new rules."""
    from tests.support.policy import PolicyClient

    rules = tmp_path / "r.rules"
    rules.write_text(GATE.format("a.example"))
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "2", "--rules", str(rules),
                "--maildir", str(tmp_path / "md"), command="policy")
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
               "client_address": "192.0.2.7", "client_port": "40001", "helo_name": "mx.example",
               "sender": "x@example.org", "instance": "i1"}
    try:
        wait_until(lambda: len(_children(srv.proc.pid)) == 2, 10, "two workers")
        kept = PolicyClient(srv.address)
        assert kept.ask(**request, recipient="u@a.example").startswith("554 5.7.1 closed")
        rules.write_text(GATE.format("b.example"))
        srv.signal(signal.SIGHUP)
        wait_until(lambda: srv.text.count("rules reloaded") == 2, 20, "two new workers")
        kept.sock.settimeout(10)
        assert kept.sock.recv(100) == b""                  # closed by the old worker, idle
        kept.close()
        again = PolicyClient(srv.address)                   # Postfix reconnects: the new rules
        assert again.ask(**request, recipient="u@a.example") == "DUNNO"
        assert again.ask(**{**request, "instance": "i2"}, recipient="u@b.example").startswith("554 5.7.1 closed")
        again.close()
    finally:
        srv.stop()
