"""Big lists as packed sets that every worker maps from one file
(smtpfw/checks/packed.py): the same answers as Python sets, the same
file in every worker, old files pruned after a reload."""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib

import pytest

from smtpfw.checks import packed
from smtpfw.checks.lists import Entry, build_matcher
from smtpfw.diagnostics import Span
from tests.support.cli import serve_with, wait_until

N = packed.MIN_PACKED + 10          # just big enough to be packed


def entries(texts):
    span = Span.point("test", 1, 1)
    return [Entry(t, span) for t in texts]


@pytest.fixture
def shared(tmp_path):
    packed.share_in(str(tmp_path))
    yield tmp_path
    packed.share_in(None)


@pytest.mark.parametrize("with_numpy", [True, False])
def test_packed_sets_answer_as_sets(monkeypatch, with_numpy):
    if not with_numpy:
        monkeypatch.setattr(packed, "_numpy", [None])
    rng = random.Random(7)
    words = {f"w{rng.getrandbits(48):x}.example" for _ in range(N)}
    others = {f"o{rng.getrandbits(48):x}.example" for _ in range(N)} - words
    p = packed.pack_strings(set(words))
    assert isinstance(p, packed.PackedSet) and len(p) == len(words)
    assert all(w in p for w in words) and not any(o in p for o in others)
    assert 5 not in p and None not in p and b"x" not in p
    ints = {rng.getrandbits(32) for _ in range(N)}
    q = packed.pack_ints(set(ints))
    assert isinstance(q, packed.PackedSet)
    assert all(i in q for i in ints) and not any(i in q for i in range(0, 2 ** 32, 2 ** 20) if i not in ints)
    assert -1 not in q and 2 ** 70 not in q and "1" not in q
    assert packed.pack_ints({-1, *range(N)}) == {-1, *range(N)}          # out of range: stays a set
    assert packed.pack_strings({"a", "b"}) == {"a", "b"}                  # small: stays a set


def test_numpy_and_python_pack_the_same_keys(monkeypatch):
    values = {f"user{i}@example.org" for i in range(N)}
    assert packed._load_numpy() is not None              # the [test] extra has it: both ways are tested
    a = packed._sorted_keys(map(hash, values), len(values))
    monkeypatch.setattr(packed, "_numpy", [None])
    b = packed._sorted_keys(map(hash, values), len(values))
    assert a == b and list(a) == sorted(a)


def test_big_lists_match_as_small_ones_do():
    """Domain (exact, subdomains, within), address (user@, @domain) and IP
    (addresses, networks) lists of more than MIN_PACKED entries."""
    domains = [f"d{i}.example" for i in range(N)] + [".sub.example", "*.wild.example"]
    match, diags = build_matcher(entries(domains), "domain", within=False)
    assert not diags
    assert match("d5.example") and match("a.sub.example") and match("x.y.wild.example")
    assert not match("sub.example") and not match("x.d5.example") and not match("d5.example.org")
    within, _ = build_matcher(entries(domains[:N]), "domain", within=True)
    assert within("d7.example") and within("mail.d7.example") and not within("example")
    addresses = [f"u{i}@a.example" for i in range(N)] + ["@whole.example"]
    amatch, diags = build_matcher(entries(addresses), "address", within=False)
    assert not diags
    assert amatch("u3@a.example") and amatch("anyone@whole.example")
    assert not amatch("u3@b.example") and not amatch("x@sub.whole.example")
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(N)] + ["192.0.2.0/24", "2001:db8::/32"]
    imatch, diags = build_matcher(entries(ips), "ip", within=False)
    assert not diags
    assert imatch("10.0.7.1") and imatch("192.0.2.77") and imatch("2001:db8::5")
    assert not imatch("11.0.7.1") and not imatch("198.51.100.1") and not imatch("2001:db9::1")


def test_packed_sets_map_one_file_and_prune_keeps_live_mappings(shared):
    values = {f"x{i}.example" for i in range(N)}
    a = packed.pack_strings(set(values))
    b = packed.pack_strings(set(values))                      # another worker, the same list
    files = sorted(os.listdir(shared))
    assert len(files) == 1 and files[0].endswith(".keys")
    packed.begin()
    c = packed.pack_strings({f"y{i}.example" for i in range(N)})   # the next version
    packed.prune()
    assert len(os.listdir(shared)) == 1 and sorted(os.listdir(shared)) != files
    assert "x5.example" in a and "x5.example" in b and "y5.example" in c   # the old mapping still answers


def _mapped_lists(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {line.split()[-1] for line in fh if "smtpfw-lists-" in line and line.rstrip().endswith(".keys")}


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def _refused(address, client_helo: str) -> bool:
    with smtplib.SMTP(*address, timeout=10) as s:
        code, _ = s.ehlo(client_helo)
        return code != 250 or s.mail("a@good.example")[0] != 250 or s.rcpt("u@example.net")[0] != 250


def test_two_workers_map_the_same_list_file_and_a_reload_moves_both(tmp_path):
    big = tmp_path / "helos"
    big.write_text("".join(f"h{i}.bad.example\n" for i in range(N)))
    rules = tmp_path / "t.rules"
    rules.write_text('list bad = file "helos"\n'
                     'on helo:\n    reject 550 5.7.1 "go away" if helo in bad\n'
                     'on rcpt:\n    accept if rcpt.domain = "example.net"\n')
    with serve_with(tmp_path, {}, "--workers", "2", "--rules", rules) as srv:
        wait_until(lambda: len(_children(srv.proc.pid)) == 2, 10, "two workers")
        workers = _children(srv.proc.pid)
        wait_until(lambda: all(_mapped_lists(w) for w in workers), 10, "workers mapping the list")
        first = {w: _mapped_lists(w) for w in workers}
        assert len({frozenset(m) for m in first.values()}) == 1, first      # one file, in both
        assert _mapped_lists(srv.proc.pid) == next(iter(first.values()))    # the supervisor's, inherited
        assert _refused(srv.address, "h7.bad.example") and not _refused(srv.address, "good.example")
        big.write_text("".join(f"n{i}.bad.example\n" for i in range(N)))
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until(lambda: srv.text.count("rules reloaded") >= 2, 30, "both workers reloaded")
        # new workers, forked by the supervisor with the new rules; the old ones have gone
        wait_until(lambda: len(_children(srv.proc.pid)) == 2 and not set(_children(srv.proc.pid)) & set(workers),
                   10, "the old workers replaced")
        after = {w: _mapped_lists(w) for w in _children(srv.proc.pid)}
        assert all(m and m != first[workers[0]] for m in after.values()), after
        assert len({frozenset(m) for m in after.values()}) == 1, after
        assert _mapped_lists(srv.proc.pid) == next(iter(after.values()))    # the supervisor holds the new rules
        folder = os.path.dirname(next(iter(next(iter(after.values())))))
        assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in next(iter(after.values())))
        assert _refused(srv.address, "n7.bad.example") and not _refused(srv.address, "h7.bad.example")
    assert not os.path.exists(folder)                                        # removed when the server stops
    assert re.search(r"version", srv.text)


@pytest.mark.parametrize("text", ["a.example\nb.example\n\n", "a.example\nb.example\n\n\n", "\na.example\nb.example\n",
                                  "a.example\x1f\nb.example\n", "a.example\r\nb.example\r\n", " a.example\nb.example"])
def test_a_list_file_with_blank_lines_or_odd_white_space_reads_as_before(tmp_path, text):
    """The fast path for clean files must give what the line-by-line path gives."""
    from smtpfw.checks.lists import read_list_file
    path = tmp_path / "l"
    path.write_text(text)
    entries, diags = read_list_file(str(path), "l")
    assert not diags and entries is not None
    assert entries.texts == ["a.example", "b.example"]
    assert [e.text for e in entries] == ["a.example", "b.example"]
    match, diags = build_matcher(entries, "domain", within=False)
    assert not diags and match("b.example")


def test_a_folder_that_is_gone_still_gives_working_lists_and_says_so(tmp_path, caplog):
    """The run's folder removed (a /tmp cleaner): the list is built in this
    process's memory, answers the same, and the log says it is not shared."""
    import logging
    packed.share_in(str(tmp_path / "gone"))
    monkey = packed._warned[0]
    packed._warned[0] = False
    try:
        with caplog.at_level(logging.WARNING, logger="smtpfw.lists"):
            p = packed.pack_strings({f"z{i}.example" for i in range(N)})
        assert "z7.example" in p and "y7.example" not in p
        assert "not shared between workers" in caplog.text
    finally:
        packed._warned[0] = monkey
        packed.share_in(None)
