"""smtpfw/linescan.py: the numpy way and the bytes-methods way give the
same answers on any data (both are always run here: the test extra has
numpy), and the answers are the SMTP front end's rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpfw import linescan
from smtpfw.linescan import Lines, has_dot_line, scan

pytest.importorskip("numpy")      # in the test extra: never skipped in CI

# The octets that matter, and others, in runs long enough to pass a small limit.
PIECES = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"x", b"\x00", b"ab", b"\r\n.", b"xxxxxxx"]),
                  max_size=60).map(b"".join)


def framed(data: bytes) -> tuple[bytearray, int, int]:
    """As the DATA reader holds it: CRLF, the data, CRLF.CRLF."""
    buf = bytearray(b"\r\n" + data + b"\r\n.\r\n")
    end = len(buf) - 5
    return buf, 1, end + 2


@settings(max_examples=600, deadline=None)
@given(PIECES, st.integers(min_value=1, max_value=12))
def test_both_ways_agree(data, limit):
    buf, start, stop = framed(data)
    assert scan(buf, start, stop, limit, vector=True) == scan(buf, start, stop, limit, vector=False)
    assert has_dot_line(data, vector=True) == has_dot_line(data, vector=False) if data else True


def test_the_answers():
    def lines(data: bytes, limit: int = 1000) -> Lines:
        buf, start, stop = framed(data)
        return scan(buf, start, stop, limit, vector=True)

    assert lines(b"a\r\nb") == Lines(False, False, False)
    assert lines(b"a\nb").bare and lines(b"a\rb").bare and lines(b"a\r\r\nb").bare
    assert lines(b"a\r\n.b").dotted and not lines(b"a\r\nb.").dotted
    assert lines(b"x" * 998).too_long is False and lines(b"x" * 999).too_long is True
    assert lines(b"." + b"x" * 998).too_long is False       # the transparency dot is not counted
    assert has_dot_line(b".x\r\n") and has_dot_line(b"a\n.b") and not has_dot_line(b"a.\r\nb")


def test_big_data_takes_the_vector_way_by_default(monkeypatch):
    seen = []
    real = linescan._scan_vector
    monkeypatch.setattr(linescan, "_scan_vector", lambda *a: seen.append(1) or real(*a))
    buf, start, stop = framed(b"y" * 100 + b"\r\n" * linescan.VECTOR_MIN)
    assert scan(buf, start, stop, 1000) == Lines(False, False, False) and seen
