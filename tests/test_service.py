"""Running as a system service: privileges dropped after binding a low
port, a pid file, sd_notify readiness/reload/stop for systemd's
Type=notify, the shipped unit file, the container image."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.cli import Serve
from tests.support.server import REPO


def _low_port() -> int:
    for port in range(600, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024 on 127.0.0.1")


def test_root_binds_a_low_port_then_runs_as_the_configured_user():
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="smtpfw-service-"))
    base.chmod(0o755)
    spool = base / "spool"
    spool.mkdir()
    shutil.chown(spool, "nobody", "nogroup")                    # the service user's own folder
    port = _low_port()
    cfg = base / "smtpfw.yaml"
    cfg.write_text(f'listen: ["127.0.0.1:{port}"]\nserver:\n  user: nobody\n  pid_file: {base}/smtpfw.pid\n'
                   f'delivery:\n  maildir: {spool}/maildir\n')
    srv = Serve("--config", cfg, "--workers", "1")
    try:
        srv.wait_for(r"running as user nobody \(uid 65534")
        status = Path(f"/proc/{srv.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["65534"] * 4                            # real, effective, saved, filesystem
        assert (base / "smtpfw.pid").read_text().strip() == str(srv.proc.pid)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("client.example")
            assert s.sendmail("a@b.example", ["u@localhost"], b"Subject: x\r\n\r\nx\r\n") == {}
        (msg,) = list((spool / "maildir" / "new").iterdir())
        assert msg.stat().st_uid == 65534                       # written by the service user
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_systemd_hears_ready_reloading_and_stopping(tmp_path):
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--maildir", tmp_path / "md",
                env={**os.environ, "NOTIFY_SOCKET": path})
    try:
        assert listener.recv(100) == b"READY=1"
        srv.signal(signal.SIGHUP)
        assert listener.recv(100) == b"RELOADING=1"
        assert listener.recv(100) == b"READY=1"
    finally:
        srv.stop()
    assert listener.recv(100) == b"STOPPING=1"
    listener.close()


def test_the_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("smtpfw")
    assert exe, "smtpfw is installed (pip install -e .)"
    unit = tmp_path / "smtpfw.service"
    unit.write_text((REPO / "packaging" / "smtpfw.service").read_text().replace("/usr/local/bin/smtpfw", exe))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_the_container_image_builds():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no container engine running here (docker info fails): the Dockerfile is not built")
    proc = subprocess.run([docker, "build", "-q", "-t", "smtpfw-test", str(REPO)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
