"""Issue 12, items 21 and 23: installing, docs, the CLI's help and messages,
the README kept in step with the real thing; against the real CLI and a
real `smtpfw serve` process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.smtp_client import RawClient
from tests.support.cli import Serve, run
from tests.support.server import REPO


# ---- item 21: installing, docs, --workers -----------------------------------------

def test_negative_workers_are_refused(tmp_path):
    proc = run("serve", "--workers", "-1", "--listen", "127.0.0.1:0")
    assert proc.returncode == 2 and "--workers" in proc.stderr and "negative" in proc.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  workers: -1\n")
    proc = run("serve", "--config", str(cfg), "--listen", "127.0.0.1:0")
    assert proc.returncode == 2 and "server.workers" in proc.stderr and "negative" in proc.stderr


def test_docs_command_prints_pages_and_sections():
    listing = run("docs")
    assert listing.returncode == 0
    for name in ("lint", "rules", "recording", "dry-run", "guarantees"):
        assert name in listing.stdout
    page = run("docs", "recording")
    assert page.returncode == 0 and page.stdout == (REPO / "docs" / "recording.md").read_text()
    section = run("docs", "docs/lint.md#e102")            # the URL diagnostics carry, as is
    assert section.returncode == 0 and section.stdout.startswith("### E102")
    missing = run("docs", "nonesuch")
    assert missing.returncode == 2 and "lint" in missing.stderr


def test_wheel_installs_the_docs(tmp_path):
    """The built wheel carries docs/*.md where `smtpfw docs` finds them."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "-w", str(tmp_path / "dist"), str(_source_copy(tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import zipfile
    (wheel,) = (tmp_path / "dist").glob("smtpfw-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for page in (REPO / "docs").glob("*.md"):
        assert f"smtpfw/data/docs/{page.name}" in names


def _source_copy(tmp_path: Path) -> Path:
    """The tracked files of the checkout (a build must not write into it)."""
    dest = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


def test_readme_installs_into_a_venv_not_the_system_python():
    quick = (REPO / "README.md").read_text().split("## Quick start", 1)[1]
    first = re.search(r"```\n(.*?)\n```", quick, re.S).group(1)
    assert "python3 -m venv" in first and ".venv/bin/pip install ." in first
    assert not re.search(r"(^|&& )pip install", first)
    assert "python3-venv" in quick


def test_egg_info_is_ignored():
    proc = subprocess.run(["git", "check-ignore", "-q", "smtpfw.egg-info/PKG-INFO"], cwd=REPO)
    assert proc.returncode == 0


# ---- item 23: smaller things ------------------------------------------------------

def test_lint_without_a_path_says_what_it_checked():
    proc = run("lint")
    assert f"checking {REPO / 'rules' / 'default.rules'}" in proc.stderr


def test_import_of_a_file_that_is_no_mail_log_warns_and_fails(tmp_path):
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    proc = run("import", "postfix", str(junk), "-o", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2
    assert "no Postfix smtpd sessions recognised" in proc.stderr


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from smtpfw.cli import build_parser

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield f"{name} {'/'.join(action.option_strings)}", action.help
    missing = [opt for opt, text in walk(build_parser(), "smtpfw") if not text]
    assert missing == []


def test_banner_is_configurable_and_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('hostname: mx.test\nsmtp:\n  banner: "ESMTP Example Corp gateway"\n')
    srv = Serve("--config", str(cfg), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))
    try:
        with RawClient(("127.0.0.1", srv.port)) as c:
            assert c.reply() == "220 mx.test ESMTP Example Corp gateway"
    finally:
        srv.stop()
    cfg.write_text('smtp:\n  banner: "ESMTP\\r\\n250 fake"\n')
    proc = run("serve", "--config", str(cfg), "--listen", "127.0.0.1:0")
    assert proc.returncode == 2 and "smtp.banner" in proc.stderr and "one line" in proc.stderr


def test_readme_example_and_log_line_match_the_real_ones(tmp_path):
    """Runs the README's two-minute example; its sample log line must have the
    real line's shape (same prefix, same keys, same values but for ids,
    times and hashes)."""
    readme = (REPO / "README.md").read_text()
    example = re.search(r"python - <<'EOF'\n(.*?)\nEOF", readme, re.S).group(1)
    sample = re.search(r"The server logs one line per session on stderr.*?\n```\n(.*?)\n```", readme, re.S).group(1)
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", cwd=tmp_path)
    try:
        out = subprocess.run([sys.executable, "-c", example.replace("2525", str(srv.port))],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        line = srv.session_line()
    finally:
        srv.stop()
    printed = re.search(r"print\(err\.recipients\)\s+# (.*)", example).group(1)
    assert out.stdout.strip() == printed
    assert _shape(line) == _shape(sample)


def _shape(line: str) -> str:
    """A log line with what changes from run to run blanked out."""
    for pattern, blank in ((r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "TIME"), (r"\[\d+\]", "[PID]"),
                           (r"[0-9a-f]{8}\.[0-9a-f]+\.\d+", "ID"), (r"ruleset=[0-9a-f]+", "ruleset=HASH"),
                           (r"duration_ms=[\d.]+", "duration_ms=N")):
        line = re.sub(pattern, blank, line)
    return line


# ---- trace --session in a folder, dry-run progress by bytes ---------------------

def test_trace_session_searches_a_folder_of_recordings(tmp_path):
    from smtpfw.replay.build import make_record

    folder = tmp_path / "sessions"
    (folder / "old").mkdir(parents=True)
    (folder / "sessions-20240101-1.jsonl").write_text(json.dumps(make_record(session_id="first")) + "\n")
    (folder / "old" / "sessions-20231231-9.jsonl").write_text(
        json.dumps(make_record(session_id="wanted", ip="192.0.2.99")) + "\n")
    proc = run("trace", "--no-dns", "--session", f"{folder}:wanted")
    assert proc.returncode == 0, proc.stderr
    assert "session wanted: client 192.0.2.99" in proc.stdout
    proc = run("trace", "--no-dns", "--session", f"{folder}:nonesuch")
    assert proc.returncode == 2 and "no session 'nonesuch'" in proc.stderr and "2 files" in proc.stderr


def test_dry_run_progress_moves_within_one_big_file(tmp_path):
    import pty

    from smtpfw.replay.build import make_record

    line = json.dumps(make_record(rcpts=["root@localhost"])) + "\n"
    big = tmp_path / "one.jsonl"
    big.write_text(line * 30000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "smtpfw", "dry-run", "--jobs", "1", str(big)],
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(120) == 0
    os.close(master)
    percents = [int(p) for p in re.findall(rb"\] +(\d+)% ", seen)]
    assert any(0 < p < 100 for p in percents), seen[-500:]
    assert b" MB" in seen
