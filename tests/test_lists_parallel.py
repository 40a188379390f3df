"""Big list files built in child processes (smtpfw/checks/lists.py
``prefetch``): the server's compile maps what the children packed; the
answers, the packed files and the diagnostics are those of the compile
that builds every list itself."""

from __future__ import annotations

import os

import pytest

from smtpfw.checks import lists, packed
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.lang.fields import ADDRESS, DOMAIN, IP
from tests.support.cli import run

N = packed.MIN_PACKED + 10          # just big enough to be packed

RULES = """\
list ips     = file "ips"
list helos   = file "helos"
list senders = file "senders"
list domains = file "domains"
on connect:
    [ip] reject 554 5.7.1 "listed" if client.ip in ips
on helo:
    [helo] reject 550 5.7.1 "bad helo" if helo in helos
on mail:
    [sender] reject 550 5.7.1 "bad sender" if sender in senders
    [domain] reject 550 5.7.1 "bad domain" if sender.domain within domains
    [helo-domain] reject 550 5.7.1 "bad domain" if helo within helos
"""


def _write_lists(folder, *, helos=None) -> None:
    (folder / "ips").write_text("".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(N)))
    (folder / "helos").write_text("".join(helos if helos is not None else (f"H{i}.Bad.example\n" for i in range(N))))
    (folder / "senders").write_text("".join(f"User{i}@s{i % 100}.example\n" for i in range(N)))
    (folder / "domains").write_text("".join(f"d{i}.example{i % 7}.com\n" for i in range(N)))
    (folder / "t.rules").write_text(RULES)


@pytest.fixture
def shared(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    packed.share_in(str(folder))
    yield folder
    lists.end_prefetch()
    lists.build_in_parallel(False)
    packed.share_in(None)


def _compile(path, parallel: bool):
    lists.build_in_parallel(parallel)
    packed.begin()
    try:
        return compile_ruleset(path)
    finally:
        lists.end_prefetch()


def _matchers(ruleset):
    """Each rule's condition, as a function of the field value."""
    return {r.rule_id: r for r in ruleset.rules}


def test_children_build_what_the_compile_would_and_it_answers_the_same(tmp_path, shared, monkeypatch):
    assert (os.cpu_count() or 1) >= 2, "the parallel build needs two CPUs"
    _write_lists(tmp_path)
    serial, diags = _compile(tmp_path / "t.rules", parallel=False)
    assert serial is not None and diags == []
    serial_files = set(os.listdir(shared))
    used: list = []
    prebuilt = lists._prebuilt_matcher
    monkeypatch.setattr(lists, "_prebuilt_matcher", lambda *a: used.append(a[1:]) or prebuilt(*a))
    parallel, diags = _compile(tmp_path / "t.rules", parallel=True)
    assert parallel is not None and diags == []
    assert parallel.version == serial.version
    # the four lists (helos twice: in and within) came from the children, as the same packed files
    assert sorted(used) == sorted([(IP, False), (DOMAIN, False), (ADDRESS, False), (DOMAIN, True), (DOMAIN, True)])
    assert set(os.listdir(shared)) == serial_files and len(serial_files) == 4
    assert not [n for n in os.listdir(shared) if n.endswith(".tmp")]

    from smtpfw.checks.lists import build_matcher, read_list_file
    for name, ftype, within, yes, no in [
            ("ips", IP, False, ["10.0.1.7", "10.4.0.0"], ["10.5.0.1", "192.0.2.1", "::1"]),
            ("helos", DOMAIN, False, ["h5.bad.example"], ["x.h5.bad.example", "bad.example"]),
            ("helos", DOMAIN, True, ["h5.bad.example", "mx.h5.bad.example"], ["bad.example"]),
            ("senders", ADDRESS, False, ["user5@s5.example"], ["user5@s6.example", "x@s5.example"]),
            ("domains", DOMAIN, True, ["d8.example1.com", "a.b.d8.example1.com"], ["d8.example2.com"])]:
        lists.build_in_parallel(False)
        entries, _ = read_list_file(str(tmp_path / name), name)
        plain, d1 = build_matcher(entries, ftype, within)
        lists.build_in_parallel(True)
        lists.prefetch([str(tmp_path / name)])
        entries, _ = read_list_file(str(tmp_path / name), name)
        assert entries is not None and entries.built is not None and entries.built["kind"]
        fast, d2 = build_matcher(entries, ftype, within)
        lists.end_prefetch()
        assert d1 == d2 == []
        for value in yes:
            assert plain(value) and fast(value), (name, value)
        for value in no:
            assert not plain(value) and not fast(value), (name, value)


def test_a_bad_line_in_a_big_list_is_reported_as_without_children(tmp_path, shared):
    helos = [f"h{i}.bad.example\n" for i in range(N)]
    helos[1234] = "not-a-domain!.example\n"
    helos[N - 3] = helos[7]                             # a duplicate
    _write_lists(tmp_path, helos=helos)
    _, serial = _compile(tmp_path / "t.rules", parallel=False)
    _, parallel = _compile(tmp_path / "t.rules", parallel=True)
    assert parallel == serial
    lines = [(d.code, d.span.line if d.span else None) for d in parallel]
    assert ("E302", 1235) in lines and ("W303", N - 2) in lines


def test_a_list_that_changes_after_the_children_read_it_is_built_here(tmp_path, shared):
    _write_lists(tmp_path)
    lists.build_in_parallel(True)
    lists.prefetch([str(tmp_path / "helos")])
    assert lists._prefetched(str(tmp_path / "helos"))["kind"] == "domain"
    (tmp_path / "helos").write_text("".join(f"n{i}.bad.example\n" for i in range(N)))
    entries, _ = lists.read_list_file(str(tmp_path / "helos"), "helos")
    assert entries is not None and entries.built is None                    # not the file the child read
    match, diags = lists.build_matcher(entries, DOMAIN, False)
    lists.end_prefetch()
    assert diags == [] and match("n5.bad.example") and not match("h5.bad.example")


def test_no_children_outside_the_server(tmp_path, shared):
    _write_lists(tmp_path)
    lists.build_in_parallel(False)
    lists.prefetch([str(tmp_path / "helos")])
    assert lists._running[0] is None


def test_lint_reports_bad_lines_in_a_big_list(tmp_path):
    helos = [f"h{i}.bad.example\n" for i in range(N)]
    helos[99] = "bad_-.example..\n"
    _write_lists(tmp_path, helos=helos)
    proc = run("lint", tmp_path / "t.rules")
    assert proc.returncode != 0
    assert f"{tmp_path / 'helos'}:100:" in proc.stdout + proc.stderr or "helos:100:" in proc.stdout + proc.stderr
