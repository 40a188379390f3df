"""Prometheus metrics over HTTP from a server with two worker processes:
after a known set of sessions every count is exact (prometheus-client's
multiprocess mode adds the workers up)."""

from __future__ import annotations

import re
import smtplib
import urllib.request

from tests.support.cli import serve_with, wait_until


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def session(address, rcpt: str) -> int:
    with smtplib.SMTP(*address, timeout=30) as s:
        s.ehlo("client.example")
        s.mail("alice@example.org")
        code = s.rcpt(rcpt)[0]
        if code == 250:
            s.data(b"Subject: hi\r\n\r\nhi\r\n")
        return code


def test_counts_are_exact_across_two_workers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    with serve_with(tmp_path, {"metrics": {"listen": "127.0.0.1:0"}}, "--workers", "2") as srv:
        url = srv.wait_for(r"metrics on (http://\S+)").group(1)
        rounds = 0
        while True:                                   # until both workers have taken sessions
            rounds += 1
            with ThreadPoolExecutor(9) as pool:
                codes = list(pool.map(lambda i: session(srv.address, "root@localhost" if i % 3 else "x@example.net"),
                                      range(9)))
            assert codes.count(250) == 6 and codes.count(554) == 3
            wait_until(lambda: len(re.findall(r"smtpfw\.session\[", srv.text)) == 9 * rounds, 10, "session lines")
            if len(set(re.findall(r"smtpfw\.session\[(\d+)\]", srv.text))) == 2 or rounds == 10:
                break
        assert len(set(re.findall(r"smtpfw\.session\[(\d+)\]", srv.text))) == 2
        wait_until(lambda: scrape(url).get("smtpfw_sessions_total") == 9 * rounds, 10, "sessions counted")
        m = scrape(url)
        assert m['smtpfw_rule_hits_total{rule="local-domain"}'] == 6 * rounds
        assert m['smtpfw_rule_hits_total{rule="no-relay"}'] == 3 * rounds
        assert m['smtpfw_decisions_total{hook="rcpt",outcome="reject"}'] == 3 * rounds
        assert m['smtpfw_decisions_total{hook="rcpt",outcome="accept"}'] == 6 * rounds
        assert m['smtpfw_deliveries_total{result="ok"}'] == 6 * rounds
        assert m["smtpfw_delivery_seconds_count"] == 6 * rounds
        assert m["smtpfw_sessions_in_flight"] == 0


def test_metrics_are_off_by_default(tmp_path):
    with serve_with(tmp_path, {}) as srv:
        assert session(srv.address, "root@localhost") == 250
        assert "metrics on" not in srv.text


def test_a_bad_metrics_address_is_refused_and_a_taken_port_is_logged(tmp_path):
    import socket

    import pytest

    from smtpfw.config import ConfigError, from_mapping
    with pytest.raises(ConfigError, match="metrics.listen"):
        from_mapping({"metrics": {"listen": "nowhere"}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with serve_with(tmp_path, {"metrics": {"listen": f"127.0.0.1:{port}"}}) as srv:
            srv.wait_for(rf"metrics: cannot listen on 127.0.0.1:{port}")
            assert session(srv.address, "root@localhost") == 250          # the server runs on without it
