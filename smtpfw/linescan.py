"""The line structure of message data: a CR or LF outside a CRLF, a line
over the limit, a line that starts with a dot.

The SMTP front end asks this of every message it reads (smuggling: a bare
CR or LF refuses the message; RFC 5321's 1,000-octet lines; dots to
unstuff), and forward delivery asks whether any line starts with a dot (to
stuff it).  As bytes methods each question is a pass of its own over the
data, 40 to 150 µs per 100 KB; with numpy (the ``fast`` extra) one pass
answers them all in about 55 µs, so messages of ``VECTOR_MIN`` bytes or more
take that way.  Both ways give the same answers (tests/test_linescan.py).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

VECTOR_MIN = 8192          # below this, numpy's fixed cost is more than the bytes methods'
_numpy: list = []          # [module or None], looked for once


def _np():
    if not _numpy:
        try:
            import numpy
        except ImportError:
            numpy = None
        _numpy.append(numpy)
    return _numpy[0]


class Lines(NamedTuple):
    bare: bool          # a CR or LF that is not part of a CRLF
    too_long: bool      # a line of ``limit`` octets or more with its CRLF (a leading dot not counted)
    dotted: bool        # a line that starts with "."


def scan(buf: bytes | bytearray, start: int, stop: int, limit: int, vector: bool | None = None) -> Lines:
    """The lines of ``buf[start:stop]``, which begins with the LF before
    the first line and ends with the last line's LF.  ``vector``: force
    (True) or forbid (False) the numpy way; None: by size."""
    numpy = _np()
    if vector is None:
        vector = stop - start >= VECTOR_MIN
    if vector and numpy is not None:
        return _scan_vector(numpy, buf, start, stop, limit)
    body = bytes(memoryview(buf)[start + 1:stop])
    crlf = body.count(b"\r\n")
    bare = body.count(b"\n") != crlf or body.count(b"\r") != crlf
    return Lines(bare, _long_line(limit).search(buf, start, stop) is not None, buf.find(b"\n.", start, stop - 1) != -1)


def _scan_vector(numpy, buf, start: int, stop: int, limit: int) -> Lines:
    arr = numpy.frombuffer(buf, numpy.uint8, stop - start, start)
    lf = numpy.flatnonzero(arr == 10)                   # lf[0] == 0: the LF before the first line
    crlf = int(numpy.count_nonzero(arr[lf[1:] - 1] == 13))
    bare = crlf != len(lf) - 1 or int(numpy.count_nonzero(arr == 13)) != crlf
    dots = arr[lf[:-1] + 1] == 46                       # each line's first octet is a dot
    lengths = numpy.diff(lf) - 1 - dots                 # octets before its LF (its CR too), a leading dot not counted
    return Lines(bare, bool((lengths >= limit).any()), bool(dots.any()))


@functools.lru_cache(maxsize=4)
def _long_line(limit: int) -> re.Pattern:
    """A line (after its LF; a leading dot not counted) of ``limit`` octets
    or more before the next LF, its CR included."""
    return re.compile(rb"\n(?:[^.\n]|\.[^\n])[^\n]{%d}" % (limit - 1))


def has_dot_line(data: bytes, vector: bool | None = None) -> bool:
    """Whether a line of ``data`` starts with a dot, after a CRLF or a
    bare LF alike (or ``data`` itself does)."""
    if data[:1] == b".":
        return True
    numpy = _np()
    if vector is None:
        vector = len(data) >= VECTOR_MIN
    if not vector or numpy is None:
        return b"\n." in data
    arr = numpy.frombuffer(data, numpy.uint8)
    dots = numpy.flatnonzero(arr[1:] == 46)             # dots are fewer than line ends: look behind each
    return bool((arr[dots] == 10).any())
